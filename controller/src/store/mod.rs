//! Stage: intake → **store** → queue/launcher; relay → **store** → watchers.
//!
//! The durable state of Kiln: executions (which double as the queue), the
//! append-only event log, artifacts, approval gates, model calls (usage),
//! API tokens and the audit log. Only this module contains SQL. Callers see
//! plain Rust types; the backend is an enum ([`Store`] dispatches to
//! [`sqlite::SqliteStore`]) so a Postgres backend can be added later without
//! touching callers.
//!
//! Invariants the store enforces, whatever the caller does:
//! - a final status is never overwritten;
//! - events are append-only: a re-sent `(execution, seq)` with identical
//!   content is accepted as a no-op, a conflicting one is refused;
//! - an approval decision is written once;
//! - a model call ends once (its figures are never rewritten);
//! - events and the agent position acknowledged for them are stored together;
//! - a token's secret is never stored, only its SHA-256, compared in constant time;
//! - an owner-scoped read of someone else's execution looks exactly like a missing one.

pub mod sqlite;

use std::collections::BTreeMap;
use std::path::Path;

use protocol::{ExecutionEvent, FinalStatus};
use serde::{Deserialize, Serialize};

pub use sqlite::SqliteStore;

/// Largest page any list returns.
pub const MAX_PAGE_LIMIT: u32 = 1000;

/// A failed store operation. Messages may contain SQL details: they are logged,
/// never shown to users (the API maps these to 4xx codes or a bare 500).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {path}: {source}")]
    Open { path: String, source: sqlx::Error },
    #[error("cannot create data directory {path}: {source}")]
    CreateDataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot apply migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("execution {execution_id} not found")]
    ExecutionNotFound { execution_id: String },
    #[error("execution {execution_id} already finished as {status}")]
    AlreadyFinal {
        execution_id: String,
        status: ExecutionStatus,
    },
    #[error("event {seq} of execution {execution_id} conflicts with the stored one")]
    ConflictingEvent { execution_id: String, seq: u64 },
    #[error("cannot encode or decode stored json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("stored value in column {column} is invalid: {value}")]
    CorruptValue { column: &'static str, value: String },
    #[error("artifact {name} is {size} bytes, over the {max} byte limit")]
    ArtifactTooLarge { name: String, size: u64, max: u64 },
    #[error("invalid artifact name {name:?}: {reason}")]
    InvalidArtifactName { name: String, reason: String },
    #[error("no approval gate for stage {stage} of execution {execution_id}")]
    ApprovalNotFound { execution_id: String, stage: String },
    #[error("approval gate {stage} of execution {execution_id} was already decided: {decision}")]
    ApprovalAlreadyDecided {
        execution_id: String,
        stage: String,
        decision: ApprovalDecision,
    },
    #[error("invalid page cursor {cursor:?}")]
    InvalidCursor { cursor: String },
    #[error("approval gate {stage} of execution {execution_id} already exists")]
    ApprovalExists { execution_id: String, stage: String },
    #[error("model call {id} not found")]
    ModelCallNotFound { id: i64 },
    #[error("model call {id} already ended as {status}")]
    ModelCallAlreadyEnded { id: i64, status: ModelCallStatus },
    #[error("model call {id} cannot end as running")]
    ModelCallEndRunning { id: i64 },
}

/// Where an execution is in its life. The final ones mirror [`FinalStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Oom,
    Cancelled,
    AgentLost,
    SandboxCrashed,
    ProtocolError,
    Denied,
}

