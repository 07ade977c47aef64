//! `/v1/vms`: the sandbox API (create, list, show, delete, exec, fork,
//! pause, resume, files) and `/v1/system`.
//!
//! Who may do what: creating a VM needs `repo:write`; a VM is visible to
//! the token that created it (and its forks to the token that forked them)
//! and to admins.

use std::convert::Infallible;
use std::time::Duration;

use api_types::VmState;
use api_types::vms::{
    CarriedVm, CreateVm, EgressUsage, ExecExit, ExecFailure, ExecOutput, ExecRequest, ExecText,
    FileEntry, FileKind, ForkRequest, Forks, Kept, MoveRequest, MovedVm, PauseRequest, Persistence,
    PersistenceKind, SandboxLimits, SandboxQueue, SandboxSystem, System, TemplatePoolStatus,
    TimeoutRequest, VmDetail, VmStats, VmView, WarmPoolStatus,
};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};

use super::openapi::{FilePath, VmPath};
use super::{ApiError, Body, created, event_data};
use crate::auth::{Caller, Scope};
use crate::server::AppState;
use crate::store::{Visibility, VmFilter, VmRow};
use crate::vms::{ForkOptions, NewVm};

/// Where the VM's dev server is seen: `http://{id}-{port}.<preview
/// domain>/` where the forge has one, else the path form.
pub(super) fn preview_url(state: &AppState, id: &str, port: u16) -> String {
    let public = &state.config.public_url;
    match &state.config.preview_domain {
        Some(domain) => {
            let scheme = public.split_once("://").map_or("http", |(s, _)| s);
            let port_suffix = public
                .rsplit_once(':')
                .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
                .map(|(_, p)| format!(":{p}"))
                .unwrap_or_default();
            format!("{scheme}://{id}-{port}.{domain}{port_suffix}/")
        }
        None => format!("{public}/v1/vms/{id}/ports/{port}/"),
    }
}

async fn view(state: &AppState, row: VmRow) -> Result<VmView, ApiError> {
    let repo = match &row.repo_id {
        Some(id) => state.store.repo_by_id(id).await?.map(|r| r.full_name()),
        None => None,
    };
    let dev_server = state.sandboxes.dev_servers().status(&row.id);
    let preview_url = dev_server
        .as_ref()
        .map(|d| preview_url(state, &row.id, d.port));
    let stored_bytes = match row.state {
        VmState::PausedToDisk => state
            .store
            .stored_snapshot(&row.id)
            .await?
            .map(|stored| stored.bytes),
        _ => None,
    };
    Ok(VmView {
        stored_bytes,
        dev_server,
        preview_url,
        template: row.template.clone(),
        snapshot: row.snapshot_id.clone(),
        labels: row.labels(),
        expires_at: row.expires_at(),
        id: row.id,
        state: row.state,
        backend: row.backend,
        repo,
        branch: row.branch,
        parent: row.parent_id,
        vcpus: row.vcpus,
        mem_mib: row.mem_mib,
        persistence: Persistence::of(row.persistent),
        idle_timeout_secs: row.idle_timeout_secs,
        created_at: row.created_at,
    })
}

/// A VM's view plus what a fork or resume carried over (`kept`, `note`).
fn with_carried(vm: VmView, carried: &::sandbox::Carried) -> CarriedVm {
    let kept = carried
        .kept
        .iter()
        .map(|kept| match kept {
            ::sandbox::Kept::Disk => Kept::Disk,
            ::sandbox::Kept::Memory => Kept::Memory,
            ::sandbox::Kept::Processes => Kept::Processes,
        })
        .collect();
    CarriedVm {
        vm,
        kept,
        note: carried.note.clone(),
    }
}

/// The VM `id`, if the caller may use it (others' VMs are "not found").
pub(super) async fn owned(state: &AppState, caller: &Caller, id: &str) -> Result<VmRow, ApiError> {
    let row = state.sandboxes.recorded(id).await?;
    if caller.may_use_vm(row.repo_id.as_deref(), row.created_by.as_deref()) {
        Ok(row)
    } else {
        Err(ApiError::not_found(format!("VM {id} does not exist")))
    }
}

/// A VM's disk unless the request names one.
const DEFAULT_DISK_MIB: u64 = 2048;

