-- An attempt row is inserted when a worker claims the run and updated once when its result
-- is recorded; no indexed column changes then (attempts has its primary key only), so the
-- update can be HOT, with no new index entry, if the row's page has room for the new
-- version. At the default fillfactor (100) the inserts fill each page, and every result
-- wrote a new primary-key entry too (issue 18, cost per execution). Attempt partitions keep
-- 30 % of each page free from now on: the partitions made from here on (below), and the
-- existing ones for their new pages (ALTER TABLE ... SET changes no page already written).
CREATE OR REPLACE FUNCTION history_ensure_partitions(p_from timestamptz, p_to timestamptz)
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
                EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)'
                               || CASE WHEN parent = 'attempts' THEN ' WITH (fillfactor = 70)'
                                       ELSE '' END,
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

DO $$
DECLARE
    part text;
BEGIN
    FOR part IN SELECT c.relname FROM pg_inherits i
                JOIN pg_class c ON c.oid = i.inhrelid
                WHERE i.inhparent = 'attempts'::regclass LOOP
        EXECUTE format('ALTER TABLE %I SET (fillfactor = 70)', part);
    END LOOP;
END
$$;
