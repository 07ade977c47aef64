//! Fleet control through the API: labels and filtered, paged listings;
//! deadlines (`ttl_secs`) that destroy a VM whatever it is doing; and the
//! lifecycle events every operation records, in the forge's stream, in a
//! repository's feed and in filtered forge-wide webhooks.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use sandbox::testing::{Operation, Reply};
use serde_json::{Value, json};

use super::assert_error;
use crate::store::unix_now;
use crate::testing::{TestApp, body_json, request};
use crate::vms::Limits;

async fn create(app: &TestApp, token: &str, body: Value) -> String {
    let made = app
        .expect(
            StatusCode::CREATED,
            Method::POST,
            "/v1/vms",
            Some(token),
            Some(body),
        )
        .await;
    made["id"].as_str().expect("an id").to_owned()
}

/// The ids of `GET path` and its `x-next-cursor`.
async fn page(app: &TestApp, token: &str, path: &str) -> (Vec<String>, Option<String>) {
    let response = app
        .send(request(Method::GET, path, Some(token), None))
        .await;
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    let cursor = response
        .headers()
        .get("x-next-cursor")
        .map(|value| value.to_str().expect("ASCII").to_owned());
    let body = body_json(response).await;
    let ids = body
        .as_array()
        .expect("a list")
        .iter()
        .map(|vm| vm["id"].as_str().expect("an id").to_owned())
        .collect();
    (ids, cursor)
}

/// The kinds of the forge's events, in order, of VM `id`.
pub(super) async fn kinds_of(app: &TestApp, id: &str) -> Vec<String> {
    let page = app
        .expect(
            StatusCode::OK,
            Method::GET,
            "/v1/events?limit=1000",
            Some(app.admin()),
            None,
        )
        .await;
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|event| event["payload"]["sandbox"]["id"] == id)
        .map(|event| event["kind"].as_str().expect("a kind").to_owned())
        .collect()
}

