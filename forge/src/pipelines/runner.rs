//! Executing one run: sandbox, checkout, install, steps, events.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ::sandbox::{Command, ExecEvent, ExitStatus};
use api_types::runs::StepView;
use api_types::{RunState, StepState};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::plan::{self, Plan};
use super::{Live, PIPELINE_ACTOR, PIPELINE_LABEL, Pipelines};
use crate::store::{BranchSandbox, RunRow};
use crate::vms::NewVm;

/// How long an unused branch sandbox stays up before it is paused to disk.
const BRANCH_IDLE_SECS: u64 = 900;

/// What a step's environment says so that tools colour their output as
/// on a terminal (the log is read by a browser that renders ANSI colours)
/// without being one: no pager, no prompt waits for input.
const COLOUR_ENV: [(&str, &str); 4] = [
    ("FORCE_COLOR", "1"),
    ("CLICOLOR_FORCE", "1"),
    ("TERM", "xterm-256color"),
    ("COLUMNS", "120"),
];

/// Longest a step's output waits before it is written to its log.
const LOG_FLUSH: Duration = Duration::from_millis(250);

/// Output written at once when this much is waiting.
const LOG_FLUSH_BYTES: usize = 64 << 10;

/// The text of `bytes` up to the last whole UTF-8 character, taken out; a
/// character cut between two reads stays for the next. Invalid bytes
/// become U+FFFD.
fn complete_text(bytes: &mut Vec<u8>) -> String {
    let whole = match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(error) if error.error_len().is_none() => error.valid_up_to(),
        Err(_) => bytes.len(),
    };
    let text = String::from_utf8_lossy(&bytes[..whole]).into_owned();
    bytes.drain(..whole);
    text
}

