-- Kiln's initial schema. Only controller::store runs SQL against it.
-- Times are milliseconds since the Unix epoch (INTEGER). Plain SQL types only,
-- so the same schema ports to Postgres (BIGINT / TEXT / BYTEA).

-- API tokens: only the SHA-256 of the secret is stored.
CREATE TABLE api_tokens (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    secret_sha256 BLOB NOT NULL,
    is_admin      INTEGER NOT NULL DEFAULT 0,
    created_at_ms INTEGER NOT NULL
);

-- One row per execution. `num` orders the queue and pages the list.
CREATE TABLE executions (
    num                 INTEGER PRIMARY KEY AUTOINCREMENT,
    id                  TEXT NOT NULL UNIQUE,
    owner_token_id      TEXT NOT NULL,
    recipe_source       TEXT NOT NULL,
    gallery_name        TEXT,
    inputs_json         TEXT NOT NULL,
    files_json          TEXT NOT NULL,
    class               TEXT NOT NULL,
    status              TEXT NOT NULL,
    status_detail       TEXT,
    created_at_ms       INTEGER NOT NULL,
    started_at_ms       INTEGER,
    finished_at_ms      INTEGER,
    deadline_at_ms      INTEGER,
    container_id        TEXT,
    step_uid            INTEGER,
    agent_session_sha256 TEXT,
    last_acked_seq      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX executions_by_status ON executions (status, num);
CREATE INDEX executions_by_owner ON executions (owner_token_id, num);
CREATE INDEX executions_by_finished ON executions (finished_at_ms);

-- The append-only event log. (execution_id, seq) is unique; a re-sent
-- duplicate with identical content is accepted, a conflicting one refused.
CREATE TABLE events (
    execution_id TEXT NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    seq          INTEGER NOT NULL,
    at_ms        INTEGER NOT NULL,
    body_json    TEXT NOT NULL,
    PRIMARY KEY (execution_id, seq)
);

-- Artifacts are bounded blobs; their names are keys, never host paths.
CREATE TABLE artifacts (
    execution_id  TEXT NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    size_bytes    INTEGER NOT NULL,
    sha256        TEXT NOT NULL,
    content       BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (execution_id, name)
);

-- Approval gates. A decision is written once and never changed.
CREATE TABLE approvals (
    execution_id     TEXT NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    stage            TEXT NOT NULL,
    prompt           TEXT NOT NULL,
    timeout_secs     INTEGER,
    default_decision TEXT,
    requested_at_ms  INTEGER NOT NULL,
    decision         TEXT,
    decided_by       TEXT,
    message          TEXT,
    decided_at_ms    INTEGER,
    PRIMARY KEY (execution_id, stage)
);

-- Who did what: approvals, cancels, token creation, rejected connections.
-- Not tied to executions by a foreign key: the audit outlives retention.
CREATE TABLE audit_log (
    num          INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms        INTEGER NOT NULL,
    actor        TEXT NOT NULL,
    action       TEXT NOT NULL,
    execution_id TEXT,
    detail       TEXT NOT NULL
);
CREATE INDEX audit_log_by_execution ON audit_log (execution_id, num);
