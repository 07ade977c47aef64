-- Fleet control: a VM's labels (a JSON object of strings, set on create,
-- inherited by forks, filtered on by `GET /v1/vms?label=k:v`) and its
-- deadline (`ttl_secs`): at `expires_unix` the VM is destroyed whatever
-- its activity. NULL: no deadline.
ALTER TABLE vms ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
ALTER TABLE vms ADD COLUMN expires_unix INTEGER;
CREATE INDEX vms_by_expiry ON vms (expires_unix) WHERE expires_unix IS NOT NULL;
-- Listing pages through VMs in creation order.
CREATE INDEX vms_by_creation ON vms (created_at, id);
