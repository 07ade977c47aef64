//! A fake GitHub for the end-to-end tests: a stateful HTTP server that
//! behaves like the parts of GitHub the forge's app uses, and is strict
//! about them so that a wrong call fails the test.
//!
//! - App JWTs (RS256) are verified with the app's public key: signature,
//!   issuer, expiry, and a lifetime of at most ten minutes.
//! - Installation tokens are opaque strings of varying length with an
//!   `expires_at`; [`FakeGithub::expire_tokens`] ends every token issued so
//!   far, as time would. Every API and git request checks its token.
//! - Repositories are bare git directories served over smart HTTP by
//!   `git http-backend` (Basic auth, `x-access-token:<token>`). A push
//!   sends `push` (and `create`/`delete`) webhooks, and `synchronize` for
//!   open pull requests whose head moved.
//! - Reviews and check runs are recorded; a `REQUEST_CHANGES` or `COMMENT`
//!   review without a body is answered 422, as GitHub does.
//! - Webhooks are signed (`X-Hub-Signature-256`) and carry an
//!   `X-GitHub-Delivery` id; any delivery can be sent again.
//!
//! The server runs on its own Tokio runtime, so blocking tests can drive it.

// Refusals are whole HTTP responses, built on the error path only.
#![allow(clippy::result_large_err)]

mod git;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

/// The secret the fake signs its webhooks with.
pub const WEBHOOK_SECRET: &str = "fake-github-webhook-secret";

#[derive(Debug, Clone)]
struct Token {
    installation: u64,
    expires_at: u64,
}

#[derive(Debug, Clone)]
struct Pull {
    repo: String,
    number: u64,
    head: String,
    base: String,
    head_sha: String,
    open: bool,
}

#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub event: String,
    pub body: String,
}

struct Shared {
    app_id: u64,
    public_key_pem: Vec<u8>,
    root: PathBuf,
    webhook_url: Option<String>,
    installations: HashMap<u64, (String, Vec<String>)>,
    tokens: HashMap<String, Token>,
    tokens_issued: usize,
    token_ttl_secs: u64,
    user_token: String,
    pulls: Vec<Pull>,
    reviews: Vec<Value>,
    check_runs: Vec<Value>,
    deliveries: Vec<Delivery>,
    next_id: u64,
    /// Answer the next N API calls with a rate-limit 403.
    rate_limited: u32,
    rate_limited_served: u32,
    /// Record webhooks but do not send them (a lost delivery).
    paused: bool,
}

type AppState = Arc<Mutex<Shared>>;

pub struct FakeGithub {
    pub url: String,
    pub key_path: PathBuf,
    pub app_id: u64,
    state: AppState,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn random_hex(len: usize) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let mut out = String::new();
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7)
        ^ COUNTER
            .fetch_add(0x9e37_79b9, Ordering::Relaxed)
            .rotate_left(17);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.push_str(&format!("{seed:016x}"));
    }
    out.truncate(len);
    out
}

fn rfc3339(secs: u64) -> String {
    let time = time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    time.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .expect("git runs");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The new-side lines of each file a review comment may point at: every
/// line of the hunks of the diff from the merge base of `base` and `head`
/// to `head`, read from the hunk headers' ranges.
fn diff_lines(dir: &Path, base: &str, head: &str) -> HashMap<String, HashSet<u64>> {
    let merge_base = git(dir, &["merge-base", base, head]);
    let diff = git(
        dir,
        &[
            "diff",
            "--unified=3",
            "--no-color",
            "--no-renames",
            &merge_base,
            head,
        ],
    );
    let mut lines: HashMap<String, HashSet<u64>> = HashMap::new();
    let mut path = None;
    for line in diff.lines() {
        if let Some(name) = line.strip_prefix("+++ ") {
            path = name.strip_prefix("b/").map(str::to_owned);
        } else if let (Some(header), Some(path)) = (line.strip_prefix("@@ "), &path) {
            let range = header
                .split(' ')
                .find_map(|p| p.strip_prefix('+'))
                .unwrap_or("0,0");
            let (start, count) = range.split_once(',').unwrap_or((range, "1"));
            let (start, count): (u64, u64) =
                (start.parse().unwrap_or(0), count.parse().unwrap_or(0));
            lines
                .entry(path.clone())
                .or_default()
                .extend(start..start + count);
        }
    }
    lines
}

fn refs_of(dir: &Path) -> HashMap<String, String> {
    git(dir, &["for-each-ref", "--format=%(objectname) %(refname)"])
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(sha, name)| (name.to_owned(), sha.to_owned()))
        .collect()
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({ "message": message, "documentation_url": "https://docs.github.com/rest" })),
    )
        .into_response()
}

