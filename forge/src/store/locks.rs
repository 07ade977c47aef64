//! Which `forge serve` processes may share a PostgreSQL database, and which
//! one of them does the work there is one of per forge.
//!
//! Two session advisory locks, each on a connection of its own (PostgreSQL
//! releases them when the process dies or the connection drops):
//! - **the server lock**, held by every server: *shared* by a server that
//!   runs sandboxes only on nodes (or none), *exclusive* by one that runs
//!   them on its own host (those sandboxes are reachable through it alone).
//!   So any number of control planes share a database, or one server that
//!   is also a sandbox host has it to itself.
//! - **the duties lock**, held by one server at a time: the one that runs
//!   the background work that must not run twice (the idle reaper, expiry,
//!   the node watch, stray collection, warm pools, dev server supervision,
//!   recovery of template builds, the GitHub sync). The others ask for it
//!   every [`DUTIES_POLL`] and the first to get it after its holder dies
//!   takes the duties up.
//!
//! On SQLite nothing is held: the file lives in one server's data
//! directory, and that server does everything.

use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::PgConnection;

use super::{Database, StoreError};

/// The server lock's key (`forge` in ASCII).
const SERVER_LOCK: i64 = 0x66_6f_72_67_65;

/// The duties lock's key (`duties` in ASCII).
const DUTIES_LOCK: i64 = 0x64_75_74_69_65_73;

/// How often a server without the duties asks for them.
pub const DUTIES_POLL: Duration = Duration::from_secs(2);

/// One of the two locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// The server lock, exclusively (`alone`) or shared.
    Server { alone: bool },
    /// The duties lock.
    Duties,
}

impl Lock {
    fn sql(self) -> &'static str {
        match self {
            Lock::Server { alone: false } => "SELECT pg_try_advisory_lock_shared($1)",
            Lock::Server { alone: true } | Lock::Duties => "SELECT pg_try_advisory_lock($1)",
        }
    }

    fn key(self) -> i64 {
        match self {
            Lock::Server { .. } => SERVER_LOCK,
            Lock::Duties => DUTIES_LOCK,
        }
    }
}

impl std::fmt::Display for Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Lock::Server { .. } => "the database's server lock",
            Lock::Duties => "the forge's duties",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error(
        "another forge server is using this database, and a server that runs sandboxes on its \
         own host must be the only one: run every server with --sandbox-backend nodes (or none) \
         to share a database"
    )]
    TakenAlone,
    #[error(
        "a forge server that runs sandboxes on its own host holds this database alone: servers \
         share a database only when each runs with --sandbox-backend nodes (or none)"
    )]
    TakenShared,
    #[error("this server's hold on {0} was lost and another forge server took it; stopping")]
    Lost(Lock),
    #[error("taking {0} failed")]
    Query(Lock, #[source] StoreError),
}

/// A lock held until dropped; [`Self::keep`] watches it.
pub struct Held {
    lock: Lock,
    /// The database's URL and the connection holding the lock (PostgreSQL).
    held: Option<(String, PgConnection)>,
}

impl Held {
    /// Holds the lock, checking every `every` that its connection lives;
    /// one that died (PostgreSQL restarted, a network cut, an operator's
    /// `pg_terminate_backend`) released it, so it is taken again on a new
    /// connection. Returns only when that fails because another server
    /// took it meanwhile: this one must stop. An unreachable database is
    /// retried (nothing can be served from it anyway). Never returns on
    /// SQLite.
    pub async fn keep(self, every: Duration) -> HoldError {
        let lock = self.lock;
        let Some((url, mut connection)) = self.held else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(every).await;
            if sqlx::query("SELECT 1")
                .execute(&mut connection)
                .await
                .is_ok()
            {
                continue;
            }
            match take(&url, lock).await {
                Ok(Some(again)) => {
                    tracing::warn!(%lock, "the database connection holding a lock was lost; it is held again");
                    connection = again;
                }
                Ok(None) => return HoldError::Lost(lock),
                Err(error) => {
                    tracing::warn!(%lock, error = %error, "a lock's connection was lost; retrying");
                }
            }
        }
    }
}

/// A connection holding `lock` on `url`, or `None` when another holds it
/// (in a way that excludes this hold).
async fn take(url: &str, lock: Lock) -> Result<Option<PgConnection>, HoldError> {
    let failed = |error: sqlx::Error| HoldError::Query(lock, error.into());
    let mut connection = PgConnection::connect(url).await.map_err(failed)?;
    let (held,): (bool,) = sqlx::query_as(lock.sql())
        .bind(lock.key())
        .fetch_one(&mut connection)
        .await
        .map_err(failed)?;
    Ok(held.then_some(connection))
}

impl super::Store {
    /// Holds the server lock for as long as the guard lives: `alone` for a
    /// server that runs sandboxes on its own host, shared otherwise; fails
    /// saying why when the servers already on the database exclude this
    /// one.
    pub async fn hold_server(&self, alone: bool) -> Result<Held, HoldError> {
        let lock = Lock::Server { alone };
        let Database::Postgres(url) = &*self.database else {
            return Ok(Held { lock, held: None });
        };
        match take(url, lock).await? {
            Some(connection) => Ok(Held {
                lock,
                held: Some((url.clone(), connection)),
            }),
            None if alone => Err(HoldError::TakenAlone),
            None => Err(HoldError::TakenShared),
        }
    }

