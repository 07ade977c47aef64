//! Durable state: one SQLite database (WAL) in the data directory, opened
//! with the migrations in `migrations/` applied. Every query the forge runs
//! lives in this module's children, one per table; handlers never write SQL.

mod events;
mod github;
mod repos;
mod runs;
mod tokens;
mod vms;
mod webhooks;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

pub use events::{EventRow, NewEvent};
pub use github::{GithubDelivery, GithubLink, GithubPull, GithubRefState};
pub use repos::RepoRow;
pub use runs::{BranchSandbox, NewRun, PlanSource, RunRow, StepRow};
pub use tokens::{NewToken, TokenRow};
pub use vms::{VmRow, unix_now};
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
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(open_error)?;
        sqlx::migrate!("../migrations")
            .run(&pool)
            .await
            .map_err(StoreError::Migrate)?;
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
