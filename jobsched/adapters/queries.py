"""Every SQL statement of jobsched, named. Set-based where the hot path runs them."""

NOTIFY_CHANNEL = "jobsched_wake"

# --- api ---------------------------------------------------------------------------------

# The columns a job's spec determines, in the order JOB_VALUES lists them.
JOB_COLUMNS = (
    "name", "kind", "payload", "schedule", "timezone", "next_fire_at", "max_attempts",
    "backoff_s", "max_backoff_s", "timeout_s", "labels", "spec", "misfire", "max_catchup",
    "starting_deadline_s", "concurrency", "start_at", "end_at", "max_runs", "jitter_s",
    "keep_succeeded", "keep_failed",
)

INSERT_JOB = f"""
INSERT INTO jobs (id, namespace, {", ".join(JOB_COLUMNS)})
VALUES ($1, $2, {", ".join(f"${i + 3}" for i in range(len(JOB_COLUMNS)))})
RETURNING *
"""

# Create with an Idempotency-Key: a concurrent create with the same key waits on the
# unique index and then inserts nothing; it answers with the winner's job instead.
INSERT_JOB_KEYED = f"""
INSERT INTO jobs (id, namespace, {", ".join(JOB_COLUMNS)}, idempotency_key, idempotency_digest)
VALUES ($1, $2, {", ".join(f"${i + 3}" for i in range(len(JOB_COLUMNS) + 2))})
ON CONFLICT (namespace, idempotency_key) DO NOTHING
RETURNING *
"""

# The job an Idempotency-Key names, and whether the key has outlived its retention.
GET_JOB_BY_IDEMPOTENCY_KEY = """
SELECT id, idempotency_digest, created_at < now() - make_interval(secs => $3) AS expired
FROM jobs WHERE namespace = $1 AND idempotency_key = $2
"""

# An expired key is released, so it may name a new job.
RELEASE_IDEMPOTENCY_KEY = """
UPDATE jobs SET idempotency_key = NULL, idempotency_digest = NULL
WHERE id = $1 AND created_at < now() - make_interval(secs => $2)
"""

# The quota: live (active or paused) jobs of a namespace, counted no further than $2.
COUNT_LIVE_JOBS = """
SELECT count(*) FROM (
    SELECT 1 FROM jobs WHERE namespace = $1 AND state IN ('active', 'paused') LIMIT $2
) AS live
"""

# Near the quota, creates of one namespace queue on this lock so the count is exact.
LOCK_NAMESPACE = "SELECT pg_advisory_xact_lock(hashtextextended('jobsched.ns.' || $1, 0))"

# --- tokens ------------------------------------------------------------------------------

INSERT_TOKEN = """
INSERT INTO api_tokens (digest, hint, namespace, role, name, expires_at)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING id, hint, namespace, role, name, created_at, expires_at, revoked_at
"""

AUTHENTICATE_TOKEN = """
SELECT id, namespace, role, name FROM api_tokens
WHERE digest = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
"""

LIST_TOKENS = """
SELECT id, hint, namespace, role, name, created_at, expires_at, revoked_at
FROM api_tokens
WHERE ($1::text IS NULL OR namespace = $1)
ORDER BY created_at, id
"""

REVOKE_TOKEN = """
UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now())
WHERE id = $1
RETURNING id, hint, namespace, role, name, created_at, expires_at, revoked_at
"""

# INSERT_JOB and, when $N (the parameter after the columns) is true, a wake-up for the
# leader, in one statement.
INSERT_JOB_NOTIFYING = f"""
WITH job AS (
    INSERT INTO jobs (id, namespace, {", ".join(JOB_COLUMNS)})
    VALUES ($1, $2, {", ".join(f"${i + 3}" for i in range(len(JOB_COLUMNS)))})
    RETURNING *
)
SELECT job.*, CASE WHEN ${len(JOB_COLUMNS) + 3}::boolean
                   THEN pg_notify(${len(JOB_COLUMNS) + 4}, 'job') END AS woke
FROM job
"""

