//! Git hosting end to end: the real `forge` binary, the real `git` CLI.

#![allow(clippy::unwrap_used)] // A test that cannot unwrap has failed: say so loudly.

use std::collections::BTreeSet;
use std::path::Path;

use api_types::events::Event;
use e2e::{TestForge, commit_files, git_ok, git_run, work_repo};

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn tree_listing(dir: &Path) -> String {
    git_ok(dir, &["ls-tree", "-r", "--full-tree", "HEAD"])
}

#[test]
fn push_then_clone_gives_the_same_tree_and_branches_are_listed() {
    let forge = TestForge::start();
    let created = forge.create_repo("acme/web");
    assert_eq!(created.name, "acme/web");
    assert_eq!(created.default_branch, "main");
    assert_eq!(created.clone_url, format!("{}/acme/web.git", forge.url));
    let tmp = tempfile::tempdir().unwrap();
    let work = work_repo(
        tmp.path(),
        "work",
        &[
            ("README.md", "# web\n"),
            ("src/app.ts", "export {}\n"),
            ("bin/run.sh", "#!/bin/sh\n"),
        ],
    );
    let url = forge.git_url("acme/web", &forge.admin_token);
    git_ok(&work, &["push", "--quiet", &url, "main"]);
    for protocol in ["0", "2"] {
        let clone = tmp.path().join(format!("clone-v{protocol}"));
        let output = e2e::git(tmp.path())
            .args([
                "-c",
                &format!("protocol.version={protocol}"),
                "clone",
                "--quiet",
                &url,
            ])
            .arg(&clone)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "clone v{protocol}: {}",
            stderr(&output)
        );
        assert_eq!(tree_listing(&clone), tree_listing(&work));
    }
    let branches = forge.admin("GET", "/v1/repos/acme/web/branches", None);
    let head = git_ok(&work, &["rev-parse", "HEAD"]);
    assert_eq!(branches[0]["name"], "main");
    assert_eq!(branches[0]["commit"]["id"], head.as_str());
    assert_eq!(branches[0]["commit"]["message"], "initial commit");
    assert_eq!(branches[0]["commit"]["author"]["name"], "Ada Tester");
    assert!(
        branches[0]["commit"]["time"]
            .as_str()
            .unwrap()
            .contains('T')
    );
    assert!(git_ok(&forge.repo_dir("acme/web"), &["fsck", "--strict"]).is_empty());
}

#[test]
fn git_requires_a_token_with_the_right_scope() {
    let forge = TestForge::start();
    forge.create_repo("acme/private");
    let tmp = tempfile::tempdir().unwrap();
    let work = work_repo(tmp.path(), "work", &[("a.txt", "a\n")]);
    let host = forge.url.trim_start_matches("http://");

    // No token at all: 401 with a Basic challenge, and git gives up.
    let response = reqwest::blocking::get(format!(
        "{}/acme/private.git/info/refs?service=git-upload-pack",
        forge.url
    ))
    .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert!(
        response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    let anonymous = git_run(
        &work,
        &["push", &format!("http://{host}/acme/private.git"), "main"],
    );
    assert!(!anonymous.status.success());

    // A wrong password: 401.
    let wrong = git_run(
        &work,
        &[
            "push",
            &format!("http://git:forge_wrong@{host}/acme/private.git"),
            "main",
        ],
    );
    assert!(!wrong.status.success());
    let message = stderr(&wrong);
    assert!(
        message.contains("Authentication failed") || message.contains("401"),
        "{message}"
    );

    // A read token may clone but not push: 403.
    let reader = forge.create_token("reader", &["repo:read"], None);
    let denied = git_run(
        &work,
        &["push", &forge.git_url("acme/private", &reader), "main"],
    );
    assert!(!denied.status.success());
    assert!(stderr(&denied).contains("403"), "{}", stderr(&denied));
    git_ok(
        &work,
        &[
            "push",
            "--quiet",
            &forge.git_url("acme/private", &forge.admin_token),
            "main",
        ],
    );
    let clone = tmp.path().join("clone");
    let clone_url = forge.git_url("acme/private", &reader);
    git_ok(
        tmp.path(),
        &["clone", "--quiet", &clone_url, clone.to_str().unwrap()],
    );

    // A token limited to another repository sees nothing here.
    forge.create_repo("acme/other");
    let limited = forge.create_token("limited", &["repo:write"], Some("acme/other"));
    let (status, _) = forge.call(Some(&limited), "GET", "/v1/repos/acme/private", None);
    assert_eq!(status, 404);
    let listed = forge.call(Some(&limited), "GET", "/v1/repos", None).1;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let limited_url = forge.git_url("acme/private", &limited);
    assert!(
        !git_run(tmp.path(), &["ls-remote", &limited_url])
            .status
            .success()
    );

    // Listing never shows a secret; a revoked token stops working at once.
    let tokens = forge.admin("GET", "/v1/tokens", None);
    assert!(!tokens.to_string().contains(&reader));
    assert!(!tokens.to_string().contains(&forge.admin_token));
    let reader_id = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "reader")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    forge.admin("DELETE", &format!("/v1/tokens/{reader_id}"), None);
    assert!(
        !git_run(tmp.path(), &["ls-remote", &clone_url])
            .status
            .success()
    );
    let (status, body) = forge.call(Some(&reader), "GET", "/v1/repos", None);
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
}

