-- Time-partitioned history (issue 19): executions and attempts become tables partitioned by
-- RANGE (scheduled_for), one partition per UTC day (executions_pYYYYMMDD and
-- attempts_pYYYYMMDD, made ahead by the leader: history_ensure_partitions), plus a DEFAULT
-- partition each so that no insert ever fails for want of a partition. Retention drops whole
-- day partitions (history_drop_partition): no DELETE, no dead tuples, no vacuum debt.
--
-- An existing deployment's tables are not copied: they are renamed executions_legacy and
-- attempts_legacy and attached as the partitions of everything before a cut-over day. With
-- the preparation of docs/operations.md ("Partitioned history") run beforehand, every step
-- below is a catalogue change: the indexes the partitions need exist already (built
-- CONCURRENTLY) and validated CHECK constraints prove the legacy rows' range, so ATTACH
-- scans nothing under its lock. Without the preparation (a small or empty database) this
-- migration does the same work itself, inside its transaction.
--
-- attempts carries its execution's scheduled_for (partition key) and has no foreign key to
-- executions: a foreign key to a partitioned table forbids dropping a referenced partition
-- (and DETACH would check every referencing row). The two are dropped as a pair instead,
-- and a row-level delete of executions (per-job history limits, a job's deletion) deletes
-- its attempts in the same statement (history_delete_attempts).

-- Both tables at once, in the order every statement of the roles takes them (executions,
-- then attempts): a worker's claim never deadlocks with this migration.
LOCK TABLE executions, attempts IN ACCESS EXCLUSIVE MODE;

-- 1. The legacy attempts learn their execution's scheduled_for.
ALTER TABLE attempts ADD COLUMN IF NOT EXISTS scheduled_for timestamptz;
DO $$
BEGIN
    -- Skipped when the preparation validated attempts_scheduled_for_set: nothing is NULL.
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conrelid = 'attempts'::regclass
                     AND conname = 'attempts_scheduled_for_set' AND convalidated) THEN
        UPDATE attempts a SET scheduled_for = e.scheduled_for
        FROM executions e WHERE a.scheduled_for IS NULL AND e.id = a.execution_id;
    END IF;
END
$$;
DROP TRIGGER IF EXISTS attempts_fill_scheduled_for ON attempts;
DROP FUNCTION IF EXISTS attempts_fill_scheduled_for();
ALTER TABLE attempts ALTER COLUMN scheduled_for SET NOT NULL;

-- 2. Keys with the partition key in them (a partitioned table's unique indexes must hold it).
CREATE UNIQUE INDEX IF NOT EXISTS executions_id_scheduled_for ON executions (id, scheduled_for);
CREATE UNIQUE INDEX IF NOT EXISTS attempts_key ON attempts (execution_id, attempt, scheduled_for);
ALTER TABLE attempts DROP CONSTRAINT attempts_execution_id_fkey;
ALTER TABLE attempts DROP CONSTRAINT attempts_pkey;
ALTER TABLE attempts ADD CONSTRAINT attempts_pkey PRIMARY KEY USING INDEX attempts_key;
ALTER TABLE executions DROP CONSTRAINT executions_pkey;
ALTER TABLE executions ADD CONSTRAINT executions_pkey PRIMARY KEY USING INDEX executions_id_scheduled_for;
-- The time index retention batched on: partitions replace it.
DROP INDEX IF EXISTS attempts_started;

-- 3. The legacy tables' range: everything before the cut-over day. The preparation chose
-- it (executions_before_partitioning, validated); otherwise the day after tomorrow or after
-- the latest row, whichever is later (the old leader keeps firing while this runs).
DO $$
DECLARE
    cut timestamptz;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conrelid = 'executions'::regclass
                     AND conname = 'executions_before_partitioning' AND convalidated) THEN
        SELECT date_trunc('day', greatest(now(), max(scheduled_for)) AT TIME ZONE 'UTC')
                   AT TIME ZONE 'UTC' + interval '2 days'
        INTO cut FROM executions;
        ALTER TABLE executions DROP CONSTRAINT IF EXISTS executions_before_partitioning;
        EXECUTE format('ALTER TABLE executions ADD CONSTRAINT executions_before_partitioning '
                       'CHECK (scheduled_for < %L)', cut);
    END IF;
    SELECT (regexp_match(pg_get_constraintdef(oid), '''([^'']+)'''))[1]::timestamptz INTO cut
    FROM pg_constraint
    WHERE conrelid = 'executions'::regclass AND conname = 'executions_before_partitioning';
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conrelid = 'attempts'::regclass
                     AND conname = 'attempts_before_partitioning' AND convalidated) THEN
        ALTER TABLE attempts DROP CONSTRAINT IF EXISTS attempts_before_partitioning;
        EXECUTE format('ALTER TABLE attempts ADD CONSTRAINT attempts_before_partitioning '
                       'CHECK (scheduled_for < %L)', cut);
    END IF;
    CREATE TABLE history_cutover (id integer PRIMARY KEY CHECK (id = 1), cut timestamptz NOT NULL);
    INSERT INTO history_cutover VALUES (1, cut);
