-- Webhook endpoints as the api reads and writes them (every statement scoped to a
-- namespace), and the delivering workers' lease-and-record statements. Deliveries are
-- written by the triggers of migration 010 (the outbox), never here.

-- insert_endpoint --
INSERT INTO webhook_endpoints (namespace, url, events, labels, description, enabled, secret)
VALUES (:namespace, :url, :events, :labels, :description, :enabled, :secret)
RETURNING *

-- list_endpoints --
-- Newest first; the cursor is (created_at, id) of the last row returned.
SELECT * FROM webhook_endpoints
WHERE namespace = :namespace
  AND (:after_at::timestamptz IS NULL OR (created_at, id) < (:after_at, :after_id::uuid))
ORDER BY created_at DESC, id DESC
LIMIT :limit

-- get_endpoint --
SELECT * FROM webhook_endpoints WHERE id = :id AND namespace = :namespace

-- lock_endpoint --
SELECT * FROM webhook_endpoints WHERE id = :id AND namespace = :namespace FOR UPDATE

-- update_endpoint --
-- PATCH: the row was locked by lock_endpoint in the same transaction. Enabling clears the
-- reason it was disabled for.
UPDATE webhook_endpoints
SET url = :url, events = :events, labels = :labels, description = :description,
    enabled = :enabled, updated_at = now(),
    disabled_reason = CASE WHEN :enabled::boolean THEN NULL
                           ELSE coalesce(disabled_reason, 'disabled by a user') END
WHERE id = :id
RETURNING *

-- park_deliveries --
-- A disabled endpoint's undelivered deliveries wait, not due, until it is enabled again.
UPDATE webhook_deliveries SET next_attempt_at = NULL
WHERE endpoint_id = :endpoint_id AND state IN ('pending', 'failed')
  AND next_attempt_at IS NOT NULL

-- unpark_deliveries --
-- Enabled again: what waited is due now (each keeps its attempts so far).
WITH unparked AS (
    UPDATE webhook_deliveries SET next_attempt_at = now()
    WHERE endpoint_id = :endpoint_id AND state IN ('pending', 'failed')
      AND next_attempt_at IS NULL
    RETURNING 1
)
SELECT count(*) AS unparked, pg_notify(:channel, '') IS NULL AS woke FROM unparked

-- delete_endpoint --
WITH endpoint AS (
    DELETE FROM webhook_endpoints WHERE id = :id AND namespace = :namespace RETURNING id
), deliveries AS (
    DELETE FROM webhook_deliveries d USING endpoint e WHERE d.endpoint_id = e.id
)
SELECT count(*) FROM endpoint

-- rotate_secret --
-- The current secret becomes the previous one, which keeps signing for :overlap_s; an
-- older previous secret (a second rotation within the overlap) stops signing now.
UPDATE webhook_endpoints
SET previous_secret = secret, secret = :secret,
    previous_secret_until = now() + make_interval(secs => :overlap_s), updated_at = now()
WHERE id = :id AND namespace = :namespace
RETURNING *

-- list_deliveries --
-- Newest first, on the primary key (event ids are time-ordered); the cursor is the event
-- id of the last row returned.
SELECT * FROM webhook_deliveries
WHERE endpoint_id = :endpoint_id
  AND (:state::text IS NULL OR state = :state)
  AND (:after_id::uuid IS NULL OR event_id < :after_id)
ORDER BY event_id DESC
LIMIT :limit

-- get_delivery --
SELECT * FROM webhook_deliveries WHERE endpoint_id = :endpoint_id AND event_id = :event_id

-- redeliver --
-- Send again now, with a fresh retry schedule (and the same webhook-id: it is the same
-- event). An attempt in flight for it is fenced off (its attempt number no longer matches).
WITH again AS (
    UPDATE webhook_deliveries d
    SET state = 'pending', attempts = 0, next_attempt_at = now(), leased_by = NULL,
        lease_expires_at = NULL, delivered_at = NULL
    FROM webhook_endpoints w
    WHERE d.endpoint_id = :endpoint_id AND d.event_id = :event_id
      AND w.id = d.endpoint_id AND w.enabled
    RETURNING d.*
)
SELECT again.*, pg_notify(:channel, '') IS NULL AS woke FROM again

