-- Workflows (docs/workflows.md): a DAG of nodes, run as a whole by hand or on a schedule.
--
-- A node is a job row owned by its workflow (jobs.workflow_id): kind, payload, timeout,
-- retry policy and labels like any job, so that each node of a run is exactly one
-- execution (executions.workflow_run_id) with every guarantee of a job's fire: the unique
-- (job_id, scheduled_for) with scheduled_for = the run's time, claim, lease, retries as
-- attempts, ack after commit. A node's job row is stored 'completed' with no next fire:
-- the leader never fires it on its own, no sweep or quota counts it, and the jobs API does
-- not show it.
--
-- Readiness is decided in the transaction that ends a node's execution, whatever ends it
-- (a worker's result, the reaper, a cancel): a statement-level trigger on executions
-- passes the nodes that ended to workflow_advance(), which takes the run's row lock
-- (runs in id order), counts each child's parents by outcome and queues the children
-- whose trigger rule is met. A child's execution is committed with its last parent's
-- result, never before it; two parents ending at once take turns on the run's lock, so
-- the second sees the first's count and the child is queued once.

CREATE TABLE workflows (
    id                 uuid PRIMARY KEY,
    namespace          text NOT NULL,
    name               text NOT NULL,
    state              text NOT NULL DEFAULT 'active'
                       CHECK (state IN ('active', 'paused', 'cancelled')),
    schedule           text,  -- NULL: runs only when started by hand
    timezone           text NOT NULL DEFAULT 'UTC',
    next_fire_at       timestamptz,
    misfire            text NOT NULL DEFAULT 'run_once'
                       CHECK (misfire IN ('run_once', 'run_all', 'skip')),
    max_catchup        integer NOT NULL DEFAULT 10,
    concurrency        text NOT NULL DEFAULT 'allow'
                       CHECK (concurrency IN ('allow', 'forbid', 'replace')),
    run_count          integer NOT NULL DEFAULT 0,
    version            integer NOT NULL DEFAULT 1,  -- the node set new runs use
    node_count         integer NOT NULL,
    labels             jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- As submitted, without its nodes: each node's spec is its job row's (the nodes of a
    -- 10,000-node workflow are not stored twice).
    spec               jsonb NOT NULL,
    idempotency_key    text,
    idempotency_digest bytea,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (namespace, idempotency_key)
);

-- The leader selects due workflows as it does due jobs.
CREATE INDEX workflows_due ON workflows (next_fire_at)
    WHERE state = 'active' AND next_fire_at IS NOT NULL;
CREATE INDEX workflows_listing ON workflows (namespace, created_at DESC, id DESC);
CREATE INDEX workflows_labels ON workflows USING gin (labels jsonb_path_ops);

-- The nodes of each version of a workflow, by position in the submitted list. parents and
-- children are positions too: the graph, read set-wise by the functions below. No foreign
-- key to workflows (never deleted: a DELETE cancels): 10,000 key checks were a tenth of
-- storing a 10,000-node workflow.
CREATE TABLE workflow_nodes (
    workflow_id  uuid NOT NULL,
    version      integer NOT NULL,
    node         integer NOT NULL,
    key          text NOT NULL,
    job_id       uuid NOT NULL UNIQUE,  -- the node's definition, a job row
    trigger_rule text NOT NULL
                 CHECK (trigger_rule IN ('all_success', 'all_done', 'none_failed',
                                         'one_success')),
    parents      integer[] NOT NULL,
    children     integer[] NOT NULL,
    PRIMARY KEY (workflow_id, version, node)
);

-- One run per (workflow, scheduled_for), as one execution per (job, scheduled_for): a
-- repeated fire of the same time is a no-op. Fires not run (concurrency=forbid, misfire)
-- are recorded as runs 'skipped' or 'missed' with a reason and no node.
CREATE TABLE workflow_runs (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    workflow_id   uuid NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    version       integer NOT NULL,
    scheduled_for timestamptz NOT NULL,
    state         text NOT NULL
                  CHECK (state IN ('running', 'succeeded', 'failed', 'cancelled', 'skipped',
                                   'missed')),
    reason        text,
    input         jsonb NOT NULL DEFAULT '{}'::jsonb,
    epoch         bigint NOT NULL,  -- the leader's that fired it; -1 if started by hand
    nodes_left    integer NOT NULL DEFAULT 0,  -- nodes not finished yet
    nodes_failed  integer NOT NULL DEFAULT 0,  -- failed or upstream_failed
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    UNIQUE (workflow_id, scheduled_for)
);

-- concurrency=forbid/replace ask "is a run of this workflow still going?"; the metrics
-- count runs in flight.
CREATE INDEX workflow_runs_running ON workflow_runs (workflow_id) WHERE state = 'running';
CREATE INDEX workflow_runs_finished ON workflow_runs (finished_at) WHERE finished_at IS NOT NULL;

-- Each node of each run. 'queued' means "its execution is active" (the API shows that
-- execution's own state: queued or running); the parents_* counters are what the
-- trigger rule decides on. No foreign key: a 10,000-node run is inserted in one
-- statement without 10,000 key checks; retention deletes a run's nodes with the run.
CREATE TABLE workflow_run_nodes (
    run_id            uuid NOT NULL,
    node              integer NOT NULL,
    state             text NOT NULL DEFAULT 'pending'
                      CHECK (state IN ('pending', 'queued', 'succeeded', 'failed',
                                       'upstream_failed', 'skipped', 'cancelled')),
    execution_id      uuid,
    parents_done      integer NOT NULL DEFAULT 0,
    parents_succeeded integer NOT NULL DEFAULT 0,
    parents_failed    integer NOT NULL DEFAULT 0,  -- failed, upstream_failed or cancelled
    parents_skipped   integer NOT NULL DEFAULT 0,
    ready_at          timestamptz,  -- when its trigger rule let it run
    finished_at       timestamptz,
    PRIMARY KEY (run_id, node)
);

-- Node definitions and node executions. Neither column has a foreign key: checking one
-- would cost every job and execution insert, workflow or not, a trigger event.
ALTER TABLE jobs ADD COLUMN workflow_id uuid;
ALTER TABLE executions
    ADD COLUMN workflow_run_id uuid,
    -- A workflow node's return value (JSON, bounded like output): its children's upstream.
    ADD COLUMN result jsonb;

-- The jobs list leaves workflow nodes out: with them out of its index too, a namespace's
-- 10,000-node workflow costs its job listing nothing.
DROP INDEX jobs_listing;
CREATE INDEX jobs_listing ON jobs (namespace, created_at DESC, id DESC) WHERE workflow_id IS NULL;


-- The trigger rules, as jobsched.domain.workflows.decide (a test holds the two to the same
-- answers): 'run', 'wait', or how the node ends without running.
CREATE FUNCTION workflow_decide(rule text, parents integer, done integer, succeeded integer,
                                failed integer, skipped integer) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE rule
        WHEN 'all_success' THEN CASE WHEN failed > 0 THEN 'upstream_failed'
                                     WHEN skipped > 0 THEN 'skipped'
                                     WHEN succeeded >= parents THEN 'run'
                                     ELSE 'wait' END
        WHEN 'all_done' THEN CASE WHEN done >= parents THEN 'run' ELSE 'wait' END
        WHEN 'none_failed' THEN CASE WHEN failed > 0 THEN 'upstream_failed'
                                     WHEN done >= parents THEN 'run'
                                     ELSE 'wait' END
        WHEN 'one_success' THEN CASE WHEN succeeded > 0 OR parents = 0 THEN 'run'
                                     WHEN done >= parents THEN 'upstream_failed'
                                     ELSE 'wait' END
    END
$$;

-- How a node ends when its execution ends in this state (NULL: it has not ended), as
-- jobsched.domain.workflows.node_outcome.
CREATE FUNCTION workflow_node_outcome(execution_state text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE execution_state
        WHEN 'succeeded' THEN 'succeeded'
        WHEN 'dead' THEN 'failed'
        WHEN 'failed' THEN 'failed'
        WHEN 'timed_out' THEN 'failed'
        WHEN 'cancelled' THEN 'cancelled'
        WHEN 'skipped' THEN 'skipped'
        WHEN 'missed' THEN 'skipped'
    END
$$;

-- The one place a run's end is announced (succeeded, failed or cancelled), in the
-- transaction that ends it: the workflow_run.* webhook event (migrations/011_webhooks.sql,
-- docs/webhooks.md), for the endpoints of the workflow's namespace whose label filter the
-- workflow's labels satisfy. No endpoint subscribed: one empty insert.
CREATE FUNCTION workflow_run_ended(p_run uuid) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v record;
BEGIN
    SELECT r.id, r.workflow_id, r.state, r.scheduled_for, r.started_at, r.finished_at,
           w.name, w.namespace, w.labels INTO v
    FROM workflow_runs r JOIN workflows w ON w.id = r.workflow_id
    WHERE r.id = p_run;
    PERFORM webhook_enqueue(v.namespace, 'workflow_run.' || v.state, v.labels,
                            jsonb_build_object(
                                'id', v.id, 'workflow_id', v.workflow_id,
                                'workflow_name', v.name, 'namespace', v.namespace,
                                'state', v.state,
                                'scheduled_for', webhook_time(v.scheduled_for),
                                'started_at', webhook_time(v.started_at),
                                'finished_at', webhook_time(v.finished_at),
                                'labels', v.labels));
END
$$;

-- Move runs on: mark the given nodes ended (ended_*: run, node, node state), count each
-- child's parents by outcome, and decide the pending nodes whose counts changed (and those
-- given in check_*): run them (a new execution, or a re-drive of the one a retried run
-- already had), end them without running (upstream_failed, skipped: their children are
-- counted in turn), or let them wait. A run whose last node ended is finished. Every
-- step is set-based, level by level, never one statement per node or per edge.
--
-- Every statement here is driven by a small batch and reaches rows by key. The planner
-- settings below keep it that way: on a new table's statistics it chose sequential scans,
-- hash joins over whole tables and a two-column index probe filtered row by row (156 ms
-- to decide the 1,000 children of one node; 2 ms with key lookups). The definition rows
-- are looked up in LATERAL ... LIMIT 1 subqueries for the same reason.
CREATE FUNCTION workflow_advance(ended_runs uuid[], ended_nodes integer[], ended_states text[],
                                 check_runs uuid[], check_nodes integer[]) RETURNS void
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
AS $$
DECLARE
    e_runs uuid[];
    e_nodes integer[];
    e_states text[];
    d_runs uuid[];
    d_nodes integer[];
    d_jobs uuid[];
    d_times timestamptz[];
    d_decisions text[];
    d_priorities smallint[];
    queued integer := 0;
    published_here text[] := '{}';
    -- Who publishes the nodes queued here: a worker ending their parent sets this to
    -- 'caller' in its transaction and publishes them itself once committed (they get
    -- epoch -2, and their list in jobsched.queued_nodes); anyone else leaves them to the
    -- leader (epoch -1, woken by NOTIFY). Either way they sit in the outbox (published_at
    -- NULL), which the leader re-publishes if their publisher died.
    by_caller boolean := coalesce(current_setting('jobsched.node_publisher', true), '')
                         = 'caller';
    node_epoch bigint := CASE WHEN by_caller THEN -2 ELSE -1 END;
    finished record;
BEGIN
    -- Each run's nodes change under its row lock, runs locked in id order: transactions
    -- ending nodes of the same run take turns (the second sees the first's counts) and
    -- never deadlock. The caller already holds the locks of the executions it changed.
    PERFORM 1 FROM workflow_runs
    WHERE id = ANY(coalesce(ended_runs, '{}') || coalesce(check_runs, '{}'))
    ORDER BY id FOR UPDATE;

    LOOP
        IF cardinality(ended_runs) > 0 THEN
            -- A node ends once: a second report of the same end changes nothing.
            WITH ended AS (
                UPDATE workflow_run_nodes rn SET state = x.state, finished_at = now()
                FROM unnest(ended_runs, ended_nodes, ended_states) AS x(run_id, node, state)
                WHERE rn.run_id = x.run_id AND rn.node = x.node
                  AND rn.state IN ('pending', 'queued')
                RETURNING rn.run_id, rn.node, rn.state
            )
            SELECT array_agg(run_id), array_agg(node), array_agg(state)
            INTO e_runs, e_nodes, e_states FROM ended;

            IF e_runs IS NOT NULL THEN
                UPDATE workflow_runs r
                SET nodes_left = r.nodes_left - c.ended, nodes_failed = r.nodes_failed + c.failed
                FROM (SELECT run_id, count(*) AS ended,
                             count(*) FILTER (WHERE state IN ('failed', 'upstream_failed'))
                                 AS failed
                      FROM unnest(e_runs, e_states) AS x(run_id, state)
                      GROUP BY run_id) c
                WHERE r.id = c.run_id;

                FOR finished IN
                    UPDATE workflow_runs
                    SET state = CASE WHEN nodes_failed > 0 THEN 'failed' ELSE 'succeeded' END,
                        finished_at = now()
                    WHERE id = ANY(e_runs) AND state = 'running' AND nodes_left <= 0
                    RETURNING id
                LOOP
                    PERFORM workflow_run_ended(finished.id);
                END LOOP;

                -- The children of what ended (in runs still going) count them.
                WITH tally AS (
                    SELECT x.run_id, child.node,
                           count(*) AS done,
                           count(*) FILTER (WHERE x.state = 'succeeded') AS succeeded,
                           count(*) FILTER (WHERE x.state IN ('failed', 'upstream_failed',
                                                              'cancelled')) AS failed,
                           count(*) FILTER (WHERE x.state = 'skipped') AS skipped
                    FROM unnest(e_runs, e_nodes, e_states) AS x(run_id, node, state)
                    CROSS JOIN LATERAL (
                        SELECT workflow_id, version FROM workflow_runs
                        WHERE id = x.run_id AND state = 'running' LIMIT 1) r
                    CROSS JOIN LATERAL (
                        SELECT children FROM workflow_nodes
                        WHERE workflow_id = r.workflow_id AND version = r.version
                          AND node = x.node LIMIT 1) d
                    CROSS JOIN LATERAL unnest(d.children) AS child(node)
                    GROUP BY x.run_id, child.node
                ), counted AS (
                    UPDATE workflow_run_nodes rn
                    SET parents_done = rn.parents_done + t.done,
                        parents_succeeded = rn.parents_succeeded + t.succeeded,
                        parents_failed = rn.parents_failed + t.failed,
                        parents_skipped = rn.parents_skipped + t.skipped
                    FROM tally t
                    WHERE rn.run_id = t.run_id AND rn.node = t.node AND rn.state = 'pending'
                    RETURNING rn.run_id, rn.node
                )
                SELECT coalesce(check_runs, '{}') || coalesce(array_agg(run_id), '{}'),
                       coalesce(check_nodes, '{}') || coalesce(array_agg(node), '{}')
                INTO check_runs, check_nodes FROM counted;
            END IF;
        END IF;

        EXIT WHEN coalesce(cardinality(check_runs), 0) = 0;

        -- Decide the pending nodes whose parents changed.
        SELECT array_agg(c.run_id), array_agg(c.node), array_agg(d.job_id),
               array_agg(r.scheduled_for),
               array_agg(workflow_decide(d.trigger_rule, cardinality(d.parents),
                                         rn.parents_done, rn.parents_succeeded,
                                         rn.parents_failed, rn.parents_skipped)),
               array_agg(j.priority)
        INTO d_runs, d_nodes, d_jobs, d_times, d_decisions, d_priorities
        FROM (SELECT DISTINCT run_id, node FROM unnest(check_runs, check_nodes)
                                                AS c(run_id, node)) c
        CROSS JOIN LATERAL (
            SELECT parents_done, parents_succeeded, parents_failed, parents_skipped
            FROM workflow_run_nodes
            WHERE run_id = c.run_id AND node = c.node AND state = 'pending' LIMIT 1) rn
        CROSS JOIN LATERAL (
            SELECT workflow_id, version, scheduled_for FROM workflow_runs
            WHERE id = c.run_id AND state = 'running' LIMIT 1) r
        CROSS JOIN LATERAL (
            SELECT job_id, trigger_rule, parents FROM workflow_nodes
            WHERE workflow_id = r.workflow_id AND version = r.version AND node = c.node
            LIMIT 1) d
        CROSS JOIN LATERAL (SELECT priority FROM jobs WHERE id = d.job_id LIMIT 1) j;

        -- Those that run: one execution per node per run, as a job's fire, with the node's
        -- priority band (epoch -1: the leader publishes it on its next tick, woken by the
        -- NOTIFY below; -2: the worker whose result queued it does). A retried run
        -- re-drives the execution its node already had: one more attempt, same band.
        WITH made AS (
            INSERT INTO executions (job_id, scheduled_for, epoch, workflow_run_id, priority)
            SELECT job_id, scheduled_for, node_epoch, run_id, priority
            FROM unnest(d_jobs, d_times, d_runs, d_decisions, d_priorities)
                AS x(job_id, scheduled_for, run_id, decision, priority)
            WHERE decision = 'run'
            ORDER BY job_id
            ON CONFLICT (job_id, scheduled_for) DO UPDATE
            SET state = 'queued', attempt = executions.attempt + 1, published_at = NULL,
                queued_at = now(), finished_at = NULL, run_after = NULL, worker = NULL,
                lease_expires_at = NULL, epoch = node_epoch, result = NULL,
                reason = 'run again by a retry of its workflow run'
            WHERE executions.state NOT IN ('queued', 'running', 'retrying')
            RETURNING id, job_id, workflow_run_id, attempt, priority, scheduled_for
        ), marked AS (
            UPDATE workflow_run_nodes rn
            SET state = 'queued', execution_id = m.id, ready_at = now()
            FROM made m
            CROSS JOIN LATERAL (
                SELECT node FROM workflow_nodes WHERE job_id = m.job_id LIMIT 1) d
            CROSS JOIN LATERAL (SELECT kind FROM jobs WHERE id = m.job_id LIMIT 1) j
            WHERE rn.run_id = m.workflow_run_id AND rn.node = d.node
            RETURNING m.id, m.job_id, m.attempt, m.priority, m.scheduled_for, j.kind
        )
        -- 'id job_id attempt priority kind scheduled_for(epoch seconds)': what the
        -- publisher puts in the message
        SELECT queued + count(*),
               published_here || coalesce(array_agg(concat_ws(' ', id, job_id, attempt,
                                                              priority, kind,
                                                              extract(epoch FROM scheduled_for))),
                                          '{}')
        INTO queued, published_here FROM marked;

        -- Those that end without running are the next level's ended nodes.
        SELECT array_agg(run_id), array_agg(node), array_agg(decision)
        INTO ended_runs, ended_nodes, ended_states
        FROM unnest(d_runs, d_nodes, d_decisions) AS x(run_id, node, decision)
        WHERE decision IN ('upstream_failed', 'skipped');
        check_runs := '{}';
        check_nodes := '{}';
        ended_runs := coalesce(ended_runs, '{}');
    END LOOP;

    IF queued > 0 AND by_caller THEN
        PERFORM set_config('jobsched.queued_nodes',
                           concat_ws(',', nullif(current_setting('jobsched.queued_nodes', true),
                                                 ''),
                                     array_to_string(published_here, ',')),
                           true);
    ELSIF queued > 0 THEN
        PERFORM pg_notify('jobsched_wake', 'workflow');
    END IF;
END
$$;

-- Every path that ends a node's execution (a worker's result, the reaper, a cancel) goes
-- through an UPDATE of executions: this statement-level trigger passes the nodes whose
-- execution is now over to workflow_advance, in the same transaction. Their previous
-- state is not needed (only the new rows are captured): a node ends once, so a row that
-- was already over changes nothing there. A statement that touches no workflow node
-- costs one pass over its new rows.
CREATE FUNCTION workflow_executions_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_runs uuid[];
    v_nodes integer[];
    v_states text[];
BEGIN
    PERFORM 1 FROM new_rows WHERE workflow_run_id IS NOT NULL LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT array_agg(n.workflow_run_id ORDER BY n.workflow_run_id, d.node),
           array_agg(d.node ORDER BY n.workflow_run_id, d.node),
           array_agg(workflow_node_outcome(n.state) ORDER BY n.workflow_run_id, d.node)
    INTO v_runs, v_nodes, v_states
    FROM new_rows n
    CROSS JOIN LATERAL (SELECT node FROM workflow_nodes WHERE job_id = n.job_id LIMIT 1) d
    WHERE n.workflow_run_id IS NOT NULL
      AND n.state NOT IN ('queued', 'running', 'retrying');
    IF v_runs IS NOT NULL THEN
        PERFORM workflow_advance(v_runs, v_nodes, v_states, '{}', '{}');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER workflow_executions_changed
    AFTER UPDATE ON executions
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION workflow_executions_changed();

-- Start a run of a workflow's current version: the run, a row per node, and the roots
-- queued. NULL if a run of that time exists already (a repeated fire is a no-op).
-- p_reason: why this fire runs as it does (e.g. the later fires it coalesced).
CREATE FUNCTION workflow_start_run(p_workflow uuid, p_scheduled_for timestamptz,
                                   p_input jsonb, p_epoch bigint, p_reason text)
RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_run uuid;
    v_version integer;
    v_roots integer[];
BEGIN
    INSERT INTO workflow_runs (workflow_id, version, scheduled_for, state, input, epoch,
                               nodes_left, reason)
    SELECT id, version, p_scheduled_for, 'running', coalesce(p_input, '{}'::jsonb), p_epoch,
           node_count, p_reason
    FROM workflows WHERE id = p_workflow
    ON CONFLICT (workflow_id, scheduled_for) DO NOTHING
    RETURNING id, version INTO v_run, v_version;
    IF v_run IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO workflow_run_nodes (run_id, node)
    SELECT v_run, node FROM workflow_nodes
    WHERE workflow_id = p_workflow AND version = v_version
    ORDER BY node;
    SELECT coalesce(array_agg(node), '{}') INTO v_roots FROM workflow_nodes
    WHERE workflow_id = p_workflow AND version = v_version AND cardinality(parents) = 0;
    PERFORM workflow_advance('{}', '{}', '{}', array_fill(v_run, ARRAY[cardinality(v_roots)]),
                             v_roots);
    RETURN v_run;
END
$$;

-- Cancel running runs: queued nodes cancelled, running ones stopped (their workers are
-- told on jobsched_cancel), pending ones cancelled. Locks are taken as every other path
-- takes them: the runs' active executions first (in id order), then the runs. A node
-- queued by a transaction that committed between the two (it held the run's lock) would
-- be an execution not locked here: then the whole cancel is retried
-- (serialization_failure), never waited for while holding the runs.
CREATE FUNCTION workflow_cancel_runs(p_runs uuid[], p_reason text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_locked uuid[];
    v_cancelled uuid[];
    v_run uuid;
    v_told bigint;
BEGIN
    SELECT coalesce(array_agg(id), '{}') INTO v_locked FROM (
        SELECT e.id FROM workflow_run_nodes rn JOIN executions e ON e.id = rn.execution_id
        WHERE rn.run_id = ANY(p_runs) AND rn.state = 'queued'
          AND e.state IN ('queued', 'running', 'retrying')
        ORDER BY e.id
        FOR UPDATE OF e
    ) locked;
    PERFORM 1 FROM workflow_runs WHERE id = ANY(p_runs) ORDER BY id FOR UPDATE;
    IF EXISTS (
        SELECT 1 FROM workflow_run_nodes rn JOIN executions e ON e.id = rn.execution_id
        WHERE rn.run_id = ANY(p_runs) AND rn.state = 'queued'
          AND e.state IN ('queued', 'running', 'retrying') AND NOT e.id = ANY(v_locked)
    ) THEN
        RAISE EXCEPTION 'a node of the run was queued while it was being cancelled'
            USING ERRCODE = 'serialization_failure';
    END IF;
    -- The runs first: the trigger then records the nodes' ends without moving on.
    WITH stopped AS (
        UPDATE workflow_runs SET state = 'cancelled', finished_at = now(), reason = p_reason
        WHERE id = ANY(p_runs) AND state = 'running'
        RETURNING id
    )
    SELECT coalesce(array_agg(id), '{}') INTO v_cancelled FROM stopped;
    WITH cancelled AS (
        UPDATE executions
        SET state = 'cancelled', finished_at = now(), lease_expires_at = NULL,
            reason = p_reason
        WHERE id = ANY(v_locked) AND state IN ('queued', 'running', 'retrying')
          AND workflow_run_id = ANY(v_cancelled)
        RETURNING id
    )
    SELECT count(pg_notify('jobsched_cancel', id::text)) INTO v_told FROM cancelled;
    UPDATE workflow_run_nodes SET state = 'cancelled', finished_at = now()
    WHERE run_id = ANY(v_cancelled) AND state IN ('pending', 'queued');
    FOREACH v_run IN ARRAY v_cancelled LOOP
        PERFORM workflow_run_ended(v_run);
    END LOOP;
    RETURN cardinality(v_cancelled);
END
$$;

-- Run again what failed in a finished run: its failed, upstream_failed and cancelled
-- nodes and every node downstream of them; what succeeded elsewhere is kept (its result
-- too, as the re-run nodes' upstream). A node that had an execution gets one more attempt
-- of it; one that never had one gets its first. Returns the run's state before (anything
-- but 'failed' or 'cancelled' changes nothing).
CREATE FUNCTION workflow_retry_run(p_run uuid) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_state text;
    v_workflow uuid;
    v_version integer;
    v_reset integer[];
BEGIN
    SELECT state, workflow_id, version INTO v_state, v_workflow, v_version
    FROM workflow_runs WHERE id = p_run FOR UPDATE;
    IF v_state IS NULL OR v_state NOT IN ('failed', 'cancelled') THEN
        RETURN v_state;
    END IF;
    WITH RECURSIVE again(node) AS (
        SELECT node FROM workflow_run_nodes
        WHERE run_id = p_run AND state IN ('failed', 'upstream_failed', 'cancelled')
        UNION
        SELECT child.node
        FROM again
        JOIN workflow_nodes d ON d.workflow_id = v_workflow AND d.version = v_version
                             AND d.node = again.node
        CROSS JOIN LATERAL unnest(d.children) AS child(node)
    )
    SELECT coalesce(array_agg(node), '{}') INTO v_reset FROM again;

    -- Their parents that keep their outcome count again; the others will report anew.
    WITH again AS (
        SELECT DISTINCT node FROM unnest(v_reset) AS a(node)
    ), counts AS (
        SELECT a.node,
               count(p.node) FILTER (WHERE kept.node IS NULL) AS done,
               count(p.node) FILTER (WHERE kept.node IS NULL AND p.state = 'succeeded')
                   AS succeeded,
               count(p.node) FILTER (WHERE kept.node IS NULL AND p.state = 'skipped')
                   AS skipped
        FROM again a
        JOIN workflow_nodes d ON d.workflow_id = v_workflow AND d.version = v_version
                             AND d.node = a.node
        LEFT JOIN LATERAL unnest(d.parents) AS parent(node) ON true
        LEFT JOIN workflow_run_nodes p ON p.run_id = p_run AND p.node = parent.node
        LEFT JOIN again kept ON kept.node = parent.node
        GROUP BY a.node
    )
    UPDATE workflow_run_nodes rn
    SET state = 'pending', finished_at = NULL, ready_at = NULL, parents_done = c.done,
        parents_succeeded = c.succeeded, parents_failed = 0, parents_skipped = c.skipped
    FROM counts c
    WHERE rn.run_id = p_run AND rn.node = c.node;

    UPDATE workflow_runs
    SET state = 'running', finished_at = NULL, nodes_left = cardinality(v_reset),
        nodes_failed = 0, reason = 'retried: ' || cardinality(v_reset) || ' node(s) run again'
    WHERE id = p_run;
    PERFORM workflow_advance('{}', '{}', '{}',
                             array_fill(p_run, ARRAY[cardinality(v_reset)]), v_reset);
    RETURN v_state;
END
$$;
