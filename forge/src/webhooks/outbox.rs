//! [`hooks::DeliveryStore`] over the forge's database: the worker pool
//! claims, records and disables through it. A disabled subscription's
//! notice is a `webhook.disabled` row in `events`, announced on the bus.

use std::time::{SystemTime, UNIX_EPOCH};

use api_types::DeliveryState;
use hooks::{
    AttemptRecord, AttemptResult, DeliveryStore, DisableReason, DueDelivery, NextStep, Secret,
};

use crate::events::EventBus;
use crate::store::{AttemptOutcome, Store, StoreError, WebhookRow};

/// The deliveries as the worker pool sees them.
pub struct Outbox {
    store: Store,
    events: EventBus,
}

impl Outbox {
    pub fn new(store: Store, events: EventBus) -> Self {
        Self { store, events }
    }
}

pub fn millis(at: SystemTime) -> i64 {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// The secrets that sign at `now_ms`, newest first.
pub fn signing_secrets(hook: &WebhookRow, now_ms: i64) -> Vec<Secret> {
    let mut secrets = vec![hook.secret.clone()];
    if let (Some(previous), Some(until)) = (&hook.previous_secret, hook.previous_secret_until)
        && until > now_ms
    {
        secrets.push(previous.clone());
    }
    secrets
        .into_iter()
        .filter_map(|secret| Secret::new(secret).ok())
        .collect()
}

fn headers_json(headers: &[(String, String)]) -> String {
    serde_json::to_string(headers).unwrap_or_else(|_| "[]".to_owned())
}

impl DeliveryStore for Outbox {
    type Error = StoreError;

    async fn claim_due(
        &self,
        now: SystemTime,
        limit: usize,
        lease_until: SystemTime,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        let now = millis(now);
        let claimed = self
            .store
            .claim_deliveries(
                now,
                i64::try_from(limit).unwrap_or(i64::MAX),
                millis(lease_until),
            )
            .await?;
        Ok(claimed
            .into_iter()
            .map(|claimed| DueDelivery {
                secrets: signing_secrets(&claimed.webhook, now),
                url: claimed.webhook.url,
                id: claimed.delivery.id,
                subscription_id: claimed.delivery.webhook_id,
                event_type: claimed.delivery.event_type,
                body: claimed.delivery.body,
                // A redelivery starts a fresh retry schedule.
                attempts_made: u32::try_from(
                    claimed.delivery.attempts - claimed.delivery.schedule_base,
                )
                .unwrap_or(0),
            })
            .collect())
    }

    async fn record_attempt(
        &self,
        delivery: &DueDelivery,
        _attempt: u32,
        record: &AttemptRecord,
        next: &NextStep,
    ) -> Result<u32, StoreError> {
        let (status, next_attempt_at) = match next {
            NextStep::Done => (DeliveryState::Delivered, None),
            NextStep::RetryAt(at) => (DeliveryState::Pending, Some(millis(*at))),
            NextStep::GiveUp => (DeliveryState::Failed, None),
        };
        let request_headers = headers_json(&record.request_headers);
        let response_headers = headers_json(&record.response_headers);
        self.store
            .record_attempt(
                &delivery.id,
                &AttemptOutcome {
                    started_at_ms: millis(record.started_at),
                    duration_ms: i64::try_from(record.duration.as_millis()).unwrap_or(i64::MAX),
                    request_headers: &request_headers,
                    response_status: record.response_status.map(i64::from),
                    response_headers: &response_headers,
                    response_body: &record.response_body,
                    response_body_truncated: record.response_body_truncated,
                    error: record.error.as_deref(),
                    status,
                    next_attempt_at,
                    success: record.result == AttemptResult::Success,
                },
            )
            .await
    }

    async fn disable_subscription(
        &self,
        subscription_id: &str,
        reason: &DisableReason,
    ) -> Result<(), StoreError> {
        if let Some(event) = self
            .store
            .disable_webhook(subscription_id, &reason.to_string())
            .await?
        {
            self.events.publish([crate::events::Event::from(event)]);
        }
        Ok(())
    }
}
