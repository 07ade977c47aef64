//! The `tokens` table. Only the SHA-256 of a secret is stored.

use super::{Result, Store, now};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenRow {
    pub id: String,
    pub name: String,
    pub scopes: String,
    pub repo_id: Option<String>,
    /// The sandbox whose git token this is: its pushes are limited
    /// (`git::push::rules`).
    pub vm_id: Option<String>,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
}

/// What [`Store::insert_token`] needs.
#[derive(Debug)]
pub struct NewToken<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub secret_hash: &'a str,
    pub scopes: &'a str,
    pub repo_id: Option<&'a str>,
}

/// How stale a token's `last_used_at` may be: a use within this long of
/// the last recorded one is not written.
pub const LAST_USED_EVERY: time::Duration = time::Duration::seconds(60);

const COLUMNS: &str = "id, name, scopes, repo_id, vm_id, created_at, last_used_at, revoked_at";

impl Store {
    pub async fn insert_token(&self, token: &NewToken<'_>) -> Result<TokenRow> {
        self.insert_token_of(token, None).await
    }

    /// Inserts the git token of sandbox `vm_id`.
    pub async fn insert_sandbox_token(
        &self,
        token: &NewToken<'_>,
        vm_id: &str,
    ) -> Result<TokenRow> {
        self.insert_token_of(token, Some(vm_id)).await
    }

    async fn insert_token_of(&self, token: &NewToken<'_>, vm_id: Option<&str>) -> Result<TokenRow> {
        sqlx::query(
            "INSERT INTO tokens (id, name, secret_hash, scopes, repo_id, vm_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(token.id)
        .bind(token.name)
        .bind(token.secret_hash)
        .bind(token.scopes)
        .bind(token.repo_id)
        .bind(vm_id)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(self
            .token_by_id(token.id)
            .await?
            .expect("a token inserted a moment ago exists"))
    }

    pub async fn token_by_id(&self, id: &str) -> Result<Option<TokenRow>> {
        Ok(
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM tokens WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// The live (not revoked) token whose secret hashes to `secret_hash`;
    /// records the use when the last one recorded is older than
    /// [`LAST_USED_EVERY`] (every request is authenticated: a write each
    /// time would cost more than the request).
    pub async fn use_token(&self, secret_hash: &str) -> Result<Option<TokenRow>> {
        let found: Option<TokenRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM tokens WHERE secret_hash = $1 AND revoked_at IS NULL"
        ))
        .bind(secret_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(token) = found else {
            return Ok(None);
        };
        let recent = token.last_used_at.as_deref().is_some_and(|at| {
            time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                .is_ok_and(|at| time::OffsetDateTime::now_utc() - at < LAST_USED_EVERY)
        });
        if recent {
            return Ok(Some(token));
        }
        Ok(sqlx::query_as(&format!(
            "UPDATE tokens SET last_used_at = $1 WHERE secret_hash = $2 AND revoked_at IS NULL RETURNING {COLUMNS}"
        ))
        .bind(now())
        .bind(secret_hash)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM tokens ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Marks a token revoked; `false` when no live token has that id.
    pub async fn revoke_token(&self, id: &str) -> Result<bool> {
        let done =
            sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(now())
                .bind(id)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Whether any live admin token exists (first start creates one when not).
    pub async fn has_admin_token(&self) -> Result<bool> {
        let found: Option<(String,)> = sqlx::query_as(
            "SELECT id FROM tokens WHERE revoked_at IS NULL AND (' ' || scopes || ' ') LIKE '% admin %' LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }
}