impl FakeGithub {
    /// Starts the fake with a fresh RSA key (made with the `openssl` CLI).
    pub fn start(app_id: u64) -> FakeGithub {
        let dir = tempfile::tempdir().expect("temporary directory");
        let key_path = dir.path().join("app.pem");
        let public_path = dir.path().join("app.pub.pem");
        let ok = Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&key_path)
            .arg("2048")
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs (scripts/setup-host.sh installs it)")
            .success();
        assert!(ok, "openssl genrsa failed");
        let ok = Command::new("openssl")
            .args(["rsa", "-pubout", "-in"])
            .arg(&key_path)
            .arg("-out")
            .arg(&public_path)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs")
            .success();
        assert!(ok, "openssl rsa -pubout failed");
        let root = dir.path().join("repos");
        std::fs::create_dir_all(&root).expect("repos dir");
        let state = Arc::new(Mutex::new(Shared {
            app_id,
            public_key_pem: std::fs::read(&public_path).expect("public key"),
            root,
            webhook_url: None,
            installations: HashMap::new(),
            tokens: HashMap::new(),
            tokens_issued: 0,
            token_ttl_secs: 3600,
            user_token: format!("ghp_{}", random_hex(36)),
            pulls: Vec::new(),
            reviews: Vec::new(),
            check_runs: Vec::new(),
            deliveries: Vec::new(),
            next_id: 1000,
            rate_limited: 0,
            rate_limited_served: 0,
            paused: false,
        }));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let app = axum::Router::new()
            .route("/app/installations/{id}/access_tokens", post(access_token))
            .route("/repos/{owner}/{repo}/installation", get(repo_installation))
            .route(
                "/repos/{owner}/{repo}/pulls/{number}/reviews",
                post(create_review).get(list_reviews),
            )
            .route("/repos/{owner}/{repo}/check-runs", post(create_check_run))
            .route(
                "/repos/{owner}/{repo}/check-runs/{id}",
                patch(update_check_run),
            )
            .fallback(git::git_http)
            .with_state(state.clone());
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeGithub {
            url,
            key_path,
            app_id,
            state,
            runtime,
            _dir: dir,
        }
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The environment a forge needs to use this fake as its GitHub.
    pub fn forge_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("FORGE_GITHUB_APP_ID", self.app_id.to_string()),
            (
                "FORGE_GITHUB_PRIVATE_KEY",
                self.key_path.display().to_string(),
            ),
            ("FORGE_GITHUB_WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()),
            ("FORGE_GITHUB_API_URL", self.url.clone()),
            ("FORGE_GITHUB_GIT_URL", self.url.clone()),
        ]
    }

    /// Where webhooks go (the forge's `/github/webhook`).
    pub fn set_webhook_url(&self, url: &str) {
        self.shared().webhook_url = Some(url.to_owned());
    }

    /// While paused, webhooks are recorded but not sent (lost deliveries).
    pub fn set_webhooks_paused(&self, paused: bool) {
        self.shared().paused = paused;
    }

    /// Creates an empty repository `owner/name`.
    pub fn create_repo(&self, full_name: &str) {
        let dir = self.repo_dir(full_name);
        std::fs::create_dir_all(&dir).expect("repo dir");
        git(
            &dir,
            &["init", "--bare", "--quiet", "--initial-branch=main"],
        );
    }

    pub fn repo_dir(&self, full_name: &str) -> PathBuf {
        self.shared().root.join(format!("{full_name}.git"))
    }

    /// A user's git URL of a repository (as a person would push).
    pub fn user_git_url(&self, full_name: &str) -> String {
        let token = self.shared().user_token.clone();
        format!(
            "{}/{full_name}.git",
            self.url
                .replacen("http://", &format!("http://user:{token}@"), 1)
        )
    }

    /// Installs the app on `repos` and sends the `installation` webhook.
    pub fn install(&self, installation: u64, account: &str, repos: &[&str]) {
        let repositories: Vec<Value> = repos
            .iter()
            .map(|r| json!({ "full_name": r, "name": r.split('/').nth(1) }))
            .collect();
        self.shared().installations.insert(
            installation,
            (
                account.to_owned(),
                repos.iter().map(|r| r.to_string()).collect(),
            ),
        );
        self.send(
            "installation",
            json!({
                "action": "created",
                "installation": { "id": installation, "account": { "login": account } },
                "repositories": repositories,
                "sender": { "login": account },
            }),
        );
    }

    /// The value of `refname` in a repository, if it exists.
    pub fn ref_sha(&self, full_name: &str, refname: &str) -> Option<String> {
        refs_of(&self.repo_dir(full_name)).get(refname).cloned()
    }

    /// Opens a pull request and sends its `opened` webhook; returns its number.
    pub fn open_pull_request(&self, full_name: &str, head: &str, base: &str) -> u64 {
        let head_sha = self
            .ref_sha(full_name, &format!("refs/heads/{head}"))
            .expect("the head branch exists on the fake GitHub");
        let pull = {
            let mut shared = self.shared();
            shared.next_id += 1;
            let pull = Pull {
                repo: full_name.to_owned(),
                number: shared.pulls.len() as u64 + 1,
                head: head.to_owned(),
                base: base.to_owned(),
                head_sha,
                open: true,
            };
            shared.pulls.push(pull.clone());
            pull
        };
        let installation = self.installation_of(full_name);
        self.send("pull_request", pull_payload("opened", &pull, installation));
        pull.number
    }

    fn installation_of(&self, full_name: &str) -> u64 {
        installation_of(&self.shared(), full_name).unwrap_or_default()
    }

    /// Reviews posted on a pull request.
    pub fn reviews(&self, full_name: &str, number: u64) -> Vec<Value> {
        self.shared()
            .reviews
            .iter()
            .filter(|r| r["repo"] == full_name && r["pull"] == number)
            .cloned()
            .collect()
    }

    /// Check runs created in a repository.
    pub fn check_runs(&self, full_name: &str) -> Vec<Value> {
        self.shared()
            .check_runs
            .iter()
            .filter(|r| r["repo"] == full_name)
            .cloned()
            .collect()
    }

    /// Ends every installation token issued so far.
    pub fn expire_tokens(&self) {
        for token in self.shared().tokens.values_mut() {
            token.expires_at = 0;
        }
    }

    /// How many installation tokens were issued.
    pub fn tokens_issued(&self) -> usize {
        self.shared().tokens_issued
    }

    /// Answers the next `calls` API requests with GitHub's rate-limit 403.
    pub fn rate_limit(&self, calls: u32) {
        self.shared().rate_limited = calls;
    }

    /// How many rate-limit answers were served.
    pub fn rate_limited_served(&self) -> u32 {
        self.shared().rate_limited_served
    }

    /// Webhooks sent so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.shared().deliveries.clone()
    }

    /// Sends delivery `id` again, same id and body; returns the forge's status.
    pub fn redeliver(&self, id: &str) -> u16 {
        self.redeliver_with_body(id).0
    }

    /// Sends delivery `id` again; returns the forge's status and answer.
    pub fn redeliver_with_body(&self, id: &str) -> (u16, String) {
        let delivery = self
            .deliveries()
            .into_iter()
            .find(|d| d.id == id)
            .expect("a delivery with this id");
        let signature = signature(delivery.body.as_bytes());
        self.post(
            &delivery.id,
            &delivery.event,
            &delivery.body,
            Some(&signature),
        )
    }

    /// Posts `body` as delivery `id` of `event`, signed with the webhook
    /// secret as GitHub would sign it: the status and the answer's body.
    pub fn post_signed(&self, id: &str, event: &str, body: &str) -> (u16, String) {
        self.post(id, event, body, Some(&signature(body.as_bytes())))
    }

    /// Posts an arbitrary webhook with the given signature header.
    pub fn post_webhook(&self, id: &str, event: &str, body: &str, signature: Option<&str>) -> u16 {
        self.post(id, event, body, signature).0
    }

    fn post(&self, id: &str, event: &str, body: &str, signature: Option<&str>) -> (u16, String) {
        let url = self.shared().webhook_url.clone().expect("a webhook URL");
        let (id, event, body, signature) = (
            id.to_owned(),
            event.to_owned(),
            body.to_owned(),
            signature.map(str::to_owned),
        );
        self.runtime.block_on(async move {
            let mut request = reqwest::Client::new()
                .post(url)
                .header("X-GitHub-Event", event)
                .header("X-GitHub-Delivery", id)
                .header("Content-Type", "application/json")
                .body(body);
            if let Some(signature) = signature {
                request = request.header("X-Hub-Signature-256", signature);
            }
            match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    (status, response.text().await.unwrap_or_default())
                }
                Err(_) => (0, String::new()),
            }
        })
    }

    /// Signs and sends a webhook the way GitHub does, recording it.
    pub fn send(&self, event: &str, payload: Value) -> String {
        let delivery = record_delivery(&mut self.shared(), event, &payload);
        if self.shared().paused {
            return delivery.id;
        }
        let signature = signature(delivery.body.as_bytes());
        let status = self.post_webhook(&delivery.id, event, &delivery.body, Some(&signature));
        assert!(
            (200..300).contains(&status),
            "the forge refused a {event} webhook: {status}"
        );
        delivery.id
    }
}

