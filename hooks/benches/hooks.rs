//! `cargo bench -p hooks`: filter cost per event with 1,000 subscriptions
//! (against re-parsing the globs per event), deliveries per second with 50
//! subscriptions to a loopback receiver (against plain unsigned POSTs with
//! the same concurrency), and enqueue → received latency through the pool.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hooks::filter::PreparedEvent;
use hooks::sign::Secret;
use hooks::ssrf::NetworkPolicy;
use hooks::{
    Event, EventKind, RetrySchedule, Sender, SenderConfig, SubscriptionFilter, WorkerConfig,
    WorkerPool,
};
use support::{MemoryStore, Receiver};

type Lists = (Vec<String>, Vec<String>, Vec<String>);

fn subscription_lists(n: usize) -> Vec<Lists> {
    let events = [
        vec!["push"],
        vec!["push", "branch.created"],
        vec!["*"],
        vec!["run.completed", "push"],
    ];
    let branches = [
        vec![],
        vec!["main"],
        vec!["release/*", "!release/old*"],
        vec!["!wip/**"],
        vec!["feature/**"],
    ];
    let paths = [
        vec![],
        vec!["src/**"],
        vec!["src/**/*.ts", "!**/*.md"],
        vec!["docs/**", "*.md"],
        vec!["{api,web}/**/*.{rs,ts}", "!**/generated/**"],
    ];
    (0..n)
        .map(|i| {
            let own = format!("svc{}/**", i % 37);
            let mut p: Vec<String> = paths[i % paths.len()]
                .iter()
                .map(|s| s.to_string())
                .collect();
            if i.is_multiple_of(3) {
                p.push(own);
            }
            (
                events[i % events.len()]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                branches[(i / 4) % branches.len()]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                p,
            )
        })
        .collect()
}

fn push_event(i: usize) -> Event {
    let branches = ["main", "feature/x", "release/1.2", "wip/a/b"];
    let mut event = Event::new(i as i64, EventKind::Push, "acme/web");
    event.git_ref = Some(format!("refs/heads/{}", branches[i % branches.len()]));
    event.paths = (0..20)
        .map(|p| format!("svc{}/src/module{}/file{}.ts", (i + p) % 50, p % 7, p))
        .collect();
    if i.is_multiple_of(5) {
        event.paths.push("README.md".into());
    }
    event
}

fn bench_filters() {
    const SUBS: usize = 1000;
    let lists = subscription_lists(SUBS);
    let compiled: Vec<SubscriptionFilter> = lists
        .iter()
        .map(|(e, b, p)| SubscriptionFilter::new(e, b, p).expect("valid filter"))
        .collect();
    let events: Vec<Event> = (0..200).map(push_event).collect();

    let rounds = 5;
    let start = Instant::now();
    let mut matched = 0usize;
    for _ in 0..rounds {
        for event in &events {
            let prepared = PreparedEvent::new(event);
            matched += compiled
                .iter()
                .filter(|f| f.matches_prepared(&prepared))
                .count();
        }
    }
    let per_event = start.elapsed() / (rounds * events.len()) as u32;

    // Baseline: what filtering would cost if globs were parsed per event.
    let sample = &events[..10];
    let start = Instant::now();
    let mut baseline_matched = 0usize;
    for event in sample {
        for (e, b, p) in &lists {
            let filter = SubscriptionFilter::new(e, b, p).expect("valid filter");
            baseline_matched += usize::from(filter.matches(event));
        }
    }
    let per_event_reparse = start.elapsed() / sample.len() as u32;
    let expected: usize = sample
        .iter()
        .map(|ev| compiled.iter().filter(|f| f.matches(ev)).count())
        .sum();
    assert_eq!(baseline_matched, expected);

    println!("filters: {SUBS} subscriptions, push events with 20-21 changed paths");
    println!(
        "  compiled:  {:>10.1} µs per event ({:.0} ns per subscription), {:.1} matches per event",
        per_event.as_secs_f64() * 1e6,
        per_event.as_secs_f64() * 1e9 / SUBS as f64,
        matched as f64 / (rounds * events.len()) as f64
    );
    println!(
        "  re-parsed: {:>10.1} µs per event (baseline) → compiled is {:.0}x faster",
        per_event_reparse.as_secs_f64() * 1e6,
        per_event_reparse.as_secs_f64() / per_event.as_secs_f64()
    );
}

