-- API tokens: only their SHA-256 digest is stored (see jobsched.domain.auth).

-- insert_token --
INSERT INTO api_tokens (digest, hint, namespace, role, name, expires_at)
VALUES (:digest, :hint, :namespace, :role, :name, :expires_at)
RETURNING id, hint, namespace, role, name, created_at, expires_at, revoked_at

-- authenticate_token --
SELECT id, namespace, role, name FROM api_tokens
WHERE digest = :digest AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())

-- list_tokens --
SELECT id, hint, namespace, role, name, created_at, expires_at, revoked_at
FROM api_tokens
WHERE (:namespace::text IS NULL OR namespace = :namespace)
ORDER BY created_at, id

-- revoke_token --
UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now())
WHERE id = :id
RETURNING id, hint, namespace, role, name, created_at, expires_at, revoked_at
