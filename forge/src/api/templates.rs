//! `/v1/templates`: images built from a spec (`templates/`), which VMs
//! start from with `POST /v1/vms {"template"}`. Templates are shared by
//! the whole forge: any token that may create VMs may build and use them;
//! their creator and forge admins may delete them.

use std::convert::Infallible;

use api_types::templates::{BuildLog, BuildQuery, TemplateSpec, TemplateView};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};

use super::openapi::TemplatePath;
use super::{ApiError, Body};
use crate::auth::{Caller, Scope};
use crate::server::AppState;
use crate::store::TemplateRow;
use crate::templates::BuildEvent;

async fn view(state: &AppState, row: TemplateRow, reused: bool) -> Result<TemplateView, ApiError> {
    let spec: TemplateSpec = serde_json::from_str(&row.spec).map_err(ApiError::internal)?;
    let build = state
        .store
        .template_build(&row.spec_hash)
        .await?
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("template {} has no build", row.name)))?;
    let snapshot = match &build.snapshot_id {
        Some(id) => match state.store.snapshot(id).await? {
            Some(snapshot) => Some(super::snapshots::view(state, snapshot).await?),
            None => None,
        },
        None => None,
    };
    Ok(TemplateView {
        name: row.name,
        spec,
        spec_hash: row.spec_hash,
        state: build.state,
        reused,
        error: build.error,
        build_ms: build.build_ms.map(|ms| ms.max(0) as u64),
        snapshot,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

async fn find(state: &AppState, name: &str) -> Result<TemplateRow, ApiError> {
    state
        .store
        .template(name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("template {name} does not exist")))
}

/// Creates or changes a template and builds it, unless the same spec was
/// built (or is building) before (`reused`): `202` when this post started
/// a build, `200` when it reused one. Follow the build at `GET /v1/templates/{name}/build?follow=true`.
#[utoipa::path(
    post,
    path = "/v1/templates",
    tag = "templates",
    operation_id = "putTemplate",
    request_body = TemplateSpec,
    responses(
        (status = 202, description = "The template; this post started its build", body = TemplateView),
        (status = 200, description = "The template; an earlier build of the same spec is its image", body = TemplateView),
    ),
)]
pub async fn put(
    State(state): State<AppState>,
    caller: Caller,
    Body(spec): Body<TemplateSpec>,
) -> Result<(StatusCode, Json<TemplateView>), ApiError> {
    caller.check(Scope::RepoWrite)?;
    if spec.pool.is_some() && !caller.is_admin() {
        // Pooled sandboxes are nobody's: they count against no token's
        // quota, only against the forge's caps.
        return Err(ApiError::forbidden(
            "pool keeps sandboxes for everyone and needs an admin token",
        ));
    }
    let (row, reused) = state
        .templates
        .put(spec, &caller.token_id, caller.is_admin())
        .await?;
    let view = view(&state, row, reused).await?;
    // Whether this post started a build, not whether it still runs: a
    // quick build may have ended already.
    let status = if reused {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(view)))
}

/// Every template, by name.
#[utoipa::path(
    get,
    path = "/v1/templates",
    tag = "templates",
    operation_id = "listTemplates",
    responses((status = 200, description = "The templates", body = Vec<TemplateView>)),
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<TemplateView>>, ApiError> {
    caller.check(Scope::RepoRead)?;
    let mut out = Vec::new();
    for row in state.store.templates().await? {
        out.push(view(&state, row, false).await?);
    }
    Ok(Json(out))
}

/// One template: its spec, its build's state and its image.
#[utoipa::path(
    get,
    path = "/v1/templates/{name}",
    tag = "templates",
    operation_id = "getTemplate",
    params(TemplatePath),
    responses((status = 200, description = "The template", body = TemplateView)),
)]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<TemplateView>, ApiError> {
    caller.check(Scope::RepoRead)?;
    let row = find(&state, &name).await?;
    Ok(Json(view(&state, row, false).await?))
}

/// Deletes a template and, unless another template builds the same spec,
/// its image. VMs started from it keep running.
#[utoipa::path(
    delete,
    path = "/v1/templates/{name}",
    tag = "templates",
    operation_id = "deleteTemplate",
    params(TemplatePath),
    responses((status = 204, description = "The template is gone")),
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.check(Scope::RepoWrite)?;
    let row = find(&state, &name).await?;
    if !caller.is_admin() && row.created_by != caller.token_id {
        return Err(ApiError::forbidden(format!(
            "template {name} belongs to another token; its creator or a forge admin may delete it"
        )));
    }
    state.templates.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The template's build log (`text/plain`); with `follow=true`, the build
/// as server-sent events until it ends: `log` (`{"text"}`) with the log so
/// far and then as it comes, `step` (`{"index", "total", "name"}`) as each
/// step starts, and `done` with the template.
#[utoipa::path(
    get,
    path = "/v1/templates/{name}/build",
    tag = "templates",
    operation_id = "getTemplateBuild",
    params(TemplatePath, BuildQuery),
    responses((
        status = 200,
        description = "The build log, or its events",
        content(
            (String = "text/plain"),
            (String = "text/event-stream"),
        ),
    )),
)]
pub async fn build(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(query): Query<BuildQuery>,
) -> Result<Response, ApiError> {
    caller.check(Scope::RepoRead)?;
    let row = find(&state, &name).await?;
    let (log, step, events) = state.templates.follow(&row.spec_hash).await?;
    if !query.follow {
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], log).into_response());
    }
    let mut first = Vec::new();
    if !log.is_empty() {
        first.push(log_event(log));
    }
    if let Some(step) = step {
        first.push(
            Event::default()
                .event("step")
                .data(super::event_data(&step)),
        );
    }
    let done = {
        let state = state.clone();
        move || async move {
            let view = match state.store.template(&name).await {
                Ok(Some(row)) => view(&state, row, false).await.ok(),
                _ => None,
            };
            Event::default().event("done").data(match view {
                Some(view) => super::event_data(&view),
                None => "{}".to_owned(),
            })
        }
    };
    let head = futures_util::stream::iter(first.into_iter().map(Ok::<_, Infallible>));
    let tail = futures_util::stream::unfold(Some(events), move |events| {
        let done = done.clone();
        async move {
            let mut receiver = match events? {
                Some(receiver) => receiver,
                // Not building: the log was all there is.
                None => return Some((Ok(done().await), None)),
            };
            loop {
                match receiver.recv().await {
                    Ok(BuildEvent::Log(text)) => {
                        return Some((Ok(log_event(text)), Some(Some(receiver))));
                    }
                    Ok(BuildEvent::Step(step)) => {
                        let event = Event::default()
                            .event("step")
                            .data(super::event_data(&step));
                        return Some((Ok(event), Some(Some(receiver))));
                    }
                    Ok(BuildEvent::Done)
                    | Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        return Some((Ok(done().await), None));
                    }
                    // A follower that fell behind skips what it missed;
                    // the stored log has it.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                }
            }
        }
    });
    use futures_util::StreamExt;
    Ok(Sse::new(head.chain(tail))
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn log_event(text: String) -> Event {
    Event::default()
        .event("log")
        .data(super::event_data(&BuildLog { text }))
}
