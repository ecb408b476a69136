-- GPU rentals read model (projection "instances"). Times are epoch microseconds (0 = not yet).
CREATE TABLE instances_g1 (
    instance_id          TEXT PRIMARY KEY,
    owner                TEXT NOT NULL DEFAULT '',
    provider             TEXT NOT NULL DEFAULT '',
    offer_id             TEXT NOT NULL DEFAULT '',
    provider_instance_id TEXT NOT NULL DEFAULT '',
    gpu_model            TEXT NOT NULL DEFAULT '',
    num_gpus             BIGINT NOT NULL DEFAULT 0,
    price_per_hour       BIGINT NOT NULL DEFAULT 0,
    state                TEXT NOT NULL DEFAULT '',
    host                 TEXT NOT NULL DEFAULT '',
    port                 BIGINT NOT NULL DEFAULT 0,
    image                TEXT NOT NULL DEFAULT '',
    reason               TEXT NOT NULL DEFAULT '',
    billed               BIGINT NOT NULL DEFAULT 0,
    requested_at         BIGINT NOT NULL DEFAULT 0,
    started_at           BIGINT NOT NULL DEFAULT 0,
    ended_at             BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX instances_g1_owner ON instances_g1 (owner, requested_at);
CREATE INDEX instances_g1_state ON instances_g1 (state);
CREATE VIEW instances AS SELECT * FROM instances_g1;

INSERT INTO projection_state (name, generation, position) VALUES ('instances', 1, 0);
