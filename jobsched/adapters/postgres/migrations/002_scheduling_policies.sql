-- Scheduling policies: misfire catch-up and deadline, bounds, jitter, history limits,
-- and a partial index for the "is a run of this job still active?" checks.

ALTER TABLE jobs
    ADD COLUMN max_catchup         integer NOT NULL DEFAULT 10,
    ADD COLUMN starting_deadline_s double precision,
    ADD COLUMN jitter_s            double precision NOT NULL DEFAULT 0,
    ADD COLUMN keep_succeeded      integer,
    ADD COLUMN keep_failed         integer;

CREATE INDEX executions_active ON executions (job_id)
    WHERE state IN ('queued', 'running', 'retrying');

-- Executions created by a person (trigger) rather than by a leader's fire carry epoch -1;
-- the leader publishes them on its next tick.
CREATE INDEX executions_manual_unpublished ON executions (queued_at)
    WHERE state = 'queued' AND published_at IS NULL AND epoch = -1;

-- A delivery can end without running: too late for its deadline, or its job's lock held.
ALTER TABLE attempts DROP CONSTRAINT attempts_outcome_check;
ALTER TABLE attempts ADD CONSTRAINT attempts_outcome_check
    CHECK (outcome IN ('succeeded', 'failed', 'timed_out', 'cancelled', 'lost', 'missed',
                       'skipped'));
