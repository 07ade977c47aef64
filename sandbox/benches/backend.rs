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
//!
//! Last, moving a sandbox paused to disk from one node to another (a
//! second backend on a data directory of its own, served on another
//! port): for sandboxes holding 16, 64 and 256 MiB of memory and as much
//! on disk, the move (export streamed into import) and the resume on the
//! new node; the ratio is pause + move + resume there against the
//! baseline of the same sandbox's pause to disk and resume where it is,
//! measured in the same run.

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
    let moved_dir = common::data_dir("bench", "move-to");
    runtime.block_on(moves(&data_dir, &moved_dir));
    for dir in [&data_dir, &moved_dir] {
        let mut config = BackendConfig::new(dir);
        config.layer_image_gib = 8;
        if let Ok(backend) = sandbox_container::ContainerBackend::open(config) {
            let _ = backend.close();
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A node serving `backend` on a loopback port, and its caller.
async fn served(
    backend: Arc<dyn Backend>,
    image: Image,
    name: &str,
) -> sandbox::remote::RemoteBackend {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let key = format!("bench-{name}-key");
    tokio::spawn(sandbox::remote::serve(
        backend,
        image,
        key.clone(),
        listener,
    ));
    sandbox::remote::RemoteBackend::connect(name, addr, key)
        .await
        .expect("the node answers")
}

/// Counts the bytes a stream carries.
struct Counted<'a> {
    inner: sandbox::Carrier<'a>,
    bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl tokio::io::AsyncRead for Counted<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = self.inner.as_mut().poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        self.bytes
            .fetch_add(read, std::sync::atomic::Ordering::Relaxed);
        polled
    }
}

/// Moves between two nodes, against pausing to disk and resuming in place.
async fn moves(from_dir: &std::path::Path, to_dir: &std::path::Path) {
    let image = Image::root(common::host_usr_root());
    let from = served(Arc::new(open(from_dir).await), image.clone(), "from").await;
    let to = served(Arc::new(open(to_dir).await), image.clone(), "to").await;
    println!("\nmoving a sandbox paused to disk between two nodes (loopback), one run each:");
    println!(
        "{:>8} {:>10} {:>12} {:>12} {:>10} {:>12} {:>8}",
        "MiB", "stream", "in place", "move", "MB/s", "resume there", "ratio"
    );
    for mib in [16u64, 64, 256] {
        let mut spec = Spec::new(image.clone());
        spec.mem_mib = 1024;
        spec.disk_mib = 2048;
        let id = from.create(spec.clone()).await.expect("create").id;
        let fill = format!(
            "head -c {mib}M /dev/urandom > /root/disk; \
             setsid python3 -c 'import os, time; b = os.urandom({mib} << 20); time.sleep(1e9)' \
             </dev/null >/dev/null 2>&1 & sleep 1"
        );
        let filled = from
            .exec(&id, Command::shell(&fill).timeout(Duration::from_secs(120)))
            .await
            .expect("fill");
        assert!(filled.exited.status.success(), "{filled:?}");
        // The baseline: to disk and back where it is.
        let start = Instant::now();
        from.pause(&id, PauseMode::Disk).await.expect("pause");
        from.resume(&id).await.expect("resume");
        let in_place = start.elapsed();
        let start = Instant::now();
        from.pause(&id, PauseMode::Disk).await.expect("pause");
        let paused = start.elapsed();
        let bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let start = Instant::now();
        let stream = Counted {
            inner: from.export(&id).await.expect("export"),
            bytes: bytes.clone(),
        };
        to.import(&id, spec.clone(), Box::pin(stream))
            .await
            .expect("import");
        let moved = start.elapsed();
        let start = Instant::now();
        let carried = to.resume(&id).await.expect("resume on the other node");
        let resumed = start.elapsed();
        assert_eq!(carried.kept.len(), 3, "{carried:?}");
        let bytes = bytes.load(std::sync::atomic::Ordering::Relaxed);
        println!(
            "{mib:>8} {:>7} MiB {:>9.0} ms {:>9.0} ms {:>10.0} {:>9.0} ms {:>7.2}x",
            bytes >> 20,
            in_place.as_secs_f64() * 1e3,
            moved.as_secs_f64() * 1e3,
            bytes as f64 / 1e6 / moved.as_secs_f64(),
            resumed.as_secs_f64() * 1e3,
            (paused + moved + resumed).as_secs_f64() / in_place.as_secs_f64(),
        );
        from.destroy(&id).await.expect("destroy the old copy");
        to.destroy(&id).await.expect("destroy");
    }
}
