//! The GitHub App's API: `/v1/repos/{owner}/{name}/github` (link, show
//! each ref's sync state, unlink), `GET /v1/github`, `GET /v1/github/repos`
//! and the answer of the inbound `POST /github/webhook`.

use serde::{Deserialize, Serialize};

use crate::states::RefSyncState;

/// `POST /v1/repos/{owner}/{name}/github`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GithubLinkRequest {
    /// `owner/name` on GitHub.
    pub repository: String,
}

/// A forge repository's link to GitHub and each ref's sync state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GithubLinkView {
    /// `owner/name` on GitHub.
    pub repository: String,
    pub installation_id: i64,
    pub linked_at: String,
    pub refs: Vec<RefView>,
    /// The forge repository, `owner/name`: only in `GET /v1/github/repos`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
}

/// What the last sync saw of one ref.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RefView {
    pub ref_name: String,
    /// The last commit both sides agreed on.
    pub synced_sha: Option<String>,
    pub forge_sha: Option<String>,
    pub github_sha: Option<String>,
    pub state: RefSyncState,
    pub last_sync_at: String,
    pub last_error: Option<String>,
}

/// `GET /v1/github`: the App's public settings and its installations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GithubOverview {
    pub app_id: u64,
    pub api_url: String,
    pub git_url: String,
    pub reconcile_secs: u64,
    pub installations: Vec<Installation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Installation {
    /// GitHub's installation id.
    pub id: i64,
    pub account: String,
    pub created_at: String,
}

/// The answer to an inbound GitHub webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookAccepted {
    /// Its `X-GitHub-Delivery`.
    pub delivery: String,
    /// Seen before (by id or by body): not processed again.
    pub duplicate: bool,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_link_shows_each_refs_state_and_the_repo_only_when_listed() {
        let mut link = GithubLinkView {
            repository: "acme/web".into(),
            installation_id: 5,
            linked_at: "t0".into(),
            refs: vec![RefView {
                ref_name: "refs/heads/main".into(),
                synced_sha: Some("a".into()),
                forge_sha: Some("b".into()),
                github_sha: Some("c".into()),
                state: RefSyncState::Diverged,
                last_sync_at: "t1".into(),
                last_error: None,
            }],
            repo: None,
        };
        let value = serde_json::to_value(&link).expect("serialises");
        assert!(value.get("repo").is_none());
        assert_eq!(value["refs"][0]["state"], "diverged");
        link.repo = Some("acme/web".into());
        let value = serde_json::to_value(&link).expect("serialises");
        assert_eq!(value["repo"], json!("acme/web"));
        let back: GithubLinkView = serde_json::from_value(value).expect("deserialises");
        assert_eq!(back, link);
    }
}
