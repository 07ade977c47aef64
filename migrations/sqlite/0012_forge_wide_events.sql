-- Events and webhooks of the whole forge, not only of one repository. A
-- sandbox created without a repository still has a life an operator
-- watches (created, paused, resumed, forked, deleted, crashed, expired):
-- its events are recorded with `repo_id` and `repo_name` NULL. A webhook
-- whose `repo_id` is NULL is forge-wide: it receives the events of every
-- repository and of none (admins alone create one).
--
-- Both tables are rebuilt as in 0009 (SQLite cannot drop a NOT NULL), with
-- foreign keys off (see there): `webhook_deliveries` keeps referring to
-- `webhooks` by name, which the new table takes. The events' AUTOINCREMENT
-- counter is carried over: an event id, every consumer's cursor, is never
-- handed out twice.

-- events ----------------------------------------------------------------
CREATE TABLE events_new (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    repo_id    TEXT,                            -- NULL: an event of the forge (a sandbox without a repository)
    repo_name  TEXT,                            -- owner/name at the time of the event
    kind       TEXT NOT NULL,
    ref_name   TEXT,
    actor      TEXT,                            -- id of the token that caused it
    payload    TEXT NOT NULL,                   -- JSON
    created_at TEXT NOT NULL
);
INSERT INTO events_new (id, repo_id, repo_name, kind, ref_name, actor, payload, created_at)
SELECT id, repo_id, repo_name, kind, ref_name, actor, payload, created_at FROM events;
DELETE FROM sqlite_sequence WHERE name = 'events_new';
INSERT INTO sqlite_sequence (name, seq) SELECT 'events_new', seq FROM sqlite_sequence WHERE name = 'events';
DROP TABLE events;
ALTER TABLE events_new RENAME TO events;
CREATE INDEX events_by_repo ON events (repo_id, id);
CREATE INDEX events_by_kind ON events (repo_id, kind, id);

-- webhooks --------------------------------------------------------------
CREATE TABLE webhooks_new (
    id                     TEXT PRIMARY KEY NOT NULL,
    repo_id                TEXT REFERENCES repos (id) ON DELETE CASCADE,  -- NULL: forge-wide
    url                    TEXT NOT NULL,
    events                 TEXT NOT NULL,
    branches               TEXT NOT NULL DEFAULT '[]',
    paths                  TEXT NOT NULL DEFAULT '[]',
    active                 INTEGER NOT NULL DEFAULT 1,
    secret                 TEXT NOT NULL,
    previous_secret        TEXT,
    previous_secret_until  INTEGER,
    consecutive_failures   INTEGER NOT NULL DEFAULT 0,
    disabled_reason        TEXT,
    after_event_id         INTEGER NOT NULL,
    revision               INTEGER NOT NULL DEFAULT 1,
    created_at             TEXT NOT NULL,
    updated_at             TEXT NOT NULL
);
INSERT INTO webhooks_new (id, repo_id, url, events, branches, paths, active, secret, previous_secret,
                          previous_secret_until, consecutive_failures, disabled_reason,
                          after_event_id, revision, created_at, updated_at)
SELECT id, repo_id, url, events, branches, paths, active, secret, previous_secret,
       previous_secret_until, consecutive_failures, disabled_reason,
       after_event_id, revision, created_at, updated_at FROM webhooks;
DROP TABLE webhooks;
ALTER TABLE webhooks_new RENAME TO webhooks;
CREATE INDEX webhooks_repo ON webhooks (repo_id);

CREATE TEMP TABLE forge_wide_foreign_keys (violations INTEGER NOT NULL CHECK (violations = 0));
INSERT INTO forge_wide_foreign_keys SELECT COUNT(*) FROM pragma_foreign_key_check;
DROP TABLE forge_wide_foreign_keys;
