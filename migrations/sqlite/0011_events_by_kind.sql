-- Events of one kind in a repository, newest last: a run's page reads the
-- forge's review of its branch (the `review.posted` event naming it)
-- without reading every event of the repository.
CREATE INDEX events_by_kind ON events (repo_id, kind, id);
