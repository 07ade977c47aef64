-- What the admin sets of a node: see migrations/sqlite/0018_node_caps.sql.
ALTER TABLE nodes ADD COLUMN set_labels TEXT;
ALTER TABLE nodes ADD COLUMN max_memory_bytes BIGINT;
