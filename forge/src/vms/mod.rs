//! Sandboxes as the API offers them ("VMs"): created from the guest image
//! on the backend chosen at start-up, recorded in the `vms` table, and kept
//! within limits.
//!
//! - **Backend**: [`::sandbox::probe`] picks microVM or container and says
//!   why; the operator may force one (`--sandbox-backend`). When none can
//!   run (not root, no image), the VM API answers `503` with the reason and
//!   the rest of the forge works.
//! - **One lifecycle operation at a time per VM**: fork, pause, resume and
//!   destroy take the VM's lock exclusively; exec, file and port requests
//!   take it exclusively only while making sure the VM runs, then shared
//!   for as long as they run, side by side. So a pause waits for the
//!   commands in flight instead of freezing them mid-request, concurrent
//!   requests are serialised without deadlock (one lock per VM, never two
//!   held), and different VMs never wait on each other.
//! - **Transparent resume**: exec and file requests to a paused VM resume it
//!   first. Traffic defers the idle timeout.
//! - **Idle timeout**: a reaper looks every second; a persistent VM idle past
//!   its timeout is paused to disk (no CPU, no RAM), an ephemeral one is
//!   destroyed. Idle means nobody holds the VM (no exec, file transfer or
//!   terminal) and the last use ended longer ago than the timeout; a VM in
//!   use is passed over, never waited for.
//! - **Crashes**: a VM whose processes are gone is marked `crashed` (at
//!   start-up reconcile and whenever a request finds it so) and stays so: its
//!   disk is kept for inspection until it is deleted. It is not restarted
//!   behind the user's back.
//! - **Deadlines**: a VM created with `ttl_secs` is destroyed when it
//!   passes, whatever its activity (`sandbox.expired`, then
//!   `sandbox.deleted`); `set_ttl` moves the deadline.
//! - **Lifecycle events**: what happens to a VM is recorded in the events
//!   outbox (`lifecycle.rs`), so webhooks and the event feeds see it.
//! - **Dev servers**: a VM's `dev_server` is started, watched and restarted
//!   with backoff by a supervisor (`devserver.rs`) that does not keep the
//!   VM awake.
//! - **Network**: egress proxy and git remote links (`network.rs`).
//! - **Cap**: at most `max_live` VMs hold resources (running or paused in
//!   memory); one more waits in a bounded queue (`queue.rs`), then is `429`
//!   naming the cap, the wait and its place, never a silent hang. A token
//!   may hold at most `max_live_per_token` live VMs (`429`, checked by the
//!   API for non-admin tokens).

pub mod checkout;
pub mod devserver;
pub mod egress;
mod error;
mod gc;
pub mod gitrelay;
pub mod lifecycle;
pub mod network;
pub mod pool;
pub mod queue;
mod reaper;
pub mod snapshots;
pub mod terminal;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::sandbox::{Backend, BackendKind, Carried, Command, Image, PauseMode, Spec, State};
use api_types::VmState;
use tokio::sync::OwnedRwLockReadGuard;

pub use error::VmError;
pub use lifecycle::Why;
pub use network::NetworkConfig;

use crate::events::EventBus;
use crate::metrics::metrics;
use crate::store::{Store, VmRow, unix_now};
use lifecycle::Lifecycle;

/// Labels one VM may carry.
pub const MAX_LABELS: usize = 32;
/// Longest label key and value, in bytes.
pub const MAX_LABEL_KEY_BYTES: usize = 63;
pub const MAX_LABEL_VALUE_BYTES: usize = 256;
/// How stale a VM's recorded last use may be while it is in use (see
/// `Sandboxes::touch`).
const TOUCH_EVERY_SECS: i64 = 5;

/// Longest deadline a VM may be given: 30 days.
pub const MAX_TTL_SECS: u64 = 30 * 24 * 3600;

/// Checks labels as given on create or fork: at most [`MAX_LABELS`], keys
/// of letters, digits, `.`, `_`, `-` and `/` that start with a letter or
/// digit, values without control characters.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), VmError> {
    if labels.len() > MAX_LABELS {
        return Err(VmError::Invalid(format!(
            "at most {MAX_LABELS} labels, not {}",
            labels.len()
        )));
    }
    for (key, value) in labels {
        let well_formed = key.len() <= MAX_LABEL_KEY_BYTES
            && key.starts_with(|c: char| c.is_ascii_alphanumeric())
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
        if !well_formed {
            return Err(VmError::Invalid(format!(
                "label key {key:?}: 1 to {MAX_LABEL_KEY_BYTES} letters, digits, '.', '_', '-' or '/', starting with a letter or digit"
            )));
        }
        if value.len() > MAX_LABEL_VALUE_BYTES || value.chars().any(char::is_control) {
            return Err(VmError::Invalid(format!(
                "label {key:?}: a value of at most {MAX_LABEL_VALUE_BYTES} bytes without control characters"
            )));
        }
    }
    Ok(())
}

/// The deadline `ttl_secs` from now, checked against [`MAX_TTL_SECS`].
pub fn deadline(ttl_secs: u64) -> Result<i64, VmError> {
    if ttl_secs == 0 || ttl_secs > MAX_TTL_SECS {
        return Err(VmError::Invalid(format!(
            "ttl_secs must be between 1 and {MAX_TTL_SECS}"
        )));
    }
    // Rounded up to the next whole second: a VM is never destroyed before
    // its time, only up to a second after it.
    let now = time::OffsetDateTime::now_utc();
    let partial = i64::from(now.nanosecond() > 0);
    Ok(now.unix_timestamp() + partial + ttl_secs as i64)
}

