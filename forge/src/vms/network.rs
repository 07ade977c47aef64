//! A sandbox's links to the host: the egress proxy ([`super::egress`]) and,
//! for a VM of a repository, its git remote ([`super::gitrelay`]).
//!
//! Both are listeners the agent opens inside the sandbox (`Listen`), whose
//! accepted connections arrive over the agent connection. A link lives as
//! long as that connection:
//!
//! - [`Network::ensure`] opens it whenever the VM is made sure to run
//!   (before every exec, file or port request; so after create, resume,
//!   fork and a forge restart), unless it is already up.
//! - [`Network::close`] ends it (and every connection it carries) before a
//!   pause to disk, a fork or a destroy: a checkpoint cannot hold a
//!   connection to the host, and a fork's copies open their own links.
//! - [`Network::forget`] also revokes the git token and drops the counters
//!   when the VM is destroyed.
//!
//! [`Network::env`] is what every exec gets: `HTTP_PROXY`, `HTTPS_PROXY`
//! (and lower-case forms) pointing at the proxy, `NO_PROXY` for loopback,
//! and, where the operator names a CA bundle (a TLS-inspecting way out),
//! `NODE_EXTRA_CA_CERTS`, `SSL_CERT_FILE`, `GIT_SSL_CAINFO` and friends
//! pointing at its copy inside.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::task::{JoinHandle, JoinSet};

use super::egress::{self, Counters, EGRESS_PORT, Policy, Usage};
use super::gitrelay::{self, GIT_PORT, Relay};
use crate::store::Store;

/// Bytes buffered between an agent stream and the proxy serving it.
const PIPE_BYTES: usize = 256 * 1024;

/// How sandboxes reach the host.
#[derive(Debug, Clone, Default)]
pub struct NetworkConfig {
    pub egress: Policy,
    /// The forge's listener, for git remotes; `None`: no git remote.
    pub forge: Option<SocketAddr>,
    /// Certificates sandboxes trust for TLS (PEM), where the way out
    /// inspects TLS with its own authority; copied into every sandbox at
    /// [`CA_BUNDLE`] and named by the usual variables.
    pub ca_bundle: Option<Arc<Vec<u8>>>,
}

/// Where the operator's CA bundle lands inside a sandbox.
pub const CA_BUNDLE: &str = "/etc/forge/ca-bundle.pem";

/// The links of every sandbox.
pub struct Network {
    config: NetworkConfig,
    policy: Arc<Policy>,
    store: Store,
    links: Mutex<HashMap<String, JoinHandle<()>>>,
    /// Held while a VM's link is being opened: requests that share a
    /// running VM may each ask for its link, and only one opens it.
    opening: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    counters: Mutex<HashMap<String, Arc<Counters>>>,
}

/// What a link needs to know of its VM.
pub struct Endpoint<'a> {
    pub vm: &'a str,
    /// `(repo id, owner/name)` when the VM belongs to a repository.
    pub repo: Option<(&'a str, &'a str)>,
}

/// The variables that point programs at the CA bundle copied into every
/// sandbox (set when the forge has one).
pub const CA_ENV: [&str; 5] = [
    "NODE_EXTRA_CA_CERTS",
    "SSL_CERT_FILE",
    "GIT_SSL_CAINFO",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
];

