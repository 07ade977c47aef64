//! `/v1/repos`: create (empty or imported), list, show, delete, branches.

use api_types::ErrorCode;
use api_types::repos::{Author, BranchView, CommitView, CreateRepo, RepoView};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::openapi::RepoPath;
use super::{ApiError, Body, created};
use crate::auth::{Caller, Scope};
use crate::git::{RepoName, inspect};
use crate::server::AppState;
use crate::store::RepoRow;

fn repo_view(state: &AppState, row: &RepoRow) -> RepoView {
    RepoView {
        id: row.id.clone(),
        name: row.full_name(),
        default_branch: row.default_branch.clone(),
        clone_url: format!("{}/{}.git", state.config.public_url, row.full_name()),
        created_at: row.created_at.clone(),
    }
}

fn branch_view(branch: inspect::Branch, sandbox: Option<String>) -> BranchView {
    BranchView {
        sandbox,
        name: branch.name,
        commit: commit_view(branch.commit),
    }
}

/// A commit as the API shows it.
pub fn commit_view(commit: inspect::CommitSummary) -> CommitView {
    CommitView {
        id: commit.id,
        message: commit.message,
        author: Author {
            name: commit.author.name,
            email: commit.author.email,
        },
        time: commit.time,
    }
}

/// Finds `owner/name` and checks the caller may use it with `scope`.
/// A repository the caller may not see at all is reported as absent.
pub async fn authorize(
    state: &AppState,
    caller: &Caller,
    owner: &str,
    name: &str,
    scope: Scope,
) -> Result<RepoRow, ApiError> {
    let name =
        RepoName::from_parts(owner, name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let repo = state
        .store
        .repo_by_name(&name.owner, &name.name)
        .await?
        .filter(|repo| caller.repo_limit().is_none_or(|limit| limit == repo.id))
        .ok_or_else(|| ApiError::not_found(format!("repository {name} does not exist")))?;
    caller.check_repo(&repo.id, scope)?;
    Ok(repo)
}

/// Creates a repository, empty or cloned from `import_url` (HTTP(S) or
/// git; credentials in the URL are used once, never stored). Needs `admin`.
#[utoipa::path(
    post,
    path = "/v1/repos",
    tag = "repos",
    operation_id = "createRepo",
    request_body = CreateRepo,
    responses((status = 201, description = "The repository", body = RepoView)),
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Body(request): Body<CreateRepo>,
) -> Result<(StatusCode, Json<RepoView>), ApiError> {
    caller.check(Scope::Admin)?;
    let name = RepoName::parse(&request.name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Some(branch) = &request.default_branch
        && !crate::git::valid_branch_name(branch)
    {
        return Err(ApiError::bad_request(format!(
            "default_branch {branch:?} is not a valid branch name"
        )));
    }
    if state
        .store
        .repo_by_name(&name.owner, &name.name)
        .await?
        .is_some()
    {
        return Err(ApiError::conflict(format!(
            "repository {name} already exists"
        )));
    }
    let id = uuid::Uuid::new_v4().to_string();
    let default_branch = match &request.import_url {
        None => {
            let branch = request
                .default_branch
                .clone()
                .unwrap_or_else(|| "main".into());
            state
                .repos
                .init(&id, &branch)
                .await
                .map_err(ApiError::internal)?;
            branch
        }
        Some(url) => {
            let pinned = check_import_url(&state, url).await?;
            state
                .repos
                .import(&id, url, request.default_branch.as_deref(), pinned.as_deref())
                .await
                .map_err(|error| {
                    // The URL may hold credentials: never echo it or git's text about it.
                    tracing::warn!(repo = %name, error = %crate::git::redact_credentials(&format!("{error:#}")), "import failed");
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        ErrorCode::ImportFailed,
                        "the import_url could not be cloned; check that it is a reachable git repository and that credentials in it are valid",
                    )
                })?
        }
    };
    let row = RepoRow {
        id: id.clone(),
        owner: name.owner.clone(),
        name: name.name.clone(),
        default_branch,
        created_at: crate::store::now(),
    };
    if let Err(error) = state.store.insert_repo(&row).await {
        let _ = state.repos.remove(&id).await;
        return Err(match error {
            crate::store::StoreError::Duplicate => {
                ApiError::conflict(format!("repository {name} already exists"))
            }
            other => other.into(),
        });
    }
    tracing::info!(repo = %name, id = %id, imported = request.import_url.is_some(), "repository created");
    Ok(created(repo_view(&state, &row)))
}

