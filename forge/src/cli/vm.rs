//! `forge vm …` and `forge run …`: sandboxes and pipeline runs over the API.

use std::io::Write;

use anyhow::Context;
use api_types::runs::{LogEvent, RunDetail, RunEnd, RunView, StepEvent};
use api_types::vms::{
    CarriedVm, CreateVm, ExecOutput, ExecRequest, ForkRequest, Forks, MoveRequest, MovedVm,
    PauseRequest, Persistence, TimeoutRequest, VmView,
};
use clap::Subcommand;
use reqwest::Method;
use serde_json::Value;

use super::{Target, body, print_json};

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
        /// A label `key=value` to find it by (repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// A label `key=value` its sandbox node must have (repeatable).
        #[arg(long = "node-label", value_parser = parse_label)]
        node_labels: Vec<(String, String)>,
        /// Destroy it this many seconds from now, whatever it is doing.
        #[arg(long)]
        ttl_secs: Option<u64>,
        /// Start from this template (`forge template build`).
        #[arg(long, conflicts_with_all = ["snapshot", "vcpus", "mem_mib"])]
        template: Option<String>,
        /// Start from this snapshot (name or id).
        #[arg(long, conflicts_with_all = ["vcpus", "mem_mib"])]
        snapshot: Option<String>,
    },
    /// List sandboxes, oldest first.
    List {
        /// Only those with this label: `key=value`, or `key` for any value
        /// (repeatable; all must match).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Only those in this state (running, paused, paused_to_disk, crashed).
        #[arg(long)]
        state: Option<String>,
        /// Only those of this repository (`owner/name`).
        #[arg(long)]
        repo: Option<String>,
    },
    /// Move a sandbox's deadline to this many seconds from now (`--none`
    /// removes it).
    Timeout {
        id: String,
        #[arg(required_unless_present = "none")]
        ttl_secs: Option<u64>,
        #[arg(long, conflicts_with = "ttl_secs")]
        none: bool,
    },
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
        /// A label `key=value` set on every copy (repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// The copies' deadline from now (they keep the parent's otherwise).
        #[arg(long)]
        ttl_secs: Option<u64>,
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
    /// Move a sandbox paused to disk to another node and resume it there
    /// (admin).
    Move {
        id: String,
        /// The node; by default the one with the most memory free.
        #[arg(long)]
        node: Option<String>,
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

/// `key=value`, as `--label` takes it.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("{text:?}: write key=value"))
}

fn vm_line(vm: &VmView) -> String {
    format!(
        "{:<16} {:<15} {:<10} {:<16} {:<24} {}",
        vm.id,
        vm.state.as_str(),
        vm.backend,
        vm.parent.as_deref().unwrap_or("-"),
        vm.repo.as_deref().unwrap_or("-"),
        vm.branch.as_deref().unwrap_or("-")
    )
}

