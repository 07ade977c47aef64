//! The webhook consumer: reads the events outbox from its cursor and turns
//! each event into deliveries (see the steps in [`super`]).
//!
//! Mapping an `events` row to a [`hooks::Event`]: `kind` must be an event
//! type webhooks deliver (others, such as `webhook.disabled`, are skipped);
//! `ref_name` is the ref; from the payload, `before`, `after`, `commits`
//! (`time` becomes the commit `timestamp`), `paths`, `paths_truncated` and
//! the actor (`pusher` or `actor`, by `name`) are read; `forced` and, for
//! kinds other than push and ref events, every other payload field are
//! passed through as the event's own fields.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hooks::{Commit, Event, EventKind, Person, SubscriptionFilter};
use serde_json::Value;
use tokio::sync::{broadcast, watch};

use super::Webhooks;
use crate::events::EventBus;
use crate::store::{EventRow, NewDeliveryOwned, Store, WebhookRow};

/// Events consumed per transaction.
const BATCH: i64 = 100;

/// Compiled filters by subscription id, with the revision they were
/// compiled from.
type FilterCache = HashMap<String, (i64, Arc<SubscriptionFilter>)>;

pub async fn run(store: Store, bus: EventBus, hooks: Webhooks, mut stopped: watch::Receiver<bool>) {
    // Subscribe before the first read so nothing committed in between is missed.
    let mut news = bus.subscribe();
    let mut cache = FilterCache::new();
    loop {
        if *stopped.borrow() {
            return;
        }
        let more = match consume_batch(&store, &hooks, &mut cache).await {
            Ok((written, more)) => {
                if written > 0 {
                    hooks.wake();
                }
                more
            }
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "consuming events for webhooks failed"
                );
                false
            }
        };
        if more {
            continue;
        }
        tokio::select! {
            received = news.recv() => {
                if let Err(broadcast::error::RecvError::Closed) = received {
                    news = bus.subscribe();
                }
            }
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stopped.changed() => {}
        }
    }
}

/// Consumes one batch; returns the deliveries written and whether more
/// events may be waiting.
async fn consume_batch(
    store: &Store,
    hooks: &Webhooks,
    cache: &mut FilterCache,
) -> anyhow::Result<(usize, bool)> {
    let cursor = store.webhook_cursor().await?;
    let events = store.all_events_after(cursor, BATCH).await?;
    if events.is_empty() {
        return Ok((0, false));
    }
    let full = events.len() as i64 == BATCH;
    let written = store
        .consume_events(cursor, &events, |row, subscriptions| {
            fan_out(row, subscriptions, hooks, cache)
        })
        .await?;
    Ok(match written {
        Some(written) => (written, full),
        None => (0, true),
    })
}

fn fan_out(
    row: &EventRow,
    subscriptions: &[WebhookRow],
    hooks: &Webhooks,
    cache: &mut FilterCache,
) -> Vec<NewDeliveryOwned> {
    let Some(event) = to_hook_event(row) else {
        return Vec::new();
    };
    let compiled: Vec<(String, Arc<SubscriptionFilter>)> = subscriptions
        .iter()
        .filter_map(|hook| Some((hook.id.clone(), filter_of(hook, cache)?)))
        .collect();
    hooks::fan_out(
        &event,
        compiled.iter().map(|(id, filter)| (id.as_str(), &**filter)),
        &hooks.payload,
    )
    .into_iter()
    .map(|delivery| NewDeliveryOwned {
        id: delivery.id,
        webhook_id: delivery.subscription_id,
        event_type: delivery.event_type.as_str().to_owned(),
        body: delivery.body,
    })
    .collect()
}

/// The compiled filter of `hook`, compiled only when its revision changed.
fn filter_of(hook: &WebhookRow, cache: &mut FilterCache) -> Option<Arc<SubscriptionFilter>> {
    if let Some((revision, filter)) = cache.get(&hook.id)
        && *revision == hook.revision
    {
        return Some(filter.clone());
    }
    match compile(&hook.events, &hook.branches, &hook.paths) {
        Ok(filter) => {
            let filter = Arc::new(filter);
            cache.insert(hook.id.clone(), (hook.revision, filter.clone()));
            Some(filter)
        }
        Err(error) => {
            // Filters are validated when written; a stored one that fails is skipped.
            tracing::warn!(webhook = %hook.id, %error, "a stored webhook filter does not compile");
            None
        }
    }
}

