//! Start-up garbage collection of what destroyed sandboxes left behind.
//!
//! Run once, before the forge serves, in this order:
//! 1. The backend's own collection ([`::sandbox::Backend::collect_garbage`]):
//!    for containers, half-created sandbox directories, orphan cgroups,
//!    checkpoint images of interrupted forks, and disk layers no sandbox
//!    record references.
//! 2. Sandboxes the backend still has but neither the `vms` nor the
//!    `snapshots` table records (the forge died between creating a sandbox
//!    and recording it, or between forgetting a VM and destroying it):
//!    destroyed, with their disk layers and snapshots.
//!
//! Every removal is logged; nothing a recorded VM references is touched
//! (a crashed VM keeps its disk until it is deleted).

use super::{Sandboxes, VmError};

/// Collects, returning a line per thing removed.
pub(super) async fn collect(sandboxes: &Sandboxes) -> Result<Vec<String>, VmError> {
    let (backend, _) = sandboxes.ready()?;
    let mut removed = backend.collect_garbage().await?;
    for sandbox in backend.list().await? {
        if sandboxes.store.vm(&sandbox.id).await?.is_some()
            || sandboxes.store.is_snapshot_sandbox(&sandbox.id).await?
        {
            continue;
        }
        match backend.destroy(&sandbox.id).await {
            Ok(()) | Err(::sandbox::Error::NotFound(_)) => {
                removed.push(format!("sandbox {} that no VM records", sandbox.id));
            }
            Err(error) => {
                tracing::warn!(sandbox = %sandbox.id, error = %error, "an unrecorded sandbox could not be removed");
            }
        }
    }
    for what in &removed {
        tracing::info!(%what, "garbage collected at start-up");
    }
    Ok(removed)
}
