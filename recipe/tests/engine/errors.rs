//! test_on_error_correctness.py and the on_error matrix of section 7.6 with
//! Part A's fixes; retry with backoff (bash too); timeouts; rate limiting.

use std::sync::atomic::Ordering;

use recipe::event::{Event, FailureHandling, RunStatus};
use recipe::runner::RunnerError;
use serde_json::{Value, json};

use super::harness::*;

fn three_steps(kind_b: &str, on_error: &str) -> recipe::model::Recipe {
    flat(&format!(
        "  - id: a\n    type: bash\n    command: a\n    output: a_out\n  - id: b\n{kind_b}    on_error: {on_error}\n    output: b_out\n  - id: c\n    type: bash\n    command: c\n    output: c_out\n"
    ))
}

const BASH_B: &str = "    type: bash\n    command: b\n    output_exit_code: b_code\n";
const AGENT_B: &str = "    agent: dev\n    prompt: b\n";

fn failing_b() -> std::sync::Arc<Fake> {
    Fake::new()
        .bash(|request, _| {
            if request.script == "b" {
                exit(42, "partial\n")
            } else {
                exit(0, &format!("{}\n", request.script))
            }
        })
        .agent(|_, _| Reply::err("model down"))
        .arc()
}

#[tokio::test(start_paused = true)]
async fn bash_non_zero_exit_matrix() {
    // fail
    let ran = run(&three_steps(BASH_B, "fail"), json!({}), &failing_b()).await;
    assert_eq!(ran.outcome.status, RunStatus::Failed);
    assert_eq!(
        ran.error(),
        "Step 'b': command failed with exit code 42: boom"
    );
    assert_eq!(ran.ctx("b_code"), None, "not written under fail");
    assert_eq!(
        ran.outcome.checkpoint.position.step, 1,
        "resume re-runs the failed step"
    );
    // continue: stdout is the result, the exit code is recorded as text.
    let fake = failing_b();
    let ran = run(&three_steps(BASH_B, "continue"), json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Succeeded);
    assert_eq!(ran.ctx("b_out"), Some(&json!("partial")));
    assert_eq!(ran.ctx("b_code"), Some(&json!("42")));
    assert_eq!(ran.ctx("c_out"), Some(&json!("c")));
    assert!(ran.lines().contains(&"fail b Continue".to_string()));
    // skip_remaining: c never runs, a's output is intact, the run is partial
    // (the reference reported plain success, W15).
    let fake = failing_b();
    let ran = run(&three_steps(BASH_B, "skip_remaining"), json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Partial);
    assert_eq!(ran.ctx("a_out"), Some(&json!("a")));
    assert_eq!(ran.ctx("c_out"), None);
    assert_eq!(fake.scripts(), ["a", "b"]);
    assert_eq!(
        ran.lines()[3..],
        [
            "run b",
            "fail b SkipRemaining",
            "skip c by b",
            "end Partial"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn agent_failure_matrix() {
    let ran = run(&three_steps(AGENT_B, "fail"), json!({}), &failing_b()).await;
    assert_eq!(ran.error(), "Step 'b': model down");
    let ran = run(&three_steps(AGENT_B, "continue"), json!({}), &failing_b()).await;
    assert_eq!(ran.outcome.status, RunStatus::Succeeded);
    assert_eq!(ran.ctx("b_out"), Some(&Value::Null));
    let ran = run(
        &three_steps(AGENT_B, "skip_remaining"),
        json!({}),
        &failing_b(),
    )
    .await;
    assert_eq!(ran.outcome.status, RunStatus::Partial);
    assert_eq!(ran.ctx("c_out"), None);
}

#[tokio::test(start_paused = true)]
async fn null_output_renders_as_none() {
    let recipe = flat(
        "  - id: b\n    agent: dev\n    prompt: b\n    on_error: continue\n    output: b_out\n  - id: c\n    type: bash\n    command: \"echo {{b_out}}\"\n",
    );
    let fake = Fake::new().agent(|_, _| Reply::err("x")).arc();
    run(&recipe, json!({}), &fake).await;
    assert_eq!(fake.scripts(), ["echo None"]);
}

#[tokio::test(start_paused = true)]
async fn bash_timeout_honours_on_error() {
    // The reference raised timeouts regardless of on_error (W20).
    let recipe = flat(
        "  - id: slow\n    type: bash\n    command: sleep 10\n    timeout: 1\n    on_error: continue\n    output: r\n  - id: next\n    type: bash\n    command: next\n",
    );
    let fake = Fake::new()
        .bash(|request, _| {
            if request.script == "next" {
                exit(0, "n\n")
            } else {
                exit(0, "late").after(10.0)
            }
        })
        .arc();
    let started = tokio::time::Instant::now();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Succeeded);
    assert_eq!(
        started.elapsed().as_secs(),
        1,
        "the timeout does not wait for the process"
    );
    assert_eq!(ran.ctx("r"), Some(&Value::Null));
    assert_eq!(fake.cancelled_tokens(), ["slow"]);
    let failed = ran
        .events
        .iter()
        .find_map(|e| match e {
            Event::StepFailed {
                error, handling, ..
            } => Some((error.clone(), *handling)),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        failed,
        (
            "command timed out after 1s".to_string(),
            FailureHandling::Continue
        )
    );

    let recipe = flat("  - id: slow\n    type: bash\n    command: sleep 10\n    timeout: 1\n");
    let fake = Fake::new().bash(|_, _| exit(0, "").after(10.0)).arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.error(), "Step 'slow': command timed out after 1s");
    // A runner that reports its own timeout is treated the same way.
    let fake = Fake::new()
        .bash(|_, _| {
            Reply::ok(recipe::runner::BashOutcome {
                exit_code: -9,
                timed_out: true,
                ..Default::default()
            })
        })
        .arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.error(), "Step 'slow': command timed out after 1s");
}

#[tokio::test(start_paused = true)]
async fn agent_timeout() {
    let recipe = flat("  - id: think\n    agent: dev\n    prompt: x\n    timeout: 30\n");
    let fake = Fake::new().agent(|_, _| text("late").after(100.0)).arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.error(), "Step 'think': agent 'dev' timed out after 30s");
}

