-- Template build leases: the forge process running a build renews
-- `lease_until` (unix s) while it lives. A build still `building` past its
-- lease belongs to a process that stopped, and is failed by the server
-- holding the duties (store/locks.rs), whichever server it ran on.
ALTER TABLE template_builds ADD COLUMN lease_until BIGINT;
