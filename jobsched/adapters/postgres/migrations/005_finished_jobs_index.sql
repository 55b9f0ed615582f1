-- Active jobs with no further fire: the leader completes them once their last run has
-- ended (whatever ended it: a result, the reaper, a cancel, a missed fire).
CREATE INDEX jobs_without_next_fire ON jobs (id)
    WHERE state = 'active' AND next_fire_at IS NULL;
