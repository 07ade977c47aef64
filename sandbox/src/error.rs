//! The one error type of sandbox operations, whichever backend ran them.

use std::path::PathBuf;

/// Failure of a sandbox operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("No sandbox {0}")]
    NotFound(String),
    #[error("Sandbox {id} is {state:?}; this operation needs it {needed}")]
    WrongState {
        id: String,
        state: crate::State,
        needed: &'static str,
    },
    #[error("Path {path:?} leaves the sandbox's file tree")]
    PathEscapes { path: String },
    #[error("The {backend} backend cannot {what}")]
    Unsupported {
        backend: crate::BackendKind,
        what: String,
    },
    #[error("No sandbox backend can run on this host: {0}")]
    NoBackend(String),
    #[error("Invalid request: {0}")]
    Invalid(String),
    #[error(transparent)]
    Container(Box<sandbox_container::BackendError>),
    #[error("Talking to sandbox {id}'s agent failed")]
    Agent {
        id: String,
        #[source]
        source: agent_proto::ClientError,
    },
    #[error("The VMM of sandbox {id} failed: {message}")]
    Vmm { id: String, message: String },
    #[error("{what} in sandbox {id} is larger than the limit of {limit} bytes")]
    TooLarge {
        id: String,
        what: String,
        limit: u64,
    },
    #[error("Sandbox {id}'s agent did not answer {what} within {secs} s")]
    Unresponsive { id: String, what: String, secs: u64 },
    #[error("I/O on {path} failed")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Sandbox node {node}: {message}")]
    Node { node: String, message: String },
    #[error("A blocking backend task failed")]
    Task(#[source] tokio::task::JoinError),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    pub(crate) fn agent(id: &str) -> impl FnOnce(agent_proto::ClientError) -> Error + '_ {
        move |source| Error::Agent {
            id: id.to_owned(),
            source,
        }
    }

    /// The agent answered with an error of this kind (e.g. the file is
    /// missing), as opposed to a broken connection.
    pub fn remote_kind(&self) -> Option<agent_proto::ErrorKind> {
        self.remote().map(|remote| remote.kind)
    }

    /// The agent's own answer, when it refused the operation.
    pub fn remote(&self) -> Option<&agent_proto::RemoteError> {
        match self {
            Error::Agent {
                source: agent_proto::ClientError::Remote(remote),
                ..
            } => Some(remote),
            _ => None,
        }
    }
}

impl From<sandbox_container::BackendError> for Error {
    fn from(err: sandbox_container::BackendError) -> Self {
        use sandbox_container::BackendError as E;
        match err {
            E::NotFound(id) => Error::NotFound(id),
            E::WrongState { id, status, needed } => Error::WrongState {
                id,
                state: crate::container::state(status),
                needed,
            },
            E::Move(message) => Error::Invalid(format!("moving the sandbox failed: {message}")),
            other => Error::Container(Box::new(other)),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its sources on one line.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
