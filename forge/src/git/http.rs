//! Git smart HTTP: `GET info/refs?service=…`, `POST git-upload-pack`,
//! `POST git-receive-pack`, each streamed to a `git` subprocess running
//! with `--stateless-rpc` and a sanitised environment.
//!
//! Steps of a push:
//! 1. authenticate (`repo:write`), then read the request only as far as the
//!    end of its command section (old, new, ref per update), refusing
//!    malformed pkt-lines with `400` before git runs;
//! 2. judge the commands by the push rules ([`rules`]: a sandbox's token
//!    pushes only to its own branches, protected branches are neither
//!    deleted nor rewritten): a push that breaks one is refused as a whole
//!    before git runs, its body read and dropped, and answered with
//!    receive-pack's own report, `ng <ref> <reason>` for each ref, which
//!    `git push` prints (a `403` only for a client that asked for no
//!    report: git does not show the body of a failed POST);
//! 3. start `git receive-pack` (with the forge's `pre-receive` hook when a
//!    protected branch must be a fast-forward), hand it the bytes read so
//!    far and stream the rest (gzip decoded, counted against the body
//!    limit: past it, git's input is cut short, so it discards the partial
//!    pack, and the answer is `413`, sent once the rest of the body has been
//!    read and dropped so that the client sees it);
//! 4. wait for git, parse its report (`unpack ok`, `ok <ref>` / `ng <ref>`):
//!    a failed unpack is a `400` and nothing was written; otherwise the refs
//!    reported `ok` become events, committed in one transaction before the
//!    reply is sent, so a client that sees its push succeed can read its
//!    events at once.
//!
//! Steps 3–4 run as a task of their own: a client that disconnects
//! mid-push cannot interrupt git between writing objects and updating refs.
//! Concurrent pushes to one repository are safe by git's own ref locking:
//! each update is a compare-and-swap of the ref's old value, and the loser
//! is reported `ng` (and gets no event).

use std::io;
use std::pin::Pin;
use std::process::Stdio;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio_util::io::{ReaderStream, StreamReader};

use super::pktline::{self, Command, CommandReader, Progress, PushRequest, RefStatus};
use super::push::options::PushOptions;
use super::push::rules::{self, Accepted, Pusher, Refusal};
use super::{git_command, inspect, push};
use api_types::ErrorCode;

use crate::api::ApiError;
use crate::api::openapi::GitRepoPath;
use crate::auth::{Caller, Scope};
use crate::events::Event;
use crate::server::AppState;
use crate::store::RepoRow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    UploadPack,
    ReceivePack,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::UploadPack => "upload-pack",
            Service::ReceivePack => "receive-pack",
        }
    }

    fn scope(self) -> Scope {
        match self {
            Service::UploadPack => Scope::RepoRead,
            Service::ReceivePack => Scope::RepoWrite,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InfoRefsQuery {
    /// `git-upload-pack` or `git-receive-pack`.
    service: Option<String>,
}

/// The repository of a git URL path (`name` may carry `.git`).
async fn repository(
    state: &AppState,
    caller: &Caller,
    owner: &str,
    name: &str,
    service: Service,
) -> Result<RepoRow, ApiError> {
    let name = name.strip_suffix(".git").unwrap_or(name);
    crate::api::repos_authorize(state, caller, owner, name, service.scope()).await
}

/// The validated `Git-Protocol` header (e.g. `version=2`), if sent.
fn git_protocol(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("git-protocol") else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .ok()
        .filter(|v| {
            v.len() <= 256
                && v.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'=' | b':' | b'.' | b'_' | b'-')
                })
        })
        .ok_or_else(|| ApiError::bad_request("the Git-Protocol header is malformed"))?;
    Ok(Some(value.to_owned()))
}

fn service_command(
    state: &AppState,
    repo: &RepoRow,
    service: Service,
    protocol: Option<&str>,
) -> tokio::process::Command {
    let mut command = git_command(&state.repos.path(&repo.id));
    if service == Service::ReceivePack {
        command.args(ADVERTISE_PUSH_OPTIONS);
    }
    command.arg(service.name()).arg("--stateless-rpc");
    if let Some(protocol) = protocol {
        command.env("GIT_PROTOCOL", protocol);
    }
    command
}

/// Git's setting that makes receive-pack announce, and accept, `git push
/// -o` options (`push::options`).
const ADVERTISE_PUSH_OPTIONS: [&str; 2] = ["-c", "receive.advertisePushOptions=true"];

