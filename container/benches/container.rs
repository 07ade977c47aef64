//! One-run benchmark of the container backend on this host (root needed):
//! create → first exec, exec round trip, fork of an idle and a busy
//! sandbox, pause/resume in memory and to disk, memory per idle sandbox.
//! Baseline measured in the same run: spawning a host `true` process.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::TestBackend;
use sandbox_container::{ExecRequest, PauseMode};

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index]
}

fn report(name: &str, samples: &mut [Duration]) -> Duration {
    let p50 = percentile(samples, 0.5);
    let p99 = percentile(samples, 0.99);
    println!(
        "{name:<44} n={:<4} p50={:>8.2} ms  p99={:>8.2} ms",
        samples.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    p50
}

fn timed(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

fn mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:").map(str::to_owned))
        })
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A busybox sandbox whose PID 1 is a shell running `script`.
fn shell_sandbox(t: &TestBackend, script: &str) -> sandbox_container::SandboxInfo {
    let mut request = t.request(sandbox_container::Limits::default());
    request.init = vec!["/bin/sh".into(), "-c".into(), script.into()];
    t.backend().create(request).expect("create shell sandbox")
}

/// Fork and pause/resume to disk with processes and memory kept.
fn criu_figures(t: &TestBackend) {
    let b = t.backend();
    let all = vec![
        sandbox_container::Kept::Disk,
        sandbox_container::Kept::Memory,
        sandbox_container::Kept::Processes,
    ];
    for (name, script) in [
        ("idle", "while :; do sleep 1; done"),
        (
            "busy",
            "head -c 64000000 /dev/zero > /tmp/ballast; x=$(head -c 32000000 /dev/zero | tr '\\0' a); i=0; while :; do i=$((i+1)); echo $i > /tmp/n; done",
        ),
    ] {
        let parent = shell_sandbox(t, script);
        std::thread::sleep(Duration::from_millis(1500));
        let mem_mib = b.stats(&parent.id).expect("stats").cgroup.memory_bytes as f64 / 1048576.0;
        let mut samples = Vec::new();
        for _ in 0..10 {
            let mut forks = Vec::new();
            samples.push(timed(|| forks = b.fork(&parent.id, 1).expect("fork")));
            for fork in forks {
                assert_eq!(fork.kept, all, "CRIU fork kept everything");
                b.destroy(&fork.sandbox.id).expect("destroy fork");
            }
        }
        report(
            &format!("fork 1 of {name} sandbox, CRIU ({mem_mib:.0} MiB)"),
            &mut samples,
        );
        if name == "idle" {
            let mut forks = Vec::new();
            let mut ten = vec![timed(|| forks = b.fork(&parent.id, 10).expect("fork 10"))];
            for fork in forks {
                b.destroy(&fork.sandbox.id).expect("destroy fork");
            }
            report("fork 10 of idle sandbox, CRIU", &mut ten);
        }
        let (mut pause, mut resume) = (Vec::new(), Vec::new());
        for _ in 0..10 {
            pause.push(timed(|| {
                b.pause(&parent.id, PauseMode::Disk).expect("pause");
            }));
            resume.push(timed(|| {
                let carried = b.resume(&parent.id).expect("resume");
                assert_eq!(carried.kept, all, "CRIU resume kept everything");
            }));
        }
        report(&format!("pause to disk, CRIU, {name}"), &mut pause);
        report(&format!("resume from disk, CRIU, {name}"), &mut resume);
        b.destroy(&parent.id).expect("destroy");
    }
}