#[tokio::test(start_paused = true)]
async fn retry_applies_to_bash_with_exponential_backoff() {
    // The reference ignored `retry` on bash steps (W20).
    let recipe = flat(
        "  - id: flaky\n    type: bash\n    command: try\n    output: r\n    retry:\n      max_attempts: 3\n      initial_delay: 2\n      max_delay: 3\n",
    );
    let fake = Fake::new()
        .bash(|_, n| if n < 2 { exit(1, "") } else { exit(0, "ok\n") })
        .arc();
    let started = tokio::time::Instant::now();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Succeeded);
    assert_eq!(ran.ctx("r"), Some(&json!("ok")));
    assert_eq!(
        ran.lines(),
        [
            "start flat",
            "run flaky",
            "retry flaky 1 2000",
            "retry flaky 2 3000",
            "done flaky",
            "end Succeeded"
        ]
    );
    assert_eq!(started.elapsed().as_secs(), 5);
}

#[tokio::test(start_paused = true)]
async fn retry_linear_and_exhausted() {
    let recipe = flat(
        "  - id: flaky\n    agent: dev\n    prompt: x\n    retry:\n      max_attempts: 3\n      backoff: linear\n      initial_delay: 1\n",
    );
    let fake = Fake::new().agent(|_, _| Reply::err("nope")).arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Failed);
    assert_eq!(ran.error(), "Step 'flaky': nope");
    assert_eq!(fake.prompts().len(), 3);
    assert_eq!(
        ran.lines()[2..4],
        ["retry flaky 1 1000", "retry flaky 2 1000"]
    );
    // One agent execution counts once against max_total_steps, whatever the retries.
    assert_eq!(ran.outcome.checkpoint.total_steps, 1);
}

fn looped(on_error: &str, parallel: &str) -> recipe::model::Recipe {
    load(&format!(
        "{HEADER}context:\n  items: [item1, item2, item3]\nsteps:\n  - id: l\n    type: bash\n    command: \"touch {{{{item}}}}\"\n    foreach: \"{{{{items}}}}\"\n    collect: results\n    on_error: {on_error}\n{parallel}  - id: after\n    type: bash\n    command: after\n"
    ))
}

fn item2_crashes() -> std::sync::Arc<Fake> {
    Fake::new()
        .bash(|request, _| {
            if request.script == "touch item2" {
                Reply {
                    result: Err(RunnerError::Failed {
                        message: "spawn failed".into(),
                    }),
                    delay: std::time::Duration::ZERO,
                    chunks: Vec::new(),
                }
            } else {
                exit(0, &format!("{}\n", request.script))
            }
        })
        .arc()
}

#[tokio::test(start_paused = true)]
async fn sequential_foreach_on_error_matrix() {
    let fake = item2_crashes();
    let ran = run(&looped("continue", ""), json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Succeeded);
    assert_eq!(
        ran.ctx("results"),
        Some(&json!(["touch item1", null, "touch item3"]))
    );
    assert_eq!(
        ran.lines()
            .iter()
            .filter(|l| l.starts_with("iter_fail"))
            .count(),
        1
    );

    let fake = item2_crashes();
    let ran = run(&looped("skip_remaining", ""), json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Partial);
    assert_eq!(
        fake.scripts(),
        ["touch item1", "touch item2"],
        "item3 and after never run"
    );
    assert_eq!(ran.ctx("results"), None);

    let fake = item2_crashes();
    let ran = run(&looped("fail", ""), json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Failed);
    assert_eq!(ran.error(), "Step 'l' iteration 1 failed: spawn failed");
    assert_eq!(fake.scripts().len(), 2);

    // A non-zero exit under continue collects stdout (compatible with the reference).
    let fake = Fake::new()
        .bash(|request, _| {
            if request.script == "touch item2" {
                exit(2, "half\n")
            } else {
                exit(0, "ok\n")
            }
        })
        .arc();
    let ran = run(&looped("continue", ""), json!({}), &fake).await;
    assert_eq!(ran.ctx("results"), Some(&json!(["ok", "half", "ok"])));
}

