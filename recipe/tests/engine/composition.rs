//! test_executor_composition.py and test_fix1 (engine parts): sub-recipes,
//! context isolation, result shape, recursion limits, type preservation.

use recipe::event::RunStatus;
use serde_json::json;

use super::harness::*;

const CHILD: &str = "name: child\ndescription: c\nversion: 1.0.0\ncontext:\n  default_only: d\n  topic: none\nsteps:\n  - id: one\n    agent: dev\n    prompt: \"one {{topic}}\"\n    output: first\n  - id: two\n    agent: dev\n    prompt: \"two {{first}}\"\n    output: second\n";

#[tokio::test(start_paused = true)]
async fn sub_recipe_result_holds_the_child_outputs() {
    let recipe = load(&format!(
        "{HEADER}context:\n  subject: rust\n  secret: parent-only\nsteps:\n  - id: call\n    type: recipe\n    recipe: child.yaml\n    context:\n      topic: \"{{{{subject}}}}\"\n    output: res\n  - id: use\n    agent: dev\n    prompt: \"{{{{res.second}}}}\"\n"
    ));
    let fake = Fake::new().recipe("child.yaml", CHILD).arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Succeeded, "{}", ran.error());
    assert_eq!(fake.prompts(), ["one rust", "two one rust", "two one rust"]);
    // Only keys the child added (its own un-passed defaults included, as in the
    // reference); the passed `topic` and internal keys are not returned.
    assert_eq!(
        ran.ctx("res"),
        Some(&json!({"default_only": "d", "first": "one rust", "second": "two one rust"}))
    );
}

#[tokio::test(start_paused = true)]
async fn child_does_not_see_parent_variables() {
    let child = "name: child\ndescription: c\nversion: 1.0.0\nsteps:\n  - id: peek\n    agent: dev\n    prompt: \"{{secret}}\"\n";
    let recipe = load(&format!(
        "{HEADER}context:\n  secret: parent-only\nsteps:\n  - id: call\n    type: recipe\n    recipe: child.yaml\n"
    ));
    let fake = Fake::new().recipe("child.yaml", child).arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Failed);
    assert!(
        ran.error().contains("Undefined variable: {{secret}}"),
        "{}",
        ran.error()
    );
    assert!(fake.prompts().is_empty());
}

#[tokio::test(start_paused = true)]
async fn child_output_named_output_does_not_hide_siblings() {
    // The reference unwrapped any mapping with an `output` key (W17).
    let child = "name: child\ndescription: c\nversion: 1.0.0\nsteps:\n  - id: a\n    agent: dev\n    prompt: a\n    output: output\n  - id: b\n    agent: dev\n    prompt: b\n    output: other\n";
    let recipe = flat("  - id: call\n    type: recipe\n    recipe: child.yaml\n    output: res\n");
    let fake = Fake::new().recipe("child.yaml", child).arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.ctx("res"), Some(&json!({"output": "a", "other": "b"})));
}

#[tokio::test(start_paused = true)]
async fn recursion_depth_limit() {
    let a = "name: a\ndescription: c\nversion: 1.0.0\nsteps:\n  - id: to_b\n    type: recipe\n    recipe: b.yaml\n";
    let b = "name: b\ndescription: c\nversion: 1.0.0\nsteps:\n  - id: to_a\n    type: recipe\n    recipe: a.yaml\n";
    let recipe = load(
        "name: a\ndescription: c\nversion: 1.0.0\nrecursion:\n  max_depth: 2\nsteps:\n  - id: to_b\n    type: recipe\n    recipe: b.yaml\n",
    );
    let fake = Fake::new().recipe("a.yaml", a).recipe("b.yaml", b).arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Failed);
    assert!(
        ran.error()
            .contains("Recipe recursion depth 2 exceeds limit 2. Stack: a -> b -> a.yaml"),
        "{}",
        ran.error()
    );
}

#[tokio::test(start_paused = true)]
async fn total_steps_limit_is_shared_down_the_tree() {
    let child = "name: child\ndescription: c\nversion: 1.0.0\nsteps:\n  - id: s1\n    agent: dev\n    prompt: x\n  - id: s2\n    agent: dev\n    prompt: x\n  - id: s3\n    agent: dev\n    prompt: x\n";
    let recipe = load(&format!(
        "{HEADER}recursion:\n  max_total_steps: 5\nsteps:\n  - id: c1\n    type: recipe\n    recipe: child.yaml\n  - id: c2\n    type: recipe\n    recipe: child.yaml\n"
    ));
    let fake = Fake::new().recipe("child.yaml", child).arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Failed);
    // Reaching the limit counts as exceeding it: 4 calls run, the 5th fails.
    assert!(
        ran.error().contains("Total steps 5 exceeds limit 5"),
        "{}",
        ran.error()
    );
    assert_eq!(fake.prompts().len(), 4);
    assert_eq!(ran.outcome.failed_step.as_deref(), Some("c2"));
}

#[tokio::test(start_paused = true)]
async fn step_level_recursion_override_applies_to_the_child() {
    let child = "name: child\ndescription: c\nversion: 1.0.0\nsteps:\n  - id: s1\n    agent: dev\n    prompt: x\n  - id: s2\n    agent: dev\n    prompt: x\n";
    let recipe = flat(
        "  - id: c\n    type: recipe\n    recipe: child.yaml\n    recursion:\n      max_depth: 3\n      max_total_steps: 2\n",
    );
    let fake = Fake::new().recipe("child.yaml", child).arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert!(
        ran.error().contains("Total steps 2 exceeds limit 2"),
        "{}",
        ran.error()
    );
}

