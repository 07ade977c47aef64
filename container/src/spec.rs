//! The launch spec: everything the launcher needs to build one sandbox,
//! written by the library as JSON into the sandbox's state directory and read
//! by `sandbox-init` (which must not depend on the library's runtime state).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Name of the spec file inside a sandbox's state directory.
pub const SPEC_FILE: &str = "spec.json";

/// Where the top layer's run directory appears inside the sandbox.
pub const GUEST_SOCKET_DIR: &str = "/run/sandbox";

/// The console log (stderr of the launcher and PID 1) in the run dir.
pub const CONSOLE_LOG: &str = "console.log";

/// Resource limits of one sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory limit (RAM; the cgroup's `memory.limit_in_bytes`).
    pub mem_mib: u64,
    /// CPU quota in thousandths of a CPU (1000 = one full core).
    pub cpu_millis: u64,
    /// Relative CPU weight against other sandboxes (`cpu.shares`, 1024 = default).
    pub cpu_shares: u64,
    /// Maximum number of processes and threads.
    pub pids_max: u64,
    /// Disk quota of the writable layer (btrfs qgroup on the top subvolume).
    pub disk_mib: u64,
    /// Open files per process (RLIMIT_NOFILE).
    pub nofile: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            mem_mib: 1024,
            cpu_millis: 1000,
            cpu_shares: 1024,
            pids_max: 512,
            disk_mib: 4096,
            nofile: 4096,
        }
    }
}

/// Cgroup directories the sandbox's processes join (absolute host paths).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupPaths {
    /// One directory per hierarchy (v1 controllers and the cgroup2 mount).
    pub dirs: Vec<PathBuf>,
}

/// A host path bind-mounted into the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    /// Host path (file or directory).
    pub source: PathBuf,
    /// Absolute path inside the sandbox; created when missing.
    pub target: PathBuf,
    pub read_only: bool,
}

/// The host ids a sandbox's user namespace maps its ids `0..count` onto:
/// root inside is `host_base` outside, an unprivileged id no other
/// sandbox and no host account uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    /// Host uid (and gid) of root inside.
    pub host_base: u32,
    /// How many ids are mapped.
    pub count: u32,
}

impl IdMap {
    /// The line for `/proc/<pid>/uid_map` and `gid_map`.
    pub fn map_line(&self) -> String {
        format!("0 {} {}\n", self.host_base, self.count)
    }

    /// Whether host id `id` belongs to this sandbox.
    pub fn contains(&self, id: u32) -> bool {
        id >= self.host_base && id - self.host_base < self.count
    }
}

/// The full description of one sandbox launch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// Sandbox id (also used in log messages).
    pub id: String,
    /// Hostname inside the sandbox.
    pub hostname: String,
    /// Read-only lower directories, top-most first (overlayfs order); the
    /// image root directory is the last one.
    pub lower_dirs: Vec<PathBuf>,
    /// The writable top layer: a directory holding `upper/` and `work/`
    /// (overlayfs) and `run/` (bound at [`GUEST_SOCKET_DIR`]: the agent's
    /// socket and the console log, counted against the layer's quota).
    pub top_dir: PathBuf,
    /// Host-only directory where the launcher builds the sandbox's mounts
    /// in its private mount namespace (empty on the host).
    pub root_dir: PathBuf,
    /// Extra bind mounts (after `/run` is set up, so targets under `/run`
    /// land on its tmpfs).
    #[serde(default)]
    pub binds: Vec<Bind>,
    /// Cgroups to join before unsharing the cgroup namespace.
    pub cgroups: CgroupPaths,
    /// Program run as PID 1; empty = the launcher's built-in reaper.
    pub init: Vec<String>,
    /// Environment of PID 1.
    pub env: Vec<(String, String)>,
    /// Resource limits (rlimits are applied by the launcher).
    pub limits: Limits,
    /// The user namespace's id mapping.
    pub ids: IdMap,
}

impl LaunchSpec {
    /// The top layer's directory bound at [`GUEST_SOCKET_DIR`].
    pub fn run_dir(&self) -> PathBuf {
        self.top_dir.join(RUN_DIR)
    }
}

/// Name of the run directory inside a top layer.
pub const RUN_DIR: &str = "run";
