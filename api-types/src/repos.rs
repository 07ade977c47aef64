//! `/v1/repos`: repositories and their branches.

use serde::{Deserialize, Serialize};

/// `POST /v1/repos`: an empty repository, or one imported from `import_url`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRepo {
    /// `owner/name`.
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_branch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub import_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoView {
    pub id: String,
    /// `owner/name`.
    pub name: String,
    pub default_branch: String,
    pub clone_url: String,
    pub created_at: String,
}

/// `GET /v1/repos/{owner}/{name}/branches`: each branch and its head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchView {
    pub name: String,
    pub commit: CommitView,
}

/// A commit as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitView {
    pub id: String,
    pub message: String,
    pub author: Author,
    /// Author time, RFC 3339.
    pub time: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Author {
    pub name: String,
    pub email: String,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_repo_request_leaves_out_what_it_does_not_set() {
        let request = CreateRepo {
            name: "acme/web".into(),
            ..CreateRepo::default()
        };
        assert_eq!(
            serde_json::to_value(request).expect("serialises"),
            json!({ "name": "acme/web" })
        );
        assert!(serde_json::from_value::<CreateRepo>(json!({ "name": "a/b", "x": 1 })).is_err());
    }
}
