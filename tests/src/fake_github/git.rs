//! The fake GitHub's git hosting: smart HTTP through `git http-backend`
//! after a Basic-auth token check, and the webhooks a push sends.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::Response;
use base64::Engine;
use serde_json::json;

use super::{
    AppState, Pull, check_repo_access, deliver, error, installation_of, pull_payload,
    record_delivery, refs_of, token_installation,
};

/// Smart HTTP through `git http-backend`, after checking Basic auth.
pub(super) async fn git_http(State(state): State<AppState>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let Some((full_name, _)) = path
        .trim_start_matches('/')
        .split_once(".git/")
        .filter(|(_, rest)| ["info/refs", "git-upload-pack", "git-receive-pack"].contains(rest))
    else {
        return error(StatusCode::NOT_FOUND, "Not Found");
    };
    let full_name = full_name.to_owned();
    let headers = request.headers().clone();
    let method = request.method().clone();
    let (root, before, allowed) = {
        let shared = state.lock().unwrap_or_else(|p| p.into_inner());
        let password = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|v| v.split_once(':').map(|(_, p)| p.to_owned()));
        let allowed = match password {
            Some(p) if p == shared.user_token => true,
            Some(p) => token_installation(&shared, &p)
                .is_some_and(|i| check_repo_access(&shared, i, &full_name).is_ok()),
            None => false,
        };
        let dir = shared.root.join(format!("{full_name}.git"));
        (shared.root.clone(), refs_of(&dir), allowed)
    };
    if !allowed {
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header(header::WWW_AUTHENTICATE, "Basic realm=\"GitHub\"")
            .body(Body::from("Invalid username or token.\n"))
            .expect("response");
    }
    let body = match axum::body::to_bytes(request.into_body(), 256 << 20).await {
        Ok(body) => body,
        Err(_) => return error(StatusCode::BAD_REQUEST, "unreadable body"),
    };
    let mut command = tokio::process::Command::new("git");
    command
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", &root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", &path)
        .env("REQUEST_METHOD", method.as_str())
        .env("QUERY_STRING", &query)
        .env("REMOTE_USER", "x-access-token")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("CONTENT_LENGTH", body.len().to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    for (name, var) in [
        ("content-type", "CONTENT_TYPE"),
        ("content-encoding", "HTTP_CONTENT_ENCODING"),
        ("git-protocol", "GIT_PROTOCOL"),
    ] {
        if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
            command.env(var, value);
        }
    }
    let Ok(mut child) = command.spawn() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "git http-backend did not start",
        );
    };
    let mut stdin = child.stdin.take().expect("piped");
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let _ = stdin.write_all(&body).await;
    });
    let Ok(output) = child.wait_with_output().await else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "git http-backend failed");
    };
    let _ = writer.await;
    let response = cgi_response(&output.stdout);
    if method == Method::POST && path.ends_with("git-receive-pack") {
        after_push(&state, &full_name, &before).await;
    }
    response
}

fn cgi_response(output: &[u8]) -> Response {
    let split = output
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| output.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((end, skip)) = split else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "git http-backend sent no headers",
        );
    };
    let mut builder = Response::builder();
    for line in String::from_utf8_lossy(&output[..end]).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("status") {
            let code = value
                .trim()
                .split(' ')
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(200);
            builder = builder.status(code);
        } else {
            builder = builder.header(name.trim(), value.trim());
        }
    }
    builder
        .body(Body::from(output[end + skip..].to_vec()))
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "bad CGI headers"))
}

/// Sends the webhooks of a push: `push` per ref, `create`/`delete`, and
/// `synchronize` for open pull requests whose head moved.
async fn after_push(state: &AppState, full_name: &str, before: &HashMap<String, String>) {
    const ZERO: &str = "0000000000000000000000000000000000000000";
    let (url, deliveries) = {
        let mut shared = state.lock().unwrap_or_else(|p| p.into_inner());
        let after = refs_of(&shared.root.join(format!("{full_name}.git")));
        let installation = installation_of(&shared, full_name).unwrap_or_default();
        let mut names: Vec<&String> = before.keys().chain(after.keys()).collect();
        names.sort();
        names.dedup();
        let mut deliveries = Vec::new();
        for name in names {
            let (old, new) = (before.get(name), after.get(name));
            if old == new {
                continue;
            }
            let repository = json!({ "full_name": full_name, "name": full_name.split('/').nth(1), "default_branch": "main" });
            let payload = json!({
                "ref": name, "before": old.map_or(ZERO, String::as_str), "after": new.map_or(ZERO, String::as_str),
                "created": old.is_none(), "deleted": new.is_none(), "forced": false,
                "repository": repository, "installation": { "id": installation }, "sender": { "login": "user" },
            });
            deliveries.push(record_delivery(&mut shared, "push", &payload));
            let (kind, short) = match name.strip_prefix("refs/heads/") {
                Some(branch) => ("branch", branch),
                None => ("tag", name.trim_start_matches("refs/tags/")),
            };
            let lifecycle = json!({ "ref": short, "ref_type": kind, "repository": repository, "installation": { "id": installation } });
            if old.is_none() {
                deliveries.push(record_delivery(&mut shared, "create", &lifecycle));
            } else if new.is_none() {
                deliveries.push(record_delivery(&mut shared, "delete", &lifecycle));
            }
            if let (Some(branch), Some(new)) = (name.strip_prefix("refs/heads/"), new) {
                let moved: Vec<Pull> = shared
                    .pulls
                    .iter_mut()
                    .filter(|p| p.open && p.repo == full_name && p.head == branch)
                    .map(|p| {
                        p.head_sha = new.clone();
                        p.clone()
                    })
                    .collect();
                for pull in moved {
                    let payload = pull_payload("synchronize", &pull, installation);
                    deliveries.push(record_delivery(&mut shared, "pull_request", &payload));
                }
            }
        }
        let url = if shared.paused {
            None
        } else {
            shared.webhook_url.clone()
        };
        (url, deliveries)
    };
    // GitHub delivers after the push has been answered.
    tokio::spawn(async move {
        for delivery in deliveries {
            deliver(url.clone(), delivery).await;
        }
    });
}
