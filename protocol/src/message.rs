//! The messages of the agent link, one JSON text frame each.
//!
//! Both enums are internally tagged (`{"type": "hello", ...}`), use
//! snake_case names and refuse unknown fields: a misspelled field from either
//! side is an error, never silently ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::{AgentEventBody, FinalStatus};

/// Longest `agent`, `provider`, `model`, `model_role` and `class` of a
/// [`ModelRequest`], in bytes (agent names are at most 128, provider names 64).
pub const MAX_MODEL_SELECTOR_BYTES: usize = 256;
/// Most `provider_preferences` entries of a [`ModelRequest`].
pub const MAX_MODEL_PREFERENCES: usize = 32;
/// Largest `agent_config` of a [`ModelRequest`], serialized as JSON, in bytes.
pub const MAX_AGENT_CONFIG_BYTES: usize = 64 * 1024;

/// Messages the agent sends to the controller.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentMessage {
    /// First message on every connection.
    Hello(Hello),
    /// A sequence-numbered event (reliable: resent until acked).
    Event(WireEvent),
    /// Liveness; `seq_sent` is the highest reliable seq sent so far.
    Heartbeat { seq_sent: u64 },
    /// The engine reached an approval gate and waits for a decision.
    ApprovalRequest(ApprovalRequest),
    /// An agent step asks the controller to call a model.
    ModelRequest(Box<ModelRequest>),
    /// The agent no longer needs the answer to a model request
    /// (step timeout or cancel). The controller may ignore it.
    ModelCancel { request_id: u64 },
    /// A piece of an artifact file (reliable: resent until acked).
    ArtifactChunk(ArtifactChunk),
    /// The run is over; nothing reliable follows (reliable: resent until acked).
    Done(Done),
}

/// Messages the controller sends to the agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControllerMessage {
    /// The hello was accepted. `session_key` authenticates later resumes
    /// (the token is one-time).
    Welcome { session_key: String },
    /// The work to do; sent after the first `Welcome` (and after a resume
    /// before anything reliable arrived). The agent uses the first one.
    Job(Box<Job>),
    /// Cumulative: every reliable message with `seq <= self.seq` is stored.
    Ack { seq: u64 },
    /// Liveness. (A struct variant so that extra fields are refused.)
    Heartbeat {},
    /// Stop the run: terminate running steps, report `cancelled`.
    Cancel { reason: String },
    /// Answer to an [`ApprovalRequest`].
    ApprovalDecision(ApprovalDecision),
    /// Answer (or one streamed piece of it) to a [`ModelRequest`].
    ModelResponse(ModelResponse),
    /// The hello was refused; the controller closes the connection next.
    Reject { reason: RejectReason },
}

/// First message of every connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// Must equal [`crate::PROTOCOL_VERSION`].
    pub version: u32,
    /// Informational only: the controller identifies the execution by the
    /// socket the connection arrived on, and rejects a mismatch.
    pub execution_id: String,
    /// The one-time token read from `/run/kiln/token`. Empty on a resume.
    pub token: String,
    /// Present when reconnecting after a dropped connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<Resume>,
}

/// Reconnect credentials and position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resume {
    /// From the first `Welcome`.
    pub session_key: String,
    /// Highest seq the agent saw acknowledged. It resends everything after it.
    pub last_acked_seq: u64,
}

/// Why a hello was refused. Stable snake_case reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// `Hello.version` is not the controller's [`crate::PROTOCOL_VERSION`].
    VersionMismatch,
    /// The token is wrong or was already used.
    BadToken,
    /// The session key of a resume is wrong or expired.
    BadSessionKey,
    /// `Hello.execution_id` does not match the socket's execution.
    WrongExecution,
    /// Another connection for this execution is live.
    AlreadyConnected,
    /// The execution already finished; nothing more is accepted.
    ExecutionFinished,
    /// The hello frame itself was malformed.
    ProtocolError,
}

/// A reliable, sequence-numbered event from the agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireEvent {
    /// Position in the agent's reliable stream (shared with artifact chunks
    /// and `Done`): 1, 2, 3, ... without gaps.
    pub seq: u64,
    /// Agent wall clock, milliseconds since the Unix epoch. Informational.
    pub at_ms: u64,
    pub body: AgentEventBody,
}

/// The work of one execution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// The recipe YAML text; the agent checks it again itself.
    pub recipe_source: String,
    /// Recipe inputs (context values).
    #[serde(default)]
    pub inputs: serde_json::Map<String, serde_json::Value>,
    /// Sub-recipe sources by name (submitted files / gallery), for `type: recipe`.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    pub limits: JobLimits,
    /// Steps run as this uid/gid (never 0, never the agent's).
    pub step_uid: u32,
    pub step_gid: u32,
}

/// Limits the agent enforces on the run. The controller enforces its own
/// hard deadline and cgroup limits from outside whatever the agent does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobLimits {
    /// Total stdout+stderr bytes forwarded for the whole execution.
    pub max_output_bytes: u64,
    /// Default per-step output cap when the recipe sets no `max_output_size`
    /// (a recipe value above this is clamped to it).
    pub max_step_output_bytes: u64,
    /// Artifacts under `/work/out/`: count, per-file and total bytes
    /// (each clamped to the protocol's hard caps).
    pub max_artifacts: u32,
    pub max_artifact_bytes: u64,
    pub max_total_artifact_bytes: u64,
    /// RLIMIT_NOFILE for step processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rlimit_nofile: Option<u64>,
    /// RLIMIT_FSIZE for step processes, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rlimit_fsize_bytes: Option<u64>,
    /// RLIMIT_NPROC for step processes (per-execution uid, so not shared).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rlimit_nproc: Option<u64>,
}

