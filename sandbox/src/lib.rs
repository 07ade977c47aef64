//! The sandbox runtime: one interface ([`Backend`]) over the two ways the
//! forge isolates a branch (ARCHITECTURE.md decision 8), and [`probe`],
//! which decides which of them this host can run and says why.
//!
//! - [`container::ContainerSandboxes`] wraps `sandbox-container`
//!   (namespaces, btrfs layers, cgroups, seccomp; CRIU for memory).
//! - [`microvm::MicrovmSandboxes`] runs one `forge-vmm` process per
//!   sandbox and drives it over its control socket.
//!
//! Both reach the sandbox agent (`agent-proto`) for exec, files and ports
//! ([`agent`]), so those operations behave the same on either; a backend
//! implements only the lifecycle and how to reach its agent.
//!
//! A caller that wants to know where an operation's time went runs it in
//! [`timing::collect`]: the backend reports its phases (CRIU's dump and
//! restore, disk snapshots, the agent's answer) there.
//!
//! The trait is object safe (`Arc<dyn Backend>`): every operation returns a
//! boxed future, and blocking backend calls run on tokio's blocking pool.
//! Operations name a sandbox by its id; [`Sandbox`] is a handle that holds
//! the backend and the id together. Typical use:
//!
//! ```no_run
//! # async fn demo(backend: std::sync::Arc<dyn sandbox::Backend>) -> sandbox::Result<()> {
//! use sandbox::{Command, Image, Sandbox, Spec};
//! let choice = sandbox::probe(None)?; // e.g. "container (kvm is PVM: ...)"
//! let image = Image::root("/var/lib/forge/images/x/rootfs");
//! let branch = Sandbox::create(backend, Spec::new(image)).await?;
//! let out = branch.exec(Command::shell("echo hi")).await?;
//! assert_eq!(out.stdout, b"hi\n");
//! for (copy, carried) in branch.fork(2).await? {
//!     println!("{} kept {:?}", copy.id(), carried.kept);
//! }
//! # let _ = choice; Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod agent;
pub mod container;
mod error;
pub mod microvm;
pub mod probe;
pub mod remote;
mod sandbox;
mod spec;
#[cfg(feature = "testing")]
pub mod testing;
pub mod timing;

use std::future::Future;
use std::pin::Pin;

pub use agent::{
    Agent, AgentIo, AgentStream, DEFAULT_READ_LIMIT_BYTES, ExecStream, FileStream, confine,
};
pub use agent_proto::{DirEntry, ErrorKind, ExecEvent, ExitStatus, Exited, FileKind, Output};
pub use error::{Error, Result};
pub use probe::{Choice, HostFacts, probe};
pub use sandbox::Sandbox;
pub use spec::{
    BackendKind, Carried, Command, DEFAULT_OUTPUT_LIMIT_BYTES, Image, Kept, PauseMode, SandboxInfo,
    Spec, State, Stats, WORKSPACE,
};
pub use tokio::io::DuplexStream as PortStream;

/// A sandbox in transit between hosts ([`Backend::export`],
/// [`Backend::import`]).
pub type Carrier<'a> = Pin<Box<dyn tokio::io::AsyncRead + Send + 'a>>;

/// A future a [`Backend`] operation returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A way of running sandboxes. Implementors provide the lifecycle and
/// [`Backend::agent`]; exec, files and ports come from the agent.
pub trait Backend: Send + Sync {
    fn kind(&self) -> BackendKind;

    /// Create a sandbox from `spec` and start it; returns once its agent
    /// answers.
    fn create(&self, spec: Spec) -> BoxFuture<'_, Result<SandboxInfo>>;

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<SandboxInfo>>;

    /// Every sandbox of this backend's data directory.
    fn list(&self) -> BoxFuture<'_, Result<Vec<SandboxInfo>>>;

    /// A connection to the running sandbox's agent.
    fn agent<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Agent>>;

