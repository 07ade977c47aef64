//! `/v1/repos/{owner}/{name}/webhooks`: subscriptions, pings and the
//! delivery log; `/v1/webhooks`: the same for forge-wide subscriptions,
//! which receive the events of every repository and of sandboxes that
//! belong to none. One handler serves both: [`Place`] reads which from the
//! path.
//!
//! Access: `repo:write` on the repository (or `admin`) to create, change,
//! delete, ping and redeliver; `repo:read` to list and read subscriptions
//! and their deliveries; `admin` for everything forge-wide. A secret is returned only by the request that
//! created it (`POST`, or `PATCH` with `rotate_secret`); URLs are shown with
//! any credentials in them replaced by `***`.

use api_types::FieldError;
use api_types::webhooks::{
    AttemptView, CreateWebhook, DeliveryPage, DeliveryView, Queued, UpdateWebhook, WebhookView,
};
use axum::Json;
use axum::extract::{OptionalFromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::Deserialize;
use serde_json::Value;

use super::openapi::{DeliveryPath, RepoPath, WebhookPath};
use super::repos::authorize;
use super::{ApiError, Body, created};
use crate::auth::{Caller, Scope};
use crate::server::AppState;
use crate::store::{
    AttemptRow, DeliveryRow, NewDeliveryRow, NewWebhook, Redelivery, RepoRow, WebhookChange,
    WebhookRow, now_ms,
};
use crate::webhooks::ROTATION_WINDOW;
use hooks::Secret;

pub mod forge_wide;

fn rfc3339_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// A subscription as the API shows it, with `secret` when the request set it.
fn webhook_view(row: &WebhookRow, secret: Option<String>) -> WebhookView {
    // The lists are stored as JSON arrays written by this module.
    let list = |text: &str| serde_json::from_str(text).unwrap_or_default();
    WebhookView {
        id: row.id.clone(),
        url: crate::git::redact_credentials(&row.url),
        events: list(&row.events),
        branches: list(&row.branches),
        paths: list(&row.paths),
        active: row.active,
        disabled_reason: row.disabled_reason.clone(),
        consecutive_failures: row.consecutive_failures,
        previous_secret_expires_at: row
            .previous_secret_until
            .filter(|until| *until > now_ms())
            .map(rfc3339_ms),
        created_at: row.created_at.clone(),
        updated_at: row.updated_at.clone(),
        secret,
    }
}

/// How long creating a webhook waits for its host to resolve.
const LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Checks a target URL against the network policy: the literal address, or
/// every address the host resolves to now (the sender checks again at each
/// connection). A host that does not resolve yet is accepted. `Err` says
/// why it is refused.
async fn check_url(state: &AppState, url: &str) -> Result<(), String> {
    let policy = state.config.network_policy();
    let refused = |reason: String| format!("refused: {}", crate::git::redact_credentials(&reason));
    let parsed = hooks::ssrf::check_url(url, &policy).map_err(|e| refused(e.to_string()))?;
    let host = parsed.host_str().unwrap_or_default().to_owned();
    let port = parsed.port_or_known_default().unwrap_or(443);
    let lookup = tokio::net::lookup_host((host.trim_matches(['[', ']']), port));
    if let Ok(Ok(addresses)) = tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
        for address in addresses {
            policy
                .check(address.ip())
                .map_err(|e| refused(e.to_string()))?;
        }
    }
    Ok(())
}

/// A webhook's settings as a request gives them (or as they stay).
struct Settings<'a> {
    url: Option<&'a str>,
    events: &'a [String],
    branches: &'a [String],
    paths: &'a [String],
    secret: Option<&'a str>,
}

