//! The `microvm` backend: one `forge-vmm` process per sandbox, driven over
//! its control socket ([`control`]); the agent inside is reached through
//! the VMM's vsock socket (`CONNECT <port>`).
//!
//! Operations, in order:
//! - create: directory → `vm.json` ([`vm::vm_config`]) → `forge-vmm run` →
//!   control socket answers → record saved → agent answers (boot);
//! - pause in memory: `pause` (vCPUs stop, RAM kept); resume: `resume`;
//! - pause to disk: `pause` with `to_disk` into `snapshot-<n>/` (the VMM
//!   writes its state and memory and exits); resume: `forge-vmm restore`
//!   on the record's sockets, then the agent is told it resumed;
//! - fork: `fork` (fork(2) inside the VMM: memory copy-on-write, disk
//!   layers sealed); each child gets a record and the agent is told it was
//!   forked (new hostname, entropy, clock);
//! - destroy: `shutdown`, SIGKILL if the VMM lingers, record removed,
//!   directories no live sandbox needs removed.
//!
//! Locking: each lifecycle change (create, pause, resume, fork, destroy)
//! holds its VM's lock ([`locks`]) from reading the record to writing it
//! back, so two changes of one VM never interleave their control requests
//! and record writes; changes of different VMs run at once, and a boot
//! that takes its whole timeout holds up no other VM. Create locks the id
//! it has just drawn before making the directory; fork holds the source's
//! lock throughout and each child's while that child's record is written
//! and its agent told, so a destroy of a child already seen in `list`
//! waits for it. get, list, agent and stats wait for no lock: they read
//! records, and write one only to note that its VMM died, and only if no
//! change of that VM is in flight. The directory sweep after a destroy
//! runs one at a time and keeps the directories of VMs with a change in
//! flight.
//!
//! Everything is kept across pause, resume and fork: disk, memory and
//! processes. Not offered (yet): a workspace bind (the VM has no shared
//! file system device; such a spec is refused), a disk limit other than the
//! image's ext4 size (`disk_mib` is not enforced), resuming a VM whose VMM
//! died (`Crashed` stays so until destroyed). Snapshots of pauses to disk
//! stay in the sandbox's directory until it is destroyed: a restored VM
//! maps its memory file.

pub mod control;
pub mod locks;
pub mod vm;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agent_proto::DEFAULT_VSOCK_PORT;
use tokio::process::Child;
pub use vmm_proto::config::ApEntry;
use vmm_proto::control::ChildStatus;

use sandbox_container::Limits;
use sandbox_container::cgroup::{Cgroup, CgroupLayout};

use self::control::{ControlError, ControlSocket};
use self::locks::VmLocks;
use self::vm::VmRecord;
use crate::agent::{Agent, AgentStream};
use crate::error::{Error, Result};
use crate::spec::{BackendKind, Carried, Kept, PauseMode, SandboxInfo, Spec, State, Stats};
use crate::{Backend, BoxFuture};

/// Kernel command line of the guest image: the ext4 is the root and the
/// agent its init.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 root=/dev/vda rw init=/sbin/init";

/// Configuration of the microVM backend.
#[derive(Debug, Clone)]
pub struct MicrovmConfig {
    /// Sandboxes live in `<data_dir>/vms/`.
    pub data_dir: PathBuf,
    /// The `forge-vmm` binary.
    pub vmm_binary: PathBuf,
    /// Guest kernel (vmlinux or bzImage).
    pub kernel: PathBuf,
    pub cmdline: String,
    /// vsock port the agent listens on.
    pub agent_port: u32,
    /// How long a boot (or restore) may take until the agent answers.
    pub boot_timeout: Duration,
    pub readiness: Readiness,
    /// How secondary vCPUs start (`Sipi` for Linux).
    pub ap_entry: ApEntry,
    /// Who jailed VMMs run as (`vmm::jail`); `None` runs them unconfined,
    /// as root, which only the VMM's own tests should do.
    pub jail: Option<JailIds>,
}

/// The host uid and gid of jailed VMMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JailIds {
    pub uid: u32,
    pub gid: u32,
}

pub use vmm_proto::config::DEFAULT_JAIL_ID;

impl Default for JailIds {
    fn default() -> Self {
        Self {
            uid: DEFAULT_JAIL_ID,
            gid: DEFAULT_JAIL_ID,
        }
    }
}

/// Memory a VMM needs beyond its guest's RAM (its own heap, KVM's page
/// tables and reverse maps, device queues), in the jail's cgroup limit.
pub const VMM_OVERHEAD_MIB: u64 = 96;