# PATCH: the row was locked by LOCK_JOB in the same transaction.
UPDATE_JOB = f"""
UPDATE jobs SET {", ".join(f"{c} = ${i + 2}" for i, c in enumerate(JOB_COLUMNS))},
    updated_at = now()
WHERE id = $1
RETURNING *
"""

LOCK_JOB = "SELECT * FROM jobs WHERE id = $1 AND namespace = $2 FOR UPDATE"

PAUSE_JOB = """
UPDATE jobs SET state = 'paused', updated_at = now()
WHERE id = $1 AND namespace = $2 AND state = 'active'
RETURNING id
"""

RESUME_JOB = """
UPDATE jobs SET state = 'active', next_fire_at = $2, updated_at = now()
WHERE id = $1
RETURNING id
"""

INSERT_RECORD = """
INSERT INTO executions (job_id, scheduled_for, epoch, state, reason, finished_at)
VALUES ($1, $2, -1, $3, $4, CASE WHEN $3 = 'queued' THEN NULL ELSE now() END)
ON CONFLICT (job_id, scheduled_for) DO NOTHING
RETURNING *
"""

NOTIFY_WAKE = "SELECT pg_notify($1, $2)"

_JOB_WITH_LAST = """
SELECT j.*, le.last_execution
FROM jobs j
LEFT JOIN LATERAL (
    SELECT to_jsonb(e.*) AS last_execution FROM executions e
    WHERE e.job_id = j.id ORDER BY e.scheduled_for DESC LIMIT 1
) le ON true
"""

GET_JOB = _JOB_WITH_LAST + " WHERE j.id = $1 AND j.namespace = $2"

# Cursor = (created_at, id) of the last row returned; NULL filters match everything.
LIST_JOBS = (
    _JOB_WITH_LAST
    + """
WHERE j.namespace = $1
  AND ($2::text IS NULL OR j.state = $2)
  AND ($3::text IS NULL OR j.name = $3)
  AND ($4::jsonb IS NULL OR j.labels @> $4)
  AND ($5::timestamptz IS NULL OR (j.created_at, j.id) < ($5, $6::uuid))
ORDER BY j.created_at DESC, j.id DESC
LIMIT $7
"""
)

# Queued and retrying runs are cancelled; running ones too, and their workers are told
# (CANCEL_CHANNEL) to kill them.
CANCEL_JOB = """
WITH job AS (
    UPDATE jobs SET state = 'cancelled', next_fire_at = NULL, updated_at = now()
    WHERE id = $1 AND namespace = $2 AND state IN ('active', 'paused')
    RETURNING id
), cancelled AS (
    UPDATE executions e SET state = 'cancelled', finished_at = now(), lease_expires_at = NULL,
                            reason = 'job cancelled'
    FROM job WHERE e.job_id = job.id AND e.state IN ('queued', 'retrying', 'running')
    RETURNING e.id
), notified AS (
    SELECT pg_notify($3, id::text) FROM cancelled
)
SELECT (SELECT count(*) FROM job) AS jobs, (SELECT count(*) FROM notified) AS executions
"""

JOB_EXISTS = "SELECT 1 FROM jobs WHERE id = $1 AND namespace = $2"

# (job_id, scheduled_for) is unique: its index orders a job's executions on its own (the
# cursor's id is not needed to break ties).
LIST_EXECUTIONS = """
SELECT e.* FROM executions e
WHERE e.job_id = $1 AND ($2::timestamptz IS NULL OR e.scheduled_for < $2)
ORDER BY e.scheduled_for DESC
LIMIT $3
"""

GET_EXECUTION = """
SELECT e.* FROM executions e JOIN jobs j ON j.id = e.job_id
WHERE e.id = $1 AND j.namespace = $2
"""

# The dead executions of a namespace, newest first (cursor: finished_at, id).
LIST_DEAD = """
SELECT e.* FROM executions e JOIN jobs j ON j.id = e.job_id
WHERE e.state = 'dead' AND j.namespace = $1
  AND ($2::timestamptz IS NULL OR (e.finished_at, e.id) < ($2, $3::uuid))
ORDER BY e.finished_at DESC, e.id DESC
LIMIT $4
"""

