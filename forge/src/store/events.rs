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
            .bind(event.payload.to_string())
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
