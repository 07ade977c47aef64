//! The webhook tables: `webhooks` (subscriptions), `webhook_deliveries`,
//! `webhook_attempts` and `webhook_cursor` (how far the consumer has read
//! the events outbox). The rules these queries keep are described in
//! [`crate::webhooks`]; scheduling times are Unix milliseconds.

use api_types::DeliveryState;

use super::{EventRow, Result, Store, now};

/// A subscription as recorded. `secret` and `previous_secret` never leave
/// the server except in the answer that created them.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WebhookRow {
    pub id: String,
    /// `None`: a forge-wide subscription.
    pub repo_id: Option<String>,
    pub url: String,
    pub events: String,
    pub branches: String,
    pub paths: String,
    #[sqlx(try_from = "super::Flag")]
    pub active: bool,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_until: Option<i64>,
    pub consecutive_failures: i64,
    pub disabled_reason: Option<String>,
    pub after_event_id: i64,
    pub revision: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// What [`Store::insert_webhook`] needs; lists are JSON arrays.
#[derive(Debug)]
pub struct NewWebhook<'a> {
    pub id: &'a str,
    /// `None`: forge-wide.
    pub repo_id: Option<&'a str>,
    pub url: &'a str,
    pub events: &'a str,
    pub branches: &'a str,
    pub paths: &'a str,
    pub active: bool,
    pub secret: &'a str,
}

/// A change to a subscription; `None` keeps a field.
#[derive(Debug, Default)]
pub struct WebhookChange {
    pub url: Option<String>,
    pub events: Option<String>,
    pub branches: Option<String>,
    pub paths: Option<String>,
    pub active: Option<bool>,
    /// A new secret; the old one keeps signing until `previous_until_ms`.
    pub rotate: Option<(String, i64)>,
}

/// A delivery as recorded.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryRow {
    pub seq: i64,
    pub id: String,
    pub webhook_id: String,
    pub event_id: Option<i64>,
    pub event_type: String,
    pub body: Vec<u8>,
    pub status: DeliveryState,
    pub attempts: i64,
    pub schedule_base: i64,
    pub next_attempt_at: i64,
    pub lease_until: Option<i64>,
    pub created_at: String,
}

/// One attempt of a delivery as recorded.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttemptRow {
    pub delivery_id: String,
    pub attempt: i64,
    pub started_at: i64,
    pub duration_ms: i64,
    pub request_headers: String,
    pub response_status: Option<i64>,
    pub response_headers: String,
    pub response_body: Vec<u8>,
    #[sqlx(try_from = "super::Flag")]
    pub response_body_truncated: bool,
    pub error: Option<String>,
    pub next_attempt_at: Option<i64>,
}

/// A delivery to write.
#[derive(Debug)]
pub struct NewDeliveryRow<'a> {
    pub id: &'a str,
    pub webhook_id: &'a str,
    pub event_id: Option<i64>,
    pub event_type: &'a str,
    pub body: &'a [u8],
}

/// A delivery leased to a worker, with what it needs to send.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub delivery: DeliveryRow,
    pub webhook: WebhookRow,
}

/// The outcome of an attempt, as [`Store::record_attempt`] writes it.
#[derive(Debug)]
pub struct AttemptOutcome<'a> {
    pub started_at_ms: i64,
    pub duration_ms: i64,
    pub request_headers: &'a str,
    pub response_status: Option<i64>,
    pub response_headers: &'a str,
    pub response_body: &'a [u8],
    pub response_body_truncated: bool,
    pub error: Option<&'a str>,
    pub status: DeliveryState,
    pub next_attempt_at: Option<i64>,
    pub success: bool,
}

/// What a redelivery request found.
#[derive(Debug, PartialEq, Eq)]
pub enum Redelivery {
    Queued,
    NotFound,
    /// An attempt is being made right now.
    InFlight,
}

const HOOK_COLUMNS: &str = "id, repo_id, url, events, branches, paths, active, secret, previous_secret, \
     previous_secret_until, consecutive_failures, disabled_reason, after_event_id, revision, created_at, updated_at";

