//! The `StepRunner` abstraction: everything the engine needs from the outside
//! world. The sandbox agent implements it with real processes and model calls;
//! tests implement it with scripted fakes and paused tokio time.
//!
//! The trait is object-safe (`Arc<dyn StepRunner>`): methods return boxed
//! futures. Time goes through [`StepRunner::sleep`] and [`StepRunner::now_ms`],
//! so timeouts, retry delays and gate timeouts are all driven by the runner's
//! clock. The engine races every call against the step timeout and the
//! cancellation token; when either wins it cancels [`StepIo::cancel`] and drops
//! the call's future, so a runner must stop the work (kill the process group,
//! abort the model call) when the token fires or the future is dropped.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::engine::Checkpoint;
use crate::event::{Decision, Event, EventSink, OutputStream};
use crate::model::{ApprovalDefault, ProviderPreference};

/// A boxed, sendable future (keeps the trait object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Default cap on captured output per stream (the bash spec's 10 MB).
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 10 * 1024 * 1024;

/// A bash step, ready to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BashRequest {
    /// Step id as shown in events (`parent/child` inside sub-recipes).
    pub step_id: String,
    /// The substituted script. Goes on stdin or into a file, never into argv.
    pub script: String,
    /// `shell:` from the step (default `/bin/bash`, chosen by the runner).
    pub shell: Option<String>,
    /// The recipe's `env` only (rendered). The runner adds PATH/HOME/LANG.
    pub env: BTreeMap<String, String>,
    /// Rendered `cwd`, if the step has one (the runner resolves it under its work dir).
    pub cwd: Option<String>,
    pub timeout: Duration,
    /// Cap per stream; beyond it output is dropped and `*_truncated` is set.
    pub max_output_bytes: u64,
    /// Injection-free values: every context variable the command, cwd or env
    /// references, by dotted name, rendered to text. The agent exposes them as
    /// files `$KILN_VARS/<name>` and (small values, valid names) as env
    /// `KILN_VAR_<name with . as __>`.
    pub vars: BTreeMap<String, String>,
}

/// What a bash process did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BashOutcome {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// The runner killed the process group because the timeout expired.
    pub timed_out: bool,
}

/// Metadata for one model call (section 5.2 spawn contract).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentMetadata {
    pub recipe_name: String,
    pub step_id: String,
    pub step_index: usize,
    /// Shared by all calls of one parallel foreach step.
    pub parallel_group_id: Option<String>,
}

/// An agent step, ready to send to the model gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRequest {
    pub step_id: String,
    pub agent: String,
    /// Final instruction text (mode prefix and parse_json suffix included).
    pub prompt: String,
    pub agent_config: Option<Map<String, Value>>,
    /// Templated (Part A item 9).
    pub provider: Option<String>,
    pub model: Option<String>,
    pub provider_preferences: Option<Vec<ProviderPreference>>,
    pub model_role: Option<String>,
    /// The recipe's `orchestrator.config`, passed as-is.
    pub orchestrator_config: Option<Map<String, Value>>,
    pub timeout: Duration,
    pub metadata: AgentMetadata,
}

/// A model answer: a string, or a mapping whose `output` key holds the answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentOutcome {
    pub output: Value,
}

/// A gate waiting for a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    /// Stage name (`parentStep/childStage` for gates inside sub-recipes).
    pub stage: String,
    /// Substituted prompt.
    pub prompt: String,
    /// 0 = no timeout. The engine enforces it (races [`StepRunner::sleep`]).
    pub timeout_secs: u64,
    pub default: ApprovalDefault,
}

/// A person's decision at a gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalDecision {
    pub decision: Decision,
    /// Who decided (user id or name).
    pub by: String,
    /// Approval message (becomes `_approval_message`) or denial reason.
    pub message: String,
}

/// Values for the `session` variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub id: String,
    /// ISO-8601 start time.
    pub started: String,
    /// The working directory steps see.
    pub project: String,
}

/// A runner could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum RunnerError {
    /// The step could not run or the call failed.
    #[error("{message}")]
    Failed { message: String },
    /// The model gateway reported rate limiting (HTTP 429); feeds the backoff.
    #[error("rate limited: {message}")]
    RateLimited { message: String },
    /// `load_recipe` found no such submitted or gallery recipe.
    #[error("Sub-recipe not found: {name}")]
    RecipeNotFound { name: String },
    /// The runner noticed cancellation itself.
    #[error("cancelled")]
    Cancelled,
}

/// Per-step handle given to the runner: stream output as events and watch
/// the step's cancellation token.
#[derive(Clone)]
pub struct StepIo {
    step_id: String,
    cancel: CancellationToken,
    events: EventSink,
}

impl StepIo {
    pub fn new(step_id: String, cancel: CancellationToken, events: EventSink) -> StepIo {
        StepIo {
            step_id,
            cancel,
            events,
        }
    }

    pub fn step_id(&self) -> &str {
        &self.step_id
    }

    /// Fires when the run is cancelled or the step timed out.
    pub fn cancel(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Emit a chunk of output as a `step_output` event (in call order).
    pub async fn output(&self, stream: OutputStream, text: String) {
        self.events
            .emit(Event::StepOutput {
                step_id: self.step_id.clone(),
                stream,
                text,
            })
            .await;
    }

    /// Emit `output_truncated` once the stream passed its cap.
    pub async fn output_truncated(&self, stream: OutputStream, limit_bytes: u64) {
        self.events
            .emit(Event::OutputTruncated {
                step_id: self.step_id.clone(),
                stream,
                limit_bytes,
            })
            .await;
    }
}

/// The outside world, as the engine sees it.
pub trait StepRunner: Send + Sync {
    /// Run a bash script.
    fn bash(
        &self,
        request: BashRequest,
        io: StepIo,
    ) -> BoxFuture<'_, Result<BashOutcome, RunnerError>>;

    /// Call a model through the gateway.
    fn agent(
        &self,
        request: AgentRequest,
        io: StepIo,
    ) -> BoxFuture<'_, Result<AgentOutcome, RunnerError>>;

    /// YAML source of a sub-recipe, from the submitted files or the gallery only.
    fn load_recipe<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<String, RunnerError>>;

    /// Wait for a person's decision. May wait forever: the engine applies the
    /// gate timeout and cancellation by racing this future.
    fn wait_approval(&self, request: ApprovalRequest) -> BoxFuture<'_, ApprovalDecision>;

    /// Sleep on the runner's clock (tests use paused tokio time).
    fn sleep(&self, duration: Duration) -> BoxFuture<'_, ()>;

    /// Milliseconds since the Unix epoch on the runner's clock.
    fn now_ms(&self) -> u64;

    /// The `session` variable's values.
    fn session(&self) -> SessionInfo {
        SessionInfo {
            id: "local".to_string(),
            started: String::new(),
            project: "/work".to_string(),
        }
    }

    /// Persist a checkpoint (after each top-level step, at gates, per
    /// checkpointed foreach iteration, at the end). Default: keep nothing.
    fn save_checkpoint(&self, checkpoint: Checkpoint) -> BoxFuture<'_, ()> {
        drop(checkpoint);
        Box::pin(async {})
    }
}