fn sender() -> Sender {
    Sender::new(SenderConfig {
        policy: NetworkPolicy::allow_loopback(),
        ..SenderConfig::default()
    })
    .expect("sender")
}

fn pool_config(concurrency: usize) -> WorkerConfig {
    WorkerConfig {
        concurrency,
        poll_interval: Duration::from_millis(50),
        lease: Duration::from_secs(30),
        store_timeout: Duration::from_secs(5),
        schedule: RetrySchedule::fixed(&[Duration::from_millis(10)]),
    }
}

async fn bench_throughput() {
    const SUBS: usize = 50;
    const PER_SUB: usize = 40;
    let secret = Secret::generate();
    let receiver = Receiver::start(secret.clone(), vec![]).await;
    let body = hooks::payload::render(
        &push_event(1),
        &hooks::PayloadContext {
            base_url: "http://f".into(),
        },
    );

    // Baseline: plain unsigned POSTs, SUBS concurrent senders.
    let client = reqwest::Client::new();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..SUBS {
        let (client, url, body) = (
            client.clone(),
            receiver.url(&format!("/raw{s}")),
            body.clone(),
        );
        tasks.spawn(async move {
            for _ in 0..PER_SUB {
                let _ = client
                    .post(&url)
                    .body(body.clone())
                    .send()
                    .await
                    .and_then(|r| r.error_for_status());
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let raw = (SUBS * PER_SUB) as f64 / start.elapsed().as_secs_f64();

    let store = MemoryStore::default();
    for s in 0..SUBS {
        store.subscribe(&format!("s{s}"), &receiver.url(&format!("/s{s}")), &secret);
    }
    let ids: Vec<String> = (0..PER_SUB)
        .flat_map(|_| (0..SUBS).map(|s| store.enqueue(&format!("s{s}"), "push", body.clone())))
        .collect();
    let before = receiver.received().len();
    let start = Instant::now();
    let pool = WorkerPool::start(Arc::new(store.clone()), sender(), pool_config(SUBS));
    for id in &ids {
        store.wait_settled(id, Duration::from_secs(120)).await;
    }
    let elapsed = start.elapsed();
    pool.shutdown().await;
    let got = receiver.received();
    assert!(got[before..].iter().all(|r| r.standard_ok && r.github_ok));
    let rate = ids.len() as f64 / elapsed.as_secs_f64();
    println!("deliveries: {SUBS} subscriptions x {PER_SUB} deliveries to a loopback receiver");
    println!("  pool (signed, logged, store round trips): {rate:>8.0} deliveries/s");
    println!(
        "  plain POSTs (baseline):                   {raw:>8.0} requests/s → pool is {:.2}x of baseline",
        rate / raw
    );
}

async fn bench_latency() {
    const N: usize = 200;
    let secret = Secret::generate();
    let receiver = Receiver::start(secret.clone(), vec![]).await;
    let store = MemoryStore::default();
    store.subscribe("s", &receiver.url("/"), &secret);
    let mut config = pool_config(4);
    config.poll_interval = Duration::from_secs(10);
    let pool = WorkerPool::start(Arc::new(store.clone()), sender(), config);
    let waker = pool.waker();
    let mut samples = Vec::with_capacity(N);
    for i in 0..N {
        let start = Instant::now();
        store.enqueue("s", "push", format!("{{\"n\":{i}}}").into_bytes());
        waker.wake();
        receiver.wait_for(i + 1, Duration::from_secs(10)).await;
        samples.push(start.elapsed());
    }
    pool.shutdown().await;
    samples.sort();
    let pct = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)];
    println!("latency: enqueue + wake → received by the loopback receiver, {N} deliveries");
    println!(
        "  p50 {:.2} ms, p99 {:.2} ms",
        pct(50).as_secs_f64() * 1e3,
        pct(99).as_secs_f64() * 1e3
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    bench_filters();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        bench_throughput().await;
        bench_latency().await;
    });
}
