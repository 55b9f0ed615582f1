-- The scheduler leader's statements. Every write runs in a transaction that starts with
-- check_epoch (see fenced() in pool.py): a deposed leader can commit nothing.

-- claim_epoch --
-- Leadership is claimed only with an epoch higher than any seen before.
UPDATE leader SET epoch = :epoch, holder = :holder, acquired_at = now()
WHERE id = 1 AND epoch < :epoch
RETURNING epoch

-- check_epoch --
-- The fence: every leader transaction starts here and aborts unless it still holds the
-- epoch. FOR SHARE makes a concurrent claim_epoch wait for this transaction to finish.
SELECT epoch FROM leader WHERE id = 1 FOR SHARE

-- claim_lock_timeout --
-- A new leader's claim waits for every transaction holding the fence FOR SHARE. Those
-- belong to deposed leaders; one frozen (SIGSTOP, VM pause) or cut off mid-transaction
-- would hold the claim back for as long as its connection lives. The claim waits this long
-- (transaction-local lock_timeout) and then ends those sessions (same database only).
SELECT set_config('lock_timeout', :timeout, true)

-- evict_fence_holders --
SELECT l.pid, pg_terminate_backend(l.pid) AS terminated
FROM pg_locks l
WHERE l.locktype = 'relation' AND l.relation = 'leader'::regclass AND l.granted
  AND l.mode = 'RowShareLock' AND l.pid <> pg_backend_pid()
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())

-- select_due_jobs --
-- Jobs of concurrency 'allow' due up to :horizon (fired ahead; the worker holds them until
-- due), others only once due at :now; high priority first, so that of a herd due at once
-- the high jobs are fired (and published) first. busy: whether a run of a forbid/replace
-- job is still active (only those need to know).
-- The bands in turn (ranks 0, 1, 2: jobs_priority_check), each read in order from jobs_due
-- (priority, next_fire_at) with its own LIMIT: the nested loop takes the next band only
-- while the batch is not full, so a batch reads (and locks) the jobs it fires and no
-- others. As one `ORDER BY priority, next_fire_at`, every due job was read and sorted for
-- each batch.
SELECT d.*,
       CASE WHEN d.concurrency = 'allow' THEN false ELSE EXISTS (
           SELECT 1 FROM executions e
           WHERE e.job_id = d.id AND e.state IN ('queued', 'running', 'retrying')
       ) END AS busy
FROM unnest(ARRAY[0, 1, 2]::smallint[]) AS band(rank)
CROSS JOIN LATERAL (
    SELECT id, schedule, timezone, next_fire_at, misfire, max_catchup, starting_deadline_s,
           concurrency, end_at, max_runs, run_count, jitter_s, kind, priority
    FROM jobs
    WHERE priority = band.rank AND state = 'active' AND next_fire_at IS NOT NULL
      AND next_fire_at <= :horizon AND (concurrency = 'allow' OR next_fire_at <= :now)
    ORDER BY next_fire_at LIMIT :limit
    FOR UPDATE SKIP LOCKED
) AS d
LIMIT :limit

-- insert_executions --
-- One statement creates every execution of the batch; the unique (job_id, scheduled_for)
-- makes a repeated fire a no-op instead of a duplicate (guarantee 1). The id carries
-- scheduled_for (migration 015): a lookup by id reads one day partition.
INSERT INTO executions (id, job_id, scheduled_for, epoch, state, reason, finished_at,
                        priority)
SELECT jobsched_execution_id(f.scheduled_for), f.job_id, f.scheduled_for, :epoch, f.state,
       f.reason,
       CASE WHEN f.state = 'queued' THEN NULL ELSE now() END, f.priority
FROM unnest(:job_ids::uuid[], :scheduled_for::timestamptz[], :states::text[],
            :reasons::text[], :priorities::smallint[])
    AS f(job_id, scheduled_for, state, reason, priority)
ON CONFLICT (job_id, scheduled_for) DO NOTHING
RETURNING id, job_id, attempt, state, scheduled_for, priority