impl Default for JobLimits {
    fn default() -> JobLimits {
        JobLimits {
            max_output_bytes: 64 * 1024 * 1024,
            max_step_output_bytes: 10 * 1024 * 1024,
            max_artifacts: crate::limits::MAX_ARTIFACTS,
            max_artifact_bytes: crate::limits::MAX_ARTIFACT_BYTES,
            max_total_artifact_bytes: crate::limits::MAX_TOTAL_ARTIFACT_BYTES,
            rlimit_nofile: Some(1024),
            rlimit_fsize_bytes: None,
            rlimit_nproc: None,
        }
    }
}

/// Approve or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalChoice {
    Approve,
    Deny,
}

/// The engine paused at an approval gate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRequest {
    /// Chosen by the agent, unique per execution. Resent after a reconnect
    /// while undecided: the controller treats a repeated id as the same request.
    pub request_id: u64,
    pub stage: String,
    /// Prompt with variables substituted.
    pub prompt: String,
    /// 0 = no timeout. The controller runs the timer.
    pub timeout_secs: u64,
    /// What a timeout decides.
    pub default: ApprovalChoice,
}

/// The decision for an approval gate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalDecision {
    pub request_id: u64,
    pub decision: ApprovalChoice,
    /// Who decided: a user name, or `"timeout"`.
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A model call for an agent step. The controller holds the API keys; the
/// sandbox never sees them.
///
/// The step's whole model selection travels as the recipe wrote it
/// (`provider`, `model`, `provider_preferences` with `class:` entries,
/// `model_role`, `agent_config`): the controller resolves it against the
/// agent profile and the operator's configuration, and applies the
/// `agent_config` allowlist itself. Bounds: [`crate::MAX_MODEL_SELECTOR_BYTES`],
/// [`crate::MAX_MODEL_PREFERENCES`], [`crate::MAX_AGENT_CONFIG_BYTES`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRequest {
    /// Chosen by the agent, unique per execution; resent after a reconnect
    /// while unanswered (the controller deduplicates by id).
    pub request_id: u64,
    pub step_id: String,
    /// The recipe's `agent` name.
    pub agent: String,
    pub messages: Vec<ModelMessage>,
    /// The step's `provider` (templated by the engine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The step's `model` (templated by the engine; may be a glob or alias).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The step's `provider_preferences`, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_preferences: Option<Vec<ModelPreference>>,
    /// The step's `model_role`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_role: Option<String>,
    /// The step's agent_config as written; the controller applies its allowlist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_config: Option<serde_json::Map<String, serde_json::Value>>,
    /// Explicit sampling parameters; they override the same keys of
    /// `agent_config`.
    #[serde(default)]
    pub parameters: ModelParameters,
    /// Ask for `chunk` responses before the final `completed`.
    #[serde(default)]
    pub stream: bool,
    pub timeout_secs: u64,
}

/// Who said a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelRole {
    System,
    User,
    Assistant,
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelMessage {
    pub role: ModelRole,
    pub content: String,
}

/// One entry of a step's `provider_preferences`:
/// `{"kind": "provider", "provider": "anthropic", "model": "claude-*"}` or
/// `{"kind": "class", "class": "reasoning"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelPreference {
    /// A provider, and optionally a model of it.
    Provider {
        provider: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
    },
    /// A model class the operator maps to a provider and model.
    Class { class: String },
}

/// Sampling parameters; `None` = provider default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelParameters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
}

/// One response message for a model request: zero or more `chunk`s, then
/// exactly one `completed` or `error`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelResponse {
    pub request_id: u64,
    pub body: ModelResponseBody,
}

/// What a model response carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelResponseBody {
    /// A streamed piece of the answer text.
    Chunk { text: String },
    /// The full answer.
    Completed {
        text: String,
        provider: String,
        model: String,
        usage: ModelUsage,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        finish_reason: Option<String>,
    },
    /// The call failed.
    Error {
        code: ModelErrorCode,
        message: String,
    },
}

/// Token accounting of one model call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// Stable reasons for a failed model call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelErrorCode {
    /// No model gateway is configured on this controller.
    Unavailable,
    /// No configured provider matches the preferences.
    NoProvider,
    RateLimited,
    QuotaExceeded,
    Timeout,
    /// The provider returned an error.
    ProviderError,
    /// The request was malformed or over a limit.
    InvalidRequest,
}

/// A piece of one artifact file from `/work/out/`. Chunks of one artifact are
/// sent in order with contiguous offsets; the last one carries the sha256 of
/// the whole file (its size is `offset` + the last chunk's length).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactChunk {
    /// Reliable stream position (shared with events and `Done`).
    pub seq: u64,
    /// Path relative to `/work/out/`, `/`-separated, lexically validated.
    pub name: String,
    pub offset: u64,
    /// Standard base64 (with padding) of at most [`crate::ARTIFACT_CHUNK_BYTES`].
    pub data_b64: String,
    pub last: bool,
    /// Lower-case hex sha256 of the whole file; present iff `last`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// End of the run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Done {
    /// Reliable stream position: the last one of this execution.
    pub seq: u64,
    pub outcome: Outcome,
}

/// How the run ended, as far as the agent can tell. The controller may
/// override it with what it observes from outside (`oom`, `timed_out`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    pub status: FinalStatus,
    /// Stable short reason, e.g. `"step_failed"`, `"recipe_invalid"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