-- claim_deliveries --
-- Each enabled endpoint's due deliveries, oldest due first, at most as many as this worker
-- has free slots for that endpoint (:free_ids/:free, else :per_endpoint): one endpoint's
-- backlog never takes the slots of another's. A leased delivery is claimable again once
-- its lease lapses (its worker died); the leased ones the walk steps over are at most
-- those in flight to the endpoint. Only unindexed columns change (a HOT update). An
-- attempt left unrecorded by a worker that lost its lease is noted on the delivery.
--
-- The update looks each picked row up on the whole primary key, and the endpoint is
-- joined to what the update returns, not inside it. With the endpoint beside the update
-- (w.id = d.endpoint_id, so endpoint_id had three sides), the generic plan, made while
-- the table was small and without statistics, looked the rows up by endpoint_id alone and
-- filtered on event_id: every claim read every delivery row of the endpoint, dead
-- versions included (1,500 rows per picked row once 2,000 had been delivered). The
-- delivering sessions also run without sequential scans (DELIVERY_SESSION in
-- webhooks.py): otherwise that small-table plan hash-joins a scan of the whole table.
WITH picked AS (
    SELECT d.endpoint_id, d.event_id
    FROM webhook_endpoints w
    LEFT JOIN unnest(:free_ids::uuid[], :free::int[]) AS f(id, slots) ON f.id = w.id
    CROSS JOIN LATERAL (
        SELECT x.endpoint_id, x.event_id FROM webhook_deliveries x
        WHERE x.endpoint_id = w.id AND x.state IN ('pending', 'failed')
          AND x.next_attempt_at <= now()
          AND (x.lease_expires_at IS NULL OR x.lease_expires_at < now())
        ORDER BY x.next_attempt_at
        LIMIT coalesce(f.slots, :per_endpoint)
        FOR UPDATE SKIP LOCKED
    ) d
    WHERE w.enabled AND coalesce(f.slots, :per_endpoint) > 0
    LIMIT :limit
), claimed AS (
    UPDATE webhook_deliveries d
    SET attempts = d.attempts + 1, leased_by = :worker,
        lease_expires_at = now() + make_interval(secs => :lease_s),
        last_error = CASE WHEN d.leased_by IS NULL THEN d.last_error
                          ELSE 'attempt ' || d.attempts || ': worker ' || d.leased_by
                               || ' stopped before recording it' END
    FROM picked p
    WHERE d.endpoint_id = p.endpoint_id AND d.event_id = p.event_id
    RETURNING d.endpoint_id, d.event_id, d.event_type, d.data, d.created_at,
              d.attempts AS attempt
)
SELECT c.*, w.url, w.secret,
       CASE WHEN w.previous_secret_until > now() THEN w.previous_secret END
           AS previous_secret
FROM claimed c JOIN webhook_endpoints w ON w.id = c.endpoint_id

-- record_attempts --
-- Results of a batch: only deliveries this worker still holds at the attempt it made (a
-- lease that lapsed, a redelivery or a deleted endpoint drops the result). A delivery of
-- an endpoint disabled meanwhile is parked rather than scheduled. The endpoint is read by
-- scalar subqueries per row, not joined (nor EXISTS, which becomes a join): beside the
-- batch in the join it let the plan look the deliveries up by endpoint_id alone (as
-- claim_deliveries says). Each row is looked up on the primary key, in the batch's order
-- (the caller sorts it by key: rows are locked in key order).
UPDATE webhook_deliveries d
SET state = r.state,
    next_attempt_at = CASE WHEN NOT r.gone AND (SELECT w.enabled FROM webhook_endpoints w
                                                WHERE w.id = d.endpoint_id)
                           THEN r.next_attempt_at END,
    leased_by = NULL, lease_expires_at = NULL, last_attempt_at = now(),
    last_status = r.status, last_error = r.error, last_answer = r.answer,
    last_duration_ms = r.duration_ms,
    delivered_at = CASE WHEN r.state = 'succeeded' THEN now() END
FROM unnest(:endpoint_ids::uuid[], :event_ids::uuid[], :attempts::int[], :states::text[],
            :next_attempt_at::timestamptz[], :statuses::int[], :errors::text[],
            :answers::text[], :durations_ms::real[], :gone::boolean[])
    AS r(endpoint_id, event_id, attempt, state, next_attempt_at, status, error, answer,
         duration_ms, gone)
WHERE d.endpoint_id = r.endpoint_id AND d.event_id = r.event_id AND d.attempts = r.attempt
  AND d.leased_by = :worker
  AND (SELECT true FROM webhook_endpoints w WHERE w.id = d.endpoint_id)
RETURNING d.endpoint_id

-- disable_endpoints --
-- A receiver answered 410 Gone: its endpoint is disabled (enable it again with a PATCH)
-- and its undelivered deliveries are parked.
WITH disabled AS (
    UPDATE webhook_endpoints
    SET enabled = false, updated_at = now(), disabled_reason = :reason
    WHERE id = ANY(:ids::uuid[]) AND enabled
    RETURNING id
)
UPDATE webhook_deliveries d SET next_attempt_at = NULL
FROM disabled
WHERE d.endpoint_id = disabled.id AND d.state IN ('pending', 'failed')
  AND d.next_attempt_at IS NOT NULL

-- oldest_pending --
-- When the oldest delivery still to be made was recorded (endpoints disabled aside).
SELECT min(d.created_at) FROM webhook_endpoints w
CROSS JOIN LATERAL (
    SELECT min(x.created_at) AS created_at FROM webhook_deliveries x
    WHERE x.endpoint_id = w.id AND x.state IN ('pending', 'failed')
      AND x.next_attempt_at IS NOT NULL
) d
WHERE w.enabled
