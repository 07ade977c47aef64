//! One lifecycle operation at a time per VM, different VMs never waiting on
//! each other (`vms/mod.rs`): operations are held in flight at the
//! in-memory backend's gates, and what reached the backend meanwhile is
//! read from its records.
//!
//! Proving that something did *not* happen needs a moment in which it
//! could have: the tests run a complete request on another VM (several
//! database round trips on the multi-threaded runtime) before looking, and
//! a serialisation the forge lost makes them fail.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use sandbox::testing::{Call, Operation};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::testing::TestApp;

/// Long enough for any in-memory request; a test that waits this long
/// has failed.
const PATIENCE: Duration = Duration::from_secs(20);

/// `POST path` as the admin, in its own task.
fn spawn_post(app: &Arc<TestApp>, path: String, body: Value) -> JoinHandle<(StatusCode, Value)> {
    let app = app.clone();
    tokio::spawn(async move {
        let admin = app.admin().to_owned();
        app.call(Method::POST, &path, Some(&admin), Some(body))
            .await
    })
}

async fn finished(task: JoinHandle<(StatusCode, Value)>) -> (StatusCode, Value) {
    tokio::time::timeout(PATIENCE, task)
        .await
        .expect("the request ended")
        .expect("the request task did not panic")
}

/// A whole request on `vm`, which must not wait for anything held.
async fn unhindered(app: &TestApp, vm: &str) {
    let path = format!("/v1/vms/{vm}/exec");
    let exec = app.call(
        Method::POST,
        &path,
        Some(app.admin()),
        Some(json!({ "command": "true" })),
    );
    let (status, body) = tokio::time::timeout(PATIENCE, exec)
        .await
        .expect("an operation on another VM does not wait");
    assert_eq!(status, StatusCode::OK, "{body}");
}

fn calls_on(app: &TestApp, vm: &str) -> Vec<Operation> {
    app.backend
        .calls()
        .into_iter()
        .filter(|Call { sandbox, .. }| sandbox == vm)
        .map(|call| call.operation)
        .collect()
}

