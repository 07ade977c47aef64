-- Sandbox nodes: hosts that run sandboxes for the control plane, and the
-- `lost` state of a VM whose node stopped reporting (the vms table is
-- rebuilt for its CHECK).
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

CREATE TABLE vms_new (
    id                TEXT PRIMARY KEY NOT NULL,
    backend           TEXT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('running', 'paused', 'paused_to_disk', 'crashed', 'lost')),
    repo_id           TEXT REFERENCES repos (id) ON DELETE SET NULL,
    branch            TEXT,
    parent_id         TEXT,
    vcpus             INTEGER NOT NULL,
    mem_mib           INTEGER NOT NULL,
    persistent        INTEGER NOT NULL,
    idle_timeout_secs INTEGER,
    created_by        TEXT,
    created_at        TEXT NOT NULL,
    last_active_unix  INTEGER NOT NULL,
    labels            TEXT NOT NULL DEFAULT '{}',
    expires_unix      INTEGER,
    snapshot_id       TEXT,
    template          TEXT,
    workdir           TEXT
);

INSERT INTO vms_new (id, backend, state, repo_id, branch, parent_id, vcpus, mem_mib, persistent,
                     idle_timeout_secs, created_by, created_at, last_active_unix, labels,
                     expires_unix, snapshot_id, template, workdir)
SELECT id, backend, state, repo_id, branch, parent_id, vcpus, mem_mib, persistent,
       idle_timeout_secs, created_by, created_at, last_active_unix, labels,
       expires_unix, snapshot_id, template, workdir
FROM vms;

DROP TABLE vms;
ALTER TABLE vms_new RENAME TO vms;

CREATE INDEX vms_by_state ON vms (state, last_active_unix);
CREATE INDEX vms_by_expiry ON vms (expires_unix) WHERE expires_unix IS NOT NULL;
CREATE INDEX vms_by_creation ON vms (created_at, id);
