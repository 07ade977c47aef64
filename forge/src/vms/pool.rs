//! Warm pools: sandboxes created ahead of demand and paused in memory,
//! handed out by a create that asks for nothing they lack, and refilled in
//! the background. A create served from a pool costs a resume (a thaw)
//! instead of a sandbox's start.
//!
//! - **Pools**: `default` holds sandboxes of the forge's image; a pool
//!   named after a template holds sandboxes started from its image (for a
//!   warm template, with its server running). Sizes come from
//!   `--warm-pool default=N,<template>=N` and from a template's own `pool`;
//!   the larger wins. A template that is not built yet (or whose build
//!   failed) is skipped until it is; a rebuilt template's pooled sandboxes
//!   are replaced, and a pool no template names any more is emptied.
//! - **What matches**: a create with no repository and no environment of
//!   its own; for `default`, no dev server and the pool's sizes (the API's
//!   defaults: 1 vCPU, 512 MiB, 2 GiB of disk); for a template, that
//!   template (its dev server, if any, is started at the hand-out). Its
//!   other settings (labels, deadline, persistence, idle timeout) are
//!   applied when it is handed out, and its creator becomes the caller.
//!   Anything else is created cold.
//! - **Caps**: pooled sandboxes are live (paused in memory), so they count
//!   against `--max-sandboxes` and the memory cap like any other; a pool
//!   refills only while a slot stays free for a cold create.
//! - **Book-keeping**: pooled sandboxes are rows of `vms` created by
//!   [`POOL_ACTOR`] with the label `forge/role: pool`, invisible to every
//!   token but an admin's. Those a previous run left are destroyed at
//!   start-up, and the pools fill again.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use ::sandbox::PauseMode;
use api_types::VmState;
use tokio::sync::Notify;

use super::lifecycle::Lifecycle;
use super::snapshots::{Origin, check_name};
use super::{NewVm, Sandboxes, VmError, check_labels, deadline, unix_now, vm_state};
use crate::store::VmRow;

/// The creator of pooled sandboxes.
pub const POOL_ACTOR: &str = "pool";

/// The label of a pooled sandbox (dropped when it is handed out).
pub const POOL_LABEL: (&str, &str) = ("forge/role", "pool");

/// The pool of the forge's own image.
pub const DEFAULT_POOL: &str = "default";

/// Sizes of the default pool's sandboxes (the API's defaults).
pub const POOL_VCPUS: u8 = 1;
pub const POOL_MEM_MIB: u64 = 512;
pub const POOL_DISK_MIB: u64 = 2048;

/// The largest pool a template's spec may ask for.
pub const MAX_SPEC_POOL: usize = 50;

/// How many sandboxes each pool keeps, by name.
pub type PoolTargets = BTreeMap<String, usize>;

/// A pooled sandbox, and the snapshot it started from (a template's).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pooled {
    vm: String,
    snapshot: Option<String>,
}

/// The pools: how many each keeps and the sandboxes ready in each.
#[derive(Default)]
pub struct WarmPool {
    /// From `--warm-pool`.
    configured: PoolTargets,
    /// From templates' specs.
    specs: Mutex<PoolTargets>,
    ready: Mutex<BTreeMap<String, VecDeque<Pooled>>>,
    /// Woken when one is taken or a target changes, so the refill starts
    /// at once.
    pub(super) taken: Notify,
}

impl WarmPool {
    pub fn new(configured: PoolTargets) -> WarmPool {
        WarmPool {
            configured,
            ..WarmPool::default()
        }
    }

