//! `forge vm …` and `forge run …`: sandboxes and pipeline runs over the API.

use std::io::Write;

use anyhow::Context;
use clap::Subcommand;
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

use super::{Target, print_json, text};

#[derive(Subcommand)]
pub enum VmCommand {
    /// Create a sandbox.
    Create {
        /// Repository (`owner/name`) the sandbox is for.
        #[arg(long)]
        repo: Option<String>,
        #[arg(long, requires = "repo")]
        branch: Option<String>,
        #[arg(long)]
        vcpus: Option<u8>,
        #[arg(long)]
        mem_mib: Option<u64>,
        /// Destroy it (instead of pausing it to disk) when idle.
        #[arg(long)]
        ephemeral: bool,
        /// Pause (or destroy, when ephemeral) after this long without traffic.
        #[arg(long)]
        idle_timeout_secs: Option<u64>,
    },
    /// List sandboxes.
    List,
    /// Run a command; exits with its exit code.
    Exec {
        id: String,
        /// Working directory inside.
        #[arg(long)]
        cwd: Option<String>,
        /// The program and its arguments (no shell; use `sh -c '…'` for one).
        #[arg(required = true, last = true)]
        argv: Vec<String>,
    },
    /// Make copies of a running sandbox (memory and disk, where the backend can).
    Fork {
        id: String,
        #[arg(long, default_value_t = 1)]
        count: usize,
    },
    /// Pause in memory, or with --to-disk release its memory too.
    Pause {
        id: String,
        #[arg(long)]
        to_disk: bool,
    },
    Resume {
        id: String,
    },
    /// Destroy a sandbox.
    Rm {
        id: String,
    },
}

#[derive(Subcommand)]
pub enum RunCommand {
    /// A repository's runs, newest first.
    List { repo: String },
    /// One run and its steps.
    Show { id: i64 },
    /// A run's logs; with --follow, as they are written, until it ends.
    Logs {
        id: i64,
        #[arg(long, short)]
        follow: bool,
    },
}

fn vm_line(vm: &Value) -> String {
    format!(
        "{:<16} {:<15} {:<10} {:<16} {:<24} {}",
        text(&vm["id"]),
        text(&vm["state"]),
        text(&vm["backend"]),
        vm["parent"].as_str().unwrap_or("-"),
        vm["repo"].as_str().unwrap_or("-"),
        vm["branch"].as_str().unwrap_or("-")
    )
}

pub async fn vm(target: &Target<'_>, command: VmCommand) -> anyhow::Result<()> {
    let client = target.client()?;
    let answer: Value = match command {
        VmCommand::Create {
            repo,
            branch,
            vcpus,
            mem_mib,
            ephemeral,
            idle_timeout_secs,
        } => {
            let kind = if ephemeral { "ephemeral" } else { "persistent" };
            let body = json!({ "repo": repo, "branch": branch, "vcpus": vcpus, "mem_mib": mem_mib,
                               "persistence": { "type": kind }, "idle_timeout_secs": idle_timeout_secs });
            client.call(Method::POST, "/v1/vms", Some(body)).await?
        }
        VmCommand::List => {
            let vms: Value = client.call(Method::GET, "/v1/vms", None).await?;
            if target.json {
                return print_json(&vms);
            }
            println!(
                "{:<16} {:<15} {:<10} {:<16} {:<24} BRANCH",
                "ID", "STATE", "BACKEND", "PARENT", "REPO"
            );
            for vm in vms.as_array().into_iter().flatten() {
                println!("{}", vm_line(vm));
            }
            return Ok(());
        }
        VmCommand::Exec { id, cwd, argv } => {
            let out: Value = client
                .call(
                    Method::POST,
                    &format!("/v1/vms/{id}/exec"),
                    Some(json!({ "argv": argv, "cwd": cwd })),
                )
                .await?;
            if target.json {
                return print_json(&out);
            }
            print!("{}", text(&out["stdout"]));
            eprint!("{}", text(&out["stderr"]));
            if out["truncated"] == true {
                eprintln!("forge: the output was truncated");
            }
            std::io::stdout().flush()?;
            let code = out["exit_code"].as_i64().unwrap_or(1);
            if code != 0 {
                std::process::exit(i32::try_from(code).unwrap_or(1));
            }
            return Ok(());
        }
        VmCommand::Fork { id, count } => {
            let forks: Value = client
                .call(
                    Method::POST,
                    &format!("/v1/vms/{id}/fork"),
                    Some(json!({ "count": count })),
                )
                .await?;
            if target.json {
                return print_json(&forks);
            }
            for fork in forks["forks"].as_array().into_iter().flatten() {
                println!("{} (kept {})", vm_line(fork), fork["kept"]);
            }
            return Ok(());
        }
        VmCommand::Pause { id, to_disk } => {
            client
                .call(
                    Method::POST,
                    &format!("/v1/vms/{id}/pause"),
                    Some(json!({ "to_disk": to_disk })),
                )
                .await?
        }
        VmCommand::Resume { id } => {
            client
                .call(Method::POST, &format!("/v1/vms/{id}/resume"), None)
                .await?
        }
        VmCommand::Rm { id } => {
            let _: Value = client
                .call(Method::DELETE, &format!("/v1/vms/{id}"), None)
                .await?;
            println!("destroyed {id}");
            return Ok(());
        }
    };
    if target.json {
        return print_json(&answer);
    }
    println!("{}", vm_line(&answer));
    Ok(())
}

