//! test_json_extraction.py, test_json_parsing.py and test_fix2 through the
//! engine: every parse_json strategy on real step results.

use recipe::event::RunStatus;
use serde_json::{Value, json};

use super::harness::*;

async fn agent_result(answer: &str, parse_json: bool) -> (Value, String) {
    let recipe = flat(&format!(
        "  - id: a\n    agent: dev\n    prompt: go\n    output: r\n    parse_json: {parse_json}\n"
    ));
    let answer = answer.to_string();
    let fake = Fake::new().agent(move |_, _| text(&answer)).arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Succeeded);
    (ran.ctx("r").cloned().unwrap(), fake.prompts()[0].clone())
}

#[tokio::test(start_paused = true)]
async fn agent_parse_json_strategies() {
    let nested = r#"{"tasks": [{"id": 1, "deps": {"after": [0]}}], "count": 1}"#;
    let nested_value: Value = serde_json::from_str(nested).unwrap();
    let cases: Vec<(String, bool, Value)> = vec![
        // Default mode: only whole-text JSON is parsed.
        (
            format!("Here: {nested} ok"),
            false,
            json!(format!("Here: {nested} ok")),
        ),
        (
            format!("```json\n{nested}\n```"),
            false,
            json!(format!("```json\n{nested}\n```")),
        ),
        (nested.to_string(), false, nested_value.clone()),
        ("true".into(), false, json!(true)),
        ("42".into(), false, json!(42)),
        ("null".into(), false, Value::Null),
        ("{\"a\": [1,".into(), false, json!("{\"a\": [1,")),
        // parse_json: whole text, fence, labelled/unlabelled, scan.
        (nested.to_string(), true, nested_value.clone()),
        (
            format!("Plan:\n```json\n{nested}\n```\nDone."),
            true,
            nested_value.clone(),
        ),
        (format!("```\n{nested}\n```"), true, nested_value.clone()),
        (
            format!("I found {nested} in the repo"),
            true,
            nested_value.clone(),
        ),
        (
            "Files: [\"a.rs\", \"b.rs\"] total".into(),
            true,
            json!(["a.rs", "b.rs"]),
        ),
        ("empty {} but then [1, 2]".into(), true, json!([1, 2])),
        (
            "```json\n{not json}\n```\nfallback {\"fallback\": true}".into(),
            true,
            json!({"fallback": true}),
        ),
        ("no json here".into(), true, json!("no json here")),
    ];
    for (answer, parse_json, expected) in cases {
        let (value, _) = agent_result(&answer, parse_json).await;
        assert_eq!(value, expected, "{answer:?} parse_json={parse_json}");
    }
    let (_, prompt) = agent_result("{}", true).await;
    assert!(prompt.starts_with("go\n\nIMPORTANT: End your answer with the result as valid JSON"));
}

#[tokio::test(start_paused = true)]
async fn spawn_results_with_output_key_are_unwrapped() {
    let recipe = flat("  - id: a\n    agent: dev\n    prompt: go\n    output: r\n");
    let fake = Fake::new()
        .agent(|_, _| {
            Reply::ok(recipe::runner::AgentOutcome {
                output: json!({"output": "{\"files\": [\"x\"]}", "usage": 1}),
            })
        })
        .arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.ctx("r"), Some(&json!({"files": ["x"]})));
}

#[tokio::test(start_paused = true)]
async fn parsed_results_are_reachable_and_drive_foreach() {
    let recipe = load_lenient(&format!(
        "{HEADER}steps:\n  - id: list\n    agent: dev\n    prompt: list\n    output: found\n  - id: each\n    agent: dev\n    prompt: \"f {{{{item}}}} of {{{{found.meta.count}}}}\"\n    foreach: \"{{{{found.files}}}}\"\n    collect: r\n"
    ));
    let fake = Fake::new()
        .agent(|request, _| {
            if request.prompt == "list" {
                text(r#"{"files": ["a", "b", "c"], "meta": {"count": 3}}"#)
            } else {
                text(&request.prompt)
            }
        })
        .arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(
        ran.ctx("r"),
        Some(&json!(["f a of 3", "f b of 3", "f c of 3"]))
    );
}

#[tokio::test(start_paused = true)]
async fn text_results_give_the_parse_json_hint() {
    let recipe = load_lenient(&format!(
        "{HEADER}steps:\n  - id: a\n    agent: dev\n    prompt: go\n    output: r\n  - id: b\n    agent: dev\n    prompt: \"{{{{r.field}}}}\"\n"
    ));
    let fake = Fake::new().agent(|_, _| text("plain words")).arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert!(
        ran.error()
            .contains("Cannot access 'field' on {{r}} - it's a str, not a dict. Hint:"),
        "{}",
        ran.error()
    );
}

#[tokio::test(start_paused = true)]
async fn bash_results_never_take_fragments_from_prose() {
    // The reference replaced prose with bracket fragments (W16).
    let cases = [
        (
            "Usage: tool [] options\n",
            false,
            json!("Usage: tool [] options"),
        ),
        (
            "we saw [1, 2] and more\n",
            false,
            json!("we saw [1, 2] and more"),
        ),
        (
            "step 1 ok\nstep 2 ok\n{\"status\": \"done\"}\n",
            false,
            json!({"status": "done"}),
        ),
        ("done\n", false, json!("done")),
        ("noise {} then {\"a\": 1}\n", true, json!({"a": 1})),
    ];
    for (stdout, parse_json, expected) in cases {
        let recipe = flat(&format!(
            "  - id: s\n    type: bash\n    command: x\n    output: r\n    parse_json: {parse_json}\n  - id: check\n    type: bash\n    command: y\n    condition: \"{{{{r}}}} == 'done'\"\n"
        ));
        let stdout = stdout.to_string();
        let fake = Fake::new().bash(move |_, _| exit(0, &stdout)).arc();
        let ran = run(&recipe, json!({}), &fake).await;
        assert_eq!(ran.ctx("r"), Some(&expected));
        // `echo done` makes `{{r}} == 'done'` hold (trailing newline policy).
        assert_eq!(fake.scripts().len() == 2, expected == json!("done"));
    }
}
