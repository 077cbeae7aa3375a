//! One step: condition, dispatch (agent / bash / sub-recipe) with retry,
//! rate limiting, timeout and cancellation, `on_error`, output storage.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Map, Value};

use super::{Flow, Frame, Halt, Position, Shared, run_body};
use crate::check::{CheckOptions, check};
use crate::event::{Event, FailureHandling, OutputStream, RunStatus, SkipReason, preview};
use crate::expr;
use crate::extract::{self, ResultSource};
use crate::model::{AgentStep, Backoff, BashStep, Loop, RecipeStep, Step, StepKind};
use crate::runner::{
    AgentMetadata, AgentRequest, BashRequest, BoxFuture, DEFAULT_MAX_OUTPUT_BYTES, RunnerError,
    StepIo,
};
use crate::template::{self, value_to_text};

/// Appended to agent prompts when `parse_json: true` (section 8.6).
pub const PARSE_JSON_INSTRUCTION: &str = "\n\nIMPORTANT: End your answer with the result as valid JSON \
(a single JSON object or array), preferably in a ```json code block. Do not add text after the JSON.";

/// Bound on stderr text quoted in error messages.
const MAX_ERROR_STDERR_CHARS: usize = 2_000;

/// A step that ran (or was skipped).
pub(crate) struct StepDone {
    pub flow: Flow,
    /// The step's result when it ran (None when skipped).
    pub result: Option<Value>,
}

/// One successful execution of a step's kind.
pub(crate) struct UnitOk {
    pub value: Value,
    pub exit_code: Option<i32>,
}

/// One failed execution of a step's kind.
pub(crate) enum UnitFailure {
    /// A bash command exited non-zero; `stdout` is the post-processed result.
    Exit {
        code: i32,
        stdout: Value,
        message: String,
    },
    /// A runtime failure that honours `on_error` (timeout, runner error,
    /// failed sub-recipe, recursion limit).
    Error(String),
    /// A failure that ignores `on_error` (template errors in the step's own fields).
    Fatal(String),
    /// Cancellation or a denied gate: stops everything.
    Halt(Halt),
}

impl UnitFailure {
    pub fn message(&self) -> String {
        match self {
            UnitFailure::Exit { message, .. }
            | UnitFailure::Error(message)
            | UnitFailure::Fatal(message) => message.clone(),
            UnitFailure::Halt(Halt::Failed { message, .. })
            | UnitFailure::Halt(Halt::Denied { message, .. }) => message.clone(),
            UnitFailure::Halt(Halt::Cancelled { .. }) => "cancelled".to_string(),
        }
    }

    /// The value a failed execution leaves under `on_error: continue`:
    /// stdout for a non-zero exit (compatible), null otherwise.
    pub fn continue_value(&self) -> Value {
        match self {
            UnitFailure::Exit { stdout, .. } => stdout.clone(),
            _ => Value::Null,
        }
    }

    pub fn exit_code(&self) -> Option<i32> {
        match self {
            UnitFailure::Exit { code, .. } => Some(*code),
            _ => None,
        }
    }
}

pub(crate) fn kind_name(step: &Step) -> String {
    step.kind.type_name().to_string()
}

pub(crate) fn mark_skipped(context: &mut Map<String, Value>, step_id: &str) {
    let entry = context
        .entry("_skipped_steps")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !entry.is_array() {
        *entry = Value::Array(Vec::new());
    }
    if let Value::Array(items) = entry {
        items.push(Value::String(step_id.to_string()));
    }
}

fn step_value(step: &Step, index: usize, stage: Option<&str>) -> Value {
    let mut map = Map::new();
    map.insert("id".into(), Value::String(step.id.clone()));
    map.insert("index".into(), Value::from(index));
    if let Some(stage) = stage {
        map.insert("stage".into(), Value::String(stage.to_string()));
    }
    Value::Object(map)
}

