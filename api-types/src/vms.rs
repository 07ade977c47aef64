//! `/v1/vms` and `/v1/system`: creating, listing, showing, running commands
//! in, forking, pausing and resuming sandboxes ("VMs" in the API).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::states::{DevServerState, VmState};

/// `POST /v1/vms`. Every field is optional; the server picks the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVm {
    /// `owner/name`: `/workspace` holds a checkout of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// Needs `repo`; the repository's default branch when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_mib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_mib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistence: Option<Persistence>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev_server: Option<DevServerSpec>,
    /// Up to 32 `key: value` pairs to find the VM by (`GET
    /// /v1/vms?label=key:value`); forks inherit them. Keys: letters,
    /// digits, `.`, `_`, `-`, `/` (at most 63); values at most 256 bytes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Labels the sandbox node that runs it must have (`forge node run
    /// --label`; every node also has `backend`: `container` or `microvm`),
    /// e.g. `{"zone": "a"}`. Not with `snapshot` or `template`: those VMs
    /// run on their snapshot's node.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_labels: BTreeMap<String, String>,
    /// Destroy the VM this many seconds after it is created, whatever its
    /// activity (at most 30 days); `POST /v1/vms/{id}/timeout` moves it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// Start from this template (its name) instead of the default image;
    /// sizes, environment and server come from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Start from this snapshot (its name or id): its files and, where it
    /// kept them, its running processes. Sizes come from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

/// What becomes of an idle VM: `{"type": "persistent" | "ephemeral"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Persistence {
    #[serde(rename = "type")]
    pub kind: PersistenceKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PersistenceKind {
    /// Destroyed when idle.
    Ephemeral,
    /// Paused to disk when idle.
    Persistent,
}

impl Persistence {
    pub const fn of(persistent: bool) -> Self {
        Self {
            kind: if persistent {
                PersistenceKind::Persistent
            } else {
                PersistenceKind::Ephemeral
            },
        }
    }

    pub const fn is_persistent(self) -> bool {
        matches!(self.kind, PersistenceKind::Persistent)
    }
}

/// A dev server to start, watch and restart in the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevServerSpec {
    pub command: String,
    pub port: u16,
}

/// What the API shows of a dev server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DevServerStatus {
    pub command: String,
    pub port: u16,
    pub state: DevServerState,
    /// Its session id inside the sandbox, while started.
    pub pid: Option<u32>,
    pub restarts: u32,
    /// Milliseconds until the next start, in `backoff`.
    pub restart_in_ms: Option<u64>,
    /// The end of its output when it last died.
    pub last_output: Option<String>,
}

/// A VM as every VM endpoint shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VmView {
    pub id: String,
    pub state: VmState,
    /// `container` or `microvm`.
    pub backend: String,
    /// `owner/name` of the repository checked out in it.
    pub repo: Option<String>,
    pub branch: Option<String>,
    /// The VM it was forked from.
    pub parent: Option<String>,
    pub vcpus: i64,
    pub mem_mib: i64,
    pub persistence: Persistence,
    pub idle_timeout_secs: Option<i64>,
    pub created_at: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// When the VM is destroyed whatever its activity (RFC 3339); `null`:
    /// never.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// The template it started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// The snapshot (id) it started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev_server: Option<DevServerStatus>,
    /// Where the dev server is seen, when the VM has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_url: Option<String>,
    /// Paused to disk on a node: the size in bytes of its copy in the
    /// snapshot store (`forge serve --snapshot-store`), once uploaded.
    /// With it, the VM resumes on another node if its own is lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<i64>,
}

/// `GET /v1/vms/{id}`: the view, usage while it holds resources, and its
/// egress counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VmDetail {
    #[serde(flatten)]
    pub vm: VmView,
    /// `None` unless running or paused in memory.
    pub stats: Option<VmStats>,
    pub egress: EgressUsage,
}

/// Usage of one sandbox, as its backend measures it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VmStats {
    pub state: VmState,
    pub memory_bytes: u64,
    pub cpu_usage_ns: u64,
    pub disk_bytes: Option<u64>,
}

/// The VM's traffic through the egress proxy since the forge started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EgressUsage {
    pub connections: u64,
    pub refused: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
}

/// What a fork or a resume carried over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kept {
    Disk,
    Memory,
    Processes,
}

/// A VM after a fork or a resume, and what it kept of its source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CarriedVm {
    #[serde(flatten)]
    pub vm: VmView,
    pub kept: Vec<Kept>,
    /// Why less than everything was kept, when the backend knows.
    pub note: Option<String>,
}

