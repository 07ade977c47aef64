//! `GET /v1/repos/{owner}/{name}/events?after=<cursor>&limit=<n>&wait_secs=<s>`:
//! a repository's events, oldest first, from a cursor. With `wait_secs`,
//! an empty answer waits up to that long for the next event (long poll).
//! `GET /v1/events` (admin) is the same over the whole forge: the events
//! of every repository and of sandboxes that belong to none.

use std::time::Duration;

use api_types::events::EventPage;
use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;

use super::ApiError;
use super::openapi::RepoPath;
use super::repos::authorize;
use crate::auth::{Caller, Scope};
use crate::events::Event;
use crate::server::AppState;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Events after this id (the last page's `next_cursor`); 0 from the
    /// start.
    #[serde(default)]
    after: i64,
    /// At most this many events, 1 to 1000; 100 when absent.
    limit: Option<i64>,
    /// When there is nothing new, wait up to this many seconds (at most 60)
    /// for an event before answering an empty page.
    wait_secs: Option<u64>,
}

const MAX_LIMIT: i64 = 1000;
const MAX_WAIT_SECS: u64 = 60;

/// The repository's events (pushes, runs, syncs) in order, as a long poll:
/// with `wait_secs` an empty page waits for the next event.
#[utoipa::path(
    get,
    path = "/v1/repos/{owner}/{name}/events",
    tag = "repos",
    operation_id = "listEvents",
    params(RepoPath, EventQuery),
    responses((status = 200, description = "The events after `after`, oldest first", body = EventPage)),
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path((owner, name)): Path<(String, String)>,
    Query(query): Query<EventQuery>,
) -> Result<Json<EventPage>, ApiError> {
    let repo = authorize(&state, &caller, &owner, &name, Scope::RepoRead).await?;
    page(&state, Some(&repo.id), &query).await
}

/// Every event of the forge in order (those of every repository, and the
/// lifecycle of sandboxes that belong to none), as a long poll. Admin only.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "system",
    operation_id = "listForgeEvents",
    params(EventQuery),
    responses((status = 200, description = "The events after `after`, oldest first", body = EventPage)),
)]
pub async fn list_all(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<EventQuery>,
) -> Result<Json<EventPage>, ApiError> {
    caller.check(Scope::Admin)?;
    page(&state, None, &query).await
}

/// How often a waiting read looks for events other servers sharing the
/// database recorded.
const OTHER_SERVERS_EVERY: Duration = Duration::from_secs(1);

/// A page of the events of `repo_id` (or of the whole forge) after the
/// query's cursor, waiting up to `wait_secs` for one when there is none.
async fn page(
    state: &AppState,
    repo_id: Option<&str>,
    query: &EventQuery,
) -> Result<Json<EventPage>, ApiError> {
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_LIMIT);
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(query.wait_secs.unwrap_or(0).min(MAX_WAIT_SECS));
    // Subscribe before reading, so an event committed in between is not missed.
    let mut news = state.events.subscribe();
    loop {
        let rows = match repo_id {
            Some(repo_id) => {
                state
                    .store
                    .events_after(repo_id, query.after, limit)
                    .await?
            }
            None => state.store.all_events_after(query.after, limit).await?,
        };
        if !rows.is_empty() || tokio::time::Instant::now() >= deadline {
            let events: Vec<Event> = rows.into_iter().map(Event::from).collect();
            let next_cursor = events.last().map_or(query.after, |event| event.id);
            return Ok(Json(EventPage {
                events,
                next_cursor,
            }));
        }
        // The bus hears this server's events only; another server's (on a
        // shared database, PostgreSQL only) are read at the next look.
        let look_again = match state.store.dialect() {
            crate::store::Dialect::Postgres => {
                deadline.min(tokio::time::Instant::now() + OTHER_SERVERS_EVERY)
            }
            crate::store::Dialect::Sqlite => deadline,
        };
        loop {
            match tokio::time::timeout_at(look_again, news.recv()).await {
                Ok(Ok(event)) if repo_id.is_some() && event.repo_id.as_deref() != repo_id => {
                    continue;
                }
                // News for what is read, a lag, a closed bus or the deadline: read again.
                _ => break,
            }
        }
    }
}
