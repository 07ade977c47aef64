//! The git remote of a sandbox: `origin` in `/workspace` is
//! `http://127.0.0.1:`[`GIT_PORT`]`/<owner>/<name>.git`, a port the agent
//! listens on inside the sandbox. Each connection to it is carried to the
//! host and served here as HTTP/1.1:
//!
//! - Only the repository's own smart-HTTP endpoints (`info/refs`,
//!   `git-upload-pack`, `git-receive-pack`) are relayed; any other path is
//!   `403`. The sandbox cannot reach the rest of the forge's API this way.
//! - Each request is sent to the forge's own listener on the host's
//!   loopback with `Authorization: Bearer <token>` added. The token is
//!   minted for the sandbox ([`mint`]): `repo:write` limited to that one
//!   repository, stored hashed like every token, named `sandbox:<vm id>`,
//!   kept only in the forge's memory (it never enters the sandbox nor a
//!   log), replaced whenever the relay restarts and revoked when the VM is
//!   destroyed ([`revoke`]).
//! - The token's row names the VM (`tokens.vm_id`), so the forge knows a
//!   push with it comes from that sandbox, whoever presents it: it may
//!   update the branch the VM serves (`vms.branch`, read at each push, so a
//!   pipeline fork that is re-pointed at its branch gets that one) and
//!   create, update and delete branches under its own prefix
//!   (`--sandbox-branch-prefix`, default `sandbox/<vm id>/`), nothing else:
//!   not another branch, not a tag. Protected branches (the default branch,
//!   `--protected-branches`) are only ever fast-forwarded, by anyone. The
//!   rules and where each is enforced are `git/push/rules.rs`'s; a refusal
//!   reaches `git push` as `! [remote rejected] … (forge: …)`, the reason
//!   naming the ref and what this sandbox may push to.
//!
//! So `git push origin HEAD` inside a branch's sandbox is an ordinary push
//! to the forge: the branch moves, events fire and its pipeline runs; and
//! `git push origin HEAD:sandbox/<vm id>/try` starts a branch of its own.
//! Code running in a feature branch's pipeline cannot move `main` or a
//! tag, which the GitHub sync would carry upstream.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body as AxumBody;
use axum::http::{self, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::auth::{self, Scope};
use crate::store::{NewToken, Store};

/// The port of the git remote inside every sandbox that has a repository.
pub const GIT_PORT: u16 = 3129;

/// What a relay forwards to, and as whom.
#[derive(Clone)]
pub struct Relay {
    /// The forge's listener, reached on the host.
    pub forge: SocketAddr,
    /// `owner/name`.
    pub repo: String,
    /// The sandbox's token (secret): never logged, never sent inside.
    pub secret: Arc<str>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("forge", &self.forge)
            .field("repo", &self.repo)
            .finish_non_exhaustive()
    }
}

/// The token name of sandbox `vm`'s git remote.
fn token_name(vm: &str) -> String {
    format!("sandbox:{vm}")
}

/// `origin` inside the sandbox for the forge URL `clone_url`
/// (`<public url>/<owner>/<name>.git`).
pub fn origin_url(clone_url: &str) -> String {
    let mut parts = clone_url.trim_end_matches('/').rsplit('/');
    let name = parts.next().unwrap_or_default();
    let owner = parts.next().unwrap_or_default();
    format!("http://127.0.0.1:{GIT_PORT}/{owner}/{name}")
}

/// Revokes every token of sandbox `vm`'s git remote.
pub async fn revoke(store: &Store, vm: &str) -> anyhow::Result<usize> {
    let name = token_name(vm);
    let mut revoked = 0;
    for token in store.list_tokens().await? {
        if token.name == name && token.revoked_at.is_none() && store.revoke_token(&token.id).await?
        {
            revoked += 1;
        }
    }
    Ok(revoked)
}

