//! The VM lifecycle through the API: the states it reports after each
//! operation, what a fork and a resume say they kept, illegal transitions
//! and their errors, exec and files.

use axum::http::{Method, StatusCode, header};
use sandbox::testing::{Operation, Reply};
use serde_json::{Value, json};

use super::assert_error;
use crate::testing::{TestApp, body_json, request};

async fn post(app: &TestApp, path: &str, body: Value) -> (StatusCode, Value) {
    app.call(Method::POST, path, Some(app.admin()), Some(body))
        .await
}

#[tokio::test]
async fn create_exec_pause_resume_fork_destroy_report_their_states() {
    let app = TestApp::start().await;
    app.backend.respond_to("echo hi", Reply::ok("hi\n"));
    let made = app
        .expect(
            StatusCode::CREATED,
            Method::POST,
            "/v1/vms",
            Some(app.admin()),
            Some(json!({ "vcpus": 2, "mem_mib": 1024, "env": { "GREETING": "hello" } })),
        )
        .await;
    let id = made["id"].as_str().expect("an id").to_owned();
    assert_eq!(made["state"], "running");
    assert_eq!(made["backend"], "container");
    assert_eq!(
        (made["vcpus"].clone(), made["mem_mib"].clone()),
        (json!(2), json!(1024))
    );
    assert_eq!(made["persistence"]["type"], "persistent");

    let (status, out) = post(
        &app,
        &format!("/v1/vms/{id}/exec"),
        json!({ "command": "echo hi" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(
        (out["exit_code"].clone(), out["stdout"].clone()),
        (json!(0), json!("hi\n"))
    );
    let invocation = &app.backend.execs()[0].invocation;
    assert_eq!(
        invocation.env("GREETING"),
        Some("hello"),
        "the VM's env reaches its execs"
    );
    assert!(
        invocation.env("HTTPS_PROXY").is_some(),
        "every exec goes out through the egress proxy: {invocation:?}"
    );

    let paused = app
        .expect(
            StatusCode::OK,
            Method::POST,
            &format!("/v1/vms/{id}/pause"),
            Some(app.admin()),
            None,
        )
        .await;
    assert_eq!(paused["state"], "paused");
    assert_eq!(app.vm_state(&id).await, "paused");
    // Paused in memory, again: nothing to do.
    let (status, again) = post(&app, &format!("/v1/vms/{id}/pause"), json!({})).await;
    assert_eq!(
        (status, again["state"].clone()),
        (StatusCode::OK, json!("paused"))
    );

    let resumed = post(&app, &format!("/v1/vms/{id}/resume"), json!({}))
        .await
        .1;
    assert_eq!(resumed["state"], "running", "{resumed}");
    assert_eq!(resumed["kept"], json!(["disk", "memory", "processes"]));

    let on_disk = post(
        &app,
        &format!("/v1/vms/{id}/pause"),
        json!({ "to_disk": true }),
    )
    .await
    .1;
    assert_eq!(on_disk["state"], "paused_to_disk", "{on_disk}");
    assert_eq!(app.vm_state(&id).await, "paused_to_disk");
    let resumed = post(&app, &format!("/v1/vms/{id}/resume"), json!({}))
        .await
        .1;
    assert_eq!(resumed["state"], "running", "{resumed}");
    assert_eq!(resumed["kept"], json!(["disk"]));
    assert!(
        resumed["note"].is_string(),
        "a resume that lost memory says why: {resumed}"
    );

    let (status, forked) = post(&app, &format!("/v1/vms/{id}/fork"), json!({ "count": 3 })).await;
    assert_eq!(status, StatusCode::CREATED, "{forked}");
    let forks = forked["forks"].as_array().expect("forks");
    assert_eq!(forks.len(), 3);
    for fork in forks {
        assert_eq!(fork["state"], "running", "{fork}");
        assert_eq!(fork["parent"], id.as_str(), "{fork}");
        assert_eq!(
            fork["mem_mib"], 1024,
            "a fork is the size of its parent: {fork}"
        );
        assert_eq!(fork["kept"], json!(["disk", "memory", "processes"]));
    }
    let listed = app
        .expect(
            StatusCode::OK,
            Method::GET,
            "/v1/vms",
            Some(app.admin()),
            None,
        )
        .await;
    assert_eq!(listed.as_array().map(Vec::len), Some(4));
    assert_eq!(
        app.vm_state(&id).await,
        "running",
        "the parent keeps running"
    );

    app.expect(
        StatusCode::NO_CONTENT,
        Method::DELETE,
        &format!("/v1/vms/{id}"),
        Some(app.admin()),
        None,
    )
    .await;
    let (status, body) = app
        .call(
            Method::GET,
            &format!("/v1/vms/{id}"),
            Some(app.admin()),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(app.backend.len(), 3, "the forks outlive their parent");
    let (status, body) = app
        .call(
            Method::DELETE,
            &format!("/v1/vms/{id}"),
            Some(app.admin()),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn illegal_transitions_are_conflicts_that_change_nothing() {
    let app = TestApp::start().await;
    let id = app.vm(app.admin()).await;
    let (status, body) = post(&app, &format!("/v1/vms/{id}/resume"), json!({})).await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("already running")
    );

    post(
        &app,
        &format!("/v1/vms/{id}/pause"),
        json!({ "to_disk": true }),
    )
    .await;
    // In memory from disk: the backend refuses, the VM stays on disk.
    let (status, body) = post(&app, &format!("/v1/vms/{id}/pause"), json!({})).await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    assert_eq!(app.vm_state(&id).await, "paused_to_disk");

    // Only a VM with processes can crash.
    post(&app, &format!("/v1/vms/{id}/resume"), json!({})).await;
    app.backend.crash(&id).expect("crash");
    assert_eq!(app.vm_state(&id).await, "crashed");
    for (path, body) in [
        ("pause", json!({})),
        ("resume", json!({})),
        ("fork", json!({ "count": 1 })),
        ("exec", json!({ "command": "true" })),
    ] {
        let (status, answer) = post(&app, &format!("/v1/vms/{id}/{path}"), body).await;
        assert_error(status, &answer, StatusCode::CONFLICT, "conflict");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("crashed"),
            "{path}: {answer}"
        );
    }
    assert_eq!(
        app.vm_state(&id).await,
        "crashed",
        "a crashed VM is not restarted"
    );
    // Its disk is kept until it is deleted; then it is gone.
    app.expect(
        StatusCode::NO_CONTENT,
        Method::DELETE,
        &format!("/v1/vms/{id}"),
        Some(app.admin()),
        None,
    )
    .await;
    assert!(app.backend.is_empty());
}

#[tokio::test]
async fn exec_and_files_resume_a_paused_vm_first() {
    let app = TestApp::start().await;
    let id = app.vm(app.admin()).await;
    for mode in [json!({}), json!({ "to_disk": true })] {
        post(&app, &format!("/v1/vms/{id}/pause"), mode.clone()).await;
        let (status, out) = post(
            &app,
            &format!("/v1/vms/{id}/exec"),
            json!({ "argv": ["true"] }),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{out}");
        assert_eq!(out["exit_code"], 127, "nothing answers `true`: {out}");
        assert_eq!(app.vm_state(&id).await, "running", "after {mode}");
    }
    post(
        &app,
        &format!("/v1/vms/{id}/pause"),
        json!({ "to_disk": true }),
    )
    .await;
    let put = request(
        Method::PUT,
        &format!("/v1/vms/{id}/files/workspace/notes.txt"),
        Some(app.admin()),
        None,
    );
    let (parts, _) = put.into_parts();
    let put = axum::http::Request::from_parts(parts, axum::body::Body::from("remember"));
    assert_eq!(app.send(put).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.vm_state(&id).await, "running");
    assert_eq!(
        app.backend
            .files(&id)
            .expect("files")
            .read("/workspace/notes.txt"),
        Some(b"remember".to_vec())
    );
    let read = app
        .send(request(
            Method::GET,
            &format!("/v1/vms/{id}/files/workspace/notes.txt"),
            Some(app.admin()),
            None,
        ))
        .await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(body_json(read).await, json!("remember"));
    let listed = app
        .expect(
            StatusCode::OK,
            Method::GET,
            &format!("/v1/vms/{id}/files/workspace/"),
            Some(app.admin()),
            None,
        )
        .await;
    assert_eq!(listed[0]["name"], "notes.txt", "{listed}");
    app.expect(
        StatusCode::NO_CONTENT,
        Method::DELETE,
        &format!("/v1/vms/{id}/files/workspace/notes.txt"),
        Some(app.admin()),
        None,
    )
    .await;
    let (status, body) = app
        .call(
            Method::GET,
            &format!("/v1/vms/{id}/files/workspace/notes.txt"),
            Some(app.admin()),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = app
        .call(
            Method::GET,
            &format!("/v1/vms/{id}/files/workspace/../../etc/shadow"),
            Some(app.admin()),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test]
async fn exec_reports_exit_codes_and_streams_as_server_sent_events() {
    let app = TestApp::start().await;
    app.backend
        .respond_to("make test", Reply::exit(2).stderr("1 failed\n"));
    app.backend.respond_to("echo hi", Reply::ok("hi\n"));
    let id = app.vm(app.admin()).await;
    let (_, failed) = post(
        &app,
        &format!("/v1/vms/{id}/exec"),
        json!({ "command": "make test" }),
    )
    .await;
    assert_eq!(
        (failed["exit_code"].clone(), failed["stderr"].clone()),
        (json!(2), json!("1 failed\n"))
    );

    let mut streamed = request(
        Method::POST,
        &format!("/v1/vms/{id}/exec"),
        Some(app.admin()),
        Some(json!({ "command": "echo hi" })),
    );
    streamed
        .headers_mut()
        .insert(header::ACCEPT, "text/event-stream".parse().expect("header"));
    let response = app.send(streamed).await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = body_json(response).await;
    let text = text.as_str().expect("an event stream");
    let stdout = text.find("event: stdout").expect(text);
    let exit = text.find("event: exit").expect(text);
    assert!(stdout < exit && text.contains(r#""exit_code":0"#), "{text}");
}

#[tokio::test]
async fn backend_failures_are_answered_with_their_status_and_leave_no_vm() {
    let app = TestApp::start().await;
    app.backend.fail_next(
        Operation::Create,
        ::sandbox::Error::Vmm {
            id: "sb".into(),
            message: "the guest did not boot".into(),
        },
    );
    let (status, body) = post(&app, "/v1/vms", json!({})).await;
    assert_error(status, &body, StatusCode::INTERNAL_SERVER_ERROR, "internal");
    assert!(
        !body.to_string().contains("guest did not boot"),
        "internals stay in the log: {body}"
    );
    let listed = app
        .expect(
            StatusCode::OK,
            Method::GET,
            "/v1/vms",
            Some(app.admin()),
            None,
        )
        .await;
    assert_eq!(listed, json!([]));

    let id = app.vm(app.admin()).await;
    app.backend.fail_next(
        Operation::Exec,
        ::sandbox::Error::Unresponsive {
            id: id.clone(),
            what: "an exec".into(),
            secs: 60,
        },
    );
    let (status, body) = post(
        &app,
        &format!("/v1/vms/{id}/exec"),
        json!({ "command": "true" }),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::GATEWAY_TIMEOUT,
        "agent_unresponsive",
    );
    app.backend
        .fail_next(Operation::Fork, ::sandbox::Error::Invalid("no room".into()));
    let (status, body) = post(&app, &format!("/v1/vms/{id}/fork"), json!({ "count": 2 })).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    let listed = app
        .expect(
            StatusCode::OK,
            Method::GET,
            "/v1/vms",
            Some(app.admin()),
            None,
        )
        .await;
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(1),
        "a failed fork records no copy"
    );
}

/// The ids of the VMs `token` sees.
async fn visible(app: &TestApp, token: &str) -> Vec<String> {
    let listed = app
        .expect(StatusCode::OK, Method::GET, "/v1/vms", Some(token), None)
        .await;
    listed
        .as_array()
        .expect("a list")
        .iter()
        .map(|vm| vm["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn a_vm_is_visible_to_its_creator_and_admins_only() {
    let app = TestApp::start().await;
    let alice = app.token(&["repo:write"], None).await;
    let bob = app.token(&["repo:write"], None).await;
    let id = app.vm(&alice.secret).await;
    assert_eq!(visible(&app, &alice.secret).await, [id.as_str()]);
    assert_eq!(visible(&app, app.admin()).await, [id.as_str()]);
    assert!(visible(&app, &bob.secret).await.is_empty());
    // Bob's fork of it is refused; Alice's copies are Alice's.
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/v1/vms/{id}/fork"),
            Some(&bob.secret),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/v1/vms/{id}/fork"),
            Some(&alice.secret),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(visible(&app, &alice.secret).await.len(), 2);
}
