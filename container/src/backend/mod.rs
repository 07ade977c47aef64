//! The container backend: create, exec, pause (in memory / to disk), resume,
//! fork, destroy, stats and list of sandboxes under one data directory. The
//! forge wraps this in its `Sandbox` trait; everything here is synchronous
//! (call it from a blocking task).
//!
//! Create, in order: new top layer (btrfs subvolume + qgroup limit) → cgroup
//! with limits → launch spec written → `sandbox-init launch` spawned, which
//! answers `ready <pid1>` → record saved. Destroy runs it backwards: kill the
//! cgroup's processes (the namespaces and the overlay mount die with them) →
//! reap the launcher → remove the cgroup → delete the layer → remove the
//! directory.
//!
//! What is kept across pause, resume and fork, with and without CRIU, is
//! described in `lifecycle`; every such operation says it in `kept`.

mod lifecycle;
mod moving;

pub use moving::{Landing, MAX_RECORD_BYTES};

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::agent::{AGENT_SOCKET, AgentError, Notice, Peer};
use crate::beneath::Dir;
use crate::cgroup::{Cgroup, CgroupError, CgroupLayout, CgroupStats};
use crate::checkpoint::Criu;
use crate::ids::{IdError, IdPool, IdRanges};
use crate::layers::{LayerError, LayerStore};
use crate::spec::{Bind, CONSOLE_LOG, IdMap, LaunchSpec, Limits, SPEC_FILE};
use crate::state::{Kept, SandboxRecord, StateError, Status, is_sandbox_pid, sandbox_pidfd};
use crate::timing;

/// Configuration of a backend instance.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// Root of all state: `sandboxes/`, `layers/`, `layers.img`.
    pub data_dir: PathBuf,
    /// Path of the `sandbox-init` launcher binary.
    pub launcher: PathBuf,
    /// Size of the sparse btrfs image created when the data dir is not btrfs.
    pub layer_image_gib: u64,
    /// CRIU to use for pause to disk and forks with memory; used only when
    /// it is ≥ 4.0 and passes `criu check`. `None`: never checkpoint.
    pub criu: Option<PathBuf>,
    /// Host ids the sandboxes' user namespaces map to (see [`crate::ids`]).
    pub id_pool: IdPool,
    /// Bounds on checkpoint images (see [`crate::checkpoint`]).
    pub checkpoint_budget: crate::checkpoint::Budget,
}

/// Where `container/scripts/build-criu.sh` installs CRIU by default.
pub const DEFAULT_CRIU: &str = "/var/cache/forge/criu/install/sbin/criu";

impl BackendConfig {
    /// Defaults: launcher next to the current executable, 64 GiB sparse
    /// image, CRIU from `SANDBOX_CRIU`, else the build script's cache, else
    /// `criu` on `PATH`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let launcher = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("sandbox-init")))
            .unwrap_or_else(|| PathBuf::from("sandbox-init"));
        let criu = std::env::var_os("SANDBOX_CRIU")
            .map(PathBuf::from)
            .or_else(|| Some(PathBuf::from(DEFAULT_CRIU)).filter(|p| p.exists()))
            .or_else(|| Some(PathBuf::from("criu")));
        Self {
            data_dir: data_dir.into(),
            launcher,
            layer_image_gib: 64,
            criu,
            id_pool: IdPool::default(),
            checkpoint_budget: crate::checkpoint::Budget::default(),
        }
    }
}

/// Failure of a backend operation.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("No sandbox {0}")]
    NotFound(String),
    #[error("Sandbox {id} is {status:?}; this operation needs {needed}")]
    WrongState {
        id: String,
        status: Status,
        needed: &'static str,
    },
    #[error("Sandbox directory {path} could not be accessed")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Launching sandbox {id} failed: {message}")]
    Launch { id: String, message: String },
    #[error("Running the launcher failed")]
    Spawn(#[source] std::io::Error),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Ids(#[from] IdError),
    #[error("Sandbox {id}'s agent is not usable")]
    Agent {
        id: String,
        #[source]
        source: AgentError,
    },
    #[error("Moving the sandbox failed: {0}")]
    Move(String),
    #[error("Connecting to sandbox {id}'s agent failed")]
    AgentClient {
        id: String,
        #[source]
        source: agent_proto::ClientError,
    },
}

