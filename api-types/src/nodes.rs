//! `/v1/nodes`: sandbox nodes (admin only), and the report a node sends
//! about itself (`POST /v1/nodes/report`, with the node's own token).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `POST /v1/nodes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNode {
    /// 1 to 63 of `a-z`, `0-9` and `-`.
    pub name: String,
    /// The node's labels for placement, whatever it reports; absent: the
    /// labels it reports. A node's word is its own: set them here when a
    /// label decides where a tenant's sandboxes may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Most memory placement counts on the node, in MiB, whatever it
    /// reports; absent: what it reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_mib: Option<u64>,
}

/// Whether a node reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Added, never reported.
    New,
    /// Reported within the last 10 s: new sandboxes may go there.
    Up,
    /// Silent for 10 s or more: no sandbox goes there, and operations on
    /// its sandboxes fail saying so.
    Lost,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeView {
    pub id: String,
    pub name: String,
    pub state: NodeState,
    /// Where it serves sandboxes (`host:port`), once it reported.
    pub address: Option<String>,
    /// `container` or `microvm`, once it reported.
    pub backend: Option<String>,
    /// The SHA-256 (hex) of the certificate it serves TLS with; `null`: in
    /// clear (on loopback only).
    pub tls_sha256: Option<String>,
    /// Its labels for placement: the admin's when set, else its own.
    pub labels: BTreeMap<String, String>,
    /// Whether the admin set the labels (the node's own are ignored).
    pub labels_set: bool,
    /// The admin's cap on the memory placement counts here, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_mib: Option<u64>,
    /// Its memory as placement counts it: what it reported, at most the
    /// cap.
    pub memory_bytes: u64,
    /// What the node last reported free, at most the cap.
    pub free_memory_bytes: u64,
    /// Memory of the VMs placed on it that hold memory (running or paused
    /// in memory), in MiB.
    pub committed_mib: u64,
    /// Memory a new sandbox may take here, in MiB: the smaller of what the
    /// node reported free and its memory less what is committed.
    pub available_mib: u64,
    pub vcpus: u32,
    pub disk_bytes: u64,
    pub free_disk_bytes: u64,
    /// Sandboxes placed on it (VMs, their snapshots and pooled copies).
    pub sandboxes: u64,
    pub last_seen_at: Option<String>,
    pub created_at: String,
    /// The node's token (`forge node run --token`): only in the answer to
    /// creation, stored as a hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// `POST /v1/nodes/report`: what a node says of itself, every 2 s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeReport {
    /// Where the control plane reaches its sandboxes, `host:port`.
    pub address: String,
    /// The key the control plane presents there; the node makes a new one
    /// each time it starts.
    pub key: String,
    /// The SHA-256 (hex) of the self-signed certificate it serves TLS
    /// with, made anew each time it starts; absent: it serves in clear,
    /// which the control plane accepts only on a loopback address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_sha256: Option<String>,
    pub backend: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub memory_bytes: u64,
    pub free_memory_bytes: u64,
    pub vcpus: u32,
    pub disk_bytes: u64,
    pub free_disk_bytes: u64,
}

/// The answer to a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeReportAnswer {
    /// The node's name, as the admin added it.
    pub node: String,
    /// When to report next, in seconds.
    pub report_every_secs: u64,
}
