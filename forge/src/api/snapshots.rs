//! `POST /v1/vms/{id}/snapshots` and `/v1/snapshots`: named snapshots of
//! VMs, which new VMs start from (`POST /v1/vms {"snapshot"}`).
//!
//! Who sees a snapshot: its creator, an admin of the repository its VM had
//! checked out, and forge admins (the rules of VMs). A template's image is
//! a snapshot too; it is listed with its template's name and deleted only
//! with its template.

use api_types::snapshots::{CreateSnapshot, SnapshotView};
use api_types::vms::{CreateVm, DevServerSpec, Kept};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::openapi::{SnapshotPath, VmPath};
use super::{ApiError, Body, created};
use crate::auth::{Caller, Scope};
use crate::server::AppState;
use crate::store::SnapshotRow;
use crate::vms::snapshots::{Origin, kept_of};

/// A snapshot's view: the row, the names it refers to and its footprint.
pub(super) async fn view(state: &AppState, row: SnapshotRow) -> Result<SnapshotView, ApiError> {
    let repo = match &row.repo_id {
        Some(id) => state.store.repo_by_id(id).await?.map(|r| r.full_name()),
        None => None,
    };
    let template = match &row.build_hash {
        Some(hash) => state.store.template_of_build(hash).await?,
        None => None,
    };
    let footprint = state.sandboxes.footprint(&row).await;
    let kept = kept_of(&row)
        .into_iter()
        .map(|kept| match kept {
            ::sandbox::Kept::Disk => Kept::Disk,
            ::sandbox::Kept::Memory => Kept::Memory,
            ::sandbox::Kept::Processes => Kept::Processes,
        })
        .collect();
    Ok(SnapshotView {
        id: row.id,
        name: row.name,
        backend: row.backend,
        source_vm: row.source_vm,
        repo,
        branch: row.branch,
        vcpus: row.vcpus,
        mem_mib: row.mem_mib,
        kept,
        note: row.note,
        template,
        disk_bytes: footprint.disk_bytes,
        saved_bytes: footprint.saved_bytes,
        created_at: row.created_at,
    })
}

/// The snapshot `key` (name or id) if the caller may see it; otherwise
/// `404`, as for a snapshot that does not exist.
async fn visible(state: &AppState, caller: &Caller, key: &str) -> Result<SnapshotRow, ApiError> {
    let missing = || ApiError::not_found(format!("snapshot {key} does not exist"));
    let row = state.store.snapshot(key).await?.ok_or_else(missing)?;
    let template_image = row.build_hash.is_some();
    if template_image || caller.may_use_vm(row.repo_id.as_deref(), Some(&row.created_by)) {
        Ok(row)
    } else {
        Err(missing())
    }
}

/// What `POST /v1/vms` starts from when it names a template or snapshot.
pub(super) struct Resolved {
    pub origin: Origin,
    /// The template's server, started as a dev server (not for warm ones).
    pub start: Option<DevServerSpec>,
}

/// The origin a create names, checked: at most one of `template` and
/// `snapshot`, which must exist and be the caller's to use.
pub(super) async fn origin_of(
    state: &AppState,
    caller: &Caller,
    request: &CreateVm,
) -> Result<Option<Resolved>, ApiError> {
    match (&request.template, &request.snapshot) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "give at most one of template and snapshot",
        )),
        (Some(name), None) => {
            let (origin, start) = crate::templates::origin(&state.store, name).await?;
            Ok(Some(Resolved { origin, start }))
        }
        (None, Some(key)) => {
            let snapshot = visible(state, caller, key).await?;
            Ok(Some(Resolved {
                origin: Origin {
                    snapshot,
                    template: None,
                    workdir: None,
                },
                start: None,
            }))
        }
        (None, None) => Ok(None),
    }
}

/// Keeps the VM's disk and, where the backend can, its memory and
/// processes (`kept` says which) as a snapshot; the VM keeps running.
#[utoipa::path(
    post,
    path = "/v1/vms/{id}/snapshots",
    tag = "snapshots",
    operation_id = "createSnapshot",
    params(VmPath),
    request_body = CreateSnapshot,
    responses((status = 201, description = "The snapshot, with what it kept", body = SnapshotView)),
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(request): Body<CreateSnapshot>,
) -> Result<(StatusCode, Json<SnapshotView>), ApiError> {
    caller.check(Scope::RepoWrite)?;
    super::vms::owned(&state, &caller, &id).await?;
    if !caller.is_admin() {
        state
            .sandboxes
            .check_snapshot_quota(&caller.token_id)
            .await?;
    }
    let row = state
        .sandboxes
        .snapshot(&id, request.name.as_deref(), &caller.token_id, None)
        .await?;
    Ok(created(view(&state, row).await?))
}

/// The snapshots the caller may see, oldest first, with their sizes.
#[utoipa::path(
    get,
    path = "/v1/snapshots",
    tag = "snapshots",
    operation_id = "listSnapshots",
    responses((status = 200, description = "The snapshots", body = Vec<SnapshotView>)),
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<SnapshotView>>, ApiError> {
    caller.check(Scope::RepoRead)?;
    let mut out = Vec::new();
    for row in state.store.snapshots(None).await? {
        let mine = row.build_hash.is_some()
            || caller.may_use_vm(row.repo_id.as_deref(), Some(&row.created_by));
        if mine {
            out.push(view(&state, row).await?);
        }
    }
    Ok(Json(out))
}

/// One snapshot by name or id.
#[utoipa::path(
    get,
    path = "/v1/snapshots/{key}",
    tag = "snapshots",
    operation_id = "getSnapshot",
    params(SnapshotPath),
    responses((status = 200, description = "The snapshot", body = SnapshotView)),
)]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Json<SnapshotView>, ApiError> {
    caller.check(Scope::RepoRead)?;
    let row = visible(&state, &caller, &key).await?;
    Ok(Json(view(&state, row).await?))
}

/// Deletes a snapshot and the space it takes; VMs started from it keep
/// running. A template's image goes only with its template.
#[utoipa::path(
    delete,
    path = "/v1/snapshots/{key}",
    tag = "snapshots",
    operation_id = "deleteSnapshot",
    params(SnapshotPath),
    responses((status = 204, description = "The snapshot is gone")),
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.check(Scope::RepoWrite)?;
    let row = visible(&state, &caller, &key).await?;
    if let Some(hash) = &row.build_hash {
        let template = state.store.template_of_build(hash).await?;
        return Err(ApiError::conflict(format!(
            "snapshot {key} is the image of template {}: delete the template instead",
            template.unwrap_or_default()
        )));
    }
    state.sandboxes.delete_snapshot(&row).await?;
    Ok(StatusCode::NO_CONTENT)
}
