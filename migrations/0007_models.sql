-- Hosted models (not event-sourced: no money is decided from them) and upload quota state.
-- Times are epoch microseconds, sizes bytes. Each user's quota row is the lock that upload
-- admission takes (so counts and byte reservations are exact across replicas).
CREATE TABLE models (
    model_id     TEXT PRIMARY KEY,
    owner        TEXT NOT NULL,
    name         TEXT NOT NULL,
    format       TEXT NOT NULL,
    filename     TEXT NOT NULL DEFAULT '',
    upload_bytes BIGINT NOT NULL DEFAULT 0,
    stored_bytes BIGINT NOT NULL DEFAULT 0,
    storage_key  TEXT NOT NULL,
    backend      TEXT NOT NULL DEFAULT '',
    sha256       TEXT NOT NULL DEFAULT '',
    signature    TEXT NOT NULL DEFAULT '{}',
    status       TEXT NOT NULL DEFAULT 'ready',
    created_at   BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX models_owner_name ON models (owner, name);

-- One row per user: the lock row, and the number of uploads ever admitted.
CREATE TABLE model_quota (
    user_id TEXT PRIMARY KEY,
    uploads BIGINT NOT NULL DEFAULT 0
);

-- Uploads admitted in the last day (counted for the hourly and daily limits). While
-- 'receiving', bytes is the reservation counted against the storage quota; a failed upload's
-- row is deleted, so it uses no quota.
CREATE TABLE model_uploads (
    upload_id  TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    bytes      BIGINT NOT NULL DEFAULT 0,
    state      TEXT NOT NULL DEFAULT 'receiving'
);
CREATE INDEX model_uploads_owner ON model_uploads (owner, started_at);