/// The current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    /// Records a subscription. It receives events recorded after this
    /// moment only (`after_event_id` is read in the same statement).
    pub async fn insert_webhook(&self, hook: &NewWebhook<'_>) -> Result<WebhookRow> {
        let at = now();
        Ok(sqlx::query_as(&format!(
            "INSERT INTO webhooks (id, repo_id, url, events, branches, paths, active, secret, after_event_id, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, (SELECT COALESCE(MAX(id), 0) FROM events), $9, $10)
             RETURNING {HOOK_COLUMNS}"
        ))
        .bind(hook.id)
        .bind(hook.repo_id)
        .bind(hook.url)
        .bind(hook.events)
        .bind(hook.branches)
        .bind(hook.paths)
        .bind(hook.active)
        .bind(hook.secret)
        .bind(&at)
        .bind(&at)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Webhook `id` of repository `repo_id` (`None`: a forge-wide one).
    pub async fn webhook(&self, repo_id: Option<&str>, id: &str) -> Result<Option<WebhookRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {HOOK_COLUMNS} FROM webhooks WHERE repo_id IS NOT DISTINCT FROM $1 AND id = $2"
        ))
        .bind(repo_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The webhooks of repository `repo_id` (`None`: the forge-wide ones).
    pub async fn list_webhooks(&self, repo_id: Option<&str>) -> Result<Vec<WebhookRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {HOOK_COLUMNS} FROM webhooks WHERE repo_id IS NOT DISTINCT FROM $1 ORDER BY created_at, id"
        ))
        .bind(repo_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Applies `change`; re-activating clears the failure count and reason.
    pub async fn update_webhook(
        &self,
        repo_id: Option<&str>,
        id: &str,
        change: &WebhookChange,
    ) -> Result<Option<WebhookRow>> {
        let (secret, until) = match &change.rotate {
            Some((secret, until)) => (Some(secret.as_str()), Some(*until)),
            None => (None, None),
        };
        // SQLite and PostgreSQL evaluate every SET expression against the old row, so
        // `previous_secret = secret` keeps the secret being replaced.
        Ok(sqlx::query_as(&format!(
            "UPDATE webhooks SET
                url = COALESCE($1, url), events = COALESCE($2, events),
                branches = COALESCE($3, branches), paths = COALESCE($4, paths),
                active = COALESCE($5, active),
                consecutive_failures = CASE WHEN $5 = TRUE THEN 0 ELSE consecutive_failures END,
                disabled_reason = CASE WHEN $5 = TRUE THEN NULL ELSE disabled_reason END,
                previous_secret = CASE WHEN $6 IS NULL THEN previous_secret ELSE secret END,
                previous_secret_until = CASE WHEN $6 IS NULL THEN previous_secret_until ELSE $7 END,
                secret = COALESCE($6, secret),
                revision = revision + 1, updated_at = $8
             WHERE repo_id IS NOT DISTINCT FROM $9 AND id = $10 RETURNING {HOOK_COLUMNS}"
        ))
        .bind(&change.url)
        .bind(&change.events)
        .bind(&change.branches)
        .bind(&change.paths)
        .bind(change.active)
        .bind(secret)
        .bind(until)
        .bind(now())
        .bind(repo_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Deletes a subscription with its deliveries; whether it existed.
    pub async fn delete_webhook(&self, repo_id: Option<&str>, id: &str) -> Result<bool> {
        let done =
            sqlx::query("DELETE FROM webhooks WHERE repo_id IS NOT DISTINCT FROM $1 AND id = $2")
                .bind(repo_id)
                .bind(id)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    /// How far the webhook consumer has read the outbox.
    pub async fn webhook_cursor(&self) -> Result<i64> {
        let (cursor,): (i64,) =
            sqlx::query_as("SELECT last_event_id FROM webhook_cursor WHERE id = 1")
                .fetch_one(&self.pool)
                .await?;
        Ok(cursor)
    }

    /// Consumes `events` (read after `cursor`, in order) in one
    /// transaction: for each, `fan_out` gets the event and its
    /// repository's active subscriptions that existed before it, and the
    /// deliveries it returns are written (at most one per subscription and
    /// event, so a replay is harmless); then the cursor moves past the last
    /// event. Returns the number of deliveries written, or `None` when the
    /// cursor had moved (another consumer ran; read again).
    pub async fn consume_events<F>(
        &self,
        cursor: i64,
        events: &[EventRow],
        mut fan_out: F,
    ) -> Result<Option<usize>>
    where
        F: FnMut(&EventRow, &[WebhookRow]) -> Vec<NewDeliveryOwned>,
    {
        let Some(last) = events.last().map(|e| e.id) else {
            return Ok(Some(0));
        };
        let mut tx = self.pool.begin().await?;
        // A write first: the transaction takes the write lock now, so what
        // it reads next cannot change before it commits.
        let moved = sqlx::query(
            "UPDATE webhook_cursor SET last_event_id = $1 WHERE id = 1 AND last_event_id = $2",
        )
        .bind(last)
        .bind(cursor)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() == 0 {
            return Ok(None);
        }
        let mut written = 0;
        let at = now();
        let next = now_ms();
        for event in events {
            // The event's repository's subscriptions and the forge-wide
            // ones; an event of no repository reaches only the latter.
            // On PostgreSQL the subscriptions read are held (`FOR SHARE`)
            // until the deliveries are written: a concurrent delete or
            // disable waits instead of racing them.
            let hooks: Vec<WebhookRow> = sqlx::query_as(&format!(
                "SELECT {HOOK_COLUMNS} FROM webhooks
                 WHERE (repo_id = $1 OR repo_id IS NULL) AND active = TRUE AND after_event_id < $2 ORDER BY id{}",
                match self.dialect() {
                    super::Dialect::Sqlite => "",
                    super::Dialect::Postgres => " FOR SHARE",
                }
            ))
            .bind(&event.repo_id)
            .bind(event.id)
            .fetch_all(&mut *tx)
            .await?;
            if hooks.is_empty() {
                continue;
            }
            for delivery in fan_out(event, &hooks) {
                let done = sqlx::query(
                    "INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, body, next_attempt_at, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                )
                .bind(&delivery.id)
                .bind(&delivery.webhook_id)
                .bind(event.id)
                .bind(&delivery.event_type)
                .bind(&*delivery.body)
                .bind(next)
                .bind(&at)
                .execute(&mut *tx)
                .await?;
                written += usize::try_from(done.rows_affected()).unwrap_or(0);
            }
        }
        tx.commit().await?;
        Ok(Some(written))
    }

    /// Deliveries by status, for the metrics.
    pub async fn count_deliveries_by_state(&self) -> Result<Vec<(String, i64)>> {
        Ok(
            sqlx::query_as("SELECT status, COUNT(*) FROM webhook_deliveries GROUP BY status")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Writes a delivery that no event caused (a ping), due now.
    pub async fn insert_delivery(&self, delivery: &NewDeliveryRow<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, body, next_attempt_at, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(delivery.id)
        .bind(delivery.webhook_id)
        .bind(delivery.event_id)
        .bind(delivery.event_type)
        .bind(delivery.body)
        .bind(now_ms())
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Frees every lease. Only for start-up: one server owns a database, so
    /// a lease found then belongs to a process that is gone, and its
    /// delivery is sent again at once (with the same `webhook-id`).
    pub async fn release_webhook_leases(&self) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET lease_until = NULL WHERE lease_until IS NOT NULL",
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Leases up to `limit` due deliveries until `lease_until`: the oldest
    /// due one of each active subscription that has none leased. One
    /// statement, so no delivery is leased twice; on PostgreSQL it locks
    /// the rows it takes and passes over those another process is taking
    /// (`FOR UPDATE SKIP LOCKED`), and re-checks a row that process leased
    /// meanwhile, so processes sharing the database never lease one
    /// delivery, or two of one subscription, at once.
    pub async fn claim_deliveries(
        &self,
        now: i64,
        limit: i64,
        lease_until: i64,
    ) -> Result<Vec<ClaimedDelivery>> {
        let lock = match self.dialect() {
            super::Dialect::Sqlite => "",
            super::Dialect::Postgres => "FOR UPDATE OF d SKIP LOCKED",
        };
        let deliveries: Vec<DeliveryRow> = sqlx::query_as(&format!(
            "UPDATE webhook_deliveries SET lease_until = $1
             WHERE (lease_until IS NULL OR lease_until <= $2) AND seq IN (
                SELECT d.seq FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
                WHERE d.status = $4 AND d.next_attempt_at <= $2
                  AND (d.lease_until IS NULL OR d.lease_until <= $2) AND w.active = TRUE
                  AND NOT EXISTS (SELECT 1 FROM webhook_deliveries o WHERE o.webhook_id = d.webhook_id
                                  AND o.status = $4 AND o.lease_until > $2)
                  AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e WHERE e.webhook_id = d.webhook_id
                                  AND e.status = $4 AND e.next_attempt_at <= $2
                                  AND (e.lease_until IS NULL OR e.lease_until <= $2) AND e.seq < d.seq)
                ORDER BY d.seq LIMIT $3 {lock})
             RETURNING *",
        ))
        .bind(lease_until)
        .bind(now)
        .bind(limit)
        .bind(DeliveryState::Pending)
        .fetch_all(&self.pool)
        .await?;
        let mut claimed = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            let webhook: Option<WebhookRow> = sqlx::query_as(&format!(
                "SELECT {HOOK_COLUMNS} FROM webhooks WHERE id = $1"
            ))
            .bind(&delivery.webhook_id)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(webhook) = webhook {
                claimed.push(ClaimedDelivery { delivery, webhook });
            }
        }
        claimed.sort_by_key(|c| c.delivery.seq);
        Ok(claimed)
    }

    /// Records an attempt, moves the delivery on (releasing its lease) and
    /// updates the subscription's run of consecutive failures, which it
    /// returns; all in one transaction. The subscription's row is locked
    /// before the delivery's, in the order a delete of the subscription
    /// takes them (its deliveries go with it): the other order deadlocked
    /// against a delete on PostgreSQL. A delivery whose subscription was
    /// deleted meanwhile records nothing (0 failures).
    pub async fn record_attempt(
        &self,
        delivery_id: &str,
        outcome: &AttemptOutcome<'_>,
    ) -> Result<u32> {
        let mut tx = self.pool.begin().await?;
        // A write first, as everywhere: on SQLite a transaction that read
        // first cannot become a writer once another wrote meanwhile.
        let Some((failures,)): Option<(i64,)> = sqlx::query_as(
            "UPDATE webhooks SET consecutive_failures = CASE WHEN $1 THEN 0 ELSE consecutive_failures + 1 END
             WHERE id = (SELECT webhook_id FROM webhook_deliveries WHERE id = $2)
             RETURNING consecutive_failures",
        )
        .bind(outcome.success)
        .bind(delivery_id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(0);
        };
        let Some((attempts,)): Option<(i64,)> = sqlx::query_as(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, status = $1, lease_until = NULL,
                next_attempt_at = COALESCE($2, next_attempt_at)
             WHERE id = $3 RETURNING attempts",
        )
        .bind(outcome.status)
        .bind(outcome.next_attempt_at)
        .bind(delivery_id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(0);
        };
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, attempt, started_at, duration_ms, request_headers,
                response_status, response_headers, response_body, response_body_truncated, error, next_attempt_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(delivery_id)
        .bind(attempts)
        .bind(outcome.started_at_ms)
        .bind(outcome.duration_ms)
        .bind(outcome.request_headers)
        .bind(outcome.response_status)
        .bind(outcome.response_headers)
        .bind(outcome.response_body)
        .bind(outcome.response_body_truncated)
        .bind(outcome.error)
        .bind(outcome.next_attempt_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(u32::try_from(failures).unwrap_or(u32::MAX))
    }

    /// Disables a subscription, fails its pending deliveries and records a
    /// `webhook.disabled` event, in one transaction. Returns the event, or
    /// `None` when the subscription is gone or was already disabled.
    pub async fn disable_webhook(&self, id: &str, reason: &str) -> Result<Option<EventRow>> {
        let mut tx = self.pool.begin().await?;
        let hook: Option<(Option<String>, String)> = sqlx::query_as(
            "UPDATE webhooks SET active = FALSE, disabled_reason = $1, revision = revision + 1, updated_at = $2
             WHERE id = $3 AND active = TRUE RETURNING repo_id, url",
        )
        .bind(reason)
        .bind(now())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((repo_id, url)) = hook else {
            return Ok(None);
        };
        sqlx::query(
            "UPDATE webhook_deliveries SET status = $1, lease_until = NULL
             WHERE webhook_id = $2 AND status = $3",
        )
        .bind(DeliveryState::Failed)
        .bind(id)
        .bind(DeliveryState::Pending)
        .execute(&mut *tx)
        .await?;
        let payload = serde_json::json!({ "webhook_id": id, "url": url, "reason": reason });
        self.lock_events(&mut tx).await?;
        let event: EventRow = sqlx::query_as(
            "INSERT INTO events (repo_id, repo_name, kind, ref_name, actor, payload, created_at)
             VALUES ($1, (SELECT owner || '/' || name FROM repos WHERE id = $1), 'webhook.disabled', NULL, NULL, $2, $3)
             RETURNING *",
        )
        .bind(&repo_id)
        .bind(payload.to_string())
        .bind(now())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(event))
    }

    /// A page of a subscription's deliveries, newest first, older than
    /// `before` (a `seq`).
    pub async fn list_deliveries(
        &self,
        webhook_id: &str,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>> {
        Ok(sqlx::query_as(
            "SELECT * FROM webhook_deliveries WHERE webhook_id = $1 AND ($2 IS NULL OR seq < $2)
             ORDER BY seq DESC LIMIT $3",
        )
        .bind(webhook_id)
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn delivery(&self, webhook_id: &str, id: &str) -> Result<Option<DeliveryRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM webhook_deliveries WHERE webhook_id = $1 AND id = $2")
                .bind(webhook_id)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// The attempts of `delivery_id`, in order.
    pub async fn attempts(&self, delivery_id: &str) -> Result<Vec<AttemptRow>> {
        Ok(sqlx::query_as(
            "SELECT delivery_id, attempt, started_at, duration_ms, request_headers, response_status,
                    response_headers, response_body, response_body_truncated, error, next_attempt_at
             FROM webhook_attempts WHERE delivery_id = $1 ORDER BY attempt",
        )
        .bind(delivery_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Makes a delivery due again now with a fresh retry schedule (same
    /// `webhook-id`, a new attempt), unless an attempt is in flight.
    pub async fn redeliver(&self, webhook_id: &str, id: &str) -> Result<Redelivery> {
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET status = $1, next_attempt_at = $2, schedule_base = attempts
             WHERE webhook_id = $3 AND id = $4 AND (lease_until IS NULL OR lease_until <= $5)",
        )
        .bind(DeliveryState::Pending)
        .bind(now)
        .bind(webhook_id)
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() > 0 {
            return Ok(Redelivery::Queued);
        }
        Ok(match self.delivery(webhook_id, id).await? {
            Some(_) => Redelivery::InFlight,
            None => Redelivery::NotFound,
        })
    }
}

/// A delivery the consumer's fan-out asks [`Store::consume_events`] to write.
#[derive(Debug)]
pub struct NewDeliveryOwned {
    pub id: String,
    pub webhook_id: String,
    pub event_type: String,
    pub body: std::sync::Arc<[u8]>,
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::store::{NewEvent, RepoRow};

    async fn store_with_hook(dir: &std::path::Path) -> (Store, WebhookRow) {
        let store = Store::open_for_test(dir).await;
        let hook = add_repo_and_hook(&store).await;
        (store, hook)
    }

    /// Repository `r1` (`acme/web`) and its subscription `wh_1` to pushes.
    pub(in crate::store) async fn add_repo_and_hook(store: &Store) -> WebhookRow {
        store
            .insert_repo(&RepoRow {
                id: "r1".into(),
                owner: "acme".into(),
                name: "web".into(),
                default_branch: "main".into(),
                created_at: now(),
            })
            .await
            .expect("repo");
        store
            .insert_webhook(&push_hook("wh_1"))
            .await
            .expect("hook")
    }

    /// An active subscription `id` of repository `r1` to pushes.
    fn push_hook(id: &str) -> NewWebhook<'_> {
        NewWebhook {
            id,
            repo_id: Some("r1"),
            url: "http://127.0.0.1:9/",
            events: "[\"push\"]",
            branches: "[]",
            paths: "[]",
            active: true,
            secret: "0123456789",
        }
    }

    /// One delivery per subscription of each of `events`, `msg_<hook>_<event>`.
    async fn deliver_to_every_hook(store: &Store, events: &[crate::store::EventRow]) {
        let cursor = store.webhook_cursor().await.expect("cursor");
        store
            .consume_events(cursor, events, |event, hooks| {
                hooks
                    .iter()
                    .map(|h| NewDeliveryOwned {
                        id: format!("msg_{}_{}", h.id, event.id),
                        webhook_id: h.id.clone(),
                        event_type: "push".into(),
                        body: std::sync::Arc::from(&b"{}"[..]),
                    })
                    .collect()
            })
            .await
            .expect("consume");
    }

    /// An attempt at `now` that succeeded (delivered) or failed (retried
    /// a second later).
    fn attempt(now: i64, success: bool) -> AttemptOutcome<'static> {
        AttemptOutcome {
            started_at_ms: now,
            duration_ms: 1,
            request_headers: "[]",
            response_status: Some(if success { 200 } else { 500 }),
            response_headers: "[]",
            response_body: b"",
            response_body_truncated: false,
            error: None,
            status: if success {
                DeliveryState::Delivered
            } else {
                DeliveryState::Pending
            },
            next_attempt_at: (!success).then_some(now + 1000),
            success,
        }
    }

    fn push() -> NewEvent {
        NewEvent {
            kind: "push".into(),
            ref_name: Some("refs/heads/main".into()),
            payload: serde_json::json!({}),
        }
    }

    /// Four claimers on two handles (two processes' pools) drain 120
    /// deliveries of four subscriptions: each delivery is leased exactly
    /// once, and never two of one subscription at a time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn processes_sharing_the_database_never_lease_a_delivery_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = store_with_hook(dir.path()).await;
        for n in 2..=4 {
            store
                .insert_webhook(&push_hook(&format!("wh_{n}")))
                .await
                .expect("hook");
        }
        let events = store
            .insert_events("r1", "acme/web", None, &vec![push(); 30])
            .await
            .expect("events");
        deliver_to_every_hook(&store, &events).await;
        let other = store.reopen().await;

        let in_flight =
            std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
        let mut claimers = Vec::new();
        for store in [store.clone(), other.clone(), store.clone(), other] {
            let in_flight = in_flight.clone();
            claimers.push(tokio::spawn(async move {
                let mut taken = Vec::new();
                let mut idle = 0;
                while idle < 20 {
                    let now = now_ms();
                    let claimed = store
                        .claim_deliveries(now, 3, now + 60_000)
                        .await
                        .expect("claim");
                    if claimed.is_empty() {
                        idle += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                        continue;
                    }
                    idle = 0;
                    for c in &claimed {
                        let fresh = in_flight
                            .lock()
                            .expect("set")
                            .insert(c.delivery.webhook_id.clone());
                        assert!(fresh, "two leases of {} at once", c.delivery.webhook_id);
                    }
                    tokio::task::yield_now().await;
                    for c in claimed {
                        // Out of the set while the lease still holds, so
                        // nobody can take the subscription in between.
                        in_flight
                            .lock()
                            .expect("set")
                            .remove(&c.delivery.webhook_id);
                        store
                            .record_attempt(&c.delivery.id, &attempt(now, true))
                            .await
                            .expect("record");
                        taken.push(c.delivery.id);
                    }
                }
                taken
            }));
        }
        let mut all = Vec::new();
        for claimer in claimers {
            all.extend(claimer.await.expect("claimer"));
        }
        let count = all.len();
        all.sort();
        all.dedup();
        assert_eq!(count, all.len(), "a delivery was leased twice");
        assert_eq!(all.len(), 120, "every delivery was leased");
    }

    /// Subscriptions deleted while their deliveries' attempts are being
    /// recorded, 40 at once: every call succeeds (an attempt of a deleted
    /// subscription records nothing). Recording locked the delivery
    /// before the subscription, a delete the other way round, and
    /// PostgreSQL broke the deadlock by failing one of them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn deleting_a_subscription_while_its_attempt_is_recorded_fails_neither() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = store_with_hook(dir.path()).await;
        let ids: Vec<String> = (2..42).map(|n| format!("wh_{n}")).collect();
        for id in &ids {
            store.insert_webhook(&push_hook(id)).await.expect("hook");
        }
        let events = store
            .insert_events("r1", "acme/web", None, &[push()])
            .await
            .expect("event");
        deliver_to_every_hook(&store, &events).await;
        let other = store.reopen().await;
        let mut tasks = Vec::new();
        for id in ids {
            let delivery = format!("msg_{id}_{}", events[0].id);
            let recorder = store.clone();
            tasks.push(tokio::spawn(async move {
                let now = now_ms();
                recorder
                    .record_attempt(&delivery, &attempt(now, false))
                    .await
                    .map(drop)
            }));
            let deleter = other.clone();
            tasks.push(tokio::spawn(async move {
                deleter.delete_webhook(Some("r1"), &id).await.map(drop)
            }));
        }
        for task in tasks {
            task.await.expect("task").expect("neither fails");
        }
    }

    #[tokio::test]
    async fn an_event_is_consumed_once_and_a_lease_is_exclusive_until_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, hook) = store_with_hook(dir.path()).await;
        assert_eq!(hook.after_event_id, 0);
        let events = store
            .insert_events("r1", "acme/web", None, &[push()])
            .await
            .expect("events");
        let deliver = |_: &EventRow, hooks: &[WebhookRow]| -> Vec<NewDeliveryOwned> {
            hooks
                .iter()
                .map(|h| NewDeliveryOwned {
                    id: format!("msg_{}", h.id),
                    webhook_id: h.id.clone(),
                    event_type: "push".into(),
                    body: std::sync::Arc::from(&b"{}"[..]),
                })
                .collect()
        };
        let cursor = store.webhook_cursor().await.expect("cursor");
        assert_eq!(
            store
                .consume_events(cursor, &events, deliver)
                .await
                .expect("consume"),
            Some(1)
        );
        // A second consumer with the old cursor finds it moved and writes nothing.
        assert_eq!(
            store
                .consume_events(cursor, &events, deliver)
                .await
                .expect("consume"),
            None
        );

        let now = now_ms();
        let claimed = store
            .claim_deliveries(now, 10, now + 60_000)
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].delivery.id, "msg_wh_1");
        assert!(
            store
                .claim_deliveries(now, 10, now + 60_000)
                .await
                .expect("claim")
                .is_empty()
        );
        assert_eq!(store.release_webhook_leases().await.expect("release"), 1);
        let again = store
            .claim_deliveries(now, 10, now + 60_000)
            .await
            .expect("claim");
        assert_eq!(
            again[0].delivery.id, "msg_wh_1",
            "the same webhook-id after a restart"
        );

        let failures = store
            .record_attempt(
                "msg_wh_1",
                &AttemptOutcome {
                    started_at_ms: now,
                    duration_ms: 1,
                    request_headers: "[]",
                    response_status: Some(500),
                    response_headers: "[]",
                    response_body: b"no",
                    response_body_truncated: false,
                    error: None,
                    status: DeliveryState::Pending,
                    next_attempt_at: Some(now + 1000),
                    success: false,
                },
            )
            .await
            .expect("record");
        assert_eq!(failures, 1);
        assert!(
            store
                .claim_deliveries(now, 10, now + 60_000)
                .await
                .expect("claim")
                .is_empty(),
            "not due yet"
        );

        let notice = store
            .disable_webhook("wh_1", "gone")
            .await
            .expect("disable");
        assert_eq!(notice.map(|e| e.kind).as_deref(), Some("webhook.disabled"));
        assert!(
            store
                .disable_webhook("wh_1", "gone")
                .await
                .expect("disable")
                .is_none()
        );
        let failed = store
            .delivery("wh_1", "msg_wh_1")
            .await
            .expect("read")
            .expect("exists");
        assert_eq!(failed.status, DeliveryState::Failed);
    }
}