/// Run one step of a step list (top-level or inside a loop body).
pub(crate) fn execute_step<'a>(
    frame: &'a Frame,
    context: &'a mut Map<String, Value>,
    step: &'a Step,
    index: usize,
    stage: Option<&'a str>,
    top_level: bool,
) -> BoxFuture<'a, Result<StepDone, Halt>> {
    Box::pin(async move {
        let step_id = frame.display_id(&step.id);
        if frame.cancel.is_cancelled() {
            return Err(Halt::Cancelled {
                step_id: Some(step_id),
            });
        }
        if top_level {
            context.insert("step".into(), step_value(step, index, stage));
        }
        if let Some(condition) = step.condition.as_deref().filter(|c| !c.trim().is_empty()) {
            match expr::evaluate(condition, context) {
                Err(error) => {
                    let message = format!("Step '{}': condition error: {}", step.id, error.message);
                    frame
                        .emit(Event::StepFailed {
                            step_id: step_id.clone(),
                            duration_ms: 0,
                            error: message.clone(),
                            exit_code: None,
                            handling: FailureHandling::Fail,
                        })
                        .await;
                    return Err(Halt::Failed { step_id, message });
                }
                Ok(false) => {
                    mark_skipped(context, &step.id);
                    frame
                        .emit(Event::StepSkipped {
                            step_id,
                            reason: SkipReason::ConditionFalse {
                                condition: condition.to_string(),
                            },
                        })
                        .await;
                    return Ok(StepDone {
                        flow: Flow::Next,
                        result: None,
                    });
                }
                Ok(true) => {}
            }
        }
        match &step.looping {
            Some(Loop::Foreach(foreach)) => {
                super::loops::run_foreach(frame, context, step, foreach, index, stage, top_level)
                    .await
            }
            Some(Loop::While(while_loop)) => {
                super::loops::run_while(frame, context, step, while_loop, index, stage).await
            }
            None => run_single(frame, context, step, index, stage).await,
        }
    })
}

pub(crate) fn store_output(
    context: &mut Map<String, Value>,
    step: &Step,
    value: &Value,
    exit_code: Option<i32>,
) {
    if let Some(name) = &step.output {
        context.insert(name.clone(), value.clone());
    }
    if let (StepKind::Bash(bash), Some(code)) = (&step.kind, exit_code)
        && let Some(name) = &bash.output_exit_code
    {
        context.insert(name.clone(), Value::String(code.to_string()));
    }
}

async fn run_single(
    frame: &Frame,
    context: &mut Map<String, Value>,
    step: &Step,
    index: usize,
    stage: Option<&str>,
) -> Result<StepDone, Halt> {
    let step_id = frame.display_id(&step.id);
    frame
        .emit(Event::StepStarted {
            step_id: step_id.clone(),
            kind: kind_name(step),
            stage: stage.map(|s| frame.display_id(s)),
            index,
            iterations: None,
        })
        .await;
    let started = frame.now_ms();
    match run_unit(frame, context, step, index, None).await {
        Ok(unit) => {
            store_output(context, step, &unit.value, unit.exit_code);
            frame
                .emit(Event::StepCompleted {
                    step_id,
                    duration_ms: frame.now_ms().saturating_sub(started),
                    output_var: step.output.clone(),
                    preview: Some(preview(&unit.value)),
                    exit_code: unit.exit_code,
                })
                .await;
            Ok(StepDone {
                flow: Flow::Next,
                result: Some(unit.value),
            })
        }
        Err(failure) => handle_step_failure(frame, context, step, failure, started).await,
    }
}

/// `on_error` for a step that is not a loop.
async fn handle_step_failure(
    frame: &Frame,
    context: &mut Map<String, Value>,
    step: &Step,
    failure: UnitFailure,
    started: u64,
) -> Result<StepDone, Halt> {
    let step_id = frame.display_id(&step.id);
    let duration_ms = frame.now_ms().saturating_sub(started);
    let handling = match &failure {
        UnitFailure::Fatal(_) => FailureHandling::Fail,
        UnitFailure::Halt(Halt::Cancelled { .. }) => {
            return Err(Halt::Cancelled {
                step_id: Some(step_id),
            });
        }
        UnitFailure::Halt(halt @ Halt::Denied { .. }) => return Err(halt.clone()),
        UnitFailure::Halt(Halt::Failed { .. }) => FailureHandling::Fail,
        _ => FailureHandling::from(step.on_error),
    };
    frame
        .emit(Event::StepFailed {
            step_id: step_id.clone(),
            duration_ms,
            error: failure.message(),
            exit_code: failure.exit_code(),
            handling,
        })
        .await;
    match handling {
        FailureHandling::Fail => Err(Halt::Failed {
            step_id,
            message: format!("Step '{}': {}", step.id, failure.message()),
        }),
        FailureHandling::Continue => {
            let value = failure.continue_value();
            store_output(context, step, &value, failure.exit_code());
            Ok(StepDone {
                flow: Flow::Next,
                result: Some(value),
            })
        }
        FailureHandling::SkipRemaining => Ok(StepDone {
            flow: Flow::SkipRemaining {
                by_step: step.id.clone(),
            },
            result: None,
        }),
    }
}

