//! `forge snapshot …` and `forge template …`: what new sandboxes start
//! from, over the API.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use api_types::TemplateState;
use api_types::snapshots::{CreateSnapshot, SnapshotView};
use api_types::templates::{BuildLog, BuildStep, TemplateSpec, TemplateView};
use clap::Subcommand;
use reqwest::Method;
use serde_json::Value;

use super::{Target, body, print_json};

#[derive(Subcommand)]
pub enum SnapshotCommand {
    /// Keep a sandbox's disk (and, where the backend can, its memory and
    /// processes) to start new sandboxes from; the sandbox keeps running.
    Create {
        /// The sandbox.
        vm: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// Snapshots you may use, with the space each takes.
    List,
    Show {
        /// Name or id.
        key: String,
    },
    /// Delete a snapshot (sandboxes started from it keep running).
    Rm { key: String },
}

#[derive(Subcommand)]
pub enum TemplateCommand {
    /// Build a template from a TOML spec (`name`, `apt`, `pip`, `npm`,
    /// `run`, `env`, `workdir`, `[start]`, `warm`), showing its progress;
    /// the same spec is built once and reused.
    Build {
        /// The spec file.
        #[arg(long, short)]
        file: PathBuf,
        /// Print the build's output as it comes (always when not a terminal).
        #[arg(long)]
        log: bool,
    },
    /// Every template, with its state.
    List,
    Show {
        name: String,
    },
    /// The build's log; with --follow, until the build ends.
    Logs {
        name: String,
        #[arg(long, short)]
        follow: bool,
    },
    /// Delete a template and (unless another shares its spec) its image.
    Rm {
        name: String,
    },
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(
        || "-".to_owned(),
        |b| format!("{:.1}", b as f64 / (1 << 20) as f64),
    )
}

fn snapshot_line(snapshot: &SnapshotView) -> String {
    let kept: Vec<_> = snapshot
        .kept
        .iter()
        .map(|k| {
            serde_json::to_value(k)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        })
        .collect();
    format!(
        "{:<22} {:<16} {:<24} {:>9} {:>9} {}",
        snapshot.id,
        snapshot
            .name
            .as_deref()
            .or(snapshot.template.as_deref())
            .unwrap_or("-"),
        kept.join(","),
        mib(snapshot.disk_bytes),
        mib(snapshot.saved_bytes),
        snapshot.source_vm.as_deref().unwrap_or("-"),
    )
}

const SNAPSHOT_HEADER: &str =
    "ID                     NAME             KEPT                      DISK MiB SAVED MiB SOURCE";

pub async fn snapshot(target: &Target<'_>, command: SnapshotCommand) -> anyhow::Result<()> {
    let client = target.client()?;
    let one: SnapshotView = match command {
        SnapshotCommand::Create { vm, name } => {
            client
                .call(
                    Method::POST,
                    &format!("/v1/vms/{vm}/snapshots"),
                    body(&CreateSnapshot { name })?,
                )
                .await?
        }
        SnapshotCommand::List => {
            let all: Vec<SnapshotView> = client.call(Method::GET, "/v1/snapshots", None).await?;
            if target.json {
                return print_json(&all);
            }
            println!("{SNAPSHOT_HEADER}");
            for snapshot in &all {
                println!("{}", snapshot_line(snapshot));
            }
            return Ok(());
        }
        SnapshotCommand::Show { key } => {
            client
                .call(
                    Method::GET,
                    &format!("/v1/snapshots/{}", web::api::encode(&key)),
                    None,
                )
                .await?
        }
        SnapshotCommand::Rm { key } => {
            let _: Value = client
                .call(
                    Method::DELETE,
                    &format!("/v1/snapshots/{}", web::api::encode(&key)),
                    None,
                )
                .await?;
            println!("deleted {key}");
            return Ok(());
        }
    };
    if target.json {
        return print_json(&one);
    }
    println!("{SNAPSHOT_HEADER}");
    println!("{}", snapshot_line(&one));
    if let Some(note) = &one.note {
        println!("note: {note}");
    }
    Ok(())
}

fn template_line(template: &TemplateView) -> String {
    format!(
        "{:<20} {:<9} {:<17} {:>8} {}",
        template.name,
        template.state.as_str(),
        template.spec_hash,
        template.build_ms.map_or_else(
            || "-".to_owned(),
            |ms| format!("{:.1}s", ms as f64 / 1000.0)
        ),
        template.error.as_deref().unwrap_or(""),
    )
}

const TEMPLATE_HEADER: &str = "NAME                 STATE     SPEC HASH            BUILD ERROR";

pub async fn template(target: &Target<'_>, command: TemplateCommand) -> anyhow::Result<()> {
    let client = target.client()?;
    let one: TemplateView = match command {
        TemplateCommand::Build { file, log } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let spec: TemplateSpec = toml::from_str(&text)
                .with_context(|| format!("{} is not a template spec", file.display()))?;
            let put: TemplateView = client
                .call(Method::POST, "/v1/templates", body(&spec)?)
                .await?;
            let view = if put.state == TemplateState::Building {
                follow_build(&client, &put.name, log || target.json).await?
            } else {
                if put.reused && !target.json {
                    eprintln!(
                        "template {}: the same spec was built before; nothing to build",
                        put.name
                    );
                }
                put
            };
            if target.json {
                print_json(&view)?;
            } else {
                println!("{TEMPLATE_HEADER}");
                println!("{}", template_line(&view));
            }
            if view.state == TemplateState::Failed {
                anyhow::bail!(
                    "the build of {} failed; `forge template logs {}` shows its log",
                    view.name,
                    view.name
                );
            }
            return Ok(());
        }
        TemplateCommand::List => {
            let all: Vec<TemplateView> = client.call(Method::GET, "/v1/templates", None).await?;
            if target.json {
                return print_json(&all);
            }
            println!("{TEMPLATE_HEADER}");
            for template in &all {
                println!("{}", template_line(template));
            }
            return Ok(());
        }
        TemplateCommand::Show { name } => {
            client
                .call(
                    Method::GET,
                    &format!("/v1/templates/{}", web::api::encode(&name)),
                    None,
                )
                .await?
        }
        TemplateCommand::Logs { name, follow } => {
            if follow {
                follow_build(&client, &name, true).await?;
            } else {
                print!(
                    "{}",
                    printable(
                        &client
                            .text(&format!("/v1/templates/{}/build", web::api::encode(&name)))
                            .await?
                    )
                );
            }
            return Ok(());
        }
        TemplateCommand::Rm { name } => {
            let _: Value = client
                .call(
                    Method::DELETE,
                    &format!("/v1/templates/{}", web::api::encode(&name)),
                    None,
                )
                .await?;
            println!("deleted {name}");
            return Ok(());
        }
    };
    if target.json {
        return print_json(&one);
    }
    println!("{TEMPLATE_HEADER}");
    println!("{}", template_line(&one));
    Ok(())
}

