//! [`Sandbox`]: one sandbox as a value, its backend and its id, for callers
//! that hold on to a sandbox rather than to an id (the forge's branch
//! runner). Every method is the [`Backend`] operation of the same name.

use std::sync::Arc;

use agent_proto::{DirEntry, Output};

use crate::agent::ExecStream;
use crate::error::Result;
use crate::spec::{Carried, Command, PauseMode, SandboxInfo, Spec, Stats};
use crate::{Backend, PortStream};

/// A handle on one sandbox. Cloning it does not copy the sandbox
/// ([`Sandbox::fork`] does).
#[derive(Clone)]
pub struct Sandbox {
    backend: Arc<dyn Backend>,
    id: String,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("backend", &self.backend.kind())
            .field("id", &self.id)
            .finish()
    }
}

impl Sandbox {
    /// Create a sandbox on `backend`.
    pub async fn create(backend: Arc<dyn Backend>, spec: Spec) -> Result<Self> {
        let info = backend.create(spec).await?;
        Ok(Self {
            backend,
            id: info.id,
        })
    }

    /// A handle on the existing sandbox `id` (checked on first use).
    pub fn attach(backend: Arc<dyn Backend>, id: impl Into<String>) -> Self {
        Self {
            backend,
            id: id.into(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub async fn info(&self) -> Result<SandboxInfo> {
        self.backend.get(&self.id).await
    }

    pub async fn exec(&self, command: Command) -> Result<Output> {
        self.backend.exec(&self.id, command).await
    }

    pub async fn exec_stream(&self, command: Command) -> Result<ExecStream> {
        self.backend.exec_stream(&self.id, command).await
    }

    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        self.backend.read_file(&self.id, path).await
    }

    pub async fn write_file(&self, path: &str, data: &[u8]) -> Result<()> {
        self.backend.write_file(&self.id, path, data).await
    }

    pub async fn list_files(&self, path: &str) -> Result<Vec<DirEntry>> {
        self.backend.list_files(&self.id, path).await
    }

    pub async fn delete_file(&self, path: &str) -> Result<()> {
        self.backend.delete_file(&self.id, path).await
    }

    pub async fn open_port(&self, port: u16) -> Result<PortStream> {
        self.backend.open_port(&self.id, port).await
    }

    pub async fn pause(&self, mode: PauseMode) -> Result<SandboxInfo> {
        self.backend.pause(&self.id, mode).await
    }

    pub async fn resume(&self) -> Result<Carried> {
        self.backend.resume(&self.id).await
    }

    /// `count` copies, each with what it carried over.
    pub async fn fork(&self, count: usize) -> Result<Vec<(Sandbox, Carried)>> {
        let forks = self.backend.fork(&self.id, count).await?;
        Ok(forks
            .into_iter()
            .map(|carried| {
                let copy = Sandbox::attach(self.backend.clone(), carried.sandbox.id.clone());
                (copy, carried)
            })
            .collect())
    }

    pub async fn stats(&self) -> Result<Stats> {
        self.backend.stats(&self.id).await
    }

    pub async fn destroy(self) -> Result<()> {
        self.backend.destroy(&self.id).await
    }
}