/// Why a raced call did not finish.
pub(crate) enum Interrupt {
    Cancelled,
    TimedOut,
}

/// Race a runner call against the run's cancellation and the step timeout.
/// When either wins, the step's token is cancelled *before* the call's
/// future is dropped, so the runner can stop the work.
pub(crate) async fn race<T>(
    frame: &Frame,
    step_cancel: &tokio_util::sync::CancellationToken,
    timeout: Duration,
    call: BoxFuture<'_, T>,
) -> Result<T, Interrupt> {
    let mut call = call;
    let runner = frame.runner();
    let outcome = tokio::select! {
        biased;
        () = frame.cancel.cancelled() => Err(Interrupt::Cancelled),
        value = &mut call => Ok(value),
        () = runner.sleep(timeout) => Err(Interrupt::TimedOut),
    };
    if outcome.is_err() {
        step_cancel.cancel();
    }
    drop(call);
    outcome
}

/// Sleep on the runner's clock unless the run is cancelled first.
pub(crate) async fn sleep_or_cancel(frame: &Frame, duration: Duration) -> Result<(), Halt> {
    tokio::select! {
        biased;
        () = frame.cancel.cancelled() => Err(Halt::Cancelled { step_id: None }),
        () = frame.runner().sleep(duration) => Ok(()),
    }
}

fn retry_applies(step: &Step) -> bool {
    matches!(step.kind, StepKind::Agent(_) | StepKind::Bash(_))
}

/// One execution of the step's kind, with retries (agent and bash).
pub(crate) async fn run_unit(
    frame: &Frame,
    context: &Map<String, Value>,
    step: &Step,
    index: usize,
    group: Option<String>,
) -> Result<UnitOk, UnitFailure> {
    if let StepKind::Agent(_) = &step.kind {
        // Section 9.3: counted once per agent execution, before the call;
        // reaching the limit counts as exceeding it.
        let count = frame.shared.total_steps.fetch_add(1, Ordering::SeqCst) + 1;
        if count >= frame.limits.max_total_steps {
            return Err(UnitFailure::Error(format!(
                "Total steps {count} exceeds limit {}",
                frame.limits.max_total_steps
            )));
        }
    }
    let retry = step.retry.clone().unwrap_or_default();
    let max_attempts = if retry_applies(step) {
        retry.max_attempts.max(1)
    } else {
        1
    };
    let mut delay_secs = retry.initial_delay_secs.max(0.0);
    let mut attempt = 1u32;
    loop {
        if frame.cancel.is_cancelled() {
            return Err(UnitFailure::Halt(Halt::Cancelled {
                step_id: Some(frame.display_id(&step.id)),
            }));
        }
        let result = match &step.kind {
            StepKind::Agent(agent) => {
                run_agent(frame, context, step, agent, index, group.clone()).await
            }
            StepKind::Bash(bash) => run_bash(frame, context, step, bash).await,
            StepKind::Recipe(recipe) => run_sub_recipe(frame, context, step, recipe).await,
        };
        match result {
            Ok(ok) => return Ok(ok),
            Err(failure @ (UnitFailure::Fatal(_) | UnitFailure::Halt(_))) => return Err(failure),
            Err(failure) if attempt < max_attempts => {
                let sleep_secs = delay_secs.min(retry.max_delay_secs.max(0.0));
                let delay = Duration::from_secs_f64(sleep_secs);
                frame
                    .emit(Event::RetryScheduled {
                        step_id: frame.display_id(&step.id),
                        attempt,
                        max_attempts,
                        delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        error: failure.message(),
                    })
                    .await;
                sleep_or_cancel(frame, delay)
                    .await
                    .map_err(UnitFailure::Halt)?;
                if retry.backoff == Backoff::Exponential {
                    delay_secs *= 2.0;
                }
                attempt += 1;
            }
            Err(failure) => return Err(failure),
        }
    }
}

fn fatal(what: &str, error: &template::RenderError) -> UnitFailure {
    UnitFailure::Fatal(format!("{what}: {}", error.message))
}

fn render_opt(
    text: Option<&String>,
    context: &Map<String, Value>,
) -> Result<Option<String>, template::RenderError> {
    text.map(|t| template::render(t, context)).transpose()
}

