//! `cargo bench -p e2e --bench sandboxes`: the VM API and pipelines as an
//! agent sees them, through the real forge on this host's backend.
//!
//! Prints p50/p99 of: create → first exec done, exec `true` (on a kept-alive
//! connection, beside the request floor and a spawn on the host), fork of
//! 1 and of 10, pause/resume in memory and to disk, push → run started; and how
//! much memory idle forks take (measured for `FORGE_BENCH_FORKS`, default
//! 100, and extrapolated to the host's available memory).
//!
//! Beside each lifecycle row, the p50 of each phase the forge reported in
//! its `Server-Timing` header (CRIU's own figures as `criu-*`), and
//! baselines measured in the same run: namespaces made and a program run
//! with `unshare` for create, CRIU alone dumping and restoring a host
//! process for fork and pause to disk.

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

/// Phase samples of a repeated operation, by name in first-seen order.
#[derive(Default)]
struct Phases(Vec<(String, Vec<f64>)>);

impl Phases {
    /// Adds one answer's `Server-Timing` value (`name;dur=ms, ...`).
    fn add(&mut self, header: &str) {
        for entry in header.split(',') {
            let mut parts = entry.trim().split(';');
            let name = parts.next().unwrap_or_default().to_owned();
            let ms = parts
                .find_map(|p| p.trim().strip_prefix("dur="))
                .and_then(|v| v.parse::<f64>().ok());
            let Some(ms) = ms.filter(|_| !name.is_empty()) else {
                continue;
            };
            match self.0.iter_mut().find(|(n, _)| *n == name) {
                Some((_, samples)) => samples.push(ms),
                None => self.0.push((name, vec![ms])),
            }
        }
    }

    /// `  phases (p50 ms): dump 80.1, criu-frozen 40.2, ...`
    fn line(&self) -> String {
        if self.0.is_empty() {
            return "  phases: none reported".to_owned();
        }
        let each: Vec<String> = self
            .0
            .iter()
            .map(|(name, samples)| {
                let mut sorted = samples.clone();
                sorted.sort_by(f64::total_cmp);
                format!("{name} {:.1}", sorted[sorted.len() / 2])
            })
            .collect();
        format!("  phases (p50 ms): {}", each.join(", "))
    }
}

/// The CRIU the container backend uses (see `BackendConfig::new`).
fn criu_path() -> std::path::PathBuf {
    std::env::var_os("SANDBOX_CRIU")
        .map(Into::into)
        .unwrap_or_else(|| sandbox_container::backend::DEFAULT_CRIU.into())
}

