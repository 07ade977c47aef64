//! An in-memory [`Backend`] for tests of what is built on sandboxes (the
//! forge's API, its pipelines): no root, no cgroups, no guest image, and
//! every timing in the test's hands. Enabled by the `testing` feature.
//!
//! [`MemorySandboxes`] keeps its sandboxes in a map and follows the state
//! rules of the real backends, taking the stricter one where they differ
//! (an operation the in-memory backend accepts, both real ones accept):
//!
//! | operation          | needs                      | then                     |
//! |--------------------|----------------------------|--------------------------|
//! | `pause(Memory)`    | running, or paused (no-op) | paused                   |
//! | `pause(Disk)`      | running or paused; paused to disk is a no-op | paused to disk |
//! | `resume`           | running (no-op), paused or paused to disk | running   |
//! | `fork`             | running, `count >= 1`      | `count` running copies   |
//! | `agent`, `exec`    | running                    |                          |
//!
//! Anything else is [`Error::WrongState`] naming what was needed, an unknown
//! id is [`Error::NotFound`], a zero-sized spec or fork is
//! [`Error::Invalid`]. A crash is simulated with [`MemorySandboxes::crash`].
//! What each operation keeps: a fork and a resume from memory keep disk,
//! memory and processes; a resume from disk keeps the disk (the files)
//! only, with a note saying so.
//!
//! Exec, files and ports go through a real [`Agent`]: `agent()` connects an
//! `agent_proto::Client` to an in-process agent ([`agent`]) over an
//! in-memory pipe, so the host side (confinement, output limits, stream
//! cancellation on drop) is the production code. That agent answers execs
//! with scripted [`Reply`]s ([`MemorySandboxes::respond`],
//! [`MemorySandboxes::respond_to`]; a command nothing answers exits 127),
//! keeps files in a map per sandbox (copied by a fork, kept by a pause),
//! accepts `Listen` (the forge's network link) without ever accepting a
//! connection, and refuses `OpenPort`. Pausing to disk, crashing and
//! destroying a sandbox close its agent connections, as the real backends'
//! processes die.
//!
//! Tests control time with [`Gate`]s: [`MemorySandboxes::hold`] makes every
//! later call of an [`Operation`] (or, with [`MemorySandboxes::hold_on`],
//! of one sandbox) wait at the gate until the test opens it, and
//! [`Gate::arrived`] says when one is waiting, so an operation can be held
//! in flight without sleeping. An exec waits after its process started (a
//! streaming caller already has it), and a `Cancel` from the host ends it
//! there. [`MemorySandboxes::fail_next`] makes the next call of an
//! operation fail with a given error. [`MemorySandboxes::calls`] and
//! [`MemorySandboxes::execs`] record what was done, in order.

mod agent;
mod files;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use agent_proto::ExitStatus;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::agent::{Agent, ExecStream};
use crate::error::{Error, Result};
use crate::spec::{
    BackendKind, Carried, Command, Kept, PauseMode, SandboxInfo, Spec, State, Stats,
};
use crate::{Backend, BoxFuture};

pub use files::Files;

/// What a [`Gate`] holds, or [`MemorySandboxes::fail_next`] fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Create,
    Pause,
    Resume,
    Fork,
    Destroy,
    /// An exec (or a streamed one), held after its process started.
    Exec,
}

/// What an exec asked for, as the agent received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub sandbox: String,
    pub argv: Vec<String>,
    /// The sandbox's environment, then the command's.
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub stdin: Vec<u8>,
    /// Whether it runs on a pseudo-terminal.
    pub pty: bool,
}

impl Invocation {
    /// The script of `/bin/sh -c <script>`, else the argv joined by spaces:
    /// what [`MemorySandboxes::respond_to`] matches.
    pub fn script(&self) -> String {
        match self.argv.as_slice() {
            [sh, c, script] if sh == "/bin/sh" && c == "-c" => script.clone(),
            argv => argv.join(" "),
        }
    }

