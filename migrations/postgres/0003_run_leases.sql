-- Run leases: see migrations/sqlite/0017_run_leases.sql.
ALTER TABLE runs ADD COLUMN owner TEXT;
ALTER TABLE runs ADD COLUMN lease_until BIGINT;
ALTER TABLE runs ADD COLUMN turn BIGINT NOT NULL DEFAULT 0;
CREATE INDEX runs_live ON runs (state) WHERE state IN ('queued', 'running');
