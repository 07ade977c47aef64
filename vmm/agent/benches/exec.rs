//! Benchmark of the agent over a Unix socket, with local baselines measured
//! in the same run:
//! - exec round trip of `true` (p50/p99 of 1,000) vs. fork+exec+wait of
//!   `true` by this process;
//! - exec output throughput (1 GiB from `head -c`) vs. reading the same
//!   from a local pipe;
//! - 20 concurrent execs of `true` (execs per second);
//! - file write and read throughput (256 MiB).
//!
//! Run: `cargo bench -p sandbox-agent`.
// This is a benchmark binary, not library code.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_proto::{Client, ExecEvent, ExecRequest};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn summary(name: &str, mut v: Vec<Duration>) -> Duration {
    v.sort();
    let p50 = percentile(&v, 0.5);
    println!(
        "{name:<40} p50 {:>8.1} us  p99 {:>8.1} us  min {:>8.1} us  (n={})",
        us(p50),
        us(percentile(&v, 0.99)),
        us(v[0]),
        v.len()
    );
    p50
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_sandbox-agent"))
        .arg("--listen")
        .arg(format!("unix:{}", socket.display()))
        .arg("--files-root")
        .arg(dir.path())
        .arg("--cwd")
        .arg(dir.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    while !socket.exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let c = Client::connect_unix(&socket).await.unwrap();
    const N: usize = 1000;

    // Warm up.
    for _ in 0..50 {
        c.run(ExecRequest::argv(["true"])).await.unwrap();
    }
    let mut local = Vec::with_capacity(N);
    for _ in 0..N {
        let t = Instant::now();
        Command::new("true").status().unwrap();
        local.push(t.elapsed());
    }
    let mut remote = Vec::with_capacity(N);
    for _ in 0..N {
        let t = Instant::now();
        let out = c.run(ExecRequest::argv(["true"])).await.unwrap();
        remote.push(t.elapsed());
        assert!(out.exited.status.success());
    }
    println!("== exec round trip of `true` ==");
    let base = summary("local fork+exec+wait (baseline)", local);
    let agent_p50 = summary("agent exec over Unix socket", remote);
    println!(
        "ratio agent/baseline p50: {:.2}x  (protocol + agent overhead ~{:.0} us)",
        agent_p50.as_secs_f64() / base.as_secs_f64(),
        us(agent_p50) - us(base)
    );

    println!("== exec output throughput ==");
    let total: u64 = 1 << 30;
    let t = Instant::now();
    let mut child = Command::new("head")
        .args(["-c", &total.to_string(), "/dev/zero"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    child.wait().unwrap();
    assert_eq!(got, total);
    let local_mbs = total as f64 / 1e6 / t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut exec = c
        .exec(ExecRequest::argv([
            "head",
            "-c",
            &total.to_string(),
            "/dev/zero",
        ]))
        .await
        .unwrap();
    let mut got = 0u64;
    while let Some(ev) = exec.next().await.unwrap() {
        match ev {
            ExecEvent::Stdout(b) => got += b.len() as u64,
            ExecEvent::Stderr(_) => {}
            ExecEvent::Exited(e) => assert!(e.status.success()),
        }
    }
    assert_eq!(got, total);
    let agent_mbs = total as f64 / 1e6 / t.elapsed().as_secs_f64();
    println!("local pipe read (baseline)               {local_mbs:>8.0} MB/s");
    println!("agent exec stdout over Unix socket       {agent_mbs:>8.0} MB/s");
    println!("ratio agent/baseline: {:.2}", agent_mbs / local_mbs);

    println!("== 20 concurrent execs of `true` ==");
    let t = Instant::now();
    let rounds = 20;
    for _ in 0..rounds {
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                c.run(ExecRequest::argv(["true"])).await.unwrap()
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap().exited.status.success());
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{} execs in {:.2} s: {:.0} execs/s",
        rounds * 20,
        secs,
        (rounds * 20) as f64 / secs
    );

    println!("== files ==");
    let data = vec![0x5au8; 256 << 20];
    let t = Instant::now();
    c.write_file("/big.bin", &data, 0o644).await.unwrap();
    let w = data.len() as f64 / 1e6 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let back = c.read_file("/big.bin").await.unwrap();
    let r = data.len() as f64 / 1e6 / t.elapsed().as_secs_f64();
    assert_eq!(back.len(), data.len());
    println!("write_file 256 MiB (atomic, fsync)       {w:>8.0} MB/s");
    println!("read_file 256 MiB                        {r:>8.0} MB/s");

    let _ = agent.kill();
    let _ = agent.wait();
}