/// Bounds on what one request may ask for.
#[derive(Debug, Clone)]
pub struct Limits {
    /// VMs running or paused in memory at once.
    pub max_live: usize,
    /// Memory those VMs may be given together (MiB): the host's RAM times
    /// the overcommit factor.
    pub max_live_mem_mib: u64,
    pub max_vcpus: u8,
    pub max_mem_mib: u64,
    /// Largest disk (writable layer) one VM may ask for.
    pub max_disk_mib: u64,
    pub max_fork_count: usize,
    /// Captured stdout + stderr of one exec.
    pub max_output_bytes: u64,
    /// Largest file the files API reads out of a VM (streamed).
    pub max_file_bytes: u64,
    /// How long a create or fork waits in the queue when the cap is reached.
    pub queue_wait: Duration,
    /// Live VMs one (non-admin) token may hold; `None`: no quota.
    pub max_live_per_token: Option<usize>,
    /// How long the commands and terminals of a VM past its deadline may
    /// keep it before it is stopped under them.
    pub expiry_grace: Duration,
    /// Sandboxes kept created and paused for creates to take, by pool
    /// (`default`, or a template's name; `pool.rs`).
    pub warm_pool: pool::PoolTargets,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_live: 200,
            max_live_mem_mib: u64::MAX,
            max_vcpus: 4,
            max_mem_mib: 8192,
            max_disk_mib: 65536,
            max_fork_count: 50,
            max_output_bytes: 4 << 20,
            max_file_bytes: 1 << 30,
            queue_wait: Duration::from_secs(30),
            max_live_per_token: None,
            expiry_grace: Duration::from_secs(10),
            warm_pool: pool::PoolTargets::new(),
        }
    }
}

/// What a new VM should be.
#[derive(Debug, Clone)]
pub struct NewVm {
    pub vcpus: u8,
    pub mem_mib: u64,
    /// Disk quota of its writable layer.
    pub disk_mib: u64,
    pub persistent: bool,
    pub idle_timeout_secs: Option<u64>,
    pub env: Vec<(String, String)>,
    pub repo_id: Option<String>,
    pub branch: Option<String>,
    pub created_by: String,
    /// Started, watched and restarted in the VM.
    pub dev_server: Option<devserver::DevServerSpec>,
    pub labels: BTreeMap<String, String>,
    /// Labels its sandbox node must have (placement on nodes).
    pub node_labels: BTreeMap<String, String>,
    /// Destroyed this long after it is created, whatever its activity.
    pub ttl_secs: Option<u64>,
    /// Started from a snapshot (or a template's) rather than the image.
    pub origin: Option<snapshots::Origin>,
}

/// What a fork asks for beyond its count.
#[derive(Debug, Clone, Default)]
pub struct ForkOptions {
    /// Set on every copy, over the labels it inherits.
    pub labels: BTreeMap<String, String>,
    /// The copies' deadline from now; they inherit the parent's otherwise.
    pub ttl_secs: Option<u64>,
}

/// The backend in use, or why there is none.
pub enum Availability {
    Ready {
        backend: Arc<dyn Backend>,
        image: Image,
        reason: String,
    },
    Unavailable(String),
}

/// The forge's sandboxes.
pub struct Sandboxes {
    availability: Availability,
    store: Store,
    limits: Limits,
    locks: Mutex<HashMap<String, Slot>>,
    network: network::Network,
    dev_servers: devserver::DevServers,
    admission: queue::Admission,
    events: EventBus,
    pool: pool::WarmPool,
}

/// One VM's lock, and when its last holder let go (unix seconds).
#[derive(Clone, Default)]
struct Slot {
    lock: Arc<tokio::sync::RwLock<()>>,
    released: Arc<AtomicI64>,
}

/// A VM held running (no pause, fork or destroy) beside other holders.
/// Letting go records the moment the VM's idle time counts from.
pub struct Held {
    _shared: OwnedRwLockReadGuard<()>,
    released: Arc<AtomicI64>,
}

impl Drop for Held {
    fn drop(&mut self) {
        // Runs before the lock is released: a reaper that takes it next
        // sees this use.
        self.released.fetch_max(unix_now(), Ordering::Relaxed);
    }
}

/// A running command; the VM stays running (no pause, fork or destroy)
/// until it ends or is dropped.
pub struct Exec {
    stream: ::sandbox::ExecStream,
    _running: Held,
}

impl Exec {
    /// The next chunk of stdout or stderr, then `Exited`, then `None`.
    pub async fn next(&mut self) -> Result<Option<::sandbox::ExecEvent>, VmError> {
        Ok(self.stream.next().await?)
    }
}

/// A file streaming out of a VM, which stays running meanwhile.
pub struct FileRead {
    stream: ::sandbox::FileStream,
    _running: Held,
}

impl FileRead {
    /// The next chunk, `None` at the end.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, VmError> {
        Ok(self.stream.next_chunk().await?)
    }
}

/// A background process's output streaming out of a VM, which stays
/// running meanwhile.
pub struct ProcessOutput {
    vm: String,
    output: agent_proto::ProcessOutput,
    _running: Held,
}

impl ProcessOutput {
    /// The next chunk, `None` at the end.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, VmError> {
        self.output.next_chunk().await.map_err(|source| {
            VmError::Sandbox(::sandbox::Error::Agent {
                id: self.vm.clone(),
                source,
            })
        })
    }
}

/// A backend's sandbox state as the API and the `vms` table know it.
pub fn vm_state(state: State) -> VmState {
    match state {
        State::Running => VmState::Running,
        State::Paused => VmState::Paused,
        State::PausedToDisk => VmState::PausedToDisk,
        State::Crashed => VmState::Crashed,
    }
}

