-- Payments read model (projection "payments") and the auto-renew requests it feeds a job.
-- Times are epoch microseconds (0 = not yet), money integer micro-USD.
CREATE TABLE payments_g1 (
    payment_id    TEXT PRIMARY KEY,
    owner         TEXT NOT NULL DEFAULT '',
    idem_key      TEXT NOT NULL DEFAULT '',
    amount        BIGINT NOT NULL DEFAULT 0,
    currency      TEXT NOT NULL DEFAULT '',
    processor     TEXT NOT NULL DEFAULT '',
    method        TEXT NOT NULL DEFAULT '',
    source        TEXT NOT NULL DEFAULT '',
    state         TEXT NOT NULL DEFAULT '',
    external_id   TEXT NOT NULL DEFAULT '',
    wallet        TEXT NOT NULL DEFAULT '',
    failure       TEXT NOT NULL DEFAULT '',
    credited      BIGINT NOT NULL DEFAULT 0,
    refunded      BIGINT NOT NULL DEFAULT 0,
    disputed      BIGINT NOT NULL DEFAULT 0,
    received      BIGINT NOT NULL DEFAULT 0,
    flags         TEXT NOT NULL DEFAULT '',
    created_at    BIGINT NOT NULL DEFAULT 0,
    updated_at    BIGINT NOT NULL DEFAULT 0,
    expires_at    BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX payments_g1_owner ON payments_g1 (owner, created_at);
CREATE INDEX payments_g1_state ON payments_g1 (state, processor);
CREATE INDEX payments_g1_external ON payments_g1 (external_id);
CREATE INDEX payments_g1_wallet ON payments_g1 (wallet, created_at);
CREATE VIEW payments AS SELECT * FROM payments_g1;

CREATE TABLE auto_renew_requests_g1 (
    account_id     TEXT NOT NULL,
    version        BIGINT NOT NULL,
    amount         BIGINT NOT NULL DEFAULT 0,
    payment_method TEXT NOT NULL DEFAULT '',
    at             BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, version)
);
CREATE INDEX auto_renew_requests_g1_at ON auto_renew_requests_g1 (at);
CREATE VIEW auto_renew_requests AS SELECT * FROM auto_renew_requests_g1;

INSERT INTO projection_state (name, generation, position) VALUES ('payments', 1, 0);

-- Chain scanning state (not a projection): how far each network was read, and every
-- confirmed transfer to the receiving address with what it was matched to.
CREATE TABLE crypto_scan (
    network    TEXT PRIMARY KEY,
    last_block BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE crypto_transfers (
    ref        TEXT PRIMARY KEY,
    network    TEXT NOT NULL,
    sender     TEXT NOT NULL,
    amount     BIGINT NOT NULL,
    block      BIGINT NOT NULL,
    payment_id TEXT NOT NULL DEFAULT '',
    kind       TEXT NOT NULL DEFAULT '',
    seen_at    BIGINT NOT NULL DEFAULT 0
);

-- Webhook events we could not match to a payment yet (kept for the reconciler and audit).
CREATE TABLE webhook_inbox (
    event_id    TEXT PRIMARY KEY,
    processor   TEXT NOT NULL,
    type        TEXT NOT NULL,
    external_id TEXT NOT NULL DEFAULT '',
    received_at BIGINT NOT NULL DEFAULT 0
);
