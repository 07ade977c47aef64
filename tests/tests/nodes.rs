//! Sandbox nodes end to end: a control plane (`forge serve`) and two
//! `forge node run` processes on this host, each with its own data and
//! sandbox directories and loopback port, on the container backend.
//! Creates go by available memory, exec and fork through the control plane
//! reach the node holding the VM, a node killed with SIGKILL is marked
//! lost (creates avoid it, its VMs become `lost`), and a node that comes
//! back (with a new key and certificate) serves its VMs again, `running`. One node serves
//! TLS, pinned by the control plane. Three more nodes, each in a network
//! namespace of its own joined to the host by a veth (as on three hosts),
//! serve TLS on their own addresses and take VMs by available memory;
//! exec, a terminal, a dev server's port and fork through the control
//! plane reach them.

#[path = "common/terminal.rs"]
mod terminal;

use std::time::Duration;

use e2e::{S3Server, TestForge, TestNode, eventually, holder, require_sandboxes};
use serde_json::{Value, json};

/// A dev server answering every request on port 3000.
const DEV_SERVER: &str =
    r#"bun -e 'Bun.serve({ port: 3000, fetch() { return new Response("served on a node"); } })'"#;

fn create(forge: &TestForge) -> String {
    let vm = forge.admin("POST", "/v1/vms", Some(json!({})));
    vm["id"].as_str().expect("a VM id").to_owned()
}

fn exec(forge: &TestForge, id: &str, script: &str) -> (u16, Value) {
    forge.call(
        Some(&forge.admin_token),
        "POST",
        &format!("/v1/vms/{id}/exec"),
        Some(json!({ "command": script })),
    )
}

/// Writes `marker` to a file of VM `id` and starts a counter in it, a
/// process that writes a higher number every 50 ms; returns its count.
fn start_counting(forge: &TestForge, id: &str, marker: &str) -> u64 {
    let counting = format!(
        "echo {marker} > /root/kept; \
         setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /root/n.new; mv /root/n.new /root/n; sleep 0.05; done' \
         </dev/null >/dev/null 2>&1 & sleep 0.5; cat /root/n"
    );
    let (status, ran) = exec(forge, id, &counting);
    assert_eq!(status, 200, "{ran}");
    ran["stdout"]
        .as_str()
        .unwrap_or("")
        .trim()
        .parse()
        .expect("a count")
}

/// Checks that VM `id` still has its `marker` file and that its counter
/// goes on from `before`: its disk and its processes were kept.
fn counts_on(forge: &TestForge, id: &str, marker: &str, before: u64) {
    let (status, ran) = exec(forge, id, "cat /root/kept; sleep 0.3; cat /root/n");
    assert_eq!(status, 200, "{ran}");
    let out = ran["stdout"].as_str().unwrap_or("").to_owned();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some(marker), "{out}");
    let after: u64 = lines.next().unwrap_or("").trim().parse().expect("a count");
    assert!(after > before, "the counter goes on from {before}: {after}");
}

fn pause_to_disk(forge: &TestForge, id: &str) {
    forge.admin(
        "POST",
        &format!("/v1/vms/{id}/pause"),
        Some(json!({ "to_disk": true })),
    );
}

/// Waits until the API shows VM `id` in `state`.
fn vm_state_becomes(forge: &TestForge, id: &str, state: &str) {
    eventually(Duration::from_secs(30), &format!("VM {id} {state}"), || {
        let vm = forge.admin("GET", &format!("/v1/vms/{id}"), None);
        if vm["state"] == state {
            Ok(())
        } else {
            Err(vm)
        }
    });
}

