-- The worker's statements: claim, renew, record. Set-based: one statement per batch.
-- Every multi-row write locks its rows in id order (the caller sorts the batch), so two
-- of them never deadlock.
--
-- executions and attempts are partitioned by day of scheduled_for (migration 014). Each
-- statement gets every row's scheduled_for (the message's due time; the adapter looks up
-- any it lacks) and the batch's earliest and latest: `scheduled_for BETWEEN :earliest AND
-- :latest` prunes the partitions of other days when the statement starts, in a generic
-- plan too, whatever join the planner picked (a generic plan made on fresh partitions
-- without statistics hash-joined a sequential scan of every partition), and the key
-- (id, scheduled_for) reads each row in its own day.

-- claim_executions --
-- plan: generic (see jobsched/adapters/postgres/sql.py)
-- Guarantee 2: the claim is the queued -> running transition; a duplicate delivery, a
-- stale attempt or a cancelled execution matches no row and so is never run. A worker
-- claims when it is about to start the run (due, and a run slot free), not when the
-- message arrives: a worker that dies loses only the runs it had started.
WITH claimed AS (
    UPDATE executions e
    SET state = 'running', worker = :worker, started_at = greatest(now(), e.scheduled_for),
        lease_expires_at = now() + make_interval(secs => :lease_s),
        -- It reached a worker, so it was published: a claim before the leader's mark (made
        -- a while after the confirms) saves the mark its write.
        published_at = coalesce(e.published_at, now())
    FROM (SELECT * FROM unnest(:ids::uuid[], :attempts::int[], :scheduled_for::timestamptz[])
          LIMIT cardinality(:ids::uuid[]))
        AS m(id, attempt, scheduled_for)
    -- Driven by the batch, row by key; `state || ''` keeps the partial indexes on state
    -- out of the plan (see finish_executions).
    WHERE e.id = m.id AND e.scheduled_for = m.scheduled_for AND e.attempt = m.attempt
      AND e.scheduled_for BETWEEN :earliest AND :latest AND e.state || '' = 'queued'
    RETURNING e.id, e.job_id, e.attempt, e.scheduled_for, e.started_at, e.priority,
              e.uncounted_attempts, e.workflow_run_id, e.args
), attempt_rows AS (
    -- started_at: provisional (a run fired ahead starts when due); the worker's result
    -- records when it really began.
    INSERT INTO attempts (execution_id, attempt, worker, started_at, scheduled_for)
    SELECT id, attempt, :worker, started_at, scheduled_for FROM claimed
)
-- A triggered run's args are merged over the python job's own (executions.args).
SELECT c.id, c.job_id, j.namespace, c.attempt, c.scheduled_for, j.kind,
       CASE WHEN c.args IS NULL THEN j.payload
            ELSE jsonb_set(j.payload, '{args}', coalesce(j.payload -> 'args', '{}') || c.args)
       END AS payload,
       j.timeout_s, j.max_attempts, j.backoff_s, j.max_backoff_s, j.concurrency,
       j.starting_deadline_s, c.priority, c.uncounted_attempts, c.workflow_run_id
FROM claimed c JOIN jobs j ON j.id = c.job_id

-- execution_days --
-- The scheduled_for of executions a caller did not know it for: by id alone, so every
-- partition's primary key is probed once per id (rare: messages of versions before 014),
-- but for the partitions outside :lo, :hi (the batch's bound from its ids: see
-- jobsched.domain.execution_ids; NULL as soon as one id was made before migration 015).
SELECT id, scheduled_for FROM executions WHERE id = ANY(:ids::uuid[])
  AND scheduled_for >= coalesce(:lo::timestamptz, '-infinity')
  AND scheduled_for < coalesce(:hi::timestamptz, 'infinity')

-- hand_back --
-- A draining worker gives a run back: it is retried at once by the leader, and the attempt
-- does not count against the job's max_attempts (a shutdown is not the task's failure).
-- By id within the millisecond of scheduled_for the id carries (:lo, :hi; NULL for an id
-- made before migration 015): one day partition of each table is read.
WITH handed AS (
    UPDATE executions SET state = 'retrying', run_after = now(), lease_expires_at = NULL,
                          uncounted_attempts = uncounted_attempts + 1,
                          error = 'handed back: worker ' || worker || ' shut down'
    WHERE id = :id AND attempt = :attempt AND worker = :worker AND state = 'running'
      AND scheduled_for >= coalesce(:lo::timestamptz, '-infinity')
      AND scheduled_for < coalesce(:hi::timestamptz, 'infinity')
    RETURNING id, attempt, scheduled_for
)
UPDATE attempts a SET finished_at = now(), outcome = 'cancelled',
                      error = 'handed back on shutdown'
FROM handed h WHERE a.execution_id = h.id AND a.attempt = h.attempt
  AND a.scheduled_for = h.scheduled_for
  AND a.scheduled_for >= coalesce(:lo::timestamptz, '-infinity')
  AND a.scheduled_for < coalesce(:hi::timestamptz, 'infinity')

-- wake --
SELECT pg_notify(:channel, :payload)

-- heartbeat --
-- plan: generic (see jobsched/adapters/postgres/sql.py)
-- The rows are locked in id order first, as the worker's result batch locks them: a plain
-- `UPDATE … WHERE id = ANY(…)` took a bitmap heap scan for large batches and locked in
-- the table's physical order, deadlocking with the results of the same worker on another
-- connection (158 "deadlock detected" in a 20-minute soak).
WITH held AS (
    SELECT e.id, e.scheduled_for
    FROM (SELECT * FROM unnest(:ids::uuid[], :scheduled_for::timestamptz[])
          LIMIT cardinality(:ids::uuid[])) AS m(id, scheduled_for)
    JOIN executions e ON e.id = m.id AND e.scheduled_for = m.scheduled_for
    WHERE e.scheduled_for BETWEEN :earliest AND :latest AND e.worker = :worker
      AND e.state || '' = 'running'
    ORDER BY e.id
    FOR UPDATE OF e
)
UPDATE executions e SET lease_expires_at = now() + make_interval(secs => :lease_s)
FROM held WHERE e.id = held.id AND e.scheduled_for = held.scheduled_for
  AND e.scheduled_for BETWEEN :earliest AND :latest
RETURNING e.id

-- close_attempt --
-- An attempt whose execution was taken away (cancelled, replaced, reaped) still ends.
-- Within :lo, :hi, as hand_back.
UPDATE attempts SET finished_at = now(), outcome = :outcome, error = :error,
                    output = :output, exit_code = :exit_code
WHERE execution_id = :execution_id AND attempt = :attempt AND finished_at IS NULL
  AND scheduled_for >= coalesce(:lo::timestamptz, '-infinity')
  AND scheduled_for < coalesce(:hi::timestamptz, 'infinity')

-- stream_output --
-- plan: generic (see jobsched/adapters/postgres/sql.py)
-- Running attempts' output so far (the worker writes it every output_flush_s for the runs
-- whose output changed). Only an attempt still running on this worker: once its result is
-- recorded (finished_at set) this matches nothing, and a row whose result is being
-- recorded right now (locked) is skipped, never waited for: that result replaces it.
-- :lo, :hi bound the batch's scheduled_for (from its ids, as execution_days): the days of
-- the runs going on are read, not the whole history.
WITH live AS (
    SELECT a.execution_id, a.attempt FROM attempts a
    WHERE (a.execution_id, a.attempt) IN (SELECT * FROM unnest(:ids::uuid[], :attempts::int[])
                                          LIMIT cardinality(:ids::uuid[]))
      AND a.worker = :worker AND a.finished_at IS NULL
      AND a.scheduled_for >= coalesce(:lo::timestamptz, '-infinity')
      AND a.scheduled_for < coalesce(:hi::timestamptz, 'infinity')
    ORDER BY a.execution_id, a.attempt
    FOR UPDATE SKIP LOCKED
)
UPDATE attempts a SET output = u.output
FROM (SELECT * FROM unnest(:ids::uuid[], :attempts::int[], :outputs::text[])
      LIMIT cardinality(:ids::uuid[])) AS u(id, attempt, output), live l
WHERE a.execution_id = u.id AND a.attempt = u.attempt
  AND l.execution_id = u.id AND l.attempt = u.attempt
  AND a.scheduled_for >= coalesce(:lo::timestamptz, '-infinity')
  AND a.scheduled_for < coalesce(:hi::timestamptz, 'infinity')

-- finish_executions --
-- plan: generic (see jobsched/adapters/postgres/sql.py)
-- Results of a batch: the execution moves on only if this worker still holds the attempt.
-- The rows are locked in id order, as the lease renewal (heartbeat) locks them: the caller
-- sorts the batch by id, and the batch drives the plan (a nested loop, one probe by key per
-- batch row, in the batch's order: test_batch_plans.py), so the update takes its rows in
-- that order. Left to a plan of its own choosing, a hash join took them in the table's
-- physical order and the two statements of one worker deadlocked; before 2026-12-06 a
-- `FOR UPDATE` in id order ran first, which cost a second write (the lock) per row.
WITH finished AS (
    -- Written plainly, the planner (on stale statistics, with a generic plan's guess of 10
    -- rows per unnest) scanned every running execution through executions_leases and
    -- rescanned the whole batch for each one: quadratic, most of PostgreSQL's CPU in a
    -- burn-down. The batch as `(… LIMIT cardinality)` counts as one row (sql.py), and
    -- `state || ''` keeps that partial index (WHERE state = 'running') out of the plan.
    UPDATE executions e
    SET state = r.state,
        finished_at = CASE WHEN r.state = 'retrying' THEN NULL ELSE now() END,
        run_after = CASE WHEN r.state = 'retrying'
                         THEN now() + make_interval(secs => r.retry_in_s) END,
        lease_expires_at = NULL, exit_code = r.exit_code, error = r.error, output = r.output,
        reason = coalesce(r.reason, e.reason), started_at = coalesce(r.started_at, e.started_at)
    FROM (SELECT * FROM unnest(:ids::uuid[], :scheduled_for::timestamptz[], :attempts::int[],
                               :states::text[], :outcomes::text[], :exit_codes::int[],
                               :errors::text[], :outputs::text[],
                               :retry_in_s::double precision[], :reasons::text[],
                               :started_at::timestamptz[])
          LIMIT cardinality(:ids::uuid[]))
        AS r(id, scheduled_for, attempt, state, outcome, exit_code, error, output,
             retry_in_s, reason, started_at)
    WHERE e.id = r.id AND e.scheduled_for = r.scheduled_for
      AND e.scheduled_for BETWEEN :earliest AND :latest AND e.attempt = r.attempt
      AND e.state || '' = 'running' AND e.worker = :worker
    RETURNING e.id, e.job_id, e.attempt, e.state, e.exit_code, e.error, e.output,
              r.outcome, r.started_at AS began, e.scheduled_for
), attempt_rows AS (
    UPDATE attempts a
    SET finished_at = now(), outcome = f.outcome, exit_code = f.exit_code, error = f.error,
        output = f.output, started_at = coalesce(f.began, a.started_at)
    FROM finished f
    -- The whole key, partition key included: one partition's index per row.
    WHERE a.execution_id = f.id AND a.attempt = f.attempt AND a.scheduled_for = f.scheduled_for
      AND a.scheduled_for BETWEEN :earliest AND :latest
), ended AS (
    SELECT id, job_id FROM finished WHERE state <> 'retrying'
), completed_jobs AS (
    -- A job with no further fire completes with its last run (runs fired ahead or
    -- overlapping ones may still be active: then the last of them completes it).
    -- j.id = ANY(ARRAY(...)): looked up by key. As a join, once statistics said few jobs
    -- are active without a next fire, the planner scanned all of jobs for each batch.
    -- `state || ''`: with `state = 'active'` the plan also read jobs_live_by_namespace
    -- (partial, on active and paused jobs) whole and ANDed it with the keys' bitmap: 40,550
    -- index entries for a result batch of 600 in a burn-down of 20,000.
    UPDATE jobs j SET state = 'completed', updated_at = now()
    WHERE j.id = ANY(ARRAY(SELECT DISTINCT job_id FROM ended))
      AND j.state || '' = 'active' AND j.next_fire_at IS NULL
      -- A subquery with LIMIT stays a per-job lookup (job_id = j.id on executions_active);
      -- NOT EXISTS became an anti-join that read the whole index for every job once the
      -- statistics called it small (1.4 s for 646 jobs under 2,000 jobs/s).
      -- A job with no further fire has no run scheduled later than its last fire, at most
      -- the leader's lookahead (5 s) from now: `scheduled_for < now() + 1 day` (a day
      -- for clock skew) prunes the day partitions made ahead (6 of 9 by default, each an
      -- index probe per job) when the statement starts, generic plan included.
      AND (SELECT 1 FROM executions x
           WHERE x.job_id = j.id AND x.state IN ('queued', 'running', 'retrying')
             AND x.scheduled_for < now() + interval '1 day'
             AND x.id NOT IN (SELECT id FROM ended)
           LIMIT 1) IS NULL
)
SELECT id, state FROM finished
