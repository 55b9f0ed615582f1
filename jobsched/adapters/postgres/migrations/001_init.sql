-- The core schema: jobs, their executions (one per fire), the attempts of each execution,
-- and the leader row whose epoch fences every write of the scheduler leader.

CREATE TABLE jobs (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    namespace       text NOT NULL DEFAULT 'default',
    name            text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('shell', 'http', 'python')),
    payload         jsonb NOT NULL,
    schedule        text NOT NULL,
    timezone        text NOT NULL DEFAULT 'UTC',
    state           text NOT NULL DEFAULT 'active'
                    CHECK (state IN ('active', 'paused', 'completed', 'cancelled')),
    next_fire_at    timestamptz,
    max_attempts    integer NOT NULL DEFAULT 1 CHECK (max_attempts >= 1),
    backoff_s       double precision NOT NULL DEFAULT 2,
    max_backoff_s   double precision NOT NULL DEFAULT 300,
    retry_jitter    double precision NOT NULL DEFAULT 0.2,
    timeout_s       double precision NOT NULL DEFAULT 300,
    priority        smallint NOT NULL DEFAULT 1,
    concurrency     text NOT NULL DEFAULT 'allow'
                    CHECK (concurrency IN ('allow', 'forbid', 'replace')),
    misfire         text NOT NULL DEFAULT 'run_once'
                    CHECK (misfire IN ('run_once', 'run_all', 'skip')),
    start_at        timestamptz,
    end_at          timestamptz,
    max_runs        integer,
    run_count       integer NOT NULL DEFAULT 0,
    idempotency_key text,
    labels          jsonb NOT NULL DEFAULT '{}'::jsonb,
    spec            jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (namespace, idempotency_key)
);

-- The leader's hot query: due active jobs in fire order. Partial, so paused, cancelled
-- and completed jobs cost nothing however many there are.
CREATE INDEX jobs_due ON jobs (next_fire_at) WHERE state = 'active' AND next_fire_at IS NOT NULL;
CREATE INDEX jobs_listing ON jobs (namespace, created_at DESC, id DESC);
CREATE INDEX jobs_labels ON jobs USING gin (labels jsonb_path_ops);

CREATE TABLE executions (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    job_id           uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    scheduled_for    timestamptz NOT NULL,
    attempt          integer NOT NULL DEFAULT 1,
    state            text NOT NULL DEFAULT 'queued'
                     CHECK (state IN ('queued', 'running', 'retrying', 'succeeded', 'failed',
                                      'timed_out', 'cancelled', 'dead', 'skipped', 'missed')),
    reason           text,
    worker           text,
    lease_expires_at timestamptz,
    run_after        timestamptz,
    published_at     timestamptz,
    queued_at        timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    exit_code        integer,
    error            text,
    output           text,
    epoch            bigint NOT NULL,
    -- Guarantee 1: exactly one execution per fire.
    UNIQUE (job_id, scheduled_for)
);

CREATE INDEX executions_job_history ON executions (job_id, scheduled_for DESC, id DESC);
CREATE INDEX executions_unpublished ON executions (queued_at)
    WHERE state = 'queued' AND published_at IS NULL;
CREATE INDEX executions_retry_due ON executions (run_after) WHERE state = 'retrying';
CREATE INDEX executions_leases ON executions (lease_expires_at) WHERE state = 'running';
CREATE INDEX executions_finished ON executions (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE attempts (
    execution_id uuid NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    attempt      integer NOT NULL,
    worker       text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    outcome      text CHECK (outcome IN ('succeeded', 'failed', 'timed_out', 'cancelled', 'lost')),
    exit_code    integer,
    error        text,
    output       text,
    PRIMARY KEY (execution_id, attempt)
);

-- Retention purges history by time in batches; this index keeps that off a table scan.
CREATE INDEX attempts_started ON attempts (started_at);

CREATE TABLE leader (
    id          integer PRIMARY KEY CHECK (id = 1),
    epoch       bigint NOT NULL,
    holder      text,
    acquired_at timestamptz
);
INSERT INTO leader (id, epoch) VALUES (1, -1);
