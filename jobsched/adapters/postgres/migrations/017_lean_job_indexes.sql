-- A jobs row is written three times in the life of a one-shot job (created, fired,
-- completed), and none of these writes can be a HOT update: next_fire_at and state are in
-- jobs_due. So each write adds an entry to every index of jobs. Two indexes held an entry
-- for every job although most jobs have nothing to find there (issue 18, cost per
-- execution):
--
-- The Idempotency-Key: only creates that sent one have a key. A unique index treats NULLs
-- as distinct, so the partial index enforces exactly what the constraint did; the inserts
-- name its predicate in ON CONFLICT (jobs.sql, insert_job_keyed).
CREATE UNIQUE INDEX jobs_idempotency ON jobs (namespace, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
ALTER TABLE jobs DROP CONSTRAINT jobs_namespace_idempotency_key_key;

-- The labels: a filter on labels is a containment of a non-empty object (an empty filter
-- is no filter: PostgresJobs.list_jobs passes NULL), which a job without labels never
-- matches; list_jobs says so (`labels <> '{}'`), so the partial index serves it.
DROP INDEX jobs_labels;
CREATE INDEX jobs_labels ON jobs USING gin (labels jsonb_path_ops) WHERE labels <> '{}'::jsonb;
