//! Start-up reconciliation: find and clean what a crashed forge (or a killed
//! sandbox) left under a data directory.
//!
//! Steps, in order:
//! 1. Every sandbox directory: without a record (the forge died mid-create)
//!    → kill its cgroup, delete its layer and directory. With a record that
//!    says running/frozen but whose PID 1 is gone → kill leftovers, remove
//!    the cgroup, mark it `crashed` (its disk is kept: it can be resumed).
//!    PID 1 alive → left running and reported as adopted (the backend
//!    manages it through its cgroup and record; no in-memory state needed).
//!    Checkpoint images of a fork the crash interrupted are removed.
//! 2. Every cgroup under this data directory's parent without a sandbox →
//!    processes killed, group removed.
//! 3. Layers no record references → deleted (GC).
//! 4. Mount points (under `backend::mount_root`) of sandboxes that no
//!    longer exist → removed.
//!
//! Mounts need no step: a sandbox's mounts live only in its own mount
//! namespace and vanish with its last process. The layer store's loop mount
//! stays mounted for the next start.

use std::fs;
use std::path::Path;

use crate::backend::{BackendError, cgroup_parent, mount_root};
use crate::cgroup::CgroupLayout;
use crate::layers::LayerStore;
use crate::state::{STATE_FILE, SandboxRecord, Status, is_sandbox_pid};

/// What reconciliation found and did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReconcileReport {
    /// Sandboxes still running, left alone.
    pub adopted: Vec<String>,
    /// Sandboxes whose processes were gone; now `crashed` (disk kept).
    pub crashed: Vec<String>,
    /// Half-created sandboxes removed.
    pub removed: Vec<String>,
    /// Cgroups without a sandbox, emptied and removed.
    pub orphan_cgroups: Vec<String>,
    /// Layers no sandbox referenced, deleted.
    pub collected_layers: Vec<String>,
    /// What could not be cleaned, and why (the rest was cleaned regardless).
    pub failed: Vec<String>,
}

/// Reconcile `data_dir` (see the module docs). Idempotent.
pub fn reconcile(data_dir: &Path, layer_image_gib: u64) -> Result<ReconcileReport, BackendError> {
    let mut report = ReconcileReport::default();
    let layers = LayerStore::open(data_dir, layer_image_gib)?;
    let cgroups = CgroupLayout::probe()?;
    let parent = cgroup_parent(data_dir);
    let sandboxes = data_dir.join("sandboxes");
    fs::create_dir_all(&sandboxes).map_err(|source| BackendError::Io {
        path: sandboxes.clone(),
        source,
    })?;

    let mut known = Vec::new();
    let mut referenced = Vec::new();
    let entries = fs::read_dir(&sandboxes).map_err(|source| BackendError::Io {
        path: sandboxes.clone(),
        source,
    })?;
    for entry in entries.flatten() {
        let id = entry.file_name().to_string_lossy().into_owned();
        let dir = entry.path();
        let cgroup = cgroups.group(&parent, &id);
        if !dir.join(STATE_FILE).exists() {
            let removed = cgroup
                .kill_all()
                .and_then(|()| cgroup.remove())
                .map_err(BackendError::from)
                .and_then(|()| Ok(layers.delete(&id)?))
                .and_then(|()| {
                    fs::remove_dir_all(&dir).map_err(|source| BackendError::Io {
                        path: dir.clone(),
                        source,
                    })
                });
            match removed {
                Ok(()) => report.removed.push(id),
                Err(err) => report
                    .failed
                    .push(format!("half-created sandbox {id}: {err}")),
            }
            continue;
        }
        // Images of a fork the crash interrupted, and copies a restore was
        // reading, are of no further use.
        for stale in fs::read_dir(layers.images(&id))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = stale.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("fork-") || name.starts_with("restore-") {
                let _ = fs::remove_dir_all(stale.path());
            }
        }
        let mut record = SandboxRecord::load(&dir)?;
        referenced.push(record.top_layer.clone());
        referenced.extend(record.lower_layers.iter().cloned());
        known.push(id.clone());
        let live = matches!(record.status, Status::Running | Status::Frozen);
        if live && record.pid1.is_some_and(|pid| is_sandbox_pid(pid, &id)) {
            report.adopted.push(id);
            continue;
        }
        if cgroup.exists() {
            if cgroup.is_frozen() {
                cgroup.thaw()?;
            }
            cgroup.kill_all()?;
            cgroup.remove()?;
        }
        if live {
            record.status = Status::Crashed;
            record.pid1 = None;
            record.supervisor = None;
            record.save(&dir)?;
            report.crashed.push(id);
        }
    }

    for name in cgroups.list(&parent) {
        if known.contains(&name) {
            continue;
        }
        let cgroup = cgroups.group(&parent, &name);
        if cgroup.is_frozen() {
            cgroup.thaw()?;
        }
        cgroup.kill_all()?;
        cgroup.remove()?;
        report.orphan_cgroups.push(name);
    }

    if known.is_empty() {
        cgroups.remove_parent(&parent);
    }
    let (collected, failed) = layers.gc(&referenced)?;
    report.collected_layers = collected;
    report.failed.extend(failed);
    for owner in layers.images_owners()? {
        if !known.contains(&owner) {
            match layers.delete_images(&owner) {
                Ok(()) => report.collected_layers.push(format!("images of {owner}")),
                Err(err) => report.failed.push(format!("images of {owner}: {err}")),
            }
        }
    }
    for entry in fs::read_dir(mount_root(data_dir))
        .into_iter()
        .flatten()
        .flatten()
    {
        let id = entry.file_name().to_string_lossy().into_owned();
        if !known.contains(&id) {
            // Empty unless a launcher is mid-build, which only a live
            // sandbox (known) can have.
            let _ = fs::remove_dir(mount_root(data_dir).join(&id));
        }
    }
    Ok(report)
}
