//! Sandbox nodes: hosts that run sandboxes for the control plane.
//!
//! - **Registration.** An admin adds a node by name (`POST /v1/nodes`) and
//!   gets its token once; only the token's SHA-256 is stored. `forge node
//!   run --control URL --token T --listen ADDR` on the node's host opens
//!   the host's sandbox backend, serves it with the node protocol
//!   (`sandbox::remote`) on `ADDR` under a key made at each start, and
//!   reports to the control plane every [`REPORT_EVERY`]
//!   (`POST /v1/nodes/report`, authenticated by the token): its address
//!   and key, backend, labels, memory, vCPUs and disk ([`agent`]).
//! - **Up or lost.** A node is up while its last report is younger than
//!   [`LOST_AFTER_SECS`]; nothing else marks it, so every control plane
//!   sharing the database sees the same.
//! - **Placement** ([`Placed`]). Once any node is registered, new sandboxes
//!   go to nodes only: to the up node with the most memory free, where free
//!   is the smaller of what the node reports and its capacity less the
//!   memory of the VMs placed on it that hold memory. Without a registered
//!   node, the control plane's own host runs them, as on one machine.
//! - **Routing.** `sandbox_nodes` records which node holds each sandbox;
//!   every operation on a sandbox goes to its node, forks and snapshots
//!   stay there (a fork the node has no memory for is refused, saying so;
//!   a parent paused to disk moves first to a node with room for it and
//!   its copies, [`Backend::make_room_for_fork`]). A sandbox on a node that is not up fails at once, naming the
//!   node and how long it has been silent.
//! - **Strays.** A control plane that dies between a node making a sandbox
//!   and recording it leaves the sandbox on the node, recorded nowhere.
//!   Every [`STRAYS_EVERY`] the control plane lists each up node's
//!   sandboxes; one that no VM or snapshot records as on that node, seen
//!   so again [`STRAY_GRACE`] later, is destroyed ([`Placed`]'s
//!   [`Backend::collect_strays`]). The grace is far longer than the
//!   moment between a node answering and the record being written.
//! - **Snapshots kept off the node** ([`stored`]). With a snapshot store,
//!   each sandbox a node pauses to disk is also uploaded there; when its
//!   node is lost it is not marked `lost` but resumes (or moves) on
//!   another node from the stored copy.

pub mod agent;
pub mod stored;

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::sandbox::remote::RemoteBackend;
use ::sandbox::{
    AgentStream, Backend, BackendKind, BoxFuture, Carried, Command, DirEntry, Error, ExecStream,
    FileStream, Output, PauseMode, PortStream, SandboxInfo, Spec, Stats,
};

use crate::store::{NodeRow, Store, unix_now};

/// How long the resume of a sandbox moved to another node may take before
/// the move is undone: well within [`STRAY_GRACE`], so that the old copy
/// is still there to go back to.
const MOVED_RESUME_WAIT: Duration = Duration::from_secs(40);

/// How long a resume, move or destroy waits for the sandbox's snapshot
/// upload to stop.
const STOP_UPLOAD_WAIT: Duration = Duration::from_secs(10);

/// How often a node reports.
pub const REPORT_EVERY: Duration = Duration::from_secs(2);

/// A node whose last report is older than this is lost.
pub const LOST_AFTER_SECS: i64 = 10;

/// Longest sandbox id the control plane takes from a node.
const MAX_SANDBOX_ID: usize = 64;

/// How often the control plane looks for stray sandboxes on the nodes.
pub const STRAYS_EVERY: Duration = Duration::from_secs(30);

/// How long a sandbox on a node stays recorded nowhere before it is
/// destroyed as a stray.
pub const STRAY_GRACE: Duration = Duration::from_secs(60);

/// Whether `node` reported recently enough to be up at `now` (unix s).
pub fn is_up(node: &NodeRow, now: i64) -> bool {
    node.last_seen_unix
        .is_some_and(|seen| now.saturating_sub(seen) < LOST_AFTER_SECS)
}

/// Whether `node` has every label in `wanted`; `backend` is every node's
/// (its kind, as reported).
pub fn has_labels(node: &NodeRow, wanted: &BTreeMap<String, String>) -> bool {
    let labels = node.labels();
    wanted.iter().all(|(key, value)| {
        labels.get(key) == Some(value)
            || (key == "backend" && node.backend.as_deref() == Some(value.as_str()))
    })
}

/// Memory a node has for one more sandbox, in MiB, given what the control
/// plane placed there (`committed_mib`).
pub fn free_mib(node: &NodeRow, committed_mib: i64) -> i64 {
    let reported = node.free_memory_bytes >> 20;
    let unclaimed = (node.memory_bytes >> 20).saturating_sub(committed_mib);
    reported.min(unclaimed).max(0)
}

/// How the control plane places sandboxes on nodes.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// The host runs no sandboxes itself (`--sandbox-backend nodes`).
    pub nodes_only: bool,
    /// Where snapshots of sandboxes paused to disk on nodes are kept.
    pub snapshots: Option<Arc<stored::SnapshotStore>>,
    /// The largest disk a sandbox may have, in MiB: the bound of one
    /// brought back from the snapshot store.
    pub max_disk_mib: u64,
}

/// The host's sandboxes made [`Placed`]: the same host backend while no
/// node is registered, nodes' once one is. With `nodes_only` the host runs
/// none itself (`--sandbox-backend nodes`); otherwise a host that runs no
/// sandboxes stays without (its VM API answers 503 with the reason).
pub fn placed(
    host: crate::vms::Availability,
    store: &Store,
    placement: Placement,
) -> crate::vms::Availability {
    match host {
        _ if placement.nodes_only => crate::vms::Availability::Ready {
            backend: Arc::new(Placed::new(None, store.clone(), placement)),
            // Nodes start sandboxes from their own images.
            image: ::sandbox::Image::root("/nonexistent/sandbox-nodes-only"),
            reason: "sandboxes run on sandbox nodes only (--sandbox-backend nodes)".into(),
        },
        crate::vms::Availability::Ready {
            backend,
            image,
            reason,
        } => crate::vms::Availability::Ready {
            backend: Arc::new(Placed::new(Some(backend), store.clone(), placement)),
            image,
            reason,
        },
        unavailable => unavailable,
    }
}

