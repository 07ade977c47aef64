//! One-run benchmark of the `Backend` operations on the backend this host
//! supports for real (the container backend; root needed): create → first
//! exec, exec round trip, a 1 MiB file write and read, fork of an idle
//! sandbox (1 and 4 copies), pause/resume in memory and to disk, destroy.
//! It measures the trait's overhead on top of the wrapped crate's: compare
//! with `cargo bench -p sandbox-container --bench container`.
//!
//! Then the same operations through a node ([`sandbox::remote`]: the node
//! serving this backend on a loopback port, a `RemoteBackend` calling it),
//! and each p50 through the node against the direct one: the cost of one
//! hop between a control plane and its node, without the network's.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sandbox::container::{AgentInit, ContainerConfig, ContainerSandboxes};
use sandbox::{Backend, Command, Image, PauseMode, Spec};
use sandbox_container::{BackendConfig, Bind};

/// Each row's name and p50, in the order measured.
type Rows = Vec<(String, Duration)>;

fn report(rows: &mut Rows, name: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    rows.push((name.to_owned(), at(0.5)));
    println!(
        "{name:<36} n={:<4} p50={:>8.2} ms  p99={:>8.2} ms",
        samples.len(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3
    );
}

async fn open(data_dir: &std::path::Path) -> ContainerSandboxes {
    let mut backend = BackendConfig::new(data_dir);
    backend.launcher = common::launcher_binary();
    backend.layer_image_gib = 8;
    ContainerSandboxes::open(ContainerConfig {
        backend,
        agent: AgentInit::Host(common::agent_binary()),
        shared_binds: vec![Bind {
            source: PathBuf::from("/usr"),
            target: PathBuf::from("/usr"),
            read_only: true,
        }],
    })
    .await
    .expect("open the container backend")
}

async fn run(b: &dyn Backend, spec: &Spec) -> Rows {
    let mut rows = Rows::new();
    let mut create = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..10 {
        let start = Instant::now();
        let info = b.create(spec.clone()).await.expect("create");
        b.exec(&info.id, Command::new(["true"]))
            .await
            .expect("exec");
        create.push(start.elapsed());
        ids.push(info.id);
    }
    report(&mut rows, "create -> first exec", &mut create);
    let id = ids[0].clone();

    let mut exec = Vec::new();
    for _ in 0..100 {
        let start = Instant::now();
        b.exec(&id, Command::new(["true"])).await.expect("exec");
        exec.push(start.elapsed());
    }
    report(&mut rows, "exec `true` round trip", &mut exec);

    let blob = vec![7u8; 1 << 20];
    let mut files = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        b.write_file(&id, "blob", &blob).await.expect("write");
        let back = b.read_file(&id, "blob").await.expect("read");
        files.push(start.elapsed());
        assert_eq!(back.len(), blob.len());
    }
    report(&mut rows, "write + read 1 MiB", &mut files);

    for count in [1, 4] {
        let mut forks = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            let copies = b.fork(&id, count).await.expect("fork");
            forks.push(start.elapsed());
            for copy in copies {
                b.destroy(&copy.sandbox.id).await.expect("destroy fork");
            }
        }
        report(
            &mut rows,
            &format!("fork x{count} of an idle sandbox"),
            &mut forks,
        );
    }

    for (mode, name) in [
        (PauseMode::Memory, "pause + resume in memory"),
        (PauseMode::Disk, "pause + resume to disk"),
    ] {
        let mut cycle = Vec::new();
        for _ in 0..10 {
            let start = Instant::now();
            b.pause(&id, mode).await.expect("pause");
            b.resume(&id).await.expect("resume");
            cycle.push(start.elapsed());
        }
        report(&mut rows, name, &mut cycle);
    }

    let mut destroy = Vec::new();
    for id in ids {
        let start = Instant::now();
        b.destroy(&id).await.expect("destroy");
        destroy.push(start.elapsed());
    }
    report(&mut rows, "destroy", &mut destroy);
    rows
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let data_dir = common::data_dir("bench", "backend");
    runtime.block_on(async {
        let sandboxes = open(&data_dir).await;
        println!(
            "container backend, CRIU checkpoints: {}",
            sandboxes.checkpoints()
        );
        let backend: Arc<dyn Backend> = Arc::new(sandboxes);
        let spec = Spec::new(Image::root(common::host_usr_root()));
        let direct = run(backend.as_ref(), &spec).await;

        println!("\nthrough a node on a loopback port:");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let key = "bench-node-key".to_owned();
        let node = tokio::spawn(sandbox::remote::serve(
            backend.clone(),
            spec.image.clone(),
            key.clone(),
            listener,
        ));
        let remote = sandbox::remote::RemoteBackend::connect("bench", addr, key)
            .await
            .expect("the node answers");
        let hop = run(&remote, &spec).await;
        node.abort();

        println!(
            "\n{:<36} {:>10} {:>10} {:>8}",
            "p50", "direct", "node", "ratio"
        );
        for ((name, direct), (_, hop)) in direct.iter().zip(&hop) {
            println!(
                "{name:<36} {:>7.2} ms {:>7.2} ms {:>7.2}x",
                direct.as_secs_f64() * 1e3,
                hop.as_secs_f64() * 1e3,
                hop.as_secs_f64() / direct.as_secs_f64()
            );
        }
    });
    let mut config = BackendConfig::new(&data_dir);
    config.layer_image_gib = 8;
    if let Ok(backend) = sandbox_container::ContainerBackend::open(config) {
        let _ = backend.close();
    }
    let _ = std::fs::remove_dir_all(&data_dir);
}
