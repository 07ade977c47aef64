//! `forge db copy`: a forge's whole state moved from one database to
//! another, the way from the embedded SQLite file to PostgreSQL when one
//! machine is outgrown (or back).
//!
//! The source is read in one transaction (a consistent snapshot, even of
//! a SQLite file a server still writes to) and the target written in one:
//! a copy that fails leaves the target as it was. The target must hold no
//! forge state yet (only what its migrations put there). Rows keep their
//! ids, and the target's id sequences continue after the source's (on
//! SQLite, after ids that were handed out and deleted, too), so an id is
//! never reused. Values are converted to the target's column types
//! (`0`/`1` and `BOOLEAN`, SQLite's loosely typed text and numbers).

use futures_util::TryStreamExt;
use sqlx::any::{AnyArguments, AnyTypeInfoKind, AnyValueRef};
use sqlx::{Any, Arguments, Column, Decode, Row, ValueRef};

use super::{Dialect, Flag, Result, Store, StoreError};

/// Every table of the schema, parents before children (foreign keys), and
/// the order its rows are copied in (that of their insertion).
const TABLES: &[(&str, &str)] = &[
    ("repos", "id"),
    ("events", "id"),
    ("tokens", "id"),
    ("webhooks", "id"),
    ("webhook_deliveries", "seq"),
    ("webhook_attempts", "id"),
    ("webhook_cursor", "id"),
    ("nodes", "id"),
    ("sandbox_nodes", "sandbox_id"),
    ("stored_snapshots", "sandbox_id"),
    ("vms", "id"),
    ("runs", "id"),
    ("run_steps", "run_id, position"),
    ("run_analyses", "run_id"),
    ("branch_sandboxes", "repo_id, branch"),
    ("pipeline_cursor", "id"),
    ("github_deliveries", "rowid"),
    ("github_installations", "id"),
    ("github_links", "repo_id"),
    ("github_cursor", "id"),
    ("github_refs", "repo_id, ref_name"),
    ("github_pulls", "repo_id, number"),
    ("github_reviews", "repo_id, number, head_sha"),
    ("snapshots", "id"),
    ("template_builds", "spec_hash"),
    ("templates", "name"),
];

/// Tables whose one row the migrations create: replaced, not refused.
const CURSORS: &[&str] = &["webhook_cursor", "pipeline_cursor", "github_cursor"];

/// Generated ids: the next one must follow the copied rows.
const IDENTITIES: &[(&str, &str)] = &[
    ("events", "id"),
    ("webhook_deliveries", "seq"),
    ("webhook_attempts", "id"),
    ("runs", "id"),
    ("github_deliveries", "rowid"),
];

/// Rows per `INSERT`.
const BATCH_ROWS: usize = 200;