/// Every problem of a webhook's settings at once, each under its field: a
/// form can show them all beside their fields.
async fn check_settings(state: &AppState, settings: &Settings<'_>) -> Result<(), ApiError> {
    let mut problems = Vec::new();
    let mut problem = |field: &str, message: String| {
        problems.push(FieldError {
            field: field.to_owned(),
            message,
        })
    };
    if let Some(url) = settings.url
        && let Err(reason) = check_url(state, url).await
    {
        problem("url", reason);
    }
    if settings.events.is_empty() {
        problem(
            "events",
            "list at least one event type, or \"*\"".to_owned(),
        );
    }
    for (field, error) in
        hooks::SubscriptionFilter::problems(settings.events, settings.branches, settings.paths)
    {
        problem(field, error.to_string());
    }
    if let Some(Err(error)) = settings.secret.map(|text| Secret::new(text.to_owned())) {
        problem("secret", error.to_string());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid_fields(problems))
    }
}

fn secret_from(given: Option<String>) -> Result<Secret, ApiError> {
    match given {
        Some(text) => Secret::new(text).map_err(|e| ApiError::bad_request(e.to_string())),
        None => Ok(Secret::generate()),
    }
}

fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_owned())
}

/// The path parameters of a webhook route: `owner` and `name` for a
/// repository's webhooks, none for the forge-wide ones.
#[derive(Debug, Default, Deserialize)]
struct PlaceParams {
    owner: Option<String>,
    name: Option<String>,
    #[serde(default)]
    id: String,
    #[serde(default)]
    delivery_id: String,
}

/// Where a webhook request points: its path's parameters.
pub struct Place(PlaceParams);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Place {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match <Path<PlaceParams> as OptionalFromRequestParts<S>>::from_request_parts(parts, state)
            .await
        {
            Ok(params) => Ok(Place(params.map(|Path(p)| p).unwrap_or_default())),
            Err(rejection) => Err(ApiError::bad_request(rejection.body_text())),
        }
    }
}

/// The subscriptions a request may act on with `scope`: a repository's,
/// or (for an admin) the forge's.
struct Owner(Option<RepoRow>);

impl Owner {
    fn repo_id(&self) -> Option<&str> {
        self.0.as_ref().map(|repo| repo.id.as_str())
    }

    /// `owner/name`, empty for the forge (as webhook payloads spell it).
    fn repo_name(&self) -> String {
        self.0.as_ref().map(RepoRow::full_name).unwrap_or_default()
    }
}

impl Place {
    async fn owner(
        &self,
        state: &AppState,
        caller: &Caller,
        scope: Scope,
    ) -> Result<Owner, ApiError> {
        match (&self.0.owner, &self.0.name) {
            (Some(owner), Some(name)) => Ok(Owner(Some(
                authorize(state, caller, owner, name, scope).await?,
            ))),
            _ => {
                caller.check(Scope::Admin)?;
                Ok(Owner(None))
            }
        }
    }

    fn id(&self) -> &str {
        &self.0.id
    }

    fn delivery_id(&self) -> &str {
        &self.0.delivery_id
    }
}

async fn find(state: &AppState, owner: &Owner, id: &str) -> Result<WebhookRow, ApiError> {
    state
        .store
        .webhook(owner.repo_id(), id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("webhook {id} does not exist")))
}

/// Subscribes a URL to the repository's events. Needs `repo:write`.
#[utoipa::path(
    post,
    path = "/v1/repos/{owner}/{name}/webhooks",
    tag = "webhooks",
    operation_id = "createWebhook",
    params(RepoPath),
    request_body = CreateWebhook,
    responses((status = 201, description = "The webhook, with its signing secret in `secret`: shown this once", body = WebhookView)),
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    place: Place,
    Body(request): Body<CreateWebhook>,
) -> Result<(StatusCode, Json<WebhookView>), ApiError> {
    let repo = place.owner(&state, &caller, Scope::RepoWrite).await?;
    check_settings(
        &state,
        &Settings {
            url: Some(&request.url),
            events: &request.events,
            branches: &request.branches,
            paths: &request.paths,
            secret: request.secret.as_deref(),
        },
    )
    .await?;
    let secret = secret_from(request.secret)?;
    let id = format!("wh_{}", uuid::Uuid::new_v4().simple());
    let row = state
        .store
        .insert_webhook(&NewWebhook {
            id: &id,
            repo_id: repo.repo_id(),
            url: &request.url,
            events: &json_list(&request.events),
            branches: &json_list(&request.branches),
            paths: &json_list(&request.paths),
            active: request.active.unwrap_or(true),
            secret: secret.expose(),
        })
        .await?;
    tracing::info!(repo = %repo.repo_name(), webhook = %id, "webhook created");
    Ok(created(webhook_view(
        &row,
        Some(secret.expose().to_owned()),
    )))
}

