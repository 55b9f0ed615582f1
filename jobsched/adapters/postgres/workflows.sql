-- Workflows: what the api, the leader and the worker read and write. The moving parts
-- (starting a run, advancing it as nodes end, cancel, retry) are SQL functions of
-- migrations/012_workflows.sql, so that every path runs the same statements under the same
-- locks; these are the calls and the reads around them.

-- insert_workflow --
INSERT INTO workflows (id, namespace, name, schedule, timezone, next_fire_at, misfire,
                       max_catchup, concurrency, node_count, labels, spec, idempotency_key,
                       idempotency_digest)
VALUES (:id, :namespace, :name, :schedule, :timezone, :next_fire_at, :misfire, :max_catchup,
        :concurrency, :node_count, :labels, :spec, :idempotency_key, :idempotency_digest)
ON CONFLICT (namespace, idempotency_key) DO NOTHING
RETURNING *

-- insert_version --
-- A version's nodes, whatever their number, in one statement: a job row per node (stored
-- completed, with no fire of its own: see 012_workflows.sql) and its place in the graph
-- (parents, children: positions, as '{1,2}' literals). The specs arrive as one JSON
-- document and are taken apart here: no per-node work in Python.
WITH node AS MATERIALIZED (
    SELECT (e.position - 1)::int AS node, gen_random_uuid() AS job_id, e.spec,
           g.parents::int[] AS parents, g.children::int[] AS children
    FROM jsonb_array_elements(:specs::jsonb) WITH ORDINALITY AS e(spec, position)
    JOIN unnest(:parents::text[], :children::text[]) WITH ORDINALITY
        AS g(parents, children, position) ON g.position = e.position
), job AS (
    INSERT INTO jobs (id, namespace, name, kind, payload, schedule, timezone, state,
                      next_fire_at, max_attempts, backoff_s, max_backoff_s, timeout_s,
                      priority, labels, spec, workflow_id)
    SELECT job_id, :namespace, :name || '/' || (spec ->> 'key'), spec ->> 'kind',
           spec -> (spec ->> 'kind'), 'immediate', 'UTC', 'completed', NULL,
           (spec -> 'retry' ->> 'max_attempts')::int,
           (spec -> 'retry' ->> 'backoff_s')::double precision,
           (spec -> 'retry' ->> 'max_backoff_s')::double precision,
           (spec ->> 'timeout_s')::double precision,
           (:priority_ranks::jsonb ->> (spec ->> 'priority'))::smallint,
           coalesce(spec -> 'labels', '{}'::jsonb), spec, :workflow_id
    FROM node
)
INSERT INTO workflow_nodes (workflow_id, version, node, key, job_id, trigger_rule, parents,
                            children)
SELECT :workflow_id, :version, node, spec ->> 'key', job_id, spec ->> 'trigger_rule',
       parents, children
FROM node

-- workflow_by_idempotency_key --
SELECT id, idempotency_digest, created_at < now() - make_interval(secs => :ttl_s) AS expired
FROM workflows WHERE namespace = :namespace AND idempotency_key = :key

-- release_idempotency_key --
UPDATE workflows SET idempotency_key = NULL, idempotency_digest = NULL
WHERE id = :id AND created_at < now() - make_interval(secs => :ttl_s)

-- get_workflow --
SELECT w.*, lr.last_run
FROM workflows w
LEFT JOIN LATERAL (
    SELECT to_jsonb(r.*) AS last_run FROM workflow_runs r
    WHERE r.workflow_id = w.id ORDER BY r.scheduled_for DESC LIMIT 1
) lr ON true
WHERE w.id = :id AND w.namespace = :namespace

-- node_specs --
-- The nodes of a version as submitted, in order: each node's job row keeps its spec.
SELECT j.spec FROM workflow_nodes d JOIN jobs j ON j.id = d.job_id
WHERE d.workflow_id = :workflow_id AND d.version = :version
ORDER BY d.node

-- list_workflows --
-- Newest first, as jobs; the nodes (up to 10,000 of them) are left out of a list.
SELECT w.id, w.namespace, w.name, w.state, w.schedule, w.timezone, w.next_fire_at, w.version,
       w.node_count, w.labels, w.spec, w.created_at, w.updated_at, lr.last_run
FROM workflows w
LEFT JOIN LATERAL (
    SELECT to_jsonb(r.*) AS last_run FROM workflow_runs r
    WHERE r.workflow_id = w.id ORDER BY r.scheduled_for DESC LIMIT 1
) lr ON true
WHERE w.namespace = :namespace
  AND (:state::text IS NULL OR w.state = :state)
  AND (:name::text IS NULL OR w.name = :name)
  AND (:labels::jsonb IS NULL OR w.labels @> :labels)
  AND (:after_at::timestamptz IS NULL OR (w.created_at, w.id) < (:after_at, :after_id::uuid))
ORDER BY w.created_at DESC, w.id DESC
LIMIT :limit

-- lock_workflow --
SELECT * FROM workflows WHERE id = :id AND namespace = :namespace FOR UPDATE

