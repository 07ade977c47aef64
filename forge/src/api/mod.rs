//! The HTTP surface: the JSON API under `/v1`, git smart HTTP under
//! `/{owner}/{name}.git`, and `/healthz`. Handlers are thin: they
//! authenticate, validate, call the domain modules and shape the answer.
//!
//! Authentication is a token, as `Authorization: Bearer <token>` or as the
//! password of HTTP Basic auth (any user name), which is what `git` sends.
//! The WebSocket terminal also takes a one-time ticket (see `api/terminal.rs`),
//! since browsers cannot set headers on a WebSocket.
//!
//! The web UI (crate `web`) is mounted beside this router in `server.rs`
//! and calls it in-process.

mod contents;
mod error;
mod events;
mod github;
mod preview;
mod repos;
mod runs;
mod terminal;
#[cfg(test)]
mod tests;

pub use repos::authorize as repos_authorize;
mod tokens;
mod vms;
mod webhooks;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::de::DeserializeOwned;

pub use error::ApiError;
pub use preview::{ShareKey, check_preview_domain};

/// A request path as logs show it: a share link's token (a credential) is
/// left out.
pub fn loggable_path(path: &str) -> &str {
    if path.starts_with("/v1/previews/") {
        "/v1/previews/…"
    } else {
        path
    }
}

use crate::auth::{self, Caller};
use crate::server::AppState;

/// Every route of the forge.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/v1/repos", post(repos::create).get(repos::list))
        .route(
            "/v1/repos/{owner}/{name}",
            get(repos::show).delete(repos::delete),
        )
        .route("/v1/repos/{owner}/{name}/branches", get(repos::branches))
        .route("/v1/repos/{owner}/{name}/contents", get(contents::show))
        .route("/v1/repos/{owner}/{name}/events", get(events::list))
        .route("/v1/repos/{owner}/{name}/runs", get(runs::list))
        .route("/v1/runs/{id}", get(runs::show))
        .route("/v1/runs/{id}/logs", get(runs::logs))
        .route("/v1/system", get(vms::system))
        .route("/v1/vms", post(vms::create).get(vms::list))
        .route("/v1/vms/{id}", get(vms::show).delete(vms::delete))
        .route("/v1/vms/{id}/exec", post(vms::exec))
        .route("/v1/vms/{id}/fork", post(vms::fork))
        .route("/v1/vms/{id}/pause", post(vms::pause))
        .route("/v1/vms/{id}/resume", post(vms::resume))
        .merge(terminal::routes())
        .route(
            "/v1/vms/{id}/files/{*path}",
            get(vms::read_file)
                .put(vms::write_file)
                .delete(vms::delete_file),
        )
        .route("/v1/vms/{id}/ports/{port}", any(preview::root))
        .route("/v1/vms/{id}/ports/{port}/", any(preview::root))
        .route("/v1/vms/{id}/ports/{port}/{*path}", any(preview::path))
        .route(
            "/v1/vms/{id}/ports/{port}/links",
            post(preview::create_link).fallback(preview::links_page),
        )
        .route("/v1/previews/{token}", any(preview::shared))
        .route("/v1/previews/{token}/", any(preview::shared))
        .route("/v1/previews/{token}/{*path}", any(preview::shared))
        .route(
            "/v1/repos/{owner}/{name}/webhooks",
            post(webhooks::create).get(webhooks::list),
        )
        .route(
            "/v1/repos/{owner}/{name}/webhooks/{id}",
            get(webhooks::show)
                .patch(webhooks::update)
                .delete(webhooks::delete),
        )
        .route(
            "/v1/repos/{owner}/{name}/webhooks/{id}/ping",
            post(webhooks::ping),
        )
        .route(
            "/v1/repos/{owner}/{name}/webhooks/{id}/deliveries",
            get(webhooks::deliveries),
        )
        .route(
            "/v1/repos/{owner}/{name}/webhooks/{id}/deliveries/{delivery_id}",
            get(webhooks::delivery),
        )
        .route(
            "/v1/repos/{owner}/{name}/webhooks/{id}/deliveries/{delivery_id}/redeliver",
            post(webhooks::redeliver),
        )
        .route("/github/webhook", post(github::webhook))
        .route("/v1/github", get(github::overview))
        .route("/v1/github/repos", get(github::linked))
        .route(
            "/v1/repos/{owner}/{name}/github",
            post(github::link).get(github::show).delete(github::unlink),
        )
        .route("/v1/tokens", post(tokens::create).get(tokens::list))
        .route("/v1/tokens/{id}", axum::routing::delete(tokens::revoke))
        .route(
            "/{owner}/{name}/info/refs",
            get(crate::git::http::info_refs),
        )
        .route(
            "/{owner}/{name}/git-upload-pack",
            post(crate::git::http::upload_pack),
        )
        .route(
            "/{owner}/{name}/git-receive-pack",
            post(crate::git::http::receive_pack),
        )
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(state)
}

/// `app` with host-name previews in front of it: a request for
/// `{vm}-{port}.<preview domain>` goes to that VM's port, whatever its
/// path; every other request reaches `app`. Applied to the whole app (API
/// and web UI), so no page shadows a preview.
pub fn with_preview_hosts(app: Router, state: AppState) -> Router {
    app.layer(axum::middleware::from_fn_with_state(
        state,
        preview::by_host,
    ))
}

/// The secret a request presents, if any.
fn presented_secret(parts: &Parts) -> Result<Option<String>, ApiError> {
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || ApiError::unauthorized("the Authorization header is malformed");
    let value = value.to_str().map_err(|_| malformed())?;
    let (scheme, rest) = value.split_once(' ').ok_or_else(malformed)?;
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" | "token" => Ok(Some(rest.trim().to_owned())),
        "basic" => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .map_err(|_| malformed())?;
            let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
            let (_user, password) = decoded.split_once(':').ok_or_else(malformed)?;
            Ok(Some(password.to_owned()))
        }
        _ => Err(ApiError::unauthorized(
            "use `Authorization: Bearer <token>` or HTTP Basic auth with the token as password",
        )),
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let secret = presented_secret(parts)?
            .ok_or_else(|| ApiError::unauthorized("a token is required"))?;
        let row = state
            .store
            .use_token(&auth::hash_secret(&secret))
            .await?
            .ok_or_else(|| ApiError::unauthorized("the token is unknown or revoked"))?;
        Ok(Caller::from_row(&row))
    }
}

/// A JSON request body whose rejections use the common error shape.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let Json(value) = Json::<T>::from_request(request, state)
            .await
            .map_err(error::json_rejection)?;
        Ok(Body(value))
    }
}

/// `201 Created` with a JSON body.
pub fn created<T: serde::Serialize>(value: T) -> (StatusCode, Json<T>) {
    (StatusCode::CREATED, Json(value))
}
