//! The delivery worker pool and the store it is driven by.
//!
//! Durability lives in the [`DeliveryStore`] (the forge implements it with
//! sqlx). A delivery row is written before anything is sent; the pool then:
//!
//! 1. **claims** due deliveries ([`DeliveryStore::claim_due`]), which leases
//!    each until `now + lease`: a crashed worker's lease runs out and the
//!    delivery is claimed again and resent with the same `webhook-id`
//!    (at-least-once, never lost);
//! 2. **sends** one attempt per claimed delivery, at most `concurrency` at
//!    a time, each bounded by the sender's timeout;
//! 3. **records** the attempt and the next step (done, retry at, given up),
//!    which releases the lease ([`DeliveryStore::record_attempt`]);
//! 4. **disables** the subscription on `410 Gone` or after
//!    `disable_after_failures` consecutive failed attempts
//!    ([`DeliveryStore::disable_subscription`]; the store records the
//!    notice event).
//!
//! **Ordering per subscription:** at most one attempt per subscription is in
//! flight at a time, and the store hands out a subscription's due deliveries
//! oldest first. So first attempts reach a receiver in event order and a slow
//! receiver holds one worker, not all of them. A delivery waiting for a retry
//! does not block later ones (no head-of-line blocking), so after a failure
//! a receiver may see events out of order: receivers should order by the
//! payload's `timestamp` and dedupe on `webhook-id`.
//!
//! Nothing waits unboundedly: attempts are bounded by the sender's timeout,
//! store calls by `store_timeout`, and the dispatcher wakes at least every
//! `poll_interval`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

use crate::deliver::{AttemptRecord, Outgoing, Sender};
use crate::retry::{AttemptResult, NextStep, RetrySchedule};
use crate::sign::Secret;

/// A delivery the store hands to a worker.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    /// The `webhook-id`: the same for every attempt and redelivery.
    pub id: String,
    pub subscription_id: String,
    pub url: String,
    pub event_type: String,
    /// The rendered payload, stored when the delivery was created.
    pub body: Vec<u8>,
    /// The subscription's valid secrets, newest first.
    pub secrets: Vec<Secret>,
    /// Attempts recorded so far.
    pub attempts_made: u32,
}

/// Why a subscription was disabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisableReason {
    /// The receiver answered `410 Gone`.
    Gone,
    /// This many consecutive attempts failed.
    ConsecutiveFailures(u32),
}

impl std::fmt::Display for DisableReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DisableReason::Gone => f.write_str("The receiver answered 410 Gone"),
            DisableReason::ConsecutiveFailures(n) => {
                write!(f, "{n} consecutive delivery attempts failed")
            }
        }
    }
}

/// Durable storage of deliveries, implemented by the forge.
pub trait DeliveryStore: Send + Sync + 'static {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Returns up to `limit` deliveries that are pending, due at `now`, not
    /// leased (or whose lease ended), of active subscriptions with no other
    /// delivery leased, at most one per subscription, oldest first; and
    /// leases them until `lease_until`.
    fn claim_due(
        &self,
        now: SystemTime,
        limit: usize,
        lease_until: SystemTime,
    ) -> impl Future<Output = Result<Vec<DueDelivery>, Self::Error>> + Send;

    /// Appends attempt `attempt` to the delivery's log, applies `next`
    /// (done / retry at / failed) and releases the lease. Returns the
    /// subscription's count of consecutive failed attempts after this one
    /// (0 after a success).
    fn record_attempt(
        &self,
        delivery: &DueDelivery,
        attempt: u32,
        record: &AttemptRecord,
        next: &NextStep,
    ) -> impl Future<Output = Result<u32, Self::Error>> + Send;

    /// Marks the subscription inactive, ends its pending deliveries and
    /// records a notice event with `reason`.
    fn disable_subscription(
        &self,
        subscription_id: &str,
        reason: &DisableReason,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// How the pool runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Attempts in flight at once.
    pub concurrency: usize,
    /// Longest sleep between looks at the store when nobody wakes the pool.
    pub poll_interval: Duration,
    /// How long a claim is held; must exceed the sender's timeout.
    pub lease: Duration,
    /// Bound on each store call.
    pub store_timeout: Duration,
    pub schedule: RetrySchedule,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            concurrency: 16,
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(60),
            store_timeout: Duration::from_secs(10),
            schedule: RetrySchedule::default(),
        }
    }
}

/// Wakes the pool after new deliveries were written (cheap to clone).
#[derive(Debug, Clone)]
pub struct Waker(Arc<Notify>);

