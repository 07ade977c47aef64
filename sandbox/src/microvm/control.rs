//! Client of a `forge-vmm` control socket: JSON lines over a Unix stream
//! socket, one request a line, one reply a line. The requests and replies
//! are `vmm_proto::control`'s, the types the VMM serves with; each call
//! reads the answer type of its own request.
//!
//! ```text
//! → {"cmd":"pause"}                         ← {"ok":true,"state":"paused"}
//! → {"cmd":"fork","count":2}                ← {"ok":true,"fork":{"children":[...]}}
//! → {"cmd":"explode"}                       ← {"ok":false,"error":{"code","message"}}
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use vmm_proto::control::{
    ChildReport, ErrorCode, ForkReply, Reply, Request, SnapshotReply, StateReply, StatusReply,
};

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
    #[error("Cannot encode the request")]
    Request(#[source] serde_json::Error),
    #[error("The VMM sent a reply this client cannot read")]
    Reply(#[source] serde_json::Error),
    #[error("The VMM refused the request ({code}): {message}")]
    Refused { code: ErrorCode, message: String },
}

/// One connection to a VMM's control socket.
#[derive(Debug)]
pub struct ControlSocket {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
    peer: Option<i32>,
}

impl ControlSocket {
    /// Connects to the socket at `path` without following a link there
    /// (it is in VMM-owned space).
    pub async fn connect(path: &Path) -> Result<Self, ControlError> {
        let connect_err = |source| ControlError::Connect {
            path: path.to_owned(),
            source,
        };
        let socket = super::vm::NoFollow::socket(path).map_err(connect_err)?;
        let stream = UnixStream::connect(socket.path())
            .await
            .map_err(connect_err)?;
        let peer = stream.peer_cred().ok().and_then(|c| c.pid());
        let (read, writer) = stream.into_split();
        Ok(Self {
            reader: BufReader::new(read),
            writer,
            peer,
        })
    }

    /// The pid, in this process's PID namespace, of the process that
    /// listens on the socket (the kernel's word, not the VMM's): how the
    /// backend learns the host pid of a VMM in a PID namespace of its own.
    pub fn peer_pid(&self) -> Option<i32> {
        self.peer
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

    /// Send `request`; its answer, read as `T`, or the VMM's refusal.
    pub async fn call<T: DeserializeOwned>(
        &mut self,
        request: &Request,
    ) -> Result<T, ControlError> {
        let mut line = serde_json::to_vec(request).map_err(ControlError::Request)?;
        line.push(b'\n');
        self.writer.write_all(&line).await?;
        let mut reply = String::new();
        let read = tokio::time::timeout(REPLY_TIMEOUT, self.reader.read_line(&mut reply))
            .await
            .map_err(|_| ControlError::Timeout(REPLY_TIMEOUT))??;
        if read == 0 {
            return Err(ControlError::Closed);
        }
        match serde_json::from_str::<Reply<T>>(&reply).map_err(ControlError::Reply)? {
            Reply::Done(answer) => Ok(answer),
            Reply::Refused(refusal) => Err(ControlError::Refused {
                code: refusal.code,
                message: refusal.message,
            }),
        }
    }

    pub async fn status(&mut self) -> Result<StatusReply, ControlError> {
        self.call(&Request::Status {}).await
    }

    pub async fn pause(&mut self) -> Result<StateReply, ControlError> {
        self.call(&Request::Pause {
            to_disk: false,
            dir: None,
            durable: true,
        })
        .await
    }

    /// Snapshot into `dir` and end the VMM process.
    pub async fn pause_to_disk(&mut self, dir: &Path) -> Result<SnapshotReply, ControlError> {
        self.call(&Request::Pause {
            to_disk: true,
            dir: Some(dir.to_owned()),
            durable: true,
        })
        .await
    }

    pub async fn resume(&mut self) -> Result<StateReply, ControlError> {
        self.call(&Request::Resume {}).await
    }

    /// Fork into `count` running children; the reply lists each child's
    /// pid, control socket, vsock socket, serial log and status.
    pub async fn fork(&mut self, count: u32) -> Result<Vec<ChildReport>, ControlError> {
        let reply: ForkReply = self
            .call(&Request::Fork {
                count,
                paused: false,
            })
            .await?;
        Ok(reply.fork.children)
    }

    pub async fn shutdown(&mut self) -> Result<StateReply, ControlError> {
        self.call(&Request::Shutdown {}).await
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::UnixListener;
    use vmm_proto::control::{ChildStatus, VmState};

    use super::*;

    /// A socket that answers each expected request line with its reply
    /// line, as a VMM writes them, and fails on any other request.
    async fn vmm(exchanges: &'static [(&'static str, &'static str)]) -> (ControlSocket, PathBuf) {
        let path = std::env::temp_dir().join(format!(
            "sandbox-ctl-{}-{}.sock",
            std::process::id(),
            exchanges.len()
        ));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind");
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            for (request, reply) in exchanges {
                let line = lines.next_line().await.expect("read").expect("a request");
                assert_eq!(line, *request);
                write
                    .write_all(format!("{reply}\n").as_bytes())
                    .await
                    .expect("write");
            }
        });
        let socket = ControlSocket::connect(&path).await.expect("connect");
        (socket, path)
    }

    #[tokio::test]
    async fn answers_are_read_as_their_types_and_refusals_as_errors() {
        let (mut ctl, path) = vmm(&[
            (
                r#"{"cmd":"status"}"#,
                r#"{"disks":[{"base":"b","layers":["t","t.f1p"],"read_only":false}],"mem_mib":64,"ok":true,"pid":7,"state":"paused","vcpus":1}"#,
            ),
            (
                r#"{"cmd":"fork","count":1,"paused":false}"#,
                r#"{"fork":{"capture_ms":0.5,"children":[{"control_socket":"/v/ctl.sock.f1c0","disk_tops":["/v/t.f1c0"],"pid":100,"serial_log":"/v/serial.log.f1c0","status":"Cannot map guest memory","vsock_uds":null}],"fork_syscalls_ms":0.1,"freeze_ms":0.0,"parent_paused_ms":1.0,"vcpu_pause_ms":0.2},"ok":true}"#,
            ),
            (
                r#"{"cmd":"pause","to_disk":true,"dir":"/s","durable":true}"#,
                r#"{"error":{"code":"snapshot_failed","message":"Cannot write /s"},"ok":false}"#,
            ),
        ])
        .await;
        let status = ctl.status().await.expect("status");
        assert_eq!(status.state, VmState::Paused);
        assert_eq!(status.pid, 7);
        assert_eq!(status.disks[0].layers.last(), Some(&PathBuf::from("t.f1p")));
        let children = ctl.fork(1).await.expect("fork");
        assert_eq!(children.len(), 1);
        assert_eq!(children[0].pid, 100);
        assert_eq!(
            children[0].status,
            ChildStatus::Failed("Cannot map guest memory".into())
        );
        let refused = ctl.pause_to_disk(Path::new("/s")).await;
        assert!(
            matches!(
                &refused,
                Err(ControlError::Refused { code: ErrorCode::SnapshotFailed, message })
                    if message == "Cannot write /s"
            ),
            "{refused:?}"
        );
        let _ = std::fs::remove_file(&path);
    }
}