END
$$;
-- A range partition's constraint also says NOT NULL and >= its lower bound (none here).

-- 4. The statement triggers move to the partitioned parent (a trigger on a partition fires
-- only for statements naming that partition).
DROP TRIGGER webhook_execution_events ON executions;
DROP TRIGGER workflow_executions_changed ON executions;

ALTER TABLE executions RENAME TO executions_legacy;
ALTER TABLE attempts RENAME TO attempts_legacy;
-- Index names are the schema's: the parents' indexes take the old names.
ALTER INDEX executions_pkey RENAME TO executions_legacy_pkey;
ALTER INDEX executions_job_id_scheduled_for_key RENAME TO executions_legacy_job_id_scheduled_for_key;
ALTER INDEX executions_unpublished RENAME TO executions_legacy_unpublished;
ALTER INDEX executions_retry_due RENAME TO executions_legacy_retry_due;
ALTER INDEX executions_leases RENAME TO executions_legacy_leases;
ALTER INDEX executions_finished RENAME TO executions_legacy_finished;
ALTER INDEX executions_active RENAME TO executions_legacy_active;
ALTER INDEX executions_manual_unpublished RENAME TO executions_legacy_manual_unpublished;
ALTER INDEX attempts_pkey RENAME TO attempts_legacy_pkey;

CREATE TABLE executions (
    id                 uuid NOT NULL DEFAULT gen_random_uuid(),
    job_id             uuid NOT NULL
                       CONSTRAINT executions_job_id_fkey REFERENCES jobs (id) ON DELETE CASCADE,
    scheduled_for      timestamptz NOT NULL,
    attempt            integer NOT NULL DEFAULT 1,
    state              text NOT NULL DEFAULT 'queued'
                       CONSTRAINT executions_state_check CHECK (state IN ('queued', 'running', 'retrying', 'succeeded', 'failed',
                                        'timed_out', 'cancelled', 'dead', 'skipped', 'missed')),
    reason             text,
    worker             text,
    lease_expires_at   timestamptz,
    run_after          timestamptz,
    published_at       timestamptz,
    queued_at          timestamptz NOT NULL DEFAULT now(),
    started_at         timestamptz,
    finished_at        timestamptz,
    exit_code          integer,
    error              text,
    output             text,
    epoch              bigint NOT NULL,
    priority           smallint NOT NULL DEFAULT 1,
    uncounted_attempts integer NOT NULL DEFAULT 0,
    lost_attempts      integer NOT NULL DEFAULT 0,
    workflow_run_id    uuid,
    result             jsonb,
    args               jsonb,
    CONSTRAINT executions_pkey PRIMARY KEY (id, scheduled_for),
    -- Guarantee 1: exactly one execution per fire (the partition key is part of it).
    CONSTRAINT executions_job_id_scheduled_for_key UNIQUE (job_id, scheduled_for)
) PARTITION BY RANGE (scheduled_for);

