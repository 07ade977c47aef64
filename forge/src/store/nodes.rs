//! The `nodes` and `sandbox_nodes` tables: sandbox nodes, what they last
//! reported, and which node holds which sandbox.

use std::collections::BTreeMap;

use super::{Result, Store, now};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NodeRow {
    pub id: String,
    pub name: String,
    /// Where it serves sandboxes (`host:port`), once it reported.
    pub address: Option<String>,
    /// The key the control plane presents there; made anew at each start
    /// of the node.
    pub node_key: Option<String>,
    /// The SHA-256 (hex) of the certificate it serves TLS with; `None`: in
    /// clear.
    pub tls_sha256: Option<String>,
    pub backend: Option<String>,
    /// A JSON object of strings.
    pub labels: String,
    pub memory_bytes: i64,
    pub free_memory_bytes: i64,
    pub vcpus: i64,
    pub disk_bytes: i64,
    pub free_disk_bytes: i64,
    pub last_seen_unix: Option<i64>,
    pub created_at: String,
    /// The admin's labels (a JSON object), which replace the reported ones.
    pub set_labels: Option<String>,
    /// The admin's cap on `memory_bytes` and `free_memory_bytes`.
    pub max_memory_bytes: Option<i64>,
}

impl NodeRow {
    pub fn labels(&self) -> BTreeMap<String, String> {
        serde_json::from_str(&self.labels).unwrap_or_default()
    }
}

/// What a node says of itself in a report.
#[derive(Debug, Clone)]
pub struct NodeReport {
    pub address: String,
    pub node_key: String,
    pub tls_sha256: Option<String>,
    pub backend: String,
    pub labels: BTreeMap<String, String>,
    pub memory_bytes: i64,
    pub free_memory_bytes: i64,
    pub vcpus: i64,
    pub disk_bytes: i64,
    pub free_disk_bytes: i64,
}

/// A node's sandboxes as the control plane counts them.
#[derive(Debug, Clone, Copy, Default, sqlx::FromRow)]
pub struct NodeLoad {
    /// Sandboxes placed on it, whatever their state.
    pub sandboxes: i64,
    /// Memory of its VMs that hold memory (running or paused in memory).
    pub committed_mib: i64,
}

const COLUMNS: &str = "id, name, address, node_key, tls_sha256, backend, labels, memory_bytes, \
     free_memory_bytes, vcpus, disk_bytes, free_disk_bytes, last_seen_unix, created_at, \
     set_labels, max_memory_bytes";

/// What the admin sets of a node when adding it, which its reports cannot
/// raise.
#[derive(Debug, Clone, Default)]
pub struct NodeCaps {
    /// Its labels, whatever it reports.
    pub labels: Option<BTreeMap<String, String>>,
    /// Most memory counted on it.
    pub max_memory_bytes: Option<i64>,
}

