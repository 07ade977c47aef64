//! `GET /v1/repos/{owner}/{name}/contents?branch=&path=`: a directory
//! listing or a file at the head of a branch (the default branch unless
//! named), for browsing a repository.
//!
//! The answer is an [`api_types::repos::Contents`]. A file over 1 MiB is
//! `truncated`: only its first MiB is read, streamed from git, so a blob
//! that inflates to gigabytes costs the forge one MiB.

use api_types::repos::Contents;
use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;

use super::ApiError;
use super::openapi::RepoPath;
use super::repos::authorize;
use crate::auth::{Caller, Scope};
use crate::git::tree::{self, Node};
use crate::server::AppState;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ContentsQuery {
    /// The branch; the repository's default branch when absent.
    branch: Option<String>,
    /// A path from the repository's root; its root when absent.
    #[serde(default)]
    path: String,
}

/// What a path names at the head of a branch: a directory's entries, or a
/// file's text (its first MiB).
#[utoipa::path(
    get,
    path = "/v1/repos/{owner}/{name}/contents",
    tag = "repos",
    operation_id = "getContents",
    params(RepoPath, ContentsQuery),
    responses((status = 200, description = "A directory's entries or a file's text", body = Contents)),
)]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path((owner, name)): Path<(String, String)>,
    Query(query): Query<ContentsQuery>,
) -> Result<Json<Contents>, ApiError> {
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
                ApiError::not_found(if query.path.trim_matches('/').is_empty() {
                    format!("branch {branch} does not exist in {}", repo.full_name())
                } else {
                    format!(
                        "{} does not exist on branch {branch} of {}",
                        query.path,
                        repo.full_name()
                    )
                })
            })?;
    Ok(Json(match node {
        Node::Dir(entries) => Contents::Dir {
            path: query.path,
            branch,
            entries,
        },
        Node::File(data) => file(&query.path, &branch, data, None),
        Node::LargeFile { id, size } => {
            let head = crate::git::blob_head(
                &state.repos.path(&repo.id),
                &id.to_string(),
                tree::MAX_FILE_BYTES,
            )
            .await
            .map_err(ApiError::internal)?;
            file(&query.path, &branch, head, Some(size))
        }
    }))
}

/// A file's answer; `size` is the whole file's when `data` is only its
/// beginning.
fn file(path: &str, branch: &str, data: Vec<u8>, size: Option<u64>) -> Contents {
    // A cut may fall inside a UTF-8 sequence: the text ends before it.
    let text = match std::str::from_utf8(&data) {
        Ok(text) => Some(text),
        Err(error) if size.is_some() && error.error_len().is_none() => {
            std::str::from_utf8(&data[..error.valid_up_to()]).ok()
        }
        Err(_) => None,
    }
    .filter(|t| !t.contains('\0'));
    Contents::File {
        path: path.to_owned(),
        branch: branch.to_owned(),
        binary: text.is_none(),
        text: text.map(str::to_owned),
        truncated: size.is_some(),
        size: size.unwrap_or(data.len() as u64),
    }
}