fn execs_on(app: &TestApp, vm: &str) -> usize {
    app.backend
        .execs()
        .iter()
        .filter(|e| e.invocation.sandbox == vm)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operation_held_on_one_vm_does_not_delay_another_vm() {
    let app = Arc::new(TestApp::start().await);
    let (a, b) = (app.vm(app.admin()).await, app.vm(app.admin()).await);
    for held in [Operation::Pause, Operation::Fork, Operation::Destroy] {
        let gate = app.backend.hold_on(held, &a);
        let (path, body) = match held {
            Operation::Pause => (format!("/v1/vms/{a}/pause"), json!({})),
            Operation::Fork => (format!("/v1/vms/{a}/fork"), json!({ "count": 1 })),
            _ => (format!("/v1/vms/{a}"), json!(null)),
        };
        let task = if held == Operation::Destroy {
            let app = app.clone();
            tokio::spawn(async move {
                let admin = app.admin().to_owned();
                app.call(Method::DELETE, &path, Some(&admin), None).await
            })
        } else {
            spawn_post(&app, path, body)
        };
        gate.arrived(1).await;
        unhindered(&app, &b).await;
        let (status, body) = app
            .call(
                Method::POST,
                &format!("/v1/vms/{b}/pause"),
                Some(app.admin()),
                Some(json!({})),
            )
            .await;
        assert_eq!(
            (status, body["state"].clone()),
            (StatusCode::OK, json!("paused"))
        );
        app.call(
            Method::POST,
            &format!("/v1/vms/{b}/resume"),
            Some(app.admin()),
            None,
        )
        .await;
        assert!(!task.is_finished(), "{held:?} of {a} is still held");
        gate.open();
        let (status, body) = finished(task).await;
        assert!(status.is_success(), "{held:?}: {body}");
        if held == Operation::Pause {
            app.call(
                Method::POST,
                &format!("/v1/vms/{a}/resume"),
                Some(app.admin()),
                None,
            )
            .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exec_waits_for_a_pause_in_flight_and_then_resumes_the_vm() {
    let app = Arc::new(TestApp::start().await);
    let (a, b) = (app.vm(app.admin()).await, app.vm(app.admin()).await);
    let gate = app.backend.hold_on(Operation::Pause, &a);
    let pause = spawn_post(&app, format!("/v1/vms/{a}/pause"), json!({}));
    gate.arrived(1).await;
    let exec = spawn_post(
        &app,
        format!("/v1/vms/{a}/exec"),
        json!({ "command": "true" }),
    );
    unhindered(&app, &b).await;
    assert_eq!(
        execs_on(&app, &a),
        0,
        "the exec ran while the pause was in flight"
    );
    gate.open();
    let (status, body) = finished(pause).await;
    assert_eq!(
        (status, body["state"].clone()),
        (StatusCode::OK, json!("paused"))
    );
    let (status, body) = finished(exec).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The pause took effect first; the exec then resumed the VM to run.
    assert_eq!(
        calls_on(&app, &a),
        [Operation::Create, Operation::Pause, Operation::Resume]
    );
    assert_eq!(app.vm_state(&a).await, "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pause_waits_for_the_commands_in_flight_instead_of_freezing_them() {
    let app = Arc::new(TestApp::start().await);
    let (a, b) = (app.vm(app.admin()).await, app.vm(app.admin()).await);
    let gate = app.backend.hold_on(Operation::Exec, &a);
    let exec = spawn_post(
        &app,
        format!("/v1/vms/{a}/exec"),
        json!({ "command": "make" }),
    );
    gate.arrived(1).await;
    let pause = spawn_post(
        &app,
        format!("/v1/vms/{a}/pause"),
        json!({ "to_disk": true }),
    );
    unhindered(&app, &b).await;
    assert!(
        !calls_on(&app, &a).contains(&Operation::Pause),
        "the pause reached the backend with an exec in flight"
    );
    gate.open();
    let (status, body) = finished(exec).await;
    assert_eq!(
        (status, body["exit_code"].clone()),
        (StatusCode::OK, json!(127)),
        "{body}"
    );
    let (status, body) = finished(pause).await;
    assert_eq!(
        (status, body["state"].clone()),
        (StatusCode::OK, json!("paused_to_disk"))
    );
    let exec = &app.backend.execs()[0];
    assert_eq!(exec.invocation.sandbox, a);
    assert!(
        matches!(exec.ending, Some(sandbox::testing::Ending::Exited(_))),
        "the exec ran to its end: {exec:?}"
    );
}

// Execs share the VM: neither waits for the other to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn execs_on_one_vm_run_side_by_side() {
    let app = Arc::new(TestApp::start().await);
    let a = app.vm(app.admin()).await;
    let gate = app.backend.hold_on(Operation::Exec, &a);
    let first = spawn_post(
        &app,
        format!("/v1/vms/{a}/exec"),
        json!({ "command": "one" }),
    );
    let second = spawn_post(
        &app,
        format!("/v1/vms/{a}/exec"),
        json!({ "command": "two" }),
    );
    // Both reach the backend while neither has ended: they share the VM.
    tokio::time::timeout(PATIENCE, gate.arrived(2))
        .await
        .expect("two execs in flight on one VM at once");
    gate.open();
    for task in [first, second] {
        assert_eq!(finished(task).await.0, StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lifecycle_operations_on_one_vm_run_one_at_a_time() {
    let app = Arc::new(TestApp::start().await);
    let (a, b) = (app.vm(app.admin()).await, app.vm(app.admin()).await);
    let gate = app.backend.hold_on(Operation::Fork, &a);
    let fork = spawn_post(&app, format!("/v1/vms/{a}/fork"), json!({ "count": 2 }));
    gate.arrived(1).await;
    let pause = spawn_post(
        &app,
        format!("/v1/vms/{a}/pause"),
        json!({ "to_disk": true }),
    );
    let destroy = {
        let (app, a) = (app.clone(), a.clone());
        tokio::spawn(async move {
            let admin = app.admin().to_owned();
            app.call(Method::DELETE, &format!("/v1/vms/{a}"), Some(&admin), None)
                .await
        })
    };
    unhindered(&app, &b).await;
    assert_eq!(
        calls_on(&app, &a),
        [Operation::Create],
        "nothing overtook the fork"
    );
    gate.open();
    let (status, body) = finished(fork).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let pause = finished(pause).await;
    let destroy = finished(destroy).await;
    // Whichever of the two came second found what the first left.
    let calls = calls_on(&app, &a);
    assert_eq!(calls[..2], [Operation::Create, Operation::Fork]);
    assert_eq!(destroy.0, StatusCode::NO_CONTENT, "{destroy:?}");
    match calls[2..] {
        [Operation::Pause, Operation::Destroy] => assert_eq!(pause.0, StatusCode::OK),
        [Operation::Destroy] => assert_eq!(pause.0, StatusCode::NOT_FOUND, "{pause:?}"),
        _ => panic!("unexpected order {calls:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_in_flight_holds_no_vm() {
    let app = Arc::new(TestApp::start().await);
    let a = app.vm(app.admin()).await;
    let gate = app.backend.hold(Operation::Create);
    let create = spawn_post(&app, "/v1/vms".into(), json!({}));
    gate.arrived(1).await;
    unhindered(&app, &a).await;
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/v1/vms/{a}/fork"),
            Some(app.admin()),
            Some(json!({})),
        )
        .await;
    // A fork's copy is not a create: it passes the held create.
    assert_eq!(status, StatusCode::CREATED, "{body}");
    gate.open();
    assert_eq!(finished(create).await.0, StatusCode::CREATED);
}

/// A VM made with `idle_timeout_secs` and `persistence`, last used long ago.
async fn idle_vm(app: &TestApp, persistence: &str) -> String {
    let made = app
        .expect(
            StatusCode::CREATED,
            Method::POST,
            "/v1/vms",
            Some(app.admin()),
            Some(json!({ "idle_timeout_secs": 5, "persistence": { "type": persistence } })),
        )
        .await;
    let id = made["id"].as_str().expect("a VM id").to_owned();
    app.state.store.set_last_active(&id, 0).await.unwrap();
    id
}

/// What the idle reaper does to `vm` now, without waiting for anything.
async fn reap(app: &TestApp, vm: &str) -> Option<&'static str> {
    let row = app.state.store.vm(vm).await.unwrap().expect("the VM");
    tokio::time::timeout(PATIENCE, app.state.sandboxes.reap_if_idle(&row))
        .await
        .expect("the reaper does not wait for a VM in use")
        .expect("reaping")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reaper_passes_over_a_vm_in_use_and_counts_from_the_end_of_its_use() {
    let app = Arc::new(TestApp::start().await);
    let a = idle_vm(&app, "persistent").await;
    let gate = app.backend.hold_on(Operation::Exec, &a);
    let exec = spawn_post(
        &app,
        format!("/v1/vms/{a}/exec"),
        json!({ "command": "make" }),
    );
    gate.arrived(1).await;
    // Started long ago and still running: in use, not idle.
    app.state.store.set_last_active(&a, 0).await.unwrap();
    assert_eq!(reap(&app, &a).await, None);
    gate.open();
    assert_eq!(finished(exec).await.0, StatusCode::OK);
    // It ended just now: the idle time counts from here, however long
    // ago the command started.
    app.state.store.set_last_active(&a, 0).await.unwrap();
    assert_eq!(reap(&app, &a).await, None);
    assert!(!calls_on(&app, &a).contains(&Operation::Pause));
    assert_eq!(app.vm_state(&a).await, "running");

    // Idle VMs nobody holds: paused to disk, or destroyed when ephemeral.
    let b = idle_vm(&app, "persistent").await;
    assert_eq!(reap(&app, &b).await, Some("paused to disk"));
    assert_eq!(app.vm_state(&b).await, "paused_to_disk");
    let c = idle_vm(&app, "ephemeral").await;
    assert_eq!(reap(&app, &c).await, Some("destroyed"));
    assert!(app.state.store.vm(&c).await.unwrap().is_none());
}
