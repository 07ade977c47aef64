//! Named snapshots: a VM's disk and, where the backend can, its memory and
//! processes, kept to start new VMs from.
//!
//! A snapshot is a sandbox of its own that is never resumed: taking one
//! saves a copy of the VM paused to disk (`Backend::snapshot`; the VM keeps
//! running); starting a VM from one forks that paused copy, whose saved
//! memory and processes are restored into each new VM and stay for the
//! next (see `ContainerBackend::fork`). So one snapshot starts any number of VMs,
//! side by side: each start holds the snapshot's lock shared, and only a
//! delete takes it exclusively. The `snapshots` table records them; the
//! start-up garbage collection keeps their sandboxes.

use std::collections::BTreeMap;

use ::sandbox::Kept;
use api_types::VmState;

use super::{NewVm, Sandboxes, VmError, check_labels, deadline, unix_now, vm_state};
use crate::store::{SnapshotRow, StoreError, VmRow};

/// Longest snapshot (and template) name.
pub const MAX_NAME_BYTES: usize = 63;
/// Snapshots one token that is not an admin may keep (templates' images
/// aside).
pub const MAX_SNAPSHOTS_PER_TOKEN: i64 = 50;

/// Checks a snapshot's or template's name: letters, digits, `.`, `_`, `-`,
/// starting with a letter or digit, at most [`MAX_NAME_BYTES`]. Names
/// never look like snapshot ids (`snap-…`), so a key means one thing.
pub fn check_name(what: &str, name: &str) -> Result<(), VmError> {
    let well_formed = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !well_formed {
        return Err(VmError::Invalid(format!(
            "{what} name {name:?} must be 1 to {MAX_NAME_BYTES} letters, digits, '.', '_' or '-', starting with a letter or digit"
        )));
    }
    if name.starts_with(ID_PREFIX) {
        return Err(VmError::Invalid(format!(
            "{what} name {name:?} may not start with {ID_PREFIX:?}, which snapshot ids use"
        )));
    }
    Ok(())
}

const ID_PREFIX: &str = "snap-";

/// What a new VM starts from instead of the default image.
#[derive(Debug, Clone)]
pub struct Origin {
    pub snapshot: SnapshotRow,
    /// The template whose image the snapshot is.
    pub template: Option<String>,
    /// Where the VM's commands run when they name no directory.
    pub workdir: Option<String>,
}

/// What the backend reports of a snapshot's footprint.
#[derive(Debug, Clone, Copy, Default)]
pub struct Footprint {
    pub disk_bytes: Option<u64>,
    pub saved_bytes: Option<u64>,
}

/// The `kept` column's spelling of what a snapshot holds.
pub fn kept_json(kept: &[Kept]) -> String {
    serde_json::to_string(kept).unwrap_or_else(|_| "[\"disk\"]".to_owned())
}

/// The kept list back from the column (only `disk` when unreadable).
pub fn kept_of(row: &SnapshotRow) -> Vec<Kept> {
    serde_json::from_str(&row.kept).unwrap_or_else(|_| vec![Kept::Disk])
}

impl Sandboxes {
    /// Refuses a token (not an admin) that keeps [`MAX_SNAPSHOTS_PER_TOKEN`]
    /// snapshots already.
    pub async fn check_snapshot_quota(&self, token: &str) -> Result<(), VmError> {
        let kept = self.store.count_snapshots_by(token).await?;
        if kept >= MAX_SNAPSHOTS_PER_TOKEN {
            return Err(VmError::Quota {
                what: "snapshots",
                live: kept as usize,
                quota: MAX_SNAPSHOTS_PER_TOKEN as usize,
                advice: "delete one",
            });
        }
        Ok(())
    }

    /// Takes a snapshot of VM `id` (which keeps running), named `name`
    /// when given, for token `by`; `build_hash` marks a template's image.
    pub async fn snapshot(
        &self,
        id: &str,
        name: Option<&str>,
        by: &str,
        build_hash: Option<&str>,
    ) -> Result<SnapshotRow, VmError> {
        let (backend, _) = self.ready()?;
        if let Some(name) = name {
            check_name("snapshot", name)?;
            if self.store.snapshot(name).await?.is_some() {
                return Err(VmError::Conflict(format!(
                    "a snapshot named {name} exists already"
                )));
            }
        }
        let lock = self.lock_of(id);
        let _guard = lock.write().await;
        self.running(id).await?;
        let source = self.refresh(id).await?;
        self.network.close(id).await;
        let copy = backend.snapshot(id).await?;
        let sandbox_id = copy.sandbox.id.clone();
        let kept = copy.kept.clone();
        let note = copy.note.clone().or_else(|| {
            (!kept.contains(&Kept::Memory)).then(|| {
                "the backend could not save memory and processes: VMs from this snapshot start its disk with fresh processes".to_owned()
            })
        });
        let row = SnapshotRow {
            id: format!(
                "{ID_PREFIX}{}",
                &uuid::Uuid::new_v4().simple().to_string()[..16]
            ),
            name: name.map(str::to_owned),
            sandbox_id: sandbox_id.clone(),
            backend: copy.sandbox.backend.to_string(),
            source_vm: Some(id.to_owned()),
            repo_id: source.repo_id.clone(),
            branch: source.branch.clone(),
            vcpus: source.vcpus,
            mem_mib: source.mem_mib,
            kept: kept_json(&kept),
            note,
            build_hash: build_hash.map(str::to_owned),
            created_by: by.to_owned(),
            created_at: crate::store::now(),
        };
        if let Err(error) = self.store.insert_snapshot(&row).await {
            let _ = backend.destroy(&sandbox_id).await;
            return Err(match error {
                StoreError::Duplicate => VmError::Conflict(format!(
                    "a snapshot named {} exists already",
                    name.unwrap_or_default()
                )),
                other => other.into(),
            });
        }
        tracing::info!(vm = id, snapshot = %row.id, kept = %row.kept, "snapshot taken");
        Ok(row)
    }