/// `POST /v1/vms/{id}/move`: where a VM paused to disk goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    /// The node's name; by default the up node (other than its own, of
    /// the same backend) with the most memory free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A VM moved to another node and resumed there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MovedVm {
    #[serde(flatten)]
    pub carried: CarriedVm,
    /// The node that holds it now.
    pub node: String,
}

/// `POST /v1/vms/{id}/exec`: exactly one of `command` (a shell script)
/// and `argv`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// `POST /v1/vms/{id}/processes`: a background process, exactly one of
/// `command` (a shell script) and `argv`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartProcess {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// Whether a background process still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    Running,
    Exited,
}

/// A background process of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProcessView {
    pub pid: u32,
    pub command: String,
    pub state: ProcessState,
    /// Once exited: the code, or 128 + the signal that ended it.
    pub exit_code: Option<i32>,
    /// RFC 3339.
    pub started_at: String,
    /// Bytes it printed (stdout and stderr together).
    pub output_bytes: u64,
    /// Of those, the oldest no longer kept (the VM keeps the last MiB).
    pub output_dropped: u64,
}

/// `POST /v1/vms/{id}/processes/{pid}/signal`: `TERM`, `KILL`, `INT`,
/// `HUP`, `QUIT`, `USR1`, `USR2`, `STOP` or `CONT` (with or without `SIG`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    pub signal: String,
}

/// How a command ended: the answer's head, and the `exit` event of a
/// streamed exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecExit {
    /// 128 + the signal when a signal ended it.
    pub exit_code: i32,
    pub duration_ms: u64,
    /// Output beyond the limit was dropped.
    pub truncated: bool,
    pub timed_out: bool,
}

/// The answer of a (not streamed) exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecOutput {
    #[serde(flatten)]
    pub exit: ExecExit,
    /// Invalid UTF-8 replaced.
    pub stdout: String,
    pub stderr: String,
}

/// The `stdout` and `stderr` events of a streamed exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecText {
    pub text: String,
}

/// The `error` event of a streamed exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecFailure {
    pub message: String,
}

/// One entry of a directory listing (`GET /v1/vms/{id}/files/{dir}/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileEntry {
    pub name: String,
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub modified_unix_ms: i64,
    /// Where a symlink points (it is never followed).
    pub link_target: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    /// A device, socket or pipe.
    Other,
}

/// `POST /v1/vms/{id}/terminal/tickets`: a one-time ticket that opens the
/// VM's terminal WebSocket (`?ticket=`) without a token in the URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TerminalTicket {
    pub ticket: String,
    pub expires_in_secs: u64,
}

/// `POST /v1/vms/{id}/ports/{port}/links`: a link to the VM's server on
/// `port` that works without a token for `ttl_secs` (default an hour).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShareLinkRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

/// The answer to a [`ShareLinkRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ShareLink {
    pub url: String,
    /// RFC 3339.
    pub expires_at: Option<String>,
    pub ttl_secs: u64,
}

/// `POST /v1/vms/{id}/fork`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    /// Set on every copy, over the labels it inherits from its parent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The copies' deadline from now; without it they keep the parent's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

/// `POST /v1/vms/{id}/timeout`: the VM's deadline becomes `ttl_secs` from
/// now (longer or shorter than it was); `null` removes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeoutRequest {
    /// Required; `null` to remove the deadline (a missing field is an
    /// error, not a removal).
    #[serde(deserialize_with = "Option::deserialize")]
    pub ttl_secs: Option<u64>,
}

/// The answer to a fork.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Forks {
    pub forks: Vec<CarriedVm>,
}

/// `POST /v1/vms/{id}/pause`; no body is a pause in memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PauseRequest {
    #[serde(default)]
    pub to_disk: bool,
}

/// `GET /v1/system`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct System {
    pub version: String,
    pub sandboxes: SandboxSystem,
}

/// The sandbox backend, its limits and its queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SandboxSystem {
    /// `None` when no backend can run; `reason` says why.
    pub backend: Option<String>,
    pub reason: String,
    /// The guest image's root directory.
    pub image: Option<String>,
    pub limits: SandboxLimits,
    pub queue: SandboxQueue,
    /// Sandboxes kept ready for creates (`--warm-pool`).
    #[serde(default)]
    pub warm_pool: WarmPoolStatus,
}

/// The warm pools: how many sandboxes of the forge's image the default
/// pool keeps and how many are ready now, and the same for each template's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WarmPoolStatus {
    pub target: usize,
    pub ready: usize,
    #[serde(default)]
    pub templates: Vec<TemplatePoolStatus>,
}

