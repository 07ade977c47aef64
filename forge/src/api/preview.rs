//! `/v1/vms/{id}/ports/{port}/{path}`: HTTP to a server listening inside
//! a sandbox (a dev server's preview), over the agent's port forwarding —
//! the sandbox needs no network. The request goes on without the caller's
//! `Authorization` header, so the token never enters the sandbox. A paused
//! VM is resumed by the request.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::Response;
use hyper_util::rt::TokioIo;

use super::ApiError;
use crate::auth::Caller;
use crate::server::AppState;

fn bad_gateway(port: u16, error: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "bad_gateway",
        format!("nothing answered HTTP on port {port} inside the VM: {error}"),
    )
}

pub async fn root(
    state: State<AppState>,
    caller: Caller,
    Path((id, port)): Path<(String, u16)>,
    request: Request,
) -> Result<Response, ApiError> {
    forward(state, caller, id, port, String::new(), request).await
}

pub async fn path(
    state: State<AppState>,
    caller: Caller,
    Path((id, port, path)): Path<(String, u16, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    forward(state, caller, id, port, path, request).await
}

async fn forward(
    State(state): State<AppState>,
    caller: Caller,
    id: String,
    port: u16,
    path: String,
    request: Request,
) -> Result<Response, ApiError> {
    super::vms::owned(&state, &caller, &id).await?;
    let stream = match state.sandboxes.open_port(&id, port).await {
        Ok(stream) => stream,
        // The agent could not connect: nothing listens there (yet).
        Err(crate::vms::VmError::Sandbox(error)) if error.remote_kind().is_some() => {
            return Err(bad_gateway(port, error));
        }
        Err(error) => return Err(error.into()),
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| bad_gateway(port, e))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(error = %error, "preview connection ended");
        }
    });
    let (mut parts, body) = request.into_parts();
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    parts.uri = format!("/{path}{query}")
        .parse::<Uri>()
        .map_err(|e| ApiError::bad_request(format!("bad preview path: {e}")))?;
    parts.headers.remove(header::AUTHORIZATION);
    parts.headers.remove(header::COOKIE);
    parts
        .headers
        .insert(header::HOST, header::HeaderValue::from_static("localhost"));
    let response = sender
        .send_request(Request::from_parts(parts, body))
        .await
        .map_err(|e| bad_gateway(port, e))?;
    Ok(response.map(Body::new))
}
