//! Webhooks end to end: the real forge, real pushes with real `git`, and a
//! real HTTP receiver on loopback that records requests, verifies both
//! signatures with its own HMAC code and answers with scripted statuses.

#![allow(clippy::unwrap_used)] // A test that cannot unwrap has failed: say so loudly.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api_types::DeliveryState;
use api_types::webhooks::{DeliveryPage, DeliveryView, Queued, UpdateWebhook, WebhookView};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use e2e::{TestForge, commit_files, git_ok, work_repo};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

const WAIT: Duration = Duration::from_secs(30);

/// A fast retry schedule so that retries happen within a test.
fn forge() -> e2e::Builder {
    TestForge::builder()
        .allow_loopback()
        .env("FORGE_WEBHOOK_RETRY_DELAYS", "200ms,200ms,200ms,200ms")
}

/// What the receiver answers to one request.
#[derive(Clone, Copy)]
enum Reply {
    Status(u16),
    /// Never answers (until the forge gives up on the connection).
    Hang,
}

#[derive(Debug, Clone)]
struct Request {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// Both signature schemes verify with `secret`.
    fn verifies(&self, secret: &str) -> bool {
        let key = secret
            .strip_prefix("whsec_")
            .and_then(|b64| BASE64.decode(b64).ok())
            .unwrap_or_else(|| secret.as_bytes().to_vec());
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(
            format!(
                "{}.{}.",
                self.header("webhook-id"),
                self.header("webhook-timestamp")
            )
            .as_bytes(),
        );
        mac.update(&self.body);
        let standard = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(&self.body);
        let github = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        self.header("webhook-signature")
            .split(' ')
            .any(|s| s == standard)
            && self.all("x-hub-signature-256").contains(&github.as_str())
    }
}

