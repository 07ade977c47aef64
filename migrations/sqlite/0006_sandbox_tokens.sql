-- A sandbox's git token names its VM: its pushes are limited to that VM's
-- branch and branches of its own (forge/src/git/push/rules.rs). Kept in the
-- token row itself, not looked up from the VM, so that the limit holds for
-- as long as the token lives, whatever becomes of the VM's record.

ALTER TABLE tokens ADD COLUMN vm_id TEXT;  -- NULL: not a sandbox's token

-- Tokens the git relay minted before this column existed.
UPDATE tokens SET vm_id = substr(name, 9)
 WHERE substr(name, 1, 8) = 'sandbox:' AND length(name) > 8;
