-- Repositories, access tokens and the push-event outbox.
-- Timestamps are RFC 3339 UTC strings; ids are UUIDs (text) except event ids,
-- which are the consumers' cursor and therefore strictly increasing.

CREATE TABLE repos (
    id             TEXT PRIMARY KEY NOT NULL,  -- also the on-disk directory name
    owner          TEXT NOT NULL,
    name           TEXT NOT NULL,
    default_branch TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    UNIQUE (owner, name)
);

CREATE TABLE tokens (
    id           TEXT PRIMARY KEY NOT NULL,
    name         TEXT NOT NULL,
    secret_hash  TEXT NOT NULL UNIQUE,          -- hex SHA-256 of the secret; the secret is never stored
    scopes       TEXT NOT NULL,                 -- space-separated: admin, repo:read, repo:write
    repo_id      TEXT REFERENCES repos (id) ON DELETE CASCADE,  -- NULL: every repository
    created_at   TEXT NOT NULL,
    last_used_at TEXT,
    revoked_at   TEXT
);

CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    repo_id    TEXT NOT NULL,
    repo_name  TEXT NOT NULL,                   -- owner/name at the time of the event
    kind       TEXT NOT NULL,                   -- push, branch.created, branch.deleted, tag.created, tag.deleted
    ref_name   TEXT,
    actor      TEXT,                            -- id of the token that caused it
    payload    TEXT NOT NULL,                   -- JSON
    created_at TEXT NOT NULL
);

CREATE INDEX events_by_repo ON events (repo_id, id);
