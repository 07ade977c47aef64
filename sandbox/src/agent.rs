//! Exec, files and ports: the operations every backend carries out through
//! the sandbox agent (`agent-proto`), whatever transport reaches it (a Unix
//! socket for containers, the VMM's vsock proxy for microVMs).
//!
//! File paths are confined before they leave the host: a relative path is
//! taken under [`WORKSPACE`], an absolute one is a path inside the sandbox,
//! and any `..` component is refused, so no request names a place above
//! where it starts. The agent itself runs inside the sandbox's root (mount
//! namespace or VM), so a symlink planted inside cannot reach the host.
//!
//! The agent is the sandbox's, so the host does not rely on it to keep
//! its promises: an exec's output is cut at the command's limit here too
//! (the agent's cut is only the first one), a file read stops at its limit
//! ([`DEFAULT_READ_LIMIT_BYTES`] unless asked otherwise), and every wait
//! for an answer ends: replies within [`REPLY_TIMEOUT`], an exec at its
//! timeout plus [`EXEC_GRACE`], a file read when no chunk came for
//! [`REPLY_TIMEOUT`].

use std::future::Future;
use std::time::{Duration, Instant};

use agent_proto::{Client, DirEntry, ExecEvent, ExecRequest, Output};
use tokio::io::DuplexStream;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::spec::{Command, WORKSPACE};

/// Bytes buffered on each side of a forwarded port's local pipe.
const PORT_PIPE_BYTES: usize = 256 * 1024;

/// Largest file [`Agent::read_file`] reads into memory.
pub const DEFAULT_READ_LIMIT_BYTES: u64 = 64 << 20;

/// How long a reply (or the next chunk of a file) may take.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long after its timeout an exec must have ended (the agent kills
/// the process at the timeout and reports its exit).
pub const EXEC_GRACE: Duration = Duration::from_secs(30);

/// `fut`, or `Unresponsive` once `limit` passed.
async fn within<T>(
    id: &str,
    what: &str,
    limit: Duration,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| Error::Unresponsive {
            id: id.to_owned(),
            what: what.to_owned(),
            secs: limit.as_secs(),
        })?
}

/// A connection to one sandbox's agent, plus the environment the backend
/// adds to every command (the spec's `env`, where PID 1 could not take it).
#[derive(Debug, Clone)]
pub struct Agent {
    pub id: String,
    pub client: Client,
    pub env: Vec<(String, String)>,
}

/// A byte stream an agent speaks on.
pub trait AgentIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> AgentIo for T {}

/// A connection to a sandbox's agent before the handshake
/// ([`crate::Backend::agent_stream`]).
pub struct AgentStream {
    pub io: Box<dyn AgentIo>,
    /// The secret the `Hello` presents, where the agent has one.
    pub token: Option<String>,
    /// What [`Agent::env`] would hold.
    pub env: Vec<(String, String)>,
}

impl std::fmt::Debug for AgentStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is the agent's secret: never printed.
        f.debug_struct("AgentStream")
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("env", &self.env)
            .finish_non_exhaustive()
    }
}

/// Where a file path points inside the sandbox, or why it is refused.
pub fn confine(path: &str) -> Result<String> {
    let escapes = || Error::PathEscapes {
        path: path.to_owned(),
    };
    if path.is_empty() || path.contains('\0') {
        return Err(escapes());
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(escapes()),
            other => parts.push(other),
        }
    }
    let base = if path.starts_with('/') { "" } else { WORKSPACE };
    Ok(format!("{base}/{}", parts.join("/")))
}

/// A running command: its output as it comes, then its exit.
#[derive(Debug)]
pub struct ExecStream {
    id: String,
    exec: agent_proto::Exec,
    /// Feeds stdin while output is read, so neither side can stall the other.
    stdin: Option<JoinHandle<Result<(), agent_proto::ClientError>>>,
    /// Output bytes still to pass on (stdout and stderr together).
    output_left: u64,
    /// Output was dropped here because the limit was reached.
    cut: bool,
    /// When the exec must have ended, if it has a timeout.
    deadline: Option<Instant>,
}

impl ExecStream {
    /// The process id inside the sandbox.
    pub fn pid(&self) -> u32 {
        self.exec.pid()
    }

