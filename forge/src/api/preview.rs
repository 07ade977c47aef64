//! `/v1/vms/{id}/ports/{port}/{path}`: HTTP to a server listening inside
//! a sandbox (a dev server's preview), over the agent's port forwarding —
//! the sandbox needs no network. The request goes on without the caller's
//! `Authorization` header, so the token never enters the sandbox. A paused
//! VM is resumed by the request.
//!
//! A preview is a page the sandbox wrote: hostile. Where it is served
//! decides what it can reach.
//!
//! - **Host-name form** (the one for real apps): with `--preview-domain D`,
//!   a request whose `Host` is `{vm}-{port}.D` is the same preview of the
//!   path as given ([`by_host`], a middleware in front of every route). `D`
//!   must be another site than the forge's (another registrable domain,
//!   [`check_preview_domain`], checked at start-up), so a preview's
//!   scripts, cookies and requests are cross-site to the forge. The
//!   sandbox's own cookies pass both ways.
//! - **Path form**, on the forge's own origin: the response carries
//!   `Content-Security-Policy: sandbox …` without `allow-same-origin`, so
//!   the page runs in an opaque origin (it cannot read the forge's cookies,
//!   storage or pages, and what it sends says `Origin: null`, which the web
//!   UI refuses), and any `Set-Cookie` of the sandbox is dropped.
//! - **Share links**: `POST /v1/vms/{id}/ports/{port}/links {ttl_secs}`
//!   returns a signed URL that expires ([`ShareKey`]); whoever holds it can
//!   open that one port of that one VM in a plain browser, without a forge
//!   credential, until it expires. On a preview domain the link sets a
//!   cookie on that preview host only (`forge_share`, never passed to the
//!   sandbox); without one it is a path (`/v1/previews/{token}/…`, served
//!   like the path form).
//! - **WebSockets**: a request asking to upgrade is passed on with its
//!   `Upgrade` headers; when the server inside answers `101`, both upgraded
//!   connections are spliced byte for byte (hot reload works).

use std::path::Path as FsPath;
use std::sync::Arc;

use anyhow::Context;
use api_types::vms::{ShareLink, ShareLinkRequest};
use api_types::{ErrorBody, ErrorCode};
use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use hyper_util::rt::TokioIo;
use sha2::Sha256;

use super::ApiError;
use super::openapi::PortPath;
use crate::auth::Caller;
use crate::server::AppState;

/// What a path-form preview runs under: an opaque origin (no
/// `allow-same-origin`), its scripts and forms still working.
const PATH_PREVIEW_CSP: &str =
    "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads";

/// The cookie a share link leaves on its preview host, and the query
/// parameter that carries it there.
const SHARE_COOKIE: &str = "forge_share";
/// A share link's lifetime: default and bounds, in seconds.
const SHARE_TTL_DEFAULT: u64 = 3600;
const SHARE_TTL_MIN: u64 = 60;
const SHARE_TTL_MAX: u64 = 7 * 24 * 3600;

/// Where a preview is served, which decides what passes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Served {
    /// On the forge's own origin: sandboxed, no cookies either way.
    OnForge,
    /// On its own preview host: the sandbox's cookies pass.
    OwnHost,
}

fn bad_gateway(port: u16, error: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        ErrorCode::BadGateway,
        format!("nothing answered HTTP on port {port} inside the VM: {error}"),
    )
}

fn expired() -> ApiError {
    ApiError::unauthorized("the share link is unknown or expired")
}

/// The path form for a caller who may use the VM.
async fn for_caller(
    state: &AppState,
    caller: &Caller,
    (id, port): (String, u16),
    path: String,
    request: Request,
) -> Result<Response, ApiError> {
    super::vms::owned(state, caller, &id).await?;
    forward(state, id, port, path, request, Served::OnForge).await
}

pub async fn root(
    State(state): State<AppState>,
    caller: Caller,
    Path(target): Path<(String, u16)>,
    request: Request,
) -> Result<Response, ApiError> {
    for_caller(&state, &caller, target, String::new(), request).await
}

/// The VM's HTTP server on `port`, under the forge's origin: the request
/// (any method, WebSocket upgrades too) is forwarded as it is, and the
/// answer comes back sandboxed (an opaque origin; no cookies either way).
/// `/v1/vms/{id}/ports/{port}/` reaches the server's root.
#[utoipa::path(
    method(get, post, put, patch, delete, head, options),
    path = "/v1/vms/{id}/ports/{port}/{*path}",
    tag = "vms",
    operation_id = "preview",
    params(PortPath, ("path" = String, Path, description = "The path on the VM's server")),
    responses((status = 200, description = "Whatever the VM's server answers")),
)]
pub async fn path(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, port, path)): Path<(String, u16, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    for_caller(&state, &caller, (id, port), path, request).await
}

