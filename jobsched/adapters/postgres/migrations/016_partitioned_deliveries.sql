-- Time-partitioned webhook deliveries (issue 19, after executions and attempts in 014):
-- webhook_deliveries becomes a table partitioned by RANGE (event_id), one partition per UTC
-- day (webhook_deliveries_pYYYYMMDD), plus a DEFAULT partition so that no insert ever fails
-- for want of a partition. Event ids are UUIDv7 (webhook_event_id()): their first 48 bits
-- are the event's Unix time in milliseconds and uuids compare bytewise, so the day of
-- [d, d + 1 day) is the range [webhook_event_id_floor(d), webhook_event_id_floor(d + 1 day)).
-- The primary key (endpoint_id, event_id) already holds the partition key, and the
-- delivering workers' statements look each delivery up on the whole key: they read one
-- partition. The leader makes the partitions ahead and drops whole days past retention
-- (webhook_ensure_partitions, webhook_drop_partition), in the pass that does the same for
-- history.
--
-- Existing deliveries are not copied: the table is renamed webhook_deliveries_legacy and
-- attached as the partition of every event before a cut-over day. With the preparation of
-- docs/operations.md ("Partitioned history") run beforehand (one CHECK constraint added NOT
-- VALID and validated apart), every step below is a catalogue change; without it this
-- migration validates that constraint itself, a scan of the deliveries under its lock.

-- The one lock, taken first: the triggers that write deliveries (an ending execution)
-- wait for this migration, and none of them holds a lock this migration then waits for.
LOCK TABLE webhook_deliveries IN ACCESS EXCLUSIVE MODE;

-- The moment an event id was made (the inverse of webhook_event_id_floor, to the ms).
CREATE FUNCTION webhook_event_id_time(p_event_id uuid) RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$
    SELECT to_timestamp(('x' || substr(replace(p_event_id::text, '-', ''), 1, 12))::bit(48)::bigint
                        / 1000.0)
$$;