/// Compiles the JSON lists as stored.
pub fn compile(events: &str, branches: &str, paths: &str) -> anyhow::Result<SubscriptionFilter> {
    let list = |text: &str| serde_json::from_str::<Vec<String>>(text);
    Ok(SubscriptionFilter::new(
        &list(events)?,
        &list(branches)?,
        &list(paths)?,
    )?)
}

fn text(value: &Value) -> Option<String> {
    value.as_str().map(str::to_owned)
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

fn rfc3339(text: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

/// Maps an outbox row to the event webhooks see (see the module docs).
pub fn to_hook_event(row: &EventRow) -> Option<Event> {
    let kind = EventKind::parse(&row.kind).filter(|kind| *kind != EventKind::Ping)?;
    let payload: Value = serde_json::from_str(&row.payload).unwrap_or(Value::Null);
    let mut event = Event::new(row.id, kind, row.repo_name.clone().unwrap_or_default());
    event.git_ref = row.ref_name.clone();
    event.before = text(&payload["before"]);
    event.after = text(&payload["after"]).or_else(|| text(&payload["sha"]));
    event.commits = payload["commits"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|commit| Commit {
            id: text(&commit["id"]).unwrap_or_default(),
            message: text(&commit["message"]).unwrap_or_default(),
            author: Person {
                name: text(&commit["author"]["name"]).unwrap_or_default(),
                email: text(&commit["author"]["email"]),
            },
            timestamp: commit["time"].as_str().and_then(rfc3339),
            added: strings(&commit["added"]),
            modified: strings(&commit["modified"]),
            removed: strings(&commit["removed"]),
        })
        .collect();
    event.paths = strings(&payload["paths"]);
    event.paths_truncated = payload["paths_truncated"].as_bool().unwrap_or(false);
    event.actor = [&payload["pusher"], &payload["actor"]]
        .into_iter()
        .find_map(|who| text(&who["name"]))
        .map(|name| Person { name, email: None });
    if let Some(time) = rfc3339(&row.created_at) {
        event.time = time;
    }
    event.extra = match (&payload, kind) {
        (_, EventKind::Push) => serde_json::json!({ "forced": payload["forced"] }),
        (Value::Object(fields), _) => {
            let mut own = fields.clone();
            for common in ["repo", "ref", "before", "after", "sha", "pusher", "actor"] {
                own.remove(common);
            }
            Value::Object(own)
        }
        _ => Value::Null,
    };
    Some(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: &str, payload: Value) -> EventRow {
        EventRow {
            id: 9,
            repo_id: Some("r".into()),
            repo_name: Some("acme/web".into()),
            kind: kind.into(),
            ref_name: Some("refs/heads/main".into()),
            actor: None,
            payload: payload.to_string(),
            created_at: "2026-11-28T16:00:00.5Z".into(),
        }
    }

    #[test]
    fn a_push_row_becomes_a_push_event_with_commits_paths_and_pusher() {
        let event = to_hook_event(&row(
            "push",
            serde_json::json!({
                "before": "a", "after": "b", "forced": true,
                "commits": [{ "id": "b", "message": "m", "author": { "name": "Ada", "email": "ada@x" },
                              "time": "2026-11-28T15:00:00Z", "added": ["x"], "modified": [], "removed": [] }],
                "paths": ["x"], "paths_truncated": true,
                "pusher": { "token_id": "t", "name": "ci" }
            }),
        ))
        .expect("push is delivered");
        assert_eq!(event.kind, EventKind::Push);
        assert_eq!(event.branch(), Some("main"));
        assert_eq!(
            (event.before.as_deref(), event.after.as_deref()),
            (Some("a"), Some("b"))
        );
        assert_eq!(event.commits[0].author.email.as_deref(), Some("ada@x"));
        assert!(event.commits[0].timestamp.is_some());
        assert_eq!(event.paths, ["x"]);
        assert!(event.paths_truncated);
        assert_eq!(event.actor.map(|a| a.name).as_deref(), Some("ci"));
        assert_eq!(event.extra["forced"], true);
    }

    #[test]
    fn kinds_webhooks_do_not_deliver_are_skipped() {
        assert!(to_hook_event(&row("webhook.disabled", Value::Null)).is_none());
        assert!(to_hook_event(&row("ping", Value::Null)).is_none());
        let run = to_hook_event(&row(
            "run.completed",
            serde_json::json!({ "repo": "acme/web", "run": { "id": 7 } }),
        ))
        .expect("run.completed is delivered");
        assert_eq!(run.extra, serde_json::json!({ "run": { "id": 7 } }));
    }
}
