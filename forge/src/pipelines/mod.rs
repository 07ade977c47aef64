//! Branch pipelines: every push to a branch runs the branch's lint and
//! tests in the branch's own sandbox.
//!
//! Steps of a run:
//! 1. the consumer reads `push` events from the outbox after its cursor and
//!    queues one run per branch update, moving the cursor in the same
//!    transaction (a crash neither loses nor doubles a run);
//! 2. a newer run of the same branch cancels the older one (its running
//!    step is killed), and runs of one branch never overlap; a user may
//!    cancel a run too ([`Pipelines::cancel`]), or ask for it again
//!    ([`Pipelines::rerun`]: a `pipeline.requested` event, as below). A run whose
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
//! Several forge processes may share the database: a run is leased to the
//! process that runs it ([`RUN_LEASE_SECS`], renewed every
//! [`RENEW_EVERY`]), takes its branch's turn in the database as well as in
//! the process (runs of a branch never overlap, whichever process runs
//! them), and learns at each renewal that another process ended it (a
//! user's cancel there). Every pass of the consumer takes over the runs
//! whose lease lapsed: a queued one is started here, a running one (its
//! process stopped mid-run, or this forge before a restart) ends `error`.

mod analysis;
pub mod plan;
mod review;
mod runner;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use api_types::RunState;
use tokio_util::sync::CancellationToken;

use crate::auth::Caller;
use crate::events::EventBus;
use crate::git::push::options::PushOptions;
use crate::git::{Repositories, inspect};
use crate::store::{EventRow, NewEvent, NewRun, PlanSource, RunRow, Store};
use crate::vms::Sandboxes;

/// The token id recorded as the creator of pipeline sandboxes.
pub const PIPELINE_ACTOR: &str = "pipeline";

/// The label of a branch's sandbox, so listings can tell the pipelines'
/// sandboxes from those of users (`GET /v1/vms?label=forge/role:pipeline`).
pub const PIPELINE_LABEL: (&str, &str) = ("forge/role", "pipeline");

/// Why a run superseded by a newer one ended.
const SUPERSEDED: &str = "a newer push to the branch superseded it";

/// How long a run stays leased to the process running it without a
/// renewal; past it another process takes the run over.
pub const RUN_LEASE_SECS: i64 = 10;

/// How often a live run's lease is renewed (and its state read back).
pub const RENEW_EVERY: Duration = Duration::from_secs(2);

/// How often a run waiting for its branch's turn held by another process
/// asks again.
const TURN_POLL: Duration = Duration::from_millis(500);

/// A queued or running run's cancellation: the token its steps watch and
/// why it was cancelled (the first reason given wins).
#[derive(Clone, Default)]
struct Live {
    token: CancellationToken,
    reason: Arc<OnceLock<String>>,
}

impl Live {
    fn cancel(&self, reason: &str) {
        let _ = self.reason.set(reason.to_owned());
        self.token.cancel();
    }

    fn reason(&self) -> &str {
        self.reason.get().map_or(SUPERSEDED, String::as_str)
    }
}

/// One branch's run slot: runs of a branch take its lock in turn (they
/// share its sandbox). `current` holds the newest run of each kind,
/// keyed by whether its steps are borrowed from another commit: a new run
/// cancels the one of its own kind before it.
#[derive(Default)]
struct BranchSlot {
    lock: Arc<tokio::sync::Mutex<()>>,
    current: HashMap<bool, Live>,
}

