//! Sandbox nodes through the API: adding one (its token once, hashed at
//! rest), its reports, placement of new VMs on the node with the most
//! memory available, routing of a VM's operations to its node, a lost
//! node (its VMs `lost`, found again when it reports), TLS pinned to the
//! reported certificate, strays (sandboxes on a node that nothing records)
//! collected after a grace, and removal. Each node is a real `sandbox::remote::serve` on a
//! loopback port in front of an in-memory backend.

use std::collections::BTreeMap;

use axum::http::{Method, StatusCode};
use sandbox::testing::MemorySandboxes;
use serde_json::{Value, json};

use super::assert_error;
use crate::testing::TestApp;

/// A node serving an in-memory backend: its backend, address, key and,
/// when it serves TLS, its certificate's SHA-256.
struct Node {
    backend: MemorySandboxes,
    address: String,
    key: String,
    tls_sha256: Option<String>,
}

async fn serve_node(name: &str) -> Node {
    serve_node_with(name, None).await
}

async fn serve_node_with(name: &str, tls: Option<sandbox::remote::NodeIdentity>) -> Node {
    // Ids apart from the control plane's host's and every other node's.
    let first = name
        .bytes()
        .fold(1u64, |h, b| h.wrapping_mul(131).wrapping_add(u64::from(b)));
    let backend = MemorySandboxes::new().ids_from((first & 0xffff) << 24);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let key = format!("key-of-{name}");
    let served: std::sync::Arc<dyn sandbox::Backend> = std::sync::Arc::new(backend.clone());
    let image = sandbox::Image::root("/node-image");
    let tls_sha256 = tls.as_ref().map(|id| id.fingerprint().to_owned());
    let served_key = key.clone();
    tokio::spawn(async move {
        match tls {
            Some(identity) => {
                sandbox::remote::serve_tls(served, image, served_key, listener, &identity).await
            }
            None => sandbox::remote::serve(served, image, served_key, listener).await,
        }
    });
    Node {
        backend,
        address,
        key,
        tls_sha256,
    }
}

fn report(node: &Node, memory_mib: u64) -> Value {
    json!({
        "address": node.address,
        "key": node.key,
        "tls_sha256": node.tls_sha256,
        "backend": "container",
        "labels": {"zone": "a"},
        "memory_bytes": memory_mib << 20,
        "free_memory_bytes": memory_mib << 20,
        "vcpus": 4,
        "disk_bytes": 100u64 << 30,
        "free_disk_bytes": 50u64 << 30,
    })
}

/// `node`'s report with `memory_mib`, sent with `token`; must be taken.
async fn report_as(app: &TestApp, token: &str, node: &Node, memory_mib: u64) -> Value {
    report_as_value(app, token, report(node, memory_mib)).await
}

async fn report_as_value(app: &TestApp, token: &str, report: Value) -> Value {
    app.expect(
        StatusCode::OK,
        Method::POST,
        "/v1/nodes/report",
        Some(token),
        Some(report),
    )
    .await
}

/// `echo WORD` in VM `id` through the API, answered by `node`'s backend:
/// the exec's answer, its output checked.
async fn echo_on(app: &TestApp, node: &Node, id: &str, word: &str) -> Value {
    let script = format!("echo {word}");
    node.backend.respond_to(
        script.clone(),
        sandbox::testing::Reply::ok(format!("{word}\n")),
    );
    let ran = app
        .expect(
            StatusCode::OK,
            Method::POST,
            &format!("/v1/vms/{id}/exec"),
            Some(app.admin()),
            Some(json!({ "command": script })),
        )
        .await;
    assert_eq!(ran["stdout"], format!("{word}\n"), "{ran}");
    ran
}

/// Asserts a `503 unavailable` answer whose message says `words`.
fn assert_unavailable(status: StatusCode, body: &Value, words: &str) {
    assert_error(status, body, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(words), "{words:?} not in {message:?}");
}

async fn add(app: &TestApp, name: &str) -> String {
    let made = add_with(app, json!({ "name": name })).await;
    made["token"].as_str().expect("the token, once").to_owned()
}

