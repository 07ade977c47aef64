//! Pipeline runs: `GET /v1/repos/{owner}/{name}/runs`, `GET /v1/runs/{id}`,
//! `GET /v1/runs/{id}/logs` (plain text; `?follow=true` streams it as
//! server-sent events until the run ends), `POST /v1/runs/{id}/cancel` and
//! `POST /v1/runs/{id}/rerun`.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use api_types::StepState;
use api_types::runs::{BranchReview, LogEvent, RunDetail, RunEnd, RunReview, RunView, StepEvent};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Deserialize;

use super::openapi::RepoPath;
use super::repos::authorize;
use super::{ApiError, event_data};
use crate::auth::{Caller, Scope};
use crate::git::inspect;
use crate::pipelines::RunRefused;
use crate::server::AppState;
use crate::store::RunRow;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunQuery {
    /// Runs with an id below this one (the last page's smallest id).
    before: Option<i64>,
    /// At most this many runs, 1 to 500; 50 when absent.
    limit: Option<i64>,
}

async fn with_steps(state: &AppState, run: RunRow) -> Result<RunView, ApiError> {
    let steps = state.store.steps(run.id).await?;
    Ok(run.view(steps))
}

/// The repository's pipeline runs, newest first.
#[utoipa::path(
    get,
    path = "/v1/repos/{owner}/{name}/runs",
    tag = "runs",
    operation_id = "listRuns",
    params(RepoPath, RunQuery),
    responses((status = 200, description = "The runs, newest first, with their steps", body = Vec<RunView>)),
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path((owner, name)): Path<(String, String)>,
    Query(query): Query<RunQuery>,
) -> Result<Json<Vec<RunView>>, ApiError> {
    let repo = authorize(&state, &caller, &owner, &name, Scope::RepoRead).await?;
    let runs = state
        .store
        .runs_of_repo(
            &repo.id,
            query.before.unwrap_or(i64::MAX),
            query.limit.unwrap_or(50).clamp(1, 500),
        )
        .await?;
    let mut views = Vec::with_capacity(runs.len());
    for run in runs {
        views.push(with_steps(&state, run).await?);
    }
    Ok(Json(views))
}

/// The run, if the caller may use its repository with `scope`.
async fn authorized(
    state: &AppState,
    caller: &Caller,
    id: i64,
    scope: Scope,
) -> Result<RunRow, ApiError> {
    let run = state
        .store
        .run(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("run {id} does not exist")))?;
    let (owner, name) = run.repo_name.split_once('/').unwrap_or_default();
    authorize(state, caller, owner, name, scope).await?;
    Ok(run)
}

async fn readable(state: &AppState, caller: &Caller, id: i64) -> Result<RunRow, ApiError> {
    authorized(state, caller, id, Scope::RepoRead).await
}

/// The run, if the caller may cancel it or run it again: `repo:write`,
/// and a sandbox's token only on the branches it may push to (its code
/// must not stop or restart the pipelines of other branches).
async fn changeable(state: &AppState, caller: &Caller, id: i64) -> Result<RunRow, ApiError> {
    let run = authorized(state, caller, id, Scope::RepoWrite).await?;
    if let Some(vm) = caller.sandbox_vm() {
        let own = state.store.vm_branch(vm, &run.repo_id).await?;
        state
            .config
            .push_rules
            .sandbox_may_write(vm, own.as_deref(), Some(&run.branch))
            .map_err(|allowed| {
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    api_types::ErrorCode::Forbidden,
                    format!(
                        "this sandbox's token acts only on runs of {allowed}; run {id} is of refs/heads/{}",
                        run.branch
                    ),
                )
            })?;
    }
    Ok(run)
}

impl From<RunRefused> for ApiError {
    fn from(refused: RunRefused) -> Self {
        match refused {
            RunRefused::Finished { .. } | RunRefused::BranchGone(_) => {
                ApiError::conflict(refused.to_string())
            }
            RunRefused::Off(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                api_types::ErrorCode::Unavailable,
                refused.to_string(),
            ),
            RunRefused::NoSuchRun(_) => ApiError::not_found(refused.to_string()),
            RunRefused::Git(_) => ApiError::internal(refused),
            RunRefused::Store(error) => error.into(),
        }
    }
}

/// How long `cancel` waits for the run to end before answering `202`.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// Cancels a queued or running run: its running step is killed and the
/// rest skipped. Needs `repo:write` (a sandbox's token: a run of its own
/// branches).
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/cancel",
    tag = "runs",
    operation_id = "cancelRun",
    params(("id" = i64, Path, description = "The run's id")),
    responses(
        (status = 200, description = "The run, ended `cancelled`", body = RunView),
        (status = 202, description = "The run, still stopping its step: it ends `cancelled` shortly", body = RunView),
        (status = 409, description = "The run has already finished", body = api_types::ErrorBody),
    ),
)]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    changeable(&state, &caller, id).await?;
    state.pipelines.cancel(id, &caller.token_name).await?;
    let deadline = Instant::now() + CANCEL_WAIT;
    // Authorised above: only the run's state is read again while waiting.
    loop {
        let run = state
            .store
            .run(id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("run {id} does not exist")))?;
        let status = if run.state.is_finished() {
            StatusCode::OK
        } else if Instant::now() >= deadline {
            StatusCode::ACCEPTED
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        return Ok((status, Json(with_steps(&state, run).await?)));
    }
}

