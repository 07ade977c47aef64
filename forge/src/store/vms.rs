//! The `vms` table.

use std::collections::BTreeMap;

use api_types::VmState;

use super::{Result, Store};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct VmRow {
    pub id: String,
    pub backend: String,
    pub state: VmState,
    pub repo_id: Option<String>,
    pub branch: Option<String>,
    pub parent_id: Option<String>,
    pub vcpus: i64,
    pub mem_mib: i64,
    #[sqlx(try_from = "super::Flag")]
    pub persistent: bool,
    pub idle_timeout_secs: Option<i64>,
    pub created_by: Option<String>,
    pub created_at: String,
    pub last_active_unix: i64,
    /// A JSON object of strings (`{}` when none).
    pub labels: String,
    /// When the VM is destroyed whatever its activity; `None`: never.
    pub expires_unix: Option<i64>,
    /// The snapshot it started from.
    pub snapshot_id: Option<String>,
    /// The template it started from.
    pub template: Option<String>,
    /// Where its commands run when they name no directory.
    pub workdir: Option<String>,
}

impl VmRow {
    /// The labels as a map (a stored value that is not an object of
    /// strings, which this module never writes, reads as none).
    pub fn labels(&self) -> BTreeMap<String, String> {
        serde_json::from_str(&self.labels).unwrap_or_default()
    }

    /// The deadline in RFC 3339, when there is one.
    pub fn expires_at(&self) -> Option<String> {
        let at = time::OffsetDateTime::from_unix_timestamp(self.expires_unix?).ok()?;
        at.format(&time::format_description::well_known::Rfc3339)
            .ok()
    }
}

/// The VMs a token that is not a forge admin may see: those it created
/// and those of the repository it administers.
#[derive(Debug, Clone)]
pub struct Visibility {
    pub token: String,
    pub admin_of: Option<String>,
}