async fn run_agent(
    frame: &Frame,
    context: &Map<String, Value>,
    step: &Step,
    agent: &AgentStep,
    index: usize,
    group: Option<String>,
) -> Result<UnitOk, UnitFailure> {
    let mut prompt = template::render(&agent.prompt, context).map_err(|e| fatal("prompt", &e))?;
    if let Some(mode) = &agent.mode {
        prompt = format!("MODE: {mode}\n\n{prompt}");
    }
    if step.parse_json {
        prompt.push_str(PARSE_JSON_INSTRUCTION);
    }
    let provider =
        render_opt(agent.provider.as_ref(), context).map_err(|e| fatal("provider", &e))?;
    let model = render_opt(agent.model.as_ref(), context).map_err(|e| fatal("model", &e))?;
    let step_id = frame.display_id(&step.id);
    let timeout = Duration::from_secs(step.timeout_secs);
    let request = AgentRequest {
        step_id: step_id.clone(),
        agent: agent.agent.clone(),
        prompt,
        agent_config: agent.agent_config.clone(),
        provider,
        model,
        provider_preferences: agent.provider_preferences.clone(),
        model_role: agent.model_role.clone(),
        orchestrator_config: frame.shared.orchestrator_config.clone(),
        timeout,
        metadata: AgentMetadata {
            recipe_name: frame.recipe.name.clone(),
            step_id: step.id.clone(),
            step_index: index,
            parallel_group_id: group,
        },
    };
    let runner = frame.runner();
    let permit = tokio::select! {
        biased;
        () = frame.cancel.cancelled() => return Err(UnitFailure::Halt(Halt::Cancelled { step_id: Some(step_id) })),
        permit = frame.shared.limiter.acquire(runner) => permit,
    };
    let io = StepIo::new(
        step_id.clone(),
        frame.cancel.child_token(),
        frame.shared.events.clone(),
    );
    let step_cancel = io.cancel().clone();
    let outcome = race(frame, &step_cancel, timeout, runner.agent(request, io)).await;
    let is_rate_limited = match &outcome {
        Ok(Err(RunnerError::RateLimited { .. })) => true,
        Ok(Err(RunnerError::Failed { message })) => {
            let lower = message.to_lowercase();
            lower.contains("429") || lower.contains("rate limit")
        }
        _ => false,
    };
    frame
        .shared
        .limiter
        .finish(
            runner.now_ms(),
            is_rate_limited,
            outcome.as_ref().is_ok_and(Result::is_ok),
        )
        .await;
    drop(permit);
    match outcome {
        Err(Interrupt::Cancelled) | Ok(Err(RunnerError::Cancelled)) => {
            Err(UnitFailure::Halt(Halt::Cancelled {
                step_id: Some(step_id),
            }))
        }
        Err(Interrupt::TimedOut) => Err(UnitFailure::Error(format!(
            "agent '{}' timed out after {}s",
            agent.agent, step.timeout_secs
        ))),
        Ok(Err(error)) => Err(UnitFailure::Error(error.to_string())),
        Ok(Ok(answer)) => Ok(UnitOk {
            value: extract::post_process(answer.output, ResultSource::Agent, step.parse_json),
            exit_code: None,
        }),
    }
}

/// Every context value referenced by `texts`, rendered to text, by dotted name
/// (the injection-free channel of Part A item 4).
fn referenced_vars<'t>(
    texts: impl Iterator<Item = &'t str>,
    context: &Map<String, Value>,
) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for text in texts {
        for placeholder in template::placeholders(text) {
            if let Ok(value) = template::resolve(context, &placeholder.path) {
                vars.insert(placeholder.dotted(), value_to_text(value));
            }
        }
    }
    vars
}

fn bounded(text: &str, max_chars: usize) -> String {
    let trimmed = text.trim();
    if trimmed.chars().count() <= max_chars {
        return trimmed.to_string();
    }
    let cut: String = trimmed.chars().take(max_chars).collect();
    format!("{cut}…")
}