    /// The next chunk of stdout or stderr, then `Exited`, then `None`.
    /// Output beyond the command's limit is dropped (and `Exited` says it
    /// was truncated), whatever the agent sends.
    pub async fn next(&mut self) -> Result<Option<ExecEvent>> {
        loop {
            let event = match self.deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    within(&self.id, "an exec past its timeout", left, async {
                        self.exec.next().await.map_err(Error::agent(&self.id))
                    })
                    .await?
                }
                None => self.exec.next().await.map_err(Error::agent(&self.id))?,
            };
            let event = match event {
                Some(ExecEvent::Stdout(bytes)) => self.pass(bytes).map(ExecEvent::Stdout),
                Some(ExecEvent::Stderr(bytes)) => self.pass(bytes).map(ExecEvent::Stderr),
                Some(ExecEvent::Exited(mut exited)) => {
                    // A process may exit without reading its stdin: no error.
                    if let Some(stdin) = self.stdin.take() {
                        stdin.abort();
                    }
                    exited.truncated |= self.cut;
                    Some(ExecEvent::Exited(exited))
                }
                None => return Ok(None),
            };
            if let Some(event) = event {
                return Ok(Some(event));
            }
        }
    }

    /// What of `bytes` fits in the output limit, if anything.
    fn pass(&mut self, mut bytes: Vec<u8>) -> Option<Vec<u8>> {
        let fits = usize::try_from(self.output_left).unwrap_or(usize::MAX);
        if bytes.len() > fits {
            bytes.truncate(fits);
            self.cut = true;
        }
        self.output_left -= bytes.len() as u64;
        (!bytes.is_empty()).then_some(bytes)
    }

    /// Everything to the end, collected.
    pub async fn collect(mut self) -> Result<Output> {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        loop {
            match self.next().await? {
                Some(ExecEvent::Stdout(b)) => stdout.extend_from_slice(&b),
                Some(ExecEvent::Stderr(b)) => stderr.extend_from_slice(&b),
                Some(ExecEvent::Exited(exited)) => {
                    return Ok(Output {
                        stdout,
                        stderr,
                        exited,
                    });
                }
                None => {
                    return Err(Error::Agent {
                        id: self.id.clone(),
                        source: agent_proto::ClientError::Closed,
                    });
                }
            }
        }
    }
}

impl Drop for ExecStream {
    fn drop(&mut self) {
        if let Some(stdin) = self.stdin.take() {
            stdin.abort();
        }
    }
}

