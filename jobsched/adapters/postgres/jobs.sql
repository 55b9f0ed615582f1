-- The api's statements: jobs as users create, change and read them, and their history.

-- insert_jobs --
-- Creates without an Idempotency-Key, of all the requests in flight, batched
-- (PostgresJobs.create_job): one statement, one round trip and one commit for all of them.
-- Under a quota (:quota > 0, per row), a create goes in only while its namespace's live
-- jobs, counted once per namespace and no further than the quota, plus those before it in
-- the batch, stay below quota - :margin; the rest are left out (the caller creates them
-- one at a time under the namespace's lock, so the count at the quota is exact). Rows go in
-- the batch's order; callers match them back by id. The leader is woken once if any of
-- them is due before its next look (an uncorrelated subquery: evaluated once, not per row).
-- The batch is one JSON array of the rows (one orjson dump: the api's CPU per row was
-- 24 µs for 26 arrays of parameters, 10 µs so; times are ISO 8601 in UTC, and a float's
-- shortest text reads back as the same double). Each row returns what the database set,
-- and the spec as jsonb stored it (its key order, 1e16 as 10000000000000000, -0.0 as 0):
-- the answer to a create is what every later read shows; the caller has the rest.
WITH batch AS (
    SELECT * FROM ROWS FROM (jsonb_to_recordset(:rows::jsonb) AS (
        id uuid, namespace text, name text, kind text, payload jsonb, schedule text,
        timezone text, next_fire_at timestamptz, max_attempts integer, backoff_s float8,
        max_backoff_s float8, timeout_s float8, labels jsonb, spec jsonb, misfire text,
        max_catchup integer, starting_deadline_s float8, concurrency text,
        start_at timestamptz, end_at timestamptz, max_runs integer, jitter_s float8,
        keep_succeeded integer, keep_failed integer, priority smallint, quota integer
    )) WITH ORDINALITY AS b(id, namespace, name, kind, payload, schedule, timezone,
                            next_fire_at, max_attempts, backoff_s, max_backoff_s, timeout_s,
                            labels, spec, misfire, max_catchup, starting_deadline_s,
                            concurrency, start_at, end_at, max_runs, jitter_s,
                            keep_succeeded, keep_failed, priority, quota, n)
), live AS (
    SELECT q.namespace, (
        SELECT count(*) FROM (
            SELECT 1 FROM jobs
            WHERE jobs.namespace = q.namespace AND jobs.state IN ('active', 'paused')
            LIMIT q.quota
        ) AS counted
    ) AS jobs
    FROM (SELECT namespace, max(quota) AS quota FROM batch WHERE quota > 0
          GROUP BY namespace) AS q
), allowed AS (
    SELECT batch.* FROM (
        SELECT *, row_number() OVER (PARTITION BY namespace, quota > 0 ORDER BY n) AS rank
        FROM batch
    ) AS batch LEFT JOIN live USING (namespace)
    WHERE batch.quota <= 0 OR live.jobs + batch.rank - 1 < batch.quota - :margin
), job AS (
    INSERT INTO jobs (id, namespace, name, kind, payload, schedule, timezone, next_fire_at,
                      max_attempts, backoff_s, max_backoff_s, timeout_s, labels, spec,
                      misfire, max_catchup, starting_deadline_s, concurrency, start_at,
                      end_at, max_runs, jitter_s, keep_succeeded, keep_failed, priority)
    SELECT id, namespace, name, kind, payload, schedule, timezone, next_fire_at,
           max_attempts, backoff_s, max_backoff_s, timeout_s, labels, spec,
           misfire, max_catchup, starting_deadline_s, concurrency, start_at,
           end_at, max_runs, jitter_s, keep_succeeded, keep_failed, priority
    FROM allowed ORDER BY n
    RETURNING id, state, run_count, created_at, updated_at, spec
)
SELECT job.*, (SELECT pg_notify(:channel, 'job') WHERE :notify::boolean) AS woke
FROM job

-- insert_job_keyed --
-- Create with an Idempotency-Key: a concurrent create with the same key waits on the
-- unique index and then inserts nothing; it answers with the winner's job instead.
INSERT INTO jobs (id, namespace, name, kind, payload, schedule, timezone, next_fire_at,
                  max_attempts, backoff_s, max_backoff_s, timeout_s, labels, spec,
                  misfire, max_catchup, starting_deadline_s, concurrency, start_at,
                  end_at, max_runs, jitter_s, keep_succeeded, keep_failed, priority,
                  idempotency_key, idempotency_digest)
VALUES (:id, :namespace, :name, :kind, :payload, :schedule, :timezone, :next_fire_at,
        :max_attempts, :backoff_s, :max_backoff_s, :timeout_s, :labels, :spec,
        :misfire, :max_catchup, :starting_deadline_s, :concurrency, :start_at,
        :end_at, :max_runs, :jitter_s, :keep_succeeded, :keep_failed, :priority,
        :idempotency_key, :idempotency_digest)
ON CONFLICT (namespace, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING *

-- job_by_idempotency_key --
-- The job an Idempotency-Key names, and whether the key has outlived its retention.
SELECT id, idempotency_digest, created_at < now() - make_interval(secs => :ttl_s) AS expired
FROM jobs WHERE namespace = :namespace AND idempotency_key = :key

-- release_idempotency_key --
-- An expired key is released, so it may name a new job.
UPDATE jobs SET idempotency_key = NULL, idempotency_digest = NULL
WHERE id = :id AND created_at < now() - make_interval(secs => :ttl_s)

-- count_live_jobs --
-- The quota: live (active or paused) jobs of a namespace, counted no further than :cap.
SELECT count(*) FROM (
    SELECT 1 FROM jobs WHERE namespace = :namespace AND state IN ('active', 'paused')
    LIMIT :cap
) AS live

-- lock_namespace --
-- Near the quota, creates of one namespace queue on this lock so the count is exact.
SELECT pg_advisory_xact_lock(hashtextextended('jobsched.ns.' || :namespace, 0))

-- lock_job --
-- (A workflow's nodes are job rows the jobs API does not show: workflow_id IS NULL here
-- and below.) By id, `namespace || ''`: here and in the other lookups of one job, a plain
-- `namespace = :namespace` let the planner, with no statistics on jobs (a fresh table,
-- autovacuum not come round), read the job through jobs_listing or jobs_live_by_namespace
-- (namespace first): every job of the namespace for one lookup (132-1,036 buffers for 12,000
-- jobs against 5 by the primary key). The namespace is still checked, on the row.
SELECT * FROM jobs WHERE id = :id AND namespace || '' = :namespace AND workflow_id IS NULL
FOR UPDATE

-- update_job --
-- PATCH: the row was locked by lock_job in the same transaction.
UPDATE jobs SET name = :name, kind = :kind, payload = :payload, schedule = :schedule,
    timezone = :timezone, next_fire_at = :next_fire_at, max_attempts = :max_attempts,
    backoff_s = :backoff_s, max_backoff_s = :max_backoff_s, timeout_s = :timeout_s,
    labels = :labels, spec = :spec, misfire = :misfire, max_catchup = :max_catchup,
    starting_deadline_s = :starting_deadline_s, concurrency = :concurrency,
    start_at = :start_at, end_at = :end_at, max_runs = :max_runs, jitter_s = :jitter_s,
    keep_succeeded = :keep_succeeded, keep_failed = :keep_failed, priority = :priority,
    updated_at = now()
WHERE id = :id
RETURNING *

-- pause_job --
UPDATE jobs SET state = 'paused', updated_at = now()
WHERE id = :id AND namespace || '' = :namespace AND state = 'active' AND workflow_id IS NULL
RETURNING id

-- resume_job --
UPDATE jobs SET state = 'active', next_fire_at = :next_fire_at, updated_at = now()
WHERE id = :id
RETURNING id

-- insert_record --
-- A run a person asked for (trigger: queued, epoch -1, published by the leader's next
-- tick; with args over the job's own, or NULL) or a fire recorded without a run (skipped
-- while paused), in the job's band. The id carries scheduled_for (migration 015).
INSERT INTO executions (id, job_id, scheduled_for, epoch, state, reason, finished_at,
                        priority, args)
SELECT jobsched_execution_id(:scheduled_for::timestamptz), :job_id::uuid,
       :scheduled_for::timestamptz, -1, :state::text, :reason::text,
       CASE WHEN :state::text = 'queued' THEN NULL ELSE now() END, j.priority,
       :args::jsonb
FROM jobs j WHERE j.id = :job_id
ON CONFLICT (job_id, scheduled_for) DO NOTHING
RETURNING *

-- notify --
SELECT pg_notify(:channel, :payload)

-- get_job --
SELECT j.*, le.last_execution
FROM jobs j
LEFT JOIN LATERAL (
    SELECT to_jsonb(e.*) AS last_execution FROM executions e
    WHERE e.job_id = j.id ORDER BY e.scheduled_for DESC LIMIT 1
) le ON true
WHERE j.id = :id AND j.namespace || '' = :namespace AND j.workflow_id IS NULL

-- get_jobs --
-- get_job for the requests in flight, batched (PostgresJobs.get_job): one round trip for
-- all of them. Each row carries the place (n) of the lookup that found it; a lookup that
-- finds nothing has no row. By id, the namespace checked on the row, as get_job.
SELECT b.n, j.*, le.last_execution
FROM unnest(:ids::uuid[], :namespaces::text[]) WITH ORDINALITY AS b(id, namespace, n)
JOIN jobs j ON j.id = b.id AND j.namespace || '' = b.namespace AND j.workflow_id IS NULL
LEFT JOIN LATERAL (
    SELECT to_jsonb(e.*) AS last_execution FROM executions e
    WHERE e.job_id = j.id ORDER BY e.scheduled_for DESC LIMIT 1
) le ON true

-- list_jobs --
-- Newest first; the cursor is (created_at, id) of the last row returned; a NULL filter
-- matches everything. Workflow nodes are not listed (nor in the jobs_listing index).
SELECT j.*, le.last_execution
FROM jobs j
LEFT JOIN LATERAL (
    SELECT to_jsonb(e.*) AS last_execution FROM executions e
    WHERE e.job_id = j.id ORDER BY e.scheduled_for DESC LIMIT 1
) le ON true
WHERE j.namespace = :namespace AND j.workflow_id IS NULL
  AND (:state::text IS NULL OR j.state = :state)
  AND (:name::text IS NULL OR j.name = :name)
  AND (:labels::jsonb IS NULL OR (j.labels @> :labels AND j.labels <> '{}'::jsonb))
  AND (:after_at::timestamptz IS NULL OR (j.created_at, j.id) < (:after_at, :after_id::uuid))
ORDER BY j.created_at DESC, j.id DESC
LIMIT :limit

-- cancel_job --
-- The job first, in a statement of its own: it waits for a re-drive holding the job row
-- (FOR SHARE) to commit, and cancel_job_runs, a new statement, then sees that run too
-- (in one statement, its snapshot was taken before the re-drive committed).
UPDATE jobs SET state = 'cancelled', next_fire_at = NULL, updated_at = now()
WHERE id = :id AND namespace || '' = :namespace AND state IN ('active', 'paused')
  AND workflow_id IS NULL
RETURNING id

-- cancel_job_runs --
-- Queued and retrying runs are cancelled; running ones too, and their workers are told
-- (on :cancel_channel) to kill them.
WITH cancelled AS (
    UPDATE executions e SET state = 'cancelled', finished_at = now(), lease_expires_at = NULL,
                            reason = 'job cancelled'
    WHERE e.job_id = :job_id AND e.state IN ('queued', 'retrying', 'running')
    RETURNING e.id
)
SELECT count(pg_notify(:cancel_channel, id::text)) FROM cancelled

-- job_exists --
SELECT 1 FROM jobs WHERE id = :id AND namespace || '' = :namespace AND workflow_id IS NULL

-- generic_plans --
-- Statements over every day partition of executions (by job, by id): a generic plan,
-- made once per connection, instead of a custom plan made for each call (transaction only).
SELECT set_config('plan_cache_mode', 'force_generic_plan', true)

-- list_executions --
-- (job_id, scheduled_for) is unique: its index orders a job's executions on its own (the
-- cursor's id is not needed to break ties).
SELECT e.* FROM executions e
WHERE e.job_id = :job_id AND (:after_at::timestamptz IS NULL OR e.scheduled_for < :after_at)
ORDER BY e.scheduled_for DESC
LIMIT :limit

-- get_execution --
-- By id, within the millisecond of scheduled_for the id carries (:lo, :hi: see
-- jobsched.domain.execution_ids; NULL for an id made before migration 015): one day
-- partition is read, in a generic plan too (pruned when the statement starts).
SELECT e.* FROM executions e JOIN jobs j ON j.id = e.job_id
WHERE e.id = :id AND j.namespace = :namespace
  AND e.scheduled_for >= coalesce(:lo::timestamptz, '-infinity')
  AND e.scheduled_for < coalesce(:hi::timestamptz, 'infinity')

-- list_attempts --
-- With the execution's scheduled_for: read in its one partition.
SELECT * FROM attempts
WHERE execution_id = :execution_id AND scheduled_for = :scheduled_for
ORDER BY attempt

-- list_dead --
-- The dead executions of a namespace (or of one of its jobs), newest first (cursor:
-- finished_at, id).
SELECT e.* FROM executions e JOIN jobs j ON j.id = e.job_id
WHERE e.state = 'dead' AND j.namespace = :namespace
  AND (:job_id::uuid IS NULL OR e.job_id = :job_id::uuid)
  AND (:after_at::timestamptz IS NULL OR (e.finished_at, e.id) < (:after_at, :after_id::uuid))
ORDER BY e.finished_at DESC, e.id DESC
LIMIT :limit

-- redrive_dead --
-- Re-drive a dead execution: one more attempt, published by the leader (epoch -1 rows
-- are the manual ones it publishes every tick). Not for a job since cancelled, nor of a
-- kind this deployment refuses; the job row is held (FOR SHARE) so a cancel waits for
-- this statement, and one that went first is seen. A workflow node's is re-run by a retry
-- of its run, never alone (its children were decided on its failure). By id within :lo,
-- :hi, as get_execution.
WITH job AS (
    SELECT j.id FROM jobs j JOIN executions e ON e.job_id = j.id
    WHERE e.id = :id AND j.namespace = :namespace
      AND e.scheduled_for >= coalesce(:lo::timestamptz, '-infinity')
      AND e.scheduled_for < coalesce(:hi::timestamptz, 'infinity')
    FOR SHARE OF j
), redriven AS (
    UPDATE executions e
    SET state = 'queued', attempt = e.attempt + 1, published_at = NULL, queued_at = now(),
        finished_at = NULL, run_after = NULL, worker = NULL, epoch = -1,
        reason = 'retried by hand after it was dead'
    FROM job, jobs j
    WHERE e.id = :id AND j.id = job.id AND e.job_id = j.id AND e.state = 'dead'
      AND e.scheduled_for >= coalesce(:lo::timestamptz, '-infinity')
      AND e.scheduled_for < coalesce(:hi::timestamptz, 'infinity')
      AND j.state <> 'cancelled' AND j.kind <> ALL(:refused_kinds::text[])
      AND e.workflow_run_id IS NULL
    RETURNING e.*
)
SELECT redriven.*, pg_notify(:channel, 'retry') IS NULL AS woke FROM redriven

-- current_leader --
SELECT epoch, holder, acquired_at FROM leader WHERE id = 1

-- waiting_by_band --
-- Fired and not started (the partial index executions_active holds these rows).
SELECT priority, count(*) AS waiting FROM executions WHERE state = 'queued' GROUP BY priority

-- ping --
SELECT 1