impl Sandboxes {
    pub fn new(
        availability: Availability,
        store: Store,
        limits: Limits,
        network: NetworkConfig,
        events: EventBus,
    ) -> Arc<Self> {
        let limits_pool = limits.warm_pool.clone();
        Arc::new(Self {
            availability,
            network: network::Network::new(network, store.clone()),
            store,
            limits,
            locks: Mutex::new(HashMap::new()),
            dev_servers: devserver::DevServers::default(),
            admission: queue::Admission::default(),
            events,
            pool: pool::WarmPool::new(limits_pool),
        })
    }

    /// The dev servers the supervisor watches.
    pub fn dev_servers(&self) -> &devserver::DevServers {
        &self.dev_servers
    }

    /// The links of sandboxes to the host (egress proxy, git remote).
    pub fn network(&self) -> &network::Network {
        &self.network
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The backend's name and why it was chosen, or why none runs.
    pub fn describe(&self) -> (Option<BackendKind>, String, Option<PathBuf>) {
        match &self.availability {
            Availability::Ready {
                backend,
                image,
                reason,
            } => (
                Some(backend.kind()),
                reason.clone(),
                Some(image.root.clone()),
            ),
            Availability::Unavailable(reason) => (None, reason.clone(), None),
        }
    }

    fn ready(&self) -> Result<(&Arc<dyn Backend>, &Image), VmError> {
        match &self.availability {
            Availability::Ready { backend, image, .. } => Ok((backend, image)),
            Availability::Unavailable(reason) => Err(VmError::Unavailable(reason.clone())),
        }
    }

    /// What names the image new VMs start from (its root directory), for
    /// keys of what is built on it.
    pub fn image_identity(&self) -> Result<String, VmError> {
        let (_, image) = self.ready()?;
        Ok(image.root.display().to_string())
    }

    fn slot_of(&self, id: &str) -> Slot {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(id.to_owned()).or_default().clone()
    }

    fn lock_of(&self, id: &str) -> Arc<tokio::sync::RwLock<()>> {
        self.slot_of(id).lock
    }

    /// The VM's record, with its state refreshed from the backend (a VM
    /// whose processes died is recorded `crashed` here). While a pause,
    /// resume, fork or destroy holds the VM, its processes may be down on
    /// purpose: the stored state is answered then, and the operation
    /// records what it leaves.
    pub async fn get(&self, id: &str) -> Result<VmRow, VmError> {
        let lock = self.lock_of(id);
        let Ok(_shared) = lock.try_read() else {
            return self.recorded(id).await;
        };
        self.refresh(id).await
    }

    /// The VM's record as stored, without asking the backend (who may
    /// use it; the operations that need its state refresh it themselves).
    pub async fn recorded(&self, id: &str) -> Result<VmRow, VmError> {
        self.store
            .vm(id)
            .await?
            .ok_or_else(|| VmError::NotFound(id.to_owned()))
    }

    /// [`Self::get`] for a caller that holds the VM's lock.
    async fn refresh(&self, id: &str) -> Result<VmRow, VmError> {
        let mut row = self
            .store
            .vm(id)
            .await?
            .ok_or_else(|| VmError::NotFound(id.to_owned()))?;
        if let Ok((backend, _)) = self.ready()
            && row.state.is_live()
        {
            let live = match backend.get(id).await {
                Ok(info) => vm_state(info.state),
                Err(::sandbox::Error::NotFound(_)) => VmState::Crashed,
                // Its node does not answer: lost until it does (the node
                // watch gives it back its state then).
                Err(::sandbox::Error::Node { .. }) => VmState::Lost,
                Err(error) => return Err(error.into()),
            };
            if live != row.state {
                // Only the process that made the change announces it.
                let changed = self.store.swap_vm_state(id, row.state, live).await?;
                row.state = live;
                if !changed {
                    return Ok(row);
                }
                if live == VmState::Crashed {
                    tracing::warn!(vm = id, "sandbox found crashed");
                    self.announce(&row, Lifecycle::Crashed, None).await;
                }
                if live == VmState::Lost {
                    let node = self.node_name(id).await?;
                    tracing::warn!(vm = id, %node, "its sandbox node does not answer: the VM is lost");
                    self.announce(&row, Lifecycle::Lost { node: &node }, None)
                        .await;
                }
            }
        }
        Ok(row)
    }

    /// A page of VMs as `filter` asks, each with its state refreshed as by
    /// [`Self::get`].
    pub async fn find(&self, filter: &crate::store::VmFilter) -> Result<Vec<VmRow>, VmError> {
        let mut rows = Vec::new();
        for row in self.store.find_vms(filter).await? {
            rows.push(self.get(&row.id).await.unwrap_or(row));
        }
        Ok(rows)
    }

    /// Waits in the queue until `adding` more VMs of `mem_mib` each fit
    /// under the caps.
    async fn admit(&self, adding: usize, mem_mib: u64) -> Result<queue::Reservation<'_>, VmError> {
        let store = &self.store;
        let want = queue::Room {
            vms: adding,
            mem_mib: mem_mib.saturating_mul(adding as u64),
        };
        let cap = queue::Room {
            vms: self.limits.max_live,
            mem_mib: self.limits.max_live_mem_mib,
        };
        self.admission
            .admit(want, cap, self.limits.queue_wait, || async move {
                let (vms, mem_mib) = store.live_vm_usage().await?;
                Ok(queue::Room {
                    vms: vms.max(0) as usize,
                    mem_mib: mem_mib.max(0) as u64,
                })
            })
            .await
    }

    /// Requests waiting for room under the cap.
    pub fn queued(&self) -> usize {
        self.admission.waiting()
    }

    /// Refuses a token over its quota of live VMs (admins have none).
    pub async fn check_quota(&self, token: &str, adding: usize) -> Result<(), VmError> {
        let Some(quota) = self.limits.max_live_per_token else {
            return Ok(());
        };
        let live = self.store.count_live_vms_by(token).await? as usize;
        if live + adding > quota {
            return Err(VmError::Quota {
                what: "live sandboxes",
                live,
                quota,
                advice: "pause to disk or delete one",
            });
        }
        Ok(())
    }