fn no_cache(response: &mut Response, content_type: &str) {
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

/// Git's smart HTTP protocol: the refs a fetch (`service=git-upload-pack`)
/// or push (`service=git-receive-pack`) starts from. Credentials go as HTTP
/// Basic auth with the token as password.
#[utoipa::path(
    get,
    path = "/{owner}/{name}/info/refs",
    tag = "git",
    operation_id = "gitInfoRefs",
    params(GitRepoPath, InfoRefsQuery),
    responses((status = 200, description = "The refs advertisement", content_type = "application/x-git-upload-pack-advertisement")),
)]
pub async fn info_refs(
    State(state): State<AppState>,
    caller: Caller,
    Path((owner, name)): Path<(String, String)>,
    Query(query): Query<InfoRefsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let service = match query.service.as_deref() {
        Some("git-upload-pack") => Service::UploadPack,
        Some("git-receive-pack") => Service::ReceivePack,
        _ => {
            return Err(ApiError::bad_request(
                "only the smart HTTP protocol is served: ?service=git-upload-pack or git-receive-pack",
            ));
        }
    };
    let repo = repository(&state, &caller, &owner, &name, service).await?;
    let protocol = git_protocol(&headers)?;
    let output = service_command(&state, &repo, service, protocol.as_deref())
        .arg("--advertise-refs")
        .arg(".")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(ApiError::internal)?;
    if !output.status.success() {
        return Err(ApiError::internal(anyhow::anyhow!(
            "git {} --advertise-refs failed: {}",
            service.name(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    // Protocol v2 (fetch only) starts with the capability advertisement;
    // v0/v1 start with the service announcement.
    let v2 = matches!(service, Service::UploadPack)
        && protocol
            .as_deref()
            .is_some_and(|p| p.split(':').any(|item| item == "version=2"));
    let mut body = Vec::with_capacity(output.stdout.len() + 64);
    if !v2 {
        body.extend_from_slice(
            pktline::pkt_line(&format!("# service=git-{}\n", service.name())).as_bytes(),
        );
        body.extend_from_slice(b"0000");
    }
    body.extend_from_slice(&output.stdout);
    let mut response = body.into_response();
    no_cache(
        &mut response,
        &format!("application/x-git-{}-advertisement", service.name()),
    );
    Ok(response)
}

type BodyReader = Pin<Box<dyn AsyncRead + Send>>;

/// The request body as a byte reader, gzip decoded when so encoded.
fn body_reader(
    headers: &HeaderMap,
    body: Body,
    service: Service,
    limit: u64,
) -> Result<BodyReader, ApiError> {
    let expected = format!("application/x-git-{}-request", service.name());
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if content_type != Some(expected.as_str()) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            format!("the request's Content-Type must be {expected}"),
        ));
    }
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if length.is_some_and(|length| length > limit) {
        return Err(ApiError::too_large(limit));
    }
    let stream = body
        .into_data_stream()
        .map(|chunk| chunk.map_err(io::Error::other));
    let reader = StreamReader::new(stream);
    match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?"))
    {
        None | Some("identity") => Ok(Box::pin(reader)),
        Some("gzip" | "x-gzip") => Ok(Box::pin(
            async_compression::tokio::bufread::GzipDecoder::new(BufReader::new(reader)),
        )),
        Some(other) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            format!("Content-Encoding {other:?} is not supported; use gzip or none"),
        )),
    }
}

/// How feeding a request body to git ended.
#[derive(Debug)]
enum Fed {
    All,
    /// The decoded body passed the limit.
    TooLarge,
    /// The client's body could not be read (disconnect, bad gzip).
    Unreadable(io::Error),
    /// Git stopped reading; its exit status and report say why.
    GitStopped,
}

/// How long, and how many more bytes, a body past the limit is read and
/// thrown away so that a client still sending it receives the `413` instead
/// of a reset connection (git reports a reset as "broken pipe" and never
/// shows the answer). Past either bound the connection is simply closed.
const DISCARD_TIME: std::time::Duration = std::time::Duration::from_secs(10);
const DISCARD_BYTES: u64 = 256 << 20;

/// Reads and drops what is left of a refused body, within the bounds above.
async fn discard(reader: &mut BodyReader) {
    let mut buffer = vec![0u8; 64 << 10];
    let mut left = DISCARD_BYTES;
    let _ = tokio::time::timeout(DISCARD_TIME, async {
        while left > 0 {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => left = left.saturating_sub(read as u64),
            }
        }
    })
    .await;
}

