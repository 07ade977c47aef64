//! The `container` backend: [`Backend`] over `sandbox-container`, whose
//! calls are blocking and run on tokio's blocking pool.
//!
//! Every sandbox's PID 1 is the sandbox agent: the image's `/sbin/init`
//! (guest images carry it there) or a host binary bound in read-only
//! ([`AgentInit`]). The agent is reached over the Unix socket in the
//! sandbox's socket directory; one connection per sandbox is kept and
//! dropped before pause to disk, fork and destroy, because CRIU cannot
//! checkpoint a process holding a connection to the host.
//!
//! Resources map as: `vcpus` → CPU quota of that many cores, `mem_mib` →
//! memory cgroup limit, `disk_mib` → btrfs quota of the writable layer,
//! `workspace` → read-write bind at `/workspace`.

// The wrapped crate's error is large; closures here return it as is and it
// is boxed where it becomes this crate's `Error`.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sandbox_container::{Bind, ContainerBackend, CreateRequest, Limits, Status};

use crate::agent::{Agent, AgentStream};
use crate::error::{Error, Result};
use crate::spec::{
    BackendKind, Carried, Kept, PauseMode, SandboxInfo, Spec, State, Stats, WORKSPACE,
};
use crate::{Backend, BoxFuture, Carrier, blocking};

/// Where a host agent binary appears inside a sandbox.
pub const GUEST_AGENT: &str = "/run/sandbox-agent";

/// How long a checkpoint waits for the agent to close the host's
/// connection ([`ContainerSandboxes`]' `release`).
const AGENT_RELEASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// How the agent becomes PID 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentInit {
    /// The image's `/sbin/init` is the agent (images built by `guest-image`).
    Image,
    /// This host binary, bound in at [`GUEST_AGENT`].
    Host(PathBuf),
}

/// Configuration of the container backend.
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    /// Data directory, launcher, CRIU (see `sandbox_container::BackendConfig`).
    pub backend: sandbox_container::BackendConfig,
    pub agent: AgentInit,
    /// Host paths bound into every sandbox (e.g. the host's `/usr`
    /// read-only where images borrow the host's toolchain).
    pub shared_binds: Vec<Bind>,
}

impl ContainerConfig {
    /// Defaults of `BackendConfig::new`, the image's own agent, no binds.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            backend: sandbox_container::BackendConfig::new(data_dir),
            agent: AgentInit::Image,
            shared_binds: Vec::new(),
        }
    }
}

/// Container sandboxes of one data directory.
#[derive(Debug)]
pub struct ContainerSandboxes {
    inner: Arc<ContainerBackend>,
    /// Where the backend keeps its state, and its layer image's size (for
    /// start-up garbage collection).
    data_dir: PathBuf,
    layer_image_gib: u64,
    agent: AgentInit,
    shared_binds: Vec<Bind>,
    clients: Mutex<HashMap<String, agent_proto::Client>>,
}

pub(crate) fn state(status: Status) -> State {
    match status {
        Status::Running => State::Running,
        Status::Frozen => State::Paused,
        Status::PausedToDisk => State::PausedToDisk,
        Status::Crashed => State::Crashed,
    }
}

fn info(sandbox: &sandbox_container::SandboxInfo) -> SandboxInfo {
    SandboxInfo {
        id: sandbox.id.clone(),
        backend: BackendKind::Container,
        state: state(sandbox.status),
        forked_from: sandbox.forked_from.clone(),
    }
}

fn carried(carried: &sandbox_container::Carried) -> Carried {
    let kept = carried
        .kept
        .iter()
        .map(|k| match k {
            sandbox_container::Kept::Disk => Kept::Disk,
            sandbox_container::Kept::Memory => Kept::Memory,
            sandbox_container::Kept::Processes => Kept::Processes,
        })
        .collect::<Vec<_>>();
    let note = if kept.contains(&Kept::Processes) {
        None
    } else {
        Some(
            carried
                .sandbox
                .checkpoint_error
                .clone()
                .unwrap_or_else(|| "no working CRIU: processes start afresh".to_owned()),
        )
    };
    Carried {
        sandbox: info(&carried.sandbox),
        kept,
        note,
    }
}