impl Network {
    pub fn new(config: NetworkConfig, store: Store) -> Self {
        let mut policy = config.egress.clone();
        policy.forge = policy.forge.or(config.forge);
        Self {
            policy: Arc::new(policy),
            config,
            store,
            links: Mutex::new(HashMap::new()),
            opening: Mutex::new(HashMap::new()),
            counters: Mutex::new(HashMap::new()),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The operator's CA bundle, to copy in when a link comes up.
    pub fn ca_bundle(&self) -> Option<&[u8]> {
        self.config.ca_bundle.as_deref().map(Vec::as_slice)
    }

    /// The environment every exec gets.
    pub fn env(&self) -> Vec<(String, String)> {
        let proxy = format!("http://127.0.0.1:{EGRESS_PORT}");
        let no_proxy = "localhost,127.0.0.1,::1".to_owned();
        let mut env = vec![
            ("HTTP_PROXY".into(), proxy.clone()),
            ("HTTPS_PROXY".into(), proxy.clone()),
            ("http_proxy".into(), proxy.clone()),
            ("https_proxy".into(), proxy),
            ("NO_PROXY".into(), no_proxy.clone()),
            ("no_proxy".into(), no_proxy),
        ];
        if self.config.ca_bundle.is_some() {
            for name in CA_ENV {
                env.push((name.into(), CA_BUNDLE.into()));
            }
        }
        env
    }

    fn links(&self) -> std::sync::MutexGuard<'_, HashMap<String, JoinHandle<()>>> {
        // Plain handles: a panic cannot leave the map inconsistent.
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn counters_of(&self, vm: &str) -> Arc<Counters> {
        let mut all = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        all.entry(vm.to_owned()).or_default().clone()
    }

    /// What the VM did through the proxy since the forge started.
    pub fn usage(&self, vm: &str) -> Usage {
        let all = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        all.get(vm).map(|c| c.usage()).unwrap_or_default()
    }

    /// Whether the VM's link is up.
    pub fn is_up(&self, vm: &str) -> bool {
        self.links().get(vm).is_some_and(|task| !task.is_finished())
    }

    /// Opens the VM's link over its agent connection unless it is up. A failure is
    /// logged, not returned: the VM still runs, without a way out. Callers
    /// that race open it once: the others wait for it and find it up.
    pub async fn ensure(&self, agent: &::sandbox::Agent, endpoint: Endpoint<'_>) {
        let client = &agent.client;
        if self.is_up(endpoint.vm) {
            return;
        }
        let opening = self
            .opening
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(endpoint.vm.to_owned())
            .or_default()
            .clone();
        let _opening = opening.lock().await;
        if self.is_up(endpoint.vm) {
            return;
        }
        let vm = endpoint.vm.to_owned();
        // The agent is the sandbox's: a listen it never answers must not hold
        // the VM's lock for ever.
        let listen = |port| async move {
            tokio::time::timeout(::sandbox::agent::REPLY_TIMEOUT, client.listen(port))
                .await
                .unwrap_or_else(|_| {
                    Err(agent_proto::ClientError::Misbehaved(format!(
                        "no answer to Listen on port {port} within {} s",
                        ::sandbox::agent::REPLY_TIMEOUT.as_secs()
                    )))
                })
        };
        let egress = match listen(EGRESS_PORT).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(vm, error = %error, "the egress proxy could not listen in the sandbox");
                return;
            }
        };
        let mut git = None;
        if let (Some((repo_id, repo)), Some(forge)) = (endpoint.repo, self.config.forge) {
            let relay = match gitrelay::mint(&self.store, &vm, repo_id).await {
                Ok(secret) => Some(Relay {
                    forge,
                    repo: repo.to_owned(),
                    secret: secret.into(),
                }),
                Err(error) => {
                    tracing::warn!(vm, error = %error, "minting the sandbox's git token failed");
                    None
                }
            };
            if let Some(relay) = relay {
                match listen(GIT_PORT).await {
                    Ok(listener) => git = Some((listener, relay)),
                    Err(error) => {
                        tracing::warn!(vm, error = %error, "the git remote could not listen in the sandbox")
                    }
                }
            }
        }
        let policy = self.policy.clone();
        let counters = self.counters_of(&vm);
        let task_vm = vm.clone();
        let task = tokio::spawn(async move {
            let vm = task_vm;
            let mut egress = egress;
            let slots = Arc::new(tokio::sync::Semaphore::new(egress::MAX_CONNECTIONS_PER_VM));
            // Dropped with the task: every connection of the link ends too.
            let mut connections = JoinSet::new();
            loop {
                while connections.try_join_next().is_some() {}
                let git_accept = async {
                    match git.as_mut() {
                        Some((listener, relay)) => Some((listener.accept().await, relay.clone())),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    accepted = egress.accept() => {
                        let Ok(stream) = accepted else { break };
                        let Ok(slot) = slots.clone().try_acquire_owned() else {
                            // Closing it at once: the sandbox sees a reset.
                            counters.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::warn!(vm, cap = egress::MAX_CONNECTIONS_PER_VM, "egress connection over the cap closed");
                            continue;
                        };
                        let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
                        connections.spawn(async move { let _ = stream.splice(theirs).await; });
                        let (policy, counters, vm) = (policy.clone(), counters.clone(), vm.clone());
                        connections.spawn(async move {
                            egress::serve(&policy, &counters, &vm, ours).await;
                            drop(slot);
                        });
                    }
                    Some((accepted, relay)) = git_accept => {
                        let Ok(stream) = accepted else { break };
                        let Ok(slot) = slots.clone().try_acquire_owned() else {
                            tracing::warn!(vm, cap = egress::MAX_CONNECTIONS_PER_VM, "git connection over the cap closed");
                            continue;
                        };
                        let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
                        connections.spawn(async move { let _ = stream.splice(theirs).await; });
                        let served = gitrelay::serve(relay, vm.clone(), ours);
                        connections.spawn(async move {
                            served.await;
                            drop(slot);
                        });
                    }
                }
            }
            tracing::info!(vm, "sandbox network link ended");
        });
        tracing::info!(vm, git = endpoint.repo.is_some(), "sandbox network link up");
        if let Some(old) = self.links().insert(vm, task) {
            old.abort();
        }
    }

    /// Ends the VM's link and every connection it carries; returns once
    /// they are gone (so nothing holds the agent connection open).
    pub async fn close(&self, vm: &str) {
        let task = self.links().remove(vm);
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// The VM is gone: its link ends and its git token is revoked.
    pub async fn forget(&self, vm: &str) {
        self.close(vm).await;
        self.counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(vm);
        self.opening
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(vm);
        if let Err(error) = gitrelay::revoke(&self.store, vm).await {
            tracing::warn!(vm, error = %error, "revoking the sandbox's git token failed");
        }
    }
}
