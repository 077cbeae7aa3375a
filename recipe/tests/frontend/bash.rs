//! test_bash_steps.py (36): the load and validation parts. Execution
//! behaviours (stdout, env, cwd, timeouts) are the engine's and the sandbox's.

use expect_test::expect;
use recipe::model::StepKind;
use serde_json::json;

use super::{assert_clean, codes, diags, first_step, flat, recipe};

fn bash(step: &StepKind) -> &recipe::model::BashStep {
    match step {
        StepKind::Bash(bash) => bash,
        other => panic!("not bash: {other:?}"),
    }
}

#[test]
fn bash_defaults() {
    let source = flat("  - id: b\n    type: bash\n    command: ls\n");
    assert_clean(&source);
    let step = first_step(&source);
    let bash = bash(&step.kind);
    assert_eq!(bash.cwd, None);
    assert!(bash.env.is_empty());
    assert_eq!(bash.output_exit_code, None);
    assert_eq!(bash.shell, None);
    assert!(!bash.output_stderr);
    assert_eq!(bash.max_output_size, None);
    assert_eq!(bash.delay_between_ms, None);
    assert_eq!(step.timeout_secs, 600);
}

#[test]
fn bash_step_with_every_field_loads_and_validates() {
    let source = flat(
        "  - id: b\n    type: bash\n    command: \"echo {{recipe.name}}\"\n    cwd: /work/sub\n    env:\n      MODE: fast\n      COUNT: 3\n    output: out\n    output_exit_code: rc\n    timeout: 30\n    on_error: continue\n    shell: /bin/sh\n    output_stderr: true\n    max_output_size: 1048576\n    delay_between: 250\n",
    );
    // Reference: the spec-only fields (shell, output_stderr, max_output_size,
    // delay_between) crash loading with a TypeError. Kiln implements them.
    assert_clean(&source);
    let step = first_step(&source);
    let bash = bash(&step.kind);
    assert_eq!(
        bash.command, "echo {{recipe.name}}",
        "templates are stored unsubstituted"
    );
    assert_eq!(bash.cwd.as_deref(), Some("/work/sub"));
    assert_eq!(
        serde_json::Value::Object(bash.env.clone()),
        json!({"MODE": "fast", "COUNT": 3})
    );
    assert_eq!(bash.output_exit_code.as_deref(), Some("rc"));
    assert_eq!(bash.shell.as_deref(), Some("/bin/sh"));
    assert!(bash.output_stderr);
    assert_eq!(bash.max_output_size, Some(1_048_576));
    assert_eq!(bash.delay_between_ms, Some(250));
    assert_eq!(step.output.as_deref(), Some("out"));
    assert_eq!(step.timeout_secs, 30);
    assert_eq!(step.on_error, recipe::model::OnError::Continue);
}

#[test]
fn command_required_non_empty_not_whitespace() {
    expect!["error missing-field steps[0].command 5:5 step 'b': bash steps require a non-empty 'command'"]
        .assert_eq(&diags(&flat("  - id: b\n    type: bash\n")));
    expect![[r#"error missing-field steps[0].command 7:5 step 'b': bash steps require a non-empty 'command'"#]]
        .assert_eq(&diags(&flat("  - id: b\n    type: bash\n    command: \"\"\n")));
    expect![[r#"error missing-field steps[0].command 7:14 step 'b': bash command must not be only whitespace"#]]
        .assert_eq(&diags(&flat("  - id: b\n    type: bash\n    command: \"   \"\n")));
}

#[test]
fn bash_forbids_agent_fields() {
    for (key, value) in [
        ("agent", "dev"),
        ("prompt", "hi"),
        ("mode", "ANALYZE"),
        ("agent_config", "{}"),
        ("recipe", "x.yaml"),
    ] {
        let out = diags(&flat(&format!(
            "  - id: b\n    type: bash\n    command: ls\n    {key}: {value}\n"
        )));
        assert_eq!(
            out,
            format!(
                "error forbidden-field steps[0].{key} 8:5 step 'b': bash steps cannot have '{key}'"
            )
        );
    }
    assert_eq!(
        codes(&flat(
            "  - id: b\n    type: bash\n    command: ls\n    context: {}\n    recursion: {}\n    spawn_mode: subprocess\n"
        )),
        [
            "forbidden-field steps[0].context",
            "forbidden-field steps[0].recursion",
            "forbidden-field steps[0].spawn_mode"
        ]
    );
}

#[test]
fn output_exit_code_names() {
    assert_clean(&flat(
        "  - id: b\n    type: bash\n    command: ls\n    output_exit_code: exit_code\n",
    ));
    expect![[r#"error invalid-variable-name steps[0].output_exit_code 8:23 step 'b': output_exit_code 'bad-name' must be alphanumeric (letters, digits and underscores)"#]]
        .assert_eq(&diags(&flat("  - id: b\n    type: bash\n    command: ls\n    output_exit_code: bad-name\n")));
    for reserved in ["recipe", "session", "step"] {
        assert_eq!(
            codes(&flat(&format!(
                "  - id: b\n    type: bash\n    command: ls\n    output_exit_code: {reserved}\n"
            ))),
            ["reserved-name steps[0].output_exit_code"]
        );
    }
}

#[test]
fn mixed_agent_and_bash_steps() {
    let source = flat(
        "  - id: a\n    agent: dev\n    prompt: p\n    output: x\n  - id: b\n    type: bash\n    command: \"echo {{x}}\"\n",
    );
    assert_clean(&source);
    let recipe = recipe(&source);
    let types: Vec<&str> = recipe
        .all_steps()
        .iter()
        .map(|s| s.kind.type_name())
        .collect();
    assert_eq!(types, ["agent", "bash"]);
}

#[test]
fn bash_field_types() {
    expect![[r#"
        error expected-integer steps[0].max_output_size 8:22 max_output_size must be an integer, found string "10MB"
        error out-of-range steps[0].delay_between 9:20 delay_between must be non-negative (milliseconds), found -1
        error expected-boolean steps[0].output_stderr 10:20 output_stderr must be a boolean (true or false), found string "maybe""#]]
    .assert_eq(&diags(&flat(
        "  - id: b\n    type: bash\n    command: ls\n    max_output_size: 10MB\n    delay_between: -1\n    output_stderr: maybe\n",
    )));
    expect!["error expected-string steps[0].env.LIST 9:7 step 'b': env value 'LIST' must be a scalar, found list"]
        .assert_eq(&diags(&flat("  - id: b\n    type: bash\n    command: ls\n    env:\n      LIST: [1]\n")));
}

#[test]
fn agent_only_selection_fields_on_bash_are_errors() {
    assert_eq!(
        codes(&flat(
            "  - id: b\n    type: bash\n    command: ls\n    provider: openai\n    model_role: fast\n"
        )),
        [
            "forbidden-field steps[0].provider",
            "forbidden-field steps[0].model_role"
        ]
    );
}
