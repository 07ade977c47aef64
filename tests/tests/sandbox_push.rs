//! `git push` from inside a sandbox: `origin` in `/workspace` reaches the
//! forge through the agent, with a token scoped to that repository that
//! never enters the sandbox; the pushed branch runs its pipeline in a fork
//! of the default branch's sandbox.

#![allow(clippy::unwrap_used)] // A test that cannot unwrap has failed: say so loudly.

use std::time::Instant;

use e2e::{TestForge, git_ok, work_repo};
use serde_json::{Value, json};

const PACKAGE: &str = r#"{ "name": "demo", "private": true, "scripts": { "test": "bun test" } }"#;
const TEST: &str = "import { expect, test } from \"bun:test\";\ntest(\"adds\", () => { expect(1 + 1).toBe(2); });\n";

fn sh(forge: &TestForge, vm: &str, script: &str) -> Value {
    forge.admin(
        "POST",
        &format!("/v1/vms/{vm}/exec"),
        Some(json!({ "argv": ["sh", "-c", script], "timeout_secs": 120 })),
    )
}

#[test]
fn a_push_from_inside_a_sandbox_creates_the_branch_and_runs_it_in_a_fork() {
    if let Some(reason) = e2e::sandboxes_unavailable() {
        println!("SKIPPED: {reason}");
        return;
    }
    let forge = TestForge::builder().with_sandboxes(20).start();
    forge.create_repo("acme/push");
    forge.create_repo("acme/other");
    let tmp = tempfile::tempdir().unwrap();
    let url = forge.git_url("acme/push", &forge.admin_token);
    let work = work_repo(
        tmp.path(),
        "work",
        &[("package.json", PACKAGE), ("math.test.ts", TEST)],
    );
    let first = git_ok(&work, &["rev-parse", "HEAD"]);
    git_ok(&work, &["push", "--quiet", &url, "main"]);
    let run = forge.finished_run("acme/push", &first);
    assert_eq!(run["state"], "passed", "{run}");
    let main_vm = run["vm_id"].as_str().unwrap().to_owned();

    let origin = sh(&forge, &main_vm, "git -C /workspace remote get-url origin");
    assert_eq!(
        origin["stdout"].as_str().unwrap().trim(),
        "http://127.0.0.1:3129/acme/push.git"
    );
    let started = Instant::now();
    let pushed = sh(
        &forge,
        &main_vm,
        "cd /workspace && git config user.email agent@example.com && git config user.name agent \
         && echo 'from the sandbox' > feature.txt && git add feature.txt \
         && git commit -qm 'work from inside' && git push -q origin HEAD:feature 2>&1 && git rev-parse HEAD",
    );
    println!("push from inside the sandbox: {:?}", started.elapsed());
    assert_eq!(pushed["exit_code"], 0, "{pushed}");
    let commit = pushed["stdout"]
        .as_str()
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned();

    let branches = forge.admin("GET", "/v1/repos/acme/push/branches", None);
    assert!(branches.to_string().contains("feature"), "{branches}");
    let run = forge.finished_run("acme/push", &commit);
    assert_eq!(run["state"], "passed", "{run}");
    let feature_vm = run["vm_id"].as_str().unwrap();
    let vm = forge.admin("GET", &format!("/v1/vms/{feature_vm}"), None);
    assert_eq!(vm["parent"], main_vm.as_str(), "{vm}");
    assert_eq!(vm["branch"], "feature");

    // The remote reaches this repository's git endpoints only, and the
    // token stays on the host.
    let other = sh(
        &forge,
        &main_vm,
        "git ls-remote http://127.0.0.1:3129/acme/other.git 2>&1",
    );
    assert_ne!(other["exit_code"], 0, "{other}");
    assert!(other["stdout"].as_str().unwrap().contains("403"), "{other}");
    let api = sh(
        &forge,
        &main_vm,
        "bun -e 'const r = await fetch(\"http://127.0.0.1:3129/v1/vms\"); console.log(r.status)'",
    );
    assert_eq!(api["stdout"].as_str().unwrap().trim(), "403", "{api}");
    let leaked = sh(
        &forge,
        &main_vm,
        "grep -rl forge_ /workspace/.git/config /proc/self/environ; env | grep -c forge_",
    );
    assert_eq!(leaked["stdout"].as_str().unwrap().trim(), "0", "{leaked}");

    let tokens_of = |vm: &str| -> Vec<Value> {
        let tokens = forge.admin("GET", "/v1/tokens", None);
        tokens
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["name"] == format!("sandbox:{vm}"))
            .cloned()
            .collect()
    };
    let live: Vec<Value> = tokens_of(&main_vm)
        .into_iter()
        .filter(|t| t["revoked_at"].is_null())
        .collect();
    assert_eq!(live.len(), 1, "one live token per sandbox: {live:?}");
    assert_eq!(live[0]["repo"], "acme/push", "{live:?}");
    assert_eq!(live[0]["scopes"], json!(["repo:write"]), "{live:?}");
    forge.admin("DELETE", &format!("/v1/vms/{main_vm}"), None);
    assert!(
        tokens_of(&main_vm)
            .iter()
            .all(|t| !t["revoked_at"].is_null()),
        "destroying the VM revokes its token"
    );
}