/// Any method but POST on `…/ports/{port}/links`: the preview's own
/// `/links` (a POST there creates a share link, [`create_link`]).
pub async fn links_page(
    State(state): State<AppState>,
    caller: Caller,
    Path(target): Path<(String, u16)>,
    request: Request,
) -> Result<Response, ApiError> {
    for_caller(&state, &caller, target, "links".into(), request).await
}

/// A share link's preview where the forge has no preview domain: like
/// `/v1/vms/{id}/ports/{port}/…` without a token, until the link expires.
/// `/v1/previews/{token}/` reaches the server's root.
#[utoipa::path(
    method(get, post, put, patch, delete, head, options),
    path = "/v1/previews/{token}/{*path}",
    tag = "vms",
    operation_id = "sharedPreview",
    security(()),
    params(
        ("token" = String, Path, description = "The share link's token"),
        ("path" = String, Path, description = "The path on the VM's server"),
    ),
    responses(
        (status = 200, description = "Whatever the VM's server answers"),
        (status = 401, description = "The link is unknown or expired", body = ErrorBody),
        (status = 502, description = "Nothing answered HTTP on the port", body = ErrorBody),
    ),
)]
pub async fn shared(
    State(state): State<AppState>,
    Path(params): Path<Vec<(String, String)>>,
    request: Request,
) -> Result<Response, ApiError> {
    let param = |name: &str| {
        params
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
            .unwrap_or_default()
    };
    let (id, port) = state
        .config
        .share_key
        .verify(&param("token"), now_secs())
        .ok_or_else(expired)?;
    forward(&state, id, port, param("path"), request, Served::OnForge).await
}

/// A link to the VM's server on `port` that works without a token until
/// it expires (`ttl_secs`: 60 s to 7 days, an hour by default). Any other
/// method on this path reaches the server's own `/links`.
#[utoipa::path(
    post,
    path = "/v1/vms/{id}/ports/{port}/links",
    tag = "vms",
    operation_id = "createShareLink",
    params(PortPath),
    request_body(content = Option<ShareLinkRequest>, description = "No body is an hour"),
    responses((status = 201, description = "The link", body = ShareLink)),
)]
pub async fn create_link(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, port)): Path<(String, u16)>,
    body: Option<Json<ShareLinkRequest>>,
) -> Result<(StatusCode, Json<ShareLink>), ApiError> {
    super::vms::owned(&state, &caller, &id).await?;
    let ttl = body
        .map(|Json(b)| b)
        .unwrap_or_default()
        .ttl_secs
        .unwrap_or(SHARE_TTL_DEFAULT);
    if !(SHARE_TTL_MIN..=SHARE_TTL_MAX).contains(&ttl) {
        return Err(ApiError::bad_request(format!(
            "ttl_secs must be between {SHARE_TTL_MIN} and {SHARE_TTL_MAX} (7 days)"
        )));
    }
    if port == 0 {
        return Err(ApiError::bad_request("port 0 is not a port"));
    }
    let expires = now_secs() + ttl;
    let token = state.config.share_key.sign(&id, port, expires);
    let url = match &state.config.preview_domain {
        Some(_) => format!(
            "{}?{SHARE_COOKIE}={token}",
            super::vms::preview_url(&state, &id, port)
        ),
        None => format!("{}/v1/previews/{token}/", state.config.public_url),
    };
    let expires_at = i64::try_from(expires)
        .ok()
        .and_then(|e| time::OffsetDateTime::from_unix_timestamp(e).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        });
    tracing::info!(vm = %id, port, ttl, "share link created");
    Ok((
        StatusCode::CREATED,
        Json(ShareLink {
            url,
            expires_at,
            ttl_secs: ttl,
        }),
    ))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The key share links are signed with: 32 random bytes kept in
/// `<data dir>/preview-key` (mode 0600), so links outlive a restart.
/// Replacing the file ends every link.
#[derive(Clone)]
pub struct ShareKey(Arc<[u8; 32]>);

impl std::fmt::Debug for ShareKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShareKey(..)")
    }
}