/// The repository's webhooks.
#[utoipa::path(
    get,
    path = "/v1/repos/{owner}/{name}/webhooks",
    tag = "webhooks",
    operation_id = "listWebhooks",
    params(RepoPath),
    responses((status = 200, description = "The repository's webhooks, without secrets", body = Vec<WebhookView>)),
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    place: Place,
) -> Result<Json<Vec<WebhookView>>, ApiError> {
    let repo = place.owner(&state, &caller, Scope::RepoRead).await?;
    let rows = state.store.list_webhooks(repo.repo_id()).await?;
    Ok(Json(
        rows.iter().map(|row| webhook_view(row, None)).collect(),
    ))
}

/// One webhook.
#[utoipa::path(
    get,
    path = "/v1/repos/{owner}/{name}/webhooks/{id}",
    tag = "webhooks",
    operation_id = "getWebhook",
    params(WebhookPath),
    responses((status = 200, description = "The webhook, without its secret", body = WebhookView)),
)]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    place: Place,
) -> Result<Json<WebhookView>, ApiError> {
    let repo = place.owner(&state, &caller, Scope::RepoRead).await?;
    Ok(Json(webhook_view(
        &find(&state, &repo, place.id()).await?,
        None,
    )))
}

/// Changes a webhook; what the request leaves out stays as it is. Needs
/// `repo:write`.
#[utoipa::path(
    patch,
    path = "/v1/repos/{owner}/{name}/webhooks/{id}",
    tag = "webhooks",
    operation_id = "updateWebhook",
    params(WebhookPath),
    request_body = UpdateWebhook,
    responses((status = 200, description = "The webhook; with `secret` when the request rotated or set it", body = WebhookView)),
)]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    place: Place,
    Body(request): Body<UpdateWebhook>,
) -> Result<Json<WebhookView>, ApiError> {
    let repo = place.owner(&state, &caller, Scope::RepoWrite).await?;
    let id = place.id();
    let current = find(&state, &repo, place.id()).await?;
    let stored = |text: &str| serde_json::from_str::<Vec<String>>(text).unwrap_or_default();
    let events = request
        .events
        .clone()
        .unwrap_or_else(|| stored(&current.events));
    let branches = request
        .branches
        .clone()
        .unwrap_or_else(|| stored(&current.branches));
    let paths = request
        .paths
        .clone()
        .unwrap_or_else(|| stored(&current.paths));
    check_settings(
        &state,
        &Settings {
            url: request.url.as_deref(),
            events: &events,
            branches: &branches,
            paths: &paths,
            secret: request.secret.as_deref(),
        },
    )
    .await?;
    let new_secret = if request.rotate_secret || request.secret.is_some() {
        Some(secret_from(request.secret)?)
    } else {
        None
    };
    let window_ms = i64::try_from(ROTATION_WINDOW.as_millis()).unwrap_or(i64::MAX);
    let change = WebhookChange {
        url: request.url,
        events: request.events.map(|l| json_list(&l)),
        branches: request.branches.map(|l| json_list(&l)),
        paths: request.paths.map(|l| json_list(&l)),
        active: request.active,
        rotate: new_secret
            .as_ref()
            .map(|s| (s.expose().to_owned(), now_ms() + window_ms)),
    };
    let row = state
        .store
        .update_webhook(repo.repo_id(), id, &change)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("webhook {id} does not exist")))?;
    if request.active == Some(true) {
        state.webhooks.wake();
    }
    tracing::info!(webhook = %id, rotated = new_secret.is_some(), "webhook changed");
    Ok(Json(webhook_view(
        &row,
        new_secret.map(|s| s.expose().to_owned()),
    )))
}