/// A tiny HTTP/1.1 server: one request per connection, replies scripted per
/// path (200 once the script is used up).
#[derive(Clone)]
struct Receiver {
    port: u16,
    received: Arc<Mutex<Vec<Request>>>,
    script: Arc<Mutex<HashMap<String, VecDeque<Reply>>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let receiver = Receiver {
            port: listener.local_addr().unwrap().port(),
            received: Arc::default(),
            script: Arc::default(),
        };
        let shared = receiver.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = shared.clone();
                std::thread::spawn(move || shared.serve(stream));
            }
        });
        receiver
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn script(&self, path: &str, replies: &[Reply]) {
        self.script
            .lock()
            .unwrap()
            .insert(path.to_owned(), replies.iter().cloned().collect());
    }

    fn serve(&self, stream: TcpStream) {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            return;
        }
        let path = line.split(' ').nth(1).unwrap_or("").to_owned();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.trim_end().split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let reply = self
            .script
            .lock()
            .unwrap()
            .get_mut(&path)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Reply::Status(200));
        self.received.lock().unwrap().push(Request {
            path,
            headers,
            body,
        });
        let status = match reply {
            Reply::Status(status) => status,
            Reply::Hang => {
                std::thread::sleep(Duration::from_secs(20));
                return;
            }
        };
        let text = format!("receiver says {status}");
        let mut stream = stream;
        let _ = write!(
            stream,
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
            text.len()
        );
    }

    fn requests(&self, path: &str) -> Vec<Request> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Waits until `path` got `count` requests; returns them.
    fn wait_for(&self, path: &str, count: usize) -> Vec<Request> {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.requests(path);
            if got.len() >= count {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{path} got {} of {count} requests",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn hooks_path(repo: &str) -> String {
    format!("/v1/repos/{repo}/webhooks")
}

fn create_hook(forge: &TestForge, repo: &str, body: Value) -> WebhookView {
    forge.send("POST", &hooks_path(repo), &body)
}

/// Polls `check` on the deliveries of a hook until it holds.
fn wait_deliveries(
    forge: &TestForge,
    repo: &str,
    hook: &str,
    check: impl Fn(&[DeliveryView]) -> bool,
) -> Vec<DeliveryView> {
    let deadline = Instant::now() + WAIT;
    loop {
        let page: DeliveryPage = forge.get(&format!("{}/{hook}/deliveries", hooks_path(repo)));
        if check(&page.deliveries) {
            return page.deliveries;
        }
        assert!(
            Instant::now() < deadline,
            "deliveries never settled: {page:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn push(work: &Path, url: &str, refspec: &str) {
    git_ok(work, &["push", "--quiet", url, refspec]);
}

#[test]
fn pushes_are_delivered_signed_and_filtered_by_branch_and_path() {
    let forge = forge().start();
    let receiver = Receiver::start();
    forge.create_repo("acme/web");
    let all = create_hook(
        &forge,
        "acme/web",
        json!({ "url": receiver.url("/all"), "events": ["push"] }),
    );
    let secret = all.secret.clone().unwrap();
    assert!(
        secret.starts_with("whsec_"),
        "a secret is generated: {all:?}"
    );
    let filtered = create_hook(
        &forge,
        "acme/web",
        json!({
            "url": receiver.url("/filtered"),
            "events": ["push"],
            "branches": ["release/*", "!release/old"],
            "paths": ["src/**", "!**/*.md"],
            "secret": "a-secret-of-my-own",
        }),
    );
    assert_eq!(filtered.secret.as_deref(), Some("a-secret-of-my-own"));
    let listed = forge.admin("GET", &hooks_path("acme/web"), None);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h.get("secret").is_none()),
        "secrets are shown only once: {listed}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let work = work_repo(
        tmp.path(),
        "work",
        &[("src/a.ts", "a\n"), ("README.md", "r\n")],
    );
    let url = forge.git_url("acme/web", &forge.admin_token);
    push(&work, &url, "main");
    git_ok(&work, &["checkout", "--quiet", "-b", "release/1"]);
    commit_files(&work, &[("docs/x.md", "x\n")], "docs only: no path match");
    push(&work, &url, "release/1");
    let wanted = commit_files(&work, &[("src/b.ts", "b\n")], "source: matches");
    push(&work, &url, "release/1");
    commit_files(
        &work,
        &[("src/c.md", "c\n")],
        "markdown under src: excluded",
    );
    push(&work, &url, "release/1");
    git_ok(&work, &["checkout", "--quiet", "-b", "release/old"]);
    commit_files(&work, &[("src/d.ts", "d\n")], "excluded branch");
    push(&work, &url, "release/old");
    git_ok(&work, &["tag", "v1"]);
    push(&work, &url, "v1");

    // Six pushes (main, four on release/*, the tag): all reach the unfiltered hook.
    let got = receiver.wait_for("/all", 6);
    let first = &got[0];
    assert!(first.verifies(&secret), "both signatures verify");
    assert!(!first.verifies("whsec_AAAA"), "and not with another secret");
    assert_eq!(first.header("x-forge-event"), "push");
    assert_eq!(first.header("x-forge-delivery"), first.header("webhook-id"));
    assert!(first.header("webhook-id").starts_with("msg_"));
    let payload = first.json();
    assert_eq!(payload["type"], "push");
    assert_eq!(payload["data"]["ref"], "refs/heads/main");
    assert_eq!(payload["data"]["repository"]["full_name"], "acme/web");
    let paths = payload["data"]["changed_paths"].to_string();
    assert!(
        paths.contains("src/a.ts") && paths.contains("README.md"),
        "{paths}"
    );
    let ids: std::collections::HashSet<&str> = got.iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(ids.len(), 6, "one delivery per event");

    // The filtered hook: only the release/1 push that touched src/b.ts. The
    // tag push above was consumed after every earlier event, so its log is final.
    let deliveries = wait_deliveries(&forge, "acme/web", &filtered.id, |d| {
        d.iter().all(|d| d.status == DeliveryState::Delivered)
    });
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    let only = receiver.wait_for("/filtered", 1);
    assert_eq!(only.len(), 1);
    assert!(only[0].verifies("a-secret-of-my-own"));
    assert_eq!(only[0].json()["data"]["after"], wanted);

    // Ping: on request, through filters.
    let (status, queued) = forge.call(
        Some(&forge.admin_token),
        "POST",
        &format!("{}/{}/ping", hooks_path("acme/web"), filtered.id),
        None,
    );
    assert_eq!(status, 202, "{queued}");
    let queued: Queued = serde_json::from_value(queued).unwrap();
    let pings = receiver.wait_for("/filtered", 2);
    assert_eq!(pings[1].json()["type"], "ping");
    assert_eq!(pings[1].header("webhook-id"), queued.delivery_id);
    assert!(pings[1].verifies("a-secret-of-my-own"));

    // Rotation: the new secret is shown once and both sign for a while.
    let rotated: WebhookView = forge.send(
        "PATCH",
        &format!("{}/{}", hooks_path("acme/web"), all.id),
        &UpdateWebhook {
            rotate_secret: true,
            ..UpdateWebhook::default()
        },
    );
    let new_secret = rotated.secret.clone().unwrap();
    assert_ne!(new_secret, secret);
    assert!(rotated.previous_secret_expires_at.is_some(), "{rotated:?}");
    commit_files(&work, &[("src/e.ts", "e\n")], "after rotation");
    push(&work, &url, "release/old");
    let got = receiver.wait_for("/all", 7);
    assert!(got[6].verifies(&new_secret) && got[6].verifies(&secret));
    assert_eq!(got[6].all("x-hub-signature-256").len(), 2);

    // The CLI lists hooks without secrets.
    let text = forge.cli_ok(&["hook", "list", "acme/web"]);
    assert!(text.contains(&filtered.id), "{text}");
    assert!(!text.contains(&new_secret));
    let log = forge.log();
    assert!(
        !log.contains(&new_secret) && !log.contains("a-secret-of-my-own"),
        "secrets are never logged"
    );
}

#[test]
fn bad_filters_and_refused_targets_are_400_and_access_is_checked() {
    let strict = TestForge::start();
    strict.create_repo("acme/web");
    let receiver = Receiver::start();
    let (status, body) = strict.call(
        Some(&strict.admin_token),
        "POST",
        &hooks_path("acme/web"),
        Some(json!({ "url": "https://example.invalid/hook", "events": ["push"], "paths": ["src/**", "src/[ab"] })),
    );
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("paths[1]") && message.contains("offset 4"),
        "{message}"
    );
    let (status, body) = strict.call(
        Some(&strict.admin_token),
        "POST",
        &hooks_path("acme/web"),
        Some(json!({ "url": "https://example.invalid/hook", "events": ["pushed"] })),
    );
    assert_eq!(status, 400, "{body}");

    for url in [
        receiver.url("/x"),
        format!("http://localhost:{}/x", receiver.port),
        "http://[::1]/x".into(),
        "http://169.254.169.254/latest".into(),
    ] {
        let (status, body) = strict.call(
            Some(&strict.admin_token),
            "POST",
            &hooks_path("acme/web"),
            Some(json!({ "url": url, "events": ["*"] })),
        );
        assert_eq!(status, 400, "{url}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("refused"),
            "{body}"
        );
    }
    let (status, _) = strict.call(
        Some(&strict.admin_token),
        "POST",
        &hooks_path("acme/web"),
        Some(json!({ "url": "file:///etc/passwd", "events": ["*"] })),
    );
    assert_eq!(status, 400);

    // Access: no token 401; repo:read may list but not create.
    let (status, _) = strict.call(None, "GET", &hooks_path("acme/web"), None);
    assert_eq!(status, 401);
    let reader = strict.create_token("reader", &["repo:read"], None);
    let (status, _) = strict.call(
        Some(&reader),
        "POST",
        &hooks_path("acme/web"),
        Some(json!({ "url": "https://example.invalid/hook", "events": ["push"] })),
    );
    assert_eq!(status, 403);
    let (status, _) = strict.call(
        Some(&strict.admin_token),
        "POST",
        &hooks_path("acme/web"),
        Some(json!({ "url": "https://user:pw@example.invalid/hook", "events": ["push"] })),
    );
    assert_eq!(status, 201);
    let (status, listed) = strict.call(Some(&reader), "GET", &hooks_path("acme/web"), None);
    assert_eq!(status, 200);
    assert!(listed[0].get("secret").is_none());
    assert!(
        !listed.to_string().contains("pw@"),
        "credentials in URLs are redacted: {listed}"
    );
}

