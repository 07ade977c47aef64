//! The GitHub App's HTTP surface: the inbound webhook endpoint
//! `POST /github/webhook` (signature first, then store; see
//! [`crate::github::webhook`]) and `/v1/repos/{owner}/{name}/github`
//! (link, show the sync state per ref, unlink), `GET /v1/github` (the
//! app and its installations) and `GET /v1/github/repos` (every linked
//! repository the caller may read). Nothing here returns a secret.

use api_types::github::{
    GithubLinkRequest, GithubLinkView, GithubOverview, Installation, RefView, WebhookAccepted,
};
use api_types::{ErrorBody, ErrorCode};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use futures_util::StreamExt;

use super::openapi::RepoPath;
use super::{ApiError, Body, repos};
use crate::auth::{Caller, Scope};
use crate::github::Github;
use crate::github::auth::Method;
use crate::server::AppState;
use crate::store::{GithubLink, now};

fn app(state: &AppState) -> Result<&std::sync::Arc<Github>, ApiError> {
    state.github.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::GithubNotConfigured,
            "the GitHub App is not configured: run `forge github configure`",
        )
    })
}

/// GitHub caps webhook payloads at 25 MB; axum's default (2 MB) would
/// refuse large pushes.
const WEBHOOK_BODY_LIMIT: usize = 25 << 20;

/// How many webhook bodies may be read at once: the signature covers the
/// whole body, so each is held in memory until it is checked.
const WEBHOOK_BODIES_AT_ONCE: usize = 4;

static WEBHOOK_BODIES: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(WEBHOOK_BODIES_AT_ONCE);

/// GitHub's events for the App, signed with its webhook secret
/// (`X-Hub-Signature-256`). Nothing of the body is read unless the App is
/// configured and the request carries a well-formed signature; at most
/// [`WEBHOOK_BODIES_AT_ONCE`] bodies are read at a time. A body seen before
/// is a duplicate, whatever its delivery id.
#[utoipa::path(
    post,
    path = "/github/webhook",
    tag = "github",
    operation_id = "githubWebhook",
    security(()),
    params(
        ("X-Hub-Signature-256" = String, Header, description = "`sha256=` and the HMAC-SHA256 of the body"),
        ("X-GitHub-Delivery" = String, Header, description = "The delivery's id"),
        ("X-GitHub-Event" = String, Header, description = "The event's type"),
    ),
    request_body(content = Object, description = "GitHub's event payload"),
    responses(
        (status = 202, description = "Accepted (or a duplicate, already accepted)", body = WebhookAccepted),
        (status = 400, description = "No delivery id or event type, or a body that is not JSON", body = ErrorBody),
        (status = 401, description = "The signature is missing or wrong", body = ErrorBody),
        (status = 413, description = "The body is over 25 MiB", body = ErrorBody),
        (status = 503, description = "The GitHub App is not configured", body = ErrorBody),
    ),
)]
pub async fn webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<WebhookAccepted>), ApiError> {
    let github = app(&state)?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let well_formed = header("x-hub-signature-256")
        .and_then(|h| h.strip_prefix("sha256="))
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
    if !well_formed {
        return Err(ApiError::unauthorized(
            "the X-Hub-Signature-256 signature is missing or wrong",
        ));
    }
    let _reading = WEBHOOK_BODIES.acquire().await.map_err(ApiError::internal)?;
    let mut chunks = body.into_data_stream();
    let mut body = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|error| {
            ApiError::bad_request(format!("the webhook body could not be read: {error}"))
        })?;
        if body.len() + chunk.len() > WEBHOOK_BODY_LIMIT {
            return Err(ApiError::too_large(WEBHOOK_BODY_LIMIT as u64));
        }
        body.extend_from_slice(&chunk);
    }
    if !crate::github::webhook::verify(
        github.config.webhook_secret.expose().as_bytes(),
        header("x-hub-signature-256"),
        &body,
    ) {
        return Err(ApiError::unauthorized(
            "the X-Hub-Signature-256 signature is missing or wrong",
        ));
    }
    let (Some(delivery), Some(event)) = (header("x-github-delivery"), header("x-github-event"))
    else {
        return Err(ApiError::bad_request(
            "X-GitHub-Delivery and X-GitHub-Event are required",
        ));
    };
    let payload = std::str::from_utf8(&body)
        .ok()
        .filter(|text| serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok())
        .ok_or_else(|| ApiError::bad_request("the body is not JSON"))?;
    // The id is not signed: the body is, and a body seen before is a
    // replay whatever id it comes with.
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body));
    let fresh = state
        .store
        .insert_github_delivery(delivery, event, payload, &digest)
        .await?;
    if fresh {
        github.wake();
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(WebhookAccepted {
            delivery: delivery.to_owned(),
            duplicate: !fresh,
        }),
    ))
}