-- 1. The legacy table's range: every event before the cut-over day. The preparation chose
-- it (webhook_deliveries_before_partitioning, validated); otherwise the day after tomorrow
-- or after the latest event, whichever is later (old workers keep recording meanwhile).
DO $$
DECLARE
    cut timestamptz;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conrelid = 'webhook_deliveries'::regclass
                     AND conname = 'webhook_deliveries_before_partitioning' AND convalidated) THEN
        -- event ids order as their moments do: the greatest id is the latest event
        SELECT date_trunc('day', greatest(now(), webhook_event_id_time(
                   (SELECT event_id FROM webhook_deliveries ORDER BY event_id DESC LIMIT 1)))
                   AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '2 days'
        INTO cut;
        ALTER TABLE webhook_deliveries DROP CONSTRAINT IF EXISTS webhook_deliveries_before_partitioning;
        EXECUTE format('ALTER TABLE webhook_deliveries ADD CONSTRAINT '
                       'webhook_deliveries_before_partitioning CHECK (event_id < %L::uuid)',
                       webhook_event_id_floor(cut));
    END IF;
END
$$;

-- 2. The old table becomes the legacy partition; the parent's indexes take the old names
-- (webhook_deliveries_pkey, webhook_deliveries_due: the statements and tests name them).
ALTER TABLE webhook_deliveries RENAME TO webhook_deliveries_legacy;
ALTER INDEX webhook_deliveries_pkey RENAME TO webhook_deliveries_legacy_pkey;
ALTER INDEX webhook_deliveries_due RENAME TO webhook_deliveries_legacy_due;

-- 011's columns and constraints. fillfactor is each partition's (a partitioned table
-- stores nothing): the claims' HOT updates need the room.
CREATE TABLE webhook_deliveries (
    endpoint_id      uuid NOT NULL,
    event_id         uuid NOT NULL,
    event_type       text NOT NULL,
    data             jsonb NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    state            text NOT NULL DEFAULT 'pending'
                     CONSTRAINT webhook_deliveries_state_check
                     CHECK (state IN ('pending', 'succeeded', 'failed', 'exhausted')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz DEFAULT now(),
    leased_by        text,
    lease_expires_at timestamptz,
    last_attempt_at  timestamptz,
    last_status      integer,
    last_error       text,
    last_answer      text,
    last_duration_ms real,
    delivered_at     timestamptz,
    CONSTRAINT webhook_deliveries_pkey PRIMARY KEY (endpoint_id, event_id)
) PARTITION BY RANGE (event_id);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (endpoint_id, next_attempt_at)
    INCLUDE (created_at) WHERE state IN ('pending', 'failed');

-- Attached without a scan (the validated CHECK implies the bound; ATTACH adopts the legacy
-- table's two indexes, of the same definitions). An empty legacy table is dropped instead.
DO $$
DECLARE
    cut uuid;
BEGIN
    IF EXISTS (SELECT 1 FROM webhook_deliveries_legacy) THEN
        SELECT (regexp_match(pg_get_constraintdef(oid), '''([^'']+)'''))[1]::uuid INTO cut
        FROM pg_constraint
        WHERE conrelid = 'webhook_deliveries_legacy'::regclass
          AND conname = 'webhook_deliveries_before_partitioning';
        EXECUTE format('ALTER TABLE webhook_deliveries ATTACH PARTITION webhook_deliveries_legacy '
                       'FOR VALUES FROM (MINVALUE) TO (%L)', cut);
    ELSE
        DROP TABLE webhook_deliveries_legacy;
    END IF;
END
$$;

-- Made like the day partitions (below), so every partition's indexes are named
-- <partition>_pkey and <partition>_due.
CREATE TABLE webhook_deliveries_default (LIKE webhook_deliveries INCLUDING DEFAULTS
                                         INCLUDING CONSTRAINTS) WITH (fillfactor = 80);
ALTER TABLE webhook_deliveries_default
    ADD CONSTRAINT webhook_deliveries_default_pkey PRIMARY KEY (endpoint_id, event_id);
CREATE INDEX webhook_deliveries_default_due ON webhook_deliveries_default
    (endpoint_id, next_attempt_at) INCLUDE (created_at) WHERE state IN ('pending', 'failed');
ALTER TABLE webhook_deliveries ATTACH PARTITION webhook_deliveries_default DEFAULT;

-- Workers of the version before this one purge retention with DELETE ... WHERE ctid IN
-- (SELECT ctid ...): on a partitioned table a ctid names a row in every partition, so that
-- statement would delete rows of other days (pending deliveries among them) during the roll
-- to this version. It is refused instead (the old worker logs "webhook housekeeping
-- failed" and tries again later); retention is the leader's from this version on.
CREATE FUNCTION webhook_deliveries_refuse_ctid_purge() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_query() LIKE '%DELETE FROM webhook_deliveries WHERE ctid IN%' THEN
        RAISE EXCEPTION 'webhook_deliveries is partitioned (migration 016): retention is '
                        'the leader''s; roll this worker to the current version';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER webhook_deliveries_refuse_ctid_purge BEFORE DELETE ON webhook_deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_deliveries_refuse_ctid_purge();

-- The range partitions of webhook_deliveries with their bounds as moments (NULL lower:
-- MINVALUE), like history_partitions().
CREATE FUNCTION webhook_partitions()
RETURNS TABLE (partition_name text, lower timestamptz, upper timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT child.relname::text,
           CASE WHEN b.bound ~ 'FROM \(MINVALUE\)' THEN NULL
                ELSE webhook_event_id_time((regexp_match(b.bound, 'FROM \(''([^'']+)''\)'))[1]::uuid)
           END,
           webhook_event_id_time((regexp_match(b.bound, 'TO \(''([^'']+)''\)'))[1]::uuid)
    FROM pg_inherits i
    JOIN pg_class child ON child.oid = i.inhrelid
    CROSS JOIN LATERAL (SELECT pg_get_expr(child.relpartbound, child.oid) AS bound) b
    WHERE i.inhparent = 'public.webhook_deliveries'::regclass AND b.bound <> 'DEFAULT'
$$;

-- The day partitions covering [p_from, p_to) that do not exist yet, made as
-- history_ensure_partitions makes those of history: a standalone table with its indexes
-- (named after it), the day's rows moved in from the DEFAULT partition, then ATTACHed
-- (SHARE UPDATE EXCLUSIVE on the parent: deliveries go on). Days an existing range
-- partition overlaps (the legacy one) are skipped. Returns the partitions made.
CREATE FUNCTION webhook_ensure_partitions(p_from timestamptz, p_to timestamptz)
RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    day timestamptz := date_trunc('day', p_from AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    made text[] := '{}';
    part text;
BEGIN
    WHILE day < p_to LOOP
        part := 'webhook_deliveries_p' || to_char(day AT TIME ZONE 'UTC', 'YYYYMMDD');
        IF NOT EXISTS (SELECT 1 FROM webhook_partitions()
                       WHERE upper > day AND (lower IS NULL OR lower < day + interval '1 day')) THEN
            EXECUTE format('CREATE TABLE %I (LIKE webhook_deliveries INCLUDING DEFAULTS '
                           'INCLUDING CONSTRAINTS) WITH (fillfactor = 80)', part);
            EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I PRIMARY KEY (endpoint_id, event_id)',
                           part, part || '_pkey');
            EXECUTE format('CREATE INDEX %I ON %I (endpoint_id, next_attempt_at) '
                           'INCLUDE (created_at) WHERE state IN (''pending'', ''failed'')',
                           part || '_due', part);
            EXECUTE format('WITH moved AS (DELETE FROM webhook_deliveries_default WHERE '
                           'event_id >= %L AND event_id < %L RETURNING *) '
                           'INSERT INTO %I SELECT * FROM moved',
                           webhook_event_id_floor(day),
                           webhook_event_id_floor(day + interval '1 day'), part);
            EXECUTE format('ALTER TABLE webhook_deliveries ATTACH PARTITION %I '
                           'FOR VALUES FROM (%L) TO (%L)', part, webhook_event_id_floor(day),
                           webhook_event_id_floor(day + interval '1 day'));
            made := made || part;
        END IF;
        day := day + interval '1 day';
    END LOOP;
    RETURN made;
END
$$;

-- Retention of one delivery partition: dropped only when its whole range is before
-- p_before and it holds no delivery still to be made (pending or failed: at least once; a
-- day holding one is kept, and the row-wise purge takes its delivered and exhausted rows).
-- The look is made twice: without a lock (a day that stays is left at no cost), then again
-- under the lock DROP takes anyway (ACCESS EXCLUSIVE on the parent), so that no
-- redelivery made meanwhile is dropped. NULL when kept, else the partition's name. The
-- caller sets lock_timeout.
CREATE FUNCTION webhook_drop_partition(p_partition text, p_before timestamptz)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    bound timestamptz;
    busy boolean;
BEGIN
    SELECT upper INTO bound FROM webhook_partitions() WHERE partition_name = p_partition;
    IF bound IS NULL OR bound > p_before THEN
        RETURN NULL;
    END IF;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I WHERE state IN (''pending'', ''failed''))',
                   p_partition) INTO busy;
    IF busy THEN
        RETURN NULL;
    END IF;
    LOCK TABLE ONLY webhook_deliveries IN ACCESS EXCLUSIVE MODE;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I WHERE state IN (''pending'', ''failed''))',
                   p_partition) INTO busy;
    IF busy THEN
        RETURN NULL;
    END IF;
    EXECUTE format('DROP TABLE %I', p_partition);
    RETURN p_partition;
END
$$;

-- Yesterday, today and the week ahead exist from the start (the leader keeps a week ahead).
SELECT webhook_ensure_partitions(now() - interval '1 day', now() + interval '7 days');
