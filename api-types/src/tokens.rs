//! `/v1/tokens`: access tokens (admin only).

use serde::{Deserialize, Serialize};

/// `POST /v1/tokens`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
    /// At least one.
    #[schema(value_type = Vec<TokenScope>)]
    pub scopes: Vec<String>,
    /// `owner/name`: limit the token to this repository.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum TokenScope {
    /// Everything: tokens, repositories, every VM.
    #[serde(rename = "admin")]
    Admin,
    /// Push, create VMs, manage webhooks.
    #[serde(rename = "repo:write")]
    RepoWrite,
    /// Clone and read.
    #[serde(rename = "repo:read")]
    RepoRead,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    #[schema(value_type = Vec<TokenScope>)]
    pub scopes: Vec<String>,
    /// The repository it is limited to, `owner/name`.
    pub repo: Option<String>,
    pub created_at: String,
    /// When it was last presented, to the minute: a use within a minute of
    /// the one recorded is not written again.
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
    /// The secret: only in the answer to creation, never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_listed_token_has_no_secret_key() {
        let view = TokenView {
            id: "t1".into(),
            name: "ci".into(),
            scopes: vec!["repo:read".into()],
            repo: None,
            created_at: "t0".into(),
            last_used_at: None,
            revoked_at: None,
            token: None,
        };
        assert_eq!(
            serde_json::to_value(view).expect("serialises"),
            json!({ "id": "t1", "name": "ci", "scopes": ["repo:read"], "repo": null,
                    "created_at": "t0", "last_used_at": null, "revoked_at": null })
        );
    }
}
