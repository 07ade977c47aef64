//! Pause, resume and fork of sandboxes, with and without CRIU.
//!
//! Without a working CRIU: pause to disk stops the processes and keeps the
//! disk; resume starts PID 1 afresh on it; fork snapshots the parent's top
//! layer (parent frozen meanwhile) and starts fresh processes. `kept` says
//! `["disk"]`.
//!
//! With CRIU: pause to disk dumps PID 1's tree into `<sandbox dir>/checkpoint`
//! (processes die with the dump) and resume restores it; fork freezes the
//! parent, dumps it leaving it stopped, snapshots its top layer once per
//! child, thaws it, and restores the dump into each child's own namespaces,
//! layer and cgroup. `kept` says `["disk", "memory", "processes"]`. If a dump
//! or restore fails, the operation falls back to the path without CRIU and
//! says so in `kept` (and `checkpoint_error` in the record).

use std::fs;
use std::path::Path;
use std::time::Instant;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{
    BackendError, Carried, Checkpoint, ContainerBackend, PauseMode, SandboxInfo, new_id, now_secs,
};
use crate::agent::Notice;
use crate::checkpoint::{self, AfterDump, TMPFS_SLACK_BYTES, images_bytes};
use crate::state::{Kept, SandboxRecord, Status};
use crate::timing;

const ALL: [Kept; 3] = [Kept::Disk, Kept::Memory, Kept::Processes];

/// How many children of one fork start at the same time.
const PARALLEL_STARTS: usize = 4;

impl ContainerBackend {
    /// Where sandbox `id`'s pause-to-disk checkpoint goes, in its images
    /// subvolume (see `layers`).
    pub(super) fn checkpoint_dir(&self, id: &str) -> std::path::PathBuf {
        self.layers.images(id).join("checkpoint")
    }

    /// The images subvolume of `record`, limited to its checkpoint cap.
    fn images_room(&self, record: &SandboxRecord) -> Result<std::path::PathBuf, String> {
        self.layers
            .ensure_images(&record.id, Self::checkpoint_cap(record))
            .map_err(|e| e.to_string())
    }