/// Writes `prefix`, then the rest of `reader`, to git's stdin, counting
/// against `limit`. Dropping stdin on return tells git the input ended;
/// past the limit it is dropped at once and the rest of the body discarded.
async fn feed(mut reader: BodyReader, prefix: Vec<u8>, stdin: ChildStdin, limit: u64) -> Fed {
    let fed = feed_within(&mut reader, prefix, stdin, limit).await;
    if matches!(fed, Fed::TooLarge) {
        discard(&mut reader).await;
    }
    fed
}

async fn feed_within(
    reader: &mut BodyReader,
    prefix: Vec<u8>,
    mut stdin: ChildStdin,
    limit: u64,
) -> Fed {
    let mut total = prefix.len() as u64;
    if total > limit {
        return Fed::TooLarge;
    }
    if stdin.write_all(&prefix).await.is_err() {
        return Fed::GitStopped;
    }
    let mut buffer = vec![0u8; 256 << 10];
    loop {
        let read = match reader.read(&mut buffer).await {
            Ok(0) => return Fed::All,
            Ok(read) => read,
            Err(error) => return Fed::Unreadable(error),
        };
        total += read as u64;
        if total > limit {
            return Fed::TooLarge;
        }
        if stdin.write_all(&buffer[..read]).await.is_err() {
            return Fed::GitStopped;
        }
    }
}

/// Reads a child's pipe to the end, keeping at most `cap` bytes.
async fn drain(pipe: Option<impl AsyncRead + Unpin>, cap: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut pipe) = pipe else { return kept };
    let mut buffer = [0u8; 16 << 10];
    while let Ok(read) = pipe.read(&mut buffer).await {
        if read == 0 {
            break;
        }
        let room = cap.saturating_sub(kept.len()).min(read);
        kept.extend_from_slice(&buffer[..room]);
    }
    kept
}

fn first_lines(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    text.lines().take(5).collect::<Vec<_>>().join("; ")
}