/// Adds a node as `request` asks; the new node, with its token.
async fn add_with(app: &TestApp, request: Value) -> Value {
    let made = app
        .expect(
            StatusCode::CREATED,
            Method::POST,
            "/v1/nodes",
            Some(app.admin()),
            Some(request),
        )
        .await;
    assert_eq!(made["state"], "new");
    made
}

async fn nodes(app: &TestApp) -> BTreeMap<String, Value> {
    let listed = app
        .expect(
            StatusCode::OK,
            Method::GET,
            "/v1/nodes",
            Some(app.admin()),
            None,
        )
        .await;
    listed
        .as_array()
        .expect("a list")
        .iter()
        .map(|n| (n["name"].as_str().expect("name").to_owned(), n.clone()))
        .collect()
}

#[tokio::test]
async fn a_node_is_added_once_reports_with_its_own_token_and_is_listed_without_it() {
    let app = TestApp::start().await;
    let token = add(&app, "n1").await;
    let (status, body) = app
        .call(
            Method::POST,
            "/v1/nodes",
            Some(app.admin()),
            Some(json!({ "name": "n1" })),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    // `report` is the reports' route: such a node could not be removed.
    for bad in ["", "N1", "a_b", &"x".repeat(64), "report"] {
        let (status, body) = app
            .call(
                Method::POST,
                "/v1/nodes",
                Some(app.admin()),
                Some(json!({ "name": bad })),
            )
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    }
    // Stored as a hash only.
    let stored: Vec<(String,)> = sqlx::query_as("SELECT token_hash FROM nodes")
        .fetch_all(app.state.store.test_pool())
        .await
        .expect("query");
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0].0, token);
    assert_eq!(stored[0].0, crate::auth::hash_secret(&token));

    let node = serve_node("n1").await;
    // The admin's token is no node's.
    let (status, body) = app
        .call(
            Method::POST,
            "/v1/nodes/report",
            Some(app.admin()),
            Some(report(&node, 4096)),
        )
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    // Not an address, or one the control plane must not dial: no host,
    // many, or a link-local service (a cloud's metadata endpoint).
    for address in [
        "not an address",
        "0.0.0.0:7100",
        "169.254.169.254:80",
        "[fe80::1]:7100",
        "224.0.0.1:7100",
        "[::ffff:169.254.169.254]:80",
    ] {
        let mut bad = report(&node, 4096);
        bad["address"] = json!(address);
        let (status, body) = app
            .call(Method::POST, "/v1/nodes/report", Some(&token), Some(bad))
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    }
    let answer = report_as(&app, &token, &node, 4096).await;
    assert_eq!(answer["node"], "n1");
    let listed = &nodes(&app).await["n1"];
    assert_eq!(listed["state"], "up", "{listed}");
    assert_eq!(listed["address"], node.address.as_str());
    assert_eq!(listed["memory_bytes"], 4096u64 << 20);
    assert_eq!(listed["available_mib"], 4096);
    assert_eq!(listed["labels"]["zone"], "a");
    assert!(listed.get("token").is_none(), "{listed}");
    assert!(listed.get("key").is_none(), "{listed}");
    assert!(!listed.to_string().contains(&node.key), "{listed}");
}