async fn run_bash(
    frame: &Frame,
    context: &Map<String, Value>,
    step: &Step,
    bash: &BashStep,
) -> Result<UnitOk, UnitFailure> {
    let script = template::render(&bash.command, context).map_err(|e| fatal("command", &e))?;
    let cwd = render_opt(bash.cwd.as_ref(), context).map_err(|e| fatal("cwd", &e))?;
    let mut env = BTreeMap::new();
    for (key, value) in &bash.env {
        let text = match value {
            Value::String(text) => template::render(text, context).map_err(|e| fatal("env", &e))?,
            other => value_to_text(other),
        };
        env.insert(key.clone(), text);
    }
    let env_templates = bash.env.values().filter_map(Value::as_str);
    let vars = referenced_vars(
        std::iter::once(bash.command.as_str())
            .chain(bash.cwd.as_deref())
            .chain(env_templates),
        context,
    );
    let step_id = frame.display_id(&step.id);
    let timeout = Duration::from_secs(step.timeout_secs);
    let max_output_bytes = bash.max_output_size.unwrap_or(DEFAULT_MAX_OUTPUT_BYTES);
    let request = BashRequest {
        step_id: step_id.clone(),
        script,
        shell: bash.shell.clone(),
        env,
        cwd,
        timeout,
        max_output_bytes,
        vars,
    };
    let io = StepIo::new(
        step_id.clone(),
        frame.cancel.child_token(),
        frame.shared.events.clone(),
    );
    let step_cancel = io.cancel().clone();
    let outcome = race(
        frame,
        &step_cancel,
        timeout,
        frame.runner().bash(request, io),
    )
    .await;
    let timed_out =
        || UnitFailure::Error(format!("command timed out after {}s", step.timeout_secs));
    let outcome = match outcome {
        Err(Interrupt::Cancelled) | Ok(Err(RunnerError::Cancelled)) => {
            return Err(UnitFailure::Halt(Halt::Cancelled {
                step_id: Some(step_id),
            }));
        }
        Err(Interrupt::TimedOut) => return Err(timed_out()),
        Ok(Err(error)) => return Err(UnitFailure::Error(error.to_string())),
        Ok(Ok(outcome)) => outcome,
    };
    for (truncated, stream) in [
        (outcome.stdout_truncated, OutputStream::Stdout),
        (outcome.stderr_truncated, OutputStream::Stderr),
    ] {
        if truncated {
            frame
                .emit(Event::OutputTruncated {
                    step_id: step_id.clone(),
                    stream,
                    limit_bytes: max_output_bytes,
                })
                .await;
        }
    }
    if outcome.timed_out {
        return Err(timed_out());
    }
    let mut text = outcome.stdout;
    if bash.output_stderr {
        text.push_str(&outcome.stderr);
    }
    let value = extract::post_process(Value::String(text), ResultSource::Bash, step.parse_json);
    if outcome.exit_code != 0 {
        let stderr = bounded(&outcome.stderr, MAX_ERROR_STDERR_CHARS);
        let message = if stderr.is_empty() {
            format!("command failed with exit code {}", outcome.exit_code)
        } else {
            format!(
                "command failed with exit code {}: {stderr}",
                outcome.exit_code
            )
        };
        return Err(UnitFailure::Exit {
            code: outcome.exit_code,
            stdout: value,
            message,
        });
    }
    Ok(UnitOk {
        value,
        exit_code: Some(0),
    })
}

/// Validation codes about variable references, not blocking for sub-recipes.
const VARIABLE_CODES: [&str; 4] = [
    "undefined-variable",
    "unknown-namespace",
    "unknown-context-key",
    "not-a-dict",
];

/// Keys never returned from a sub-recipe (section 5.4).
const INTERNAL_KEYS: [&str; 5] = ["recipe", "session", "step", "stage", "_skipped_steps"];