/// When a started VM counts as up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Its agent answers (a guest image with `sandbox-agent`).
    Agent,
    /// Its VMM answers on the control socket: for guests without an agent
    /// (the VMM's freestanding test guests); exec, files and ports fail and
    /// no lifecycle notices are sent.
    Vmm,
}

impl MicrovmConfig {
    /// `forge-vmm` next to the current executable, the default command line.
    pub fn new(data_dir: impl Into<PathBuf>, kernel: impl Into<PathBuf>) -> Self {
        let vmm_binary = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("forge-vmm")))
            .unwrap_or_else(|| PathBuf::from("forge-vmm"));
        Self {
            data_dir: data_dir.into(),
            vmm_binary,
            kernel: kernel.into(),
            cmdline: DEFAULT_CMDLINE.to_owned(),
            agent_port: DEFAULT_VSOCK_PORT,
            boot_timeout: Duration::from_secs(60),
            readiness: Readiness::Agent,
            ap_entry: ApEntry::Sipi,
            jail: Some(JailIds::default()),
        }
    }
}

/// MicroVM sandboxes of one data directory.
#[derive(Debug)]
pub struct MicrovmSandboxes {
    config: MicrovmConfig,
    /// VMM processes this process started, reaped when they end.
    children: Mutex<HashMap<String, Child>>,
    clients: Mutex<HashMap<String, agent_proto::Client>>,
    /// One lock per VM held through each lifecycle change of that VM.
    locks: VmLocks,
    /// Directory sweeps run one at a time (two would remove the same
    /// directories).
    sweeping: Mutex<()>,
    /// Where jails' cgroups go (`None` without a jail).
    cgroups: Option<CgroupLayout>,
    cgroup_parent: String,
}

fn vmm_error(id: &str) -> impl FnOnce(ControlError) -> Error + '_ {
    move |err| Error::Vmm {
        id: id.to_owned(),
        message: crate::error::chain(&err),
    }
}

/// How long one connection attempt to a guest's agent may take: the VMM
/// accepts at once and the guest answers `CONNECT`, or never does (no
/// vsock driver, a hung guest).
const AGENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connect to the agent behind `record`'s vsock socket within `within`.
async fn connect_agent(
    record: &VmRecord,
    port: u32,
    within: Duration,
) -> Result<agent_proto::Client> {
    let connect = async {
        let stream = vsock_stream(record, port).await?;
        agent_proto::Client::handshake(stream)
            .await
            .map_err(Error::agent(&record.id))
    };
    agent_within(record, port, within, connect).await
}

/// The stream to the guest agent's port through the VMM's vsock socket,
/// before the handshake.
async fn connect_agent_stream(
    record: &VmRecord,
    port: u32,
    within: Duration,
) -> Result<tokio::net::UnixStream> {
    agent_within(record, port, within, vsock_stream(record, port)).await
}

async fn vsock_stream(record: &VmRecord, port: u32) -> Result<tokio::net::UnixStream> {
    let socket = vm::NoFollow::socket(&record.vsock_uds).map_err(|source| Error::Agent {
        id: record.id.clone(),
        source: agent_proto::ClientError::Connect {
            path: record.vsock_uds.display().to_string(),
            source,
        },
    })?;
    agent_proto::Client::vsock_proxy_stream(socket.path(), port)
        .await
        .map_err(Error::agent(&record.id))
}

