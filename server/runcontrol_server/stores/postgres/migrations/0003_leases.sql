-- runcontrol schema 3: worker leases. A claim may take a lease its worker renews; when
-- it lapses the janitor returns the run to PENDING (attempts left) or ends it ERROR.
-- attempt/max_attempts/lease_ttl are part of the run's record (revisioned); the lapse
-- time is not: renewals move it without a revision, as etcd's lease keep-alives do.
ALTER TABLE rc_runs
    ADD COLUMN attempt          integer NOT NULL DEFAULT 0,
    ADD COLUMN max_attempts     integer NOT NULL DEFAULT 1,
    ADD COLUMN lease_ttl        bigint,          -- microseconds; NULL: no lease held
    ADD COLUMN lease_expires_at timestamptz;
-- The janitor: held leases by when they lapse.
CREATE INDEX rc_runs_lease ON rc_runs (lease_expires_at)
    WHERE status = 'running' AND lease_expires_at IS NOT NULL;