#[tokio::test(start_paused = true)]
async fn child_failure_propagates_or_honours_on_error() {
    let child = "name: child\ndescription: c\nversion: 1.0.0\nsteps:\n  - id: boom\n    agent: dev\n    prompt: x\n";
    for (on_error, status) in [
        ("fail", RunStatus::Failed),
        ("continue", RunStatus::Succeeded),
        ("skip_remaining", RunStatus::Partial),
    ] {
        let recipe = flat(&format!(
            "  - id: call\n    type: recipe\n    recipe: child.yaml\n    output: res\n    on_error: {on_error}\n  - id: next\n    type: bash\n    command: next\n"
        ));
        let fake = Fake::new()
            .recipe("child.yaml", child)
            .agent(|_, _| Reply::err("spawn failed"))
            .arc();
        let ran = run(&recipe, json!({}), &fake).await;
        // The reference ignored on_error on recipe steps (always fatal).
        assert_eq!(ran.outcome.status, status, "{on_error}");
        match on_error {
            "fail" => assert_eq!(
                ran.error(),
                "Step 'call': sub-recipe 'child.yaml' failed: Step 'boom': spawn failed"
            ),
            "continue" => {
                assert_eq!(ran.ctx("res"), Some(&serde_json::Value::Null));
                assert_eq!(fake.scripts(), ["next"]);
            }
            _ => {
                assert!(fake.scripts().is_empty());
                assert!(ran.lines().contains(&"skip next by call".to_string()));
            }
        }
    }
    // A missing sub-recipe honours on_error too.
    let recipe =
        flat("  - id: call\n    type: recipe\n    recipe: missing.yaml\n    on_error: continue\n");
    let fake = Fake::new().arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Succeeded);
}

#[tokio::test(start_paused = true)]
async fn sub_recipe_in_foreach_and_condition() {
    let child = "name: child\ndescription: c\nversion: 1.0.0\ncontext:\n  task: {}\nsteps:\n  - id: work\n    agent: dev\n    prompt: \"task {{task.task_id}}\"\n    output: done\n";
    for parallel in ["", "    parallel: true\n"] {
        let recipe = load(&format!(
            "{HEADER}context:\n  tasks:\n    - task_id: 1\n    - task_id: 2\n    - task_id: 3\nsteps:\n  - id: each\n    type: recipe\n    recipe: child.yaml\n    foreach: \"{{{{tasks}}}}\"\n    as: current_task\n    collect: results\n{parallel}    context:\n      task: \"{{{{current_task}}}}\"\n"
        ));
        let fake = Fake::new().recipe("child.yaml", child).arc();
        let ran = run(&recipe, json!({}), &fake).await;
        assert_eq!(ran.outcome.status, RunStatus::Succeeded, "{}", ran.error());
        // A mapping passed through `context` stays a mapping (test_fix1).
        assert_eq!(
            ran.ctx("results"),
            Some(&json!([{"done": "task 1"}, {"done": "task 2"}, {"done": "task 3"}]))
        );
    }
    let recipe = load(&format!(
        "{HEADER}context:\n  go: false\nsteps:\n  - id: call\n    type: recipe\n    recipe: child.yaml\n    condition: \"{{{{go}}}}\"\n"
    ));
    let fake = Fake::new().recipe("child.yaml", child).arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.ctx("_skipped_steps"), Some(&json!(["call"])));
    assert!(fake.prompts().is_empty());
}

#[tokio::test(start_paused = true)]
async fn lists_and_scalars_keep_their_types_through_context() {
    let child = "name: child\ndescription: c\nversion: 1.0.0\ncontext:\n  items: []\n  n: 0\nsteps:\n  - id: each\n    agent: dev\n    prompt: \"{{item}} of {{n}}\"\n    foreach: \"{{items}}\"\n    collect: got\n";
    let recipe = load(&format!(
        "{HEADER}context:\n  list: [a, b]\n  count: 2\nsteps:\n  - id: call\n    type: recipe\n    recipe: child.yaml\n    output: res\n    context:\n      items: \"{{{{list}}}}\"\n      n: \" {{{{count}}}} \"\n"
    ));
    let fake = Fake::new().recipe("child.yaml", child).arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.ctx("res"), Some(&json!({"got": ["a of 2", "b of 2"]})));
}

#[tokio::test(start_paused = true)]
async fn sub_recipe_steps_have_timeouts() {
    // The reference gave sub-recipes no time limit (W4).
    let child = "name: child\ndescription: c\nversion: 1.0.0\nsteps:\n  - id: slow\n    type: bash\n    command: sleep\n";
    let recipe = flat("  - id: call\n    type: recipe\n    recipe: child.yaml\n    timeout: 5\n");
    let fake = Fake::new()
        .recipe("child.yaml", child)
        .bash(|_, _| exit(0, "").after(100.0))
        .arc();
    let started = tokio::time::Instant::now();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Failed);
    assert_eq!(
        ran.error(),
        "Step 'call': sub-recipe 'child.yaml' timed out after 5s"
    );
    assert_eq!(started.elapsed().as_secs(), 5);
    assert_eq!(fake.cancelled_tokens(), ["call/slow"]);
}

#[tokio::test(start_paused = true)]
async fn gates_inside_sub_recipes_use_compound_stage_names() {
    let child = "name: child\ndescription: c\nversion: 1.0.0\nstages:\n  - name: review\n    steps:\n      - id: s\n        agent: dev\n        prompt: x\n    approval:\n      required: true\n      prompt: ok?\n";
    let recipe = flat("  - id: call\n    type: recipe\n    recipe: child.yaml\n");
    let fake = Fake::new()
        .recipe("child.yaml", child)
        .plan(deny("no"))
        .arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Denied);
    assert_eq!(
        fake.approval_requests.lock().unwrap()[0].stage,
        "call/review"
    );
}