/// The server's version and its sandbox backend: which one runs and why,
/// its limits and how many creates wait for room.
#[utoipa::path(
    get,
    path = "/v1/system",
    tag = "system",
    operation_id = "getSystem",
    responses((status = 200, description = "The server's version, sandbox backend, limits and queue", body = System)),
)]
pub async fn system(State(state): State<AppState>, _caller: Caller) -> Json<System> {
    let (backend, reason, image) = state.sandboxes.describe();
    let limits = state.sandboxes.limits();
    Json(System {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        sandboxes: SandboxSystem {
            backend: backend.map(|b| b.to_string()),
            reason,
            image: image.map(|path| path.display().to_string()),
            limits: SandboxLimits {
                max_live: limits.max_live,
                max_vcpus: limits.max_vcpus,
                max_mem_mib: limits.max_mem_mib,
                max_disk_mib: limits.max_disk_mib,
                max_fork_count: limits.max_fork_count,
                max_live_per_token: limits.max_live_per_token,
                max_live_mem_mib: Some(limits.max_live_mem_mib).filter(|mib| *mib != u64::MAX),
                max_file_bytes: limits.max_file_bytes,
            },
            queue: SandboxQueue {
                waiting: state.sandboxes.queued(),
                max_wait_secs: limits.queue_wait.as_secs(),
            },
            warm_pool: {
                let (ready, target) = state.sandboxes.warm_pool();
                let templates = state
                    .sandboxes
                    .warm_pools()
                    .into_iter()
                    .filter(|(name, _, _)| name != crate::vms::pool::DEFAULT_POOL)
                    .map(|(template, target, ready)| TemplatePoolStatus {
                        template,
                        target,
                        ready,
                    })
                    .collect();
                WarmPoolStatus {
                    target,
                    ready,
                    templates,
                }
            },
        },
    })
}

/// Creates a VM, with a checkout of `repo` in `/workspace` when named.
/// Needs `repo:write`. When the forge is full the request waits for room
/// up to the queue's limit, then answers `429` (`capacity`).
#[utoipa::path(
    post,
    path = "/v1/vms",
    tag = "vms",
    operation_id = "createVm",
    request_body = CreateVm,
    responses((status = 201, description = "The VM, running", body = VmView)),
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Body(request): Body<CreateVm>,
) -> Result<(StatusCode, Json<VmView>), ApiError> {
    caller.check(Scope::RepoWrite)?;
    let repo = match &request.repo {
        Some(full) => {
            let name = crate::git::RepoName::parse(full)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            Some(
                super::repos_authorize(&state, &caller, &name.owner, &name.name, Scope::RepoWrite)
                    .await?,
            )
        }
        None => None,
    };
    if request.branch.is_some() && repo.is_none() {
        return Err(ApiError::bad_request("branch needs repo"));
    }
    // The commit to check out: the branch's head (default branch unless named).
    let checkout = match &repo {
        Some(repo) => {
            let branch = request
                .branch
                .clone()
                .unwrap_or_else(|| repo.default_branch.clone());
            let dir = state.repos.path(&repo.id);
            let refname = format!("refs/heads/{branch}");
            let head =
                tokio::task::spawn_blocking(move || crate::git::inspect::resolve(&dir, &refname))
                    .await
                    .map_err(ApiError::internal)?
                    .map_err(ApiError::internal)?;
            if head.is_none() && request.branch.is_some() {
                return Err(ApiError::not_found(format!(
                    "branch {branch} does not exist in {}",
                    repo.full_name()
                )));
            }
            Some((branch, head))
        }
        None => None,
    };
    if !caller.is_admin() {
        state.sandboxes.check_quota(&caller.token_id, 1).await?;
    }
    crate::vms::check_labels(&request.node_labels)
        .map_err(|e| ApiError::bad_request(format!("node_labels: {e}")))?;
    let origin = super::snapshots::origin_of(&state, &caller, &request).await?;
    if origin.is_some() && !request.node_labels.is_empty() {
        return Err(ApiError::bad_request(
            "node_labels: a VM from a snapshot or template runs on its snapshot's node; leave them out",
        ));
    }
    if let Some(origin) = &origin {
        let snapshot = &origin.origin.snapshot;
        let differs = request
            .vcpus
            .is_some_and(|v| i64::from(v) != snapshot.vcpus)
            || request
                .mem_mib
                .is_some_and(|m| m as i64 != snapshot.mem_mib)
            || request.disk_mib.is_some();
        if differs {
            return Err(ApiError::bad_request(format!(
                "a VM from a snapshot or template has its sizes ({} vCPU, {} MiB of memory, its disk): leave vcpus, mem_mib and disk_mib out",
                snapshot.vcpus, snapshot.mem_mib
            )));
        }
    }
    let dev_server = match (&request.dev_server, &origin) {
        (Some(server), _) => Some(server.clone()),
        (None, Some(origin)) => origin.start.clone(),
        (None, None) => None,
    };
    let persistent = request.persistence.map(|p| p.kind) != Some(PersistenceKind::Ephemeral);
    let row = state
        .sandboxes
        .create(NewVm {
            vcpus: request.vcpus.unwrap_or(1),
            mem_mib: request.mem_mib.unwrap_or(512),
            disk_mib: request.disk_mib.unwrap_or(DEFAULT_DISK_MIB),
            persistent,
            idle_timeout_secs: request.idle_timeout_secs,
            env: request.env.into_iter().collect(),
            repo_id: repo.as_ref().map(|r| r.id.clone()),
            branch: checkout.as_ref().map(|(branch, _)| branch.clone()),
            created_by: caller.token_id.clone(),
            dev_server,
            labels: request.labels.clone(),
            node_labels: request.node_labels.clone(),
            ttl_secs: request.ttl_secs,
            origin: origin.map(|origin| origin.origin),
        })
        .await?;
    if let (Some(repo), Some((branch, Some(commit)))) = (&repo, &checkout) {
        let target = crate::vms::checkout::Target {
            vm: &row.id,
            repo_id: &repo.id,
            clone_url: &format!("{}/{}.git", state.config.public_url, repo.full_name()),
            branch,
            commit,
            have: None,
        };
        if let Err(error) =
            crate::vms::checkout::checkout(&state.sandboxes, &state.repos, &target).await
        {
            let _ = state.sandboxes.destroy(&row.id).await;
            return Err(ApiError::internal(
                error.context("checking the branch out in the new VM failed"),
            ));
        }
    }
    Ok(created(view(&state, row).await?))
}

