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
    /// s), but for those paused to disk whose snapshot is in the snapshot
    /// store (they resume on another node); returns their ids.
    pub async fn mark_lost_vms(&self, seen_before: i64) -> Result<Vec<String>> {
        let ids: Vec<(String,)> = sqlx::query_as(
            "UPDATE vms SET state = 'lost' \
             WHERE state IN ('running', 'paused', 'paused_to_disk') AND id IN ( \
               SELECT s.sandbox_id FROM sandbox_nodes s JOIN nodes n ON n.id = s.node_id \
               WHERE n.last_seen_unix IS NULL OR n.last_seen_unix < $1) \
             AND NOT (state = 'paused_to_disk' AND id IN ( \
               SELECT sandbox_id FROM stored_snapshots \
               WHERE object_key IS NOT NULL \
               AND (resuming_since IS NULL OR resuming_since < $2))) \
             RETURNING id",
        )
        .bind(seen_before)
        .bind(claims_lapsed_before())
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

/// How long a resume's claim on a stored snapshot holds: longer than any
/// resume may take (a node's answer time), after which the claim is taken
/// as abandoned (its server died) and the copy counts again.
pub const CLAIM_LAPSES_AFTER_SECS: i64 = 900;

/// Claims made before this (unix s) have lapsed.
fn claims_lapsed_before() -> i64 {
    super::unix_now() - CLAIM_LAPSES_AFTER_SECS
}

/// A sandbox's snapshot in the snapshot store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSnapshot {
    pub object_key: String,
    pub bytes: i64,
    /// Of the object as uploaded, in hex.
    pub sha256: String,
}

impl Store {
    /// Starts the record of sandbox `sandbox_id`'s next snapshot upload,
    /// under `token`, in place of any earlier one; returns the earlier
    /// one's object, which no record names any more.
    pub async fn begin_snapshot_upload(
        &self,
        sandbox_id: &str,
        token: &str,
    ) -> Result<Option<String>> {
        let mut tx = self.pool.begin().await?;
        let earlier: Option<(Option<String>,)> = sqlx::query_as(
            "DELETE FROM stored_snapshots WHERE sandbox_id = $1 RETURNING object_key",
        )
        .bind(sandbox_id)
        .fetch_optional(&mut *tx)
        .await?;
        // A pause through another server between the two statements wrote
        // its row meanwhile (PostgreSQL's DELETE does not wait for rows it
        // cannot see): this one, the later, takes its place.
        sqlx::query(
            "INSERT INTO stored_snapshots (sandbox_id, token) VALUES ($1, $2) \
             ON CONFLICT (sandbox_id) DO UPDATE SET token = excluded.token, \
             object_key = NULL, bytes = 0, sha256 = NULL, stored_at = NULL, \
             resuming_since = NULL",
        )
        .bind(sandbox_id)
        .bind(token)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(earlier.and_then(|(key,)| key))
    }