/// Git's smart HTTP protocol: a fetch or clone. Needs `repo:read`.
#[utoipa::path(
    post,
    path = "/{owner}/{name}/git-upload-pack",
    tag = "git",
    operation_id = "gitUploadPack",
    params(GitRepoPath),
    request_body(content = Vec<u8>, content_type = "application/x-git-upload-pack-request"),
    responses((status = 200, description = "The pack", content_type = "application/x-git-upload-pack-result")),
)]
pub async fn upload_pack(
    State(state): State<AppState>,
    caller: Caller,
    Path((owner, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let repo = repository(&state, &caller, &owner, &name, Service::UploadPack).await?;
    let protocol = git_protocol(&headers)?;
    let limit = state.config.max_body_bytes;
    let reader = body_reader(&headers, body, Service::UploadPack, limit)?;
    let mut child = spawn(service_command(
        &state,
        &repo,
        Service::UploadPack,
        protocol.as_deref(),
    ))?;
    let stdin = child.stdin.take().expect("stdin is piped");
    let feeding = tokio::spawn(feed(reader, Vec::new(), stdin, limit));
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let stderr = tokio::spawn(drain(child.stderr.take(), 64 << 10));
    // The first bytes decide between a streamed answer and a clear error.
    let mut first = vec![0u8; 64 << 10];
    let read = stdout.read(&mut first).await.map_err(ApiError::internal)?;
    if read == 0 {
        let fed = feeding.await.map_err(ApiError::internal)?;
        let status = child.wait().await.map_err(ApiError::internal)?;
        let stderr = stderr.await.unwrap_or_default();
        return Err(match fed {
            Fed::TooLarge => ApiError::too_large(limit),
            Fed::Unreadable(error) => {
                ApiError::bad_request(format!("the request body could not be read: {error}"))
            }
            _ if !status.success() => ApiError::bad_request(format!(
                "git upload-pack refused the request: {}",
                first_lines(&stderr)
            )),
            _ => ApiError::bad_request("git upload-pack had nothing to say to this request"),
        });
    }
    first.truncate(read);
    let rest = ReaderStream::new(stdout);
    let stream = futures_util::stream::once(async move { Ok::<_, io::Error>(Bytes::from(first)) })
        .chain(rest);
    // Reap git once its output is consumed (or the client went away).
    tokio::spawn(async move {
        let _ = feeding.await;
        let _ = child.wait().await;
    });
    let mut response = Body::from_stream(stream).into_response();
    no_cache(&mut response, "application/x-git-upload-pack-result");
    Ok(response)
}

fn spawn(mut command: tokio::process::Command) -> Result<Child, ApiError> {
    command
        .arg(".")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(ApiError::internal)
}

/// Git's smart HTTP protocol: a push. Needs `repo:write`; a push then runs
/// the branch's pipeline, fires webhooks and syncs GitHub.
#[utoipa::path(
    post,
    path = "/{owner}/{name}/git-receive-pack",
    tag = "git",
    operation_id = "gitReceivePack",
    params(GitRepoPath),
    request_body(content = Vec<u8>, content_type = "application/x-git-receive-pack-request"),
    responses((status = 200, description = "Git's report of each ref", content_type = "application/x-git-receive-pack-result")),
)]
pub async fn receive_pack(
    State(state): State<AppState>,
    caller: Caller,
    Path((owner, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let repo = repository(&state, &caller, &owner, &name, Service::ReceivePack).await?;
    let limit = state.config.max_body_bytes;
    let mut reader = body_reader(&headers, body, Service::ReceivePack, limit)?;
    let mut commands = CommandReader::default();
    let mut consumed = Vec::new();
    let mut buffer = vec![0u8; 64 << 10];
    let request = loop {
        let read = reader.read(&mut buffer).await.map_err(|e| {
            ApiError::bad_request(format!("the request body could not be read: {e}"))
        })?;
        if read == 0 {
            return Err(ApiError::bad_request(
                "the push request ended before its command list was complete",
            ));
        }
        consumed.extend_from_slice(&buffer[..read]);
        match commands.feed(&buffer[..read]) {
            Ok(Progress::NeedMore) => continue,
            Ok(Progress::Done(request, _)) => break request,
            Err(error) => {
                return Err(ApiError::bad_request(format!(
                    "malformed push request: {error}"
                )));
            }
        }
    };
    if request.commands.is_empty() {
        // git's probe (a lone flush): receive-pack would answer nothing.
        let mut response = Vec::<u8>::new().into_response();
        no_cache(&mut response, "application/x-git-receive-pack-result");
        return Ok(response);
    }
    let options = match PushOptions::parse(&request.options) {
        Ok(options) => options,
        Err(reason) => {
            let refusal = Refusal {
                refused: request
                    .commands
                    .iter()
                    .map(|command| (command.refname.clone(), reason.clone()))
                    .collect(),
            };
            return refuse(&repo, &caller, &request, &refusal, reader).await;
        }
    };
    let accepted = match judge(&state, &repo, &caller, &request).await? {
        Ok(accepted) => accepted,
        Err(refusal) => return refuse(&repo, &caller, &request, &refusal, reader).await,
    };
    // Its own task: a client disconnect must not cut git off mid-update.
    let task = state.tasks.spawn(run_receive_pack(
        state.clone(),
        repo,
        caller,
        Push {
            request,
            options,
            accepted,
        },
        consumed,
        reader,
    ));
    task.await.map_err(ApiError::internal)?
}

/// The push rules' verdict on `request` by `caller`. A sandbox's token is
/// judged by the branch its VM serves now.
async fn judge(
    state: &AppState,
    repo: &RepoRow,
    caller: &Caller,
    request: &PushRequest,
) -> Result<Result<Accepted, Refusal>, ApiError> {
    let rules = &state.config.push_rules;
    let Some(vm) = caller.sandbox_vm() else {
        return Ok(rules.check(&repo.default_branch, Pusher::Writer, &request.commands));
    };
    let branch = state.store.vm_branch(vm, &repo.id).await?;
    let pusher = Pusher::Sandbox {
        vm,
        branch: branch.as_deref(),
    };
    Ok(rules.check(&repo.default_branch, pusher, &request.commands))
}

/// Answers a refused push without running git: every ref `ng` with its
/// reason in receive-pack's report, once the rest of the body is read (so
/// that the client, still sending its pack, reads the answer).
async fn refuse(
    repo: &RepoRow,
    caller: &Caller,
    request: &PushRequest,
    refusal: &Refusal,
    mut reader: BodyReader,
) -> Result<Response, ApiError> {
    tracing::warn!(
        repo = %repo.full_name(),
        token = %caller.token_id,
        sandbox = caller.sandbox_vm(),
        refused = ?refusal.refused,
        "push refused by the push rules"
    );
    discard(&mut reader).await;
    if !request.wants_report() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::PushRefused,
            refusal.message(),
        ));
    }
    let report = refusal.report(&request.commands);
    let mut response = pktline::encode_report(&report, request.side_band()).into_response();
    no_cache(&mut response, "application/x-git-receive-pack-result");
    Ok(response)
}