/// The sizes a sandbox moved to another node lands with: its vCPUs and
/// memory as recorded, and its disk quota (which travels with it) within
/// `max_disk_mib`, the largest any sandbox may have.
pub fn sizes_of(vcpus: i64, mem_mib: i64, max_disk_mib: u64) -> Spec {
    let mut sizes = Spec::new(::sandbox::Image::root(""));
    sizes.vcpus = u8::try_from(vcpus).unwrap_or(u8::MAX);
    sizes.mem_mib = u64::try_from(mem_mib).unwrap_or(0);
    sizes.disk_mib = max_disk_mib;
    sizes
}

/// Uploads the export of sandbox `id` (paused to disk on `node`) to the
/// snapshot store, and records it under `token` if that is still the
/// sandbox's upload; else removes what it wrote.
async fn store_snapshot(
    store: Store,
    snapshots: Arc<stored::SnapshotStore>,
    backend: Arc<dyn Backend>,
    (id, node, token): (String, String, String),
    limit: u64,
    stop: tokio_util::sync::CancellationToken,
) {
    let Some(_turn) = snapshots.turn(&stop).await else {
        tracing::info!(sandbox = %id, %node, "a snapshot upload was stopped before its turn");
        return;
    };
    let started = Instant::now();
    let key = snapshots.key(&id, &token);
    let outcome = async {
        let stream = tokio::select! {
            stream = backend.export(&id) => stream?,
            () = stop.cancelled() => return Err(Error::Invalid("the upload was stopped".into())),
        };
        let stored = snapshots.upload(&key, stream, limit, &stop).await?;
        let recorded = store
            .finish_snapshot_upload(&id, &token, &stored)
            .await
            .map_err(store_error)?;
        Ok::<_, Error>((stored.bytes, recorded))
    }
    .await;
    match outcome {
        Ok((bytes, true)) => {
            tracing::info!(sandbox = %id, %node, bytes, ms = started.elapsed().as_millis() as u64, %key, "snapshot stored");
        }
        Ok((_, false)) => {
            tracing::info!(sandbox = %id, %node, "the sandbox changed while its snapshot was uploaded: the upload is dropped");
            snapshots.remove(&key).await;
        }
        Err(error) if stop.is_cancelled() => {
            tracing::info!(sandbox = %id, %node, %error, "a snapshot upload was stopped");
        }
        Err(error) => {
            tracing::warn!(sandbox = %id, %node, %error, "the snapshot could not be stored: if its node is lost, it is lost with it");
        }
    }
}

/// The sandbox backend the forge uses once nodes may exist: the host's own
/// backend, and every node's behind the node protocol.
pub struct Placed {
    /// This host's backend; `None` when it runs no sandboxes itself.
    local: Option<Arc<dyn Backend>>,
    store: Store,
    /// Each node's caller, with the address and key it was made for.
    remotes: Mutex<HashMap<String, Remote>>,
    /// Sandboxes found on a node (its id, theirs) that nothing records,
    /// with when they were first found so.
    strays: Mutex<HashMap<(String, String), Instant>>,
    placement: Placement,
    /// Uploads to the snapshot store in flight, by sandbox.
    uploads: Mutex<HashMap<String, Upload>>,
}

/// Where a moving sandbox comes from.
enum Source {
    /// Its node, up.
    Node(Arc<dyn Backend>),
    /// Its copy in the snapshot store (its node is lost).
    Stored(Arc<stored::SnapshotStore>, crate::store::StoredSnapshot),
}

/// An upload to the snapshot store in flight.
struct Upload {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Remote {
    address: String,
    key: String,
    tls_sha256: Option<String>,
    backend: Arc<RemoteBackend>,
}

fn store_error(error: crate::store::StoreError) -> Error {
    Error::Invalid(format!("the forge's database failed: {error}"))
}

fn node_error(node: &str, message: impl Into<String>) -> Error {
    Error::Node {
        node: node.to_owned(),
        message: message.into(),
    }
}

impl Placed {
    fn new(local: Option<Arc<dyn Backend>>, store: Store, placement: Placement) -> Self {
        Self {
            local,
            store,
            remotes: Mutex::default(),
            strays: Mutex::default(),
            placement,
            uploads: Mutex::default(),
        }
    }

    /// This host's backend, for sandbox `id` that no node holds.
    fn host(&self, id: &str) -> Result<&Arc<dyn Backend>, Error> {
        self.local
            .as_ref()
            .ok_or_else(|| Error::NotFound(id.to_owned()))
    }

