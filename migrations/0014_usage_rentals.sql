-- GPU rentals for usage sessions (projection "usage_rentals"): one row per GpuInstance with
-- who rented it (credential apikey:<key id> or session:<login session id>, "" if unknown;
-- client address) and when, and ``gpu_fees``, the GPU time billed so far (the instance's
-- latest ``Metered`` total). The usage sessions query attributes ``gpu_fees`` to the session
-- of the same user, credential and address that holds ``rented_at``. Times epoch
-- microseconds, money micro-USD. Position 0: the runner folds the existing log into it.
CREATE TABLE usage_rentals_g1 (
    instance_id TEXT NOT NULL PRIMARY KEY,
    user_id     TEXT NOT NULL DEFAULT '',
    credential  TEXT NOT NULL DEFAULT '',
    address     TEXT NOT NULL DEFAULT '',
    rented_at   BIGINT NOT NULL DEFAULT 0,
    gpu_fees    BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX usage_rentals_g1_caller ON usage_rentals_g1 (user_id, credential, address, rented_at);
CREATE VIEW usage_rentals AS SELECT * FROM usage_rentals_g1;

INSERT INTO projection_state (name, generation, position) VALUES ('usage_rentals', 1, 0);