    /// CRIU and PID 1 when `record` can be checkpointed within the
    /// budget; otherwise `None` with the reason noted in the record.
    fn checkpointable<'a>(
        &'a self,
        record: &mut SandboxRecord,
    ) -> Option<(&'a crate::checkpoint::Criu, u32)> {
        let criu = self.criu.as_ref()?;
        if record.init.is_empty() {
            record.checkpoint_error =
                Some("PID 1 is the launcher's built-in reaper, a host binary".into());
            return None;
        }
        let expected = self.cgroup(&record.id).stats().memory_bytes + TMPFS_SLACK_BYTES;
        if let Some(reason) = self.config.checkpoint_budget.refuse(
            expected,
            Self::checkpoint_cap(record),
            self.checkpoints_in_use(),
            self.layers.root(),
        ) {
            record.checkpoint_error = Some(reason);
            return None;
        }
        Some((criu, record.pid1?))
    }

    /// The most a checkpoint of `record` may take.
    pub(super) fn checkpoint_cap(record: &SandboxRecord) -> u64 {
        record.limits.mem_mib.saturating_mul(1 << 20) + TMPFS_SLACK_BYTES
    }

    /// What every checkpoint and fork image on the host takes now (the
    /// hard-linked copies restores read cost nothing more).
    fn checkpoints_in_use(&self) -> u64 {
        self.layers
            .images_owners()
            .unwrap_or_default()
            .into_iter()
            .flat_map(|id| {
                fs::read_dir(self.layers.images(&id))
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .filter(|entry| {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                name == "checkpoint" || name.starts_with("fork-")
            })
            .map(|entry| images_bytes(&entry.path()))
            .sum()
    }

    /// Refuses `images` (and removes them) when they came out larger than
    /// `record`'s cap.
    fn within_cap(record: &SandboxRecord, images: &Path) -> Result<(), String> {
        let (size, cap) = (images_bytes(images), Self::checkpoint_cap(record));
        if size > cap {
            let _ = fs::remove_dir_all(images);
            return Err(format!(
                "the checkpoint took {} MiB, more than the cap of {} MiB",
                size >> 20,
                cap >> 20
            ));
        }
        Ok(())
    }

    /// Pause a running sandbox.
    pub fn pause(&self, id: &str, mode: PauseMode) -> Result<SandboxInfo, BackendError> {
        let lock = self.operation_lock(id);
        let _serialised = lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut record = self.refresh(id)?;
        match (mode, record.status) {
            (PauseMode::Memory, Status::Running) => {
                timing::timed("freeze", || self.cgroup(id).freeze())?;
                record.status = Status::Frozen;
            }
            (PauseMode::Memory, Status::Frozen) => {}
            (PauseMode::Disk, Status::Running | Status::Frozen) => {
                record.checkpoint = false;
                if let Some((criu, pid1)) = self.checkpointable(&mut record) {
                    let cgroup = self.cgroup(id);
                    if cgroup.is_frozen() {
                        cgroup.thaw()?;
                    }
                    let images = self.checkpoint_dir(id);
                    let dumped = self
                        .images_room(&record)
                        .and_then(|_| self.spec(&record).map_err(|e| e.to_string()))
                        .and_then(|spec| {
                            let log = self.sandbox_dir(id).join("dump.log");
                            timing::timed("dump", || {
                                criu.dump(&spec, pid1, &images, &log, None, AfterDump::Kill)
                            })
                            .map_err(|e| e.to_string())
                        })
                        .and_then(|()| Self::within_cap(&record, &images));
                    match dumped {
                        Ok(()) => {
                            checkpoint::record_stats(&images);
                            record.checkpoint = true;
                            record.checkpoint_error = None;
                            // Its processes run in its own range now,
                            // whatever checkpoint they were restored from.
                            record.checkpoint_ids = None;
                        }
                        Err(reason) => record.checkpoint_error = Some(reason),
                    }
                }
                timing::timed("stop", || self.stop_processes(&record))?;
                record.status = Status::PausedToDisk;
                record.pid1 = None;
                record.supervisor = None;
            }
            (PauseMode::Disk, Status::PausedToDisk) => {}
            (_, status) => {
                return Err(BackendError::WrongState {
                    id: id.to_owned(),
                    status,
                    needed: "running or paused",
                });
            }
        }
        record.save(&self.sandbox_dir(id))?;
        Ok(self.info(&record))
    }

    /// Start `record` from `checkpoint` when given and possible, else
    /// fresh. Returns what was kept.
    fn start_from(
        &self,
        record: &mut SandboxRecord,
        checkpoint: Option<Checkpoint<'_>>,
    ) -> Result<(SandboxInfo, Vec<Kept>), BackendError> {
        // A sandbox moved here with its processes is restored or not
        // started at all: its old copy still holds them, and a fresh start
        // here would have it dropped for one that lost them.
        let strict = record.restore_only && checkpoint.is_some();
        if strict && self.criu.is_none() {
            return Err(BackendError::Move(
                "this host has no working CRIU to restore the moved sandbox's processes".into(),
            ));
        }
        if let Some(checkpoint) = checkpoint.filter(|_| self.criu.is_some()) {
            match self.start(record.clone(), Some(checkpoint)) {
                Ok(info) => return Ok((info, ALL.to_vec())),
                Err(err) => {
                    self.stop_processes(record)?;
                    if strict {
                        return Err(BackendError::Move(format!(
                            "restoring the moved sandbox's processes here failed: {err}"
                        )));
                    }
                    record.checkpoint_error = Some(err.to_string());
                }
            }
        }
        record.checkpoint = false;
        let info = self.start(record.clone(), None)?;
        Ok((info, vec![Kept::Disk]))
    }

    /// Resume a paused (or crashed) sandbox; says what survived.
    pub fn resume(&self, id: &str) -> Result<Carried, BackendError> {
        let lock = self.operation_lock(id);
        let _serialised = lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut record = self.refresh(id)?;
        match record.status {
            Status::Running => Ok(Carried {
                sandbox: self.info(&record),
                kept: ALL.to_vec(),
                agent: None,
            }),
            Status::Frozen => {
                self.cgroup(id).thaw()?;
                record.status = Status::Running;
                record.save(&self.sandbox_dir(id))?;
                Ok(Carried {
                    sandbox: self.info(&record),
                    kept: ALL.to_vec(),
                    agent: self.notify(&record, Notice::Resumed)?,
                })
            }
            Status::PausedToDisk | Status::Crashed => {
                self.stop_processes(&record)?;
                let images = self.checkpoint_dir(id);
                let checkpoint = match record.checkpoint_ids.or(record.ids) {
                    Some(ids) if record.checkpoint && record.status == Status::PausedToDisk => {
                        Some(Checkpoint {
                            images: &images,
                            ids,
                        })
                    }
                    _ => None,
                };
                let (sandbox, kept) = self.start_from(&mut record, checkpoint)?;
                if images.exists() {
                    // A checkpoint is restored once: the processes moved on.
                    timing::timed("cleanup", || fs::remove_dir_all(&images)).ok();
                }
                let mut saved = crate::state::SandboxRecord::load(&self.sandbox_dir(id))?;
                saved.checkpoint = false;
                // Restored onto its own range: a later checkpoint is of
                // processes there.
                saved.checkpoint_ids = None;
                saved.restore_only = false;
                saved.checkpoint_error = record.checkpoint_error.clone();
                saved.save(&self.sandbox_dir(id))?;
                Ok(Carried {
                    sandbox,
                    kept,
                    agent: timing::timed("agent", || self.notify(&record, Notice::Resumed))?,
                })
            }
        }
    }

    /// Dump a running parent for a fork, leaving it frozen; `None` (with the
    /// reason recorded) when there is no CRIU or the dump fails.
    fn dump_for_fork(&self, parent: &mut SandboxRecord) -> Option<std::path::PathBuf> {
        let room = self.images_room(parent);
        self.dump_into(
            parent,
            room.map(|room| room.join(format!("fork-{}", new_id("sb")))),
        )
    }

    /// [`Self::dump_for_fork`] into `images` (or the reason there is no
    /// room for them).
    fn dump_into(
        &self,
        parent: &mut SandboxRecord,
        images: Result<std::path::PathBuf, String>,
    ) -> Option<std::path::PathBuf> {
        let (criu, pid1) = self.checkpointable(parent)?;
        let cgroup = self.cgroup(&parent.id);
        let images = match images {
            Ok(images) => images,
            Err(reason) => {
                parent.checkpoint_error = Some(reason);
                return None;
            }
        };
        let freezer = cgroup.freezer_v1_dir();
        let spec = match self.spec(parent) {
            Ok(spec) => spec,
            Err(err) => {
                parent.checkpoint_error = Some(err.to_string());
                return None;
            }
        };
        let log = self.sandbox_dir(&parent.id).join("dump.log");
        let dump = || {
            if freezer.is_some() {
                // Frozen here, CRIU does not wait for the freezer in 100 ms
                // steps; if this fails, CRIU freezes the group itself.
                let _ = timing::timed("freeze", || cgroup.freeze_for_checkpoint());
            }
            timing::timed("dump", || {
                criu.dump(
                    &spec,
                    pid1,
                    &images,
                    &log,
                    freezer.as_deref(),
                    AfterDump::Frozen,
                )
            })
        };
        let mut dumped = dump();
        if let Err(err) = &dumped
            && err.seize_timed_out()
        {
            // Now and then CRIU waits for good on a task of a busy
            // sandbox while it seizes them (one exiting just then, it
            // seems); the next try finds other tasks. Once more, from a
            // parent let run again. The first try's log stays beside.
            let _ = fs::copy(&log, log.with_extension("log.1"));
            if self.release_after_dump(&parent.id).is_ok() {
                dumped = dump();
            }
        }
        if dumped.is_ok() {
            checkpoint::record_stats(&images);
        }
        if let Err(err) = dumped {
            // The group may be left frozen (by us or by CRIU): let it run
            // before the fork goes on without images.
            parent.checkpoint_error = Some(match self.release_after_dump(&parent.id) {
                Ok(()) => err.to_string(),
                Err(release) => format!("{err}; releasing the parent failed: {release}"),
            });
            let _ = fs::remove_dir_all(&images);
            return None;
        }
        if let Err(reason) = Self::within_cap(parent, &images) {
            // The dump left the parent stopped: let it run before the fork
            // goes on without images.
            parent.checkpoint_error = Some(match self.release_after_dump(&parent.id) {
                Ok(()) => reason,
                Err(err) => format!("{reason}; releasing the parent failed: {err}"),
            });
            return None;
        }
        Some(images)
    }

    /// Let a parent run again after `dump_for_fork` (CRIU leaves its tasks
    /// frozen and stopped).
    fn release_after_dump(&self, id: &str) -> Result<(), BackendError> {
        let cgroup = self.cgroup(id);
        if let Some(freezer) = cgroup.freezer_v1_dir() {
            // CRIU froze through the v1 freezer; thaw it there.
            let _ = fs::write(freezer.join("freezer.state"), "THAWED");
        }
        if cgroup.is_frozen() {
            cgroup.thaw()?;
        }
        for pid in cgroup.pids() {
            // Tasks may be gone already.
            let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        }
        Ok(())
    }

    /// Fork `count` new sandboxes from `id`. Disk is always kept;
    /// processes and memory too where CRIU works (see the module docs). A
    /// running parent keeps running. A parent paused to disk stays so, and
    /// its checkpoint is restored into every child without being used up:
    /// such a parent is a snapshot that children start from, and forks of
    /// it run side by side (the operation lock is let go once the
    /// children's layers exist).
    pub fn fork(&self, id: &str, count: usize) -> Result<Vec<Carried>, BackendError> {
        let lock = self.operation_lock(id);
        let serialised = lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut parent = self.refresh(id)?;
        let cgroup = self.cgroup(id);
        let running = parent.status == Status::Running;
        let saved = parent.status == Status::PausedToDisk && parent.checkpoint;
        let images = if running {
            self.dump_for_fork(&mut parent)
        } else if saved {
            Some(self.checkpoint_dir(id))
        } else {
            None
        };
        if running && images.is_none() {
            timing::timed("freeze", || cgroup.freeze())?;
        }
        let disk = Instant::now();
        let mut children = Vec::with_capacity(count);
        let mut failure = None;
        for _ in 0..count {
            let child_id = new_id("sb");
            let made = self
                .prepare_dir(&child_id)
                .and_then(|()| Ok(self.layers.snapshot(&parent.top_layer, &child_id)?));
            match made {
                Ok(_) => children.push(child_id),
                Err(err) => {
                    self.discard(&child_id);
                    failure = Some(err);
                    break;
                }
            }
        }
        timing::since("disk", disk);
        if running {
            timing::timed("thaw", || {
                if images.is_some() {
                    self.release_after_dump(id)
                } else {
                    Ok(cgroup.thaw()?)
                }
            })?;
        }
        if !running {
            // The layers are taken; the parent does not change under the
            // children's starts.
            drop(serialised);
        }
        let mut started = Vec::with_capacity(children.len());
        let start = Instant::now();
        if failure.is_some() {
            for child_id in &children {
                self.discard(child_id);
            }
        } else {
            // Children start a few at a time: each is mostly waiting on the
            // kernel, btrfs and CRIU, so a fork of N takes far less than N
            // times a fork of one.
            for batch in children.chunks(PARALLEL_STARTS) {
                let results: Vec<_> = std::thread::scope(|scope| {
                    let handles: Vec<_> = batch
                        .iter()
                        .map(|child_id| {
                            let parent = &parent;
                            let checkpoint = images
                                .as_deref()
                                .zip(parent.checkpoint_ids.or(parent.ids))
                                .map(|(images, ids)| Checkpoint { images, ids });
                            scope.spawn(move || {
                                timing::collect(|| self.start_child(parent, child_id, checkpoint))
                            })
                        })
                        .collect();
                    handles.into_iter().map(|h| h.join()).collect()
                });
                let (results, phases): (Vec<_>, Vec<_>) = results
                    .into_iter()
                    .map(|joined| match joined {
                        Ok((result, phases)) => (Ok(result), phases),
                        Err(panic) => (Err(panic), Vec::new()),
                    })
                    .unzip();
                timing::add_slowest(phases);
                for (child_id, result) in batch.iter().zip(results) {
                    match result {
                        Ok(Ok(carried)) => started.push(carried),
                        Ok(Err(err)) => {
                            self.discard(child_id);
                            failure = Some(err);
                        }
                        Err(_) => {
                            self.discard(child_id);
                            failure = Some(BackendError::Launch {
                                id: child_id.clone(),
                                message: "starting the fork panicked".into(),
                            });
                        }
                    }
                }
            }
        }
        timing::since("start", start);
        if let Some(images) = images.as_ref().filter(|_| !saved) {
            timing::timed("cleanup", || fs::remove_dir_all(images)).ok();
        }
        if let Some(err) = failure {
            for carried in &started {
                self.discard(&carried.sandbox.id);
            }
            return Err(err);
        }
        Ok(started)
    }

    /// A copy of running sandbox `id` (which keeps running) that is never
    /// started: its top layer snapshotted and, where CRIU works, its
    /// processes dumped as the copy's checkpoint; the copy is left paused
    /// to disk. Forks of the copy restore that checkpoint (see [`Self::fork`]):
    /// this is how a snapshot is taken, without restoring and dumping again.
    pub fn save_copy(&self, id: &str) -> Result<Carried, BackendError> {
        let lock = self.operation_lock(id);
        let _serialised = lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut parent = self.refresh(id)?;
        if parent.status != Status::Running {
            return Err(BackendError::WrongState {
                id: id.to_owned(),
                status: parent.status,
                needed: "running",
            });
        }
        let copy_id = new_id("sb");
        self.prepare_dir(&copy_id)?;
        let made = (|| {
            let room = self
                .layers
                .ensure_images(&copy_id, Self::checkpoint_cap(&parent))
                .map_err(|e| e.to_string());
            let images = self.dump_into(&mut parent, room.map(|room| room.join("checkpoint")));
            if images.is_none() {
                self.cgroup(id).freeze()?;
            }
            let layer = self.layers.snapshot(&parent.top_layer, &copy_id);
            if images.is_some() {
                self.release_after_dump(id)?;
            } else {
                self.cgroup(id).thaw()?;
            }
            layer?;
            let record = SandboxRecord {
                checkpoint: images.is_some(),
                checkpoint_ids: images.as_ref().and(parent.ids),
                // It never runs: no id range of its own (its children take
                // theirs), so snapshots cannot use up the host's ranges.
                ..Self::copy_record(&parent, &copy_id, None)
            };
            record.save(&self.sandbox_dir(&copy_id))?;
            let kept = if record.checkpoint {
                ALL.to_vec()
            } else {
                vec![Kept::Disk]
            };
            Ok::<_, BackendError>(Carried {
                sandbox: self.info(&record),
                kept,
                agent: None,
            })
        })();
        if made.is_err() {
            self.discard(&copy_id);
        }
        made
    }

    /// The record of a copy of `parent` named `id` with id range `ids`,
    /// paused to disk, without a checkpoint yet.
    fn copy_record(
        parent: &SandboxRecord,
        id: &str,
        ids: Option<crate::spec::IdMap>,
    ) -> SandboxRecord {
        SandboxRecord {
            id: id.to_owned(),
            status: Status::PausedToDisk,
            pid1: None,
            supervisor: None,
            image_root: parent.image_root.clone(),
            top_layer: id.to_owned(),
            lower_layers: parent.lower_layers.clone(),
            limits: parent.limits.clone(),
            init: parent.init.clone(),
            env: parent.env.clone(),
            binds: parent.binds.clone(),
            agent: parent.agent,
            hostname: id.to_owned(),
            checkpoint: false,
            checkpoint_error: parent.checkpoint_error.clone(),
            forked_from: Some(parent.id.clone()),
            created_at_secs: now_secs(),
            ids,
            checkpoint_ids: None,
            agent_token: parent.agent_token.clone(),
            restore_only: false,
        }
    }

    fn start_child(
        &self,
        parent: &SandboxRecord,
        child_id: &str,
        checkpoint: Option<Checkpoint<'_>>,
    ) -> Result<Carried, BackendError> {
        let mut record = Self::copy_record(parent, child_id, Some(self.take_ids(child_id)?));
        // The snapshot of the parent's layer carried its run directory: the
        // console log restored processes reopen where they left it.
        let (sandbox, kept) = self.start_from(&mut record, checkpoint)?;
        let notice = Notice::Forked {
            hostname: child_id.to_owned(),
        };
        Ok(Carried {
            sandbox,
            kept,
            agent: timing::timed("agent", || self.notify(&record, notice))?,
        })
    }
}