/// The query of `GET /v1/vms`. `label` may repeat, which a derived query
/// extractor refuses: [`ListQuery::parse`] reads the pairs in order.
#[derive(Debug, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `key:value` (or `key` for any value); repeat it to require several.
    label: Vec<String>,
    /// Only VMs in this state.
    #[param(value_type = Option<String>)]
    state: Option<VmState>,
    /// Only VMs of this repository, `owner/name`.
    repo: Option<String>,
    /// At most this many VMs, 1 to 1000 (the default).
    limit: Option<i64>,
    /// The `x-next-cursor` header of the previous page.
    cursor: Option<String>,
}

impl ListQuery {
    fn parse(raw: Option<&str>) -> Result<ListQuery, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or_default())
            .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
        let mut query = ListQuery::default();
        for (key, value) in pairs {
            match key.as_str() {
                "label" => query.label.push(value),
                "state" => {
                    query.state = Some(value.parse().map_err(|_| {
                        ApiError::bad_request(format!(
                            "state {value:?}: one of running, paused, paused_to_disk, crashed"
                        ))
                    })?);
                }
                "repo" => query.repo = Some(value),
                "limit" => {
                    query.limit = Some(value.parse().map_err(|_| {
                        ApiError::bad_request(format!("limit {value:?} is not a number"))
                    })?);
                }
                "cursor" => query.cursor = Some(value),
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown query parameter {other:?}: label, state, repo, limit or cursor"
                    )));
                }
            }
        }
        Ok(query)
    }
}

const MAX_LIST_LIMIT: i64 = 1000;
const DEFAULT_LIST_LIMIT: i64 = 1000;

/// A page cursor: the last VM's creation time and id, hex-encoded.
fn cursor_of(row: &VmRow) -> String {
    hex::encode(format!("{}\n{}", row.created_at, row.id))
}

fn parse_cursor(text: &str) -> Result<(String, String), ApiError> {
    let invalid = || ApiError::bad_request(format!("cursor {text:?} is not one this API gave"));
    let bytes = hex::decode(text).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (created_at, id) = text.split_once('\n').ok_or_else(invalid)?;
    Ok((created_at.to_owned(), id.to_owned()))
}

