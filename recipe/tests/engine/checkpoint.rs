//! test_foreach_checkpointing.py (engine parts) and checkpoint → resume.

use recipe::engine::{Checkpoint, ForeachProgress};
use recipe::event::RunStatus;
use serde_json::json;

use super::harness::*;

fn checkpointed(n_items: usize, collect: bool) -> recipe::model::Recipe {
    let items: Vec<String> = (1..=n_items).map(|i| format!("i{i}")).collect();
    load(&format!(
        "{HEADER}context:\n  items: [{}]\nsteps:\n  - id: first\n    type: bash\n    command: first\n    output: f\n  - id: loop\n    agent: dev\n    prompt: \"r{{{{item}}}}\"\n    foreach: \"{{{{items}}}}\"\n    checkpoint_iterations: true\n{}  - id: last\n    type: bash\n    command: last\n    output: final_output\n",
        items.join(", "),
        if collect {
            "    collect: results\n"
        } else {
            ""
        }
    ))
}

fn foreach_records(fake: &Fake) -> Vec<Option<ForeachProgress>> {
    fake.checkpoints
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.foreach.clone())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn each_iteration_saves_progress() {
    let fake = Fake::new().arc();
    let ran = run(&checkpointed(3, true), json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Succeeded);
    let records = foreach_records(&fake);
    let completed: Vec<Option<u64>> = records
        .iter()
        .map(|r| r.as_ref().map(|p| p.completed))
        .collect();
    // after `first`, 3 iterations, after `loop` (record dropped), after `last`, final.
    assert_eq!(
        completed,
        [None, Some(1), Some(2), Some(3), None, None, None]
    );
    let progress = records[2].clone().unwrap();
    assert_eq!(progress.collected, Some(vec![json!("ri1"), json!("ri2")]));
    assert_eq!(progress.total, 3);
    // Loop variables never leak into a checkpoint.
    let checkpoints = fake.checkpoints.lock().unwrap().clone();
    assert!(checkpoints.iter().all(|c| !c.context.contains_key("item")));

    // Without collect, no results list; without checkpoint_iterations, no records.
    let fake = Fake::new().arc();
    run(&checkpointed(2, false), json!({}), &fake).await;
    assert_eq!(foreach_records(&fake)[1].clone().unwrap().collected, None);
    let recipe =
        flat("  - id: l\n    agent: dev\n    prompt: x\n    foreach: \"{{recipe.tags}}\"\n");
    let fake = Fake::new().arc();
    let _ = run(&recipe, json!({}), &fake).await;
    assert!(foreach_records(&fake).iter().all(Option::is_none));
}

#[tokio::test(start_paused = true)]
async fn crash_mid_loop_then_resume_runs_only_the_rest() {
    let recipe = checkpointed(5, true);
    // The 4th iteration fails (a crash stand-in); the run stops there.
    let fake = Fake::new()
        .agent(|request, _| {
            if request.prompt == "ri4" {
                Reply::err("crash")
            } else {
                text(&request.prompt)
            }
        })
        .arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Failed);
    let checkpoint: Checkpoint = fake.checkpoints.lock().unwrap().last().cloned().unwrap();
    assert_eq!(checkpoint.position.step, 1);
    assert_eq!(checkpoint.foreach.as_ref().unwrap().completed, 3);

    // The checkpoint survives serialisation.
    let text = serde_json::to_string(&checkpoint).unwrap();
    let checkpoint: Checkpoint = serde_json::from_str(&text).unwrap();

    let fresh = Fake::new().arc();
    let resumed = resume(&recipe, checkpoint, &fresh).await;
    assert_eq!(
        resumed.outcome.status,
        RunStatus::Succeeded,
        "{}",
        resumed.error()
    );
    assert_eq!(fresh.prompts(), ["ri4", "ri5"]);
    assert_eq!(fresh.scripts(), ["last"], "`first` is not run again");
    assert_eq!(
        resumed.ctx("results"),
        Some(&json!(["ri1", "ri2", "ri3", "ri4", "ri5"]))
    );
    assert_eq!(resumed.outcome.final_output, Some(json!("last")));
    assert_eq!(resumed.lines()[0], "start flat resumed");
}

#[tokio::test(start_paused = true)]
async fn resume_edge_cases() {
    let recipe = checkpointed(4, true);
    let fake = Fake::new().arc();
    let ran = run(&recipe, json!({}), &fake).await;
    let checkpoints = fake.checkpoints.lock().unwrap().clone();

    // Progress 4 of 4 (saved after the last iteration, before the step
    // completed): nothing of the loop runs again.
    let fresh = Fake::new().arc();
    let resumed = resume(&recipe, checkpoints[4].clone(), &fresh).await;
    assert!(fresh.prompts().is_empty());
    assert_eq!(
        resumed.ctx("results"),
        Some(&json!(["ri1", "ri2", "ri3", "ri4"]))
    );
    assert_eq!(fresh.scripts(), ["last"]);

    // At the step after the loop: only that step runs, earlier results kept.
    let fresh = Fake::new().arc();
    let resumed = resume(&recipe, checkpoints[5].clone(), &fresh).await;
    assert_eq!(fresh.scripts(), ["last"]);
    assert_eq!(
        resumed.ctx("results"),
        Some(&json!(["ri1", "ri2", "ri3", "ri4"]))
    );

    // A changed item count is reported.
    let mut changed = checkpoints[2].clone();
    changed
        .context
        .insert("items".into(), json!(["i1", "i2", "i3", "i4", "i5"]));
    let fresh = Fake::new().arc();
    let resumed = resume(&recipe, changed, &fresh).await;
    assert!(resumed.lines().contains(&"warn loop".to_string()));
    assert_eq!(fresh.prompts(), ["ri3", "ri4", "ri5"]);

    // A finished run resumed again runs nothing and reports its status.
    let fresh = Fake::new().arc();
    let again = resume(&recipe, ran.outcome.checkpoint.clone(), &fresh).await;
    assert_eq!(again.outcome.status, RunStatus::Succeeded);
    assert!(fresh.prompts().is_empty() && fresh.scripts().is_empty());
    assert_eq!(again.outcome.final_output, Some(json!("last")));
}