/// What a new sandbox looks like.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    /// Root directory of the base image (read-only lower layer).
    pub image_root: PathBuf,
    pub limits: Limits,
    /// PID 1 (absolute path inside the image + args); empty = built-in reaper.
    pub init: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Hostname; defaults to the sandbox id.
    pub hostname: Option<String>,
    /// Host paths bind-mounted inside (e.g. the agent binary).
    pub binds: Vec<Bind>,
    /// `init` is the sandbox agent: create waits until it answers on its
    /// socket; fork and resume send it lifecycle notices.
    pub agent: bool,
}

/// A command to run inside a sandbox.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
}

impl ExecRequest {
    /// Run `argv` as root in `/` with a default `PATH`.
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            env: vec![(
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            )],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
        }
    }
}

/// A sandbox as the API reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SandboxInfo {
    pub id: String,
    pub status: Status,
    pub pid1: Option<u32>,
    pub hostname: String,
    pub forked_from: Option<String>,
    /// Paused to disk with a CRIU checkpoint: resume keeps processes and
    /// memory.
    pub checkpoint: bool,
    /// Why the last checkpoint fell back to keeping only the disk.
    pub checkpoint_error: Option<String>,
    /// The host ids root and the other users inside map to.
    pub ids: Option<IdMap>,
}

/// Outcome of a fork or resume: the sandbox, what was carried over, and
/// what the agent did with the lifecycle notice (when PID 1 is the agent).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Carried {
    pub sandbox: SandboxInfo,
    pub kept: Vec<Kept>,
    pub agent: Option<agent_proto::LifecycleReport>,
}

/// Usage of one sandbox.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SandboxStats {
    pub status: Status,
    #[serde(flatten)]
    pub cgroup: CgroupStats,
    /// Bytes referenced by the writable layer (btrfs accounting), if known.
    pub disk_bytes: Option<u64>,
    /// Bytes of the pause-to-disk checkpoint (memory and processes), when
    /// the sandbox has one.
    pub checkpoint_bytes: Option<u64>,
}

/// How to pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseMode {
    /// Freeze the cgroup: no CPU, RAM kept, resume in milliseconds.
    Memory,
    /// Stop the processes and keep the disk: no CPU, no RAM.
    Disk,
}

/// The container backend of one data directory.
pub struct ContainerBackend {
    config: BackendConfig,
    layers: LayerStore,
    cgroups: CgroupLayout,
    cgroup_parent: String,
    /// Launchers this process spawned, reaped on destroy/pause/status.
    launchers: Mutex<HashMap<String, Child>>,
    /// A working CRIU, when there is one.
    criu: Option<Criu>,
    /// One lock per sandbox: pause, resume, fork and destroy of the same
    /// sandbox run one at a time (different sandboxes in parallel).
    operations: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Host id ranges held by sandboxes.
    ids: Mutex<IdRanges>,
}

impl std::fmt::Debug for ContainerBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerBackend")
            .field("data_dir", &self.config.data_dir)
            .field("cgroup_parent", &self.cgroup_parent)
            .finish_non_exhaustive()
    }
}

/// A CRIU checkpoint to start from: its images and the id range of the
/// sandbox it was taken of.
#[derive(Debug, Clone, Copy)]
struct Checkpoint<'a> {
    images: &'a Path,
    ids: IdMap,
}

/// How long create waits for the agent's first answer.
const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The cgroup parent name used for sandboxes of `data_dir`.
pub fn cgroup_parent(data_dir: &Path) -> String {
    // FNV-1a of the path: stable across runs and short.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in data_dir.as_os_str().as_encoded_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("sandbox-{:08x}", hash as u32)
}

/// A fresh sandbox id: `prefix` and 12 random hex digits.
pub fn new_id(prefix: &str) -> String {
    let mut bytes = [0u8; 6];
    let random = fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    if random.is_err() {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes.copy_from_slice(&nanos.to_le_bytes()[..6]);
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{hex}")
}

/// Where the launchers of `data_dir`'s sandboxes build their mounts:
/// `/run/sandbox-mounts/<cgroup parent>/<id>`, empty directories on the
/// host (each launcher mounts inside its own mount namespace). They sit
/// outside the data directory because a restore reaches them from inside
/// the sandbox's user namespace, as the sandbox's root: every directory
/// above must be passable (`o+x`, as `/run` is), none needs to be listable,
/// while the data directory stays closed to everyone but root.
pub fn mount_root(data_dir: &Path) -> PathBuf {
    Path::new("/run/sandbox-mounts").join(cgroup_parent(data_dir))
}

/// The data directory's layout: `sandboxes/` (host only, 0700), and the
/// mount root (passable, not listable, 0711).
fn prepare_data_dir(data_dir: &Path) -> Result<(), BackendError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BackendError::Io { path, source }
    };
    let sandboxes = data_dir.join("sandboxes");
    let mounts = mount_root(data_dir);
    for (path, mode) in [(sandboxes, 0o700), (mounts, 0o711)] {
        fs::create_dir_all(&path).map_err(io(&path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io(&path))?;
    }
    Ok(())
}

