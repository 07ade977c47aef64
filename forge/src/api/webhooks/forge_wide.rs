//! `/v1/webhooks`: forge-wide subscriptions, admin only. They receive the
//! events of every repository and of sandboxes that belong to none (their
//! payloads carry no `repository` then). Each route is its repository
//! counterpart's handler under the forge's path: [`super::Place`] finds no
//! repository in it and requires `admin`.

use api_types::webhooks::{
    CreateWebhook, DeliveryPage, DeliveryView, Queued, UpdateWebhook, WebhookView,
};
use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;

use super::{PageQuery, Place};
use crate::api::openapi::{ForgeDeliveryPath, ForgeWebhookPath};
use crate::api::{ApiError, Body};
use crate::auth::Caller;
use crate::server::AppState;

/// Subscribes a URL to every event of the forge. Needs `admin`.
#[utoipa::path(
    post,
    path = "/v1/webhooks",
    tag = "webhooks",
    operation_id = "createForgeWebhook",
    request_body = CreateWebhook,
    responses((status = 201, description = "The webhook, with its signing secret in `secret`: shown this once", body = WebhookView)),
)]
pub async fn create(
    state: State<AppState>,
    caller: Caller,
    place: Place,
    body: Body<CreateWebhook>,
) -> Result<(StatusCode, Json<WebhookView>), ApiError> {
    super::create(state, caller, place, body).await
}

/// The forge-wide webhooks. Needs `admin`.
#[utoipa::path(
    get,
    path = "/v1/webhooks",
    tag = "webhooks",
    operation_id = "listForgeWebhooks",
    responses((status = 200, description = "The forge-wide webhooks, without secrets", body = Vec<WebhookView>)),
)]
pub async fn list(
    state: State<AppState>,
    caller: Caller,
    place: Place,
) -> Result<Json<Vec<WebhookView>>, ApiError> {
    super::list(state, caller, place).await
}

/// One forge-wide webhook. Needs `admin`.
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    operation_id = "getForgeWebhook",
    params(ForgeWebhookPath),
    responses((status = 200, description = "The webhook, without its secret", body = WebhookView)),
)]
pub async fn show(
    state: State<AppState>,
    caller: Caller,
    place: Place,
) -> Result<Json<WebhookView>, ApiError> {
    super::show(state, caller, place).await
}

/// Changes a forge-wide webhook. Needs `admin`.
#[utoipa::path(
    patch,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    operation_id = "updateForgeWebhook",
    params(ForgeWebhookPath),
    request_body = UpdateWebhook,
    responses((status = 200, description = "The webhook; with `secret` when the request rotated or set it", body = WebhookView)),
)]
pub async fn update(
    state: State<AppState>,
    caller: Caller,
    place: Place,
    body: Body<UpdateWebhook>,
) -> Result<Json<WebhookView>, ApiError> {
    super::update(state, caller, place, body).await
}

/// Deletes a forge-wide webhook. Needs `admin`.
#[utoipa::path(
    delete,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    operation_id = "deleteForgeWebhook",
    params(ForgeWebhookPath),
    responses((status = 204, description = "Deleted, with its deliveries")),
)]
pub async fn delete(
    state: State<AppState>,
    caller: Caller,
    place: Place,
) -> Result<StatusCode, ApiError> {
    super::delete(state, caller, place).await
}

/// Queues a `ping` delivery to a forge-wide webhook. Needs `admin`.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/ping",
    tag = "webhooks",
    operation_id = "pingForgeWebhook",
    params(ForgeWebhookPath),
    responses((status = 202, description = "A `ping` delivery is queued", body = Queued)),
)]
pub async fn ping(
    state: State<AppState>,
    caller: Caller,
    place: Place,
) -> Result<(StatusCode, Json<Queued>), ApiError> {
    super::ping(state, caller, place).await
}

/// A forge-wide webhook's deliveries, newest first. Needs `admin`.
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}/deliveries",
    tag = "webhooks",
    operation_id = "listForgeDeliveries",
    params(ForgeWebhookPath, PageQuery),
    responses((status = 200, description = "Deliveries, newest first", body = DeliveryPage)),
)]
pub async fn deliveries(
    state: State<AppState>,
    caller: Caller,
    place: Place,
    query: Query<PageQuery>,
) -> Result<Json<DeliveryPage>, ApiError> {
    super::deliveries(state, caller, place, query).await
}

/// One delivery of a forge-wide webhook, with its payload. Needs `admin`.
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}/deliveries/{delivery_id}",
    tag = "webhooks",
    operation_id = "getForgeDelivery",
    params(ForgeDeliveryPath),
    responses((status = 200, description = "The delivery with its payload", body = DeliveryView)),
)]
pub async fn delivery(
    state: State<AppState>,
    caller: Caller,
    place: Place,
) -> Result<Json<DeliveryView>, ApiError> {
    super::delivery(state, caller, place).await
}

/// Sends a delivery of a forge-wide webhook again. Needs `admin`.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
    tag = "webhooks",
    operation_id = "redeliverForge",
    params(ForgeDeliveryPath),
    responses((status = 202, description = "A new delivery of the same payload is queued", body = Queued)),
)]
pub async fn redeliver(
    state: State<AppState>,
    caller: Caller,
    place: Place,
) -> Result<(StatusCode, Json<Queued>), ApiError> {
    super::redeliver(state, caller, place).await
}
