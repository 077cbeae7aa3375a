//! The engine: runs a checked [`Recipe`] against a [`StepRunner`].
//!
//! Order of work for one step (section 6): cancellation check → `step`
//! variable → `condition` (false: `step_skipped`, id appended to
//! `_skipped_steps`) → loop or single dispatch (retry, rate limit, timeout) →
//! result post-processing ([`crate::extract`]) → `output` → checkpoint.
//!
//! Error handling (section 7.6 with Part A's fixes): every step kind honours
//! `on_error` for every runtime failure (non-zero exit, timeout, runner error,
//! failed sub-recipe); template errors in a step's own fields stay fatal.
//! `retry` applies to agent and bash steps. `skip_remaining` ends the whole run
//! (in staged mode too: later stages do not run) with status `partial`. A
//! parallel foreach always lets every iteration finish; then `continue` keeps
//! nulls for the failures, `skip_remaining` stores the results (nulls for the
//! failures) and ends the run as partial, `fail` fails the step.
//!
//! Context values are not bounded by the engine: bash output is bounded by
//! `max_output_bytes` in the runner, model answers by the gateway. Checkpoints
//! keep every value whole (no trimming placeholders, the reference's W12).
//!
//! Timeouts and gate timeouts use the runner's clock ([`StepRunner::sleep`]),
//! raced against the call; cancellation uses a [`CancellationToken`] with one
//! child token per step, so a cancel interrupts the running step at once.

mod limits;
mod loops;
mod step;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::event::{Decision, Event, EventSink, RunStatus, SkipReason};
use crate::model::{Approval, ApprovalDefault, Body, Recipe, RecursionLimits, Stage, Step};
use crate::runner::{ApprovalDecision, ApprovalRequest, StepRunner};
use crate::template::{self, Undefined};

use limits::RateLimiter;

/// Version of the [`Checkpoint`] layout.
pub const CHECKPOINT_FORMAT: u32 = 1;

/// Where a run continues: the next top-level step to run. Flat recipes use
/// stage 0. `step == stage.steps.len()` means "at the stage's gate".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub stage: usize,
    pub step: usize,
}

/// Progress of a `checkpoint_iterations` foreach (section 13.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForeachProgress {
    pub step_id: String,
    pub completed: u64,
    pub total: u64,
    /// Collected results so far (only when the step has `collect`).
    pub collected: Option<Vec<Value>>,
    /// The last iteration's result.
    pub last: Option<Value>,
}

/// State of the gate the run is at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateStatus {
    Pending,
    Approved,
    Denied,
    /// Timed out with default deny.
    TimedOut,
}

/// The gate the run is waiting at (or was stopped by).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateState {
    pub stage_index: usize,
    pub stage: String,
    pub status: GateStatus,
    pub requested_at_ms: u64,
}

/// One gate decision, kept for the audit trail (append-only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    pub stage: String,
    pub decision: Decision,
    pub by: String,
    pub message: String,
    pub timed_out: bool,
    pub at_ms: u64,
}

/// Serialisable engine state: enough to resume a run after a reconnect.
/// Resume granularity is one top-level step (and one iteration for
/// `checkpoint_iterations` foreach steps); a step interrupted mid-way runs again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub format: u32,
    pub recipe_name: String,
    pub recipe_version: String,
    pub position: Position,
    pub context: Map<String, Value>,
    /// The shared agent-step counter (section 9.3).
    pub total_steps: u32,
    pub foreach: Option<ForeachProgress>,
    pub gate: Option<GateState>,
    pub approvals: Vec<ApprovalRecord>,
    /// Set once the run ended for good. `denied` is terminal: resuming refuses.
    pub finished: Option<RunStatus>,
    /// The error of a failed or cancelled run (kept for `resume` reports).
    pub error: Option<String>,
    /// Output variable of the last completed top-level step.
    pub last_output: Option<String>,
    pub next_seq: u64,
    pub started_ms: u64,
}

impl Checkpoint {
    fn fresh(recipe: &Recipe, context: Map<String, Value>, started_ms: u64) -> Checkpoint {
        Checkpoint {
            format: CHECKPOINT_FORMAT,
            recipe_name: recipe.name.clone(),
            recipe_version: recipe.version.clone(),
            position: Position::default(),
            context,
            total_steps: 0,
            foreach: None,
            gate: None,
            approvals: Vec::new(),
            finished: None,
            error: None,
            last_output: None,
            next_seq: 0,
            started_ms,
        }
    }
}