#[tokio::test]
async fn vms_go_to_the_node_with_the_most_memory_and_their_operations_follow() {
    let app = TestApp::start().await;
    let big = serve_node("big").await;
    let small = serve_node("small").await;
    let big_token = add(&app, "big").await;
    let small_token = add(&app, "small").await;
    for (node, token, mib) in [(&big, &big_token, 2048), (&small, &small_token, 1024)] {
        report_as(&app, token, node, mib).await;
    }
    // 512 MiB each (the default): big has 2048, small 1024 available, so
    // big, big (1024 left, as many as small, fewer sandboxes there wins
    // the tie), small, then either.
    let mut placed = Vec::new();
    for _ in 0..3 {
        let id = app.vm(app.admin()).await;
        let on = if big.backend.files(&id).is_ok() {
            "big"
        } else if small.backend.files(&id).is_ok() {
            "small"
        } else {
            "nowhere"
        };
        placed.push(on);
        assert!(
            app.backend.files(&id).is_err(),
            "not on the control plane's host"
        );
    }
    assert_eq!(placed, ["big", "big", "small"]);
    let listed = nodes(&app).await;
    assert_eq!(listed["big"]["sandboxes"], 2);
    assert_eq!(listed["big"]["committed_mib"], 1024);
    assert_eq!(listed["big"]["available_mib"], 1024);
    assert_eq!(listed["small"]["sandboxes"], 1);

    // Pause, resume, fork and delete reach the node holding the VM; the
    // copies stay there.
    let id = app.vm(app.admin()).await;
    let node = if big.backend.files(&id).is_ok() {
        &big
    } else {
        &small
    };
    for action in ["pause", "resume"] {
        app.expect(
            StatusCode::OK,
            Method::POST,
            &format!("/v1/vms/{id}/{action}"),
            Some(app.admin()),
            Some(json!({})),
        )
        .await;
    }
    // An exec runs on the node, through the agent tunnel.
    let ran = echo_on(&app, node, &id, "from-node").await;
    assert_eq!(ran["exit_code"], 0, "{ran}");
    assert!(
        app.backend.execs().is_empty(),
        "nothing ran on the control plane's host"
    );
    // A fork the node has no memory for is refused, and nothing is made:
    // copies stay on their parent's node, 512 MiB each.
    let before = node.backend.len();
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/v1/vms/{id}/fork"),
            Some(app.admin()),
            Some(json!({ "count": 2 })),
        )
        .await;
    assert_unavailable(status, &body, "is full");
    assert_unavailable(status, &body, "need 1024 MiB");
    assert_eq!(node.backend.len(), before, "no copy was made");
    // With room (the nodes report more memory), the copies are made there.
    for (node, token) in [(&big, &big_token), (&small, &small_token)] {
        report_as(&app, token, node, 4096).await;
    }
    let forked = app
        .expect(
            StatusCode::CREATED,
            Method::POST,
            &format!("/v1/vms/{id}/fork"),
            Some(app.admin()),
            Some(json!({ "count": 2 })),
        )
        .await;
    let copies: Vec<String> = forked["forks"]
        .as_array()
        .expect("copies")
        .iter()
        .map(|c| c["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(copies.len(), 2, "{forked}");
    for copy in &copies {
        assert!(
            node.backend.files(copy).is_ok(),
            "a copy stays on its parent's node"
        );
    }
    // A node that holds VMs is not removed.
    let (status, body) = app
        .call(Method::DELETE, "/v1/nodes/big", Some(app.admin()), None)
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    app.expect(
        StatusCode::NO_CONTENT,
        Method::DELETE,
        &format!("/v1/vms/{id}"),
        Some(app.admin()),
        None,
    )
    .await;
    assert!(node.backend.files(&id).is_err(), "deleted on its node");
}

#[tokio::test]
async fn a_lost_node_gets_no_vm_its_vms_are_lost_and_found_again_when_it_reports() {
    let app = TestApp::start().await;
    let node = serve_node("n1").await;
    let token = add(&app, "n1").await;
    report_as(&app, &token, &node, 4096).await;
    let kept = app.vm(app.admin()).await;
    let gone = app.vm(app.admin()).await;
    assert!(node.backend.files(&kept).is_ok() && node.backend.files(&gone).is_ok());
    // Its last report, long ago.
    sqlx::query("UPDATE nodes SET last_seen_unix = last_seen_unix - 60")
        .execute(app.state.store.test_pool())
        .await
        .expect("age the report");
    assert_eq!(nodes(&app).await["n1"]["state"], "lost");
    let (status, body) = app
        .call(Method::POST, "/v1/vms", Some(app.admin()), Some(json!({})))
        .await;
    assert_unavailable(status, &body, "none is up");
    // Before the watch has seen it, an operation finds it lost.
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/v1/vms/{kept}/pause"),
            Some(app.admin()),
            Some(json!({})),
        )
        .await;
    assert_unavailable(status, &body, "is lost");
    // The watch marks its VMs lost, not restarted anywhere.
    app.sandboxes().watch_nodes().await.expect("watch");
    assert_eq!(app.vm_state(&kept).await, "lost");
    assert_eq!(app.vm_state(&gone).await, "lost");
    assert!(
        app.backend.is_empty(),
        "nothing restarted on the control plane"
    );
    for action in ["exec", "pause", "resume"] {
        let body = if action == "exec" {
            json!({ "command": "true" })
        } else {
            json!({})
        };
        let (status, answer) = app
            .call(
                Method::POST,
                &format!("/v1/vms/{kept}/{action}"),
                Some(app.admin()),
                Some(body),
            )
            .await;
        assert_unavailable(status, &answer, "is lost");
    }

    // While away, one of them went (the node's host rebooted, say).
    sandbox::Backend::destroy(&node.backend, &gone)
        .await
        .expect("gone from the node");
    // Reporting again: creates go there, and the watch finds its VMs as
    // the node has them.
    report_as(&app, &token, &node, 4096).await;
    app.vm(app.admin()).await;
    app.sandboxes().watch_nodes().await.expect("watch");
    assert_eq!(app.vm_state(&kept).await, "running");
    assert_eq!(app.vm_state(&gone).await, "crashed");
    echo_on(&app, &node, &kept, "back").await;
    // Each change is an event, once.
    let kept_kinds = super::fleet::kinds_of(&app, &kept).await;
    assert_eq!(kept_kinds[1..], ["sandbox.lost", "sandbox.found"]);
    let gone_kinds = super::fleet::kinds_of(&app, &gone).await;
    assert_eq!(
        gone_kinds[1..],
        ["sandbox.lost", "sandbox.found", "sandbox.crashed"]
    );
}

