//! The engine's event stream: what people watching a run see.
//!
//! Flat and staged runs emit the same lifecycle (Part A item 11):
//! `execution_started` → (`stage_started`) → per step `step_started` /
//! `step_output` / `step_completed` | `step_failed` | `step_skipped` (with a
//! reason), loop and retry progress, `approval_requested` / `approval_decided`
//! at gates → (`stage_completed`) → `execution_completed` with the final status.
//!
//! Every event is numbered by the [`EventSink`] (`seq`, starting at 0 or at a
//! checkpoint's `next_seq`), in the order it is delivered. Delivery is awaited
//! on a bounded channel, so a slow consumer slows the engine instead of growing
//! memory. Outputs in `step_completed` are bounded previews ([`PREVIEW_CHARS`]).
//! Steps of sub-recipes carry ids prefixed with the calling step (`parent/child`).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Mutex, mpsc};

use crate::model::{ApprovalDefault, OnError};

/// Maximum characters of a value preview carried by an event.
pub const PREVIEW_CHARS: usize = 500;

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Succeeded,
    /// A step with `on_error: skip_remaining` ended the run early.
    Partial,
    Failed,
    /// An approval gate was denied (or timed out with default deny). Terminal.
    Denied,
    Cancelled,
}

/// `stdout` or `stderr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// Why a step did not run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SkipReason {
    /// Its `condition` was false.
    ConditionFalse { condition: String },
    /// Its `foreach` list was empty.
    EmptyList,
    /// An earlier step failed with `on_error: skip_remaining`.
    SkipRemaining { by_step: String },
}

/// Which loop an iteration event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoopKind {
    Foreach,
    ParallelForeach,
    While,
}

/// Why a loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoopEnd {
    /// Every item was processed (foreach).
    Exhausted,
    /// The while condition became false.
    ConditionFalse,
    /// `break_when` became true.
    BreakWhen,
    /// `max_while_iterations` stopped a while loop that had not converged.
    MaxIterations,
    /// A failure under `skip_remaining` stopped it.
    SkipRemaining,
}

/// What a step's failure led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureHandling {
    /// The run fails.
    Fail,
    /// The run goes on (`on_error: continue`).
    Continue,
    /// The rest of the recipe is skipped (`on_error: skip_remaining`).
    SkipRemaining,
}

impl From<OnError> for FailureHandling {
    fn from(on_error: OnError) -> FailureHandling {
        match on_error {
            OnError::Fail => FailureHandling::Fail,
            OnError::Continue => FailureHandling::Continue,
            OnError::SkipRemaining => FailureHandling::SkipRemaining,
        }
    }
}

/// A gate decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Approve,
    Deny,
}

/// One engine event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    ExecutionStarted {
        recipe: String,
        version: String,
        /// `flat` or `staged`.
        mode: String,
        /// Top-level step ids in order (all stages concatenated).
        steps: Vec<String>,
        stages: Vec<String>,
        /// True when this run continues from a checkpoint.
        resumed: bool,
    },
    StageStarted {
        stage: String,
        index: usize,
        total_stages: usize,
        total_steps: usize,
    },
    StageCompleted {
        stage: String,
        index: usize,
        duration_ms: u64,
    },
    StepStarted {
        step_id: String,
        /// `agent`, `bash` or `recipe`.
        kind: String,
        stage: Option<String>,
        /// Index within its step list (stage or recipe).
        index: usize,
        /// For loops: the number of items (foreach) or the maximum (while).
        iterations: Option<u64>,
    },
    StepOutput {
        step_id: String,
        stream: OutputStream,
        text: String,
    },
    OutputTruncated {
        step_id: String,
        stream: OutputStream,
        limit_bytes: u64,
    },
    StepCompleted {
        step_id: String,
        duration_ms: u64,
        /// The context variable that received the result.
        output_var: Option<String>,
        /// Bounded preview of the result.
        preview: Option<String>,
        exit_code: Option<i32>,
    },
    StepFailed {
        step_id: String,
        duration_ms: u64,
        error: String,
        exit_code: Option<i32>,
        handling: FailureHandling,
    },
    StepSkipped {
        step_id: String,
        reason: SkipReason,
    },
    SubRecipeStarted {
        step_id: String,
        recipe: String,
        depth: u32,
    },
    SubRecipeCompleted {
        step_id: String,
        recipe: String,
        status: RunStatus,
        duration_ms: u64,
    },
    LoopIteration {
        step_id: String,
        loop_kind: LoopKind,
        /// 1-based.
        iteration: u64,
        /// Items (foreach) or `max_while_iterations` (while).
        of: u64,
    },
    LoopCompleted {
        step_id: String,
        loop_kind: LoopKind,
        iterations: u64,
        ended_by: LoopEnd,
    },
    IterationFailed {
        step_id: String,
        /// 0-based, like the reference's messages.
        iteration: u64,
        error: String,
        handling: FailureHandling,
    },
    RetryScheduled {
        step_id: String,
        /// The attempt that failed (1-based).
        attempt: u32,
        max_attempts: u32,
        delay_ms: u64,
        error: String,
    },
    ApprovalRequested {
        stage: String,
        /// The prompt with variables substituted.
        prompt: String,
        timeout_secs: u64,
        default: ApprovalDefault,
    },
    ApprovalDecided {
        stage: String,
        decision: Decision,
        by: String,
        message: String,
        /// True when the gate's timeout applied its default.
        timed_out: bool,
    },
    Warning {
        step_id: Option<String>,
        message: String,
    },
    ExecutionCompleted {
        status: RunStatus,
        duration_ms: u64,
        error: Option<String>,
        failed_step: Option<String>,
        skipped_steps: Vec<String>,
    },
}

