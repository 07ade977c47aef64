//! Webhooks in the forge: the `hooks` crate does filtering, payloads,
//! signing, the SSRF guard, retries and the worker pool; this module feeds
//! it from the events outbox and keeps its state in the database.
//!
//! Steps, from an event to a receiver:
//!
//! 1. **Consume** ([`consumer`]): woken by [`EventBus::subscribe`] (and at
//!    least every second), read events after `webhook_cursor`; in one
//!    transaction per batch load each event's repository's active
//!    subscriptions that existed before the event, match their compiled
//!    filters (cached by subscription id and revision, never re-parsed per
//!    event), write one delivery per matching subscription with
//!    `INSERT OR IGNORE` under `UNIQUE (webhook_id, event_id)`, and move the
//!    cursor. A crash before the commit redoes the batch; after it the cursor
//!    has moved; either way each subscription gets exactly one delivery per
//!    event. Then wake the pool.
//! 2. **Deliver** ([`outbox`], `hooks::WorkerPool`): workers lease due
//!    deliveries, send one attempt each (10 s timeout), and record it in
//!    the same transaction that schedules the next attempt, releases the
//!    lease and counts the subscription's consecutive failures. `410 Gone`
//!    or too many consecutive failures disable the subscription, fail its
//!    pending deliveries and record a `webhook.disabled` event.
//! 3. **Restart**: one server owns a database, so leases found at start-up
//!    belong to a process that is gone; they are released and those
//!    deliveries are sent again at once with the same `webhook-id`. On
//!    SIGTERM attempts in flight get [`SHUTDOWN_GRACE`] to finish.
//!
//! **Ordering per subscription:** at most one attempt per subscription is
//! in flight and due deliveries are taken oldest first, so first attempts
//! arrive in event order; a delivery waiting for a retry does not hold back
//! later ones, so receivers should order by the payload's `timestamp` and
//! dedupe on `webhook-id`.

pub mod consumer;
pub mod outbox;

use std::sync::Arc;
use std::time::Duration;

use hooks::{PayloadContext, RetrySchedule, Sender, SenderConfig, WorkerConfig, WorkerPool};
use tokio::sync::watch;

use crate::events::EventBus;
use crate::store::Store;

/// How long a stopping server waits for attempts in flight before it
/// abandons them (they are resent after the restart).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How long the previous secret keeps signing after a rotation.
pub const ROTATION_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Delivery settings from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// Waits before each retry; `delays.len() + 1` attempts in all.
    pub retry_delays: Vec<Duration>,
    /// Consecutive failed attempts after which a subscription is disabled.
    pub disable_after_failures: u32,
    /// Attempts in flight at once.
    pub concurrency: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            retry_delays: RetrySchedule::default().delays,
            disable_after_failures: RetrySchedule::default().disable_after_failures,
            concurrency: 8,
        }
    }
}

/// Parses a retry schedule such as `5s,5m,30m,2h` (units `ms`, `s`, `m`, `h`).
pub fn parse_delays(text: &str) -> Result<Vec<Duration>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            let split = item
                .find(|c: char| !c.is_ascii_digit())
                .ok_or_else(|| format!("{item:?} has no unit (ms, s, m or h)"))?;
            let (number, unit) = item.split_at(split);
            let number: u64 = number
                .parse()
                .map_err(|_| format!("{item:?} does not start with a number"))?;
            let millis = match unit {
                "ms" => 1,
                "s" => 1000,
                "m" => 60_000,
                "h" => 3_600_000,
                _ => return Err(format!("{item:?}: the unit must be ms, s, m or h")),
            };
            Ok(Duration::from_millis(number.saturating_mul(millis)))
        })
        .collect()
}

/// What handlers need: wake the pool after writing a delivery, and render
/// payloads.
#[derive(Clone)]
pub struct Webhooks {
    waker: hooks::Waker,
    pub payload: PayloadContext,
}

impl Webhooks {
    pub fn wake(&self) {
        self.waker.wake();
    }
}

/// The running consumer and worker pool.
pub struct Running {
    pool: WorkerPool,
    stop: watch::Sender<bool>,
    consumer: tokio::task::JoinHandle<()>,
    handle: Webhooks,
}

impl Running {
    pub fn handle(&self) -> Webhooks {
        self.handle.clone()
    }

    /// Stops consuming, gives attempts in flight [`SHUTDOWN_GRACE`], then
    /// abandons the rest (their deliveries stay pending).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.consumer.await;
        if tokio::time::timeout(SHUTDOWN_GRACE, self.pool.shutdown())
            .await
            .is_err()
        {
            tracing::info!(
                "webhook attempts still in flight were abandoned; they are resent on the next start"
            );
        }
    }
}

/// Releases stale leases, then starts the worker pool and the consumer.
pub async fn start(
    store: Store,
    events: EventBus,
    policy: hooks::NetworkPolicy,
    public_url: &str,
    options: &Options,
) -> anyhow::Result<Running> {
    let released = store.release_webhook_leases().await?;
    if released > 0 {
        tracing::info!(
            released,
            "webhook deliveries left in flight by the last run are due again"
        );
    }
    let sender = Sender::new(SenderConfig {
        policy,
        ..SenderConfig::default()
    })?;
    let mut schedule = RetrySchedule {
        delays: options.retry_delays.clone(),
        disable_after_failures: options.disable_after_failures.max(1),
        ..RetrySchedule::default()
    };
    if let Some(longest) = schedule.delays.iter().max() {
        schedule.max_retry_after = schedule.max_retry_after.max(*longest);
    }
    let config = WorkerConfig {
        concurrency: options.concurrency.max(1),
        schedule,
        ..WorkerConfig::default()
    };
    let outbox = outbox::Outbox::new(store.clone(), events.clone());
    let pool = WorkerPool::start(Arc::new(outbox), sender, config);
    let handle = Webhooks {
        waker: pool.waker(),
        payload: PayloadContext {
            base_url: public_url.trim_end_matches('/').to_owned(),
        },
    };
    let (stop, stopped) = watch::channel(false);
    let consumer = tokio::spawn(consumer::run(store, events, handle.clone(), stopped));
    Ok(Running {
        pool,
        stop,
        consumer,
        handle,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_parse_with_units_and_reject_garbage() {
        assert_eq!(
            parse_delays("50ms, 2s,1m,1h"),
            Ok(vec![
                Duration::from_millis(50),
                Duration::from_secs(2),
                Duration::from_secs(60),
                Duration::from_secs(3600)
            ])
        );
        assert!(parse_delays("5").is_err());
        assert!(parse_delays("5d").is_err());
        assert!(parse_delays("s").is_err());
        assert_eq!(parse_delays(""), Ok(vec![]));
    }
}