/// The result of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunOutcome {
    pub status: RunStatus,
    pub error: Option<String>,
    pub failed_step: Option<String>,
    /// The context's `final_output`, else the last completed top-level step's output.
    pub final_output: Option<Value>,
    pub context: Map<String, Value>,
    pub checkpoint: Checkpoint,
}

/// Why execution stopped before the end.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Halt {
    Failed { step_id: String, message: String },
    Cancelled { step_id: Option<String> },
    Denied { stage: String, message: String },
}

/// What the enclosing step list does next.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Flow {
    Next,
    SkipRemaining { by_step: String },
}

pub(crate) struct Shared {
    pub runner: Arc<dyn StepRunner>,
    pub events: EventSink,
    pub total_steps: AtomicU32,
    pub group_counter: AtomicU64,
    pub limiter: RateLimiter,
    pub state: tokio::sync::Mutex<Checkpoint>,
    pub orchestrator_config: Option<Map<String, Value>>,
    pub session: Value,
}

/// One recipe invocation (the root or a sub-recipe).
#[derive(Clone)]
pub(crate) struct Frame {
    pub shared: Arc<Shared>,
    pub recipe: Arc<Recipe>,
    pub depth: u32,
    pub limits: RecursionLimits,
    /// Recipe names from the root down to this one.
    pub stack: Vec<String>,
    /// Prefix for step ids and stage names in events (`parent/`).
    pub prefix: String,
    pub cancel: CancellationToken,
    pub is_root: bool,
}

impl Frame {
    pub fn display_id(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }

    pub fn runner(&self) -> &dyn StepRunner {
        self.shared.runner.as_ref()
    }

    pub async fn emit(&self, event: Event) {
        self.shared.events.emit(event).await;
    }

    pub fn now_ms(&self) -> u64 {
        self.shared.runner.now_ms()
    }

    /// Copy the context into the root checkpoint and hand it to the runner.
    pub async fn save_checkpoint(&self, context: &Map<String, Value>) {
        if !self.is_root {
            return;
        }
        let snapshot = {
            let mut state = self.shared.state.lock().await;
            state.context = context.clone();
            state.total_steps = self.shared.total_steps.load(Ordering::SeqCst);
            state.next_seq = self.shared.events.next_seq().await;
            state.clone()
        };
        self.shared.runner.save_checkpoint(snapshot).await;
    }
}

/// Run a recipe from the start. `inputs` override the recipe's `context`
/// defaults key by key. Never panics on recipe content; every failure is in
/// the returned [`RunOutcome`] and the event stream.
pub async fn run(
    recipe: &Recipe,
    inputs: Map<String, Value>,
    runners: Arc<dyn StepRunner>,
    events: EventSink,
    cancel: CancellationToken,
) -> RunOutcome {
    let mut context = recipe.context.clone();
    for (key, value) in inputs {
        context.insert(key, value);
    }
    let checkpoint = Checkpoint::fresh(recipe, context, runners.now_ms());
    drive(recipe, checkpoint, runners, events, cancel, false).await
}

/// Continue a run from a checkpoint taken by [`run`] (or an earlier resume).
/// A finished checkpoint runs nothing and reports its status again; a denied
/// gate stays denied. Create `events` with [`EventSink::channel_from`] and
/// `checkpoint.next_seq` to keep sequence numbers increasing.
pub async fn resume(
    recipe: &Recipe,
    checkpoint: Checkpoint,
    runners: Arc<dyn StepRunner>,
    events: EventSink,
    cancel: CancellationToken,
) -> RunOutcome {
    let mismatch = if checkpoint.format != CHECKPOINT_FORMAT {
        Some(format!(
            "checkpoint format {} is not supported (expected {CHECKPOINT_FORMAT})",
            checkpoint.format
        ))
    } else if checkpoint.recipe_name != recipe.name || checkpoint.recipe_version != recipe.version {
        Some(format!(
            "checkpoint belongs to recipe '{}' {}, not '{}' {}",
            checkpoint.recipe_name, checkpoint.recipe_version, recipe.name, recipe.version
        ))
    } else {
        None
    };
    if let Some(error) = mismatch {
        return RunOutcome {
            status: RunStatus::Failed,
            error: Some(error),
            failed_step: None,
            final_output: None,
            context: checkpoint.context.clone(),
            checkpoint,
        };
    }
    drive(recipe, checkpoint, runners, events, cancel, true).await
}

