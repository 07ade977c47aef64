//! The `repos` table.

use super::{Result, Store};

/// A repository as recorded; its bare git directory is named by `id`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RepoRow {
    pub id: String,
    pub owner: String,
    pub name: String,
    pub default_branch: String,
    pub created_at: String,
}

impl RepoRow {
    /// `owner/name`.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }
}

impl Store {
    pub async fn insert_repo(&self, repo: &RepoRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO repos (id, owner, name, default_branch, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&repo.id)
        .bind(&repo.owner)
        .bind(&repo.name)
        .bind(&repo.default_branch)
        .bind(&repo.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn repo_by_name(&self, owner: &str, name: &str) -> Result<Option<RepoRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM repos WHERE owner = $1 AND name = $2")
                .bind(owner)
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn repo_by_id(&self, id: &str) -> Result<Option<RepoRow>> {
        Ok(sqlx::query_as("SELECT * FROM repos WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Every repository, or only `only` when given, ordered by name.
    pub async fn list_repos(&self, only: Option<&str>) -> Result<Vec<RepoRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM repos WHERE $1 IS NULL OR id = $1 ORDER BY owner, name")
                .bind(only)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Deletes the record (and, by cascade, tokens limited to it). Returns
    /// whether it existed.
    pub async fn delete_repo(&self, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM repos WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
