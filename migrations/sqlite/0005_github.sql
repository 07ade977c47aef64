-- The GitHub App: inbound webhook deliveries (stored before they are
-- processed), installations, links between forge and GitHub repositories,
-- the sync state of each ref, pull requests and the reviews posted on them.

CREATE TABLE github_deliveries (
    id           TEXT PRIMARY KEY,      -- X-GitHub-Delivery: redeliveries are dropped
    event        TEXT NOT NULL,         -- X-GitHub-Event
    payload      TEXT NOT NULL,
    received_at  TEXT NOT NULL,
    processed_at TEXT,
    error        TEXT
);
CREATE INDEX github_deliveries_pending ON github_deliveries (processed_at, received_at);

CREATE TABLE github_installations (
    id         INTEGER PRIMARY KEY,     -- GitHub's installation id
    account    TEXT NOT NULL,
    created_at TEXT NOT NULL,
    removed_at TEXT
);

CREATE TABLE github_links (
    repo_id         TEXT PRIMARY KEY REFERENCES repos (id) ON DELETE CASCADE,
    github_repo     TEXT NOT NULL UNIQUE,   -- owner/name on GitHub
    installation_id INTEGER NOT NULL,
    created_at      TEXT NOT NULL
);

-- Per ref: the last commit both sides agreed on (the merge base of the
-- three-way decision), and what the last sync saw.
CREATE TABLE github_refs (
    repo_id      TEXT NOT NULL REFERENCES github_links (repo_id) ON DELETE CASCADE,
    ref_name     TEXT NOT NULL,
    synced_sha   TEXT,
    forge_sha    TEXT,
    github_sha   TEXT,
    state        TEXT NOT NULL,         -- in_sync | ahead | behind | diverged | error
    last_sync_at TEXT NOT NULL,
    last_error   TEXT,
    PRIMARY KEY (repo_id, ref_name)
);

CREATE TABLE github_pulls (
    repo_id    TEXT NOT NULL REFERENCES github_links (repo_id) ON DELETE CASCADE,
    number     INTEGER NOT NULL,
    head_ref   TEXT NOT NULL,           -- branch name
    head_sha   TEXT NOT NULL,
    state      TEXT NOT NULL,           -- open | closed
    updated_at TEXT NOT NULL,
    PRIMARY KEY (repo_id, number)
);

-- One row per (pull request, head commit): claimed before anything is
-- posted, so a redelivery or restart posts nothing twice.
CREATE TABLE github_reviews (
    repo_id      TEXT NOT NULL REFERENCES github_links (repo_id) ON DELETE CASCADE,
    number       INTEGER NOT NULL,
    head_sha     TEXT NOT NULL,
    run_id       INTEGER NOT NULL,
    verdict      TEXT NOT NULL,         -- APPROVE | REQUEST_CHANGES
    review_id    INTEGER,
    check_run_id INTEGER,
    posted_at    TEXT,
    PRIMARY KEY (repo_id, number, head_sha)
);

-- How far the GitHub consumer has read the events outbox.
CREATE TABLE github_cursor (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    last_event_id INTEGER NOT NULL
);
INSERT INTO github_cursor (id, last_event_id) VALUES (1, 0);