/// Where a run's steps came from, as its events say: `null` for its own.
fn plan_of(run: &RunRow) -> serde_json::Value {
    match (&run.plan_ref, &run.plan_commit) {
        (Some(branch), Some(commit)) => json!({ "branch": branch, "commit": commit }),
        _ => serde_json::Value::Null,
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Passed,
    Failed,
    Cancelled,
}

impl Pipelines {
    /// Runs `run` to its end; answers the state it ended in.
    pub(super) async fn execute(&self, run: RunRow, live: &Live) -> RunState {
        if live.token.is_cancelled() {
            let _ = self
                .store
                .finish_run(run.id, RunState::Cancelled, Some(live.reason()))
                .await;
            return RunState::Cancelled;
        }
        self.record(
            &run,
            "run.started",
            json!({
                "run": run.id, "repo": run.repo_name, "branch": run.branch, "commit": run.commit_id,
                "plan": plan_of(&run), "url": self.run_url(&run),
            }),
        )
        .await;
        let started = Instant::now();
        let (state, error) = match self.run_steps(&run, &live.token).await {
            Ok(Outcome::Passed) => (RunState::Passed, None),
            Ok(Outcome::Failed) => (RunState::Failed, None),
            Ok(Outcome::Cancelled) => (RunState::Cancelled, Some(live.reason().to_owned())),
            Err(error) => (RunState::Error, Some(format!("{error:#}"))),
        };
        if let Err(failure) = self.store.finish_run(run.id, state, error.as_deref()).await {
            tracing::error!(run = run.id, error = %failure, "recording the end of a run failed");
        }
        let steps: Vec<StepView> = self
            .store
            .steps(run.id)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(StepView::from)
            .collect();
        tracing::info!(run = run.id, repo = %run.repo_name, branch = %run.branch, state = %state, "run finished");
        self.record(
            &run,
            "run.completed",
            json!({
                "run": run.id, "repo": run.repo_name, "branch": run.branch, "commit": run.commit_id,
                "plan": plan_of(&run), "status": state, "error": error, "duration_ms": started.elapsed().as_millis() as u64,
                "steps": steps, "url": self.run_url(&run),
            }),
        )
        .await;
        state
    }

    async fn run_steps(&self, run: &RunRow, token: &CancellationToken) -> anyhow::Result<Outcome> {
        let dir = self.repos.path(&run.repo_id);
        let commit = run.commit_id.clone();
        let steps_commit = run.plan_commit.clone().unwrap_or_else(|| commit.clone());
        let planned =
            tokio::task::spawn_blocking(move || super::plan_at(&dir, &steps_commit, &commit))
                .await?;
        let plan: Plan = match planned {
            Ok(plan) => plan,
            Err(problem) => {
                self.store
                    .insert_steps(run.id, &[("config".into(), ".forge.toml".into())])
                    .await?;
                let origin = match (&run.plan_ref, &run.plan_commit) {
                    (Some(branch), Some(commit)) => format!("steps from {branch} at {commit}: "),
                    _ => String::new(),
                };
                self.store
                    .append_step_log(run.id, 0, &format!("{origin}{problem}\n"))
                    .await?;
                self.store
                    .set_step(run.id, 0, StepState::Failed, None, Some(0))
                    .await?;
                return Ok(Outcome::Failed);
            }
        };
        let mut branch = self.branch_sandbox(run, plan.template.as_deref()).await?;
        self.store.start_run(run.id, &branch.vm_id).await?;
        let mut steps = vec![(
            "checkout".to_owned(),
            format!("git checkout {}", run.commit_id),
        )];
        if let Some(install) = &plan.install {
            steps.push(("install".to_owned(), install.run.clone()));
        }
        steps.extend(
            plan.steps
                .iter()
                .map(|step| (step.name.clone(), step.run.clone())),
        );
        self.store.insert_steps(run.id, &steps).await?;

        let checkout_started = Instant::now();
        let checkout = crate::vms::checkout::checkout(
            &self.sandboxes,
            &self.repos,
            &crate::vms::checkout::Target {
                vm: &branch.vm_id,
                repo_id: &run.repo_id,
                clone_url: &format!("{}/{}.git", self.public_url, run.repo_name),
                branch: &run.branch,
                commit: &run.commit_id,
                have: branch.commit_id.as_deref(),
            },
        )
        .await;
        let checked_out = match checkout {
            Ok(log) => {
                self.store.append_step_log(run.id, 0, &log).await?;
                true
            }
            Err(error) => {
                self.store
                    .append_step_log(run.id, 0, &format!("{error:#}\n"))
                    .await?;
                false
            }
        };
        self.store
            .set_step(
                run.id,
                0,
                StepState::of_exit(checked_out),
                None,
                Some(checkout_started.elapsed().as_millis() as i64),
            )
            .await?;
        if !checked_out {
            return Ok(Outcome::Failed);
        }
        branch.commit_id = Some(run.commit_id.clone());
        self.store
            .set_branch_sandbox(&run.repo_id, &run.branch, &branch)
            .await?;

        let mut position = 1;
        if let Some(install) = &plan.install {
            if branch.install_hash.as_deref() == Some(install.hash.as_str()) {
                self.store
                    .append_step_log(
                        run.id,
                        position,
                        "dependencies unchanged since this sandbox last installed them\n",
                    )
                    .await?;
                self.store
                    .set_step(run.id, position, StepState::Skipped, None, Some(0))
                    .await?;
            } else {
                let outcome = self
                    .step(
                        run,
                        &branch.vm_id,
                        position,
                        &install.run,
                        plan::DEFAULT_TIMEOUT,
                        token,
                    )
                    .await?;
                if outcome != Outcome::Passed {
                    return Ok(outcome);
                }
                branch.install_hash = Some(install.hash.clone());
                self.store
                    .set_branch_sandbox(&run.repo_id, &run.branch, &branch)
                    .await?;
            }
            position += 1;
        }
        let mut outcome = Outcome::Passed;
        for step in &plan.steps {
            outcome = self
                .step(run, &branch.vm_id, position, &step.run, step.timeout, token)
                .await?;
            if outcome != Outcome::Passed {
                break;
            }
            position += 1;
        }
        // A change on a branch other than the default gets reviewed: the
        // review reads the analysis.
        let reviewed = self
            .store
            .repo_by_id(&run.repo_id)
            .await?
            .is_some_and(|repo| repo.default_branch != run.branch);
        if outcome != Outcome::Cancelled && reviewed {
            self.analyse(run, &branch.vm_id, token).await;
        }
        Ok(outcome)
    }

    /// The branch's sandbox: its own when alive; else a fork of the default
    /// branch's; else a new one, from `template` when the plan names one.
    /// A sandbox of another template than the plan's is not reused.
    async fn branch_sandbox(
        &self,
        run: &RunRow,
        template: Option<&str>,
    ) -> anyhow::Result<BranchSandbox> {
        let alive = |sandbox: Option<BranchSandbox>| async {
            let sandbox = sandbox?;
            match self.sandboxes.get(&sandbox.vm_id).await {
                Ok(vm) if vm.state.is_reachable() && vm.template.as_deref() == template => {
                    Some(sandbox)
                }
                _ => None,
            }
        };
        if let Some(own) = alive(self.store.branch_sandbox(&run.repo_id, &run.branch).await?).await
        {
            return Ok(own);
        }
        let repo = self
            .store
            .repo_by_id(&run.repo_id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the repository was deleted"))?;
        let base = if run.branch != repo.default_branch {
            alive(
                self.store
                    .branch_sandbox(&run.repo_id, &repo.default_branch)
                    .await?,
            )
            .await
        } else {
            None
        };
        let sandbox = match base {
            Some(base) => {
                let forks = self
                    .sandboxes
                    .fork(&base.vm_id, 1, PIPELINE_ACTOR, &Default::default())
                    .await?;
                let (vm, carried) = forks
                    .into_iter()
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("the fork returned no sandbox"))?;
                self.store.set_vm_branch(&vm.id, &run.branch).await?;
                tracing::info!(run = run.id, vm = %vm.id, from = %base.vm_id, kept = ?carried.kept, "branch sandbox forked from the default branch's");
                BranchSandbox {
                    vm_id: vm.id,
                    commit_id: base.commit_id,
                    install_hash: base.install_hash,
                }
            }
            None => {
                let origin = match template {
                    Some(name) => {
                        crate::templates::check_pipeline_template(&self.store, name).await?;
                        Some(crate::templates::origin(&self.store, name).await?.0)
                    }
                    None => None,
                };
                let vm = self
                    .sandboxes
                    .create(NewVm {
                        vcpus: 1,
                        mem_mib: 1024,
                        disk_mib: 2048,
                        persistent: true,
                        idle_timeout_secs: Some(BRANCH_IDLE_SECS),
                        env: Vec::new(),
                        repo_id: Some(run.repo_id.clone()),
                        branch: Some(run.branch.clone()),
                        created_by: PIPELINE_ACTOR.to_owned(),
                        dev_server: None,
                        node_labels: BTreeMap::new(),
                        labels: BTreeMap::from([(
                            PIPELINE_LABEL.0.to_owned(),
                            PIPELINE_LABEL.1.to_owned(),
                        )]),
                        ttl_secs: None,
                        origin,
                    })
                    .await?;
                BranchSandbox {
                    vm_id: vm.id,
                    commit_id: None,
                    install_hash: None,
                }
            }
        };
        self.store
            .set_branch_sandbox(&run.repo_id, &run.branch, &sandbox)
            .await?;
        Ok(sandbox)
    }

    /// Runs one step, streaming its output into the log.
    async fn step(
        &self,
        run: &RunRow,
        vm: &str,
        position: usize,
        script: &str,
        timeout: Duration,
        token: &CancellationToken,
    ) -> anyhow::Result<Outcome> {
        self.store
            .set_step(run.id, position, StepState::Running, None, None)
            .await?;
        let started = Instant::now();
        // The push's variables first: the forge's own come after and win
        // (push::options refuses their names anyway).
        let variables: BTreeMap<String, String> =
            serde_json::from_str(&run.variables).unwrap_or_default();
        let command = variables.into_iter().fold(
            Command::shell(script).cwd("/workspace"),
            |command, (key, value)| command.env(key, value),
        );
        let command = COLOUR_ENV.into_iter().fold(
            command
                .env("CI", "true")
                .env("FORGE_RUN", run.id.to_string())
                .timeout(timeout),
            |command, (key, value)| command.env(key, value),
        );
        let mut stream = self.sandboxes.exec_stream(vm, command).await?;
        // Output waits at most LOG_FLUSH before it is written, so a reader
        // sees a line soon after it was printed even if the step then says
        // nothing for a while.
        let mut pending = Vec::new();
        let mut flush_at: Option<tokio::time::Instant> = None;
        let exited = loop {
            let event = tokio::select! {
                _ = token.cancelled() => {
                    drop(stream);
                    self.store.append_step_log(run.id, position, &String::from_utf8_lossy(&pending)).await?;
                    self.store.set_step(run.id, position, StepState::Cancelled, None, Some(started.elapsed().as_millis() as i64)).await?;
                    return Ok(Outcome::Cancelled);
                }
                _ = tokio::time::sleep_until(flush_at.unwrap_or_else(tokio::time::Instant::now)), if flush_at.is_some() => {
                    flush_at = None;
                    let text = complete_text(&mut pending);
                    self.store.append_step_log(run.id, position, &text).await?;
                    continue;
                }
                event = stream.next() => event?,
            };
            match event {
                Some(ExecEvent::Stdout(bytes) | ExecEvent::Stderr(bytes)) => {
                    pending.extend_from_slice(&bytes);
                    if pending.len() >= LOG_FLUSH_BYTES {
                        flush_at = Some(tokio::time::Instant::now());
                    } else if flush_at.is_none() {
                        flush_at = Some(tokio::time::Instant::now() + LOG_FLUSH);
                    }
                }
                Some(ExecEvent::Exited(exited)) => break exited,
                None => anyhow::bail!("the sandbox's agent went away during the step"),
            }
        };
        let mut pending = String::from_utf8_lossy(&pending).into_owned();
        if exited.timed_out {
            pending.push_str(&format!(
                "\nthe step timed out after {} s\n",
                timeout.as_secs()
            ));
        }
        self.store
            .append_step_log(run.id, position, &pending)
            .await?;
        let code = match exited.status {
            ExitStatus::Code(code) => i64::from(code),
            ExitStatus::Signal(signal) => 128 + i64::from(signal),
        };
        let passed = exited.status.success() && !exited.timed_out;
        self.store
            .set_step(
                run.id,
                position,
                StepState::of_exit(passed),
                Some(code),
                Some(started.elapsed().as_millis() as i64),
            )
            .await?;
        Ok(if passed {
            Outcome::Passed
        } else {
            Outcome::Failed
        })
    }
}

#[cfg(test)]
mod tests {
    use super::complete_text;

    #[test]
    fn a_character_cut_between_reads_waits_for_its_rest() {
        let mut bytes = "ok é".as_bytes().to_vec();
        let last = bytes.pop().expect("é is two bytes");
        assert_eq!(complete_text(&mut bytes), "ok ");
        assert_eq!(bytes.len(), 1, "the cut character waits");
        bytes.push(last);
        assert_eq!(complete_text(&mut bytes), "é");
        let mut invalid = vec![b'a', 0xff, b'b'];
        assert_eq!(complete_text(&mut invalid), "a\u{fffd}b");
        assert!(invalid.is_empty());
    }
}
