//! `git push` from inside a sandbox: `origin` in `/workspace` reaches the
//! forge through the agent, with a token scoped to that repository that
//! never enters the sandbox; the pushed branch runs its pipeline in a fork
//! of the default branch's sandbox.
//!
//! What a push may change, played by the attacker: code in a feature
//! branch's sandbox tries to move `main`, delete it, rewrite it and push a
//! tag; a user's `repo:write` token tries to rewrite or delete protected
//! branches. Each is refused with a message naming the ref, before
//! anything is written.

#![allow(clippy::unwrap_used)] // A test that cannot unwrap has failed: say so loudly.

use std::path::Path;
use std::time::Instant;

use api_types::RunState;
use api_types::repos::BranchView;
use api_types::tokens::TokenView;
use api_types::vms::{CreateVm, ExecOutput, ExecRequest, VmDetail, VmView};
use e2e::{TestForge, commit_files, git_ok, git_run, work_repo};

const PACKAGE: &str = r#"{ "name": "demo", "private": true, "scripts": { "test": "bun test" } }"#;
const TEST: &str = "import { expect, test } from \"bun:test\";\ntest(\"adds\", () => { expect(1 + 1).toBe(2); });\n";

fn sh(forge: &TestForge, vm: &str, script: &str) -> ExecOutput {
    forge.send(
        "POST",
        &format!("/v1/vms/{vm}/exec"),
        &ExecRequest {
            argv: Some(vec!["sh".into(), "-c".into(), script.into()]),
            timeout_secs: Some(120),
            ..ExecRequest::default()
        },
    )
}

/// Runs `script` in the VM's `/workspace` as a committer; returns its exit
/// code and its output, stderr included.
fn workspace(forge: &TestForge, vm: &str, script: &str) -> (i64, String) {
    let answer = sh(
        forge,
        vm,
        &format!(
            "cd /workspace && git config user.email agent@example.com && \
             git config user.name agent && {{ {script} ; }} 2>&1"
        ),
    );
    (i64::from(answer.exit.exit_code), answer.stdout)
}