#[tokio::test(start_paused = true)]
async fn parallel_foreach_on_error_matrix() {
    let fake = item2_crashes();
    let ran = run(
        &looped("continue", "    parallel: true\n"),
        json!({}),
        &fake,
    )
    .await;
    assert_eq!(ran.outcome.status, RunStatus::Succeeded);
    assert_eq!(
        ran.ctx("results"),
        Some(&json!(["touch item1", null, "touch item3"]))
    );

    // The reference treated skip_remaining like fail in parallel loops (W20).
    // Kiln: every iteration finishes, results are stored, the rest is skipped.
    let fake = item2_crashes();
    let ran = run(
        &looped("skip_remaining", "    parallel: true\n"),
        json!({}),
        &fake,
    )
    .await;
    assert_eq!(ran.outcome.status, RunStatus::Partial);
    assert_eq!(
        ran.ctx("results"),
        Some(&json!(["touch item1", null, "touch item3"]))
    );
    assert!(!fake.scripts().contains(&"after".to_string()));

    let fake = item2_crashes();
    let ran = run(&looped("fail", "    parallel: true\n"), json!({}), &fake).await;
    assert_eq!(
        ran.error(),
        "Step 'l': 1/3 iterations failed: iteration 1 failed: spawn failed"
    );
    assert_eq!(fake.scripts().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn rate_limiting_caps_concurrency_and_spaces_calls() {
    let recipe = load(&format!(
        "{HEADER}context:\n  items: [1, 2, 3]\nrate_limiting:\n  max_concurrent_llm: 1\n  min_delay_ms: 500\nsteps:\n  - id: p\n    agent: dev\n    prompt: \"{{{{item}}}}\"\n    foreach: \"{{{{items}}}}\"\n    parallel: true\n"
    ));
    let fake = Fake::new()
        .agent(|request, _| text(&request.prompt).after(2.0))
        .arc();
    run(&recipe, json!({}), &fake).await;
    assert_eq!(fake.max_running.load(Ordering::SeqCst), 1);
    let starts = fake.agent_start_ms.lock().unwrap().clone();
    let gaps: Vec<u64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps, [2500, 2500], "2 s call + 500 ms minimum gap");
}

#[tokio::test(start_paused = true)]
async fn rate_limit_errors_back_off() {
    let recipe = load(&format!(
        "{HEADER}rate_limiting:\n  backoff:\n    initial_delay_ms: 1000\nsteps:\n  - id: a\n    agent: dev\n    prompt: x\n    retry:\n      max_attempts: 3\n      initial_delay: 0\n"
    ));
    let fake = Fake::new()
        .agent(|_, n| {
            if n < 2 {
                Reply {
                    result: Err(RunnerError::RateLimited {
                        message: "HTTP 429".into(),
                    }),
                    delay: std::time::Duration::ZERO,
                    chunks: Vec::new(),
                }
            } else {
                text("ok")
            }
        })
        .arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Succeeded);
    let starts = fake.agent_start_ms.lock().unwrap().clone();
    let gaps: Vec<u64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps, [1000, 2000], "initial delay, then doubled");
}

#[tokio::test(start_paused = true)]
async fn parallel_agent_loop_checks_the_step_budget_up_front() {
    let recipe = load(&format!(
        "{HEADER}recursion:\n  max_total_steps: 3\ncontext:\n  items: [1, 2, 3]\nsteps:\n  - id: p\n    agent: dev\n    prompt: \"{{{{item}}}}\"\n    foreach: \"{{{{items}}}}\"\n    parallel: true\n"
    ));
    let fake = Fake::new().arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(
        ran.error(),
        "Step 'p': Parallel loop would exceed max_total_steps (0 + 3 >= 3)"
    );
    assert!(fake.prompts().is_empty());
}

#[tokio::test(start_paused = true)]
async fn bash_spec_fields_output_stderr_truncation_and_delay_between() {
    let recipe = load(&format!(
        "{HEADER}context:\n  items: [1, 2, 3]\nsteps:\n  - id: s\n    type: bash\n    command: \"x {{{{item}}}}\"\n    foreach: \"{{{{items}}}}\"\n    collect: out\n    output_stderr: true\n    max_output_size: 64\n    delay_between: 1500\n"
    ));
    let fake = Fake::new()
        .bash(|_, _| {
            Reply::ok(recipe::runner::BashOutcome {
                exit_code: 0,
                stdout: "out;".into(),
                stderr: "err".into(),
                stdout_truncated: true,
                ..Default::default()
            })
        })
        .arc();
    let started = tokio::time::Instant::now();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(
        ran.ctx("out"),
        Some(&json!(["out;err", "out;err", "out;err"]))
    );
    assert_eq!(
        started.elapsed().as_millis(),
        3000,
        "1.5 s between the 3 iterations"
    );
    assert_eq!(fake.bash_calls.lock().unwrap()[0].max_output_bytes, 64);
    assert_eq!(
        ran.lines().iter().filter(|l| *l == "truncated s").count(),
        3
    );
}
