//! The sandbox agent: PID 1 inside every sandbox (microVM over vsock,
//! container over a Unix socket), or a plain process for tests.
//!
//! It serves the protocol of `agent-proto` on every accepted connection:
//! exec ([`exec`]), background processes ([`background`]), files
//! ([`files`]), port forwarding ([`ports`]),
//! lifecycle notices and power-off ([`system`]). One reaper ([`reaper`])
//! owns `waitpid` for the whole process.

pub mod background;
pub mod conn;
pub mod exec;
pub mod files;
pub mod listen;
pub mod ports;
pub mod reaper;
pub mod system;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use agent_proto::{Body, ErrorKind, Health, IMAGE_VERSION_PATH, PROTOCOL_VERSION, RemoteError};
use tokio::sync::Notify;

use crate::conn::Op;
use crate::files::FileRoot;
use crate::listen::{Conn, Listener};

/// How the agent was started.
#[derive(Debug, Clone)]
pub struct Config {
    pub pid1: bool,
    /// Reseed, clock and hostname on lifecycle notices (implied by PID 1).
    pub manage_system: bool,
    pub files_root: PathBuf,
    /// Working directory of execs that name none.
    pub default_cwd: PathBuf,
    /// The secret every `Hello` must present (from [`agent_proto::TOKEN_ENV`]).
    pub token: Option<String>,
    /// Serve only peers outside this sandbox: over a Unix socket, a peer
    /// whose process this PID namespace cannot see (pid 0, the host); over
    /// vsock, the host's CID. Set for PID 1.
    pub host_peers_only: bool,
}

/// State shared by all connections.
pub struct Agent {
    pub config: Config,
    pub files: FileRoot,
    started: Instant,
    image_version: Option<String>,
    poweroff: Notify,
    pub background: background::Background,
}

impl Agent {
    pub fn new(config: Config) -> std::io::Result<Self> {
        let files = FileRoot::open(&config.files_root)?;
        let image_version = std::fs::read_to_string(IMAGE_VERSION_PATH)
            .ok()
            .map(|s| s.trim().to_owned());
        Ok(Self {
            config,
            files,
            started: Instant::now(),
            image_version,
            poweroff: Notify::new(),
            background: background::Background::default(),
        })
    }

    pub fn health(&self) -> Health {
        Health {
            protocol: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            image_version: self.image_version.clone(),
            pid1: self.config.pid1,
            hostname: system::hostname(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
        }
    }
}

/// Accepts connections until a client asks for power-off.
pub async fn serve(listener: Listener, agent: Arc<Agent>) {
    tokio::spawn(reaper::reaper().run());
    loop {
        tokio::select! {
            conn = listener.accept() => match conn {
                Ok(conn) if agent.config.host_peers_only && !conn.from_host() => {
                    eprintln!("sandbox-agent: refused a connection from inside the sandbox");
                }
                Ok(Conn::Unix(s)) => { tokio::spawn(conn::serve(s, agent.clone())); }
                Ok(Conn::Vsock(s, _)) => { tokio::spawn(conn::serve(s, agent.clone())); }
                Err(e) => {
                    eprintln!("sandbox-agent: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = agent.poweroff.notified() => return,
        }
    }
}

type BlockingOp = Box<dyn FnOnce(&Agent) -> Result<Body, RemoteError> + Send>;

/// Runs one operation; the returned body (or error) ends its stream.
pub(crate) async fn dispatch(op: Op, body: Body, agent: Arc<Agent>) -> Result<Body, RemoteError> {
    let blocking = |f: BlockingOp| {
        let agent = agent.clone();
        async move {
            tokio::task::spawn_blocking(move || f(&agent))
                .await
                .map_err(|_| RemoteError::new(ErrorKind::Io, "file operation panicked"))?
        }
    };
    match body {
        Body::Exec(req) => exec::run(op, req, agent.clone()).await,
        Body::ReadFile { path } => files::read(op, &agent.files, &path).await,
        Body::WriteFile(req) => files::write(op, &agent.files, req).await,
        Body::ListDir { path } => {
            blocking(Box::new(move |a| {
                a.files.list_dir(&path).map(Body::Entries)
            }))
            .await
        }
        Body::Stat { path } => {
            blocking(Box::new(move |a| a.files.stat(&path).map(Body::Metadata))).await
        }
        Body::Mkdir { path, mode } => {
            blocking(Box::new(move |a| {
                a.files.mkdir_all(&path, mode).map(|_| Body::Done)
            }))
            .await
        }
        Body::Remove { path, recursive } => {
            blocking(Box::new(move |a| {
                a.files.remove(&path, recursive).map(|_| Body::Done)
            }))
            .await
        }
        Body::OpenPort { port } => ports::forward(op, port).await,
        Body::Listen { port } => ports::listen(op, port).await,
        Body::Forked(f) => Ok(Body::Lifecycle(system::forked(&agent, f))),
        Body::Resumed(r) => Ok(Body::Lifecycle(system::resumed(&agent, r))),
        Body::Health => Ok(Body::HealthReport(agent.health())),
        Body::Spawn(req) => background::start(req, &agent),
        Body::Processes => Ok(Body::ProcessList(agent.background.list())),
        Body::ProcessOutput {
            pid,
            offset,
            follow,
        } => background::output(op, &agent, pid, offset, follow).await,
        Body::Signal { pid, signal } => agent.background.signal(pid, signal),
        Body::Poweroff => {
            op.sender().send(Body::Done).await?;
            // Let the writer flush `Done` before the process goes away.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            agent.poweroff.notify_one();
            std::future::pending().await
        }
        _ => Err(RemoteError::new(ErrorKind::Protocol, "not an operation")),
    }
}