fn installation_of(shared: &Shared, full_name: &str) -> Option<u64> {
    shared
        .installations
        .iter()
        .find(|(_, (_, repos))| repos.iter().any(|r| r.eq_ignore_ascii_case(full_name)))
        .map(|(id, _)| *id)
}

fn pull_payload(action: &str, pull: &Pull, installation: u64) -> Value {
    json!({
        "action": action,
        "number": pull.number,
        "pull_request": {
            "number": pull.number,
            "state": if pull.open { "open" } else { "closed" },
            "head": { "ref": pull.head, "sha": pull.head_sha },
            "base": { "ref": pull.base },
        },
        "repository": { "full_name": pull.repo },
        "installation": { "id": installation },
    })
}

/// The `X-Hub-Signature-256` of `body` with [`WEBHOOK_SECRET`].
pub fn signature(body: &[u8]) -> String {
    sign(WEBHOOK_SECRET.as_bytes(), body)
}

fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn record_delivery(shared: &mut Shared, event: &str, payload: &Value) -> Delivery {
    shared.next_id += 1;
    let delivery = Delivery {
        id: format!("{}-{}", random_hex(8), shared.next_id),
        event: event.to_owned(),
        body: payload.to_string(),
    };
    shared.deliveries.push(delivery.clone());
    delivery
}