fn session_value(runner: &dyn StepRunner) -> Value {
    let session = runner.session();
    json!({"id": session.id, "started": session.started, "project": session.project})
}

fn recipe_value(recipe: &Recipe) -> Value {
    json!({"name": recipe.name, "version": recipe.version, "description": recipe.description})
}

pub(crate) fn skipped_steps(context: &Map<String, Value>) -> Vec<String> {
    match context.get("_skipped_steps") {
        Some(Value::Array(items)) => items.iter().map(template::value_to_text).collect(),
        _ => Vec::new(),
    }
}

async fn drive(
    recipe: &Recipe,
    checkpoint: Checkpoint,
    runner: Arc<dyn StepRunner>,
    events: EventSink,
    cancel: CancellationToken,
    resumed: bool,
) -> RunOutcome {
    if let Some(status) = checkpoint.finished {
        let context = checkpoint.context.clone();
        let error = match status {
            RunStatus::Denied => Some(format!(
                "execution was denied at an approval gate and cannot resume{}",
                checkpoint
                    .error
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )),
            _ => checkpoint.error.clone(),
        };
        let final_output = final_output(&context, checkpoint.last_output.as_deref());
        return RunOutcome {
            status,
            error,
            failed_step: None,
            final_output,
            context,
            checkpoint,
        };
    }
    let started_ms = runner.now_ms();
    let mut context = checkpoint.context.clone();
    context.insert("recipe".into(), recipe_value(recipe));
    context.insert("session".into(), session_value(runner.as_ref()));
    let start = checkpoint.position;
    let shared = Arc::new(Shared {
        limiter: RateLimiter::new(recipe.rate_limiting.as_ref()),
        total_steps: AtomicU32::new(checkpoint.total_steps),
        group_counter: AtomicU64::new(0),
        orchestrator_config: recipe.orchestrator.as_ref().map(|o| o.config.clone()),
        session: context.get("session").cloned().unwrap_or(Value::Null),
        state: tokio::sync::Mutex::new(checkpoint),
        runner,
        events,
    });
    let frame = Frame {
        shared: shared.clone(),
        recipe: Arc::new(recipe.clone()),
        depth: 0,
        limits: recipe.recursion,
        stack: vec![recipe.name.clone()],
        prefix: String::new(),
        cancel,
        is_root: true,
    };
    let (steps, stages) = match &recipe.body {
        Body::Flat(steps) => (steps.iter().map(|s| s.id.clone()).collect(), Vec::new()),
        Body::Staged(stages) => (
            recipe.all_steps().iter().map(|s| s.id.clone()).collect(),
            stages.iter().map(|s| s.name.clone()).collect(),
        ),
    };
    frame
        .emit(Event::ExecutionStarted {
            recipe: recipe.name.clone(),
            version: recipe.version.clone(),
            mode: if recipe.is_staged() { "staged" } else { "flat" }.to_string(),
            steps,
            stages,
            resumed,
        })
        .await;

    let result = run_body(&frame, &mut context, start).await;
    let (status, error, failed_step) = match result {
        Ok(Flow::Next) => (RunStatus::Succeeded, None, None),
        Ok(Flow::SkipRemaining { .. }) => (RunStatus::Partial, None, None),
        Err(Halt::Failed { step_id, message }) => (RunStatus::Failed, Some(message), Some(step_id)),
        Err(Halt::Cancelled { step_id }) => (
            RunStatus::Cancelled,
            Some(match &step_id {
                Some(id) => format!("execution cancelled at step '{id}'"),
                None => "execution cancelled".to_string(),
            }),
            step_id,
        ),
        Err(Halt::Denied { message, .. }) => (RunStatus::Denied, Some(message), None),
    };
    let skipped = skipped_steps(&context);
    {
        let mut state = shared.state.lock().await;
        state.error = error.clone();
        // Failed and cancelled runs stay resumable at the step that stopped them.
        if matches!(
            status,
            RunStatus::Succeeded | RunStatus::Partial | RunStatus::Denied
        ) {
            state.finished = Some(status);
        }
    }
    frame
        .emit(Event::ExecutionCompleted {
            status,
            duration_ms: frame.now_ms().saturating_sub(started_ms),
            error: error.clone(),
            failed_step: failed_step.clone(),
            skipped_steps: skipped,
        })
        .await;
    frame.save_checkpoint(&context).await;
    let checkpoint = shared.state.lock().await.clone();
    RunOutcome {
        status,
        error,
        failed_step,
        final_output: final_output(&context, checkpoint.last_output.as_deref()),
        context,
        checkpoint,
    }
}