/// `connect`, or a handshake error once `within` passed.
async fn agent_within<T>(
    record: &VmRecord,
    port: u32,
    within: Duration,
    connect: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(within, connect)
        .await
        .unwrap_or_else(|_| {
            Err(Error::Agent {
                id: record.id.clone(),
                source: agent_proto::ClientError::Handshake(format!(
                    "the guest did not answer CONNECT {port} within {within:?}"
                )),
            })
        })
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

fn info(record: &VmRecord) -> SandboxInfo {
    SandboxInfo {
        id: record.id.clone(),
        backend: BackendKind::Microvm,
        state: record.state,
        forked_from: record.forked_from.clone(),
    }
}

impl MicrovmSandboxes {
    pub fn open(mut config: MicrovmConfig) -> Result<Self> {
        // The jail binds the kernel at its own path: one without links or
        // `..` (the backend's own configuration, so resolved here).
        if let Ok(kernel) = std::fs::canonicalize(&config.kernel) {
            config.kernel = kernel;
        }
        let vms = config.data_dir.join("vms");
        std::fs::create_dir_all(&vms).map_err(Error::io(&vms))?;
        let cgroups = match config.jail {
            Some(_) => Some(CgroupLayout::probe().map_err(|e| {
                Error::Invalid(format!(
                    "jailed VMMs need cgroups for their limits, and this host's cannot be used: {e}"
                ))
            })?),
            None => None,
        };
        // Named after the data directory, as the container backend's: two
        // forges on one host never touch each other's groups.
        let containers = sandbox_container::backend::cgroup_parent(&config.data_dir);
        let cgroup_parent = format!("forge-vmm-{}", containers.trim_start_matches("sandbox-"));
        Ok(Self {
            config,
            children: Mutex::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
            locks: VmLocks::default(),
            sweeping: Mutex::new(()),
            cgroups,
            cgroup_parent,
        })
    }

    fn vms(&self) -> PathBuf {
        self.config.data_dir.join("vms")
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.vms().join(id)
    }

    fn clients(&self) -> std::sync::MutexGuard<'_, HashMap<String, agent_proto::Client>> {
        // Plain handles: a panic cannot leave the map inconsistent.
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn children(&self) -> std::sync::MutexGuard<'_, HashMap<String, Child>> {
        self.children.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The record of `id`, with a VMM that died noticed as `Crashed`.
    fn load(&self, id: &str) -> Result<VmRecord> {
        let dir = self.dir(id);
        if !dir.join(vm::RECORD_FILE).exists() {
            return Err(Error::NotFound(id.to_owned()));
        }
        let mut record = VmRecord::load(&dir)?;
        let saved = record.clone();
        if !self.notice_crash(&mut record) {
            return Ok(record);
        }
        // The crash is written down only under the VM's lock, and only if
        // it still holds there: a change in flight owns the record (a
        // pause to disk ends its VMM before it records the pause, a
        // destroy may just have removed it, a resume be starting a new
        // VMM), so meanwhile the record reads as last saved.
        let Some(_vm) = self.locks.try_lock(id) else {
            return Ok(saved);
        };
        if !dir.join(vm::RECORD_FILE).exists() {
            return Err(Error::NotFound(id.to_owned()));
        }
        let mut current = VmRecord::load(&dir)?;
        if self.notice_crash(&mut current) {
            current.save(&dir)?;
        }
        Ok(current)
    }

    /// Marks `record` `Crashed` if it should have a VMM and its VMM ended;
    /// whether it did.
    fn notice_crash(&self, record: &mut VmRecord) -> bool {
        if !matches!(record.state, State::Running | State::Paused) {
            return false;
        }
        if let Some(child) = self.children().get_mut(&record.id) {
            // Reaps a VMM that ended, so `alive` sees it gone.
            let _ = child.try_wait();
        }
        if record.pid.is_some_and(vm::alive) {
            return false;
        }
        record.state = State::Crashed;
        record.pid = None;
        true
    }

    fn wrong_state(record: &VmRecord, needed: &'static str) -> Error {
        Error::WrongState {
            id: record.id.clone(),
            state: record.state,
            needed,
        }
    }

    fn group(&self, name: &str) -> Option<Cgroup> {
        Some(self.cgroups.as_ref()?.group(&self.cgroup_parent, name))
    }

    /// The cgroup limits of a jail holding `members` VMs of `mem_mib` MiB
    /// and `vcpus` vCPUs each (a VM and its live forks).
    fn jail_limits(mem_mib: u64, vcpus: u8, members: u64) -> Limits {
        let members = members.max(1);
        Limits {
            mem_mib: (mem_mib + VMM_OVERHEAD_MIB) * members,
            // Its vCPUs and one core for device emulation: a VMM cannot
            // use more, so the quota bounds it without throttling a VMM
            // that only does its work (a throttled group idles the CPU
            // until the period timer, which on an emulated host is a
            // chance to miss it).
            cpu_millis: (u64::from(vcpus.max(1)) + 1) * 1000 * members,
            // Each VMM: its vCPUs, the main thread, a helper; the jail's
            // init and keeper once.
            pids_max: 8 + (u64::from(vcpus) + 8) * members,
            ..Limits::default()
        }
    }

    /// Prepares the jail of a VM whose directory is `dir` and whose VMM
    /// writes in `files` and reads `readable`: its cgroup `group` with
    /// limits for one VM, its empty root, `jail.json`. `None` without a
    /// jail.
    fn prepare_jail(
        &self,
        dir: &Path,
        group: &str,
        files: &Path,
        readable: &[PathBuf],
        mem_mib: u64,
        vcpus: u8,
    ) -> Result<Option<PathBuf>> {
        let (Some(ids), Some(cgroup)) = (self.config.jail, self.group(group)) else {
            return Ok(None);
        };
        let cgroup_err = |e: sandbox_container::cgroup::CgroupError| Error::Vmm {
            id: group.to_owned(),
            message: format!("cannot make the VMM's cgroup: {e}"),
        };
        cgroup
            .create(&Self::jail_limits(mem_mib, vcpus, 1))
            .map_err(cgroup_err)?;
        let root = vm::jail_root(dir);
        std::fs::create_dir_all(&root).map_err(Error::io(&root))?;
        let jail = vmm_proto::config::JailConfig {
            root,
            uid: ids.uid,
            gid: ids.gid,
            cgroups: cgroup
                .paths()
                .dirs
                .iter()
                .map(|d| d.join("cgroup.procs"))
                .collect(),
            writable: vec![files.to_owned()],
            readable: readable.to_vec(),
        };
        let path = dir.join("jail.json");
        let json = serde_json::to_vec_pretty(&jail).map_err(|e| Error::Invalid(e.to_string()))?;
        std::fs::write(&path, json).map_err(Error::io(&path))?;
        Ok(Some(path))
    }

    /// Makes `files` (a new VM's `vm/`), owned by the jail's uid.
    fn make_files_dir(&self, files: &Path) -> Result<()> {
        std::fs::create_dir_all(files).map_err(Error::io(files))?;
        if let Some(ids) = self.config.jail {
            std::os::unix::fs::chown(files, Some(ids.uid), Some(ids.gid))
                .map_err(Error::io(files))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(files, std::fs::Permissions::from_mode(0o700))
                .map_err(Error::io(files))?;
        }
        Ok(())
    }

    /// Grows the jail cgroup of `parent` for `count` more VMs (a fork's
    /// children stay in their parent's jail).
    fn grow_jail(&self, parent: &VmRecord, count: u64) -> Result<()> {
        let Some(group_name) = &parent.jail_group else {
            return Ok(());
        };
        let Some(group) = self.group(group_name) else {
            return Ok(());
        };
        let members = self
            .records()?
            .iter()
            .filter(|r| r.jail_group.as_ref() == Some(group_name))
            .filter(|r| matches!(r.state, State::Running | State::Paused))
            .count() as u64;
        group
            .create(&Self::jail_limits(
                parent.mem_mib,
                parent.vcpus,
                members + count,
            ))
            .map_err(|e| Error::Vmm {
                id: parent.id.clone(),
                message: format!("cannot grow the VMM's cgroup for its forks: {e}"),
            })
    }

    /// Ends the jail of `record` (its VMM has ended) unless another VM the
    /// backend knows still runs in it: what is left there (the jail's init
    /// and first process, a fork child whose parent died before it was
    /// reported) is killed and the cgroup removed.
    async fn release_jail(&self, record: &VmRecord) {
        let Some(name) = record.jail_group.clone() else {
            return;
        };
        let Some(group) = self.group(&name) else {
            return;
        };
        let others_run = self.records().map_or(true, |records| {
            records.iter().any(|r| {
                r.id != record.id
                    && r.jail_group.as_ref() == Some(&name)
                    && matches!(r.state, State::Running | State::Paused)
            })
        });
        if others_run {
            return;
        }
        let layout = self.cgroups.clone();
        let parent = self.cgroup_parent.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let _ = group.kill_all();
            let _ = group.remove();
            if let Some(layout) = layout {
                // Only once it holds no other VM's group.
                layout.remove_parent(&parent);
            }
        })
        .await;
    }

    /// Start `forge-vmm` with `args` (and `--jail <jail>`), logging its
    /// stderr to `vmm.log`. The pid is the process started: a jailed VMM's
    /// own is learnt from its control socket ([`Self::wait_ready`]).
    fn spawn(
        &self,
        id: &str,
        mut args: Vec<std::ffi::OsString>,
        jail: Option<&Path>,
    ) -> Result<i32> {
        if let Some(jail) = jail {
            args.push("--jail".into());
            args.push(jail.into());
        }
        let log_path = self.dir(id).join("vmm.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(Error::io(&log_path))?;
        let child = tokio::process::Command::new(&self.config.vmm_binary)
            .args(args)
            // The forge's environment (tokens, keys) is not the VMM's.
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(Error::io(&self.config.vmm_binary))?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| Error::Vmm {
                id: id.to_owned(),
                message: "forge-vmm ended at once".into(),
            })?;
        self.children().insert(id.to_owned(), child);
        Ok(pid)
    }

    /// Wait until the VMM of `record` answers on its control socket and its
    /// agent on vsock (`None`: readiness is the VMM's alone); a VMM that
    /// ends meanwhile fails with its log. A jailed VMM's host pid, read
    /// from the control socket, replaces the record's (that of the jail's
    /// first process) and is saved.
    async fn wait_ready(&self, record: &mut VmRecord) -> Result<Option<agent_proto::Client>> {
        let id = record.id.clone();
        let deadline = tokio::time::Instant::now() + self.config.boot_timeout;
        let died = |record: &VmRecord| Error::Vmm {
            id: record.id.clone(),
            message: format!(
                "forge-vmm ended: {} | serial: {}",
                vm::tail(&self.dir(&record.id).join("vmm.log"), 400),
                vm::tail(&record.serial_log, 400)
            ),
        };
        let vmm_up = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut control = loop {
            match ControlSocket::connect(&record.control_socket).await {
                Ok(control) => break control,
                Err(_) if !record.pid.is_some_and(vm::alive) => return Err(died(record)),
                Err(err) if tokio::time::Instant::now() >= vmm_up => {
                    return Err(vmm_error(&id)(err));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        control.status().await.map_err(vmm_error(&id))?;
        if record.jail_group.is_some() {
            let pid = control.peer_pid().ok_or_else(|| Error::Vmm {
                id: id.clone(),
                message: "the kernel did not say which process serves the control socket".into(),
            })?;
            record.pid = Some(pid);
            record.save(&self.dir(&id))?;
        }
        let record = &*record;
        if self.config.readiness == Readiness::Vmm {
            return Ok(None);
        }
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let within = left
                .min(AGENT_CONNECT_TIMEOUT)
                .max(Duration::from_millis(1));
            match connect_agent(record, self.config.agent_port, within).await {
                Ok(client) => {
                    self.clients().insert(id.clone(), client.clone());
                    return Ok(Some(client));
                }
                Err(_) if !record.pid.is_some_and(vm::alive) => return Err(died(record)),
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(Error::Agent {
                        id: id.clone(),
                        source: agent_proto::ClientError::Handshake(format!(
                            "the guest's agent did not answer on vsock port {} within {:?} \
                             | serial: {}",
                            self.config.agent_port,
                            self.config.boot_timeout,
                            vm::tail(&record.serial_log, 600)
                        )),
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// End the VMM of `record`: `shutdown`, then SIGKILL after a grace.
    async fn stop(&self, record: &VmRecord) {
        self.clients().remove(&record.id);
        let Some(pid) = record.pid.filter(|p| vm::alive(*p)) else {
            return;
        };
        if let Ok(mut control) = ControlSocket::connect(&record.control_socket).await {
            let _ = control.shutdown().await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while vm::alive(pid) && tokio::time::Instant::now() < deadline {
            if let Some(child) = self.children().get_mut(&record.id) {
                let _ = child.try_wait();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if vm::alive(pid) {
            // It may end on its own in between.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let Some(mut child) = self.children().remove(&record.id) {
            // A jail's first process lives as long as any VMM of the jail
            // (the VM's forks among them) and ends on its own; dropped
            // unreaped, it is reaped in the background.
            if record.jail_group.is_none() {
                let _ = child.start_kill();
            }
            let _ = child.try_wait();
        }
    }

    async fn create_vm(&self, spec: Spec) -> Result<VmRecord> {
        let unsupported = |what: &str| Error::Unsupported {
            backend: BackendKind::Microvm,
            what: what.to_owned(),
        };
        let Some(ext4) = spec.image.ext4.clone() else {
            return Err(unsupported("boot an image that has no ext4 disk"));
        };
        // Bound into the jail at its own path (see `open`).
        let ext4 = std::fs::canonicalize(&ext4).map_err(Error::io(&ext4))?;
        if spec.workspace.is_some() {
            return Err(unsupported("bind a host workspace (no shared file system)"));
        }
        let id = vm::new_id();
        // Held from before the directory exists until the VM is up or gone:
        // a sweep keeps the directory, a destroy of the id waits.
        let _vm = self.locks.lock(&id).await;
        let dir = self.dir(&id);
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        let files = vm::files_dir(&dir);
        self.make_files_dir(&files)?;
        let config = vm::vm_config(&spec, &ext4, &self.config, &files);
        let config_path = dir.join("vm.json");
        let json = serde_json::to_vec_pretty(&config).map_err(|e| Error::Invalid(e.to_string()))?;
        std::fs::write(&config_path, json).map_err(Error::io(&config_path))?;
        let readable = vec![self.config.kernel.clone(), ext4.clone()];
        let jail = self.prepare_jail(&dir, &id, &files, &readable, spec.mem_mib, spec.vcpus)?;
        let pid = self.spawn(&id, vm::run_args(&config_path), jail.as_deref())?;
        let mut record = VmRecord {
            id: id.clone(),
            state: State::Running,
            pid: Some(pid),
            control_socket: config.control_socket,
            vsock_uds: config.vsock.map(|v| v.uds_path).unwrap_or_default(),
            serial_log: config.serial_log,
            env: spec.env,
            forked_from: None,
            lineage: Vec::new(),
            snapshot: None,
            jail_group: jail.map(|_| id.clone()),
            readable,
            mem_mib: spec.mem_mib,
            vcpus: spec.vcpus,
        };
        record.save(&dir)?;
        if let Err(err) = self.wait_ready(&mut record).await {
            self.stop(&record).await;
            self.release_jail(&record).await;
            let _ = std::fs::remove_dir_all(&dir);
            return Err(err);
        }
        Ok(record)
    }

    async fn fork_vm(&self, id: &str, count: usize) -> Result<Vec<Carried>> {
        let parent = self.load(id)?;
        if parent.state == State::PausedToDisk {
            return Err(Error::Unsupported {
                backend: BackendKind::Microvm,
                what: "start copies of a VM paused to disk (a snapshot) yet".into(),
            });
        }
        if parent.state != State::Running {
            return Err(Self::wrong_state(&parent, "running"));
        }
        let count = u32::try_from(count)
            .ok()
            .filter(|c| *c >= 1)
            .ok_or_else(|| Error::Invalid(format!("cannot fork {count} copies")))?;
        self.grow_jail(&parent, u64::from(count))?;
        let mut control = ControlSocket::connect(&parent.control_socket)
            .await
            .map_err(vmm_error(id))?;
        let children = control.fork(count).await.map_err(vmm_error(id))?;
        let parent_files = parent.files();
        let mut carried = Vec::new();
        for mut child in children {
            // The reply is the parent VMM's word: a child's files must be
            // in the parent's directory, or the backend would drive (and
            // kill) whatever the paths lead to.
            let paths_in_place = [Some(&child.control_socket), Some(&child.serial_log)]
                .into_iter()
                .chain(std::iter::once(child.vsock_uds.as_ref()))
                .flatten()
                .all(|p| vm::directly_in(p, &parent_files));
            if !paths_in_place {
                child.status = ChildStatus::Failed(
                    "the parent VMM reported files outside its directory".into(),
                );
            }
            let child_id = vm::new_id();
            // A new id, so nobody waits; held, as in create, until the
            // child's record is written and its agent told.
            let _child = self.locks.lock(&child_id).await;
            let dir = self.dir(&child_id);
            std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
            let mut lineage = vec![parent.id.clone()];
            lineage.extend(parent.lineage.iter().cloned());
            let started = matches!(child.status, ChildStatus::Started);
            let mut record = VmRecord {
                id: child_id.clone(),
                state: if started {
                    State::Running
                } else {
                    State::Crashed
                },
                // A jailed child's pid is in the jail's PID namespace; its
                // host pid comes from its control socket (`wait_ready`).
                pid: (started && parent.jail_group.is_none()).then_some(child.pid),
                control_socket: child.control_socket,
                vsock_uds: child.vsock_uds.unwrap_or_default(),
                serial_log: child.serial_log,
                env: parent.env.clone(),
                forked_from: Some(parent.id.clone()),
                lineage,
                snapshot: None,
                jail_group: parent.jail_group.clone(),
                readable: parent.readable.clone(),
                mem_mib: parent.mem_mib,
                vcpus: parent.vcpus,
            };
            if !paths_in_place {
                record.control_socket = PathBuf::new();
                record.vsock_uds = PathBuf::new();
                record.serial_log = PathBuf::new();
            }
            record.save(&dir)?;
            let note = match child.status {
                ChildStatus::Started => self.tell_forked(&mut record).await.err(),
                ChildStatus::Failed(error) => Some(error),
            };
            carried.push(Carried {
                sandbox: info(&record),
                kept: vec![Kept::Disk, Kept::Memory, Kept::Processes],
                note,
            });
        }
        Ok(carried)
    }

    /// Tell a fork's agent it was forked: own hostname, entropy, clock.
    async fn tell_forked(&self, record: &mut VmRecord) -> Result<(), String> {
        let Some(client) = self.wait_ready(record).await.map_err(|e| e.to_string())? else {
            return Ok(());
        };
        let mut entropy = vec![0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut entropy))
            .map_err(|e| e.to_string())?;
        client
            .forked(agent_proto::Forked {
                entropy,
                unix_time_ns: now_ns(),
                hostname: record.id.clone(),
            })
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn resume_vm(&self, id: &str) -> Result<Carried> {
        let mut record = self.load(id)?;
        let dir = self.dir(id);
        let all = vec![Kept::Disk, Kept::Memory, Kept::Processes];
        match (record.state, record.snapshot.clone()) {
            (State::Running, _) => {}
            (State::Paused, _) => {
                let mut control = ControlSocket::connect(&record.control_socket)
                    .await
                    .map_err(vmm_error(id))?;
                control.resume().await.map_err(vmm_error(id))?;
                record.state = State::Running;
                record.save(&dir)?;
            }
            (State::PausedToDisk, Some(snapshot)) => {
                for stale in [&record.control_socket, &record.vsock_uds] {
                    // Unlinks a link, never what it leads to.
                    let _ = std::fs::remove_file(stale);
                }
                // A jail of its own, whoever's it was in; records from
                // before the jail (nothing readable named) resume unconfined.
                let jail = if record.readable.is_empty() {
                    None
                } else {
                    self.prepare_jail(
                        &dir,
                        id,
                        &record.files(),
                        &record.readable,
                        record.mem_mib,
                        record.vcpus,
                    )?
                };
                record.jail_group = jail.as_ref().map(|_| id.to_owned());
                let args = vm::restore_args(&snapshot, &record);
                record.pid = Some(self.spawn(id, args, jail.as_deref())?);
                record.state = State::Running;
                record.save(&dir)?;
                let note = match self.wait_ready(&mut record).await? {
                    Some(client) => client
                        .resumed(agent_proto::Resumed {
                            unix_time_ns: now_ns(),
                        })
                        .await
                        .err()
                        .map(|e| e.to_string()),
                    None => None,
                };
                return Ok(Carried {
                    sandbox: info(&record),
                    kept: all,
                    note,
                });
            }
            _ => return Err(Self::wrong_state(&record, "paused")),
        }
        Ok(Carried {
            sandbox: info(&record),
            kept: all,
            note: None,
        })
    }

    async fn pause_vm(&self, id: &str, mode: PauseMode) -> Result<SandboxInfo> {
        let mut record = self.load(id)?;
        let dir = self.dir(id);
        match (mode, record.state) {
            (PauseMode::Memory, State::Paused) | (PauseMode::Disk, State::PausedToDisk) => {}
            (PauseMode::Memory, State::Running) => {
                let mut control = ControlSocket::connect(&record.control_socket)
                    .await
                    .map_err(vmm_error(id))?;
                control.pause().await.map_err(vmm_error(id))?;
                record.state = State::Paused;
            }
            (PauseMode::Disk, State::Running | State::Paused) => {
                self.clients().remove(id);
                let snapshot = record.files().join(format!("snapshot-{}", now_ns()));
                let mut control = ControlSocket::connect(&record.control_socket)
                    .await
                    .map_err(vmm_error(id))?;
                control
                    .pause_to_disk(&snapshot)
                    .await
                    .map_err(vmm_error(id))?;
                // The VMM exits once the snapshot is written.
                self.stop(&record).await;
                self.release_jail(&record).await;
                record.state = State::PausedToDisk;
                record.pid = None;
                record.snapshot = Some(snapshot);
            }
            _ => return Err(Self::wrong_state(&record, "running or paused")),
        }
        record.save(&dir)?;
        Ok(info(&record))
    }

    async fn destroy_vm(&self, id: &str) -> Result<()> {
        let record = self.load(id)?;
        self.stop(&record).await;
        self.release_jail(&record).await;
        let record_path = self.dir(id).join(vm::RECORD_FILE);
        std::fs::remove_file(&record_path).map_err(Error::io(&record_path))?;
        self.sweep(id)
    }

    /// Remove the directories no sandbox needs any more, `destroyed`'s
    /// among them. Other VMs' lifecycle changes run meanwhile: a VM with
    /// one in flight keeps its directory (a create or fork writes its
    /// record only after making the directory), and records are only read
    /// here, never rewritten, so a record being removed is not put back.
    fn sweep(&self, destroyed: &str) -> Result<()> {
        let _one = self.sweeping.lock().unwrap_or_else(|p| p.into_inner());
        let vms = self.vms();
        let live: Vec<VmRecord> = std::fs::read_dir(&vms)
            .map_err(Error::io(&vms))?
            .flatten()
            .filter_map(|entry| VmRecord::load(&entry.path()).ok())
            .collect();
        let in_flight = |id: &str| id != destroyed && self.locks.in_flight(id);
        for dir in vm::unneeded_dirs(&vms, &live, in_flight) {
            match std::fs::remove_dir_all(&dir) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io(&dir)(err));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn records(&self) -> Result<Vec<VmRecord>> {
        let vms = self.vms();
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&vms).map_err(Error::io(&vms))?.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            // A record that does not load is skipped here, as the
            // container backend does, and never collected.
            if let Ok(record) = self.load(&id) {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// Bytes of the VM's writable top layer, from its live disk chain.
    async fn disk_bytes(record: &VmRecord) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        let mut control = ControlSocket::connect(&record.control_socket).await.ok()?;
        let status = control.status().await.ok()?;
        // The VMM's word: only a layer in its own directory is measured.
        let top = status
            .disks
            .first()?
            .layers
            .last()
            .filter(|top| vm::directly_in(top, &record.files()))?;
        std::fs::symlink_metadata(top)
            .ok()
            .map(|m| m.blocks() * 512)
    }
}

impl Backend for MicrovmSandboxes {
    fn kind(&self) -> BackendKind {
        BackendKind::Microvm
    }

    fn create(&self, spec: Spec) -> BoxFuture<'_, Result<SandboxInfo>> {
        // Locks the new id itself, once it has one.
        Box::pin(async move { Ok(info(&self.create_vm(spec).await?)) })
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<SandboxInfo>> {
        Box::pin(async move { Ok(info(&self.load(id)?)) })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<SandboxInfo>>> {
        Box::pin(async move { Ok(self.records()?.iter().map(info).collect()) })
    }

    fn agent<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Agent>> {
        Box::pin(async move {
            let record = self.load(id)?;
            if record.state != State::Running {
                return Err(Self::wrong_state(&record, "running"));
            }
            let kept = self.clients().get(id).filter(|c| !c.is_closed()).cloned();
            let client = match kept {
                Some(client) => client,
                None => {
                    let client =
                        connect_agent(&record, self.config.agent_port, AGENT_CONNECT_TIMEOUT)
                            .await?;
                    self.clients().insert(id.to_owned(), client.clone());
                    client
                }
            };
            Ok(Agent {
                id: id.to_owned(),
                client,
                env: record.env,
            })
        })
    }

    fn agent_stream<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<AgentStream>> {
        Box::pin(async move {
            let record = self.load(id)?;
            if record.state != State::Running {
                return Err(Self::wrong_state(&record, "running"));
            }
            let io = connect_agent_stream(&record, self.config.agent_port, AGENT_CONNECT_TIMEOUT)
                .await?;
            Ok(AgentStream {
                io: Box::new(io),
                token: None,
                env: record.env,
            })
        })
    }

    fn pause<'a>(&'a self, id: &'a str, mode: PauseMode) -> BoxFuture<'a, Result<SandboxInfo>> {
        Box::pin(async move {
            let _vm = self.locks.lock(id).await;
            self.pause_vm(id, mode).await
        })
    }

    fn resume<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Carried>> {
        Box::pin(async move {
            let _vm = self.locks.lock(id).await;
            self.resume_vm(id).await
        })
    }

    fn fork<'a>(&'a self, id: &'a str, count: usize) -> BoxFuture<'a, Result<Vec<Carried>>> {
        Box::pin(async move {
            let _vm = self.locks.lock(id).await;
            self.fork_vm(id, count).await
        })
    }

    fn destroy<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let _vm = self.locks.lock(id).await;
            self.destroy_vm(id).await
        })
    }

    fn stats<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Stats>> {
        Box::pin(async move {
            let record = self.load(id)?;
            let (memory_bytes, cpu_usage_ns) = record.pid.map_or((0, 0), vm::usage);
            let disk_bytes = match record.state {
                State::Running | State::Paused => Self::disk_bytes(&record).await,
                _ => None,
            };
            let saved_bytes = match (record.state, &record.snapshot) {
                (State::PausedToDisk, Some(snapshot)) => Some(vm::allocated_bytes(snapshot)),
                _ => None,
            };
            Ok(Stats {
                state: record.state,
                memory_bytes,
                cpu_usage_ns,
                disk_bytes,
                saved_bytes,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;

    use super::locks::poll_once;
    use super::*;

    #[tokio::test]
    async fn a_change_of_one_vm_waits_for_that_vm_only() {
        let data = std::env::temp_dir().join(format!("sandbox-vm-locks-{}", std::process::id()));
        let backend =
            MicrovmSandboxes::open(MicrovmConfig::new(&data, "/no-kernel")).expect("open");
        let booting = backend.locks.lock("vm-a").await;
        // vm-b does not exist: its destroy fails at once, vm-a busy or not.
        let other = tokio::time::timeout(Duration::from_secs(10), backend.destroy("vm-b"))
            .await
            .expect("vm-b's change is not held up by vm-a's");
        assert!(matches!(other, Err(Error::NotFound(_))), "{other:?}");
        let mut same = pin!(backend.destroy("vm-a"));
        assert!(
            poll_once(same.as_mut()).is_pending(),
            "ran during vm-a's change"
        );
        drop(booting);
        let same = tokio::time::timeout(Duration::from_secs(10), same)
            .await
            .expect("runs once vm-a's change is done");
        assert!(matches!(same, Err(Error::NotFound(_))), "{same:?}");
        assert!(backend.locks.is_empty());
        std::fs::remove_dir_all(&data).expect("clean up");
    }
}
