//! The host side of the sandbox agent: connecting to it without trusting
//! the sandbox, waiting until it answers, and lifecycle notices (forked,
//! resumed).
//!
//! The agent (`sandbox-agent`, PID 1 of the sandbox) listens on
//! `/run/sandbox/agent.sock` inside, which is `run/agent.sock` in the
//! sandbox's top layer on the host. Everything in that directory is the
//! sandbox's to change, so [`connect`]:
//! 1. opens the run directory itself and the socket beneath it without
//!    following any link (`beneath`), and connects to that socket inode;
//! 2. checks the listening peer (`SO_PEERCRED`): its uid must be in the
//!    sandbox's own id range and its process in the sandbox's cgroup, so a
//!    socket some other process bound there is refused;
//! 3. presents the sandbox's secret in the `Hello` (the agent, as PID 1,
//!    serves only peers outside its PID namespace that know it).
//!
//! The forge talks to the agent with [`agent_proto::Client`] (exec, files,
//! ports). The backend's API is synchronous, so [`wait_ready`] and
//! [`notify`] run the async client on a private current-thread runtime in a
//! helper thread: safe to call from inside or outside a tokio runtime.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agent_proto::{Client, ClientError, Forked, LifecycleReport, Resumed};

use crate::beneath::Dir;
use crate::spec::IdMap;

/// File name of the agent's socket in the socket directory.
pub const AGENT_SOCKET: &str = "agent.sock";

/// Failure talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("Agent at {path} did not answer within {waited_ms} ms")]
    NotReady {
        path: PathBuf,
        waited_ms: u128,
        #[source]
        last: Option<Box<AgentError>>,
    },
    #[error("Cannot reach the agent socket in {path}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Refused the agent socket in {path}: {reason}")]
    Impostor { path: PathBuf, reason: String },
    #[error("Handshake with the agent in {path} failed")]
    Handshake {
        path: PathBuf,
        #[source]
        source: ClientError,
    },
    #[error("Agent at {path} failed a lifecycle notice")]
    Notice {
        path: PathBuf,
        #[source]
        source: ClientError,
    },
    #[error("Starting the agent client failed")]
    Runtime(#[source] std::io::Error),
    #[error("Agent client thread panicked")]
    Panicked,
}

/// A lifecycle notice for the agent.
#[derive(Debug, Clone)]
pub enum Notice {
    /// The sandbox is a new fork named `hostname`.
    Forked { hostname: String },
    /// The sandbox was resumed from a pause.
    Resumed,
}

fn unix_time_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

fn entropy() -> Vec<u8> {
    let mut bytes = vec![0u8; 64];
    if let Ok(mut file) = std::fs::File::open("/dev/urandom") {
        // On failure the agent still gets the clock-derived fallback below.
        let _ = std::io::Read::read_exact(&mut file, &mut bytes);
    }
    bytes.extend_from_slice(&unix_time_ns().to_le_bytes());
    bytes
}

/// Run `work` on a current-thread runtime in its own thread.
fn block_on<T, F>(work: impl FnOnce() -> F + Send + 'static) -> Result<T, AgentError>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, AgentError>>,
{
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(AgentError::Runtime)?;
        runtime.block_on(work())
    })
    .join()
    .map_err(|_| AgentError::Panicked)?
}

/// Who may answer on a sandbox's agent socket, and the secret to show it.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The sandbox id: the peer's process must be in its cgroup.
    pub sandbox: String,
    /// The sandbox's id range: the peer's uid must be in it.
    pub ids: IdMap,
    /// The agent's secret, presented in the `Hello`.
    pub token: Option<String>,
    /// The sandbox's PID 1, which made the socket: the listener must be it
    /// (any other root process inside could bind a socket of its own).
    pub pid1: Option<u32>,
}

impl Peer {
    /// Why the process `pid` running as `uid` is not this sandbox's, if it
    /// is not.
    fn refuse(&self, pid: Option<i32>, uid: u32) -> Option<String> {
        if !self.ids.contains(uid) {
            return Some(format!(
                "the listener runs as host uid {uid}, outside the sandbox's ids {}..{}",
                self.ids.host_base,
                u64::from(self.ids.host_base) + u64::from(self.ids.count)
            ));
        }
        let Some(pid) = pid.filter(|p| *p > 0) else {
            return Some("the listener's process is not visible".into());
        };
        if let Some(pid1) = self.pid1
            && u32::try_from(pid).ok() != Some(pid1)
        {
            return Some(format!(
                "the listener is pid {pid}, not the sandbox's PID 1 ({pid1})"
            ));
        }
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let leaf = format!("/{}", self.sandbox);
        if !cgroups.lines().any(|l| l.ends_with(&leaf)) {
            return Some(format!(
                "the listener (pid {pid}) is not in the sandbox's cgroup"
            ));
        }
        None
    }
}