impl ShareKey {
    /// Reads the key in `data_dir`, creating it on first start.
    pub fn load_or_create(data_dir: &FsPath) -> anyhow::Result<Self> {
        let path = data_dir.join("preview-key");
        let mut key = [0u8; 32];
        match std::fs::read_to_string(&path) {
            Ok(text) => hex::decode_to_slice(text.trim(), &mut key)
                .with_context(|| format!("{} is not 64 hex digits", path.display()))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                rand::Rng::fill(&mut rand::rng(), &mut key);
                let text = format!("{}\n", hex::encode(key));
                crate::server::write_private_file(&path, text.as_bytes())?;
            }
            Err(error) => {
                return Err(error).with_context(|| format!("cannot read {}", path.display()));
            }
        }
        Ok(Self(Arc::new(key)))
    }

    fn mac(&self, vm: &str, port: u16, expires: u64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0[..]).expect("any key length");
        mac.update(format!("forge preview share\n{vm}\n{port}\n{expires}").as_bytes());
        mac
    }

    /// `{vm}.{port}.{expires}.{signature}`.
    fn sign(&self, vm: &str, port: u16, expires: u64) -> String {
        let signature = hex::encode(self.mac(vm, port, expires).finalize().into_bytes());
        format!("{vm}.{port}.{expires}.{signature}")
    }

    /// The VM and port `token` opens, if it is genuine and not expired at
    /// `now`.
    fn verify(&self, token: &str, now: u64) -> Option<(String, u16)> {
        let mut parts = token.split('.');
        let (vm, port, expires, signature) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || vm.is_empty() {
            return None;
        }
        let (port, expires): (u16, u64) = (port.parse().ok()?, expires.parse().ok()?);
        let signature = hex::decode(signature).ok()?;
        self.mac(vm, port, expires).verify_slice(&signature).ok()?;
        (now < expires).then(|| (vm.to_owned(), port))
    }
}

/// Refuses a preview domain on the forge's own site: the registrable
/// domain (by the public suffix list) of a preview host `{vm}-{port}.D`
/// must differ from that of `public_url`'s host (for an IP address or a
/// bare name, the host itself). Otherwise previews are same-site to the
/// forge: the forge's `SameSite` cookies ride along on requests their
/// pages make, and they can set cookies for its domain.
pub fn check_preview_domain(public_url: &str, domain: &str) -> Result<(), String> {
    let domain = domain.trim_matches('.').to_ascii_lowercase();
    if domain.is_empty() || domain.contains(['/', ':', '@', ' ']) {
        return Err(format!(
            "--preview-domain {domain:?} is not a domain name (give one like preview.example.net)"
        ));
    }
    let origin = web::origin::public_origin(public_url);
    let authority = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    }
    .to_ascii_lowercase();
    let site = |name: &str| psl::domain_str(name).unwrap_or(name).to_owned();
    let forge_site = site(&host);
    if site(&format!("vm-3000.{domain}")) == forge_site {
        return Err(format!(
            "--preview-domain {domain} is on the forge's own site ({forge_site}, from \
             --public-url {public_url}): pages of previews could then send the forge's cookies \
             and set cookies for it; give a domain of another site (another registrable domain, \
             e.g. example-preview.net)"
        ));
    }
    Ok(())
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
/// every other request on. A preview host opens with a token that may use
/// the VM (as the path form), or with a share link: its `forge_share`
/// parameter becomes a cookie of that host (and leaves the address bar).
pub async fn by_host(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let target = state.config.preview_domain.as_deref().and_then(|domain| {
        let host = request.headers().get(header::HOST)?.to_str().ok()?;
        preview_host(domain, host)
    });
    let Some((id, port)) = target else {
        return next.run(request).await;
    };
    let now = now_secs();
    let opens_this = |token: &str| {
        state
            .config
            .share_key
            .verify(token, now)
            .is_some_and(|(vm, p)| vm == id && p == port)
    };
    let share_param = format!("{SHARE_COOKIE}=");
    let query = request.uri().query().unwrap_or_default();
    let (shared, rest): (Vec<&str>, Vec<&str>) = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .partition(|pair| pair.starts_with(&share_param));
    if let Some(token) = shared.first().map(|pair| &pair[share_param.len()..]) {
        if !opens_this(token) {
            return expired().into_response();
        }
        let expires: u64 = token
            .split('.')
            .nth(2)
            .and_then(|e| e.parse().ok())
            .unwrap_or(now);
        let secure = if state.config.public_url.starts_with("https://") {
            "; Secure"
        } else {
            ""
        };
        let cookie = format!(
            "{SHARE_COOKIE}={token}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
            expires.saturating_sub(now)
        );
        let path = request.uri().path();
        let location = match rest.is_empty() {
            true => path.to_owned(),
            false => format!("{path}?{}", rest.join("&")),
        };
        return (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, location), (header::SET_COOKIE, cookie)],
        )
            .into_response();
    }
    let (mut parts, body) = request.into_parts();
    let by_link =
        web::session::cookie(&parts.headers, SHARE_COOKIE).is_some_and(|t| opens_this(&t));
    if !by_link {
        let allowed = match Caller::from_request_parts(&mut parts, &state).await {
            Ok(caller) => super::vms::owned(&state, &caller, &id).await.map(drop),
            Err(error) => Err(error),
        };
        if let Err(error) = allowed {
            return error.into_response();
        }
    }
    let path = parts.uri.path().trim_start_matches('/').to_owned();
    let request = Request::from_parts(parts, body);
    forward(&state, id, port, path, request, Served::OwnHost)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// A `Cookie` header's value without the forge's share cookie; `None` when
