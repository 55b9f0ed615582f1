-- Priority (issue 15): each execution carries its job's band (0 high, 1 normal, 2 low)
-- from its fire, so retries and re-drives keep it while a PATCH changes later fires only.
-- Lost attempts (issue 21): an attempt that ended because its worker died (lease lapsed)
-- or handed it back on shutdown does not use up the job's failure budget
-- (uncounted_attempts); lease lapses alone are bounded apart (lost_attempts), so a task
-- that kills its worker every time still ends dead.
ALTER TABLE executions
    ADD COLUMN priority           smallint NOT NULL DEFAULT 1,
    ADD COLUMN uncounted_attempts integer  NOT NULL DEFAULT 0,
    ADD COLUMN lost_attempts      integer  NOT NULL DEFAULT 0;

-- Per-job history limits are purged job by job, on the jobs that set one.
CREATE INDEX jobs_history_limited ON jobs (id)
    WHERE keep_succeeded IS NOT NULL OR keep_failed IS NOT NULL;