/// A template's warm pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TemplatePoolStatus {
    pub template: String,
    pub target: usize,
    pub ready: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SandboxLimits {
    pub max_live: usize,
    pub max_vcpus: u8,
    pub max_mem_mib: u64,
    pub max_disk_mib: u64,
    pub max_fork_count: usize,
    pub max_live_per_token: Option<usize>,
    /// `None`: no cap on the memory of live VMs together.
    pub max_live_mem_mib: Option<u64>,
    pub max_file_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SandboxQueue {
    pub waiting: usize,
    pub max_wait_secs: u64,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn vm() -> VmView {
        VmView {
            id: "vm1".into(),
            state: VmState::PausedToDisk,
            backend: "container".into(),
            repo: Some("acme/web".into()),
            branch: Some("main".into()),
            parent: None,
            vcpus: 1,
            mem_mib: 512,
            persistence: Persistence::of(true),
            idle_timeout_secs: None,
            created_at: "2026-01-01T00:00:00Z".into(),
            labels: BTreeMap::from([("team".into(), "web".into())]),
            expires_at: None,
            template: None,
            snapshot: None,
            dev_server: None,
            preview_url: None,
            stored_bytes: None,
        }
    }

    #[test]
    fn a_vm_without_dev_server_has_neither_dev_server_nor_preview_url() {
        assert_eq!(
            serde_json::to_value(vm()).expect("serialises"),
            json!({
                "id": "vm1", "state": "paused_to_disk", "backend": "container",
                "repo": "acme/web", "branch": "main", "parent": null, "vcpus": 1,
                "mem_mib": 512, "persistence": { "type": "persistent" },
                "idle_timeout_secs": null, "created_at": "2026-01-01T00:00:00Z",
                "labels": { "team": "web" }, "expires_at": null,
            })
        );
    }

    #[test]
    fn a_dev_server_shows_its_state_and_preview() {
        let mut vm = vm();
        vm.dev_server = Some(DevServerStatus {
            command: "bun run dev".into(),
            port: 3000,
            state: DevServerState::Backoff,
            pid: None,
            restarts: 2,
            restart_in_ms: Some(4000),
            last_output: Some("boom".into()),
        });
        vm.preview_url = Some("http://vm1-3000.preview.test/".into());
        let value = serde_json::to_value(&vm).expect("serialises");
        assert_eq!(value["dev_server"]["state"], "backoff");
        assert_eq!(value["preview_url"], "http://vm1-3000.preview.test/");
        let back: VmView = serde_json::from_value(value).expect("deserialises");
        assert_eq!(back, vm);
    }

    #[test]
    fn details_and_forks_extend_the_view_at_its_top_level() {
        let detail = VmDetail {
            vm: vm(),
            stats: None,
            egress: EgressUsage::default(),
        };
        let value = serde_json::to_value(&detail).expect("serialises");
        assert_eq!(value["id"], "vm1");
        assert_eq!(value["stats"], json!(null));
        assert_eq!(value["egress"]["bytes_in"], 0);
        let forks = Forks {
            forks: vec![CarriedVm {
                vm: vm(),
                kept: vec![Kept::Disk, Kept::Memory, Kept::Processes],
                note: None,
            }],
        };
        let value = serde_json::to_value(&forks).expect("serialises");
        assert_eq!(
            value["forks"][0]["kept"],
            json!(["disk", "memory", "processes"])
        );
        assert_eq!(value["forks"][0]["note"], json!(null));
        assert_eq!(value["forks"][0]["state"], "paused_to_disk");
        let back: Forks = serde_json::from_value(value).expect("deserialises");
        assert_eq!(back, forks);
    }

    #[test]
    fn requests_refuse_unknown_fields_and_default_the_rest() {
        assert!(serde_json::from_value::<CreateVm>(json!({ "cpus": 2 })).is_err());
        let create: CreateVm =
            serde_json::from_value(json!({ "persistence": { "type": "ephemeral" } }))
                .expect("a valid request");
        assert_eq!(create.persistence, Some(Persistence::of(false)));
        assert!(create.env.is_empty());
        let pause: PauseRequest = serde_json::from_value(json!({})).expect("empty pause");
        assert!(!pause.to_disk);
        assert_eq!(
            serde_json::to_value(ExecRequest {
                argv: Some(vec!["true".into()]),
                ..ExecRequest::default()
            })
            .expect("serialises"),
            json!({ "argv": ["true"] })
        );
    }

    #[test]
    fn an_exec_answer_is_flat() {
        let output = ExecOutput {
            exit: ExecExit {
                exit_code: 137,
                duration_ms: 5,
                truncated: false,
                timed_out: true,
            },
            stdout: "out".into(),
            stderr: String::new(),
        };
        assert_eq!(
            serde_json::to_value(output).expect("serialises"),
            json!({ "exit_code": 137, "duration_ms": 5, "truncated": false,
                    "timed_out": true, "stdout": "out", "stderr": "" })
        );
    }
}
