//! The sandbox suite on the container backend: host `/usr` bound into a
//! minimal root, the workspace's `sandbox-agent` as PID 1. Needs root,
//! cgroups and btrfs-progs; CRIU (pause to disk and forks with memory) is
//! used when `container/scripts/build-criu.sh` has built it, and the cases
//! say what was kept either way.

mod common;
#[path = "common/container.rs"]
mod container_harness;
mod suite;

use common::Harness;
use sandbox::Sandbox;

async fn harness(test: &str) -> Option<Harness> {
    container_harness::harness("container", test).await
}

suite::all_cases!(harness);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_names_a_backend_this_host_runs() {
    let choice = sandbox::probe(None).expect("root with cgroups and btrfs-progs runs containers");
    println!("probe: {choice}");
    assert!(!choice.reason.is_empty());
    if std::env::var_os(sandbox::probe::GUEST_KERNEL_ENV).is_none() {
        // Without a guest kernel no microVM can boot, whatever the CPU.
        assert_eq!(choice.backend, sandbox::BackendKind::Container, "{choice}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_dir_is_bound_read_write() {
    let h = harness("workspace").await.expect("harness");
    let workspace = h.data_dir.join("host-workspace");
    std::fs::create_dir_all(&workspace).expect("workspace");
    std::fs::write(workspace.join("from-host"), "host").expect("host file");
    let mut spec = h.spec();
    spec.workspace = Some(workspace.clone());
    let sandbox = Sandbox::create(h.backend.clone(), spec)
        .await
        .expect("create");
    assert_eq!(sandbox.read_file("from-host").await.expect("read"), b"host");
    sandbox
        .write_file("from-sandbox", b"sandbox")
        .await
        .expect("write");
    assert_eq!(
        std::fs::read(workspace.join("from-sandbox")).expect("host sees it"),
        b"sandbox"
    );
    sandbox.destroy().await.expect("destroy");
    assert!(
        workspace.join("from-host").exists(),
        "destroy keeps the host's workspace"
    );
}