# Re-drive a dead execution: one more attempt, published by the leader (epoch -1 rows
# are the manual ones it publishes every tick).
REDRIVE_DEAD = """
WITH redriven AS (
    UPDATE executions e
    SET state = 'queued', attempt = e.attempt + 1, published_at = NULL, queued_at = now(),
        finished_at = NULL, run_after = NULL, worker = NULL, epoch = -1,
        reason = 'retried by hand after it was dead'
    FROM jobs j
    WHERE e.id = $1 AND j.id = e.job_id AND j.namespace = $2 AND e.state = 'dead'
    RETURNING e.*
)
SELECT redriven.*, pg_notify($3, 'retry') IS NULL AS woke FROM redriven
"""

LIST_ATTEMPTS = "SELECT * FROM attempts WHERE execution_id = $1 ORDER BY attempt"

# --- scheduler leader ------------------------------------------------------------------

# Leadership is claimed only with an epoch higher than any seen before.
CLAIM_EPOCH = """
UPDATE leader SET epoch = $1, holder = $2, acquired_at = now()
WHERE id = 1 AND epoch < $1
RETURNING epoch
"""

# The fence: every leader transaction starts here and aborts unless it still holds the
# epoch. FOR SHARE makes a concurrent CLAIM_EPOCH wait for this transaction to finish.
CHECK_EPOCH = "SELECT epoch FROM leader WHERE id = 1 FOR SHARE"

CURRENT_LEADER = "SELECT epoch, holder, acquired_at FROM leader WHERE id = 1"

# A new leader's claim waits for every transaction holding the fence FOR SHARE. Those
# belong to deposed leaders; one frozen (SIGSTOP, VM pause) or cut off mid-transaction
# would hold the claim back for as long as its connection lives. The claim waits this long
# (transaction-local lock_timeout) and then ends those sessions (same database only).
CLAIM_LOCK_TIMEOUT = "SELECT set_config('lock_timeout', $1, true)"

EVICT_FENCE_HOLDERS = """
SELECT l.pid, pg_terminate_backend(l.pid) AS terminated
FROM pg_locks l
WHERE l.locktype = 'relation' AND l.relation = 'leader'::regclass AND l.granted
  AND l.mode = 'RowShareLock' AND l.pid <> pg_backend_pid()
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""

# busy: whether a run of a forbid/replace job is still active (only those need to know).
SELECT_DUE_JOBS = """
SELECT id, schedule, timezone, next_fire_at, misfire, max_catchup, starting_deadline_s,
       concurrency, end_at, max_runs, run_count, jitter_s,
       CASE WHEN concurrency = 'allow' THEN false ELSE EXISTS (
           SELECT 1 FROM executions e
           WHERE e.job_id = jobs.id AND e.state IN ('queued', 'running', 'retrying')
       ) END AS busy
FROM jobs
WHERE state = 'active' AND next_fire_at IS NOT NULL AND next_fire_at <= $1
  AND (concurrency = 'allow' OR next_fire_at <= $3)
ORDER BY next_fire_at
LIMIT $2
FOR UPDATE SKIP LOCKED
"""

# One statement creates every execution of the batch; the unique (job_id, scheduled_for)
# makes a repeated fire a no-op instead of a duplicate.
INSERT_EXECUTIONS = """
INSERT INTO executions (job_id, scheduled_for, epoch, state, reason, finished_at)
SELECT f.job_id, f.scheduled_for, $3, f.state, f.reason,
       CASE WHEN f.state = 'queued' THEN NULL ELSE now() END
FROM unnest($1::uuid[], $2::timestamptz[], $4::text[], $5::text[])
    AS f(job_id, scheduled_for, state, reason)
ON CONFLICT (job_id, scheduled_for) DO NOTHING
RETURNING id, job_id, attempt, state, scheduled_for
"""

ADVANCE_JOBS = """
UPDATE jobs j SET next_fire_at = a.next_fire_at, run_count = j.run_count + a.runs,
                  updated_at = now()
