//! `cargo bench -p e2e --bench github`: the GitHub App through the real
//! forge against the fake GitHub, in one run:
//! - GitHub push → webhook → forge ref updated (p50/p99 over 30 pushes);
//! - forge push → GitHub ref updated (p50/p99 over 30 pushes);
//! - pull request opened → review posted for a small Bun project, split
//!   into sync + queue, sandbox start (a fork of main's sandbox),
//!   checkout and step overhead, install, lint, test and post (needs
//!   the container sandbox backend; skipped without it).

use std::time::{Duration, Instant};

use e2e::fake_github::FakeGithub;
use e2e::{TestForge, commit_files, git_ok, work_repo};
use serde_json::{Value, json};

const PUSHES: usize = 30;
const REVIEWS: usize = 3;
const PACKAGE: &str = r#"{ "name": "demo", "private": true, "scripts": { "lint": "test -f package.json", "test": "bun test" } }"#;
const TEST: &str = "import { expect, test } from \"bun:test\";\ntest(\"adds\", () => { expect(1 + 1).toBe(2); });\n";

fn percentiles(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |p: f64| {
        samples[((samples.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
    };
    format!(
        "p50 {:>7.1} ms  p99 {:>7.1} ms  (n={})",
        at(0.5),
        at(0.99),
        samples.len()
    )
}

fn wait(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !done() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The forge's tip of `branch`, from the branches API.
fn tip(forge: &TestForge, branch: &str) -> Option<String> {
    let branches = forge.admin("GET", "/v1/repos/acme/app/branches", None);
    branches
        .as_array()?
        .iter()
        .find(|b| b["name"] == branch)
        .and_then(|b| b["commit"]["id"].as_str())
        .map(str::to_owned)
}

/// A forge linked to `github_repo` (as `acme/app`) on `fake`.
fn linked(fake: &FakeGithub, github_repo: &str, installation: u64, sandboxes: bool) -> TestForge {
    let mut builder = TestForge::builder().env("FORGE_GITHUB_RECONCILE_SECS", "3600");
    for (key, value) in fake.forge_env() {
        builder = builder.env(key, &value);
    }
    if sandboxes {
        builder = builder.with_sandboxes(20);
    }
    let forge = builder.start();
    fake.set_webhook_url(&format!("{}/github/webhook", forge.url));
    fake.create_repo(github_repo);
    fake.install(installation, "octo", &[github_repo]);
    forge.create_repo("acme/app");
    forge.admin(
        "POST",
        "/v1/repos/acme/app/github",
        Some(json!({ "repository": github_repo })),
    );
    forge
}

fn main() {
    let fake = FakeGithub::start(99);
    let tmp = tempfile::tempdir().expect("tmp");
    // Sync latency without sandboxes, so no pipeline competes for the CPU.
    let forge = linked(&fake, "octo/app", 7, false);
    let github_url = fake.user_git_url("octo/app");
    let forge_url = forge.git_url("acme/app", &forge.admin_token);
    let work = work_repo(
        tmp.path(),
        "work",
        &[("package.json", PACKAGE), ("math.test.ts", TEST)],
    );
    git_ok(&work, &["push", "--quiet", &github_url, "main"]);
    let head = git_ok(&work, &["rev-parse", "HEAD"]);
    wait("first sync", || {
        tip(&forge, "main").as_deref() == Some(head.as_str())
    });

    let mut inbound = Vec::new();
    for i in 0..PUSHES {
        let sha = commit_files(&work, &[("in.txt", &format!("{i}\n"))], "from github");
        git_ok(&work, &["push", "--quiet", &github_url, "main"]);
        let pushed = Instant::now();
        wait("forge ref", || {
            tip(&forge, "main").as_deref() == Some(sha.as_str())
        });
        inbound.push(pushed.elapsed());
    }
    println!(
        "GitHub push -> forge ref updated:  {}",
        percentiles(inbound)
    );

    let mut outbound = Vec::new();
    for i in 0..PUSHES {
        let sha = commit_files(&work, &[("out.txt", &format!("{i}\n"))], "from the forge");
        git_ok(&work, &["push", "--quiet", &forge_url, "main"]);
        let pushed = Instant::now();
        wait("GitHub ref", || {
            fake.ref_sha("octo/app", "refs/heads/main").as_deref() == Some(sha.as_str())
        });
        outbound.push(pushed.elapsed());
    }
    println!(
        "forge push -> GitHub ref updated:  {}",
        percentiles(outbound)
    );

    drop(forge);
    if let Some(reason) = e2e::sandboxes_unavailable() {
        println!("pull request -> review: SKIPPED ({reason})");
        return;
    }
    let forge = linked(&fake, "octo/review", 8, true);
    let github_url = fake.user_git_url("octo/review");
    git_ok(&work, &["checkout", "--quiet", "main"]);
    git_ok(&work, &["push", "--quiet", &github_url, "main"]);
    let head = git_ok(&work, &["rev-parse", "HEAD"]);
    wait("main's first run", || {
        forge
            .admin("GET", "/v1/repos/acme/app/runs", None)
            .as_array()
            .is_some_and(|runs| {
                runs.iter()
                    .any(|r| r["commit_id"] == head.as_str() && r["finished_at"].is_string())
            })
    });
    let mut totals = Vec::new();
    for i in 0..REVIEWS {
        let branch = format!("pr-{i}");
        git_ok(&work, &["checkout", "--quiet", "-B", &branch, "main"]);
        let sha = commit_files(&work, &[("pr.txt", &format!("{i}\n"))], "a change");
        // The branch reaches GitHub unseen, so the pull request does all the work.
        fake.set_webhooks_paused(true);
        git_ok(&work, &["push", "--quiet", &github_url, &branch]);
        fake.set_webhooks_paused(false);
        let opened_at = unix_now();
        let opened = Instant::now();
        let number = fake.open_pull_request("octo/review", &branch, "main");
        wait("review", || !fake.reviews("octo/review", number).is_empty());
        totals.push(opened.elapsed());
        let review_at = fake.reviews("octo/review", number)[0]["received_at"]
            .as_f64()
            .unwrap_or(f64::NAN);
        let runs = forge.admin("GET", "/v1/repos/acme/app/runs", None);
        let run = runs
            .as_array()
            .and_then(|r| r.iter().find(|r| r["commit_id"] == sha.as_str()).cloned())
            .expect("a run of the pull request's head");
        let run = forge.admin("GET", &format!("/v1/runs/{}", run["id"]), None);
        let step = |name: &str| {
            run["steps"]
                .as_array()
                .and_then(|s| s.iter().find(|s| s["name"] == name))
                .and_then(|s| s["duration_ms"].as_f64())
                .unwrap_or(0.0)
        };
        let created = timestamp(&run["created_at"]);
        let started = timestamp(&run["started_at"]);
        let finished = timestamp(&run["finished_at"]);
        println!(
            "pull request -> review #{i}: total {:.0} ms = sync+queue {:.0} | sandbox start {:.0} | checkout+other {:.0} | install {:.0} | lint {:.0} | test {:.0} | post {:.0} ms",
            (review_at - opened_at) * 1000.0,
            (created - opened_at) * 1000.0,
            (started - created) * 1000.0,
            (finished - started) * 1000.0 - step("install") - step("lint") - step("test"),
            step("install"),
            step("lint"),
            step("test"),
            (review_at - finished) * 1000.0,
        );
    }
    println!(
        "pull request opened -> review posted: {}",
        percentiles(totals)
    );
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Seconds since the epoch of an RFC 3339 timestamp from the forge.
fn timestamp(value: &Value) -> f64 {
    time::OffsetDateTime::parse(
        value.as_str().unwrap_or(""),
        &time::format_description::well_known::Rfc3339,
    )
    .map(|t| t.unix_timestamp_nanos() as f64 / 1e9)
    .unwrap_or(f64::NAN)
}
