//! File operations on the client side. Reads and writes stream in
//! [`CHUNK_BYTES`](crate::message::CHUNK_BYTES) chunks under flow control,
//! so a file of any size moves in bounded memory.

use tokio::io::{AsyncRead, AsyncReadExt};

use super::{Chunks, Client, ClientError, Result, unexpected};
use crate::message::{Body, CHUNK_BYTES, DirEntry, FileStat, WriteFile};

/// A file being read, chunk by chunk.
pub type FileReader = Chunks;

impl Client {
    /// Opens a file for streaming read.
    pub async fn read_file_chunks(&self, path: &str) -> Result<FileReader> {
        let stream = self
            .open(Body::ReadFile {
                path: path.to_owned(),
            })
            .await?;
        Ok(Chunks::new(stream))
    }

    /// Reads a whole file into memory.
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        let mut r = self.read_file_chunks(path).await?;
        let mut out = Vec::new();
        while let Some(chunk) = r.next_chunk().await? {
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Writes a file atomically (the agent writes a temporary file beside it
    /// and renames it into place once all bytes arrived).
    pub async fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<()> {
        self.write_file_from(path, mode, false, data).await
    }

    /// Streams `reader` into a file atomically; `create_parents` acts like
    /// `mkdir -p` on the parent directory.
    pub async fn write_file_from<R>(
        &self,
        path: &str,
        mode: u32,
        create_parents: bool,
        reader: R,
    ) -> Result<()>
    where
        R: AsyncRead,
    {
        let mut reader = std::pin::pin!(reader);
        let mut stream = self
            .open(Body::WriteFile(WriteFile {
                path: path.to_owned(),
                mode,
                create_parents,
            }))
            .await?;
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            if let Err(e) = stream.sender.send_data(&buf[..n]).await {
                // The agent may have ended the stream with an error: report it.
                return match stream.recv().await {
                    Err(remote @ ClientError::Remote(_)) => Err(remote),
                    _ => Err(e),
                };
            }
        }
        stream.sender.send(crate::message::Body::Eof).await?;
        match stream.recv().await? {
            Body::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn list_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        match self
            .call(Body::ListDir {
                path: path.to_owned(),
            })
            .await?
        {
            Body::Entries(e) => Ok(e),
            other => Err(unexpected(&other)),
        }
    }

    /// Metadata of `path` itself (a symlink is not followed).
    pub async fn stat(&self, path: &str) -> Result<FileStat> {
        match self
            .call(Body::Stat {
                path: path.to_owned(),
            })
            .await?
        {
            Body::Metadata(s) => Ok(s),
            other => Err(unexpected(&other)),
        }
    }

    /// `mkdir -p` with `mode` for the directories it creates.
    pub async fn mkdir(&self, path: &str, mode: u32) -> Result<()> {
        match self
            .call(Body::Mkdir {
                path: path.to_owned(),
                mode,
            })
            .await?
        {
            Body::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Removes a file, a symlink, or a directory (its content too when
    /// `recursive`).
    pub async fn remove(&self, path: &str, recursive: bool) -> Result<()> {
        match self
            .call(Body::Remove {
                path: path.to_owned(),
                recursive,
            })
            .await?
        {
            Body::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }
}
