-- runcontrol schema 1: runs, threads, idempotency keys, the revision counter and the
-- change feed. Every write transaction locks its thread row first (serialising the
-- multitask strategies per thread, ENQUEUE's several active runs included), then takes
-- the ONE revision row last, in the same round trip as its COMMIT: revisions are
-- gapless and committed in order (see docs/postgres-revisions.md).

CREATE TABLE rc_revision (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    head       bigint NOT NULL,
    -- The database's clock at the newest revision, never going backwards: every
    -- timestamp a write records is this value.
    stamped_at timestamptz NOT NULL
);
INSERT INTO rc_revision (head, stamped_at) VALUES (0, clock_timestamp());

-- Kept apart from rc_revision so that trimming the feed never waits for a writer.
CREATE TABLE rc_compaction (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    revision  bigint NOT NULL
);
INSERT INTO rc_compaction (revision) VALUES (0);

CREATE TABLE rc_threads (
    thread_id text PRIMARY KEY
);

CREATE TABLE rc_runs (
    run_id             text PRIMARY KEY,
    thread_id          text NOT NULL REFERENCES rc_threads (thread_id),
    assistant_id       text,
    status             text NOT NULL,
    on_disconnect      text NOT NULL,
    multitask_strategy text NOT NULL,
    metadata_json      text NOT NULL,
    kwargs_json        text NOT NULL,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    create_revision    bigint NOT NULL UNIQUE,
    mod_revision       bigint NOT NULL,
    error              text,
    cancel_action      text NOT NULL,
    cancel_reason      text,
    worker_id          text,
    deadline           timestamptz,
    request_id         text
);
-- Listing a thread newest first, and its active runs in creation (FIFO) order.
CREATE INDEX rc_runs_thread ON rc_runs (thread_id, create_revision);
CREATE INDEX rc_runs_active ON rc_runs (thread_id, create_revision)
    WHERE status IN ('pending', 'running');
-- The janitor: deadlines of active runs, and finished runs by when they finished.
CREATE INDEX rc_runs_deadline ON rc_runs (deadline)
    WHERE status IN ('pending', 'running') AND deadline IS NOT NULL;
CREATE INDEX rc_runs_finished ON rc_runs (updated_at)
    WHERE status NOT IN ('pending', 'running');

-- request_id -> the FIRST answer, kept exactly as long as the run it created.
CREATE TABLE rc_requests (
    request_id  text PRIMARY KEY,
    fingerprint text NOT NULL,
    run_id      text NOT NULL REFERENCES rc_runs (run_id) ON DELETE CASCADE,
    outcome     jsonb NOT NULL
);
CREATE INDEX rc_requests_run ON rc_requests (run_id);

-- The change feed: one row per changed run per revision, the record as it was then.
CREATE TABLE rc_changes (
    revision     bigint NOT NULL,
    idx          integer NOT NULL,
    kind         text NOT NULL,
    prev_status  text,
    record       jsonb NOT NULL,
    committed_at timestamptz NOT NULL,
    PRIMARY KEY (revision, idx)
);
-- Trimming by age finds the newest change older than the cut-off.
CREATE INDEX rc_changes_committed ON rc_changes (committed_at);
