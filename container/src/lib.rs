//! Container sandbox backend: each sandbox is a process tree in its own PID,
//! mount, UTS, IPC, network and cgroup namespaces, on an overlay root (the
//! guest image's root directory, read-only, under a writable btrfs layer),
//! with no network but loopback, a reduced capability set, a seccomp deny
//! list and cgroup limits. The agent (`sandbox-agent`) runs as PID 1 and is
//! reached over a Unix socket in a bind-mounted directory.
//!
//! Modules: [`agent`] (socket, readiness, lifecycle notices), [`launcher`] (the `sandbox-init` binary's logic: namespaces,
//! mounts, privileges, seccomp), [`cgroup`] (limits, freeze, kill),
//! [`checkpoint`] (CRIU dumps for pause to disk and memory forks),
//! [`layers`] (btrfs subvolumes, snapshots, quotas, GC), [`state`] (the
//! on-disk record), [`backend`] (the operations the forge calls) and
//! [`reconcile`] (cleaning up after a crash).
#![forbid(unsafe_code)]

pub mod agent;
pub mod backend;
pub mod cgroup;
pub mod checkpoint;
pub mod launcher;
pub mod layers;
pub mod reconcile;
pub mod spec;
pub mod state;

pub use backend::{
    BackendConfig, BackendError, Carried, ContainerBackend, CreateRequest, ExecRequest, PauseMode,
    SandboxInfo, SandboxStats,
};
pub use reconcile::{ReconcileReport, reconcile};
pub use spec::{Bind, Limits};
pub use state::{Kept, Status};