-- update_workflow --
-- PATCH: the row was locked by lock_workflow in the same transaction; runs already started
-- keep the version they started with.
UPDATE workflows
SET name = :name, schedule = :schedule, timezone = :timezone, next_fire_at = :next_fire_at,
    misfire = :misfire, max_catchup = :max_catchup, concurrency = :concurrency,
    node_count = :node_count, labels = :labels, spec = :spec, version = :version,
    updated_at = now()
WHERE id = :id

-- pause_workflow --
UPDATE workflows SET state = 'paused', updated_at = now()
WHERE id = :id AND namespace = :namespace AND state = 'active'
RETURNING id

-- resume_workflow --
UPDATE workflows SET state = 'active', next_fire_at = :next_fire_at, updated_at = now()
WHERE id = :id
RETURNING id

-- cancel_workflow --
UPDATE workflows SET state = 'cancelled', next_fire_at = NULL, updated_at = now()
WHERE id = :id AND namespace = :namespace AND state IN ('active', 'paused')
RETURNING id

-- running_runs --
SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM workflow_runs
WHERE workflow_id = ANY(:workflow_ids::uuid[]) AND state = 'running'

-- cancel_runs --
SELECT workflow_cancel_runs(:run_ids::uuid[], :reason)

-- record_run --
-- A fire not run (skipped while paused, concurrency=forbid, misfire): a finished run with
-- its reason and no node.
INSERT INTO workflow_runs (workflow_id, version, scheduled_for, state, reason, epoch,
                           finished_at)
SELECT w.id, w.version, f.scheduled_for, f.state, f.reason, :epoch, now()
FROM unnest(:workflow_ids::uuid[], :scheduled_for::timestamptz[], :states::text[],
            :reasons::text[]) AS f(workflow_id, scheduled_for, state, reason)
JOIN workflows w ON w.id = f.workflow_id
ON CONFLICT (workflow_id, scheduled_for) DO NOTHING

-- start_runs --
-- Runs of the workflows' current versions; a time that already has a run starts nothing.
SELECT f.workflow_id,
       workflow_start_run(f.workflow_id, f.scheduled_for, :input, :epoch, f.reason) AS run_id
FROM unnest(:workflow_ids::uuid[], :scheduled_for::timestamptz[], :reasons::text[])
    AS f(workflow_id, scheduled_for, reason)

-- get_run --
SELECT r.*, w.name AS workflow_name, w.namespace
FROM workflow_runs r JOIN workflows w ON w.id = r.workflow_id
WHERE r.id = :id AND w.namespace = :namespace