/// How many of the log's last lines a failed build shows under its bar.
const TAIL_LINES: usize = 30;

/// Follows a build until it ends: on a terminal a progress bar on stderr
/// (the log only with `log`, its end when the build fails), otherwise the
/// step lines and the log on stdout. Returns the template as it ended.
async fn follow_build(
    client: &super::client::Client,
    name: &str,
    log: bool,
) -> anyhow::Result<TemplateView> {
    let response = client
        .stream(&format!(
            "/v1/templates/{}/build?follow=true",
            web::api::encode(name)
        ))
        .await?;
    let bar = std::io::stderr().is_terminal() && !log;
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let mut step: Option<BuildStep> = None;
    let mut done: Option<TemplateView> = None;
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    super::client::read_events(response, |event, data| {
        match event {
            "log" => {
                let text = serde_json::from_str::<BuildLog>(data)?.text;
                if bar {
                    for line in text.lines() {
                        tail.push_back(line.to_owned());
                        if tail.len() > TAIL_LINES {
                            tail.pop_front();
                        }
                    }
                    draw(&mut stderr, step.as_ref(), tail.back().map(String::as_str))?;
                } else {
                    write!(stdout, "{}", printable(&text))?;
                    stdout.flush()?;
                }
            }
            "step" => {
                step = Some(serde_json::from_str(data)?);
                if bar {
                    draw(&mut stderr, step.as_ref(), None)?;
                }
            }
            "done" => {
                done = serde_json::from_str(data).ok();
                return Ok(false);
            }
            _ => {}
        }
        Ok(true)
    })
    .await?;
    if bar {
        writeln!(stderr)?;
    }
    let view = match done {
        Some(view) => view,
        None => {
            client
                .call(
                    Method::GET,
                    &format!("/v1/templates/{}", web::api::encode(name)),
                    None,
                )
                .await?
        }
    };
    if bar && view.state == TemplateState::Failed {
        for line in &tail {
            eprintln!("{}", printable(line));
        }
    }
    Ok(view)
}

/// A build's output as the terminal may show it: what the sandbox printed
/// is hostile, so control characters (escape sequences that could move the
/// cursor, retitle the window or rewrite earlier lines) are dropped; line
/// breaks and tabs stay.
fn printable(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control() || matches!(c, '\n' | '\t'))
        .collect()
}

/// One line: `[#####.....] 3/8 step name · last output`, redrawn in place.
fn draw(out: &mut impl Write, step: Option<&BuildStep>, last: Option<&str>) -> std::io::Result<()> {
    const WIDTH: usize = 20;
    let (index, total, name) =
        step.map_or((0, 1, ""), |s| (s.index, s.total.max(1), s.name.as_str()));
    let filled = (index.saturating_sub(1) as usize * WIDTH) / total as usize;
    let mut line = format!(
        "[{}{}] {index}/{total} {name}",
        "#".repeat(filled),
        ".".repeat(WIDTH - filled)
    );
    if let Some(last) = last.map(str::trim).filter(|l| !l.is_empty()) {
        line.push_str(" · ");
        line.push_str(last);
    }
    let line: String = line.chars().filter(|c| !c.is_control()).take(110).collect();
    write!(out, "\r\x1b[2K{line}")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_the_steps_done_and_stays_on_one_line() {
        let mut out = Vec::new();
        let step = BuildStep {
            index: 3,
            total: 5,
            name: "pip install requests".into(),
        };
        draw(&mut out, Some(&step), Some("Collecting\trequests\r")).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "\r\x1b[2K[########............] 3/5 pip install requests · Collectingrequests"
        );
    }

    #[test]
    fn escape_sequences_from_a_build_never_reach_the_terminal() {
        assert_eq!(
            printable("ok\x1b]0;owned\x07\r\n\tnext\x1b[2J"),
            "ok]0;owned\n\tnext[2J"
        );
    }

    #[test]
    fn a_spec_file_is_toml() {
        let spec: TemplateSpec = toml::from_str(
            "name = \"py\"\napt = [\"python3-pytest\"]\npip = [\"requests\"]\nwarm = true\n[start]\ncommand = \"python3 -m http.server 8000\"\nport = 8000\n[env]\nAPP_ENV = \"test\"\n",
        )
        .unwrap();
        assert_eq!(spec.start.unwrap().port, 8000);
        assert_eq!(spec.env["APP_ENV"], "test");
        assert!(toml::from_str::<TemplateSpec>("name = \"x\"\napk = []\n").is_err());
    }
}