pub async fn run(target: &Target<'_>, command: RunCommand) -> anyhow::Result<()> {
    let client = target.client()?;
    match command {
        RunCommand::List { repo } => {
            let name = forge::git::RepoName::parse(&repo)?;
            let runs: Value = client
                .call(
                    Method::GET,
                    &format!("/v1/repos/{}/{}/runs", name.owner, name.name),
                    None,
                )
                .await?;
            if target.json {
                return print_json(&runs);
            }
            println!(
                "{:<6} {:<10} {:<24} {:<10} CREATED",
                "RUN", "STATE", "BRANCH", "COMMIT"
            );
            for run in runs.as_array().into_iter().flatten() {
                println!(
                    "{:<6} {:<10} {:<24} {:<10} {}",
                    run["id"],
                    text(&run["state"]),
                    text(&run["branch"]),
                    text(&run["commit_id"]).chars().take(8).collect::<String>(),
                    text(&run["created_at"])
                );
            }
        }
        RunCommand::Show { id } => {
            let run: Value = client
                .call(Method::GET, &format!("/v1/runs/{id}"), None)
                .await?;
            if target.json {
                return print_json(&run);
            }
            println!(
                "run {id}: {} on {} at {}",
                text(&run["state"]),
                text(&run["branch"]),
                text(&run["commit_id"])
            );
            if let Some(error) = run["error"].as_str() {
                println!("error: {error}");
            }
            for step in run["steps"].as_array().into_iter().flatten() {
                println!(
                    "  {:<12} {:<10} exit {:<4} {} ms",
                    text(&step["name"]),
                    text(&step["status"]),
                    step["exit_code"],
                    step["duration_ms"]
                );
            }
        }
        RunCommand::Logs { id, follow: false } => {
            print!("{}", client.text(&format!("/v1/runs/{id}/logs")).await?);
        }
        RunCommand::Logs { id, follow: true } => follow_logs(&client, id).await?,
    }
    Ok(())
}

/// Prints a run's server-sent events as plain text until `end`.
async fn follow_logs(client: &super::client::Client, id: i64) -> anyhow::Result<()> {
    let response = client
        .stream(&format!("/v1/runs/{id}/logs?follow=true"))
        .await?;
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut event = String::new();
    let mut stdout = std::io::stdout();
    while let Some(chunk) = body.next().await {
        buffer.push_str(&String::from_utf8_lossy(
            &chunk.context("the log stream broke")?,
        ));
        while let Some(end) = buffer.find('\n') {
            let line: String = buffer.drain(..=end).collect();
            let line = line.trim_end();
            if let Some(name) = line.strip_prefix("event:") {
                event = name.trim().to_owned();
            } else if let Some(data) = line.strip_prefix("data:") {
                let data: Value = serde_json::from_str(data.trim()).unwrap_or_default();
                match event.as_str() {
                    "log" => write!(stdout, "{}", text(&data["text"]))?,
                    "step" => writeln!(
                        stdout,
                        "== {} ({}) ==",
                        text(&data["name"]),
                        text(&data["status"])
                    )?,
                    "end" => {
                        writeln!(stdout, "== run {} ==", text(&data["state"]))?;
                        return Ok(());
                    }
                    _ => {}
                }
                stdout.flush()?;
            }
        }
    }
    Ok(())
}
