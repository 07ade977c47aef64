//! Branch pipelines: every push to a branch runs the branch's lint and
//! tests in the branch's own sandbox.
//!
//! Steps of a run:
//! 1. the consumer reads `push` events from the outbox after its cursor and
//!    queues one run per branch update, moving the cursor in the same
//!    transaction (a crash neither loses nor doubles a run);
//! 2. a newer run of the same branch cancels the older one (its running
//!    step is killed), and runs of one branch never overlap. A run whose
//!    steps come from another branch (a `pipeline.requested` event with a
//!    `plan`, which the review bot asks for) cancels only the older such
//!    run: it neither cancels nor is cancelled by the branch's own runs;
//! 3. the branch's sandbox is found, or made: a fork of the default
//!    branch's sandbox (dependencies and warm state carry over), else a new
//!    one; paused sandboxes are resumed;
//! 4. `checkout`: a git bundle of the branch (incremental from the commit the
//!    sandbox last had) is copied in through the agent and checked out in
//!    `/workspace`, whose `origin` is the forge;
//! 5. the steps are read from the run's commit, or from the `plan` commit
//!    the run names (the checkout is still the run's commit; see
//!    [`plan::plan_from`]). `install` runs when the dependency manifests
//!    changed since the sandbox last installed, then each step; the first
//!    failure skips the rest. Logs stream into the database as they come;
//! 6. `run.started` and `run.completed` go to the outbox, so webhooks and
//!    the review bot see them.
//!
//! At start-up, runs left `running` by a stopped forge are marked `error`
//! and queued runs start.

pub mod plan;
mod runner;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api_types::RunState;
use tokio_util::sync::CancellationToken;

use crate::events::EventBus;
use crate::git::{Repositories, inspect};
use crate::store::{NewEvent, NewRun, PlanSource, RunRow, Store};
use crate::vms::Sandboxes;

/// The token id recorded as the creator of pipeline sandboxes.
pub const PIPELINE_ACTOR: &str = "pipeline";

/// One branch's run slot: runs of a branch take its lock in turn (they
/// share its sandbox). `current` holds the newest run's token of each kind,
/// keyed by whether its steps are borrowed from another commit: a new run
/// cancels the one of its own kind before it.
#[derive(Default)]
struct BranchSlot {
    lock: Arc<tokio::sync::Mutex<()>>,
    current: HashMap<bool, CancellationToken>,
}

/// The plan of a run of commit `tree` with the steps of commit `steps`
/// (the same commit for a run of its own steps), both in the repository at
/// `dir`. A commit that cannot be read is an error, not a commit without
/// files (which would plan no steps at all). Blocks.
pub fn plan_at(dir: &Path, steps: &str, tree: &str) -> Result<plan::Plan, String> {
    for commit in [steps, tree] {
        inspect::read_file_at(dir, commit, ".forge.toml")
            .map_err(|e| format!("cannot read commit {commit}: {e}"))?;
    }
    let at = |commit: &str, path: &str| inspect::read_file_at(dir, commit, path).ok().flatten();
    plan::plan_from(|path| at(steps, path), |path| at(tree, path))
}

pub struct Pipelines {
    store: Store,
    repos: Repositories,
    sandboxes: Arc<Sandboxes>,
    events: EventBus,
    public_url: String,
    slots: Mutex<HashMap<(String, String), BranchSlot>>,
}