pub async fn vm(target: &Target<'_>, command: VmCommand) -> anyhow::Result<()> {
    let client = target.client()?;
    let answer: VmView = match command {
        VmCommand::Create {
            repo,
            branch,
            vcpus,
            mem_mib,
            ephemeral,
            idle_timeout_secs,
            labels,
            node_labels,
            ttl_secs,
            template,
            snapshot,
        } => {
            let request = CreateVm {
                repo,
                branch,
                vcpus,
                mem_mib,
                persistence: Some(Persistence::of(!ephemeral)),
                idle_timeout_secs,
                labels: labels.into_iter().collect(),
                node_labels: node_labels.into_iter().collect(),
                ttl_secs,
                template,
                snapshot,
                ..CreateVm::default()
            };
            client
                .call(Method::POST, "/v1/vms", body(&request)?)
                .await?
        }
        VmCommand::List {
            labels,
            state,
            repo,
        } => {
            let mut query: Vec<String> = labels
                .iter()
                .map(|label| format!("label={}", web::api::encode(&label.replacen('=', ":", 1))))
                .collect();
            if let Some(state) = &state {
                query.push(format!("state={}", web::api::encode(state)));
            }
            if let Some(repo) = &repo {
                query.push(format!("repo={}", web::api::encode(repo)));
            }
            // Every page: a full one names the next in `x-next-cursor`.
            let mut vms: Vec<VmView> = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let mut page_query = query.clone();
                if let Some(cursor) = &cursor {
                    page_query.push(format!("cursor={}", web::api::encode(cursor)));
                }
                let response = client
                    .stream(&format!("/v1/vms?{}", page_query.join("&")))
                    .await?;
                cursor = response
                    .headers()
                    .get("x-next-cursor")
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned);
                let page: Vec<VmView> = response
                    .json()
                    .await
                    .context("the VM list is not the expected JSON")?;
                vms.extend(page);
                if cursor.is_none() {
                    break;
                }
            }
            if target.json {
                return print_json(&vms);
            }
            println!(
                "{:<16} {:<15} {:<10} {:<16} {:<24} BRANCH",
                "ID", "STATE", "BACKEND", "PARENT", "REPO"
            );
            for vm in &vms {
                println!("{}", vm_line(vm));
            }
            return Ok(());
        }
        VmCommand::Exec { id, cwd, argv } => {
            let request = ExecRequest {
                argv: Some(argv),
                cwd,
                ..ExecRequest::default()
            };
            let out: ExecOutput = client
                .call(Method::POST, &format!("/v1/vms/{id}/exec"), body(&request)?)
                .await?;
            if target.json {
                return print_json(&out);
            }
            print!("{}", out.stdout);
            eprint!("{}", out.stderr);
            if out.exit.truncated {
                eprintln!("forge: the output was truncated");
            }
            std::io::stdout().flush()?;
            if out.exit.exit_code != 0 {
                std::process::exit(out.exit.exit_code);
            }
            return Ok(());
        }
        VmCommand::Timeout { id, ttl_secs, none } => {
            let request = TimeoutRequest {
                ttl_secs: ttl_secs.filter(|_| !none),
            };
            client
                .call(
                    Method::POST,
                    &format!("/v1/vms/{id}/timeout"),
                    body(&request)?,
                )
                .await?
        }
        VmCommand::Fork {
            id,
            count,
            labels,
            ttl_secs,
        } => {
            let request = ForkRequest {
                count: Some(count),
                labels: labels.into_iter().collect(),
                ttl_secs,
            };
            let forks: Forks = client
                .call(Method::POST, &format!("/v1/vms/{id}/fork"), body(&request)?)
                .await?;
            if target.json {
                return print_json(&forks);
            }
            for fork in &forks.forks {
                println!("{} (kept {:?})", vm_line(&fork.vm), fork.kept);
            }
            return Ok(());
        }
        VmCommand::Pause { id, to_disk } => {
            client
                .call(
                    Method::POST,
                    &format!("/v1/vms/{id}/pause"),
                    body(&PauseRequest { to_disk })?,
                )
                .await?
        }
        VmCommand::Resume { id } => {
            let resumed: CarriedVm = client
                .call(Method::POST, &format!("/v1/vms/{id}/resume"), None)
                .await?;
            if target.json {
                return print_json(&resumed);
            }
            resumed.vm
        }
        VmCommand::Move { id, node } => {
            let moved: MovedVm = client
                .call(
                    Method::POST,
                    &format!("/v1/vms/{id}/move"),
                    body(&MoveRequest { node })?,
                )
                .await?;
            if target.json {
                return print_json(&moved);
            }
            println!("moved to node {}", moved.node);
            moved.carried.vm
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
            let runs: Vec<RunView> = client
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
            for run in &runs {
                println!(
                    "{:<6} {:<10} {:<24} {:<10} {}",
                    run.id,
                    run.state.as_str(),
                    run.branch,
                    run.commit_id.chars().take(8).collect::<String>(),
                    run.created_at
                );
            }
        }
        RunCommand::Show { id } => {
            let detail: RunDetail = client
                .call(Method::GET, &format!("/v1/runs/{id}"), None)
                .await?;
            if target.json {
                return print_json(&detail);
            }
            let run = &detail.run;
            println!(
                "run {id}: {} on {} at {}",
                run.state, run.branch, run.commit_id
            );
            if let Some(error) = &run.error {
                println!("error: {error}");
            }
            let or_null = |n: Option<i64>| n.map_or_else(|| "null".to_owned(), |n| n.to_string());
            for step in &run.steps {
                println!(
                    "  {:<12} {:<10} exit {:<4} {} ms",
                    step.name,
                    step.status.as_str(),
                    or_null(step.exit_code),
                    or_null(step.duration_ms)
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
    let mut stdout = std::io::stdout();
    super::client::read_events(response, |event, data| {
        match event {
            "log" => {
                let log: LogEvent = serde_json::from_str(data)?;
                write!(stdout, "{}", log.text)?;
            }
            "step" => {
                let step: StepEvent = serde_json::from_str(data)?;
                writeln!(stdout, "== {} ({}) ==", step.name, step.status)?;
            }
            "end" => {
                let end: RunEnd = serde_json::from_str(data)?;
                writeln!(stdout, "== run {} ==", end.state)?;
                return Ok(false);
            }
            _ => {}
        }
        stdout.flush()?;
        Ok(true)
    })
    .await
}
