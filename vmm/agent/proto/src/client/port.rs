//! Port forwarding on the client side: a byte stream to a TCP port inside
//! the sandbox, with half-close in both directions.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{Client, ClientError, Result, Stream, unexpected};
use crate::message::{Body, CHUNK_BYTES};

/// A connection to a port inside the sandbox.
pub struct PortStream {
    stream: Stream,
    /// The agent sent `Eof` (the sandbox side closed its write half).
    eof: bool,
}

impl std::fmt::Debug for PortStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortStream")
            .field("eof", &self.eof)
            .finish()
    }
}

impl Client {
    /// Connects to `port` on the sandbox's loopback. Returns once the agent
    /// has connected (or failed to: `ErrorKind::ConnectionRefused`).
    pub async fn open_port(&self, port: u16) -> Result<PortStream> {
        let mut stream = self.open(Body::OpenPort { port }).await?;
        match stream.recv().await? {
            Body::Started { .. } => Ok(PortStream { stream, eof: false }),
            other => Err(unexpected(&other)),
        }
    }
}

/// A listener on a port inside the sandbox; connections made to it by
/// sandbox processes arrive here.
pub struct PortListener {
    client: Client,
    stream: Stream,
    port: u16,
}

impl std::fmt::Debug for PortListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortListener")
            .field("port", &self.port)
            .finish()
    }
}

impl Client {
    /// Listens on `127.0.0.1:port` inside the sandbox (0: any free port).
    /// Dropping the listener closes it and its connections.
    pub async fn listen(&self, port: u16) -> Result<PortListener> {
        let mut stream = self.open(Body::Listen { port }).await?;
        match stream.recv().await? {
            Body::Listening { port } => Ok(PortListener {
                client: self.clone(),
                stream,
                port,
            }),
            other => Err(unexpected(&other)),
        }
    }
}

impl PortListener {
    /// The port bound inside the sandbox.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The next connection a sandbox process made to the port.
    pub async fn accept(&mut self) -> Result<PortStream> {
        match self.stream.recv().await? {
            Body::Accepted { stream } => Ok(PortStream {
                stream: self.client.adopt(stream)?,
                eof: false,
            }),
            other => Err(unexpected(&other)),
        }
    }
}

impl PortStream {
    /// Sends bytes to the sandbox side.
    pub async fn write(&self, data: &[u8]) -> Result<()> {
        self.stream.sender.send_data(data).await
    }

    /// Half-closes towards the sandbox (its reader sees end of stream).
    pub async fn shutdown(&self) -> Result<()> {
        self.stream.sender.send(Body::Eof).await
    }

    /// Next bytes from the sandbox side; `None` once it half-closed.
    pub async fn read(&mut self) -> Result<Option<Vec<u8>>> {
        if self.eof {
            return Ok(None);
        }
        match self.stream.recv().await? {
            Body::Data(b) => Ok(Some(b.into_vec())),
            Body::Eof => {
                self.eof = true;
                Ok(None)
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Copies both ways between `io` and the sandbox port until both sides
    /// have half-closed, forwarding each half-close. Returns the bytes sent
    /// to and received from the sandbox.
    pub async fn splice<S>(mut self, io: S) -> Result<(u64, u64)>
    where
        S: AsyncRead + AsyncWrite,
    {
        let (mut rd, mut wr) = tokio::io::split(io);
        let sender = self.stream.sender.clone();
        let upstream = async move {
            let mut buf = vec![0u8; CHUNK_BYTES];
            let mut total = 0u64;
            loop {
                let n = rd.read(&mut buf).await?;
                if n == 0 {
                    sender.send(Body::Eof).await?;
                    return Ok::<u64, ClientError>(total);
                }
                sender.send_data(&buf[..n]).await?;
                total += n as u64;
            }
        };
        let downstream = async {
            let mut total = 0u64;
            while let Some(chunk) = self.read().await? {
                wr.write_all(&chunk).await?;
                total += chunk.len() as u64;
            }
            wr.shutdown().await?;
            Ok::<u64, ClientError>(total)
        };
        let (up, down) = tokio::try_join!(upstream, downstream)?;
        // Both directions closed: the agent ends the stream with `Done`.
        match self.stream.recv().await? {
            Body::Done => Ok((up, down)),
            other => Err(unexpected(&other)),
        }
    }
}
