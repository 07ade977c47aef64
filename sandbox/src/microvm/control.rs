//! Client of a `forge-vmm` control socket: JSON lines over a Unix stream
//! socket, one request a line, one reply a line (`vmm::control` is the
//! server and owns the request type, which this client reuses).
//!
//! ```text
//! → {"cmd":"pause"}                         ← {"ok":true,"state":"paused"}
//! → {"cmd":"fork","count":2}                ← {"ok":true,"fork":{"children":[...]}}
//! → {"cmd":"explode"}                       ← {"ok":false,"error":{"code","message"}}
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use vmm::control::Request;

/// How long a reply may take (a fork of many children, a durable snapshot
/// of a large VM).
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Failure talking to a control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("Cannot reach the control socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("The control connection failed")]
    Io(#[from] std::io::Error),
    #[error("The VMM closed the control connection")]
    Closed,
    #[error("The VMM did not answer within {0:?}")]
    Timeout(Duration),
    #[error("The VMM sent a reply that is not JSON")]
    Reply(#[from] serde_json::Error),
    #[error("The VMM refused the request ({code}): {message}")]
    Refused { code: String, message: String },
}

/// One connection to a VMM's control socket.
#[derive(Debug)]
pub struct ControlSocket {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl ControlSocket {
    pub async fn connect(path: &Path) -> Result<Self, ControlError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ControlError::Connect {
                path: path.to_owned(),
                source,
            })?;
        let (read, writer) = stream.into_split();
        Ok(Self {
            reader: BufReader::new(read),
            writer,
        })
    }

    /// Connect, retrying until `timeout` (the VMM binds its socket a few
    /// milliseconds after it starts).
    pub async fn connect_within(path: &Path, timeout: Duration) -> Result<Self, ControlError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match Self::connect(path).await {
                Ok(socket) => return Ok(socket),
                Err(err) if tokio::time::Instant::now() >= deadline => return Err(err),
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    /// Send `request`; the reply's fields when `ok` is true.
    pub async fn call(&mut self, request: &Request) -> Result<Value, ControlError> {
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        self.writer.write_all(&line).await?;
        let mut reply = String::new();
        let read = tokio::time::timeout(REPLY_TIMEOUT, self.reader.read_line(&mut reply))
            .await
            .map_err(|_| ControlError::Timeout(REPLY_TIMEOUT))??;
        if read == 0 {
            return Err(ControlError::Closed);
        }
        let value: Value = serde_json::from_str(&reply)?;
        if value["ok"] == Value::Bool(true) {
            return Ok(value);
        }
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        Err(ControlError::Refused {
            code: text(&value["error"]["code"]),
            message: text(&value["error"]["message"]),
        })
    }

    pub async fn status(&mut self) -> Result<Value, ControlError> {
        self.call(&Request::Status {}).await
    }

    pub async fn pause(&mut self) -> Result<Value, ControlError> {
        self.call(&Request::Pause {
            to_disk: false,
            dir: None,
            durable: true,
        })
        .await
    }

    /// Snapshot into `dir` and end the VMM process.
    pub async fn pause_to_disk(&mut self, dir: &Path) -> Result<Value, ControlError> {
        self.call(&Request::Pause {
            to_disk: true,
            dir: Some(dir.to_owned()),
            durable: true,
        })
        .await
    }

    pub async fn resume(&mut self) -> Result<Value, ControlError> {
        self.call(&Request::Resume {}).await
    }

    /// Fork into `count` running children; the reply lists each child's
    /// pid, control socket, vsock socket and serial log.
    pub async fn fork(&mut self, count: u32) -> Result<Vec<ForkedVm>, ControlError> {
        let reply = self
            .call(&Request::Fork {
                count,
                paused: false,
            })
            .await?;
        let children = reply["fork"]["children"].clone();
        Ok(serde_json::from_value(children)?)
    }

    pub async fn shutdown(&mut self) -> Result<Value, ControlError> {
        self.call(&Request::Shutdown {}).await
    }
}

/// One child of a fork, as the VMM reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ForkedVm {
    pub pid: i32,
    pub control_socket: PathBuf,
    pub vsock_uds: Option<PathBuf>,
    pub serial_log: PathBuf,
    /// "ok", or the child's error.
    pub status: String,
}