#[test]
fn failures_retry_with_the_same_id_redeliver_resends_and_410_or_repeated_failure_disables() {
    let forge = forge().env("FORGE_WEBHOOK_DISABLE_AFTER", "3").start();
    let receiver = Receiver::start();
    forge.create_repo("acme/web");
    receiver.script("/flaky", &[Reply::Status(500)]);
    receiver.script("/gone", &[Reply::Status(410)]);
    receiver.script("/down", &[Reply::Status(503); 10]);
    let flaky = create_hook(
        &forge,
        "acme/web",
        json!({ "url": receiver.url("/flaky"), "events": ["push"] }),
    );
    let gone = create_hook(
        &forge,
        "acme/web",
        json!({ "url": receiver.url("/gone"), "events": ["*"] }),
    );
    let down = create_hook(
        &forge,
        "acme/web",
        json!({ "url": receiver.url("/down"), "events": ["push"] }),
    );
    let id = |hook: &WebhookView| hook.id.clone();

    let tmp = tempfile::tempdir().unwrap();
    let work = work_repo(tmp.path(), "work", &[("a", "a\n")]);
    push(
        &work,
        &forge.git_url("acme/web", &forge.admin_token),
        "main",
    );

    let got = receiver.wait_for("/flaky", 2);
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    let deliveries = wait_deliveries(&forge, "acme/web", &id(&flaky), |d| {
        d.first()
            .is_some_and(|d| d.status == DeliveryState::Delivered)
    });
    let delivery = &deliveries[0];
    assert_eq!(delivery.attempts, 2, "{delivery:?}");
    let log = &delivery.attempt_log;
    assert_eq!(log[0].response_status, Some(500));
    assert_eq!(log[0].response_body, "receiver says 500");
    assert!(log[0].next_attempt_at.is_some());
    assert_eq!(log[1].response_status, Some(200));
    let headers = log[0].request_headers.to_string();
    assert!(
        headers.contains("<redacted>") && !headers.contains("v1,"),
        "{headers}"
    );

    // Redeliver: the same webhook-id once more, a third attempt in the log.
    let delivery_id = delivery.id.as_str();
    forge.admin(
        "POST",
        &format!(
            "{}/{}/deliveries/{delivery_id}/redeliver",
            hooks_path("acme/web"),
            id(&flaky)
        ),
        None,
    );
    let got = receiver.wait_for("/flaky", 3);
    assert_eq!(got[2].header("webhook-id"), delivery_id);
    wait_deliveries(&forge, "acme/web", &id(&flaky), |d| {
        d[0].attempts == 3 && d[0].status == DeliveryState::Delivered
    });
    assert!(
        forge
            .cli_ok(&["hook", "deliveries", "acme/web", &id(&flaky)])
            .contains(delivery_id)
    );
    forge.cli_ok(&["hook", "redeliver", "acme/web", &id(&flaky), delivery_id]);
    receiver.wait_for("/flaky", 4);

    // 410 disables at once; three 503s in a row disable too; each leaves a notice.
    let deadline = Instant::now() + WAIT;
    let (gone_now, down_now) = loop {
        let gone_now: WebhookView = forge.get(&format!("{}/{}", hooks_path("acme/web"), id(&gone)));
        let down_now: WebhookView = forge.get(&format!("{}/{}", hooks_path("acme/web"), id(&down)));
        if !gone_now.active && !down_now.active {
            break (gone_now, down_now);
        }
        assert!(Instant::now() < deadline, "{gone_now:?} {down_now:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        gone_now.disabled_reason.as_deref().unwrap().contains("410"),
        "{gone_now:?}"
    );
    assert!(
        down_now
            .disabled_reason
            .as_deref()
            .unwrap()
            .contains("3 consecutive"),
        "{down_now:?}"
    );
    // Not retried: no delivery reaches /gone twice. (The push's two
    // events may both be in flight when the first 410 disables the hook.)
    let gone_ids: Vec<String> = receiver
        .requests("/gone")
        .iter()
        .map(|r| r.header("webhook-id").to_owned())
        .collect();
    let mut distinct = gone_ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        gone_ids.len(),
        "410 is not retried: {gone_ids:?}"
    );
    assert_eq!(receiver.requests("/down").len(), 3);
    let notices: Vec<_> = forge
        .events("acme/web", 0)
        .into_iter()
        .filter(|e| e.kind == "webhook.disabled")
        .collect();
    assert_eq!(notices.len(), 2, "{notices:?}");

    // A disabled hook gets nothing more; re-enabled, it gets new events.
    let (status, _) = forge.call(
        Some(&forge.admin_token),
        "POST",
        &format!("{}/{}/ping", hooks_path("acme/web"), id(&gone)),
        None,
    );
    assert_eq!(status, 409);
    forge.admin(
        "PATCH",
        &format!("{}/{}", hooks_path("acme/web"), id(&gone)),
        Some(json!({ "active": true })),
    );
    forge.admin(
        "POST",
        &format!("{}/{}/ping", hooks_path("acme/web"), id(&gone)),
        None,
    );
    // The ping arrives (after, maybe, the push's other event, queued for
    // the hook before its 410 disabled it).
    let mut count = 2;
    loop {
        let got = receiver.wait_for("/gone", count);
        if got[1..].iter().any(|r| r.json()["type"] == "ping") {
            break;
        }
        assert!(
            count < 4,
            "no ping after re-enabling: {:?}",
            got.iter()
                .map(|r| r.json()["type"].clone())
                .collect::<Vec<_>>()
        );
        count += 1;
    }
}

