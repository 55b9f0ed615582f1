-- Preparation for migration 014 (partitioned history) on a deployment with a large
-- executions/attempts history, run BEFORE `jobsched migrate` while the old version keeps
-- running: every step here either changes the catalogue only or works without blocking
-- reads and writes (CREATE INDEX CONCURRENTLY, VALIDATE CONSTRAINT, batched updates). Then
-- migration 014 finds it all done and holds its locks for catalogue changes only.
--
-- Run it with psql, each statement on its own (never inside BEGIN ... COMMIT: CONCURRENTLY
-- and the batch COMMITs refuse a transaction block):
--     psql "$JOBSCHED_DATABASE_URL" -v ON_ERROR_STOP=1 -f 014_partitioned_history.sql
-- It can be run again after an interruption. Then run `jobsched migrate` within the week
-- (step 5 sets the cut-over a week ahead; a fire after it would be refused until then).

-- 1. attempts learn their execution's scheduled_for; the old workers' new attempts get it
--    from a trigger (migration 014 drops it).
ALTER TABLE attempts ADD COLUMN IF NOT EXISTS scheduled_for timestamptz;

CREATE OR REPLACE FUNCTION attempts_fill_scheduled_for() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.scheduled_for IS NULL THEN
        SELECT scheduled_for INTO NEW.scheduled_for FROM executions WHERE id = NEW.execution_id;
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER attempts_fill_scheduled_for BEFORE INSERT ON attempts
    FOR EACH ROW EXECUTE FUNCTION attempts_fill_scheduled_for();

-- 2. The existing attempts, 10,000 executions' worth per transaction, in key order.
DO $$
DECLARE
    last uuid := '00000000-0000-0000-0000-000000000000';
    upto uuid;
BEGIN
    LOOP
        SELECT execution_id INTO upto FROM attempts WHERE execution_id > last
        ORDER BY execution_id OFFSET 9999 LIMIT 1;
        IF upto IS NULL THEN  -- the last batch, shorter
            SELECT execution_id INTO upto FROM attempts WHERE execution_id > last
            ORDER BY execution_id DESC LIMIT 1;
            EXIT WHEN upto IS NULL;
        END IF;
        UPDATE attempts a SET scheduled_for = e.scheduled_for
        FROM executions e
        WHERE a.execution_id > last AND a.execution_id <= upto AND a.scheduled_for IS NULL
          AND e.id = a.execution_id;
        last := upto;
        COMMIT;
    END LOOP;
END
$$;

-- 3. Proof that none is NULL: migration 014's SET NOT NULL then scans nothing.
ALTER TABLE attempts DROP CONSTRAINT IF EXISTS attempts_scheduled_for_set;
ALTER TABLE attempts ADD CONSTRAINT attempts_scheduled_for_set
    CHECK (scheduled_for IS NOT NULL) NOT VALID;
ALTER TABLE attempts VALIDATE CONSTRAINT attempts_scheduled_for_set;

-- 4. The keys of the partitioned tables (they hold the partition key), built without
--    blocking writes. A failed CONCURRENTLY build leaves an INVALID index: drop it and rerun.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS executions_id_scheduled_for
    ON executions (id, scheduled_for);
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS attempts_key
    ON attempts (execution_id, attempt, scheduled_for);

-- 5. The cut-over: the legacy tables will hold everything scheduled before midnight UTC a
--    week from now, day partitions everything after. The constraints are added NOT VALID
--    (a moment's lock, no scan) and validated apart (a scan that blocks no reads or writes).
DO $$
DECLARE
    cut timestamptz := date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                       + interval '7 days';
BEGIN
    ALTER TABLE executions DROP CONSTRAINT IF EXISTS executions_before_partitioning;
    EXECUTE format('ALTER TABLE executions ADD CONSTRAINT executions_before_partitioning '
                   'CHECK (scheduled_for < %L) NOT VALID', cut);
    ALTER TABLE attempts DROP CONSTRAINT IF EXISTS attempts_before_partitioning;
    EXECUTE format('ALTER TABLE attempts ADD CONSTRAINT attempts_before_partitioning '
                   'CHECK (scheduled_for < %L) NOT VALID', cut);
END
$$;
ALTER TABLE executions VALIDATE CONSTRAINT executions_before_partitioning;
ALTER TABLE attempts VALIDATE CONSTRAINT attempts_before_partitioning;