    fn remotes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Remote>> {
        // Plain handles: a panic cannot leave the map inconsistent.
        self.remotes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn strays(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Instant>> {
        // Plain values: a panic cannot leave the map inconsistent.
        self.strays.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the forge records sandbox `id` as on node `node_id`: placed
    /// there, and a VM's or a snapshot's.
    async fn records(&self, id: &str, node_id: &str) -> Result<bool, Error> {
        let placed = self.store.sandbox_node(id).await.map_err(store_error)?;
        if placed.as_deref() != Some(node_id) {
            return Ok(false);
        }
        Ok(self.store.vm(id).await.map_err(store_error)?.is_some()
            || self
                .store
                .is_snapshot_sandbox(id)
                .await
                .map_err(store_error)?)
    }

    /// Each up node that answers, with the sandboxes it holds.
    async fn listings(
        &self,
    ) -> Result<Vec<(NodeRow, Arc<RemoteBackend>, Vec<SandboxInfo>)>, Error> {
        let mut listings = Vec::new();
        for node in self.store.nodes().await.map_err(store_error)? {
            let Ok(remote) = self.remote(&node).await else {
                continue;
            };
            match remote.list().await {
                Ok(listed) => listings.push((node, remote, listed)),
                Err(error) => {
                    tracing::warn!(node = %node.name, error = %error, "a node did not list its sandboxes");
                }
            }
        }
        Ok(listings)
    }

    /// [`Backend::collect_strays`] over every up node (the strays of one
    /// that is not up wait).
    async fn collect_node_strays(&self, grace: Duration) -> Result<Vec<String>, Error> {
        let now = Instant::now();
        let mut unrecorded = HashSet::new();
        let mut removed = Vec::new();
        for (node, remote, listed) in self.listings().await? {
            for info in listed {
                if self.records(&info.id, &node.id).await? {
                    continue;
                }
                let key = (node.id.clone(), info.id.clone());
                unrecorded.insert(key.clone());
                // Destroyed when seen so twice, `grace` apart.
                let first = match self.strays().entry(key.clone()) {
                    Entry::Occupied(seen) => *seen.get(),
                    Entry::Vacant(unseen) => {
                        unseen.insert(now);
                        continue;
                    }
                };
                if now.duration_since(first) < grace {
                    continue;
                }
                match remote.destroy(&info.id).await {
                    Ok(()) | Err(Error::NotFound(_)) => {
                        if self
                            .store
                            .sandbox_node(&info.id)
                            .await
                            .map_err(store_error)?
                            .as_deref()
                            == Some(node.id.as_str())
                        {
                            self.store
                                .unplace_sandbox(&info.id)
                                .await
                                .map_err(store_error)?;
                        }
                        unrecorded.remove(&key);
                        removed.push(format!(
                            "sandbox {} on node {} that no VM records",
                            info.id, node.name
                        ));
                    }
                    Err(error) => {
                        tracing::warn!(sandbox = %info.id, node = %node.name, error = %error, "a stray sandbox could not be destroyed");
                    }
                }
            }
        }
        // What was not found so this time starts over when it is again.
        self.strays().retain(|key, _| unrecorded.contains(key));
        if let Some(snapshots) = self
            .placement
            .snapshots
            .as_ref()
            .filter(|snapshots| snapshots.orphans_due())
        {
            // Uploads in flight name theirs too: their object may be
            // complete a moment before its record is.
            let named: HashSet<String> = self
                .store
                .stored_snapshot_records()
                .await
                .map_err(store_error)?
                .into_iter()
                .map(|(id, token, key)| key.unwrap_or_else(|| snapshots.key(&id, &token)))
                .collect();
            match snapshots.collect_orphans(&named).await {
                Ok(orphans) => removed.extend(orphans),
                Err(error) => {
                    tracing::warn!(%error, "the snapshot store's orphans could not be collected");
                }
            }
        }
        Ok(removed)
    }

    /// The caller of `node`, made again when it restarted (a new key) or
    /// moved.
    async fn remote(&self, node: &NodeRow) -> Result<Arc<RemoteBackend>, Error> {
        let now = unix_now();
        if !is_up(node, now) {
            let silent = node
                .last_seen_unix
                .map(|seen| format!("has not reported for {} s", now.saturating_sub(seen)))
                .unwrap_or_else(|| "has never reported".to_owned());
            return Err(node_error(
                &node.name,
                format!("the node is lost: it {silent}"),
            ));
        }
        let (Some(address), Some(key)) = (&node.address, &node.node_key) else {
            return Err(node_error(
                &node.name,
                "the node has not said where it serves",
            ));
        };
        let kept = self.remotes().get(&node.id).cloned();
        if let Some(kept) = kept
            && kept.address == *address
            && kept.key == *key
            && kept.tls_sha256 == node.tls_sha256
        {
            return Ok(kept.backend);
        }
        let addr: SocketAddr = address.parse().map_err(|_| {
            node_error(
                &node.name,
                format!("its address {address:?} is not host:port"),
            )
        })?;
        let backend = match &node.tls_sha256 {
            Some(pin) => RemoteBackend::connect_tls(&node.name, addr, key.clone(), pin).await?,
            // Its key would cross the network in clear.
            None if !addr.ip().is_loopback() => {
                return Err(node_error(
                    &node.name,
                    format!("it serves without TLS on {addr}, which is not loopback: refused"),
                ));
            }
            None => RemoteBackend::connect(&node.name, addr, key.clone()).await?,
        };
        let backend = Arc::new(backend);
        self.remotes().insert(
            node.id.clone(),
            Remote {
                address: address.clone(),
                key: key.clone(),
                tls_sha256: node.tls_sha256.clone(),
                backend: backend.clone(),
            },
        );
        Ok(backend)
    }

    /// The backend holding sandbox `id`, and its node when on a node.
    async fn route(&self, id: &str) -> Result<(Arc<dyn Backend>, Option<NodeRow>), Error> {
        let Some(node) = self.holder(id).await? else {
            return Ok((self.host(id)?.clone(), None));
        };
        let remote: Arc<dyn Backend> = self.remote(&node).await?;
        Ok((remote, Some(node)))
    }

    async fn backend_of(&self, id: &str) -> Result<Arc<dyn Backend>, Error> {
        Ok(self.route(id).await?.0)
    }

    /// The node a new sandbox of `mem_mib` goes to (not node `except`);
    /// `None`: this host (no node is registered).
    async fn choose(
        &self,
        mem_mib: u64,
        wanted: &BTreeMap<String, String>,
        except: Option<&str>,
    ) -> Result<Option<NodeRow>, Error> {
        let mut nodes = self.store.nodes().await.map_err(store_error)?;
        nodes.retain(|node| Some(node.id.as_str()) != except);
        if nodes.is_empty() && wanted.is_empty() {
            return Ok(None);
        }
        let now = unix_now();
        let up: Vec<&NodeRow> = nodes.iter().filter(|n| is_up(n, now)).collect();
        let matching: Vec<&NodeRow> = up
            .iter()
            .copied()
            .filter(|n| has_labels(n, wanted))
            .collect();
        if !up.is_empty() && matching.is_empty() {
            let wanted: Vec<String> = wanted.iter().map(|(k, v)| format!("{k}={v}")).collect();
            return Err(node_error(
                "(any)",
                format!(
                    "none of the {} up has the labels {}",
                    up.len(),
                    wanted.join(", ")
                ),
            ));
        }
        let mut best: Option<(i64, i64, NodeRow)> = None;
        for node in matching {
            let load = self.store.node_load(&node.id).await.map_err(store_error)?;
            let free = free_mib(node, load.committed_mib);
            let better = match &best {
                None => true,
                Some((best_free, best_count, _)) => {
                    free > *best_free || (free == *best_free && load.sandboxes < *best_count)
                }
            };
            if better {
                best = Some((free, load.sandboxes, node.clone()));
            }
        }
        let Some((free, _, node)) = best else {
            return Err(node_error(
                "(any)",
                format!(
                    "none is up: {} registered, none reported in the last {LOST_AFTER_SECS} s",
                    nodes.len()
                ),
            ));
        };
        if u64::try_from(free).unwrap_or(0) < mem_mib {
            return Err(node_error(
                &node.name,
                format!(
                    "the most memory free on an up node is its {free} MiB, \
                     less than the {mem_mib} MiB asked"
                ),
            ));
        }
        Ok(Some(node))
    }

    /// [`Backend::relocate`]: export from the node holding `id` (or, when
    /// the snapshot store has its copy, read that), import on `to` (or the
    /// up node of the same backend with the most memory free), record it
    /// there, resume it there, then destroy the old copy (when its node is
    /// up; else the stray collection does once it is). Until the new copy
    /// runs, the old one is the sandbox: a failure on the way leaves it as
    /// it was (and the new node's copy is removed).
    async fn relocate_to(
        &self,
        id: &str,
        to: Option<&str>,
        sizes: Spec,
    ) -> Result<(String, Carried), Error> {
        let from = self.holder(id).await?.ok_or_else(|| {
            Error::Invalid(format!(
                "sandbox {id} runs on the control plane's own host, not on a node: it cannot move"
            ))
        })?;
        self.stop_upload(id).await;
        // The old node sends it while it is up; once it is lost, the
        // snapshot store's copy does, if there is one.
        let source = match self.remote(&from).await {
            Ok(remote) => Source::Node(remote),
            Err(error) => match self.stored(id).await? {
                Some((snapshots, snapshot)) if !is_up(&from, unix_now()) => {
                    Source::Stored(snapshots, snapshot)
                }
                _ => return Err(error),
            },
        };
        let mem_mib = self.mem_mib_of(id).await?;
        let target = match to {
            Some(name) => self
                .store
                .node_by_name(name)
                .await
                .map_err(store_error)?
                .ok_or_else(|| Error::Invalid(format!("there is no node {name}")))?,
            None => {
                let wanted = BTreeMap::from([(
                    "backend".to_owned(),
                    from.backend.clone().unwrap_or_default(),
                )]);
                self.choose(u64::try_from(mem_mib).unwrap_or(0), &wanted, Some(&from.id))
                    .await?
                    .ok_or_else(|| Error::Invalid("there is no other node".into()))?
            }
        };
        if target.id == from.id {
            return Err(Error::Invalid(format!(
                "sandbox {id} is on node {} already",
                from.name
            )));
        }
        if target.backend != from.backend {
            return Err(node_error(
                &target.name,
                format!(
                    "it runs {} sandboxes, and {id} is a {} one",
                    target.backend.as_deref().unwrap_or("no"),
                    from.backend.as_deref().unwrap_or("unknown")
                ),
            ));
        }
        let load = self
            .store
            .node_load(&target.id)
            .await
            .map_err(store_error)?;
        let free = free_mib(&target, load.committed_mib);
        if free < mem_mib {
            return Err(node_error(
                &target.name,
                format!("it has {free} MiB free, and {id} needs {mem_mib} MiB"),
            ));
        }
        // A node lands the sandbox on its own image (checking that it is
        // the one the sandbox was made from), with the caller's sizes.
        let to_backend: Arc<dyn Backend> = self.remote(&target).await?;
        let (stream, checked) = match &source {
            Source::Node(from_backend) => (from_backend.export(id).await?, None),
            Source::Stored(snapshots, snapshot) => {
                let (stream, checked) = snapshots.download(snapshot).await?;
                (stream, Some(checked))
            }
        };
        to_backend.import(id, sizes, stream).await?;
        let (undo_backend, undo_node) = (&to_backend, &target.name);
        let undo = |why: Error| async move {
            if let Err(error) = undo_backend.destroy(id).await {
                tracing::warn!(sandbox = id, node = %undo_node, %error, "the moved copy could not be removed");
            }
            why
        };
        // Landed only if the stored copy was read to its checked end.
        if checked.is_some_and(|checked| !checked.load(std::sync::atomic::Ordering::Acquire)) {
            return Err(undo(node_error(
                &target.name,
                format!("it took {id} before the stored copy was checked to its end: refused"),
            ))
            .await);
        }
        let moved = match &source {
            Source::Node(_) => self.store.move_sandbox(id, &from.id, &target.id).await,
            // Only while no resume where it was has claimed the copy.
            Source::Stored(_, snapshot) => {
                self.store
                    .move_sandbox_from_store(id, &from.id, &target.id, &snapshot.object_key)
                    .await
            }
        };
        if !moved.map_err(store_error)? {
            return Err(undo(Error::Invalid(format!(
                "sandbox {id} was moved or destroyed meanwhile"
            )))
            .await);
        }
        // Bounded well within the stray grace: the old copy, recorded
        // nowhere while the row points here, must not be collected before
        // a failed resume puts the row back.
        let resumed = tokio::time::timeout(MOVED_RESUME_WAIT, to_backend.resume(id))
            .await
            .unwrap_or_else(|_| {
                Err(node_error(
                    &target.name,
                    format!("{id} did not resume there within {MOVED_RESUME_WAIT:?}"),
                ))
            });
        let carried = match resumed {
            Ok(carried) => carried,
            Err(error) => {
                // Back to the old copy, which was never touched; the new
                // one goes only once the record says so.
                return match self.store.move_sandbox(id, &target.id, &from.id).await {
                    Ok(true) => Err(undo(error).await),
                    back => {
                        tracing::error!(sandbox = id, from = %from.name, to = %target.name, ?back, %error,
                            "a moved sandbox failed to resume and its record could not be put back: both copies are kept");
                        Err(node_error(
                            &target.name,
                            format!(
                                "{id} did not resume there ({error}), and its record could not be \
                                 put back on {}: both copies are kept for an operator",
                                from.name
                            ),
                        ))
                    }
                };
            }
        };
        // It runs: a stored copy is of a state it has left.
        self.forget_stored(id).await;
        match source {
            Source::Node(from_backend) => {
                tracing::info!(sandbox = id, from = %from.name, to = %target.name, "sandbox moved");
                if let Err(error) = from_backend.destroy(id).await {
                    // Recorded nowhere now: the stray collection removes it.
                    tracing::warn!(sandbox = id, node = %from.name, %error, "the old copy of a moved sandbox could not be removed");
                }
            }
            Source::Stored(..) => {
                tracing::info!(sandbox = id, from = %from.name, to = %target.name,
                    "sandbox brought back from the snapshot store; its copy on the lost node goes when the node is back (a stray)");
            }
        }
        Ok((target.name, carried))
    }

    /// The memory sandbox `id` was given, in MiB (0 if unknown).
    async fn mem_mib_of(&self, id: &str) -> Result<i64, Error> {
        Ok(self
            .store
            .sandbox_mem_mib(id)
            .await
            .map_err(store_error)?
            .unwrap_or(0))
    }

    /// The node holding sandbox `id`, whether up or not; `None`: this
    /// host's.
    async fn holder(&self, id: &str) -> Result<Option<NodeRow>, Error> {
        let Some(node_id) = self.store.sandbox_node(id).await.map_err(store_error)? else {
            return Ok(None);
        };
        self.store
            .node(&node_id)
            .await
            .map_err(store_error)?
            .map(Some)
            .ok_or_else(|| node_error(&node_id, "the node was removed"))
    }

    /// Sandbox `id`'s copy in the snapshot store, when there is one.
    async fn stored(
        &self,
        id: &str,
    ) -> Result<Option<(Arc<stored::SnapshotStore>, crate::store::StoredSnapshot)>, Error> {
        let Some(snapshots) = &self.placement.snapshots else {
            return Ok(None);
        };
        Ok(self
            .store
            .stored_snapshot(id)
            .await
            .map_err(store_error)?
            .map(|snapshot| (snapshots.clone(), snapshot)))
    }

    /// Forgets sandbox `id`'s stored copy and removes its object: it is
    /// about to run, or gone.
    async fn forget_stored(&self, id: &str) {
        let Some(snapshots) = &self.placement.snapshots else {
            return;
        };
        match self.store.drop_stored_snapshot(id).await {
            Ok(Some(key)) => snapshots.remove(&key).await,
            Ok(None) => {}
            // Its object is left to the orphan collection.
            Err(error) => {
                tracing::warn!(sandbox = id, %error, "a stored snapshot's record could not be removed");
            }
        }
    }

    /// Stops the upload of sandbox `id`'s snapshot in flight here, if
    /// one is, and waits until it has (for [`STOP_UPLOAD_WAIT`] at most;
    /// then it is dropped where it stands).
    async fn stop_upload(&self, id: &str) {
        let upload = self.uploads().remove(id);
        if let Some(mut upload) = upload {
            upload.stop.cancel();
            if tokio::time::timeout(STOP_UPLOAD_WAIT, &mut upload.task)
                .await
                .is_err()
            {
                tracing::warn!(
                    sandbox = id,
                    "a snapshot upload did not stop in time: dropped"
                );
                upload.task.abort();
            }
        }
    }

    fn uploads(&self) -> std::sync::MutexGuard<'_, HashMap<String, Upload>> {
        // Plain handles: a panic cannot leave the map inconsistent.
        self.uploads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pauses sandbox `id` to disk on `node` (`backend`) and uploads its
    /// export to the snapshot store after: the record of the upload is
    /// made first, so a resume or a new pause that comes before it ends
    /// makes it record nothing.
    async fn pause_and_store(
        &self,
        id: &str,
        backend: Arc<dyn Backend>,
        node: &NodeRow,
        snapshots: Arc<stored::SnapshotStore>,
    ) -> Result<SandboxInfo, Error> {
        if self.stored(id).await?.is_some() {
            // Paused to disk already, with its copy stored: nothing changes.
            return backend.pause(id, PauseMode::Disk).await;
        }
        self.stop_upload(id).await;
        // The export holds its record, its disk layer and its checkpoint:
        // at most its memory and its disk, with room for the streams'
        // framing. Known before the pause, so that nothing can fail
        // between a pause and its upload.
        let mem_mib = self.mem_mib_of(id).await?;
        let limit_mib = u64::try_from(mem_mib)
            .unwrap_or(0)
            .saturating_add(self.placement.max_disk_mib)
            .saturating_mul(2)
            .saturating_add(64);
        let limit = limit_mib.saturating_mul(1 << 20);
        let token = hex::encode(rand::random::<[u8; 16]>());
        if let Some(earlier) = self
            .store
            .begin_snapshot_upload(id, &token)
            .await
            .map_err(store_error)?
        {
            snapshots.remove(&earlier).await;
        }
        let info = match backend.pause(id, PauseMode::Disk).await {
            Ok(info) => info,
            Err(error) => {
                self.forget_stored(id).await;
                return Err(error);
            }
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(store_snapshot(
            self.store.clone(),
            snapshots,
            backend,
            (id.to_owned(), node.name.clone(), token),
            limit,
            stop.clone(),
        ));
        let mut uploads = self.uploads();
        uploads.retain(|_, upload| !upload.task.is_finished());
        uploads.insert(id.to_owned(), Upload { stop, task });
        Ok(info)
    }

    /// Whether sandbox `id` is on a node that is not up, with a copy in
    /// the snapshot store to resume from.
    async fn stranded(&self, id: &str) -> Result<Option<NodeRow>, Error> {
        if self.placement.snapshots.is_none() {
            // Nothing to bring it back from.
            return Ok(None);
        }
        let Some(node) = self.holder(id).await? else {
            return Ok(None);
        };
        if is_up(&node, unix_now()) || self.stored(id).await?.is_none() {
            return Ok(None);
        }
        Ok(Some(node))
    }

    /// Resumes sandbox `id`, paused to disk on a node that is not up, on
    /// another from its stored copy.
    async fn resume_stranded(&self, id: &str, node: &NodeRow) -> Result<Carried, Error> {
        let vm = self
            .store
            .vm(id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| Error::NotFound(id.to_owned()))?;
        let sizes = sizes_of(vm.vcpus, vm.mem_mib, self.placement.max_disk_mib);
        tracing::info!(sandbox = id, node = %node.name, "its node is lost: resuming it on another from the snapshot store");
        let (to, carried) = self.relocate_to(id, None, sizes).await?;
        tracing::info!(sandbox = id, from = %node.name, %to, "resumed on another node from the snapshot store");
        Ok(carried)
    }

    /// [`Backend::make_room_for_fork`]: a sandbox paused to disk on an up
    /// node without room for `count` copies and itself moves to the up
    /// node of its backend with the most memory free, if that one has
    /// room for them all.
    async fn room_by_moving(
        &self,
        id: &str,
        count: usize,
        sizes: Spec,
    ) -> Result<Option<(String, Carried)>, Error> {
        let Some(node) = self.holder(id).await? else {
            return Ok(None);
        };
        // A sandbox on a lost node resumes elsewhere anyway, if it can.
        if !is_up(&node, unix_now()) {
            return Ok(None);
        }
        let Err(full) = self.room_for_fork(&node, id, count + 1).await else {
            return Ok(None);
        };
        let mem_mib = self.mem_mib_of(id).await?;
        let needed = mem_mib.saturating_mul(i64::try_from(count + 1).unwrap_or(i64::MAX));
        let wanted = BTreeMap::from([(
            "backend".to_owned(),
            node.backend.clone().unwrap_or_default(),
        )]);
        let target = match self
            .choose(
                u64::try_from(needed).unwrap_or(u64::MAX),
                &wanted,
                Some(&node.id),
            )
            .await
        {
            Ok(Some(target)) => target,
            Ok(None) | Err(_) => {
                let why = match full {
                    Error::Node { message, .. } => message,
                    other => other.to_string(),
                };
                return Err(node_error(
                    &node.name,
                    format!(
                        "{why}; and no other up node has the {needed} MiB for {id} and its \
                         copies, so it stays paused there"
                    ),
                ));
            }
        };
        tracing::info!(sandbox = id, from = %node.name, to = %target.name, count, "its node has no room for its copies: moving it first");
        self.relocate_to(id, Some(&target.name), sizes)
            .await
            .map(Some)
    }

    /// Refuses a fork of `count` copies of sandbox `id` that `node` has no
    /// memory for: copies stay on their parent's node, and each counts as
    /// its parent's memory, as placement counts.
    async fn room_for_fork(&self, node: &NodeRow, id: &str, count: usize) -> Result<(), Error> {
        let Some(mem_mib) = self.store.sandbox_mem_mib(id).await.map_err(store_error)? else {
            return Ok(());
        };
        let load = self.store.node_load(&node.id).await.map_err(store_error)?;
        let free = free_mib(node, load.committed_mib);
        let needed = mem_mib.saturating_mul(i64::try_from(count).unwrap_or(i64::MAX));
        if needed > free {
            return Err(node_error(
                &node.name,
                format!(
                    "the node holding {id} is full: {count} copies of {mem_mib} MiB need \
                     {needed} MiB and it has {free} MiB free; copies stay on their parent's node"
                ),
            ));
        }
        Ok(())
    }

    /// Refuses the sandboxes node `node` says it made (`made`) when the
    /// forge cannot take them as new: an id that is not a short plain
    /// word, twice the same, or one the forge already has (a VM's, a
    /// snapshot's, or placed on a node). Placing a known id would route
    /// that sandbox's operations, another tenant's, to this node.
    async fn check_made(&self, node: &str, made: &[&str]) -> Result<(), Error> {
        let mut seen = HashSet::new();
        for id in made {
            let plain = !id.is_empty()
                && id.len() <= MAX_SANDBOX_ID
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !plain {
                let shown: String = id.chars().take(80).collect();
                return Err(node_error(
                    node,
                    format!("it answered with {shown:?}, which is not a sandbox id"),
                ));
            }
            let known = !seen.insert(*id)
                || self.store.vm(id).await.map_err(store_error)?.is_some()
                || self
                    .store
                    .is_snapshot_sandbox(id)
                    .await
                    .map_err(store_error)?
                || self
                    .store
                    .sandbox_node(id)
                    .await
                    .map_err(store_error)?
                    .is_some();
            if known {
                return Err(node_error(
                    node,
                    format!("it answered with {id}, the id of a sandbox the forge already has"),
                ));
            }
        }
        Ok(())
    }

    /// Checks the `expected` copies `node` made (`copies`) and records that
    /// they are there; on a refusal nothing stays placed and the copies
    /// are destroyed on the node.
    async fn place_made(
        &self,
        backend: &Arc<dyn Backend>,
        node: &NodeRow,
        copies: &[Carried],
        expected: usize,
    ) -> Result<(), Error> {
        let ids: Vec<&str> = copies.iter().map(|c| c.sandbox.id.as_str()).collect();
        let mut placed = Vec::new();
        let mut outcome = if ids.len() == expected {
            self.check_made(&node.name, &ids).await
        } else {
            Err(node_error(
                &node.name,
                format!("it answered for {expected} sandboxes with {}", ids.len()),
            ))
        };
        if outcome.is_ok() {
            for id in &ids {
                if let Err(error) = self.store.place_sandbox(id, &node.id).await {
                    outcome = Err(store_error(error));
                    break;
                }
                placed.push(*id);
            }
        }
        if outcome.is_err() {
            for id in placed {
                let _ = self.store.unplace_sandbox(id).await;
            }
            for id in &ids {
                let _ = backend.destroy(id).await;
            }
        }
        outcome
    }
}

impl Backend for Placed {
    fn kind(&self) -> BackendKind {
        // Without a backend of its own: the kind is each sandbox's own
        // (`SandboxInfo::backend`), this is only what the forge reports.
        self.local
            .as_ref()
            .map_or(BackendKind::Container, |local| local.kind())
    }

    fn create(&self, spec: Spec) -> BoxFuture<'_, ::sandbox::Result<SandboxInfo>> {
        Box::pin(async move {
            let Some(node) = self.choose(spec.mem_mib, &spec.node_labels, None).await? else {
                let Some(local) = &self.local else {
                    return Err(node_error(
                        "(any)",
                        "none is added, and this forge runs no sandboxes itself \
                         (--sandbox-backend nodes): add one with `forge node add`",
                    ));
                };
                return local.create(spec).await;
            };
            let remote: Arc<dyn Backend> = self.remote(&node).await?;
            let info = remote.create(spec).await?;
            let made = Carried {
                sandbox: info.clone(),
                kept: Vec::new(),
                note: None,
            };
            self.place_made(&remote, &node, std::slice::from_ref(&made), 1)
                .await?;
            tracing::info!(sandbox = %info.id, node = %node.name, "sandbox placed on a node");
            Ok(info)
        })
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ::sandbox::Result<SandboxInfo>> {
        Box::pin(async move {
            match self.backend_of(id).await {
                Ok(backend) => backend.get(id).await,
                // Paused to disk, and kept in the snapshot store.
                Err(error @ Error::Node { .. }) => match self.stranded(id).await? {
                    Some(node) => Ok(SandboxInfo {
                        id: id.to_owned(),
                        backend: node
                            .backend
                            .as_deref()
                            .and_then(|kind| {
                                serde_json::from_value(serde_json::Value::from(kind)).ok()
                            })
                            .unwrap_or(BackendKind::Container),
                        state: ::sandbox::State::PausedToDisk,
                        forked_from: None,
                    }),
                    None => Err(error),
                },
                Err(error) => Err(error),
            }
        })
    }

    fn list(&self) -> BoxFuture<'_, ::sandbox::Result<Vec<SandboxInfo>>> {
        // This host's, and those placed on nodes that answer: a sandbox a
        // node holds but no row places is the node's to collect.
        Box::pin(async move {
            let mut all = match &self.local {
                Some(local) => local.list().await?,
                None => Vec::new(),
            };
            for (node, _, listed) in self.listings().await? {
                for info in listed {
                    let placed = self
                        .store
                        .sandbox_node(&info.id)
                        .await
                        .map_err(store_error)?;
                    if placed.as_deref() == Some(node.id.as_str()) {
                        all.push(info);
                    }
                }
            }
            Ok(all)
        })
    }

    fn agent<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ::sandbox::Result<::sandbox::Agent>> {
        Box::pin(async move { self.backend_of(id).await?.agent(id).await })
    }

    fn agent_stream<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ::sandbox::Result<AgentStream>> {
        Box::pin(async move { self.backend_of(id).await?.agent_stream(id).await })
    }

    fn pause<'a>(
        &'a self,
        id: &'a str,
        mode: PauseMode,
    ) -> BoxFuture<'a, ::sandbox::Result<SandboxInfo>> {
        Box::pin(async move {
            let (backend, node) = self.route(id).await?;
            match (node, &self.placement.snapshots, mode) {
                (Some(node), Some(snapshots), PauseMode::Disk) => {
                    self.pause_and_store(id, backend, &node, snapshots.clone())
                        .await
                }
                _ => backend.pause(id, mode).await,
            }
        })
    }

    fn resume<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ::sandbox::Result<Carried>> {
        Box::pin(async move {
            self.stop_upload(id).await;
            if let Some(node) = self.stranded(id).await? {
                return self.resume_stranded(id, &node).await;
            }
            let (backend, node) = self.route(id).await?;
            let Some(node) = node else {
                return backend.resume(id).await;
            };
            // The stored copy is claimed while it resumes here, so that no
            // server brings it back elsewhere meanwhile (that one's move
            // needs it unclaimed); one that did before (and whose resume
            // took the record, so there was nothing to claim) is seen here.
            let claimed = match &self.placement.snapshots {
                Some(_) => self
                    .store
                    .claim_stored_snapshot(id)
                    .await
                    .map_err(store_error)?,
                None => false,
            };
            if self.placement.snapshots.is_some()
                && self
                    .store
                    .sandbox_node(id)
                    .await
                    .map_err(store_error)?
                    .as_deref()
                    != Some(node.id.as_str())
            {
                if claimed && let Err(error) = self.store.release_stored_snapshot(id).await {
                    tracing::warn!(sandbox = id, %error, "a stored snapshot's claim could not be released");
                }
                return Err(Error::Invalid(format!(
                    "sandbox {id} was brought back on another node meanwhile"
                )));
            }
            let resumed = backend.resume(id).await;
            if claimed {
                match &resumed {
                    // A stored copy is of a state it has left.
                    Ok(_) => self.forget_stored(id).await,
                    Err(_) => {
                        if let Err(error) = self.store.release_stored_snapshot(id).await {
                            tracing::warn!(sandbox = id, %error, "a stored snapshot's claim could not be released");
                        }
                    }
                }
            }
            resumed
        })
    }

    fn fork<'a>(
        &'a self,
        id: &'a str,
        count: usize,
    ) -> BoxFuture<'a, ::sandbox::Result<Vec<Carried>>> {
        Box::pin(async move {
            let (backend, node) = self.route(id).await?;
            if let Some(node) = &node {
                self.room_for_fork(node, id, count).await?;
            }
            let copies = backend.fork(id, count).await?;
            if let Some(node) = &node {
                self.place_made(&backend, node, &copies, count).await?;
            }
            Ok(copies)
        })
    }

