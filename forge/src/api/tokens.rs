//! `/v1/tokens`: create (the secret is returned this once), list, revoke.
//! Admin only.

use api_types::tokens::{CreateToken, TokenView};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::{ApiError, Body, created};
use crate::auth::{self, Caller, Scope};
use crate::git::RepoName;
use crate::server::AppState;
use crate::store::{NewToken, TokenRow};

async fn view(
    state: &AppState,
    row: TokenRow,
    secret: Option<String>,
) -> Result<TokenView, ApiError> {
    let repo = match &row.repo_id {
        Some(id) => state
            .store
            .repo_by_id(id)
            .await?
            .map(|repo| repo.full_name()),
        None => None,
    };
    Ok(TokenView {
        id: row.id,
        name: row.name,
        scopes: row.scopes.split(' ').map(str::to_owned).collect(),
        repo,
        created_at: row.created_at,
        last_used_at: row.last_used_at,
        revoked_at: row.revoked_at,
        token: secret,
    })
}

/// Creates a token. Needs `admin`.
#[utoipa::path(
    post,
    path = "/v1/tokens",
    tag = "tokens",
    operation_id = "createToken",
    request_body = CreateToken,
    responses((status = 201, description = "The token, with its secret in `token`: shown this once, stored only as a hash", body = TokenView)),
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Body(request): Body<CreateToken>,
) -> Result<(StatusCode, Json<TokenView>), ApiError> {
    caller.check(Scope::Admin)?;
    let name = request.name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(ApiError::bad_request(
            "a token name of 1 to 100 characters is required",
        ));
    }
    let scopes =
        auth::parse_scopes(request.scopes.iter().map(String::as_str)).map_err(|unknown| {
            ApiError::bad_request(format!(
                "unknown scope {unknown:?}; scopes are admin, repo:write and repo:read"
            ))
        })?;
    if scopes.is_empty() {
        return Err(ApiError::bad_request("at least one scope is required"));
    }
    let repo_id = match &request.repo {
        Some(full) => {
            let name = RepoName::parse(full).map_err(|e| ApiError::bad_request(e.to_string()))?;
            let repo = state
                .store
                .repo_by_name(&name.owner, &name.name)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("repository {name} does not exist")))?;
            Some(repo.id)
        }
        None => None,
    };
    let secret = auth::new_secret();
    let id = uuid::Uuid::new_v4().to_string();
    let row = state
        .store
        .insert_token(&NewToken {
            id: &id,
            name,
            secret_hash: &auth::hash_secret(&secret),
            scopes: &auth::scopes_to_string(&scopes),
            repo_id: repo_id.as_deref(),
        })
        .await?;
    tracing::info!(token = %id, name, by = %caller.token_id, "token created");
    Ok(created(view(&state, row, Some(secret)).await?))
}

/// Every token. Needs `admin`.
#[utoipa::path(
    get,
    path = "/v1/tokens",
    tag = "tokens",
    operation_id = "listTokens",
    responses((status = 200, description = "Every token, revoked ones too, without secrets", body = Vec<TokenView>)),
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    caller.check(Scope::Admin)?;
    let mut views = Vec::new();
    for row in state.store.list_tokens().await? {
        views.push(view(&state, row, None).await?);
    }
    Ok(Json(views))
}

/// Revokes a token. Needs `admin`.
#[utoipa::path(
    delete,
    path = "/v1/tokens/{id}",
    tag = "tokens",
    operation_id = "revokeToken",
    params(("id" = String, Path, description = "The token's id")),
    responses((status = 204, description = "Revoked: the token no longer works")),
)]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.check(Scope::Admin)?;
    if !state.store.revoke_token(&id).await? {
        return Err(ApiError::not_found(format!("no live token has id {id}")));
    }
    tracing::info!(token = %id, by = %caller.token_id, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}
