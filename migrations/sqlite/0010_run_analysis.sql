-- What the analysis after a run's steps found (`forge/src/review`): the
-- tools that ran, their findings and notes, as one JSON document per run.
CREATE TABLE run_analyses (
    run_id   INTEGER PRIMARY KEY NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    analysis TEXT NOT NULL
);
