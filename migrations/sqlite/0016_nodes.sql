-- Sandbox nodes: hosts that run sandboxes for the control plane.
--
-- An admin adds a node by name and gets its token once; only the token's
-- SHA-256 is kept. The node reports itself with that token every few
-- seconds: where it serves sandboxes (`address`), the key the control
-- plane presents there (`node_key`, made anew at each start of the node),
-- the SHA-256 of the TLS certificate it serves with (`tls_sha256`, also
-- new at each start; none when it serves in clear on loopback), its
-- backend, labels and capacity. A node is up while its last report
-- is recent; nothing else marks it.
CREATE TABLE nodes (
    id                TEXT PRIMARY KEY NOT NULL,
    name              TEXT NOT NULL UNIQUE,
    token_hash        TEXT NOT NULL UNIQUE,
    address           TEXT,
    node_key          TEXT,
    tls_sha256        TEXT,
    backend           TEXT,
    labels            TEXT NOT NULL DEFAULT '{}',   -- JSON object
    memory_bytes      INTEGER NOT NULL DEFAULT 0,
    free_memory_bytes INTEGER NOT NULL DEFAULT 0,
    vcpus             INTEGER NOT NULL DEFAULT 0,
    disk_bytes        INTEGER NOT NULL DEFAULT 0,
    free_disk_bytes   INTEGER NOT NULL DEFAULT 0,
    last_seen_unix    INTEGER,
    created_at        TEXT NOT NULL
);

-- Which node holds a sandbox (by the backend's sandbox id); a sandbox
-- without a row runs on the control plane's own host.
CREATE TABLE sandbox_nodes (
    sandbox_id TEXT PRIMARY KEY NOT NULL,
    node_id    TEXT NOT NULL REFERENCES nodes (id)
);

CREATE INDEX sandbox_nodes_by_node ON sandbox_nodes (node_id);
