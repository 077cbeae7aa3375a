//! Loops: foreach (sequential and parallel) and while (sections 5.5, 5.6).
//!
//! * The loop variable (`as`) and `_loop_index` / `_loop_iteration` are set for
//!   each iteration and the values they shadowed are restored after the loop
//!   (the reference deleted them, W19).
//! * Parallel iterations each work on a copy of the context; at most `N` run at
//!   once (`parallel: N`), all of them with `parallel: true`. Nested bodies work
//!   in parallel loops too.
//! * A while loop stopped by `max_while_iterations` emits a `warning` and a
//!   `loop_completed` with `ended_by: max_iterations` (the reference was silent).

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Map, Value};

use super::step::{
    StepDone, UnitFailure, execute_step, kind_name, mark_skipped, run_unit, sleep_or_cancel,
};
use super::{Flow, ForeachProgress, Frame, Halt};
use crate::event::{Event, FailureHandling, LoopEnd, LoopKind, SkipReason, preview};
use crate::expr;
use crate::model::{Foreach, OnError, Parallel, Step, StepKind, While};
use crate::template;

/// The result of one loop iteration.
pub(crate) struct BodyOk {
    pub value: Option<Value>,
    pub exit_code: Option<i32>,
    /// A step inside the body ended the list with `skip_remaining`.
    pub skip: Option<String>,
}

/// Run the loop body once: the step's own kind, or its nested steps in order
/// (the iteration result is the last sub-step result that ran).
pub(crate) async fn run_body_once(
    frame: &Frame,
    context: &mut Map<String, Value>,
    step: &Step,
    index: usize,
    stage: Option<&str>,
    group: Option<String>,
) -> Result<BodyOk, UnitFailure> {
    if step.body.is_empty() {
        let unit = run_unit(frame, context, step, index, group).await?;
        return Ok(BodyOk {
            value: Some(unit.value),
            exit_code: unit.exit_code,
            skip: None,
        });
    }
    let mut last = None;
    for (sub_idx, sub_step) in step.body.iter().enumerate() {
        match execute_step(frame, context, sub_step, sub_idx, stage, false).await {
            Ok(StepDone { flow, result }) => {
                if result.is_some() {
                    last = result;
                }
                if let Flow::SkipRemaining { by_step } = flow {
                    return Ok(BodyOk {
                        value: last,
                        exit_code: None,
                        skip: Some(by_step),
                    });
                }
            }
            Err(Halt::Failed { message, .. }) => return Err(UnitFailure::Error(message)),
            Err(halt) => return Err(UnitFailure::Halt(halt)),
        }
    }
    Ok(BodyOk {
        value: last,
        exit_code: None,
        skip: None,
    })
}

/// Save the current value of `names` (removing them) for [`restore`].
fn take_vars(context: &mut Map<String, Value>, names: &[&str]) -> Vec<(String, Option<Value>)> {
    names
        .iter()
        .map(|name| (name.to_string(), context.remove(*name)))
        .collect()
}

fn restore(context: &mut Map<String, Value>, saved: Vec<(String, Option<Value>)>) {
    for (name, value) in saved {
        context.remove(&name);
        if let Some(value) = value {
            context.insert(name, value);
        }
    }
}

fn resolve_items(text: &str, context: &Map<String, Value>) -> Result<Vec<Value>, String> {
    let trimmed = text.trim_start();
    let Some(placeholder) = template::placeholders(trimmed)
        .into_iter()
        .find(|p| p.start == 0)
    else {
        return Err(format!(
            "Invalid foreach syntax: '{text}' must start with a {{{{variable}}}} reference"
        ));
    };
    let value = template::resolve(context, &placeholder.path)
        .map_err(|error| format!("Undefined variable in foreach: {}", error.message))?;
    match value {
        Value::Array(items) => Ok(items.clone()),
        other => Err(format!(
            "foreach variable must be a list, got {}",
            template::python_type_name(other)
        )),
    }
}

async fn fail_step(frame: &Frame, step: &Step, started: u64, message: String) -> Halt {
    let step_id = frame.display_id(&step.id);
    frame
        .emit(Event::StepFailed {
            step_id: step_id.clone(),
            duration_ms: frame.now_ms().saturating_sub(started),
            error: message.clone(),
            exit_code: None,
            handling: FailureHandling::Fail,
        })
        .await;
    Halt::Failed { step_id, message }
}

