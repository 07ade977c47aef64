//! Events: what happened in a repository (or, for a sandbox that belongs to
//! none, in the forge), recorded durably in the `events`
//! table (the outbox) and announced to in-process subscribers.
//!
//! A consumer (webhooks, GitHub sync, pipelines) reads the outbox from its
//! last cursor at start-up, then follows [`EventBus::subscribe`] for news;
//! the broadcast is only a wake-up, the table is the truth, so a consumer
//! that lags or restarts loses nothing.

use tokio::sync::broadcast;

use crate::store::{EventRow, NewEvent, Store};

/// An event as the API and subscribers see it.
pub use api_types::events::Event;

impl From<EventRow> for Event {
    fn from(row: EventRow) -> Self {
        Self {
            id: row.id,
            repo_id: row.repo_id,
            repo: row.repo_name,
            kind: row.kind,
            ref_name: row.ref_name,
            actor: row.actor,
            created_at: row.created_at,
            payload: serde_json::from_str(&row.payload).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// In-process fan-out of events already committed to the outbox.
#[derive(Debug, Clone)]
pub struct EventBus {
    sender: broadcast::Sender<Event>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(1024).0,
        }
    }
}

impl EventBus {
    /// Announces committed events; nobody listening is fine.
    /// Writes `events` to `repo_id`'s outbox in one transaction, then
    /// announces them; returns how many were recorded.
    pub async fn record(
        &self,
        store: &Store,
        repo_id: &str,
        repo_name: &str,
        actor: Option<&str>,
        events: &[NewEvent],
    ) -> crate::store::Result<usize> {
        self.record_of(store, Some((repo_id, repo_name)), actor, events)
            .await
    }

    /// [`Self::record`] for a repository (id, name) or, with `None`, for the
    /// forge itself.
    pub async fn record_of(
        &self,
        store: &Store,
        repo: Option<(&str, &str)>,
        actor: Option<&str>,
        events: &[NewEvent],
    ) -> crate::store::Result<usize> {
        let rows = store.insert_events_of(repo, actor, events).await?;
        let count = rows.len();
        self.publish(rows.into_iter().map(Event::from));
        Ok(count)
    }

    pub fn publish(&self, events: impl IntoIterator<Item = Event>) {
        for event in events {
            let _ = self.sender.send(event);
        }
    }

    /// A receiver of every event published from now on. A receiver that
    /// falls more than 1,024 events behind gets `Lagged` and should re-read
    /// the outbox from its cursor.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }
}