    /// Records the upload under `token` done as `stored`; `false` when the record is no longer that upload's (the sandbox was
    /// resumed, paused again or destroyed meanwhile): the object is then
    /// the caller's to remove.
    pub async fn finish_snapshot_upload(
        &self,
        sandbox_id: &str,
        token: &str,
        stored: &StoredSnapshot,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE stored_snapshots SET object_key = $1, bytes = $2, sha256 = $3, stored_at = $4 \
             WHERE sandbox_id = $5 AND token = $6 AND object_key IS NULL",
        )
        .bind(&stored.object_key)
        .bind(stored.bytes)
        .bind(&stored.sha256)
        .bind(super::unix_now())
        .bind(sandbox_id)
        .bind(token)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Forgets sandbox `sandbox_id`'s stored snapshot (it was resumed or
    /// destroyed); returns its object, which is the caller's to remove.
    pub async fn drop_stored_snapshot(&self, sandbox_id: &str) -> Result<Option<String>> {
        let earlier: Option<(Option<String>,)> = sqlx::query_as(
            "DELETE FROM stored_snapshots WHERE sandbox_id = $1 RETURNING object_key",
        )
        .bind(sandbox_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(earlier.and_then(|(key,)| key))
    }

    /// Sandbox `sandbox_id`'s snapshot in the snapshot store, once its
    /// upload is done and unless a resume claimed it.
    pub async fn stored_snapshot(&self, sandbox_id: &str) -> Result<Option<StoredSnapshot>> {
        let row: Option<(String, i64, Option<String>)> = sqlx::query_as(
            "SELECT object_key, bytes, sha256 FROM stored_snapshots \
             WHERE sandbox_id = $1 AND object_key IS NOT NULL \
             AND (resuming_since IS NULL OR resuming_since < $2)",
        )
        .bind(sandbox_id)
        .bind(claims_lapsed_before())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(object_key, bytes, sha256)| StoredSnapshot {
            object_key,
            bytes,
            sha256: sha256.unwrap_or_default(),
        }))
    }

    /// Every record of the snapshot store: its sandbox, its upload's
    /// token, and its object once uploaded.
    pub async fn stored_snapshot_records(&self) -> Result<Vec<(String, String, Option<String>)>> {
        Ok(
            sqlx::query_as("SELECT sandbox_id, token, object_key FROM stored_snapshots")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Claims sandbox `sandbox_id`'s stored snapshot for a resume on its
    /// own node: until [`Store::release_stored_snapshot`], it is not
    /// resumed elsewhere (nor does it keep the VM from being lost).
    pub async fn claim_stored_snapshot(&self, sandbox_id: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE stored_snapshots SET resuming_since = $1 \
             WHERE sandbox_id = $2 AND object_key IS NOT NULL \
             AND (resuming_since IS NULL OR resuming_since < $3)",
        )
        .bind(super::unix_now())
        .bind(sandbox_id)
        .bind(claims_lapsed_before())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives back a claim: the resume failed, the stored copy is current.
    pub async fn release_stored_snapshot(&self, sandbox_id: &str) -> Result<()> {
        sqlx::query("UPDATE stored_snapshots SET resuming_since = NULL WHERE sandbox_id = $1")
            .bind(sandbox_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// [`Store::move_sandbox`] for a sandbox brought back from its stored
    /// copy `object_key`: only while that copy is still its current,
    /// unclaimed one (no resume where it was has begun meanwhile).
    pub async fn move_sandbox_from_store(
        &self,
        sandbox_id: &str,
        from: &str,
        to: &str,
        object_key: &str,
    ) -> Result<bool> {
        let moved = sqlx::query(
            "UPDATE sandbox_nodes SET node_id = $1 \
             WHERE sandbox_id = $2 AND node_id = $3 AND EXISTS ( \
               SELECT 1 FROM stored_snapshots WHERE sandbox_id = $4 \
               AND object_key = $5 AND (resuming_since IS NULL OR resuming_since < $6))",
        )
        .bind(to)
        .bind(sandbox_id)
        .bind(from)
        .bind(sandbox_id)
        .bind(object_key)
        .bind(claims_lapsed_before())
        .execute(&self.pool)
        .await?;
        Ok(moved.rows_affected() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::VmRow;
    use api_types::VmState;

    fn paused_vm(id: &str) -> VmRow {
        VmRow {
            id: id.into(),
            backend: "container".into(),
            state: VmState::PausedToDisk,
            repo_id: None,
            branch: None,
            parent_id: None,
            vcpus: 1,
            mem_mib: 512,
            persistent: true,
            idle_timeout_secs: None,
            created_by: None,
            created_at: now(),
            last_active_unix: 1,
            labels: "{}".into(),
            expires_unix: None,
            snapshot_id: None,
            template: None,
            workdir: None,
        }
    }

    /// An upload records its object only while the record is still its
    /// own: not after a resume forgot it, nor after a new pause replaced
    /// it; a new pause hands back the earlier object for removal.
    #[tokio::test]
    async fn an_upload_overtaken_by_a_resume_or_a_new_pause_records_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_for_test(dir.path()).await;
        let stored = |key: &str| StoredSnapshot {
            object_key: key.into(),
            bytes: 10,
            sha256: format!("sha-of-{key}"),
        };

        assert_eq!(
            store
                .begin_snapshot_upload("s1", "t1")
                .await
                .expect("begin"),
            None
        );
        assert_eq!(
            store.stored_snapshot("s1").await.expect("read"),
            None,
            "not yet"
        );
        assert!(
            store
                .finish_snapshot_upload("s1", "t1", &stored("k1"))
                .await
                .expect("finish")
        );
        assert_eq!(
            store.stored_snapshot("s1").await.expect("read"),
            Some(stored("k1"))
        );
        assert!(
            !store
                .finish_snapshot_upload("s1", "t1", &stored("k1b"))
                .await
                .expect("finish"),
            "an upload records once"
        );

        // A new pause: the earlier object is handed back, and the earlier
        // upload (finishing late) records nothing.
        let earlier = store
            .begin_snapshot_upload("s1", "t2")
            .await
            .expect("begin");
        assert_eq!(earlier.as_deref(), Some("k1"));
        assert!(
            !store
                .finish_snapshot_upload("s1", "t1", &stored("k1c"))
                .await
                .expect("finish")
        );
        assert_eq!(store.stored_snapshot("s1").await.expect("read"), None);

        // A resume forgets the record; its upload, done after, records
        // nothing.
        assert_eq!(store.drop_stored_snapshot("s1").await.expect("drop"), None);
        assert!(
            !store
                .finish_snapshot_upload("s1", "t2", &stored("k2"))
                .await
                .expect("finish")
        );
        assert_eq!(store.stored_snapshot("s1").await.expect("read"), None);
        assert!(
            store
                .stored_snapshot_records()
                .await
                .expect("list")
                .is_empty()
        );
    }

    /// On a node that stopped reporting, a VM paused to disk with its
    /// snapshot stored is not lost (it resumes elsewhere); one whose upload
    /// has not finished is.
    #[tokio::test]
    async fn a_vm_paused_to_disk_with_its_snapshot_stored_is_not_lost_with_its_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_for_test(dir.path()).await;
        store
            .insert_node("n1", "a", "hash", &NodeCaps::default())
            .await
            .expect("node");
        for id in ["kept", "uploading"] {
            store.insert_vm(&paused_vm(id)).await.expect("vm");
            store.place_sandbox(id, "n1").await.expect("placed");
        }
        let stored = StoredSnapshot {
            object_key: "k1".into(),
            bytes: 10,
            sha256: "00".into(),
        };
        store
            .begin_snapshot_upload("kept", "t1")
            .await
            .expect("begin");
        assert!(
            store
                .finish_snapshot_upload("kept", "t1", &stored)
                .await
                .expect("finish")
        );
        store
            .begin_snapshot_upload("uploading", "t2")
            .await
            .expect("begin");

        let lost = store
            .mark_lost_vms(super::super::unix_now())
            .await
            .expect("lost");
        assert_eq!(lost, ["uploading"]);
        let kept = store.vm("kept").await.expect("read").expect("kept");
        assert_eq!(kept.state, VmState::PausedToDisk);
        let records = store.stored_snapshot_records().await.expect("list");
        assert_eq!(records.len(), 2, "{records:?}");

        // A resume where it is claims the copy: the VM is then lost with
        // its node, and the copy cannot be moved elsewhere; a failed
        // resume gives it back.
        assert!(store.claim_stored_snapshot("kept").await.expect("claim"));
        assert!(
            !store.claim_stored_snapshot("kept").await.expect("claim"),
            "once"
        );
        assert_eq!(store.stored_snapshot("kept").await.expect("read"), None);
        assert!(
            !store
                .move_sandbox_from_store("kept", "n1", "n2", "k1")
                .await
                .expect("move"),
            "claimed: not moved"
        );
        // A claim whose server died lapses: the copy counts again.
        sqlx::query("UPDATE stored_snapshots SET resuming_since = $1 WHERE sandbox_id = 'kept'")
            .bind(super::super::unix_now() - CLAIM_LAPSES_AFTER_SECS - 1)
            .execute(&store.pool)
            .await
            .expect("age the claim");
        assert_eq!(
            store.stored_snapshot("kept").await.expect("read"),
            Some(stored.clone())
        );
        assert!(
            store
                .claim_stored_snapshot("kept")
                .await
                .expect("claim again")
        );
        store
            .release_stored_snapshot("kept")
            .await
            .expect("release");
        assert_eq!(
            store.stored_snapshot("kept").await.expect("read"),
            Some(stored)
        );
        assert!(
            !store
                .move_sandbox_from_store("kept", "n1", "n2", "k0")
                .await
                .expect("move"),
            "another copy: not moved"
        );

        // Resumed through any path: the record goes.
        store
            .set_vm_state("kept", VmState::Running)
            .await
            .expect("state");
        assert_eq!(store.stored_snapshot("kept").await.expect("read"), None);
        let lost = store
            .mark_lost_vms(super::super::unix_now())
            .await
            .expect("lost");
        assert_eq!(lost, ["kept"], "running, with its node gone: lost");
    }
}