/// A fresh token for sandbox `vm`'s git remote (older ones revoked),
/// limited to the pushes that sandbox may make.
pub async fn mint(store: &Store, vm: &str, repo_id: &str) -> anyhow::Result<String> {
    revoke(store, vm).await?;
    let secret = auth::new_secret();
    let id = uuid::Uuid::new_v4().to_string();
    store
        .insert_sandbox_token(
            &NewToken {
                id: &id,
                name: &token_name(vm),
                secret_hash: &auth::hash_secret(&secret),
                scopes: Scope::RepoWrite.as_str(),
                repo_id: Some(repo_id),
            },
            vm,
        )
        .await?;
    tracing::info!(vm, token = %id, "minted the sandbox's git token");
    Ok(secret)
}

/// Whether `path` is one of `repo`'s smart-HTTP endpoints.
fn allowed(repo: &str, path: &str) -> bool {
    let Some((prefix, endpoint)) = path.rsplit_once('/') else {
        return false;
    };
    let prefix = prefix.strip_suffix("/info").unwrap_or(prefix);
    let endpoint_ok = match endpoint {
        "refs" => path.ends_with("/info/refs"),
        "git-upload-pack" | "git-receive-pack" => !path.ends_with("/info/git-upload-pack"),
        _ => false,
    };
    let repo_path = prefix.trim_start_matches('/');
    endpoint_ok && (repo_path == repo || repo_path.strip_suffix(".git") == Some(repo))
}

fn plain(status: StatusCode, text: String) -> Response<AxumBody> {
    let mut response = Response::new(AxumBody::from(text));
    *response.status_mut() = status;
    response
}

async fn forward(relay: &Relay, vm: &str, mut request: Request<Incoming>) -> Response<AxumBody> {
    let path = request.uri().path().to_owned();
    if !allowed(&relay.repo, &path) {
        return plain(
            StatusCode::FORBIDDEN,
            format!(
                "forge git remote: only {}'s git endpoints are reachable here\n",
                relay.repo
            ),
        );
    }
    let Ok(bearer) = HeaderValue::from_str(&format!("Bearer {}", relay.secret)) else {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "bad token\n".into());
    };
    let headers = request.headers_mut();
    headers.insert(http::header::AUTHORIZATION, bearer);
    if let Ok(host) = HeaderValue::from_str(&relay.forge.to_string()) {
        headers.insert(http::header::HOST, host);
    }
    let upstream = async {
        let stream = tokio::net::TcpStream::connect(relay.forge).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok::<_, anyhow::Error>(sender.send_request(request).await?)
    };
    match upstream.await {
        Ok(response) => response.map(AxumBody::new),
        Err(error) => {
            tracing::warn!(vm, error = %error, "git relay could not reach the forge");
            plain(
                StatusCode::BAD_GATEWAY,
                "forge git remote: the forge did not answer\n".into(),
            )
        }
    }
}

/// Serves one connection from sandbox `vm` to its git remote.
pub async fn serve<S>(relay: Relay, vm: String, io: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let relay = Arc::new(relay);
    let vm_for_log = vm.clone();
    let service = hyper::service::service_fn(move |request| {
        let relay = relay.clone();
        let vm = vm.clone();
        async move { Ok::<_, std::convert::Infallible>(forward(&relay, &vm, request).await) }
    });
    if let Err(error) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await
    {
        tracing::debug!(vm = %vm_for_log, error = %error, "git relay connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_repository_endpoints_are_relayed() {
        for ok in [
            "/acme/web.git/info/refs",
            "/acme/web/info/refs",
            "/acme/web.git/git-upload-pack",
            "/acme/web.git/git-receive-pack",
        ] {
            assert!(allowed("acme/web", ok), "{ok}");
        }
        for refused in [
            "/acme/other.git/info/refs",
            "/v1/vms",
            "/v1/repos/acme/web/runs",
            "/acme/web.git/info/git-upload-pack",
            "/acme/web.git/refs",
            "/x/acme/web.git/info/refs",
            "/acme/web.git/HEAD",
        ] {
            assert!(!allowed("acme/web", refused), "{refused}");
        }
    }

    #[test]
    fn origin_points_at_the_relay() {
        assert_eq!(
            origin_url("http://127.0.0.1:8080/acme/web.git"),
            format!("http://127.0.0.1:{GIT_PORT}/acme/web.git")
        );
    }
}