    /// The running sandbox's agent connection before any handshake, with
    /// what the handshake needs: what a node hands its control plane
    /// ([`remote`]). A backend without one says it cannot.
    fn agent_stream<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<AgentStream>> {
        Box::pin(async move {
            let _ = id;
            Err(Error::Unsupported {
                backend: self.kind(),
                what: "hand over its agent's connection".into(),
            })
        })
    }

    /// Pause in memory (no CPU, RAM kept) or to disk (no CPU, no RAM).
    fn pause<'a>(&'a self, id: &'a str, mode: PauseMode) -> BoxFuture<'a, Result<SandboxInfo>>;

    /// Resume a paused sandbox; says what survived the pause.
    fn resume<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Carried>>;

    /// Make `count` copies of a running sandbox, which keeps running; each
    /// says what it carried over (disk always; memory and processes where
    /// the backend can).
    fn fork<'a>(&'a self, id: &'a str, count: usize) -> BoxFuture<'a, Result<Vec<Carried>>>;

    /// A copy of running sandbox `id` (which keeps running) left paused to
    /// disk and never resumed: a snapshot. Forks of the copy start from it
    /// as often as asked, side by side; it says what it kept. By default a
    /// fork of one copy, paused to disk; a backend that can save the copy
    /// without starting it does so.
    fn snapshot<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Carried>> {
        Box::pin(async move {
            let copy = self
                .fork(id, 1)
                .await?
                .pop()
                .ok_or_else(|| Error::Invalid(format!("the fork of {id} made no copy")))?;
            if let Err(error) = self.pause(&copy.sandbox.id, PauseMode::Disk).await {
                let _ = self.destroy(&copy.sandbox.id).await;
                return Err(error);
            }
            let sandbox = self.get(&copy.sandbox.id).await?;
            Ok(Carried { sandbox, ..copy })
        })
    }

    /// Stop the sandbox and remove everything it owns.
    fn destroy<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>>;

