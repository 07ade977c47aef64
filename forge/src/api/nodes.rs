//! `/v1/nodes`: sandbox nodes. Adding, listing and removing one needs
//! `admin`; `POST /v1/nodes/report` is the node's own, authenticated by the
//! token it got when added (see `crate::nodes`).

use api_types::nodes::{CreateNode, NodeReport, NodeReportAnswer, NodeState, NodeView};
use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;

use super::{ApiError, Body, created, presented_secret};
use crate::auth::{self, Caller, Scope};
use crate::nodes::{REPORT_EVERY, free_mib, is_up};
use crate::server::AppState;
use crate::store::{NodeRow, unix_now};

/// Longest key a node may report.
const MAX_KEY_BYTES: usize = 256;

/// Largest memory cap an admin may set on a node, in MiB (1 PiB).
const MAX_MEMORY_MIB: u64 = 1 << 30;

/// The secret a node presents: its token, checked by the handler.
pub struct NodeToken(String);

impl FromRequestParts<AppState> for NodeToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        presented_secret(parts)?
            .map(NodeToken)
            .ok_or_else(|| ApiError::unauthorized("a node token is required"))
    }
}

fn rfc3339(unix: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

async fn view(state: &AppState, row: NodeRow, token: Option<String>) -> Result<NodeView, ApiError> {
    let load = state.store.node_load(&row.id).await?;
    let node_state = match row.last_seen_unix {
        None => NodeState::New,
        Some(_) if is_up(&row, unix_now()) => NodeState::Up,
        Some(_) => NodeState::Lost,
    };
    let unsigned = |value: i64| u64::try_from(value).unwrap_or(0);
    Ok(NodeView {
        labels: row.labels(),
        labels_set: row.set_labels.is_some(),
        max_memory_mib: row.max_memory_bytes.map(|bytes| unsigned(bytes) >> 20),
        state: node_state,
        memory_bytes: unsigned(row.memory_bytes),
        free_memory_bytes: unsigned(row.free_memory_bytes),
        committed_mib: unsigned(load.committed_mib),
        available_mib: unsigned(free_mib(&row, load.committed_mib)),
        vcpus: u32::try_from(row.vcpus).unwrap_or(0),
        disk_bytes: unsigned(row.disk_bytes),
        free_disk_bytes: unsigned(row.free_disk_bytes),
        sandboxes: unsigned(load.sandboxes),
        last_seen_at: row.last_seen_unix.and_then(rfc3339),
        id: row.id,
        name: row.name,
        address: row.address,
        backend: row.backend,
        tls_sha256: row.tls_sha256,
        created_at: row.created_at,
        token,
    })
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let fits = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !fits {
        return Err(ApiError::bad_request(
            "a node name is 1 to 63 of a-z, 0-9 and -",
        ));
    }
    // `/v1/nodes/report` is the reports' route: a node of that name could
    // not be removed.
    if name == "report" {
        return Err(ApiError::bad_request(
            "\"report\" is reserved: choose another node name",
        ));
    }
    Ok(())
}

/// Whether the control plane may dial a node reported at `ip`: not an
/// address that names no host, many hosts, or a link-local service (a
/// cloud's metadata endpoint is one).
fn dialable(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast() || v4.is_link_local())
        }
        std::net::IpAddr::V6(v6) => {
            let link_local = (v6.segments()[0] & 0xffc0) == 0xfe80;
            !(v6.is_unspecified() || v6.is_multicast() || link_local)
                && v6.to_ipv4_mapped().is_none_or(|v4| dialable(v4.into()))
        }
    }
}

/// Adds a node. Needs `admin`.
#[utoipa::path(
    post,
    path = "/v1/nodes",
    tag = "nodes",
    operation_id = "createNode",
    request_body = CreateNode,
    responses(
        (status = 201, description = "The node, with its token in `token`: shown this once, stored only as a hash", body = NodeView),
        (status = 409, description = "A node of that name exists"),
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Body(request): Body<CreateNode>,
) -> Result<(StatusCode, Json<NodeView>), ApiError> {
    caller.check(Scope::Admin)?;
    check_name(&request.name)?;
    if let Some(labels) = &request.labels {
        crate::vms::check_labels(labels).map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    let max_memory_bytes = match request.max_memory_mib {
        None => None,
        Some(mib @ 1..=MAX_MEMORY_MIB) => Some(i64::try_from(mib << 20).unwrap_or(i64::MAX)),
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "max_memory_mib is 1 to {MAX_MEMORY_MIB}"
            )));
        }
    };
    let caps = crate::store::NodeCaps {
        labels: request.labels.clone(),
        max_memory_bytes,
    };
    let secret = auth::new_secret();
    let id = format!("nd_{}", uuid::Uuid::new_v4().simple());
    let row = match state
        .store
        .insert_node(&id, &request.name, &auth::hash_secret(&secret), &caps)
        .await
    {
        Err(crate::store::StoreError::Duplicate) => {
            return Err(ApiError::conflict(format!(
                "a node named {} exists",
                request.name
            )));
        }
        other => other?,
    };
    tracing::info!(node = %row.name, by = %caller.token_id, "node added");
    Ok(created(view(&state, row, Some(secret)).await?))
}

