//! Dev servers: the `dev_server` of `POST /v1/vms` (`{ "command", "port" }`)
//! started in the sandbox, watched, and restarted when it dies.
//!
//! A supervisor looks at every VM with a dev server once a second:
//!
//! 1. It only looks at a VM that runs and that no lifecycle operation holds
//!    (it tries the VM's lock and skips the tick when taken), and it does
//!    not count as traffic: a VM with a dev server still idles, pauses and
//!    resumes like any other.
//! 2. Not started (or dead) and its backoff elapsed: start it as one of the
//!    VM's background processes (`Sandboxes::spawn`: its own process
//!    group, output kept by the agent, listed and read at
//!    `/v1/vms/{id}/processes`), in `/workspace`, with the sandbox's
//!    network environment; state `starting`.
//! 3. Started: alive (the agent lists it without an exit) and the port
//!    answers → `running`, backoff back to 1 s; alive but not answering →
//!    `starting`.
//! 4. Dead: `restarts` + 1, the tail of its output kept as `last_output`,
//!    state `backoff` until the next attempt; the wait doubles from 1 s up
//!    to [`MAX_BACKOFF`].
//!
//! The state lives in the forge's memory: after a forge restart a VM's dev
//! server is unknown to it (the process, if alive, keeps serving). A fork
//! inherits its parent's dev server (adopted when its port answers).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use api_types::DevServerState;
pub use api_types::vms::{DevServerSpec, DevServerStatus};

/// How much of a dead dev server's output is kept as `last_output`.
const LAST_OUTPUT_BYTES: u64 = 2000;
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Entry {
    spec: DevServerSpec,
    pid: Option<u32>,
    state: DevServerState,
    restarts: u32,
    backoff: Duration,
    next_start: Instant,
    last_output: Option<String>,
}

impl Entry {
    fn new(spec: DevServerSpec) -> Self {
        Self {
            spec,
            pid: None,
            state: DevServerState::Starting,
            restarts: 0,
            backoff: FIRST_BACKOFF,
            next_start: Instant::now(),
            last_output: None,
        }
    }
}

/// The dev servers of every VM.
#[derive(Debug, Default)]
pub struct DevServers {
    entries: Mutex<HashMap<String, Entry>>,
}

/// What the supervisor should do for one VM this tick.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Start it (`argv` runs in the sandbox and prints the pid).
    Start(Vec<String>),
    /// Check that `pid` lives and `port` answers.
    Check {
        pid: Option<u32>,
        port: u16,
    },
    Wait,
}

/// The background process that runs `command` in `/workspace` (or `/`
/// where there is none); the command is an argument, never spliced into
/// the script.
pub fn start_argv(command: &str) -> Vec<String> {
    let script = "cd /workspace 2>/dev/null || cd /; exec sh -c \"$0\"";
    vec![
        "sh".into(),
        "-c".into(),
        script.to_owned(),
        command.to_owned(),
    ]
}

impl DevServers {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // Plain values: a panic cannot leave the map inconsistent.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add(&self, vm: &str, spec: DevServerSpec) {
        self.entries().insert(vm.to_owned(), Entry::new(spec));
    }

    /// A fork's copy of its parent's dev server, adopted if it answers.
    pub fn inherit(&self, parent: &str, child: &str) {
        let spec = self.entries().get(parent).map(|e| e.spec.clone());
        if let Some(spec) = spec {
            let mut entry = Entry::new(spec);
            entry.pid = self.entries().get(parent).and_then(|e| e.pid);
            self.entries().insert(child.to_owned(), entry);
        }
    }

    pub fn remove(&self, vm: &str) {
        self.entries().remove(vm);
    }

    pub fn vms(&self) -> Vec<String> {
        self.entries().keys().cloned().collect()
    }

    pub fn spec(&self, vm: &str) -> Option<DevServerSpec> {
        self.entries().get(vm).map(|e| e.spec.clone())
    }

    pub fn status(&self, vm: &str) -> Option<DevServerStatus> {
        let entries = self.entries();
        let entry = entries.get(vm)?;
        let restart_in_ms = (entry.state == DevServerState::Backoff).then(|| {
            entry
                .next_start
                .saturating_duration_since(Instant::now())
                .as_millis() as u64
        });
        Some(DevServerStatus {
            command: entry.spec.command.clone(),
            port: entry.spec.port,
            state: entry.state,
            pid: entry.pid,
            restarts: entry.restarts,
            restart_in_ms,
            last_output: entry.last_output.clone(),
        })
    }

    /// What to do for `vm` now.
    pub fn step(&self, vm: &str) -> Step {
        let entries = self.entries();
        let Some(entry) = entries.get(vm) else {
            return Step::Wait;
        };
        if entry.pid.is_some() || entry.state == DevServerState::Running {
            return Step::Check {
                pid: entry.pid,
                port: entry.spec.port,
            };
        }
        if Instant::now() >= entry.next_start {
            Step::Start(start_argv(&entry.spec.command))
        } else {
            Step::Wait
        }
    }

    /// The VM does not run just now.
    pub fn paused(&self, vm: &str) {
        if let Some(entry) = self.entries().get_mut(vm) {
            entry.state = DevServerState::Paused;
        }
    }

    pub fn started(&self, vm: &str, pid: Option<u32>) {
        if let Some(entry) = self.entries().get_mut(vm) {
            entry.pid = pid;
            entry.state = DevServerState::Starting;
        }
    }

    /// Result of a check: whether the process lives and the port answers.
    pub fn checked(&self, vm: &str, alive: bool, answers: bool) {
        if let Some(entry) = self.entries().get_mut(vm) {
            entry.state = match (alive, answers) {
                (true, true) => {
                    entry.backoff = FIRST_BACKOFF;
                    DevServerState::Running
                }
                (true, false) => DevServerState::Starting,
                (false, _) => DevServerState::Dead,
            };
        }
    }

    /// It died: back off before the next start.
    pub fn died(&self, vm: &str, last_output: Option<String>) {
        if let Some(entry) = self.entries().get_mut(vm) {
            entry.pid = None;
            entry.state = DevServerState::Backoff;
            entry.restarts += 1;
            entry.next_start = Instant::now() + entry.backoff;
            entry.backoff = (entry.backoff * 2).min(MAX_BACKOFF);
            entry.last_output = last_output;
            tracing::warn!(vm, restarts = entry.restarts, command = %entry.spec.command, "dev server died; restarting after backoff");
        }
    }
}

