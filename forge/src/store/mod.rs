//! Durable state: one SQL database, SQLite (a file in the data directory,
//! WAL; the default) or PostgreSQL (`--database-url postgres://…`; what
//! several forge processes share). Both run the same queries through
//! sqlx's `Any` driver; the few spots where the dialects differ ask
//! [`Store::dialect`]. Each has its migrations (`migrations/sqlite/`,
//! `migrations/postgres/`), applied at open. Every query the forge runs
//! lives in this module's children, one per table; handlers never write SQL.

mod copy;
mod events;
mod github;
mod locks;
mod nodes;
mod repos;
mod runs;
mod snapshots;
mod tokens;
mod vms;
mod webhooks;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyTypeInfo, AnyTypeInfoKind, AnyValueRef};
use sqlx::postgres::PgConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Any, AnyPool, ConnectOptions, Connection, Executor, ValueRef};

pub use copy::CopyError;
pub use events::{EventRow, NewEvent};
pub use github::{GithubDelivery, GithubLink, GithubPull, GithubRefState};
pub use locks::{DUTIES_POLL, Held, HoldError, Lock};
pub use nodes::{NodeCaps, NodeLoad, NodeReport, NodeRow, StoredSnapshot};
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
    #[error("Opening the database {location} failed")]
    Open {
        location: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "The database address {0:?} is neither a PostgreSQL URL (postgres://…) nor a SQLite one (sqlite://PATH)"
    )]
    Address(String),
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

/// Which SQL the database speaks, for the few queries that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// Where the forge keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file (created when absent).
    Sqlite(PathBuf),
    /// A PostgreSQL database, by its `postgres://` URL.
    Postgres(String),
}

impl FromStr for Database {
    type Err = StoreError;

    /// `postgres://…` or `postgresql://…`, or `sqlite://PATH`.
    fn from_str(address: &str) -> Result<Self> {
        if address.starts_with("postgres://") || address.starts_with("postgresql://") {
            Ok(Self::Postgres(address.to_owned()))
        } else if let Some(path) = address.strip_prefix("sqlite://")
            && !path.is_empty()
        {
            Ok(Self::Sqlite(PathBuf::from(path)))
        } else {
            Err(StoreError::Address(address.to_owned()))
        }
    }
}

impl std::fmt::Display for Database {
    /// The address without a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            Self::Postgres(url) => f.write_str(&redact_password(url)),
        }
    }
}

/// `url` with the password of its user info, if any, replaced by `***`.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// A handle to the database, cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    database: std::sync::Arc<Database>,
}

/// The advisory lock of [`Store::lock_events`] (`events` in ASCII).
const EVENTS_LOCK: i64 = 0x65_76_65_6e_74_73;

/// `text` as a `TEXT` column holds it: PostgreSQL refuses the NUL
/// character (SQLite keeps it), so a sandbox's output that prints one is
/// stored with U+FFFD in its place on both.
fn storable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}").into()
    } else {
        text.into()
    }
}

/// `value` as JSON text with every NUL in its strings (keys too) replaced
/// as [`storable`] does: PostgreSQL's JSON functions refuse `\u0000`
/// anywhere in a document they look inside.
fn storable_json(value: &serde_json::Value) -> String {
    fn clean(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::String(text) => *text = storable(text).into_owned(),
            serde_json::Value::Array(items) => items.iter_mut().for_each(clean),
            serde_json::Value::Object(fields) => {
                let old = std::mem::take(fields);
                for (key, mut field) in old {
                    clean(&mut field);
                    fields.insert(storable(&key).into_owned(), field);
                }
            }
            _ => {}
        }
    }
    let text = value.to_string();
    if !text.contains("\\u0000") {
        return text;
    }
    let mut value = value.clone();
    clean(&mut value);
    value.to_string()
}