impl ExecutionStatus {
    pub const ALL: [ExecutionStatus; 11] = [
        ExecutionStatus::Queued,
        ExecutionStatus::Running,
        ExecutionStatus::Succeeded,
        ExecutionStatus::Failed,
        ExecutionStatus::TimedOut,
        ExecutionStatus::Oom,
        ExecutionStatus::Cancelled,
        ExecutionStatus::AgentLost,
        ExecutionStatus::SandboxCrashed,
        ExecutionStatus::ProtocolError,
        ExecutionStatus::Denied,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Queued => "queued",
            ExecutionStatus::Running => "running",
            ExecutionStatus::Succeeded => "succeeded",
            ExecutionStatus::Failed => "failed",
            ExecutionStatus::TimedOut => "timed_out",
            ExecutionStatus::Oom => "oom",
            ExecutionStatus::Cancelled => "cancelled",
            ExecutionStatus::AgentLost => "agent_lost",
            ExecutionStatus::SandboxCrashed => "sandbox_crashed",
            ExecutionStatus::ProtocolError => "protocol_error",
            ExecutionStatus::Denied => "denied",
        }
    }

    pub fn parse(text: &str) -> Option<ExecutionStatus> {
        ExecutionStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
    }

    pub fn is_final(self) -> bool {
        self.final_status().is_some()
    }

    /// The final status, or None while queued or running.
    pub fn final_status(self) -> Option<FinalStatus> {
        match self {
            ExecutionStatus::Queued | ExecutionStatus::Running => None,
            ExecutionStatus::Succeeded => Some(FinalStatus::Succeeded),
            ExecutionStatus::Failed => Some(FinalStatus::Failed),
            ExecutionStatus::TimedOut => Some(FinalStatus::TimedOut),
            ExecutionStatus::Oom => Some(FinalStatus::Oom),
            ExecutionStatus::Cancelled => Some(FinalStatus::Cancelled),
            ExecutionStatus::AgentLost => Some(FinalStatus::AgentLost),
            ExecutionStatus::SandboxCrashed => Some(FinalStatus::SandboxCrashed),
            ExecutionStatus::ProtocolError => Some(FinalStatus::ProtocolError),
            ExecutionStatus::Denied => Some(FinalStatus::Denied),
        }
    }
}

impl From<FinalStatus> for ExecutionStatus {
    fn from(status: FinalStatus) -> ExecutionStatus {
        match status {
            FinalStatus::Succeeded => ExecutionStatus::Succeeded,
            FinalStatus::Failed => ExecutionStatus::Failed,
            FinalStatus::TimedOut => ExecutionStatus::TimedOut,
            FinalStatus::Oom => ExecutionStatus::Oom,
            FinalStatus::Cancelled => ExecutionStatus::Cancelled,
            FinalStatus::AgentLost => ExecutionStatus::AgentLost,
            FinalStatus::SandboxCrashed => ExecutionStatus::SandboxCrashed,
            FinalStatus::ProtocolError => ExecutionStatus::ProtocolError,
            FinalStatus::Denied => ExecutionStatus::Denied,
        }
    }
}

impl std::fmt::Display for ExecutionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What intake hands the store for a new, queued execution.
#[derive(Debug, Clone, PartialEq)]
pub struct NewExecution {
    pub owner_token_id: String,
    pub recipe_source: String,
    /// The gallery recipe the source came from, if any.
    pub gallery_name: Option<String>,
    /// A JSON object.
    pub inputs: serde_json::Map<String, serde_json::Value>,
    /// Extra files (sub-recipes) by name.
    pub files: BTreeMap<String, String>,
    pub class: String,
}

/// One execution row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Execution {
    pub id: String,
    pub owner_token_id: String,
    pub recipe_source: String,
    pub gallery_name: Option<String>,
    pub inputs: serde_json::Map<String, serde_json::Value>,
    pub files: BTreeMap<String, String>,
    pub class: String,
    pub status: ExecutionStatus,
    pub status_detail: Option<String>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub deadline_at_ms: Option<i64>,
    pub container_id: Option<String>,
    pub step_uid: Option<u32>,
    /// SHA-256 (hex) of the agent's reconnect session key.
    pub agent_session_sha256: Option<String>,
    pub last_acked_seq: u64,
}

/// Which executions a list returns. `owner: None` means all owners (admin).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecutionFilter {
    pub owner_token_id: Option<String>,
    pub status: Option<ExecutionStatus>,
    /// Opaque cursor from a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Page size, clamped to 1..=[`MAX_PAGE_LIMIT`].
    pub limit: u32,
}

/// One page of a list, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next (older) page; None on the last page.
    pub next_cursor: Option<String>,
}

/// Result of [`Store::append_events`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    pub n_inserted: usize,
    /// Re-sent events identical to the stored ones (ignored).
    pub n_duplicates: usize,
}

