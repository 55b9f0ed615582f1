-- API tokens (stored as digests, never in clear), the body digest that makes an
-- Idempotency-Key replay safe, and the index the per-namespace quota counts on.

CREATE TABLE api_tokens (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- SHA-256 of the token: the token itself is shown once, at creation, and not kept.
    digest      bytea NOT NULL UNIQUE CHECK (length(digest) = 32),
    -- The first characters of the token, so that people can tell their tokens apart.
    hint        text NOT NULL,
    namespace   text NOT NULL CHECK (namespace ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
    role        text NOT NULL CHECK (role IN ('admin', 'editor', 'viewer')),
    name        text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz
);

-- A repeated POST with the same Idempotency-Key must carry the same body: its digest.
ALTER TABLE jobs ADD COLUMN idempotency_digest bytea;

-- The quota: active and paused jobs of one namespace, counted on this index alone.
CREATE INDEX jobs_live_by_namespace ON jobs (namespace) WHERE state IN ('active', 'paused');
