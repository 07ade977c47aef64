-- Webhook subscriptions, their deliveries and each delivery's attempts
-- (issue 5). Record times (created_at, updated_at) are RFC 3339 text as in
-- 0001; scheduling times, compared in SQL, are Unix milliseconds.

CREATE TABLE webhooks (
    id                     TEXT PRIMARY KEY NOT NULL,  -- wh_<random>
    repo_id                TEXT NOT NULL REFERENCES repos (id) ON DELETE CASCADE,
    url                    TEXT NOT NULL,
    events                 TEXT NOT NULL,              -- JSON array of event names or "*"
    branches               TEXT NOT NULL DEFAULT '[]', -- JSON array of globs
    paths                  TEXT NOT NULL DEFAULT '[]', -- JSON array of globs
    active                 INTEGER NOT NULL DEFAULT 1,
    secret                 TEXT NOT NULL,              -- needed to sign: cannot be hashed
    previous_secret        TEXT,                       -- still signs until previous_secret_until
    previous_secret_until  INTEGER,
    consecutive_failures   INTEGER NOT NULL DEFAULT 0,
    disabled_reason        TEXT,
    after_event_id         INTEGER NOT NULL,           -- events up to this id predate the webhook
    revision               INTEGER NOT NULL DEFAULT 1, -- bumped on every change (filter cache key)
    created_at             TEXT NOT NULL,
    updated_at             TEXT NOT NULL
);
CREATE INDEX webhooks_repo ON webhooks (repo_id);

CREATE TABLE webhook_deliveries (
    seq                    INTEGER PRIMARY KEY AUTOINCREMENT, -- creation order
    id                     TEXT NOT NULL UNIQUE,       -- msg_<random>: the webhook-id
    webhook_id             TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id               INTEGER,                    -- NULL for pings
    event_type             TEXT NOT NULL,
    body                   BLOB NOT NULL,
    status                 TEXT NOT NULL DEFAULT 'pending', -- pending | delivered | failed
    attempts               INTEGER NOT NULL DEFAULT 0,
    schedule_base          INTEGER NOT NULL DEFAULT 0, -- attempts before the last redelivery
    next_attempt_at        INTEGER NOT NULL,
    lease_until            INTEGER,
    created_at             TEXT NOT NULL,
    UNIQUE (webhook_id, event_id)                      -- one delivery per subscription per event
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_by_hook ON webhook_deliveries (webhook_id, seq);

CREATE TABLE webhook_attempts (
    id                     INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id            TEXT NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt                INTEGER NOT NULL,
    started_at             INTEGER NOT NULL,
    duration_ms            INTEGER NOT NULL,
    request_headers        TEXT NOT NULL,              -- JSON [[name, value]], signatures redacted
    response_status        INTEGER,
    response_headers       TEXT NOT NULL,              -- JSON [[name, value]]
    response_body          BLOB NOT NULL,              -- first 4 KiB
    response_body_truncated INTEGER NOT NULL,
    error                  TEXT,
    next_attempt_at        INTEGER                     -- NULL when done or given up
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, attempt);

-- How far the webhook consumer has read the events outbox. Events recorded
-- before webhooks existed cannot match a subscription: start after them.
CREATE TABLE webhook_cursor (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    last_event_id INTEGER NOT NULL
);
INSERT INTO webhook_cursor (id, last_event_id) VALUES (1, (SELECT COALESCE(MAX(id), 0) FROM events));