#[tokio::test]
async fn without_nodes_vms_run_on_the_control_planes_host_and_a_removed_node_stops_reporting() {
    let app = TestApp::start().await;
    let id = app.vm(app.admin()).await;
    assert!(app.backend.files(&id).is_ok());
    let token = add(&app, "n1").await;
    app.expect(
        StatusCode::NO_CONTENT,
        Method::DELETE,
        "/v1/nodes/n1",
        Some(app.admin()),
        None,
    )
    .await;
    let node = serve_node("n1").await;
    let (status, body) = app
        .call(
            Method::POST,
            "/v1/nodes/report",
            Some(&token),
            Some(report(&node, 4096)),
        )
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn a_node_beyond_loopback_is_reached_only_in_tls_with_the_certificate_it_reported() {
    let app = TestApp::start().await;
    let identity = sandbox::remote::NodeIdentity::generate().expect("a TLS identity");
    let node = serve_node_with("secure", Some(identity)).await;
    let token = add(&app, "secure").await;
    let mut bad = report(&node, 4096);
    bad["tls_sha256"] = json!("not-hex");
    let (status, body) = app
        .call(Method::POST, "/v1/nodes/report", Some(&token), Some(bad))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");

    // Reported with another certificate's SHA-256 (what an impersonator on
    // the node's address would serve): nothing is created there.
    let other = sandbox::remote::NodeIdentity::generate().expect("another identity");
    let mut forged = report(&node, 4096);
    forged["tls_sha256"] = json!(other.fingerprint());
    report_as_value(&app, &token, forged).await;
    let (status, body) = app
        .call(Method::POST, "/v1/vms", Some(app.admin()), Some(json!({})))
        .await;
    assert_unavailable(status, &body, "not the one it reported");
    assert!(node.backend.is_empty());

    // Its own: VMs run there, exec through the tunnel in TLS.
    let listed = report_as(&app, &token, &node, 4096).await;
    assert_eq!(listed["node"], "secure");
    let id = app.vm(app.admin()).await;
    assert!(node.backend.files(&id).is_ok());
    echo_on(&app, &node, &id, "tls").await;
    assert_eq!(
        nodes(&app).await["secure"]["tls_sha256"],
        json!(node.tls_sha256)
    );

    // A node in clear on an address beyond loopback is not dialled: its
    // key would cross the network in clear.
    let clear_token = add(&app, "clear").await;
    let mut clear = report(&node, 8192);
    clear["tls_sha256"] = Value::Null;
    clear["address"] = json!("192.0.2.7:7100");
    report_as_value(&app, &clear_token, clear).await;
    let (status, body) = app
        .call(Method::POST, "/v1/vms", Some(app.admin()), Some(json!({})))
        .await;
    assert_unavailable(status, &body, "without TLS");
}

#[tokio::test]
async fn a_control_plane_without_sandboxes_of_its_own_runs_every_vm_on_a_node() {
    let app = TestApp::builder().nodes_only().start().await;
    let system = app
        .expect(
            StatusCode::OK,
            Method::GET,
            "/v1/system",
            Some(app.admin()),
            None,
        )
        .await;
    assert!(system.to_string().contains("nodes only"), "{system}");
    let (status, body) = app
        .call(Method::POST, "/v1/vms", Some(app.admin()), Some(json!({})))
        .await;
    assert_unavailable(status, &body, "forge node add");
    let (status, body) = app
        .call(Method::GET, "/v1/vms/sb0000", Some(app.admin()), None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");

    let node = serve_node("only").await;
    let token = add(&app, "only").await;
    report_as(&app, &token, &node, 4096).await;
    let id = app.vm(app.admin()).await;
    assert!(node.backend.files(&id).is_ok());
    echo_on(&app, &node, &id, "remote").await;
    assert!(
        app.backend.is_empty(),
        "the control plane's backend is unused"
    );
}

#[tokio::test]
async fn node_labels_choose_among_the_nodes_that_have_them() {
    let app = TestApp::start().await;
    let big = serve_node("big-a").await;
    let small = serve_node("small-b").await;
    let big_token = add(&app, "big-a").await;
    let small_token = add(&app, "small-b").await;
    let mut big_report = report(&big, 8192);
    big_report["labels"] = json!({ "zone": "a" });
    report_as_value(&app, &big_token, big_report).await;
    let mut small_report = report(&small, 1024);
    small_report["labels"] = json!({ "zone": "b", "gpu": "none" });
    report_as_value(&app, &small_token, small_report).await;

    let create = |labels: Value| {
        let app = &app;
        async move {
            app.call(
                Method::POST,
                "/v1/vms",
                Some(app.admin()),
                Some(json!({ "node_labels": labels })),
            )
            .await
        }
    };
    // The smaller node, because only it has the label.
    let (status, made) = create(json!({ "zone": "b" })).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let id = made["id"].as_str().expect("id");
    assert!(
        small.backend.files(id).is_ok(),
        "on the node labelled zone=b"
    );
    // Every node's kind is a label.
    let (status, made) = create(json!({ "backend": "container", "zone": "a" })).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    assert!(big.backend.files(made["id"].as_str().expect("id")).is_ok());
    // None has it: refused saying so, nothing created.
    let (status, body) = create(json!({ "zone": "c" })).await;
    assert_unavailable(status, &body, "zone=c");
    let (status, body) = create(json!({ "bad key!": "x" })).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(big.backend.len() + small.backend.len(), 2);
}

#[tokio::test]
async fn sandboxes_a_node_holds_that_nothing_records_are_destroyed_after_a_grace() {
    let app = TestApp::builder().nodes_only().start().await;
    let node = serve_node("strays").await;
    let token = add(&app, "strays").await;
    report_as(&app, &token, &node, 4096).await;
    let node_id = nodes(&app).await["strays"]["id"]
        .as_str()
        .expect("its id")
        .to_owned();
    let kept = app.vm(app.admin()).await;
    app.expect(
        StatusCode::CREATED,
        Method::POST,
        &format!("/v1/vms/{kept}/snapshots"),
        Some(app.admin()),
        Some(json!({ "name": "kept" })),
    )
    .await;
    let spec = || sandbox::Spec::new(sandbox::Image::root("/node-image"));
    // The control plane died as the node answered a create: no record.
    let unplaced = sandbox::Backend::create(&node.backend, spec())
        .await
        .expect("made on the node")
        .id;
    // It died between placing a sandbox and recording its VM.
    let unrecorded = sandbox::Backend::create(&node.backend, spec())
        .await
        .expect("made on the node")
        .id;
    app.state
        .store
        .place_sandbox(&unrecorded, &node_id)
        .await
        .expect("placed");
    let listed = |backend: &sandbox::testing::MemorySandboxes| {
        let backend = backend.clone();
        async move {
            let mut ids: Vec<String> = sandbox::Backend::list(&backend)
                .await
                .expect("listed")
                .into_iter()
                .map(|info| info.id)
                .collect();
            ids.sort();
            ids
        }
    };
    let before = listed(&node.backend).await;
    assert_eq!(before.len(), 4, "the VM, its snapshot and two strays");

    // Seen once: nothing is destroyed, whatever the grace.
    let strays = app.sandboxes().collect_strays(std::time::Duration::ZERO);
    assert_eq!(strays.await.expect("collected"), Vec::<String>::new());
    // Seen again sooner than the grace: still nothing.
    let strays = app
        .sandboxes()
        .collect_strays(std::time::Duration::from_secs(3600));
    assert_eq!(strays.await.expect("collected"), Vec::<String>::new());
    assert_eq!(listed(&node.backend).await, before);
    // Seen again past it: both strays go, what is recorded stays.
    let strays = app.sandboxes().collect_strays(std::time::Duration::ZERO);
    let mut removed = strays.await.expect("collected");
    removed.sort();
    let mut expected: Vec<String> = [&unplaced, &unrecorded]
        .iter()
        .map(|id| format!("sandbox {id} on node strays that no VM records"))
        .collect();
    expected.sort();
    assert_eq!(removed, expected);
    let after = listed(&node.backend).await;
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(after.contains(&kept), "{after:?}");
    assert!(!after.contains(&unplaced) && !after.contains(&unrecorded));
    let placed = app.state.store.sandbox_node(&unrecorded).await;
    assert_eq!(placed.expect("read"), None, "its placement goes too");
    echo_on(&app, &node, &kept, "kept").await;
    // Nothing more to collect.
    let strays = app.sandboxes().collect_strays(std::time::Duration::ZERO);
    assert_eq!(strays.await.expect("collected"), Vec::<String>::new());
}

/// A hostile node on loopback: every connection gets one answer line,
/// `{"ok": …}` with `answers[op]` for the request's operation (`describe`
/// answers as a container node). Its address and key.
async fn hostile_node(answers: BTreeMap<&'static str, Value>) -> (String, String) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let answers = std::sync::Arc::new(answers);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let answers = answers.clone();
            tokio::spawn(async move {
                let mut stream = tokio::io::BufReader::new(stream);
                let mut line = String::new();
                if stream.read_line(&mut line).await.is_err() {
                    return;
                }
                let request: Value = serde_json::from_str(&line).unwrap_or_default();
                let op = request["op"]["op"].as_str().unwrap_or_default();
                let ok = match op {
                    "describe" => json!({ "backend": "container" }),
                    other => answers.get(other).cloned().unwrap_or(Value::Null),
                };
                let mut answer = json!({ "ok": ok }).to_string();
                answer.push('\n');
                let _ = stream.get_mut().write_all(answer.as_bytes()).await;
            });
        }
    });
    (address, "key-of-the-hostile-node".to_owned())
}

