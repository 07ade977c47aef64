//! The `events` table: the outbox other components consume by cursor.

use super::{Result, Store, now};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRow {
    pub id: i64,
    /// `None` for an event of the forge itself (a sandbox without a
    /// repository).
    pub repo_id: Option<String>,
    pub repo_name: Option<String>,
    pub kind: String,
    pub ref_name: Option<String>,
    pub actor: Option<String>,
    pub payload: String,
    pub created_at: String,
}

/// An event about to be recorded.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: String,
    pub ref_name: Option<String>,
    pub payload: serde_json::Value,
}

impl Store {
    /// Records `events` of one repository in one transaction (all or none)
    /// and returns them with their ids, in order.
    pub async fn insert_events(
        &self,
        repo_id: &str,
        repo_name: &str,
        actor: Option<&str>,
        events: &[NewEvent],
    ) -> Result<Vec<EventRow>> {
        self.insert_events_of(Some((repo_id, repo_name)), actor, events)
            .await
    }

    /// [`Self::insert_events`] of a repository (id, name) or, with `None`,
    /// of the forge itself.
    pub async fn insert_events_of(
        &self,
        repo: Option<(&str, &str)>,
        actor: Option<&str>,
        events: &[NewEvent],
    ) -> Result<Vec<EventRow>> {
        let (repo_id, repo_name) = repo.unzip();
        let mut tx = self.pool.begin().await?;
        self.lock_events(&mut tx).await?;
        let mut rows = Vec::with_capacity(events.len());
        let created_at = now();
        for event in events {
            let row: EventRow = sqlx::query_as(
                "INSERT INTO events (repo_id, repo_name, kind, ref_name, actor, payload, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
            )
            .bind(repo_id)
            .bind(repo_name)
            .bind(&event.kind)
            .bind(&event.ref_name)
            .bind(actor)
            .bind(super::storable_json(&event.payload))
            .bind(&created_at)
            .fetch_one(&mut *tx)
            .await?;
            rows.push(row);
        }
        tx.commit().await?;
        Ok(rows)
    }

    /// Events of a repository with an id greater than `after`, oldest first.
    pub async fn events_after(
        &self,
        repo_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<EventRow>> {
        Ok(sqlx::query_as(
            "SELECT * FROM events WHERE repo_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(repo_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every event after `after` (of every repository and of none), for
    /// consumers of the whole outbox (webhooks, sync) and the forge-wide
    /// stream.
    pub async fn all_events_after(&self, after: i64, limit: i64) -> Result<Vec<EventRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM events WHERE id > $1 ORDER BY id LIMIT $2")
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// Six writers add 240 events one transaction each while a consumer
    /// reads by cursor as the webhook, pipeline and GitHub consumers do:
    /// it sees every event, none passed over for having committed after a
    /// newer one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_consumer_by_cursor_never_passes_over_an_event_being_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_for_test(dir.path()).await;
        let mut writers = Vec::new();
        for writer in 0..6 {
            let store = store.clone();
            writers.push(tokio::spawn(async move {
                for n in 0..40 {
                    let event = NewEvent {
                        kind: "vm.created".into(),
                        ref_name: None,
                        payload: serde_json::json!({ "writer": writer, "n": n }),
                    };
                    store
                        .insert_events_of(None, None, &[event])
                        .await
                        .expect("an event");
                }
            }));
        }
        let mut seen = Vec::new();
        let mut cursor = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen.len() < 240 {
            // Asked before the read: once every writer is done, a read
            // that finds nothing new is the end.
            let finished = writers.iter().all(|writer| writer.is_finished());
            let events = store.all_events_after(cursor, 1000).await.expect("read");
            if let Some(last) = events.last() {
                cursor = last.id;
            }
            seen.extend(events.iter().map(|event| event.id));
            if finished && events.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "the writers never finished");
            tokio::task::yield_now().await;
        }
        for writer in writers {
            writer.await.expect("writer");
        }
        let (written,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM events")
            .fetch_one(&store.pool)
            .await
            .expect("count");
        assert_eq!(written, 240);
        let all: Vec<(i64,)> = sqlx::query_as("SELECT id FROM events ORDER BY id")
            .fetch_all(&store.pool)
            .await
            .expect("ids");
        let missed: Vec<i64> = all
            .iter()
            .map(|(id,)| *id)
            .filter(|id| !seen.contains(id))
            .collect();
        assert!(
            missed.is_empty(),
            "the consumer passed over the events {missed:?}"
        );
    }

    /// A NUL in what a sandbox prints, or in a commit message inside an
    /// event, is stored (PostgreSQL's `TEXT` and `jsonb` refuse it) and
    /// the JSON lookups over events go on working.
    #[tokio::test]
    async fn a_nul_in_a_log_or_an_event_is_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_for_test(dir.path()).await;
        super::super::webhooks::tests::add_repo_and_hook(&store).await;
        store
            .insert_events(
                "r1",
                "acme/web",
                None,
                &[NewEvent {
                    kind: "push".into(),
                    ref_name: Some("refs/heads/main".into()),
                    payload: serde_json::json!({
                        "branch": "main",
                        "after": "c1",
                        "commits": [{ "message": "binary\u{0}junk" }],
                    }),
                }],
            )
            .await
            .expect("an event with a NUL");
        assert_eq!(
            store
                .run_requests("r1", "main", "c1")
                .await
                .expect("lookups inside the events"),
            vec![None]
        );
        let runs = store
            .queue_runs(&[super::super::copy::tests::run_of_r1("c1", 1)], 1)
            .await
            .expect("run");
        store
            .insert_steps(runs[0].id, &[("test".into(), "cat /bin/true".into())])
            .await
            .expect("steps");
        store
            .append_step_log(runs[0].id, 0, "ELF\u{0}\u{0}x")
            .await
            .expect("a log with NULs");
        let steps = store.steps(runs[0].id).await.expect("steps");
        assert_eq!(steps[0].log, "ELF\u{FFFD}\u{FFFD}x");
    }
}
