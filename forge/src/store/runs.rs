//! Pipeline tables: `runs`, `run_steps`, `branch_sandboxes`,
//! `pipeline_cursor`.

use std::collections::BTreeMap;

use api_types::runs::{RunView, StepView};
use api_types::{RunState, StepState};

use super::{Result, Store, now};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunRow {
    pub id: i64,
    pub repo_id: String,
    pub repo_name: String,
    pub branch: String,
    pub commit_id: String,
    pub event_id: i64,
    pub state: RunState,
    pub vm_id: Option<String>,
    pub error: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// The branch whose steps ran, when not the commit's own (a review).
    pub plan_ref: Option<String>,
    /// The commit of `plan_ref` the steps were read from.
    pub plan_commit: Option<String>,
    /// A JSON object: the push's `ci.variable` options.
    pub variables: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StepRow {
    pub position: i64,
    pub name: String,
    pub command: String,
    pub status: StepState,
    pub exit_code: Option<i64>,
    pub duration_ms: Option<i64>,
    pub log: String,
}

impl RunRow {
    /// The run as the API and the `run.*` events show it.
    pub fn view(self, steps: Vec<StepRow>) -> RunView {
        RunView {
            id: self.id,
            repo_id: self.repo_id,
            repo_name: self.repo_name,
            branch: self.branch,
            commit_id: self.commit_id,
            event_id: self.event_id,
            state: self.state,
            vm_id: self.vm_id,
            error: self.error,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            plan_ref: self.plan_ref,
            plan_commit: self.plan_commit,
            variables: serde_json::from_str(&self.variables).unwrap_or_default(),
            steps: steps.into_iter().map(StepView::from).collect(),
        }
    }
}

/// A step without its log, which is read on its own.
impl From<StepRow> for StepView {
    fn from(row: StepRow) -> Self {
        Self {
            position: row.position,
            name: row.name,
            command: row.command,
            status: row.status,
            exit_code: row.exit_code,
            duration_ms: row.duration_ms,
        }
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BranchSandbox {
    pub vm_id: String,
    pub commit_id: Option<String>,
    pub install_hash: Option<String>,
}

/// A run to be queued for a push.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub repo_id: String,
    pub repo_name: String,
    pub branch: String,
    pub commit_id: String,
    pub event_id: i64,
    /// Where the steps come from, when not from `commit_id`.
    pub plan: Option<PlanSource>,
    /// Set in every step's environment.
    pub variables: BTreeMap<String, String>,
}

/// A commit of another branch whose steps a run takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanSource {
    pub branch: String,
    pub commit: String,
}

/// Most bytes of log kept per step; the tail is what readers need, so
/// the head is dropped beyond this.
pub const MAX_STEP_LOG: i64 = 256 << 10;

impl Store {
    pub async fn pipeline_cursor(&self) -> Result<i64> {
        let (cursor,): (i64,) =
            sqlx::query_as("SELECT last_event_id FROM pipeline_cursor WHERE id = 1")
                .fetch_one(&self.pool)
                .await?;
        Ok(cursor)
    }

    /// Queues `runs` and moves the cursor to `cursor`, in one transaction:
    /// an event is consumed exactly once, even across a crash.
    pub async fn queue_runs(&self, runs: &[NewRun], cursor: i64) -> Result<Vec<RunRow>> {
        let mut tx = self.pool.begin().await?;
        let mut rows = Vec::new();
        for run in runs {
            let row: Option<RunRow> = sqlx::query_as(
                "INSERT INTO runs (repo_id, repo_name, branch, commit_id, event_id, state, created_at,
                    plan_ref, plan_commit, variables)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (event_id) DO NOTHING RETURNING *",
            )
            .bind(&run.repo_id)
            .bind(&run.repo_name)
            .bind(&run.branch)
            .bind(&run.commit_id)
            .bind(run.event_id)
            .bind(RunState::Queued)
            .bind(now())
            .bind(run.plan.as_ref().map(|p| &p.branch))
            .bind(run.plan.as_ref().map(|p| &p.commit))
            .bind(serde_json::to_string(&run.variables).unwrap_or_else(|_| "{}".to_owned()))
            .fetch_optional(&mut *tx)
            .await?;
            rows.extend(row);
        }
        sqlx::query(
            "UPDATE pipeline_cursor SET last_event_id = $1 WHERE id = 1 AND last_event_id < $2",
        )
        .bind(cursor)
        .bind(cursor)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// Runs by state, for the metrics.
    pub async fn count_runs_by_state(&self) -> Result<Vec<(String, i64)>> {
        Ok(
            sqlx::query_as("SELECT state, COUNT(*) FROM runs GROUP BY state")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Runs in a given state, oldest first.
    pub async fn runs_in_state(&self, state: RunState) -> Result<Vec<RunRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM runs WHERE state = $1 ORDER BY id")
                .bind(state)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub async fn run(&self, id: i64) -> Result<Option<RunRow>> {
        Ok(sqlx::query_as("SELECT * FROM runs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// The run queued for an event (a push or a pipeline request).
    pub async fn run_for_event(&self, event_id: i64) -> Result<Option<RunRow>> {
        Ok(sqlx::query_as("SELECT * FROM runs WHERE event_id = $1")
            .bind(event_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// A repository's runs, newest first, before `before` (a run id).
    pub async fn runs_of_repo(
        &self,
        repo_id: &str,
        before: i64,
        limit: i64,
    ) -> Result<Vec<RunRow>> {
        Ok(sqlx::query_as(
            "SELECT * FROM runs WHERE repo_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
        )
        .bind(repo_id)
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn start_run(&self, id: i64, vm_id: &str) -> Result<()> {
        sqlx::query("UPDATE runs SET state = $1, vm_id = $2, started_at = $3 WHERE id = $4")
            .bind(RunState::Running)
            .bind(vm_id)
            .bind(now())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ends a run that has not ended (a run ended by another process,
    /// cancelled say, stays as it ended) and, in the same transaction, the
    /// steps that never ran or were cut short: nobody sees a finished run
    /// with a pending step.
    pub async fn finish_run(&self, id: i64, state: RunState, error: Option<&str>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE runs SET state = $1, error = $2, finished_at = $3 \
             WHERE id = $4 AND state IN ($5, $6)",
        )
        .bind(state)
        .bind(error.map(|error| super::storable(error).into_owned()))
        .bind(now())
        .bind(id)
        .bind(RunState::Queued)
        .bind(RunState::Running)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE run_steps SET status = $1 WHERE run_id = $2 AND status IN ($3, $4)")
            .bind(StepState::left_over_by(state))
            .bind(id)
            .bind(StepState::Pending)
            .bind(StepState::Running)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Makes `owner` (a forge process) the one running run `id`, leased
    /// until `until` (unix s), unless another process holds a lease on it
    /// that has not lapsed at `now`, or it has ended; whether it did.
    pub async fn claim_run(&self, id: i64, owner: &str, now: i64, until: i64) -> Result<bool> {
        let claimed = sqlx::query(
            "UPDATE runs SET owner = $1, lease_until = $2 WHERE id = $3 AND state IN ($4, $5) \
             AND (owner IS NULL OR owner = $6 OR lease_until IS NULL OR lease_until < $7)",
        )
        .bind(owner)
        .bind(until)
        .bind(id)
        .bind(RunState::Queued)
        .bind(RunState::Running)
        .bind(owner)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(claimed.rows_affected() == 1)
    }

    /// Renews `owner`'s lease on run `id` to `until`; answers the run's
    /// state and error as they are now, or `None` when `owner` no longer
    /// holds it (another process took it over).
    pub async fn renew_run(
        &self,
        id: i64,
        owner: &str,
        until: i64,
    ) -> Result<Option<(RunState, Option<String>)>> {
        Ok(sqlx::query_as(
            "UPDATE runs SET lease_until = $1 WHERE id = $2 AND owner = $3 RETURNING state, error",
        )
        .bind(until)
        .bind(id)
        .bind(owner)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Gives run `run` (leased by `owner`) its branch's turn, renewing the
    /// lease to `until`, unless another live run of the branch (its lease
    /// not lapsed at `now`) has it; whether it did. Runs of a branch share
    /// its sandbox, so they never overlap, whichever process runs them.
    pub async fn take_branch_turn(
        &self,
        run: &RunRow,
        owner: &str,
        now: i64,
        until: i64,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        if self.dialect() == super::Dialect::Postgres {
            // Two processes checking the same branch at once would each see
            // the other's run without its turn yet.
            sqlx::query(
                "SELECT CAST(1 AS BIGINT) FROM (SELECT pg_advisory_xact_lock(hashtext($1))) AS locked",
            )
            .bind(format!("run-turn/{}/{}", run.repo_id, run.branch))
            .execute(&mut *tx)
            .await?;
        }
        let taken = sqlx::query(
            "UPDATE runs SET turn = 1, lease_until = $1 \
             WHERE id = $2 AND owner = $3 AND state IN ($4, $5) AND NOT EXISTS ( \
                 SELECT 1 FROM runs other WHERE other.repo_id = $6 AND other.branch = $7 \
                 AND other.id <> $8 AND other.turn = 1 AND other.state IN ($9, $10) \
                 AND other.lease_until >= $11)",
        )
        .bind(until)
        .bind(run.id)
        .bind(owner)
        .bind(RunState::Queued)
        .bind(RunState::Running)
        .bind(&run.repo_id)
        .bind(&run.branch)
        .bind(run.id)
        .bind(RunState::Queued)
        .bind(RunState::Running)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(taken.rows_affected() == 1)
    }

    /// The other runs of `run`'s branch and kind (its own steps, or steps
    /// borrowed from another commit) newer (`newer`) or older than it,
    /// still queued or running when `live_only`.
    pub async fn runs_beside(
        &self,
        run: &RunRow,
        newer: bool,
        live_only: bool,
    ) -> Result<Vec<i64>> {
        let kind = if run.plan_commit.is_some() {
            "plan_commit IS NOT NULL"
        } else {
            "plan_commit IS NULL"
        };
        let order = if newer { "id > $3" } else { "id < $3" };
        let live = if live_only {
            "AND state IN ($4, $5)"
        } else {
            "AND $4 <> $5"
        };
        let ids: Vec<(i64,)> = sqlx::query_as(&format!(
            "SELECT id FROM runs WHERE repo_id = $1 AND branch = $2 AND {order} AND {kind} {live} ORDER BY id"
        ))
        .bind(&run.repo_id)
        .bind(&run.branch)
        .bind(run.id)
        .bind(RunState::Queued)
        .bind(RunState::Running)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    /// Runs queued or running that no process holds a lease on at `now`
    /// (the one that ran them stopped), oldest first.
    pub async fn unleased_runs(&self, now: i64) -> Result<Vec<RunRow>> {
        Ok(sqlx::query_as(
            "SELECT * FROM runs WHERE state IN ($1, $2) \
             AND (owner IS NULL OR lease_until IS NULL OR lease_until < $3) ORDER BY id",
        )
        .bind(RunState::Queued)
        .bind(RunState::Running)
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn insert_steps(&self, run_id: i64, steps: &[(String, String)]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for (position, (name, command)) in steps.iter().enumerate() {
            sqlx::query(
                "INSERT INTO run_steps (run_id, position, name, command, status) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(run_id)
            .bind(position as i64)
            .bind(name)
            .bind(command)
            .bind(StepState::Pending)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records what the analysis after run `run_id`'s steps found.
    pub async fn set_run_analysis(
        &self,
        run_id: i64,
        analysis: &crate::review::Analysis,
    ) -> Result<()> {
        let json = serde_json::to_string(analysis).unwrap_or_else(|_| "{}".into());
        sqlx::query(
            "INSERT INTO run_analyses (run_id, analysis) VALUES ($1, $2)
             ON CONFLICT (run_id) DO UPDATE SET analysis = excluded.analysis",
        )
        .bind(run_id)
        .bind(json)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// What the analysis after run `run_id`'s steps found; `None` when
    /// none ran.
    pub async fn run_analysis(&self, run_id: i64) -> Result<Option<crate::review::Analysis>> {
        let json: Option<String> =
            sqlx::query_scalar("SELECT analysis FROM run_analyses WHERE run_id = $1")
                .bind(run_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(json.map(|json| serde_json::from_str(&json).unwrap_or_default()))
    }

    /// The forge's own review of run `run_id` of repository `repo_id`: the
    /// `review` of the newest `review.posted` event naming the run, as
    /// JSON, and when it was recorded.
    pub async fn branch_review_of_run(
        &self,
        repo_id: &str,
        run_id: i64,
    ) -> Result<Option<(String, String)>> {
        let review = self.json_text("payload", "review");
        Ok(sqlx::query_as(&format!(
            "SELECT {review}, created_at FROM events
             WHERE repo_id = $1 AND kind = 'review.posted'
               AND {} = $2 AND {review} IS NOT NULL
             ORDER BY id DESC LIMIT 1",
            self.json_text("payload", "run"),
        ))
        .bind(repo_id)
        .bind(run_id.to_string())
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn steps(&self, run_id: i64) -> Result<Vec<StepRow>> {
        Ok(sqlx::query_as(
            "SELECT position, name, command, status, exit_code, duration_ms, log FROM run_steps
             WHERE run_id = $1 ORDER BY position",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn set_step(
        &self,
        run_id: i64,
        position: usize,
        status: StepState,
        exit_code: Option<i64>,
        duration_ms: Option<i64>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE run_steps SET status = $1, exit_code = $2, duration_ms = $3 WHERE run_id = $4 AND position = $5",
        )
        .bind(status)
        .bind(exit_code)
        .bind(duration_ms)
        .bind(run_id)
        .bind(position as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Appends to a step's log, keeping its last [`MAX_STEP_LOG`] characters.
    pub async fn append_step_log(&self, run_id: i64, position: usize, text: &str) -> Result<()> {
        sqlx::query(&format!(
            "UPDATE run_steps SET log = {} WHERE run_id = $3 AND position = $4",
            self.tail("log || $1", "$2")
        ))
        .bind(super::storable(text).into_owned())
        .bind(MAX_STEP_LOG)
        .bind(run_id)
        .bind(position as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every branch sandbox of a repository: branch → VM id.
    pub async fn branch_sandboxes(
        &self,
        repo_id: &str,
    ) -> Result<std::collections::HashMap<String, String>> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT branch, vm_id FROM branch_sandboxes WHERE repo_id = $1")
                .bind(repo_id)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().collect())
    }

    pub async fn branch_sandbox(
        &self,
        repo_id: &str,
        branch: &str,
    ) -> Result<Option<BranchSandbox>> {
        Ok(sqlx::query_as(
            "SELECT vm_id, commit_id, install_hash FROM branch_sandboxes WHERE repo_id = $1 AND branch = $2",
        )
        .bind(repo_id)
        .bind(branch)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn set_branch_sandbox(
        &self,
        repo_id: &str,
        branch: &str,
        sandbox: &BranchSandbox,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO branch_sandboxes (repo_id, branch, vm_id, commit_id, install_hash) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (repo_id, branch) DO UPDATE SET vm_id = excluded.vm_id, commit_id = excluded.commit_id,
             install_hash = excluded.install_hash",
        )
        .bind(repo_id)
        .bind(branch)
        .bind(&sandbox.vm_id)
        .bind(&sandbox.commit_id)
        .bind(&sandbox.install_hash)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