#[tokio::test]
async fn a_node_cannot_claim_the_id_of_a_sandbox_it_does_not_hold() {
    // A VM on the control plane's own host, before any node is added.
    let app = TestApp::start().await;
    let victim = app.vm(app.admin()).await;
    assert!(app.backend.files(&victim).is_ok());

    // A node answers a create with the victim's id, then with ids that
    // are not ids.
    for claimed in [victim.clone(), "../../etc".to_owned(), "x".repeat(65)] {
        let info = json!({ "id": claimed, "backend": "container", "state": "running", "forked_from": null });
        let (address, key) =
            hostile_node(BTreeMap::from([("create", info), ("destroy", Value::Null)])).await;
        let name = format!("hostile-{}", claimed.len());
        let token = add(&app, &name).await;
        let mut hostile = report(
            &Node {
                backend: sandbox::testing::MemorySandboxes::new(),
                address,
                key,
                tls_sha256: None,
            },
            1 << 20,
        );
        hostile["labels"] = json!({ "role": "hostile" });
        report_as_value(&app, &token, hostile).await;
        let (status, body) = app
            .call(
                Method::POST,
                "/v1/vms",
                Some(app.admin()),
                Some(json!({ "node_labels": { "role": "hostile" } })),
            )
            .await;
        assert_unavailable(status, &body, "it answered with");
        app.expect(
            StatusCode::NO_CONTENT,
            Method::DELETE,
            &format!("/v1/nodes/{name}"),
            Some(app.admin()),
            None,
        )
        .await;
    }
    // The victim's operations still reach the host, not the node.
    assert_eq!(
        app.state.store.sandbox_node(&victim).await.expect("read"),
        None
    );
    app.backend
        .respond_to("echo mine", sandbox::testing::Reply::ok("mine\n"));
    let ran = app
        .expect(
            StatusCode::OK,
            Method::POST,
            &format!("/v1/vms/{victim}/exec"),
            Some(app.admin()),
            Some(json!({ "command": "echo mine" })),
        )
        .await;
    assert_eq!(ran["stdout"], "mine\n", "{ran}");
}