#[tokio::test(start_paused = true)]
async fn large_values_survive_checkpoint_and_resume() {
    // The reference replaced values over 100 kB by a placeholder on resume (W12).
    let big = "x".repeat(150_000);
    let recipe = flat(
        "  - id: make\n    type: bash\n    command: make\n    output: blob\n  - id: use\n    type: bash\n    command: \"wc {{blob}}\"\n",
    );
    let big_out = format!("{big}\n");
    let fake = Fake::new()
        .bash(move |request, _| {
            if request.script == "make" {
                exit(0, &big_out)
            } else {
                Reply::err("crash")
            }
        })
        .arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Failed);
    let checkpoint = serde_json::from_str::<Checkpoint>(
        &serde_json::to_string(&ran.outcome.checkpoint).unwrap(),
    )
    .unwrap();
    let fresh = Fake::new().arc();
    let resumed = resume(&recipe, checkpoint, &fresh).await;
    assert_eq!(resumed.outcome.status, RunStatus::Succeeded);
    assert_eq!(fresh.scripts(), [format!("wc {big}")]);
}

#[tokio::test(start_paused = true)]
async fn sequence_numbers_continue_after_resume() {
    let recipe = flat(
        "  - id: a\n    type: bash\n    command: a\n  - id: b\n    type: bash\n    command: b\n",
    );
    let fake = Fake::new()
        .bash(|request, _| {
            if request.script == "b" {
                Reply::err("x")
            } else {
                exit(0, "")
            }
        })
        .arc();
    let ran = run(&recipe, json!({}), &fake).await;
    let checkpoint = ran.outcome.checkpoint.clone();
    assert_eq!(checkpoint.next_seq, ran.events.len() as u64);
    // `resume` in the harness asserts the numbering starts at next_seq.
    let fresh = Fake::new().arc();
    let resumed = resume(&recipe, checkpoint, &fresh).await;
    assert_eq!(resumed.outcome.status, RunStatus::Succeeded);
    assert_eq!(
        resumed.lines(),
        ["start flat resumed", "run b", "done b", "end Succeeded"]
    );
}

#[tokio::test(start_paused = true)]
async fn checkpointing_with_nested_body_and_continue() {
    let recipe = load(&format!(
        "{HEADER}context:\n  items: [a, b]\nsteps:\n  - id: l\n    foreach: \"{{{{items}}}}\"\n    checkpoint_iterations: true\n    collect: out\n    steps:\n      - id: s1\n        type: bash\n        command: \"one {{{{item}}}}\"\n      - id: s2\n        type: bash\n        command: \"two {{{{item}}}}\"\n"
    ));
    let fake = Fake::new().arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.ctx("out"), Some(&json!(["two a", "two b"])));
    let completed: Vec<u64> = foreach_records(&fake)
        .into_iter()
        .flatten()
        .map(|p| p.completed)
        .collect();
    assert_eq!(completed, [1, 2]);

    let recipe = load(&format!(
        "{HEADER}context:\n  items: [1, 2, 3]\nsteps:\n  - id: l\n    agent: dev\n    prompt: \"r{{{{item}}}}\"\n    foreach: \"{{{{items}}}}\"\n    checkpoint_iterations: true\n    collect: out\n    on_error: continue\n"
    ));
    let fake = Fake::new()
        .agent(|request, _| {
            if request.prompt == "r2" {
                Reply::err("x")
            } else {
                text(&request.prompt)
            }
        })
        .arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.ctx("out"), Some(&json!(["r1", null, "r3"])));
    let records: Vec<ForeachProgress> = foreach_records(&fake).into_iter().flatten().collect();
    assert_eq!(records.len(), 3);
    assert_eq!(
        records[2].collected,
        Some(vec![json!("r1"), json!(null), json!("r3")])
    );
}

#[tokio::test(start_paused = true)]
async fn resume_refuses_a_checkpoint_of_another_recipe() {
    let recipe = flat("  - id: a\n    type: bash\n    command: a\n");
    let fake = Fake::new().arc();
    let ran = run(&recipe, json!({}), &fake).await;
    let other = load(
        "name: other\ndescription: d\nversion: 1.0.0\nsteps:\n  - id: a\n    type: bash\n    command: a\n",
    );
    let mut checkpoint = ran.outcome.checkpoint.clone();
    checkpoint.finished = None;
    let resumed = resume(&other, checkpoint, &fake).await;
    assert_eq!(resumed.outcome.status, RunStatus::Failed);
    assert_eq!(
        resumed.error(),
        "checkpoint belongs to recipe 'test-recipe' 1.0.0, not 'other' 1.0.0"
    );
    assert!(resumed.events.is_empty());
}
