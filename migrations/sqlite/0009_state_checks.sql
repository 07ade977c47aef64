-- Every state column accepts exactly the spellings of its enum in
-- `api-types/src/states.rs`; a value outside them is refused by the
-- database instead of being read back as garbage.
--
-- SQLite cannot add a CHECK to an existing table, so each table is rebuilt
-- by the procedure of https://www.sqlite.org/lang_altertable.html#otheralter:
-- create the new table, copy the rows, drop the old one, rename, recreate
-- its indexes. Dropping a table is an implicit DELETE, which with foreign
-- keys on would cascade into its children (every run's steps, every
-- delivery's attempts): this migration relies on running with foreign keys
-- OFF, which `Store::open` guarantees by migrating on a connection of its
-- own (sqlx runs each SQLite migration inside a transaction, where
-- `PRAGMA foreign_keys` cannot be changed). The last statement checks that
-- every foreign key still holds, so a broken copy rolls the whole
-- migration back.
--
-- AUTOINCREMENT counters (`runs.id`, `webhook_deliveries.seq`) are carried
-- over so that ids of deleted rows are never handed out again.

-- vms -----------------------------------------------------------------
CREATE TABLE vms_new (
    id                TEXT PRIMARY KEY NOT NULL,
    backend           TEXT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('running', 'paused', 'paused_to_disk', 'crashed')),
    repo_id           TEXT REFERENCES repos (id) ON DELETE SET NULL,
    branch            TEXT,
    parent_id         TEXT,
    vcpus             INTEGER NOT NULL,
    mem_mib           INTEGER NOT NULL,
    persistent        INTEGER NOT NULL,
    idle_timeout_secs INTEGER,
    created_by        TEXT,
    created_at        TEXT NOT NULL,
    last_active_unix  INTEGER NOT NULL
);
INSERT INTO vms_new (id, backend, state, repo_id, branch, parent_id, vcpus, mem_mib, persistent,
                     idle_timeout_secs, created_by, created_at, last_active_unix)
SELECT id, backend, state, repo_id, branch, parent_id, vcpus, mem_mib, persistent,
       idle_timeout_secs, created_by, created_at, last_active_unix FROM vms;
DROP TABLE vms;
ALTER TABLE vms_new RENAME TO vms;
CREATE INDEX vms_by_state ON vms (state, last_active_unix);

-- runs ------------------------------------------------------------------
CREATE TABLE runs_new (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    repo_id     TEXT NOT NULL REFERENCES repos (id) ON DELETE CASCADE,
    repo_name   TEXT NOT NULL,
    branch      TEXT NOT NULL,
    commit_id   TEXT NOT NULL,
    event_id    INTEGER NOT NULL UNIQUE,
    state       TEXT NOT NULL CHECK (state IN ('queued', 'running', 'passed', 'failed', 'cancelled', 'error')),
    vm_id       TEXT,
    error       TEXT,
    created_at  TEXT NOT NULL,
    started_at  TEXT,
    finished_at TEXT,
    plan_ref    TEXT,
    plan_commit TEXT
);
INSERT INTO runs_new (id, repo_id, repo_name, branch, commit_id, event_id, state, vm_id, error,
                      created_at, started_at, finished_at, plan_ref, plan_commit)
SELECT id, repo_id, repo_name, branch, commit_id, event_id, state, vm_id, error,
       created_at, started_at, finished_at, plan_ref, plan_commit FROM runs;
DELETE FROM sqlite_sequence WHERE name = 'runs_new';
INSERT INTO sqlite_sequence (name, seq) SELECT 'runs_new', seq FROM sqlite_sequence WHERE name = 'runs';
DROP TABLE runs;
ALTER TABLE runs_new RENAME TO runs;
CREATE INDEX runs_by_repo ON runs (repo_id, id);

-- run_steps -------------------------------------------------------------
CREATE TABLE run_steps_new (
    run_id      INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    position    INTEGER NOT NULL,
    name        TEXT NOT NULL,
    command     TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'running', 'passed', 'failed', 'skipped', 'cancelled')),
    exit_code   INTEGER,
    duration_ms INTEGER,
    log         TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, position)
);
INSERT INTO run_steps_new (run_id, position, name, command, status, exit_code, duration_ms, log)
SELECT run_id, position, name, command, status, exit_code, duration_ms, log FROM run_steps;
DROP TABLE run_steps;
ALTER TABLE run_steps_new RENAME TO run_steps;

