-- Template build leases: see migrations/sqlite/0019_build_leases.sql.
ALTER TABLE template_builds ADD COLUMN lease_until BIGINT;
