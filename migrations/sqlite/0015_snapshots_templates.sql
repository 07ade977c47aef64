-- Named snapshots and templates.
--
-- A snapshot is a sandbox the backend keeps paused to disk (disk, and where
-- it can, memory and processes) that new VMs start from as copies; it is
-- never resumed itself. `sandbox_id` is that sandbox; `kept` what it holds
-- (a JSON array of "disk", "memory", "processes").
CREATE TABLE snapshots (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT UNIQUE,                  -- optional; unique across the forge
    sandbox_id  TEXT NOT NULL UNIQUE,
    backend     TEXT NOT NULL,
    source_vm   TEXT,                         -- the VM it was taken from (may be gone)
    repo_id     TEXT REFERENCES repos (id) ON DELETE SET NULL,
    branch      TEXT,
    vcpus       INTEGER NOT NULL,
    mem_mib     INTEGER NOT NULL,
    kept        TEXT NOT NULL,
    note        TEXT,                         -- why less than everything was kept
    build_hash  TEXT,                         -- the template build it is the image of
    created_by  TEXT NOT NULL,                -- token id
    created_at  TEXT NOT NULL
);

-- One build per template spec hash: the same spec never builds twice,
-- whatever the template's name. A ready build's snapshot is the image.
CREATE TABLE template_builds (
    spec_hash   TEXT PRIMARY KEY NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('building', 'ready', 'failed')),
    snapshot_id TEXT REFERENCES snapshots (id),
    log         TEXT NOT NULL DEFAULT '',     -- the build's output, its end kept when long
    error       TEXT,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    build_ms    INTEGER
);

-- A template: a name for a spec (JSON, as posted) and its build.
CREATE TABLE templates (
    name        TEXT PRIMARY KEY NOT NULL,
    spec        TEXT NOT NULL,
    spec_hash   TEXT NOT NULL REFERENCES template_builds (spec_hash),
    created_by  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX templates_by_hash ON templates (spec_hash);

-- What a VM started from, and the working directory its template sets
-- for commands that name none.
ALTER TABLE vms ADD COLUMN snapshot_id TEXT;
ALTER TABLE vms ADD COLUMN template TEXT;
ALTER TABLE vms ADD COLUMN workdir TEXT;