#[tokio::test]
async fn labels_and_a_memory_cap_the_admin_sets_outweigh_what_a_node_reports() {
    let app = TestApp::builder().nodes_only().start().await;
    for bad in [
        json!({ "name": "x", "max_memory_mib": 0 }),
        json!({ "name": "x", "labels": { "bad key!": "a" } }),
    ] {
        let (status, body) = app
            .call(Method::POST, "/v1/nodes", Some(app.admin()), Some(bad))
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    }
    let node = serve_node("capped").await;
    let made = add_with(
        &app,
        json!({ "name": "capped", "labels": { "zone": "a" }, "max_memory_mib": 1024 }),
    )
    .await;
    assert_eq!(
        (made["labels_set"].clone(), made["max_memory_mib"].clone()),
        (json!(true), json!(1024))
    );
    let token = made["token"].as_str().expect("its token").to_owned();
    // The node says it is huge, and of another zone and a tenant.
    let mut claim = report(&node, 1 << 30);
    claim["labels"] = json!({ "zone": "b", "tenant": "acme" });
    report_as_value(&app, &token, claim).await;
    let listed = nodes(&app).await["capped"].clone();
    assert_eq!(listed["labels"], json!({ "zone": "a" }), "{listed}");
    assert_eq!(listed["memory_bytes"], 1024u64 << 20, "{listed}");
    assert_eq!(listed["free_memory_bytes"], 1024u64 << 20, "{listed}");
    assert_eq!(listed["available_mib"], 1024, "{listed}");

    // Placement goes by the admin's word: not the tenant's label it
    // claimed, and no more than 1024 MiB of 512 MiB VMs.
    let create = |labels: Value| {
        app.call(
            Method::POST,
            "/v1/vms",
            Some(app.admin()),
            Some(json!({ "node_labels": labels })),
        )
    };
    let (status, body) = create(json!({ "tenant": "acme" })).await;
    assert_unavailable(status, &body, "tenant=acme");
    for _ in 0..2 {
        let (status, body) = create(json!({ "zone": "a" })).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, body) = create(json!({ "zone": "a" })).await;
    assert_unavailable(status, &body, "0 MiB");
    assert_eq!(node.backend.len(), 2);
}
