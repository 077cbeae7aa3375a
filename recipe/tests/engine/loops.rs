//! test_executor_loops.py (engine parts), while loops (section 5.6), nested
//! bodies, parallel concurrency limits.

use std::sync::atomic::Ordering;

use recipe::event::{Event, LoopEnd, RunStatus};
use serde_json::json;

use super::harness::*;

fn foreach(extra: &str) -> recipe::model::Recipe {
    load_lenient(&format!(
        "{HEADER}context:\n  items: [a, b, c]\n  data:\n    files: [x, y]\n  text: not a list\n  empty: []\nsteps:\n  - id: loop\n    agent: dev\n    prompt: \"do {{{{item}}}}\"\n{extra}  - id: after\n    agent: dev\n    prompt: after\n"
    ))
}

#[tokio::test(start_paused = true)]
async fn foreach_collects_results_in_order() {
    let recipe = foreach("    foreach: \"{{items}}\"\n    collect: results\n");
    let fake = Fake::new().arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.ctx("results"), Some(&json!(["do a", "do b", "do c"])));
    assert_eq!(fake.prompts(), ["do a", "do b", "do c", "after"]);
    assert_eq!(
        ran.lines()[..9],
        [
            "start flat",
            "run loop",
            "iter loop 1",
            "iter loop 2",
            "iter loop 3",
            "loop_done loop Exhausted",
            "done loop",
            "run after",
            "done after"
        ]
    );
    // The loop variable does not exist after the loop; collect does.
    assert_eq!(ran.ctx("item"), None);
    assert_eq!(ran.ctx("_loop_index"), None);
}

#[tokio::test(start_paused = true)]
async fn foreach_edge_cases() {
    // Empty list: skipped, no calls, collect = [].
    let fake = Fake::new().arc();
    let ran = run(
        &foreach("    foreach: \"{{empty}}\"\n    collect: results\n"),
        json!({}),
        &fake,
    )
    .await;
    assert_eq!(ran.ctx("_skipped_steps"), Some(&json!(["loop"])));
    assert_eq!(ran.ctx("results"), Some(&json!([])));
    assert_eq!(ran.lines()[1], "skip loop empty");
    assert_eq!(fake.prompts(), ["after"]);

    // Output without collect is the last iteration's result.
    let fake = Fake::new().arc();
    let ran = run(
        &foreach("    foreach: \"{{items}}\"\n    output: last\n"),
        json!({}),
        &fake,
    )
    .await;
    assert_eq!(ran.ctx("last"), Some(&json!("do c")));

    // Nested path.
    let fake = Fake::new().arc();
    let ran = run(
        &foreach("    foreach: \"{{data.files}}\"\n    collect: r\n"),
        json!({}),
        &fake,
    )
    .await;
    assert_eq!(ran.ctx("r"), Some(&json!(["do x", "do y"])));

    // Custom `as`.
    let recipe = load(&format!(
        "{HEADER}context:\n  items: [a]\nsteps:\n  - id: l\n    agent: dev\n    prompt: \"f {{{{file}}}}\"\n    foreach: \"{{{{items}}}}\"\n    as: file\n"
    ));
    let fake = Fake::new().arc();
    run(&recipe, json!({}), &fake).await;
    assert_eq!(fake.prompts(), ["f a"]);
}

