-- A run triggered with arguments (POST /api/v1/jobs/{id}/trigger {"args": {...}}): they
-- are merged over the python job's own args for this execution only, and kept with it
-- (retries and re-drives run with them too). NULL: the job's args as they are.
ALTER TABLE executions ADD COLUMN args jsonb;
