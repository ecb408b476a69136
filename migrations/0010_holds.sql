-- Holds: one row per credit hold (projection "holds"), so the hold sweep finds the accounts
-- with holds past their expiry without loading every account. ``live`` is 1 until the hold
-- is released or expired. Times epoch microseconds.
CREATE TABLE holds_g1 (
    account_id TEXT NOT NULL,
    hold_id    TEXT NOT NULL,
    expires_at BIGINT NOT NULL DEFAULT 0,
    live       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, hold_id)
);
CREATE INDEX holds_g1_due ON holds_g1 (live, expires_at);
CREATE VIEW holds AS SELECT * FROM holds_g1;

INSERT INTO projection_state (name, generation, position) VALUES ('holds', 1, 0);