    pub async fn create(&self, request: NewVm) -> Result<VmRow, VmError> {
        let started = Instant::now();
        let result = match self.take_pooled(&request).await {
            Some(row) => Ok(row),
            None => match request.origin.clone() {
                Some(origin) => self.create_from(request, origin, true).await,
                None => self.create_timed(request, true).await,
            },
        };
        metrics().operation("create", started, &result);
        result
    }

    async fn create_timed(&self, request: NewVm, announce: bool) -> Result<VmRow, VmError> {
        let dev_server = request.dev_server.clone();
        let (backend, image) = self.ready()?;
        if request.vcpus == 0 || request.vcpus > self.limits.max_vcpus {
            return Err(VmError::Invalid(format!(
                "vcpus must be between 1 and {}",
                self.limits.max_vcpus
            )));
        }
        if request.mem_mib < 128 || request.mem_mib > self.limits.max_mem_mib {
            return Err(VmError::Invalid(format!(
                "mem_mib must be between 128 and {}",
                self.limits.max_mem_mib
            )));
        }
        if request.disk_mib < 256 || request.disk_mib > self.limits.max_disk_mib {
            return Err(VmError::Invalid(format!(
                "disk_mib must be between 256 and {}",
                self.limits.max_disk_mib
            )));
        }
        check_labels(&request.labels)?;
        let expires_unix = request.ttl_secs.map(deadline).transpose()?;
        let _room = self.admit(1, request.mem_mib).await?;
        let mut spec = Spec::new(image.clone());
        spec.vcpus = request.vcpus;
        spec.mem_mib = request.mem_mib;
        spec.disk_mib = request.disk_mib;
        spec.env = request.env.clone();
        spec.node_labels = request.node_labels.clone();
        let info = backend.create(spec).await?;
        let row = VmRow {
            id: info.id.clone(),
            // The backend that holds it (a node's may differ from this host's).
            backend: info.backend.to_string(),
            state: vm_state(info.state),
            repo_id: request.repo_id,
            branch: request.branch,
            parent_id: None,
            vcpus: i64::from(request.vcpus),
            mem_mib: request.mem_mib as i64,
            persistent: request.persistent,
            idle_timeout_secs: request.idle_timeout_secs.map(|s| s as i64),
            created_by: Some(request.created_by),
            created_at: crate::store::now(),
            last_active_unix: unix_now(),
            labels: serde_json::to_string(&request.labels).unwrap_or_else(|_| "{}".to_owned()),
            expires_unix,
            snapshot_id: None,
            template: None,
            workdir: None,
        };
        if let Err(error) = self.store.insert_vm(&row).await {
            let _ = backend.destroy(&info.id).await;
            return Err(error.into());
        }
        if let Some(spec) = dev_server {
            self.dev_servers.add(&row.id, spec);
        }
        tracing::info!(vm = %row.id, backend = %row.backend, "sandbox created");
        if announce {
            self.announce(&row, Lifecycle::Created, row.created_by.as_deref())
                .await;
        }
        Ok(row)
    }

    /// Makes sure the VM runs (resuming it when paused) and records the
    /// traffic. Call with the VM's lock held.
    async fn running(&self, id: &str) -> Result<(), VmError> {
        let (backend, _) = self.ready()?;
        let row = self.refresh(id).await?;
        match row.state {
            VmState::Running => {}
            VmState::Paused | VmState::PausedToDisk => {
                let carried = backend.resume(id).await?;
                self.store
                    .set_vm_state(id, vm_state(carried.sandbox.state))
                    .await?;
                tracing::info!(vm = id, kept = ?carried.kept, "sandbox resumed on demand");
                let row = self.refresh(id).await?;
                self.announce(&row, Lifecycle::Resumed { on_demand: true }, None)
                    .await;
            }
            VmState::Crashed => return Err(VmError::Crashed(id.to_owned())),
            VmState::Lost => return Err(VmError::Lost(id.to_owned())),
        }
        self.touch(&row).await?;
        self.link(id, &row).await
    }

    /// Records traffic on `row`'s VM in its row, unless it was recorded in
    /// the last [`TOUCH_EVERY_SECS`]: the idle reaper also reads when the
    /// last holder let go (`Held`), in memory, so the row only needs to
    /// say roughly when the VM was last used for after a restart.
    async fn touch(&self, row: &VmRow) -> Result<(), VmError> {
        if unix_now() - row.last_active_unix >= TOUCH_EVERY_SECS {
            self.store.touch_vm(&row.id).await?;
        }
        Ok(())
    }

    /// Brings the VM's network link up when it is down (and copies the CA
    /// bundle in). Call with the VM running and its lock held (shared will
    /// do: the network opens a link once however many ask).
    async fn link(&self, id: &str, row: &VmRow) -> Result<(), VmError> {
        let (backend, _) = self.ready()?;
        if !self.network.is_up(id) {
            let repo = match &row.repo_id {
                Some(repo_id) => self.store.repo_by_id(repo_id).await?.map(|r| r.full_name()),
                None => None,
            };
            let agent = backend.agent(id).await?;
            let endpoint = network::Endpoint {
                vm: id,
                repo: row.repo_id.as_deref().zip(repo.as_deref()),
            };
            self.network.ensure(&agent, endpoint).await;
            if let Some(bundle) = self.network.ca_bundle()
                && let Err(error) = agent.write_file(network::CA_BUNDLE, bundle, 0o644).await
            {
                tracing::warn!(vm = id, error = %error, "copying the CA bundle in failed");
            }
        }
        Ok(())
    }