impl Store {
    /// Opens (creating when absent) the SQLite file `path` and applies
    /// pending migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        Self::connect(&Database::Sqlite(path.to_owned())).await
    }

    /// Opens `database` and applies pending migrations. On PostgreSQL the
    /// migrator holds an advisory lock, so forge processes starting at once
    /// migrate one after the other.
    pub async fn connect(database: &Database) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let open_error = |source| StoreError::Open {
            location: database.to_string(),
            source,
        };
        match database {
            Database::Sqlite(path) => {
                Self::migrate_sqlite(path)
                    .await
                    .map_err(|error| match error {
                        StoreError::Query(source) => open_error(source),
                        other => other,
                    })?;
                let url = format!("sqlite://{}", url_path(path));
                let pool = AnyPoolOptions::new()
                    .max_connections(8)
                    .after_connect(|connection, _| {
                        Box::pin(async move {
                            connection
                                .execute(
                                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
                                     PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                                )
                                .await
                                .map(drop)
                        })
                    })
                    .connect(&url)
                    .await
                    .map_err(open_error)?;
                Ok(Self {
                    pool,
                    database: database.clone().into(),
                })
            }
            Database::Postgres(url) => {
                let mut migrating = PgConnection::connect(url).await.map_err(open_error)?;
                sqlx::migrate!("../migrations/postgres")
                    .run(&mut migrating)
                    .await
                    .map_err(StoreError::Migrate)?;
                migrating.close().await.map_err(open_error)?;
                // sqlx's default wait for a free connection (30 s), as on
                // SQLite: a loaded host is slow, not failing.
                let pool = AnyPoolOptions::new()
                    .max_connections(16)
                    .connect(url)
                    .await
                    .map_err(open_error)?;
                Ok(Self {
                    pool,
                    database: database.clone().into(),
                })
            }
        }
    }

    /// Applies SQLite's pending migrations on a connection of their own
    /// with foreign keys off: a migration that rebuilds a table (as
    /// `0009_state_checks.sql` does to add CHECKs) drops the old one, and
    /// with foreign keys on that drop would delete every child row through
    /// `ON DELETE CASCADE`. sqlx runs each SQLite migration in a
    /// transaction, inside which `PRAGMA foreign_keys` is a no-op, so it
    /// has to be set here. Such a migration checks the keys itself before
    /// it commits.
    async fn migrate_sqlite(path: &Path) -> Result<()> {
        let mut migrating: SqliteConnection = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .foreign_keys(false)
            .busy_timeout(Duration::from_secs(10))
            .connect()
            .await?;
        sqlx::migrate!("../migrations/sqlite")
            .run(&mut migrating)
            .await
            .map_err(StoreError::Migrate)?;
        migrating.close().await?;
        Ok(())
    }

    /// A database of a test's own: with `FORGE_TEST_DATABASE_URL` (a
    /// PostgreSQL cluster's URL; `scripts/postgres.sh` starts one) a new
    /// database in that cluster, else a SQLite file in `dir`.
    #[cfg(test)]
    pub async fn open_for_test(dir: &Path) -> Self {
        match std::env::var("FORGE_TEST_DATABASE_URL") {
            Ok(cluster) if !cluster.is_empty() => {
                let url = create_test_database(&cluster).await;
                Self::connect(&Database::Postgres(url))
                    .await
                    .expect("the test database opens with its migrations")
            }
            _ => Self::open(&dir.join("forge.db"))
                .await
                .expect("the database opens with its migrations"),
        }
    }

    /// The pool, for a test's own SQL (ageing a row, reading what is kept
    /// at rest).
    #[cfg(test)]
    pub fn test_pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Another handle on the same database with a pool of its own, as a
    /// second process would have.
    #[cfg(test)]
    pub async fn reopen(&self) -> Self {
        Self::connect(&self.database)
            .await
            .expect("the database opens again")
    }

    /// The SQL dialect of the database.
    pub fn dialect(&self) -> Dialect {
        match *self.database {
            Database::Sqlite(_) => Dialect::Sqlite,
            Database::Postgres(_) => Dialect::Postgres,
        }
    }

    /// SQL for the text of the value at `path` (keys joined by `.`) inside
    /// the JSON text `column`: a string's contents, a number's digits, an
    /// object's JSON; `NULL` when absent or JSON `null`.
    fn json_text(&self, column: &str, path: &str) -> String {
        match self.dialect() {
            Dialect::Sqlite => format!("CAST(json_extract({column}, '$.{path}') AS TEXT)"),
            Dialect::Postgres => format!("({column}::jsonb #>> '{{{}}}')", path.replace('.', ",")),
        }
    }

    /// Takes, in `tx`, the lock every transaction that adds events holds
    /// until it ends (PostgreSQL): ids are then handed out and committed in
    /// the same order, so a consumer that reads `id > cursor` and moves its
    /// cursor to the last id it saw never passes over an event still being
    /// committed. SQLite's single writer gives that order already.
    async fn lock_events(&self, tx: &mut sqlx::Transaction<'_, Any>) -> Result<()> {
        if self.dialect() == Dialect::Postgres {
            sqlx::query(
                "SELECT CAST(1 AS BIGINT) FROM (SELECT pg_advisory_xact_lock($1)) AS locked",
            )
            .bind(EVENTS_LOCK)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    /// SQL for the last `count` characters of the text `expr` (all of it
    /// when shorter).
    fn tail(&self, expr: &str, count: &str) -> String {
        match self.dialect() {
            Dialect::Sqlite => format!("substr({expr}, -{count})"),
            Dialect::Postgres => format!("right({expr}, CAST({count} AS INTEGER))"),
        }
    }

    /// Closes every connection (on SQLite, checkpointing the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Creates an empty database with a fresh name in the PostgreSQL cluster of
/// `cluster` (a URL naming any database of it) and returns its URL.
#[cfg(test)]
async fn create_test_database(cluster: &str) -> String {
    let name = format!("forge_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(cluster)
        .await
        .expect("the test cluster (FORGE_TEST_DATABASE_URL) answers");
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("a test database is created");
    let _ = admin.close().await;
    let (base, query) = match cluster.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (cluster, String::new()),
    };
    let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
    format!("{server}/{name}{query}")
}

/// `path` as the path of a `sqlite://` URL: the characters a URL gives a
/// meaning to are percent-encoded (sqlx decodes them back).
fn url_path(path: &Path) -> String {
    let mut out = String::new();
    for byte in path.as_os_str().as_encoded_bytes() {
        match byte {
            b'%' | b'?' | b'#' | b' ' | 0x80.. => out.push_str(&format!("%{byte:02X}")),
            other => out.push(char::from(*other)),
        }
    }
    out
}

/// A query assembled piece by piece, its parameters numbered (`$1`, `$2`,
/// …) as both dialects read them; sqlx's `QueryBuilder` writes `?`, which
/// PostgreSQL does not.
struct Sql {
    text: String,
    arguments: sqlx::any::AnyArguments<'static>,
    count: usize,
}

impl Sql {
    fn new(text: &str) -> Self {
        Self {
            text: text.to_owned(),
            arguments: Default::default(),
            count: 0,
        }
    }

    fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends the next parameter's placeholder and binds `value` to it.
    fn bind<T>(&mut self, value: T) -> Result<&mut Self>
    where
        T: 'static + sqlx::Encode<'static, Any> + sqlx::Type<Any>,
    {
        use sqlx::Arguments;
        self.arguments
            .add(value)
            .map_err(|error| StoreError::Query(sqlx::Error::Encode(error)))?;
        self.count += 1;
        self.text.push_str(&format!("${}", self.count));
        Ok(self)
    }
}

/// A yes/no column: `BOOLEAN` on PostgreSQL, `0`/`1` on SQLite (which the
/// `Any` driver hands over as an integer). Row fields read it with
/// `#[sqlx(try_from = "Flag")]`; queries bind plain `bool`s.
#[derive(Debug, Clone, Copy)]
pub struct Flag(bool);

impl From<Flag> for bool {
    fn from(flag: Flag) -> Self {
        flag.0
    }
}

impl sqlx::Type<Any> for Flag {
    fn type_info() -> AnyTypeInfo {
        <bool as sqlx::Type<Any>>::type_info()
    }

    fn compatible(ty: &AnyTypeInfo) -> bool {
        matches!(
            ty.kind(),
            AnyTypeInfoKind::Bool
                | AnyTypeInfoKind::SmallInt
                | AnyTypeInfoKind::Integer
                | AnyTypeInfoKind::BigInt
        )
    }
}

impl<'r> sqlx::Decode<'r, Any> for Flag {
    fn decode(value: AnyValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        if value.type_info().kind() == AnyTypeInfoKind::Bool {
            <bool as sqlx::Decode<Any>>::decode(value).map(Flag)
        } else {
            <i64 as sqlx::Decode<Any>>::decode(value).map(|n| Flag(n != 0))
        }
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
    use sqlx::SqlitePool;
    use sqlx::migrate::Migrator;

    use super::*;

    const MIGRATIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations/sqlite");

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
        let store = Store::open_for_test(dir.path()).await;
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
               VALUES ('vm1', 'container', 'stopped', 1, 512, TRUE, 't', 0)",
            "UPDATE runs SET state = 'canceled'",
            "INSERT INTO run_steps (run_id, position, name, command, status) VALUES (1, 0, 'a', 'b', 'done')",
            "INSERT INTO webhook_deliveries (id, webhook_id, event_type, body, status, next_attempt_at, created_at)
               VALUES ('msg1', 'wh1', 'ping', '', 'sent', 0, 't')",
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
                 VALUES ($1, 'container', $2, 1, 512, TRUE, 't', 0)",
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
            sqlx::query("UPDATE runs SET state = $1 WHERE id = 1")
                .bind(*state)
                .execute(&store.pool)
                .await
                .expect("a run state is accepted");
            assert_eq!(
                store.run(1).await.expect("read").expect("row").state,
                *state
            );
        }
    }

    #[test]
    fn database_addresses_parse_and_print_without_their_password() {
        let pg: Database = "postgres://forge:s3cret@db.internal:5432/forge"
            .parse()
            .expect("a PostgreSQL URL");
        assert_eq!(
            pg.to_string(),
            "postgres://forge:***@db.internal:5432/forge"
        );
        assert_eq!(
            "sqlite:///var/lib/forge/forge.db"
                .parse::<Database>()
                .expect("SQLite"),
            Database::Sqlite("/var/lib/forge/forge.db".into())
        );
        for wrong in ["mysql://x/y", "/var/lib/forge/forge.db", "sqlite://", ""] {
            let error = wrong.parse::<Database>().expect_err(wrong).to_string();
            assert!(error.contains("neither a PostgreSQL URL"), "{error}");
        }
        assert_eq!(url_path(Path::new("/a b/c?d#e%f")), "/a%20b/c%3Fd%23e%25f");
    }

    /// `sslmode=require` in the URL makes the connection TLS (rustls), as
    /// a managed PostgreSQL asks; the server says so of its own session.
    #[tokio::test]
    #[ignore = "needs PostgreSQL with TLS: scripts/test.sh's postgres tier runs it"]
    async fn a_postgres_url_can_require_tls() {
        let cluster = std::env::var("FORGE_TEST_DATABASE_URL")
            .expect("FORGE_TEST_DATABASE_URL names the test cluster (scripts/postgres.sh)");
        let url = create_test_database(&cluster).await;
        let store = Store::connect(&Database::Postgres(format!("{url}?sslmode=require")))
            .await
            .expect("a TLS connection");
        let (tls,): (bool,) =
            sqlx::query_as("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(&store.pool)
                .await
                .expect("the session's TLS state");
        assert!(tls, "the session is encrypted");
    }
}
