//! `GET /v1/repos/{owner}/{name}/contents?branch=&path=`: a directory
//! listing or a file at the head of a branch (the default branch unless
//! named), for browsing a repository.
//!
//! A directory is `{"type":"dir","path","branch","entries":[{"name","kind"}]}`;
//! a file is `{"type":"file","path","branch","text","binary","truncated"}`,
//! where `text` is `null` for binary content.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiError;
use super::repos::authorize;
use crate::auth::{Caller, Scope};
use crate::git::tree::{self, Node};
use crate::server::AppState;

#[derive(Debug, Deserialize)]
pub struct ContentsQuery {
    branch: Option<String>,
    #[serde(default)]
    path: String,
}

pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path((owner, name)): Path<(String, String)>,
    Query(query): Query<ContentsQuery>,
) -> Result<Json<Value>, ApiError> {
    let repo = authorize(&state, &caller, &owner, &name, Scope::RepoRead).await?;
    let branch = query.branch.unwrap_or_else(|| repo.default_branch.clone());
    let dir = state.repos.path(&repo.id);
    let (wanted_branch, wanted_path) = (branch.clone(), query.path.clone());
    let node =
        tokio::task::spawn_blocking(move || tree::at_branch(&dir, &wanted_branch, &wanted_path))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "{:?} does not exist on branch {branch} of {}",
                    query.path,
                    repo.full_name()
                ))
            })?;
    Ok(Json(match node {
        Node::Dir(entries) => json!({
            "type": "dir", "path": query.path, "branch": branch, "entries": entries,
        }),
        Node::File { data, truncated } => {
            let text = String::from_utf8(data).ok().filter(|t| !t.contains('\0'));
            json!({
                "type": "file", "path": query.path, "branch": branch,
                "binary": text.is_none(), "text": text, "truncated": truncated,
            })
        }
    }))
}
