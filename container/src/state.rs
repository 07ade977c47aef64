//! The on-disk record of each sandbox, `<data_dir>/sandboxes/<id>/state.json`,
//! written on every state change so a restarted forge (or [`fn@crate::reconcile`])
//! knows what exists without any in-memory state.
//!
//! Directory of a sandbox (mode 0700, nothing in it is the sandbox's):
//! `spec.json` (the launch spec), `state.json`, and CRIU's logs
//! (`dump.log`, `restore.log`, `restored.pid`). What the sandbox itself
//! writes outside its root (the agent's socket, `console.log`) lives in its
//! top layer's `run/`, its checkpoint images in its images subvolume (see
//! `layers`), and its launcher builds its mounts under
//! `backend::mount_root`.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::spec::{IdMap, Limits};

/// Lifecycle state of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Processes running.
    Running,
    /// Paused in memory: cgroup frozen, RAM kept, no CPU.
    Frozen,
    /// Paused to disk: no processes, no RAM; the disk is kept.
    PausedToDisk,
    /// PID 1 died without being asked to (killed, crashed, OOM); the disk is kept.
    Crashed,
}

/// What a fork or a resume carried over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kept {
    Disk,
    Memory,
    Processes,
}

/// The persisted record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub status: Status,
    /// Host pid of PID 1 while running or frozen.
    pub pid1: Option<u32>,
    /// Host pid of the launcher's supervising first stage.
    pub supervisor: Option<u32>,
    /// Base image root directory (bottom lower layer).
    pub image_root: PathBuf,
    /// Id of the writable top layer in the layer store.
    pub top_layer: String,
    /// Extra read-only layer ids between image and top, top-most first.
    pub lower_layers: Vec<String>,
    pub limits: Limits,
    pub init: Vec<String>,
    pub env: Vec<(String, String)>,
    pub hostname: String,
    /// Host paths bind-mounted inside.
    #[serde(default)]
    pub binds: Vec<crate::spec::Bind>,
    /// PID 1 is the sandbox agent: wait for it and send it lifecycle notices.
    #[serde(default)]
    pub agent: bool,
    /// A CRIU checkpoint in `<sandbox dir>/checkpoint` holds its processes
    /// and memory (set by pause to disk, consumed by resume).
    #[serde(default)]
    pub checkpoint: bool,
    /// Why the last checkpoint attempt fell back to keeping only the disk.
    #[serde(default)]
    pub checkpoint_error: Option<String>,
    /// The sandbox this one was forked from, if any.
    pub forked_from: Option<String>,
    /// Seconds since the Unix epoch.
    pub created_at_secs: u64,
    /// The host id range of its user namespace; taken at the first start.
    #[serde(default)]
    pub ids: Option<IdMap>,
    /// The id range its checkpoint's processes were dumped with, when it
    /// is not `ids` (a copy saved from another sandbox's processes).
    #[serde(default)]
    pub checkpoint_ids: Option<IdMap>,
    /// The secret its agent requires in every `Hello` (forks share their
    /// parent's: they carry its agent's memory).
    #[serde(default)]
    pub agent_token: Option<String>,
    /// Moved here with its checkpoint: the next resume restores it or
    /// fails, never starts it afresh (its old copy still has the
    /// processes).
    #[serde(default)]
    pub restore_only: bool,
}

/// Failure to read or write a record.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("Sandbox state file {path} could not be accessed")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Sandbox state file {path} is malformed")]
    Format {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Writes `bytes` to `path` as a file only root can read (specs and
/// records name host paths, checkpoints, secrets).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)
}

/// Name of the record file in a sandbox directory.
pub const STATE_FILE: &str = "state.json";

impl SandboxRecord {
    /// Write atomically (temp file + rename).
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let path = dir.join(STATE_FILE);
        let tmp = dir.join("state.json.tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(|source| StateError::Format {
            path: path.clone(),
            source,
        })?;
        write_private(&tmp, &bytes).map_err(|source| StateError::Io {
            path: tmp.clone(),
            source,
        })?;
        fs::rename(&tmp, &path).map_err(|source| StateError::Io { path, source })
    }

    /// Read the record of the sandbox in `dir`.
    pub fn load(dir: &Path) -> Result<Self, StateError> {
        let path = dir.join(STATE_FILE);
        let bytes = fs::read(&path).map_err(|source| StateError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| StateError::Format { path, source })
    }
}

/// A pidfd of `pid`, if it is alive and PID 1 of sandbox `id`: the check
/// runs after the descriptor is taken, so a pid reused in between fails
/// the check, and one reused later does not matter (the descriptor names
/// the process, not the number).
pub fn sandbox_pidfd(pid: u32, id: &str) -> Option<std::os::fd::OwnedFd> {
    let raw = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
    let fd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()).ok()?;
    is_sandbox_pid(pid, id).then_some(fd)
}

/// True when `pid` is alive and is PID 1 of sandbox `id` (checked through its
/// cgroup membership, so a reused pid is not mistaken for the sandbox).
pub fn is_sandbox_pid(pid: u32, id: &str) -> bool {
    let Ok(cgroups) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return false;
    };
    let alive = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            // State is the field after the parenthesised command name.
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X")
        })
        .unwrap_or(false);
    alive && cgroups.lines().any(|l| l.ends_with(&format!("/{id}")))
}
