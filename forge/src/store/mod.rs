//! Durable state: one SQLite database (WAL) in the data directory, opened
//! with the migrations in `migrations/` applied. Every query the forge runs
//! lives in this module's children, one per table; handlers never write SQL.

mod events;
mod github;
mod repos;
mod runs;
mod snapshots;
mod tokens;
mod vms;
mod webhooks;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, SqlitePool};

pub use events::{EventRow, NewEvent};
pub use github::{GithubDelivery, GithubLink, GithubPull, GithubRefState};
pub use repos::RepoRow;
pub use runs::{BranchSandbox, NewRun, PlanSource, RunRow, StepRow};
pub use snapshots::{MAX_BUILD_LOG_BYTES, SnapshotRow, TemplateBuildRow, TemplateRow};
pub use tokens::{NewToken, TokenRow};
pub use vms::{Visibility, VmFilter, VmRow, unix_now};
pub use webhooks::{
    AttemptOutcome, AttemptRow, ClaimedDelivery, DeliveryRow, NewDeliveryOwned, NewDeliveryRow,
    NewWebhook, Redelivery, WebhookChange, WebhookRow, now_ms,
};

/// Errors of the store. Unique-key violations are told apart because the
/// API answers them with `409`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Opening the database {path} failed")]
    Open {
        path: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("Applying the database migrations failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("The record already exists")]
    Duplicate,
    #[error("A database query failed")]
    Query(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Database(db) if db.is_unique_violation() => Self::Duplicate,
            _ => Self::Query(error),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A handle to the database, cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating when absent) `path` and applies pending migrations.
    ///
    /// Migrations run first, on a connection of their own with foreign keys
    /// off: a migration that rebuilds a table (as `0009_state_checks.sql`
    /// does to add CHECKs) drops the old one, and with foreign keys on that
    /// drop would delete every child row through `ON DELETE CASCADE`. sqlx
    /// runs each SQLite migration in a transaction, inside which
    /// `PRAGMA foreign_keys` is a no-op, so it has to be set here. Such a
    /// migration checks the keys itself before it commits.
    pub async fn open(path: &Path) -> Result<Self> {
        let open_error = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(open_error)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let mut migrating: SqliteConnection = options
            .clone()
            .foreign_keys(false)
            .connect()
            .await
            .map_err(open_error)?;
        sqlx::migrate!("../migrations")
            .run(&mut migrating)
            .await
            .map_err(StoreError::Migrate)?;
        migrating.close().await.map_err(open_error)?;
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(open_error)?;
        Ok(Self { pool })
    }

    /// Closes every connection, checkpointing the WAL.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The current time as stored: RFC 3339, UTC, second precision or better.
pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("formatting the current UTC time as RFC 3339 cannot fail")
}

#[cfg(test)]
mod tests {
    use sqlx::Executor;
    use sqlx::migrate::Migrator;

    use super::*;

    const MIGRATIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations");

    /// A database migrated up to and including `last`, through the same
    /// pool settings as the store (foreign keys on).
    async fn database_at(dir: &Path, last: i64) -> SqlitePool {
        let older = dir.join("migrations");
        std::fs::create_dir(&older).expect("create migrations dir");
        for entry in std::fs::read_dir(MIGRATIONS).expect("read migrations") {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            let version: i64 = name
                .split('_')
                .next()
                .and_then(|v| v.parse().ok())
                .expect("numbered migration");
            if version <= last {
                std::fs::copy(&path, older.join(&name)).expect("copy migration");
            }
        }
        let options = SqliteConnectOptions::new()
            .filename(dir.join("forge.db"))
            .create_if_missing(true)
            .foreign_keys(true);
        let pool = SqlitePool::connect_with(options).await.expect("open");
        Migrator::new(older.as_path())
            .await
            .expect("read migrations")
            .run(&pool)
            .await
            .expect("migrate");
        pool
    }

    async fn count(store: &Store, table: &str) -> i64 {
        let (count,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&store.pool)
            .await
            .expect("count");
        count
    }

    #[tokio::test]
    async fn state_checks_keep_every_row_of_an_existing_database() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = database_at(dir.path(), 8).await;
        old.execute(
            "INSERT INTO repos VALUES ('r1', 'acme', 'app', 'main', 't');
             INSERT INTO vms (id, backend, state, repo_id, vcpus, mem_mib, persistent, created_at, last_active_unix)
               VALUES ('vm1', 'container', 'paused_to_disk', 'r1', 1, 512, 1, 't', 0),
                      ('vm2', 'microvm', 'crashed', NULL, 2, 1024, 0, 't', 0);
             INSERT INTO runs (repo_id, repo_name, branch, commit_id, event_id, state, created_at, plan_ref)
               VALUES ('r1', 'acme/app', 'main', 'c1', 1, 'passed', 't', NULL),
                      ('r1', 'acme/app', 'pr', 'c2', 2, 'failed', 't', 'main'),
                      ('r1', 'acme/app', 'main', 'c3', 3, 'queued', 't', NULL);
             DELETE FROM runs WHERE id = 3;
             INSERT INTO run_steps (run_id, position, name, command, status, log)
               VALUES (1, 0, 'lint', 'x', 'passed', 'ok'), (1, 1, 'test', 'y', 'skipped', ''),
                      (2, 0, 'test', 'y', 'failed', 'boom');
             INSERT INTO webhooks (id, repo_id, url, events, secret, after_event_id, created_at, updated_at)
               VALUES ('wh1', 'r1', 'http://hook', '[\"*\"]', 's', 0, 't', 't');
             INSERT INTO webhook_deliveries (id, webhook_id, event_type, body, status, next_attempt_at, created_at)
               VALUES ('msg1', 'wh1', 'ping', x'7b7d', 'delivered', 0, 't'),
                      ('msg2', 'wh1', 'ping', x'7b7d', 'pending', 0, 't');
             INSERT INTO webhook_attempts (delivery_id, attempt, started_at, duration_ms, request_headers,
                 response_headers, response_body, response_body_truncated)
               VALUES ('msg1', 1, 0, 5, '[]', '[]', x'', 0), ('msg2', 1, 0, 5, '[]', '[]', x'', 0);
             INSERT INTO github_links VALUES ('r1', 'octo/app', 1, 't');
             INSERT INTO github_refs VALUES ('r1', 'refs/heads/main', 'a', 'b', 'a', 'ahead', 't', NULL);
             INSERT INTO github_pulls (repo_id, number, head_ref, head_sha, state, updated_at, base_ref)
               VALUES ('r1', 4, 'pr', 'c2', 'open', 't', 'main');
             INSERT INTO github_reviews (repo_id, number, head_sha, run_id, verdict)
               VALUES ('r1', 4, 'c2', 2, 'REQUEST_CHANGES');",
        )
        .await
        .expect("rows at 0008");
        old.close().await;

        let store = Store::open(&dir.path().join("forge.db"))
            .await
            .expect("migrate to 0009");
        for (table, rows) in [
            ("repos", 1),
            ("vms", 2),
            ("runs", 2),
            ("run_steps", 3),
            ("webhooks", 1),
            ("webhook_deliveries", 2),
            ("webhook_attempts", 2),
            ("github_links", 1),
            ("github_refs", 1),
            ("github_pulls", 1),
            ("github_reviews", 1),
        ] {
            assert_eq!(count(&store, table).await, rows, "rows of {table}");
        }
        let vm = store.vm("vm1").await.expect("read").expect("kept");
        assert_eq!(vm.state, api_types::VmState::PausedToDisk);
        let steps = store.steps(1).await.expect("steps");
        assert_eq!(steps[1].status, api_types::StepState::Skipped);
        assert_eq!(steps[0].log, "ok");
        let run = store.run(2).await.expect("read").expect("kept");
        assert_eq!(run.plan_ref.as_deref(), Some("main"));

        // Ids of deleted runs are not handed out again.
        let queued = store
            .queue_runs(
                &[NewRun {
                    repo_id: "r1".into(),
                    repo_name: "acme/app".into(),
                    branch: "main".into(),
                    commit_id: "c4".into(),
                    event_id: 4,
                    plan: None,
                    variables: Default::default(),
                }],
                4,
            )
            .await
            .expect("queue");
        assert_eq!(queued[0].id, 4);

        // Foreign keys point at the rebuilt tables and still cascade.
        store
            .pool
            .execute("DELETE FROM runs WHERE id = 1")
            .await
            .expect("delete run");
        assert_eq!(count(&store, "run_steps").await, 1);
        store
            .pool
            .execute("DELETE FROM webhook_deliveries WHERE id = 'msg1'")
            .await
            .expect("delete delivery");
        assert_eq!(count(&store, "webhook_attempts").await, 1);
        let indexes: Vec<(String,)> = sqlx::query_as(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%'
             ORDER BY name",
        )
        .fetch_all(&store.pool)
        .await
        .expect("indexes");
        let indexes: Vec<&str> = indexes.iter().map(|(name,)| name.as_str()).collect();
        for index in [
            "runs_by_repo",
            "vms_by_state",
            "webhook_deliveries_by_hook",
            "webhook_deliveries_due",
        ] {
            assert!(indexes.contains(&index), "{index} in {indexes:?}");
        }
    }

    #[tokio::test]
    async fn a_state_outside_its_enum_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("forge.db"))
            .await
            .expect("open");
        store
            .pool
            .execute(
                "INSERT INTO repos VALUES ('r1', 'acme', 'app', 'main', 't');
                 INSERT INTO runs (repo_id, repo_name, branch, commit_id, event_id, state, created_at)
                   VALUES ('r1', 'acme/app', 'main', 'c', 1, 'queued', 't');
                 INSERT INTO webhooks (id, repo_id, url, events, secret, after_event_id, created_at, updated_at)
                   VALUES ('wh1', 'r1', 'http://hook', '[]', 's', 0, 't', 't');
                 INSERT INTO github_links VALUES ('r1', 'octo/app', 1, 't');",
            )
            .await
            .expect("parents");
        for statement in [
            "INSERT INTO vms (id, backend, state, vcpus, mem_mib, persistent, created_at, last_active_unix)
               VALUES ('vm1', 'container', 'stopped', 1, 512, 1, 't', 0)",
            "UPDATE runs SET state = 'canceled'",
            "INSERT INTO run_steps (run_id, position, name, command, status) VALUES (1, 0, 'a', 'b', 'done')",
            "INSERT INTO webhook_deliveries (id, webhook_id, event_type, body, status, next_attempt_at, created_at)
               VALUES ('msg1', 'wh1', 'ping', x'', 'sent', 0, 't')",
            "INSERT INTO github_refs VALUES ('r1', 'refs/heads/main', NULL, 'a', 'b', 'synced', 't', NULL)",
            "INSERT INTO github_pulls (repo_id, number, head_ref, head_sha, state, updated_at)
               VALUES ('r1', 1, 'f', 'a', 'merged', 't')",
            "INSERT INTO github_reviews (repo_id, number, head_sha, run_id, verdict)
               VALUES ('r1', 1, 'a', 1, 'approve')",
        ] {
            match store.pool.execute(statement).await {
                Err(sqlx::Error::Database(error)) if error.is_check_violation() => {}
                other => panic!("{statement}: {other:?}"),
            }
        }
        // The enum's own spellings pass the same CHECKs.
        for state in api_types::VmState::ALL {
            let id = format!("vm-{state}");
            sqlx::query(
                "INSERT INTO vms (id, backend, state, vcpus, mem_mib, persistent, created_at, last_active_unix)
                 VALUES (?, 'container', ?, 1, 512, 1, 't', 0)",
            )
            .bind(&id)
            .bind(*state)
            .execute(&store.pool)
            .await
            .expect("a VM state is accepted");
            assert_eq!(
                store.vm(&id).await.expect("read").expect("row").state,
                *state
            );
        }
        for state in api_types::RunState::ALL {
            store
                .finish_run(1, *state, None)
                .await
                .expect("a run state is accepted");
            assert_eq!(
                store.run(1).await.expect("read").expect("row").state,
                *state
            );
        }
    }
}