    /// The duties, when no other server holds them (always on SQLite).
    pub async fn try_hold_duties(&self) -> Result<Option<Held>, HoldError> {
        let lock = Lock::Duties;
        let Database::Postgres(url) = &*self.database else {
            return Ok(Some(Held { lock, held: None }));
        };
        Ok(take(url, lock).await?.map(|connection| Held {
            lock,
            held: Some((url.clone(), connection)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use test_support::poll::eventually_async;

    use super::super::{Dialect, Store};
    use super::*;

    /// PostgreSQL lets a lock go a moment after it sees its connection
    /// closed: how long a test waits for that.
    const LET_GO: Duration = Duration::from_secs(5);

    /// The duties, once `store` gets them.
    async fn free_duties(store: &Store, what: &str) -> Held {
        eventually_async(LET_GO, what, async || {
            store
                .try_hold_duties()
                .await
                .ok()
                .flatten()
                .ok_or("not yet")
        })
        .await
    }

    /// Servers that run sandboxes only on nodes share a database; one that
    /// runs them on its own host is refused beside them and refuses them
    /// while it runs, each saying why. SQLite (one process's file) has
    /// nothing to hold.
    #[tokio::test]
    async fn control_planes_share_a_database_and_a_sandbox_host_has_it_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = &Store::open_for_test(dir.path()).await;
        let other = &store.reopen().await;
        if store.dialect() == Dialect::Sqlite {
            assert!(store.hold_server(true).await.is_ok());
            assert!(other.hold_server(true).await.is_ok());
            return;
        }
        let first = store.hold_server(false).await.expect("a control plane");
        let second = other.hold_server(false).await.expect("another beside it");
        let error = other.hold_server(true).await.err().expect("refused");
        assert!(matches!(error, HoldError::TakenAlone), "{error}");
        assert!(error.to_string().contains("--sandbox-backend nodes"));
        drop((first, second));
        let alone = eventually_async(LET_GO, "the sandbox host holds it alone", async || {
            store.hold_server(true).await.ok().ok_or("not yet")
        })
        .await;
        let error = other.hold_server(false).await.err().expect("refused");
        assert!(matches!(error, HoldError::TakenShared), "{error}");
        let error = other.hold_server(true).await.err().expect("refused");
        assert!(matches!(error, HoldError::TakenAlone), "{error}");
        drop(alone);
        eventually_async(
            LET_GO,
            "a control plane once the host is gone",
            async || other.hold_server(false).await.ok().ok_or("not yet"),
        )
        .await;
    }

    /// One server at a time holds the duties; when it goes, another gets
    /// them.
    #[tokio::test]
    async fn the_duties_are_held_by_one_server_at_a_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_for_test(dir.path()).await;
        let other = &store.reopen().await;
        let first = store.try_hold_duties().await.expect("asked");
        assert!(first.is_some(), "the first asking gets them");
        let second = other.try_hold_duties().await.expect("asked");
        match store.dialect() {
            Dialect::Sqlite => assert!(second.is_some(), "one server on SQLite does all"),
            Dialect::Postgres => {
                assert!(second.is_none(), "held by the first");
                drop(first);
                eventually_async(LET_GO, "the duties move on", async || {
                    other
                        .try_hold_duties()
                        .await
                        .expect("asked")
                        .ok_or("not yet")
                })
                .await;
            }
        }
    }

    /// A server whose lock connection is cut (as a database restart or an
    /// operator would) takes the lock again; if another server took it in
    /// between, it learns it must stop.
    #[tokio::test]
    #[ignore = "needs PostgreSQL: scripts/test.sh's postgres tier runs it"]
    async fn a_server_that_loses_its_hold_to_another_must_stop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_for_test(dir.path()).await;
        assert_eq!(
            store.dialect(),
            Dialect::Postgres,
            "FORGE_TEST_DATABASE_URL is set"
        );
        let cut = |store: Store| async move {
            let holders: Vec<(i32,)> = sqlx::query_as(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            .fetch_all(store.test_pool())
            .await
            .expect("the lock's holder");
            assert_eq!(holders.len(), 1, "{holders:?}");
            sqlx::query("SELECT pg_terminate_backend(CAST($1 AS INTEGER))")
                .bind(i64::from(holders[0].0))
                .execute(store.test_pool())
                .await
                .expect("terminate");
        };
        let every = Duration::from_millis(50);

        // Cut, then nobody else there: held again, the server goes on.
        let kept = tokio::spawn(store.hold_server(true).await.expect("held").keep(every));
        cut(store.clone()).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            tokio::time::sleep(every).await;
            let (held,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            .fetch_one(store.test_pool())
            .await
            .expect("locks");
            if held == 1 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never held again");
        }
        assert!(!kept.is_finished());
        kept.abort();
        let _ = kept.await;

        // Cut, and another server takes the duties before the first looks
        // again (half a second later): the first must stop.
        let held = free_duties(&store, "the aborted hold ended").await;
        let kept = tokio::spawn(held.keep(Duration::from_millis(500)));
        cut(store.clone()).await;
        let other = store.reopen().await;
        let _second = free_duties(&other, "the duties are free").await;
        let error = tokio::time::timeout(Duration::from_secs(10), kept)
            .await
            .expect("the first server hears of it")
            .expect("keep");
        assert!(matches!(error, HoldError::Lost(Lock::Duties)), "{error}");
    }
}