-- The names and definitions of 001-010's indexes: ATTACH adopts the legacy table's own.
CREATE INDEX executions_unpublished ON executions (queued_at)
    WHERE state = 'queued' AND published_at IS NULL;
CREATE INDEX executions_retry_due ON executions (run_after) WHERE state = 'retrying';
CREATE INDEX executions_leases ON executions (lease_expires_at) WHERE state = 'running';
CREATE INDEX executions_finished ON executions (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX executions_active ON executions (job_id)
    WHERE state IN ('queued', 'running', 'retrying');
CREATE INDEX executions_manual_unpublished ON executions (queued_at)
    WHERE state = 'queued' AND published_at IS NULL AND epoch = -1;

CREATE TABLE attempts (
    execution_id  uuid NOT NULL,
    attempt       integer NOT NULL,
    worker        text NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    outcome       text CONSTRAINT attempts_outcome_check CHECK (outcome IN ('succeeded', 'failed', 'timed_out', 'cancelled',
                                          'lost', 'missed', 'skipped')),
    exit_code     integer,
    error         text,
    output        text,
    scheduled_for timestamptz NOT NULL,
    CONSTRAINT attempts_pkey PRIMARY KEY (execution_id, attempt, scheduled_for)
) PARTITION BY RANGE (scheduled_for);

-- Attached without a scan: the validated CHECK constraints imply the partition bounds.
-- Empty legacy tables (a new database) are dropped instead: day partitions from the start.
DO $$
DECLARE
    cut timestamptz := (SELECT cut FROM history_cutover);
BEGIN
    IF EXISTS (SELECT 1 FROM executions_legacy) OR EXISTS (SELECT 1 FROM attempts_legacy) THEN
        EXECUTE format('ALTER TABLE executions ATTACH PARTITION executions_legacy '
                       'FOR VALUES FROM (MINVALUE) TO (%L)', cut);
        EXECUTE format('ALTER TABLE attempts ATTACH PARTITION attempts_legacy '
                       'FOR VALUES FROM (MINVALUE) TO (%L)', cut);
    ELSE
        DROP TABLE attempts_legacy;
        DROP TABLE executions_legacy;
    END IF;
END
$$;
DROP TABLE history_cutover;

CREATE TABLE executions_default PARTITION OF executions DEFAULT;
CREATE TABLE attempts_default PARTITION OF attempts DEFAULT;

CREATE TRIGGER webhook_execution_events AFTER UPDATE ON executions
    REFERENCING OLD TABLE AS webhook_old_executions NEW TABLE AS webhook_new_executions
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_execution_events();
CREATE TRIGGER workflow_executions_changed
    AFTER UPDATE ON executions
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION workflow_executions_changed();

-- What ON DELETE CASCADE did: a statement deleting executions deletes their attempts.
-- Whole partitions are dropped without it (history_drop_partition).
CREATE FUNCTION history_delete_attempts() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM attempts a USING history_deleted_executions d
    WHERE a.execution_id = d.id AND a.scheduled_for = d.scheduled_for;
    RETURN NULL;
END
$$;
CREATE TRIGGER history_delete_attempts AFTER DELETE ON executions
    REFERENCING OLD TABLE AS history_deleted_executions
    FOR EACH STATEMENT EXECUTE FUNCTION history_delete_attempts();

-- The day partitions covering [p_from, p_to) that do not exist yet, for both tables, made
-- as standalone tables and then ATTACHed (SHARE UPDATE EXCLUSIVE on the parent: reads and
-- writes go on; CREATE TABLE ... PARTITION OF would take ACCESS EXCLUSIVE). Rows that
-- landed in the DEFAULT partition for such a day (a fire with no partition yet) move into
-- the new one first, else the ATTACH would fail. Days an existing range partition overlaps
-- (the legacy one) are skipped. Returns the executions partitions made.
CREATE FUNCTION history_ensure_partitions(p_from timestamptz, p_to timestamptz)
RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    day timestamptz := date_trunc('day', p_from AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    made text[] := '{}';
    suffix text;
    parent text;
BEGIN
    WHILE day < p_to LOOP
        suffix := to_char(day AT TIME ZONE 'UTC', 'YYYYMMDD');
        IF NOT EXISTS (SELECT 1 FROM history_partitions()
                       WHERE table_name = 'executions' AND upper > day
                         AND (lower IS NULL OR lower < day + interval '1 day')) THEN
            FOREACH parent IN ARRAY ARRAY['executions', 'attempts'] LOOP
                EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                               parent || '_p' || suffix, parent);
                EXECUTE format('WITH moved AS (DELETE FROM %I WHERE scheduled_for >= %L AND '
                               'scheduled_for < %L RETURNING *) INSERT INTO %I SELECT * FROM moved',
                               parent || '_default', day, day + interval '1 day',
                               parent || '_p' || suffix);
                EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                               parent, parent || '_p' || suffix, day, day + interval '1 day');
            END LOOP;
            made := made || ('executions_p' || suffix);
        END IF;
        day := day + interval '1 day';
    END LOOP;
    RETURN made;