impl Waker {
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// A running pool; dropping it without [`WorkerPool::shutdown`] aborts it.
#[derive(Debug)]
pub struct WorkerPool {
    wake: Arc<Notify>,
    stop: watch::Sender<bool>,
    dispatcher: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        // Aborting the dispatcher drops its JoinSet, which aborts the
        // attempts in flight: like a crash, their leases run out and the
        // deliveries are sent again by the next pool.
        if let Some(dispatcher) = &self.dispatcher {
            dispatcher.abort();
        }
    }
}

impl WorkerPool {
    /// Starts the dispatcher on the current tokio runtime.
    pub fn start<S: DeliveryStore>(
        store: Arc<S>,
        sender: Sender,
        config: WorkerConfig,
    ) -> WorkerPool {
        let wake = Arc::new(Notify::new());
        let (stop, stopped) = watch::channel(false);
        let dispatcher = tokio::spawn(dispatch(store, sender, config, wake.clone(), stopped));
        wake.notify_one();
        WorkerPool {
            wake,
            stop,
            dispatcher: Some(dispatcher),
        }
    }

    pub fn waker(&self) -> Waker {
        Waker(self.wake.clone())
    }

    /// Stops claiming, lets attempts in flight finish (each is bounded by
    /// the sender's timeout) and returns.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(dispatcher) = self.dispatcher.take()
            && let Err(e) = dispatcher.await
        {
            tracing::warn!(error = %e, "webhook dispatcher ended abnormally");
        }
    }
}

async fn dispatch<S: DeliveryStore>(
    store: Arc<S>,
    sender: Sender,
    config: WorkerConfig,
    wake: Arc<Notify>,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let mut running = JoinSet::new();
    let config = Arc::new(config);
    loop {
        if *stopped.borrow() {
            break;
        }
        while running.try_join_next().is_some() {}
        let free = slots.available_permits();
        let mut claimed_all = false;
        if free > 0 {
            let now = SystemTime::now();
            let claim = store.claim_due(now, free, now + config.lease);
            match tokio::time::timeout(config.store_timeout, claim).await {
                Ok(Ok(due)) => {
                    claimed_all = !due.is_empty() && due.len() == free;
                    for delivery in due {
                        let Ok(permit) = slots.clone().try_acquire_owned() else {
                            break;
                        };
                        let (store, sender, config, wake) =
                            (store.clone(), sender.clone(), config.clone(), wake.clone());
                        running.spawn(async move {
                            attempt(&*store, &sender, &config, delivery).await;
                            drop(permit);
                            wake.notify_one();
                        });
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "claiming webhook deliveries failed"),
                Err(_) => tracing::warn!("claiming webhook deliveries timed out"),
            }
        }
        if claimed_all {
            continue;
        }
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(config.poll_interval) => {}
            _ = stopped.changed() => {}
        }
    }
    while running.join_next().await.is_some() {}
}

/// Sends one attempt of `delivery` and records it; public so that callers
/// can deliver without a pool (e.g. in tests or one-off tools).
pub async fn attempt<S: DeliveryStore>(
    store: &S,
    sender: &Sender,
    config: &WorkerConfig,
    delivery: DueDelivery,
) {
    let number = delivery.attempts_made + 1;
    let record = sender
        .send(Outgoing {
            delivery_id: &delivery.id,
            event_type: &delivery.event_type,
            url: &delivery.url,
            body: &delivery.body,
            secrets: &delivery.secrets,
        })
        .await;
    let next = config
        .schedule
        .next(number, &record.result, SystemTime::now());
    tracing::debug!(
        delivery = %delivery.id,
        attempt = number,
        status = ?record.response_status,
        error = ?record.error,
        next = ?next,
        "webhook attempt"
    );
    let recorded = tokio::time::timeout(
        config.store_timeout,
        store.record_attempt(&delivery, number, &record, &next),
    )
    .await;
    let failures = match recorded {
        Ok(Ok(failures)) => failures,
        Ok(Err(e)) => {
            // The lease will run out and the delivery will be sent again.
            tracing::warn!(delivery = %delivery.id, error = %e, "recording a webhook attempt failed");
            return;
        }
        Err(_) => {
            tracing::warn!(delivery = %delivery.id, "recording a webhook attempt timed out");
            return;
        }
    };
    let reason = if record.result == AttemptResult::Gone {
        Some(DisableReason::Gone)
    } else if record.result != AttemptResult::Success
        && failures >= config.schedule.disable_after_failures
    {
        Some(DisableReason::ConsecutiveFailures(failures))
    } else {
        None
    };
    if let Some(reason) = reason {
        let disabled = tokio::time::timeout(
            config.store_timeout,
            store.disable_subscription(&delivery.subscription_id, &reason),
        )
        .await;
        match disabled {
            Ok(Ok(())) => {
                tracing::info!(subscription = %delivery.subscription_id, %reason, "webhook disabled")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "disabling a webhook failed"),
            Err(_) => tracing::warn!("disabling a webhook timed out"),
        }
    }
}
