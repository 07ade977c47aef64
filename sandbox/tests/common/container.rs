//! The container backend's harness, for the suites that run on it
//! (`tests/container.rs`, and `tests/remote.rs` through a node).

use std::path::PathBuf;
use std::sync::Arc;

use crate::common::Harness;
use sandbox::container::{AgentInit, ContainerConfig, ContainerSandboxes};
use sandbox::{Image, Spec};
use sandbox_container::{BackendConfig, Bind};
use test_support::requirements;

/// A container backend on a data directory of its own (named after
/// `backend` and the test), its spec's image the host's `/usr`.
pub async fn harness(backend_name: &str, test: &str) -> Option<Harness> {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the container suite needs root"
    );
    let data_dir = crate::common::data_dir(backend_name, test);
    let mut backend = BackendConfig::new(&data_dir);
    backend.launcher = crate::common::launcher_binary();
    backend.layer_image_gib = 8;
    let config = ContainerConfig {
        backend,
        agent: AgentInit::Host(crate::common::agent_binary()),
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
    let mut spec = Spec::new(Image::root(crate::common::host_usr_root()));
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
            config.launcher = crate::common::launcher_binary();
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
