-- Preparation for migration 016 (partitioned webhook deliveries) on a deployment with many
-- deliveries, run BEFORE `jobsched migrate` while the old version keeps running: the one
-- scan migration 016 would otherwise make under its lock (proving the existing deliveries'
-- range, so that the table can be attached as a partition) is made here without blocking
-- reads or writes. The primary key already holds the partition key: no index to build.
--
-- Run it with psql, each statement on its own (never inside BEGIN ... COMMIT):
--     psql "$JOBSCHED_DATABASE_URL" -v ON_ERROR_STOP=1 -f 016_partitioned_deliveries.sql
-- It can be run again. Then run `jobsched migrate` within the week: the cut-over is
-- midnight UTC a week ahead, and an event after it would be refused by the constraint (the
-- transaction ending its execution would fail) until the migration has run.

-- The cut-over: the legacy partition will hold every event before midnight UTC a week from
-- now, day partitions every event after. Added NOT VALID (a moment's lock, no scan), then
-- validated apart (a scan that blocks no reads or writes). The bound is written as a uuid
-- literal: migration 016 reads it back from the constraint.
SET lock_timeout = '5s';
DO $$
BEGIN
    ALTER TABLE webhook_deliveries DROP CONSTRAINT IF EXISTS webhook_deliveries_before_partitioning;
    EXECUTE format('ALTER TABLE webhook_deliveries ADD CONSTRAINT '
                   'webhook_deliveries_before_partitioning CHECK (event_id < %L::uuid) NOT VALID',
                   webhook_event_id_floor(date_trunc('day', now() AT TIME ZONE 'UTC')
                                          AT TIME ZONE 'UTC' + interval '7 days'));
END
$$;
ALTER TABLE webhook_deliveries VALIDATE CONSTRAINT webhook_deliveries_before_partitioning;