    fn ready(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, VecDeque<Pooled>>> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn specs(&self) -> std::sync::MutexGuard<'_, PoolTargets> {
        self.specs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every pool with a target, and its target.
    pub fn targets(&self) -> PoolTargets {
        let mut targets = self.configured.clone();
        for (name, count) in self.specs().iter() {
            let target = targets.entry(name.clone()).or_default();
            *target = (*target).max(*count);
        }
        targets.retain(|_, count| *count > 0);
        targets
    }

    /// How many pool `name` keeps.
    pub fn target(&self, name: &str) -> usize {
        self.targets().get(name).copied().unwrap_or(0)
    }

    /// How many are ready in pool `name` now.
    pub fn len(&self, name: &str) -> usize {
        self.ready().get(name).map_or(0, VecDeque::len)
    }

    /// Sets (or with `None` removes) the pool template `name`'s spec asks for.
    pub fn set_spec_target(&self, name: &str, count: Option<usize>) {
        match count {
            Some(count) => self.specs().insert(name.to_owned(), count),
            None => self.specs().remove(name),
        };
        self.taken.notify_one();
    }

    /// Sets the pools every template's spec asks for, all at once: a
    /// template not named has none.
    pub fn set_spec_targets(&self, targets: PoolTargets) {
        let changed = {
            let mut specs = self.specs();
            let changed = *specs != targets;
            *specs = targets;
            changed
        };
        if changed {
            self.taken.notify_one();
        }
    }

    /// The oldest ready one of pool `name`, if any.
    fn take(&self, name: &str) -> Option<Pooled> {
        let taken = self.ready().get_mut(name)?.pop_front();
        if taken.is_some() {
            self.taken.notify_one();
        }
        taken
    }

    fn put(&self, name: &str, pooled: Pooled) {
        self.ready()
            .entry(name.to_owned())
            .or_default()
            .push_back(pooled);
    }

    /// Removes and returns the sandboxes of pool `name` that did not start
    /// from `snapshot` (a template rebuilt since), or of every pool
    /// without a target.
    fn stale(&self, current: &BTreeMap<String, Option<String>>) -> Vec<String> {
        let mut ready = self.ready();
        let mut out = Vec::new();
        for (name, pooled) in ready.iter_mut() {
            let keep = |p: &Pooled| current.get(name).is_some_and(|s| *s == p.snapshot);
            out.extend(pooled.iter().filter(|p| !keep(p)).map(|p| p.vm.clone()));
            pooled.retain(|p| keep(p));
        }
        out
    }

    /// Forgets `id` (destroyed or crashed while pooled).
    pub(super) fn forget(&self, id: &str) {
        for pooled in self.ready().values_mut() {
            pooled.retain(|p| p.vm != id);
        }
    }
}

/// Parses `--warm-pool`: `N` (the default pool) or `name=N` pairs,
/// comma-separated, where `name` is `default` or a template's.
pub fn parse_warm_pool(text: &str) -> Result<PoolTargets, String> {
    let mut targets = PoolTargets::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, count) = part.split_once('=').unwrap_or((DEFAULT_POOL, part));
        if name != DEFAULT_POOL {
            check_name("template", name).map_err(|e| e.to_string())?;
        }
        let count: usize = count
            .parse()
            .map_err(|_| format!("{count:?} is not a number of sandboxes"))?;
        targets.insert(name.to_owned(), count);
    }
    Ok(targets)
}

impl Sandboxes {
    /// The default pool's sandboxes ready now, and how many it keeps.
    pub fn warm_pool(&self) -> (usize, usize) {
        (self.pool.len(DEFAULT_POOL), self.pool.target(DEFAULT_POOL))
    }

    /// Every pool with a target: its name, target and sandboxes ready.
    pub fn warm_pools(&self) -> Vec<(String, usize, usize)> {
        self.pool
            .targets()
            .into_iter()
            .map(|(name, target)| {
                let ready = self.pool.len(&name);
                (name, target, ready)
            })
            .collect()
    }

    /// Sets the pool template `name`'s spec asks for (`None`: none).
    pub fn set_template_pool(&self, name: &str, count: Option<usize>) {
        self.pool.set_spec_target(name, count);
    }

    /// Sets every template's pool (name, size; a template with none, or
    /// not named, has no pool).
    pub fn set_template_pools(&self, pools: Vec<(String, Option<usize>)>) {
        self.pool.set_spec_targets(
            pools
                .into_iter()
                .filter_map(|(name, count)| Some((name, count?)))
                .collect(),
        );
    }

