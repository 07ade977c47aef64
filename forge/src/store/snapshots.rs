//! `snapshots`, `template_builds` and `templates`: what new VMs start from.

use api_types::TemplateState;

use super::{Result, Store};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SnapshotRow {
    pub id: String,
    pub name: Option<String>,
    /// The backend's sandbox, kept paused to disk.
    pub sandbox_id: String,
    pub backend: String,
    pub source_vm: Option<String>,
    pub repo_id: Option<String>,
    pub branch: Option<String>,
    pub vcpus: i64,
    pub mem_mib: i64,
    /// A JSON array of `disk`, `memory`, `processes`.
    pub kept: String,
    pub note: Option<String>,
    /// The template build it is the image of.
    pub build_hash: Option<String>,
    pub created_by: String,
    pub created_at: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TemplateBuildRow {
    pub spec_hash: String,
    pub state: TemplateState,
    pub snapshot_id: Option<String>,
    pub log: String,
    pub error: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub build_ms: Option<i64>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TemplateRow {
    pub name: String,
    /// The spec as posted (JSON).
    pub spec: String,
    pub spec_hash: String,
    pub created_by: String,
    pub created_at: String,
    pub updated_at: String,
}

/// How much of a build's log the database keeps: its end.
pub const MAX_BUILD_LOG_BYTES: usize = 1 << 20;

impl Store {
    pub async fn insert_snapshot(&self, row: &SnapshotRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO snapshots (id, name, sandbox_id, backend, source_vm, repo_id, branch, vcpus,
                                    mem_mib, kept, note, build_hash, created_by, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&row.id)
        .bind(&row.name)
        .bind(&row.sandbox_id)
        .bind(&row.backend)
        .bind(&row.source_vm)
        .bind(&row.repo_id)
        .bind(&row.branch)
        .bind(row.vcpus)
        .bind(row.mem_mib)
        .bind(&row.kept)
        .bind(&row.note)
        .bind(&row.build_hash)
        .bind(&row.created_by)
        .bind(&row.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The snapshot named `key`, or whose id is `key`.
    pub async fn snapshot(&self, key: &str) -> Result<Option<SnapshotRow>> {
        Ok(sqlx::query_as(
            "SELECT * FROM snapshots WHERE id = $1 OR name = $2 ORDER BY id = $3 DESC",
        )
        .bind(key)
        .bind(key)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Every snapshot, or those `created_by` made, oldest first.
    pub async fn snapshots(&self, created_by: Option<&str>) -> Result<Vec<SnapshotRow>> {
        Ok(sqlx::query_as(
            "SELECT * FROM snapshots WHERE $1 IS NULL OR created_by = $1 ORDER BY created_at, id",
        )
        .bind(created_by)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Whether sandbox `id` is a snapshot's.
    pub async fn is_snapshot_sandbox(&self, id: &str) -> Result<bool> {
        let found: Option<(String,)> =
            sqlx::query_as("SELECT id FROM snapshots WHERE sandbox_id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(found.is_some())
    }

    pub async fn delete_snapshot(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM snapshots WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn template(&self, name: &str) -> Result<Option<TemplateRow>> {
        Ok(sqlx::query_as("SELECT * FROM templates WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn templates(&self) -> Result<Vec<TemplateRow>> {
        Ok(sqlx::query_as("SELECT * FROM templates ORDER BY name")
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn template_build(&self, spec_hash: &str) -> Result<Option<TemplateBuildRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM template_builds WHERE spec_hash = $1")
                .bind(spec_hash)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Records template `row` and makes sure its build exists. Returns
    /// whether a build must start: none existed for the hash, or the last
    /// one failed (it starts over, its log emptied). One transaction, so
    /// two posts of one spec start one build. A template of that name made
    /// by another token than `caller` is changed only when `any_owner`
    /// (an admin): otherwise `Ok(None)` and nothing changes. A build that
    /// starts is leased to the caller's process until `lease_until` (unix
    /// s; [`Self::renew_build`]).
    pub async fn put_template(
        &self,
        row: &TemplateRow,
        caller: &str,
        any_owner: bool,
        lease_until: i64,
    ) -> Result<Option<bool>> {
        // A write first: the transaction holds the write lock from its
        // first statement, so a concurrent writer makes it wait instead of
        // failing the upgrade from a read.
        let mut tx = self.pool.begin().await?;
        let started = sqlx::query(
            "INSERT INTO template_builds (spec_hash, state, started_at, lease_until)
             VALUES ($1, $2, $3, $5)
             ON CONFLICT (spec_hash) DO UPDATE SET state = $2, log = '', error = NULL,
                 started_at = $3, finished_at = NULL, build_ms = NULL, snapshot_id = NULL,
                 lease_until = $5
             WHERE template_builds.state = $4",
        )
        .bind(&row.spec_hash)
        .bind(TemplateState::Building)
        .bind(&row.updated_at)
        .bind(TemplateState::Failed)
        .bind(lease_until)
        .execute(&mut *tx)
        .await?;
        let start = started.rows_affected() > 0;
        let written = sqlx::query(
            "INSERT INTO templates (name, spec, spec_hash, created_by, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, spec_hash = excluded.spec_hash,
                                              updated_at = excluded.updated_at
             WHERE templates.created_by = $8 OR $7",
        )
        .bind(&row.name)
        .bind(&row.spec)
        .bind(&row.spec_hash)
        .bind(&row.created_by)
        .bind(&row.created_at)
        .bind(&row.updated_at)
        .bind(any_owner)
        .bind(caller)
        .execute(&mut *tx)
        .await?;
        if written.rows_affected() == 0 {
            // Dropped without a commit: the build row goes too.
            return Ok(None);
        }
        tx.commit().await?;
        Ok(Some(start))
    }

    /// Templates token `token` made (the per-token cap).
    pub async fn count_templates_by(&self, token: &str) -> Result<i64> {
        let (count,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM templates WHERE created_by = $1")
                .bind(token)
                .fetch_one(&self.pool)
                .await?;
        Ok(count)
    }

    /// Snapshots token `token` took, template images aside (the per-token
    /// cap).
    pub async fn count_snapshots_by(&self, token: &str) -> Result<i64> {
        let (count,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM snapshots WHERE created_by = $1 AND build_hash IS NULL",
        )
        .bind(token)
        .fetch_one(&self.pool)
        .await?;
        Ok(count)
    }

    /// Template images no build refers to (a forge stopped between keeping
    /// the image and recording the build's end).
    pub async fn unreferenced_images(&self) -> Result<Vec<SnapshotRow>> {
        Ok(sqlx::query_as(
            "SELECT * FROM snapshots WHERE build_hash IS NOT NULL AND NOT EXISTS
               (SELECT 1 FROM template_builds WHERE template_builds.snapshot_id = snapshots.id)",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Appends to a build's log, keeping its last [`MAX_BUILD_LOG_BYTES`].
    pub async fn append_build_log(&self, spec_hash: &str, text: &str) -> Result<()> {
        sqlx::query(&format!(
            "UPDATE template_builds SET log = {} WHERE spec_hash = $3",
            self.tail("log || $1", "$2")
        ))
        .bind(super::storable(text).into_owned())
        .bind(MAX_BUILD_LOG_BYTES as i64)
        .bind(spec_hash)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Ends a build: `ready` with its snapshot, or `failed` with the reason.
    pub async fn finish_build(
        &self,
        spec_hash: &str,
        outcome: std::result::Result<&str, &str>,
        build_ms: i64,
    ) -> Result<()> {
        let (state, snapshot, error) = match outcome {
            Ok(snapshot) => (TemplateState::Ready, Some(snapshot), None),
            Err(error) => (TemplateState::Failed, None, Some(error)),
        };
        sqlx::query(
            "UPDATE template_builds SET state = $1, snapshot_id = $2, error = $3, finished_at = $4,
                                        build_ms = $5
             WHERE spec_hash = $6",
        )
        .bind(state)
        .bind(snapshot)
        .bind(error)
        .bind(super::now())
        .bind(build_ms)
        .bind(spec_hash)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Keeps build `spec_hash` leased until `lease_until` (unix s) while it
    /// is `building`; `false` when it is not any more.
    pub async fn renew_build(&self, spec_hash: &str, lease_until: i64) -> Result<bool> {
        let renewed = sqlx::query(
            "UPDATE template_builds SET lease_until = $1 WHERE spec_hash = $2 AND state = $3",
        )
        .bind(lease_until)
        .bind(spec_hash)
        .bind(TemplateState::Building)
        .execute(&self.pool)
        .await?;
        Ok(renewed.rows_affected() > 0)
    }

    /// Builds left `building` by a forge process that stopped (their lease
    /// lapsed before `now`, unix s): failed, since their sandbox is gone
    /// with it. Returns their hashes.
    pub async fn fail_interrupted_builds(&self, now: i64) -> Result<Vec<String>> {
        let failed: Vec<(String,)> = sqlx::query_as(
            "UPDATE template_builds SET state = $1, error = 'the forge stopped during the build'
             WHERE state = $2 AND (lease_until IS NULL OR lease_until < $3) RETURNING spec_hash",
        )
        .bind(TemplateState::Failed)
        .bind(TemplateState::Building)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        Ok(failed.into_iter().map(|(hash,)| hash).collect())
    }

    /// Deletes template `name`. When no other template shares its build,
    /// the build goes too; its snapshot is returned for the caller to
    /// destroy (the row stays until then).
    pub async fn delete_template(&self, name: &str) -> Result<Option<SnapshotRow>> {
        // A write first, as in `put_template`.
        let mut tx = self.pool.begin().await?;
        let Some((hash,)): Option<(String,)> =
            sqlx::query_as("DELETE FROM templates WHERE name = $1 RETURNING spec_hash")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?
        else {
            return Ok(None);
        };
        if self.dialect() == super::Dialect::Postgres {
            // Holds the build: a template of the same spec written
            // meanwhile waits, so the count below stays true.
            sqlx::query("SELECT spec_hash FROM template_builds WHERE spec_hash = $1 FOR UPDATE")
                .bind(&hash)
                .execute(&mut *tx)
                .await?;
        }
        let (others,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM templates WHERE spec_hash = $1")
                .bind(&hash)
                .fetch_one(&mut *tx)
                .await?;
        let mut snapshot = None;
        if others == 0 {
            snapshot = sqlx::query_as(
                "SELECT snapshots.* FROM snapshots JOIN template_builds
                   ON template_builds.snapshot_id = snapshots.id WHERE template_builds.spec_hash = $1",
            )
            .bind(&hash)
            .fetch_optional(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM template_builds WHERE spec_hash = $1 AND state != $2")
                .bind(&hash)
                .bind(TemplateState::Building)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(snapshot)
    }

    /// The name of a template built by `spec_hash` (the first by name).
    pub async fn template_of_build(&self, spec_hash: &str) -> Result<Option<String>> {
        let found: Option<(String,)> =
            sqlx::query_as("SELECT name FROM templates WHERE spec_hash = $1 ORDER BY name LIMIT 1")
                .bind(spec_hash)
                .fetch_optional(&self.pool)
                .await?;
        Ok(found.map(|(name,)| name))
    }

    /// Builds no template names any more (a template deleted or changed
    /// while they built), with their snapshots.
    pub async fn orphan_builds(&self) -> Result<Vec<TemplateBuildRow>> {
        Ok(sqlx::query_as(
            "SELECT * FROM template_builds WHERE state != $1 AND NOT EXISTS
               (SELECT 1 FROM templates WHERE templates.spec_hash = template_builds.spec_hash)",
        )
        .bind(TemplateState::Building)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn delete_build(&self, spec_hash: &str) -> Result<()> {
        sqlx::query("DELETE FROM template_builds WHERE spec_hash = $1")
            .bind(spec_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A build is failed as interrupted only once its lease lapsed: the
    /// server holding the duties leaves alone a build another live server
    /// runs (and renews), and a build failed so is not renewed again.
    #[tokio::test]
    async fn only_a_build_whose_lease_lapsed_is_failed_as_interrupted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_for_test(dir.path()).await;
        let now = super::super::unix_now();
        let row = TemplateRow {
            name: "web".into(),
            spec: "{}".into(),
            spec_hash: "h1".into(),
            created_by: "t".into(),
            created_at: super::super::now(),
            updated_at: super::super::now(),
        };
        let started = store.put_template(&row, "t", true, now + 15).await;
        assert_eq!(started.expect("put"), Some(true), "the build starts");
        let failed = store.fail_interrupted_builds(now).await.expect("fail");
        assert!(failed.is_empty(), "leased elsewhere: {failed:?}");
        assert!(store.renew_build("h1", now + 30).await.expect("renew"));
        let failed = store.fail_interrupted_builds(now + 20).await.expect("fail");
        assert!(failed.is_empty(), "renewed: {failed:?}");
        let failed = store.fail_interrupted_builds(now + 31).await.expect("fail");
        assert_eq!(failed, ["h1"], "lapsed");
        let build = store
            .template_build("h1")
            .await
            .expect("read")
            .expect("kept");
        assert_eq!(build.state, TemplateState::Failed);
        assert!(!store.renew_build("h1", now + 60).await.expect("renew"));
    }
}