#[tokio::test(start_paused = true)]
async fn foreach_errors_before_running() {
    let cases = [
        (
            "    foreach: \"{{items}}\"\n    max_iterations: 2\n",
            "Step 'loop': foreach list exceeds max_iterations (3 > 2)",
        ),
        (
            "    foreach: \"{{text}}\"\n",
            "Step 'loop': foreach variable must be a list, got str",
        ),
        (
            "    foreach: \"{{nothing}}\"\n",
            "Step 'loop': Undefined variable in foreach: Undefined variable: {{nothing}}",
        ),
    ];
    for (extra, expected) in cases {
        let fake = Fake::new().arc();
        let ran = run(&foreach(extra), json!({}), &fake).await;
        assert_eq!(ran.outcome.status, RunStatus::Failed);
        assert!(ran.error().starts_with(expected), "{}", ran.error());
        assert!(fake.prompts().is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn failing_iteration_stops_the_loop() {
    let recipe = foreach("    foreach: \"{{items}}\"\n");
    let fake = Fake::new()
        .agent(|request, n| {
            if n == 1 {
                Reply::err("model exploded")
            } else {
                text(&request.prompt)
            }
        })
        .arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Failed);
    assert_eq!(
        ran.error(),
        "Step 'loop' iteration 1 failed: model exploded"
    );
    assert_eq!(fake.prompts().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn loop_variable_shadowing_is_restored() {
    // The reference deleted a pre-existing `item` (and `as: recipe` deleted the
    // recipe metadata) after the loop (W19). Kiln restores both.
    let recipe = load(&format!(
        "{HEADER}context:\n  item: keep me\n  items: [a]\nsteps:\n  - id: l\n    agent: dev\n    prompt: \"{{{{item}}}}\"\n    foreach: \"{{{{items}}}}\"\n  - id: r\n    agent: dev\n    prompt: \"{{{{recipe}}}}\"\n    foreach: \"{{{{items}}}}\"\n    as: recipe\n  - id: after\n    agent: dev\n    prompt: \"{{{{item}}}} {{{{recipe.name}}}}\"\n"
    ));
    let fake = Fake::new().arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Succeeded);
    assert_eq!(fake.prompts(), ["a", "a", "keep me test-recipe"]);
}

#[tokio::test(start_paused = true)]
async fn parallel_foreach_keeps_input_order_and_respects_the_limit() {
    let recipe = load(&format!(
        "{HEADER}context:\n  items: [1, 2, 3, 4, 5]\nsteps:\n  - id: p\n    agent: dev\n    prompt: \"n{{{{item}}}}\"\n    foreach: \"{{{{items}}}}\"\n    parallel: 2\n    collect: out\n"
    ));
    // Earlier items take longer, so they finish out of order.
    let fake = Fake::new()
        .agent(|request, n| text(&request.prompt).after(10.0 - n as f64))
        .arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.ctx("out"), Some(&json!(["n1", "n2", "n3", "n4", "n5"])));
    assert_eq!(fake.max_running.load(Ordering::SeqCst), 2);
    let groups: Vec<Option<String>> = fake
        .agent_calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.metadata.parallel_group_id.clone())
        .collect();
    assert!(groups.iter().all(|g| g.is_some() && *g == groups[0]));

    // Unbounded: all at once.
    let recipe = load(&format!(
        "{HEADER}context:\n  items: [1, 2, 3, 4, 5]\nsteps:\n  - id: p\n    agent: dev\n    prompt: \"n{{{{item}}}}\"\n    foreach: \"{{{{items}}}}\"\n    parallel: true\n    collect: out\n"
    ));
    let fake = Fake::new()
        .agent(|request, _| text(&request.prompt).after(1.0))
        .arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(fake.max_running.load(Ordering::SeqCst), 5);
    // Sequential and parallel give the same calls and results.
    let sequential = load(&format!(
        "{HEADER}context:\n  items: [1, 2, 3, 4, 5]\nsteps:\n  - id: p\n    agent: dev\n    prompt: \"n{{{{item}}}}\"\n    foreach: \"{{{{items}}}}\"\n    collect: out\n"
    ));
    let fake_seq = Fake::new().arc();
    let ran_seq = run(&sequential, json!({}), &fake_seq).await;
    assert_eq!(ran.ctx("out"), ran_seq.ctx("out"));
    assert_eq!(fake_seq.max_running.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn parallel_failure_fails_the_step_after_all_iterations() {
    let recipe = load(&format!(
        "{HEADER}context:\n  items: [a, b, c]\nsteps:\n  - id: p\n    agent: dev\n    prompt: \"{{{{item}}}}\"\n    foreach: \"{{{{items}}}}\"\n    parallel: true\n    collect: out\n"
    ));
    let fake = Fake::new()
        .agent(|request, _| {
            if request.prompt == "b" {
                Reply::err("bad b")
            } else {
                text(&request.prompt)
            }
        })
        .arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Failed);
    assert_eq!(
        ran.error(),
        "Step 'p': 1/3 iterations failed: iteration 1 failed: bad b"
    );
    assert_eq!(fake.prompts().len(), 3);
    assert!(ran.lines().contains(&"iter_fail p 1".to_string()));

    // Empty list in parallel: skipped without calls.
    let recipe = load(&format!(
        "{HEADER}context:\n  items: []\nsteps:\n  - id: p\n    agent: dev\n    prompt: \"{{{{item}}}}\"\n    foreach: \"{{{{items}}}}\"\n    parallel: true\n"
    ));
    let fake = Fake::new().arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.ctx("_skipped_steps"), Some(&json!(["p"])));
    assert!(fake.prompts().is_empty());
}

#[tokio::test(start_paused = true)]
async fn nested_body_runs_each_sub_step_per_item() {
    // Parallel with a nested body failed at run time in the reference (W22); Kiln runs it.
    for parallel in ["", "    parallel: 2\n"] {
        let recipe = load(&format!(
            "{HEADER}context:\n  items: [a, b]\nsteps:\n  - id: outer\n    foreach: \"{{{{items}}}}\"\n    collect: out\n{parallel}    steps:\n      - id: first\n        agent: dev\n        prompt: \"1 {{{{item}}}}\"\n        output: one\n      - id: second\n        type: bash\n        command: \"echo {{{{one}}}}\"\n      - id: never\n        agent: dev\n        prompt: x\n        condition: \"{{{{item}}}} == 'zzz'\"\n"
        ));
        let fake = Fake::new().arc();
        let ran = run(&recipe, json!({}), &fake).await;
        assert_eq!(ran.outcome.status, RunStatus::Succeeded, "{}", ran.error());
        // The iteration result is the last sub-step that ran.
        assert_eq!(
            ran.ctx("out"),
            Some(&json!(["echo 1 a", "echo 1 b"])),
            "parallel={parallel:?}"
        );
        assert_eq!(fake.scripts().len(), 2);
    }
}

fn while_recipe(extra: &str) -> recipe::model::Recipe {
    load_lenient(&format!(
        "{HEADER}context:\n  status: in progress\n  n: 0\nsteps:\n  - id: w\n    type: bash\n    command: \"step {{{{_loop_iteration}}}}\"\n    output: last\n{extra}"
    ))
}

#[tokio::test(start_paused = true)]
async fn while_loop_with_update_context_and_break_when() {
    let recipe = while_recipe(
        "    while_condition: \"{{status}} != 'done'\"\n    update_context:\n      n: \"{{_loop_iteration}}\"\n      status: \"{{last}}\"\n    break_when: \"{{n}} >= 5\"\n",
    );
    // The third iteration prints "done"; `status` becomes that text.
    let fake = Fake::new()
        .bash(|_, n| exit(0, if n == 2 { "done\n" } else { "working\n" }))
        .arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Succeeded);
    assert_eq!(fake.scripts(), ["step 1", "step 2", "step 3"]);
    // update_context always yields text (compatible).
    assert_eq!(ran.ctx("n"), Some(&json!("3")));
    assert_eq!(ran.ctx("status"), Some(&json!("done")));
    assert_eq!(ran.ctx("_loop_iteration"), None);
    assert!(
        ran.lines()
            .contains(&"loop_done w ConditionFalse".to_string())
    );
}