/// Fork and pause/resume to disk of a guest-image sandbox whose agent
/// started a Node process holding ~200 MB.
fn node_checkpoint_figures(
    t: &TestBackend,
    runtime: &tokio::runtime::Runtime,
    rootfs: &std::path::Path,
) {
    let b = t.backend();
    let mut request = t.agent_request(rootfs.to_path_buf(), false);
    request.limits.mem_mib = 2048;
    let sandbox = b.create(request).expect("create");
    runtime.block_on(async {
        let client = b.agent(&sandbox.id).await.expect("client");
        let mut start = agent_proto::ExecRequest::shell(
            "nohup node -e 'globalThis.big = Buffer.alloc(200e6, 1); setInterval(() => {}, 1000)' >/dev/null 2>&1 &",
        );
        start.timeout_ms = Some(5000);
        client.run(start).await.expect("start node");
    });
    std::thread::sleep(Duration::from_secs(2));
    let mem_mib = b.stats(&sandbox.id).expect("stats").cgroup.memory_bytes as f64 / 1048576.0;
    let mut fork = Vec::new();
    let mut kept = Vec::new();
    for _ in 0..5 {
        let mut forks = Vec::new();
        fork.push(timed(|| forks = b.fork(&sandbox.id, 1).expect("fork")));
        for f in forks {
            kept = f.kept.clone();
            b.destroy(&f.sandbox.id).expect("destroy");
        }
    }
    report(
        &format!("guest image: fork node ({mem_mib:.0} MiB), kept {kept:?}"),
        &mut fork,
    );
    let (mut pause, mut resume) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        pause.push(timed(|| {
            b.pause(&sandbox.id, PauseMode::Disk).expect("pause");
        }));
        resume.push(timed(|| {
            kept = b.resume(&sandbox.id).expect("resume").kept;
        }));
    }
    report(
        &format!("guest image: pause node to disk, kept {kept:?}"),
        &mut pause,
    );
    report("guest image: resume node from disk", &mut resume);
    b.destroy(&sandbox.id).expect("destroy");
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let t = TestBackend::start("bench");
    let b = t.backend();
    let truth = ExecRequest::new(["/bin/true"]);

    let mut host: Vec<Duration> = (0..100)
        .map(|_| timed(|| assert!(Command::new("true").status().expect("true").success())))
        .collect();
    let baseline = report("baseline: host spawn `true`", &mut host);

    let mut create_exec = Vec::new();
    let mut destroy = Vec::new();
    for _ in 0..100 {
        let start = Instant::now();
        let sandbox = t.create();
        let out = b.exec(&sandbox.id, &truth).expect("exec");
        create_exec.push(start.elapsed());
        assert!(out.status.success());
        destroy.push(timed(|| b.destroy(&sandbox.id).expect("destroy")));
    }
    let p50 = report("create → first exec `true` done", &mut create_exec);
    report("destroy", &mut destroy);

    let sandbox = t.create();
    let mut exec: Vec<Duration> = (0..100)
        .map(|_| timed(|| assert!(b.exec(&sandbox.id, &truth).expect("exec").status.success())))
        .collect();
    let exec_p50 = report("exec `true` round trip (setns)", &mut exec);

    t.sh_ok(
        &sandbox.id,
        "for i in $(seq 200); do echo $i > /data/f$i; done",
    );
    let mut fork_idle = Vec::new();
    for _ in 0..20 {
        let mut forks = Vec::new();
        fork_idle.push(timed(|| forks = b.fork(&sandbox.id, 1).expect("fork")));
        for fork in forks {
            b.destroy(&fork.sandbox.id).expect("destroy fork");
        }
    }
    report("fork 1 of idle sandbox, no CRIU (disk)", &mut fork_idle);

    let mut fork10 = Vec::new();
    for _ in 0..3 {
        let mut forks = Vec::new();
        fork10.push(timed(|| forks = b.fork(&sandbox.id, 10).expect("fork 10")));
        for fork in forks {
            b.destroy(&fork.sandbox.id).expect("destroy fork");
        }
    }
    report("fork 10 of idle sandbox, no CRIU", &mut fork10);

    let busy = t.create();
    t.sh_ok(
        &busy.id,
        "(while :; do dd if=/dev/zero of=/data/churn bs=64k count=16 2>/dev/null; done) >/dev/null 2>&1 &",
    );
    let mut fork_busy = Vec::new();
    for _ in 0..20 {
        let mut forks = Vec::new();
        fork_busy.push(timed(|| forks = b.fork(&busy.id, 1).expect("fork busy")));
        for fork in forks {
            b.destroy(&fork.sandbox.id).expect("destroy fork");
        }
    }
    report("fork 1 of busy sandbox, no CRIU (disk)", &mut fork_busy);
    b.destroy(&busy.id).expect("destroy busy");

    let (mut pause_mem, mut resume_mem) = (Vec::new(), Vec::new());
    for _ in 0..50 {
        pause_mem.push(timed(|| {
            b.pause(&sandbox.id, PauseMode::Memory).expect("pause");
        }));
        resume_mem.push(timed(|| {
            b.resume(&sandbox.id).expect("resume");
        }));
    }
    report("pause in memory (freeze)", &mut pause_mem);
    report("resume from memory (thaw)", &mut resume_mem);

    let (mut pause_disk, mut resume_disk) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        pause_disk.push(timed(|| {
            b.pause(&sandbox.id, PauseMode::Disk).expect("pause disk");
        }));
        resume_disk.push(timed(|| {
            b.resume(&sandbox.id).expect("resume disk");
            assert!(b.exec(&sandbox.id, &truth).expect("exec").status.success());
        }));
    }
    report("pause to disk (no CRIU: stop)", &mut pause_disk);
    report("resume from disk + exec (fresh procs)", &mut resume_disk);
    b.destroy(&sandbox.id).expect("destroy");

    if b.checkpoints() {
        criu_figures(&t);
    } else {
        println!("CRIU: not available (no CRIU >= 4.0 passing criu check): figures skipped");
    }

    // The same with the agent as PID 1 and the first exec over agent-proto.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut agent_create = Vec::new();
    let mut agent_exec = Vec::new();
    for _ in 0..100 {
        let start = Instant::now();
        let sandbox = b
            .create(t.agent_request(common::host_usr_root(), true))
            .expect("create with agent");
        runtime.block_on(async {
            let client = b.agent(&sandbox.id).await.expect("client");
            let out = client
                .run(agent_proto::ExecRequest::argv(["true"]))
                .await
                .expect("exec");
            assert!(out.exited.status.success());
            agent_create.push(start.elapsed());
            for _ in 0..10 {
                let started = Instant::now();
                client
                    .run(agent_proto::ExecRequest::argv(["true"]))
                    .await
                    .expect("exec");
                agent_exec.push(started.elapsed());
            }
        });
        b.destroy(&sandbox.id).expect("destroy");
    }
    report("create → first exec via agent", &mut agent_create);

    // On the real guest image, when one is built: create → `node --version`.
    let image = guest_image::list(std::path::Path::new("/var/lib/forge"))
        .ok()
        .and_then(|images| images.into_iter().next());
    if let Some(image) = image {
        let mut node = Vec::new();
        for _ in 0..20 {
            // The host's agent, as the forge binds it (the image's own may
            // speak an older protocol).
            let request = t.agent_request(image.rootfs.clone(), false);
            let start = Instant::now();
            let sandbox = b.create(request).expect("create on the image");
            runtime.block_on(async {
                let client = b.agent(&sandbox.id).await.expect("client");
                let out = client
                    .run(agent_proto::ExecRequest::argv(["node", "--version"]))
                    .await
                    .expect("node");
                assert!(out.exited.status.success());
            });
            node.push(start.elapsed());
            b.destroy(&sandbox.id).expect("destroy");
        }
        report("guest image: create → `node --version`", &mut node);
        if b.checkpoints() {
            node_checkpoint_figures(&t, &runtime, &image.rootfs);
        }
    } else {
        println!("guest image: not built in /var/lib/forge, figure skipped");
    }
    report("exec `true` round trip via agent", &mut agent_exec);

    let before = mem_available_kib();
    let idle: Vec<_> = (0..50)
        .map(|_| {
            b.create(t.agent_request(common::host_usr_root(), true))
                .expect("idle sandbox with agent")
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let after = mem_available_kib();
    let cgroup_bytes: u64 = idle
        .iter()
        .map(|s| b.stats(&s.id).expect("stats").cgroup.memory_bytes)
        .sum();
    println!(
        "{:<44} cgroup-charged {:.2} MiB, host MemAvailable drop {:.2} MiB (per sandbox, 50 idle)",
        "memory per idle sandbox (agent PID 1)",
        cgroup_bytes as f64 / 50.0 / 1048576.0,
        before.saturating_sub(after) as f64 / 50.0 / 1024.0
    );
    println!(
        "ratios: create→exec p50 = {:.1}× host spawn; exec p50 = {:.1}× host spawn",
        p50.as_secs_f64() / baseline.as_secs_f64(),
        exec_p50.as_secs_f64() / baseline.as_secs_f64()
    );
}
