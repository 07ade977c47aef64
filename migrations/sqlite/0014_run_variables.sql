-- The environment variables a push gave its runs (`git push -o
-- ci.variable=KEY=VALUE`): a JSON object of strings, set in every step's
-- environment and kept by a re-run. `{}` when none.
ALTER TABLE runs ADD COLUMN variables TEXT NOT NULL DEFAULT '{}';
