//! The sandbox suite on the container backend: host `/usr` bound into a
//! minimal root, the workspace's `sandbox-agent` as PID 1. Needs root,
//! cgroups and btrfs-progs; CRIU (pause to disk and forks with memory) is
//! used when `container/scripts/build-criu.sh` has built it, and the cases
//! say what was kept either way.

mod common;
mod suite;

use std::path::PathBuf;
use std::sync::Arc;

use common::Harness;
use sandbox::container::{AgentInit, ContainerConfig, ContainerSandboxes};
use sandbox::{Image, Sandbox, Spec};
use sandbox_container::{BackendConfig, Bind};
use test_support::requirements;

async fn harness(test: &str) -> Option<Harness> {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the container suite needs root"
    );
    let data_dir = common::data_dir("container", test);
    let mut backend = BackendConfig::new(&data_dir);
    backend.launcher = common::launcher_binary();
    backend.layer_image_gib = 8;
    let config = ContainerConfig {
        backend,
        agent: AgentInit::Host(common::agent_binary()),
        shared_binds: vec![Bind {
            source: PathBuf::from("/usr"),
            target: PathBuf::from("/usr"),
            read_only: true,
        }],
    };
    let sandboxes = ContainerSandboxes::open(config).await.expect("open");
    // Without CRIU (>= 4.0, passing `criu check`; container/scripts/
    // build-criu.sh builds one) the suite skips its process checks: a
    // recorded skip, and a failure under CI.
    let keeps_processes = sandboxes.checkpoints();
    if !keeps_processes {
        requirements::missing(
            requirements::Requirement::Criu,
            "no CRIU >= 4.0 passing `criu check`: the checks that processes survive do not run",
        );
    }
    let mut spec = Spec::new(Image::root(common::host_usr_root()));
    spec.env.push(("SPEC_VAR".into(), "from-spec".into()));
    let parent = sandbox_container::backend::cgroup_parent(&data_dir);
    let footprint_dir = data_dir.clone();
    let cleanup_dir = data_dir.clone();
    Some(Harness {
        backend: Arc::new(sandboxes),
        data_dir,
        spec,
        keeps_processes,
        footprint: Box::new(move |id| {
            let mut paths = vec![
                footprint_dir.join("sandboxes").join(id),
                footprint_dir.join("layers").join(id),
            ];
            if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
                paths.extend(
                    hierarchies
                        .flatten()
                        .map(|h| h.path().join(&parent).join(id)),
                );
            }
            paths
        }),
        cleanup: Some(Box::new(move || {
            // A second handle on the data dir: works after a failed case too.
            let mut config = BackendConfig::new(&cleanup_dir);
            config.launcher = common::launcher_binary();
            config.layer_image_gib = 8;
            if let Ok(backend) = sandbox_container::ContainerBackend::open(config) {
                for sandbox in backend.list().unwrap_or_default() {
                    let _ = backend.destroy(&sandbox.id);
                }
                let _ = backend.close();
            }
        })),
    })
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