/// Why a run cannot be cancelled or run again.
#[derive(Debug, thiserror::Error)]
pub enum RunRefused {
    #[error("run {id} has already finished ({state})")]
    Finished { id: i64, state: RunState },
    #[error("pipelines are off: {0}")]
    Off(String),
    #[error("branch {0} no longer exists")]
    BranchGone(String),
    #[error("run {0} does not exist")]
    NoSuchRun(i64),
    #[error("Reading the branch failed")]
    Git(#[source] inspect::InspectError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
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
    /// Runs queued or running, by id.
    live: Mutex<HashMap<i64, Live>>,
    /// How the forge's own reviews of branches are written (`review.rs`).
    review: ReviewSettings,
    http: reqwest::Client,
    /// This process, as the owner of the runs it leases.
    owner: String,
}

/// How the forge reviews branches of repositories not linked to GitHub:
/// the review mode and the model, as the GitHub bot's.
#[derive(Debug, Clone, Default)]
pub struct ReviewSettings {
    pub mode: crate::review::ReviewMode,
    pub model: Option<crate::review::model::ModelConfig>,
}

impl Pipelines {
    pub fn new(
        store: Store,
        repos: Repositories,
        sandboxes: Arc<Sandboxes>,
        events: EventBus,
        public_url: String,
        review: ReviewSettings,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            repos,
            sandboxes,
            events,
            public_url,
            slots: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            review,
            http: reqwest::Client::new(),
            owner: uuid::Uuid::new_v4().to_string(),
        })
    }

    /// Cancels a queued or running run on behalf of `by` (a token's name):
    /// its running step is killed and the run ends `cancelled`, soon after
    /// this returns.
    pub async fn cancel(&self, id: i64, by: &str) -> Result<(), RunRefused> {
        let run = self.store.run(id).await?.ok_or(RunRefused::NoSuchRun(id))?;
        if run.state.is_finished() {
            return Err(RunRefused::Finished {
                id,
                state: run.state,
            });
        }
        let reason = format!("cancelled by {by}");
        let live = lock(&self.live).get(&id).cloned();
        match live {
            Some(live) => live.cancel(&reason),
            // Run by another forge process (it sees the end at its next
            // renewal and stops the run), or queued by one that stopped.
            None => {
                self.store
                    .finish_run(id, RunState::Cancelled, Some(&reason))
                    .await?
            }
        }
        Ok(())
    }

    /// Queues a new run of a run's commit, on its branch and with the same
    /// steps, on behalf of `by`. Like a push, it supersedes the branch's run
    /// in progress. The request is a `pipeline.requested` event, so
    /// webhooks and the review bot see it; the run is queued here at once
    /// (the consumer, reading the same event, finds it queued).
    pub async fn rerun(self: &Arc<Self>, run: &RunRow, by: &Caller) -> Result<RunRow, RunRefused> {
        if let (None, reason, _) = self.sandboxes.describe() {
            return Err(RunRefused::Off(reason));
        }
        let dir = self.repos.path(&run.repo_id);
        let refname = format!("refs/heads/{}", run.branch);
        let head = tokio::task::spawn_blocking(move || inspect::resolve(&dir, &refname))
            .await
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()))
            .map_err(RunRefused::Git)?;
        if head.is_none() {
            return Err(RunRefused::BranchGone(run.branch.clone()));
        }
        let plan = run
            .plan_ref
            .clone()
            .zip(run.plan_commit.clone())
            .map(|(branch, commit)| PlanSource { branch, commit });
        let variables: BTreeMap<String, String> =
            serde_json::from_str(&run.variables).unwrap_or_default();
        let event = NewEvent {
            kind: "pipeline.requested".into(),
            ref_name: Some(format!("refs/heads/{}", run.branch)),
            payload: serde_json::json!({
                "repo": run.repo_name, "branch": run.branch, "after": run.commit_id,
                "reason": format!("re-run of run #{} by {}", run.id, by.token_name),
                "rerun_of": run.id,
                "plan": plan.as_ref().map(|p| serde_json::json!({ "branch": p.branch, "commit": p.commit })),
                "push_options": PushOptions { ci_skip: false, variables: variables.clone() }.to_json(),
            }),
        };
        let rows = self
            .store
            .insert_events(&run.repo_id, &run.repo_name, Some(&by.token_id), &[event])
            .await?;
        let event_id = rows.first().map_or(0, |row| row.id);
        let new = NewRun {
            repo_id: run.repo_id.clone(),
            repo_name: run.repo_name.clone(),
            branch: run.branch.clone(),
            commit_id: run.commit_id.clone(),
            event_id,
            plan,
            variables,
        };
        // Cursor 0 leaves the consumer's cursor where it is.
        let queued = self.store.queue_runs(&[new], 0).await?;
        self.events
            .publish(rows.into_iter().map(crate::events::Event::from));
        match queued.into_iter().next() {
            Some(queued) => {
                self.launch(queued.clone());
                Ok(queued)
            }
            // The consumer read the event first and queued it.
            None => self
                .store
                .run_for_event(event_id)
                .await?
                .ok_or(RunRefused::NoSuchRun(0)),
        }
    }

    /// The run queued for event `event_id`, waiting up to `within` for the
    /// pipelines to read the event; `None` if none came (pipelines off, or
    /// busy).
    pub async fn run_for_event(&self, event_id: i64, within: Duration) -> Option<RunRow> {
        let deadline = Instant::now() + within;
        loop {
            match self.store.run_for_event(event_id).await {
                Ok(Some(run)) => return Some(run),
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(None) => return None,
                Err(error) => {
                    tracing::warn!(event_id, error = %error, "reading an event's run failed");
                    return None;
                }
            }
        }
    }

    /// The forge's pages' address of a run.
    pub fn page_url(&self, id: i64) -> String {
        format!("{}/-/runs/{id}", self.public_url)
    }

    /// Recovers from a previous stop, then consumes push events until
    /// `shutdown`.
    pub fn start(self: &Arc<Self>, shutdown: CancellationToken) {
        let pipelines = self.clone();
        tokio::spawn(async move {
            let mut news = pipelines.events.subscribe();
            loop {
                if let Err(error) = pipelines.take_over().await {
                    tracing::error!(
                        error = format!("{error:#}"),
                        "taking over runs without a lease failed"
                    );
                }
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

    /// Takes over the runs no process holds a lease on: a queued one is
    /// started here, a running one ends `error` (its process stopped).
    pub(crate) async fn take_over(self: &Arc<Self>) -> anyhow::Result<()> {
        let now = crate::store::unix_now();
        for run in self.store.unleased_runs(now).await? {
            if lock(&self.live).contains_key(&run.id) {
                // Ours, its renewal late.
                continue;
            }
            match run.state {
                // A newer run of its branch and kind was queued meanwhile.
                RunState::Queued
                    if !self.store.runs_beside(&run, true, false).await?.is_empty() =>
                {
                    self.store
                        .finish_run(run.id, RunState::Cancelled, Some(SUPERSEDED))
                        .await?;
                }
                RunState::Queued => self.launch(run),
                _ => {
                    if self
                        .store
                        .claim_run(run.id, &self.owner, now, now + RUN_LEASE_SECS)
                        .await?
                    {
                        tracing::warn!(run = run.id, "a run's forge process stopped during it");
                        self.store
                            .finish_run(
                                run.id,
                                RunState::Error,
                                Some("the forge stopped during this run"),
                            )
                            .await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Leases run `id` to this process; whether it did (another holds it).
    async fn claim(&self, id: i64) -> bool {
        let now = crate::store::unix_now();
        match self
            .store
            .claim_run(id, &self.owner, now, now + RUN_LEASE_SECS)
            .await
        {
            Ok(claimed) => claimed,
            Err(error) => {
                tracing::warn!(run = id, error = %error, "leasing a run failed");
                false
            }
        }
    }

    /// Renews the lease on run `id` every [`RENEW_EVERY`] until aborted;
    /// the run is cancelled when another process ended it or took it over.
    async fn keep_lease(self: Arc<Self>, id: i64, live: Live) {
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            let until = crate::store::unix_now() + RUN_LEASE_SECS;
            match self.store.renew_run(id, &self.owner, until).await {
                Ok(Some((state, error))) if state.is_finished() => {
                    live.cancel(error.as_deref().unwrap_or("ended by another forge process"));
                }
                Ok(Some(_)) => {}
                Ok(None) => live.cancel("another forge process took the run over"),
                Err(error) => {
                    tracing::warn!(run = id, error = %error, "renewing a run's lease failed")
                }
            }
        }
    }

    /// Ends the older live runs of `run`'s branch and kind that another
    /// process runs (those of this one are cancelled through their slot):
    /// their process sees it at its next renewal and stops them.
    async fn supersede_elsewhere(&self, run: &RunRow) {
        let older = match self.store.runs_beside(run, false, true).await {
            Ok(older) => older,
            Err(error) => {
                tracing::warn!(run = run.id, error = %error, "reading a branch's older runs failed");
                return;
            }
        };
        for id in older {
            if lock(&self.live).contains_key(&id) {
                continue;
            }
            if let Err(error) = self
                .store
                .finish_run(id, RunState::Cancelled, Some(SUPERSEDED))
                .await
            {
                tracing::warn!(run = id, error = %error, "superseding a run failed");
            }
        }
    }

    /// Waits until run `run` holds its branch's turn in the database (a run
    /// of the branch on another process may hold it); `false` when the run
    /// was cancelled meanwhile.
    async fn branch_turn(&self, run: &RunRow, live: &Live) -> bool {
        loop {
            let now = crate::store::unix_now();
            match self
                .store
                .take_branch_turn(run, &self.owner, now, now + RUN_LEASE_SECS)
                .await
            {
                Ok(true) => return true,
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(run = run.id, error = %error, "taking a branch's turn failed");
                }
            }
            tokio::select! {
                _ = live.token.cancelled() => return false,
                _ = tokio::time::sleep(TURN_POLL) => {}
            }
        }
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
            .filter_map(requested_run)
            .collect();
        for run in self.store.queue_runs(&runs, last).await? {
            tracing::info!(run = run.id, repo = %run.repo_name, branch = %run.branch, "run queued");
            self.launch(run);
        }
        Ok(events.len())
    }

    /// Starts a run in its branch's slot, cancelling the branch's older run
    /// of the same kind, once it is leased to this process (nothing when
    /// another holds it).
    pub(crate) fn launch(self: &Arc<Self>, run: RunRow) {
        let live = Live::default();
        {
            // Launched once: the take-over may find a run queued here
            // before the code that queued it launches it, and a second
            // launch would take the first's slot, superseding the run
            // by itself.
            let mut running = lock(&self.live);
            if running.contains_key(&run.id) {
                return;
            }
            running.insert(run.id, live.clone());
        }
        let turns = {
            let mut slots = lock(&self.slots);
            let slot = slots
                .entry((run.repo_id.clone(), run.branch.clone()))
                .or_default();
            let borrowed = run.plan_commit.is_some();
            if let Some(older) = slot.current.insert(borrowed, live.clone()) {
                older.cancel(SUPERSEDED);
            }
            slot.lock.clone()
        };
        let pipelines = self.clone();
        tokio::spawn(async move {
            let id = run.id;
            if !pipelines.claim(id).await {
                lock(&pipelines.live).remove(&id);
                return;
            }
            let lease = tokio::spawn(pipelines.clone().keep_lease(id, live.clone()));
            pipelines.supersede_elsewhere(&run).await;
            // A run cancelled while it waits for its turn ends at once.
            let turn = tokio::select! {
                turn = turns.lock_owned() => Some(turn),
                _ = live.token.cancelled() => None,
            };
            if turn.is_some() {
                pipelines.branch_turn(&run, &live).await;
            }
            let ended = pipelines.execute(run, &live).await;
            drop(turn);
            lease.abort();
            lock(&pipelines.live).remove(&id);
            if matches!(ended, RunState::Passed | RunState::Failed) {
                pipelines.review_branch(id).await;
            }
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

/// The run an event asks for: a push that updated a branch (not one that
/// deleted it), or a pipeline request.
pub fn requested_run(event: &EventRow) -> Option<NewRun> {
    if event.kind != "push" && event.kind != "pipeline.requested" {
        return None;
    }
    let payload: serde_json::Value = serde_json::from_str(&event.payload).ok()?;
    let options = PushOptions::of_payload(&payload);
    if payload["deleted"] == true || options.ci_skip {
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
        repo_id: event.repo_id.clone()?,
        repo_name: event.repo_name.clone()?,
        branch: payload["branch"].as_str()?.to_owned(),
        commit_id: payload["after"].as_str()?.to_owned(),
        event_id: event.id,
        plan,
        variables: options.variables,
    })
}

/// A mutex's value; a panic while it was held left nothing half-written
/// in these maps.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