/// Queues a new run of the run's commit on its branch, with the same
/// steps; like a push, it supersedes the branch's run in progress. Needs
/// `repo:write` (a sandbox's token: a run of its own branches).
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/rerun",
    tag = "runs",
    operation_id = "rerunRun",
    params(("id" = i64, Path, description = "The id of the run to run again")),
    responses(
        (status = 201, description = "The new run, queued", body = RunView),
        (status = 409, description = "The run's branch no longer exists", body = api_types::ErrorBody),
        (status = 503, description = "Pipelines are off: the forge has no sandbox backend", body = api_types::ErrorBody),
    ),
)]
pub async fn rerun(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    let run = changeable(&state, &caller, id).await?;
    let queued = state.pipelines.rerun(&run, &caller).await?;
    Ok((StatusCode::CREATED, Json(with_steps(&state, queued).await?)))
}

/// One run with its steps, and the review posted for it on GitHub.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}",
    tag = "runs",
    operation_id = "getRun",
    params(("id" = i64, Path, description = "The run's id")),
    responses((status = 200, description = "The run, its steps and its pull request review", body = RunDetail)),
)]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<RunDetail>, ApiError> {
    let run = readable(&state, &caller, id).await?;
    let review = state
        .store
        .github_review_of_run(run.id)
        .await?
        .map(|review| RunReview {
            github_repo: review.github_repo,
            number: review.number,
            head_sha: review.head_sha,
            verdict: review.verdict,
            posted_at: review.posted_at,
        });
    let dir = state.repos.path(&run.repo_id);
    let commit_id = run.commit_id.clone();
    let commit = tokio::task::spawn_blocking(move || inspect::commit(&dir, &commit_id))
        .await
        .map_err(ApiError::internal)?
        .ok()
        .map(super::repos::commit_view);
    let analysis = state.store.run_analysis(run.id).await?;
    let branch_review = state
        .store
        .branch_review_of_run(&run.repo_id, run.id)
        .await?
        .and_then(|(json, posted_at)| {
            let review: BranchReview = serde_json::from_str(&json).ok()?;
            Some(BranchReview {
                posted_at,
                ..review
            })
        });
    Ok(Json(RunDetail {
        run: with_steps(&state, run).await?,
        commit,
        review,
        analysis,
        branch_review,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Stream the log as server-sent events until the run ends.
    #[serde(default)]
    follow: bool,
}

/// The run's logs, whole or followed live.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/logs",
    tag = "runs",
    operation_id = "getRunLogs",
    params(("id" = i64, Path, description = "The run's id"), LogQuery),
    responses((
        status = 200,
        description = "Every step's log as text under a `== name (state) ==` line. With `follow=true`, server-sent events instead: `step` (data: `StepEvent`) when a step starts or changes state, `log` (data: `LogEvent`) with new text of a step, and one `end` (data: `RunEnd`) when the run is over.",
        content(
            (String = "text/plain"),
            (String = "text/event-stream"),
        ),
    )),
)]
pub async fn logs(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Query(query): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let run = readable(&state, &caller, id).await?;
    if !query.follow {
        let mut text = String::new();
        for step in state.store.steps(run.id).await? {
            text.push_str(&format!(
                "== {} ({}) ==\n{}",
                step.name, step.status, step.log
            ));
            if !step.log.is_empty() && !step.log.ends_with('\n') {
                text.push('\n');
            }
        }
        return Ok(([("content-type", "text/plain; charset=utf-8")], text).into_response());
    }
    // Follow: poll the steps and send what is new, as `step` (a step
    // started or changed status), `log` (text of a step) and `end`.
    let store = state.store.clone();
    let stream = async_stream(store, run.id);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn async_stream(
    store: crate::store::Store,
    run_id: i64,
) -> impl futures_util::Stream<Item = Result<Event, Infallible>> {
    // Per step: the status last sent (`None`: not sent yet) and how much
    // of its log.
    let state = (store, Vec::<(Option<StepState>, usize)>::new(), false);
    futures_util::stream::unfold(state, move |(store, mut sent, done)| async move {
        if done {
            return None;
        }
        loop {
            let (Ok(Some(run)), Ok(steps)) = (store.run(run_id).await, store.steps(run_id).await)
            else {
                return None;
            };
            let mut events = Vec::new();
            for step in &steps {
                let index = step.position as usize;
                if sent.len() <= index {
                    sent.push((None, 0));
                }
                let (status, offset) = &mut sent[index];
                if *status != Some(step.status) {
                    *status = Some(step.status);
                    events.push(Event::default().event("step").data(event_data(&StepEvent {
                        position: step.position,
                        name: step.name.clone(),
                        status: step.status,
                        exit_code: step.exit_code,
                        duration_ms: step.duration_ms,
                    })));
                }
                // The log keeps its tail only: when it was cut, resend from its start.
                let start = if *offset <= step.log.len() {
                    *offset
                } else {
                    0
                };
                if step.log.len() > start {
                    let text = step.log.get(start..).unwrap_or_default();
                    events.push(Event::default().event("log").data(event_data(&LogEvent {
                        position: step.position,
                        text: text.to_owned(),
                    })));
                    *offset = step.log.len();
                }
            }
            let finished = run.state.is_finished();
            if finished {
                events.push(Event::default().event("end").data(event_data(&RunEnd {
                    state: run.state,
                    error: run.error.clone(),
                })));
            }
            if !events.is_empty() {
                let batch = futures_util::stream::iter(events.into_iter().map(Ok));
                return Some((batch, (store, sent, finished)));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .flatten()
}