/// Store a finished loop's results and report it.
#[allow(clippy::too_many_arguments)]
async fn finish_loop(
    frame: &Frame,
    context: &mut Map<String, Value>,
    step: &Step,
    collect: Option<&String>,
    results: Vec<Value>,
    loop_kind: LoopKind,
    ended_by: LoopEnd,
    started: u64,
) -> StepDone {
    let step_id = frame.display_id(&step.id);
    let iterations = results.len() as u64;
    let last = results.last().cloned();
    let stored = match collect {
        Some(name) => {
            let list = Value::Array(results);
            context.insert(name.clone(), list.clone());
            Some(list)
        }
        None => {
            if let (Some(name), Some(value)) = (&step.output, &last) {
                context.insert(name.clone(), value.clone());
            }
            last.clone()
        }
    };
    frame
        .emit(Event::LoopCompleted {
            step_id: step_id.clone(),
            loop_kind,
            iterations,
            ended_by,
        })
        .await;
    frame
        .emit(Event::StepCompleted {
            step_id,
            duration_ms: frame.now_ms().saturating_sub(started),
            output_var: collect.cloned().or_else(|| step.output.clone()),
            preview: stored.as_ref().map(preview),
            exit_code: None,
        })
        .await;
    StepDone {
        flow: Flow::Next,
        result: Some(last.unwrap_or(Value::Null)),
    }
}

/// How a foreach or while loop ended, for [`conclude_loop`].
struct LoopEnding<'a> {
    kind: LoopKind,
    collect: Option<&'a String>,
    results: Vec<Value>,
    /// `Flow::SkipRemaining` when an iteration asked to skip the rest.
    flow: Flow,
    skip_error: Option<String>,
    ended_by: LoopEnd,
    started: u64,
}

/// The common end of both loop kinds: a skip-remaining is reported as such
/// (nothing is stored); otherwise the results are stored and reported.
async fn conclude_loop(
    frame: &Frame,
    context: &mut Map<String, Value>,
    step: &Step,
    ending: LoopEnding<'_>,
) -> StepDone {
    if let Flow::SkipRemaining { .. } = &ending.flow {
        report_skip(
            frame,
            step,
            ending.started,
            ending.kind,
            ending.results.len() as u64,
            ending.skip_error,
        )
        .await;
        return StepDone {
            flow: ending.flow,
            result: ending.results.last().cloned(),
        };
    }
    finish_loop(
        frame,
        context,
        step,
        ending.collect,
        ending.results,
        ending.kind,
        ending.ended_by,
        ending.started,
    )
    .await
}

async fn report_skip(
    frame: &Frame,
    step: &Step,
    started: u64,
    loop_kind: LoopKind,
    iterations: u64,
    error: Option<String>,
) {
    let step_id = frame.display_id(&step.id);
    frame
        .emit(Event::LoopCompleted {
            step_id: step_id.clone(),
            loop_kind,
            iterations,
            ended_by: LoopEnd::SkipRemaining,
        })
        .await;
    if let Some(error) = error {
        frame
            .emit(Event::StepFailed {
                step_id,
                duration_ms: frame.now_ms().saturating_sub(started),
                error,
                exit_code: None,
                handling: FailureHandling::SkipRemaining,
            })
            .await;
    }
}

