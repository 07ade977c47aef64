//! Container sandbox backend: each sandbox is a process tree in its own
//! user, PID, mount, UTS, IPC, network and cgroup namespaces. Root inside
//! is an unprivileged host id of the sandbox's own range ([`ids`]); the
//! root file system is an overlay of the guest image under a writable btrfs
//! layer, both seen through idmapped mounts; the network is loopback only;
//! capabilities are cut down, an allow-list seccomp filter applies, and
//! cgroup limits bound memory, CPU and processes. The agent
//! (`sandbox-agent`) runs as PID 1 and is reached over a Unix socket in the
//! top layer's run directory, which the host opens without following any
//! link and whose listener it checks ([`agent`], [`beneath`]).
//!
//! Modules: [`agent`] (connecting safely, readiness, lifecycle notices),
//! [`launcher`] (the `sandbox-init` binary's logic: user namespace, mounts,
//! privileges, seccomp, CRIU restore), [`cgroup`] (limits, freeze, kill),
//! [`checkpoint`] (CRIU dumps for pause to disk and memory forks),
//! [`layers`] (btrfs subvolumes, snapshots, quotas, GC), [`ids`] (host id
//! ranges), [`beneath`] (host access to sandbox-writable directories),
//! [`state`] (the on-disk record), [`backend`] (the operations the forge
//! calls), [`timing`] (the phases of an operation, for `Server-Timing`),
//! [`mod@reconcile`] (cleaning up after a crash) and [`sys`] (the two
//! kernel calls no crate wraps; the crate's only `unsafe`).
//!
//! Using it from the forge (all calls are blocking; run them on a blocking
//! task):
//! 1. at start-up, [`fn@reconcile`]`(data_dir, gib)` and then
//!    [`ContainerBackend::open`] with a [`BackendConfig`] (the `sandbox-init`
//!    binary must sit next to the forge's executable or be named in
//!    `launcher`; CRIU is found as described on [`BackendConfig::new`]);
//! 2. [`ContainerBackend::create`] with the image's `rootfs`, `init:
//!    ["/sbin/init"]` and `agent: true`: returns once the agent answers;
//! 3. [`ContainerBackend::agent`] gives an `agent_proto::Client` for exec,
//!    files and ports (close it before pause to disk or fork: a host
//!    connection cannot be checkpointed);
//! 4. `pause`, `resume`, `fork`, `destroy`, `stats`, `list`; fork and resume
//!    answer with `kept` (`["disk"]` or `["disk", "memory", "processes"]`).
//!
//! Host requirements: root, overlayfs, cgroups (v1/v2 hybrid or v2),
//! `btrfs-progs` (the layer store is a btrfs loop image unless the data dir
//! is btrfs), and for checkpoints CRIU >= 4.2 (`scripts/build-criu.sh`) plus
//! `iptables` (CRIU runs it while learning the kernel's features).
#![deny(unsafe_code)]

pub mod agent;
pub mod backend;
pub mod beneath;
pub mod cgroup;
pub mod checkpoint;
pub mod ids;
pub mod launcher;
pub mod layers;
pub mod reconcile;
pub mod sendstream;
pub mod spec;
pub mod state;
pub mod sys;
pub mod timing;

pub use backend::{
    BackendConfig, BackendError, Carried, ContainerBackend, CreateRequest, ExecRequest, Landing,
    PauseMode, SandboxInfo, SandboxStats,
};
pub use reconcile::{ReconcileReport, reconcile};
pub use spec::{Bind, Limits};
pub use state::{Kept, Status};
