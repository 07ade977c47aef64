//! `cargo bench -p e2e --bench webhooks`: webhooks through the real forge
//! to a loopback receiver: push → delivery received (p50/p99 over 200
//! pushes) and deliveries per second with 50 subscriptions. (Filter cost
//! per event with 1,000 subscriptions is `cargo bench -p hooks`.)

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::{TestForge, commit_files, git_ok, work_repo};
use serde_json::json;

/// Arrival times of the requests, per path.
type Arrivals = Arc<Mutex<Vec<(String, Instant)>>>;

fn receiver() -> (u16, Arrivals) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let arrivals: Arrivals = Arc::default();
    let shared = arrivals.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let arrivals = shared.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    return;
                }
                let path = line.split(' ').nth(1).unwrap_or("/").to_owned();
                let mut length = 0usize;
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = header.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                arrivals.lock().expect("lock").push((path, Instant::now()));
                let _ = reader.get_mut().write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            });
        }
    });
    (port, arrivals)
}

fn count(arrivals: &Arrivals, path: &str) -> usize {
    arrivals
        .lock()
        .expect("lock")
        .iter()
        .filter(|(p, _)| p == path)
        .count()
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn main() {
    let forge = TestForge::builder().allow_loopback().start();
    let (port, arrivals) = receiver();
    let hook = |repo: &str, path: &str| {
        forge.admin(
            "POST",
            &format!("/v1/repos/{repo}/webhooks"),
            Some(json!({ "url": format!("http://127.0.0.1:{port}{path}"), "events": ["push"] })),
        );
    };
    let tmp = tempfile::tempdir().expect("tempdir");

    // Push -> delivery, one subscription.
    forge.create_repo("bench/one");
    hook("bench/one", "/one");
    let work = work_repo(tmp.path(), "one", &[("n", "0")]);
    let url = forge.git_url("bench/one", &forge.admin_token);
    let mut latencies = Vec::new();
    for i in 0..200 {
        commit_files(&work, &[("n", &(i + 1).to_string())], "tick");
        let start = Instant::now();
        git_ok(&work, &["push", "--quiet", &url, "main"]);
        while count(&arrivals, "/one") <= i {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "delivery {i} never came"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        let arrived = arrivals
            .lock()
            .expect("lock")
            .iter()
            .filter(|(p, _)| p == "/one")
            .nth(i)
            .expect("arrival")
            .1;
        latencies.push(arrived.saturating_duration_since(start));
    }
    latencies.sort();
    println!(
        "push -> delivery received (200 pushes): p50 {:.1} ms  p99 {:.1} ms",
        ms(latencies[100]),
        ms(latencies[197])
    );

    // Fan-out: 50 subscriptions, 10 pushes -> 500 deliveries.
    forge.create_repo("bench/many");
    for _ in 0..50 {
        hook("bench/many", "/many");
    }
    let work = work_repo(tmp.path(), "many", &[("n", "0")]);
    let url = forge.git_url("bench/many", &forge.admin_token);
    let start = Instant::now();
    for i in 0..10 {
        commit_files(&work, &[("n", &(i + 1).to_string())], "tick");
        git_ok(&work, &["push", "--quiet", &url, "main"]);
    }
    while count(&arrivals, "/many") < 500 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "only {} of 500 deliveries",
            count(&arrivals, "/many")
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let took = start.elapsed();
    println!(
        "50 subscriptions x 10 pushes: 500 deliveries in {:.0} ms = {:.0} deliveries/s (pushes included)",
        ms(took),
        500.0 / took.as_secs_f64()
    );
}
