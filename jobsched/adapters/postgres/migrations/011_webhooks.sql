-- Webhooks (DESIGN.md "Webhooks"): endpoints per namespace, and one delivery row per
-- (event, endpoint), written by triggers in the very transaction that ends an execution or
-- completes a job, whatever statement ends it (a worker's result, the reaper, a cancel, a
-- replace): an outbox. Committed means it will be delivered, at least once.

CREATE TABLE webhook_endpoints (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    namespace             text NOT NULL,
    url                   text NOT NULL,
    events                text[] NOT NULL,
    -- The endpoint receives an event only if its job's (or workflow's) labels hold these.
    labels                jsonb NOT NULL DEFAULT '{}'::jsonb,
    description           text NOT NULL DEFAULT '',
    enabled               boolean NOT NULL DEFAULT true,
    disabled_reason       text,
    -- Sealed with jobsched.crypto.SecretBox (JOBSCHED_SECRETS_KEY): never stored in clear.
    secret                bytea NOT NULL,
    -- After a rotation the previous secret signs as well, until previous_secret_until.
    previous_secret       bytea,
    previous_secret_until timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX webhook_endpoints_listing ON webhook_endpoints (namespace, created_at DESC, id DESC);
-- What the triggers probe on every statement: empty (no endpoint enabled) costs nothing.
CREATE INDEX webhook_endpoints_enabled ON webhook_endpoints (namespace) WHERE enabled;

-- No foreign key to webhook_endpoints: its check would take a KEY SHARE lock on the
-- endpoint row for every delivery written, from every concurrent ending transaction (a
-- MultiXact per busy endpoint). Deleting an endpoint deletes its deliveries in the same
-- statement instead (webhooks.sql delete_endpoint).
--
-- Written in the hot path (one row per event and endpoint, in the transaction that ends
-- the execution), so it has two indexes only: the primary key, whose event ids are
-- time-ordered (UUIDv7, webhook_event_id()) and so also order an endpoint's log newest
-- first, and the due index the claims walk. A claim changes no indexed column: a HOT
-- update, for which each page keeps room (fillfactor).
CREATE TABLE webhook_deliveries (
    endpoint_id      uuid NOT NULL,
    -- webhook-id: the same on every attempt, and the same for every endpoint of one event.
    event_id         uuid NOT NULL,
    event_type       text NOT NULL,
    data             jsonb NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'succeeded', 'failed', 'exhausted')),
    attempts         integer NOT NULL DEFAULT 0,
    -- Due at; NULL once over, or while the endpoint is disabled (parked).
    next_attempt_at  timestamptz DEFAULT now(),
    -- The attempt in flight. A delivery is claimable again once its lease has lapsed (its
    -- worker died before recording the attempt).
    leased_by        text,
    lease_expires_at timestamptz,
    last_attempt_at  timestamptz,
    last_status      integer,
    last_error       text,
    last_answer      text,
    last_duration_ms real,
    delivered_at     timestamptz,
    PRIMARY KEY (endpoint_id, event_id)
) WITH (fillfactor = 80);

-- The claim walks each enabled endpoint's due deliveries on this index (one endpoint's
-- backlog never hides another's); created_at rides along for the oldest-pending gauge.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (endpoint_id, next_attempt_at)
    INCLUDE (created_at) WHERE state IN ('pending', 'failed');

-- Event ids: UUIDv7 (RFC 9562), the Unix time in milliseconds first, then random bits:
-- unique like any UUID, and in the order the events happened.
CREATE FUNCTION webhook_event_id() RETURNS uuid
LANGUAGE sql VOLATILE AS $$
    SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) PLACING
               substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint)
                         FROM 3) FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid
$$;

-- The smallest event id of an event at ``moment`` or later (retention purges below it).
CREATE FUNCTION webhook_event_id_floor(moment timestamptz) RETURNS uuid
LANGUAGE sql IMMUTABLE AS $$
    SELECT encode(substring(int8send(floor(extract(epoch FROM moment) * 1000)::bigint) FROM 3)
                  || '\x00000000000000000000'::bytea, 'hex')::uuid
$$;

