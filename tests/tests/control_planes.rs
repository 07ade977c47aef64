//! Two control planes (`forge serve --sandbox-backend nodes`) on one
//! PostgreSQL database and one data directory (the shared storage of a
//! deployment behind a load balancer), and three sandbox nodes, each in a
//! network namespace of its own, reporting to both. Exec, fork, a terminal
//! and a move to another node through either control plane reach the node
//! holding the VM;
//! when the control plane holding the duties is killed with SIGKILL while
//! pushes run pipelines and fire webhooks, the other takes the duties up,
//! the nodes report to it, and every push has exactly one run that ends and
//! exactly one webhook delivery that arrives. A VM paused to disk through
//! the survivor, its copy in the snapshot store (an S3 server), comes back
//! on the last node up when its own is killed.

#![allow(clippy::unwrap_used)] // A test that cannot unwrap has failed: say so loudly.

#[path = "common/terminal.rs"]
mod terminal;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api_types::DeliveryState;
use api_types::runs::RunView;
use api_types::webhooks::DeliveryPage;
use e2e::{
    S3Server, TestForge, TestNode, commit_files, eventually, git_ok, holder, require_sandboxes,
    stays, work_repo,
};
use serde_json::json;

/// The line a server logs when it takes the duties up.
const DUTIES: &str = "this server holds the forge's duties";

/// A pipeline step long enough to be running when a control plane dies.
const STEPS: &str = "[[pipeline.steps]]\nname = \"work\"\nrun = \"sleep 3; echo worked\"\n";

/// The `webhook-id` of every webhook request received.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<String>>>);

impl Received {
    /// Answers 200 to every request on a loopback port; returns the URL.
    fn serve(&self) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let received = self.clone();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let (mut id, mut length) = (String::new(), 0);
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 2 {
                    if let Some((name, value)) = line.split_once(':') {
                        match name.to_ascii_lowercase().as_str() {
                            "webhook-id" => id = value.trim().to_owned(),
                            "content-length" => length = value.trim().parse().unwrap_or(0),
                            _ => {}
                        }
                    }
                    line.clear();
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                received.0.lock().unwrap().push(id);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        url
    }

    fn ids(&self) -> BTreeSet<String> {
        self.0.lock().unwrap().iter().cloned().collect()
    }
}

fn exec(forge: &TestForge, id: &str, script: &str) -> String {
    let ran = forge.admin(
        "POST",
        &format!("/v1/vms/{id}/exec"),
        Some(json!({ "command": script })),
    );
    assert_eq!(ran["exit_code"], 0, "{ran}");
    ran["stdout"].as_str().unwrap().to_owned()
}

/// Pushes a commit to a new branch `b<n>` of `acme/app` through
/// `through`; returns the commit.
fn push_branch(work: &std::path::Path, through: &TestForge, n: usize) -> String {
    let branch = format!("b{n}");
    git_ok(work, &["checkout", "--quiet", "-B", &branch]);
    let commit = commit_files(work, &[("n", &format!("{n}\n"))], "a change");
    let url = through.git_url("acme/app", &through.admin_token);
    git_ok(work, &["push", "--quiet", &url, &branch]);
    commit
}

