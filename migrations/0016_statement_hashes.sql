-- Tamper-evident statements (docs/adr/0019): when a month's statement is first built after
-- the month ended, its hash chain is recorded here; ``verify-statements`` recomputes it from
-- the event store and compares. ``links`` is the JSON list of [event version, chain hash] of
-- the month's events in log order, so a check can name the first event that changed.
CREATE TABLE statement_hashes (
    user_id      TEXT NOT NULL,
    month        TEXT NOT NULL,
    account_id   TEXT NOT NULL,
    opening_hash TEXT NOT NULL,
    closing_hash TEXT NOT NULL,
    links        TEXT NOT NULL,
    recorded_at  TEXT NOT NULL,
    PRIMARY KEY (user_id, month)
);
