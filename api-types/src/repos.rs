//! `/v1/repos`: repositories and their branches.

use serde::{Deserialize, Serialize};

/// `POST /v1/repos`: an empty repository, or one imported from `import_url`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRepo {
    /// `owner/name`.
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_branch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub import_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RepoView {
    pub id: String,
    /// `owner/name`.
    pub name: String,
    pub default_branch: String,
    pub clone_url: String,
    pub created_at: String,
}

/// `GET /v1/repos/{owner}/{name}/branches`: each branch and its head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BranchView {
    pub name: String,
    pub commit: CommitView,
    /// The VM the branch's pipelines run in, once a push made one (its
    /// forks are other VMs, whose `parent` names it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// A commit as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommitView {
    pub id: String,
    pub message: String,
    pub author: Author,
    /// Author time, RFC 3339.
    pub time: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Author {
    pub name: String,
    pub email: String,
}

/// `GET /v1/repos/{owner}/{name}/contents?branch=&path=`: what a path
/// names at the head of a branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Contents {
    /// A directory: directories first, then the rest, each sorted by name.
    Dir {
        path: String,
        branch: String,
        entries: Vec<TreeEntry>,
    },
    /// A file. A file over 1 MiB is `truncated`: only its first MiB is
    /// read, and `size` is the whole file's.
    File {
        path: String,
        branch: String,
        /// `None` for binary content.
        text: Option<String>,
        binary: bool,
        truncated: bool,
        size: u64,
    },
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TreeEntry {
    pub name: String,
    pub kind: EntryKind,
}

/// What a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Dir,
    File,
    Symlink,
    Submodule,
}

impl EntryKind {
    /// The wire spelling, also the CSS class the web UI gives the entry.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dir => "dir",
            Self::File => "file",
            Self::Symlink => "symlink",
            Self::Submodule => "submodule",
        }
    }
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

    #[test]
    fn contents_are_tagged_by_type() {
        let dir = Contents::Dir {
            path: "src".into(),
            branch: "main".into(),
            entries: vec![TreeEntry {
                name: "lib".into(),
                kind: EntryKind::Submodule,
            }],
        };
        assert_eq!(
            serde_json::to_value(&dir).expect("serialises"),
            json!({
                "type": "dir", "path": "src", "branch": "main",
                "entries": [{ "name": "lib", "kind": "submodule" }],
            })
        );
        let file = json!({
            "type": "file", "path": "a.bin", "branch": "main", "text": null,
            "binary": true, "truncated": false, "size": 3,
        });
        let parsed: Contents = serde_json::from_value(file.clone()).expect("parses");
        assert_eq!(serde_json::to_value(parsed).expect("serialises"), file);
    }
}
