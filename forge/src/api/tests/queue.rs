//! The caps on live VMs (`vms/queue.rs`) and the per-token quota
//! (`Sandboxes::check_quota`), through the API.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use super::assert_error;
use crate::testing::TestApp;
use crate::vms::Limits;
use test_support::poll::eventually_async as eventually;

async fn create(app: &TestApp, token: &str, body: Value) -> (StatusCode, Value) {
    app.call(Method::POST, "/v1/vms", Some(token), Some(body))
        .await
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_token_holds_at_most_its_quota_of_live_vms() {
    let app = TestApp::builder()
        .with_limits(Limits {
            max_live_per_token: Some(2),
            ..Limits::default()
        })
        .start()
        .await;
    let writer = app.token(&["repo:write"], None).await;
    let first = app.vm(&writer.secret).await;
    app.vm(&writer.secret).await;
    let (status, body) = create(&app, &writer.secret, json!({})).await;
    assert_error(status, &body, StatusCode::TOO_MANY_REQUESTS, "quota");
    assert!(message(&body).contains("quota is 2"), "{body}");
    // A fork counts its copies against the same quota.
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/v1/vms/{first}/fork"),
            Some(&writer.secret),
            Some(json!({ "count": 1 })),
        )
        .await;
    assert_error(status, &body, StatusCode::TOO_MANY_REQUESTS, "quota");
    // Admins have no quota; another token has its own.
    create(&app, app.admin(), json!({})).await;
    let other = app.token(&["repo:write"], None).await;
    assert_eq!(
        create(&app, &other.secret, json!({})).await.0,
        StatusCode::CREATED
    );

    // A VM paused to disk holds nothing: room for one more.
    app.expect(
        StatusCode::OK,
        Method::POST,
        &format!("/v1/vms/{first}/pause"),
        Some(&writer.secret),
        Some(json!({ "to_disk": true })),
    )
    .await;
    assert_eq!(
        create(&app, &writer.secret, json!({})).await.0,
        StatusCode::CREATED
    );
    assert_eq!(app.backend.len(), 5, "refused requests made no sandbox");
}

#[tokio::test]
async fn past_the_cap_a_create_waits_then_fails_naming_the_cap_and_its_place() {
    let app = TestApp::builder()
        .with_limits(Limits {
            max_live: 1,
            queue_wait: Duration::from_millis(300),
            ..Limits::default()
        })
        .start()
        .await;
    app.vm(app.admin()).await;
    let (status, body) = create(&app, app.admin(), json!({})).await;
    assert_error(status, &body, StatusCode::TOO_MANY_REQUESTS, "capacity");
    let text = message(&body);
    assert!(
        text.contains("cap is 1") && text.contains("position 1 of 1"),
        "{text}"
    );
    assert_eq!(app.backend.len(), 1);
    let system = app
        .expect(
            StatusCode::OK,
            Method::GET,
            "/v1/system",
            Some(app.admin()),
            None,
        )
        .await;
    assert_eq!(system["sandboxes"]["queue"]["waiting"], 0, "{system}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queued_create_is_counted_and_admitted_when_room_frees() {
    let app = Arc::new(
        TestApp::builder()
            .with_limits(Limits {
                max_live: 1,
                queue_wait: Duration::from_secs(30),
                ..Limits::default()
            })
            .start()
            .await,
    );
    let first = app.vm(app.admin()).await;
    let queued = {
        let app = app.clone();
        tokio::spawn(async move {
            let admin = app.admin().to_owned();
            create(&app, &admin, json!({})).await
        })
    };
    eventually(
        Duration::from_secs(10),
        "the create waits in the queue",
        async || {
            let system = app
                .call(Method::GET, "/v1/system", Some(app.admin()), None)
                .await
                .1;
            let waiting = &system["sandboxes"]["queue"]["waiting"];
            if waiting == 1 {
                Ok(())
            } else {
                Err(waiting.clone())
            }
        },
    )
    .await;
    assert_eq!(app.sandboxes().queued(), 1);
    assert_eq!(app.backend.len(), 1, "a queued create makes nothing yet");
    // Paused to disk, the first VM frees its place.
    app.expect(
        StatusCode::OK,
        Method::POST,
        &format!("/v1/vms/{first}/pause"),
        Some(app.admin()),
        Some(json!({ "to_disk": true })),
    )
    .await;
    let (status, body) = tokio::time::timeout(Duration::from_secs(20), queued)
        .await
        .expect("admitted")
        .expect("the task did not panic");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(app.sandboxes().queued(), 0);
}

#[tokio::test]
async fn memory_is_capped_too_and_a_request_that_can_never_fit_is_refused_at_once() {
    let app = TestApp::builder()
        .with_limits(Limits {
            max_live_mem_mib: 1024,
            queue_wait: Duration::ZERO,
            ..Limits::default()
        })
        .start()
        .await;
    let (status, _) = create(&app, app.admin(), json!({ "mem_mib": 768 })).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = create(&app, app.admin(), json!({ "mem_mib": 512 })).await;
    assert_error(status, &body, StatusCode::TOO_MANY_REQUESTS, "capacity");
    assert!(message(&body).contains("memory cap of 1024 MiB"), "{body}");
    let (status, body) = create(&app, app.admin(), json!({ "mem_mib": 2048 })).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    assert!(message(&body).contains("can never fit"), "{body}");
    assert_eq!(app.backend.len(), 1);
}

#[tokio::test]
async fn without_a_backend_the_vm_api_answers_503_and_the_rest_works() {
    let app = TestApp::builder().without_sandboxes().start().await;
    let (status, body) = create(&app, app.admin(), json!({})).await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    let system = app
        .expect(
            StatusCode::OK,
            Method::GET,
            "/v1/system",
            Some(app.admin()),
            None,
        )
        .await;
    assert_eq!(system["sandboxes"]["backend"], Value::Null, "{system}");
    assert!(system["sandboxes"]["reason"].is_string());
    app.repo("acme/app").await;
}
