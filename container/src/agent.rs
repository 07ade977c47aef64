//! The host side of the sandbox agent: the socket path, waiting until the
//! agent answers, and lifecycle notices (forked, resumed).
//!
//! The agent (`sandbox-agent`, PID 1 of the sandbox) listens on
//! `/run/sandbox/agent.sock` inside, which is `<sandbox dir>/run/agent.sock`
//! on the host through the bind mount. The forge talks to it with
//! [`agent_proto::Client`] (exec, files, ports); this module only covers what
//! the backend itself needs. The backend's API is synchronous, so these
//! helpers run the async client on a private current-thread runtime in a
//! helper thread: safe to call from inside or outside a tokio runtime.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agent_proto::{Client, ClientError, Forked, LifecycleReport, Resumed};

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
        last: Option<ClientError>,
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

/// Wait until the agent at `socket` completes a handshake, polling while
/// `alive()` holds (a dead PID 1 ends the wait early).
pub fn wait_ready(
    socket: &Path,
    timeout: Duration,
    alive: impl Fn() -> bool + Send + 'static,
) -> Result<(), AgentError> {
    let path = socket.to_path_buf();
    block_on(move || async move {
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < timeout && alive() {
            if path.exists() {
                match Client::connect_unix(&path).await {
                    Ok(_) => return Ok(()),
                    Err(err) => last = Some(err),
                }
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

/// Tell the agent it was forked or resumed.
pub fn notify(socket: &Path, notice: Notice) -> Result<LifecycleReport, AgentError> {
    let path = socket.to_path_buf();
    block_on(move || async move {
        let err = |source| AgentError::Notice {
            path: path.clone(),
            source,
        };
        let client = Client::connect_unix(&path).await.map_err(err)?;
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
        report.map_err(err)
    })
}