#[test]
fn a_delivery_in_flight_during_a_restart_is_sent_again_with_the_same_id() {
    let forge = forge().start();
    let receiver = Receiver::start();
    forge.create_repo("acme/web");
    receiver.script("/slow", &[Reply::Hang]);
    let hook = create_hook(
        &forge,
        "acme/web",
        json!({ "url": receiver.url("/slow"), "events": ["push"] }),
    );
    let tmp = tempfile::tempdir().unwrap();
    let work = work_repo(tmp.path(), "work", &[("a", "a\n")]);
    push(
        &work,
        &forge.git_url("acme/web", &forge.admin_token),
        "main",
    );
    let first = receiver.wait_for("/slow", 1);

    let forge = forge.restart();
    let again = receiver.wait_for("/slow", 2);
    assert_eq!(again[1].header("webhook-id"), first[0].header("webhook-id"));
    assert!(again[1].verifies(hook.secret.as_deref().unwrap()));
    let deliveries = wait_deliveries(&forge, "acme/web", &hook.id, |d| {
        d.first()
            .is_some_and(|d| d.status == DeliveryState::Delivered)
    });
    assert_eq!(
        deliveries.len(),
        1,
        "the restart did not duplicate the event: {deliveries:?}"
    );
}

#[test]
fn three_failures_then_a_success_and_a_crash_mid_retry_keep_one_webhook_id() {
    let forge = TestForge::builder()
        .allow_loopback()
        .env("FORGE_WEBHOOK_RETRY_DELAYS", "300ms,600ms,900ms,1s")
        .start();
    let receiver = Receiver::start();
    forge.create_repo("acme/web");
    receiver.script("/flaky", &[Reply::Status(500); 3]);
    let hook = create_hook(
        &forge,
        "acme/web",
        json!({ "url": receiver.url("/flaky"), "events": ["push"] }),
    );
    let secret = hook.secret.clone().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let work = work_repo(tmp.path(), "work", &[("a", "a\n")]);
    let url = forge.git_url("acme/web", &forge.admin_token);
    push(&work, &url, "main");

    let got = receiver.wait_for("/flaky", 4);
    assert!(
        got.iter()
            .all(|r| r.header("webhook-id") == got[0].header("webhook-id"))
    );
    assert!(got[3].verifies(&secret));
    let mut tampered = got[3].clone();
    tampered.body.push(b' ');
    assert!(
        !tampered.verifies(&secret),
        "a tampered body fails both signatures"
    );
    let deliveries = wait_deliveries(&forge, "acme/web", &hook.id, |d| {
        d.first()
            .is_some_and(|d| d.status == DeliveryState::Delivered)
    });
    assert_eq!(deliveries[0].attempts, 4, "{:?}", deliveries[0]);
    let log = &deliveries[0].attempt_log;
    let statuses: Vec<Option<i64>> = log.iter().map(|a| a.response_status).collect();
    assert_eq!(statuses, [Some(500), Some(500), Some(500), Some(200)]);
    for attempt in &log[..3] {
        assert!(
            attempt.next_attempt_at.is_some(),
            "the backoff is in the log: {attempt:?}"
        );
    }
    let started: Vec<time_ms::Ms> = log.iter().map(|a| time_ms::parse(&a.started_at)).collect();
    for (gap, wanted) in started.windows(2).zip([300, 600, 900]) {
        assert!(
            gap[1] - gap[0] >= wanted * 8 / 10,
            "retries wait their backoff: {started:?}"
        );
    }

    // A crash (SIGKILL) between a failed attempt and its retry: the retry
    // still comes, with the same webhook-id.
    receiver.script("/flaky", &[Reply::Status(500)]);
    e2e::commit_files(&work, &[("b", "b\n")], "second");
    push(&work, &url, "main");
    let got = receiver.wait_for("/flaky", 5);
    let forge = forge.crash_and_restart();
    let again = receiver.wait_for("/flaky", 6);
    assert_eq!(again[5].header("webhook-id"), got[4].header("webhook-id"));
    let deliveries = wait_deliveries(&forge, "acme/web", &hook.id, |d| {
        d.len() == 2 && d.iter().all(|d| d.status == DeliveryState::Delivered)
    });
    assert_eq!(deliveries.len(), 2, "no duplicate delivery after the crash");
}