FROM unnest($1::uuid[], $2::timestamptz[], $3::int[]) AS a(id, next_fire_at, runs)
WHERE j.id = a.id
"""

# concurrency=replace: the active runs of these jobs give way to the new fire.
REPLACE_ACTIVE = """
UPDATE executions
SET state = 'cancelled', finished_at = now(), lease_expires_at = NULL,
    reason = 'replaced by a newer fire (concurrency=replace)'
WHERE job_id = ANY($1::uuid[]) AND state IN ('queued', 'running', 'retrying')
  AND scheduled_for < $2
RETURNING id, state
"""

CANCEL_CHANNEL = "jobsched_cancel"

# Only rows still waiting in the outbox: one a worker has already claimed is left alone
# (a write saved, and no new row version with all of executions' index entries). The mark
# never waits for a row lock (SKIP LOCKED): a row locked now is being claimed, and
# waiting deadlocked with the claims (seen as 1 s stalls, PostgreSQL's deadlock_timeout).
MARK_PUBLISHED = """
UPDATE executions SET published_at = now()
WHERE id IN (
    SELECT id FROM executions
    WHERE id = ANY($1::uuid[]) AND state = 'queued' AND published_at IS NULL
    FOR UPDATE SKIP LOCKED
)
"""

REQUEUE_RETRIES = """
UPDATE executions e
SET state = 'queued', attempt = e.attempt + 1, run_after = NULL, published_at = NULL,
    queued_at = now(), worker = NULL, epoch = $3
