-- A run may take its steps from another commit than the one it runs: the
-- review bot runs a pull request's head with the steps of its base branch.
-- Both columns are NULL for a run of the commit's own steps.
ALTER TABLE runs ADD COLUMN plan_ref TEXT;     -- the branch the steps were read from
ALTER TABLE runs ADD COLUMN plan_commit TEXT;  -- that branch's commit when the run was asked for

-- The branch a pull request merges into, whose steps review it (NULL for
-- rows recorded before: the repository's default branch).
ALTER TABLE github_pulls ADD COLUMN base_ref TEXT;
