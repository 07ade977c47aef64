//! The `vms` table.

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
    pub persistent: bool,
    pub idle_timeout_secs: Option<i64>,
    pub created_by: Option<String>,
    pub created_at: String,
    pub last_active_unix: i64,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Store {
    pub async fn insert_vm(&self, vm: &VmRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO vms (id, backend, state, repo_id, branch, parent_id, vcpus, mem_mib, persistent,
                              idle_timeout_secs, created_by, created_at, last_active_unix)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn vm(&self, id: &str) -> Result<Option<VmRow>> {
        Ok(sqlx::query_as("SELECT * FROM vms WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn list_vms(&self) -> Result<Vec<VmRow>> {
        Ok(sqlx::query_as("SELECT * FROM vms ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn set_vm_state(&self, id: &str, state: VmState) -> Result<()> {
        sqlx::query("UPDATE vms SET state = ? WHERE id = ?")
            .bind(state)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The branch VM `id` serves in repository `repo_id`: `None` when it
    /// serves none, or is gone, or belongs to another repository.
    pub async fn vm_branch(&self, id: &str, repo_id: &str) -> Result<Option<String>> {
        let row: Option<(Option<String>,)> =
            sqlx::query_as("SELECT branch FROM vms WHERE id = ? AND repo_id = ?")
                .bind(id)
                .bind(repo_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.and_then(|(branch,)| branch))
    }

    /// Names the branch a VM serves (a fork inherits its parent's until then).
    pub async fn set_vm_branch(&self, id: &str, branch: &str) -> Result<()> {
        sqlx::query("UPDATE vms SET branch = ? WHERE id = ?")
            .bind(branch)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records traffic (exec, files, preview), which defers the idle timeout.
    pub async fn touch_vm(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE vms SET last_active_unix = ? WHERE id = ?")
            .bind(unix_now())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Sets when the VM was last used, as if its traffic had been then.
    #[cfg(test)]
    pub async fn set_last_active(&self, id: &str, unix: i64) -> Result<()> {
        sqlx::query("UPDATE vms SET last_active_unix = ? WHERE id = ?")
            .bind(unix)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn delete_vm(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM vms WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Running VMs whose idle timeout has passed at `now`.
    pub async fn idle_vms(&self, now: i64) -> Result<Vec<VmRow>> {
        Ok(sqlx::query_as(
            "SELECT * FROM vms WHERE state IN (?, ?) AND idle_timeout_secs IS NOT NULL
               AND last_active_unix + idle_timeout_secs <= ?",
        )
        .bind(VmState::LIVE[0])
        .bind(VmState::LIVE[1])
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }

    /// How many VMs hold resources (running or paused in memory).
    pub async fn count_live_vms(&self) -> Result<i64> {
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM vms WHERE state IN (?, ?)")
            .bind(VmState::LIVE[0])
            .bind(VmState::LIVE[1])
            .fetch_one(&self.pool)
            .await?;
        Ok(count)
    }

    /// Live VMs (running or paused in memory) and the memory they were given.
    pub async fn live_vm_usage(&self) -> Result<(i64, i64)> {
        let usage: (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), COALESCE(SUM(mem_mib), 0) FROM vms WHERE state IN (?, ?)",
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
            sqlx::query_as("SELECT COUNT(*) FROM vms WHERE state IN (?, ?) AND created_by = ?")
                .bind(VmState::LIVE[0])
                .bind(VmState::LIVE[1])
                .bind(token)
                .fetch_one(&self.pool)
                .await?;
        Ok(count)
    }
}