/// What a target column holds, as the copy binds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Integer,
    Boolean,
    Bytes,
    Text,
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(
        "The target database already holds forge state ({table} has rows); copy into a database the forge has not used"
    )]
    NotEmpty { table: &'static str },
    #[error("The source and the target are the same database")]
    SameDatabase,
    #[error("Copying the table {table} failed")]
    Table {
        table: &'static str,
        #[source]
        source: StoreError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// Copies every row of this database into `target` (migrated, holding
    /// no forge state); `progress` hears each table's name and row count
    /// as it is done. Returns the row count per table.
    pub async fn copy_into(
        &self,
        target: &Store,
        mut progress: impl FnMut(&str, u64),
    ) -> Result<Vec<(&'static str, u64)>, CopyError> {
        if self.database == target.database {
            return Err(CopyError::SameDatabase);
        }
        for (table, _) in TABLES {
            if CURSORS.contains(table) {
                continue;
            }
            let (rows,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM {table}"))
                .fetch_one(&target.pool)
                .await
                .map_err(StoreError::from)?;
            if rows > 0 {
                return Err(CopyError::NotEmpty { table });
            }
        }
        let mut source = self.pool.begin().await.map_err(StoreError::from)?;
        if self.dialect() == Dialect::Postgres {
            // One snapshot for every table, as SQLite's read transaction is.
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *source)
                .await
                .map_err(StoreError::from)?;
        }
        let mut into = target.pool.begin().await.map_err(StoreError::from)?;
        let mut counts = Vec::with_capacity(TABLES.len());
        for &(table, order) in TABLES {
            let in_table = |source| CopyError::Table { table, source };
            let columns = target.columns(table).await.map_err(in_table)?;
            if CURSORS.contains(&table) {
                sqlx::query(&format!("DELETE FROM {table}"))
                    .execute(&mut *into)
                    .await
                    .map_err(|e| in_table(e.into()))?;
            }
            let names = columns
                .iter()
                .map(|(name, _)| name.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let select = format!("SELECT {names} FROM {table} ORDER BY {order}");
            let mut rows = sqlx::query(&select).fetch(&mut *source);
            let mut batch = Vec::with_capacity(BATCH_ROWS);
            let mut copied = 0u64;
            loop {
                let row = rows.try_next().await.map_err(|e| in_table(e.into()))?;
                let done = row.is_none();
                if let Some(row) = row {
                    batch.push(row);
                }
                if batch.len() == BATCH_ROWS || (done && !batch.is_empty()) {
                    // The stream borrows the source; the insert runs on
                    // the target's own transaction.
                    insert_rows(&mut into, table, &names, &columns, &batch)
                        .await
                        .map_err(in_table)?;
                    copied += batch.len() as u64;
                    batch.clear();
                }
                if done {
                    break;
                }
            }
            drop(rows);
            progress(table, copied);
            counts.push((table, copied));
        }
        for &(table, column) in IDENTITIES {
            let floor = self.last_handed_out(&mut source, table, column).await?;
            target
                .continue_after(&mut into, table, column, floor)
                .await?;
        }
        into.commit().await.map_err(StoreError::from)?;
        source.rollback().await.map_err(StoreError::from)?;
        Ok(counts)
    }

    /// The columns of `table` in this database and how each is bound.
    async fn columns(&self, table: &str) -> Result<Vec<(String, Kind)>> {
        let rows: Vec<(String, String)> = match self.dialect() {
            Dialect::Sqlite => {
                sqlx::query_as("SELECT name, type FROM pragma_table_info($1) ORDER BY cid")
                    .bind(table)
                    .fetch_all(&self.pool)
                    .await?
            }
            Dialect::Postgres => {
                sqlx::query_as(
                    "SELECT column_name::text, data_type::text FROM information_schema.columns
                 WHERE table_schema = current_schema() AND table_name = $1
                 ORDER BY ordinal_position",
                )
                .bind(table)
                .fetch_all(&self.pool)
                .await?
            }
        };
        Ok(rows
            .into_iter()
            .map(|(name, ty)| {
                let kind = match ty.to_ascii_lowercase().as_str() {
                    "integer" | "bigint" => Kind::Integer,
                    "boolean" => Kind::Boolean,
                    "blob" | "bytea" => Kind::Bytes,
                    _ => Kind::Text,
                };
                (name, kind)
            })
            .collect())
    }

    /// The largest id of `table.column` ever handed out here, those of
    /// deleted rows included (SQLite's `sqlite_sequence`, PostgreSQL's
    /// sequence).
    async fn last_handed_out(
        &self,
        source: &mut sqlx::Transaction<'_, Any>,
        table: &str,
        column: &str,
    ) -> Result<i64> {
        let (present,): (i64,) = sqlx::query_as(&format!(
            "SELECT CAST(COALESCE(MAX({column}), 0) AS BIGINT) FROM {table}"
        ))
        .fetch_one(&mut **source)
        .await?;
        let deleted = match self.dialect() {
            Dialect::Sqlite => {
                sqlx::query_as::<_, (i64,)>("SELECT seq FROM sqlite_sequence WHERE name = $1")
                    .bind(table)
                    .fetch_optional(&mut **source)
                    .await?
                    .map_or(0, |(seq,)| seq)
            }
            Dialect::Postgres => sqlx::query_as::<_, (i64,)>(
                "SELECT CAST(COALESCE(pg_sequence_last_value(CAST(pg_get_serial_sequence($1, $2) AS regclass)), 0) AS BIGINT)",
            )
            .bind(table)
            .bind(column)
            .fetch_one(&mut **source)
            .await?
            .0,
        };
        Ok(present.max(deleted))
    }

    /// Makes the next generated `table.column` follow `last`.
    async fn continue_after(
        &self,
        into: &mut sqlx::Transaction<'_, Any>,
        table: &str,
        column: &str,
        last: i64,
    ) -> Result<()> {
        if last <= 0 {
            return Ok(());
        }
        match self.dialect() {
            Dialect::Sqlite => {
                sqlx::query("DELETE FROM sqlite_sequence WHERE name = $1")
                    .bind(table)
                    .execute(&mut **into)
                    .await?;
                sqlx::query("INSERT INTO sqlite_sequence (name, seq) VALUES ($1, $2)")
                    .bind(table)
                    .bind(last)
                    .execute(&mut **into)
                    .await?;
            }
            Dialect::Postgres => {
                sqlx::query("SELECT CAST(setval(pg_get_serial_sequence($1, $2), $3) AS BIGINT)")
                    .bind(table)
                    .bind(column)
                    .bind(last)
                    .execute(&mut **into)
                    .await?;
            }
        }
        Ok(())
    }
}

/// Inserts `rows` (columns `names`, bound as `columns` say) into `table` in
/// one statement.
async fn insert_rows(
    into: &mut sqlx::Transaction<'_, Any>,
    table: &str,
    names: &str,
    columns: &[(String, Kind)],
    rows: &[sqlx::any::AnyRow],
) -> Result<()> {
    let mut arguments = AnyArguments::default();
    let mut values = Vec::with_capacity(rows.len());
    let mut n = 0;
    for row in rows {
        let mut placeholders = Vec::with_capacity(columns.len());
        for (index, (_, kind)) in columns.iter().enumerate() {
            bind(&mut arguments, row, index, *kind)?;
            n += 1;
            placeholders.push(format!("${n}"));
        }
        values.push(format!("({})", placeholders.join(", ")));
    }
    let insert = format!("INSERT INTO {table} ({names}) VALUES {}", values.join(", "));
    sqlx::query_with(&insert, arguments)
        .execute(&mut **into)
        .await?;
    Ok(())
}

/// Binds column `index` of `row` as `kind`, converting what the source
/// holds (a SQLite column may hold any type).
fn bind(
    arguments: &mut AnyArguments<'_>,
    row: &sqlx::any::AnyRow,
    index: usize,
    kind: Kind,
) -> Result<()> {
    let value = row.try_get_raw(index)?;
    let column = row.column(index).name().to_owned();
    let wrong = |error: sqlx::error::BoxDynError| {
        StoreError::Query(sqlx::Error::ColumnDecode {
            index: column.clone(),
            source: error,
        })
    };
    let added = if value.is_null() {
        match kind {
            Kind::Integer => arguments.add(None::<i64>),
            Kind::Boolean => arguments.add(None::<bool>),
            Kind::Bytes => arguments.add(None::<Vec<u8>>),
            Kind::Text => arguments.add(None::<String>),
        }
    } else {
        let held = value.type_info().kind();
        match kind {
            Kind::Integer if held == AnyTypeInfoKind::Bool => {
                arguments.add(i64::from(decode::<bool>(value).map_err(wrong)?))
            }
            Kind::Integer => arguments.add(decode::<i64>(value).map_err(wrong)?),
            Kind::Boolean => arguments.add(bool::from(decode::<Flag>(value).map_err(wrong)?)),
            Kind::Bytes if held == AnyTypeInfoKind::Text => {
                arguments.add(decode::<String>(value).map_err(wrong)?.into_bytes())
            }
            Kind::Bytes => arguments.add(decode::<Vec<u8>>(value).map_err(wrong)?),
            Kind::Text => match held {
                AnyTypeInfoKind::SmallInt | AnyTypeInfoKind::Integer | AnyTypeInfoKind::BigInt => {
                    arguments.add(decode::<i64>(value).map_err(wrong)?.to_string())
                }
                AnyTypeInfoKind::Real | AnyTypeInfoKind::Double => {
                    arguments.add(decode::<f64>(value).map_err(wrong)?.to_string())
                }
                _ => arguments.add(decode::<String>(value).map_err(wrong)?),
            },
        }
    };
    added.map_err(|error| StoreError::Query(sqlx::Error::Encode(error)))
}

fn decode<'r, T: Decode<'r, Any>>(value: AnyValueRef<'r>) -> Result<T, sqlx::error::BoxDynError> {
    T::decode(value)
}

#[cfg(test)]
pub(super) mod tests {
    use api_types::{DeliveryState, RunState, VmState};

    use super::*;
    use crate::store::{
        AttemptOutcome, NewDeliveryOwned, NewEvent, NewRun, NewToken, VmRow, now, now_ms,
    };

    /// A run of `main` of repository `r1` (`acme/web`).
    pub(in crate::store) fn run_of_r1(commit: &str, event_id: i64) -> NewRun {
        NewRun {
            repo_id: "r1".into(),
            repo_name: "acme/web".into(),
            branch: "main".into(),
            commit_id: commit.into(),
            event_id,
            plan: None,
            variables: Default::default(),
        }
    }

    /// A SQLite forge with a row in the tables that carry each kind of
    /// value (flags, bytes, JSON, generated ids), a deleted run among them.
    async fn populated(path: &std::path::Path) -> Store {
        let store = Store::open(path).await.expect("source");
        super::super::webhooks::tests::add_repo_and_hook(&store).await;
        store
            .insert_token(&NewToken {
                id: "t1",
                name: "laptop",
                secret_hash: "ab12",
                scopes: "repo:write",
                repo_id: Some("r1"),
            })
            .await
            .expect("token");
        let push = NewEvent {
            kind: "push".into(),
            ref_name: Some("refs/heads/main".into()),
            payload: serde_json::json!({"branch": "main"}),
        };
        let events = store
            .insert_events("r1", "acme/web", Some("t1"), &vec![push; 3])
            .await
            .expect("events");
        let cursor = store.webhook_cursor().await.expect("cursor");
        store
            .consume_events(cursor, &events, |event, hooks| {
                hooks
                    .iter()
                    .map(|h| NewDeliveryOwned {
                        id: format!("msg_{}", event.id),
                        webhook_id: h.id.clone(),
                        event_type: "push".into(),
                        body: std::sync::Arc::from(&[0u8, 159, 146, 150][..]),
                    })
                    .collect()
            })
            .await
            .expect("deliveries");
        store
            .record_attempt(
                "msg_1",
                &AttemptOutcome {
                    started_at_ms: now_ms(),
                    duration_ms: 3,
                    request_headers: "[]",
                    response_status: Some(200),
                    response_headers: "[]",
                    response_body: b"ok",
                    response_body_truncated: true,
                    error: None,
                    status: DeliveryState::Delivered,
                    next_attempt_at: None,
                    success: true,
                },
            )
            .await
            .expect("attempt");
        store
            .insert_vm(&VmRow {
                id: "vm1".into(),
                backend: "container".into(),
                state: VmState::PausedToDisk,
                repo_id: Some("r1".into()),
                branch: Some("main".into()),
                parent_id: None,
                vcpus: 2,
                mem_mib: 1024,
                persistent: true,
                idle_timeout_secs: Some(300),
                created_by: Some("t1".into()),
                created_at: now(),
                last_active_unix: 1,
                labels: r#"{"team":"web"}"#.into(),
                expires_unix: None,
                snapshot_id: None,
                template: None,
                workdir: Some("/workspace".into()),
            })
            .await
            .expect("vm");
        let runs = store
            .queue_runs(&[run_of_r1("c1", 1), run_of_r1("c2", 2)], 2)
            .await
            .expect("runs");
        store
            .insert_steps(runs[0].id, &[("test".into(), "bun test".into())])
            .await
            .expect("steps");
        store
            .finish_run(runs[0].id, RunState::Passed, None)
            .await
            .expect("finish");
        sqlx::query("DELETE FROM runs WHERE id = $1")
            .bind(runs[1].id)
            .execute(&store.pool)
            .await
            .expect("delete the newest run");
        store
    }

    /// The whole state arrives with its values' types (a flag, bytes that
    /// are not UTF-8, JSON), ids continue after the source's (a deleted
    /// run's id too), and the copy refuses a target already in use and
    /// copying a database onto itself. The target is PostgreSQL in the
    /// `postgres` tier, another SQLite file otherwise.
    #[tokio::test]
    async fn a_forge_moves_to_another_database_whole_and_keeps_counting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = populated(&dir.path().join("source.db")).await;
        let target_dir = dir.path().join("target");
        std::fs::create_dir(&target_dir).expect("target dir");
        let target = Store::open_for_test(&target_dir).await;

        let mut heard = Vec::new();
        let counts = source
            .copy_into(&target, |table, rows| heard.push((table.to_owned(), rows)))
            .await
            .expect("copy");
        assert_eq!(heard.len(), TABLES.len());
        let count = |table| counts.iter().find(|(t, _)| *t == table).map(|(_, n)| *n);
        assert_eq!(count("events"), Some(3));
        assert_eq!(count("webhook_deliveries"), Some(3));
        assert_eq!(count("runs"), Some(1));
        assert_eq!(count("webhook_cursor"), Some(1));

        let vm = target.vm("vm1").await.expect("read").expect("the VM");
        assert!(vm.persistent);
        assert_eq!(vm.state, VmState::PausedToDisk);
        assert_eq!(vm.labels().get("team").map(String::as_str), Some("web"));
        let delivery = target
            .delivery("wh_1", "msg_1")
            .await
            .expect("read")
            .expect("the delivery");
        assert_eq!(&*delivery.body, &[0u8, 159, 146, 150]);
        assert_eq!(delivery.status, DeliveryState::Delivered);
        let attempts = target.attempts("msg_1").await.expect("attempts");
        assert!(attempts[0].response_body_truncated);
        assert_eq!(attempts[0].response_body, b"ok");
        assert_eq!(
            target
                .token_by_id("t1")
                .await
                .expect("read")
                .map(|t| t.scopes),
            Some("repo:write".into())
        );
        assert_eq!(
            target.webhook_cursor().await.expect("cursor"),
            source.webhook_cursor().await.expect("cursor")
        );

        // Generated ids go on after the source's, past the deleted run.
        let more = target
            .insert_events(
                "r1",
                "acme/web",
                None,
                &[NewEvent {
                    kind: "push".into(),
                    ref_name: None,
                    payload: serde_json::json!({}),
                }],
            )
            .await
            .expect("an event after the copy");
        assert_eq!(more[0].id, 4);
        let queued = target
            .queue_runs(&[run_of_r1("c3", 4)], 4)
            .await
            .expect("a run after the copy");
        assert_eq!(
            queued[0].id, 3,
            "the deleted run's id is not handed out again"
        );

        // And back into a SQLite file (from PostgreSQL in the `postgres`
        // tier): ids still go on.
        let back = Store::open(&dir.path().join("back.db"))
            .await
            .expect("back");
        target.copy_into(&back, |_, _| {}).await.expect("copy back");
        let vm = back.vm("vm1").await.expect("read").expect("the VM");
        assert!(vm.persistent);
        let next = back
            .queue_runs(&[run_of_r1("c4", 5)], 5)
            .await
            .expect("a run after copying back");
        assert_eq!(next[0].id, 4);

        match source.copy_into(&target, |_, _| {}).await {
            Err(CopyError::NotEmpty { table: "repos" }) => {}
            other => panic!("a second copy: {other:?}"),
        }
        match source.copy_into(&source.reopen().await, |_, _| {}).await {
            Err(CopyError::SameDatabase) => {}
            other => panic!("a copy onto itself: {other:?}"),
        }
    }
}
