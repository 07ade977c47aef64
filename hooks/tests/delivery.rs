//! Delivery against a real HTTP receiver on loopback: signatures, filters,
//! retries, disabling, timeouts, oversized bodies, SSRF refusals and
//! crash recovery.

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hooks::payload::{self, PayloadContext};
use hooks::sign::{self, Secret};
use hooks::ssrf::NetworkPolicy;
use hooks::{
    AttemptResult, DisableReason, Event, EventKind, NextStep, Outgoing, RetrySchedule, Sender,
    SenderConfig, SubscriptionFilter, WorkerConfig, WorkerPool,
};
use support::{MemoryStore, Receiver, Reply, Status, stays};

const WAIT: Duration = Duration::from_secs(20);

fn sender(timeout: Duration) -> Sender {
    Sender::new(SenderConfig {
        timeout,
        policy: NetworkPolicy::allow_loopback(),
        ..SenderConfig::default()
    })
    .expect("sender")
}

fn fast(delays_ms: &[u64]) -> WorkerConfig {
    let delays: Vec<Duration> = delays_ms
        .iter()
        .map(|ms| Duration::from_millis(*ms))
        .collect();
    WorkerConfig {
        concurrency: 4,
        poll_interval: Duration::from_millis(20),
        lease: Duration::from_secs(5),
        store_timeout: Duration::from_secs(5),
        schedule: RetrySchedule::fixed(&delays),
    }
}

fn ctx() -> PayloadContext {
    PayloadContext {
        base_url: "http://forge.test".into(),
    }
}