/// One look at every VM's dev server (see the module docs).
pub(super) async fn supervise_all(sandboxes: &super::Sandboxes) {
    for vm in sandboxes.dev_servers.vms() {
        if let Err(error) = supervise(sandboxes, &vm).await {
            tracing::debug!(vm, error = %error, "dev server check failed");
        }
    }
}

async fn supervise(sandboxes: &super::Sandboxes, vm: &str) -> Result<(), super::VmError> {
    use ::sandbox::Command;
    let servers = &sandboxes.dev_servers;
    let (backend, _) = sandboxes.ready()?;
    let lock = sandboxes.lock_of(vm);
    // A lifecycle operation holds the VM: look next time.
    let Ok(_held) = lock.try_read_owned() else {
        return Ok(());
    };
    let Some(row) = sandboxes.store.vm(vm).await? else {
        servers.remove(vm);
        return Ok(());
    };
    if row.state != api_types::VmState::Running {
        servers.paused(vm);
        return Ok(());
    }
    sandboxes.link(vm, &row).await?;
    match servers.step(vm) {
        Step::Wait => {}
        Step::Start(argv) => {
            let agent = backend.agent(vm).await?;
            let pid = agent
                .spawn(sandboxes.with_network_env(Command::new(argv)))
                .await?;
            tracing::info!(vm, pid, "dev server started");
            servers.started(vm, Some(pid));
        }
        Step::Check { pid, port } => {
            let agent = backend.agent(vm).await?;
            let process = match pid {
                Some(pid) => agent
                    .processes()
                    .await?
                    .into_iter()
                    .find(|process| process.pid == pid),
                None => None,
            };
            let alive = match pid {
                Some(_) => process.as_ref().is_some_and(|p| p.exit.is_none()),
                // Adopted from a parent: only its port speaks for it.
                None => true,
            };
            let answers = backend.open_port(vm, port).await.is_ok();
            servers.checked(vm, alive, answers);
            if !alive || (pid.is_none() && !answers) {
                let last = match &process {
                    Some(process) => last_output(&agent, process).await,
                    None => None,
                };
                servers.died(vm, last);
            }
        }
    }
    Ok(())
}

/// The end of a dead dev server's output, if the agent still has it.
async fn last_output(
    agent: &::sandbox::Agent,
    process: &agent_proto::ProcessInfo,
) -> Option<String> {
    let from = process.output_bytes.saturating_sub(LAST_OUTPUT_BYTES);
    let mut output = agent.process_output(process.pid, from, false).await.ok()?;
    let mut bytes = Vec::new();
    let read = async {
        while let Ok(Some(chunk)) = output.next_chunk().await {
            bytes.extend(chunk);
            if bytes.len() as u64 > 2 * LAST_OUTPUT_BYTES {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DevServerSpec {
        DevServerSpec {
            command: "bun run dev".into(),
            port: 3000,
        }
    }

    #[test]
    fn a_dead_server_backs_off_doubling_then_starts_again() {
        let servers = DevServers::default();
        servers.add("vm", spec());
        assert!(matches!(servers.step("vm"), Step::Start(_)));
        servers.started("vm", Some(42));
        assert_eq!(
            servers.step("vm"),
            Step::Check {
                pid: Some(42),
                port: 3000
            }
        );
        servers.checked("vm", true, true);
        assert_eq!(
            servers.status("vm").expect("known").state,
            DevServerState::Running
        );
        servers.died("vm", Some("boom".into()));
        let status = servers.status("vm").expect("known");
        assert_eq!(
            (status.state, status.restarts),
            (DevServerState::Backoff, 1)
        );
        assert!(status.restart_in_ms.expect("waiting") <= 1000);
        assert_eq!(servers.step("vm"), Step::Wait);
        servers.died("vm", None);
        servers.died("vm", None);
        let waits = servers.status("vm").expect("known").restart_in_ms;
        assert!(waits.expect("waiting") > 2000, "{waits:?}");
        servers.remove("vm");
        assert!(servers.status("vm").is_none());
    }

    #[test]
    fn the_command_is_passed_as_an_argument_not_spliced() {
        let argv = start_argv("echo 'quoted' \"$HOME\"");
        assert_eq!(argv[3], "echo 'quoted' \"$HOME\"");
        assert!(argv[2].contains("exec sh -c \"$0\""));
    }
}