/// Deletes a webhook. Needs `repo:write`.
#[utoipa::path(
    delete,
    path = "/v1/repos/{owner}/{name}/webhooks/{id}",
    tag = "webhooks",
    operation_id = "deleteWebhook",
    params(WebhookPath),
    responses((status = 204, description = "Deleted, with its deliveries")),
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    place: Place,
) -> Result<StatusCode, ApiError> {
    let repo = place.owner(&state, &caller, Scope::RepoWrite).await?;
    let id = place.id();
    if !state.store.delete_webhook(repo.repo_id(), id).await? {
        return Err(ApiError::not_found(format!("webhook {id} does not exist")));
    }
    tracing::info!(webhook = %id, "webhook deleted");
    Ok(StatusCode::NO_CONTENT)
}

fn disabled(hook: &WebhookRow) -> ApiError {
    ApiError::conflict(format!(
        "webhook {} is disabled; PATCH it with \"active\": true first",
        hook.id
    ))
}

/// Queues a `ping` delivery to the webhook. Needs `repo:write`.
#[utoipa::path(
    post,
    path = "/v1/repos/{owner}/{name}/webhooks/{id}/ping",
    tag = "webhooks",
    operation_id = "pingWebhook",
    params(WebhookPath),
    responses((status = 202, description = "A `ping` delivery is queued", body = Queued)),
)]
pub async fn ping(
    State(state): State<AppState>,
    caller: Caller,
    place: Place,
) -> Result<(StatusCode, Json<Queued>), ApiError> {
    let repo = place.owner(&state, &caller, Scope::RepoWrite).await?;
    let hook = find(&state, &repo, place.id()).await?;
    if !hook.active {
        return Err(disabled(&hook));
    }
    let events: Vec<String> = serde_json::from_str(&hook.events).unwrap_or_default();
    let event = hooks::payload::ping_event(&repo.repo_name(), &hook.id, &events);
    let body = hooks::payload::render(&event, &state.webhooks.payload);
    let delivery_id = hooks::new_delivery_id();
    state
        .store
        .insert_delivery(&NewDeliveryRow {
            id: &delivery_id,
            webhook_id: &hook.id,
            event_id: None,
            event_type: "ping",
            body: &body,
        })
        .await?;
    state.webhooks.wake();
    Ok((StatusCode::ACCEPTED, Json(Queued { delivery_id })))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Deliveries older than this `seq` (the last page's `next_before`).
    before: Option<i64>,
    /// At most this many deliveries, 1 to 100; 20 when absent.
    limit: Option<i64>,
}

fn attempt_view(row: AttemptRow) -> AttemptView {
    AttemptView {
        attempt: row.attempt,
        started_at: rfc3339_ms(row.started_at),
        duration_ms: row.duration_ms,
        request_headers: serde_json::from_str(&row.request_headers).unwrap_or(Value::Null),
        response_status: row.response_status,
        response_headers: serde_json::from_str(&row.response_headers).unwrap_or(Value::Null),
        response_body: String::from_utf8_lossy(&row.response_body).into_owned(),
        response_body_truncated: row.response_body_truncated,
        error: row.error,
        next_attempt_at: row.next_attempt_at.map(rfc3339_ms),
    }
}

async fn delivery_view(
    state: &AppState,
    row: DeliveryRow,
    with_payload: bool,
) -> Result<DeliveryView, ApiError> {
    let attempts = state.store.attempts(&row.id).await?;
    Ok(DeliveryView {
        payload: with_payload.then(|| serde_json::from_slice(&row.body).unwrap_or(Value::Null)),
        next_attempt_at: row
            .status
            .is_pending()
            .then(|| rfc3339_ms(row.next_attempt_at)),
        id: row.id,
        seq: row.seq,
        event_type: row.event_type,
        event_id: row.event_id,
        status: row.status,
        attempts: row.attempts,
        created_at: row.created_at,
        attempt_log: attempts.into_iter().map(attempt_view).collect(),
    })
}

/// The webhook's deliveries and their attempts, newest first.
#[utoipa::path(
    get,
    path = "/v1/repos/{owner}/{name}/webhooks/{id}/deliveries",
    tag = "webhooks",
    operation_id = "listDeliveries",
    params(WebhookPath, PageQuery),
    responses((status = 200, description = "Deliveries, newest first", body = DeliveryPage)),
)]
pub async fn deliveries(
    State(state): State<AppState>,
    caller: Caller,
    place: Place,
    Query(query): Query<PageQuery>,
) -> Result<Json<DeliveryPage>, ApiError> {
    let repo = place.owner(&state, &caller, Scope::RepoRead).await?;
    let hook = find(&state, &repo, place.id()).await?;
    let limit = query.limit.unwrap_or(20).clamp(1, 100);
    let rows = state
        .store
        .list_deliveries(&hook.id, query.before, limit)
        .await?;
    let next_before = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|row| row.seq))
        .flatten();
    let mut deliveries = Vec::with_capacity(rows.len());
    for row in rows {
        deliveries.push(delivery_view(&state, row, false).await?);
    }
    Ok(Json(DeliveryPage {
        deliveries,
        next_before,
    }))
}