/// Every node, by name. Needs `admin`.
#[utoipa::path(
    get,
    path = "/v1/nodes",
    tag = "nodes",
    operation_id = "listNodes",
    responses((status = 200, description = "Every node, with what it last reported and what is placed on it", body = Vec<NodeView>)),
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<NodeView>>, ApiError> {
    caller.check(Scope::Admin)?;
    let mut views = Vec::new();
    for row in state.store.nodes().await? {
        views.push(view(&state, row, None).await?);
    }
    Ok(Json(views))
}

/// Removes a node that holds no sandbox. Needs `admin`.
#[utoipa::path(
    delete,
    path = "/v1/nodes/{name}",
    tag = "nodes",
    operation_id = "deleteNode",
    params(("name" = String, Path, description = "The node's name")),
    responses(
        (status = 204, description = "Removed: its token no longer works"),
        (status = 409, description = "Sandboxes are placed on it"),
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.check(Scope::Admin)?;
    let row = state
        .store
        .node_by_name(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no node is named {name}")))?;
    if !state.store.delete_node(&row.id).await? {
        let load = state.store.node_load(&row.id).await?;
        return Err(ApiError::conflict(format!(
            "node {name} holds {} sandboxes: delete them first",
            load.sandboxes
        )));
    }
    tracing::info!(node = %name, by = %caller.token_id, "node removed");
    Ok(StatusCode::NO_CONTENT)
}

/// A node's report of itself, every few seconds. Needs the node's token.
#[utoipa::path(
    post,
    path = "/v1/nodes/report",
    tag = "nodes",
    operation_id = "reportNode",
    request_body = NodeReport,
    responses(
        (status = 200, description = "Recorded; when to report next", body = NodeReportAnswer),
        (status = 401, description = "No node has this token"),
    ),
)]
pub async fn report(
    State(state): State<AppState>,
    NodeToken(secret): NodeToken,
    Body(report): Body<NodeReport>,
) -> Result<Json<NodeReportAnswer>, ApiError> {
    let Ok(address) = report.address.parse::<std::net::SocketAddr>() else {
        return Err(ApiError::bad_request(format!(
            "the address {:?} is not ip:port",
            report.address
        )));
    };
    if !dialable(address.ip()) {
        return Err(ApiError::bad_request(format!(
            "the address {address} is not one to dial: unspecified, multicast, \
             broadcast and link-local addresses (cloud metadata services among them) are refused"
        )));
    }
    if report.key.is_empty() || report.key.len() > MAX_KEY_BYTES {
        return Err(ApiError::bad_request(format!(
            "the key must be 1 to {MAX_KEY_BYTES} bytes"
        )));
    }
    if let Some(pin) = &report.tls_sha256
        && (pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(ApiError::bad_request(
            "tls_sha256 is a SHA-256 in hex (64 characters)",
        ));
    }
    crate::vms::check_labels(&report.labels).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let signed = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
    let recorded = crate::store::NodeReport {
        address: report.address,
        node_key: report.key,
        tls_sha256: report.tls_sha256.map(|pin| pin.to_ascii_lowercase()),
        backend: report.backend.chars().take(32).collect(),
        labels: report.labels,
        memory_bytes: signed(report.memory_bytes),
        free_memory_bytes: signed(report.free_memory_bytes),
        vcpus: i64::from(report.vcpus),
        disk_bytes: signed(report.disk_bytes),
        free_disk_bytes: signed(report.free_disk_bytes),
    };
    let row = state
        .store
        .report_node(&auth::hash_secret(&secret), &recorded, unix_now())
        .await?
        .ok_or_else(|| ApiError::unauthorized("no node has this token"))?;
    Ok(Json(NodeReportAnswer {
        node: row.name,
        report_every_secs: REPORT_EVERY.as_secs(),
    }))
}