    /// The disk and saved memory a snapshot takes, as far as the backend
    /// knows.
    pub async fn footprint(&self, snapshot: &SnapshotRow) -> Footprint {
        let Ok((backend, _)) = self.ready() else {
            return Footprint::default();
        };
        match backend.stats(&snapshot.sandbox_id).await {
            Ok(stats) => Footprint {
                disk_bytes: stats.disk_bytes,
                saved_bytes: stats.saved_bytes,
            },
            Err(_) => Footprint::default(),
        }
    }

    /// Deletes a snapshot: its sandbox, then its row. Waits for the VMs
    /// starting from it.
    pub async fn delete_snapshot(&self, snapshot: &SnapshotRow) -> Result<(), VmError> {
        let (backend, _) = self.ready()?;
        let lock = self.lock_of(&snapshot.sandbox_id);
        let _guard = lock.write().await;
        match backend.destroy(&snapshot.sandbox_id).await {
            Ok(()) | Err(::sandbox::Error::NotFound(_)) => {}
            Err(error) => return Err(error.into()),
        }
        self.store.delete_snapshot(&snapshot.id).await?;
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&snapshot.sandbox_id);
        tracing::info!(snapshot = %snapshot.id, "snapshot deleted");
        Ok(())
    }

    /// A new VM as `request` asks, started from `origin`'s snapshot: its
    /// sizes and environment are the snapshot's.
    pub(super) async fn create_from(
        &self,
        request: NewVm,
        origin: Origin,
        announce: bool,
    ) -> Result<VmRow, VmError> {
        let (backend, _) = self.ready()?;
        let snapshot = &origin.snapshot;
        if !request.env.is_empty() {
            return Err(VmError::Invalid(
                "env cannot be set on a VM that starts from a snapshot or template: it has the snapshot's environment".into(),
            ));
        }
        check_labels(&request.labels)?;
        let expires_unix = request.ttl_secs.map(deadline).transpose()?;
        let lock = self.lock_of(&snapshot.sandbox_id);
        let _shared = lock.read().await;
        if self.store.snapshot(&snapshot.id).await?.is_none() {
            return Err(VmError::Missing(format!(
                "snapshot {} was deleted",
                snapshot.id
            )));
        }
        let _room = self.admit(1, snapshot.mem_mib.max(0) as u64).await?;
        let mut copies = backend.fork(&snapshot.sandbox_id, 1).await?;
        let Some(copy) = copies.pop() else {
            return Err(VmError::Conflict(format!(
                "the backend started no VM from snapshot {}",
                snapshot.id
            )));
        };
        let labels: BTreeMap<_, _> = request.labels;
        let row = VmRow {
            id: copy.sandbox.id.clone(),
            backend: copy.sandbox.backend.to_string(),
            state: vm_state(copy.sandbox.state),
            repo_id: request.repo_id,
            branch: request.branch,
            parent_id: None,
            vcpus: snapshot.vcpus,
            mem_mib: snapshot.mem_mib,
            persistent: request.persistent,
            idle_timeout_secs: request.idle_timeout_secs.map(|s| s as i64),
            created_by: Some(request.created_by),
            created_at: crate::store::now(),
            last_active_unix: unix_now(),
            labels: serde_json::to_string(&labels).unwrap_or_else(|_| "{}".to_owned()),
            expires_unix,
            snapshot_id: Some(snapshot.id.clone()),
            template: origin.template,
            workdir: origin.workdir,
        };
        if let Err(error) = self.store.insert_vm(&row).await {
            let _ = backend.destroy(&row.id).await;
            return Err(error.into());
        }
        if row.state == VmState::Crashed {
            tracing::warn!(vm = %row.id, snapshot = %snapshot.id, "a VM from a snapshot did not start");
        }
        if let Some(spec) = request.dev_server {
            self.dev_servers.add(&row.id, spec);
        }
        tracing::info!(vm = %row.id, snapshot = %snapshot.id, kept = ?copy.kept, "sandbox created from a snapshot");
        if announce {
            self.announce(&row, super::Lifecycle::Created, row.created_by.as_deref())
                .await;
        }
        Ok(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["py", "python-3.12", "a_b", "9lives"] {
            assert!(check_name("snapshot", good).is_ok(), "{good}");
        }
        let long = "a".repeat(MAX_NAME_BYTES + 1);
        for bad in [
            "",
            "-x",
            ".hidden",
            "a/b",
            "a b",
            "snap-1234",
            long.as_str(),
        ] {
            assert!(check_name("snapshot", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kept_round_trips_through_its_column() {
        let kept = vec![Kept::Disk, Kept::Memory, Kept::Processes];
        let json = kept_json(&kept);
        assert_eq!(json, r#"["disk","memory","processes"]"#);
        let row = SnapshotRow {
            id: "snap-1".into(),
            name: None,
            sandbox_id: "sb1".into(),
            backend: "container".into(),
            source_vm: None,
            repo_id: None,
            branch: None,
            vcpus: 1,
            mem_mib: 512,
            kept: json,
            note: None,
            build_hash: None,
            created_by: "t".into(),
            created_at: "now".into(),
        };
        assert_eq!(kept_of(&row), kept);
        assert_eq!(
            kept_of(&SnapshotRow {
                kept: "?".into(),
                ..row
            }),
            vec![Kept::Disk]
        );
    }
}