/// An event with its sequence number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SequencedEvent {
    pub seq: u64,
    pub event: Event,
}

struct SinkState {
    next_seq: u64,
    sender: Option<mpsc::Sender<SequencedEvent>>,
}

/// Numbers events and delivers them, in order, on a bounded channel.
/// Cloning shares the counter. If the receiver is gone, events are dropped
/// (the run itself goes on; the sink never fails the engine).
#[derive(Clone)]
pub struct EventSink {
    state: Arc<Mutex<SinkState>>,
}

impl EventSink {
    /// A sink numbering from 0, with a channel of `capacity` events.
    pub fn channel(capacity: usize) -> (EventSink, mpsc::Receiver<SequencedEvent>) {
        EventSink::channel_from(capacity, 0)
    }

    /// A sink numbering from `next_seq` (resuming from a checkpoint).
    pub fn channel_from(
        capacity: usize,
        next_seq: u64,
    ) -> (EventSink, mpsc::Receiver<SequencedEvent>) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        let sink = EventSink {
            state: Arc::new(Mutex::new(SinkState {
                next_seq,
                sender: Some(sender),
            })),
        };
        (sink, receiver)
    }

    /// A sink that numbers and discards events.
    pub fn discard() -> EventSink {
        EventSink {
            state: Arc::new(Mutex::new(SinkState {
                next_seq: 0,
                sender: None,
            })),
        }
    }

    /// Number `event` and wait until the channel accepted it.
    pub async fn emit(&self, event: Event) {
        let mut state = self.state.lock().await;
        let seq = state.next_seq;
        state.next_seq += 1;
        if let Some(sender) = &state.sender
            && sender.send(SequencedEvent { seq, event }).await.is_err()
        {
            state.sender = None;
        }
    }

    /// Closes the channel for every clone: events emitted after this are
    /// numbered and dropped, and the receiver ends once it has the rest.
    pub async fn close(&self) {
        self.state.lock().await.sender = None;
    }

    /// The number the next event will get.
    pub async fn next_seq(&self) -> u64 {
        self.state.lock().await.next_seq
    }
}

/// A bounded, human-readable preview of a value (text as is, other values as
/// JSON), cut at [`PREVIEW_CHARS`] characters with a marker.
pub fn preview(value: &Value) -> String {
    let text = crate::template::value_to_text(value);
    let n_chars = text.chars().count();
    if n_chars <= PREVIEW_CHARS {
        return text;
    }
    let cut: String = text.chars().take(PREVIEW_CHARS).collect();
    format!("{cut}… [{} more characters]", n_chars - PREVIEW_CHARS)
}

#[cfg(test)]
#[path = "event_tests.rs"]
mod tests;