/// Sends a recorded delivery from inside the server (after a push).
async fn deliver(url: Option<String>, delivery: Delivery) {
    let Some(url) = url else { return };
    let signature = sign(WEBHOOK_SECRET.as_bytes(), delivery.body.as_bytes());
    let _ = reqwest::Client::new()
        .post(url)
        .header("X-GitHub-Event", &delivery.event)
        .header("X-GitHub-Delivery", &delivery.id)
        .header("X-Hub-Signature-256", signature)
        .header("Content-Type", "application/json")
        .body(delivery.body)
        .send()
        .await;
}

/// Verifies the app JWT of a request.
fn check_jwt(shared: &Shared, headers: &HeaderMap) -> Result<(), Response> {
    #[derive(serde::Deserialize)]
    struct Claims {
        iss: Value,
        iat: u64,
        exp: u64,
    }
    let jwt = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            error(
                StatusCode::UNAUTHORIZED,
                "A JSON web token could not be decoded",
            )
        })?;
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(&shared.public_key_pem)
        .map_err(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "bad key"))?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp"]);
    let claims = jsonwebtoken::decode::<Claims>(jwt, &key, &validation)
        .map_err(|e| {
            error(
                StatusCode::UNAUTHORIZED,
                &format!("'Expiration time' claim or signature is invalid: {e}"),
            )
        })?
        .claims;
    let iss_ok = claims.iss.as_u64() == Some(shared.app_id)
        || claims.iss.as_str() == Some(shared.app_id.to_string().as_str());
    if !iss_ok || claims.exp.saturating_sub(claims.iat) > 600 + 60 || claims.iat > now_secs() + 60 {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "The JWT's issuer or lifetime is wrong",
        ));
    }
    Ok(())
}

