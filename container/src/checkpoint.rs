//! CRIU checkpoints of whole sandboxes: PID 1 and its tree, with memory, in
//! an images directory, for pause to disk and for forks that keep processes
//! and memory.
//!
//! CRIU must be 4.0 or newer and pass `criu check` on this kernel (Debian
//! bookworm's 3.17 does not; `container/scripts/build-criu.sh` builds one).
//! Dump flags: `--network-lock skip` (a sandbox has only loopback, and the
//! lock needs iptables rules), `--external mnt[<path>]:<key>` for every
//! mount whose source is on the host (see `launcher::mounts::
//! external_mounts`); restore maps the same keys to the new sandbox's
//! sources (`launcher::restore`). For a fork, the v1 freezer holds the
//! parent still (`--freeze-cgroup`, `--leave-stopped`) while its disk is
//! snapshotted, so memory and disk are from the same instant.
//!
//! Known limits (reported as a fallback to fresh processes, never as a
//! failed operation): a connection from outside the sandbox (an open agent
//! client) cannot be dumped, and a process that runs a program from a host
//! bind mount must keep that mount external.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::launcher::mounts::external_mounts;
use crate::launcher::restore::external_key;
use crate::spec::LaunchSpec;

/// Failure of a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("Running criu failed")]
    Spawn(#[source] std::io::Error),
    #[error("criu dump failed: {reason} (log: {log})")]
    Dump { reason: String, log: PathBuf },
    #[error("Preparing the images directory {path} failed")]
    Images {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What happens to the sandbox's processes after the dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterDump {
    /// Killed (pause to disk).
    Kill,
    /// Left frozen in the v1 freezer cgroup (fork: the caller snapshots the
    /// disk, then thaws).
    Frozen,
}

/// A working CRIU binary.
#[derive(Debug, Clone)]
pub struct Criu {
    path: PathBuf,
}

impl Criu {
    /// Use `path` if it is CRIU ≥ 4 and `criu check` passes.
    pub fn probe(path: &Path) -> Option<Self> {
        let version = Command::new(path).arg("--version").output().ok()?;
        let text = String::from_utf8_lossy(&version.stdout);
        let major: u32 = text
            .lines()
            .find_map(|l| l.strip_prefix("Version: "))
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.trim().parse().ok())?;
        if major < 4 {
            return None;
        }
        let check = Command::new(path).arg("check").output().ok()?;
        check.status.success().then(|| Self {
            path: path.to_path_buf(),
        })
    }

    /// The binary.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Dump the process tree of PID 1 (`pid1` on the host) into `images`.
    pub fn dump(
        &self,
        spec: &LaunchSpec,
        pid1: u32,
        images: &Path,
        freezer_v1: Option<&Path>,
        after: AfterDump,
    ) -> Result<(), CheckpointError> {
        if images.exists() {
            std::fs::remove_dir_all(images).map_err(|source| CheckpointError::Images {
                path: images.to_path_buf(),
                source,
            })?;
        }
        std::fs::create_dir_all(images).map_err(|source| CheckpointError::Images {
            path: images.to_path_buf(),
            source,
        })?;
        let log = images.join("dump.log");
        let mut command = Command::new(&self.path);
        command
            .arg("dump")
            .arg("-t")
            .arg(pid1.to_string())
            .arg("-D")
            .arg(images)
            .args(["--network-lock", "skip", "-v2", "-o"])
            .arg(&log);
        if after == AfterDump::Frozen {
            command.arg("--leave-stopped");
            if let Some(freezer) = freezer_v1 {
                command.arg("--freeze-cgroup").arg(freezer);
            }
        }
        for (guest, _) in external_mounts(spec) {
            command.arg("--external").arg(format!(
                "mnt[{}]:{}",
                guest.display(),
                external_key(&guest)
            ));
        }
        let out = command.output().map_err(CheckpointError::Spawn)?;
        if out.status.success() {
            return Ok(());
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let reason = text
            .lines()
            .filter(|l| l.contains("Error ("))
            .find(|l| !l.contains("RLIMIT_NOFILE"))
            .unwrap_or("unknown error")
            .trim()
            .to_owned();
        Err(CheckpointError::Dump { reason, log })
    }
}