    /// A pooled sandbox made `request`'s, when it matches a pool (see the
    /// module docs) and one is ready. One that cannot be resumed, or that
    /// started from an older build of its template, is destroyed and the
    /// next tried.
    pub(super) async fn take_pooled(&self, request: &NewVm) -> Option<VmRow> {
        let common = request.repo_id.is_none()
            && request.env.is_empty()
            && request.node_labels.is_empty()
            && check_labels(&request.labels).is_ok();
        let defaults = request.dev_server.is_none()
            && request.vcpus == POOL_VCPUS
            && request.mem_mib == POOL_MEM_MIB
            && request.disk_mib == POOL_DISK_MIB;
        let (name, snapshot) = match &request.origin {
            None if defaults => (DEFAULT_POOL, None),
            None => return None,
            Some(origin) => (
                origin.template.as_deref()?,
                Some(origin.snapshot.id.clone()),
            ),
        };
        if !common {
            return None;
        }
        let expires_unix = request.ttl_secs.map(deadline).transpose().ok()?;
        while let Some(pooled) = self.pool.take(name) {
            let handed = if pooled.snapshot == snapshot {
                self.hand_out(&pooled.vm, request, expires_unix).await
            } else {
                Err(VmError::Conflict("its template was rebuilt".into()))
            };
            match handed {
                Ok(row) => return Some(row),
                Err(error) => {
                    tracing::warn!(vm = %pooled.vm, error = %error, "a pooled sandbox could not be handed out");
                    let _ = self.destroy(&pooled.vm).await;
                }
            }
        }
        None
    }

    async fn hand_out(
        &self,
        id: &str,
        request: &NewVm,
        expires_unix: Option<i64>,
    ) -> Result<VmRow, VmError> {
        let (backend, _) = self.ready()?;
        let lock = self.lock_of(id);
        let _guard = lock.write().await;
        let mut row = self.refresh(id).await?;
        match row.state {
            VmState::Paused | VmState::PausedToDisk => {
                let carried = backend.resume(id).await?;
                row.state = vm_state(carried.sandbox.state);
            }
            VmState::Running => {}
            VmState::Crashed => return Err(VmError::Crashed(id.to_owned())),
            VmState::Lost => return Err(VmError::Lost(id.to_owned())),
        }
        row.created_by = Some(request.created_by.clone());
        row.persistent = request.persistent;
        row.idle_timeout_secs = request.idle_timeout_secs.map(|s| s as i64);
        row.labels = serde_json::to_string(&request.labels).unwrap_or_else(|_| "{}".to_owned());
        row.expires_unix = expires_unix;
        row.created_at = crate::store::now();
        row.last_active_unix = unix_now();
        self.store.adopt_vm(&row).await?;
        if let Some(spec) = request.dev_server.clone() {
            self.dev_servers.add(&row.id, spec);
        }
        tracing::info!(vm = %row.id, template = ?row.template, "sandbox handed out from a warm pool");
        self.announce(&row, Lifecycle::Created, row.created_by.as_deref())
            .await;
        Ok(row)
    }

