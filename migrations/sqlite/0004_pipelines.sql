-- Branch pipelines: each branch's sandbox, each run and its steps, and how
-- far the pipeline consumer has read the events outbox.

CREATE TABLE branch_sandboxes (
    repo_id      TEXT NOT NULL REFERENCES repos (id) ON DELETE CASCADE,
    branch       TEXT NOT NULL,
    vm_id        TEXT NOT NULL,
    commit_id    TEXT,              -- last commit checked out in it
    install_hash TEXT,              -- hash of the manifests its dependencies were installed from
    PRIMARY KEY (repo_id, branch)
);

CREATE TABLE runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    repo_id     TEXT NOT NULL REFERENCES repos (id) ON DELETE CASCADE,
    repo_name   TEXT NOT NULL,
    branch      TEXT NOT NULL,
    commit_id   TEXT NOT NULL,
    event_id    INTEGER NOT NULL UNIQUE,   -- the push that caused it: one run per push
    state       TEXT NOT NULL,             -- queued | running | passed | failed | cancelled | error
    vm_id       TEXT,
    error       TEXT,
    created_at  TEXT NOT NULL,
    started_at  TEXT,
    finished_at TEXT
);
CREATE INDEX runs_by_repo ON runs (repo_id, id);

CREATE TABLE run_steps (
    run_id      INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    position    INTEGER NOT NULL,
    name        TEXT NOT NULL,
    command     TEXT NOT NULL,
    status      TEXT NOT NULL,             -- pending | running | passed | failed | skipped | cancelled
    exit_code   INTEGER,
    duration_ms INTEGER,
    log         TEXT NOT NULL DEFAULT '',  -- stdout and stderr interleaved, bounded
    PRIMARY KEY (run_id, position)
);

CREATE TABLE pipeline_cursor (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    last_event_id INTEGER NOT NULL
);
INSERT INTO pipeline_cursor (id, last_event_id) VALUES (1, 0);