-- Times in event bodies: RFC 3339, UTC, microseconds, "Z", whatever the session's TimeZone.
CREATE FUNCTION webhook_time(moment timestamptz) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT to_char(moment AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

-- Record one event for every enabled endpoint of its namespace that subscribes to its type
-- and whose label filter its labels satisfy; wakes the delivering workers. Returns the
-- number of deliveries written. The triggers below apply the same rule set-based; this is
-- the call for events no trigger sees (workflow_run.*: see docs/webhooks.md).
CREATE FUNCTION webhook_enqueue(p_namespace text, p_event_type text, p_labels jsonb,
                                p_data jsonb) RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    written integer;
BEGIN
    IF p_event_type NOT IN ('execution.succeeded', 'execution.dead', 'execution.cancelled',
                            'job.completed', 'workflow_run.succeeded',
                            'workflow_run.failed', 'workflow_run.cancelled') THEN
        RAISE EXCEPTION 'webhook_enqueue: unknown event type %', p_event_type;
    END IF;
    INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, data)
    SELECT w.id, e.event_id, p_event_type, p_data
    FROM (SELECT webhook_event_id() AS event_id) e, webhook_endpoints w
    WHERE w.enabled AND w.namespace = p_namespace AND p_event_type = ANY (w.events)
      AND coalesce(p_labels, '{}'::jsonb) @> w.labels;
    GET DIAGNOSTICS written = ROW_COUNT;
    IF written > 0 THEN
        PERFORM pg_notify('jobsched_webhooks', '');
    END IF;
    RETURN written;
END
$fn$;

-- execution.succeeded | dead | cancelled: every row of the statement whose state became one
-- of those. Statement-level with transition tables: one set-based insert per statement.
-- Two cheap exits first: no endpoint enabled anywhere (one probe of an empty index), and
-- no row of the statement in an ending state (claims, heartbeats, publish marks). The
-- insert is planned afresh (EXECUTE) on every call: a cached plan would keep the join
-- strategy chosen for the sizes of the transition tables at its first call (a 1-row
-- reap, say) and could then join a 1,000-row batch with itself row by row.
CREATE FUNCTION webhook_execution_events() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    written bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoints WHERE enabled) THEN
        RETURN NULL;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM webhook_new_executions
                   WHERE state IN ('succeeded', 'dead', 'cancelled')) THEN
        RETURN NULL;
    END IF;
    EXECUTE $sql$
        WITH ended AS MATERIALIZED (
            -- One event id per execution, shared by every endpoint it goes to; its job's
            -- name, namespace and labels looked up once.
            SELECT n.id, n.job_id, n.scheduled_for, n.state, n.attempt, n.error, n.reason,
                   n.finished_at, j.name, j.namespace, j.labels,
                   webhook_event_id() AS event_id
            FROM webhook_new_executions n
            JOIN webhook_old_executions o ON o.id = n.id
            JOIN jobs j ON j.id = n.job_id
            WHERE n.state IN ('succeeded', 'dead', 'cancelled') AND o.state <> n.state
        )
        INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, data)
        SELECT w.id, e.event_id, 'execution.' || e.state,
               jsonb_build_object(
                   'id', e.id, 'job_id', e.job_id, 'job_name', e.name,
                   'namespace', e.namespace, 'scheduled_for', webhook_time(e.scheduled_for),
                   'state', e.state, 'attempt', e.attempt, 'error', e.error,
                   'reason', e.reason, 'finished_at', webhook_time(e.finished_at),
                   'labels', e.labels)
        FROM ended e
        JOIN webhook_endpoints w
          ON w.enabled AND w.namespace = e.namespace
         AND 'execution.' || e.state = ANY (w.events) AND e.labels @> w.labels
    $sql$;
    GET DIAGNOSTICS written = ROW_COUNT;
    IF written > 0 THEN
        PERFORM pg_notify('jobsched_webhooks', '');
    END IF;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER webhook_execution_events AFTER UPDATE ON executions
    REFERENCING OLD TABLE AS webhook_old_executions NEW TABLE AS webhook_new_executions
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_execution_events();

-- job.completed: a job whose state became completed (its last run ended). The same shape
-- as above; the first exit also covers endpoints that take no job.completed.
CREATE FUNCTION webhook_job_events() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    written bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoints
                   WHERE enabled AND 'job.completed' = ANY (events)) THEN
        RETURN NULL;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM webhook_new_jobs WHERE state = 'completed') THEN
        RETURN NULL;
    END IF;
    EXECUTE $sql$
        WITH completed AS MATERIALIZED (
            SELECT n.id, n.name, n.namespace, n.labels, n.updated_at,
                   webhook_event_id() AS event_id
            FROM webhook_new_jobs n
            JOIN webhook_old_jobs o ON o.id = n.id
            WHERE n.state = 'completed' AND o.state <> 'completed'
        )
        INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, data)
        SELECT w.id, c.event_id, 'job.completed',
               jsonb_build_object(
                   'job_id', c.id, 'job_name', c.name, 'namespace', c.namespace,
                   'state', 'completed', 'completed_at', webhook_time(c.updated_at),
                   'labels', c.labels)
        FROM completed c
        JOIN webhook_endpoints w
          ON w.enabled AND w.namespace = c.namespace AND 'job.completed' = ANY (w.events)
         AND c.labels @> w.labels
    $sql$;
    GET DIAGNOSTICS written = ROW_COUNT;
    IF written > 0 THEN
        PERFORM pg_notify('jobsched_webhooks', '');
    END IF;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER webhook_job_events AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS webhook_old_jobs NEW TABLE AS webhook_new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_job_events();