/// RFC 3339 times of the delivery log, as milliseconds.
mod time_ms {
    pub type Ms = i64;

    pub fn parse(text: &str) -> Ms {
        let parsed =
            time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .unwrap();
        (parsed.unix_timestamp_nanos() / 1_000_000) as i64
    }
}

/// The seven lifecycle events of sandboxes, as a forge-wide webhook asks
/// for them.
const LIFECYCLE: [&str; 7] = [
    "sandbox.created",
    "sandbox.paused",
    "sandbox.resumed",
    "sandbox.forked",
    "sandbox.deleted",
    "sandbox.crashed",
    "sandbox.expired",
];

#[test]
fn every_sandbox_lifecycle_event_reaches_a_filtered_forge_wide_webhook() {
    if !e2e::require_sandboxes() {
        return;
    }
    let forge = forge().with_sandboxes(8).start();
    let receiver = Receiver::start();
    let fleet: WebhookView = forge.send(
        "POST",
        "/v1/webhooks",
        &json!({ "url": receiver.url("/fleet"), "events": LIFECYCLE }),
    );
    let expiries: WebhookView = forge.send(
        "POST",
        "/v1/webhooks",
        &json!({ "url": receiver.url("/expired"), "events": ["sandbox.expired"] }),
    );
    let vm = |body: Value| -> String {
        let made: Value = forge.send("POST", "/v1/vms", &body);
        made["id"].as_str().unwrap().to_owned()
    };
    let post = |path: String, body: Value| {
        let _: Value = forge.send("POST", &path, &body);
    };

    // created, paused, resumed; forked and the fork deleted.
    let main = vm(json!({ "labels": { "team": "web" } }));
    post(format!("/v1/vms/{main}/pause"), json!({}));
    post(format!("/v1/vms/{main}/resume"), json!({}));
    let forks: Value = forge.send("POST", &format!("/v1/vms/{main}/fork"), &json!({}));
    let child = forks["forks"][0]["id"].as_str().unwrap().to_owned();
    let (status, _) = forge.call(
        Some(&forge.admin_token),
        "DELETE",
        &format!("/v1/vms/{child}"),
        None,
    );
    assert_eq!(status, 204);
    // crashed: its processes killed from outside.
    let victim = vm(json!({ "persistence": { "type": "ephemeral" } }));
    let pid = forge
        .sandbox_pid(&victim)
        .expect("the backend records PID 1");
    assert!(
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let shown: Value = forge.get(&format!("/v1/vms/{victim}"));
        if shown["state"] == "crashed" {
            break;
        }
        assert!(Instant::now() < deadline, "never marked crashed: {shown}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // expired: a one-second deadline.
    let doomed = vm(json!({ "ttl_secs": 1 }));

    let expired = receiver.wait_for("/expired", 1);
    let got = receiver.wait_for("/fleet", 10);
    let events: Vec<(String, String)> = got
        .iter()
        .map(|request| {
            assert!(request.verifies(fleet.secret.as_deref().unwrap()), "signed");
            let body = request.json();
            let data = &body["data"];
            assert!(
                data.get("repository").is_none(),
                "a VM of no repository: {body}"
            );
            (
                body["type"].as_str().unwrap().to_owned(),
                data["sandbox"]["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let of = |vm: &str| -> Vec<&str> {
        events
            .iter()
            .filter(|(_, id)| id == vm)
            .map(|(kind, _)| kind.as_str())
            .collect()
    };
    assert_eq!(
        of(&main),
        ["sandbox.created", "sandbox.paused", "sandbox.resumed"]
    );
    assert_eq!(of(&child), ["sandbox.forked", "sandbox.deleted"]);
    assert_eq!(of(&victim), ["sandbox.created", "sandbox.crashed"]);
    assert_eq!(
        of(&doomed),
        ["sandbox.created", "sandbox.expired", "sandbox.deleted"]
    );
    let forked = got
        .iter()
        .map(Request::json)
        .find(|body| body["type"] == "sandbox.forked")
        .unwrap();
    assert_eq!(forked["data"]["parent"], main.as_str());
    assert_eq!(
        forked["data"]["sandbox"]["labels"],
        json!({ "team": "web" })
    );

    // The filtered one got the expiry alone, and nothing more comes.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(receiver.requests("/expired").len(), 1);
    assert!(expired[0].verifies(expiries.secret.as_deref().unwrap()));
    assert_eq!(expired[0].json()["data"]["sandbox"]["id"], doomed.as_str());
    let (status, _) = forge.call(
        Some(&forge.admin_token),
        "GET",
        &format!("/v1/vms/{doomed}"),
        None,
    );
    assert_eq!(status, 404, "an expired VM is gone");
}