WHERE e.id IN (
    SELECT id FROM executions
    WHERE state = 'retrying' AND run_after <= $1
    ORDER BY run_after LIMIT $2
    FOR UPDATE SKIP LOCKED
)
RETURNING e.id, e.job_id, e.attempt
"""

SELECT_UNPUBLISHED = """
SELECT id, job_id, attempt FROM executions
WHERE state = 'queued' AND published_at IS NULL AND queued_at <= $1
ORDER BY queued_at
LIMIT $2
"""

# Runs a person asked for (trigger): published by the leader on its next tick.
SELECT_MANUAL_UNPUBLISHED = """
SELECT id, job_id, attempt FROM executions
WHERE state = 'queued' AND published_at IS NULL AND epoch = -1
ORDER BY queued_at
LIMIT $1
"""

# When the leader must act next: allow jobs $1 ahead of their time (the lookahead),
# forbid/replace jobs and retries on time.
NEXT_WAKE = """
SELECT least(
    (SELECT min(next_fire_at) FROM jobs
     WHERE state = 'active' AND next_fire_at IS NOT NULL AND concurrency = 'allow')
        - make_interval(secs => $1),
    (SELECT min(next_fire_at) FROM jobs
     WHERE state = 'active' AND next_fire_at IS NOT NULL AND concurrency <> 'allow'),
    (SELECT min(run_after) FROM executions WHERE state = 'retrying')
) AS wake_at
"""

# Jobs whose last run ended by another path than a worker's result (reaped, cancelled,
# recorded missed or skipped) complete here.
COMPLETE_FINISHED_JOBS = """
UPDATE jobs j SET state = 'completed', updated_at = now()
WHERE j.id IN (
    SELECT c.id FROM jobs c
    WHERE c.state = 'active' AND c.next_fire_at IS NULL
      -- A per-job lookup, not an anti-join (see FINISH_EXECUTIONS).
      AND (SELECT 1 FROM executions x
           WHERE x.job_id = c.id AND x.state IN ('queued', 'running', 'retrying')
           LIMIT 1) IS NULL
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
"""

# --- retention (leader, fenced) ------------------------------------------------------

# Finished executions past the retention period, oldest first, a bounded batch at a time
# (executions_finished index; attempts go with them by ON DELETE CASCADE).
PURGE_EXPIRED = """
DELETE FROM executions WHERE id IN (
    SELECT id FROM executions
    WHERE finished_at IS NOT NULL AND finished_at < $1
    ORDER BY finished_at LIMIT $2
)
"""

# Per-job history limits: succeeded executions beyond keep_succeeded, dead (failed)
# ones beyond keep_failed, newest kept. Only jobs that set a limit are scanned.
PURGE_OVER_LIMIT = """
DELETE FROM executions WHERE id IN (
    SELECT id FROM (
        SELECT e.id,
               row_number() OVER (PARTITION BY e.job_id, e.state
                                  ORDER BY e.scheduled_for DESC) AS position,
               CASE e.state WHEN 'succeeded' THEN j.keep_succeeded ELSE j.keep_failed END
                   AS keep
        FROM jobs j JOIN executions e ON e.job_id = j.id
        WHERE (j.keep_succeeded IS NOT NULL AND e.state = 'succeeded')
           OR (j.keep_failed IS NOT NULL AND e.state = 'dead')
    ) ranked
    WHERE position > keep
    LIMIT $1
)
"""

# --- worker ----------------------------------------------------------------------------

# Guarantee 2: the claim is the queued -> running transition; a duplicate delivery, a stale
# attempt or a cancelled execution matches no row and so is never run.
CLAIM_EXECUTIONS = """
WITH claimed AS (
    UPDATE executions e
    SET state = 'running', worker = $3, started_at = greatest(now(), e.scheduled_for),
        lease_expires_at = now() + make_interval(secs => $4)
    FROM unnest($1::uuid[], $2::int[]) AS m(id, attempt)
    -- Driven by the batch, row by key; `state || ''` keeps the partial indexes on state
    -- out of the plan (see FINISH_EXECUTIONS).
    WHERE e.id = m.id AND e.attempt = m.attempt AND e.state || '' = 'queued'
    RETURNING e.id, e.job_id, e.attempt, e.scheduled_for, e.started_at
), attempt_rows AS (
    -- started_at: provisional (a run fired ahead starts when due); the worker's result
    -- records when it really began.
    INSERT INTO attempts (execution_id, attempt, worker, started_at)
    SELECT id, attempt, $3, started_at FROM claimed
)
SELECT c.id, c.job_id, c.attempt, c.scheduled_for, j.kind, j.payload, j.timeout_s,
       j.max_attempts, j.backoff_s, j.max_backoff_s, j.retry_jitter, j.concurrency,
       j.starting_deadline_s
FROM claimed c JOIN jobs j ON j.id = c.job_id
"""

# A draining worker gives a run back: it is retried at once by the leader.
HAND_BACK = """
WITH handed AS (
    UPDATE executions SET state = 'retrying', run_after = now(), lease_expires_at = NULL,
                          error = 'handed back: worker ' || worker || ' shut down'
    WHERE id = $1 AND attempt = $2 AND worker = $3 AND state = 'running'
    RETURNING id, attempt
)
UPDATE attempts a SET finished_at = now(), outcome = 'cancelled',
                      error = 'handed back on shutdown'
FROM handed h WHERE a.execution_id = h.id AND a.attempt = h.attempt
"""

HEARTBEAT = """
UPDATE executions SET lease_expires_at = now() + make_interval(secs => $3)
WHERE id = ANY($1::uuid[]) AND worker = $2 AND state || '' = 'running'
RETURNING id
"""

# An attempt whose execution was taken away (cancelled, replaced, reaped) still ends.
CLOSE_ATTEMPT = """
UPDATE attempts SET finished_at = now(), outcome = $3, error = $4, output = $5,
                    exit_code = $6
WHERE execution_id = $1 AND attempt = $2 AND finished_at IS NULL
"""

# The reaper: running executions whose lease ran out lose their attempt; they are retried
# (run_after = now) or, with no attempt left, dead.
REAP_EXPIRED = """
WITH expired AS (
    SELECT e.id FROM executions e
    WHERE e.state = 'running' AND e.lease_expires_at < $1
    ORDER BY e.lease_expires_at LIMIT $2
    FOR UPDATE SKIP LOCKED
), reaped AS (
    UPDATE executions e
    SET state = CASE WHEN e.attempt < j.max_attempts THEN 'retrying' ELSE 'dead' END,
        run_after = CASE WHEN e.attempt < j.max_attempts THEN $1 END,
        finished_at = CASE WHEN e.attempt < j.max_attempts THEN NULL ELSE $1 END,
        error = 'worker ' || coalesce(e.worker, '?') || ' lost its lease',
        lease_expires_at = NULL
    FROM expired x, jobs j
    WHERE e.id = x.id AND j.id = e.job_id
    RETURNING e.id, e.job_id, e.attempt, e.state, e.worker
), attempt_rows AS (
    UPDATE attempts a SET finished_at = $1, outcome = 'lost',
                          error = 'worker ' || coalesce(r.worker, '?') || ' lost its lease'
    FROM reaped r WHERE a.execution_id = r.id AND a.attempt = r.attempt
      AND a.finished_at IS NULL
)
SELECT id, job_id, attempt, state FROM reaped
"""

# Results of a batch: the execution moves on only if this worker still holds the attempt.
FINISH_EXECUTIONS = """
WITH finished AS (
    -- The batch drives the plan: each row is looked up by key. Written plainly, the
    -- planner (on stale statistics, with a generic plan's guess of 10 rows per unnest)
    -- scanned every running execution through executions_leases and rescanned the whole
    -- batch for each one: quadratic, most of PostgreSQL's CPU in a burn-down. `state ||
    -- ''` keeps that partial index (WHERE state = 'running') out of the plan.
    UPDATE executions e
    SET state = r.state,
        finished_at = CASE WHEN r.state = 'retrying' THEN NULL ELSE now() END,
        run_after = CASE WHEN r.state = 'retrying'
                         THEN now() + make_interval(secs => r.retry_in_s) END,
        lease_expires_at = NULL, exit_code = r.exit_code, error = r.error, output = r.output,
        reason = coalesce(r.reason, e.reason), started_at = coalesce(r.started_at, e.started_at)
    FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[], $5::int[], $6::text[],
                $7::text[], $8::double precision[], $10::text[], $11::timestamptz[])
        AS r(id, attempt, state, outcome, exit_code, error, output, retry_in_s, reason,
             started_at)
    WHERE e.id = r.id AND e.attempt = r.attempt AND e.state || '' = 'running'
      AND e.worker = $9
    RETURNING e.id, e.job_id, e.attempt, e.state, e.exit_code, e.error, e.output,
              r.outcome, r.started_at AS began
), attempt_rows AS (
    UPDATE attempts a
    SET finished_at = now(), outcome = f.outcome, exit_code = f.exit_code, error = f.error,
        output = f.output, started_at = coalesce(f.began, a.started_at)
    FROM finished f
    WHERE a.execution_id = f.id AND a.attempt = f.attempt
), ended AS (
    SELECT id, job_id FROM finished WHERE state <> 'retrying'
), completed_jobs AS (
    -- A job with no further fire completes with its last run (runs fired ahead or
    -- overlapping ones may still be active: then the last of them completes it).
    -- j.id = ANY(ARRAY(...)): looked up by key. As a join, once statistics said few jobs
    -- are active without a next fire, the planner scanned all of jobs for each batch.
    UPDATE jobs j SET state = 'completed', updated_at = now()
    WHERE j.id = ANY(ARRAY(SELECT DISTINCT job_id FROM ended))
      AND j.state = 'active' AND j.next_fire_at IS NULL
      -- A subquery with LIMIT stays a per-job lookup (job_id = j.id on executions_active);
      -- NOT EXISTS became an anti-join that read the whole index for every job once the
      -- statistics called it small (1.4 s for 646 jobs under 2,000 jobs/s).
      AND (SELECT 1 FROM executions x
           WHERE x.job_id = j.id AND x.state IN ('queued', 'running', 'retrying')
             AND x.id NOT IN (SELECT id FROM ended)
           LIMIT 1) IS NULL
)
SELECT id, state FROM finished
"""
