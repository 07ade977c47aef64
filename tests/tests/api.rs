//! The JSON API and the CLI: repositories (including import), tokens,
//! events, errors.

#![allow(clippy::unwrap_used)] // A test that cannot unwrap has failed: say so loudly.

use std::time::{Duration, Instant};

use api_types::events::{Event, EventPage};
use api_types::repos::{CreateRepo, RepoView};
use e2e::{TestForge, eventually, git_ok, stays, work_repo};
use serde_json::{Value, json};

#[test]
fn import_copies_every_branch_and_tag_and_respects_the_network_policy() {
    let forge = TestForge::builder().allow_loopback().start();
    forge.create_repo("src/origin");
    let tmp = tempfile::tempdir().unwrap();
    let work = work_repo(tmp.path(), "work", &[("a", "a\n")]);
    let url = forge.git_url("src/origin", &forge.admin_token);
    git_ok(&work, &["checkout", "--quiet", "-b", "develop"]);
    e2e::commit_files(&work, &[("b", "b\n")], "on develop");
    git_ok(&work, &["tag", "v1.0"]);
    git_ok(&work, &["push", "--quiet", &url, "main", "develop", "v1.0"]);

    // The source URL carries a token; it must not be kept or echoed.
    let created: RepoView = forge.send(
        "POST",
        "/v1/repos",
        &CreateRepo {
            name: "dst/copy".into(),
            import_url: Some(url.clone()),
            ..CreateRepo::default()
        },
    );
    assert_eq!(created.default_branch, "main");
    let copy = forge.repo_dir("dst/copy");
    let refs = git_ok(
        &copy,
        &["for-each-ref", "--format=%(refname) %(objectname)"],
    );
    let source_refs = git_ok(
        &forge.repo_dir("src/origin"),
        &["for-each-ref", "--format=%(refname) %(objectname)"],
    );
    assert_eq!(refs, source_refs);
    let config = std::fs::read_to_string(copy.join("config")).unwrap();
    assert!(
        !config.contains(&forge.admin_token),
        "credentials are not stored"
    );

    let (status, body) = forge.call(
        Some(&forge.admin_token),
        "POST",
        "/v1/repos",
        Some(json!({ "name": "dst/bad", "import_url": format!("{}/nope/nope.git", forge.url) })),
    );
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "import_failed");
    let (status, _) = forge.call(Some(&forge.admin_token), "GET", "/v1/repos/dst/bad", None);
    assert_eq!(status, 404, "a failed import leaves no repository");

    // Without the loopback allowance, the forge will not fetch from itself.
    let strict = TestForge::start();
    let (status, body) = strict.call(
        Some(&strict.admin_token),
        "POST",
        "/v1/repos",
        Some(json!({ "name": "dst/copy", "import_url": url })),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("refused")
    );
    assert!(
        !body.to_string().contains(&forge.admin_token),
        "the secret is not echoed"
    );
    let (status, _) = strict.call(
        Some(&strict.admin_token),
        "POST",
        "/v1/repos",
        Some(json!({ "name": "dst/file", "import_url": "file:///etc" })),
    );
    assert_eq!(status, 400);
}

#[test]
fn only_admins_manage_repositories_and_tokens() {
    let forge = TestForge::start();
    let writer = forge.create_token("writer", &["repo:write"], None);
    for (method, path, body) in [
        ("POST", "/v1/repos", Some(json!({ "name": "a/b" }))),
        ("GET", "/v1/tokens", None),
        (
            "POST",
            "/v1/tokens",
            Some(json!({ "name": "x", "scopes": ["admin"] })),
        ),
    ] {
        let (status, body) = forge.call(Some(&writer), method, path, body);
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "forbidden");
    }
    let (status, body) = forge.call(None, "GET", "/v1/repos", None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, body) = forge.call(
        Some(&forge.admin_token),
        "POST",
        "/v1/tokens",
        Some(json!({ "name": "x", "scopes": ["root"] })),
    );
    assert_eq!(status, 400);
    assert!(body["error"]["message"].as_str().unwrap().contains("root"));
    let (status, _) = forge.call(
        Some(&forge.admin_token),
        "DELETE",
        "/v1/tokens/unknown",
        None,
    );
    assert_eq!(status, 404);
    let (status, body) = forge.call(Some(&forge.admin_token), "GET", "/v1/nothing-here", None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
}