/// Which VMs a listing wants, in creation order.
#[derive(Debug, Clone, Default)]
pub struct VmFilter {
    /// Each `(key, value)` must be a label of the VM; a `None` value asks
    /// only for the key.
    pub labels: Vec<(String, Option<String>)>,
    pub state: Option<VmState>,
    pub repo_id: Option<String>,
    /// Only VMs this caller may see; `None`: every VM (an admin).
    pub visible_to: Option<Visibility>,
    /// VMs after this `(created_at, id)`: the previous page's last.
    pub after: Option<(String, String)>,
    pub limit: i64,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Store {
    pub async fn insert_vm(&self, vm: &VmRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO vms (id, backend, state, repo_id, branch, parent_id, vcpus, mem_mib, persistent,
                              idle_timeout_secs, created_by, created_at, last_active_unix, labels,
                              expires_unix, snapshot_id, template, workdir)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
        )
        .bind(&vm.id)
        .bind(&vm.backend)
        .bind(vm.state)
        .bind(&vm.repo_id)
        .bind(&vm.branch)
        .bind(&vm.parent_id)
        .bind(vm.vcpus)
        .bind(vm.mem_mib)
        .bind(vm.persistent)
        .bind(vm.idle_timeout_secs)
        .bind(&vm.created_by)
        .bind(&vm.created_at)
        .bind(vm.last_active_unix)
        .bind(&vm.labels)
        .bind(vm.expires_unix)
        .bind(&vm.snapshot_id)
        .bind(&vm.template)
        .bind(&vm.workdir)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn vm(&self, id: &str) -> Result<Option<VmRow>> {
        Ok(sqlx::query_as("SELECT * FROM vms WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn list_vms(&self) -> Result<Vec<VmRow>> {
        Ok(sqlx::query_as("SELECT * FROM vms ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await?)
    }

    /// A page of VMs matching `filter`, in creation order.
    pub async fn find_vms(&self, filter: &VmFilter) -> Result<Vec<VmRow>> {
        let mut query = super::Sql::new("SELECT * FROM vms WHERE 1 = 1");
        let labels = match self.dialect() {
            super::Dialect::Sqlite => "json_each(vms.labels)",
            super::Dialect::Postgres => "jsonb_each_text(vms.labels::jsonb)",
        };
        for (key, value) in &filter.labels {
            query.push(&format!(
                " AND EXISTS (SELECT 1 FROM {labels} AS l WHERE l.key = "
            ));
            query.bind(key.clone())?;
            if let Some(value) = value {
                query.push(" AND l.value = ").bind(value.clone())?;
            }
            query.push(")");
        }
        if let Some(state) = filter.state {
            query.push(" AND state = ").bind(state)?;
        }
        if let Some(repo_id) = &filter.repo_id {
            query.push(" AND repo_id = ").bind(repo_id.clone())?;
        }
        if let Some(who) = &filter.visible_to {
            query.push(" AND (created_by = ").bind(who.token.clone())?;
            if let Some(repo_id) = &who.admin_of {
                query.push(" OR repo_id = ").bind(repo_id.clone())?;
            }
            query.push(")");
        }
        if let Some((created_at, id)) = &filter.after {
            query
                .push(" AND (created_at, id) > (")
                .bind(created_at.clone())?;
            query.push(", ").bind(id.clone())?.push(")");
        }
        query
            .push(" ORDER BY created_at, id LIMIT ")
            .bind(filter.limit)?;
        Ok(sqlx::query_as_with(&query.text, query.arguments)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Hands a pooled VM to its user: its creator, settings and creation
    /// time become theirs.
    pub async fn adopt_vm(&self, vm: &VmRow) -> Result<()> {
        sqlx::query(
            "UPDATE vms SET created_by = $1, persistent = $2, idle_timeout_secs = $3, labels = $4,
                            expires_unix = $5, created_at = $6, last_active_unix = $7, state = $8
             WHERE id = $9",
        )
        .bind(&vm.created_by)
        .bind(vm.persistent)
        .bind(vm.idle_timeout_secs)
        .bind(&vm.labels)
        .bind(vm.expires_unix)
        .bind(&vm.created_at)
        .bind(vm.last_active_unix)
        .bind(vm.state)
        .bind(&vm.id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// VMs created by token `token` (the pool's, at start-up).
    pub async fn vms_created_by(&self, token: &str) -> Result<Vec<VmRow>> {
        Ok(sqlx::query_as("SELECT * FROM vms WHERE created_by = $1")
            .bind(token)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Sets (or, with `None`, clears) VM `id`'s deadline; false when the
    /// VM is gone.
    pub async fn set_vm_expiry(&self, id: &str, expires_unix: Option<i64>) -> Result<bool> {
        let done = sqlx::query("UPDATE vms SET expires_unix = $1 WHERE id = $2")
            .bind(expires_unix)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// VMs whose deadline has passed at `now`.
    pub async fn expired_vms(&self, now: i64) -> Result<Vec<VmRow>> {
        Ok(sqlx::query_as(
            "SELECT * FROM vms WHERE expires_unix IS NOT NULL AND expires_unix <= $1",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn set_vm_state(&self, id: &str, state: VmState) -> Result<()> {
        sqlx::query("UPDATE vms SET state = $1 WHERE id = $2")
            .bind(state)
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.left_pause(id, state).await
    }

    /// A VM out of `paused_to_disk` (by whichever path, whichever
    /// server) has no current copy in the snapshot store: its record goes
    /// (the object is then one no record names, and is collected).
    async fn left_pause(&self, id: &str, state: VmState) -> Result<()> {
        if state != VmState::PausedToDisk {
            sqlx::query("DELETE FROM stored_snapshots WHERE sandbox_id = $1")
                .bind(id)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Sets VM `id`'s state to `to` if it is `from`; whether it was (so
    /// that of two processes seeing the same change, one announces it).
    pub async fn swap_vm_state(&self, id: &str, from: VmState, to: VmState) -> Result<bool> {
        let done = sqlx::query("UPDATE vms SET state = $1 WHERE id = $2 AND state = $3")
            .bind(to)
            .bind(id)
            .bind(from)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 1 {
            self.left_pause(id, to).await?;
        }
        Ok(done.rows_affected() == 1)
    }

    /// The branch VM `id` serves in repository `repo_id`: `None` when it
    /// serves none, or is gone, or belongs to another repository.
    pub async fn vm_branch(&self, id: &str, repo_id: &str) -> Result<Option<String>> {
        let row: Option<(Option<String>,)> =
            sqlx::query_as("SELECT branch FROM vms WHERE id = $1 AND repo_id = $2")
                .bind(id)
                .bind(repo_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.and_then(|(branch,)| branch))
    }

    /// Names the branch a VM serves (a fork inherits its parent's until then).
    pub async fn set_vm_branch(&self, id: &str, branch: &str) -> Result<()> {
        sqlx::query("UPDATE vms SET branch = $1 WHERE id = $2")
            .bind(branch)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records traffic (exec, files, preview), which defers the idle timeout.
    pub async fn touch_vm(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE vms SET last_active_unix = $1 WHERE id = $2")
            .bind(unix_now())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Sets when the VM was last used, as if its traffic had been then.
    #[cfg(test)]
    pub async fn set_last_active(&self, id: &str, unix: i64) -> Result<()> {
        sqlx::query("UPDATE vms SET last_active_unix = $1 WHERE id = $2")
            .bind(unix)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn delete_vm(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM vms WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Running VMs whose idle timeout has passed at `now`.
    pub async fn idle_vms(&self, now: i64) -> Result<Vec<VmRow>> {
        Ok(sqlx::query_as(
            "SELECT * FROM vms WHERE state IN ($1, $2) AND idle_timeout_secs IS NOT NULL
               AND last_active_unix + idle_timeout_secs <= $3",
        )
        .bind(VmState::LIVE[0])
        .bind(VmState::LIVE[1])
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }

    /// VMs by state and backend, for the metrics.
    pub async fn count_vms_by_state(&self) -> Result<Vec<(VmState, String, i64)>> {
        Ok(
            sqlx::query_as("SELECT state, backend, COUNT(*) FROM vms GROUP BY state, backend")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// How many VMs hold resources (running or paused in memory).
    pub async fn count_live_vms(&self) -> Result<i64> {
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM vms WHERE state IN ($1, $2)")
            .bind(VmState::LIVE[0])
            .bind(VmState::LIVE[1])
            .fetch_one(&self.pool)
            .await?;
        Ok(count)
    }

    /// Live VMs (running or paused in memory) and the memory they were given.
    pub async fn live_vm_usage(&self) -> Result<(i64, i64)> {
        let usage: (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), CAST(COALESCE(SUM(mem_mib), 0) AS BIGINT) FROM vms WHERE state IN ($1, $2)",
        )
        .bind(VmState::LIVE[0])
        .bind(VmState::LIVE[1])
        .fetch_one(&self.pool)
        .await?;
        Ok(usage)
    }

    /// Live VMs (running or paused in memory) created by `token`.
    pub async fn count_live_vms_by(&self, token: &str) -> Result<i64> {
        let (count,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM vms WHERE state IN ($1, $2) AND created_by = $3")
                .bind(VmState::LIVE[0])
                .bind(VmState::LIVE[1])
                .bind(token)
                .fetch_one(&self.pool)
                .await?;
        Ok(count)
    }
}