#[test]
fn concurrent_pushes_to_one_branch_leave_one_winner_and_a_sound_repository() {
    let forge = TestForge::start();
    forge.create_repo("acme/race");
    let tmp = tempfile::tempdir().unwrap();
    let url = forge.git_url("acme/race", &forge.admin_token);
    let seed = work_repo(tmp.path(), "seed", &[("base.txt", "base\n")]);
    git_ok(&seed, &["push", "--quiet", &url, "main"]);
    let clones: Vec<_> = ["one", "two"]
        .iter()
        .map(|name| {
            let dir = tmp.path().join(name);
            git_ok(
                tmp.path(),
                &["clone", "--quiet", &url, dir.to_str().unwrap()],
            );
            let big: String = (0..20_000).map(|i| format!("{name} line {i}\n")).collect();
            commit_files(
                &dir,
                &[(&format!("{name}.txt"), &big)],
                &format!("change from {name}"),
            );
            dir
        })
        .collect();
    let cursor = forge.events("acme/race", 0).last().unwrap().id;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let handles: Vec<_> = clones
        .iter()
        .map(|dir| {
            let (dir, barrier) = (dir.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                git_run(&dir, &["push", "origin", "main"])
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let winners = results.iter().filter(|o| o.status.success()).count();
    let messages: Vec<String> = results.iter().map(stderr).collect();
    assert_eq!(winners, 1, "exactly one push wins: {messages:?}");
    let loser = results.iter().find(|o| !o.status.success()).unwrap();
    let message = stderr(loser);
    assert!(
        message.contains("rejected")
            || message.contains("failed to update")
            || message.contains("non-fast-forward"),
        "{message}"
    );
    let server = forge.repo_dir("acme/race");
    git_ok(&server, &["fsck", "--strict", "--no-dangling"]);
    let pushes: Vec<Event> = forge
        .events("acme/race", cursor)
        .into_iter()
        .filter(|e| e.kind == "push")
        .collect();
    assert_eq!(pushes.len(), 1, "only the winning push is an event");
    assert_eq!(
        pushes[0].payload["after"],
        git_ok(&server, &["rev-parse", "main"]).as_str()
    );
}

#[test]
fn a_50_mib_push_succeeds_and_clones_back_intact() {
    let forge = TestForge::start();
    forge.create_repo("acme/big");
    let tmp = tempfile::tempdir().unwrap();
    let work = work_repo(tmp.path(), "work", &[("README", "big\n")]);
    // Incompressible content, so the pack really is 50 MiB.
    let data = e2e::noise(50 << 20, 7);
    std::fs::write(work.join("blob.bin"), &data).unwrap();
    git_ok(&work, &["add", "blob.bin"]);
    git_ok(&work, &["commit", "--quiet", "-m", "add 50 MiB"]);
    let url = forge.git_url("acme/big", &forge.admin_token);
    git_ok(&work, &["push", "--quiet", &url, "main"]);
    let clone = tmp.path().join("clone");
    git_ok(
        tmp.path(),
        &["clone", "--quiet", &url, clone.to_str().unwrap()],
    );
    assert!(std::fs::read(clone.join("blob.bin")).unwrap() == data);
}

#[test]
fn push_events_carry_refs_commits_and_paths() {
    let forge = TestForge::start();
    forge.create_repo("acme/events");
    let tmp = tempfile::tempdir().unwrap();
    let url = forge.git_url("acme/events", &forge.admin_token);
    let work = work_repo(
        tmp.path(),
        "work",
        &[("README.md", "hi\n"), ("docs/old.md", "old\n")],
    );
    let first = git_ok(&work, &["rev-parse", "HEAD"]);
    git_ok(&work, &["push", "--quiet", &url, "main"]);
    let events = forge.events("acme/events", 0);
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["push", "branch.created"]);
    let push = &events[0].payload;
    assert_eq!(push["before"], "0".repeat(40));
    assert_eq!(push["after"], first.as_str());
    assert_eq!(push["created"], true);
    assert_eq!(push["branch"], "main");
    assert_eq!(
        push["paths"],
        serde_json::json!(["README.md", "docs/old.md"])
    );
    assert_eq!(push["commits"][0]["message"], "initial commit");
    assert_eq!(push["pusher"]["name"], "admin");

    // A feature branch: two commits touching known paths.
    git_ok(&work, &["checkout", "--quiet", "-b", "feature/x"]);
    commit_files(&work, &[("src/lib.rs", "fn main() {}\n")], "add lib");
    std::fs::remove_file(work.join("docs/old.md")).unwrap();
    let tip = commit_files(
        &work,
        &[("README.md", "hello\n")],
        "edit readme, drop old docs",
    );
    git_ok(&work, &["push", "--quiet", &url, "feature/x"]);
    let cursor = events.last().unwrap().id;
    let events = forge.events("acme/events", cursor);
    assert_eq!(events[0].kind, "push");
    assert_eq!(events[1].kind, "branch.created");
    assert_eq!(events[1].payload["branch"], "feature/x");
    let push = &events[0].payload;
    assert_eq!(push["after"], tip.as_str());
    assert_eq!(
        push["commits_total"], 2,
        "only the commits new to the forge: {push}"
    );
    let paths: BTreeSet<&str> = push["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        BTreeSet::from(["README.md", "docs/old.md", "src/lib.rs"])
    );
    assert_eq!(
        push["commits"][0]["removed"],
        serde_json::json!(["docs/old.md"])
    );
    assert_eq!(
        push["commits"][0]["modified"],
        serde_json::json!(["README.md"])
    );
    assert_eq!(
        push["commits"][1]["added"],
        serde_json::json!(["src/lib.rs"])
    );

    // A forced update is flagged; a deletion by push emits branch.deleted.
    git_ok(&work, &["commit", "--quiet", "--amend", "-m", "rewritten"]);
    git_ok(&work, &["push", "--quiet", "--force", &url, "feature/x"]);
    let cursor = events.last().unwrap().id;
    let events = forge.events("acme/events", cursor);
    assert_eq!(events[0].payload["forced"], true);
    assert_eq!(events[0].payload["before"], tip.as_str());
    let rewritten = git_ok(&work, &["rev-parse", "HEAD"]);
    git_ok(&work, &["push", "--quiet", &url, "--delete", "feature/x"]);
    let cursor = events.last().unwrap().id;
    let events = forge.events("acme/events", cursor);
    let deleted = events
        .iter()
        .find(|e| e.kind == "branch.deleted")
        .expect("branch.deleted");
    assert_eq!(deleted.payload["branch"], "feature/x");
    assert_eq!(deleted.payload["before"], rewritten.as_str());
    assert_eq!(deleted.ref_name.as_deref(), Some("refs/heads/feature/x"));

    // Tags.
    git_ok(&work, &["tag", "v1", first.as_str()]);
    git_ok(&work, &["push", "--quiet", &url, "v1"]);
    let cursor = events.last().unwrap().id;
    let kinds: Vec<String> = forge
        .events("acme/events", cursor)
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["push", "tag.created"]);
}

#[test]
fn a_restart_keeps_repositories_tokens_and_events() {
    let forge = TestForge::start();
    assert!(
        forge.printed_admin_token.is_some(),
        "the admin token is printed on first start"
    );
    forge.create_repo("acme/keep");
    let writer = forge.create_token("writer", &["repo:write"], None);
    let tmp = tempfile::tempdir().unwrap();
    let work = work_repo(tmp.path(), "work", &[("f", "1\n")]);
    git_ok(
        &work,
        &[
            "push",
            "--quiet",
            &forge.git_url("acme/keep", &writer),
            "main",
        ],
    );
    let before = forge.events("acme/keep", 0);
    let mode = std::fs::metadata(forge.data_dir.join("admin-token")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    let forge = forge.restart();
    assert!(
        forge.printed_admin_token.is_none(),
        "the admin token is printed only once"
    );
    assert_eq!(forge.events("acme/keep", 0), before);
    let clone = tmp.path().join("clone");
    let url = forge.git_url("acme/keep", &writer);
    git_ok(
        tmp.path(),
        &["clone", "--quiet", &url, clone.to_str().unwrap()],
    );
    commit_files(&clone, &[("f", "2\n")], "second");
    git_ok(&clone, &["push", "--quiet", "origin", "main"]);
    let cursor = before.last().unwrap().id;
    let after = forge.events("acme/keep", cursor);
    assert_eq!(after.len(), 1, "an update is one push event: {after:?}");
    assert!(
        after[0].id > cursor,
        "cursors keep increasing across restarts"
    );
}
