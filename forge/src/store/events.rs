//! The `events` table: the outbox other components consume by cursor.

use super::{Result, Store, now};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRow {
    pub id: i64,
    pub repo_id: String,
    pub repo_name: String,
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
        let mut tx = self.pool.begin().await?;
        let mut rows = Vec::with_capacity(events.len());
        let created_at = now();
        for event in events {
            let row: EventRow = sqlx::query_as(
                "INSERT INTO events (repo_id, repo_name, kind, ref_name, actor, payload, created_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING *",
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
        Ok(
            sqlx::query_as("SELECT * FROM events WHERE repo_id = ? AND id > ? ORDER BY id LIMIT ?")
                .bind(repo_id)
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Events of every repository after `after`, for consumers of the whole
    /// outbox (webhooks, sync).
    pub async fn all_events_after(&self, after: i64, limit: i64) -> Result<Vec<EventRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?")
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?,
        )
    }
}
