//! `GET /metrics`: the forge's metrics (`crate::metrics`) in the Prometheus
//! text format. Admin only here; `forge serve --metrics-listen ADDR` serves
//! the same without a token on an address of its own (keep it private).

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::auth::{Caller, Scope};
use crate::server::AppState;

/// The metrics, for a scraper holding an admin token.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "system",
    operation_id = "getMetrics",
    responses((status = 200, description = "Every series in the Prometheus text format", content_type = "text/plain; version=0.0.4", body = String)),
)]
pub async fn serve(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.check(Scope::Admin)?;
    render(&state).await
}

/// The metrics as a response, whoever asked.
pub async fn render(state: &AppState) -> Result<Response, ApiError> {
    let text = crate::metrics::metrics()
        .render(state)
        .await
        .map_err(ApiError::internal)?;
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

/// The router of `--metrics-listen`: `/metrics` without a token, nothing
/// else.
pub fn unauthenticated(state: AppState) -> axum::Router {
    axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(|State(state): State<AppState>| async move { render(&state).await }),
        )
        .with_state(state)
}
