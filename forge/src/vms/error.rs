//! Errors of VM operations, each with the status the API gives it.

use api_types::ErrorCode;
use axum::http::StatusCode;

use crate::api::ApiError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("VM {0} does not exist")]
    NotFound(String),
    /// Something else a request named is not there (the message says what).
    #[error("{0}")]
    Missing(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("VM {0} crashed: its processes are gone. Its disk is kept until you delete it")]
    Crashed(String),
    #[error(
        "VM {0} is lost: its sandbox node stopped reporting. It answers again when the node does"
    )]
    Lost(String),
    #[error(
        "{live} sandboxes are running or paused in memory, the forge's cap is {cap}; waited {waited_secs}s in the queue (position {position} of {queued}): pause to disk or delete one, or try again later"
    )]
    Capacity {
        live: usize,
        cap: usize,
        waited_secs: u64,
        position: usize,
        queued: usize,
    },
    #[error(
        "Sandboxes running or paused in memory hold {live_mib} MiB; {want_mib} MiB more would pass the forge's memory cap of {cap_mib} MiB; waited {waited_secs}s in the queue (position {position} of {queued}): pause to disk or delete one, or try again later"
    )]
    MemoryCapacity {
        live_mib: u64,
        want_mib: u64,
        cap_mib: u64,
        waited_secs: u64,
        position: usize,
        queued: usize,
    },
    #[error("This token already has {live} {what}, its quota is {quota}: {advice}")]
    Quota {
        /// What is counted: "live sandboxes", "snapshots", ...
        what: &'static str,
        live: usize,
        quota: usize,
        /// What to do about it.
        advice: &'static str,
    },
    #[error("Sandboxes are unavailable on this forge: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sandbox(#[from] ::sandbox::Error),
}

impl From<VmError> for ApiError {
    fn from(error: VmError) -> Self {
        use ::sandbox::Error as S;
        let message = error.to_string();
        match error {
            VmError::NotFound(_) | VmError::Missing(_) | VmError::Sandbox(S::NotFound(_)) => {
                ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
            }
            VmError::Invalid(_) | VmError::Sandbox(S::Invalid(_) | S::PathEscapes { .. }) => {
                ApiError::bad_request(message)
            }
            VmError::Conflict(_)
            | VmError::Crashed(_)
            | VmError::Sandbox(S::WrongState { .. } | S::Unsupported { .. }) => {
                ApiError::conflict(message)
            }
            VmError::Capacity { .. } | VmError::MemoryCapacity { .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, ErrorCode::Capacity, message)
            }
            VmError::Quota { .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, ErrorCode::Quota, message)
            }
            VmError::Unavailable(_) | VmError::Lost(_) | VmError::Sandbox(S::Node { .. }) => {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    message,
                )
            }
            VmError::Sandbox(S::TooLarge { .. }) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                message,
            ),
            VmError::Sandbox(S::Unresponsive { .. }) => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                ErrorCode::AgentUnresponsive,
                message,
            ),
            VmError::Sandbox(ref inner) if inner.remote().is_some() => {
                // The agent refused: say why, with the status that fits.
                use ::sandbox::ErrorKind as K;
                let remote = inner.remote().map(|r| (r.kind, r.message.clone()));
                let (kind, why) = remote.unwrap_or((K::Io, String::new()));
                let message = format!("{message}: {why}");
                match kind {
                    K::NotFound | K::NotADirectory | K::IsADirectory => {
                        ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
                    }
                    K::PermissionDenied => {
                        ApiError::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
                    }
                    K::AlreadyExists | K::DirectoryNotEmpty | K::Unsupported => {
                        ApiError::conflict(message)
                    }
                    K::InvalidInput => ApiError::bad_request(message),
                    K::ConnectionRefused | K::Protocol | K::Io => {
                        ApiError::new(StatusCode::BAD_GATEWAY, ErrorCode::SandboxError, message)
                    }
                }
            }
            VmError::Store(inner) => inner.into(),
            VmError::Sandbox(inner) => ApiError::internal(inner),
        }
    }
}