impl Store {
    /// A node that has not reported yet; `Duplicate` when the name is taken.
    pub async fn insert_node(
        &self,
        id: &str,
        name: &str,
        token_hash: &str,
        caps: &NodeCaps,
    ) -> Result<NodeRow> {
        let labels = caps
            .labels
            .as_ref()
            .map(|labels| serde_json::to_string(labels).unwrap_or_else(|_| "{}".to_owned()));
        sqlx::query(
            "INSERT INTO nodes (id, name, token_hash, created_at, set_labels, labels, max_memory_bytes) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(name)
        .bind(token_hash)
        .bind(now())
        .bind(labels.clone())
        .bind(labels.unwrap_or_else(|| "{}".to_owned()))
        .bind(caps.max_memory_bytes)
        .execute(&self.pool)
        .await?;
        self.node(id)
            .await?
            .ok_or_else(|| sqlx::Error::RowNotFound.into())
    }

    pub async fn node(&self, id: &str) -> Result<Option<NodeRow>> {
        Ok(
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM nodes WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn node_by_name(&self, name: &str) -> Result<Option<NodeRow>> {
        Ok(
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM nodes WHERE name = $1"))
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Every node, by name.
    pub async fn nodes(&self) -> Result<Vec<NodeRow>> {
        Ok(
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM nodes ORDER BY name"))
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Removes a node that holds no sandbox; `false` when it holds some
    /// (or does not exist).
    pub async fn delete_node(&self, id: &str) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM nodes WHERE id = $1 \
             AND NOT EXISTS (SELECT 1 FROM sandbox_nodes WHERE node_id = $1)",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records the report of the node whose token hashes to `token_hash`;
    /// `None` when no node has that token.
    pub async fn report_node(
        &self,
        token_hash: &str,
        report: &NodeReport,
        seen_unix: i64,
    ) -> Result<Option<NodeRow>> {
        let labels = serde_json::to_string(&report.labels).unwrap_or_else(|_| "{}".to_owned());
        let id: Option<(String,)> = sqlx::query_as(
            "UPDATE nodes SET address = $1, node_key = $2, backend = $3, \
             labels = COALESCE(set_labels, $4), \
             memory_bytes = CASE WHEN max_memory_bytes < $5 THEN max_memory_bytes ELSE $6 END, \
             free_memory_bytes = CASE WHEN max_memory_bytes < $7 THEN max_memory_bytes ELSE $8 END, \
             vcpus = $9, disk_bytes = $10, \
             free_disk_bytes = $11, last_seen_unix = $12, tls_sha256 = $13 \
             WHERE token_hash = $14 RETURNING id",
        )
        .bind(&report.address)
        .bind(&report.node_key)
        .bind(&report.backend)
        .bind(labels)
        .bind(report.memory_bytes)
        .bind(report.memory_bytes)
        .bind(report.free_memory_bytes)
        .bind(report.free_memory_bytes)
        .bind(report.vcpus)
        .bind(report.disk_bytes)
        .bind(report.free_disk_bytes)
        .bind(seen_unix)
        .bind(&report.tls_sha256)
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        match id {
            Some((id,)) => self.node(&id).await,
            None => Ok(None),
        }
    }

    /// What the control plane has placed on node `id`.
    pub async fn node_load(&self, id: &str) -> Result<NodeLoad> {
        Ok(sqlx::query_as(
            "SELECT COUNT(*) AS sandboxes, \
             CAST(COALESCE(SUM(CASE WHEN v.state IN ('running', 'paused') THEN v.mem_mib ELSE 0 END), 0) AS BIGINT) \
             AS committed_mib \
             FROM sandbox_nodes s LEFT JOIN vms v ON v.id = s.sandbox_id WHERE s.node_id = $1",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await?)
    }

    /// The memory of sandbox `sandbox_id` as its VM or snapshot records it,
    /// in MiB.
    pub async fn sandbox_mem_mib(&self, sandbox_id: &str) -> Result<Option<i64>> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT mem_mib FROM vms WHERE id = $1 \
             UNION ALL SELECT mem_mib FROM snapshots WHERE sandbox_id = $2",
        )
        .bind(sandbox_id)
        .bind(sandbox_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(mib,)| mib))
    }

    /// Records that node `node_id` holds sandbox `sandbox_id`.
    pub async fn place_sandbox(&self, sandbox_id: &str, node_id: &str) -> Result<()> {
        sqlx::query("INSERT INTO sandbox_nodes (sandbox_id, node_id) VALUES ($1, $2)")
            .bind(sandbox_id)
            .bind(node_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records that node `to` holds sandbox `sandbox_id` now instead of
    /// node `from`; `false` when `from` did not hold it (moved or
    /// destroyed meanwhile).
    pub async fn move_sandbox(&self, sandbox_id: &str, from: &str, to: &str) -> Result<bool> {
        let moved = sqlx::query(
            "UPDATE sandbox_nodes SET node_id = $1 WHERE sandbox_id = $2 AND node_id = $3",
        )
        .bind(to)
        .bind(sandbox_id)
        .bind(from)
        .execute(&self.pool)
        .await?;
        Ok(moved.rows_affected() > 0)
    }

    /// The node holding sandbox `sandbox_id`, if a node does.
    pub async fn sandbox_node(&self, sandbox_id: &str) -> Result<Option<String>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT node_id FROM sandbox_nodes WHERE sandbox_id = $1")
                .bind(sandbox_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(id,)| id))
    }

    pub async fn unplace_sandbox(&self, sandbox_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM sandbox_nodes WHERE sandbox_id = $1")
            .bind(sandbox_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

impl Store {
    /// Marks `lost` every VM still reachable (running, paused, paused to
    /// disk) on a node whose last report is older than `seen_before` (unix
    /// s); returns their ids.
    pub async fn mark_lost_vms(&self, seen_before: i64) -> Result<Vec<String>> {
        let ids: Vec<(String,)> = sqlx::query_as(
            "UPDATE vms SET state = 'lost' \
             WHERE state IN ('running', 'paused', 'paused_to_disk') AND id IN ( \
               SELECT s.sandbox_id FROM sandbox_nodes s JOIN nodes n ON n.id = s.node_id \
               WHERE n.last_seen_unix IS NULL OR n.last_seen_unix < $1) \
             RETURNING id",
        )
        .bind(seen_before)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    /// The `lost` VMs on nodes that reported at `seen_since` (unix s) or
    /// later: reachable again.
    pub async fn found_vms(&self, seen_since: i64) -> Result<Vec<String>> {
        let ids: Vec<(String,)> = sqlx::query_as(
            "SELECT v.id FROM vms v \
             JOIN sandbox_nodes s ON s.sandbox_id = v.id \
             JOIN nodes n ON n.id = s.node_id \
             WHERE v.state = 'lost' AND n.last_seen_unix >= $1 ORDER BY v.id",
        )
        .bind(seen_since)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }
}