/// `git receive-pack`, with the forge's `pre-receive` hook checking that
/// each ref of `fast_forward_only` is fast-forwarded.
fn receive_pack_command(
    state: &AppState,
    repo: &RepoRow,
    fast_forward_only: &[String],
) -> Result<tokio::process::Command, ApiError> {
    if fast_forward_only.is_empty() {
        return Ok(service_command(state, repo, Service::ReceivePack, None));
    }
    // Git runs no hook it cannot find: without it, refuse rather than let a
    // rewrite of a protected branch through.
    let hook = rules::pre_receive_hook(&state.config.git_hooks);
    let runnable = std::fs::metadata(&hook).is_ok_and(|meta| {
        use std::os::unix::fs::PermissionsExt;
        meta.is_file() && meta.permissions().mode() & 0o100 != 0
    });
    if !runnable {
        return Err(ApiError::internal(anyhow::anyhow!(
            "the git hook {} is missing: protected branches cannot be checked",
            hook.display()
        )));
    }
    let mut hooks_path = std::ffi::OsString::from("core.hooksPath=");
    hooks_path.push(&state.config.git_hooks);
    let mut command = git_command(&state.repos.path(&repo.id));
    command
        .args(ADVERTISE_PUSH_OPTIONS)
        .arg("-c")
        .arg(hooks_path)
        .arg(Service::ReceivePack.name())
        .arg("--stateless-rpc")
        .env(rules::FAST_FORWARD_ONLY_ENV, fast_forward_only.join(" "));
    Ok(command)
}

/// A push judged acceptable: its request, options and the push rules'
/// verdict.
struct Push {
    request: PushRequest,
    options: PushOptions,
    accepted: Accepted,
}

async fn run_receive_pack(
    state: AppState,
    repo: RepoRow,
    caller: Caller,
    push: Push,
    consumed: Vec<u8>,
    reader: BodyReader,
) -> Result<Response, ApiError> {
    let Push {
        request,
        options,
        accepted,
    } = push;
    let limit = state.config.max_body_bytes;
    let mut command = receive_pack_command(&state, &repo, &accepted.fast_forward_only)?;
    command.kill_on_drop(false);
    let mut child = spawn(command)?;
    let stdin = child.stdin.take().expect("stdin is piped");
    let (fed, reply, stderr) = tokio::join!(
        feed(reader, consumed, stdin, limit),
        drain(child.stdout.take(), 64 << 20),
        drain(child.stderr.take(), 64 << 10),
    );
    let status = child.wait().await.map_err(ApiError::internal)?;
    match fed {
        Fed::TooLarge => return Err(ApiError::too_large(limit)),
        Fed::Unreadable(error) => {
            return Err(ApiError::bad_request(format!(
                "the request body could not be read: {error}"
            )));
        }
        Fed::All | Fed::GitStopped => {}
    }
    let report = pktline::parse_report(&reply, request.side_band().is_some());
    if let Some(reason) = report.as_ref().and_then(|r| r.unpack_error.as_ref()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadPack,
            format!("git could not unpack the pushed objects ({reason}); nothing was written"),
        ));
    }
    if report.is_none() && !status.success() {
        return Err(ApiError::bad_request(format!(
            "git receive-pack refused the push: {}",
            first_lines(&stderr)
        )));
    }
    let applied = applied_commands(&state, &repo, &request, report.as_ref()).await?;
    let mut reply = reply;
    if !applied.is_empty() {
        crate::metrics::metrics().push();
        let pushes = record_events(&state, &repo, &caller, &applied, &options).await;
        if let Some(side_band) = request.side_band() {
            let lines = if options.ci_skip {
                vec![
                    String::new(),
                    "No pipeline runs for this push (-o ci.skip)".to_owned(),
                ]
            } else {
                run_lines(&state, &pushes).await
            };
            reply = pktline::with_progress(reply, &lines, side_band);
        }
    }
    let mut response = reply.into_response();
    no_cache(&mut response, "application/x-git-receive-pack-result");
    Ok(response)
}