    /// Sandbox `id`, paused to disk, as one stream that
    /// [`Backend::import`] on another host of the same kind takes: its
    /// disk, and its memory and processes where the pause kept them,
    /// checksummed. The sandbox stays as it is here. A backend that cannot
    /// says so.
    fn export<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Carrier<'static>>> {
        Box::pin(async move {
            let _ = id;
            Err(Error::Unsupported {
                backend: self.kind(),
                what: "move a sandbox to another host".into(),
            })
        })
    }

    /// Makes sandbox `id` here, paused to disk, from `stream`
    /// ([`Backend::export`] on another host): on `spec`'s image (the one
    /// it was made from) with `spec`'s vCPUs and memory and at most its
    /// disk, whatever the stream says.
    /// Nothing is kept of a stream that breaks, exceeds those bounds or
    /// fails its checksum.
    fn import<'a>(
        &'a self,
        id: &'a str,
        spec: Spec,
        stream: Carrier<'a>,
    ) -> BoxFuture<'a, Result<SandboxInfo>> {
        Box::pin(async move {
            let _ = (id, spec, stream);
            Err(Error::Unsupported {
                backend: self.kind(),
                what: "take a sandbox from another host".into(),
            })
        })
    }

    /// Moves sandbox `id`, paused to disk, to another of this backend's
    /// hosts (`to`, or the one placement picks) and resumes it there with
    /// `sizes`' vCPUs and memory and at most its disk (the image is the
    /// new host's); the copy it leaves is removed once the new one runs.
    /// Says where it went and what survived. A backend whose sandboxes all
    /// live on one host cannot.
    fn relocate<'a>(
        &'a self,
        id: &'a str,
        to: Option<&'a str>,
        sizes: Spec,
    ) -> BoxFuture<'a, Result<(String, Carried)>> {
        Box::pin(async move {
            let _ = (id, to, sizes);
            Err(Error::Unsupported {
                backend: self.kind(),
                what: "move sandboxes: they all live on one host".into(),
            })
        })
    }

    /// Before a fork of `count` copies of sandbox `id`, paused to disk:
    /// when its host has no room for the copies and for it once it runs,
    /// moves it where they fit and resumes it there (with `sizes`, as
    /// [`Backend::relocate`]); says where it went, or `None` when it fits
    /// where it is. A backend whose sandboxes all live on one host leaves
    /// it there.
    fn make_room_for_fork<'a>(
        &'a self,
        id: &'a str,
        count: usize,
        sizes: Spec,
    ) -> BoxFuture<'a, Result<Option<(String, Carried)>>> {
        Box::pin(async move {
            let _ = (id, count, sizes);
            Ok(None)
        })
    }

    fn stats<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Stats>>;

    /// At start-up, before any other call: remove what no sandbox owns any
    /// more (half-created sandboxes, disk layers no sandbox references,
    /// checkpoint images of interrupted forks, orphan cgroups). Returns a
    /// line per thing removed. Backends with nothing to collect do nothing.
    fn collect_garbage(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// While serving, now and then: remove the sandboxes this backend holds
    /// on other hosts that its caller records nowhere (its process died
    /// between a node making a sandbox and recording it), once each has
    /// been seen so on two calls at least `grace` apart. Returns a line
    /// per sandbox removed. A backend whose sandboxes are all on this host
    /// does nothing: [`Backend::collect_garbage`] covers them at start-up.
    fn collect_strays(&self, grace: std::time::Duration) -> BoxFuture<'_, Result<Vec<String>>> {
        let _ = grace;
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Run `command` to its end; stdout and stderr are collected up to the
    /// command's output limit (`Exited::truncated` says when cut).
    fn exec<'a>(&'a self, id: &'a str, command: Command) -> BoxFuture<'a, Result<Output>> {
        Box::pin(async move { self.agent(id).await?.exec(command).await })
    }

    /// Start `command` and stream its stdout and stderr, then its exit.
    fn exec_stream<'a>(
        &'a self,
        id: &'a str,
        command: Command,
    ) -> BoxFuture<'a, Result<ExecStream>> {
        Box::pin(async move { self.agent(id).await?.exec_stream(command).await })
    }

    /// A file's content, at most [`DEFAULT_READ_LIMIT_BYTES`]; `path` is
    /// confined as [`confine`] says.
    fn read_file<'a>(&'a self, id: &'a str, path: &'a str) -> BoxFuture<'a, Result<Vec<u8>>> {
        Box::pin(async move { self.agent(id).await?.read_file(path).await })
    }

    /// A file chunk by chunk; more than `limit` bytes is an error.
    fn read_file_stream<'a>(
        &'a self,
        id: &'a str,
        path: &'a str,
        limit: u64,
    ) -> BoxFuture<'a, Result<FileStream>> {
        Box::pin(async move { self.agent(id).await?.read_file_stream(path, limit).await })
    }

    /// Write a file atomically (mode 0644), creating its parents.
    fn write_file<'a>(
        &'a self,
        id: &'a str,
        path: &'a str,
        data: &'a [u8],
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.agent(id).await?.write_file(path, data, 0o644).await })
    }

    fn list_files<'a>(
        &'a self,
        id: &'a str,
        path: &'a str,
    ) -> BoxFuture<'a, Result<Vec<DirEntry>>> {
        Box::pin(async move { self.agent(id).await?.list_files(path).await })
    }

    /// Remove a file or a directory tree.
    fn delete_file<'a>(&'a self, id: &'a str, path: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.agent(id).await?.delete_file(path).await })
    }

    /// A byte stream to a TCP port inside, for proxying (dev-server
    /// previews).
    fn open_port<'a>(&'a self, id: &'a str, port: u16) -> BoxFuture<'a, Result<PortStream>> {
        Box::pin(async move { self.agent(id).await?.open_port(port).await })
    }
}

/// Run a blocking backend call on tokio's blocking pool.
pub(crate) async fn blocking<T, F>(call: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(call)
        .await
        .map_err(Error::Task)?
}
