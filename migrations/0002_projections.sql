-- Read models of the ledger. Each projection writes generation-suffixed tables (_g1, _g2 …)
-- and readers use the plain-named views; a rebuild fills the next generation while the
-- current one serves, then switches the views and the tracking row in one transaction.
-- Times are epoch microseconds (UTC), money is integer micro-USD.

CREATE TABLE projection_state (
    name       TEXT PRIMARY KEY,
    generation INTEGER NOT NULL,
    position   BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE balances_g1 (
    account_id    TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL DEFAULT '',
    balance       BIGINT NOT NULL DEFAULT 0,
    held          BIGINT NOT NULL DEFAULT 0,
    total_granted BIGINT NOT NULL DEFAULT 0,
    total_charged BIGINT NOT NULL DEFAULT 0,
    total_debited BIGINT NOT NULL DEFAULT 0,
    cap           BIGINT NOT NULL DEFAULT 0,
    auto_renew_enabled   BIGINT NOT NULL DEFAULT 0,
    auto_renew_threshold BIGINT NOT NULL DEFAULT 0,
    auto_renew_amount    BIGINT NOT NULL DEFAULT 0,
    version       BIGINT NOT NULL DEFAULT 0,
    updated_at    BIGINT NOT NULL DEFAULT 0
);
CREATE VIEW balances AS SELECT * FROM balances_g1;

CREATE TABLE transactions_g1 (
    position   BIGINT PRIMARY KEY,
    account_id TEXT NOT NULL,
    version    BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    amount     BIGINT NOT NULL,
    hold_id    TEXT NOT NULL DEFAULT '',
    reason     TEXT NOT NULL DEFAULT '',
    reference  TEXT NOT NULL DEFAULT '',
    actor      TEXT NOT NULL DEFAULT '',
    at         BIGINT NOT NULL
);
CREATE INDEX transactions_g1_account ON transactions_g1 (account_id, position);
CREATE VIEW transactions AS SELECT * FROM transactions_g1;

CREATE TABLE spending_buckets_g1 (
    account_id TEXT NOT NULL,
    minute     BIGINT NOT NULL,
    amount     BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, minute)
);
CREATE VIEW spending_buckets AS SELECT * FROM spending_buckets_g1;

CREATE TABLE spending_resets_g1 (
    account_id  TEXT NOT NULL,
    window_name TEXT NOT NULL,
    minute      BIGINT NOT NULL DEFAULT 0,
    amount      BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, window_name)
);
CREATE VIEW spending_resets AS SELECT * FROM spending_resets_g1;

-- Per-user limit overrides (micro-USD; 0 = window off for this user).
CREATE TABLE spending_limits_g1 (
    account_id  TEXT NOT NULL,
    window_name TEXT NOT NULL,
    amount      BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, window_name)
);
CREATE VIEW spending_limits AS SELECT * FROM spending_limits_g1;

CREATE TABLE usage_daily_g1 (
    account_id  TEXT NOT NULL,
    day         TEXT NOT NULL,
    spent       BIGINT NOT NULL DEFAULT 0,
    spend_count BIGINT NOT NULL DEFAULT 0,
    granted     BIGINT NOT NULL DEFAULT 0,
    debited     BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, day)
);
CREATE VIEW usage_daily AS SELECT * FROM usage_daily_g1;

INSERT INTO projection_state (name, generation, position) VALUES ('balances', 1, 0);
INSERT INTO projection_state (name, generation, position) VALUES ('transactions', 1, 0);
INSERT INTO projection_state (name, generation, position) VALUES ('spending', 1, 0);
INSERT INTO projection_state (name, generation, position) VALUES ('usage', 1, 0);