async fn run_sub_recipe(
    frame: &Frame,
    context: &Map<String, Value>,
    step: &Step,
    recipe_step: &RecipeStep,
) -> Result<UnitOk, UnitFailure> {
    let path = template::render(&recipe_step.recipe, context).map_err(|e| fatal("recipe", &e))?;
    let passed = template::render_value(&Value::Object(recipe_step.context.clone()), context)
        .map_err(|e| fatal("context", &e))?;
    let Value::Object(passed) = passed else {
        return Err(UnitFailure::Fatal("context must be a mapping".into()));
    };
    let limits = recipe_step.recursion.unwrap_or(frame.limits);
    let depth = frame.depth + 1;
    if depth >= limits.max_depth {
        return Err(UnitFailure::Error(format!(
            "Recipe recursion depth {depth} exceeds limit {}. Stack: {} -> {path}",
            limits.max_depth,
            frame.stack.join(" -> ")
        )));
    }
    let step_id = frame.display_id(&step.id);
    let timeout = Duration::from_secs(step.timeout_secs);
    let step_cancel = frame.cancel.child_token();
    let source = match race(
        frame,
        &step_cancel,
        timeout,
        frame.runner().load_recipe(&path),
    )
    .await
    {
        Err(Interrupt::Cancelled) | Ok(Err(RunnerError::Cancelled)) => {
            return Err(UnitFailure::Halt(Halt::Cancelled {
                step_id: Some(step_id),
            }));
        }
        Err(Interrupt::TimedOut) => {
            return Err(UnitFailure::Error(format!(
                "loading sub-recipe '{path}' timed out"
            )));
        }
        Ok(Err(error)) => return Err(UnitFailure::Error(error.to_string())),
        Ok(Ok(source)) => source,
    };
    let checked = check(&source, &CheckOptions::default());
    // A child's variables come from the passed context at run time, so
    // reference checks are left to rendering (which fails with the exact path).
    let blocking: Vec<_> = checked
        .errors()
        .filter(|d| !VARIABLE_CODES.contains(&d.code.as_str()))
        .collect();
    let child_recipe = match checked.recipe.clone() {
        Some(recipe) if blocking.is_empty() => recipe,
        _ => {
            let problems: Vec<String> = blocking
                .iter()
                .take(5)
                .map(|d| format!("{} ({}:{})", d.message, d.line, d.column))
                .collect();
            return Err(UnitFailure::Error(format!(
                "Sub-recipe '{path}' is invalid: {}",
                problems.join("; ")
            )));
        }
    };
    let mut child_context = child_recipe.context.clone();
    for (key, value) in &passed {
        child_context.insert(key.clone(), value.clone());
    }
    child_context.insert("recipe".into(), super::recipe_value(&child_recipe));
    child_context.insert("session".into(), frame.shared.session.clone());
    let mut stack = frame.stack.clone();
    stack.push(child_recipe.name.clone());
    let child_name = child_recipe.name.clone();
    let child = Frame {
        shared: Arc::<Shared>::clone(&frame.shared),
        recipe: Arc::new(child_recipe),
        depth,
        limits,
        stack,
        prefix: format!("{step_id}/"),
        cancel: step_cancel.clone(),
        is_root: false,
    };
    frame
        .emit(Event::SubRecipeStarted {
            step_id: step_id.clone(),
            recipe: child_name.clone(),
            depth,
        })
        .await;
    let started = frame.now_ms();
    let outcome = {
        let body = run_body(&child, &mut child_context, Position::default());
        race(frame, &step_cancel, timeout, Box::pin(body)).await
    };
    let status = match &outcome {
        Ok(Ok(Flow::Next)) => RunStatus::Succeeded,
        Ok(Ok(Flow::SkipRemaining { .. })) => RunStatus::Partial,
        Ok(Err(Halt::Failed { .. })) | Err(Interrupt::TimedOut) => RunStatus::Failed,
        Ok(Err(Halt::Denied { .. })) => RunStatus::Denied,
        Ok(Err(Halt::Cancelled { .. })) | Err(Interrupt::Cancelled) => RunStatus::Cancelled,
    };
    frame
        .emit(Event::SubRecipeCompleted {
            step_id: step_id.clone(),
            recipe: child_name,
            status,
            duration_ms: frame.now_ms().saturating_sub(started),
        })
        .await;
    match outcome {
        Ok(Ok(_)) => {
            let mut result = Map::new();
            for (key, value) in child_context {
                let is_internal =
                    INTERNAL_KEYS.contains(&key.as_str()) || key.starts_with("_child_session_");
                if passed.contains_key(&key) || is_internal {
                    continue;
                }
                result.insert(key, value);
            }
            Ok(UnitOk {
                value: Value::Object(result),
                exit_code: None,
            })
        }
        Ok(Err(Halt::Failed { message, .. })) => Err(UnitFailure::Error(format!(
            "sub-recipe '{path}' failed: {message}"
        ))),
        Ok(Err(halt @ Halt::Denied { .. })) => Err(UnitFailure::Halt(halt)),
        Ok(Err(Halt::Cancelled { .. })) | Err(Interrupt::Cancelled) => {
            Err(UnitFailure::Halt(Halt::Cancelled {
                step_id: Some(step_id),
            }))
        }
        Err(Interrupt::TimedOut) => Err(UnitFailure::Error(format!(
            "sub-recipe '{path}' timed out after {}s",
            step.timeout_secs
        ))),
    }
}
