-- executions.job_id referenced jobs (id) ON DELETE CASCADE. The foreign key's check looked
-- the job up (a query of its own) for every execution inserted: 22 % of the time of the
-- leader's insert of 20,000 executions (0.367 s against 0.285 s without it, medians of 4;
-- issue 18, cost per execution). Every writer of executions reads or locks its job first
-- (the leader fires jobs it has locked; a trigger or a re-drive inserts from the job's
-- row; a workflow's nodes are jobs of the workflow it locked), and jobsched never deletes
-- a job. A job deleted by hand still takes its executions (and, by
-- history_delete_attempts, their attempts) with it, as the cascade did: a trigger on
-- jobs does it once per statement.
ALTER TABLE executions DROP CONSTRAINT executions_job_id_fkey;

CREATE FUNCTION jobs_delete_executions() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM executions e USING jobs_deleted d WHERE e.job_id = d.id;
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_delete_executions AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS jobs_deleted
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_delete_executions();
