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
pub mod metrics;
mod nodes;
pub(crate) mod openapi;
mod preview;
mod processes;
mod repos;
mod runs;
mod snapshots;
mod templates;
mod terminal;
#[cfg(test)]
mod tests;

pub use repos::authorize as repos_authorize;
mod tokens;
mod vms;
mod webhooks;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{MethodRouter, any};
use axum::{Json, Router};
use base64::Engine;
use serde::de::DeserializeOwned;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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

/// The data line of a server-sent event.
fn event_data(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Every route of the forge, each with its OpenAPI entry (see
/// [`openapi`]).
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(openapi::serve))
        .routes(routes!(repos::create, repos::list))
        .routes(routes!(repos::show, repos::delete))
        .routes(routes!(repos::branches))
        .routes(routes!(contents::show))
        .routes(routes!(events::list))
        .routes(routes!(events::list_all))
        .routes(routes!(metrics::serve))
        .routes(routes!(runs::list))
        .routes(routes!(runs::show))
        .routes(routes!(runs::logs))
        .routes(routes!(runs::cancel))
        .routes(routes!(runs::rerun))
        .routes(routes!(nodes::create, nodes::list))
        .routes(routes!(nodes::delete))
        .routes(routes!(nodes::report))
        .routes(routes!(vms::system))
        .routes(routes!(vms::create, vms::list))
        .routes(routes!(vms::show, vms::delete))
        .routes(routes!(vms::exec))
        .routes(routes!(vms::fork))
        .routes(routes!(vms::pause))
        .routes(routes!(vms::resume))
        .routes(routes!(vms::move_vm))
        .routes(routes!(vms::timeout))
        .routes(routes!(processes::start, processes::list))
        .routes(routes!(processes::logs))
        .routes(routes!(processes::signal))
        .routes(routes!(snapshots::create))
        .routes(routes!(snapshots::list))
        .routes(routes!(snapshots::show, snapshots::delete))
        .routes(routes!(templates::put, templates::list))
        .routes(routes!(templates::show, templates::delete))
        .routes(routes!(templates::build))
        .merge(terminal::routes())
        .routes(routes!(vms::read_file, vms::write_file, vms::delete_file))
        // The port's root, with and without its slash, as the catch-all
        // below documents it.
        .route("/v1/vms/{id}/ports/{port}", any(preview::root))
        .route("/v1/vms/{id}/ports/{port}/", any(preview::root))
        .routes(routes!(preview::path))
        .routes(routes!(preview::create_link))
        .route(
            "/v1/vms/{id}/ports/{port}/links",
            MethodRouter::new().fallback(preview::links_page),
        )
        .route("/v1/previews/{token}", any(preview::shared))
        .route("/v1/previews/{token}/", any(preview::shared))
        .routes(routes!(preview::shared))
        .routes(routes!(webhooks::create, webhooks::list))
        .routes(routes!(webhooks::show, webhooks::update, webhooks::delete))
        .routes(routes!(webhooks::ping))
        .routes(routes!(webhooks::deliveries))
        .routes(routes!(webhooks::delivery))
        .routes(routes!(
            webhooks::forge_wide::create,
            webhooks::forge_wide::list
        ))
        .routes(routes!(
            webhooks::forge_wide::show,
            webhooks::forge_wide::update,
            webhooks::forge_wide::delete
        ))
        .routes(routes!(webhooks::forge_wide::ping))
        .routes(routes!(webhooks::forge_wide::deliveries))
        .routes(routes!(webhooks::forge_wide::delivery))
        .routes(routes!(webhooks::forge_wide::redeliver))
        .routes(routes!(webhooks::redeliver))
        .routes(routes!(github::webhook))
        .routes(routes!(github::overview))
        .routes(routes!(github::linked))
        .routes(routes!(github::link, github::show, github::unlink))
        .routes(routes!(tokens::create, tokens::list))
        .routes(routes!(tokens::revoke))
        .routes(routes!(crate::git::http::info_refs))
        .routes(routes!(crate::git::http::upload_pack))
        .routes(routes!(crate::git::http::receive_pack))
}

/// Every route of the forge.
pub fn router(state: AppState) -> Router {
    let (router, _) = routes().split_for_parts();
    let api = router
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(axum::middleware::from_fn(server_timing))
        .with_state(state.clone());
    // The MCP tools call the API in process, with each request's token.
    crate::mcp::http_service(api.clone(), state).merge(api)
}

/// Answers every request whose handler ran sandbox operations with a
/// `Server-Timing` header: where the time went (CRIU's dump and restore,
/// disk snapshots, the agent's answer; see `sandbox::timing`), for the
/// caller's own operation only.
async fn server_timing(request: Request, next: axum::middleware::Next) -> Response {
    let (mut response, phases) = sandbox::timing::collect(next.run(request)).await;
    if !phases.is_empty()
        && let Ok(value) = HeaderValue::from_str(&sandbox::timing::server_timing(&phases))
    {
        response.headers_mut().insert("server-timing", value);
    }
    response
}

/// The OpenAPI document of [`router`]'s routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    openapi::document(routes().split_for_parts().1)
}

/// Whether the server is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "system",
    operation_id = "health",
    security(()),
    responses((status = 200, description = "The server answers", content_type = "text/plain", body = String, example = "ok\n")),
)]
async fn health() -> &'static str {
    "ok\n"
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
pub(crate) fn presented_secret(parts: &Parts) -> Result<Option<String>, ApiError> {
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