/// Links the repository to a GitHub repository the App is installed on,
/// then syncs them once (an empty forge repository is imported from
/// GitHub). Needs `admin`.
#[utoipa::path(
    post,
    path = "/v1/repos/{owner}/{name}/github",
    tag = "github",
    operation_id = "linkGithub",
    params(RepoPath),
    request_body = GithubLinkRequest,
    responses((status = 201, description = "The link and each ref's sync state", body = GithubLinkView)),
)]
pub async fn link(
    State(state): State<AppState>,
    caller: Caller,
    Path((owner, name)): Path<(String, String)>,
    Body(request): Body<GithubLinkRequest>,
) -> Result<(StatusCode, Json<GithubLinkView>), ApiError> {
    // Linking chooses which GitHub repository the App's token pushes this
    // repository's refs to: a forge admin's decision, not a
    // repository-limited token's.
    caller.check(Scope::Admin)?;
    let repo = repos::authorize(&state, &caller, &owner, &name, Scope::Admin).await?;
    let github = app(&state)?;
    let target = request.repository.trim();
    let valid = target.split('/').count() == 2
        && target.split('/').all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        });
    if !valid {
        return Err(ApiError::bad_request(
            "repository must be `owner/name` on GitHub",
        ));
    }
    let installation = github
        .auth
        .as_app(Method::Get, &format!("/repos/{target}/installation"), None)
        .await
        .map_err(|error| match error.status() {
            Some(404) => {
                ApiError::bad_request(format!("the GitHub App is not installed on {target}"))
            }
            _ => ApiError::new(
                StatusCode::BAD_GATEWAY,
                ErrorCode::GithubUnavailable,
                format!("asking GitHub for the installation failed: {error}"),
            ),
        })?;
    let installation_id = installation["id"]
        .as_i64()
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("GitHub sent no installation id")))?;
    github
        .prepare(&state.repos.path(&repo.id))
        .await
        .map_err(ApiError::internal)?;
    let link = GithubLink {
        repo_id: repo.id.clone(),
        github_repo: target.to_owned(),
        installation_id,
        created_at: now(),
    };
    state
        .store
        .insert_github_link(&link)
        .await
        .map_err(|error| match error {
            crate::store::StoreError::Duplicate => {
                ApiError::conflict(format!("{target} is already linked to a forge repository"))
            }
            other => other.into(),
        })?;
    if let Err(error) = github.syncer.sync(&link).await {
        tracing::warn!(repo = %target, error = format!("{error:#}"), "the first sync failed");
    }
    Ok((StatusCode::CREATED, Json(view(&state, &link).await?)))
}

/// The repository's GitHub link and each ref's sync state.
#[utoipa::path(
    get,
    path = "/v1/repos/{owner}/{name}/github",
    tag = "github",
    operation_id = "getGithubLink",
    params(RepoPath),
    responses((status = 200, description = "The link", body = GithubLinkView)),
)]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path((owner, name)): Path<(String, String)>,
) -> Result<Json<GithubLinkView>, ApiError> {
    let repo = repos::authorize(&state, &caller, &owner, &name, Scope::RepoRead).await?;
    let link = state
        .store
        .github_link(&repo.id)
        .await?
        .ok_or_else(|| ApiError::not_found("the repository is not linked to GitHub"))?;
    Ok(Json(view(&state, &link).await?))
}

/// Unlinks the repository from GitHub; both keep their refs. Needs `admin`.
#[utoipa::path(
    delete,
    path = "/v1/repos/{owner}/{name}/github",
    tag = "github",
    operation_id = "unlinkGithub",
    params(RepoPath),
    responses((status = 204, description = "Unlinked")),
)]
pub async fn unlink(
    State(state): State<AppState>,
    caller: Caller,
    Path((owner, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let repo = repos::authorize(&state, &caller, &owner, &name, Scope::Admin).await?;
    if !state.store.delete_github_link(&repo.id).await? {
        return Err(ApiError::not_found(
            "the repository is not linked to GitHub",
        ));
    }
    if let Some(github) = &state.github
        && let Err(error) = github.syncer.forget(&state.repos.path(&repo.id)).await
    {
        tracing::warn!(repo = %repo.full_name(), error = %error, "removing GitHub's mirrored refs failed");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The GitHub App's public settings and its installations. Any caller may
/// read it; no secret is part of it.
#[utoipa::path(
    get,
    path = "/v1/github",
    tag = "github",
    operation_id = "getGithub",
    responses((status = 200, description = "The App and its installations", body = GithubOverview)),
)]
pub async fn overview(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<Json<GithubOverview>, ApiError> {
    let github = app(&state)?;
    let installations = state.store.github_installations().await?;
    Ok(Json(GithubOverview {
        app_id: github.config.app_id,
        api_url: github.config.api_url.clone(),
        git_url: github.config.git_url.clone(),
        reconcile_secs: github.config.reconcile_secs,
        installations: installations
            .into_iter()
            .map(|installation| Installation {
                id: installation.id,
                account: installation.account,
                created_at: installation.created_at,
            })
            .collect(),
    }))
}

/// Every linked repository the caller may read, with each ref's sync state.
#[utoipa::path(
    get,
    path = "/v1/github/repos",
    tag = "github",
    operation_id = "listGithubLinks",
    responses((status = 200, description = "The links", body = Vec<GithubLinkView>)),
)]
pub async fn linked(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<GithubLinkView>>, ApiError> {
    app(&state)?;
    let mut out = Vec::new();
    for link in state.store.github_links().await? {
        if caller.check_repo(&link.repo_id, Scope::RepoRead).is_err() {
            continue;
        }
        let Some(repo) = state.store.repo_by_id(&link.repo_id).await? else {
            continue;
        };
        let mut item = view(&state, &link).await?;
        item.repo = Some(repo.full_name());
        out.push(item);
    }
    Ok(Json(out))
}

async fn view(state: &AppState, link: &GithubLink) -> Result<GithubLinkView, ApiError> {
    let mut refs = Vec::new();
    for row in state.store.github_ref_states(&link.repo_id).await? {
        refs.push(RefView {
            ref_name: row.ref_name,
            synced_sha: row.synced_sha,
            forge_sha: row.forge_sha,
            github_sha: row.github_sha,
            state: row.state,
            last_sync_at: row.last_sync_at,
            last_error: row.last_error,
        });
    }
    Ok(GithubLinkView {
        repository: link.github_repo.clone(),
        installation_id: link.installation_id,
        linked_at: link.created_at.clone(),
        refs,
        repo: None,
    })
}
