//! `/v1/vms/{id}/ports/{port}/{path}`: HTTP to a server listening inside
//! a sandbox (a dev server's preview), over the agent's port forwarding —
//! the sandbox needs no network. The request goes on without the caller's
//! `Authorization` header, so the token never enters the sandbox. A paused
//! VM is resumed by the request.
//!
//! - **Host-name form**: with `--preview-domain D`, a request whose `Host`
//!   is `{vm}-{port}.D` is the same preview of the path as given
//!   ([`by_host`], a middleware in front of every route). It needs the same
//!   token as the path form.
//! - **WebSockets**: a request asking to upgrade is passed on with its
//!   `Upgrade` headers; when the server inside answers `101`, both upgraded
//!   connections are spliced byte for byte (hot reload works).

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::{StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
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

/// `(vm, port)` when `host` is `{vm}-{port}.<domain>`.
pub fn preview_host(domain: &str, host: &str) -> Option<(String, u16)> {
    let host = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let label = host
        .to_ascii_lowercase()
        .strip_suffix(&format!(".{}", domain.to_ascii_lowercase()))?
        .to_owned();
    if label.contains('.') {
        return None;
    }
    let (vm, port) = label.rsplit_once('-')?;
    Some((vm.to_owned(), port.parse().ok()?))
}

/// Routes `{vm}-{port}.<preview domain>` requests to the preview; passes
/// every other request on.
pub async fn by_host(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let target = state.config.preview_domain.as_deref().and_then(|domain| {
        let host = request.headers().get(header::HOST)?.to_str().ok()?;
        preview_host(domain, host)
    });
    let Some((id, port)) = target else {
        return next.run(request).await;
    };
    let (mut parts, body) = request.into_parts();
    let caller = match Caller::from_request_parts(&mut parts, &state).await {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };
    let path = parts.uri.path().trim_start_matches('/').to_owned();
    let request = Request::from_parts(parts, body);
    forward(State(state), caller, id, port, path, request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
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
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(error = %error, "preview connection ended");
        }
    });
    let mut request = request;
    let client_upgrade = request
        .headers()
        .contains_key(header::UPGRADE)
        .then(|| hyper::upgrade::on(&mut request));
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
    let mut response = sender
        .send_request(Request::from_parts(parts, body))
        .await
        .map_err(|e| bad_gateway(port, e))?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let server_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            let (Ok(client), Ok(server)) = (client_upgrade.await, server_upgrade.await) else {
                tracing::debug!("a preview upgrade failed on one side");
                return;
            };
            let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        });
    }
    Ok(response.map(Body::new))
}

#[cfg(test)]
mod tests {
    use super::preview_host;

    #[test]
    fn preview_hosts_name_a_vm_and_a_port() {
        assert_eq!(
            preview_host("preview.test", "vm-ab12cd-3000.preview.test"),
            Some(("vm-ab12cd".to_owned(), 3000))
        );
        assert_eq!(
            preview_host("preview.test", "VM-AB-8080.Preview.Test:7000"),
            Some(("vm-ab".to_owned(), 8080))
        );
        assert_eq!(preview_host("preview.test", "preview.test"), None);
        assert_eq!(preview_host("preview.test", "a.vm-1-80.preview.test"), None);
        assert_eq!(preview_host("preview.test", "vm-1-x.preview.test"), None);
        assert_eq!(preview_host("preview.test", "vm-1-80.other.test"), None);
    }
}