/// nothing else is left.
fn without_share_cookie(value: &str) -> Option<HeaderValue> {
    let share = format!("{SHARE_COOKIE}=");
    let kept: Vec<&str> = value
        .split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && !pair.starts_with(&share))
        .collect();
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_str(&kept.join("; ")).ok()
}

async fn forward(
    state: &AppState,
    id: String,
    port: u16,
    path: String,
    request: Request,
    served: Served,
) -> Result<Response, ApiError> {
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
    // On the forge's origin every cookie is the forge's; on a preview host
    // only the share cookie is.
    let cookie = parts.headers.remove(header::COOKIE);
    if served == Served::OwnHost
        && let Some(kept) = cookie
            .as_ref()
            .and_then(|c| c.to_str().ok())
            .and_then(without_share_cookie)
    {
        parts.headers.insert(header::COOKIE, kept);
    }
    parts
        .headers
        .insert(header::HOST, HeaderValue::from_static("localhost"));
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
    if served == Served::OnForge {
        let headers = response.headers_mut();
        headers.remove(header::SET_COOKIE);
        headers.append(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PATH_PREVIEW_CSP),
        );
    }
    Ok(response.map(Body::new))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn preview_domains_must_be_another_site() {
        for (public, domain, allowed) in [
            ("https://forge.example.com", "preview.example.com", false),
            ("https://forge.example.com", "example.com", false),
            ("https://forge.example.com/", "PREVIEW.Example.COM.", false),
            (
                "https://forge.example.co.uk",
                "preview.example.co.uk",
                false,
            ),
            ("https://forge.example.com", "example-preview.net", true),
            ("https://forge.example.co.uk", "other.co.uk", true),
            // Hosts on a public suffix (github.io) are sites of their own.
            ("https://forge.github.io", "previews.github.io", true),
            ("http://127.0.0.1:8080", "preview.test", true),
            ("http://localhost:8080", "preview.localhost", true),
            ("http://[::1]:8080", "preview.test", true),
            ("https://forge.example.com", "a/b", false),
            ("https://forge.example.com", "", false),
        ] {
            assert_eq!(
                check_preview_domain(public, domain).is_ok(),
                allowed,
                "{public} with {domain:?}: {:?}",
                check_preview_domain(public, domain)
            );
        }
    }

    #[test]
    fn share_tokens_open_one_port_until_they_expire() {
        let key = ShareKey(Arc::new([7; 32]));
        let token = key.sign("vm1", 3000, 1000);
        assert_eq!(key.verify(&token, 999), Some(("vm1".to_owned(), 3000)));
        assert_eq!(key.verify(&token, 1000), None, "expired");
        let other_key = ShareKey(Arc::new([8; 32]));
        assert_eq!(other_key.verify(&token, 1), None, "another forge's key");
        let signature = token.rsplit('.').next().unwrap();
        for forged in [
            format!("vm2.3000.1000.{signature}"),
            format!("vm1.3001.1000.{signature}"),
            format!("vm1.3000.9999.{signature}"),
            format!("{token}.x"),
            "vm1.3000.1000".to_owned(),
            "vm1.3000.1000.zz".to_owned(),
            String::new(),
        ] {
            assert_eq!(key.verify(&forged, 1), None, "{forged}");
        }
    }

    #[test]
    fn only_the_share_cookie_is_kept_from_the_sandbox() {
        assert_eq!(
            without_share_cookie("a=1; forge_share=t; b=2").unwrap(),
            "a=1; b=2"
        );
        assert_eq!(without_share_cookie("forge_share=t"), None);
    }
}
