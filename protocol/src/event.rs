//! The events users see: what the controller stores and streams to watchers.
//!
//! An [`ExecutionEvent`] has one of three sources, adjacently tagged so a
//! client can dispatch on `source` before looking at the payload:
//!
//! ```json
//! {"seq": 7, "at_ms": 1763861000000,
//!  "body": {"source": "engine", "event": {"type": "step_started", ...}}}
//! ```
//!
//! The agent can only send [`AgentEventBody`] (engine and sandbox events);
//! controller events come from the controller alone, and the sandbox events
//! the controller observes itself (`resource_usage`, `artifact_stored`) are
//! refused when an agent sends them (see [`SandboxEvent::can_agent_emit`]).

use serde::{Deserialize, Serialize};

/// The event type of the recipe engine.
pub use recipe::event::Event as EngineEvent;

/// One stored, user-visible event of an execution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionEvent {
    /// Assigned by the controller when storing: 1, 2, 3, ... per execution.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub body: EventBody,
}

/// Who produced an event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", content = "event", rename_all = "snake_case")]
pub enum EventBody {
    Engine(EngineEvent),
    Sandbox(SandboxEvent),
    Controller(ControllerEvent),
}

/// The subset of [`EventBody`] an agent may send. Same JSON shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", content = "event", rename_all = "snake_case")]
pub enum AgentEventBody {
    Engine(EngineEvent),
    Sandbox(SandboxEvent),
}

impl From<AgentEventBody> for EventBody {
    fn from(body: AgentEventBody) -> EventBody {
        match body {
            AgentEventBody::Engine(event) => EventBody::Engine(event),
            AgentEventBody::Sandbox(event) => EventBody::Sandbox(event),
        }
    }
}

/// Facts about the sandbox rather than the recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SandboxEvent {
    /// The agent is up and has its job (first event of a run).
    AgentStarted { agent_version: String },
    /// The agent's connection dropped and came back.
    AgentReconnected { attempts: u32, down_ms: u64 },
    /// A step's process group was terminated by the agent.
    StepKilled {
        step_id: String,
        reason: KillReason,
        signal: String,
    },
    /// A file under `/work/out/` was not delivered.
    ArtifactRejected {
        name: String,
        reason: ArtifactRejectReason,
    },
    /// An artifact arrived complete and verified (controller-emitted).
    ArtifactStored {
        name: String,
        size_bytes: u64,
        sha256: String,
    },
    /// Resource accounting from the cgroup (controller-emitted).
    ResourceUsage {
        peak_memory_bytes: u64,
        cpu_time_ms: u64,
        pids_peak: u64,
        oom_kills: u64,
    },
}

impl SandboxEvent {
    /// Whether an agent may send this event; the others are observed by the
    /// controller itself and an agent claiming them is lying.
    pub fn can_agent_emit(&self) -> bool {
        match self {
            SandboxEvent::AgentStarted { .. }
            | SandboxEvent::AgentReconnected { .. }
            | SandboxEvent::StepKilled { .. }
            | SandboxEvent::ArtifactRejected { .. } => true,
            SandboxEvent::ArtifactStored { .. } | SandboxEvent::ResourceUsage { .. } => false,
        }
    }

    /// The stable `type` name of the event.
    pub fn kind(&self) -> &'static str {
        match self {
            SandboxEvent::AgentStarted { .. } => "agent_started",
            SandboxEvent::AgentReconnected { .. } => "agent_reconnected",
            SandboxEvent::StepKilled { .. } => "step_killed",
            SandboxEvent::ArtifactRejected { .. } => "artifact_rejected",
            SandboxEvent::ArtifactStored { .. } => "artifact_stored",
            SandboxEvent::ResourceUsage { .. } => "resource_usage",
        }
    }
}

/// Why the agent killed a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KillReason {
    Timeout,
    Cancelled,
}

/// Why an artifact was not delivered. Stable snake_case reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactRejectReason {
    /// The name is not a safe relative path (see [`crate::validate_artifact_name`]).
    InvalidName,
    /// A symbolic link (never followed).
    Symlink,
    /// A FIFO, socket, device or anything else that is not a regular file.
    NotRegularFile,
    /// A regular file with more than one hard link.
    Hardlink,
    /// Larger than the per-artifact cap.
    TooLarge,
    /// Over the artifact count cap.
    TooMany,
    /// Over the total artifact bytes cap.
    TotalTooLarge,
    /// Reading failed, or the file changed while being read.
    ReadFailed,
}

/// Facts from the controller's side of an execution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControllerEvent {
    Queued {},
    ContainerStarted {
        runtime: String,
    },
    AgentConnected {},
    AgentDisconnected {
        reason: String,
    },
    CancelRequested {
        by: String,
    },
    /// An agent step's model call passed resolution and the budget check and
    /// went to the provider (it counts as one request of the budgets).
    ModelCallStarted {
        step_id: String,
        /// The agent's id for the call (unique per execution).
        request_id: u64,
        provider: String,
        model: String,
        /// The agent profile used (`default` for an unknown agent name).
        profile: String,
    },
    /// A batch of answer text as the provider streams it: the live view of
    /// the model thinking. The step's output is the final answer, not the
    /// concatenation of these (a retried stream starts again).
    ModelOutput {
        step_id: String,
        request_id: u64,
        text: String,
    },
    /// A model call that never reached a provider: no configured model
    /// matched, a budget is exhausted, or too many calls are in flight.
    ModelCallRefused {
        step_id: String,
        request_id: u64,
        code: crate::ModelErrorCode,
        message: String,
    },
    /// A started model call ended. Token counts are the provider's, exact;
    /// `provider`/`model` are the ones that answered (a fallback may differ
    /// from `model_call_started`).
    ModelCallFinished {
        step_id: String,
        request_id: u64,
        outcome: ModelCallOutcome,
        provider: String,
        model: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<crate::ModelErrorCode>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        input_tokens: u64,
        output_tokens: u64,
        duration_ms: u64,
    },
    Finished {
        status: FinalStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

/// How a started model call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelCallOutcome {
    Completed,
    /// The provider failed, timed out, or its answer was unusable.
    Failed,
    /// The step or the execution was cancelled; the request was aborted.
    Cancelled,
    /// The session ended under the call (the container stopped, or the
    /// controller stopped: an agent taken back asks again, as a new call).
    Interrupted,
}

impl ModelCallOutcome {
    /// The stable snake_case name (same as the JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            ModelCallOutcome::Completed => "completed",
            ModelCallOutcome::Failed => "failed",
            ModelCallOutcome::Cancelled => "cancelled",
            ModelCallOutcome::Interrupted => "interrupted",
        }
    }
}

/// The final status of an execution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalStatus {
    Succeeded,
    Failed,
    TimedOut,
    Oom,
    Cancelled,
    AgentLost,
    SandboxCrashed,
    ProtocolError,
    /// An approval gate denied (by a person or by its timeout default).
    Denied,
}

impl FinalStatus {
    /// The stable snake_case name (same as the JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            FinalStatus::Succeeded => "succeeded",
            FinalStatus::Failed => "failed",
            FinalStatus::TimedOut => "timed_out",
            FinalStatus::Oom => "oom",
            FinalStatus::Cancelled => "cancelled",
            FinalStatus::AgentLost => "agent_lost",
            FinalStatus::SandboxCrashed => "sandbox_crashed",
            FinalStatus::ProtocolError => "protocol_error",
            FinalStatus::Denied => "denied",
        }
    }
}