fn timeout_ms(timeout: Duration) -> u64 {
    u64::try_from(timeout.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl Agent {
    /// Start `command`; its output arrives on the returned stream.
    pub async fn exec_stream(&self, command: Command) -> Result<ExecStream> {
        if command.argv.is_empty() {
            return Err(Error::Invalid("a command needs at least argv[0]".into()));
        }
        let mut request = ExecRequest::argv(command.argv);
        request.env = self.env.iter().cloned().chain(command.env).collect();
        request.cwd = command.cwd;
        request.stdin = !command.stdin.is_empty();
        request.timeout_ms = command.timeout.map(timeout_ms);
        request.output_limit_bytes = Some(command.output_limit_bytes);
        let exec = within(&self.id, "an exec", REPLY_TIMEOUT, async {
            self.client
                .exec(request)
                .await
                .map_err(Error::agent(&self.id))
        })
        .await?;
        let stdin = (!command.stdin.is_empty()).then(|| {
            let input = exec.input();
            let bytes = command.stdin;
            tokio::spawn(async move { input.write_all_and_close(&bytes).await })
        });
        Ok(ExecStream {
            id: self.id.clone(),
            exec,
            stdin,
            output_left: command.output_limit_bytes,
            cut: false,
            deadline: command.timeout.map(|t| Instant::now() + t + EXEC_GRACE),
        })
    }

    /// Starts `command` in the background (no stdin, no timeout: it runs
    /// until it exits or is signalled); returns its pid.
    pub async fn spawn(&self, command: Command) -> Result<u32> {
        if command.argv.is_empty() {
            return Err(Error::Invalid("a command needs at least argv[0]".into()));
        }
        let mut request = ExecRequest::argv(command.argv);
        request.env = self.env.iter().cloned().chain(command.env).collect();
        request.cwd = command.cwd;
        within(&self.id, "a background start", REPLY_TIMEOUT, async {
            self.client
                .spawn(request)
                .await
                .map_err(Error::agent(&self.id))
        })
        .await
    }

    /// The background processes, oldest first.
    pub async fn processes(&self) -> Result<Vec<agent_proto::ProcessInfo>> {
        within(&self.id, "the process list", REPLY_TIMEOUT, async {
            self.client
                .processes()
                .await
                .map_err(Error::agent(&self.id))
        })
        .await
    }

    /// A background process's output from byte `offset`; with `follow`,
    /// until it exits (a follower may wait as long as the process is quiet).
    pub async fn process_output(
        &self,
        pid: u32,
        offset: u64,
        follow: bool,
    ) -> Result<agent_proto::ProcessOutput> {
        within(&self.id, "a process's output", REPLY_TIMEOUT, async {
            self.client
                .process_output(pid, offset, follow)
                .await
                .map_err(Error::agent(&self.id))
        })
        .await
    }

    /// Sends `signal` to background process `pid`'s process group.
    pub async fn signal(&self, pid: u32, signal: i32) -> Result<()> {
        within(&self.id, "a signal", REPLY_TIMEOUT, async {
            self.client
                .signal(pid, signal)
                .await
                .map_err(Error::agent(&self.id))
        })
        .await
    }

    /// Run `command` to its end and collect its (capped) output.
    pub async fn exec(&self, command: Command) -> Result<Output> {
        self.exec_stream(command).await?.collect().await
    }

    /// A whole file, at most [`DEFAULT_READ_LIMIT_BYTES`].
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        let mut stream = self
            .read_file_stream(path, DEFAULT_READ_LIMIT_BYTES)
            .await?;
        let mut out = Vec::new();
        while let Some(chunk) = stream.next_chunk().await? {
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// A file chunk by chunk; more than `limit` bytes is an error, at once
    /// when the file says it is larger, else when more arrives.
    pub async fn read_file_stream(&self, path: &str, limit: u64) -> Result<FileStream> {
        let path = confine(path)?;
        let stat = within(&self.id, "a file stat", REPLY_TIMEOUT, async {
            self.client
                .stat(&path)
                .await
                .map_err(Error::agent(&self.id))
        })
        .await?;
        if stat.size > limit {
            return Err(Error::TooLarge {
                id: self.id.clone(),
                what: format!("File {path} ({} bytes)", stat.size),
                limit,
            });
        }
        let reader = within(&self.id, "a file read", REPLY_TIMEOUT, async {
            self.client
                .read_file_chunks(&path)
                .await
                .map_err(Error::agent(&self.id))
        })
        .await?;
        Ok(FileStream {
            id: self.id.clone(),
            path,
            reader,
            left: limit,
            limit,
        })
    }

    /// Write atomically, creating missing parent directories.
    pub async fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<()> {
        let path = confine(path)?;
        // The upload is flow-controlled: allow a slow sandbox a minute per
        // window's worth of bytes.
        let windows = data.len() as u64 / u64::from(agent_proto::INITIAL_WINDOW_BYTES) + 1;
        let limit = REPLY_TIMEOUT.saturating_mul(u32::try_from(windows).unwrap_or(u32::MAX));
        within(&self.id, "a file write", limit, async {
            self.client
                .write_file_from(&path, mode, true, data)
                .await
                .map_err(Error::agent(&self.id))
        })
        .await
    }

    pub async fn list_files(&self, path: &str) -> Result<Vec<DirEntry>> {
        let path = confine(path)?;
        within(&self.id, "a directory listing", REPLY_TIMEOUT, async {
            self.client
                .list_dir(&path)
                .await
                .map_err(Error::agent(&self.id))
        })
        .await
    }

    /// Remove a file, a symlink, or a directory with its content.
    pub async fn delete_file(&self, path: &str) -> Result<()> {
        let path = confine(path)?;
        if path == "/" {
            return Err(Error::Invalid(
                "refusing to delete the sandbox's root".into(),
            ));
        }
        within(&self.id, "a delete", REPLY_TIMEOUT, async {
            self.client
                .remove(&path, true)
                .await
                .map_err(Error::agent(&self.id))
        })
        .await
    }

    /// A byte stream to `port` on the sandbox's loopback. Bytes written to
    /// it reach the port; closing the write half half-closes the connection.
    pub async fn open_port(&self, port: u16) -> Result<DuplexStream> {
        let remote = within(&self.id, "a port connection", REPLY_TIMEOUT, async {
            self.client
                .open_port(port)
                .await
                .map_err(Error::agent(&self.id))
        })
        .await?;
        let (ours, theirs) = tokio::io::duplex(PORT_PIPE_BYTES);
        tokio::spawn(async move {
            // The caller sees a failure as the stream ending early.
            let _ = remote.splice(theirs).await;
        });
        Ok(ours)
    }
}

/// A file being read from a sandbox, at most its limit.
#[derive(Debug)]
pub struct FileStream {
    id: String,
    path: String,
    reader: agent_proto::FileReader,
    left: u64,
    limit: u64,
}

impl FileStream {
    /// The next chunk; `None` at the end. Past the limit, or when the agent
    /// stalls for [`REPLY_TIMEOUT`], an error (the read is cancelled).
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        let chunk = within(&self.id, "a file chunk", REPLY_TIMEOUT, async {
            self.reader
                .next_chunk()
                .await
                .map_err(Error::agent(&self.id))
        })
        .await?;
        if let Some(chunk) = &chunk {
            self.left =
                self.left
                    .checked_sub(chunk.len() as u64)
                    .ok_or_else(|| Error::TooLarge {
                        id: self.id.clone(),
                        what: format!("File {}", self.path),
                        limit: self.limit,
                    })?;
        }
        Ok(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_confined() {
        assert_eq!(confine("a/b.txt").expect("relative"), "/workspace/a/b.txt");
        assert_eq!(confine("./a//b").expect("dots"), "/workspace/a/b");
        assert_eq!(confine("/etc/hosts").expect("absolute"), "/etc/hosts");
        assert_eq!(confine("/").expect("root"), "/");
        for bad in ["../../etc/passwd", "/a/../../b", "a/..", "..", "", "a\0b"] {
            assert!(
                matches!(confine(bad), Err(Error::PathEscapes { .. })),
                "{bad:?} accepted"
            );
        }
    }
}