/// The VMs the caller may use (those its token created or forked, those
/// of a repository it administers, every VM for an admin), in creation
/// order, filtered by labels, state and repository. A full page carries
/// the next page's cursor in the `x-next-cursor` header.
#[utoipa::path(
    get,
    path = "/v1/vms",
    tag = "vms",
    operation_id = "listVms",
    params(ListQuery),
    responses((status = 200, description = "The VMs the caller may use", body = Vec<VmView>,
        headers(("x-next-cursor" = String, description = "Pass as `cursor` for the next page; absent on the last")))),
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Result<(HeaderMap, Json<Vec<VmView>>), ApiError> {
    let query = ListQuery::parse(raw.as_deref())?;
    if query.label.len() > crate::vms::MAX_LABELS {
        return Err(ApiError::bad_request(format!(
            "at most {} label filters",
            crate::vms::MAX_LABELS
        )));
    }
    let mut labels = Vec::new();
    for label in &query.label {
        let (key, value) = match label.split_once(':') {
            Some((key, value)) => (key, Some(value.to_owned())),
            None => (label.as_str(), None),
        };
        if key.is_empty() {
            return Err(ApiError::bad_request(format!(
                "label filter {label:?}: write key:value or key"
            )));
        }
        labels.push((key.to_owned(), value));
    }
    let repo_id = match &query.repo {
        Some(full_name) => {
            let (owner, name) = full_name.split_once('/').ok_or_else(|| {
                ApiError::bad_request(format!("repo {full_name:?}: write owner/name"))
            })?;
            match state.store.repo_by_name(owner, name).await? {
                Some(repo) => Some(repo.id),
                // No VM belongs to a repository that does not exist.
                None => return Ok((HeaderMap::new(), Json(Vec::new()))),
            }
        }
        None => None,
    };
    let limit = query
        .limit
        .unwrap_or(DEFAULT_LIST_LIMIT)
        .clamp(1, MAX_LIST_LIMIT);
    let filter = VmFilter {
        labels,
        state: query.state,
        repo_id,
        visible_to: (!caller.is_admin()).then(|| Visibility {
            token: caller.token_id.clone(),
            admin_of: caller
                .repo_limit()
                .filter(|repo| caller.check_repo(repo, Scope::Admin).is_ok())
                .map(str::to_owned),
        }),
        after: query.cursor.as_deref().map(parse_cursor).transpose()?,
        limit,
    };
    let rows = state.sandboxes.find(&filter).await?;
    let mut headers = HeaderMap::new();
    if rows.len() as i64 == limit
        && let Some(last) = rows.last()
        && let Ok(value) = HeaderValue::from_str(&cursor_of(last))
    {
        headers.insert("x-next-cursor", value);
    }
    let mut views = Vec::with_capacity(rows.len());
    for row in rows {
        // The state was refreshed after the query: one that changed since
        // no longer matches.
        if query.state.is_some_and(|wanted| wanted != row.state) {
            continue;
        }
        views.push(view(&state, row).await?);
    }
    Ok((headers, Json(views)))
}

/// Moves the VM's deadline to `ttl_secs` from now (sooner or later than
/// it was), or removes it with `null`.
#[utoipa::path(
    post,
    path = "/v1/vms/{id}/timeout",
    tag = "vms",
    operation_id = "setVmTimeout",
    params(VmPath),
    request_body = TimeoutRequest,
    responses((status = 200, description = "The VM with its new `expires_at`", body = VmView)),
)]
pub async fn timeout(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(request): Body<TimeoutRequest>,
) -> Result<Json<VmView>, ApiError> {
    owned(&state, &caller, &id).await?;
    let row = state.sandboxes.set_ttl(&id, request.ttl_secs).await?;
    Ok(Json(view(&state, row).await?))
}

