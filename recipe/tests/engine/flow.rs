//! Flat and staged runs, exact event sequences, approval gates,
//! test_executor_conditions.py, test_hook_integration.py, test_executor.py
//! (substitution through the engine), bash requests.

use recipe::event::{Event, RunStatus};
use recipe::model::ApprovalDefault;
use serde_json::json;

use super::harness::*;

#[tokio::test(start_paused = true)]
async fn flat_run_emits_the_full_lifecycle() {
    let recipe = flat(
        "  - id: build\n    type: bash\n    command: echo hi\n    output: built\n  - id: review\n    agent: dev\n    prompt: \"check {{built}}\"\n    output: verdict\n",
    );
    let fake = Fake::new().arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Succeeded);
    assert_eq!(
        ran.lines(),
        [
            "start flat",
            "run build",
            "done build",
            "run review",
            "done review",
            "end Succeeded"
        ]
    );
    // Bash text loses one trailing newline (Kiln policy; the reference kept it).
    assert_eq!(ran.ctx("built"), Some(&json!("echo hi")));
    assert_eq!(fake.prompts(), ["check echo hi"]);
    assert_eq!(ran.outcome.final_output, Some(json!("check echo hi")));
    match &ran.events[0] {
        Event::ExecutionStarted { recipe, steps, .. } => {
            assert_eq!(recipe, "test-recipe");
            assert_eq!(steps, &["build", "review"]);
        }
        other => panic!("{other:?}"),
    }
    match ran.events.last().unwrap() {
        Event::ExecutionCompleted { status, error, .. } => {
            assert_eq!(*status, RunStatus::Succeeded);
            assert_eq!(error, &None);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn streamed_output_becomes_step_output_events_in_order() {
    let recipe = flat("  - id: s\n    type: bash\n    command: run\n");
    let fake = Fake::new()
        .bash(|_, _| {
            let mut reply = exit(0, "a\nb\n");
            reply.chunks = vec!["a\n".into(), "b\n".into()];
            reply
        })
        .arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(
        ran.lines(),
        [
            "start flat",
            "run s",
            "out s a\n",
            "out s b\n",
            "done s",
            "end Succeeded"
        ]
    );
}

fn staged(approval: &str) -> String {
    format!(
        "{HEADER}stages:\n  - name: plan\n    steps:\n      - id: p\n        agent: dev\n        prompt: plan it\n        output: plan\n{approval}  - name: build\n    steps:\n      - id: b\n        agent: dev\n        prompt: \"build {{{{plan}}}} {{{{_approval_message}}}} {{{{stage.name}}}}\"\n"
    )
}

const GATE: &str = "    approval:\n      required: true\n      prompt: \"Ship {{plan}}? {{#if plan}}yes{{else}}no{{/if}}\"\n";

#[tokio::test(start_paused = true)]
async fn staged_run_with_approved_gate() {
    let recipe = load(&staged(GATE));
    let fake = Fake::new().plan(approve("go ahead")).arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Succeeded);
    assert_eq!(
        ran.lines(),
        [
            "start staged",
            "stage plan",
            "run p",
            "done p",
            "gate plan",
            "decided plan Approve",
            "stage_done plan",
            "stage build",
            "run b",
            "done b",
            "stage_done build",
            "end Succeeded"
        ]
    );
    // `{{else}}` stays literal in approval prompts (the reference crashed on it).
    let requests = fake.approval_requests.lock().unwrap().clone();
    assert_eq!(
        requests[0].prompt,
        "Ship plan it? {{#if plan}}yes{{else}}no{{/if}}"
    );
    assert_eq!(requests[0].default, ApprovalDefault::Deny);
    assert_eq!(fake.prompts()[1], "build plan it go ahead build");
    let record = &ran.outcome.checkpoint.approvals[0];
    assert_eq!(
        (record.stage.as_str(), record.by.as_str(), record.timed_out),
        ("plan", "alice", false)
    );
}

#[tokio::test(start_paused = true)]
async fn denied_gate_is_terminal_across_resumes() {
    let recipe = load(&staged(GATE));
    let fake = Fake::new().plan(deny("not now")).arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Denied);
    assert_eq!(
        ran.error(),
        "execution denied at stage 'plan' by bob: not now"
    );
    assert_eq!(fake.prompts().len(), 1, "the build stage never ran");
    assert_eq!(
        ran.lines()[4..],
        ["gate plan", "decided plan Deny", "end Denied"]
    );
    // The reference cleared the pending record on deny, so a resume ran the
    // next stage (W8). Kiln: resuming a denied run runs nothing.
    let again = resume(&recipe, ran.outcome.checkpoint.clone(), &fake).await;
    assert_eq!(again.outcome.status, RunStatus::Denied);
    assert!(again.error().contains("cannot resume"), "{}", again.error());
    assert!(again.events.is_empty());
    assert_eq!(fake.prompts().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn gate_timeout_fires_on_its_own_with_default_deny() {
    let gate = "    approval:\n      required: true\n      prompt: ok?\n      timeout: 30\n";
    let recipe = load(&staged(gate));
    let fake = Fake::new().plan(Plan::Never).arc();
    let started = tokio::time::Instant::now();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Denied);
    assert_eq!(started.elapsed().as_secs(), 30);
    assert!(
        ran.lines()
            .contains(&"decided plan Deny timeout".to_string())
    );
    assert_eq!(ran.error(), "approval gate 'plan' timed out and was denied");
    let gate_state = ran.outcome.checkpoint.gate.clone().unwrap();
    assert_eq!(gate_state.status, recipe::engine::GateStatus::TimedOut);
}

#[tokio::test(start_paused = true)]
async fn gate_timeout_with_default_approve_continues() {
    let gate = "    approval:\n      required: true\n      prompt: ok?\n      timeout: 5\n      default: approve\n";
    let recipe = load(&staged(gate));
    let fake = Fake::new().plan(Plan::Never).arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Succeeded);
    assert!(
        ran.lines()
            .contains(&"decided plan Approve timeout".to_string())
    );
    assert_eq!(fake.prompts()[1], "build plan it  build");
}

