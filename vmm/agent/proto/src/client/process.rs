//! Background processes on the client side: start, list, read their
//! output (following it as it comes), signal.

use super::{Chunks, Client, Result, unexpected};
use crate::message::{Body, ExecRequest, ProcessInfo};

/// A background process's output, chunk by chunk: `None` at the end (of
/// what is kept, or, when following, once the process has exited and all
/// of it was sent).
pub type ProcessOutput = Chunks;

impl Client {
    /// Starts `request` in the background (its stdin is `/dev/null`, it
    /// has no terminal); returns its pid.
    pub async fn spawn(&self, request: ExecRequest) -> Result<u32> {
        match self.call(Body::Spawn(request)).await? {
            Body::Started { pid } => Ok(pid),
            other => Err(unexpected(&other)),
        }
    }

    /// The background processes, oldest first.
    pub async fn processes(&self) -> Result<Vec<ProcessInfo>> {
        match self.call(Body::Processes).await? {
            Body::ProcessList(list) => Ok(list),
            other => Err(unexpected(&other)),
        }
    }

    /// The output of background process `pid` from byte `offset`; with
    /// `follow`, until it exits.
    pub async fn process_output(
        &self,
        pid: u32,
        offset: u64,
        follow: bool,
    ) -> Result<ProcessOutput> {
        let stream = self
            .open(Body::ProcessOutput {
                pid,
                offset,
                follow,
            })
            .await?;
        Ok(Chunks::new(stream))
    }

    /// Sends `signal` to the process group of background process `pid`.
    pub async fn signal(&self, pid: u32, signal: i32) -> Result<()> {
        match self.call(Body::Signal { pid, signal }).await? {
            Body::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }
}