fn final_output(context: &Map<String, Value>, last_output: Option<&str>) -> Option<Value> {
    context
        .get("final_output")
        .or_else(|| last_output.and_then(|name| context.get(name)))
        .cloned()
}

/// Run a frame's recipe body from `start`.
pub(crate) async fn run_body(
    frame: &Frame,
    context: &mut Map<String, Value>,
    start: Position,
) -> Result<Flow, Halt> {
    let recipe = frame.recipe.clone();
    match &recipe.body {
        Body::Flat(steps) => run_list(frame, context, steps, start.step, None).await,
        Body::Staged(stages) => run_stages(frame, context, stages, start).await,
    }
}

async fn set_position(frame: &Frame, position: Position) {
    if frame.is_root {
        let mut state = frame.shared.state.lock().await;
        if state.position != position {
            state.foreach = None;
        }
        state.position = position;
    }
}

async fn run_list(
    frame: &Frame,
    context: &mut Map<String, Value>,
    steps: &[Step],
    start: usize,
    stage: Option<(usize, &str)>,
) -> Result<Flow, Halt> {
    let stage_index = stage.map_or(0, |(idx, _)| idx);
    let stage_name = stage.map(|(_, name)| name);
    for (idx, step) in steps.iter().enumerate().skip(start) {
        set_position(
            frame,
            Position {
                stage: stage_index,
                step: idx,
            },
        )
        .await;
        let done = step::execute_step(frame, context, step, idx, stage_name, true).await?;
        if frame.is_root {
            let mut state = frame.shared.state.lock().await;
            state.position = Position {
                stage: stage_index,
                step: idx + 1,
            };
            state.foreach = None;
            if done.result.is_some() && step.output.is_some() {
                state.last_output = step.output.clone();
            }
        }
        frame.save_checkpoint(context).await;
        if let Flow::SkipRemaining { by_step } = done.flow {
            for rest in &steps[idx + 1..] {
                emit_skip_remaining(frame, rest, &by_step).await;
            }
            return Ok(Flow::SkipRemaining { by_step });
        }
    }
    Ok(Flow::Next)
}

async fn emit_skip_remaining(frame: &Frame, step: &Step, by_step: &str) {
    frame
        .emit(Event::StepSkipped {
            step_id: frame.display_id(&step.id),
            reason: SkipReason::SkipRemaining {
                by_step: frame.display_id(by_step),
            },
        })
        .await;
}

async fn run_stages(
    frame: &Frame,
    context: &mut Map<String, Value>,
    stages: &[Stage],
    start: Position,
) -> Result<Flow, Halt> {
    for (stage_idx, stage) in stages.iter().enumerate().skip(start.stage) {
        let stage_started = frame.now_ms();
        context.insert(
            "stage".into(),
            json!({"name": stage.name, "index": stage_idx}),
        );
        let step_start = if stage_idx == start.stage {
            start.step
        } else {
            0
        };
        frame
            .emit(Event::StageStarted {
                stage: frame.display_id(&stage.name),
                index: stage_idx,
                total_stages: stages.len(),
                total_steps: stage.steps.len(),
            })
            .await;
        let flow = run_list(
            frame,
            context,
            &stage.steps,
            step_start,
            Some((stage_idx, &stage.name)),
        )
        .await?;
        if let Flow::SkipRemaining { by_step } = flow {
            for later in &stages[stage_idx + 1..] {
                for step in &later.steps {
                    emit_skip_remaining(frame, step, &by_step).await;
                }
            }
            return Ok(Flow::SkipRemaining { by_step });
        }
        match &stage.approval {
            Some(approval) if approval.required => {
                run_gate(frame, context, stage_idx, stage, approval).await?;
            }
            _ => {
                if !context.contains_key("_approval_message") {
                    context.insert("_approval_message".into(), Value::String(String::new()));
                }
            }
        }
        frame
            .emit(Event::StageCompleted {
                stage: frame.display_id(&stage.name),
                index: stage_idx,
                duration_ms: frame.now_ms().saturating_sub(stage_started),
            })
            .await;
        set_position(
            frame,
            Position {
                stage: stage_idx + 1,
                step: 0,
            },
        )
        .await;
        frame.save_checkpoint(context).await;
    }
    Ok(Flow::Next)
}