#[tokio::test(start_paused = true)]
async fn while_break_when_and_max_iterations() {
    let recipe = while_recipe(
        "    while_condition: \"true\"\n    break_when: \"{{_loop_iteration}} == 2\"\n",
    );
    let fake = Fake::new().arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(fake.scripts().len(), 2);
    assert!(ran.lines().contains(&"loop_done w BreakWhen".to_string()));

    // The reference stopped silently at the limit (W23); Kiln warns.
    let recipe = while_recipe("    while_condition: \"true\"\n    max_while_iterations: 3\n");
    let fake = Fake::new().arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Succeeded);
    assert_eq!(fake.scripts().len(), 3);
    assert_eq!(ran.ctx("last"), Some(&json!("step 3")));
    let ended: Vec<LoopEnd> = ran
        .events
        .iter()
        .filter_map(|e| match e {
            Event::LoopCompleted { ended_by, .. } => Some(*ended_by),
            _ => None,
        })
        .collect();
    assert_eq!(ended, [LoopEnd::MaxIterations]);
    assert!(ran.lines().contains(&"warn w".to_string()));
}

#[tokio::test(start_paused = true)]
async fn while_collect_gathers_every_iteration_result() {
    // Section 5.6 "Body": with `collect`, a while loop stores all iteration results.
    let recipe = while_recipe(
        "    while_condition: \"true\"\n    max_while_iterations: 3\n    collect: all\n",
    );
    let fake = Fake::new().arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Succeeded);
    assert_eq!(ran.ctx("all"), Some(&json!(["step 1", "step 2", "step 3"])));
}

#[tokio::test(start_paused = true)]
async fn while_condition_uses_typed_values() {
    // The reference substituted raw text first, so "in progress" broke parsing (W6).
    let recipe = while_recipe(
        "    while_condition: \"{{status}} == 'in progress'\"\n    update_context:\n      status: \"{{last}}\"\n",
    );
    let fake = Fake::new().bash(|_, _| exit(0, "x' or 'a' == 'a\n")).arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Succeeded);
    assert_eq!(
        fake.scripts().len(),
        1,
        "an injected operator in a value is just text"
    );
}

#[tokio::test(start_paused = true)]
async fn while_body_failure_is_fatal_under_fail() {
    let recipe = while_recipe("    while_condition: \"true\"\n");
    let fake = Fake::new()
        .bash(|_, n| if n == 1 { exit(3, "") } else { exit(0, "ok\n") })
        .arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Failed);
    assert_eq!(
        ran.error(),
        "Step 'w' iteration 1 failed: command failed with exit code 3: boom"
    );
}