    /// The value of `key` in the environment the process sees.
    pub fn env(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// What a scripted exec prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Printed as soon as the process starts, before a gate holds it.
    pub early: Vec<u8>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: ExitStatus,
}

impl Reply {
    /// Exit 0 after printing `stdout`.
    pub fn ok(stdout: impl Into<Vec<u8>>) -> Self {
        Self {
            early: Vec::new(),
            stdout: stdout.into(),
            stderr: Vec::new(),
            status: ExitStatus::Code(0),
        }
    }

    /// Exit with `code`, printing nothing.
    pub fn exit(code: i32) -> Self {
        Self {
            early: Vec::new(),
            stdout: Vec::new(),
            stderr: Vec::new(),
            status: ExitStatus::Code(code),
        }
    }

    /// Prints `early` on stdout as soon as it starts, before the gate of
    /// [`MemorySandboxes::hold_exec`] holds it (a step that says something,
    /// then works for a while).
    pub fn early(mut self, early: impl Into<Vec<u8>>) -> Self {
        self.early = early.into();
        self
    }

    pub fn stderr(mut self, stderr: impl Into<Vec<u8>>) -> Self {
        self.stderr = stderr.into();
        self
    }
}

/// How a recorded exec ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Exited(ExitStatus),
    /// The host cancelled it (dropped the stream or sent `Cancel`).
    Cancelled,
    /// Its timeout passed while it was held at a gate.
    TimedOut,
}

/// An exec the agent started, and how it ended (`None`: still running).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRecord {
    pub invocation: Invocation,
    pub ending: Option<Ending>,
}

/// A lifecycle operation that took effect, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub operation: Operation,
    pub sandbox: String,
}

type Responder = Arc<dyn Fn(&Invocation) -> Option<Reply> + Send + Sync>;
type Matcher = Arc<dyn Fn(&Invocation) -> bool + Send + Sync>;
/// A gate of one operation, on one sandbox or (`None`) on all.
type GateKey = (Operation, Option<String>);

/// A point where operations wait until the test opens it.
#[derive(Debug)]
struct GateState {
    open: watch::Sender<bool>,
    arrived: watch::Sender<usize>,
}

impl GateState {
    fn new() -> Self {
        Self {
            open: watch::Sender::new(false),
            arrived: watch::Sender::new(0),
        }
    }

    /// Counts the caller in, then waits until the gate is open.
    async fn pass(&self) {
        self.arrived.send_modify(|n| *n += 1);
        let mut open = self.open.subscribe();
        // The sender lives in `self`, so the channel cannot close here.
        let _ = open.wait_for(|open| *open).await;
    }
}

/// A test's handle on a gate. Dropping it opens the gate, so a failing test
/// does not leave operations waiting.
#[derive(Debug)]
pub struct Gate {
    state: Arc<GateState>,
}

impl Gate {
    /// Waits until `count` operations have reached the gate in all.
    pub async fn arrived(&self, count: usize) {
        let mut arrived = self.state.arrived.subscribe();
        let _ = arrived.wait_for(|n| *n >= count).await;
    }

    /// How many operations have reached the gate so far.
    pub fn count(&self) -> usize {
        *self.state.arrived.borrow()
    }

    /// Lets every waiting and later operation through.
    pub fn open(&self) {
        self.state.open.send_replace(true);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.open();
    }
}

/// One sandbox of the map.
struct Entry {
    info: SandboxInfo,
    mem_mib: u64,
    env: Vec<(String, String)>,
    files: Files,
    /// The kept connection to its agent, and the tasks serving it.
    client: Option<agent_proto::Client>,
    connections: Vec<JoinHandle<()>>,
}

impl Entry {
    /// Its processes die: every agent connection ends.
    fn disconnect(&mut self) {
        self.client = None;
        for task in self.connections.drain(..) {
            task.abort();
        }
    }
}

pub(crate) struct Inner {
    kind: BackendKind,
    sandboxes: Mutex<HashMap<String, Entry>>,
    next_id: AtomicU64,
    next_pid: AtomicU32,
    gates: Mutex<HashMap<GateKey, Arc<GateState>>>,
    /// Gates of the execs a matcher picks, asked before the others.
    exec_gates: Mutex<Vec<(Matcher, Arc<GateState>)>>,
    failures: Mutex<HashMap<Operation, VecDeque<Error>>>,
    responders: Mutex<Vec<Responder>>,
    calls: Mutex<Vec<Call>>,
    execs: Mutex<Vec<ExecRecord>>,
}