/// Prompt shown when a gate has none.
fn default_prompt(stage: &str) -> String {
    format!("Approve stage '{stage}' to continue?")
}

async fn run_gate(
    frame: &Frame,
    context: &mut Map<String, Value>,
    stage_idx: usize,
    stage: &Stage,
    approval: &Approval,
) -> Result<(), Halt> {
    let label = frame.display_id(&stage.name);
    let prompt = if approval.prompt.trim().is_empty() {
        default_prompt(&label)
    } else {
        template::render_with(&approval.prompt, context, Undefined::KeepHandlebarsKeywords)
            .map_err(|error| Halt::Failed {
                step_id: label.clone(),
                message: format!(
                    "Stage '{}': approval prompt error: {}",
                    stage.name, error.message
                ),
            })?
    };
    // A resumed run keeps the original request time, so the timeout is not reset.
    let requested_at_ms = {
        let now = frame.now_ms();
        if frame.is_root {
            let mut state = frame.shared.state.lock().await;
            let requested_at = match &state.gate {
                Some(gate)
                    if gate.stage_index == stage_idx && gate.status == GateStatus::Pending =>
                {
                    gate.requested_at_ms
                }
                _ => now,
            };
            state.position = Position {
                stage: stage_idx,
                step: stage.steps.len(),
            };
            state.gate = Some(GateState {
                stage_index: stage_idx,
                stage: label.clone(),
                status: GateStatus::Pending,
                requested_at_ms: requested_at,
            });
            requested_at
        } else {
            now
        }
    };
    frame.save_checkpoint(context).await;
    frame
        .emit(Event::ApprovalRequested {
            stage: label.clone(),
            prompt: prompt.clone(),
            timeout_secs: approval.timeout_secs,
            default: approval.default,
        })
        .await;
    let request = ApprovalRequest {
        stage: label.clone(),
        prompt,
        timeout_secs: approval.timeout_secs,
        default: approval.default,
    };
    let runner = frame.runner();
    let timeout_ms = approval.timeout_secs.saturating_mul(1000);
    let remaining = timeout_ms.saturating_sub(frame.now_ms().saturating_sub(requested_at_ms));
    let waited = tokio::select! {
        biased;
        () = frame.cancel.cancelled() => None,
        decision = runner.wait_approval(request) => Some((decision, false)),
        () = runner.sleep(std::time::Duration::from_millis(remaining)), if approval.timeout_secs > 0 => {
            let decision = match approval.default {
                ApprovalDefault::Approve => Decision::Approve,
                ApprovalDefault::Deny => Decision::Deny,
            };
            Some((ApprovalDecision { decision, by: "timeout".into(), message: String::new() }, true))
        }
    };
    let Some((decision, timed_out)) = waited else {
        return Err(Halt::Cancelled { step_id: None });
    };
    frame
        .emit(Event::ApprovalDecided {
            stage: label.clone(),
            decision: decision.decision,
            by: decision.by.clone(),
            message: decision.message.clone(),
            timed_out,
        })
        .await;
    let at_ms = frame.now_ms();
    if frame.is_root {
        let mut state = frame.shared.state.lock().await;
        state.approvals.push(ApprovalRecord {
            stage: label.clone(),
            decision: decision.decision,
            by: decision.by.clone(),
            message: decision.message.clone(),
            timed_out,
            at_ms,
        });
        state.gate = match decision.decision {
            Decision::Approve => None,
            Decision::Deny => Some(GateState {
                stage_index: stage_idx,
                stage: label.clone(),
                status: if timed_out {
                    GateStatus::TimedOut
                } else {
                    GateStatus::Denied
                },
                requested_at_ms,
            }),
        };
    }
    match decision.decision {
        Decision::Approve => {
            context.insert("_approval_message".into(), Value::String(decision.message));
            Ok(())
        }
        Decision::Deny => {
            let message = if timed_out {
                format!("approval gate '{label}' timed out and was denied")
            } else if decision.message.is_empty() {
                format!("execution denied at stage '{label}' by {}", decision.by)
            } else {
                format!(
                    "execution denied at stage '{label}' by {}: {}",
                    decision.by, decision.message
                )
            };
            if frame.is_root {
                let mut state = frame.shared.state.lock().await;
                state.finished = Some(RunStatus::Denied);
            }
            Err(Halt::Denied {
                stage: label,
                message,
            })
        }
    }
}