-- webhook_deliveries ----------------------------------------------------
CREATE TABLE webhook_deliveries_new (
    seq                    INTEGER PRIMARY KEY AUTOINCREMENT,
    id                     TEXT NOT NULL UNIQUE,
    webhook_id             TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id               INTEGER,
    event_type             TEXT NOT NULL,
    body                   BLOB NOT NULL,
    status                 TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts               INTEGER NOT NULL DEFAULT 0,
    schedule_base          INTEGER NOT NULL DEFAULT 0,
    next_attempt_at        INTEGER NOT NULL,
    lease_until            INTEGER,
    created_at             TEXT NOT NULL,
    UNIQUE (webhook_id, event_id)
);
INSERT INTO webhook_deliveries_new (seq, id, webhook_id, event_id, event_type, body, status, attempts,
                                    schedule_base, next_attempt_at, lease_until, created_at)
SELECT seq, id, webhook_id, event_id, event_type, body, status, attempts,
       schedule_base, next_attempt_at, lease_until, created_at FROM webhook_deliveries;
DELETE FROM sqlite_sequence WHERE name = 'webhook_deliveries_new';
INSERT INTO sqlite_sequence (name, seq)
SELECT 'webhook_deliveries_new', seq FROM sqlite_sequence WHERE name = 'webhook_deliveries';
DROP TABLE webhook_deliveries;
ALTER TABLE webhook_deliveries_new RENAME TO webhook_deliveries;
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_by_hook ON webhook_deliveries (webhook_id, seq);

-- github_refs -------------------------------------------------------------
CREATE TABLE github_refs_new (
    repo_id      TEXT NOT NULL REFERENCES github_links (repo_id) ON DELETE CASCADE,
    ref_name     TEXT NOT NULL,
    synced_sha   TEXT,
    forge_sha    TEXT,
    github_sha   TEXT,
    state        TEXT NOT NULL CHECK (state IN ('in_sync', 'ahead', 'behind', 'diverged', 'error')),
    last_sync_at TEXT NOT NULL,
    last_error   TEXT,
    PRIMARY KEY (repo_id, ref_name)
);
INSERT INTO github_refs_new (repo_id, ref_name, synced_sha, forge_sha, github_sha, state,
                             last_sync_at, last_error)
SELECT repo_id, ref_name, synced_sha, forge_sha, github_sha, state, last_sync_at, last_error
  FROM github_refs;
DROP TABLE github_refs;
ALTER TABLE github_refs_new RENAME TO github_refs;

-- github_pulls ------------------------------------------------------------
CREATE TABLE github_pulls_new (
    repo_id    TEXT NOT NULL REFERENCES github_links (repo_id) ON DELETE CASCADE,
    number     INTEGER NOT NULL,
    head_ref   TEXT NOT NULL,
    head_sha   TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('open', 'closed')),
    updated_at TEXT NOT NULL,
    base_ref   TEXT,
    PRIMARY KEY (repo_id, number)
);
INSERT INTO github_pulls_new (repo_id, number, head_ref, head_sha, state, updated_at, base_ref)
SELECT repo_id, number, head_ref, head_sha, state, updated_at, base_ref FROM github_pulls;
DROP TABLE github_pulls;
ALTER TABLE github_pulls_new RENAME TO github_pulls;

-- github_reviews ----------------------------------------------------------
CREATE TABLE github_reviews_new (
    repo_id      TEXT NOT NULL REFERENCES github_links (repo_id) ON DELETE CASCADE,
    number       INTEGER NOT NULL,
    head_sha     TEXT NOT NULL,
    run_id       INTEGER NOT NULL,
    verdict      TEXT NOT NULL CHECK (verdict IN ('COMMENT', 'APPROVE', 'REQUEST_CHANGES')),
    review_id    INTEGER,
    check_run_id INTEGER,
    posted_at    TEXT,
    PRIMARY KEY (repo_id, number, head_sha)
);
INSERT INTO github_reviews_new (repo_id, number, head_sha, run_id, verdict, review_id, check_run_id,
                                posted_at)
SELECT repo_id, number, head_sha, run_id, verdict, review_id, check_run_id, posted_at
  FROM github_reviews;
DROP TABLE github_reviews;
ALTER TABLE github_reviews_new RENAME TO github_reviews;

-- Every foreign key still holds: a row of the temporary table below
-- violates its CHECK (and fails the migration) unless the check finds
-- nothing.
CREATE TEMP TABLE state_checks_foreign_keys (violations INTEGER NOT NULL CHECK (violations = 0));
INSERT INTO state_checks_foreign_keys SELECT COUNT(*) FROM pragma_foreign_key_check;
DROP TABLE state_checks_foreign_keys;