impl ContainerSandboxes {
    /// Open the backend (mounts the layer store, probes cgroups and CRIU).
    pub async fn open(config: ContainerConfig) -> Result<Self> {
        let backend = config.backend;
        let data_dir = backend.data_dir.clone();
        let layer_image_gib = backend.layer_image_gib;
        let inner = blocking(move || Ok(ContainerBackend::open(backend)?)).await?;
        Ok(Self {
            inner: Arc::new(inner),
            data_dir,
            layer_image_gib,
            agent: config.agent,
            shared_binds: config.shared_binds,
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// Whether pause to disk and fork keep memory and processes (CRIU).
    pub fn checkpoints(&self) -> bool {
        self.inner.checkpoints()
    }

    /// The wrapped backend, for what only containers offer (layers, GC).
    pub fn inner(&self) -> &ContainerBackend {
        &self.inner
    }

    /// Release the layer store and the cgroup parent if no sandbox is left
    /// (sandboxes themselves keep running; a later `open` finds them).
    pub async fn close(self) -> Result<()> {
        self.forget_all();
        match Arc::try_unwrap(self.inner) {
            Ok(backend) => blocking(move || Ok(backend.close()?)).await,
            // A blocking call still holds it; the next open takes over.
            Err(_) => Ok(()),
        }
    }

    fn request(&self, spec: Spec) -> Result<CreateRequest> {
        if spec.vcpus == 0 || spec.mem_mib == 0 || spec.disk_mib == 0 {
            return Err(Error::Invalid(
                "vcpus, mem_mib and disk_mib must be at least 1".into(),
            ));
        }
        let (mut binds, init) = self.host_binds();
        if let Some(workspace) = spec.workspace {
            binds.push(Bind {
                source: workspace,
                target: PathBuf::from(WORKSPACE),
                read_only: false,
            });
        }
        Ok(CreateRequest {
            image_root: spec.image.root,
            limits: Limits {
                mem_mib: spec.mem_mib,
                cpu_millis: u64::from(spec.vcpus) * 1000,
                disk_mib: spec.disk_mib,
                ..Limits::default()
            },
            init: vec![init],
            env: spec.env,
            hostname: None,
            binds,
            agent: true,
        })
    }

    /// The binds every sandbox of this host has (its shared directories,
    /// its agent binary), and PID 1.
    fn host_binds(&self) -> (Vec<Bind>, String) {
        let mut binds = self.shared_binds.clone();
        let init = match &self.agent {
            AgentInit::Image => "/sbin/init".to_owned(),
            AgentInit::Host(binary) => {
                binds.push(Bind {
                    source: binary.clone(),
                    target: PathBuf::from(GUEST_AGENT),
                    read_only: true,
                });
                GUEST_AGENT.to_owned()
            }
        };
        (binds, init)
    }

    fn clients(&self) -> std::sync::MutexGuard<'_, HashMap<String, agent_proto::Client>> {
        // The map holds plain handles: a panic cannot leave it inconsistent.
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drop the kept connection to `id`'s agent.
    fn forget(&self, id: &str) {
        self.clients().remove(id);
    }

    /// Close the kept connection to `id`'s agent and wait until the agent
    /// closed its side: a checkpoint cannot hold a connection to the host,
    /// and one still closing when CRIU looks fails the dump.
    /// If it does not close in time the checkpoint goes ahead, and a
    /// failed dump says so (what was kept shows it).
    async fn release(&self, id: &str) {
        let kept = self.clients().remove(id);
        if let Some(client) = kept {
            let _ = client.close(AGENT_RELEASE_TIMEOUT).await;
        }
    }

    fn forget_all(&self) {
        self.clients().clear();
    }

    /// Run a blocking call on the wrapped backend.
    async fn call<T, F>(&self, call: F) -> Result<T>
    where
        F: FnOnce(&ContainerBackend) -> Result<T, sandbox_container::BackendError> + Send + 'static,
        T: Send + 'static,
    {
        let inner = self.inner.clone();
        if !crate::timing::active() {
            return blocking(move || Ok(call(&inner)?)).await;
        }
        let (result, phases) =
            blocking(move || Ok(sandbox_container::timing::collect(|| call(&inner)))).await?;
        crate::timing::report(phases);
        Ok(result?)
    }
}

impl Backend for ContainerSandboxes {
    fn kind(&self) -> BackendKind {
        BackendKind::Container
    }

    fn create(&self, spec: Spec) -> BoxFuture<'_, Result<SandboxInfo>> {
        Box::pin(async move {
            let request = self.request(spec)?;
            let created = self.call(move |b| b.create(request)).await?;
            Ok(info(&created))
        })
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<SandboxInfo>> {
        Box::pin(async move {
            let owned = id.to_owned();
            let got = self.call(move |b| b.get(&owned)).await?;
            Ok(info(&got))
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<SandboxInfo>>> {
        Box::pin(async move {
            let all = self.call(|b| b.list()).await?;
            Ok(all.iter().map(info).collect())
        })
    }

    fn agent<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Agent>> {
        Box::pin(async move {
            let sandbox = self.get(id).await?;
            if sandbox.state != State::Running {
                self.forget(id);
                return Err(Error::WrongState {
                    id: id.to_owned(),
                    state: sandbox.state,
                    needed: "running",
                });
            }
            let kept = self.clients().get(id).filter(|c| !c.is_closed()).cloned();
            let client = match kept {
                Some(client) => client,
                None => {
                    let client = self.inner.agent(id).await?;
                    self.clients().insert(id.to_owned(), client.clone());
                    client
                }
            };
            Ok(Agent {
                id: id.to_owned(),
                client,
                // The spec's env is PID 1's; every exec inherits it.
                env: Vec::new(),
            })
        })
    }

    fn agent_stream<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<AgentStream>> {
        Box::pin(async move {
            let (io, token) = self.inner.agent_stream(id).await?;
            Ok(AgentStream {
                io: Box::new(io),
                token,
                env: Vec::new(),
            })
        })
    }

    fn pause<'a>(&'a self, id: &'a str, mode: PauseMode) -> BoxFuture<'a, Result<SandboxInfo>> {
        Box::pin(async move {
            let mode = match mode {
                PauseMode::Memory => sandbox_container::PauseMode::Memory,
                PauseMode::Disk => {
                    self.release(id).await;
                    sandbox_container::PauseMode::Disk
                }
            };
            let owned = id.to_owned();
            let paused = self.call(move |b| b.pause(&owned, mode)).await?;
            Ok(info(&paused))
        })
    }

    fn resume<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Carried>> {
        Box::pin(async move {
            let owned = id.to_owned();
            let resumed = self.call(move |b| b.resume(&owned)).await?;
            Ok(carried(&resumed))
        })
    }

    fn fork<'a>(&'a self, id: &'a str, count: usize) -> BoxFuture<'a, Result<Vec<Carried>>> {
        Box::pin(async move {
            if count == 0 {
                return Err(Error::Invalid("a fork makes at least one copy".into()));
            }
            self.release(id).await;
            let owned = id.to_owned();
            let forks = self.call(move |b| b.fork(&owned, count)).await?;
            Ok(forks.iter().map(carried).collect())
        })
    }

    fn snapshot<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Carried>> {
        Box::pin(async move {
            // A checkpoint cannot hold the host's agent connection.
            self.release(id).await;
            let owned = id.to_owned();
            let copy = self.call(move |b| b.save_copy(&owned)).await?;
            Ok(carried(&copy))
        })
    }

    fn destroy<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.forget(id);
            let owned = id.to_owned();
            self.call(move |b| b.destroy(&owned)).await
        })
    }

    fn export<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Carrier<'static>>> {
        Box::pin(async move {
            let owned = id.to_owned();
            self.call(move |b| b.check_export(&owned)).await?;
            let (reader, writer) = std::io::pipe().map_err(Error::io("a pipe"))?;
            let inner = self.inner.clone();
            let owned = id.to_owned();
            // The exporter writes its failure into the stream, where the
            // importer reports it.
            std::thread::Builder::new()
                .name(format!("export-{id}"))
                .spawn(move || {
                    let mut writer = writer;
                    let _ = inner.export(&owned, &mut writer);
                })
                .map_err(Error::io("a thread"))?;
            let receiver = tokio::net::unix::pipe::Receiver::from_owned_fd(reader.into())
                .map_err(Error::io("a pipe"))?;
            Ok(Box::pin(receiver) as Carrier<'static>)
        })
    }

    fn import<'a>(
        &'a self,
        id: &'a str,
        spec: Spec,
        mut stream: Carrier<'a>,
    ) -> BoxFuture<'a, Result<SandboxInfo>> {
        Box::pin(async move {
            if spec.workspace.is_some() {
                return Err(Error::Invalid(
                    "a moved sandbox takes no workspace of this host".into(),
                ));
            }
            let request = self.request(spec)?;
            let landing = sandbox_container::Landing {
                image_root: request.image_root,
                binds: request.binds,
                limits: request.limits,
            };
            let (reader, writer) = std::io::pipe().map_err(Error::io("a pipe"))?;
            let mut sender = tokio::net::unix::pipe::Sender::from_owned_fd(writer.into())
                .map_err(Error::io("a pipe"))?;
            let owned = id.to_owned();
            let importing = self.call(move |b| {
                let mut reader = reader;
                b.import(&owned, &mut reader, landing)
            });
            tokio::pin!(importing);
            // Fed until the stream ends (the importer reads it to its end,
            // which must follow the checksum) or the importer gives up.
            let feeding = async move {
                let _ = tokio::io::copy(&mut stream, &mut sender).await;
            };
            tokio::pin!(feeding);
            tokio::select! {
                imported = &mut importing => return Ok(info(&imported?)),
                () = &mut feeding => {}
            }
            Ok(info(&importing.await?))
        })
    }

    fn collect_garbage(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async move {
            let (dir, gib) = (self.data_dir.clone(), self.layer_image_gib);
            let report = blocking(move || Ok(sandbox_container::reconcile(&dir, gib)?)).await?;
            let mut removed = Vec::new();
            removed.extend(
                report
                    .removed
                    .iter()
                    .map(|id| format!("half-created sandbox {id}")),
            );
            removed.extend(
                report
                    .orphan_cgroups
                    .iter()
                    .map(|c| format!("orphan cgroup {c}")),
            );
            removed.extend(
                report
                    .collected_layers
                    .iter()
                    .map(|l| format!("unreferenced layer {l}")),
            );
            removed.extend(
                report
                    .failed
                    .iter()
                    .map(|f| format!("could not remove, left for the next start: {f}")),
            );
            Ok(removed)
        })
    }

    fn stats<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Stats>> {
        Box::pin(async move {
            let owned = id.to_owned();
            let stats = self.call(move |b| b.stats(&owned)).await?;
            Ok(Stats {
                state: state(stats.status),
                memory_bytes: stats.cgroup.memory_bytes,
                cpu_usage_ns: stats.cgroup.cpu_usage_ns,
                disk_bytes: stats.disk_bytes,
                saved_bytes: stats.checkpoint_bytes,
            })
        })
    }
}