/// 32 random bytes as hex: a secret only the host and one sandbox know.
fn secret() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::io::Read::read_exact(&mut fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Wait (bounded) until `pid` no longer belongs to sandbox `id`: exited
/// and reaped by whoever is its parent.
fn wait_gone(pid: u32, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_sandbox_pid(pid, id) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl ContainerBackend {
    /// Open the backend: probe cgroups, open (or create) the layer store.
    pub fn open(config: BackendConfig) -> Result<Self, BackendError> {
        prepare_data_dir(&config.data_dir)?;
        let layers = LayerStore::open(&config.data_dir, config.layer_image_gib)?;
        let cgroups = CgroupLayout::probe()?;
        let cgroup_parent = cgroup_parent(&config.data_dir);
        let criu = config.criu.as_deref().and_then(Criu::probe);
        config.id_pool.check()?;
        let held = Self::records(&config.data_dir)
            .into_iter()
            .filter_map(|r| Some((r.id.clone(), r.ids?)));
        let ids = IdRanges::new(config.id_pool, held);
        Ok(Self {
            config,
            layers,
            cgroups,
            cgroup_parent,
            launchers: Mutex::new(HashMap::new()),
            criu,
            operations: Mutex::new(HashMap::new()),
            ids: Mutex::new(ids),
        })
    }

    /// Every readable record under `data_dir`.
    fn records(data_dir: &Path) -> Vec<SandboxRecord> {
        let Ok(entries) = fs::read_dir(data_dir.join("sandboxes")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| SandboxRecord::load(&e.path()).ok())
            .collect()
    }

    fn id_ranges(&self) -> std::sync::MutexGuard<'_, IdRanges> {
        // A plain map: a panic while holding it cannot leave it half-written.
        self.ids.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A host id range for sandbox `id`.
    fn take_ids(&self, id: &str) -> Result<IdMap, BackendError> {
        Ok(self.id_ranges().take(id)?)
    }

    /// The lock serialising state changes of sandbox `id`.
    fn operation_lock(&self, id: &str) -> Arc<Mutex<()>> {
        let mut locks = self.operations.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(id.to_owned()).or_default().clone()
    }

    /// Whether pause to disk and fork keep processes and memory (a working
    /// CRIU was found).
    pub fn checkpoints(&self) -> bool {
        self.criu.is_some()
    }

    /// The layer store (for GC and inspection).
    pub fn layers(&self) -> &LayerStore {
        &self.layers
    }

    /// Directory of sandbox `id`.
    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.config.data_dir.join("sandboxes").join(id)
    }

    /// Where the launcher of sandbox `id` builds its mounts (empty on the
    /// host; see [`mount_root`]).
    pub fn mount_dir(&self, id: &str) -> PathBuf {
        mount_root(&self.config.data_dir).join(id)
    }

    /// Host path of the run directory of `record` (`/run/sandbox` inside:
    /// the agent's socket and the console log). The sandbox writes there:
    /// reach it only through [`crate::beneath`].
    pub fn run_dir(&self, record: &SandboxRecord) -> PathBuf {
        self.layers.layer(&record.top_layer).run
    }

    /// Who may answer on `record`'s agent socket.
    fn peer(record: &SandboxRecord) -> Result<Peer, BackendError> {
        let ids = record.ids.ok_or_else(|| BackendError::Launch {
            id: record.id.clone(),
            message: "the sandbox has no id range yet".into(),
        })?;
        Ok(Peer {
            sandbox: record.id.clone(),
            ids,
            token: record.agent_token.clone(),
            pid1: record.pid1,
        })
    }

    /// A connected agent client for sandbox `id` (exec, files, ports), after
    /// checking the socket's listener is the sandbox's own (see
    /// [`crate::agent`]). Must be awaited inside a tokio runtime.
    pub async fn agent(&self, id: &str) -> Result<agent_proto::Client, BackendError> {
        let record = self.running(id)?;
        crate::agent::connect(&self.run_dir(&record), &Self::peer(&record)?)
            .await
            .map_err(|source| BackendError::Agent {
                id: id.to_owned(),
                source,
            })
    }

    /// [`ContainerBackend::agent`]'s connection before the handshake, and
    /// the secret the handshake presents: for a caller that shakes hands
    /// elsewhere (a node handing the agent to its control plane).
    pub async fn agent_stream(
        &self,
        id: &str,
    ) -> Result<(tokio::net::UnixStream, Option<String>), BackendError> {
        let record = self.running(id)?;
        let peer = Self::peer(&record)?;
        let stream = crate::agent::connect_stream(&self.run_dir(&record), &peer)
            .await
            .map_err(|source| BackendError::Agent {
                id: id.to_owned(),
                source,
            })?;
        Ok((stream, peer.token))
    }

    fn running(&self, id: &str) -> Result<SandboxRecord, BackendError> {
        let record = self.observe(id)?;
        if record.status != Status::Running {
            return Err(BackendError::WrongState {
                id: id.to_owned(),
                status: record.status,
                needed: "running",
            });
        }
        Ok(record)
    }

    /// Send a lifecycle notice when PID 1 is the agent.
    fn notify(
        &self,
        record: &SandboxRecord,
        notice: Notice,
    ) -> Result<Option<agent_proto::LifecycleReport>, BackendError> {
        if !record.agent {
            return Ok(None);
        }
        crate::agent::notify(&self.run_dir(record), Self::peer(record)?, notice)
            .map(Some)
            .map_err(|source| BackendError::Agent {
                id: record.id.clone(),
                source,
            })
    }

    fn cgroup(&self, id: &str) -> Cgroup {
        self.cgroups.group(&self.cgroup_parent, id)
    }

    fn load(&self, id: &str) -> Result<SandboxRecord, BackendError> {
        let dir = self.sandbox_dir(id);
        if !dir.join(crate::state::STATE_FILE).exists() {
            return Err(BackendError::NotFound(id.to_owned()));
        }
        Ok(SandboxRecord::load(&dir)?)
    }

    fn info(&self, record: &SandboxRecord) -> SandboxInfo {
        SandboxInfo {
            id: record.id.clone(),
            status: record.status,
            pid1: record.pid1,
            hostname: record.hostname.clone(),
            forked_from: record.forked_from.clone(),
            checkpoint: record.checkpoint,
            checkpoint_error: record.checkpoint_error.clone(),
            ids: record.ids,
        }
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackendError + '_ {
        move |source| BackendError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Create and start a sandbox.
    pub fn create(&self, request: CreateRequest) -> Result<SandboxInfo, BackendError> {
        let id = new_id("sb");
        let mut record = SandboxRecord {
            hostname: request.hostname.unwrap_or_else(|| id.clone()),
            id: id.clone(),
            status: Status::PausedToDisk,
            pid1: None,
            supervisor: None,
            image_root: request.image_root,
            top_layer: id.clone(),
            lower_layers: Vec::new(),
            limits: request.limits,
            init: request.init,
            env: request.env,
            binds: request.binds,
            agent: request.agent,
            checkpoint: false,
            checkpoint_error: None,
            forked_from: None,
            created_at_secs: now_secs(),
            ids: None,
            checkpoint_ids: None,
            agent_token: None,
            restore_only: false,
        };
        if request.agent {
            let urandom = Path::new("/dev/urandom");
            record.agent_token = Some(secret().map_err(Self::io(urandom))?);
        }
        let result = self
            .take_ids(&id)
            .map(|ids| record.ids = Some(ids))
            .and_then(|()| self.prepare_dir(&id))
            .and_then(|()| Ok(self.layers.create(&id)?))
            .and_then(|_| self.start(record, None));
        if result.is_err() {
            self.discard(&id);
        }
        result
    }

    /// The sandbox's host-only directory (record, spec, checkpoints) and the
    /// empty mount point its launcher builds the root on.
    fn prepare_dir(&self, id: &str) -> Result<(), BackendError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = self.sandbox_dir(id);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(Self::io(&dir))?;
        self.ensure_mount_dir(id)
    }

    /// The (empty) mount point of sandbox `id`: `/run` is emptied at boot,
    /// so every start makes sure it is there.
    fn ensure_mount_dir(&self, id: &str) -> Result<(), BackendError> {
        use std::os::unix::fs::DirBuilderExt;
        let mount = self.mount_dir(id);
        match fs::DirBuilder::new().mode(0o755).create(&mount) {
            Err(err) if err.kind() != std::io::ErrorKind::AlreadyExists => {
                Err(Self::io(&mount)(err))
            }
            _ => Ok(()),
        }
    }

    /// Best-effort removal of a half-created sandbox.
    fn discard(&self, id: &str) {
        let cgroup = self.cgroup(id);
        let _ = cgroup.kill_all();
        self.reap(id);
        let _ = cgroup.remove();
        let _ = self.layers.delete(id);
        let _ = self.layers.delete_images(id);
        let _ = fs::remove_dir_all(self.sandbox_dir(id));
        let _ = fs::remove_dir(self.mount_dir(id));
        self.id_ranges().release(id);
    }

    /// The launch spec of `record` (also what a checkpoint of it needs).
    /// `record.ids` must be set.
    fn spec(&self, record: &SandboxRecord) -> Result<LaunchSpec, BackendError> {
        let mut lower_dirs: Vec<PathBuf> = record
            .lower_layers
            .iter()
            .map(|l| self.layers.layer(l).upper)
            .collect();
        lower_dirs.push(record.image_root.clone());
        Ok(LaunchSpec {
            id: record.id.clone(),
            hostname: record.hostname.clone(),
            lower_dirs,
            top_dir: self.layers.layer(&record.top_layer).dir,
            root_dir: self.mount_dir(&record.id),
            binds: record.binds.clone(),
            cgroups: self.cgroup(&record.id).paths(),
            init: record.init.clone(),
            env: record
                .env
                .iter()
                .cloned()
                .chain(
                    record
                        .agent_token
                        .clone()
                        .map(|token| (agent_proto::TOKEN_ENV.to_owned(), token)),
                )
                .collect(),
            limits: record.limits.clone(),
            ids: Self::peer(record)?.ids,
        })
    }

    /// The run directory of `record`, made ready for a launch: present,
    /// without the last run's socket, with a console log that is a plain
    /// file. Returns the log, opened for appending.
    fn prepare_run_dir(&self, record: &SandboxRecord) -> Result<fs::File, BackendError> {
        let layer = self.layers.layer(&record.top_layer);
        let run = layer.run;
        let layer_dir = Dir::open(&layer.dir).map_err(Self::io(&layer.dir))?;
        layer_dir
            .ensure_dir(crate::spec::RUN_DIR, 0o755)
            .map_err(Self::io(&run))?;
        let run_dir = layer_dir
            .subdir(crate::spec::RUN_DIR)
            .map_err(Self::io(&run))?;
        run_dir.remove(AGENT_SOCKET).map_err(Self::io(&run))?;
        run_dir
            .open_append_replacing(CONSOLE_LOG)
            .map_err(Self::io(&run))
    }

    /// Apply quota, create the cgroup, launch PID 1 (fresh, or from the
    /// CRIU images in `restore`), save the record as running.
    fn start(
        &self,
        mut record: SandboxRecord,
        restore: Option<Checkpoint<'_>>,
    ) -> Result<SandboxInfo, BackendError> {
        let id = record.id.clone();
        let dir = self.sandbox_dir(&id);
        let prepare = Instant::now();
        if record.ids.is_none() {
            record.ids = Some(self.take_ids(&id)?);
        }
        self.layers
            .set_quota(&record.top_layer, record.limits.disk_mib * 1024 * 1024)?;
        let cgroup = self.cgroup(&id);
        cgroup.create(&record.limits)?;
        self.ensure_mount_dir(&id)?;
        let spec = self.spec(&record)?;
        let spec_path = dir.join(SPEC_FILE);
        let spec_bytes = serde_json::to_vec_pretty(&spec).map_err(|e| BackendError::Launch {
            id: id.clone(),
            message: e.to_string(),
        })?;
        crate::state::write_private(&spec_path, &spec_bytes).map_err(Self::io(&spec_path))?;

        // In the run dir, so PID 1 writes to the same file from inside (and a
        // checkpoint sees no file outside the sandbox).
        let console_path = spec.run_dir().join(CONSOLE_LOG);
        let console = self.prepare_run_dir(&record)?;
        timing::since("prepare", prepare);
        // Beside the images: hard links cannot leave their subvolume.
        let scratch = restore
            .and_then(|checkpoint| checkpoint.images.parent())
            .map(|room| room.join(format!("restore-{id}")))
            .unwrap_or_else(|| dir.join("restore-images"));
        let images = match restore {
            Some(checkpoint) => {
                let ids = Self::peer(&record)?.ids;
                let images = timing::timed("links", || {
                    crate::checkpoint::images_for(checkpoint.images, checkpoint.ids, ids, &scratch)
                })
                .map_err(|e| BackendError::Launch {
                    id: id.clone(),
                    message: e.to_string(),
                })?;
                Some(images)
            }
            None => None,
        };
        let mut launcher = Command::new(&self.config.launcher);
        match (&images, &self.criu) {
            (Some(images), Some(criu)) => {
                launcher
                    .arg("restore")
                    .arg(&spec_path)
                    .arg(images)
                    .arg(criu.path());
            }
            _ => {
                launcher.arg("launch").arg(&spec_path);
            }
        }
        let launch = Instant::now();
        let mut child = launcher
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(console))
            .spawn()
            .map_err(BackendError::Spawn)?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            // EOF or a read error both mean the launcher died; handled below.
            let _ = BufReader::new(out).read_line(&mut line);
        }
        timing::since("launch", launch);
        if scratch.exists() {
            crate::checkpoint::record_stats(&scratch);
            // Restored (or failed): the links are of no further use.
            let _ = fs::remove_dir_all(&scratch);
        }
        let pid1 = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse::<u32>().ok());
        let Some(pid1) = pid1 else {
            let _ = child.kill();
            let _ = child.wait();
            let message = line.trim().trim_start_matches("error: ").to_owned();
            return Err(BackendError::Launch {
                id,
                message: if message.is_empty() {
                    format!("launcher exited; see {}", console_path.display())
                } else {
                    message
                },
            });
        };
        record.status = Status::Running;
        record.pid1 = Some(pid1);
        record.supervisor = Some(child.id());
        record.save(&dir)?;
        self.launchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), child);
        if record.agent {
            let alive_id = id.clone();
            let peer = Self::peer(&record)?;
            timing::timed("agent-ready", || {
                crate::agent::wait_ready(&spec.run_dir(), peer, AGENT_READY_TIMEOUT, move || {
                    is_sandbox_pid(pid1, &alive_id)
                })
            })
            .map_err(|source| BackendError::Agent { id, source })?;
        }
        Ok(self.info(&record))
    }

    /// Reap the launcher of `id` if this process spawned it (it exits by
    /// itself once PID 1 is gone).
    fn reap(&self, id: &str) {
        let child = self
            .launchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        if let Some(mut child) = child {
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_micros(500));
            }
        }
    }

    /// The sandbox's current record, with a dead PID 1 noticed as `Crashed`.
    pub fn get(&self, id: &str) -> Result<SandboxInfo, BackendError> {
        let record = self.observe(id)?;
        Ok(self.info(&record))
    }

    /// [`Self::refresh`] for a caller outside the sandbox's operation
    /// lock. While a pause or fork holds it, PID 1 may be down on purpose
    /// (a checkpoint kills it): the record is answered as saved, and the
    /// operation saves what it leaves.
    fn observe(&self, id: &str) -> Result<SandboxRecord, BackendError> {
        let lock = self.operation_lock(id);
        let _serialised = match lock.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return self.load(id),
        };
        self.refresh(id)
    }

    /// The record of sandbox `id`, with a dead PID 1 recorded as
    /// `Crashed`. Call with its operation lock held.
    fn refresh(&self, id: &str) -> Result<SandboxRecord, BackendError> {
        let mut record = self.load(id)?;
        if matches!(record.status, Status::Running | Status::Frozen)
            && !record.pid1.is_some_and(|pid| is_sandbox_pid(pid, id))
        {
            self.stop_processes(&record)?;
            record.status = Status::Crashed;
            record.pid1 = None;
            record.supervisor = None;
            record.save(&self.sandbox_dir(id))?;
        }
        Ok(record)
    }

    /// Every sandbox of this data directory.
    pub fn list(&self) -> Result<Vec<SandboxInfo>, BackendError> {
        let root = self.config.data_dir.join("sandboxes");
        let mut out = Vec::new();
        for entry in fs::read_dir(&root).map_err(Self::io(&root))? {
            let entry = entry.map_err(Self::io(&root))?;
            let id = entry.file_name().to_string_lossy().into_owned();
            if let Ok(info) = self.get(&id) {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// A `Command` that runs `request` inside the running sandbox `id`
    /// (through `sandbox-init enter`); the caller spawns it and owns its
    /// stdio. Exit status 125 means the launcher could not enter.
    pub fn exec_command(&self, id: &str, request: &ExecRequest) -> Result<Command, BackendError> {
        let record = self.observe(id)?;
        let pid1 = match (record.status, record.pid1) {
            (Status::Running, Some(pid1)) => pid1,
            (status, _) => {
                return Err(BackendError::WrongState {
                    id: id.to_owned(),
                    status,
                    needed: "running",
                });
            }
        };
        let mut command = Command::new(&self.config.launcher);
        command
            .arg("enter")
            .arg(self.sandbox_dir(id).join(SPEC_FILE))
            .arg(pid1.to_string())
            .arg(request.uid.to_string())
            .arg(request.gid.to_string())
            .arg(&request.cwd)
            .arg("--")
            .args(&request.argv)
            .env_clear()
            .envs(request.env.iter().map(|(k, v)| (k, v)));
        Ok(command)
    }

    /// Run `request` to completion and collect its output.
    pub fn exec(&self, id: &str, request: &ExecRequest) -> Result<Output, BackendError> {
        self.exec_command(id, request)?
            .stdin(Stdio::null())
            .output()
            .map_err(BackendError::Spawn)
    }

    /// Kill every process of the sandbox and remove its cgroup (the disk stays).
    ///
    /// PID 1 is killed first and alone: the PID namespace dies with it and
    /// the supervising launcher reaps it and exits, so no zombie is left for
    /// the host's init to collect. Whatever remains in the cgroup (execs in
    /// flight) is killed afterwards.
    fn stop_processes(&self, record: &SandboxRecord) -> Result<(), BackendError> {
        let id = record.id.as_str();
        let cgroup = self.cgroup(id);
        if cgroup.exists() && cgroup.is_frozen() {
            cgroup.thaw()?;
        }
        if let Some(pidfd) = record.pid1.and_then(|pid| sandbox_pidfd(pid, id)) {
            // It may exit on its own in between; the waits below cover both.
            let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
        }
        self.reap(id);
        if let Some(supervisor) = record.supervisor {
            wait_gone(supervisor, id);
        }
        if cgroup.exists() {
            cgroup.kill_all()?;
        }
        cgroup.remove()?;
        Ok(())
    }

    /// Stop and remove a sandbox and everything it owns.
    pub fn destroy(&self, id: &str) -> Result<(), BackendError> {
        let lock = self.operation_lock(id);
        let _serialised = lock.lock().unwrap_or_else(|p| p.into_inner());
        let record = self.load(id)?;
        self.stop_processes(&record)?;
        self.layers.delete(&record.top_layer)?;
        self.layers.delete_images(id)?;
        let dir = self.sandbox_dir(id);
        fs::remove_dir_all(&dir).map_err(Self::io(&dir))?;
        let mount = self.mount_dir(id);
        if let Err(err) = fs::remove_dir(&mount)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            return Err(Self::io(&mount)(err));
        }
        self.operations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.id_ranges().release(id);
        Ok(())
    }

    /// Destroy nothing, but remove the data directory's cgroup parent and
    /// unmount the layer store if no sandbox exists any more (e.g. at the end
    /// of a test or when a data directory is retired).
    pub fn close(self) -> Result<(), BackendError> {
        let root = self.config.data_dir.join("sandboxes");
        let empty = fs::read_dir(&root)
            .map_err(Self::io(&root))?
            .next()
            .is_none();
        if empty {
            self.cgroups.remove_parent(&self.cgroup_parent);
            self.layers.unmount()?;
            // Empty unless a sandbox exists; then it stays for it.
            let _ = fs::remove_dir(mount_root(&self.config.data_dir));
        }
        Ok(())
    }

    /// Current usage.
    pub fn stats(&self, id: &str) -> Result<SandboxStats, BackendError> {
        let record = self.observe(id)?;
        Ok(SandboxStats {
            status: record.status,
            cgroup: self.cgroup(id).stats(),
            disk_bytes: self.layers.usage_bytes(&record.top_layer),
            checkpoint_bytes: (record.checkpoint && record.status == Status::PausedToDisk)
                .then(|| crate::checkpoint::images_bytes(&self.checkpoint_dir(id))),
        })
    }
}
