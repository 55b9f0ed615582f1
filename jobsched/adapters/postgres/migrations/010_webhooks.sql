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
    -- Due at; pushed to the lease's end while an attempt is in flight (so a dead worker's
    -- delivery falls due again when its lease lapses); NULL once over, or while the
    -- endpoint is disabled (parked).
    next_attempt_at  timestamptz DEFAULT now(),
    leased_by        text,
    lease_expires_at timestamptz,
    last_attempt_at  timestamptz,
    last_status      integer,
    last_error       text,
    last_answer      text,
    last_duration_ms real,
    delivered_at     timestamptz,
    PRIMARY KEY (endpoint_id, event_id)
);

-- The claim walks each enabled endpoint's due deliveries on this index (one endpoint's
-- backlog never hides another's); created_at rides along for the oldest-pending gauge.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (endpoint_id, next_attempt_at)
    INCLUDE (created_at) WHERE state IN ('pending', 'failed');
CREATE INDEX webhook_deliveries_listing
    ON webhook_deliveries (endpoint_id, created_at DESC, event_id DESC);

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
LANGUAGE plpgsql AS $$
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
    FROM (SELECT gen_random_uuid() AS event_id) e, webhook_endpoints w
    WHERE w.enabled AND w.namespace = p_namespace AND p_event_type = ANY (w.events)
      AND coalesce(p_labels, '{}'::jsonb) @> w.labels;
    GET DIAGNOSTICS written = ROW_COUNT;
    IF written > 0 THEN
        PERFORM pg_notify('jobsched_webhooks', '');
    END IF;
    RETURN written;
END
$$;

-- execution.succeeded | dead | cancelled: every row of the statement whose state became one
-- of those. Statement-level with transition tables: one set-based insert per statement,
-- and with no endpoint enabled anywhere one probe of an empty index.
CREATE FUNCTION webhook_execution_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoints WHERE enabled) THEN
        RETURN NULL;
    END IF;
    WITH ended AS (
        SELECT n.id, n.job_id, n.scheduled_for, n.state, n.attempt, n.error, n.reason,
               n.finished_at
        FROM webhook_new_executions n
        JOIN webhook_old_executions o ON o.id = n.id
        WHERE n.state IN ('succeeded', 'dead', 'cancelled') AND o.state <> n.state
    ), matched AS (
        SELECT e.*, j.name AS job_name, j.namespace, j.labels, w.id AS endpoint_id
        FROM ended e
        JOIN jobs j ON j.id = e.job_id
        JOIN webhook_endpoints w
          ON w.enabled AND w.namespace = j.namespace
         AND 'execution.' || e.state = ANY (w.events) AND j.labels @> w.labels
    ), events AS MATERIALIZED (
        -- One event id per execution, shared by every endpoint it goes to.
        SELECT id, gen_random_uuid() AS event_id FROM (SELECT DISTINCT id FROM matched) m
    )
    INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, data)
    SELECT m.endpoint_id, v.event_id, 'execution.' || m.state,
           jsonb_build_object(
               'id', m.id, 'job_id', m.job_id, 'job_name', m.job_name,
               'namespace', m.namespace, 'scheduled_for', webhook_time(m.scheduled_for),
               'state', m.state, 'attempt', m.attempt, 'error', m.error,
               'reason', m.reason, 'finished_at', webhook_time(m.finished_at),
               'labels', m.labels)
    FROM matched m JOIN events v ON v.id = m.id;
    IF FOUND THEN
        PERFORM pg_notify('jobsched_webhooks', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER webhook_execution_events AFTER UPDATE ON executions
    REFERENCING OLD TABLE AS webhook_old_executions NEW TABLE AS webhook_new_executions
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_execution_events();

-- job.completed: a job whose state became completed (its last run ended).
CREATE FUNCTION webhook_job_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoints WHERE enabled) THEN
        RETURN NULL;
    END IF;
    WITH completed AS MATERIALIZED (
        SELECT n.id, n.name, n.namespace, n.labels, n.updated_at,
               gen_random_uuid() AS event_id
        FROM webhook_new_jobs n
        JOIN webhook_old_jobs o ON o.id = n.id
        WHERE n.state = 'completed' AND o.state <> 'completed'
          AND n.namespace IN (SELECT namespace FROM webhook_endpoints WHERE enabled)
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
     AND c.labels @> w.labels;
    IF FOUND THEN
        PERFORM pg_notify('jobsched_webhooks', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER webhook_job_events AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS webhook_old_jobs NEW TABLE AS webhook_new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_job_events();
