-- The login session that created an API key without the password being re-entered: such a
-- key never outlives it (expiry capped at the session's, revoked at its logout). NULL: made
-- after re-entering the password, by an operator (admin CLI), or before this migration.
ALTER TABLE api_keys ADD COLUMN session_id TEXT;
CREATE INDEX api_keys_session ON api_keys (session_id);