    fn snapshot<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ::sandbox::Result<Carried>> {
        Box::pin(async move {
            let (backend, node) = self.route(id).await?;
            let copy = backend.snapshot(id).await?;
            if let Some(node) = &node {
                self.place_made(&backend, node, std::slice::from_ref(&copy), 1)
                    .await?;
            }
            Ok(copy)
        })
    }

    fn destroy<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ::sandbox::Result<()>> {
        Box::pin(async move {
            self.stop_upload(id).await;
            if self.stranded(id).await?.is_some() {
                // Its node's copy is a stray once the node is back.
                self.forget_stored(id).await;
                self.store.unplace_sandbox(id).await.map_err(store_error)?;
                return Ok(());
            }
            let (backend, node) = self.route(id).await?;
            let result = backend.destroy(id).await;
            if node.is_some() && matches!(result, Ok(()) | Err(Error::NotFound(_))) {
                self.forget_stored(id).await;
                self.store.unplace_sandbox(id).await.map_err(store_error)?;
            }
            result
        })
    }

    fn stats<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ::sandbox::Result<Stats>> {
        Box::pin(async move { self.backend_of(id).await?.stats(id).await })
    }

    fn relocate<'a>(
        &'a self,
        id: &'a str,
        to: Option<&'a str>,
        sizes: Spec,
    ) -> BoxFuture<'a, ::sandbox::Result<(String, Carried)>> {
        Box::pin(self.relocate_to(id, to, sizes))
    }

    fn make_room_for_fork<'a>(
        &'a self,
        id: &'a str,
        count: usize,
        sizes: Spec,
    ) -> BoxFuture<'a, ::sandbox::Result<Option<(String, Carried)>>> {
        Box::pin(self.room_by_moving(id, count, sizes))
    }

    fn collect_garbage(&self) -> BoxFuture<'_, ::sandbox::Result<Vec<String>>> {
        // Each node collects its own when it starts.
        match &self.local {
            Some(local) => local.collect_garbage(),
            None => Box::pin(async { Ok(Vec::new()) }),
        }
    }

    fn collect_strays(&self, grace: Duration) -> BoxFuture<'_, ::sandbox::Result<Vec<String>>> {
        Box::pin(self.collect_node_strays(grace))
    }

    fn exec<'a>(
        &'a self,
        id: &'a str,
        command: Command,
    ) -> BoxFuture<'a, ::sandbox::Result<Output>> {
        Box::pin(async move { self.backend_of(id).await?.exec(id, command).await })
    }

    fn exec_stream<'a>(
        &'a self,
        id: &'a str,
        command: Command,
    ) -> BoxFuture<'a, ::sandbox::Result<ExecStream>> {
        Box::pin(async move { self.backend_of(id).await?.exec_stream(id, command).await })
    }

    fn read_file<'a>(
        &'a self,
        id: &'a str,
        path: &'a str,
    ) -> BoxFuture<'a, ::sandbox::Result<Vec<u8>>> {
        Box::pin(async move { self.backend_of(id).await?.read_file(id, path).await })
    }

    fn read_file_stream<'a>(
        &'a self,
        id: &'a str,
        path: &'a str,
        limit: u64,
    ) -> BoxFuture<'a, ::sandbox::Result<FileStream>> {
        Box::pin(async move {
            self.backend_of(id)
                .await?
                .read_file_stream(id, path, limit)
                .await
        })
    }

    fn write_file<'a>(
        &'a self,
        id: &'a str,
        path: &'a str,
        data: &'a [u8],
    ) -> BoxFuture<'a, ::sandbox::Result<()>> {
        Box::pin(async move { self.backend_of(id).await?.write_file(id, path, data).await })
    }

    fn list_files<'a>(
        &'a self,
        id: &'a str,
        path: &'a str,
    ) -> BoxFuture<'a, ::sandbox::Result<Vec<DirEntry>>> {
        Box::pin(async move { self.backend_of(id).await?.list_files(id, path).await })
    }

    fn delete_file<'a>(
        &'a self,
        id: &'a str,
        path: &'a str,
    ) -> BoxFuture<'a, ::sandbox::Result<()>> {
        Box::pin(async move { self.backend_of(id).await?.delete_file(id, path).await })
    }

    fn open_port<'a>(
        &'a self,
        id: &'a str,
        port: u16,
    ) -> BoxFuture<'a, ::sandbox::Result<PortStream>> {
        Box::pin(async move { self.backend_of(id).await?.open_port(id, port).await })
    }
}