-- advance_jobs --
-- A job left with no further fire and no run completes here, in the fire's transaction
-- (say its one fire was recorded missed): the runs it does have complete it when they end.
UPDATE jobs j SET next_fire_at = a.next_fire_at, run_count = j.run_count + a.runs,
                  updated_at = now(),
                  state = CASE WHEN a.next_fire_at IS NULL AND a.runs = 0
                                    AND (SELECT 1 FROM executions x
                                         WHERE x.job_id = j.id
                                           AND x.state IN ('queued', 'running', 'retrying')
                                           -- as in finish_executions (worker.sql)
                                           AND x.scheduled_for < now() + interval '1 day'
                                         LIMIT 1) IS NULL
                               THEN 'completed' ELSE j.state END
FROM unnest(:ids::uuid[], :next_fire_at::timestamptz[], :runs::int[])
    AS a(id, next_fire_at, runs)
WHERE j.id = a.id

-- replace_active --
-- concurrency=replace: the active runs of these jobs give way to the new fire.
UPDATE executions
SET state = 'cancelled', finished_at = now(), lease_expires_at = NULL,
    reason = 'replaced by a newer fire (concurrency=replace)'
WHERE job_id = ANY(:job_ids::uuid[]) AND state IN ('queued', 'running', 'retrying')
  AND scheduled_for < :now
RETURNING id, state

-- notify_cancel --
SELECT pg_notify(:channel, id::text) FROM unnest(:ids::uuid[]) AS id