#[tokio::test(start_paused = true)]
async fn stage_without_gate_sets_empty_approval_message_and_stage_variable() {
    let recipe = load(&staged(""));
    let fake = Fake::new().arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.ctx("_approval_message"), Some(&json!("")));
    assert_eq!(
        ran.ctx("stage"),
        Some(&json!({"name": "build", "index": 1}))
    );
    assert_eq!(
        ran.ctx("step"),
        Some(&json!({"id": "b", "index": 0, "stage": "build"}))
    );
}

#[tokio::test(start_paused = true)]
async fn pending_gate_resumes_with_the_original_timeout() {
    let gate = "    approval:\n      required: true\n      prompt: ok?\n      timeout: 60\n";
    let recipe = load(&staged(gate));
    let fake = Fake::new().plan(Plan::Never).arc();
    let cancel = tokio_util::sync::CancellationToken::new();
    let canceller = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(20)).await;
        canceller.cancel();
    });
    let ran = run_with(&recipe, json!({}), &fake, cancel).await;
    assert_eq!(ran.outcome.status, RunStatus::Cancelled);
    let checkpoint = ran.outcome.checkpoint.clone();
    assert_eq!(
        checkpoint.gate.as_ref().unwrap().status,
        recipe::engine::GateStatus::Pending
    );
    let started = tokio::time::Instant::now();
    let again = resume(&recipe, checkpoint, &fake).await;
    assert_eq!(again.outcome.status, RunStatus::Denied);
    assert_eq!(
        started.elapsed().as_secs(),
        40,
        "60 s from the first request, 20 already passed"
    );
    assert_eq!(
        fake.prompts().len(),
        1,
        "the stage's steps did not run again"
    );
}

