-- Sandboxes paused to disk whose snapshot is kept in the snapshot store
-- (`forge serve --snapshot-store s3://…`). A row is written with a fresh
-- `token` before the pause; the upload that follows fills `object_key` and
-- `bytes` only while the row still carries its token, so an upload that
-- finishes after the sandbox was resumed (row gone) or paused again (new
-- token) records nothing. `sha256` is the object's as uploaded: a copy
-- read back is checked against it before a node receives its last byte.
-- A sandbox with an `object_key` can be resumed on another node when its
-- own is lost, unless `resuming_since` says a resume where it is has
-- claimed the copy (until that resume fails). Any change of the VM's state
-- out of `paused_to_disk` deletes the row.
CREATE TABLE stored_snapshots (
    sandbox_id TEXT PRIMARY KEY NOT NULL,
    token      TEXT NOT NULL,
    object_key TEXT,
    bytes      BIGINT NOT NULL DEFAULT 0,
    sha256     TEXT,
    stored_at  BIGINT,
    resuming_since BIGINT
);