#[test]
fn the_cli_creates_lists_and_follows() {
    let forge = TestForge::start();
    let ok = |args: &[&str]| forge.cli_ok(args);
    let created = ok(&["repo", "create", "cli/demo"]);
    assert!(
        created.contains("created cli/demo") && created.contains("git clone"),
        "{created}"
    );
    assert!(ok(&["repo", "list"]).contains("cli/demo"));
    let token = ok(&[
        "token",
        "create",
        "ci",
        "--scope",
        "repo:write",
        "--repo",
        "cli/demo",
    ]);
    let secret = token.lines().last().unwrap().trim().to_owned();
    assert!(secret.starts_with("forge_"), "{token}");
    let listed = ok(&["token", "list"]);
    assert!(listed.contains("ci") && listed.contains("cli/demo") && !listed.contains(&secret));

    let tmp = tempfile::tempdir().unwrap();
    let work = work_repo(tmp.path(), "work", &[("x", "1\n")]);
    git_ok(
        &work,
        &[
            "push",
            "--quiet",
            &forge.git_url("cli/demo", &secret),
            "main",
        ],
    );
    let events = ok(&["events", "cli/demo"]);
    assert!(
        events.contains("push") && events.contains("branch.created"),
        "{events}"
    );
    let json_lines = ok(&["--json", "events", "cli/demo"]);
    let first: Event = serde_json::from_str(json_lines.lines().next().unwrap()).unwrap();
    assert_eq!(first.payload["pusher"]["name"], "ci");

    let failed = forge.cli(&["repo", "create", "../bad"]);
    assert!(!failed.status.success());
    let message = String::from_utf8_lossy(&failed.stderr);
    assert!(
        message.starts_with("forge: ") && message.contains("HTTP 400"),
        "{message}"
    );
    assert_eq!(
        message.lines().count(),
        1,
        "one line, no backtrace: {message}"
    );
    ok(&["repo", "delete", "cli/demo"]);
    assert!(!ok(&["repo", "list"]).contains("cli/demo"));
}

#[test]
fn event_long_poll_wakes_on_a_push() {
    // The statement log, in JSON and tagged with the request's id, shows
    // when the long poll has read the events and found none.
    let forge = TestForge::builder()
        .env("RUST_LOG", "info,sqlx::query=debug")
        .env("FORGE_LOG_FORMAT", "json")
        .start();
    forge.create_repo("acme/poll");
    let url = format!(
        "{}/v1/repos/acme/poll/events?after=0&wait_secs=60",
        forge.url
    );
    let token = forge.admin_token.clone();
    let waiter = std::thread::spawn(move || {
        let page: EventPage = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(90))
            .build()
            .unwrap()
            .get(url)
            .header("x-request-id", LONG_POLL)
            .bearer_auth(token)
            .send()
            .unwrap()
            .json()
            .unwrap();
        (page, Instant::now())
    });
    // The push comes after that first read, so only a wake-up can answer
    // with its events before the 60 s deadline.
    let read = eventually(
        Duration::from_secs(30),
        "the long poll's first read of the events",
        || {
            let log = forge.log();
            log.lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .find(is_long_poll_read)
                .ok_or_else(|| format!("{} log lines, none of them", log.lines().count()))
        },
    );
    assert_eq!(read["fields"]["rows_returned"], 0, "{read}");
    assert!(
        !waiter.is_finished(),
        "the long poll answered an empty read"
    );
    let pushed = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let work = work_repo(tmp.path(), "work", &[("x", "1\n")]);
    git_ok(
        &work,
        &[
            "push",
            "--quiet",
            &forge.git_url("acme/poll", &forge.admin_token),
            "main",
        ],
    );
    let (page, answered) = waiter.join().unwrap();
    let events = &page.events;
    assert!(events.iter().any(|e| e.kind == "push"), "{page:?}");
    assert!(
        answered.duration_since(pushed) < Duration::from_secs(30),
        "woken by the push, not the deadline"
    );
    assert_eq!(page.next_cursor, events.last().unwrap().id);
}

/// The request id the long poll sends, to find its lines in the log.
const LONG_POLL: &str = "long-poll-waiter";

/// Whether a JSON log line is the statement log of the long poll's read of
/// its repository's events (written once the read is done).
fn is_long_poll_read(line: &Value) -> bool {
    let statement = format!(
        "{} {}",
        line["fields"]["summary"].as_str().unwrap_or_default(),
        line["fields"]["db.statement"].as_str().unwrap_or_default()
    );
    line["target"] == "sqlx::query"
        && statement.contains("FROM events WHERE repo_id")
        && line["spans"]
            .as_array()
            .is_some_and(|spans| spans.iter().any(|span| span["id"] == LONG_POLL))
}

#[test]
fn an_import_follows_no_redirect() {
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    // What the redirect points at: it counts who comes.
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target_port = target.local_addr().unwrap().port();
    let reached = Arc::new(AtomicUsize::new(0));
    let count = reached.clone();
    std::thread::spawn(move || {
        for stream in target.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    // The import URL: every request is sent on to the target.
    let redirector = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let redirector_port = redirector.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in redirector.incoming().flatten() {
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let _ = write!(
                stream,
                "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{target_port}/internal.git/info/refs?service=git-upload-pack\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });

    let forge = TestForge::builder().allow_loopback().start();
    let (status, body) = forge.call(
        Some(&forge.admin_token),
        "POST",
        "/v1/repos",
        Some(json!({
            "name": "dst/redirected",
            "import_url": format!("http://127.0.0.1:{redirector_port}/public.git"),
        })),
    );
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "import_failed");
    // The import is over once it answered: a connection it made to the
    // target is established already, and the window only covers the
    // target's thread taking it from the accept queue.
    let reached = stays(
        Duration::from_millis(200),
        "connections to the redirect's target",
        || reached.load(Ordering::SeqCst),
    );
    assert_eq!(reached, 0, "the import followed the redirect");
}
