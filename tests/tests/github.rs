//! The GitHub App end to end, against the fake GitHub of
//! `e2e::fake_github`: installation, linking, sync both ways (branches,
//! tags, deletions), divergence, forged and repeated webhooks, token expiry
//! mid-sync, and the review bot on a Bun project in a real sandbox,
//! including pull requests that rewrite their own steps to pass.

#![allow(clippy::unwrap_used)] // A test that cannot unwrap has failed: say so loudly.

use std::path::Path;
use std::time::{Duration, Instant};

use api_types::github::{GithubLinkView, GithubOverview, RefView};
use api_types::runs::{RunDetail, RunView};
use api_types::{RefSyncState, ReviewVerdict, RunState};
use e2e::fake_github::FakeGithub;
use e2e::fake_model::{FakeModel, Reply};
use e2e::{TestForge, commit_files, git_ok, git_run, work_repo};
use serde_json::{Value, json};

const GITHUB_REPO: &str = "octo/app";
const FORGE_REPO: &str = "acme/app";

/// A forge wired to `fake`, with the app installed on `octo/app` and the
/// forge's `acme/app` linked to it.
fn linked_forge(fake: &FakeGithub, sandboxes: bool) -> TestForge {
    linked_forge_with(fake, sandboxes, &[])
}

/// [`linked_forge`] with more of the server's environment (`FORGE_*` options).
fn linked_forge_with(fake: &FakeGithub, sandboxes: bool, env: &[(&str, &str)]) -> TestForge {
    let mut builder = TestForge::builder().env("FORGE_GITHUB_RECONCILE_SECS", "3600");
    for (key, value) in env {
        builder = builder.env(key, value);
    }
    for (key, value) in fake.forge_env() {
        builder = builder.env(key, &value);
    }
    if sandboxes {
        builder = builder.with_sandboxes(20);
    }
    let forge = builder.start();
    fake.set_webhook_url(&format!("{}/github/webhook", forge.url));
    fake.create_repo(GITHUB_REPO);
    fake.install(77, "octo", &[GITHUB_REPO]);
    forge.create_repo(FORGE_REPO);
    // Linking picks where the App's token pushes: an admin token limited
    // to the repository may not.
    let limited = forge.create_token("repo-admin", &["admin"], Some(FORGE_REPO));
    let (status, refused) = forge.call(
        Some(&limited),
        "POST",
        &format!("/v1/repos/{FORGE_REPO}/github"),
        Some(json!({ "repository": GITHUB_REPO })),
    );
    assert_eq!(status, 403, "{refused}");
    let (status, link) = forge.call(
        Some(&forge.admin_token),
        "POST",
        &format!("/v1/repos/{FORGE_REPO}/github"),
        Some(json!({ "repository": GITHUB_REPO })),
    );
    assert_eq!(status, 201, "{link}");
    let link: GithubLinkView = serde_json::from_value(link).unwrap();
    assert_eq!(link.repository, GITHUB_REPO);
    assert_eq!(link.installation_id, 77);
    forge
}

/// Sends only the head of a webhook POST announcing `length` bytes and
/// returns the forge's answer's status line (or why there was none within
/// 10 s: a forge that waits for the body).
fn announce_body_only(forge: &TestForge, length: usize, signature: &str) -> String {
    use std::io::{BufRead, Write};
    let host = forge.url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST /github/webhook HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         X-GitHub-Event: push\r\nX-GitHub-Delivery: big\r\nX-Hub-Signature-256: {signature}\r\n\
         Content-Length: {length}\r\n\r\n"
    )
    .unwrap();
    let mut line = String::new();
    match std::io::BufReader::new(stream).read_line(&mut line) {
        Ok(_) => line.trim().to_owned(),
        Err(error) => format!("no answer: {error}"),
    }
}

