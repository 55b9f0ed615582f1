-- Secrets of a namespace (PUT /api/v1/secrets/{name}): only the Fernet token of the value
-- is stored, sealed with JOBSCHED_SECRETS_KEY by the api and opened by the worker.

CREATE TABLE secrets (
    namespace   text NOT NULL CHECK (namespace ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
    name        text NOT NULL CHECK (name ~ '^[A-Za-z_][A-Za-z0-9_]{0,127}$'),
    sealed      bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- The worker looks a name up within its job's namespace: this key, and nothing else.
    PRIMARY KEY (namespace, name)
);
