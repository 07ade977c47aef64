//! GitHub App tables: `github_deliveries` (inbound webhooks, stored before
//! they are processed), `github_installations`, `github_links`,
//! `github_refs` (sync state per ref), `github_pulls`, `github_reviews`
//! (one per pull request and head commit) and `github_cursor`.

use api_types::{PullState, RefSyncState, ReviewVerdict, RunState};

use super::{Result, Store, now};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct GithubDelivery {
    pub id: String,
    pub event: String,
    pub payload: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct GithubLink {
    pub repo_id: String,
    pub github_repo: String,
    pub installation_id: i64,
    pub created_at: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct GithubInstallation {
    pub id: i64,
    pub account: String,
    pub created_at: String,
}

/// A review as the run API shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct GithubRunReview {
    pub github_repo: String,
    pub number: i64,
    pub head_sha: String,
    pub verdict: ReviewVerdict,
    /// `None` while the review is claimed but not yet posted.
    pub posted_at: Option<String>,
}

/// What a sync saw of one ref.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct GithubRefState {
    pub ref_name: String,
    pub synced_sha: Option<String>,
    pub forge_sha: Option<String>,
    pub github_sha: Option<String>,
    pub state: RefSyncState,
    pub last_sync_at: String,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct GithubPull {
    pub repo_id: String,
    pub number: i64,
    pub head_ref: String,
    pub head_sha: String,
    pub state: PullState,
    /// The branch it merges into (`None`: recorded before it was kept).
    pub base_ref: Option<String>,
}

impl Store {
    /// Stores an inbound delivery; `false` when its id or its body (by
    /// `body_sha256`, hex) was seen before.
    pub async fn insert_github_delivery(
        &self,
        id: &str,
        event: &str,
        payload: &str,
        body_sha256: &str,
    ) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO github_deliveries (id, event, payload, body_sha256, received_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(event)
        .bind(payload)
        .bind(body_sha256)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deliveries not processed yet, oldest first.
    pub async fn pending_github_deliveries(&self, limit: i64) -> Result<Vec<GithubDelivery>> {
        Ok(sqlx::query_as(
            "SELECT id, event, payload FROM github_deliveries WHERE processed_at IS NULL
             ORDER BY rowid LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn finish_github_delivery(&self, id: &str, error: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE github_deliveries SET processed_at = $1, error = $2 WHERE id = $3")
            .bind(now())
            .bind(error)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn upsert_github_installation(
        &self,
        id: i64,
        account: &str,
        removed: bool,
    ) -> Result<()> {
        let stamp = now();
        sqlx::query(
            "INSERT INTO github_installations (id, account, created_at, removed_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET account = $2, removed_at = $4",
        )
        .bind(id)
        .bind(account)
        .bind(&stamp)
        .bind(removed.then_some(&stamp))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Installations the app holds now (removed ones left out).
    pub async fn github_installations(&self) -> Result<Vec<GithubInstallation>> {
        Ok(sqlx::query_as(
            "SELECT id, account, created_at FROM github_installations
             WHERE removed_at IS NULL ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// The pull-request review posted (or claimed) for a pipeline run.
    pub async fn github_review_of_run(&self, run_id: i64) -> Result<Option<GithubRunReview>> {
        Ok(sqlx::query_as(
            "SELECT l.github_repo, r.number, r.head_sha, r.verdict, r.posted_at
             FROM github_reviews r JOIN github_links l ON l.repo_id = r.repo_id
             WHERE r.run_id = $1 ORDER BY r.posted_at IS NULL, r.posted_at DESC, r.number LIMIT 1",
        )
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn insert_github_link(&self, link: &GithubLink) -> Result<()> {
        sqlx::query(
            "INSERT INTO github_links (repo_id, github_repo, installation_id, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&link.repo_id)
        .bind(&link.github_repo)
        .bind(link.installation_id)
        .bind(&link.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn delete_github_link(&self, repo_id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM github_links WHERE repo_id = $1")
            .bind(repo_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn github_link(&self, repo_id: &str) -> Result<Option<GithubLink>> {
        Ok(
            sqlx::query_as("SELECT * FROM github_links WHERE repo_id = $1")
                .bind(repo_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// The link of a GitHub repository (`owner/name`, compared without case).
    pub async fn github_link_by_github_repo(
        &self,
        github_repo: &str,
    ) -> Result<Option<GithubLink>> {
        Ok(
            sqlx::query_as("SELECT * FROM github_links WHERE lower(github_repo) = lower($1) ORDER BY created_at, repo_id")
                .bind(github_repo)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn github_links(&self) -> Result<Vec<GithubLink>> {
        Ok(
            sqlx::query_as("SELECT * FROM github_links ORDER BY created_at")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub async fn github_ref_states(&self, repo_id: &str) -> Result<Vec<GithubRefState>> {
        Ok(sqlx::query_as(
            "SELECT ref_name, synced_sha, forge_sha, github_sha, state, last_sync_at, last_error
             FROM github_refs WHERE repo_id = $1 ORDER BY ref_name",
        )
        .bind(repo_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Records what a sync saw of one ref; a ref gone from both sides is
    /// forgotten, unless the pass failed on it: the failure stays visible
    /// until a later pass settles the ref.
    pub async fn put_github_ref_state(&self, repo_id: &str, state: &GithubRefState) -> Result<()> {
        if state.forge_sha.is_none() && state.github_sha.is_none() && state.last_error.is_none() {
            sqlx::query("DELETE FROM github_refs WHERE repo_id = $1 AND ref_name = $2")
                .bind(repo_id)
                .bind(&state.ref_name)
                .execute(&self.pool)
                .await?;
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO github_refs (repo_id, ref_name, synced_sha, forge_sha, github_sha, state, last_sync_at, last_error)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (repo_id, ref_name) DO UPDATE SET synced_sha = $3, forge_sha = $4,
                github_sha = $5, state = $6, last_sync_at = $7, last_error = $8",
        )
        .bind(repo_id)
        .bind(&state.ref_name)
        .bind(&state.synced_sha)
        .bind(&state.forge_sha)
        .bind(&state.github_sha)
        .bind(state.state)
        .bind(&state.last_sync_at)
        .bind(&state.last_error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn upsert_github_pull(&self, pull: &GithubPull) -> Result<()> {
        sqlx::query(
            "INSERT INTO github_pulls (repo_id, number, head_ref, head_sha, state, updated_at, base_ref)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (repo_id, number) DO UPDATE SET head_ref = $3, head_sha = $4, state = $5,
                updated_at = $6, base_ref = coalesce($7, github_pulls.base_ref)",
        )
        .bind(&pull.repo_id)
        .bind(pull.number)
        .bind(&pull.head_ref)
        .bind(&pull.head_sha)
        .bind(pull.state)
        .bind(now())
        .bind(&pull.base_ref)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Open pull requests of a repository whose head is `branch`.
    pub async fn open_github_pulls(&self, repo_id: &str, branch: &str) -> Result<Vec<GithubPull>> {
        Ok(sqlx::query_as(
            "SELECT repo_id, number, head_ref, head_sha, state, base_ref FROM github_pulls
             WHERE repo_id = $1 AND head_ref = $2 AND state = $3 ORDER BY number",
        )
        .bind(repo_id)
        .bind(branch)
        .bind(PullState::Open)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every open pull request of a repository.
    pub async fn all_open_github_pulls(&self, repo_id: &str) -> Result<Vec<GithubPull>> {
        Ok(sqlx::query_as(
            "SELECT repo_id, number, head_ref, head_sha, state, base_ref FROM github_pulls
             WHERE repo_id = $1 AND state = $2 ORDER BY number",
        )
        .bind(repo_id)
        .bind(PullState::Open)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Moves the head of open pull requests on `branch` (a forge push sent to GitHub).
    pub async fn move_github_pull_heads(
        &self,
        repo_id: &str,
        branch: &str,
        sha: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE github_pulls SET head_sha = $1, updated_at = $2
             WHERE repo_id = $3 AND head_ref = $4 AND state = $5",
        )
        .bind(sha)
        .bind(now())
        .bind(repo_id)
        .bind(branch)
        .bind(PullState::Open)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Claims the review of (pull request, head commit); `false` when it
    /// was claimed before.
    pub async fn claim_github_review(
        &self,
        repo_id: &str,
        number: i64,
        head_sha: &str,
        run_id: i64,
        verdict: ReviewVerdict,
    ) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO github_reviews (repo_id, number, head_sha, run_id, verdict) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING",
        )
        .bind(repo_id)
        .bind(number)
        .bind(head_sha)
        .bind(run_id)
        .bind(verdict)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Whether the review of (pull request, head commit) was posted.
    pub async fn github_review_posted(
        &self,
        repo_id: &str,
        number: i64,
        head_sha: &str,
    ) -> Result<bool> {
        let row: Option<(Option<i64>,)> = sqlx::query_as(
            "SELECT review_id FROM github_reviews WHERE repo_id = $1 AND number = $2 AND head_sha = $3",
        )
        .bind(repo_id)
        .bind(number)
        .bind(head_sha)
        .fetch_optional(&self.pool)
        .await?;
        Ok(matches!(row, Some((Some(_),))))
    }

    pub async fn finish_github_review(
        &self,
        repo_id: &str,
        number: i64,
        head_sha: &str,
        review_id: i64,
        check_run_id: Option<i64>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE github_reviews SET review_id = $1, check_run_id = $2, posted_at = $3
             WHERE repo_id = $4 AND number = $5 AND head_sha = $6",
        )
        .bind(review_id)
        .bind(check_run_id)
        .bind(now())
        .bind(repo_id)
        .bind(number)
        .bind(head_sha)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The finished runs of (repository, branch, commit), newest first,
    /// whatever their steps' source.
    pub async fn finished_runs_of(
        &self,
        repo_id: &str,
        branch: &str,
        commit: &str,
    ) -> Result<Vec<super::RunRow>> {
        Ok(sqlx::query_as(
            "SELECT * FROM runs WHERE repo_id = $1 AND branch = $2 AND commit_id = $3
             AND state IN ($4, $5, $6) ORDER BY id DESC",
        )
        .bind(repo_id)
        .bind(branch)
        .bind(commit)
        .bind(RunState::CONCLUDED[0])
        .bind(RunState::CONCLUDED[1])
        .bind(RunState::CONCLUDED[2])
        .fetch_all(&self.pool)
        .await?)
    }

    /// The runs of (repository, branch, commit) asked for (a push or a
    /// pipeline request event names them) and not cancelled since: for
    /// each, the commit its steps are read from (`None`: its own).
    pub async fn run_requests(
        &self,
        repo_id: &str,
        branch: &str,
        commit: &str,
    ) -> Result<Vec<Option<String>>> {
        let payload = |path| self.json_text("e.payload", path);
        let rows: Vec<(Option<String>,)> = sqlx::query_as(&format!(
            "SELECT {} FROM events e
             LEFT JOIN runs r ON r.event_id = e.id
             WHERE e.repo_id = $1 AND e.kind IN ('push', 'pipeline.requested')
             AND {} = $2 AND {} = $3
             AND (r.state IS NULL OR r.state != $4)",
            payload("plan.commit"),
            payload("branch"),
            payload("after"),
        ))
        .bind(repo_id)
        .bind(branch)
        .bind(commit)
        .bind(RunState::Cancelled)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(plan,)| plan).collect())
    }

    pub async fn github_cursor(&self) -> Result<i64> {
        let (cursor,): (i64,) =
            sqlx::query_as("SELECT last_event_id FROM github_cursor WHERE id = 1")
                .fetch_one(&self.pool)
                .await?;
        Ok(cursor)
    }

    pub async fn set_github_cursor(&self, cursor: i64) -> Result<()> {
        sqlx::query(
            "UPDATE github_cursor SET last_event_id = $1 WHERE id = 1 AND last_event_id < $2",
        )
        .bind(cursor)
        .bind(cursor)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewEvent, NewRun, PlanSource, RepoRow};

    const HEAD: &str = "1111111111111111111111111111111111111111";

    async fn linked_store(dir: &std::path::Path) -> Store {
        let store = Store::open_for_test(dir).await;
        store
            .insert_repo(&RepoRow {
                id: "r1".into(),
                owner: "acme".into(),
                name: "app".into(),
                default_branch: "main".into(),
                created_at: now(),
            })
            .await
            .expect("repo");
        store
            .insert_github_link(&GithubLink {
                repo_id: "r1".into(),
                github_repo: "octo/app".into(),
                installation_id: 1,
                created_at: now(),
            })
            .await
            .expect("link");
        store
    }

    /// Records a request for a run of `HEAD` on `change`, with the steps of
    /// `plan` (`None`: its own, as a push asks), and queues its run.
    async fn request(store: &Store, plan: Option<&str>) -> i64 {
        let mut payload = serde_json::json!({ "branch": "change", "after": HEAD });
        if let Some(commit) = plan {
            payload["plan"] = serde_json::json!({ "branch": "main", "commit": commit });
        }
        let kind = if plan.is_some() {
            "pipeline.requested"
        } else {
            "push"
        };
        let events = store
            .insert_events(
                "r1",
                "acme/app",
                None,
                &[NewEvent {
                    kind: kind.into(),
                    ref_name: Some("refs/heads/change".into()),
                    payload,
                }],
            )
            .await
            .expect("event");
        let run = NewRun {
            repo_id: "r1".into(),
            repo_name: "acme/app".into(),
            branch: "change".into(),
            commit_id: HEAD.into(),
            event_id: events[0].id,
            plan: plan.map(|commit| PlanSource {
                branch: "main".into(),
                commit: commit.into(),
            }),
            variables: Default::default(),
        };
        let queued = store.queue_runs(&[run], events[0].id).await.expect("queue");
        queued[0].id
    }

    #[tokio::test]
    async fn requests_and_finished_runs_carry_where_their_steps_come_from() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = linked_store(dir.path()).await;
        request(&store, None).await;
        let superseded = request(&store, Some("b1")).await;
        let current = request(&store, Some("b2")).await;
        store
            .finish_run(superseded, RunState::Cancelled, None)
            .await
            .expect("finish");
        let mut asked = store
            .run_requests("r1", "change", HEAD)
            .await
            .expect("requests");
        asked.sort();
        assert_eq!(
            asked,
            [None, Some("b2".to_owned())],
            "a cancelled run is no longer waited for"
        );
        store
            .finish_run(current, RunState::Failed, None)
            .await
            .expect("finish");
        let finished = store
            .finished_runs_of("r1", "change", HEAD)
            .await
            .expect("runs");
        assert_eq!(finished.len(), 1);
        assert_eq!(finished[0].plan_ref.as_deref(), Some("main"));
        assert_eq!(finished[0].plan_commit.as_deref(), Some("b2"));
    }

    #[tokio::test]
    async fn a_pull_requests_base_is_kept_when_an_update_does_not_name_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = linked_store(dir.path()).await;
        let mut pull = GithubPull {
            repo_id: "r1".into(),
            number: 1,
            head_ref: "change".into(),
            head_sha: HEAD.into(),
            state: PullState::Open,
            base_ref: Some("release".into()),
        };
        store.upsert_github_pull(&pull).await.expect("upsert");
        pull.base_ref = None;
        store.upsert_github_pull(&pull).await.expect("upsert");
        let open = store
            .open_github_pulls("r1", "change")
            .await
            .expect("pulls");
        assert_eq!(open[0].base_ref.as_deref(), Some("release"));
    }

    #[tokio::test]
    async fn a_ref_gone_from_both_sides_is_forgotten_unless_its_pass_failed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = linked_store(dir.path()).await;
        let state = |ref_name: &str, last_error: Option<&str>| GithubRefState {
            ref_name: ref_name.into(),
            synced_sha: None,
            forge_sha: None,
            github_sha: None,
            state: if last_error.is_some() {
                RefSyncState::Error
            } else {
                RefSyncState::InSync
            },
            last_sync_at: now(),
            last_error: last_error.map(Into::into),
        };
        for name in ["refs/heads/gone", "refs/heads/failed"] {
            let mut seen = state(name, None);
            seen.forge_sha = Some(HEAD.into());
            store.put_github_ref_state("r1", &seen).await.expect("put");
        }
        store
            .put_github_ref_state("r1", &state("refs/heads/gone", None))
            .await
            .expect("put");
        store
            .put_github_ref_state(
                "r1",
                &state("refs/heads/failed", Some("moving the mirror failed")),
            )
            .await
            .expect("put");
        let kept: Vec<(String, Option<String>)> = store
            .github_ref_states("r1")
            .await
            .expect("states")
            .into_iter()
            .map(|s| (s.ref_name, s.last_error))
            .collect();
        assert_eq!(
            kept,
            [(
                "refs/heads/failed".to_owned(),
                Some("moving the mirror failed".to_owned())
            )]
        );
    }
}
