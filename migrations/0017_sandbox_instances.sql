-- The sandbox market across replicas (docs/adr/0028): every sandbox instance is served by the
-- process that rented it (``owner``, one id per provider object), and every replica answers
-- status/list/destroy/endpoint for it from this row. The owner refreshes ``heartbeat_at`` for
-- its live rows; a row whose heartbeat is older than the reader's timeout (by the database's
-- clock) reads as terminated. A destroy asked for on another replica sets
-- ``destroy_requested``; the owner stops the server and sets ``terminated``.
-- Times are epoch seconds by the database's clock.
CREATE TABLE sandbox_instances (
    instance_id       TEXT NOT NULL PRIMARY KEY,
    owner             TEXT NOT NULL,
    label             TEXT NOT NULL,
    offer_id          TEXT NOT NULL,
    price_per_hour    BIGINT NOT NULL,
    host              TEXT NOT NULL,
    port              INTEGER NOT NULL,
    state             TEXT NOT NULL,
    raw_state         TEXT NOT NULL,
    started_at        DOUBLE PRECISION,
    created_at        DOUBLE PRECISION NOT NULL,
    heartbeat_at      DOUBLE PRECISION NOT NULL,
    destroy_requested INTEGER NOT NULL DEFAULT 0,
    terminated        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX sandbox_instances_owner ON sandbox_instances (owner, terminated);
CREATE INDEX sandbox_instances_live ON sandbox_instances (terminated, heartbeat_at);
