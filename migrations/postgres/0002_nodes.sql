-- Sandbox nodes, and the `lost` state of a VM whose node stopped
-- reporting: see migrations/sqlite/0016_nodes.sql.
CREATE TABLE nodes (
    id                TEXT PRIMARY KEY NOT NULL,
    name              TEXT COLLATE "C" NOT NULL UNIQUE,
    token_hash        TEXT NOT NULL UNIQUE,
    address           TEXT,
    node_key          TEXT,
    tls_sha256        TEXT,
    backend           TEXT,
    labels            TEXT NOT NULL DEFAULT '{}',
    memory_bytes      BIGINT NOT NULL DEFAULT 0,
    free_memory_bytes BIGINT NOT NULL DEFAULT 0,
    vcpus             BIGINT NOT NULL DEFAULT 0,
    disk_bytes        BIGINT NOT NULL DEFAULT 0,
    free_disk_bytes   BIGINT NOT NULL DEFAULT 0,
    last_seen_unix    BIGINT,
    created_at        TEXT NOT NULL
);

CREATE TABLE sandbox_nodes (
    sandbox_id TEXT PRIMARY KEY NOT NULL,
    node_id    TEXT NOT NULL REFERENCES nodes (id)
);

CREATE INDEX sandbox_nodes_by_node ON sandbox_nodes (node_id);

ALTER TABLE vms DROP CONSTRAINT vms_state_check;
ALTER TABLE vms ADD CONSTRAINT vms_state_check
    CHECK (state IN ('running', 'paused', 'paused_to_disk', 'crashed', 'lost'));