/// Locks `mutex`; the maps here hold plain values, so a panic elsewhere
/// cannot leave them inconsistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    fn sandboxes(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        lock(&self.sandboxes)
    }

    /// The sandbox's state, or `NotFound`.
    fn state(&self, id: &str) -> Result<State> {
        self.sandboxes()
            .get(id)
            .map(|e| e.info.state)
            .ok_or_else(|| Error::NotFound(id.to_owned()))
    }

    /// Waits at the gate of `operation` on `id` (or of every sandbox), if
    /// one is installed.
    async fn gate(&self, operation: Operation, id: Option<&str>) {
        let gate = {
            let gates = lock(&self.gates);
            id.and_then(|id| gates.get(&(operation, Some(id.to_owned()))))
                .or_else(|| gates.get(&(operation, None)))
                .cloned()
        };
        if let Some(gate) = gate {
            gate.pass().await;
        }
    }

    /// Waits at the gate of the exec `invocation`, if one is installed:
    /// a matcher's first, else that of [`Operation::Exec`].
    async fn exec_gate(&self, invocation: &Invocation) {
        let matched = lock(&self.exec_gates)
            .iter()
            .rev()
            .find(|(matching, _)| matching(invocation))
            .map(|(_, gate)| gate.clone());
        match matched {
            Some(gate) => gate.pass().await,
            None => self.gate(Operation::Exec, Some(&invocation.sandbox)).await,
        }
    }

    /// The injected failure of `operation`, if one is queued.
    fn failure(&self, operation: Operation) -> Result<()> {
        match lock(&self.failures)
            .get_mut(&operation)
            .and_then(VecDeque::pop_front)
        {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Gate, then injected failure: what every operation goes through first.
    async fn enter(&self, operation: Operation, id: Option<&str>) -> Result<()> {
        self.gate(operation, id).await;
        self.failure(operation)
    }

    fn record(&self, operation: Operation, id: &str) {
        lock(&self.calls).push(Call {
            operation,
            sandbox: id.to_owned(),
        });
    }

    fn reply(&self, invocation: &Invocation) -> Reply {
        let responders = lock(&self.responders).clone();
        responders
            .iter()
            .rev()
            .find_map(|respond| respond(invocation))
            .unwrap_or_else(|| {
                Reply::exit(127).stderr(format!(
                    "in-memory sandbox: nothing answers `{}`\n",
                    invocation.script()
                ))
            })
    }

    fn new_id(&self) -> String {
        format!("sb{:012x}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn wrong_state(id: &str, state: State, needed: &'static str) -> Error {
        Error::WrongState {
            id: id.to_owned(),
            state,
            needed,
        }
    }
}

/// Sandboxes kept in memory; cheap to clone (clones share the sandboxes).
#[derive(Clone)]
pub struct MemorySandboxes {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemorySandboxes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemorySandboxes")
            .field("kind", &self.inner.kind)
            .field("sandboxes", &self.inner.sandboxes().len())
            .finish()
    }
}

impl Default for MemorySandboxes {
    fn default() -> Self {
        Self::new()
    }
}

const ALL: [Kept; 3] = [Kept::Disk, Kept::Memory, Kept::Processes];

impl MemorySandboxes {
    /// No sandboxes; reports itself as a container backend.
    pub fn new() -> Self {
        Self::with_kind(BackendKind::Container)
    }

    /// No sandboxes; reports itself as `kind`.
    pub fn with_kind(kind: BackendKind) -> Self {
        Self {
            inner: Arc::new(Inner {
                kind,
                sandboxes: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                next_pid: AtomicU32::new(100),
                gates: Mutex::new(HashMap::new()),
                exec_gates: Mutex::new(Vec::new()),
                failures: Mutex::new(HashMap::new()),
                responders: Mutex::new(Vec::new()),
                calls: Mutex::new(Vec::new()),
                execs: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Records an agent connection of running sandbox `id` (and the client
    /// on it, to be handed out again), so that a pause to disk, a crash or
    /// a destroy closes it; `NotFound` when the sandbox was destroyed or
    /// paused meanwhile.
    fn keep_connection(
        &self,
        id: &str,
        task: JoinHandle<()>,
        client: Option<&agent_proto::Client>,
    ) -> Result<()> {
        let mut sandboxes = self.inner.sandboxes();
        let Some(entry) = sandboxes
            .get_mut(id)
            .filter(|e| e.info.state == State::Running)
        else {
            task.abort();
            return Err(Error::NotFound(id.to_owned()));
        };
        if let Some(client) = client {
            entry.client = Some(client.clone());
        }
        entry.connections.push(task);
        Ok(())
    }

    /// Numbers its sandboxes from `first` on, so that several in-memory
    /// backends (the nodes of a test) give distinct ids, as real backends'
    /// random ones are.
    pub fn ids_from(self, first: u64) -> Self {
        self.inner.next_id.store(first, Ordering::Relaxed);
        self
    }

    /// Answers execs `respond` returns a reply for; later responders are
    /// asked first, and `None` passes the exec on.
    pub fn respond(&self, respond: impl Fn(&Invocation) -> Option<Reply> + Send + Sync + 'static) {
        lock(&self.inner.responders).push(Arc::new(respond));
    }

    /// Answers every exec whose [`Invocation::script`] is `script`.
    pub fn respond_to(&self, script: impl Into<String>, reply: Reply) {
        let script = script.into();
        self.respond(move |invocation| (invocation.script() == script).then(|| reply.clone()));
    }

    fn install(&self, key: GateKey) -> Gate {
        let state = Arc::new(GateState::new());
        lock(&self.inner.gates).insert(key, state.clone());
        Gate { state }
    }

    /// Holds every later call of `operation` until the gate opens.
    pub fn hold(&self, operation: Operation) -> Gate {
        self.install((operation, None))
    }

    /// Holds every later call of `operation` on sandbox `id` until the gate
    /// opens (before a gate of all sandboxes is looked at).
    pub fn hold_on(&self, operation: Operation, id: &str) -> Gate {
        self.install((operation, Some(id.to_owned())))
    }

    /// Holds every later exec `matching` picks (in any sandbox) after its
    /// process started, until the gate opens; other execs pass.
    pub fn hold_exec(
        &self,
        matching: impl Fn(&Invocation) -> bool + Send + Sync + 'static,
    ) -> Gate {
        let state = Arc::new(GateState::new());
        lock(&self.inner.exec_gates).push((Arc::new(matching), state.clone()));
        Gate { state }
    }

    /// Makes the next call of `operation` fail with `error` (after its gate,
    /// before it changes anything). Several queue up in order.
    pub fn fail_next(&self, operation: Operation, error: Error) {
        lock(&self.inner.failures)
            .entry(operation)
            .or_default()
            .push_back(error);
    }

    /// The sandbox's processes die: it is `Crashed`, its disk kept.
    pub fn crash(&self, id: &str) -> Result<()> {
        let mut sandboxes = self.inner.sandboxes();
        let entry = sandboxes
            .get_mut(id)
            .ok_or_else(|| Error::NotFound(id.to_owned()))?;
        entry.info.state = State::Crashed;
        entry.disconnect();
        Ok(())
    }

    /// The sandbox's files, to look at or change from the test.
    pub fn files(&self, id: &str) -> Result<Files> {
        self.inner
            .sandboxes()
            .get(id)
            .map(|e| e.files.clone())
            .ok_or_else(|| Error::NotFound(id.to_owned()))
    }

    /// Lifecycle operations that took effect, in order.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.inner.calls).clone()
    }

    /// Execs the agents started, in order.
    pub fn execs(&self) -> Vec<ExecRecord> {
        lock(&self.inner.execs).clone()
    }

    /// How many sandboxes exist.
    pub fn len(&self) -> usize {
        self.inner.sandboxes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn info(&self, id: &str) -> Result<SandboxInfo> {
        self.inner
            .sandboxes()
            .get(id)
            .map(|e| e.info.clone())
            .ok_or_else(|| Error::NotFound(id.to_owned()))
    }
}

impl Backend for MemorySandboxes {
    fn kind(&self) -> BackendKind {
        self.inner.kind
    }

    fn create(&self, spec: Spec) -> BoxFuture<'_, Result<SandboxInfo>> {
        Box::pin(async move {
            self.inner.enter(Operation::Create, None).await?;
            if spec.vcpus == 0 || spec.mem_mib == 0 || spec.disk_mib == 0 {
                return Err(Error::Invalid(
                    "vcpus, mem_mib and disk_mib must be at least 1".into(),
                ));
            }
            let id = self.inner.new_id();
            let info = SandboxInfo {
                id: id.clone(),
                backend: self.inner.kind,
                state: State::Running,
                forked_from: None,
            };
            self.inner.sandboxes().insert(
                id.clone(),
                Entry {
                    info: info.clone(),
                    mem_mib: spec.mem_mib,
                    env: spec.env,
                    files: Files::default(),
                    client: None,
                    connections: Vec::new(),
                },
            );
            self.inner.record(Operation::Create, &id);
            Ok(info)
        })
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<SandboxInfo>> {
        Box::pin(async move { self.info(id) })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<SandboxInfo>>> {
        Box::pin(async move {
            let mut all: Vec<_> = self
                .inner
                .sandboxes()
                .values()
                .map(|e| e.info.clone())
                .collect();
            all.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(all)
        })
    }

    fn agent<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Agent>> {
        Box::pin(async move {
            let state = self.inner.state(id)?;
            if state != State::Running {
                return Err(Inner::wrong_state(id, state, "running"));
            }
            let kept = self
                .inner
                .sandboxes()
                .get(id)
                .and_then(|e| e.client.clone())
                .filter(|c| !c.is_closed());
            let client = match kept {
                Some(client) => client,
                None => {
                    let (client, task) = agent::connect(self.inner.clone(), id).await?;
                    self.keep_connection(id, task, Some(&client))?;
                    client
                }
            };
            Ok(Agent {
                id: id.to_owned(),
                client,
                // The spec's env is the agent's own, as in a container.
                env: Vec::new(),
            })
        })
    }

    fn agent_stream<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<crate::AgentStream>> {
        Box::pin(async move {
            let state = self.inner.state(id)?;
            if state != State::Running {
                return Err(Inner::wrong_state(id, state, "running"));
            }
            let (io, task) = agent::stream(self.inner.clone(), id);
            self.keep_connection(id, task, None)?;
            Ok(crate::AgentStream {
                io: Box::new(io),
                token: None,
                env: Vec::new(),
            })
        })
    }

    fn pause<'a>(&'a self, id: &'a str, mode: PauseMode) -> BoxFuture<'a, Result<SandboxInfo>> {
        Box::pin(async move {
            self.inner.state(id)?;
            self.inner.enter(Operation::Pause, Some(id)).await?;
            let mut sandboxes = self.inner.sandboxes();
            let entry = sandboxes
                .get_mut(id)
                .ok_or_else(|| Error::NotFound(id.to_owned()))?;
            match (mode, entry.info.state) {
                (PauseMode::Memory, State::Running) => entry.info.state = State::Paused,
                (PauseMode::Memory, State::Paused) | (PauseMode::Disk, State::PausedToDisk) => {}
                (PauseMode::Disk, State::Running | State::Paused) => {
                    entry.info.state = State::PausedToDisk;
                    entry.disconnect();
                }
                (_, state) => return Err(Inner::wrong_state(id, state, "running or paused")),
            }
            let info = entry.info.clone();
            drop(sandboxes);
            self.inner.record(Operation::Pause, id);
            Ok(info)
        })
    }

    fn resume<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Carried>> {
        Box::pin(async move {
            self.inner.state(id)?;
            self.inner.enter(Operation::Resume, Some(id)).await?;
            let mut sandboxes = self.inner.sandboxes();
            let entry = sandboxes
                .get_mut(id)
                .ok_or_else(|| Error::NotFound(id.to_owned()))?;
            let (kept, note) = match entry.info.state {
                State::Running | State::Paused => (ALL.to_vec(), None),
                State::PausedToDisk => (
                    vec![Kept::Disk],
                    Some(
                        "the in-memory backend keeps only the files across a pause to disk".into(),
                    ),
                ),
                State::Crashed => return Err(Inner::wrong_state(id, State::Crashed, "paused")),
            };
            entry.info.state = State::Running;
            let sandbox = entry.info.clone();
            drop(sandboxes);
            self.inner.record(Operation::Resume, id);
            Ok(Carried {
                sandbox,
                kept,
                note,
            })
        })
    }

    fn fork<'a>(&'a self, id: &'a str, count: usize) -> BoxFuture<'a, Result<Vec<Carried>>> {
        Box::pin(async move {
            self.inner.state(id)?;
            self.inner.enter(Operation::Fork, Some(id)).await?;
            if count == 0 {
                return Err(Error::Invalid("a fork makes at least one copy".into()));
            }
            let mut sandboxes = self.inner.sandboxes();
            let parent = sandboxes
                .get(id)
                .ok_or_else(|| Error::NotFound(id.to_owned()))?;
            if !matches!(parent.info.state, State::Running | State::PausedToDisk) {
                return Err(Inner::wrong_state(
                    id,
                    parent.info.state,
                    "running or paused to disk",
                ));
            }
            let (mem_mib, env, files) = (parent.mem_mib, parent.env.clone(), parent.files.copy());
            let mut forks = Vec::with_capacity(count);
            for _ in 0..count {
                let info = SandboxInfo {
                    id: self.inner.new_id(),
                    backend: self.inner.kind,
                    state: State::Running,
                    forked_from: Some(id.to_owned()),
                };
                sandboxes.insert(
                    info.id.clone(),
                    Entry {
                        info: info.clone(),
                        mem_mib,
                        env: env.clone(),
                        files: files.copy(),
                        client: None,
                        connections: Vec::new(),
                    },
                );
                forks.push(Carried {
                    sandbox: info,
                    kept: ALL.to_vec(),
                    note: None,
                });
            }
            drop(sandboxes);
            self.inner.record(Operation::Fork, id);
            Ok(forks)
        })
    }

    fn destroy<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.inner.state(id)?;
            self.inner.enter(Operation::Destroy, Some(id)).await?;
            let mut entry = self
                .inner
                .sandboxes()
                .remove(id)
                .ok_or_else(|| Error::NotFound(id.to_owned()))?;
            entry.disconnect();
            self.inner.record(Operation::Destroy, id);
            Ok(())
        })
    }

    fn stats<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Stats>> {
        Box::pin(async move {
            let sandboxes = self.inner.sandboxes();
            let entry = sandboxes
                .get(id)
                .ok_or_else(|| Error::NotFound(id.to_owned()))?;
            let resident = matches!(entry.info.state, State::Running | State::Paused);
            Ok(Stats {
                state: entry.info.state,
                memory_bytes: if resident { entry.mem_mib << 20 } else { 0 },
                cpu_usage_ns: 0,
                disk_bytes: Some(entry.files.bytes()),
                saved_bytes: (entry.info.state == State::PausedToDisk)
                    .then_some(entry.mem_mib << 20),
            })
        })
    }

    fn exec<'a>(&'a self, id: &'a str, command: Command) -> BoxFuture<'a, Result<crate::Output>> {
        Box::pin(async move {
            self.inner.state(id)?;
            self.inner.failure(Operation::Exec)?;
            self.agent(id).await?.exec(command).await
        })
    }

    fn exec_stream<'a>(
        &'a self,
        id: &'a str,
        command: Command,
    ) -> BoxFuture<'a, Result<ExecStream>> {
        Box::pin(async move {
            self.inner.state(id)?;
            self.inner.failure(Operation::Exec)?;
            self.agent(id).await?.exec_stream(command).await
        })
    }
}