/// CRIU alone on this host, the floor under a fork or pause to disk: a
/// `sleep` in its own session dumped (and killed) and restored detached,
/// `rounds` times. Returns the dump and restore samples.
fn criu_alone(rounds: usize) -> (Vec<Duration>, Vec<Duration>) {
    let criu = criu_path();
    let dir = tempfile::tempdir().expect("tempdir");
    // This process reaps what it dumps: orphans (the `sleep`, started by a
    // shell that exits at once, and every restored copy of it once CRIU
    // exits) become its children, and a dumped one must not stay a zombie
    // holding the pid its restore needs.
    nix::sys::prctl::set_child_subreaper(true).expect("subreaper");
    let started = std::process::Command::new("sh")
        .args([
            "-c",
            "setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $!",
        ])
        .output()
        .expect("sleep starts");
    let pid = String::from_utf8_lossy(&started.stdout).trim().to_owned();
    std::thread::sleep(Duration::from_millis(50));
    let (mut dumps, mut restores) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let images = dir.path().join(round.to_string());
        std::fs::create_dir(&images).expect("images dir");
        let run = |args: &[&str]| {
            let out = std::process::Command::new(&criu)
                .args(args)
                .arg("-D")
                .arg(&images)
                .args(["--shell-job", "-v0"])
                .output()
                .expect("criu runs");
            assert!(out.status.success(), "criu {args:?}: {out:?}");
        };
        dumps.push(timed(|| run(&["dump", "-t", &pid])).0);
        let _ =
            nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid.parse().expect("pid")), None);
        restores.push(timed(|| run(&["restore", "-d"])).0);
    }
    let pid = nix::unistd::Pid::from_raw(pid.parse().expect("pid"));
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(pid, None);
    // The forge's own orphans go back to whoever reaped them before.
    let _ = nix::sys::prctl::set_child_subreaper(false);
    (dumps, restores)
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

    // One kept-alive connection, as an SDK holds: round trips are the
    // forge's, not a TCP handshake's.
    let client = reqwest::blocking::Client::new();
    // A lifecycle call on the kept-alive connection: its time, its answer
    // and the phases of its `Server-Timing` header.
    let lifecycle = |path: &str, body: Option<Value>| -> (Duration, Value, String) {
        let start = Instant::now();
        let mut request = client
            .post(format!("{}{path}", forge.url))
            .bearer_auth(&forge.admin_token)
            .timeout(Duration::from_secs(120));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().expect("lifecycle call");
        let status = response.status();
        let timing = response
            .headers()
            .get("server-timing")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let value: Value = response.json().unwrap_or(Value::Null);
        assert!(status.is_success(), "POST {path}: {status}: {value}");
        (start.elapsed(), value, timing)
    };
    // 200 creates, each deleted after its first exec (the cap stays far),
    // so that outliers show: the slowest and how many passed 100 ms.
    let mut first_exec = Vec::new();
    let mut made = Vec::new();
    let mut create_phases = Phases::default();
    for _ in 0..200 {
        let (took, id) = timed(|| {
            let (_, created, timing) = lifecycle("/v1/vms", Some(json!({})));
            create_phases.add(&timing);
            let id = created["id"].as_str().expect("id").to_owned();
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
    println!("{}", create_phases.line());
    let unshare: Vec<Duration> = (0..50)
        .map(|_| {
            timed(|| {
                let status = std::process::Command::new("unshare")
                    .args([
                        "--user",
                        "--map-root-user",
                        "--pid",
                        "--fork",
                        "--mount",
                        "--uts",
                        "--ipc",
                        "--net",
                        "true",
                    ])
                    .status()
                    .expect("unshare runs");
                assert!(status.success(), "unshare: {status}");
            })
            .0
        })
        .collect();
    println!(
        "  baseline: `unshare` (user, pid, mount, uts, ipc, net) + `true` {}",
        percentiles(unshare)
    );

    let parent = create();
    // The exec round trip on the kept-alive connection. Beside it, the
    // floor of any request (`/healthz` on the same connection) and `true`
    // spawned on this host.
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

    let fork_timed = |count: usize, phases: &mut Phases| -> (Duration, Vec<String>) {
        let (took, forks, timing) = lifecycle(
            &format!("/v1/vms/{parent}/fork"),
            Some(json!({ "count": count })),
        );
        phases.add(&timing);
        let ids = forks["forks"]
            .as_array()
            .expect("forks")
            .iter()
            .map(|f| f["id"].as_str().expect("id").to_owned())
            .collect();
        (took, ids)
    };
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
    let (mut one, mut one_phases) = (Vec::new(), Phases::default());
    for _ in 0..10 {
        let (took, ids) = fork_timed(1, &mut one_phases);
        one.push(took);
        made.extend(ids);
    }
    println!("fork x1                     {}", percentiles(one));
    println!("{}", one_phases.line());
    let (mut ten, mut ten_phases) = (Vec::new(), Phases::default());
    for _ in 0..3 {
        let (took, ids) = fork_timed(10, &mut ten_phases);
        ten.push(took);
        made.extend(ids);
    }
    println!("fork x10                    {}", percentiles(ten));
    println!("{}", ten_phases.line());
    for id in made.drain(..) {
        forge.admin("DELETE", &format!("/v1/vms/{id}"), None);
    }

    let (mut pause, mut resume, mut pause_disk, mut resume_disk) = (vec![], vec![], vec![], vec![]);
    let (mut pause_phases, mut resume_phases) = (Phases::default(), Phases::default());
    let (pause_path, resume_path) = (
        format!("/v1/vms/{parent}/pause"),
        format!("/v1/vms/{parent}/resume"),
    );
    for round in 0..10 {
        pause.push(lifecycle(&pause_path, None).0);
        resume.push(lifecycle(&resume_path, None).0);
        if round < 5 {
            let (took, _, timing) = lifecycle(&pause_path, Some(json!({ "to_disk": true })));
            pause_disk.push(took);
            pause_phases.add(&timing);
            let (took, _, timing) = lifecycle(&resume_path, None);
            resume_disk.push(took);
            resume_phases.add(&timing);
        }
    }
    println!("pause (memory)              {}", percentiles(pause));
    println!("resume (memory)             {}", percentiles(resume));
    println!("pause to disk               {}", percentiles(pause_disk));
    println!("{}", pause_phases.line());
    println!("resume from disk            {}", percentiles(resume_disk));
    println!("{}", resume_phases.line());
    let (dumps, restores) = criu_alone(10);
    println!(
        "  baseline: CRIU alone, dump of a host `sleep`      {}",
        percentiles(dumps)
    );
    println!(
        "  baseline: CRIU alone, restore of it (detached)   {}",
        percentiles(restores)
    );

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
    // Two views of an idle fork's cost: what its cgroup is charged (the
    // API's figure, p50 over the forks), and the host's MemAvailable drop
    // spread over them (which also sees what no cgroup is charged for, but
    // with few forks is mostly noise). The estimate uses the larger.
    let mut charged: Vec<f64> = made
        .iter()
        .filter_map(|id| {
            forge.admin("GET", &format!("/v1/vms/{id}"), None)["stats"]["memory_bytes"].as_f64()
        })
        .map(|bytes| bytes / 1024.0)
        .collect();
    charged.sort_by(f64::total_cmp);
    let charged_kib = charged.get(charged.len() / 2).copied().unwrap_or(0.0);
    let host_kib = before.saturating_sub(after) as f64 / made.len() as f64;
    let per_fork_kib = charged_kib.max(host_kib).max(1.0);
    println!(
        "{} idle forks made in {:.1} s; each charged {:.1} MiB (p50), host MemAvailable down {:.1} MiB each; {} MiB available before -> about {:.0} idle forks fit (goal 1,000)",
        made.len(),
        took.as_secs_f64(),
        charged_kib / 1024.0,
        host_kib / 1024.0,
        before / 1024,
        before as f64 / per_fork_kib
    );
}
