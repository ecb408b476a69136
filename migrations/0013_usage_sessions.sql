-- Usage sessions (projection "usage_sessions"): one row per user, credential (apikey:<key id>
-- or session:<login session id>) and client address, opened by its first request and ended
-- by its last; a request more than the recorded idle minutes after it opens a new row.
-- ``seq`` orders the rows of a group as they were opened (log order). Times epoch
-- microseconds, money micro-USD.
CREATE TABLE usage_sessions_g1 (
    session_id TEXT NOT NULL PRIMARY KEY,
    seq        BIGINT NOT NULL,
    user_id    TEXT NOT NULL,
    credential TEXT NOT NULL,
    address    TEXT NOT NULL,
    user_agent TEXT NOT NULL DEFAULT '',
    start_at   BIGINT NOT NULL,
    end_at     BIGINT NOT NULL,
    requests   BIGINT NOT NULL DEFAULT 0,
    proxy_fees BIGINT NOT NULL DEFAULT 0,
    model_fees BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX usage_sessions_g1_group ON usage_sessions_g1 (user_id, credential, address, seq);
CREATE INDEX usage_sessions_g1_user ON usage_sessions_g1 (user_id, seq);
CREATE VIEW usage_sessions AS SELECT * FROM usage_sessions_g1;

INSERT INTO projection_state (name, generation, position) VALUES ('usage_sessions', 1, 0);