pub(crate) async fn run_foreach(
    frame: &Frame,
    context: &mut Map<String, Value>,
    step: &Step,
    foreach: &Foreach,
    index: usize,
    stage: Option<&str>,
    top_level: bool,
) -> Result<StepDone, Halt> {
    let step_id = frame.display_id(&step.id);
    let started = frame.now_ms();
    let items = match resolve_items(&foreach.foreach, context) {
        Ok(items) => items,
        Err(message) => {
            return Err(fail_step(
                frame,
                step,
                started,
                format!("Step '{}': {message}", step.id),
            )
            .await);
        }
    };
    let n_items = items.len() as u64;
    if n_items > foreach.max_iterations {
        let message = format!(
            "Step '{}': foreach list exceeds max_iterations ({n_items} > {})",
            step.id, foreach.max_iterations
        );
        return Err(fail_step(frame, step, started, message).await);
    }
    if items.is_empty() {
        mark_skipped(context, &step.id);
        if let Some(collect) = &foreach.collect {
            context.insert(collect.clone(), Value::Array(Vec::new()));
        }
        frame
            .emit(Event::StepSkipped {
                step_id,
                reason: SkipReason::EmptyList,
            })
            .await;
        return Ok(StepDone {
            flow: Flow::Next,
            result: None,
        });
    }
    frame
        .emit(Event::StepStarted {
            step_id: step_id.clone(),
            kind: kind_name(step),
            stage: stage.map(|s| frame.display_id(s)),
            index,
            iterations: Some(n_items),
        })
        .await;
    match foreach.parallel {
        Parallel::Sequential => {
            run_sequential(
                frame, context, step, foreach, items, index, stage, top_level, started,
            )
            .await
        }
        Parallel::Unbounded => {
            run_parallel(
                frame,
                context,
                step,
                foreach,
                items,
                index,
                stage,
                usize::MAX,
                started,
            )
            .await
        }
        Parallel::Limit(limit) => {
            let limit = usize::try_from(limit.max(1)).unwrap_or(1);
            run_parallel(
                frame, context, step, foreach, items, index, stage, limit, started,
            )
            .await
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_sequential(
    frame: &Frame,
    context: &mut Map<String, Value>,
    step: &Step,
    foreach: &Foreach,
    items: Vec<Value>,
    index: usize,
    stage: Option<&str>,
    top_level: bool,
    started: u64,
) -> Result<StepDone, Halt> {
    let step_id = frame.display_id(&step.id);
    let n_items = items.len() as u64;
    let checkpointing = foreach.checkpoint_iterations && frame.is_root && top_level;
    let mut results: Vec<Value> = Vec::new();
    let mut first = 0u64;
    if checkpointing {
        let progress = frame.shared.state.lock().await.foreach.clone();
        if let Some(progress) = progress.filter(|p| p.step_id == step.id) {
            if progress.total != n_items {
                frame
                    .emit(Event::Warning {
                        step_id: Some(step_id.clone()),
                        message: format!(
                            "items count changed since the checkpoint ({} -> {n_items})",
                            progress.total
                        ),
                    })
                    .await;
            }
            first = progress.completed.min(n_items);
            results = progress.collected.unwrap_or_default();
            if results.is_empty()
                && let Some(last) = progress.last
            {
                results.push(last);
            }
        }
    }
    let saved = take_vars(
        context,
        &[foreach.as_name.as_str(), "_loop_index", "_loop_iteration"],
    );
    let delay_between = match &step.kind {
        StepKind::Bash(bash) => bash.delay_between_ms.filter(|ms| *ms > 0),
        _ => None,
    };
    let mut flow = Flow::Next;
    let mut skip_error = None;
    for (item_idx, item) in items
        .into_iter()
        .enumerate()
        .skip(usize::try_from(first).unwrap_or(0))
    {
        let iteration = item_idx as u64;
        if frame.cancel.is_cancelled() {
            restore(context, saved);
            return Err(Halt::Cancelled {
                step_id: Some(step_id),
            });
        }
        if iteration > first
            && let Some(ms) = delay_between
            && let Err(halt) = sleep_or_cancel(frame, Duration::from_millis(ms)).await
        {
            restore(context, saved);
            return Err(halt);
        }
        context.insert(foreach.as_name.clone(), item);
        context.insert("_loop_index".into(), Value::from(iteration));
        context.insert("_loop_iteration".into(), Value::from(iteration + 1));
        frame
            .emit(Event::LoopIteration {
                step_id: step_id.clone(),
                loop_kind: LoopKind::Foreach,
                iteration: iteration + 1,
                of: n_items,
            })
            .await;
        match run_body_once(frame, context, step, index, stage, None).await {
            Ok(body) => {
                if let (Some(code), StepKind::Bash(bash)) = (body.exit_code, &step.kind)
                    && let Some(name) = &bash.output_exit_code
                {
                    context.insert(name.clone(), Value::String(code.to_string()));
                }
                results.push(body.value.unwrap_or(Value::Null));
                if let Some(by_step) = body.skip {
                    flow = Flow::SkipRemaining { by_step };
                    break;
                }
            }
            Err(UnitFailure::Halt(Halt::Cancelled { .. })) => {
                restore(context, saved);
                return Err(Halt::Cancelled {
                    step_id: Some(step_id),
                });
            }
            Err(UnitFailure::Halt(halt)) => {
                restore(context, saved);
                return Err(halt);
            }
            Err(failure) => {
                let message = failure.message();
                let handling = match failure {
                    UnitFailure::Fatal(_) => FailureHandling::Fail,
                    _ => FailureHandling::from(step.on_error),
                };
                frame
                    .emit(Event::IterationFailed {
                        step_id: step_id.clone(),
                        iteration,
                        error: message.clone(),
                        handling,
                    })
                    .await;
                match handling {
                    FailureHandling::Fail => {
                        restore(context, saved);
                        let message =
                            format!("Step '{}' iteration {iteration} failed: {message}", step.id);
                        return Err(fail_step(frame, step, started, message).await);
                    }
                    FailureHandling::Continue => {
                        if let (Some(code), StepKind::Bash(bash)) =
                            (failure.exit_code(), &step.kind)
                            && let Some(name) = &bash.output_exit_code
                        {
                            context.insert(name.clone(), Value::String(code.to_string()));
                        }
                        results.push(failure.continue_value());
                    }
                    FailureHandling::SkipRemaining => {
                        skip_error = Some(format!(
                            "Step '{}' iteration {iteration} failed: {message}",
                            step.id
                        ));
                        flow = Flow::SkipRemaining {
                            by_step: step.id.clone(),
                        };
                        break;
                    }
                }
            }
        }
        if checkpointing {
            {
                let mut state = frame.shared.state.lock().await;
                state.foreach = Some(ForeachProgress {
                    step_id: step.id.clone(),
                    completed: iteration + 1,
                    total: n_items,
                    collected: foreach.collect.as_ref().map(|_| results.clone()),
                    last: results.last().cloned(),
                });
            }
            // The checkpoint must not see the loop variables as real context.
            let mut snapshot = context.clone();
            for (name, value) in &saved {
                snapshot.remove(name);
                if let Some(value) = value {
                    snapshot.insert(name.clone(), value.clone());
                }
            }
            frame.save_checkpoint(&snapshot).await;
        }
    }
    restore(context, saved);
    let ending = LoopEnding {
        kind: LoopKind::Foreach,
        collect: foreach.collect.as_ref(),
        results,
        flow,
        skip_error,
        ended_by: LoopEnd::Exhausted,
        started,
    };
    Ok(conclude_loop(frame, context, step, ending).await)
}

#[allow(clippy::too_many_arguments)]
async fn run_parallel(
    frame: &Frame,
    context: &mut Map<String, Value>,
    step: &Step,
    foreach: &Foreach,
    items: Vec<Value>,
    index: usize,
    stage: Option<&str>,
    limit: usize,
    started: u64,
) -> Result<StepDone, Halt> {
    let step_id = frame.display_id(&step.id);
    let n_items = items.len();
    if matches!(step.kind, StepKind::Agent(_)) && step.body.is_empty() {
        let used = frame
            .shared
            .total_steps
            .load(std::sync::atomic::Ordering::SeqCst);
        let needed = u32::try_from(n_items).unwrap_or(u32::MAX);
        if used.saturating_add(needed) >= frame.limits.max_total_steps {
            let message = format!(
                "Step '{}': Parallel loop would exceed max_total_steps ({used} + {needed} >= {})",
                step.id, frame.limits.max_total_steps
            );
            return Err(fail_step(frame, step, started, message).await);
        }
    }
    let group_number = frame
        .shared
        .group_counter
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let group = format!("{step_id}#{group_number}");
    let base: &Map<String, Value> = context;
    let iterations = items.into_iter().enumerate().map(|(item_idx, item)| {
        let mut local = base.clone();
        local.insert(foreach.as_name.clone(), item);
        local.insert("_loop_index".into(), Value::from(item_idx));
        local.insert("_loop_iteration".into(), Value::from(item_idx + 1));
        let group = group.clone();
        let step_id = step_id.clone();
        async move {
            frame
                .emit(Event::LoopIteration {
                    step_id,
                    loop_kind: LoopKind::ParallelForeach,
                    iteration: item_idx as u64 + 1,
                    of: n_items as u64,
                })
                .await;
            let result = run_body_once(frame, &mut local, step, index, stage, Some(group)).await;
            (item_idx, result)
        }
    });
    let mut outcomes: Vec<(usize, Result<BodyOk, UnitFailure>)> = futures::stream::iter(iterations)
        .buffer_unordered(limit.min(n_items).max(1))
        .collect()
        .await;
    outcomes.sort_by_key(|(item_idx, _)| *item_idx);

    let mut results = Vec::with_capacity(n_items);
    let mut failures = Vec::new();
    let mut halt = None;
    let mut skip_by = None;
    for (item_idx, outcome) in outcomes {
        match outcome {
            Ok(body) => {
                results.push(body.value.unwrap_or(Value::Null));
                if skip_by.is_none() {
                    skip_by = body.skip;
                }
            }
            Err(UnitFailure::Halt(h)) => {
                halt.get_or_insert(h);
                results.push(Value::Null);
            }
            Err(failure) => {
                let handling = match failure {
                    UnitFailure::Fatal(_) => FailureHandling::Fail,
                    _ => FailureHandling::from(step.on_error),
                };
                frame
                    .emit(Event::IterationFailed {
                        step_id: step_id.clone(),
                        iteration: item_idx as u64,
                        error: failure.message(),
                        handling,
                    })
                    .await;
                failures.push((item_idx, failure.message(), handling));
                results.push(failure.continue_value());
            }
        }
    }
    if let Some(halt) = halt {
        return Err(match halt {
            Halt::Cancelled { .. } => Halt::Cancelled {
                step_id: Some(step_id),
            },
            other => other,
        });
    }
    let any_fatal = failures.iter().any(|(_, _, h)| *h == FailureHandling::Fail);
    if !failures.is_empty() && (step.on_error == OnError::Fail || any_fatal) {
        let details: Vec<String> = failures
            .iter()
            .map(|(item_idx, message, _)| format!("iteration {item_idx} failed: {message}"))
            .collect();
        let message = format!(
            "Step '{}': {}/{n_items} iterations failed: {}",
            step.id,
            failures.len(),
            details.join("; ")
        );
        return Err(fail_step(frame, step, started, message).await);
    }
    let skip_by = skip_by.or_else(|| {
        (!failures.is_empty() && step.on_error == OnError::SkipRemaining).then(|| step.id.clone())
    });
    let done = finish_loop(
        frame,
        context,
        step,
        foreach.collect.as_ref(),
        results,
        LoopKind::ParallelForeach,
        if skip_by.is_some() {
            LoopEnd::SkipRemaining
        } else {
            LoopEnd::Exhausted
        },
        started,
    )
    .await;
    Ok(match skip_by {
        Some(by_step) => StepDone {
            flow: Flow::SkipRemaining { by_step },
            result: done.result,
        },
        None => done,
    })
}

pub(crate) async fn run_while(
    frame: &Frame,
    context: &mut Map<String, Value>,
    step: &Step,
    while_loop: &While,
    index: usize,
    stage: Option<&str>,
) -> Result<StepDone, Halt> {
    let step_id = frame.display_id(&step.id);
    let started = frame.now_ms();
    let max = while_loop.max_while_iterations;
    frame
        .emit(Event::StepStarted {
            step_id: step_id.clone(),
            kind: kind_name(step),
            stage: stage.map(|s| frame.display_id(s)),
            index,
            iterations: Some(max),
        })
        .await;
    let saved = take_vars(context, &["_loop_index", "_loop_iteration"]);
    let is_always = while_loop.condition.trim().eq_ignore_ascii_case("true");
    let mut results: Vec<Value> = Vec::new();
    let mut iteration = 0u64;
    let mut flow = Flow::Next;
    let mut skip_error = None;
    let ended_by = loop {
        if frame.cancel.is_cancelled() {
            restore(context, saved);
            return Err(Halt::Cancelled {
                step_id: Some(step_id),
            });
        }
        if iteration >= max {
            frame
                .emit(Event::Warning {
                    step_id: Some(step_id.clone()),
                    message: format!(
                        "while loop stopped by max_while_iterations ({max}) before its condition became false"
                    ),
                })
                .await;
            break LoopEnd::MaxIterations;
        }
        if !is_always {
            match expr::evaluate(&while_loop.condition, context) {
                Ok(true) => {}
                Ok(false) => break LoopEnd::ConditionFalse,
                Err(error) => {
                    restore(context, saved);
                    let message = format!(
                        "Step '{}': while_condition error: {}",
                        step.id, error.message
                    );
                    return Err(fail_step(frame, step, started, message).await);
                }
            }
        }
        context.insert("_loop_index".into(), Value::from(iteration));
        context.insert("_loop_iteration".into(), Value::from(iteration + 1));
        frame
            .emit(Event::LoopIteration {
                step_id: step_id.clone(),
                loop_kind: LoopKind::While,
                iteration: iteration + 1,
                of: max,
            })
            .await;
        let value = match run_body_once(frame, context, step, index, stage, None).await {
            Ok(body) => {
                if let Some(by_step) = body.skip {
                    results.push(body.value.unwrap_or(Value::Null));
                    flow = Flow::SkipRemaining { by_step };
                    break LoopEnd::SkipRemaining;
                }
                body.value.unwrap_or(Value::Null)
            }
            Err(UnitFailure::Halt(halt)) => {
                restore(context, saved);
                return Err(match halt {
                    Halt::Cancelled { .. } => Halt::Cancelled {
                        step_id: Some(step_id),
                    },
                    other => other,
                });
            }
            Err(failure) => {
                let message = failure.message();
                let handling = match failure {
                    UnitFailure::Fatal(_) => FailureHandling::Fail,
                    _ => FailureHandling::from(step.on_error),
                };
                frame
                    .emit(Event::IterationFailed {
                        step_id: step_id.clone(),
                        iteration,
                        error: message.clone(),
                        handling,
                    })
                    .await;
                match handling {
                    FailureHandling::Fail => {
                        restore(context, saved);
                        let message =
                            format!("Step '{}' iteration {iteration} failed: {message}", step.id);
                        return Err(fail_step(frame, step, started, message).await);
                    }
                    FailureHandling::Continue => failure.continue_value(),
                    FailureHandling::SkipRemaining => {
                        skip_error = Some(format!(
                            "Step '{}' iteration {iteration} failed: {message}",
                            step.id
                        ));
                        flow = Flow::SkipRemaining {
                            by_step: step.id.clone(),
                        };
                        break LoopEnd::SkipRemaining;
                    }
                }
            }
        };
        // A single-step body's result is visible to update_context and the
        // next condition under the step's output name.
        if let Some(name) = &step.output {
            context.insert(name.clone(), value.clone());
        }
        results.push(value);
        iteration += 1;
        for update in &while_loop.update_context {
            match template::render(&update.value, context) {
                Ok(text) => {
                    context.insert(update.name.clone(), Value::String(text));
                }
                Err(error) => {
                    restore(context, saved);
                    let message = format!(
                        "Step '{}': update_context '{}': {}",
                        step.id, update.name, error.message
                    );
                    return Err(fail_step(frame, step, started, message).await);
                }
            }
        }
        if let Some(break_when) = while_loop
            .break_when
            .as_deref()
            .filter(|b| !b.trim().is_empty())
        {
            match expr::evaluate(break_when, context) {
                Ok(true) => break LoopEnd::BreakWhen,
                Ok(false) => {}
                Err(error) => {
                    restore(context, saved);
                    let message =
                        format!("Step '{}': break_when error: {}", step.id, error.message);
                    return Err(fail_step(frame, step, started, message).await);
                }
            }
        }
    };
    restore(context, saved);
    let ending = LoopEnding {
        kind: LoopKind::While,
        collect: while_loop.collect.as_ref(),
        results,
        flow,
        skip_error,
        ended_by,
        started,
    };
    Ok(conclude_loop(frame, context, step, ending).await)
}
