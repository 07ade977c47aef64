//! The plain data every backend speaks: what a new sandbox looks like
//! ([`Spec`]), a command to run in one ([`Command`]), and what the
//! operations report ([`SandboxInfo`], [`Carried`], [`Stats`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where a workspace directory bound from the host appears inside.
pub const WORKSPACE: &str = "/workspace";

/// Which isolation a backend provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// A KVM microVM per sandbox (`forge-vmm`).
    Microvm,
    /// Linux namespaces, overlay layers, cgroups and seccomp.
    Container,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::Microvm => "microvm",
            BackendKind::Container => "container",
        })
    }
}

/// A guest image: the same recipe gives a root directory (containers) and
/// an ext4 disk made from it (microVMs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Root directory of the image (read-only lower layer of a container).
    pub root: PathBuf,
    /// The ext4 disk a microVM boots from; `None` for a root-only image.
    pub ext4: Option<PathBuf>,
}

impl Image {
    /// An image known only by its root directory.
    pub fn root(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            ext4: None,
        }
    }
}

/// What a new sandbox looks like.
#[derive(Debug, Clone)]
pub struct Spec {
    pub image: Image,
    pub vcpus: u8,
    pub mem_mib: u64,
    /// Limit of what the sandbox may write to its disk.
    pub disk_mib: u64,
    /// Environment every command inside starts with.
    pub env: Vec<(String, String)>,
    /// Labels the node that runs it must have, for a backend that places
    /// sandboxes on nodes; a host's own backend has no node and ignores
    /// them.
    pub node_labels: BTreeMap<String, String>,
    /// A host directory shown read-write at [`WORKSPACE`].
    ///
    /// The sandbox's root writes there as the directory's owner would: its
    /// files are owned by the ids inside (root's are host root's), and a
    /// setuid file it makes is setuid on the host too. Give a directory
    /// only root can reach (its parent mode 0700), never one a host user can.
    pub workspace: Option<PathBuf>,
}

impl Spec {
    /// One vCPU, 512 MiB of RAM, 2 GiB of disk, no workspace.
    pub fn new(image: Image) -> Self {
        Self {
            image,
            vcpus: 1,
            mem_mib: 512,
            disk_mib: 2048,
            env: Vec::new(),
            node_labels: BTreeMap::new(),
            workspace: None,
        }
    }
}

/// Output cap of [`Command`] unless set: enough for a test run's log.
pub const DEFAULT_OUTPUT_LIMIT_BYTES: u64 = 16 << 20;

/// A command to run inside a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// `argv[0]` is looked up in `PATH` when it has no slash.
    pub argv: Vec<String>,
    /// Added to the sandbox's environment.
    pub env: Vec<(String, String)>,
    /// Working directory inside; the agent's (`/`) when `None`.
    pub cwd: Option<String>,
    /// Bytes fed to stdin, then end of file. Empty: stdin is `/dev/null`.
    pub stdin: Vec<u8>,
    /// The process group is killed after this long.
    pub timeout: Option<Duration>,
    /// stdout and stderr together are cut after this many bytes.
    pub output_limit_bytes: u64,
}

impl Command {
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: None,
            stdin: Vec::new(),
            timeout: None,
            output_limit_bytes: DEFAULT_OUTPUT_LIMIT_BYTES,
        }
    }

    /// `/bin/sh -c script`.
    pub fn shell(script: impl Into<String>) -> Self {
        Self::new(["/bin/sh".to_owned(), "-c".to_owned(), script.into()])
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn cwd(mut self, cwd: impl Into<String>) -> Self {
        self.cwd = Some(cwd.into());
        self
    }

    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = bytes.into();
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    pub fn output_limit_bytes(mut self, bytes: u64) -> Self {
        self.output_limit_bytes = bytes;
        self
    }
}

/// Lifecycle state of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Running,
    /// Paused in memory: no CPU, RAM kept, resumes in milliseconds.
    Paused,
    /// Paused to disk: no process, no RAM; the disk (and, where the
    /// backend can, memory and processes) is kept for resume.
    PausedToDisk,
    /// It stopped without being asked to; the disk is kept.
    Crashed,
}

/// How to pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseMode {
    Memory,
    Disk,
}

/// What a fork or a resume carried over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kept {
    Disk,
    Memory,
    Processes,
}

/// A sandbox as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxInfo {
    pub id: String,
    pub backend: BackendKind,
    pub state: State,
    pub forked_from: Option<String>,
}

/// A sandbox after resume or fork, and what it kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carried {
    pub sandbox: SandboxInfo,
    pub kept: Vec<Kept>,
    /// Why less than everything was kept, when the backend knows.
    pub note: Option<String>,
}

/// Usage of one sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub state: State,
    /// Resident memory (container: the cgroup's; microVM: the VMM's RSS).
    pub memory_bytes: u64,
    /// CPU time used so far.
    pub cpu_usage_ns: u64,
    /// Bytes written to the sandbox's own disk layer, when known.
    pub disk_bytes: Option<u64>,
    /// Bytes its memory and processes take on disk while it is paused to
    /// disk (a checkpoint or a memory file), when it has them.
    pub saved_bytes: Option<u64>,
}
