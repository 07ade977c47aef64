//! Exec, files and ports: the operations every backend carries out through
//! the sandbox agent (`agent-proto`), whatever transport reaches it (a Unix
//! socket for containers, the VMM's vsock proxy for microVMs).
//!
//! File paths are confined before they leave the host: a relative path is
//! taken under [`WORKSPACE`], an absolute one is a path inside the sandbox,
//! and any `..` component is refused, so no request names a place above
//! where it starts. The agent itself runs inside the sandbox's root (mount
//! namespace or VM), so a symlink planted inside cannot reach the host.

use std::time::Duration;

use agent_proto::{Client, DirEntry, ExecEvent, ExecRequest, Output};
use tokio::io::DuplexStream;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::spec::{Command, WORKSPACE};

/// Bytes buffered on each side of a forwarded port's local pipe.
const PORT_PIPE_BYTES: usize = 256 * 1024;

/// A connection to one sandbox's agent, plus the environment the backend
/// adds to every command (the spec's `env`, where PID 1 could not take it).
#[derive(Debug, Clone)]
pub struct Agent {
    pub id: String,
    pub client: Client,
    pub env: Vec<(String, String)>,
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
}

impl ExecStream {
    /// The process id inside the sandbox.
    pub fn pid(&self) -> u32 {
        self.exec.pid()
    }

    /// The next chunk of stdout or stderr, then `Exited`, then `None`.
    pub async fn next(&mut self) -> Result<Option<ExecEvent>> {
        let event = self.exec.next().await.map_err(Error::agent(&self.id))?;
        if matches!(event, Some(ExecEvent::Exited(_))) {
            // A process may exit without reading its stdin: that is no error.
            if let Some(stdin) = self.stdin.take() {
                stdin.abort();
            }
        }
        Ok(event)
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
        let exec = self
            .client
            .exec(request)
            .await
            .map_err(Error::agent(&self.id))?;
        let stdin = (!command.stdin.is_empty()).then(|| {
            let input = exec.input();
            let bytes = command.stdin;
            tokio::spawn(async move { input.write_all_and_close(&bytes).await })
        });
        Ok(ExecStream {
            id: self.id.clone(),
            exec,
            stdin,
        })
    }

    /// Run `command` to its end and collect its (capped) output.
    pub async fn exec(&self, command: Command) -> Result<Output> {
        self.exec_stream(command).await?.collect().await
    }

    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        let path = confine(path)?;
        self.client
            .read_file(&path)
            .await
            .map_err(Error::agent(&self.id))
    }

    /// Write atomically, creating missing parent directories.
    pub async fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<()> {
        let path = confine(path)?;
        self.client
            .write_file_from(&path, mode, true, data)
            .await
            .map_err(Error::agent(&self.id))
    }

    pub async fn list_files(&self, path: &str) -> Result<Vec<DirEntry>> {
        let path = confine(path)?;
        self.client
            .list_dir(&path)
            .await
            .map_err(Error::agent(&self.id))
    }

    /// Remove a file, a symlink, or a directory with its content.
    pub async fn delete_file(&self, path: &str) -> Result<()> {
        let path = confine(path)?;
        if path == "/" {
            return Err(Error::Invalid(
                "refusing to delete the sandbox's root".into(),
            ));
        }
        self.client
            .remove(&path, true)
            .await
            .map_err(Error::agent(&self.id))
    }

    /// A byte stream to `port` on the sandbox's loopback. Bytes written to
    /// it reach the port; closing the write half half-closes the connection.
    pub async fn open_port(&self, port: u16) -> Result<DuplexStream> {
        let remote = self
            .client
            .open_port(port)
            .await
            .map_err(Error::agent(&self.id))?;
        let (ours, theirs) = tokio::io::duplex(PORT_PIPE_BYTES);
        tokio::spawn(async move {
            // The caller sees a failure as the stream ending early.
            let _ = remote.splice(theirs).await;
        });
        Ok(ours)
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