END
$$;

-- The range partitions of executions or attempts with their bounds (NULL lower: MINVALUE).
CREATE FUNCTION history_partitions()
RETURNS TABLE (table_name text, partition_name text, lower timestamptz, upper timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT parent.relname::text, child.relname::text,
           CASE WHEN b.bound ~ 'FROM \(MINVALUE\)' THEN NULL
                ELSE (regexp_match(b.bound, 'FROM \(''([^'']+)''\)'))[1]::timestamptz END,
           (regexp_match(b.bound, 'TO \(''([^'']+)''\)'))[1]::timestamptz
    FROM pg_inherits i
    JOIN pg_class parent ON parent.oid = i.inhparent
    JOIN pg_class child ON child.oid = i.inhrelid
    CROSS JOIN LATERAL (SELECT pg_get_expr(child.relpartbound, child.oid) AS bound) b
    WHERE parent.relname IN ('executions', 'attempts')
      AND parent.relnamespace = 'public'::regnamespace AND b.bound <> 'DEFAULT'
$$;

-- Retention of one executions partition and its attempts: dropped together, only when its
-- whole range is before p_before and none of its executions is unfinished (a partition with
-- a run still queued, running or retrying is kept; the row-wise purge takes its finished
-- rows). NULL when it was kept, else the partition's name. The caller sets lock_timeout:
-- DROP takes ACCESS EXCLUSIVE on the parent for a moment, and must never queue the hot
-- path behind a long reader for long.
CREATE FUNCTION history_drop_partition(p_partition text, p_before timestamptz)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    bound timestamptz;
    busy boolean;
    twin text;
BEGIN
    SELECT upper INTO bound FROM history_partitions()
    WHERE table_name = 'executions' AND partition_name = p_partition;
    IF bound IS NULL OR bound > p_before THEN
        RETURN NULL;
    END IF;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I WHERE state IN (''queued'', ''running'', '
                   '''retrying''))', p_partition) INTO busy;
    IF busy THEN
        RETURN NULL;
    END IF;
    twin := 'attempts' || substr(p_partition, length('executions') + 1);
    IF to_regclass(twin) IS NOT NULL THEN
        EXECUTE format('DROP TABLE %I', twin);
    END IF;
    EXECUTE format('DROP TABLE %I', p_partition);
    RETURN p_partition;
END
$$;

-- Today and the week ahead exist from the start (the leader keeps a week ahead after that).
SELECT history_ensure_partitions(now(), now() + interval '7 days');
