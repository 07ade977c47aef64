//! The body of every failed API call: `{"error": {"code", "message"}}`.
//! `code` is stable and meant for programs (`not_found`, `conflict`, …);
//! `message` is for people and may change.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
    /// For a request whose fields are invalid, every problem at once, each
    /// under the field it concerns; `message` says them all too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldError>,
}

/// What is wrong with one field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FieldError {
    /// The field's name in the request body (`url`, `events`, …).
    pub field: String,
    pub message: String,
}

/// What went wrong, for programs, with the HTTP status it comes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400 (415 or 422 for a JSON body the server cannot read): the
    /// request is malformed or names something invalid.
    BadRequest,
    /// 401: no token, or an unknown or revoked one.
    Unauthorized,
    /// 403: the token lacks the scope, or is limited to another repository.
    Forbidden,
    /// 403: a page of another origin tried to open a terminal.
    CrossOrigin,
    /// 403: the push breaks a rule of the repository (e.g. a protected
    /// branch).
    PushRefused,
    /// 404: it does not exist, or the caller may not see it.
    NotFound,
    /// 409: it already exists, or its state forbids the request.
    Conflict,
    /// 400: git could not unpack the pushed objects.
    BadPack,
    /// 413: the body, file or output is over its limit.
    PayloadTooLarge,
    /// 415: the body's `Content-Type` is not the one the endpoint reads.
    UnsupportedMediaType,
    /// 422: the repository at `import_url` could not be cloned.
    ImportFailed,
    /// 429: the forge has no room for another sandbox right now.
    Capacity,
    /// 429: the token's own sandbox quota is used up.
    Quota,
    /// 503: no sandbox backend can run on this host.
    Unavailable,
    /// 502: the sandbox failed the request.
    SandboxError,
    /// 502: nothing answered HTTP on the VM's port.
    BadGateway,
    /// 502: GitHub did not answer as expected.
    GithubUnavailable,
    /// 503: the GitHub App is not configured on this forge.
    GithubNotConfigured,
    /// 504: the sandbox's agent stopped answering.
    AgentUnresponsive,
    /// 500: the server's fault; its log says more.
    Internal,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: &'static [Self] = &[
        Self::BadRequest,
        Self::Unauthorized,
        Self::Forbidden,
        Self::CrossOrigin,
        Self::PushRefused,
        Self::NotFound,
        Self::Conflict,
        Self::BadPack,
        Self::PayloadTooLarge,
        Self::UnsupportedMediaType,
        Self::ImportFailed,
        Self::Capacity,
        Self::Quota,
        Self::Unavailable,
        Self::SandboxError,
        Self::BadGateway,
        Self::GithubUnavailable,
        Self::GithubNotConfigured,
        Self::AgentUnresponsive,
        Self::Internal,
    ];

    /// The wire spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::CrossOrigin => "cross_origin",
            Self::PushRefused => "push_refused",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::BadPack => "bad_pack",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::ImportFailed => "import_failed",
            Self::Capacity => "capacity",
            Self::Quota => "quota",
            Self::Unavailable => "unavailable",
            Self::SandboxError => "sandbox_error",
            Self::BadGateway => "bad_gateway",
            Self::GithubUnavailable => "github_unavailable",
            Self::GithubNotConfigured => "github_not_configured",
            Self::AgentUnresponsive => "agent_unresponsive",
            Self::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code,
                message: message.into(),
                fields: Vec::new(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_body_nests_code_and_message() {
        let body = ErrorBody::new(ErrorCode::NotFound, "VM x does not exist");
        assert_eq!(
            serde_json::to_value(&body).expect("serialises"),
            serde_json::json!({ "error": { "code": "not_found", "message": "VM x does not exist" } })
        );
    }

    #[test]
    fn every_code_is_spelled_as_serde_spells_it() {
        for &code in ErrorCode::ALL {
            assert_eq!(
                serde_json::to_value(code).expect("serialises"),
                serde_json::json!(code.as_str())
            );
        }
    }
}