impl Pipelines {
    pub fn new(
        store: Store,
        repos: Repositories,
        sandboxes: Arc<Sandboxes>,
        events: EventBus,
        public_url: String,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            repos,
            sandboxes,
            events,
            public_url,
            slots: Mutex::new(HashMap::new()),
        })
    }

    /// Recovers from a previous stop, then consumes push events until
    /// `shutdown`.
    pub fn start(self: &Arc<Self>, shutdown: CancellationToken) {
        let pipelines = self.clone();
        tokio::spawn(async move {
            if let Err(error) = pipelines.recover().await {
                tracing::error!(
                    error = format!("{error:#}"),
                    "recovering pipeline runs failed"
                );
            }
            let mut news = pipelines.events.subscribe();
            loop {
                let consumed = match pipelines.consume().await {
                    Ok(consumed) => consumed,
                    Err(error) => {
                        tracing::error!(error = format!("{error:#}"), "reading push events failed");
                        0
                    }
                };
                if consumed > 0 {
                    continue;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = news.recv() => {}
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        });
    }

    async fn recover(self: &Arc<Self>) -> anyhow::Result<()> {
        for run in self.store.runs_in_state(RunState::Running).await? {
            self.store
                .finish_run(
                    run.id,
                    RunState::Error,
                    Some("the forge stopped during this run"),
                )
                .await?;
        }
        for run in self.store.runs_in_state(RunState::Queued).await? {
            self.launch(run);
        }
        Ok(())
    }

    /// Queues runs for the next batch of events; returns how many events
    /// were read.
    async fn consume(self: &Arc<Self>) -> anyhow::Result<usize> {
        let cursor = self.store.pipeline_cursor().await?;
        let events = self.store.all_events_after(cursor, 100).await?;
        let Some(last) = events.last().map(|event| event.id) else {
            return Ok(0);
        };
        let enabled = self.sandboxes.describe().0.is_some();
        let runs: Vec<NewRun> = events
            .iter()
            .filter(|_| enabled)
            .filter(|event| event.kind == "push" || event.kind == "pipeline.requested")
            .filter_map(|event| {
                let payload: serde_json::Value = serde_json::from_str(&event.payload).ok()?;
                if payload["deleted"] == true {
                    return None;
                }
                let plan = match &payload["plan"] {
                    serde_json::Value::Null => None,
                    plan => Some(PlanSource {
                        branch: plan["branch"].as_str()?.to_owned(),
                        commit: plan["commit"].as_str()?.to_owned(),
                    }),
                };
                Some(NewRun {
                    repo_id: event.repo_id.clone(),
                    repo_name: event.repo_name.clone(),
                    branch: payload["branch"].as_str()?.to_owned(),
                    commit_id: payload["after"].as_str()?.to_owned(),
                    event_id: event.id,
                    plan,
                })
            })
            .collect();
        for run in self.store.queue_runs(&runs, last).await? {
            tracing::info!(run = run.id, repo = %run.repo_name, branch = %run.branch, "run queued");
            self.launch(run);
        }
        Ok(events.len())
    }

    /// Starts a run in its branch's slot, cancelling the branch's older run
    /// of the same kind.
    fn launch(self: &Arc<Self>, run: RunRow) {
        let token = CancellationToken::new();
        let lock = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let slot = slots
                .entry((run.repo_id.clone(), run.branch.clone()))
                .or_default();
            let borrowed = run.plan_commit.is_some();
            if let Some(older) = slot.current.insert(borrowed, token.clone()) {
                older.cancel();
            }
            slot.lock.clone()
        };
        let pipelines = self.clone();
        tokio::spawn(async move {
            let _turn = lock.lock().await;
            pipelines.execute(run, token).await;
        });
    }

    /// Records an event of a run in the outbox and announces it.
    async fn record(&self, run: &RunRow, kind: &str, payload: serde_json::Value) {
        let event = NewEvent {
            kind: kind.to_owned(),
            ref_name: Some(format!("refs/heads/{}", run.branch)),
            payload,
        };
        let recorded = self
            .events
            .record(&self.store, &run.repo_id, &run.repo_name, None, &[event])
            .await;
        if let Err(error) = recorded {
            tracing::error!(run = run.id, error = %error, kind, "recording a run event failed");
        }
    }

    fn run_url(&self, run: &RunRow) -> String {
        format!("{}/v1/runs/{}", self.public_url, run.id)
    }
}
