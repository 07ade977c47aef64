-- What the admin sets of a node when adding it, which its reports cannot
-- raise: `set_labels` (a JSON object; NULL: the node's own labels count)
-- and `max_memory_bytes` (NULL: what it reports).
ALTER TABLE nodes ADD COLUMN set_labels TEXT;
ALTER TABLE nodes ADD COLUMN max_memory_bytes BIGINT;
