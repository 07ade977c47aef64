-- Sandboxes ("VMs" in the API) the forge created, whichever backend runs
-- them. The backend keeps its own records on disk; this table holds what the
-- API promises: owner, repository and branch, limits, lifecycle policy.

CREATE TABLE vms (
    id                TEXT PRIMARY KEY NOT NULL,  -- the backend's sandbox id
    backend           TEXT NOT NULL,              -- container | microvm
    state             TEXT NOT NULL,              -- running | paused | paused_to_disk | crashed
    repo_id           TEXT REFERENCES repos (id) ON DELETE SET NULL,
    branch            TEXT,
    parent_id         TEXT,                       -- the VM it was forked from
    vcpus             INTEGER NOT NULL,
    mem_mib           INTEGER NOT NULL,
    persistent        INTEGER NOT NULL,           -- 1: pause when idle; 0: destroy when idle
    idle_timeout_secs INTEGER,                    -- NULL: never idle out
    created_by        TEXT,                       -- token id
    created_at        TEXT NOT NULL,
    last_active_unix  INTEGER NOT NULL            -- last exec, file or preview request
);

CREATE INDEX vms_by_state ON vms (state, last_active_unix);