/// The event types of the deliveries at `path` once there are `count` (or
/// after 5 s).
async fn delivered(app: &TestApp, path: &str, count: usize) -> BTreeSet<String> {
    let started = std::time::Instant::now();
    loop {
        let page = app
            .expect(StatusCode::OK, Method::GET, path, Some(app.admin()), None)
            .await;
        let got: BTreeSet<String> = page["deliveries"]
            .as_array()
            .expect("deliveries")
            .iter()
            .map(|d| d["event_type"].as_str().expect("a type").to_owned())
            .collect();
        if got.len() >= count || started.elapsed() > Duration::from_secs(5) {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn labels_filter_and_pages_walk_the_fleet_in_creation_order() {
    let app = TestApp::start().await;
    let admin = app.admin().to_owned();
    let mut web = Vec::new();
    for _ in 0..3 {
        web.push(
            create(
                &app,
                &admin,
                json!({ "labels": { "team": "web", "tier": "ci" } }),
            )
            .await,
        );
    }
    let data = create(&app, &admin, json!({ "labels": { "team": "data" } })).await;
    let writer = app.token(&["repo:write"], None).await;
    let theirs = create(&app, &writer.secret, json!({ "labels": { "team": "web" } })).await;
    app.expect(
        StatusCode::OK,
        Method::POST,
        &format!("/v1/vms/{}/pause", web[1]),
        Some(&admin),
        None,
    )
    .await;

    let (ids, cursor) = page(&app, &admin, "/v1/vms?label=team:web").await;
    let mut expected = web.clone();
    expected.push(theirs.clone());
    assert_eq!(ids, expected, "every web VM, oldest first");
    assert_eq!(cursor, None, "one page holds them");
    let (ids, _) = page(&app, &writer.secret, "/v1/vms?label=team:web").await;
    assert_eq!(
        ids,
        std::slice::from_ref(&theirs),
        "a token sees only its own VMs"
    );
    let (ids, _) = page(
        &app,
        &admin,
        "/v1/vms?label=team:web&label=tier:ci&state=paused",
    )
    .await;
    assert_eq!(ids, [web[1].clone()], "filters add up");
    let (ids, _) = page(&app, &admin, "/v1/vms?label=tier").await;
    assert_eq!(ids, web, "a bare key matches any value");
    let (ids, _) = page(&app, &admin, "/v1/vms?repo=acme/none").await;
    assert!(ids.is_empty());

    // Pages of two, then the same walk after a VM before the cursor is gone:
    // nothing is skipped or repeated.
    let mut walked = Vec::new();
    let mut next = Some(String::new());
    while let Some(cursor) = next {
        let path = if cursor.is_empty() {
            "/v1/vms?limit=2".to_owned()
        } else {
            format!("/v1/vms?limit=2&cursor={cursor}")
        };
        let (ids, cursor) = page(&app, &admin, &path).await;
        if walked.is_empty() {
            app.expect(
                StatusCode::NO_CONTENT,
                Method::DELETE,
                &format!("/v1/vms/{}", ids[0]),
                Some(&admin),
                None,
            )
            .await;
        }
        walked.extend(ids);
        next = cursor;
    }
    let mut all = web.clone();
    all.extend([data, theirs]);
    assert_eq!(walked, all, "paging is stable");

    let fork = app
        .expect(
            StatusCode::CREATED,
            Method::POST,
            &format!("/v1/vms/{}/fork", web[2]),
            Some(&admin),
            Some(json!({ "labels": { "tier": "preview", "run": "7" } })),
        )
        .await;
    assert_eq!(
        fork["forks"][0]["labels"],
        json!({ "team": "web", "tier": "preview", "run": "7" }),
        "a fork inherits its parent's labels under its own"
    );

    for (path, body, code) in [
        (
            "/v1/vms",
            json!({ "labels": { "bad key": "x" } }),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1/vms",
            json!({ "labels": { "k": "a\nb" } }),
            StatusCode::BAD_REQUEST,
        ),
        ("/v1/vms", json!({ "ttl_secs": 0 }), StatusCode::BAD_REQUEST),
    ] {
        let (status, answer) = app.call(Method::POST, path, Some(&admin), Some(body)).await;
        assert_error(status, &answer, code, "bad_request");
    }
    for path in [
        "/v1/vms?cursor=zz",
        "/v1/vms?state=asleep",
        "/v1/vms?colour=red",
        "/v1/vms?label=:x",
        &format!("/v1/vms?{}", vec!["label=k"; 33].join("&")),
    ] {
        let (status, answer) = app.call(Method::GET, path, Some(&admin), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {answer}");
    }
}

#[tokio::test]
async fn a_vm_past_its_deadline_is_destroyed_even_in_use_and_the_deadline_moves() {
    let app = Arc::new(
        TestApp::builder()
            .with_limits(Limits {
                expiry_grace: Duration::from_millis(100),
                ..Limits::default()
            })
            .start()
            .await,
    );
    let admin = app.admin().to_owned();
    let moved = create(&app, &admin, json!({ "ttl_secs": 1 })).await;
    let extended = app
        .expect(
            StatusCode::OK,
            Method::POST,
            &format!("/v1/vms/{moved}/timeout"),
            Some(&admin),
            Some(json!({ "ttl_secs": 3600 })),
        )
        .await;
    assert!(extended["expires_at"].is_string(), "{extended}");
    let (status, answer) = app
        .call(
            Method::POST,
            &format!("/v1/vms/{moved}/timeout"),
            Some(&admin),
            Some(json!({})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a missing ttl_secs removes nothing: {answer}"
    );

    let doomed = create(&app, &admin, json!({ "ttl_secs": 1 })).await;
    let gate = app
        .backend
        .hold_exec(|invocation| invocation.script() == "sleep 600");
    app.backend.respond_to("sleep 600", Reply::ok(""));
    let busy = {
        let app = app.clone();
        let path = format!("/v1/vms/{doomed}/exec");
        tokio::spawn(async move {
            app.call(
                Method::POST,
                &path,
                Some(app.admin()),
                Some(json!({ "command": "sleep 600" })),
            )
            .await
        })
    };
    while gate.count() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The deadline is a whole second, at most two away.
    let waited = std::time::Instant::now();
    let due = loop {
        let due = app
            .state
            .store
            .expired_vms(unix_now())
            .await
            .expect("the store");
        if !due.is_empty() || waited.elapsed() > Duration::from_secs(3) {
            break due;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        due.iter().map(|vm| vm.id.as_str()).collect::<Vec<_>>(),
        [doomed.as_str()],
        "a moved deadline is not due"
    );
    // A second holder that never lets go: a streamed exec whose reader
    // stopped reading (its response, and so its hold, stays alive).
    let never_read = app
        .sandboxes()
        .exec_stream(&doomed, sandbox::Command::shell("sleep 600"))
        .await
        .expect("a streamed exec");
    let expiry = {
        let app = app.clone();
        let row = due[0].clone();
        tokio::spawn(async move { app.sandboxes().expire(&row).await })
    };
    // The exec still holds the VM: after the grace, the sandbox is stopped
    // under it rather than waited for.
    let stopped = || {
        app.backend
            .calls()
            .iter()
            .any(|call| call.operation == Operation::Destroy && call.sandbox == doomed)
    };
    let started = std::time::Instant::now();
    while !stopped() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never stopped under its exec"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The exec never lets go (a client that stopped reading keeps its
    // hold alive): the expiry ends all the same, after its graces.
    let expired = tokio::time::timeout(Duration::from_secs(5), expiry)
        .await
        .expect("an expiry is not held up by a holder that never lets go");
    assert!(expired.expect("the expiry task").expect("expires"));
    drop(never_read);
    gate.open();
    let _ = busy.await;
    let (status, _) = app
        .call(
            Method::GET,
            &format!("/v1/vms/{doomed}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        kinds_of(&app, &doomed).await[1..],
        ["sandbox.expired", "sandbox.deleted"]
    );

    let cleared = app
        .expect(
            StatusCode::OK,
            Method::POST,
            &format!("/v1/vms/{moved}/timeout"),
            Some(&admin),
            Some(json!({ "ttl_secs": null })),
        )
        .await;
    assert_eq!(cleared["expires_at"], Value::Null);
}

#[tokio::test]
async fn every_lifecycle_change_is_an_event_and_reaches_the_webhooks_that_ask() {
    let app = TestApp::start().await;
    let admin = app.admin().to_owned();
    let repo = app.repo("acme/app").await;
    let wide = app
        .expect(
            StatusCode::CREATED,
            Method::POST,
            "/v1/webhooks",
            Some(&admin),
            Some(json!({ "url": "https://hooks.example.com/fleet", "events": ["sandbox.forked", "sandbox.crashed"] })),
        )
        .await;
    let of_repo = app
        .expect(
            StatusCode::CREATED,
            Method::POST,
            "/v1/repos/acme/app/webhooks",
            Some(&admin),
            Some(json!({ "url": "https://hooks.example.com/app", "events": ["sandbox.created"] })),
        )
        .await;

    let id = create(&app, &admin, json!({ "labels": { "team": "web" } })).await;
    let vm = |what: &str| format!("/v1/vms/{id}/{what}");
    app.expect(
        StatusCode::OK,
        Method::POST,
        &vm("pause"),
        Some(&admin),
        None,
    )
    .await;
    app.expect(
        StatusCode::OK,
        Method::POST,
        &vm("resume"),
        Some(&admin),
        None,
    )
    .await;
    app.expect(
        StatusCode::OK,
        Method::POST,
        &vm("pause"),
        Some(&admin),
        Some(json!({ "to_disk": true })),
    )
    .await;
    app.backend.respond_to("true", Reply::ok(""));
    app.expect(
        StatusCode::OK,
        Method::POST,
        &vm("exec"),
        Some(&admin),
        Some(json!({ "command": "true" })),
    )
    .await;
    let forks = app
        .expect(
            StatusCode::CREATED,
            Method::POST,
            &vm("fork"),
            Some(&admin),
            Some(json!({})),
        )
        .await;
    let child = forks["forks"][0]["id"].as_str().expect("a fork").to_owned();
    app.expect(
        StatusCode::NO_CONTENT,
        Method::DELETE,
        &format!("/v1/vms/{child}"),
        Some(&admin),
        None,
    )
    .await;
    app.backend.crash(&id).expect("the VM exists");
    assert_eq!(app.vm_state(&id).await, "crashed");
    assert_eq!(
        kinds_of(&app, &id).await,
        [
            "sandbox.created",
            "sandbox.paused",
            "sandbox.resumed",
            "sandbox.paused",
            "sandbox.resumed",
            "sandbox.crashed"
        ]
    );
    assert_eq!(
        kinds_of(&app, &child).await,
        ["sandbox.forked", "sandbox.deleted"]
    );

    let events = app
        .expect(
            StatusCode::OK,
            Method::GET,
            "/v1/events?limit=1000",
            Some(&admin),
            None,
        )
        .await;
    let events = events["events"].as_array().expect("events").clone();
    let find = |kind: &str, vm: &str| {
        events
            .iter()
            .find(|e| e["kind"] == kind && e["payload"]["sandbox"]["id"] == vm)
            .unwrap_or_else(|| panic!("no {kind} of {vm}"))
            .clone()
    };
    let created = find("sandbox.created", &id);
    assert_eq!(
        created["repo"],
        Value::Null,
        "a VM of no repository is the forge's"
    );
    assert_eq!(
        created["payload"]["sandbox"]["labels"],
        json!({ "team": "web" })
    );
    assert_eq!(created["payload"]["actor"]["name"], "admin");
    assert_eq!(find("sandbox.paused", &id)["payload"]["mode"], "memory");
    assert_eq!(
        find("sandbox.forked", &child)["payload"]["parent"],
        id.as_str()
    );
    assert_eq!(
        find("sandbox.deleted", &child)["payload"]["reason"],
        "requested"
    );
    let resumes: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "sandbox.resumed")
        .map(|e| e["payload"]["on_demand"].clone())
        .collect();
    assert_eq!(
        resumes,
        [json!(false), json!(true)],
        "the exec resumed it on demand"
    );

    // A VM of a repository: its events are the repository's too.
    let theirs = create(&app, &admin, json!({ "repo": "acme/app" })).await;
    let feed = app
        .expect(
            StatusCode::OK,
            Method::GET,
            "/v1/repos/acme/app/events",
            Some(&admin),
            None,
        )
        .await;
    let created_there = feed["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["kind"] == "sandbox.created")
        .expect("the repository's feed has it")
        .clone();
    assert_eq!(created_there["payload"]["sandbox"]["id"], theirs.as_str());
    assert_eq!(
        created_there["ref"],
        format!(
            "refs/heads/{}",
            repo["default_branch"].as_str().expect("a default branch")
        )
    );

    // Each webhook got what it asked for and nothing else: the forge-wide
    // one the fork and the crash (of every repository and of none), the
    // repository's one only its own VM's creation.
    let wide_id = wide["id"].as_str().expect("an id");
    let repo_id = of_repo["id"].as_str().expect("an id");
    assert_eq!(
        delivered(&app, &format!("/v1/webhooks/{wide_id}/deliveries"), 2).await,
        BTreeSet::from(["sandbox.forked".to_owned(), "sandbox.crashed".to_owned()])
    );
    assert_eq!(
        delivered(
            &app,
            &format!("/v1/repos/acme/app/webhooks/{repo_id}/deliveries"),
            1
        )
        .await,
        BTreeSet::from(["sandbox.created".to_owned()])
    );
}

#[tokio::test]
async fn metrics_count_operations_and_read_states_when_scraped() {
    let app = TestApp::start().await;
    let admin = app.admin().to_owned();
    let id = create(&app, &admin, json!({})).await;
    app.backend.respond_to("true", Reply::ok(""));
    app.expect(
        StatusCode::OK,
        Method::POST,
        &format!("/v1/vms/{id}/exec"),
        Some(&admin),
        Some(json!({ "command": "true" })),
    )
    .await;
    app.expect(
        StatusCode::OK,
        Method::POST,
        &format!("/v1/vms/{id}/pause"),
        Some(&admin),
        None,
    )
    .await;
    let response = app
        .send(request(Method::GET, "/metrics", Some(&admin), None))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .expect("ASCII")
            .starts_with("text/plain; version=0.0.4")
    );
    let text = body_json(response).await;
    let text = text.as_str().expect("text");
    // States come from this forge's tables; counters are the process's.
    assert!(
        text.contains("forge_sandboxes{backend=\"container\",state=\"paused\"} 1"),
        "{text}"
    );
    for series in [
        "forge_sandbox_operation_seconds_count{operation=\"create\",outcome=\"ok\"}",
        "forge_sandbox_operation_seconds_count{operation=\"pause\",outcome=\"ok\"}",
        "forge_exec_seconds_count{mode=\"collected\"}",
        "forge_sandbox_queue_depth 0",
        "forge_sandbox_memory_mib{kind=\"committed\"} 512",
    ] {
        assert!(text.contains(series), "{series} in {text}");
    }
}

#[tokio::test]
async fn a_create_that_matches_the_warm_pool_takes_a_paused_sandbox_and_others_start_cold() {
    let app = TestApp::builder()
        .with_limits(Limits {
            warm_pool: crate::vms::pool::PoolTargets::from([("default".into(), 2)]),
            ..Limits::default()
        })
        .start()
        .await;
    app.sandboxes().fill_pool().await;
    assert_eq!(app.sandboxes().warm_pool(), (2, 2));
    let pooled: Vec<String> = app
        .backend
        .calls()
        .iter()
        .filter(|call| call.operation == Operation::Create)
        .map(|call| call.sandbox.clone())
        .collect();
    assert_eq!(pooled.len(), 2);
    let writer = app.token(&["repo:write"], None).await;
    let (ids, _) = page(&app, &writer.secret, "/v1/vms").await;
    assert!(ids.is_empty(), "pooled sandboxes are nobody's: {ids:?}");

    let made = app
        .expect(
            StatusCode::CREATED,
            Method::POST,
            "/v1/vms",
            Some(&writer.secret),
            Some(json!({ "labels": { "team": "web" }, "ttl_secs": 600 })),
        )
        .await;
    let id = made["id"].as_str().expect("an id").to_owned();
    assert_eq!(id, pooled[0], "the oldest pooled sandbox is handed out");
    assert_eq!(made["state"], "running");
    assert_eq!(
        made["labels"],
        json!({ "team": "web" }),
        "its own labels, not the pool's"
    );
    assert!(made["expires_at"].is_string());
    let (ids, _) = page(&app, &writer.secret, "/v1/vms").await;
    assert_eq!(ids, std::slice::from_ref(&id), "now the caller's");
    assert_eq!(kinds_of(&app, &id).await, ["sandbox.created"]);

    // A create the pool cannot serve starts cold; a crashed pooled one is
    // passed over (and destroyed).
    let creates = |app: &TestApp| {
        app.backend
            .calls()
            .iter()
            .filter(|call| call.operation == Operation::Create)
            .count()
    };
    let before = creates(&app);
    create(&app, &writer.secret, json!({ "env": { "MODE": "x" } })).await;
    assert_eq!(creates(&app), before + 1, "an env of its own: cold");
    app.backend.crash(&pooled[1]).expect("pooled");
    let cold = create(&app, &writer.secret, json!({})).await;
    assert_ne!(cold, pooled[1]);
    assert_eq!(creates(&app), before + 2);
    let (status, _) = app
        .call(
            Method::GET,
            &format!("/v1/vms/{}", pooled[1]),
            Some(app.admin()),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the crashed pooled sandbox is gone"
    );
    assert_eq!(app.sandboxes().warm_pool().0, 0);
    app.sandboxes().fill_pool().await;
    assert_eq!(app.sandboxes().warm_pool(), (2, 2), "refilled");
}

/// The VMs the pools hold.
async fn pooled_ids(app: &TestApp) -> Vec<String> {
    app.state
        .store
        .vms_created_by(crate::vms::pool::POOL_ACTOR)
        .await
        .expect("store")
        .into_iter()
        .map(|row| row.id)
        .collect()
}

/// Waits until template `name`'s build ends; its state.
async fn built(app: &TestApp, name: &str) -> String {
    for _ in 0..200 {
        let view = app
            .expect(
                StatusCode::OK,
                Method::GET,
                &format!("/v1/templates/{name}"),
                Some(app.admin()),
                None,
            )
            .await;
        if view["state"] != "building" {
            let state = view["state"].as_str().expect("a state").to_owned();
            if state != "ready" {
                eprintln!("template {name}: {view}");
            }
            return state;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("template {name} still builds");
}

#[tokio::test]
async fn a_template_pool_fills_once_built_hands_out_its_sandboxes_and_follows_rebuilds() {
    let app = TestApp::start().await;
    let writer = app.token(&["repo:write"], None).await;
    let put = |spec: serde_json::Value| {
        app.call(Method::POST, "/v1/templates", Some(app.admin()), Some(spec))
    };
    let (status, _) = put(json!({ "name": "tpl", "pool": 2, "env": { "A": "1" } })).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(built(&app, "tpl").await, "ready");
    app.sandboxes().fill_pool().await;
    let pools = app.sandboxes().warm_pools();
    assert_eq!(pools, [("tpl".to_owned(), 2, 2)]);
    let system = app
        .expect(
            StatusCode::OK,
            Method::GET,
            "/v1/system",
            Some(app.admin()),
            None,
        )
        .await;
    assert_eq!(
        system["sandboxes"]["warm_pool"]["templates"],
        json!([{ "template": "tpl", "target": 2, "ready": 2 }])
    );
    let pooled = pooled_ids(&app).await;
    assert_eq!(pooled.len(), 2);

    let made = create(&app, &writer.secret, json!({ "template": "tpl" })).await;
    assert!(pooled.contains(&made), "a pooled sandbox is handed out");
    let (_, view) = app
        .call(
            Method::GET,
            &format!("/v1/vms/{made}"),
            Some(&writer.secret),
            None,
        )
        .await;
    assert_eq!(view["template"], "tpl");
    assert_eq!(view["labels"], json!({}), "its own labels, not the pool's");
    assert_eq!(app.sandboxes().warm_pools(), [("tpl".to_owned(), 2, 1)]);

    // A rebuilt template's pooled sandboxes are replaced: none of the old
    // build is handed out.
    let (status, _) = put(json!({ "name": "tpl", "pool": 2, "env": { "A": "2" } })).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(built(&app, "tpl").await, "ready");
    app.sandboxes().fill_pool().await;
    let after = pooled_ids(&app).await;
    assert_eq!(after.len(), 2);
    assert!(
        after.iter().all(|id| !pooled.contains(id)),
        "{after:?} vs {pooled:?}"
    );
    // The first build, which no template names now, went with its image:
    // its spec builds afresh, it is not handed a destroyed image.
    let (_, images) = app
        .call(Method::GET, "/v1/snapshots", Some(app.admin()), None)
        .await;
    assert_eq!(images.as_array().map(Vec::len), Some(1), "{images}");
    let (status, again) = put(json!({ "name": "tpl-old", "env": { "A": "1" } })).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(built(&app, "tpl-old").await, "ready");
    // Deleting the template empties its pool.
    let (status, _) = app
        .call(Method::DELETE, "/v1/templates/tpl", Some(app.admin()), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    app.sandboxes().fill_pool().await;
    assert!(app.sandboxes().warm_pools().is_empty());
    assert!(pooled_ids(&app).await.is_empty());
}

#[tokio::test]
async fn a_template_build_is_out_of_its_posters_reach_and_bounded_per_token() {
    let app = TestApp::start().await;
    let writer = app.token(&["repo:write"], None).await;
    let other = app.token(&["repo:write"], None).await;
    let put = |token: &str, spec: Value| {
        let token = token.to_owned();
        let app = &app;
        async move {
            app.call(Method::POST, "/v1/templates", Some(&token), Some(spec))
                .await
        }
    };
    app.backend
        .respond(|call| call.script().contains("step-one").then(|| Reply::ok("")));
    // Held in its `run` step.
    let gate = app
        .backend
        .hold_exec(|call| call.argv.join(" ").contains("step-one"));
    let (status, _) = put(
        &writer.secret,
        json!({ "name": "mine", "run": ["echo step-one"] }),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    gate.arrived(1).await;
    let builds = app
        .state
        .store
        .vms_created_by(crate::templates::BUILD_ACTOR)
        .await
        .expect("store");
    assert_eq!(builds.len(), 1, "the build runs in a sandbox of its own");
    let build = builds[0].id.clone();
    // The poster cannot see it, exec in it or snapshot it: a build other
    // tokens' templates may share is nobody's to reach into.
    let (ids, _) = page(&app, &writer.secret, "/v1/vms").await;
    assert!(ids.is_empty(), "{ids:?}");
    for (method, path, body) in [
        (
            Method::POST,
            format!("/v1/vms/{build}/exec"),
            Some(json!({ "command": "true" })),
        ),
        (
            Method::POST,
            format!("/v1/vms/{build}/snapshots"),
            Some(json!({})),
        ),
        (Method::DELETE, format!("/v1/vms/{build}"), None),
    ] {
        let (status, body) = app.call(method, &path, Some(&writer.secret), body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }

    // Bounds: builds running at once, another token's template, pools,
    // the reserved name.
    let (status, _) = put(
        &writer.secret,
        json!({ "name": "mine-2", "run": ["echo step-one two"] }),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, body) = put(
        &writer.secret,
        json!({ "name": "mine-3", "run": ["echo three"] }),
    )
    .await;
    assert_error(status, &body, StatusCode::TOO_MANY_REQUESTS, "quota");
    let (status, body) = put(
        &other.secret,
        json!({ "name": "mine", "run": ["echo theirs"] }),
    )
    .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    let (status, body) = put(&other.secret, json!({ "name": "pooled", "pool": 3 })).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let (status, body) = put(&other.secret, json!({ "name": "default" })).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    gate.open();
    assert_eq!(built(&app, "mine").await, "ready");
    assert_eq!(built(&app, "mine-2").await, "ready");
    assert!(
        app.state
            .store
            .vms_created_by(crate::templates::BUILD_ACTOR)
            .await
            .expect("store")
            .is_empty(),
        "build sandboxes are destroyed"
    );
    let (_, view) = app
        .call(Method::GET, "/v1/templates/mine", Some(&other.secret), None)
        .await;
    assert_eq!(
        view["spec"]["run"],
        json!(["echo step-one"]),
        "unchanged by another token"
    );
}

#[tokio::test]
async fn pipelines_start_only_from_templates_a_forge_admin_made() {
    let app = TestApp::start().await;
    app.repo("acme/app").await;
    let writer = app.token(&["repo:write"], None).await;
    let limited_admin = app.token(&["admin"], Some("acme/app")).await;
    for (token, name) in [
        (app.admin().to_owned(), "by-admin"),
        (writer.secret.clone(), "by-writer"),
        (limited_admin.secret.clone(), "by-repo-admin"),
    ] {
        let (status, body) = app
            .call(
                Method::POST,
                "/v1/templates",
                Some(&token),
                Some(json!({ "name": name, "env": { "BY": name } })),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    let store = &app.state.store;
    assert!(
        crate::templates::check_pipeline_template(store, "by-admin")
            .await
            .is_ok()
    );
    for name in ["by-writer", "by-repo-admin", "missing"] {
        let refused = crate::templates::check_pipeline_template(store, name).await;
        assert!(refused.is_err(), "{name}");
    }
}