/// The commit `refname` points at in the forge's copy, if it exists.
fn server_ref(forge: &TestForge, repo: &str, refname: &str) -> Option<String> {
    let output = git_run(
        &forge.repo_dir(repo),
        &["rev-parse", "--verify", "--quiet", refname],
    );
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Whether the forge's copy of `repo` holds object `id`.
fn server_has(forge: &TestForge, repo: &str, id: &str) -> bool {
    git_run(&forge.repo_dir(repo), &["cat-file", "-e", id])
        .status
        .success()
}

#[test]
fn a_push_from_inside_a_sandbox_creates_a_branch_of_its_own_and_runs_it_in_a_fork() {
    if !e2e::require_sandboxes() {
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
    assert_eq!(run.state, RunState::Passed, "{run:?}");
    let main_vm = run.vm_id.clone().unwrap();

    let origin = sh(&forge, &main_vm, "git -C /workspace remote get-url origin");
    assert_eq!(origin.stdout.trim(), "http://127.0.0.1:3129/acme/push.git");
    // The default branch's sandbox may not start another branch, only
    // one under its own prefix.
    let branch = format!("sandbox/{main_vm}/feature");
    let started = Instant::now();
    let pushed = sh(
        &forge,
        &main_vm,
        &format!(
            "cd /workspace && git config user.email agent@example.com && git config user.name agent \
             && echo 'from the sandbox' > feature.txt && git add feature.txt \
             && git commit -qm 'work from inside' && git push -q origin HEAD:{branch} 2>&1 \
             && git rev-parse HEAD"
        ),
    );
    println!("push from inside the sandbox: {:?}", started.elapsed());
    assert_eq!(pushed.exit.exit_code, 0, "{pushed:?}");
    let commit = pushed.stdout.lines().last().unwrap().to_owned();

    let branches: Vec<BranchView> = forge.get("/v1/repos/acme/push/branches");
    assert!(branches.iter().any(|b| b.name == branch), "{branches:?}");
    let run = forge.finished_run("acme/push", &commit);
    assert_eq!(run.state, RunState::Passed, "{run:?}");
    let feature_vm = run.vm_id.as_deref().unwrap();
    let vm: VmDetail = forge.get(&format!("/v1/vms/{feature_vm}"));
    assert_eq!(vm.vm.parent.as_deref(), Some(main_vm.as_str()), "{vm:?}");
    assert_eq!(vm.vm.branch.as_deref(), Some(branch.as_str()));

    // The remote reaches this repository's git endpoints only, and the
    // token stays on the host.
    let other = sh(
        &forge,
        &main_vm,
        "git ls-remote http://127.0.0.1:3129/acme/other.git 2>&1",
    );
    assert_ne!(other.exit.exit_code, 0, "{other:?}");
    assert!(other.stdout.contains("403"), "{other:?}");
    let api = sh(
        &forge,
        &main_vm,
        "bun -e 'const r = await fetch(\"http://127.0.0.1:3129/v1/vms\"); console.log(r.status)'",
    );
    assert_eq!(api.stdout.trim(), "403", "{api:?}");
    let leaked = sh(
        &forge,
        &main_vm,
        "grep -rl forge_ /workspace/.git/config /proc/self/environ; env | grep -c forge_",
    );
    assert_eq!(leaked.stdout.trim(), "0", "{leaked:?}");

    let tokens_of = |vm: &str| -> Vec<TokenView> {
        let tokens: Vec<TokenView> = forge.get("/v1/tokens");
        tokens
            .into_iter()
            .filter(|t| t.name == format!("sandbox:{vm}"))
            .collect()
    };
    let live: Vec<TokenView> = tokens_of(&main_vm)
        .into_iter()
        .filter(|t| t.revoked_at.is_none())
        .collect();
    assert_eq!(live.len(), 1, "one live token per sandbox: {live:?}");
    assert_eq!(live[0].repo.as_deref(), Some("acme/push"), "{live:?}");
    assert_eq!(live[0].scopes, ["repo:write"], "{live:?}");
    forge.admin("DELETE", &format!("/v1/vms/{main_vm}"), None);
    assert!(
        tokens_of(&main_vm).iter().all(|t| t.revoked_at.is_some()),
        "destroying the VM revokes its token"
    );
}

#[test]
fn a_feature_branch_sandbox_cannot_move_main_or_push_tags_but_moves_its_own_branches() {
    if !e2e::require_sandboxes() {
        return;
    }
    let forge = TestForge::builder().with_sandboxes(4).start();
    forge.create_repo("acme/guarded");
    let tmp = tempfile::tempdir().unwrap();
    let url = forge.git_url("acme/guarded", &forge.admin_token);
    let work = work_repo(tmp.path(), "work", &[("README.md", "guarded\n")]);
    git_ok(&work, &["push", "--quiet", &url, "main"]);
    git_ok(&work, &["checkout", "--quiet", "-b", "feature"]);
    commit_files(&work, &[("feature.txt", "feature\n")], "feature work");
    git_ok(&work, &["push", "--quiet", &url, "feature"]);
    let main = server_ref(&forge, "acme/guarded", "refs/heads/main").unwrap();

    let vm: VmView = forge.send(
        "POST",
        "/v1/vms",
        &CreateVm {
            repo: Some("acme/guarded".into()),
            branch: Some("feature".into()),
            ..CreateVm::default()
        },
    );
    let vm = vm.id;
    assert_eq!(
        forge
            .get::<VmDetail>(&format!("/v1/vms/{vm}"))
            .vm
            .branch
            .as_deref(),
        Some("feature")
    );
    // A fast-forward of main (feature is main plus commits), and a rewrite.
    let (code, out) = workspace(
        &forge,
        &vm,
        "echo attack > attack.txt && git add attack.txt && git commit -qm attack \
         && git rev-parse HEAD && git commit-tree -m rewritten 'HEAD^{tree}'",
    );
    assert_eq!(code, 0, "{out}");
    let mut ids = out.lines().map(str::to_owned);
    let (attack, rewritten) = (ids.next().unwrap(), ids.next().unwrap());

    let not_among = |refname: &str| {
        format!(
            "forge: this sandbox may push only to refs/heads/feature and \
             refs/heads/sandbox/{vm}/*; {refname} is not among them"
        )
    };
    for (attempt, expected) in [
        ("git push origin HEAD:main", not_among("refs/heads/main")),
        (
            "git push origin --delete main",
            not_among("refs/heads/main"),
        ),
        (
            &*format!("git push origin +{rewritten}:refs/heads/main"),
            not_among("refs/heads/main"),
        ),
        (
            "git tag v1 && git push origin v1",
            not_among("refs/tags/v1"),
        ),
        (
            "git push origin HEAD:refs/heads/sandbox/sb-someone-else/x",
            not_among("refs/heads/sandbox/sb-someone-else/x"),
        ),
        (
            "git push origin --delete feature",
            "forge: this sandbox may update refs/heads/feature but not delete it".to_owned(),
        ),
    ] {
        let (code, out) = workspace(&forge, &vm, attempt);
        assert_ne!(code, 0, "{attempt} was accepted: {out}");
        assert!(out.contains(&expected), "{attempt}: {out}");
        assert!(out.contains("[remote rejected]"), "{attempt}: {out}");
    }
    // Refused before git ran: nothing of the attack reached the repository.
    assert_eq!(
        server_ref(&forge, "acme/guarded", "refs/heads/main").as_deref(),
        Some(main.as_str())
    );
    assert!(server_ref(&forge, "acme/guarded", "refs/tags/v1").is_none());
    assert!(server_ref(&forge, "acme/guarded", "refs/heads/feature").is_some());
    assert!(!server_has(&forge, "acme/guarded", &attack));
    assert!(!server_has(&forge, "acme/guarded", &rewritten));
    // One refused ref holds back the rest of its push.
    let (code, out) = workspace(&forge, &vm, "git push origin HEAD:feature HEAD:main");
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("another ref of this push was refused"),
        "{out}"
    );
    assert!(!server_has(&forge, "acme/guarded", &attack));

    // Its own branch, even forced, and branches under its prefix.
    let own = format!("sandbox/{vm}/try");
    for (attempt, refname, expected) in [
        (
            "git push origin HEAD:feature",
            "refs/heads/feature",
            Some(&attack),
        ),
        (
            &*format!("git push origin +{rewritten}:feature"),
            "refs/heads/feature",
            Some(&rewritten),
        ),
        (
            &*format!("git push origin HEAD:{own}"),
            &*format!("refs/heads/{own}"),
            Some(&attack),
        ),
        (
            &*format!("git push origin --delete {own}"),
            &*format!("refs/heads/{own}"),
            None,
        ),
    ] {
        let (code, out) = workspace(&forge, &vm, attempt);
        assert_eq!(code, 0, "{attempt}: {out}");
        assert_eq!(
            server_ref(&forge, "acme/guarded", refname).as_ref(),
            expected,
            "{attempt}"
        );
    }
    assert_eq!(
        server_ref(&forge, "acme/guarded", "refs/heads/main").as_deref(),
        Some(main.as_str())
    );
}

/// Pushes `refspec` to `url` from `work`: whether it was accepted, and
/// what git printed.
fn push(work: &Path, url: &str, refspec: &[&str]) -> (bool, String) {
    let output = git_run(work, &[&["push", url], refspec].concat());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn protected_branches_are_only_fast_forwarded_whoever_pushes() {
    let forge = TestForge::builder()
        .env("FORGE_PROTECTED_BRANCHES", "release/*")
        .start();
    forge.create_repo("acme/kept");
    let writer = forge.create_token("dev", &["repo:write"], Some("acme/kept"));
    let url = forge.git_url("acme/kept", &writer);
    let admin_url = forge.git_url("acme/kept", &forge.admin_token);
    let tmp = tempfile::tempdir().unwrap();
    let work = work_repo(tmp.path(), "work", &[("README.md", "kept\n")]);
    // Creating a protected branch is allowed: that is how a repository starts.
    for branch in ["main", "release/1", "topic"] {
        let (ok, out) = push(&work, &url, &[&format!("HEAD:refs/heads/{branch}")]);
        assert!(ok, "creating {branch}: {out}");
    }
    for branch in ["main", "release/1"] {
        let refname = format!("refs/heads/{branch}");
        let before = server_ref(&forge, "acme/kept", &refname).unwrap();
        let rewritten = git_ok(&work, &["commit-tree", "-m", "rewritten", "HEAD^{tree}"]);
        for pusher in [&url, &admin_url] {
            let (ok, out) = push(&work, pusher, &[&format!("+{rewritten}:{refname}")]);
            assert!(!ok, "forced {branch}: {out}");
            assert!(
                out.contains(&format!(
                    "forge: {refname} is a protected branch: a push may fast-forward it \
                     but not force-update it"
                )),
                "{out}"
            );
            let (ok, out) = push(&work, pusher, &["--delete", branch]);
            assert!(!ok, "deleted {branch}: {out}");
            assert!(
                out.contains(&format!(
                    "forge: {refname} is a protected branch: it cannot be deleted"
                )),
                "{out}"
            );
        }
        assert_eq!(
            server_ref(&forge, "acme/kept", &refname).as_deref(),
            Some(before.as_str())
        );
        // The rewrite was dropped with git's quarantine.
        assert!(!server_has(&forge, "acme/kept", &rewritten));

        let next = commit_files(&work, &[(&format!("{branch}.txt"), "more\n")], "more");
        let (ok, out) = push(&work, &url, &[&format!("HEAD:{refname}")]);
        assert!(ok, "fast-forward of {branch}: {out}");
        assert_eq!(
            server_ref(&forge, "acme/kept", &refname).as_deref(),
            Some(next.as_str())
        );
    }
    // Other branches may still be rewritten and deleted.
    let rewritten = git_ok(&work, &["commit-tree", "-m", "rewritten", "HEAD^{tree}"]);
    let (ok, out) = push(&work, &url, &[&format!("+{rewritten}:refs/heads/topic")]);
    assert!(ok, "{out}");
    let (ok, out) = push(&work, &url, &["--delete", "topic"]);
    assert!(ok, "{out}");
    assert!(server_ref(&forge, "acme/kept", "refs/heads/topic").is_none());
}