/// What the launcher records once a container exists.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchRecord {
    pub container_id: String,
    pub step_uid: u32,
    pub deadline_at_ms: i64,
}

/// A stored artifact's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArtifactInfo {
    pub name: String,
    pub size_bytes: u64,
    pub sha256: String,
    pub created_at_ms: i64,
}

/// An API token's identity (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub is_admin: bool,
    pub created_at_ms: i64,
}

/// A token just created: the secret exists only here, once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedToken {
    pub info: TokenInfo,
    /// The bearer token to give to the user (`kiln_<id>_<secret>`).
    pub token: String,
}

/// One audit entry to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Token id, `system`, or a peer description for rejected connections.
    pub actor: String,
    /// Stable snake_case action: `execution_submitted`, `approval_decided`, `execution_cancelled`,
    /// `token_created`, `connection_rejected`, ...
    pub action: String,
    pub execution_id: Option<String>,
    pub detail: String,
}

/// A stored audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    pub num: i64,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub execution_id: Option<String>,
    pub detail: String,
}

/// A gate's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalDecision {
    Approve,
    Deny,
}

impl ApprovalDecision {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalDecision::Approve => "approve",
            ApprovalDecision::Deny => "deny",
        }
    }

    pub fn parse(text: &str) -> Option<ApprovalDecision> {
        match text {
            "approve" => Some(ApprovalDecision::Approve),
            "deny" => Some(ApprovalDecision::Deny),
            _ => None,
        }
    }
}

impl std::fmt::Display for ApprovalDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A gate the engine asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewApproval {
    pub stage: String,
    pub prompt: String,
    pub timeout_secs: Option<u64>,
    pub default_decision: Option<ApprovalDecision>,
}

/// A gate, pending (`decision: None`) or decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApprovalRecord {
    pub execution_id: String,
    pub stage: String,
    pub prompt: String,
    pub timeout_secs: Option<u64>,
    pub default_decision: Option<ApprovalDecision>,
    pub requested_at_ms: i64,
    pub decision: Option<ApprovalDecision>,
    pub decided_by: Option<String>,
    pub message: Option<String>,
    pub decided_at_ms: Option<i64>,
}

/// What [`Store::purge`] removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PurgeReport {
    pub n_executions: u64,
}

/// Where a model call is. `running` until the gateway records its end;
/// `interrupted` when the controller stopped while it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelCallStatus {
    Running,
    Completed,
    Failed,
    Cancelled,
    Interrupted,
}

impl ModelCallStatus {
    pub const ALL: [ModelCallStatus; 5] = [
        ModelCallStatus::Running,
        ModelCallStatus::Completed,
        ModelCallStatus::Failed,
        ModelCallStatus::Cancelled,
        ModelCallStatus::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ModelCallStatus::Running => "running",
            ModelCallStatus::Completed => "completed",
            ModelCallStatus::Failed => "failed",
            ModelCallStatus::Cancelled => "cancelled",
            ModelCallStatus::Interrupted => "interrupted",
        }
    }

    pub fn parse(text: &str) -> Option<ModelCallStatus> {
        ModelCallStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
    }
}

impl std::fmt::Display for ModelCallStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A model call the gateway admitted (it passed the budget check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewModelCall {
    pub execution_id: String,
    pub request_id: u64,
    pub step_id: String,
    /// The execution owner's token id.
    pub user_id: String,
    pub provider: String,
    pub model: String,
    pub profile: String,
    pub started_at_ms: i64,
}

/// How a model call ended. `status` is never [`ModelCallStatus::Running`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelCallEnd {
    pub status: ModelCallStatus,
    /// The provider and model that answered, when a fallback changed them
    /// (None keeps what the call started with).
    pub provider: Option<String>,
    pub model: Option<String>,
    pub error_code: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub finished_at_ms: i64,
}

/// One stored model call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelCallRow {
    pub id: i64,
    pub execution_id: String,
    pub request_id: u64,
    pub step_id: String,
    pub user_id: String,
    pub provider: String,
    pub model: String,
    pub profile: String,
    pub status: ModelCallStatus,
    pub error_code: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
}

