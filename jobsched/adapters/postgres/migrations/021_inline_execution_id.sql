-- jobsched_execution_id (migration 015) read its millisecond from a subquery in FROM, so
-- PostgreSQL could not inline it: every execution the leader inserted called a SQL
-- function, with an executor of its own set up for the call (fmgr_sql, 3 % of
-- PostgreSQL's CPU in a burn-down; issue 18, cost per execution). The same id from one
-- expression, which the planner inlines into the statement: the fire's insert of 20,000
-- executions took 14 -> 10.5 us of backend CPU per row (microbenchmark, medians of 5).
CREATE OR REPLACE FUNCTION jobsched_execution_id(p_scheduled_for timestamptz) RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN floor(extract(epoch FROM p_scheduled_for) * 1000) BETWEEN 0 AND 281474976710655
        THEN
            -- version 7: the version nibble of a v4 (0100) with bits 52 and 53 set is 0111;
            -- the variant bits (10) are the v4's.
            encode(set_bit(set_bit(overlay(
                uuid_send(gen_random_uuid())
                PLACING substring(int8send(floor(extract(epoch FROM p_scheduled_for) * 1000)::bigint)
                                  FROM 3)
                FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid
        ELSE gen_random_uuid()
    END
$$;
