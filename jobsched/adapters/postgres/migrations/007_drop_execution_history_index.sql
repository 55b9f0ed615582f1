-- executions_job_history (job_id, scheduled_for DESC, id DESC) repeated the unique index
-- on (job_id, scheduled_for), which orders a job's executions as well (scheduled_for is
-- unique per job). Every execution row version (an insert and up to three non-HOT
-- updates each) wrote an entry into both.
DROP INDEX IF EXISTS executions_job_history;
