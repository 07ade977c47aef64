//! `cargo bench -p e2e --bench sandboxes`: the VM API and pipelines as an
//! agent sees them, through the real forge on this host's backend.
//!
//! Prints p50/p99 of: create → first exec done, exec `true` (on a kept-alive
//! connection, beside the request floor and a spawn on the host), fork of
//! 1 and of 10, pause/resume in memory and to disk, push → run started; and how
//! much memory idle forks take (measured for `FORGE_BENCH_FORKS`, default
//! 100, and extrapolated to the host's available memory).

use std::time::{Duration, Instant};

use e2e::{TestForge, git_ok, work_repo};
use serde_json::{Value, json};

fn percentiles(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    format!(
        "p50 {:>8.1} ms  p99 {:>8.1} ms  (n={})",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        samples.len()
    )
}

fn timed<T>(run: impl FnOnce() -> T) -> (Duration, T) {
    let start = Instant::now();
    let value = run();
    (start.elapsed(), value)
}

fn mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    if let Some(reason) = e2e::sandboxes_unavailable() {
        println!("SKIPPED: {reason}");
        return;
    }
    let forks_wanted: usize = std::env::var("FORGE_BENCH_FORKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let forge = TestForge::builder()
        .with_sandboxes(forks_wanted + 50)
        .start();
    let system = forge.admin("GET", "/v1/system", None);
    println!(
        "backend: {} ({})",
        system["sandboxes"]["backend"], system["sandboxes"]["reason"]
    );
    let exec = |id: &str, command: &str| -> Value {
        forge.admin(
            "POST",
            &format!("/v1/vms/{id}/exec"),
            Some(json!({ "command": command })),
        )
    };
    let create = || {
        forge.admin("POST", "/v1/vms", Some(json!({})))["id"]
            .as_str()
            .expect("id")
            .to_owned()
    };

    // 200 creates, each deleted after its first exec (the cap stays far),
    // so that outliers show: the slowest and how many passed 100 ms.
    let mut first_exec = Vec::new();
    let mut made = Vec::new();
    for _ in 0..200 {
        let (took, id) = timed(|| {
            let id = create();
            exec(&id, "true");
            id
        });
        first_exec.push(took);
        forge.admin("DELETE", &format!("/v1/vms/{id}"), None);
    }
    let slowest = first_exec.iter().max().copied().unwrap_or_default();
    let over = first_exec
        .iter()
        .filter(|t| **t > Duration::from_millis(100))
        .count();
    println!(
        "create -> first exec done   {}   anchors: Freestyle ~500 ms, E2B ~150 ms, CubeSandbox 48 ms",
        percentiles(first_exec)
    );
    println!(
        "  slowest {:.1} ms; {over} of 200 over 100 ms",
        slowest.as_secs_f64() * 1e3
    );

    let parent = create();
    // One kept-alive connection, as an SDK holds: the round trip is the
    // forge's, not a TCP handshake's. Beside it, the floor of any request
    // (`/healthz` on the same connection) and `true` spawned on this host.
    let client = reqwest::blocking::Client::new();
    let exec_url = format!("{}/v1/vms/{parent}/exec", forge.url);
    let keep_alive_exec = || {
        let response = client
            .post(&exec_url)
            .bearer_auth(&forge.admin_token)
            .json(&json!({ "argv": ["true"] }))
            .send()
            .expect("exec");
        assert_eq!(response.status().as_u16(), 200);
        response.bytes().expect("exec answer");
    };
    for _ in 0..20 {
        keep_alive_exec();
    }
    let round_trips: Vec<Duration> = (0..200).map(|_| timed(keep_alive_exec).0).collect();
    let health_url = format!("{}/healthz", forge.url);
    let floor: Vec<Duration> = (0..200)
        .map(|_| {
            timed(|| {
                client
                    .get(&health_url)
                    .send()
                    .expect("healthz")
                    .bytes()
                    .expect("body");
            })
            .0
        })
        .collect();
    let host: Vec<Duration> = (0..200)
        .map(|_| {
            timed(|| {
                std::process::Command::new("true")
                    .status()
                    .expect("true runs");
            })
            .0
        })
        .collect();
    let p50 = |samples: &[Duration]| {
        let mut sorted = samples.to_vec();
        sorted.sort();
        sorted[sorted.len() / 2].as_secs_f64() * 1e3
    };
    let (exec_p50, floor_p50, host_p50) = (p50(&round_trips), p50(&floor), p50(&host));
    println!("exec `true` round trip      {}", percentiles(round_trips));
    println!("  request floor (/healthz)  {}", percentiles(floor));
    println!("  `true` spawned on host    {}", percentiles(host));
    println!(
        "  exec p50 = {:.2} ms: {:.2} ms HTTP floor + {:.2} ms host spawn + {:.2} ms the forge and agent add",
        exec_p50,
        floor_p50,
        host_p50,
        (exec_p50 - floor_p50 - host_p50).max(0.0)
    );

    let fork = |count: usize| -> Vec<String> {
        let forks = forge.admin(
            "POST",
            &format!("/v1/vms/{parent}/fork"),
            Some(json!({ "count": count })),
        );
        forks["forks"]
            .as_array()
            .expect("forks")
            .iter()
            .map(|f| f["id"].as_str().expect("id").to_owned())
            .collect()
    };
    let mut one = Vec::new();
    for _ in 0..10 {
        let (took, ids) = timed(|| fork(1));
        one.push(took);
        made.extend(ids);
    }
    println!("fork x1                     {}", percentiles(one));
    let mut ten = Vec::new();
    for _ in 0..3 {
        let (took, ids) = timed(|| fork(10));
        ten.push(took);
        made.extend(ids);
    }
    println!("fork x10                    {}", percentiles(ten));
    for id in made.drain(..) {
        forge.admin("DELETE", &format!("/v1/vms/{id}"), None);
    }

    let (mut pause, mut resume, mut pause_disk, mut resume_disk) = (vec![], vec![], vec![], vec![]);
    for round in 0..10 {
        pause.push(timed(|| forge.admin("POST", &format!("/v1/vms/{parent}/pause"), None)).0);
        resume.push(timed(|| forge.admin("POST", &format!("/v1/vms/{parent}/resume"), None)).0);
        if round < 5 {
            pause_disk.push(
                timed(|| {
                    forge.admin(
                        "POST",
                        &format!("/v1/vms/{parent}/pause"),
                        Some(json!({ "to_disk": true })),
                    )
                })
                .0,
            );
            resume_disk
                .push(timed(|| forge.admin("POST", &format!("/v1/vms/{parent}/resume"), None)).0);
        }
    }
    println!("pause (memory)              {}", percentiles(pause));
    println!("resume (memory)             {}", percentiles(resume));
    println!("pause to disk               {}", percentiles(pause_disk));
    println!("resume from disk            {}", percentiles(resume_disk));

    // Push -> run started, seen by a waiting long poll.
    forge.create_repo("bench/pipeline");
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = work_repo(
        tmp.path(),
        "work",
        &[("package.json", r#"{"scripts":{"test":"true"}}"#)],
    );
    let url = forge.git_url("bench/pipeline", &forge.admin_token);
    let mut cursor = 0;
    let mut started = Vec::new();
    for i in 0..10 {
        e2e::commit_files(&work, &[("n", &i.to_string())], "tick");
        let start = Instant::now();
        git_ok(&work, &["push", "--quiet", "--force", &url, "main"]);
        loop {
            let page = forge.admin(
                "GET",
                &format!("/v1/repos/bench/pipeline/events?after={cursor}&wait_secs=30"),
                None,
            );
            cursor = page["next_cursor"].as_i64().unwrap_or(cursor);
            if page["events"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["kind"] == "run.started")
            {
                started.push(start.elapsed());
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(120), "no run started");
        }
        // Let the run end before the next push, so none is cancelled.
        std::thread::sleep(Duration::from_millis(300));
    }
    println!("push -> run started         {}", percentiles(started));

    // Idle forks: memory each, and how many the host would hold.
    exec(&parent, "true");
    let before = mem_available_kib();
    let start = Instant::now();
    while made.len() < forks_wanted {
        made.extend(fork((forks_wanted - made.len()).min(10)));
    }
    let took = start.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let after = mem_available_kib();
    let per_fork_kib = before.saturating_sub(after) as f64 / made.len() as f64;
    println!(
        "{} idle forks made in {:.1} s; host memory used {:.1} MiB each; {} MiB available before -> about {:.0} idle forks fit (goal 1,000)",
        made.len(),
        took.as_secs_f64(),
        per_fork_kib / 1024.0,
        before / 1024,
        before as f64 / per_fork_kib.max(1.0)
    );
}
