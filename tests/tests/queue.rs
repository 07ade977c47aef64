//! The cap on live sandboxes queues instead of refusing at once, and
//! per-token quotas refuse clearly.

#![allow(clippy::unwrap_used)] // A test that cannot unwrap has failed: say so loudly.

use std::time::{Duration, Instant};

use api_types::vms::{CreateVm, System, VmView};
use e2e::TestForge;
use serde_json::json;

#[test]
fn a_create_over_the_cap_waits_its_turn_and_quotas_are_clear() {
    if !e2e::require_sandboxes() {
        return;
    }
    let forge = TestForge::builder()
        .with_sandboxes(2)
        .env("FORGE_SANDBOX_QUEUE_SECS", "60")
        .env("FORGE_MAX_VMS_PER_TOKEN", "1")
        .start();
    let a: VmView = forge.send("POST", "/v1/vms", &CreateVm::default());
    let a = a.id;
    let _b: VmView = forge.send("POST", "/v1/vms", &CreateVm::default());

    // The third waits in the queue; the system says so.
    let (url, token) = (forge.url.clone(), forge.admin_token.clone());
    let waiter = std::thread::spawn(move || {
        let started = Instant::now();
        let response = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(90))
            .build()
            .unwrap()
            .post(format!("{url}/v1/vms"))
            .bearer_auth(token)
            .json(&json!({}))
            .send()
            .unwrap();
        (
            response.status().as_u16(),
            started.elapsed(),
            Instant::now(),
        )
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let system: System = forge.get("/v1/system");
        if system.sandboxes.queue.waiting == 1 {
            assert_eq!(system.sandboxes.queue.max_wait_secs, 60);
            break;
        }
        assert!(Instant::now() < deadline, "never queued: {system:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let freed = Instant::now();
    forge.admin("DELETE", &format!("/v1/vms/{a}"), None);
    let (status, waited, answered) = waiter.join().unwrap();
    assert_eq!(status, 201);
    println!("admitted from the queue after {waited:?}");
    assert!(
        answered >= freed,
        "admitted before a place was freed ({waited:?} after asking)"
    );

    // A repo:write token holds one live VM at most; admins have no quota.
    forge.create_repo("acme/q");
    let user = forge.create_token("agent", &["repo:write"], None);
    forge.admin("DELETE", &format!("/v1/vms/{}", _b.id), None);
    let (status, mine) = forge.call(Some(&user), "POST", "/v1/vms", Some(json!({})));
    assert_eq!(status, 201, "{mine}");
    let (status, body) = forge.call(Some(&user), "POST", "/v1/vms", Some(json!({})));
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "quota", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("its quota is 1"), "{message}");
    let (status, body) = forge.call(
        Some(&user),
        "POST",
        &format!("/v1/vms/{}/fork", mine["id"].as_str().unwrap()),
        Some(json!({ "count": 1 })),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("quota"))
    );

    // An admin token limited to one repository is that repository's
    // admin, not the forge's: it has a quota like any other token.
    let (status, body) = forge.call(
        Some(&user),
        "DELETE",
        &format!("/v1/vms/{}", mine["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(status, 204, "{body}");
    let limited = forge.create_token("repo-admin", &["admin"], Some("acme/q"));
    let (status, first) = forge.call(Some(&limited), "POST", "/v1/vms", Some(json!({})));
    assert_eq!(status, 201, "{first}");
    let (status, body) = forge.call(Some(&limited), "POST", "/v1/vms", Some(json!({})));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("quota")),
        "{body}"
    );
}
