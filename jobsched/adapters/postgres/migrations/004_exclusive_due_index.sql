-- The leader fires jobs with concurrency 'allow' a little ahead of their time (workers
-- hold them until due) but forbid/replace jobs only when due; this index finds the next
-- of the latter without walking every allow job.
CREATE INDEX jobs_due_exclusive ON jobs (next_fire_at)
    WHERE state = 'active' AND next_fire_at IS NOT NULL AND concurrency <> 'allow';
