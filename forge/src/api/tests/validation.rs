//! Malformed requests and unknown ids: each gets its status and the common
//! error shape (`api/error.rs`), and changes nothing.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};

use super::assert_error;
use crate::testing::{TestApp, body_json};

/// `method path` as the admin with `body` as it is, labelled JSON.
async fn raw(
    app: &TestApp,
    method: Method,
    path: &str,
    body: impl Into<Body>,
) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {}", app.admin()))
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .expect("a request");
    let response = app.send(request).await;
    let status = response.status();
    (status, body_json(response).await)
}

#[tokio::test]
async fn malformed_bodies_are_bad_requests_in_the_common_shape() {
    let app = TestApp::start().await;
    let vm = app.vm(app.admin()).await;
    let exec = format!("/v1/vms/{vm}/exec");
    let fork = format!("/v1/vms/{vm}/fork");
    let pause = format!("/v1/vms/{vm}/pause");
    let table: &[(&str, &str, u16)] = &[
        // Not JSON, JSON of the wrong shape, unknown and missing fields.
        ("/v1/vms", "{", 400),
        ("/v1/vms", "[]", 422),
        ("/v1/vms", r#"{"vcpus":"two"}"#, 422),
        ("/v1/vms", r#"{"cpus":2}"#, 422),
        ("/v1/vms", r#"{"persistence":{"type":"forever"}}"#, 422),
        ("/v1/tokens", r#"{"scopes":["admin"]}"#, 422),
        ("/v1/repos", r#"{}"#, 422),
        (exec.as_str(), r#"{"command":"true","shell":"bash"}"#, 422),
        (fork.as_str(), r#"{"count":-1}"#, 422),
        (pause.as_str(), r#"{"to_disk":"yes"}"#, 400),
        (pause.as_str(), "not json", 400),
    ];
    for (path, body, status) in table {
        let (got, answer) = raw(&app, Method::POST, path, body.to_string()).await;
        assert_eq!(got.as_u16(), *status, "POST {path} {body}: {answer}");
        assert_eq!(
            answer["error"]["code"], "bad_request",
            "POST {path} {body}: {answer}"
        );
    }
    let missing_type = Request::builder()
        .method(Method::POST)
        .uri("/v1/vms")
        .header(header::AUTHORIZATION, format!("Bearer {}", app.admin()))
        .body(Body::from("{}"))
        .expect("a request");
    let response = app.send(missing_type).await;
    let status = response.status();
    assert_error(
        status,
        &body_json(response).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "bad_request",
    );
    assert_eq!(app.backend.len(), 1, "no malformed request made a VM");
}

#[tokio::test]
async fn values_out_of_range_are_refused_with_the_reason() {
    let app = TestApp::start().await;
    let vm = app.vm(app.admin()).await;
    let table: &[(String, Value, &str)] = &[
        ("/v1/vms".into(), json!({ "vcpus": 0 }), "vcpus"),
        ("/v1/vms".into(), json!({ "vcpus": 5 }), "vcpus"),
        ("/v1/vms".into(), json!({ "mem_mib": 64 }), "mem_mib"),
        ("/v1/vms".into(), json!({ "mem_mib": 9000 }), "mem_mib"),
        ("/v1/vms".into(), json!({ "disk_mib": 100 }), "disk_mib"),
        (
            "/v1/vms".into(),
            json!({ "branch": "main" }),
            "branch needs repo",
        ),
        ("/v1/vms".into(), json!({ "repo": "no-slash" }), ""),
        (format!("/v1/vms/{vm}/fork"), json!({ "count": 0 }), "count"),
        (
            format!("/v1/vms/{vm}/fork"),
            json!({ "count": 51 }),
            "count",
        ),
        (format!("/v1/vms/{vm}/exec"), json!({}), "exactly one of"),
        (
            format!("/v1/vms/{vm}/exec"),
            json!({ "argv": [] }),
            "exactly one of",
        ),
        (
            format!("/v1/vms/{vm}/exec"),
            json!({ "command": "true", "argv": ["true"] }),
            "exactly one of",
        ),
        ("/v1/repos".into(), json!({ "name": "no-slash" }), ""),
        ("/v1/repos".into(), json!({ "name": "acme/../etc" }), ""),
        (
            "/v1/repos".into(),
            json!({ "name": "acme/app", "default_branch": "a..b" }),
            "default_branch",
        ),
        (
            "/v1/tokens".into(),
            json!({ "name": "", "scopes": ["admin"] }),
            "name",
        ),
        (
            "/v1/tokens".into(),
            json!({ "name": "x", "scopes": [] }),
            "scope",
        ),
        (
            "/v1/tokens".into(),
            json!({ "name": "x", "scopes": ["root"] }),
            "root",
        ),
    ];
    for (path, body, says) in table {
        let (status, answer) = app
            .call(Method::POST, path, Some(app.admin()), Some(body.clone()))
            .await;
        assert_error(status, &answer, StatusCode::BAD_REQUEST, "bad_request");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "POST {path} {body}: {message}");
    }
    assert_eq!(app.backend.len(), 1);
    assert_eq!(
        app.backend.calls().len(),
        1,
        "only the first create reached the backend"
    );
}

#[tokio::test]
async fn oversized_bodies_are_refused_before_they_are_read_whole() {
    let app = TestApp::start().await;
    let vm = app.vm(app.admin()).await;
    let huge = format!(r#"{{"command":"{}"}}"#, "x".repeat(3 << 20));
    let (status, body) = raw(&app, Method::POST, &format!("/v1/vms/{vm}/exec"), huge).await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    assert!(app.backend.execs().is_empty());
}

#[tokio::test]
async fn unknown_ids_and_paths_are_not_found() {
    let app = TestApp::start().await;
    app.repo("acme/app").await;
    let missing = "sb000000000bad";
    let table: &[(Method, String, Option<Value>)] = &[
        (Method::GET, format!("/v1/vms/{missing}"), None),
        (Method::DELETE, format!("/v1/vms/{missing}"), None),
        (
            Method::POST,
            format!("/v1/vms/{missing}/exec"),
            Some(json!({ "command": "true" })),
        ),
        (
            Method::POST,
            format!("/v1/vms/{missing}/fork"),
            Some(json!({})),
        ),
        (Method::POST, format!("/v1/vms/{missing}/pause"), None),
        (Method::POST, format!("/v1/vms/{missing}/resume"), None),
        (
            Method::GET,
            format!("/v1/vms/{missing}/files/etc/hosts"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/vms/{missing}/terminal/tickets"),
            None,
        ),
        (Method::GET, "/v1/runs/12345".into(), None),
        (Method::GET, "/v1/runs/12345/logs".into(), None),
        (Method::GET, "/v1/repos/acme/nope".into(), None),
        (Method::GET, "/v1/repos/nobody/app/runs".into(), None),
        (Method::GET, "/v1/repos/acme/app/webhooks/999".into(), None),
        (Method::DELETE, "/v1/tokens/not-a-token".into(), None),
        (Method::GET, "/v1/no-such-endpoint".into(), None),
    ];
    for (method, path, body) in table {
        let (status, answer) = app
            .call(method.clone(), path, Some(app.admin()), body.clone())
            .await;
        assert_error(status, &answer, StatusCode::NOT_FOUND, "not_found");
    }
    assert!(app.backend.calls().is_empty());
}
