-- A GitHub delivery is known by the SHA-256 of its signed body as well as
-- by its X-GitHub-Delivery id, which no signature covers: a captured
-- delivery replayed under a new id is a duplicate too.
ALTER TABLE github_deliveries ADD COLUMN body_sha256 TEXT;
CREATE UNIQUE INDEX github_deliveries_body ON github_deliveries (body_sha256);
