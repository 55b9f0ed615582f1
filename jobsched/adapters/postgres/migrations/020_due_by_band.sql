-- The leader takes due jobs highest band first (select_due_jobs, leader.sql). With
-- jobs_due on next_fire_at alone, that order was a sort of every due job on each batch:
-- 20,000 jobs due at once (a herd, a burn-down) were read and sorted again for each
-- batch of 1,000, 11 ms per batch at the start, 237 ms of PostgreSQL's time in a
-- burn-down of 20,000 (pg_stat_statements; issue 18, cost per execution). Keyed by band,
-- then time, each band's due jobs are read in order and a batch reads only what it fires.
DROP INDEX jobs_due;
CREATE INDEX jobs_due ON jobs (priority, next_fire_at)
    WHERE state = 'active' AND next_fire_at IS NOT NULL;

-- The bands are ranks 0 (high), 1 (normal) and 2 (low) (jobsched.domain.priority); the
-- leader reads each band by its rank, so a job of any other rank would never be fired.
ALTER TABLE jobs ADD CONSTRAINT jobs_priority_check CHECK (priority IN (0, 1, 2));