#[test]
fn vms_are_placed_on_nodes_reached_through_the_control_plane_and_a_dead_node_is_lost() {
    if !require_sandboxes() {
        return;
    }
    let forge = TestForge::builder().with_sandboxes(8).start();
    // 512 MiB VMs: a offers 1536, b 1024. First a (1536 > 1024), then b
    // (1024 each, b holds fewer), then a (1024 > 512). b serves TLS, as a
    // node beyond loopback does; the control plane pins its certificate.
    let a = TestNode::start(&forge, "a", 1536);
    let mut b = TestNode::start_tls(&forge, "b", 1024);
    a.wait_up(&forge);
    b.wait_up(&forge);

    let ids: Vec<String> = (0..3).map(|_| create(&forge)).collect();
    let placed: Vec<&str> = ids
        .iter()
        .map(|id| match (a.holds(id), b.holds(id)) {
            (true, false) => "a",
            (false, true) => "b",
            _ => "?",
        })
        .collect();
    assert_eq!(placed, ["a", "b", "a"]);
    assert!(
        !forge
            .sandbox_dir()
            .expect("the control plane's sandboxes")
            .join("sandboxes")
            .join(&ids[0])
            .exists(),
        "nothing runs on the control plane's host"
    );

    // Exec through the control plane runs on the node: a file written
    // there is in the node's sandbox.
    let (status, ran) = exec(&forge, &ids[1], "echo on-b > /tmp/where; cat /tmp/where");
    assert_eq!(status, 200, "{ran}");
    assert_eq!(ran["stdout"], "on-b\n", "{ran}");
    let (status, ran) = exec(&forge, &ids[1], "exit 3");
    assert_eq!((status, ran["exit_code"].as_i64()), (200, Some(3)), "{ran}");

    // A fork stays on its parent's node, with its files.
    let forked = forge.admin(
        "POST",
        &format!("/v1/vms/{}/fork", ids[1]),
        Some(json!({ "count": 1 })),
    );
    let copy = forked["forks"][0]["id"]
        .as_str()
        .expect("a copy")
        .to_owned();
    assert!(b.holds(&copy), "the copy is on b");
    let (status, ran) = exec(&forge, &copy, "cat /tmp/where");
    assert_eq!(
        (status, ran["stdout"].as_str()),
        (200, Some("on-b\n")),
        "{ran}"
    );

    let nodes = forge.admin("GET", "/v1/nodes", None);
    let b_listed = nodes
        .as_array()
        .and_then(|all| all.iter().find(|n| n["name"] == "b"))
        .expect("b is listed");
    assert_eq!(b_listed["sandboxes"], 2, "{b_listed}");
    assert_eq!(b_listed["committed_mib"], 1024, "{b_listed}");
    let pin = b_listed["tls_sha256"]
        .as_str()
        .expect("b serves TLS")
        .to_owned();

    // b dies: after its reports stop it is lost, its VMs fail saying so,
    // and new VMs go to a although a has less available.
    b.kill();
    b.wait_state(&forge, "lost", Duration::from_secs(30));
    for id in [&ids[1], &copy] {
        vm_state_becomes(&forge, id, "lost");
    }
    let (status, failed) = exec(&forge, &ids[1], "true");
    assert_eq!(status, 503, "{failed}");
    let message = failed["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("b") && message.contains("lost"),
        "{message}"
    );
    let fourth = create(&forge);
    assert!(a.holds(&fourth), "a new VM avoids the lost node");

    // b comes back with a new key and certificate: the control plane
    // reaches its VMs again, pinning the new one.
    b.restart();
    b.wait_up(&forge);
    for id in [&ids[1], &copy] {
        vm_state_becomes(&forge, id, "running");
    }
    let nodes = forge.admin("GET", "/v1/nodes", None);
    let b_listed = nodes
        .as_array()
        .and_then(|all| all.iter().find(|n| n["name"] == "b"))
        .expect("b is listed");
    assert_ne!(
        b_listed["tls_sha256"].as_str(),
        Some(pin.as_str()),
        "{b_listed}"
    );
    let (status, ran) = exec(&forge, &ids[1], "cat /tmp/where");
    assert_eq!(
        (status, ran["stdout"].as_str()),
        (200, Some("on-b\n")),
        "{ran}"
    );

    for id in ids.iter().chain([&copy, &fourth]) {
        forge.admin("DELETE", &format!("/v1/vms/{id}"), None);
    }
    assert!(
        !b.holds(&ids[1]) && !a.holds(&ids[0]),
        "deleted on their nodes"
    );
    forge.admin("DELETE", "/v1/nodes/b", None);
}

