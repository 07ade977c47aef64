//! `/v1/repos/{owner}/{name}/webhooks`: subscriptions, pings and the
//! delivery log. A secret appears only in the answer of the request that
//! set it; URLs are shown with credentials replaced by `***`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::states::DeliveryState;

/// Every event type a webhook can subscribe to (besides `"*"`, all of
/// them); `ping` is sent on request whatever the subscription.
pub const EVENT_TYPES: [&str; 18] = [
    "push",
    "branch.created",
    "branch.deleted",
    "tag.created",
    "tag.deleted",
    "run.started",
    "run.completed",
    "review.posted",
    "sandbox.created",
    "sandbox.paused",
    "sandbox.resumed",
    "sandbox.forked",
    "sandbox.deleted",
    "sandbox.crashed",
    "sandbox.expired",
    "sandbox.lost",
    "sandbox.found",
    "sync.diverged",
];

/// `POST …/webhooks`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    pub url: String,
    /// Event names, or `"*"`.
    pub events: Vec<String>,
    /// Branch globs; empty: every branch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub branches: Vec<String>,
    /// Path globs; empty: every path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    /// Generated when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// `PATCH …/webhooks/{id}`: what is absent stays as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhook {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branches: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    /// Replace the secret (with `secret`, or a generated one); the old one
    /// keeps signing for the rotation window.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rotate_secret: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookView {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub branches: Vec<String>,
    pub paths: Vec<String>,
    pub active: bool,
    pub disabled_reason: Option<String>,
    pub consecutive_failures: i64,
    /// While set, the previous secret still signs every request too.
    pub previous_secret_expires_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Only in the answer that set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// The answer to a ping or a redelivery: the delivery that was queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Queued {
    pub delivery_id: String,
}

/// One attempt to deliver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptView {
    pub attempt: i64,
    pub started_at: String,
    pub duration_ms: i64,
    /// `[[name, value]]`, signatures redacted.
    #[schema(value_type = Vec<Vec<String>>)]
    pub request_headers: Value,
    pub response_status: Option<i64>,
    /// `[[name, value]]`.
    #[schema(value_type = Vec<Vec<String>>)]
    pub response_headers: Value,
    /// The first 4 KiB, as text (invalid UTF-8 replaced).
    pub response_body: String,
    pub response_body_truncated: bool,
    pub error: Option<String>,
    pub next_attempt_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryView {
    /// The `webhook-id` header of its requests.
    pub id: String,
    /// Pass as `before` for older deliveries.
    pub seq: i64,
    pub event_type: String,
    /// `None` for a ping.
    pub event_id: Option<i64>,
    pub status: DeliveryState,
    pub attempts: i64,
    /// Set while `pending`.
    pub next_attempt_at: Option<String>,
    pub created_at: String,
    pub attempt_log: Vec<AttemptView>,
    /// Only when one delivery is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

/// `GET …/deliveries`: newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryPage {
    pub deliveries: Vec<DeliveryView>,
    /// Pass as `before` for the next (older) page; `None` on the last one.
    pub next_before: Option<i64>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_listed_delivery_has_its_status_and_no_payload_key() {
        let delivery = DeliveryView {
            id: "msg_1".into(),
            seq: 9,
            event_type: "push".into(),
            event_id: Some(3),
            status: DeliveryState::Pending,
            attempts: 1,
            next_attempt_at: Some("t1".into()),
            created_at: "t0".into(),
            attempt_log: vec![AttemptView {
                attempt: 1,
                started_at: "t0".into(),
                duration_ms: 12,
                request_headers: json!([["content-type", "application/json"]]),
                response_status: Some(500),
                response_headers: json!([]),
                response_body: "no".into(),
                response_body_truncated: false,
                error: None,
                next_attempt_at: Some("t1".into()),
            }],
            payload: None,
        };
        let value = serde_json::to_value(&delivery).expect("serialises");
        assert_eq!(value["status"], "pending");
        assert!(value.get("payload").is_none());
        assert_eq!(value["attempt_log"][0]["response_status"], 500);
        let back: DeliveryView = serde_json::from_value(value).expect("deserialises");
        assert_eq!(back, delivery);
    }

    #[test]
    fn an_update_sends_only_what_changes() {
        let update = UpdateWebhook {
            active: Some(true),
            ..UpdateWebhook::default()
        };
        assert_eq!(
            serde_json::to_value(update).expect("serialises"),
            json!({ "active": true })
        );
    }
}
