-- Proxy: per-user load-balancing choice, and the load table (projection "proxy_load") fed by
-- the usage events each serving process flushes. Times epoch microseconds.
CREATE TABLE user_preferences (
    user_id     TEXT PRIMARY KEY,
    lb_strategy TEXT NOT NULL DEFAULT '',
    updated_at  BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE proxy_load_g1 (
    instance_id    TEXT PRIMARY KEY,
    owner          TEXT NOT NULL DEFAULT '',
    provider       TEXT NOT NULL DEFAULT '',
    requests       BIGINT NOT NULL DEFAULT 0,
    errors         BIGINT NOT NULL DEFAULT 0,
    latency_ms_sum BIGINT NOT NULL DEFAULT 0,
    last_at        BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX proxy_load_g1_owner ON proxy_load_g1 (owner);
CREATE VIEW proxy_load AS SELECT * FROM proxy_load_g1;

INSERT INTO projection_state (name, generation, position) VALUES ('proxy_load', 1, 0);

-- Instances: VRAM per GPU (weights for weighted round robin).
ALTER TABLE instances_g1 ADD COLUMN vram_gb DOUBLE PRECISION NOT NULL DEFAULT 0;
DROP VIEW instances;
CREATE VIEW instances AS SELECT * FROM instances_g1;