    /// `command` with the sandbox's network environment under its own.
    fn with_network_env(&self, command: Command) -> Command {
        let mut command = command;
        let own = std::mem::take(&mut command.env);
        command.env = self.network.env();
        command.env.extend(own);
        command
    }

    pub async fn exec(&self, id: &str, command: Command) -> Result<::sandbox::Output, VmError> {
        let (backend, _) = self.ready()?;
        let _running = self.hold_running(id).await?;
        let command = self
            .with_network_env(command)
            .output_limit_bytes(self.limits.max_output_bytes);
        let started = Instant::now();
        let output = backend.exec(id, command).await;
        metrics().exec("collected", started);
        // Its end is recorded when `_running` lets go (`Held`).
        Ok(output?)
    }

    /// Starts a command and streams its output (resuming a paused VM first).
    pub async fn exec_stream(&self, id: &str, command: Command) -> Result<Exec, VmError> {
        let (backend, _) = self.ready()?;
        let running = self.hold_running(id).await?;
        let command = self
            .with_network_env(command)
            .output_limit_bytes(self.limits.max_output_bytes);
        let started = Instant::now();
        let stream = backend.exec_stream(id, command).await?;
        metrics().exec("streamed", started);
        Ok(Exec {
            stream,
            _running: running,
        })
    }

    /// A byte stream to TCP `port` inside the VM (resuming it first).
    pub async fn open_port(&self, id: &str, port: u16) -> Result<::sandbox::PortStream, VmError> {
        let (backend, _) = self.ready()?;
        let _running = self.hold_running(id).await?;
        Ok(backend.open_port(id, port).await?)
    }

    /// A file, streamed (at most `max_file_bytes`).
    pub async fn read_file(&self, id: &str, path: &str) -> Result<FileRead, VmError> {
        let (backend, _) = self.ready()?;
        let running = self.hold_running(id).await?;
        let stream = backend
            .read_file_stream(id, path, self.limits.max_file_bytes)
            .await?;
        Ok(FileRead {
            stream,
            _running: running,
        })
    }

    pub async fn write_file(&self, id: &str, path: &str, data: &[u8]) -> Result<(), VmError> {
        let (backend, _) = self.ready()?;
        let _running = self.hold_running(id).await?;
        Ok(backend.write_file(id, path, data).await?)
    }

    pub async fn list_files(
        &self,
        id: &str,
        path: &str,
    ) -> Result<Vec<::sandbox::DirEntry>, VmError> {
        let (backend, _) = self.ready()?;
        let _running = self.hold_running(id).await?;
        Ok(backend.list_files(id, path).await?)
    }

    pub async fn delete_file(&self, id: &str, path: &str) -> Result<(), VmError> {
        let (backend, _) = self.ready()?;
        let _running = self.hold_running(id).await?;
        Ok(backend.delete_file(id, path).await?)
    }

    /// Starts `command` in the background in the VM (resuming it first);
    /// returns its pid. Its output stays in the VM's agent.
    pub async fn spawn(&self, id: &str, command: Command) -> Result<u32, VmError> {
        let (backend, _) = self.ready()?;
        let _running = self.hold_running(id).await?;
        let agent = backend.agent(id).await?;
        Ok(agent.spawn(self.with_network_env(command)).await?)
    }

    /// The VM's background processes, oldest first.
    pub async fn processes(&self, id: &str) -> Result<Vec<agent_proto::ProcessInfo>, VmError> {
        let (backend, _) = self.ready()?;
        let _running = self.hold_running(id).await?;
        Ok(backend.agent(id).await?.processes().await?)
    }

    /// A background process's output from byte `offset`; with `follow`,
    /// until it exits. The VM stays running (no pause, fork or destroy)
    /// while the output is read.
    pub async fn process_output(
        &self,
        id: &str,
        pid: u32,
        offset: u64,
        follow: bool,
    ) -> Result<ProcessOutput, VmError> {
        let (backend, _) = self.ready()?;
        let running = self.hold_running(id).await?;
        let output = backend
            .agent(id)
            .await?
            .process_output(pid, offset, follow)
            .await?;
        Ok(ProcessOutput {
            vm: id.to_owned(),
            output,
            _running: running,
        })
    }

    /// Sends `signal` to a background process's process group.
    pub async fn signal(&self, id: &str, pid: u32, signal: i32) -> Result<(), VmError> {
        let (backend, _) = self.ready()?;
        let _running = self.hold_running(id).await?;
        Ok(backend.agent(id).await?.signal(pid, signal).await?)
    }

    /// Makes sure the VM runs, then holds it running (no pause, fork or
    /// destroy) until the guard is dropped. Holders share the VM: a VM that
    /// already runs is held at once, beside any other exec or file
    /// operation on it (its link, if down, is opened once for all of them);
    /// only one that must be resumed first takes the lock exclusively.
    async fn hold_running(&self, id: &str) -> Result<Held, VmError> {
        let Slot { lock, released } = self.slot_of(id);
        let shared = lock.clone().read_owned().await;
        let row = self.refresh(id).await?;
        if row.state == VmState::Running {
            self.touch(&row).await?;
            self.link(id, &row).await?;
            return Ok(Held {
                _shared: shared,
                released,
            });
        }
        drop(shared);
        let exclusive = lock.write_owned().await;
        self.running(id).await?;
        Ok(Held {
            _shared: exclusive.downgrade(),
            released,
        })
    }

    pub async fn pause(&self, id: &str, mode: PauseMode) -> Result<VmRow, VmError> {
        let lock = self.lock_of(id);
        let _guard = lock.write().await;
        let started = Instant::now();
        let result = self.pause_locked(id, mode, Why::Requested).await;
        let operation = match mode {
            PauseMode::Memory => "pause",
            PauseMode::Disk => "pause_to_disk",
        };
        metrics().operation(operation, started, &result);
        result
    }