/// One delivery, with the payload it sends.
#[utoipa::path(
    get,
    path = "/v1/repos/{owner}/{name}/webhooks/{id}/deliveries/{delivery_id}",
    tag = "webhooks",
    operation_id = "getDelivery",
    params(DeliveryPath),
    responses((status = 200, description = "The delivery with its payload", body = DeliveryView)),
)]
pub async fn delivery(
    State(state): State<AppState>,
    caller: Caller,
    place: Place,
) -> Result<Json<DeliveryView>, ApiError> {
    let repo = place.owner(&state, &caller, Scope::RepoRead).await?;
    let delivery_id = place.delivery_id();
    let hook = find(&state, &repo, place.id()).await?;
    let row = state
        .store
        .delivery(&hook.id, delivery_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("delivery {delivery_id} does not exist")))?;
    Ok(Json(delivery_view(&state, row, true).await?))
}

/// Sends a delivery's payload again, as a new delivery. Needs `repo:write`.
#[utoipa::path(
    post,
    path = "/v1/repos/{owner}/{name}/webhooks/{id}/deliveries/{delivery_id}/redeliver",
    tag = "webhooks",
    operation_id = "redeliver",
    params(DeliveryPath),
    responses((status = 202, description = "A new delivery of the same payload is queued", body = Queued)),
)]
pub async fn redeliver(
    State(state): State<AppState>,
    caller: Caller,
    place: Place,
) -> Result<(StatusCode, Json<Queued>), ApiError> {
    let repo = place.owner(&state, &caller, Scope::RepoWrite).await?;
    let delivery_id = place.delivery_id();
    let hook = find(&state, &repo, place.id()).await?;
    if !hook.active {
        return Err(disabled(&hook));
    }
    match state.store.redeliver(&hook.id, delivery_id).await? {
        Redelivery::Queued => {
            state.webhooks.wake();
            Ok((
                StatusCode::ACCEPTED,
                Json(Queued {
                    delivery_id: delivery_id.to_owned(),
                }),
            ))
        }
        Redelivery::NotFound => Err(ApiError::not_found(format!(
            "delivery {delivery_id} does not exist"
        ))),
        Redelivery::InFlight => Err(ApiError::conflict(format!(
            "delivery {delivery_id} is being attempted right now; try again in a moment"
        ))),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_contract_lists_every_event_type_a_filter_takes() {
        let kinds: Vec<&str> = hooks::EventKind::ALL
            .iter()
            .filter(|kind| **kind != hooks::EventKind::Ping)
            .map(|kind| kind.as_str())
            .collect();
        assert_eq!(kinds, api_types::webhooks::EVENT_TYPES);
    }
}