/// One VM, with its usage while it holds resources and its traffic
/// through the egress proxy.
#[utoipa::path(
    get,
    path = "/v1/vms/{id}",
    tag = "vms",
    operation_id = "getVm",
    params(VmPath),
    responses((status = 200, description = "The VM, its usage and its egress counters", body = VmDetail)),
)]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<VmDetail>, ApiError> {
    owned(&state, &caller, &id).await?;
    let row = state.sandboxes.get(&id).await?;
    let stats = if row.state.is_live() {
        state.sandboxes.stats(&id).await.ok().map(|stats| VmStats {
            state: crate::vms::vm_state(stats.state),
            memory_bytes: stats.memory_bytes,
            cpu_usage_ns: stats.cpu_usage_ns,
            disk_bytes: stats.disk_bytes,
        })
    } else {
        None
    };
    let usage = state.sandboxes.network().usage(&id);
    Ok(Json(VmDetail {
        vm: view(&state, row).await?,
        stats,
        egress: EgressUsage {
            connections: usage.connections,
            refused: usage.refused,
            bytes_out: usage.bytes_out,
            bytes_in: usage.bytes_in,
        },
    }))
}

/// Destroys the VM and its disk.
#[utoipa::path(
    delete,
    path = "/v1/vms/{id}",
    tag = "vms",
    operation_id = "deleteVm",
    params(VmPath),
    responses((status = 204, description = "The VM and its disk are gone")),
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    owned(&state, &caller, &id).await?;
    state.sandboxes.destroy(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Runs a command in the VM (a paused VM is resumed first) and answers
/// when it ends, or streams its output as it comes.
#[utoipa::path(
    post,
    path = "/v1/vms/{id}/exec",
    tag = "vms",
    operation_id = "execVm",
    params(VmPath),
    request_body = ExecRequest,
    responses((
        status = 200,
        description = "How the command ended and its output. With `Accept: text/event-stream` the answer is a stream of server-sent events instead: `stdout` and `stderr` (data: `ExecText`) as output comes, then one `exit` (data: `ExecExit`) or `error` (data: `ExecFailure`); closing the stream kills the command.",
        content(
            (ExecOutput = "application/json"),
            (String = "text/event-stream"),
        ),
    )),
)]
pub async fn exec(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    Body(request): Body<ExecRequest>,
) -> Result<Response, ApiError> {
    let row = owned(&state, &caller, &id).await?;
    let mut command = command_of(
        request.command,
        request.argv,
        request.env,
        request.cwd.or(row.workdir),
    )?;
    if let Some(stdin) = request.stdin {
        command = command.stdin(stdin.into_bytes());
    }
    command = command.timeout(Duration::from_secs(
        request.timeout_secs.unwrap_or(300).clamp(1, 3600),
    ));
    let streamed = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/event-stream"));
    if streamed {
        let stream = state.sandboxes.exec_stream(&id, command).await?;
        return Ok(exec_events(stream).into_response());
    }
    let output = state.sandboxes.exec(&id, command).await?;
    Ok(Json(ExecOutput {
        exit: exit_of(&output.exited),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
    .into_response())
}

/// The command a request names: exactly one of a shell script and a
/// non-empty argv, with its environment and working directory.
pub(super) fn command_of(
    script: Option<String>,
    argv: Option<Vec<String>>,
    env: std::collections::BTreeMap<String, String>,
    cwd: Option<String>,
) -> Result<::sandbox::Command, ApiError> {
    let mut command = match (script, argv) {
        (Some(script), None) => ::sandbox::Command::shell(script),
        (None, Some(argv)) if !argv.is_empty() => ::sandbox::Command::new(argv),
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of command (a shell script) or argv (a non-empty list)",
            ));
        }
    };
    for (key, value) in env {
        command = command.env(key, value);
    }
    if let Some(cwd) = cwd {
        command = command.cwd(cwd);
    }
    Ok(command)
}

fn exit_of(exited: &::sandbox::Exited) -> ExecExit {
    let exit_code = match exited.status {
        ::sandbox::ExitStatus::Code(code) => code,
        ::sandbox::ExitStatus::Signal(signal) => 128 + signal,
    };
    ExecExit {
        exit_code,
        duration_ms: exited.duration_ms,
        truncated: exited.truncated,
        timed_out: exited.timed_out,
    }
}