/// The installation a token belongs to, if it is valid.
fn check_token(shared: &mut Shared, headers: &HeaderMap) -> Result<u64, Response> {
    if shared.rate_limited > 0 {
        shared.rate_limited -= 1;
        shared.rate_limited_served += 1;
        let mut response = error(
            StatusCode::FORBIDDEN,
            "API rate limit exceeded for installation.",
        );
        let headers = response.headers_mut();
        headers.insert("x-ratelimit-remaining", "0".parse().expect("header"));
        headers.insert(
            "x-ratelimit-reset",
            (now_secs() + 1).to_string().parse().expect("header"),
        );
        headers.insert("retry-after", "1".parse().expect("header"));
        return Err(response);
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("token "))
        })
        .ok_or_else(|| error(StatusCode::UNAUTHORIZED, "Requires authentication"))?;
    token_installation(shared, token)
        .ok_or_else(|| error(StatusCode::UNAUTHORIZED, "Bad credentials"))
}

/// The installation of an unexpired token.
fn token_installation(shared: &Shared, token: &str) -> Option<u64> {
    shared
        .tokens
        .get(token)
        .filter(|t| t.expires_at > now_secs())
        .map(|t| t.installation)
}

/// A valid installation token whose installation holds `full_name`.
fn authorize_repo(
    shared: &mut Shared,
    headers: &HeaderMap,
    full_name: &str,
) -> Result<(), Response> {
    let installation = check_token(shared, headers)?;
    check_repo_access(shared, installation, full_name)
}

/// A request body that must be JSON, refused the way GitHub refuses it.
fn json_body(body: &[u8]) -> Result<Value, Response> {
    serde_json::from_slice(body)
        .map_err(|_| error(StatusCode::BAD_REQUEST, "Problems parsing JSON"))
}

fn check_repo_access(shared: &Shared, installation: u64, full_name: &str) -> Result<(), Response> {
    if installation_of(shared, full_name) == Some(installation) {
        Ok(())
    } else {
        Err(error(StatusCode::NOT_FOUND, "Not Found"))
    }
}

async fn access_token(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<u64>,
    headers: HeaderMap,
) -> Response {
    let mut shared = state.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(response) = check_jwt(&shared, &headers) {
        return response;
    }
    if !shared.installations.contains_key(&id) {
        return error(StatusCode::NOT_FOUND, "Not Found");
    }
    // Token lengths vary: nothing may assume a fixed length.
    let length = 36 + (shared.tokens_issued % 3) * 11;
    let token = format!("ghs_{}", random_hex(length));
    let expires_at = now_secs() + shared.token_ttl_secs;
    shared.tokens.insert(
        token.clone(),
        Token {
            installation: id,
            expires_at,
        },
    );
    shared.tokens_issued += 1;
    (
        StatusCode::CREATED,
        Json(json!({ "token": token, "expires_at": rfc3339(expires_at), "permissions": {} })),
    )
        .into_response()
}