#[test]
fn nodes_on_networks_of_their_own_take_vms_by_memory_and_a_killed_one_is_avoided() {
    if !require_sandboxes() {
        return;
    }
    let forge = TestForge::builder()
        .listen_everywhere()
        .with_sandboxes(8)
        .start();
    // 512 MiB VMs; a offers 1536, b 1024, c 2048. c (2048 available), a
    // (1536, as much as c, and a holds fewer), c (1536), then b (1024 each,
    // b holds none).
    let a = TestNode::start_in_netns(&forge, "a", 1536);
    let b = TestNode::start_in_netns(&forge, "b", 1024);
    let mut c = TestNode::start_in_netns(&forge, "c", 2048);
    for node in [&a, &b, &c] {
        node.wait_up(&forge);
    }
    // Each serves on its own namespace's address, in TLS.
    let listed = forge.admin("GET", "/v1/nodes", None);
    for node in [&a, &b, &c] {
        let row = listed
            .as_array()
            .and_then(|all| all.iter().find(|n| n["name"] == node.name.as_str()))
            .expect("listed");
        assert_eq!(row["address"], node.address.as_str(), "{row}");
        assert!(!node.address.starts_with("127."), "{row}");
        assert!(row["tls_sha256"].is_string(), "{row}");
    }

    // The first runs a dev server (the forge's supervisor starts it through
    // the node), the rest nothing.
    let served = forge.admin(
        "POST",
        "/v1/vms",
        Some(json!({ "dev_server": { "command": DEV_SERVER, "port": 3000 } })),
    );
    let served = served["id"].as_str().expect("a VM id").to_owned();
    let ids: Vec<String> = std::iter::once(served)
        .chain((1..4).map(|_| create(&forge)))
        .collect();
    let nodes = [&a, &b, &c];
    let placed: Vec<&str> = ids.iter().map(|id| holder(&nodes, id)).collect();
    assert_eq!(placed, ["c", "a", "c", "b"]);
    // Its port, through the control plane: a connection to the VM on c.
    let preview = format!("{}/v1/vms/{}/ports/3000/", forge.url, ids[0]);
    eventually(Duration::from_secs(60), "the dev server on c", || {
        let answer = reqwest::blocking::Client::new()
            .get(&preview)
            .bearer_auth(&forge.admin_token)
            .send()
            .and_then(|response| Ok((response.status().as_u16(), response.text()?)));
        match answer {
            Ok((200, body)) if body == "served on a node" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    // Exec through the control plane runs on the node holding the VM.
    for (id, node) in ids.iter().zip(&placed) {
        let (status, ran) = exec(
            &forge,
            id,
            &format!("echo on-{node} > /tmp/where; cat /tmp/where"),
        );
        assert_eq!(status, 200, "{ran}");
        assert_eq!(ran["stdout"], format!("on-{node}\n"), "{ran}");
    }
    // A terminal through the control plane is a shell on the node: the
    // file written there is there.
    let seen = terminal::run_in_shell(&forge, &ids[1], "cat /tmp/where");
    assert!(seen.iter().any(|line| line == "on-a"), "{seen:?}");
    // A fork stays on its parent's node, with its files: b has room for
    // exactly one copy, and none for two more.
    let forked = forge.admin(
        "POST",
        &format!("/v1/vms/{}/fork", ids[3]),
        Some(json!({ "count": 1 })),
    );
    let copy = forked["forks"][0]["id"]
        .as_str()
        .expect("a copy")
        .to_owned();
    assert_eq!(holder(&nodes, &copy), "b");
    let (status, ran) = exec(&forge, &copy, "cat /tmp/where");
    assert_eq!((status, ran["stdout"].as_str()), (200, Some("on-b\n")));
    let (status, refused) = forge.call(
        Some(&forge.admin_token),
        "POST",
        &format!("/v1/vms/{}/fork", ids[3]),
        Some(json!({ "count": 1 })),
    );
    assert_eq!(status, 503, "{refused}");
    assert!(refused.to_string().contains("is full"), "{refused}");

    // c dies (SIGKILL): its VMs are lost, and a new VM goes to a although
    // c had the most memory available.
    c.kill();
    c.wait_state(&forge, "lost", Duration::from_secs(30));
    for id in [&ids[0], &ids[2]] {
        vm_state_becomes(&forge, id, "lost");
    }
    let after = create(&forge);
    assert_eq!(
        holder(&[&a, &b, &c], &after),
        "a",
        "a new VM avoids the lost node"
    );
    for id in [&ids[1], &ids[3], &copy, &after] {
        forge.admin("DELETE", &format!("/v1/vms/{id}"), None);
    }
}

/// A VM paused to disk on one node moves to the other through the control
/// plane (`POST /v1/vms/{id}/move`) and runs there with its files and its
/// processes (a counter that goes on counting); the old node's copy is
/// gone. A running VM does not move, and neither does one to its own node.
#[test]
fn a_vm_paused_to_disk_moves_to_another_node_and_runs_on() {
    if !require_sandboxes() {
        return;
    }
    let forge = TestForge::builder().with_sandboxes(8).start();
    let a = TestNode::start(&forge, "a", 2048);
    let b = TestNode::start_tls(&forge, "b", 1024);
    a.wait_up(&forge);
    b.wait_up(&forge);
    let id = create(&forge);
    assert_eq!(holder(&[&a, &b], &id), "a");
    let before = start_counting(&forge, &id, "moved-along");

    let (status, refused) = forge.call(
        Some(&forge.admin_token),
        "POST",
        &format!("/v1/vms/{id}/move"),
        Some(json!({ "node": "b" })),
    );
    assert_eq!(status, 409, "a running VM does not move: {refused}");
    pause_to_disk(&forge, &id);
    let (status, refused) = forge.call(
        Some(&forge.admin_token),
        "POST",
        &format!("/v1/vms/{id}/move"),
        Some(json!({ "node": "a" })),
    );
    assert_eq!(status, 400, "not to its own node: {refused}");
    let moved = forge.admin("POST", &format!("/v1/vms/{id}/move"), Some(json!({})));
    assert_eq!(moved["node"], "b", "{moved}");
    assert_eq!(moved["state"], "running", "{moved}");
    assert_eq!(holder(&[&a, &b], &id), "b", "the old copy is gone from a");
    counts_on(&forge, &id, "moved-along", before);
    // CRIU is part of the host's setup: memory and processes move too.
    assert_eq!(
        moved["kept"],
        json!(["disk", "memory", "processes"]),
        "{moved}"
    );
    forge.admin("DELETE", &format!("/v1/vms/{id}"), None);
}

/// With a snapshot store (`--snapshot-store`, an S3 server here), a VM
/// paused to disk on a node is uploaded there, and the API shows its size.
/// When that node is killed with SIGKILL, a VM running there is `lost`, the
/// paused one is not: its resume brings it up on the other node from the
/// stored copy, with its files and its processes (a counter that goes on
/// counting), and the stored object is removed once it runs. An object
/// changed in the bucket is refused, and nothing lands.
#[test]
fn a_vm_paused_to_disk_on_a_node_that_dies_resumes_on_another_from_the_snapshot_store() {
    if !require_sandboxes() {
        return;
    }
    let s3 = S3Server::start();
    let mut builder = TestForge::builder().with_sandboxes(8);
    for (key, value) in s3.forge_env("kept") {
        builder = builder.env(key, &value);
    }
    let forge = builder.start();
    let mut a = TestNode::start(&forge, "a", 2048);
    let b = TestNode::start(&forge, "b", 1024);
    a.wait_up(&forge);
    b.wait_up(&forge);
    // 512 MiB each: a has the most free for both.
    let id = create(&forge);
    let running = create(&forge);
    assert_eq!(holder(&[&a, &b], &id), "a");
    assert_eq!(holder(&[&a, &b], &running), "a");
    let before = start_counting(&forge, &id, "stored-along");
    pause_to_disk(&forge, &id);
    eventually(Duration::from_secs(60), "the snapshot stored", || {
        let vm = forge.admin("GET", &format!("/v1/vms/{id}"), None);
        match vm["stored_bytes"].as_i64() {
            Some(bytes) if bytes > 0 => Ok(()),
            _ => Err(vm),
        }
    });
    let stored = s3.objects(&format!("kept/{id}/"));
    assert_eq!(stored.len(), 1, "one object for its one pause: {stored:?}");

    a.kill();
    // Resumed elsewhere once its node is seen lost (no report for 10 s),
    // not when a call to it merely fails.
    a.wait_state(&forge, "lost", Duration::from_secs(30));
    vm_state_becomes(&forge, &running, "lost");
    let vm = forge.admin("GET", &format!("/v1/vms/{id}"), None);
    assert_eq!(vm["state"], "paused_to_disk", "kept, not lost: {vm}");

    // Someone with access to the bucket changes the object: the resume
    // fails, nothing is left on b, and the VM is as it was.
    let original = s3.get(&stored[0]);
    let mut changed = original.clone();
    let middle = changed.len() / 2;
    changed[middle] ^= 0x5a;
    s3.put(&stored[0], changed);
    let (status, refused) = forge.call(
        Some(&forge.admin_token),
        "POST",
        &format!("/v1/vms/{id}/resume"),
        None,
    );
    assert_ne!(status, 200, "a changed copy is refused: {refused}");
    assert!(!b.holds(&id), "nothing of it stays on b");
    let vm = forge.admin("GET", &format!("/v1/vms/{id}"), None);
    assert_eq!(vm["state"], "paused_to_disk", "{vm}");
    assert!(vm["stored_bytes"].as_i64().is_some(), "still stored: {vm}");
    s3.put(&stored[0], original);

    let resumed = forge.admin("POST", &format!("/v1/vms/{id}/resume"), None);
    assert_eq!(resumed["state"], "running", "{resumed}");
    assert_eq!(
        resumed["kept"],
        json!(["disk", "memory", "processes"]),
        "{resumed}"
    );
    assert!(b.holds(&id), "it runs on b now");
    counts_on(&forge, &id, "stored-along", before);
    let vm = forge.admin("GET", &format!("/v1/vms/{id}"), None);
    assert!(vm.get("stored_bytes").is_none(), "running: {vm}");
    assert_eq!(
        s3.objects(&format!("kept/{id}/")),
        Vec::<String>::new(),
        "the stored copy is removed once it runs"
    );
    forge.admin("DELETE", &format!("/v1/vms/{id}"), None);
}

/// Copies stay beside their parent: a fork of a VM paused to disk on a
/// node without room for it and its copies moves it first to a node with
/// room, where it runs on (files and processes) beside its copies. With no
/// node having room, the fork is refused and the VM stays paused.
#[test]
fn a_fork_of_a_vm_paused_on_a_full_node_moves_it_where_the_copies_fit() {
    if !require_sandboxes() {
        return;
    }
    let forge = TestForge::builder().with_sandboxes(8).start();
    let a = TestNode::start(&forge, "a", 1024);
    a.wait_up(&forge);
    let id = create(&forge);
    let before = start_counting(&forge, &id, "forked-along");
    let b = TestNode::start(&forge, "b", 2048);
    b.wait_up(&forge);
    pause_to_disk(&forge, &id);

    // Five copies and it: 3 GiB, more than any node has.
    let (status, refused) = forge.call(
        Some(&forge.admin_token),
        "POST",
        &format!("/v1/vms/{id}/fork"),
        Some(json!({ "count": 5 })),
    );
    assert_eq!(status, 503, "{refused}");
    assert!(
        refused.to_string().contains("no other up node"),
        "{refused}"
    );
    assert_eq!(holder(&[&a, &b], &id), "a");
    vm_state_becomes(&forge, &id, "paused_to_disk");

    // Two copies and it: 1536 MiB, which a (1024) lacks and b has.
    let forked = forge.admin(
        "POST",
        &format!("/v1/vms/{id}/fork"),
        Some(json!({ "count": 2 })),
    );
    let copies: Vec<String> = forked["forks"]
        .as_array()
        .expect("forks")
        .iter()
        .map(|fork| fork["id"].as_str().expect("an id").to_owned())
        .collect();
    assert_eq!(copies.len(), 2, "{forked}");
    assert_eq!(holder(&[&a, &b], &id), "b", "the parent moved");
    for copy in &copies {
        assert_eq!(holder(&[&a, &b], copy), "b", "copies stay beside it");
    }
    counts_on(&forge, &id, "forked-along", before);
    for vm in copies.iter().chain([&id]) {
        forge.admin("DELETE", &format!("/v1/vms/{vm}"), None);
    }
}