/// An exec as server-sent events: `stdout` and `stderr` (`{"text"}`) as the
/// output comes, then `exit` (`{"exit_code", "duration_ms", "truncated",
/// "timed_out"}`) or `error` (`{"message"}`). Closing the stream kills the
/// command.
fn exec_events(
    stream: crate::vms::Exec,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let events = futures_util::stream::unfold(Some(stream), |stream| async move {
        let mut stream = stream?;
        let event = match stream.next().await {
            Ok(Some(::sandbox::ExecEvent::Stdout(bytes))) => {
                Event::default().event("stdout").data(event_data(&ExecText {
                    text: String::from_utf8_lossy(&bytes).into_owned(),
                }))
            }
            Ok(Some(::sandbox::ExecEvent::Stderr(bytes))) => {
                Event::default().event("stderr").data(event_data(&ExecText {
                    text: String::from_utf8_lossy(&bytes).into_owned(),
                }))
            }
            Ok(Some(::sandbox::ExecEvent::Exited(exited))) => {
                return Some((
                    Ok(Event::default()
                        .event("exit")
                        .data(event_data(&exit_of(&exited)))),
                    None,
                ));
            }
            Ok(None) => return None,
            Err(error) => {
                let message = event_data(&ExecFailure {
                    message: error.to_string(),
                });
                return Some((Ok(Event::default().event("error").data(message)), None));
            }
        };
        Some((Ok(event), Some(stream)))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// Copies the VM `count` times (default 1): disk, and memory and
/// processes where the backend can. The parent keeps running.
#[utoipa::path(
    post,
    path = "/v1/vms/{id}/fork",
    tag = "vms",
    operation_id = "forkVm",
    params(VmPath),
    request_body = ForkRequest,
    responses((status = 201, description = "The forks, and what each kept of its parent", body = Forks)),
)]
pub async fn fork(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(request): Body<ForkRequest>,
) -> Result<(StatusCode, Json<Forks>), ApiError> {
    owned(&state, &caller, &id).await?;
    if !caller.is_admin() {
        state
            .sandboxes
            .check_quota(&caller.token_id, request.count.unwrap_or(1))
            .await?;
    }
    let options = ForkOptions {
        labels: request.labels,
        ttl_secs: request.ttl_secs,
    };
    let forks = state
        .sandboxes
        .fork(&id, request.count.unwrap_or(1), &caller.token_id, &options)
        .await?;
    let mut views = Vec::new();
    for (row, carried) in forks {
        views.push(with_carried(view(&state, row).await?, &carried));
    }
    Ok(created(Forks { forks: views }))
}

/// Pauses the VM in memory (no CPU), or to disk with `to_disk` (no process
/// and no RAM: it costs only its disk).
#[utoipa::path(
    post,
    path = "/v1/vms/{id}/pause",
    tag = "vms",
    operation_id = "pauseVm",
    params(VmPath),
    request_body(content = Option<PauseRequest>, description = "No body is a pause in memory"),
    responses((status = 200, description = "The VM, paused", body = VmView)),
)]
pub async fn pause(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<VmView>, ApiError> {
    owned(&state, &caller, &id).await?;
    // The body is optional: no body is a pause in memory.
    let request: PauseRequest = if body.iter().all(u8::is_ascii_whitespace) {
        PauseRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid pause request: {e}")))?
    };
    let to_disk = request.to_disk;
    let mode = if to_disk {
        ::sandbox::PauseMode::Disk
    } else {
        ::sandbox::PauseMode::Memory
    };
    let row = state.sandboxes.pause(&id, mode).await?;
    Ok(Json(view(&state, row).await?))
}

/// Resumes a paused VM where it stopped.
#[utoipa::path(
    post,
    path = "/v1/vms/{id}/resume",
    tag = "vms",
    operation_id = "resumeVm",
    params(VmPath),
    responses((status = 200, description = "The VM, running, and what it kept", body = CarriedVm)),
)]
pub async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CarriedVm>, ApiError> {
    owned(&state, &caller, &id).await?;
    let (row, carried) = state.sandboxes.resume(&id).await?;
    Ok(Json(with_carried(view(&state, row).await?, &carried)))
}

