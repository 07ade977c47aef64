//! Resuming a VM from a snapshot directory (`forge-vmm restore`): the
//! state file is read and checked, the memory file mapped privately (pages
//! load on first touch), paths the caller wants different replaced, and
//! the VM built from the saved state. Any damage is reported before a vCPU
//! runs: there is never a half-running VM. Each writable disk gets a new
//! empty top layer over the snapshot's sealed chain.

use std::path::{Path, PathBuf};

use crate::builder::{BuildError, Source, Vmm};
use crate::config::VmConfig;
use crate::snapshot::{self, memory_file};

/// Paths a restored VM uses instead of the saved ones.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// Control socket.
    pub control_socket: Option<PathBuf>,
    /// vsock Unix socket.
    pub vsock_uds: Option<PathBuf>,
    /// Serial log.
    pub serial_log: Option<PathBuf>,
}

/// The saved config with the caller's paths in place (the VM's disk
/// chains as saved).
fn with_overrides(saved: &VmConfig, overrides: &Overrides) -> VmConfig {
    let mut config = saved.clone();
    if let Some(p) = &overrides.control_socket {
        config.control_socket = p.clone();
    }
    if let Some(p) = &overrides.serial_log {
        config.serial_log = p.clone();
    }
    if let (Some(p), Some(v)) = (&overrides.vsock_uds, config.vsock.as_mut()) {
        v.uds_path = p.clone();
    }
    config
}

/// Builds the VM saved in `dir` and starts its vCPUs.
pub fn from_dir(dir: &Path, overrides: &Overrides) -> Result<Vmm, BuildError> {
    let state = snapshot::read_state(dir)?;
    let memory_path = dir.join(snapshot::MEMORY_FILE);
    let memory = memory_file::map(&memory_path, &state.memory_regions)?;
    let mut config = with_overrides(&state.config, overrides);
    // The snapshot's disk layers are sealed: this VM writes a new top of
    // its own, so any number of restores of one snapshot stay independent.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    for disk in config.disks.iter_mut().filter(|d| !d.read_only) {
        if let Some(top) = disk.layers.last() {
            let mut p = top.as_os_str().to_owned();
            p.push(format!(".r{}-{stamp}", std::process::id()));
            disk.layers.push(PathBuf::from(p));
        }
    }
    Vmm::build_from(
        &config,
        Source::Restore {
            snapshot: Box::new(state),
            memory,
            memory_file: Some(memory_path),
            start_paused: false,
        },
    )
}
