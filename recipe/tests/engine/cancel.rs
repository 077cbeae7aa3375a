//! test_cancellation.py (engine parts): cancellation interrupts running
//! steps, is never lost, and reaches sub-recipes and parallel iterations.

use std::time::Duration;

use recipe::event::RunStatus;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::harness::*;

fn cancel_after(secs: u64) -> CancellationToken {
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(secs)).await;
        trigger.cancel();
    });
    cancel
}

#[tokio::test(start_paused = true)]
async fn cancel_mid_step_interrupts_it() {
    // The reference lost a request made while a step ran and never interrupted
    // the process (W11).
    let recipe = flat(
        "  - id: one\n    type: bash\n    command: sleep 100\n  - id: two\n    type: bash\n    command: echo two\n",
    );
    let fake = Fake::new()
        .bash(|_, _| exit(0, "done\n").after(100.0))
        .arc();
    let started = tokio::time::Instant::now();
    let ran = run_with(&recipe, json!({}), &fake, cancel_after(3)).await;
    assert_eq!(ran.outcome.status, RunStatus::Cancelled);
    assert_eq!(started.elapsed().as_secs(), 3);
    assert_eq!(ran.error(), "execution cancelled at step 'one'");
    assert_eq!(fake.scripts(), ["sleep 100"], "step two never runs");
    assert_eq!(fake.cancelled_tokens(), ["one"]);
    assert_eq!(ran.lines(), ["start flat", "run one", "end Cancelled"]);
    // Cancelled runs stay resumable at the interrupted step.
    assert_eq!(ran.outcome.checkpoint.finished, None);
    assert_eq!(ran.outcome.checkpoint.position.step, 0);
}

#[tokio::test(start_paused = true)]
async fn cancel_before_start_runs_nothing() {
    let recipe = flat("  - id: one\n    agent: dev\n    prompt: x\n");
    let fake = Fake::new().arc();
    let cancel = CancellationToken::new();
    cancel.cancel();
    let ran = run_with(&recipe, json!({}), &fake, cancel).await;
    assert_eq!(ran.outcome.status, RunStatus::Cancelled);
    assert_eq!(ran.outcome.failed_step.as_deref(), Some("one"));
    assert!(fake.prompts().is_empty());
}

#[tokio::test(start_paused = true)]
async fn cancel_during_foreach_stops_before_the_next_iteration() {
    let recipe = load(&format!(
        "{HEADER}context:\n  items: [1, 2, 3, 4, 5]\nsteps:\n  - id: l\n    agent: dev\n    prompt: \"{{{{item}}}}\"\n    foreach: \"{{{{items}}}}\"\n"
    ));
    // Each call takes 10 s; cancel during the 2nd call. Unlike the reference
    // (which finished the running call), Kiln interrupts the 2nd call.
    let fake = Fake::new()
        .agent(|request, _| text(&request.prompt).after(10.0))
        .arc();
    let ran = run_with(&recipe, json!({}), &fake, cancel_after(15)).await;
    assert_eq!(ran.outcome.status, RunStatus::Cancelled);
    assert_eq!(fake.prompts(), ["1", "2"]);
}

#[tokio::test(start_paused = true)]
async fn cancel_reaches_sub_recipes_and_parallel_iterations() {
    let child = "name: child\ndescription: c\nversion: 1.0.0\nsteps:\n  - id: inner\n    type: bash\n    command: slow\n  - id: inner2\n    type: bash\n    command: never\n";
    let recipe = flat(
        "  - id: call\n    type: recipe\n    recipe: child.yaml\n  - id: after\n    type: bash\n    command: never\n",
    );
    let fake = Fake::new()
        .recipe("child.yaml", child)
        .bash(|_, _| exit(0, "").after(50.0))
        .arc();
    let ran = run_with(&recipe, json!({}), &fake, cancel_after(5)).await;
    assert_eq!(ran.outcome.status, RunStatus::Cancelled);
    assert_eq!(fake.scripts(), ["slow"]);
    assert_eq!(fake.cancelled_tokens(), ["call/inner"]);

    let recipe = load(&format!(
        "{HEADER}context:\n  items: [1, 2, 3]\nsteps:\n  - id: p\n    type: bash\n    command: \"w {{{{item}}}}\"\n    foreach: \"{{{{items}}}}\"\n    parallel: true\n"
    ));
    let fake = Fake::new().bash(|_, _| exit(0, "").after(50.0)).arc();
    let started = tokio::time::Instant::now();
    let ran = run_with(&recipe, json!({}), &fake, cancel_after(5)).await;
    assert_eq!(ran.outcome.status, RunStatus::Cancelled);
    assert_eq!(started.elapsed().as_secs(), 5);
    assert_eq!(fake.cancelled_tokens().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn cancel_interrupts_retry_backoff() {
    let recipe = flat(
        "  - id: flaky\n    type: bash\n    command: x\n    retry:\n      max_attempts: 5\n      initial_delay: 100\n",
    );
    let fake = Fake::new().bash(|_, _| exit(1, "")).arc();
    let started = tokio::time::Instant::now();
    let ran = run_with(&recipe, json!({}), &fake, cancel_after(2)).await;
    assert_eq!(ran.outcome.status, RunStatus::Cancelled);
    assert_eq!(started.elapsed().as_secs(), 2);
    assert_eq!(fake.scripts().len(), 1);
}