/// The forge's value of `refname`, read with `git ls-remote`.
fn forge_ref(forge: &TestForge, refname: &str) -> Option<String> {
    let url = forge.git_url(FORGE_REPO, &forge.admin_token);
    let listing = git_ok(Path::new("."), &["ls-remote", &url, refname]);
    listing.split_whitespace().next().map(str::to_owned)
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn github_state(forge: &TestForge) -> GithubLinkView {
    forge.get(&format!("/v1/repos/{FORGE_REPO}/github"))
}

fn ref_state(forge: &TestForge, refname: &str) -> Option<RefView> {
    github_state(forge)
        .refs
        .into_iter()
        .find(|r| r.ref_name == refname)
}

/// The sync state of `refname`, if the forge tracks it.
fn sync_state(forge: &TestForge, refname: &str) -> Option<RefSyncState> {
    ref_state(forge, refname).map(|r| r.state)
}

/// The event of a review the fake GitHub recorded, as the bot's verdict.
fn verdict(review: &Value) -> ReviewVerdict {
    review["event"]
        .as_str()
        .and_then(|event| event.parse().ok())
        .unwrap_or_else(|| panic!("a review event: {review}"))
}

#[test]
fn repositories_sync_both_ways_without_overwriting() {
    let fake = FakeGithub::start(4242);
    let forge = linked_forge(&fake, false);
    let tmp = tempfile::tempdir().unwrap();
    let github_url = fake.user_git_url(GITHUB_REPO);
    let forge_url = forge.git_url(FORGE_REPO, &forge.admin_token);

    // Push to GitHub: the branch appears in the forge.
    let work = work_repo(tmp.path(), "work", &[("README.md", "hello\n")]);
    let first = git_ok(&work, &["rev-parse", "HEAD"]);
    git_ok(&work, &["push", "--quiet", &github_url, "main"]);
    wait_for("main in the forge", || {
        forge_ref(&forge, "refs/heads/main").as_deref() == Some(first.as_str())
    });
    let events = forge.events(FORGE_REPO, 0);
    let push = events.iter().find(|e| e.kind == "push").unwrap();
    assert_eq!(push.payload["source"], "github", "{push:?}");

    // Push to the forge: the branch and a tag appear on GitHub.
    git_ok(&work, &["checkout", "--quiet", "-b", "feature"]);
    let feature = commit_files(&work, &[("feature.txt", "f\n")], "feature");
    git_ok(&work, &["tag", "v1"]);
    let pushed = Instant::now();
    git_ok(&work, &["push", "--quiet", &forge_url, "feature", "v1"]);
    wait_for("feature on GitHub", || {
        fake.ref_sha(GITHUB_REPO, "refs/heads/feature").as_deref() == Some(feature.as_str())
    });
    wait_for("v1 on GitHub", || {
        fake.ref_sha(GITHUB_REPO, "refs/tags/v1").is_some()
    });
    wait_for("feature in sync", || {
        sync_state(&forge, "refs/heads/feature") == Some(RefSyncState::InSync)
    });
    let synced_in = pushed.elapsed();

    // No ping-pong: what came from GitHub was not pushed back (GitHub saw
    // one push of main, the user's) and what went to GitHub came back as
    // nothing new in the forge. Either would take the way the feature's
    // push just took, so twice that time is long enough to see it.
    let (main_pushes, feature_pushes) = e2e::stays(
        (2 * synced_in).max(Duration::from_millis(500)),
        "pushes of main on GitHub and of feature in the forge",
        || {
            let main_pushes = fake
                .deliveries()
                .iter()
                .filter(|d| d.event == "push" && d.body.contains("\"refs/heads/main\""))
                .count();
            let feature_pushes = forge
                .events(FORGE_REPO, 0)
                .iter()
                .filter(|e| e.kind == "push" && e.ref_name.as_deref() == Some("refs/heads/feature"))
                .count();
            (main_pushes, feature_pushes)
        },
    );
    assert_eq!(main_pushes, 1);
    assert_eq!(feature_pushes, 1, "the forge recorded its own push only");

    // Delete on GitHub: deleted in the forge.
    git_ok(&work, &["push", "--quiet", &github_url, ":feature"]);
    wait_for("feature gone from the forge", || {
        forge_ref(&forge, "refs/heads/feature").is_none()
    });
    // Delete on the forge: deleted on GitHub.
    git_ok(&work, &["push", "--quiet", &forge_url, ":refs/tags/v1"]);
    wait_for("v1 gone from GitHub", || {
        fake.ref_sha(GITHUB_REPO, "refs/tags/v1").is_none()
    });
    assert!(forge_ref(&forge, "refs/tags/v1").is_none());

    // Installation token expiry mid-sync: the refused token is renewed.
    let issued = fake.tokens_issued();
    fake.expire_tokens();
    git_ok(&work, &["checkout", "--quiet", "main"]);
    let second = commit_files(&work, &[("README.md", "hello again\n")], "second");
    git_ok(&work, &["push", "--quiet", &github_url, "main"]);
    wait_for("second in the forge", || {
        forge_ref(&forge, "refs/heads/main").as_deref() == Some(second.as_str())
    });
    assert!(fake.tokens_issued() > issued, "a new token was minted");

    // Both sides move (GitHub's webhook is lost): diverged, nothing overwritten.
    fake.set_webhooks_paused(true);
    let on_github = commit_files(&work, &[("a.txt", "github\n")], "on github");
    git_ok(&work, &["push", "--quiet", &github_url, "main"]);
    git_ok(&work, &["reset", "--quiet", "--hard", &second]);
    let on_forge = commit_files(&work, &[("b.txt", "forge\n")], "on forge");
    git_ok(&work, &["push", "--quiet", &forge_url, "main"]);
    wait_for("sync.diverged", || {
        forge
            .events(FORGE_REPO, 0)
            .iter()
            .any(|e| e.kind == "sync.diverged" && e.ref_name.as_deref() == Some("refs/heads/main"))
    });
    assert_eq!(
        fake.ref_sha(GITHUB_REPO, "refs/heads/main").as_deref(),
        Some(on_github.as_str())
    );
    assert_eq!(
        forge_ref(&forge, "refs/heads/main").as_deref(),
        Some(on_forge.as_str())
    );
    let main = ref_state(&forge, "refs/heads/main");
    assert_eq!(
        main.as_ref().map(|r| r.state),
        Some(RefSyncState::Diverged),
        "{main:?}"
    );
    let diverged = forge
        .events(FORGE_REPO, 0)
        .into_iter()
        .find(|e| e.kind == "sync.diverged")
        .unwrap();
    assert_eq!(diverged.payload["github_sha"], on_github.as_str());
    assert_eq!(diverged.payload["forge_sha"], on_forge.as_str());
    fake.set_webhooks_paused(false);

    // The CLI shows the state.
    let status = forge.cli_ok(&["github", "status", FORGE_REPO]);
    assert!(
        status.contains("refs/heads/main") && status.contains("diverged"),
        "{status}"
    );
    // The forge-wide view: the installation, and every linked repository
    // with the diverged ref; none of it is a secret.
    let app = forge.admin("GET", "/v1/github", None);
    let overview: GithubOverview = serde_json::from_value(app.clone()).unwrap();
    assert_eq!(overview.installations[0].id, 77, "{app}");
    assert_eq!(overview.installations[0].account, "octo", "{app}");
    assert!(app.get("webhook_secret").is_none() && app.get("private_key_pem").is_none());
    let linked: Vec<GithubLinkView> = forge.get("/v1/github/repos");
    assert_eq!(linked[0].repo.as_deref(), Some(FORGE_REPO), "{linked:?}");
    assert!(
        linked[0]
            .refs
            .iter()
            .any(|r| r.ref_name == "refs/heads/main" && r.state == RefSyncState::Diverged),
        "{linked:?}"
    );
    // Unlinking stops the sync and drops the mirror of GitHub's refs.
    forge.cli_ok(&["github", "unlink", FORGE_REPO]);
    let path = format!("/v1/repos/{FORGE_REPO}/github");
    let (status, _) = forge.call(Some(&forge.admin_token), "GET", &path, None);
    assert_eq!(status, 404);
    let mirrored = git_ok(
        &forge.repo_dir(FORGE_REPO),
        &["for-each-ref", "refs/github"],
    );
    assert!(mirrored.is_empty(), "{mirrored}");
}

#[test]
fn forged_and_repeated_webhooks_do_nothing() {
    let fake = FakeGithub::start(4343);
    let forge = linked_forge(&fake, false);
    let tmp = tempfile::tempdir().unwrap();
    let work = work_repo(tmp.path(), "work", &[("README.md", "hello\n")]);
    let github_url = fake.user_git_url(GITHUB_REPO);
    // The push lands on GitHub, but its webhook is not sent yet.
    fake.set_webhooks_paused(true);
    git_ok(&work, &["push", "--quiet", &github_url, "main"]);
    let delivery = fake
        .deliveries()
        .into_iter()
        .rev()
        .find(|d| d.event == "push")
        .unwrap();

    // Forged: a wrong signature, none, or a right one over another body.
    assert_eq!(
        fake.post_webhook(&delivery.id, "push", &delivery.body, Some("sha256=00ff")),
        401
    );
    assert_eq!(
        fake.post_webhook(&delivery.id, "push", &delivery.body, None),
        401
    );
    let good = e2e::fake_github::signature(b"{}");
    assert_eq!(
        fake.post_webhook(&delivery.id, "push", &delivery.body, Some(&good)),
        401
    );
    // 25 MB announced with no valid signature: refused before one byte of
    // the body is read (the sender here never sends it).
    let refused = announce_body_only(&forge, 25 << 20, "sha256=00ff");
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    assert!(
        forge_ref(&forge, "refs/heads/main").is_none(),
        "a forged webhook had an effect"
    );

    // The genuine delivery is new, so no forged one was stored (it would
    // share the id), and only stored deliveries are ever processed. Then a
    // duplicate.
    assert_eq!(
        reqwest_status_and_body(&fake, &delivery),
        (202, false),
        "a forged webhook was stored"
    );
    let main = fake.ref_sha(GITHUB_REPO, "refs/heads/main").unwrap();
    wait_for("main in the forge", || {
        forge_ref(&forge, "refs/heads/main").as_deref() == Some(main.as_str())
    });
    let again = reqwest_status_and_body(&fake, &delivery);
    assert_eq!(
        again,
        (202, true),
        "the redelivery is acknowledged as a duplicate"
    );
    // A captured delivery replayed under a new id, or a new event name
    // (neither is signed), is known by its signed body.
    for (id, event) in [("replayed-1", "push"), ("replayed-2", "create")] {
        let (status, answer) = fake.post_signed(id, event, &delivery.body);
        let answer: Value = serde_json::from_str(&answer).unwrap_or(Value::Null);
        assert_eq!(
            (status, answer["duplicate"] == true),
            (202, true),
            "a replay as {id}/{event} was taken as new: {answer}"
        );
    }
    let pushes = forge
        .events(FORGE_REPO, 0)
        .iter()
        .filter(|e| e.kind == "push")
        .count();
    assert_eq!(pushes, 1);

    // Secrets never come back from the API.
    let state = forge
        .admin("GET", &format!("/v1/repos/{FORGE_REPO}/github"), None)
        .to_string();
    assert!(!state.contains(e2e::fake_github::WEBHOOK_SECRET));
    assert!(!forge.log().contains(e2e::fake_github::WEBHOOK_SECRET));
    assert!(
        !forge.log().contains("ghs_"),
        "an installation token was logged"
    );
}

/// Redelivers and reads whether the forge called it a duplicate.
fn reqwest_status_and_body(
    fake: &FakeGithub,
    delivery: &e2e::fake_github::Delivery,
) -> (u16, bool) {
    let (status, body) = fake.redeliver_with_body(&delivery.id);
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    (status, body["duplicate"] == true)
}

const PACKAGE: &str = r#"{ "name": "demo", "private": true, "scripts": { "lint": "test -f package.json", "test": "bun test" } }"#;

fn math_test(expected: u32) -> String {
    format!(
        "import {{ expect, test }} from \"bun:test\";\ntest(\"adds small numbers\", () => {{ expect(1 + 1).toBe({expected}); }});\n"
    )
}

fn wait_for_reviews(fake: &FakeGithub, number: u64, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let reviews = fake.reviews(GITHUB_REPO, number);
        if reviews.len() >= count {
            return reviews;
        }
        assert!(
            Instant::now() < deadline,
            "no review {count} on #{number}: {reviews:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The run a review's body links to, as the API shows it.
fn run_of_review(forge: &TestForge, body: &str) -> RunDetail {
    let link = format!("{}/-/runs/", forge.url);
    let run_id: i64 = body
        .split(&link)
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("the body links to the run's page:\n{body}"));
    forge.get(&format!("/v1/runs/{run_id}"))
}

#[test]
fn pull_requests_are_reviewed_with_the_base_branchs_steps() {
    if !e2e::require_sandboxes() {
        return;
    }
    let fake = FakeGithub::start(4444);
    let forge = linked_forge_with(&fake, true, &[("FORGE_REVIEW_MODE", "approve")]);
    let tmp = tempfile::tempdir().unwrap();
    let github_url = fake.user_git_url(GITHUB_REPO);
    let work = work_repo(
        tmp.path(),
        "work",
        &[("package.json", PACKAGE), ("math.test.ts", &math_test(2))],
    );
    let main = git_ok(&work, &["rev-parse", "HEAD"]);
    git_ok(&work, &["push", "--quiet", &github_url, "main"]);

    // A pull request whose test fails gets REQUEST_CHANGES with the output.
    git_ok(&work, &["checkout", "--quiet", "-b", "change"]);
    let broken = commit_files(&work, &[("math.test.ts", &math_test(3))], "break the test");
    git_ok(&work, &["push", "--quiet", &github_url, "change"]);
    let number = fake.open_pull_request(GITHUB_REPO, "change", "main");
    let reviews = wait_for_reviews(&fake, number, 1);
    let review = &reviews[0];
    assert_eq!(verdict(review), ReviewVerdict::RequestChanges, "{review}");
    assert_eq!(review["commit_id"], broken.as_str());
    let body = review["body"].as_str().unwrap();
    // Its steps are main's, the same as its own: the branch's run was
    // reused, not run twice.
    assert!(
        body.contains(&format!(
            "Steps from `main`'s `package.json` at `{}`.",
            &main[..12]
        )) && body.contains("this is the branch's run"),
        "{body}"
    );
    assert_eq!(runs_of(&forge, &broken).len(), 1, "one run of the head");
    assert!(
        body.contains("adds small numbers"),
        "the failing test's output is quoted:\n{body}"
    );
    assert!(
        body.contains("<details>") && body.contains("| test | failed |"),
        "{body}"
    );
    // The run itself names the review it led to.
    let run = run_of_review(&forge, body);
    let review = run.review.as_ref();
    assert_eq!(
        review.map(|r| r.verdict),
        Some(ReviewVerdict::RequestChanges),
        "{run:?}"
    );
    assert_eq!(
        review.map(|r| r.number),
        Some(i64::try_from(number).unwrap()),
        "{run:?}"
    );
    let checks = fake.check_runs(GITHUB_REPO);
    assert!(
        checks.iter().any(|c| c["head_sha"] == broken.as_str()
            && c["status"] == "completed"
            && c["conclusion"] == "failure"),
        "{checks:?}"
    );

    // The same webhook delivered twice: still one review.
    let opened = fake
        .deliveries()
        .into_iter()
        .find(|d| d.event == "pull_request")
        .unwrap();
    assert_eq!(fake.redeliver(&opened.id), 202);
    // A fixing push: APPROVE on the new head, through GitHub's rate limit.
    fake.rate_limit(2);
    // The fix is pushed to the forge: the forge push on the head branch of
    // an open pull request is what runs the pipeline and gets reviewed.
    let fixed = commit_files(&work, &[("math.test.ts", &math_test(2))], "fix the test");
    let forge_url = forge.git_url(FORGE_REPO, &forge.admin_token);
    git_ok(&work, &["push", "--quiet", &forge_url, "change"]);
    let reviews = wait_for_reviews(&fake, number, 2);
    assert_eq!(reviews.len(), 2, "{reviews:?}");
    assert_eq!(verdict(&reviews[1]), ReviewVerdict::Approve, "{reviews:?}");
    assert_eq!(reviews[1]["commit_id"], fixed.as_str());
    assert!(
        reviews[1]["body"]
            .as_str()
            .unwrap()
            .contains("| lint | passed |")
    );

    // The pull request then steps around its failing test: it breaks it
    // again and adds a `.forge.toml` whose one step is `true`. Its own run
    // passes; the review runs main's scripts and requests changes.
    let sneaky = commit_files(
        &work,
        &[
            (".forge.toml", PASS_ANYWAY),
            ("math.test.ts", &math_test(3)),
        ],
        "make the pipeline pass",
    );
    git_ok(&work, &["push", "--quiet", &github_url, "change"]);
    let reviews = wait_for_reviews(&fake, number, 3);
    let review = &reviews[2];
    assert_eq!(review["commit_id"], sneaky.as_str());
    assert_eq!(verdict(review), ReviewVerdict::RequestChanges, "{review}");
    let body = review["body"].as_str().unwrap();
    assert!(
        body.contains("| test | failed |") && body.contains("adds small numbers"),
        "main's test step ran the pull request's code and failed:\n{body}"
    );
    assert!(
        body.contains("`main`'s `package.json`") && !body.contains("branch's run"),
        "{body}"
    );
    let own = own_run(&forge, &sneaky);
    assert_eq!(
        own.state,
        RunState::Passed,
        "the pull request's own steps: {own:?}"
    );

    // Restarting the forge posts nothing again.
    let forge = forge.restart();
    fake.set_webhook_url(&format!("{}/github/webhook", forge.url));
    assert_eq!(
        reqwest_status_and_body(&fake, &opened),
        (202, true),
        "the restarted forge took an old delivery as new"
    );
    // What could post again is start-up work, which begins as the forge
    // starts, and posting a review once a run is known takes milliseconds:
    // three seconds leave that plenty of room.
    let (reviews, posted) = e2e::stays(
        Duration::from_secs(3),
        "reviews on GitHub and review events after the restart",
        || {
            let posted = forge
                .events(FORGE_REPO, 0)
                .iter()
                .filter(|e| e.kind == "review.posted")
                .count();
            (fake.reviews(GITHUB_REPO, number).len(), posted)
        },
    );
    assert_eq!((reviews, posted), (3, 3));
    let _ = git_run(&work, &["status"]);
}

/// A `.forge.toml` whose one step passes whatever the code does.
const PASS_ANYWAY: &str = "[[pipeline.steps]]\nname = \"test\"\nrun = \"true\"\n";

/// The steps of the base branch in [`a_pull_request_cannot_pass_its_review_by_rewriting_its_steps`].
const BASE_STEPS: &str = "[[pipeline.steps]]\nname = \"lint\"\nrun = \"test -f package.json\"\n\n[[pipeline.steps]]\nname = \"test\"\nrun = \"bun test\"\n";

/// The runs of `commit` in the forge's repository, newest first.
fn runs_of(forge: &TestForge, commit: &str) -> Vec<RunView> {
    let runs: Vec<RunView> = forge.get(&format!("/v1/repos/{FORGE_REPO}/runs"));
    runs.into_iter()
        .filter(|run| run.commit_id == commit)
        .collect()
}

/// The finished run of `commit` with its own steps (the push's), waited for.
fn own_run(forge: &TestForge, commit: &str) -> RunView {
    let mut own = None;
    wait_for("the head's own run", || {
        own = runs_of(forge, commit)
            .into_iter()
            .find(|run| run.plan_commit.is_none() && RunState::CONCLUDED.contains(&run.state));
        own.is_some()
    });
    own.unwrap()
}

#[test]
fn a_pull_request_cannot_pass_its_review_by_rewriting_its_steps() {
    if !e2e::require_sandboxes() {
        return;
    }
    let fake = FakeGithub::start(4646);
    // The default review mode.
    let forge = linked_forge(&fake, true);
    let help = forge.cli_ok(&["serve", "--help"]);
    assert!(
        help.contains("--review-mode") && help.contains("[default: comment]"),
        "{help}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let github_url = fake.user_git_url(GITHUB_REPO);
    let work = work_repo(
        tmp.path(),
        "work",
        &[
            ("package.json", PACKAGE),
            (".forge.toml", BASE_STEPS),
            ("math.test.ts", &math_test(2)),
        ],
    );
    let main = git_ok(&work, &["rev-parse", "HEAD"]);
    git_ok(&work, &["push", "--quiet", &github_url, "main"]);

    // The attacker breaks the test and rewrites the steps to `true`.
    git_ok(&work, &["checkout", "--quiet", "-b", "sneaky"]);
    let head = commit_files(
        &work,
        &[
            (".forge.toml", PASS_ANYWAY),
            ("math.test.ts", &math_test(3)),
        ],
        "make the pipeline pass",
    );
    git_ok(&work, &["push", "--quiet", &github_url, "sneaky"]);
    let number = fake.open_pull_request(GITHUB_REPO, "sneaky", "main");

    let reviews = wait_for_reviews(&fake, number, 1);
    let review = &reviews[0];
    assert_eq!(review["commit_id"], head.as_str());
    assert_eq!(
        verdict(review),
        ReviewVerdict::RequestChanges,
        "failing steps request changes, whatever the mode: {review}"
    );
    let body = review["body"].as_str().unwrap();
    assert!(
        body.contains(&format!(
            "Steps from `main`'s `.forge.toml` at `{}`.",
            &main[..12]
        )),
        "the body says where the steps came from:\n{body}"
    );
    assert!(
        body.contains("### ❌") && !body.contains("✅"),
        "a failure:\n{body}"
    );
    assert!(
        body.contains("| lint | passed |")
            && body.contains("| test | failed |")
            && body.contains("adds small numbers"),
        "main's steps ran on the pull request's code:\n{body}"
    );
    assert!(!body.contains("**Verdict"), "{body}");
    let checks = fake.check_runs(GITHUB_REPO);
    assert!(
        checks
            .iter()
            .all(|c| c["head_sha"] != head.as_str() || c["conclusion"] == "failure"),
        "{checks:?}"
    );

    // The pull request's own steps did run, and passed: that run is not
    // what it was judged by.
    let own = own_run(&forge, &head);
    assert_eq!(own.state, RunState::Passed, "{own:?}");
    let judged: Vec<RunView> = runs_of(&forge, &head)
        .into_iter()
        .filter(|run| run.plan_commit.as_deref() == Some(main.as_str()))
        .collect();
    assert_eq!(judged.len(), 1, "one run with main's steps: {judged:?}");
    assert_eq!(judged[0].state, RunState::Failed);
    assert_eq!(judged[0].plan_ref.as_deref(), Some("main"));
    // The own run's completion posts nothing more. It has finished (above),
    // and a review it caused would follow its completion within
    // milliseconds: two seconds leave that plenty of room.
    let reviews = e2e::stays(
        Duration::from_secs(2),
        "reviews of the pull request",
        || fake.reviews(GITHUB_REPO, number).len(),
    );
    assert_eq!(reviews, 1);
}

#[test]
fn reconcile_repairs_missed_webhooks() {
    let fake = FakeGithub::start(4545);
    let mut builder = TestForge::builder().env("FORGE_GITHUB_RECONCILE_SECS", "1");
    for (key, value) in fake.forge_env() {
        builder = builder.env(key, &value);
    }
    let forge = builder.start();
    fake.set_webhook_url(&format!("{}/github/webhook", forge.url));
    fake.create_repo(GITHUB_REPO);
    fake.install(78, "octo", &[GITHUB_REPO]);
    forge.create_repo(FORGE_REPO);
    let _: GithubLinkView = forge.send(
        "POST",
        &format!("/v1/repos/{FORGE_REPO}/github"),
        &api_types::github::GithubLinkRequest {
            repository: GITHUB_REPO.to_owned(),
        },
    );
    // Every webhook of this push is lost; the periodic pass finds it.
    fake.set_webhooks_paused(true);
    let tmp = tempfile::tempdir().unwrap();
    let work = work_repo(tmp.path(), "work", &[("README.md", "hello\n")]);
    let head = git_ok(&work, &["rev-parse", "HEAD"]);
    git_ok(
        &work,
        &["push", "--quiet", &fake.user_git_url(GITHUB_REPO), "main"],
    );
    wait_for("main in the forge", || {
        forge_ref(&forge, "refs/heads/main").as_deref() == Some(head.as_str())
    });
    assert_eq!(
        sync_state(&forge, "refs/heads/main"),
        Some(RefSyncState::InSync)
    );
}

/// A TypeScript project whose tools the analysis after the steps runs:
/// its own `tsc` and Biome, installed by `bun install` from its lockless
/// `package.json`.
const TS_PACKAGE: &str = r#"{
  "name": "typed",
  "private": true,
  "scripts": { "test": "bun test" },
  "devDependencies": { "typescript": "6.0.3", "@biomejs/biome": "2.6.9" }
}"#;
const TSCONFIG: &str = r#"{ "compilerOptions": { "strict": true, "noEmit": true, "target": "ES2022", "module": "ESNext", "moduleResolution": "bundler", "types": [], "skipLibCheck": true }, "include": ["src"] }"#;
const MATH: &str = "export function add(a: number, b: number): number {\n  return a + b;\n}\n";
const UTIL: &str = "export function greet(name: string): string {\n  return `hi ${name}`;\n}\n";
const MATH_TEST: &str = "import { expect, test } from \"bun:test\";\nimport { add } from \"../src/math\";\n\ntest(\"adds small numbers\", () => {\n  expect(add(1, 1)).toBe(2);\n});\n";

#[test]
fn findings_of_the_tools_become_comments_on_the_changed_lines() {
    if !e2e::require_sandboxes() {
        return;
    }
    let fake = FakeGithub::start(4446);
    let registry = e2e::npm_registry_env("");
    let env: Vec<(&str, &str)> = registry.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let forge = linked_forge_with(&fake, true, &env);
    let tmp = tempfile::tempdir().unwrap();
    let github_url = fake.user_git_url(GITHUB_REPO);
    let work = work_repo(
        tmp.path(),
        "work",
        &[
            ("package.json", TS_PACKAGE),
            ("tsconfig.json", TSCONFIG),
            ("biome.json", "{}\n"),
            ("src/math.ts", MATH),
            ("src/util.ts", UTIL),
            ("test/math.test.ts", MATH_TEST),
        ],
    );
    git_ok(&work, &["push", "--quiet", &github_url, "main"]);

    // One change with a type error (src/math.ts line 5), a lint error
    // (src/util.ts line 3, `debugger`) and a failing test (line 5 of the
    // test), and one problem outside the change: a type error in a line
    // that was there before (none: the base is clean), so the summary
    // lists only what is off the diff.
    git_ok(&work, &["checkout", "--quiet", "-b", "typed"]);
    let head = commit_files(
        &work,
        &[
            (
                "src/math.ts",
                &format!("{MATH}\nexport const total: number = add(1, \"2\");\n"),
            ),
            (
                "src/util.ts",
                "export function greet(name: string): string {\n  if (name === \"\") {\n    debugger;\n  }\n  return `hi ${name}`;\n}\n",
            ),
            (
                "test/math.test.ts",
                &MATH_TEST.replace("toBe(2)", "toBe(3)"),
            ),
        ],
        "a type error, a lint error and a failing test",
    );
    git_ok(&work, &["push", "--quiet", &github_url, "typed"]);
    let number = fake.open_pull_request(GITHUB_REPO, "typed", "main");
    let reviews = wait_for_reviews(&fake, number, 1);
    assert_eq!(reviews.len(), 1, "{reviews:?}");
    let review = &reviews[0];
    assert_eq!(review["commit_id"], head.as_str());
    assert_eq!(verdict(review), ReviewVerdict::RequestChanges, "{review}");
    let mut places: Vec<(String, u64, String)> = review["comments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_owned(),
                c["line"].as_u64().unwrap(),
                c["body"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    places.sort();
    let body = review["body"].as_str().unwrap();
    assert_eq!(
        places
            .iter()
            .map(|(path, line, _)| (path.as_str(), *line))
            .collect::<Vec<_>>(),
        [
            ("src/math.ts", 5),
            ("src/util.ts", 3),
            ("test/math.test.ts", 5),
        ],
        "{places:#?}\n{body}"
    );
    assert!(places[0].2.contains("**tsc** `TS2345`"), "{:?}", places[0]);
    assert!(
        places[1]
            .2
            .contains("**Biome** `lint/suspicious/noDebugger`"),
        "{:?}",
        places[1]
    );
    assert!(
        places[2]
            .2
            .contains("**bun test**: `adds small numbers` failed"),
        "{:?}",
        places[2]
    );
    assert!(
        body.contains("#### Findings (ran tsc, Biome)")
            && body.contains("3 on lines of this change, commented inline"),
        "{body}"
    );
    // The run shows the same findings through the API.
    let run = run_of_review(&forge, body);
    let analysis = run.analysis.expect("the run was analysed");
    assert_eq!(analysis.tools, ["tsc", "Biome"], "{analysis:?}");
    for (path, line, _) in &places {
        assert!(
            analysis
                .findings
                .iter()
                .any(|f| &f.path == path && f.line == Some(*line as u32)),
            "{path}:{line} in {analysis:?}"
        );
    }
    assert!(analysis.notes.is_empty(), "{analysis:?}");

    // Linking, syncing, the check run and the review: one token in all.
    assert_eq!(fake.tokens_issued(), 1, "tokens minted");

    // GitHub revokes the token: the next call is refused once, one new
    // token is minted, and the next review is posted with it.
    fake.expire_tokens();
    let fixed = commit_files(
        &work,
        &[
            ("src/math.ts", MATH),
            ("src/util.ts", UTIL),
            ("test/math.test.ts", MATH_TEST),
        ],
        "fix everything",
    );
    git_ok(&work, &["push", "--quiet", &github_url, "typed"]);
    let reviews = wait_for_reviews(&fake, number, 2);
    let review = &reviews[1];
    assert_eq!(review["commit_id"], fixed.as_str());
    assert_eq!(verdict(review), ReviewVerdict::Comment, "{review}");
    assert_eq!(review["comments"].as_array().map(Vec::len), Some(0));
    assert!(
        review["body"]
            .as_str()
            .unwrap()
            .contains("0 on lines of this change, commented inline; 0 elsewhere."),
        "{review}"
    );
    assert_eq!(fake.tokens_issued(), 2, "tokens minted");
}

#[test]
fn the_ai_review_adds_its_summary_and_comments_and_never_blocks_when_down() {
    if !e2e::require_sandboxes() {
        return;
    }
    let fake = FakeGithub::start(4447);
    let model = FakeModel::start(
        vec![Reply::Answer(json!({
            "summary": "The new helper divides without checking for zero.",
            "request_changes": true,
            "comments": [
                { "path": "math.ts", "line": 3, "body": "What if b is 0?" },
                { "path": "math.ts", "line": 40, "body": "Not a line of this change." },
            ],
        }))],
        Some(Reply::Status(503)),
    );
    let spec = format!("{},fake-reviewer", model.url);
    let forge = linked_forge_with(
        &fake,
        true,
        &[
            ("FORGE_REVIEW_MODEL", &spec),
            ("FORGE_REVIEW_MODEL_KEY", "sk-fake-model-key"),
            ("FORGE_REVIEW_MODEL_TIMEOUT_SECS", "2"),
        ],
    );
    let tmp = tempfile::tempdir().unwrap();
    let github_url = fake.user_git_url(GITHUB_REPO);
    let add = "export const add = (a: number, b: number) => a + b;\n";
    let work = work_repo(
        tmp.path(),
        "work",
        &[
            ("package.json", PACKAGE),
            ("math.test.ts", &math_test(2)),
            ("math.ts", add),
        ],
    );
    git_ok(&work, &["push", "--quiet", &github_url, "main"]);
    git_ok(&work, &["checkout", "--quiet", "-b", "divide"]);
    let head = commit_files(
        &work,
        &[(
            "math.ts",
            &format!("{add}\nexport const divide = (a: number, b: number) => a / b;\n"),
        )],
        "add divide",
    );
    git_ok(&work, &["push", "--quiet", &github_url, "divide"]);
    let number = fake.open_pull_request(GITHUB_REPO, "divide", "main");

    // The steps pass and the model asks for changes: a comment, since the
    // model alone may not block.
    let reviews = wait_for_reviews(&fake, number, 1);
    let review = &reviews[0];
    assert_eq!(review["commit_id"], head.as_str());
    assert_eq!(verdict(review), ReviewVerdict::Comment, "{review}");
    let body = review["body"].as_str().unwrap();
    for said in [
        "#### AI review (fake-reviewer)",
        "The new helper divides without checking for zero.",
        "1 of the model's comments did not point at a line of this change and were dropped.",
        "The model asks for changes; the steps passed, so this review is a comment.",
        "| test | passed |",
    ] {
        assert!(body.contains(said), "{said:?} in:\n{body}");
    }
    let comments = review["comments"].as_array().unwrap();
    assert_eq!(comments.len(), 1, "{comments:?}");
    assert_eq!(comments[0]["path"], "math.ts");
    assert_eq!(comments[0]["line"], 3);
    assert_eq!(comments[0]["body"], "**AI review**: What if b is 0?");
    let requests = model.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(
        requests[0].authorization.as_deref(),
        Some("Bearer sk-fake-model-key")
    );
    assert_eq!(requests[0].body["model"], "fake-reviewer");
    let prompt = requests[0].prompt();
    assert!(
        prompt.contains("+export const divide") && prompt.contains("test (`bun run test`): passed"),
        "{prompt}"
    );

    // The model goes down (503 to every request): the forge's own review
    // is posted, saying why the model's is missing.
    let down = commit_files(&work, &[("math.ts", add)], "drop divide");
    git_ok(&work, &["push", "--quiet", &github_url, "divide"]);
    let reviews = wait_for_reviews(&fake, number, 2);
    let review = &reviews[1];
    assert_eq!(review["commit_id"], down.as_str());
    assert_eq!(verdict(review), ReviewVerdict::Comment, "{review}");
    let body = review["body"].as_str().unwrap();
    assert!(
        body.contains(
            "The AI review (fake-reviewer) is missing: the model's endpoint answered 503"
        ) && body.contains("This review is the forge's own."),
        "{body}"
    );
    assert_eq!(model.requests().len(), 4, "one request, then three tries");
    assert!(
        !forge.log().contains("sk-fake-model-key"),
        "the model's key reached the log"
    );
}
