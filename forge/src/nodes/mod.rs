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
//!   stay there (a fork the node has no memory for is refused, saying
//!   so). A sandbox on a node that is not up fails at once, naming the
//!   node and how long it has been silent.
//! - **Strays.** A control plane that dies between a node making a sandbox
//!   and recording it leaves the sandbox on the node, recorded nowhere.
//!   Every [`STRAYS_EVERY`] the control plane lists each up node's
//!   sandboxes; one that no VM or snapshot records as on that node, seen
//!   so again [`STRAY_GRACE`] later, is destroyed ([`Placed`]'s
//!   [`Backend::collect_strays`]). The grace is far longer than the
//!   moment between a node answering and the record being written.

pub mod agent;

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

/// The host's sandboxes made [`Placed`]: the same host backend while no
/// node is registered, nodes' once one is. With `nodes_only` the host runs
/// none itself (`--sandbox-backend nodes`); otherwise a host that runs no
/// sandboxes stays without (its VM API answers 503 with the reason).
pub fn placed(
    host: crate::vms::Availability,
    store: &Store,
    nodes_only: bool,
) -> crate::vms::Availability {
    match host {
        _ if nodes_only => crate::vms::Availability::Ready {
            backend: Arc::new(Placed {
                local: None,
                store: store.clone(),
                remotes: Mutex::default(),
                strays: Mutex::default(),
            }),
            // Nodes start sandboxes from their own images.
            image: ::sandbox::Image::root("/nonexistent/sandbox-nodes-only"),
            reason: "sandboxes run on sandbox nodes only (--sandbox-backend nodes)".into(),
        },
        crate::vms::Availability::Ready {
            backend,
            image,
            reason,
        } => crate::vms::Availability::Ready {
            backend: Arc::new(Placed::new(backend, store.clone())),
            image,
            reason,
        },
        unavailable => unavailable,
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
    pub fn new(local: Arc<dyn Backend>, store: Store) -> Self {
        Self {
            local: Some(local),
            store,
            remotes: Mutex::default(),
            strays: Mutex::default(),
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
        let Some(node_id) = self.store.sandbox_node(id).await.map_err(store_error)? else {
            return Ok((self.host(id)?.clone(), None));
        };
        let node = self
            .store
            .node(&node_id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| node_error(&node_id, "the node was removed"))?;
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

    /// [`Backend::relocate`]: export from the node holding `id`, import on
    /// `to` (or the up node of the same backend with the most memory
    /// free), record it there, resume it there, then destroy the old copy.
    /// Until the new copy runs, the old one is the sandbox: a failure on
    /// the way leaves it as it was (and the new node's copy is removed).
    async fn relocate_to(
        &self,
        id: &str,
        to: Option<&str>,
        sizes: Spec,
    ) -> Result<(String, Carried), Error> {
        let (from_backend, from) = self.route(id).await?;
        let Some(from) = from else {
            return Err(Error::Invalid(format!(
                "sandbox {id} runs on the control plane's own host, not on a node: it cannot move"
            )));
        };
        let mem_mib = self
            .store
            .sandbox_mem_mib(id)
            .await
            .map_err(store_error)?
            .unwrap_or(0);
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
        let stream = from_backend.export(id).await?;
        to_backend.import(id, sizes, stream).await?;
        let (undo_backend, undo_node) = (&to_backend, &target.name);
        let undo = |why: Error| async move {
            if let Err(error) = undo_backend.destroy(id).await {
                tracing::warn!(sandbox = id, node = %undo_node, %error, "the moved copy could not be removed");
            }
            why
        };
        if !self
            .store
            .move_sandbox(id, &from.id, &target.id)
            .await
            .map_err(store_error)?
        {
            return Err(undo(Error::Invalid(format!(
                "sandbox {id} was moved or destroyed meanwhile"
            )))
            .await);
        }
        let carried = match to_backend.resume(id).await {
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
        tracing::info!(sandbox = id, from = %from.name, to = %target.name, "sandbox moved");
        if let Err(error) = from_backend.destroy(id).await {
            // Recorded nowhere now: the stray collection removes it.
            tracing::warn!(sandbox = id, node = %from.name, %error, "the old copy of a moved sandbox could not be removed");
        }
        Ok((target.name, carried))
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
        Box::pin(async move { self.backend_of(id).await?.get(id).await })
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
        Box::pin(async move { self.backend_of(id).await?.pause(id, mode).await })
    }

    fn resume<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ::sandbox::Result<Carried>> {
        Box::pin(async move { self.backend_of(id).await?.resume(id).await })
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
            let (backend, node) = self.route(id).await?;
            let result = backend.destroy(id).await;
            if node.is_some() && matches!(result, Ok(()) | Err(Error::NotFound(_))) {
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
