-- One row per model call the gateway admitted (it passed the budget check),
-- written when the call starts and completed when it ends. Usage figures
-- (per execution, per step, per user) and the /metrics counters are sums over
-- these rows, so they are exact and survive restarts. Rows go with their
-- execution when retention purges it (ON DELETE CASCADE, like events).
-- Plain SQL types only (BIGINT / TEXT in Postgres).
CREATE TABLE model_calls (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    execution_id   TEXT NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    request_id     INTEGER NOT NULL,
    step_id        TEXT NOT NULL,
    -- The execution owner's token id.
    user_id        TEXT NOT NULL,
    provider       TEXT NOT NULL,
    model          TEXT NOT NULL,
    profile        TEXT NOT NULL,
    -- running, completed, failed, cancelled, interrupted
    status         TEXT NOT NULL,
    error_code     TEXT,
    input_tokens   INTEGER NOT NULL DEFAULT 0,
    output_tokens  INTEGER NOT NULL DEFAULT 0,
    started_at_ms  INTEGER NOT NULL,
    finished_at_ms INTEGER
);
-- Per-execution listing and usage, and the cascade delete.
CREATE INDEX model_calls_by_execution ON model_calls (execution_id, id);
-- Per-user usage (budgets, GET /api/v1/usage).
CREATE INDEX model_calls_by_user ON model_calls (user_id);
-- Interrupting the calls left running by a previous process.
CREATE INDEX model_calls_by_status ON model_calls (status);