/// Connects to the agent in `run_dir` (see the module docs) and shakes
/// hands. Must be awaited inside a tokio runtime.
pub async fn connect(run_dir: &Path, peer: &Peer) -> Result<Client, AgentError> {
    let stream = connect_stream(run_dir, peer).await?;
    Client::handshake_with_token(stream, peer.token.as_deref())
        .await
        .map_err(|source| AgentError::Handshake {
            path: run_dir.to_path_buf(),
            source,
        })
}

/// The connection to the agent in `run_dir`, its listener checked to be
/// the sandbox's own, before the handshake (which needs `peer.token`).
pub async fn connect_stream(
    run_dir: &Path,
    peer: &Peer,
) -> Result<tokio::net::UnixStream, AgentError> {
    let socket_err = |source| AgentError::Socket {
        path: run_dir.to_path_buf(),
        source,
    };
    let socket = Dir::open(run_dir)
        .and_then(|dir| dir.socket(AGENT_SOCKET))
        .map_err(socket_err)?;
    let stream = tokio::net::UnixStream::connect(socket.path())
        .await
        .map_err(socket_err)?;
    drop(socket);
    let cred = stream.peer_cred().map_err(socket_err)?;
    if let Some(reason) = peer.refuse(cred.pid(), cred.uid()) {
        return Err(AgentError::Impostor {
            path: run_dir.to_path_buf(),
            reason,
        });
    }
    Ok(stream)
}

/// Wait until the agent in `run_dir` completes a handshake, polling while
/// `alive()` holds (a dead PID 1 ends the wait early).
pub fn wait_ready(
    run_dir: &Path,
    peer: Peer,
    timeout: Duration,
    alive: impl Fn() -> bool + Send + 'static,
) -> Result<(), AgentError> {
    let path = run_dir.to_path_buf();
    block_on(move || async move {
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < timeout && alive() {
            match connect(&path, &peer).await {
                Ok(_) => return Ok(()),
                // An impostor is no reason to wait: the answer will not change.
                Err(err @ AgentError::Impostor { .. }) => return Err(err),
                Err(err) => last = Some(Box::new(err)),
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Err(AgentError::NotReady {
            path,
            waited_ms: start.elapsed().as_millis(),
            last,
        })
    })
}

/// How long a lifecycle notice may take: the agent answers at once.
pub const NOTICE_TIMEOUT: Duration = Duration::from_secs(30);

/// Tell the agent in `run_dir` it was forked or resumed (within
/// [`NOTICE_TIMEOUT`]: a silent listener must not hold the operation, and
/// the sandbox's lock, for ever).
pub fn notify(run_dir: &Path, peer: Peer, notice: Notice) -> Result<LifecycleReport, AgentError> {
    let path = run_dir.to_path_buf();
    block_on(move || async move {
        let notified = tokio::time::timeout(NOTICE_TIMEOUT, notice_once(&path, &peer, notice));
        notified.await.map_err(|_| AgentError::NotReady {
            path: path.clone(),
            waited_ms: NOTICE_TIMEOUT.as_millis(),
            last: None,
        })?
    })
}

async fn notice_once(
    path: &Path,
    peer: &Peer,
    notice: Notice,
) -> Result<LifecycleReport, AgentError> {
    let path = path.to_path_buf();
    {
        let client = connect(&path, peer).await?;
        let report = match notice {
            Notice::Forked { hostname } => {
                client
                    .forked(Forked {
                        entropy: entropy(),
                        unix_time_ns: unix_time_ns(),
                        hostname,
                    })
                    .await
            }
            Notice::Resumed => {
                client
                    .resumed(Resumed {
                        unix_time_ns: unix_time_ns(),
                    })
                    .await
            }
        };
        report.map_err(|source| AgentError::Notice { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_outside_the_range_or_cgroup_is_refused() {
        let peer = Peer {
            sandbox: "sb-not-a-real-sandbox".into(),
            ids: IdMap {
                host_base: 1 << 30,
                count: 65_536,
            },
            token: None,
            pid1: None,
        };
        let host_root = peer.refuse(Some(1), 0).expect("host root refused");
        assert!(host_root.contains("outside"), "{host_root}");
        let neighbour = peer
            .refuse(Some(1), (1 << 30) + 65_536)
            .expect("next range refused");
        assert!(neighbour.contains("outside"), "{neighbour}");
        let elsewhere = peer
            .refuse(Some(std::process::id() as i32), 1 << 30)
            .expect("a process of another cgroup refused");
        assert!(elsewhere.contains("cgroup"), "{elsewhere}");
        assert!(peer.refuse(None, 1 << 30).is_some());
    }
}