-- mark_published --
-- plan: generic (see jobsched/adapters/postgres/sql.py)
-- Only rows still waiting in the outbox: one a worker has already claimed is left alone
-- (a write saved, and no new row version with all of executions' index entries). The mark
-- never waits for a row lock (SKIP LOCKED): a row locked now is being claimed, and
-- waiting deadlocked with the claims (seen as 1 s stalls, PostgreSQL's deadlock_timeout).
-- Each row is read in its day's partition (its scheduled_for, and the batch's earliest
-- and latest prune the other days: see worker.sql). With the attempt published (NULL:
-- any), so a mark made late (the leader marks a while after the confirms) never marks a
-- later attempt, re-queued meanwhile and maybe not confirmed yet.
UPDATE executions SET published_at = now()
WHERE (id, scheduled_for) IN (
    SELECT x.id, x.scheduled_for
    FROM (SELECT * FROM unnest(:ids::uuid[], :scheduled_for::timestamptz[], :attempts::int[])
          LIMIT cardinality(:ids::uuid[])) AS m(id, scheduled_for, attempt)
    JOIN executions x ON x.id = m.id AND x.scheduled_for = m.scheduled_for
                     AND x.attempt = coalesce(m.attempt, x.attempt)
    -- `state || ''`: the outbox's partial index (queued, not published) stays out of the
    -- plan; read for each batch row, it was a scan of every unpublished row.
    WHERE x.scheduled_for BETWEEN :earliest AND :latest AND x.state || '' = 'queued'
      AND x.published_at IS NULL
    FOR UPDATE OF x SKIP LOCKED
) AND scheduled_for BETWEEN :earliest AND :latest

-- requeue_retries --
-- By the whole key (id, scheduled_for): by id alone, each row was looked for in every
-- day partition.
UPDATE executions e
SET state = 'queued', attempt = e.attempt + 1, run_after = NULL, published_at = NULL,
    queued_at = now(), worker = NULL, epoch = :epoch
FROM jobs j
WHERE (e.id, e.scheduled_for) IN (
    SELECT id, scheduled_for FROM executions
    WHERE state = 'retrying' AND run_after <= :now
    ORDER BY run_after LIMIT :limit
    FOR UPDATE SKIP LOCKED
) AND j.id = e.job_id
RETURNING e.id, e.job_id, e.attempt, e.scheduled_for, e.priority, j.kind

-- select_unpublished --
-- The outbox: committed executions never confirmed by RabbitMQ, oldest first.
SELECT e.id, e.job_id, e.attempt, e.scheduled_for, e.priority, j.kind
FROM executions e JOIN jobs j ON j.id = e.job_id
WHERE e.state = 'queued' AND e.published_at IS NULL AND e.queued_at <= :queued_before
ORDER BY e.queued_at
LIMIT :limit

-- select_manual_unpublished --
-- Runs a person asked for (trigger, re-drive): published by the leader on its next tick.
SELECT e.id, e.job_id, e.attempt, e.scheduled_for, e.priority, j.kind
FROM executions e JOIN jobs j ON j.id = e.job_id
WHERE e.state = 'queued' AND e.published_at IS NULL AND e.epoch = -1
ORDER BY e.queued_at
LIMIT :limit

-- next_wake --
-- When the leader must act next: allow jobs :lookahead_s ahead of their time, forbid and
-- replace jobs and retries on time. The allow jobs' earliest is the earliest of each
-- band's first in jobs_due (priority, next_fire_at), the bands as in select_due_jobs.
SELECT least(
    (SELECT min(b.first) FROM unnest(ARRAY[0, 1, 2]::smallint[]) AS band(rank)
     CROSS JOIN LATERAL (
         SELECT min(next_fire_at) AS first FROM jobs
         WHERE priority = band.rank AND state = 'active' AND next_fire_at IS NOT NULL
           AND concurrency = 'allow') AS b) - make_interval(secs => :lookahead_s),
    (SELECT min(next_fire_at) FROM jobs
     WHERE state = 'active' AND next_fire_at IS NOT NULL AND concurrency <> 'allow'),
    (SELECT min(run_after) FROM executions WHERE state = 'retrying')
) AS wake_at

-- complete_finished_jobs --
-- Active jobs with no further fire and no active run. Every path that ends a job's last
-- run completes the job in the same transaction (a worker's result, the reaper, a fire
-- recorded without a run); this sweep runs once per leadership term, a safety net that
-- scans the active jobs, so it is not periodic.
UPDATE jobs j SET state = 'completed', updated_at = now()
WHERE j.id IN (
    SELECT c.id FROM jobs c
    WHERE c.state = 'active' AND c.next_fire_at IS NULL
      -- A per-job lookup, not an anti-join (see finish_executions in worker.sql).
      AND (SELECT 1 FROM executions x
           WHERE x.job_id = c.id AND x.state IN ('queued', 'running', 'retrying')
             AND x.scheduled_for < now() + interval '1 day'  -- see finish_executions
           LIMIT 1) IS NULL
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
)

-- reap_expired --
-- The reaper: running executions whose lease ran out (their worker died or lost the
-- database) lose the attempt. A lost attempt is jobsched's failure, not the task's: it is
-- retried at once whatever the job's max_attempts, up to :lost_limit lost attempts of one
-- execution (a task that kills its worker every time must end), then dead with that
-- reason. Leases are set and compared on the database's clock alone (now()), never
-- against a leader's own. A one-shot job whose last run dies here completes here.
WITH expired AS (
    SELECT e.id, e.scheduled_for FROM executions e
    WHERE e.state = 'running' AND e.lease_expires_at < now()
    ORDER BY e.lease_expires_at LIMIT :limit
    FOR UPDATE SKIP LOCKED
), reaped AS (
    UPDATE executions e
    SET state = CASE WHEN e.lost_attempts + 1 < :lost_limit THEN 'retrying' ELSE 'dead' END,
        lost_attempts = e.lost_attempts + 1,
        uncounted_attempts = e.uncounted_attempts + 1,
        run_after = CASE WHEN e.lost_attempts + 1 < :lost_limit THEN now() END,
        finished_at = CASE WHEN e.lost_attempts + 1 < :lost_limit THEN NULL ELSE now() END,
        error = 'worker ' || coalesce(e.worker, '?') || ' lost its lease',
        reason = CASE WHEN e.lost_attempts + 1 < :lost_limit THEN e.reason
                      ELSE 'its worker was lost ' || (e.lost_attempts + 1)
                           || ' times (lease lapsed); not retried further' END,
        lease_expires_at = NULL
    FROM expired x
    -- The whole key: each row in its own day partition.
    WHERE e.id = x.id AND e.scheduled_for = x.scheduled_for
    RETURNING e.id, e.job_id, e.attempt, e.state, e.worker, e.scheduled_for
), attempt_rows AS (
    UPDATE attempts a SET finished_at = now(), outcome = 'lost',
                          error = 'worker ' || coalesce(r.worker, '?') || ' lost its lease'
    FROM reaped r WHERE a.execution_id = r.id AND a.attempt = r.attempt
      AND a.scheduled_for = r.scheduled_for AND a.finished_at IS NULL
), completed_jobs AS (
    UPDATE jobs j SET state = 'completed', updated_at = now()
    WHERE j.id = ANY(ARRAY(SELECT DISTINCT job_id FROM reaped WHERE state = 'dead'))
      AND j.state || '' = 'active' AND j.next_fire_at IS NULL  -- as finish_executions
      AND (SELECT 1 FROM executions x
           WHERE x.job_id = j.id AND x.state IN ('queued', 'running', 'retrying')
             AND x.scheduled_for < now() + interval '1 day'  -- see finish_executions
             AND x.id NOT IN (SELECT id FROM reaped)
           LIMIT 1) IS NULL
)
SELECT id, job_id, attempt, state FROM reaped

-- partitions_missing --
-- Whether a day from :start to :stop has no range partition of executions or of
-- webhook_deliveries yet (a day history_ensure_partitions or webhook_ensure_partitions would
-- make): a read of the catalogue, so that a pass with nothing to make takes no lock.
SELECT EXISTS (
    SELECT 1
    FROM generate_series(date_trunc('day', :start::timestamptz AT TIME ZONE 'UTC')
                             AT TIME ZONE 'UTC',
                         :stop::timestamptz, interval '1 day') AS d(day)
    WHERE d.day < :stop::timestamptz
      AND (NOT EXISTS (SELECT 1 FROM history_partitions() h
                       WHERE h.table_name = 'executions' AND h.upper > d.day
                         AND (h.lower IS NULL OR h.lower < d.day + interval '1 day'))
           OR NOT EXISTS (SELECT 1 FROM webhook_partitions() w
                          WHERE w.upper > d.day
                            AND (w.lower IS NULL OR w.lower < d.day + interval '1 day')))
)

-- lock_jobs_for_partitions --
-- Attaching a day partition of executions takes ACCESS EXCLUSIVE on executions_default and
-- then SHARE ROW EXCLUSIVE on jobs (the partition's copy of the job_id foreign key). Every
-- statement of the hot path takes its locks the other way round: jobs (a parent named in
-- it) before the partitions of executions. A worker's result batch holding jobs and
-- waiting for executions_default, while the leader held that and waited for jobs, was a
-- deadlock (2 in the first minute of `jobsched bench soak`, at the pass that made
-- yesterday's partition). Taken first, under the caller's lock_timeout, the order is the
-- hot path's own: writers of jobs wait for the leader (a moment, once a day), never the
-- reverse. (Since migration 019 executions has no foreign key to jobs and an attach no
-- longer locks jobs itself; taking jobs first stays harmless, a moment once a day.)
LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE

-- ensure_partitions --
-- The day partitions of executions and attempts from :start to :stop (those missing).
SELECT history_ensure_partitions(:start, :stop)

-- ensure_delivery_partitions --
-- The day partitions of webhook_deliveries from :start to :stop (those missing).
SELECT webhook_ensure_partitions(:start, :stop)

-- expired_partitions --
-- Day partitions wholly before :before, oldest first: retention drops them whole.
SELECT partition_name, lower FROM history_partitions()
WHERE table_name = 'executions' AND upper <= :before
ORDER BY upper

-- drop_lock_timeout --
-- DROP TABLE of a partition takes ACCESS EXCLUSIVE on the parent for a moment: it waits at
-- most this long behind a long reader (every statement on executions would queue behind
-- it meanwhile), then gives up until the next pass.
SELECT set_config('lock_timeout', :timeout, true)

-- drop_partition --
SELECT history_drop_partition(:partition, :before)

-- expired_delivery_partitions --
-- Day partitions of webhook deliveries wholly before :before, oldest first.
SELECT partition_name, lower FROM webhook_partitions()
WHERE upper <= :before
ORDER BY upper

-- drop_delivery_partition --
SELECT webhook_drop_partition(:partition, :before)

-- purge_by_key --
-- The purges delete rows found by (id, scheduled_for): each must be a lookup in its own
-- day's partition (a nested loop, pruned per row). The planner does not count that
-- pruning and prices a nested loop as probing every partition, so for a batch of a few
-- hundred it chose a hash join over a sequential scan of every partition (the whole
-- history) instead. Within the purge's transaction only.
SELECT set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true)

-- purge_expired --
-- Retention row by row, for what no partition drop takes: finished executions of days
-- wholly past the retention period that sit in a partition still holding unfinished work,
-- in the DEFAULT partition, or in the legacy one of a migrated deployment. Oldest first, a
-- bounded batch at a time (executions_finished index); :before_day (the start of the day
-- holding :before) prunes the live partitions away, so rows of the day partitions still
-- kept whole are never deleted one by one. Attempts go with them (history_delete_attempts).
DELETE FROM executions WHERE (id, scheduled_for) IN (
    SELECT id, scheduled_for FROM executions
    WHERE finished_at IS NOT NULL AND finished_at < :before AND scheduled_for < :before_day
    ORDER BY finished_at LIMIT :limit
)

-- limited_jobs --
-- The jobs that set a history limit, a page at a time (jobs_history_limited): a pass costs
-- nothing when none does, and never reads the whole history.
SELECT id, keep_succeeded, keep_failed FROM jobs
WHERE (keep_succeeded IS NOT NULL OR keep_failed IS NOT NULL)
  AND (:after::uuid IS NULL OR id > :after)
ORDER BY id
LIMIT :limit

-- purge_job_history --
-- One job's executions of one state beyond its limit, newest kept, read by the job's own
-- (job_id, scheduled_for) index: the cost is that job's kept history, not everyone's.
DELETE FROM executions WHERE (id, scheduled_for) IN (
    SELECT id, scheduled_for FROM executions
    WHERE job_id = :job_id AND state = :state
    ORDER BY scheduled_for DESC
    OFFSET :keep LIMIT :limit
)

-- purge_deliveries --
-- Delivery retention row by row, for what no partition drop takes: delivered and exhausted
-- deliveries of events before :before_day (the start of the day holding the retention
-- limit, or of a day whose drop was deferred) that sit in a day partition kept for an
-- undelivered one, in the DEFAULT partition, or in the legacy one of a migrated
-- deployment. Deliveries still to be made (pending, failed) are never purged: committed
-- means delivered at least once. A bounded batch per endpoint, oldest first on the primary
-- key; each row deleted by its whole key (a lookup in its own partition, with
-- purge_by_key). SKIP LOCKED: rows being leased or recorded now are left for next time.
DELETE FROM webhook_deliveries d USING (
    SELECT x.endpoint_id, x.event_id FROM (SELECT id FROM webhook_endpoints) w
    CROSS JOIN LATERAL (
        SELECT endpoint_id, event_id FROM webhook_deliveries
        WHERE endpoint_id = w.id AND event_id < webhook_event_id_floor(:before_day)
          AND state IN ('succeeded', 'exhausted')
        ORDER BY event_id LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ) x
    LIMIT :limit
) old
WHERE d.endpoint_id = old.endpoint_id AND d.event_id = old.event_id