/// Import sources: http(s) only, and not to addresses the network policy
/// refuses (a forge must not become a way to read internal services).
/// Returns the address git must connect to, as a `host:port:address`
/// entry for curl (`None` when the host is an address already): git is
/// held to the address checked here, so a name that resolves differently
/// the second time (DNS rebinding) reaches nothing else.
async fn check_import_url(state: &AppState, url: &str) -> Result<Option<String>, ApiError> {
    let policy = state.config.network_policy();
    let refused =
        |reason: String| ApiError::bad_request(format!("import_url is refused: {reason}"));
    let parsed = hooks::ssrf::check_url(url, &policy)
        .map_err(|e| refused(crate::git::redact_credentials(&e.to_string())))?;
    let host = parsed.host_str().unwrap_or_default().to_owned();
    let port = parsed.port_or_known_default().unwrap_or(443);
    let bare = host.trim_matches(['[', ']']);
    let addresses: Vec<_> = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|_| refused(format!("the host {host} does not resolve")))?
        .collect();
    for address in &addresses {
        policy
            .check(address.ip())
            .map_err(|e| refused(e.to_string()))?;
    }
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return Ok(None);
    }
    let address = addresses
        .first()
        .ok_or_else(|| refused(format!("the host {host} does not resolve")))?;
    let address = match address.ip() {
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
    };
    Ok(Some(format!("{host}:{port}:{address}")))
}

/// The repositories the caller may read.
#[utoipa::path(
    get,
    path = "/v1/repos",
    tag = "repos",
    operation_id = "listRepos",
    responses((status = 200, description = "The repositories the caller may read", body = Vec<RepoView>)),
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<RepoView>>, ApiError> {
    let rows = state.store.list_repos(caller.repo_limit()).await?;
    Ok(Json(
        rows.iter().map(|row| repo_view(&state, row)).collect(),
    ))
}

/// One repository.
#[utoipa::path(
    get,
    path = "/v1/repos/{owner}/{name}",
    tag = "repos",
    operation_id = "getRepo",
    params(RepoPath),
    responses((status = 200, description = "The repository", body = RepoView)),
)]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path((owner, name)): Path<(String, String)>,
) -> Result<Json<RepoView>, ApiError> {
    let repo = authorize(&state, &caller, &owner, &name, Scope::RepoRead).await?;
    Ok(Json(repo_view(&state, &repo)))
}

/// Deletes a repository with everything the forge keeps about it. Needs
/// `admin`.
#[utoipa::path(
    delete,
    path = "/v1/repos/{owner}/{name}",
    tag = "repos",
    operation_id = "deleteRepo",
    params(RepoPath),
    responses((status = 204, description = "The repository, its runs, webhooks and events are gone")),
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path((owner, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let repo = authorize(&state, &caller, &owner, &name, Scope::RepoRead).await?;
    caller.check(Scope::Admin)?;
    state.store.delete_repo(&repo.id).await?;
    state
        .repos
        .remove(&repo.id)
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(repo = %repo.full_name(), "repository deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// The repository's branches and their head commits.
#[utoipa::path(
    get,
    path = "/v1/repos/{owner}/{name}/branches",
    tag = "repos",
    operation_id = "listBranches",
    params(RepoPath),
    responses((status = 200, description = "Each branch and its head commit", body = Vec<BranchView>)),
)]
pub async fn branches(
    State(state): State<AppState>,
    caller: Caller,
    Path((owner, name)): Path<(String, String)>,
) -> Result<Json<Vec<BranchView>>, ApiError> {
    let repo = authorize(&state, &caller, &owner, &name, Scope::RepoRead).await?;
    let dir = state.repos.path(&repo.id);
    let branches = tokio::task::spawn_blocking(move || inspect::branches(&dir))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let mut sandboxes = state.store.branch_sandboxes(&repo.id).await?;
    Ok(Json(
        branches
            .into_iter()
            .map(|branch| {
                let sandbox = sandboxes.remove(&branch.name);
                branch_view(branch, sandbox)
            })
            .collect(),
    ))
}
