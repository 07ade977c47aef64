//! Exec on the client side: start a process, stream its output, feed its
//! stdin, resize its terminal, cancel it.

use super::{Client, ClientError, Result, Stream, StreamSender, unexpected};
use crate::message::{Body, ExecRequest, Exited, PtySize};

/// One event of a running exec, in the order the agent sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exited(Exited),
}

/// Everything an exec produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exited: Exited,
}

/// A running exec. Dropping it before `Exited` cancels the process.
pub struct Exec {
    stream: Stream,
    pid: u32,
    done: bool,
}

impl std::fmt::Debug for Exec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exec").field("pid", &self.pid).finish()
    }
}

/// The input side of an exec; clone it to write stdin from another task.
#[derive(Clone)]
pub struct ExecInput {
    sender: StreamSender,
}

impl std::fmt::Debug for ExecInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecInput")
            .field("stream", &self.sender.id)
            .finish()
    }
}

impl Client {
    /// Starts a process; returns once the agent has spawned it.
    pub async fn exec(&self, req: ExecRequest) -> Result<Exec> {
        let mut stream = self.open(Body::Exec(req)).await?;
        match stream.recv().await? {
            Body::Started { pid } => Ok(Exec {
                stream,
                pid,
                done: false,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Runs a process to the end and collects its output.
    pub async fn run(&self, req: ExecRequest) -> Result<Output> {
        self.exec(req).await?.output().await
    }
}

impl Exec {
    /// The process id inside the sandbox.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn input(&self) -> ExecInput {
        ExecInput {
            sender: self.stream.sender.clone(),
        }
    }

    /// The next output chunk or the exit; `None` after `Exited`.
    pub async fn next(&mut self) -> Result<Option<ExecEvent>> {
        if self.done {
            return Ok(None);
        }
        match self.stream.recv().await? {
            Body::Stdout(b) => Ok(Some(ExecEvent::Stdout(b.into_vec()))),
            Body::Stderr(b) => Ok(Some(ExecEvent::Stderr(b.into_vec()))),
            Body::Exited(e) => {
                self.done = true;
                Ok(Some(ExecEvent::Exited(e)))
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Reads to the end, collecting stdout and stderr.
    pub async fn output(mut self) -> Result<Output> {
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
                None => return Err(ClientError::Closed),
            }
        }
    }
}

impl ExecInput {
    /// Writes to the process's stdin (flow-controlled).
    pub async fn write(&self, data: &[u8]) -> Result<()> {
        self.sender.send_data(data).await
    }

    /// Closes stdin (on a terminal: sends end-of-transmission, ^D).
    pub async fn close(&self) -> Result<()> {
        self.sender.send(Body::Eof).await
    }

    pub async fn resize(&self, size: PtySize) -> Result<()> {
        self.sender.send(Body::Resize(size)).await
    }

    /// Kills the process group. The exec still ends with `Exited`.
    pub async fn cancel(&self) -> Result<()> {
        self.sender.send(Body::Cancel).await
    }

    /// Writes everything, then closes stdin.
    pub async fn write_all_and_close(&self, data: &[u8]) -> Result<()> {
        self.write(data).await?;
        self.close().await
    }
}
