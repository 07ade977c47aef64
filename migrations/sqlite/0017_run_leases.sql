-- Run leases: the forge process that runs a run (`owner`, an id it makes
-- at start) holds it until `lease_until` (unix s) and renews it while the
-- run lives; `turn` is 1 once the run holds its branch (runs of a branch
-- never overlap, whichever process runs them). A run whose lease lapsed
-- belongs to a process that stopped: another takes it over.
ALTER TABLE runs ADD COLUMN owner TEXT;
ALTER TABLE runs ADD COLUMN lease_until BIGINT;
ALTER TABLE runs ADD COLUMN turn BIGINT NOT NULL DEFAULT 0;
CREATE INDEX runs_live ON runs (state) WHERE state IN ('queued', 'running');