    /// Creates pooled sandboxes until every pool is full, while a slot (and
    /// the memory of one) stays free for a cold create; first destroys
    /// those of templates rebuilt or pools no longer asked for.
    pub async fn fill_pool(&self) {
        if self.ready().is_err() {
            return;
        }
        let targets = self.pool.targets();
        // Each pool's origin, read once per pass: none for the default.
        let mut origins = BTreeMap::new();
        for name in targets.keys() {
            let origin = if name == DEFAULT_POOL {
                None
            } else {
                match crate::templates::origin(&self.store, name).await {
                    Ok((origin, _)) => Some(origin),
                    // Not built (yet): nothing to fill it with.
                    Err(_) => continue,
                }
            };
            origins.insert(name.clone(), origin);
        }
        let current = origins
            .iter()
            .map(|(name, origin)| (name.clone(), origin.as_ref().map(|o| o.snapshot.id.clone())))
            .collect();
        for stale in self.pool.stale(&current) {
            tracing::info!(vm = %stale, "a pooled sandbox of an older template build is destroyed");
            let _ = self.destroy(&stale).await;
        }
        for (name, target) in targets {
            let Some(origin) = origins.get(&name) else {
                continue;
            };
            while self.pool.len(&name) < target {
                match self.fill_one(&name, origin.as_ref()).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(error) => {
                        tracing::warn!(pool = %name, error = %error, "filling a warm pool failed");
                        break;
                    }
                }
            }
        }
    }

    /// Adds one sandbox to pool `name`, started from `origin` (a
    /// template's) or the image; `false` when there is no room.
    async fn fill_one(&self, name: &str, origin: Option<&Origin>) -> Result<bool, VmError> {
        let (backend, _) = self.ready()?;
        let mem_mib = origin.map_or(POOL_MEM_MIB, |o| o.snapshot.mem_mib.max(0) as u64);
        let (live, mem) = self.store.live_vm_usage().await?;
        let room = (live.max(0) as usize) + 2 <= self.limits.max_live
            && (mem.max(0) as u64).saturating_add(2 * mem_mib) <= self.limits.max_live_mem_mib;
        if !room {
            return Ok(false);
        }
        let mut labels = BTreeMap::from([(POOL_LABEL.0.to_owned(), POOL_LABEL.1.to_owned())]);
        if name != DEFAULT_POOL {
            labels.insert("forge/template".to_owned(), name.to_owned());
        }
        let request = NewVm {
            vcpus: POOL_VCPUS,
            mem_mib: POOL_MEM_MIB,
            disk_mib: POOL_DISK_MIB,
            persistent: false,
            idle_timeout_secs: None,
            env: Vec::new(),
            repo_id: None,
            branch: None,
            created_by: POOL_ACTOR.to_owned(),
            dev_server: None,
            labels,
            node_labels: BTreeMap::new(),
            ttl_secs: None,
            origin: origin.cloned(),
        };
        let snapshot = request.origin.as_ref().map(|o| o.snapshot.id.clone());
        let row = match request.origin.clone() {
            Some(origin) => self.create_from(request, origin, false).await?,
            None => self.create_timed(request, false).await?,
        };
        // Its network link up before the pause, so its first exec after
        // the hand-out finds it ready.
        let paused = async {
            self.link(&row.id, &row).await?;
            let info = backend.pause(&row.id, PauseMode::Memory).await?;
            self.store
                .set_vm_state(&row.id, vm_state(info.state))
                .await?;
            Ok::<_, VmError>(())
        };
        match paused.await {
            Ok(()) => {
                self.pool.put(
                    name,
                    Pooled {
                        vm: row.id,
                        snapshot,
                    },
                );
                Ok(true)
            }
            Err(error) => {
                let _ = self.destroy(&row.id).await;
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_sizes_are_read_by_name_or_as_a_bare_number() {
        assert_eq!(
            parse_warm_pool("default=3"),
            Ok(PoolTargets::from([("default".into(), 3)]))
        );
        assert_eq!(
            parse_warm_pool("2"),
            Ok(PoolTargets::from([("default".into(), 2)]))
        );
        assert_eq!(
            parse_warm_pool("python=2, default=1"),
            Ok(PoolTargets::from([
                ("default".into(), 1),
                ("python".into(), 2)
            ]))
        );
        assert_eq!(parse_warm_pool(""), Ok(PoolTargets::new()));
        assert!(parse_warm_pool("default=many").is_err());
        assert!(parse_warm_pool("a b=1").is_err());
    }

    #[test]
    fn targets_take_the_larger_of_flag_and_spec_and_stale_ones_go() {
        let pool = WarmPool::new(PoolTargets::from([("default".into(), 2), ("py".into(), 1)]));
        pool.set_spec_target("py", Some(3));
        pool.set_spec_target("web", Some(1));
        assert_eq!(pool.target("py"), 3);
        assert_eq!(pool.target("web"), 1);
        pool.set_spec_target("web", None);
        assert_eq!(pool.target("web"), 0);
        let pooled = |vm: &str, snapshot: Option<&str>| Pooled {
            vm: vm.into(),
            snapshot: snapshot.map(str::to_owned),
        };
        pool.put("default", pooled("a", None));
        pool.put("py", pooled("b", Some("snap-old")));
        pool.put("py", pooled("c", Some("snap-new")));
        pool.put("gone", pooled("d", None));
        let current = BTreeMap::from([
            ("default".to_owned(), None),
            ("py".to_owned(), Some("snap-new".to_owned())),
        ]);
        assert_eq!(pool.stale(&current), ["d", "b"]);
        assert_eq!(pool.take("py"), Some(pooled("c", Some("snap-new"))));
        pool.forget("a");
        assert_eq!(pool.take("default"), None);
    }
}