-- run_nodes --
-- Every node of a run, in the order submitted, with its execution; a node whose execution
-- is active shows that execution's state. A node's execution has its run's scheduled_for
-- (workflow_advance): each is read in that day's partition alone. The run's time comes
-- from a subquery (run once, before the join): the plan prunes the other partitions
-- with it, which it does not with `e.scheduled_for = r.scheduled_for` (a join filter
-- above the executions' scans of every partition).
SELECT d.node, d.key, d.trigger_rule, d.parents, rn.state, rn.execution_id, rn.ready_at,
       rn.finished_at AS ended_at, e.state AS execution_state, e.attempt,
       e.started_at, e.finished_at, e.error
FROM workflow_runs r
JOIN workflow_run_nodes rn ON rn.run_id = r.id
JOIN workflow_nodes d ON d.workflow_id = r.workflow_id AND d.version = r.version
                     AND d.node = rn.node
LEFT JOIN executions e ON e.id = rn.execution_id
    AND e.scheduled_for = (SELECT scheduled_for FROM workflow_runs WHERE id = :run_id)
WHERE r.id = :run_id
ORDER BY d.node

-- list_runs --
-- (workflow_id, scheduled_for) is unique: its index orders a workflow's runs.
SELECT r.*, w.name AS workflow_name, w.namespace
FROM workflow_runs r JOIN workflows w ON w.id = r.workflow_id
WHERE r.workflow_id = :workflow_id
  AND (:after_at::timestamptz IS NULL OR r.scheduled_for < :after_at)
ORDER BY r.scheduled_for DESC
LIMIT :limit

-- run_in_namespace --
SELECT r.state FROM workflow_runs r JOIN workflows w ON w.id = r.workflow_id
WHERE r.id = :id AND w.namespace = :namespace

-- retry_run --
SELECT workflow_retry_run(:id)

-- select_due_workflows --
-- The leader's selection, as select_due_jobs in leader.sql: workflows due at :now, locked
-- for this tick; busy says whether a run is still going (forbid and replace need to know).
SELECT id, schedule, timezone, next_fire_at, misfire, max_catchup, concurrency, run_count,
       CASE WHEN concurrency = 'allow' THEN false ELSE EXISTS (
           SELECT 1 FROM workflow_runs r
           WHERE r.workflow_id = workflows.id AND r.state = 'running'
       ) END AS busy
FROM workflows
WHERE state = 'active' AND next_fire_at IS NOT NULL AND next_fire_at <= :now
ORDER BY next_fire_at
LIMIT :limit
FOR UPDATE SKIP LOCKED

-- advance_workflows --
UPDATE workflows w SET next_fire_at = a.next_fire_at, run_count = w.run_count + a.runs,
                       updated_at = now()
FROM unnest(:ids::uuid[], :next_fire_at::timestamptz[], :runs::int[])
    AS a(id, next_fire_at, runs)
WHERE w.id = a.id

-- next_fire --
SELECT min(next_fire_at) FROM workflows WHERE state = 'active' AND next_fire_at IS NOT NULL

-- runs_in_flight --
SELECT count(*) FROM workflow_runs WHERE state = 'running'

-- runs_finished --
-- Runs that ended in [:since, :until), by outcome: the leader's run counters.
SELECT state, count(*) AS runs FROM workflow_runs
WHERE finished_at >= :since AND finished_at < :until AND state IN ('succeeded', 'failed', 'cancelled')
GROUP BY state

-- purge_runs --
-- Retention: finished runs past the retention period with their nodes, a bounded batch at
-- a time (their executions go with the executions' own retention).
WITH gone AS (
    DELETE FROM workflow_runs WHERE id IN (
        SELECT id FROM workflow_runs
        WHERE finished_at IS NOT NULL AND finished_at < :before
        ORDER BY finished_at LIMIT :limit
    )
    RETURNING id
), nodes AS (
    DELETE FROM workflow_run_nodes WHERE run_id IN (SELECT id FROM gone)
)
SELECT count(*) FROM gone

-- node_inputs --
-- What a node's function may ask for: the run's input and each parent's return value (by
-- key; null for a parent that returned nothing or did not succeed), and when the node was
-- let run (its start latency). Every row by key (LATERAL ... LIMIT 1: see
-- workflow_advance in 012_workflows.sql), whatever the statistics say. The nodes by id
-- within :lo, :hi (the batch's bound from its ids: see jobsched.domain.execution_ids);
-- a parent's execution has its run's scheduled_for, as the node's own, so it is within
-- :lo, :hi too (that bound prunes; r.scheduled_for, a lateral reference, does not).
SELECT e.id, r.input, rn.ready_at, up.upstream
FROM executions e
CROSS JOIN LATERAL (SELECT id, workflow_id, version, input, scheduled_for FROM workflow_runs
                    WHERE id = e.workflow_run_id LIMIT 1) r
CROSS JOIN LATERAL (SELECT node, parents FROM workflow_nodes WHERE job_id = e.job_id LIMIT 1) d
CROSS JOIN LATERAL (SELECT ready_at FROM workflow_run_nodes
                    WHERE run_id = r.id AND node = d.node LIMIT 1) rn
CROSS JOIN LATERAL (
    SELECT coalesce(jsonb_object_agg(pd.key, pe.result), '{}'::jsonb) AS upstream
    FROM unnest(d.parents) AS parent(node)
    CROSS JOIN LATERAL (SELECT key FROM workflow_nodes
                        WHERE workflow_id = r.workflow_id AND version = r.version
                          AND node = parent.node LIMIT 1) pd
    LEFT JOIN LATERAL (SELECT execution_id FROM workflow_run_nodes
                       WHERE run_id = r.id AND node = parent.node AND state = 'succeeded'
                       LIMIT 1) prn ON true
    LEFT JOIN LATERAL (SELECT result FROM executions
                       WHERE id = prn.execution_id AND scheduled_for = r.scheduled_for
                         AND scheduled_for >= coalesce(:lo::timestamptz, '-infinity')
                         AND scheduled_for < coalesce(:hi::timestamptz, 'infinity')
                       LIMIT 1) pe
        ON true
) up
WHERE e.id = ANY(:ids::uuid[])
  AND e.scheduled_for >= coalesce(:lo::timestamptz, '-infinity')
  AND e.scheduled_for < coalesce(:hi::timestamptz, 'infinity')

-- record_results --
-- plan: generic (see jobsched/adapters/postgres/sql.py)
-- Node return values, written in the transaction that records the results (before it)
-- and only while this worker still holds the attempt; and the mark that this transaction
-- publishes the nodes its results queue (see workflow_advance), in the same round trip.
-- :lo, :hi bound the batch's scheduled_for (as node_inputs).
WITH kept AS (
    UPDATE executions e SET result = r.result::jsonb
    FROM (SELECT * FROM unnest(:ids::uuid[], :attempts::int[], :results::text[])
          LIMIT cardinality(:ids::uuid[])) AS r(id, attempt, result)
    WHERE e.id = r.id AND e.attempt = r.attempt AND e.state || '' = 'running'
      AND e.worker = :worker
      AND e.scheduled_for >= coalesce(:lo::timestamptz, '-infinity')
      AND e.scheduled_for < coalesce(:hi::timestamptz, 'infinity')
    RETURNING e.id
)
SELECT set_config('jobsched.node_publisher', 'caller', true), (SELECT count(*) FROM kept)

-- nodes_queued_here --
-- The nodes queued by this transaction's results, as 'id job_id attempt priority kind
-- scheduled_for' items (see workflow_advance).
SELECT current_setting('jobsched.queued_nodes', true)