async fn repo_installation(
    State(state): State<AppState>,
    UrlPath((owner, repo)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let shared = state.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(response) = check_jwt(&shared, &headers) {
        return response;
    }
    match installation_of(&shared, &format!("{owner}/{repo}")) {
        Some(id) => Json(json!({ "id": id, "app_id": shared.app_id })).into_response(),
        None => error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

async fn list_reviews(
    State(state): State<AppState>,
    UrlPath((owner, repo, number)): UrlPath<(String, String, u64)>,
    headers: HeaderMap,
) -> Response {
    let mut shared = state.lock().unwrap_or_else(|p| p.into_inner());
    let full_name = format!("{owner}/{repo}");
    if let Err(response) = authorize_repo(&mut shared, &headers, &full_name) {
        return response;
    }
    let reviews: Vec<Value> = shared
        .reviews
        .iter()
        .filter(|r| r["repo"] == full_name.as_str() && r["pull"] == number)
        .cloned()
        .collect();
    Json(reviews).into_response()
}

async fn create_review(
    State(state): State<AppState>,
    UrlPath((owner, repo, number)): UrlPath<(String, String, u64)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut shared = state.lock().unwrap_or_else(|p| p.into_inner());
    let full_name = format!("{owner}/{repo}");
    if let Err(response) = authorize_repo(&mut shared, &headers, &full_name) {
        return response;
    }
    let request = match json_body(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    let Some(pull) = shared
        .pulls
        .iter()
        .find(|p| p.repo == full_name && p.number == number)
        .cloned()
    else {
        return error(StatusCode::NOT_FOUND, "Not Found");
    };
    let event = request["event"].as_str().unwrap_or("");
    let text = request["body"].as_str().unwrap_or("");
    if !["APPROVE", "REQUEST_CHANGES", "COMMENT"].contains(&event) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Unprocessable Entity: event",
        );
    }
    if event != "APPROVE" && text.trim().is_empty() {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Unprocessable Entity: body is required for this event",
        );
    }
    let commit = request["commit_id"]
        .as_str()
        .unwrap_or(&pull.head_sha)
        .to_owned();
    let dir = shared.root.join(format!("{full_name}.git"));
    if git(&dir, &["cat-file", "-t", &commit]) != "commit" {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Unprocessable Entity: commit_id is not part of the pull request",
        );
    }
    let comments = request["comments"].as_array().cloned().unwrap_or_default();
    if !comments.is_empty() {
        let lines = diff_lines(&dir, &format!("refs/heads/{}", pull.base), &commit);
        for comment in &comments {
            let (path, line) = (
                comment["path"].as_str().unwrap_or(""),
                comment["line"].as_u64(),
            );
            let side = comment["side"].as_str().unwrap_or("RIGHT");
            let in_diff =
                line.is_some_and(|line| lines.get(path).is_some_and(|l| l.contains(&line)));
            if side != "RIGHT" || !in_diff || comment["body"].as_str().unwrap_or("").is_empty() {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Unprocessable Entity: pull_request_review_thread.line must be part of the diff",
                );
            }
        }
    }
    shared.next_id += 1;
    let review = json!({
        "comments": comments,
        "id": shared.next_id, "repo": full_name, "pull": number, "commit_id": commit,
        "state": match event { "APPROVE" => "APPROVED", "REQUEST_CHANGES" => "CHANGES_REQUESTED", _ => "COMMENTED" },
        "event": event, "body": text,
        "received_at": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default(),
    });
    shared.reviews.push(review.clone());
    (StatusCode::OK, Json(review)).into_response()
}

async fn create_check_run(
    State(state): State<AppState>,
    UrlPath((owner, repo)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut shared = state.lock().unwrap_or_else(|p| p.into_inner());
    let full_name = format!("{owner}/{repo}");
    if let Err(response) = authorize_repo(&mut shared, &headers, &full_name) {
        return response;
    }
    let request = match json_body(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    let (Some(name), Some(sha)) = (request["name"].as_str(), request["head_sha"].as_str()) else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "name and head_sha are required",
        );
    };
    shared.next_id += 1;
    let check = json!({
        "id": shared.next_id, "repo": full_name, "name": name, "head_sha": sha,
        "status": request["status"].as_str().unwrap_or("queued"), "conclusion": null,
    });
    shared.check_runs.push(check.clone());
    (StatusCode::CREATED, Json(check)).into_response()
}

async fn update_check_run(
    State(state): State<AppState>,
    UrlPath((owner, repo, id)): UrlPath<(String, String, u64)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut shared = state.lock().unwrap_or_else(|p| p.into_inner());
    let full_name = format!("{owner}/{repo}");
    if let Err(response) = authorize_repo(&mut shared, &headers, &full_name) {
        return response;
    }
    let request = match json_body(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    if request["status"] == "completed" && request["conclusion"].as_str().is_none() {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "conclusion is required when status is completed",
        );
    }
    let Some(check) = shared
        .check_runs
        .iter_mut()
        .find(|c| c["id"] == id && c["repo"] == full_name.as_str())
    else {
        return error(StatusCode::NOT_FOUND, "Not Found");
    };
    for field in ["status", "conclusion", "output"] {
        if !request[field].is_null() {
            check[field] = request[field].clone();
        }
    }
    Json(check.clone()).into_response()
}