/// Moves a VM paused to disk to another sandbox node and resumes it there:
/// its disk, and its memory and processes where the pause kept them, are
/// streamed from its node to the other, checksummed, and its old copy is
/// removed once the new one runs (on any failure the VM stays where it
/// was, paused to disk). `admin` only: it chooses hosts.
#[utoipa::path(
    post,
    path = "/v1/vms/{id}/move",
    tag = "vms",
    operation_id = "moveVm",
    params(VmPath),
    request_body(content = MoveRequest, description = "The node; none: placement picks one"),
    responses((status = 200, description = "The VM, running on its new node, and what it kept", body = MovedVm)),
)]
pub async fn move_vm(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<MovedVm>, ApiError> {
    caller.check(crate::auth::Scope::Admin)?;
    owned(&state, &caller, &id).await?;
    let request: MoveRequest = if body.iter().all(u8::is_ascii_whitespace) {
        MoveRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid move request: {e}")))?
    };
    // On a task of its own: a client that goes away does not cut a move
    // in the middle.
    let sandboxes = state.sandboxes.clone();
    let (row, carried, node) =
        tokio::spawn(async move { sandboxes.relocate(&id, request.node.as_deref()).await })
            .await
            .map_err(|error| ApiError::internal(anyhow::anyhow!("the move failed: {error}")))??;
    Ok(Json(MovedVm {
        carried: with_carried(view(&state, row).await?, &carried),
        node,
    }))
}

/// Reads a file of the VM, or lists a directory when the path ends in `/`.
/// Symlinks are never followed; a file over the forge's `max_file_bytes`
/// is a `413`.
#[utoipa::path(
    get,
    path = "/v1/vms/{id}/files/{*path}",
    tag = "vms",
    operation_id = "readFile",
    params(FilePath),
    responses((
        status = 200,
        description = "The file's bytes, streamed; for a path ending in `/`, the directory's entries",
        content(
            (super::openapi::Bytes = "application/octet-stream"),
            (Vec<FileEntry> = "application/json"),
        ),
    )),
)]
pub async fn read_file(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, path)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    owned(&state, &caller, &id).await?;
    let path = format!("/{path}");
    if path.ends_with('/') {
        let entries: Vec<FileEntry> = state
            .sandboxes
            .list_files(&id, &path)
            .await?
            .into_iter()
            .map(file_entry)
            .collect();
        return Ok(Json(entries).into_response());
    }
    let mut file = state.sandboxes.read_file(&id, &path).await?;
    // The first chunk before the answer: a missing file is a 404, not a
    // 200 that breaks off.
    let first = file.next_chunk().await?;
    let body = futures_util::stream::unfold(Some((Some(first), file)), |state| async move {
        let (pending, mut file) = state?;
        let item = match pending {
            Some(chunk) => Ok(chunk),
            None => file.next_chunk().await,
        };
        match item {
            Ok(Some(chunk)) => Some((Ok(Bytes::from(chunk)), Some((None, file)))),
            Ok(None) => None,
            // Past the limit or a stalled agent: the body breaks off, so
            // the client sees an incomplete response, never a short file.
            Err(err) => Some((Err(std::io::Error::other(err.to_string())), None)),
        }
    });
    Ok((
        [("content-type", "application/octet-stream")],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}

fn file_entry(entry: ::sandbox::DirEntry) -> FileEntry {
    let stat = entry.stat;
    FileEntry {
        name: entry.name,
        kind: match stat.kind {
            ::sandbox::FileKind::File => FileKind::File,
            ::sandbox::FileKind::Dir => FileKind::Dir,
            ::sandbox::FileKind::Symlink => FileKind::Symlink,
            ::sandbox::FileKind::Other => FileKind::Other,
        },
        size: stat.size,
        mode: stat.mode,
        uid: stat.uid,
        gid: stat.gid,
        modified_unix_ms: stat.modified_unix_ms,
        link_target: stat.link_target,
    }
}

/// Writes a file of the VM atomically (mode 0644), creating missing parent
/// directories.
#[utoipa::path(
    put,
    path = "/v1/vms/{id}/files/{*path}",
    tag = "vms",
    operation_id = "writeFile",
    params(FilePath),
    request_body(content = super::openapi::Bytes, content_type = "application/octet-stream", description = "The file's new content"),
    responses((status = 204, description = "Written")),
)]
pub async fn write_file(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, path)): Path<(String, String)>,
    data: Bytes,
) -> Result<StatusCode, ApiError> {
    owned(&state, &caller, &id).await?;
    state
        .sandboxes
        .write_file(&id, &format!("/{path}"), &data)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes a file, a symlink, or a directory with its content (never the
/// root).
#[utoipa::path(
    delete,
    path = "/v1/vms/{id}/files/{*path}",
    tag = "vms",
    operation_id = "deleteFile",
    params(FilePath),
    responses((status = 204, description = "Deleted")),
)]
pub async fn delete_file(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, path)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    owned(&state, &caller, &id).await?;
    state
        .sandboxes
        .delete_file(&id, &format!("/{path}"))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