#[test]
#[ignore = "needs PostgreSQL: the postgres tier of scripts/test.sh runs it"]
fn two_control_planes_share_nodes_and_one_killed_mid_work_loses_and_doubles_nothing() {
    assert!(
        std::env::var("FORGE_TEST_DATABASE_URL").is_ok_and(|url| !url.is_empty()),
        "FORGE_TEST_DATABASE_URL names a PostgreSQL cluster (scripts/postgres.sh)"
    );
    if !require_sandboxes() {
        return;
    }
    // Both keep snapshots of VMs paused to disk in one S3 store.
    let s3 = S3Server::start();
    let mut builder = TestForge::builder()
        .nodes_only()
        .allow_loopback()
        .listen_everywhere();
    for (key, value) in s3.forge_env("planes") {
        builder = builder.env(key, &value);
    }
    let mut first = builder.start();
    let second = first.another_server("second");
    // The first server took the duties at its start; the second serves
    // beside it without them.
    assert!(first.log().contains(DUTIES), "{}", first.log());
    assert!(!second.log().contains(DUTIES), "{}", second.log());
    let nodes: Vec<TestNode> = ["a", "b", "c"]
        .iter()
        .map(|name| TestNode::start_in_netns_for(&[&first, &second], name, 3072))
        .collect();
    let all: Vec<&TestNode> = nodes.iter().collect();
    for node in &nodes {
        node.wait_up(&first);
        node.wait_up(&second);
    }

    // A VM made through one control plane is reached through the other:
    // exec, a fork (on the parent's node) and a terminal.
    let vm = first.admin("POST", "/v1/vms", Some(json!({})));
    let vm = vm["id"].as_str().unwrap().to_owned();
    let node = holder(&all, &vm).to_owned();
    assert_eq!(
        exec(
            &second,
            &vm,
            &format!("echo {node} > /tmp/where; cat /tmp/where")
        ),
        format!("{node}\n")
    );
    let forked = second.admin(
        "POST",
        &format!("/v1/vms/{vm}/fork"),
        Some(json!({ "count": 1 })),
    );
    let copy = forked["forks"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(holder(&all, &copy), node.as_str());
    assert_eq!(exec(&first, &copy, "cat /tmp/where"), format!("{node}\n"));
    let seen = terminal::run_in_shell(&second, &vm, "cat /tmp/where");
    assert!(seen.contains(&node), "{seen:?}");
    // Paused to disk through one, moved to another node through the other
    // (each node in its own namespace, in TLS): its file goes along.
    first.admin(
        "POST",
        &format!("/v1/vms/{copy}/pause"),
        Some(json!({ "to_disk": true })),
    );
    let moved = second.admin("POST", &format!("/v1/vms/{copy}/move"), Some(json!({})));
    let moved_to = moved["node"].as_str().unwrap().to_owned();
    assert_ne!(moved_to, node, "{moved}");
    assert_eq!(holder(&all, &copy), moved_to.as_str());
    assert_eq!(exec(&first, &copy, "cat /tmp/where"), format!("{node}\n"));

    // Pushes through both: each runs a pipeline on a node and fires a
    // webhook. The first control plane dies (SIGKILL) with runs in flight.
    let received = Received::default();
    first.create_repo("acme/app");
    first.admin(
        "POST",
        "/v1/repos/acme/app/webhooks",
        Some(json!({ "url": received.serve(), "events": ["push"] })),
    );
    let tmp = tempfile::tempdir().unwrap();
    let work = work_repo(tmp.path(), "work", &[(".forge.toml", STEPS)]);
    let mut pushed = BTreeMap::new();
    for (n, through) in [&first, &second, &first].into_iter().enumerate() {
        pushed.insert(push_branch(&work, through, n), n);
    }
    eventually(Duration::from_secs(60), "a run in flight", || {
        let runs: Vec<RunView> = second.get("/v1/repos/acme/app/runs");
        runs.iter()
            .any(|run| run.state.as_str() == "running")
            .then_some(())
            .ok_or(runs.len())
    });
    first.kill();
    for n in 3..6 {
        pushed.insert(push_branch(&work, &second, n), n);
    }

    // The second takes the duties up, and the nodes report to it.
    eventually(Duration::from_secs(30), "the duties move", || {
        second.log().contains(DUTIES).then_some(()).ok_or("not yet")
    });
    // Past the 10 s after which a node that reported only to the dead
    // server would be lost, every node stays up.
    stays(Duration::from_secs(12), "every node up", || {
        let listed = second.admin("GET", "/v1/nodes", None);
        listed
            .as_array()
            .into_iter()
            .flatten()
            .map(|node| (node["name"].clone(), node["state"].clone()))
            .collect::<Vec<_>>()
    });
    for node in &nodes {
        node.wait_up(&second);
    }

    // Every push has one run, ended (one the dead server ran ends in
    // error once its lease lapses, with a reason).
    let runs: Vec<RunView> = eventually(Duration::from_secs(180), "every run ends", || {
        let runs: Vec<RunView> = second.get("/v1/repos/acme/app/runs");
        if runs.len() >= pushed.len() && runs.iter().all(|run| run.state.is_finished()) {
            Ok(runs)
        } else {
            Err(runs
                .iter()
                .map(|run| (run.branch.clone(), run.state))
                .collect::<Vec<_>>())
        }
    });
    let mut by_commit: BTreeMap<&str, usize> = BTreeMap::new();
    for run in &runs {
        *by_commit.entry(run.commit_id.as_str()).or_default() += 1;
        if run.state.as_str() != "passed" {
            assert!(
                run.error.is_some(),
                "a run that did not pass says why: {run:?}"
            );
        }
    }
    assert_eq!(
        by_commit.keys().copied().collect::<BTreeSet<_>>(),
        pushed.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        "{runs:?}"
    );
    assert!(
        by_commit.values().all(|&n| n == 1),
        "one run per push: {runs:?}"
    );
    assert!(
        runs.iter()
            .filter(|run| run.state.as_str() == "passed")
            .count()
            >= 3,
        "the runs after the kill pass: {runs:?}"
    );

    // Every push has one delivery, delivered, and the receiver has it;
    // a delivery cut by the kill may arrive again, under the same id.
    let hooks = second.admin("GET", "/v1/repos/acme/app/webhooks", None);
    let hook = hooks[0]["id"].as_str().unwrap().to_owned();
    let page: DeliveryPage = eventually(Duration::from_secs(120), "every delivery lands", || {
        let page: DeliveryPage =
            second.get(&format!("/v1/repos/acme/app/webhooks/{hook}/deliveries"));
        if page.deliveries.len() >= pushed.len()
            && page
                .deliveries
                .iter()
                .all(|d| d.status == DeliveryState::Delivered)
        {
            Ok(page)
        } else {
            Err(page
                .deliveries
                .iter()
                .map(|d| (d.event_id, d.status))
                .collect::<Vec<_>>())
        }
    });
    assert_eq!(page.deliveries.len(), pushed.len(), "{page:?}");
    let events: BTreeSet<i64> = page.deliveries.iter().filter_map(|d| d.event_id).collect();
    assert_eq!(
        events.len(),
        pushed.len(),
        "one delivery per push: {page:?}"
    );
    let ids: BTreeSet<String> = page.deliveries.iter().map(|d| d.id.clone()).collect();
    assert_eq!(received.ids(), ids, "the receiver got each delivery");

    // The duties' node watch runs on the second now: a node killed there
    // has its VMs lost.
    let mut nodes = nodes;
    let index = nodes.iter().position(|n| n.name == node).unwrap();
    nodes[index].kill();
    eventually(Duration::from_secs(40), "the VM is lost", || {
        let seen = second.admin("GET", &format!("/v1/vms/{vm}"), None);
        (seen["state"] == "lost").then_some(()).ok_or(seen)
    });

    // A VM paused to disk, its copy uploaded to the snapshot store, comes
    // back on the last node up when its own dies: with its file.
    second.admin(
        "POST",
        &format!("/v1/vms/{copy}/pause"),
        Some(json!({ "to_disk": true })),
    );
    eventually(Duration::from_secs(60), "the copy stored", || {
        let seen = second.admin("GET", &format!("/v1/vms/{copy}"), None);
        seen["stored_bytes"]
            .as_i64()
            .filter(|b| *b > 0)
            .map(|_| ())
            .ok_or(seen)
    });
    let index = nodes.iter().position(|n| n.name == moved_to).unwrap();
    nodes[index].kill();
    nodes[index].wait_state(&second, "lost", Duration::from_secs(30));
    let resumed = second.admin("POST", &format!("/v1/vms/{copy}/resume"), None);
    assert_eq!(resumed["state"], "running", "{resumed}");
    let last = nodes
        .iter()
        .find(|n| n.name != node && n.name != moved_to)
        .unwrap();
    assert!(last.holds(&copy), "it runs on {} now", last.name);
    assert_eq!(exec(&second, &copy, "cat /tmp/where"), format!("{node}\n"));
}