fn push(id: i64, branch: &str, paths: &[&str]) -> Event {
    let mut event = Event::new(id, EventKind::Push, "acme/web");
    event.git_ref = Some(format!("refs/heads/{branch}"));
    event.before = Some("1".repeat(40));
    event.after = Some("2".repeat(40));
    event.paths = paths.iter().map(|p| p.to_string()).collect();
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_verifies_both_signatures_and_rejects_a_tampered_body() {
    let secret = Secret::generate();
    let receiver = Receiver::start(secret.clone(), vec![]).await;
    let body = payload::render(&push(1, "main", &["src/a.ts"]), &ctx());
    let url = receiver.url("/hook");
    let record = sender(Duration::from_secs(5))
        .send(Outgoing {
            delivery_id: "msg_1",
            event_type: "push",
            url: &url,
            body: &body,
            secrets: std::slice::from_ref(&secret),
        })
        .await;
    assert_eq!(record.result, AttemptResult::Success, "{record:?}");
    let got = receiver.received();
    assert!(got[0].standard_ok && got[0].github_ok);
    assert_eq!(got[0].header("webhook-id"), "msg_1");
    assert_eq!(got[0].header("x-forge-delivery"), "msg_1");
    assert_eq!(got[0].header("x-forge-event"), "push");
    assert_eq!(got[0].body.as_ref(), body.as_slice());
    // The log keeps headers but not signatures.
    let logged = |name: &str| {
        record
            .request_headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(logged("webhook-signature").as_deref(), Some("<redacted>"));
    assert_eq!(logged("x-hub-signature-256").as_deref(), Some("<redacted>"));
    assert_eq!(logged("webhook-id").as_deref(), Some("msg_1"));

    // Same headers, different body: the receiver must refuse.
    let ts = sign::unix_secs(SystemTime::now());
    let mut request = reqwest::Client::new()
        .post(&url)
        .body(b"{\"type\":\"push\",\"evil\":1}".to_vec());
    for (name, value) in
        sign::signature_headers("msg_2", "push", ts, &body, std::slice::from_ref(&secret))
    {
        request = request.header(name, value);
    }
    let response = request.send().await.expect("send");
    assert_eq!(response.status().as_u16(), 401);
    let last = receiver.received().pop().expect("request");
    assert!(!last.standard_ok && !last.github_ok);

    // Signed with another secret: refused too.
    let other = sender(Duration::from_secs(5))
        .send(Outgoing {
            delivery_id: "msg_3",
            event_type: "push",
            url: &url,
            body: &body,
            secrets: &[Secret::generate()],
        })
        .await;
    assert_eq!(other.response_status, Some(401));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_decide_which_pushes_reach_the_receiver() {
    let secret = Secret::generate();
    let receiver = Receiver::start(secret.clone(), vec![]).await;
    let store = MemoryStore::default();
    let subs = [
        (
            "main-src",
            SubscriptionFilter::new(&["push"], &["main"], &["src/**"]).expect("filter"),
        ),
        (
            "not-docs",
            SubscriptionFilter::new(&["*"], &["!wip/**"], &["!**/*.md"]).expect("filter"),
        ),
    ];
    for (id, _) in &subs {
        store.subscribe(id, &receiver.url(&format!("/{id}")), &secret);
    }
    let events = [
        push(1, "main", &["src/a.ts"]),      // both
        push(2, "feature/x", &["src/a.ts"]), // not-docs only
        push(3, "main", &["README.md"]),     // neither
        push(4, "wip/y", &["src/b.ts"]),     // neither
    ];
    let mut expected = Vec::new();
    for event in &events {
        for (id, filter) in &subs {
            if filter.matches(event) {
                store.enqueue(id, event.kind.as_str(), payload::render(event, &ctx()));
                expected.push((id.to_string(), event.id));
            }
        }
    }
    assert_eq!(
        expected,
        [
            ("main-src".to_string(), 1),
            ("not-docs".to_string(), 1),
            ("not-docs".to_string(), 2)
        ]
    );
    let pool = WorkerPool::start(
        Arc::new(store.clone()),
        sender(Duration::from_secs(5)),
        fast(&[]),
    );
    let got = receiver.wait_for(3, WAIT).await;
    pool.shutdown().await;
    assert_eq!(receiver.received().len(), 3);
    let mut paths: Vec<String> = got
        .iter()
        .map(|r| {
            let json: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
            json["data"]["branch"].as_str().expect("branch").to_owned()
        })
        .collect();
    paths.sort();
    assert_eq!(paths, ["feature/x", "main", "main"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_failures_then_success_make_four_attempts_with_growing_waits() {
    let secret = Secret::generate();
    let receiver = Receiver::start(
        secret.clone(),
        vec![Reply::Status(500), Reply::Status(502), Reply::Status(503)],
    )
    .await;
    let store = MemoryStore::default();
    store.subscribe("s", &receiver.url("/"), &secret);
    let id = store.enqueue("s", "push", b"{}".to_vec());
    let pool = WorkerPool::start(
        Arc::new(store.clone()),
        sender(Duration::from_secs(5)),
        fast(&[100, 300, 600, 900]),
    );
    let row = store.wait_settled(&id, WAIT).await;
    pool.shutdown().await;

    assert_eq!(row.status, Status::Delivered);
    let statuses: Vec<_> = row
        .attempts
        .iter()
        .map(|(_, r, _)| r.response_status)
        .collect();
    assert_eq!(statuses, [Some(500), Some(502), Some(503), Some(200)]);
    let numbers: Vec<u32> = row.attempts.iter().map(|(n, _, _)| *n).collect();
    assert_eq!(numbers, [1, 2, 3, 4]);
    assert!(matches!(row.attempts[0].2, NextStep::RetryAt(_)));
    assert_eq!(row.attempts[3].2, NextStep::Done);

    let got = receiver.received();
    assert_eq!(got.len(), 4);
    assert!(
        got.iter().all(|r| r.header("webhook-id") == id),
        "same webhook-id on every attempt"
    );
    let gaps: Vec<Duration> = got.windows(2).map(|w| w[1].at - w[0].at).collect();
    for (gap, min_ms) in gaps.iter().zip([100, 300, 600]) {
        assert!(*gap >= Duration::from_millis(min_ms), "gaps {gaps:?}");
    }
    // Backoff is visible in the log: each attempt started after the
    // previous one's scheduled retry time.
    for pair in row.attempts.windows(2) {
        let NextStep::RetryAt(at) = pair[0].2 else {
            panic!("retry")
        };
        assert!(pair[1].1.started_at >= at);
    }
    assert_eq!(store.subscription("s").consecutive_failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let secret = Secret::generate();
    let receiver = Receiver::start(secret.clone(), vec![Reply::RetryAfter(429, 1)]).await;
    let store = MemoryStore::default();
    store.subscribe("s", &receiver.url("/"), &secret);
    let id = store.enqueue("s", "push", b"{}".to_vec());
    let pool = WorkerPool::start(
        Arc::new(store.clone()),
        sender(Duration::from_secs(5)),
        fast(&[10]),
    );
    let row = store.wait_settled(&id, WAIT).await;
    pool.shutdown().await;
    assert_eq!(row.status, Status::Delivered);
    let got = receiver.received();
    assert!(
        got[1].at - got[0].at >= Duration::from_secs(1),
        "waited {:?}",
        got[1].at - got[0].at
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_subscription() {
    let secret = Secret::generate();
    let receiver = Receiver::start(secret.clone(), vec![Reply::Status(410)]).await;
    let store = MemoryStore::default();
    store.subscribe("s", &receiver.url("/"), &secret);
    let first = store.enqueue("s", "push", b"{\"n\":1}".to_vec());
    let second = store.enqueue("s", "push", b"{\"n\":2}".to_vec());
    let pool = WorkerPool::start(
        Arc::new(store.clone()),
        sender(Duration::from_secs(5)),
        fast(&[10, 10]),
    );
    let row = store.wait_settled(&first, WAIT).await;
    // Disabling settles the second delivery too; the shutdown lets any
    // attempt in flight finish, so the receiver has seen all it will.
    store.wait_settled(&second, WAIT).await;
    pool.shutdown().await;
    assert_eq!(row.status, Status::Failed);
    assert_eq!(row.attempts.len(), 1);
    assert!(!store.subscription("s").active);
    assert_eq!(store.notices(), [("s".to_string(), DisableReason::Gone)]);
    assert_eq!(store.row(&second).status, Status::Failed);
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_failures_disable_the_subscription_with_a_notice() {
    let secret = Secret::generate();
    let receiver = Receiver::start(secret.clone(), vec![]).await;
    receiver.route("/", Reply::Status(500));
    let store = MemoryStore::default();
    store.subscribe("s", &receiver.url("/"), &secret);
    let id = store.enqueue("s", "push", b"{}".to_vec());
    let mut config = fast(&[10, 10, 10, 10, 10, 10]);
    config.schedule.disable_after_failures = 3;
    let pool = WorkerPool::start(
        Arc::new(store.clone()),
        sender(Duration::from_secs(5)),
        config,
    );
    let row = store.wait_settled(&id, WAIT).await;
    // A fourth attempt would come one retry delay and one poll (30 ms)
    // after the third: 200 ms leave room for several.
    stays(
        Duration::from_millis(200),
        "requests at the receiver",
        async || receiver.received().len(),
    )
    .await;
    pool.shutdown().await;
    assert_eq!(row.status, Status::Failed);
    assert_eq!(store.row(&id).attempts.len(), 3);
    assert_eq!(
        store.notices(),
        [("s".to_string(), DisableReason::ConsecutiveFailures(3))]
    );
    assert_eq!(receiver.received().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_times_out_without_blocking_others() {
    let secret = Secret::generate();
    let receiver = Receiver::start(secret.clone(), vec![]).await;
    receiver.route("/hang", Reply::Hang);
    let store = MemoryStore::default();
    store.subscribe("hang", &receiver.url("/hang"), &secret);
    store.subscribe("ok", &receiver.url("/ok"), &secret);
    let hung = store.enqueue("hang", "push", b"{}".to_vec());
    let fine = store.enqueue("ok", "push", b"{}".to_vec());
    let mut config = fast(&[]);
    config.concurrency = 1;
    let pool = WorkerPool::start(
        Arc::new(store.clone()),
        sender(Duration::from_millis(400)),
        config,
    );
    let hung_row = store.wait_settled(&hung, WAIT).await;
    let fine_row = store.wait_settled(&fine, WAIT).await;
    pool.shutdown().await;

    let (_, record, next) = &hung_row.attempts[0];
    assert_eq!(*next, NextStep::GiveUp);
    assert_eq!(record.response_status, None);
    let error = record.error.clone().unwrap_or_default();
    assert!(error.to_lowercase().contains("timed out"), "{error}");
    assert!(
        record.duration < Duration::from_secs(3),
        "{:?}",
        record.duration
    );
    assert_eq!(fine_row.status, Status::Delivered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_response_body_is_capped_in_the_log() {
    let secret = Secret::generate();
    let receiver = Receiver::start(secret.clone(), vec![Reply::Big(8 << 20)]).await;
    let url = receiver.url("/");
    let record = sender(Duration::from_secs(10))
        .send(Outgoing {
            delivery_id: "msg_big",
            event_type: "push",
            url: &url,
            body: b"{}",
            secrets: &[secret],
        })
        .await;
    assert_eq!(record.result, AttemptResult::Success, "{record:?}");
    assert_eq!(record.response_body.len(), 4096);
    assert!(record.response_body_truncated);
    assert!(record.response_body.iter().all(|b| *b == b'x'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_http_urls_and_private_targets_are_refused_by_default() {
    let secret = Secret::generate();
    let receiver = Receiver::start(secret.clone(), vec![]).await;
    let strict = Sender::new(SenderConfig::default()).expect("sender");
    let port = receiver.addr.port();
    let targets = [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://10.0.0.1/".to_owned(),
        "ftp://example.com/hook".to_owned(),
        "file:///etc/passwd".to_owned(),
    ];
    for url in &targets {
        let record = strict
            .send(Outgoing {
                delivery_id: "msg_x",
                event_type: "push",
                url,
                body: b"{}",
                secrets: std::slice::from_ref(&secret),
            })
            .await;
        assert_eq!(record.result, AttemptResult::Permanent, "{url}: {record:?}");
        assert!(record.response_status.is_none(), "{url}");
        let error = record.error.unwrap_or_default();
        assert!(
            error.contains("may not reach") || error.contains("http or https"),
            "{url}: {error}"
        );
    }
    assert!(receiver.received().is_empty());

    // Loopback is reachable only when the policy says so.
    let allowed = sender(Duration::from_secs(5))
        .send(Outgoing {
            delivery_id: "msg_y",
            event_type: "push",
            url: &targets[1],
            body: b"{}",
            secrets: &[secret],
        })
        .await;
    assert_eq!(allowed.result, AttemptResult::Success, "{allowed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_delivery_resends_with_the_same_webhook_id() {
    let secret = Secret::generate();
    let receiver =
        Receiver::start(secret.clone(), vec![Reply::Slow(Duration::from_secs(30))]).await;
    let store = MemoryStore::default();
    store.subscribe("s", &receiver.url("/"), &secret);
    let id = store.enqueue("s", "push", b"{}".to_vec());
    let mut config = fast(&[10]);
    config.lease = Duration::from_millis(1500);
    // The first pool sends, then "crashes" while the receiver is slow.
    let first = WorkerPool::start(
        Arc::new(store.clone()),
        sender(Duration::from_secs(60)),
        config.clone(),
    );
    receiver.wait_for(1, WAIT).await;
    drop(first);
    assert!(
        store.row(&id).attempts.is_empty(),
        "nothing was recorded before the crash"
    );
    // A new pool picks it up once the lease has run out.
    let second = WorkerPool::start(
        Arc::new(store.clone()),
        sender(Duration::from_secs(5)),
        config,
    );
    let row = store.wait_settled(&id, WAIT).await;
    second.shutdown().await;
    assert_eq!(row.status, Status::Delivered);
    let got = receiver.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].header("webhook-id"), id);
    assert_eq!(got[1].header("webhook-id"), id);
    assert!(
        got[1].at - got[0].at >= Duration::from_millis(1000),
        "resent only after the lease ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_attempt_in_flight_per_subscription_keeps_first_attempts_in_order() {
    let secret = Secret::generate();
    let receiver = Receiver::start(secret.clone(), vec![]).await;
    let store = MemoryStore::default();
    store.subscribe("s", &receiver.url("/"), &secret);
    let ids: Vec<String> = (0..10)
        .map(|n| store.enqueue("s", "push", format!("{{\"n\":{n}}}").into_bytes()))
        .collect();
    let pool = WorkerPool::start(
        Arc::new(store.clone()),
        sender(Duration::from_secs(5)),
        fast(&[]),
    );
    let got = receiver.wait_for(10, WAIT).await;
    pool.shutdown().await;
    let order: Vec<String> = got.iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(order, ids);
    // The claim query never hands out a second delivery of a subscription
    // while one is leased.
    let leased = store.claim_and_forget(Duration::from_secs(5));
    assert!(leased.is_empty(), "all delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed() {
    let secret = Secret::generate();
    let receiver = Receiver::start(secret.clone(), vec![]).await;
    receiver.route("/moved", Reply::Redirect(receiver.url("/target")));
    let url = receiver.url("/moved");
    let record = sender(Duration::from_secs(5))
        .send(Outgoing {
            delivery_id: "msg_r",
            event_type: "push",
            url: &url,
            body: b"{}",
            secrets: &[secret],
        })
        .await;
    assert_eq!(record.response_status, Some(302));
    assert_eq!(record.result, AttemptResult::Failure { retry_after: None });
    let requests = receiver.received();
    assert_eq!(requests.len(), 1, "the redirect target was not requested");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_rotation_a_receiver_on_the_old_secret_still_verifies() {
    let old = Secret::generate();
    let receiver = Receiver::start(old.clone(), vec![]).await;
    let mut set = hooks::SecretSet::single(old.clone());
    set.rotate(
        Secret::generate(),
        Duration::from_secs(60),
        SystemTime::now(),
    );
    let url = receiver.url("/");
    let secrets = set.valid_at(SystemTime::now());
    let record = sender(Duration::from_secs(5))
        .send(Outgoing {
            delivery_id: "msg_rot",
            event_type: "push",
            url: &url,
            body: b"{}",
            secrets: &secrets,
        })
        .await;
    assert_eq!(record.result, AttemptResult::Success, "{record:?}");
    let got = receiver.received();
    assert!(got[0].standard_ok && got[0].github_ok);
    assert_eq!(got[0].header("webhook-signature").split(' ').count(), 2);
    // After the window only the new secret signs: the old receiver refuses.
    let later = set.valid_at(SystemTime::now() + Duration::from_secs(61));
    let refused = sender(Duration::from_secs(5))
        .send(Outgoing {
            delivery_id: "msg_rot2",
            event_type: "push",
            url: &url,
            body: b"{}",
            secrets: &later,
        })
        .await;
    assert_eq!(refused.response_status, Some(401));
}