/// Model usage of a scope (execution, step or user): `requests` counts every
/// admitted call, whatever its status; tokens are the sums reported at the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelUsage {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// Model calls and tokens of one `(provider, model, status)`, for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelCallTotals {
    pub provider: String,
    pub model: String,
    pub status: ModelCallStatus,
    pub usage: ModelUsage,
}

/// The store. Cheap to clone (a pool inside).
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(SqliteStore),
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and applies migrations.
    /// `max_artifact_bytes` bounds every stored artifact.
    pub async fn open_sqlite(path: &Path, max_artifact_bytes: u64) -> Result<Store, StoreError> {
        Ok(Store::Sqlite(
            SqliteStore::open(path, max_artifact_bytes).await?,
        ))
    }

    /// Checks the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(store) => store.ping().await,
        }
    }

    /// On first start: if no token exists, creates an admin token and returns
    /// it (to be shown once). Returns None when any token already exists.
    pub async fn bootstrap_admin_token(&self) -> Result<Option<String>, StoreError> {
        match self {
            Store::Sqlite(store) => store.bootstrap_admin_token().await,
        }
    }

    pub async fn create_token(
        &self,
        name: &str,
        is_admin: bool,
    ) -> Result<CreatedToken, StoreError> {
        match self {
            Store::Sqlite(store) => store.create_token(name, is_admin).await,
        }
    }

    /// The token's identity if `presented` is a valid bearer token.
    pub async fn verify_token(&self, presented: &str) -> Result<Option<TokenInfo>, StoreError> {
        match self {
            Store::Sqlite(store) => store.verify_token(presented).await,
        }
    }

    /// Stores a new execution with status `queued`.
    pub async fn create_execution(&self, new: NewExecution) -> Result<Execution, StoreError> {
        match self {
            Store::Sqlite(store) => store.create_execution(new).await,
        }
    }

    /// Atomically moves the oldest queued execution to `running` and returns it.
    /// Two concurrent callers never get the same execution.
    pub async fn claim_next_queued(&self) -> Result<Option<Execution>, StoreError> {
        match self {
            Store::Sqlite(store) => store.claim_next_queued().await,
        }
    }

    /// Sets the status (and detail) of a not-yet-final execution. A final
    /// status is never overwritten: that attempt gives [`StoreError::AlreadyFinal`].
    pub async fn set_status(
        &self,
        execution_id: &str,
        status: ExecutionStatus,
        detail: Option<&str>,
    ) -> Result<Execution, StoreError> {
        match self {
            Store::Sqlite(store) => store.set_status(execution_id, status, detail).await,
        }
    }

    /// Moves an execution from exactly `from` to `to` (for example queued →
    /// cancelled, so a claim and a cancel cannot both win). Returns whether it moved.
    pub async fn transition_status(
        &self,
        execution_id: &str,
        from: ExecutionStatus,
        to: ExecutionStatus,
        detail: Option<&str>,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(store) => {
                store
                    .transition_status(execution_id, from, to, detail)
                    .await
            }
        }
    }

    /// Records the container, step UID and hard deadline of a launched execution.
    pub async fn record_launch(
        &self,
        execution_id: &str,
        launch: &LaunchRecord,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(store) => store.record_launch(execution_id, launch).await,
        }
    }

    /// Records the SHA-256 (hex) of the agent's reconnect session key.
    pub async fn record_agent_session(
        &self,
        execution_id: &str,
        session_sha256: &str,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(store) => {
                store
                    .record_agent_session(execution_id, session_sha256)
                    .await
            }
        }
    }

    /// Records the highest sequence number acknowledged to the agent (never decreases).
    pub async fn record_acked_seq(&self, execution_id: &str, seq: u64) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(store) => store.record_acked_seq(execution_id, seq).await,
        }
    }

    /// Appends a batch of events and, with `acked_seq: Some`, records the
    /// agent position acknowledged for them (never decreasing), all in ONE
    /// transaction: either both are stored or neither is, so a crash cannot
    /// store a batch whose ack was lost (the agent would re-send it).
    pub async fn append_events(
        &self,
        execution_id: &str,
        events: &[ExecutionEvent],
        acked_seq: Option<u64>,
    ) -> Result<AppendOutcome, StoreError> {
        match self {
            Store::Sqlite(store) => store.append_events(execution_id, events, acked_seq).await,
        }
    }

    /// Events with `seq > after_seq`, in order, at most `limit` (clamped to [`MAX_PAGE_LIMIT`]).
    pub async fn events_after(
        &self,
        execution_id: &str,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<ExecutionEvent>, StoreError> {
        match self {
            Store::Sqlite(store) => store.events_after(execution_id, after_seq, limit).await,
        }
    }

    /// The highest stored sequence number (0 when none).
    pub async fn last_event_seq(&self, execution_id: &str) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(store) => store.last_event_seq(execution_id).await,
        }
    }

    /// An execution; with `owner: Some(token)`, only if that token owns it.
    pub async fn get_execution(
        &self,
        execution_id: &str,
        owner: Option<&str>,
    ) -> Result<Option<Execution>, StoreError> {
        match self {
            Store::Sqlite(store) => store.get_execution(execution_id, owner).await,
        }
    }

    /// A page of executions, newest first.
    pub async fn list_executions(
        &self,
        filter: &ExecutionFilter,
    ) -> Result<Page<Execution>, StoreError> {
        match self {
            Store::Sqlite(store) => store.list_executions(filter).await,
        }
    }

    /// Every execution that is queued or running, oldest first (for restart reconciliation).
    pub async fn list_unfinished(&self) -> Result<Vec<Execution>, StoreError> {
        match self {
            Store::Sqlite(store) => store.list_unfinished().await,
        }
    }

    /// Stores an artifact (replacing one of the same name). Bounded by `max_artifact_bytes`.
    pub async fn put_artifact(
        &self,
        execution_id: &str,
        name: &str,
        content: &[u8],
    ) -> Result<ArtifactInfo, StoreError> {
        match self {
            Store::Sqlite(store) => store.put_artifact(execution_id, name, content).await,
        }
    }

    pub async fn get_artifact(
        &self,
        execution_id: &str,
        name: &str,
    ) -> Result<Option<(ArtifactInfo, Vec<u8>)>, StoreError> {
        match self {
            Store::Sqlite(store) => store.get_artifact(execution_id, name).await,
        }
    }

    /// Artifacts of an execution, by name.
    pub async fn list_artifacts(
        &self,
        execution_id: &str,
    ) -> Result<Vec<ArtifactInfo>, StoreError> {
        match self {
            Store::Sqlite(store) => store.list_artifacts(execution_id).await,
        }
    }

    pub async fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(store) => store.audit(entry).await,
        }
    }

    /// Audit entries, newest first; `execution_id` narrows to one execution.
    pub async fn list_audit(
        &self,
        execution_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        match self {
            Store::Sqlite(store) => store.list_audit(execution_id, limit).await,
        }
    }

    /// Records a pending gate. A gate for the same stage cannot be requested twice.
    pub async fn request_approval(
        &self,
        execution_id: &str,
        gate: &NewApproval,
    ) -> Result<ApprovalRecord, StoreError> {
        match self {
            Store::Sqlite(store) => store.request_approval(execution_id, gate).await,
        }
    }

    /// Decides a pending gate, once. Deciding it again, or a gate that does not
    /// exist, is an error ([`StoreError::ApprovalAlreadyDecided`], [`StoreError::ApprovalNotFound`]).
    pub async fn decide_approval(
        &self,
        execution_id: &str,
        stage: &str,
        decision: ApprovalDecision,
        by: &str,
        message: Option<&str>,
    ) -> Result<ApprovalRecord, StoreError> {
        match self {
            Store::Sqlite(store) => {
                store
                    .decide_approval(execution_id, stage, decision, by, message)
                    .await
            }
        }
    }

    pub async fn get_approval(
        &self,
        execution_id: &str,
        stage: &str,
    ) -> Result<Option<ApprovalRecord>, StoreError> {
        match self {
            Store::Sqlite(store) => store.get_approval(execution_id, stage).await,
        }
    }

    pub async fn list_approvals(
        &self,
        execution_id: &str,
    ) -> Result<Vec<ApprovalRecord>, StoreError> {
        match self {
            Store::Sqlite(store) => store.list_approvals(execution_id).await,
        }
    }

    /// Records an admitted model call as `running`; returns its row id.
    pub async fn begin_model_call(&self, call: &NewModelCall) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(store) => store.begin_model_call(call).await,
        }
    }

    /// Records how a running call ended. Ending it twice gives
    /// [`StoreError::ModelCallAlreadyEnded`]; the first end stays.
    pub async fn finish_model_call(&self, id: i64, end: &ModelCallEnd) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(store) => store.finish_model_call(id, end).await,
        }
    }

    /// At startup: marks every call still `running` (left by a previous
    /// process) `interrupted`. Returns those calls, oldest first.
    pub async fn interrupt_running_model_calls(
        &self,
        finished_at_ms: i64,
    ) -> Result<Vec<ModelCallRow>, StoreError> {
        match self {
            Store::Sqlite(store) => store.interrupt_running_model_calls(finished_at_ms).await,
        }
    }

    /// The model calls of an execution, in the order they started.
    pub async fn model_calls(&self, execution_id: &str) -> Result<Vec<ModelCallRow>, StoreError> {
        match self {
            Store::Sqlite(store) => store.model_calls(execution_id).await,
        }
    }

    /// An execution's model usage in total and per step (steps that made a call).
    pub async fn model_usage_of_execution(
        &self,
        execution_id: &str,
    ) -> Result<(ModelUsage, BTreeMap<String, ModelUsage>), StoreError> {
        match self {
            Store::Sqlite(store) => store.model_usage_of_execution(execution_id).await,
        }
    }

    /// One user's model usage over every stored execution.
    pub async fn model_usage_of_user(&self, user_id: &str) -> Result<ModelUsage, StoreError> {
        match self {
            Store::Sqlite(store) => store.model_usage_of_user(user_id).await,
        }
    }

    /// Model usage of every user that made a call, by user id (to seed the budget ledger).
    pub async fn model_usage_by_user(&self) -> Result<Vec<(String, ModelUsage)>, StoreError> {
        match self {
            Store::Sqlite(store) => store.model_usage_by_user().await,
        }
    }

    /// Calls and tokens by `(provider, model, status)`, sorted, for `/metrics`.
    pub async fn model_call_totals(&self) -> Result<Vec<ModelCallTotals>, StoreError> {
        match self {
            Store::Sqlite(store) => store.model_call_totals().await,
        }
    }

    /// The number of executions in each status, every status listed (in
    /// [`ExecutionStatus::ALL`] order, zero included), for `/metrics`.
    pub async fn count_executions_by_status(
        &self,
    ) -> Result<Vec<(ExecutionStatus, u64)>, StoreError> {
        match self {
            Store::Sqlite(store) => store.count_executions_by_status().await,
        }
    }

    /// Applies the configured retention now: finished executions older than
    /// `retention.days`, then the oldest beyond `retention.max_executions`.
    pub async fn apply_retention(
        &self,
        retention: &crate::config::RetentionConfig,
    ) -> Result<PurgeReport, StoreError> {
        let max_age_ms = i64::from(retention.days) * 86_400_000;
        self.purge(
            now_ms().saturating_sub(max_age_ms),
            retention.max_executions,
        )
        .await
    }

    /// Retention: removes finished executions (with events, artifacts and
    /// gates) that finished before `finished_before_ms`, then the oldest
    /// finished ones beyond `keep_max_finished`. Unfinished ones are never touched.
    pub async fn purge(
        &self,
        finished_before_ms: i64,
        keep_max_finished: u64,
    ) -> Result<PurgeReport, StoreError> {
        match self {
            Store::Sqlite(store) => store.purge(finished_before_ms, keep_max_finished).await,
        }
    }
}

/// Checks an artifact name with the protocol's rules (a safe relative path).
/// Names are only keys here, never host paths, but the same rule holds everywhere.
pub fn check_artifact_name(name: &str) -> Result<(), StoreError> {
    protocol::validate_artifact_name(name).map_err(|err| StoreError::InvalidArtifactName {
        name: name.to_string(),
        reason: err.to_string(),
    })
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