    /// Pauses (or destroys, when ephemeral) VM `row` if it is still idle
    /// past its timeout: nobody holds it, nothing used it since. A VM in
    /// use is passed over at once, not waited for. Says what was done.
    pub async fn reap_if_idle(&self, row: &VmRow) -> Result<Option<&'static str>, VmError> {
        let Slot { lock, released } = self.slot_of(&row.id);
        let Ok(guard) = lock.try_write_owned() else {
            return Ok(None);
        };
        let Some(now) = self.store.vm(&row.id).await? else {
            return Ok(None);
        };
        let Some(timeout) = now.idle_timeout_secs else {
            return Ok(None);
        };
        let last_used = now.last_active_unix.max(released.load(Ordering::Relaxed));
        if !now.state.is_live() || last_used + timeout > unix_now() {
            return Ok(None);
        }
        if now.persistent {
            self.pause_locked(&row.id, PauseMode::Disk, Why::Idle)
                .await?;
            Ok(Some("paused to disk"))
        } else {
            self.destroy_locked(&row.id, guard, Why::Idle).await?;
            Ok(Some("destroyed"))
        }
    }

    /// [`Self::pause`] with the VM's lock held exclusively.
    async fn pause_locked(&self, id: &str, mode: PauseMode, why: Why) -> Result<VmRow, VmError> {
        let (backend, _) = self.ready()?;
        let row = self.refresh(id).await?;
        match row.state {
            VmState::Crashed => return Err(VmError::Crashed(id.to_owned())),
            VmState::Lost => return Err(VmError::Lost(id.to_owned())),
            _ => {}
        }
        if mode == PauseMode::Disk {
            self.network.close(id).await;
        }
        let info = backend.pause(id, mode).await?;
        self.store.set_vm_state(id, vm_state(info.state)).await?;
        tracing::info!(vm = id, ?mode, "sandbox paused");
        let row = self.refresh(id).await?;
        let to_disk = mode == PauseMode::Disk;
        self.announce(
            &row,
            Lifecycle::Paused {
                to_disk,
                reason: why,
            },
            None,
        )
        .await;
        Ok(row)
    }

    pub async fn resume(&self, id: &str) -> Result<(VmRow, Carried), VmError> {
        let lock = self.lock_of(id);
        let _guard = lock.write().await;
        let started = Instant::now();
        let result = self.resume_locked(id).await;
        metrics().operation("resume", started, &result);
        result
    }

    async fn resume_locked(&self, id: &str) -> Result<(VmRow, Carried), VmError> {
        let (backend, _) = self.ready()?;
        let row = self.refresh(id).await?;
        match row.state {
            VmState::Crashed => return Err(VmError::Crashed(id.to_owned())),
            VmState::Lost => return Err(VmError::Lost(id.to_owned())),
            VmState::Running => {
                return Err(VmError::Conflict(format!("VM {id} is already running")));
            }
            VmState::Paused | VmState::PausedToDisk => {}
        }
        let carried = backend.resume(id).await?;
        let row = self.resumed(id, &carried).await?;
        Ok((row, carried))
    }

    /// Records VM `id` resumed as `carried` says, and announces it.
    async fn resumed(&self, id: &str, carried: &Carried) -> Result<VmRow, VmError> {
        self.store
            .set_vm_state(id, vm_state(carried.sandbox.state))
            .await?;
        self.store.touch_vm(id).await?;
        let row = self.refresh(id).await?;
        self.announce(&row, Lifecycle::Resumed { on_demand: false }, None)
            .await;
        Ok(row)
    }

    /// Moves VM `id`, paused to disk, to another sandbox node (`to`, or
    /// the one placement picks) and resumes it there; returns it, what it
    /// kept and the node's name. On any failure it stays where it was.
    pub async fn relocate(
        &self,
        id: &str,
        to: Option<&str>,
    ) -> Result<(VmRow, Carried, String), VmError> {
        let lock = self.lock_of(id);
        let _guard = lock.write().await;
        let started = Instant::now();
        let result = self.relocate_locked(id, to).await;
        metrics().operation("move", started, &result);
        result
    }

    async fn relocate_locked(
        &self,
        id: &str,
        to: Option<&str>,
    ) -> Result<(VmRow, Carried, String), VmError> {
        let (backend, _) = self.ready()?;
        let row = self.refresh(id).await?;
        if row.state != VmState::PausedToDisk {
            return Err(VmError::Conflict(format!(
                "VM {id} is {}: only a VM paused to disk moves (pause it with to_disk first)",
                row.state
            )));
        }
        let sizes = crate::nodes::sizes_of(row.vcpus, row.mem_mib, self.limits.max_disk_mib);
        let (node, carried) = backend.relocate(id, to, sizes).await?;
        tracing::info!(vm = id, %node, kept = ?carried.kept, "sandbox moved to another node");
        let row = self.resumed(id, &carried).await?;
        Ok((row, carried, node))
    }

    /// Makes `count` copies of a running (or paused: resumed first) VM.
    pub async fn fork(
        &self,
        id: &str,
        count: usize,
        by: &str,
        options: &ForkOptions,
    ) -> Result<Vec<(VmRow, Carried)>, VmError> {
        let started = Instant::now();
        let result = self.fork_timed(id, count, by, options).await;
        metrics().operation("fork", started, &result);
        result
    }

    async fn fork_timed(
        &self,
        id: &str,
        count: usize,
        by: &str,
        options: &ForkOptions,
    ) -> Result<Vec<(VmRow, Carried)>, VmError> {
        let (backend, _) = self.ready()?;
        check_labels(&options.labels)?;
        let expires_unix = options.ttl_secs.map(deadline).transpose()?;
        if count == 0 || count > self.limits.max_fork_count {
            return Err(VmError::Invalid(format!(
                "count must be between 1 and {}",
                self.limits.max_fork_count
            )));
        }
        let lock = self.lock_of(id);
        let _guard = lock.write().await;
        // Paused to disk is no live state: the record says it.
        let paused = self.recorded(id).await?;
        if paused.state == VmState::PausedToDisk {
            // Copies stay beside their parent: one paused to disk goes
            // first where they fit, if its node is full.
            let sizes =
                crate::nodes::sizes_of(paused.vcpus, paused.mem_mib, self.limits.max_disk_mib);
            if let Some((node, carried)) = backend.make_room_for_fork(id, count, sizes).await? {
                tracing::info!(vm = id, %node, kept = ?carried.kept, "moved to a node with room for its copies");
                self.resumed(id, &carried).await?;
            }
        }
        self.running(id).await?;
        let parent = self.refresh(id).await?;
        let _room = self.admit(count, parent.mem_mib.max(0) as u64).await?;
        self.network.close(id).await;
        let copies = backend.fork(id, count).await?;
        let mut labels = parent.labels();
        labels.extend(options.labels.clone());
        if labels.len() > MAX_LABELS {
            tracing::warn!(vm = id, "a fork's labels beyond {MAX_LABELS} are dropped");
        }
        let labels: BTreeMap<_, _> = labels.into_iter().take(MAX_LABELS).collect();
        let labels = serde_json::to_string(&labels).unwrap_or_else(|_| "{}".to_owned());
        let mut forks = Vec::with_capacity(copies.len());
        for carried in copies {
            let row = VmRow {
                id: carried.sandbox.id.clone(),
                state: vm_state(carried.sandbox.state),
                parent_id: Some(id.to_owned()),
                created_by: Some(by.to_owned()),
                created_at: crate::store::now(),
                last_active_unix: unix_now(),
                labels: labels.clone(),
                expires_unix: expires_unix.or(parent.expires_unix),
                ..parent.clone()
            };
            self.store.insert_vm(&row).await?;
            self.dev_servers.inherit(id, &row.id);
            self.announce(&row, Lifecycle::Forked { parent: id }, Some(by))
                .await;
            forks.push((row, carried));
        }
        tracing::info!(vm = id, count, "sandbox forked");
        Ok(forks)
    }

    pub async fn destroy(&self, id: &str) -> Result<(), VmError> {
        let guard = self.lock_of(id).write_owned().await;
        let started = Instant::now();
        let result = self.destroy_locked(id, guard, Why::Requested).await;
        metrics().operation("destroy", started, &result);
        result
    }

    /// [`Self::destroy`] with the VM's lock held exclusively by `guard`.
    async fn destroy_locked(
        &self,
        id: &str,
        guard: tokio::sync::OwnedRwLockWriteGuard<()>,
        why: Why,
    ) -> Result<(), VmError> {
        self.destroy_unlocked(id, why).await?;
        drop(guard);
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        Ok(())
    }

    /// The work of a destroy: the sandbox, its links and its row, then the
    /// events (an expiry's `sandbox.expired` before `sandbox.deleted`, both
    /// only once it is gone). Callers hold the VM's lock, except an expiry
    /// whose VM is held past every grace (`expire`).
    async fn destroy_unlocked(&self, id: &str, why: Why) -> Result<(), VmError> {
        let (backend, _) = self.ready()?;
        let row = self
            .store
            .vm(id)
            .await?
            .ok_or_else(|| VmError::NotFound(id.to_owned()))?;
        self.network.forget(id).await;
        self.dev_servers.remove(id);
        self.pool.forget(id);
        match backend.destroy(id).await {
            Ok(()) | Err(::sandbox::Error::NotFound(_)) => {}
            Err(error) => return Err(error.into()),
        }
        self.store.delete_vm(id).await?;
        tracing::info!(vm = id, reason = ?why, "sandbox destroyed");
        if why == Why::Expired {
            self.announce(&row, Lifecycle::Expired, None).await;
        }
        self.announce(&row, Lifecycle::Deleted { reason: why }, None)
            .await;
        Ok(())
    }

    /// Moves VM `id`'s deadline to `ttl_secs` from now, or removes it.
    pub async fn set_ttl(&self, id: &str, ttl_secs: Option<u64>) -> Result<VmRow, VmError> {
        let expires_unix = ttl_secs.map(deadline).transpose()?;
        if !self.store.set_vm_expiry(id, expires_unix).await? {
            return Err(VmError::NotFound(id.to_owned()));
        }
        self.get(id).await
    }

    /// Destroys VM `row` because its deadline passed, whatever it is
    /// doing: commands and terminals that still hold it after
    /// `expiry_grace` are ended by stopping the sandbox under them; a
    /// holder that still does not let go (a client that stopped reading a
    /// stream keeps its response, and so its hold, alive) is not waited
    /// for past a second grace: the record goes without the lock. Records
    /// `sandbox.expired`, then `sandbox.deleted`. False when the deadline
    /// moved meanwhile or the VM is gone.
    pub async fn expire(&self, row: &VmRow) -> Result<bool, VmError> {
        let (backend, _) = self.ready()?;
        let lock = self.lock_of(&row.id);
        let grace = self.limits.expiry_grace;
        let due = |row: &Option<VmRow>| {
            row.as_ref()
                .is_some_and(|row| row.expires_unix.is_some_and(|at| at <= unix_now()))
        };
        if let Ok(guard) = tokio::time::timeout(grace, lock.clone().write_owned()).await {
            if !due(&self.store.vm(&row.id).await?) {
                return Ok(false);
            }
            self.destroy_locked(&row.id, guard, Why::Expired).await?;
            return Ok(true);
        }
        if !due(&self.store.vm(&row.id).await?) {
            return Ok(false);
        }
        tracing::info!(vm = %row.id, "an expired sandbox still in use is stopped");
        match backend.destroy(&row.id).await {
            Ok(()) | Err(::sandbox::Error::NotFound(_)) => {}
            Err(error) => return Err(error.into()),
        }
        match tokio::time::timeout(grace, lock.clone().write_owned()).await {
            Ok(guard) => self.destroy_locked(&row.id, guard, Why::Expired).await?,
            Err(_) => {
                tracing::warn!(vm = %row.id, "an expired sandbox's holders did not let go: its record is removed without them");
                self.destroy_unlocked(&row.id, Why::Expired).await?;
            }
        }
        Ok(true)
    }

    pub async fn stats(&self, id: &str) -> Result<::sandbox::Stats, VmError> {
        let (backend, _) = self.ready()?;
        Ok(backend.stats(id).await?)
    }

    /// At start-up: collects what destroyed sandboxes left (`gc.rs`), then
    /// records as `crashed` every VM the backend no longer runs. Returns how many were marked.
    pub async fn reconcile(&self) -> Result<usize, VmError> {
        if self.ready().is_err() {
            return Ok(0);
        }
        match gc::collect(self).await {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(
                    count = removed.len(),
                    "start-up garbage collection removed leftovers"
                );
            }
            Ok(_) => {}
            Err(error) => tracing::error!(error = %error, "start-up garbage collection failed"),
        }
        for leftover in self.store.vms_created_by(pool::POOL_ACTOR).await? {
            if let Err(error) = self.destroy(&leftover.id).await {
                tracing::warn!(vm = %leftover.id, error = %error, "a pooled sandbox of the last run could not be destroyed");
            }
        }
        let mut crashed = 0;
        for row in self.store.list_vms().await? {
            let before = row.state;
            if let Ok(after) = self.get(&row.id).await
                && after.state == VmState::Crashed
                && before != VmState::Crashed
            {
                crashed += 1;
            }
        }
        Ok(crashed)
    }

    /// Destroys the sandboxes on nodes that nothing records, once seen so
    /// twice `grace` apart ([`::sandbox::Backend::collect_strays`]);
    /// returns a line per sandbox destroyed.
    pub async fn collect_strays(&self, grace: Duration) -> Result<Vec<String>, VmError> {
        let Ok((backend, _)) = self.ready() else {
            return Ok(Vec::new());
        };
        let removed = backend.collect_strays(grace).await?;
        for what in &removed {
            tracing::warn!(%what, "stray sandbox destroyed");
        }
        Ok(removed)
    }

    /// Marks `lost` the VMs on sandbox nodes that stopped reporting, and
    /// gives those on a node that reports again the state the node has
    /// for them (`crashed` if it no longer has them). Nothing is restarted
    /// elsewhere; a VM paused to disk whose snapshot is in the snapshot
    /// store is not lost: its resume brings it up on another node.
    pub async fn watch_nodes(&self) -> Result<(), VmError> {
        let Ok((backend, _)) = self.ready() else {
            return Ok(());
        };
        // As `nodes::is_up` counts: up while the report is younger.
        let fresh_since = unix_now() - crate::nodes::LOST_AFTER_SECS + 1;
        for id in self.store.mark_lost_vms(fresh_since).await? {
            let node = self.node_name(&id).await?;
            tracing::warn!(vm = %id, %node, "its sandbox node stopped reporting: the VM is lost");
            if let Some(row) = self.store.vm(&id).await? {
                self.announce(&row, Lifecycle::Lost { node: &node }, None)
                    .await;
            }
        }
        for id in self.store.found_vms(fresh_since).await? {
            let lock = self.lock_of(&id);
            let _guard = lock.write().await;
            let found = match backend.get(&id).await {
                Ok(info) => vm_state(info.state),
                Err(::sandbox::Error::NotFound(_)) => VmState::Crashed,
                // Not reachable yet: the next pass tries again.
                Err(error) => {
                    tracing::debug!(vm = %id, error = %error, "a lost VM's node does not answer yet");
                    continue;
                }
            };
            if !self.store.swap_vm_state(&id, VmState::Lost, found).await? {
                continue;
            }
            let node = self.node_name(&id).await?;
            tracing::info!(vm = %id, %node, state = %found, "its sandbox node reports again: the VM is found");
            if let Some(row) = self.store.vm(&id).await? {
                self.announce(&row, Lifecycle::Found { node: &node }, None)
                    .await;
                if found == VmState::Crashed {
                    self.announce(&row, Lifecycle::Crashed, None).await;
                }
            }
        }
        Ok(())
    }

    /// The name of the node holding sandbox `id` (its id if removed).
    async fn node_name(&self, id: &str) -> Result<String, VmError> {
        let Some(node_id) = self.store.sandbox_node(id).await? else {
            return Ok(String::new());
        };
        Ok(self
            .store
            .node(&node_id)
            .await?
            .map_or(node_id, |node| node.name))
    }

    /// Starts the idle reaper and the dev server supervisor; they stop when
    /// `shutdown` is cancelled.
    pub fn start_reaper(
        self: &Arc<Self>,
        every: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        reaper::start(self.clone(), every, shutdown.clone());
        // Template pools may be asked for at any time: the refill always
        // runs (a pass with nothing to fill reads nothing).
        let sandboxes = self.clone();
        let refill = shutdown.clone();
        tokio::spawn(async move {
            loop {
                sandboxes.fill_pool().await;
                tokio::select! {
                    _ = refill.cancelled() => return,
                    _ = sandboxes.pool.taken.notified() => {}
                    _ = tokio::time::sleep(every) => {}
                }
            }
        });
        let sandboxes = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => devserver::supervise_all(&sandboxes).await,
                }
            }
        });
    }
}
