-- Snapshots kept in the snapshot store: see
-- migrations/sqlite/0020_stored_snapshots.sql.
CREATE TABLE stored_snapshots (
    sandbox_id TEXT PRIMARY KEY NOT NULL,
    token      TEXT NOT NULL,
    object_key TEXT,
    bytes      BIGINT NOT NULL DEFAULT 0,
    sha256     TEXT,
    stored_at  BIGINT,
    resuming_since BIGINT
);