// ---- test_executor_conditions.py ----

fn conditional(condition: &str) -> recipe::model::Recipe {
    load_lenient(&format!(
        "{HEADER}context:\n  category: simple\n  level: 3\nsteps:\n  - id: a\n    agent: dev\n    prompt: a\n    condition: \"{condition}\"\n    output: a_out\n  - id: b\n    agent: dev\n    prompt: b\n    output: b_out\n"
    ))
}

#[tokio::test(start_paused = true)]
async fn conditions_select_steps() {
    let cases = [
        ("{{category}} == 'simple'", true),
        ("{{category}} == 'complex'", false),
        ("{{category}} == 'simple' and {{level}} > 2", true),
        ("{{category}} == 'x' or {{level}} >= 3", true),
        ("{{category}} == 'x' or {{level}} < 3", false),
    ];
    for (condition, runs) in cases {
        let fake = Fake::new().arc();
        let ran = run(&conditional(condition), json!({}), &fake).await;
        assert_eq!(ran.outcome.status, RunStatus::Succeeded);
        assert_eq!(ran.ctx("a_out").is_some(), runs, "{condition}");
        assert_eq!(ran.ctx("b_out"), Some(&json!("b")), "later steps still run");
        if !runs {
            assert_eq!(ran.ctx("_skipped_steps"), Some(&json!(["a"])));
            assert_eq!(ran.lines()[1], "skip a condition");
            assert_eq!(fake.prompts(), ["b"]);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn condition_with_undefined_variable_fails_the_run() {
    let fake = Fake::new().arc();
    let ran = run(&conditional("{{missing}} == 'x'"), json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Failed);
    assert_eq!(
        ran.error(),
        "Step 'a': condition error: Undefined variable: missing"
    );
    assert_eq!(ran.outcome.failed_step.as_deref(), Some("a"));
    assert!(fake.prompts().is_empty());
}

#[tokio::test(start_paused = true)]
async fn inputs_override_context_defaults() {
    let fake = Fake::new().arc();
    let ran = run(
        &conditional("{{category}} == 'simple'"),
        json!({"category": "complex"}),
        &fake,
    )
    .await;
    assert_eq!(ran.ctx("a_out"), None);
}

// ---- test_hook_integration.py ----

#[tokio::test(start_paused = true)]
async fn sub_recipe_events_name_the_parent_step() {
    let child =
        format!("{HEADER}steps:\n  - id: inner\n    agent: dev\n    prompt: hi\n    output: x\n");
    let recipe = flat("  - id: call\n    type: recipe\n    recipe: child.yaml\n    output: res\n");
    let fake = Fake::new().recipe("child.yaml", &child).arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(
        ran.lines(),
        [
            "start flat",
            "run call",
            "sub call",
            "run call/inner",
            "done call/inner",
            "sub_done call Succeeded",
            "done call",
            "end Succeeded"
        ]
    );
}

// ---- test_executor.py through the engine; bash requests (Part A items 3, 4) ----

#[tokio::test(start_paused = true)]
async fn bash_request_carries_script_env_cwd_and_injection_free_vars() {
    let recipe = load(&format!(
        "{HEADER}context:\n  msg: \"a; echo INJECTED\"\n  user:\n    name: ann\nsteps:\n  - id: s\n    type: bash\n    command: \"echo {{{{msg}}}} {{{{user.name}}}}\"\n    cwd: \"sub/{{{{user.name}}}}\"\n    env:\n      GREETING: \"hi {{{{user.name}}}}\"\n      COUNT: 3\n    timeout: 7\n"
    ));
    let fake = Fake::new().arc();
    run(&recipe, json!({}), &fake).await;
    let call = fake.bash_calls.lock().unwrap()[0].clone();
    // Compatible: the command text is substituted raw ...
    assert_eq!(call.script, "echo a; echo INJECTED ann");
    // ... and every referenced value is also passed injection-free.
    assert_eq!(
        call.vars.get("msg").map(String::as_str),
        Some("a; echo INJECTED")
    );
    assert_eq!(call.vars.get("user.name").map(String::as_str), Some("ann"));
    assert_eq!(call.env.get("GREETING").map(String::as_str), Some("hi ann"));
    assert_eq!(call.env.get("COUNT").map(String::as_str), Some("3"));
    assert_eq!(call.cwd.as_deref(), Some("sub/ann"));
    assert_eq!(call.timeout.as_secs(), 7);
    assert_eq!(call.max_output_bytes, 10 * 1024 * 1024);
}

#[tokio::test(start_paused = true)]
async fn agent_request_carries_mode_metadata_and_templated_provider() {
    let recipe = load(&format!(
        "{HEADER}context:\n  prov: anthropic\nsteps:\n  - id: s\n    agent: ns:dev\n    mode: ANALYZE\n    prompt: hello\n    provider: \"{{{{prov}}}}\"\n"
    ));
    let fake = Fake::new().arc();
    run(&recipe, json!({}), &fake).await;
    let call = fake.agent_calls.lock().unwrap()[0].clone();
    assert_eq!(call.prompt, "MODE: ANALYZE\n\nhello");
    assert_eq!(call.agent, "ns:dev");
    // The reference passed the literal `{{prov}}` (W18).
    assert_eq!(call.provider.as_deref(), Some("anthropic"));
    assert_eq!(call.metadata.recipe_name, "test-recipe");
    assert_eq!(call.metadata.step_id, "s");
    assert_eq!(call.metadata.parallel_group_id, None);
}

#[tokio::test(start_paused = true)]
async fn metadata_variables_are_available() {
    let recipe = flat(
        "  - id: s\n    agent: dev\n    prompt: \"{{recipe.name}} {{recipe.version}} {{session.id}} {{step.id}}\"\n",
    );
    let fake = Fake::new().arc();
    run(&recipe, json!({}), &fake).await;
    assert_eq!(fake.prompts(), ["test-recipe 1.0.0 sess-1 s"]);
}

#[tokio::test(start_paused = true)]
async fn undefined_variable_in_prompt_is_fatal_even_under_continue() {
    let recipe = load_lenient(&format!(
        "{HEADER}context:\n  b: 1\nsteps:\n  - id: s\n    agent: dev\n    prompt: \"{{{{nope}}}}\"\n    on_error: continue\n"
    ));
    let fake = Fake::new().arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Failed);
    assert!(
        ran.error().starts_with("Step 's': prompt: Undefined variable: {{nope}}. Available variables: b, recipe, session, step"),
        "{}",
        ran.error()
    );
}

/// The sandbox agent spawns the run on a tokio runtime: the futures must be `Send`.
#[test]
fn run_and_resume_futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let recipe = flat("  - id: a\n    type: bash\n    command: a\n");
    let runner: std::sync::Arc<dyn recipe::runner::StepRunner> = Fake::new().arc();
    let (sink, _receiver) = recipe::event::EventSink::channel(8);
    let cancel = tokio_util::sync::CancellationToken::new();
    let running = recipe::engine::run(
        &recipe,
        serde_json::Map::new(),
        runner.clone(),
        sink.clone(),
        cancel.clone(),
    );
    assert_send(&running);
    let checkpoint = serde_json::from_value::<recipe::engine::Checkpoint>(json!({
        "format": 1, "recipe_name": "test-recipe", "recipe_version": "1.0.0",
        "position": {"stage": 0, "step": 0}, "context": {}, "total_steps": 0, "foreach": null,
        "gate": null, "approvals": [], "finished": null, "error": null, "last_output": null,
        "next_seq": 0, "started_ms": 0
    }))
    .unwrap();
    let resuming = recipe::engine::resume(&recipe, checkpoint, runner, sink, cancel);
    assert_send(&resuming);
}
