//! The harness the shared suite runs against: a backend on a private data
//! directory, the spec of a sandbox that suits it, and a way to see what a
//! destroyed sandbox left on the host. Dropping it removes everything,
//! even when the test failed.
#![allow(dead_code)]

#[path = "../../../container/tests/common/shared.rs"]
mod shared;

use std::path::PathBuf;
use std::sync::Arc;

#[allow(unused_imports)]
pub use shared::{
    agent_binary, host_usr_root, launcher_binary, test_binaries_dir, workspace_binary,
};

use sandbox::{Backend, Spec};
#[allow(unused_imports)] // each test crate uses its own subset
pub use test_support::poll::stays_async as stays;

/// Host paths that exist while a sandbox (by id) lives.
pub type Footprint = Box<dyn Fn(&str) -> Vec<PathBuf> + Send + Sync>;

pub struct Harness {
    pub backend: Arc<dyn Backend>,
    pub data_dir: PathBuf,
    /// The spec the suite creates sandboxes from.
    pub spec: Spec,
    /// Pause to disk and fork keep memory and processes (microVMs always,
    /// containers with CRIU); otherwise they keep the disk and say why.
    pub keeps_processes: bool,
    pub footprint: Footprint,
    /// Removes whatever is left; runs on drop.
    pub cleanup: Option<Box<dyn FnOnce() + Send>>,
}

impl Harness {
    pub fn spec(&self) -> Spec {
        self.spec.clone()
    }

    /// The footprint paths of `id` that still exist.
    pub fn leftovers(&self, id: &str) -> Vec<PathBuf> {
        (self.footprint)(id)
            .into_iter()
            .filter(|p| p.exists())
            .collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(cleanup) = self.cleanup.take() {
            cleanup();
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A data directory of its own under /tmp, empty, for `test`.
pub fn data_dir(backend: &str, test: &str) -> PathBuf {
    // Short: Unix socket paths under it must fit in 108 bytes.
    let hash = test.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let dir = PathBuf::from(format!(
        "/tmp/sbs-{backend}-{:06x}-{}",
        hash & 0xff_ffff,
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("data dir");
    dir
}
