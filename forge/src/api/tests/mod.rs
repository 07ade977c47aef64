//! The API driven in-process ([`crate::testing::TestApp`] over
//! [`super::router`]): who may call what ([`auth`]), what a malformed
//! request gets ([`validation`]), the VM lifecycle ([`vms`]), per-VM
//! locking ([`locking`]), sandbox nodes and placement ([`nodes`]), the create queue and quotas ([`queue`]) and
//! pipeline runs ([`pipelines`]).

mod auth;
mod fleet;
mod locking;
mod nodes;
mod pipelines;
mod queue;
mod validation;
mod vms;

use axum::http::StatusCode;
use serde_json::Value;

/// Asserts the common error shape (`forge/src/api/error.rs`) with `code`.
#[track_caller]
fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "an error says why: {body}");
}
