-- Execution ids that carry their partition key (issue 19). executions is partitioned by
-- scheduled_for (014) and its key is (id, scheduled_for), so a lookup by id alone probed
-- every day partition's primary key (1.4-1.9 ms for a get of an execution with 30+ days
-- kept, against 0.3 ms before). From here on an execution's id is an RFC 9562 UUIDv7 whose
-- 48-bit unix-ms timestamp is its scheduled_for (floored to the ms), the rest random: the
-- id alone says which day partition holds the row, and a lookup by id bounds scheduled_for
-- to that ms (jobsched.domain.execution_ids), which prunes every other partition.
--
-- Ids made before this migration are random (version 4) and stay so: a lookup by such an
-- id has no bound and reads every partition, as before. The column DEFAULT stays
-- gen_random_uuid() (a default cannot read scheduled_for): every INSERT of the roles sets
-- id with jobsched_execution_id(scheduled_for).

-- A scheduled_for outside the 48-bit ms range (before 1970, after 10889, infinite) gets a
-- random id: it is found by the unbounded lookup.
CREATE FUNCTION jobsched_execution_id(p_scheduled_for timestamptz) RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT CASE WHEN ms BETWEEN 0 AND 281474976710655 THEN
        -- version 7: the version nibble of a v4 (0100) with bits 52 and 53 set is 0111;
        -- the variant bits (10) are the v4's.
        encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
                                       PLACING substring(int8send(ms::bigint) FROM 3) FROM 1 FOR 6),
                               52, 1), 53, 1), 'hex')::uuid
    ELSE gen_random_uuid() END
    FROM (SELECT floor(extract(epoch FROM p_scheduled_for) * 1000) AS ms) t
$$;


-- workflow_advance as in 012_workflows.sql, but for the id of the executions it makes.
CREATE OR REPLACE FUNCTION workflow_advance(ended_runs uuid[], ended_nodes integer[], ended_states text[],
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
            INSERT INTO executions (id, job_id, scheduled_for, epoch, workflow_run_id,
                                    priority)
            SELECT jobsched_execution_id(scheduled_for), job_id, scheduled_for, node_epoch,
                   run_id, priority
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

-- workflow_cancel_runs as in 012_workflows.sql, but its executions are read by key: a
-- node's execution has its run's scheduled_for (workflow_advance).
CREATE OR REPLACE FUNCTION workflow_cancel_runs(p_runs uuid[], p_reason text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_locked uuid[];
    v_cancelled uuid[];
    v_run uuid;
    v_told bigint;
    v_first timestamptz;
    v_last timestamptz;
BEGIN
    SELECT min(scheduled_for), max(scheduled_for) INTO v_first, v_last
    FROM workflow_runs WHERE id = ANY(p_runs);
    SELECT coalesce(array_agg(id), '{}') INTO v_locked FROM (
        SELECT e.id FROM workflow_run_nodes rn
        JOIN workflow_runs r ON r.id = rn.run_id
        JOIN executions e ON e.id = rn.execution_id AND e.scheduled_for = r.scheduled_for
        WHERE rn.run_id = ANY(p_runs) AND rn.state = 'queued'
          AND e.scheduled_for BETWEEN v_first AND v_last
          AND e.state IN ('queued', 'running', 'retrying')
        ORDER BY e.id
        FOR UPDATE OF e
    ) locked;
    PERFORM 1 FROM workflow_runs WHERE id = ANY(p_runs) ORDER BY id FOR UPDATE;
    IF EXISTS (
        SELECT 1 FROM workflow_run_nodes rn
        JOIN workflow_runs r ON r.id = rn.run_id
        JOIN executions e ON e.id = rn.execution_id AND e.scheduled_for = r.scheduled_for
        WHERE rn.run_id = ANY(p_runs) AND rn.state = 'queued'
          AND e.scheduled_for BETWEEN v_first AND v_last
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
        WHERE id = ANY(v_locked) AND scheduled_for BETWEEN v_first AND v_last
          AND state IN ('queued', 'running', 'retrying')
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