/// The commands git applied: those its report says `ok`, or, when the
/// client asked for no report, those whose ref now holds the new value.
async fn applied_commands(
    state: &AppState,
    repo: &RepoRow,
    request: &PushRequest,
    report: Option<&pktline::Report>,
) -> Result<Vec<Command>, ApiError> {
    if let Some(report) = report {
        return Ok(request
            .commands
            .iter()
            .filter(|command| {
                report.refs.iter().any(|(refname, status)| {
                    *refname == command.refname && *status == RefStatus::Ok
                })
            })
            .cloned()
            .collect());
    }
    let dir = state.repos.path(&repo.id);
    let commands = request.commands.clone();
    tokio::task::spawn_blocking(move || -> Result<Vec<Command>, inspect::InspectError> {
        let mut applied = Vec::new();
        for command in commands {
            let now = inspect::resolve(&dir, &command.refname)?;
            let done = match &now {
                None => command.is_delete(),
                Some(value) => *value == command.new,
            };
            if done {
                applied.push(command);
            }
        }
        Ok(applied)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)
}

/// How long a push waits for the pipelines to queue its runs, to print
/// their addresses.
const RUN_LINK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Most runs a push names; the rest are counted.
const RUN_LINKS: usize = 10;

/// What `git push` prints (as `remote:` lines) about the runs of a push's
/// branch updates (`(event id, branch)`): each run's page, once the
/// pipelines queued it. Nothing when pipelines are off.
async fn run_lines(state: &AppState, pushes: &[(i64, String)]) -> Vec<String> {
    if pushes.is_empty() || state.sandboxes.describe().0.is_none() {
        return Vec::new();
    }
    let deadline = tokio::time::Instant::now() + RUN_LINK_WAIT;
    let mut lines = vec![String::new()];
    for (event_id, branch) in pushes.iter().take(RUN_LINKS) {
        let within = deadline.saturating_duration_since(tokio::time::Instant::now());
        lines.push(
            match state.pipelines.run_for_event(*event_id, within).await {
                Some(run) => format!(
                    "Run #{} of {branch}: {}",
                    run.id,
                    state.pipelines.page_url(run.id)
                ),
                None => format!(
                    "A run of {branch} is queued; its page will be listed on the repository's page"
                ),
            },
        );
    }
    if pushes.len() > RUN_LINKS {
        lines.push(format!("... and {} more runs", pushes.len() - RUN_LINKS));
    }
    lines.push(String::new());
    lines
}

/// Writes the push's events and announces them; returns the pushes that
/// ask for a pipeline run, as `(event id, branch)`. The refs are already
/// updated, so a failure here cannot undo the push: it is logged loudly.
async fn record_events(
    state: &AppState,
    repo: &RepoRow,
    caller: &Caller,
    applied: &[Command],
    options: &PushOptions,
) -> Vec<(i64, String)> {
    let dir = state.repos.path(&repo.id);
    let (repo_row, who, url, commands, options) = (
        repo.clone(),
        caller.clone(),
        state.config.public_url.clone(),
        applied.to_vec(),
        options.clone(),
    );
    let built = tokio::task::spawn_blocking(move || {
        push::events_for(&dir, &repo_row, &who, &url, &commands, &options)
    })
    .await;
    let events = match built {
        Ok(Ok(events)) => events,
        Ok(Err(error)) => {
            tracing::error!(repo = %repo.full_name(), error = %error, "describing a push failed; its events are lost");
            return Vec::new();
        }
        Err(error) => {
            tracing::error!(repo = %repo.full_name(), error = %error, "describing a push panicked; its events are lost");
            return Vec::new();
        }
    };
    match state
        .store
        .insert_events(&repo.id, &repo.full_name(), Some(&caller.token_id), &events)
        .await
    {
        Ok(rows) => {
            tracing::info!(
                repo = %repo.full_name(),
                refs = applied.len(),
                events = rows.len(),
                token = %caller.token_id,
                "push applied"
            );
            let runs = rows.iter().filter_map(run_request).collect();
            state.events.publish(rows.into_iter().map(Event::from));
            runs
        }
        Err(error) => {
            tracing::error!(repo = %repo.full_name(), error = %format!("{error:#}"), "recording a push's events failed");
            Vec::new()
        }
    }
}

/// The event id and branch of an event that asks for a run.
fn run_request(event: &crate::store::EventRow) -> Option<(i64, String)> {
    crate::pipelines::requested_run(event).map(|run| (event.id, run.branch))
}
