-- Secrets of each namespace, stored sealed (jobsched.crypto.SecretBox); every statement
-- names the namespace, so one namespace's name never reaches another's row.

-- put_secret --
-- created is true for a new row: xmax is 0 for an inserted row, not for an updated one.
INSERT INTO secrets (namespace, name, sealed)
VALUES (:namespace, :name, :sealed)
ON CONFLICT (namespace, name)
DO UPDATE SET sealed = EXCLUDED.sealed, updated_at = now()
RETURNING name, created_at, updated_at, (xmax = 0) AS created

-- list_secrets --
SELECT name, created_at, updated_at FROM secrets
WHERE namespace = :namespace AND (:after::text IS NULL OR name > :after)
ORDER BY name
LIMIT :limit

-- delete_secret --
DELETE FROM secrets WHERE namespace = :namespace AND name = :name
RETURNING name

-- sealed_secrets --
SELECT name, sealed FROM secrets WHERE namespace = :namespace AND name = ANY(:names::text[])

-- sealed_batch --
-- Key rotation walks every row in (namespace, name) order, a batch at a time.
SELECT namespace, name, sealed FROM secrets
WHERE (namespace, name) > (:after_namespace, :after_name)
ORDER BY namespace, name
LIMIT :limit

-- reseal_secret --
-- Only if unchanged since it was read: a PUT in between keeps its new value.
UPDATE secrets SET sealed = :new_sealed
WHERE namespace = :namespace AND name = :name AND sealed = :old_sealed
