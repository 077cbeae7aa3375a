//! test_models.py (46): step and recipe structure, loading from YAML.

use expect_test::expect;
use recipe::model::{Body, Loop, OnError, Retry, StepKind};

use super::{HEADER, assert_clean, checked, codes, diags, first_step, flat, recipe};

const AGENT: &str = "  - id: s1\n    agent: dev\n    prompt: hello\n";

#[test]
fn step_defaults_timeout_on_error_depends_on() {
    let step = first_step(&flat(AGENT));
    assert_eq!(step.timeout_secs, 600);
    assert_eq!(step.on_error, OnError::Fail);
    assert!(step.depends_on.is_empty());
    assert_eq!(step.retry, None);
    assert!(!step.parse_json);
    assert_eq!(step.kind.type_name(), "agent");
    let StepKind::Agent(agent) = &step.kind else {
        panic!("agent")
    };
    // test_model_role.py / test_spawn_mode.py: no model_role, no spawn_mode by default.
    assert_eq!(
        (agent.model_role.as_ref(), agent.spawn_mode.as_ref()),
        (None, None)
    );
    assert_eq!(agent.provider_preferences, None);
}

#[test]
fn well_formed_agent_step_and_minimal_recipe_are_clean() {
    assert_clean(&flat(AGENT));
}

#[test]
fn empty_id_is_an_error_naming_id() {
    expect!["error missing-field steps[0].id 5:5 step is missing required field 'id' (it must be non-empty)"]
        .assert_eq(&diags(&flat("  - id: \"\"\n    agent: dev\n    prompt: hi\n")));
}

#[test]
fn empty_agent_and_empty_prompt_are_errors() {
    expect![[r#"error missing-field steps[0].agent 6:5 step 's1': agent steps require a non-empty 'agent'"#]]
        .assert_eq(&diags(&flat("  - id: s1\n    agent: \"\"\n    prompt: hi\n")));
    expect![[r#"error missing-field steps[0].prompt 7:5 step 's1': agent steps require a non-empty 'prompt'"#]]
        .assert_eq(&diags(&flat("  - id: s1\n    agent: dev\n    prompt: ''\n")));
}

#[test]
fn negative_timeout_is_an_error() {
    expect![[
        r#"error out-of-range steps[0].timeout 8:14 timeout must be positive (seconds), found -5"#
    ]]
    .assert_eq(&diags(&flat(&format!("{AGENT}    timeout: -5\n"))));
}

#[test]
fn on_error_values() {
    expect![[r#"error invalid-value steps[0].on_error 8:15 step 's1': on_error must be 'fail', 'continue' or 'skip_remaining', found 'explode'"#]]
        .assert_eq(&diags(&flat(&format!("{AGENT}    on_error: explode\n"))));
    for (value, expected) in [
        ("fail", OnError::Fail),
        ("continue", OnError::Continue),
        ("skip_remaining", OnError::SkipRemaining),
    ] {
        let source = flat(&format!("{AGENT}    on_error: {value}\n"));
        assert_clean(&source);
        assert_eq!(first_step(&source).on_error, expected);
    }
}

#[test]
fn output_name_rules() {
    expect![[r#"error invalid-variable-name steps[0].output 8:13 step 's1': output 'invalid!name' must be alphanumeric (letters, digits and underscores)"#]]
        .assert_eq(&diags(&flat(&format!("{AGENT}    output: invalid!name\n"))));
    for reserved in ["recipe", "session", "step"] {
        let out = diags(&flat(&format!("{AGENT}    output: {reserved}\n")));
        assert_eq!(
            out,
            format!(
                "error reserved-name steps[0].output 8:13 step 's1': output '{reserved}' is reserved (recipe, session and step are reserved names)"
            )
        );
    }
    // `stage` and underscore names are allowed, as in the reference.
    assert_clean(&flat(&format!("{AGENT}    output: _private\n")));
    assert_clean(&flat(&format!("{AGENT}    output: stage\n")));
}

#[test]
fn retry_max_attempts_and_backoff() {
    expect![[r#"error out-of-range steps[0].retry.max_attempts 9:21 max_attempts must be a positive integer, found 0"#]]
        .assert_eq(&diags(&flat(&format!("{AGENT}    retry:\n      max_attempts: 0\n"))));
    expect![[r#"error invalid-value steps[0].retry.backoff 9:16 retry backoff must be 'exponential' or 'linear', found 'random'"#]]
        .assert_eq(&diags(&flat(&format!("{AGENT}    retry:\n      backoff: random\n"))));
    // A template is not an integer (templates/error-handling-recipe.yaml in the corpus).
    expect![[r#"error expected-integer steps[0].retry.max_attempts 9:21 max_attempts must be an integer, found string "{{max_retries}}""#]]
        .assert_eq(&diags(&flat(&format!("{AGENT}    retry:\n      max_attempts: \"{{{{max_retries}}}}\"\n"))));
}

#[test]
fn missing_required_recipe_fields_each_named() {
    let steps = format!("steps:\n{AGENT}");
    expect![[r#"error missing-field name 1:1 recipe missing required field: name"#]]
        .assert_eq(&diags(&format!("description: d\nversion: 1.0.0\n{steps}")));
    expect![[r#"error missing-field description 1:1 recipe missing required field: description"#]]
        .assert_eq(&diags(&format!("name: n\nversion: 1.0.0\n{steps}")));
    expect![[r#"error missing-field version 1:1 recipe missing required field: version"#]]
        .assert_eq(&diags(&format!("name: n\ndescription: d\n{steps}")));
    expect![[r#"error missing-field name 1:1 recipe missing required field: name"#]].assert_eq(
        &diags(&format!(
            "name: ''\ndescription: d\nversion: 1.0.0\n{steps}"
        )),
    );
}

#[test]
fn recipe_name_charset() {
    for bad in ["bad@name", "bad!name"] {
        let source = format!("name: {bad}\ndescription: d\nversion: 1.0.0\nsteps:\n{AGENT}");
        assert_eq!(
            diags(&source),
            format!(
                "error invalid-name name 1:7 recipe name '{bad}' must be alphanumeric (letters and digits, with '-' and '_' allowed)"
            )
        );
    }
    for good in [
        "my-recipe",
        "my_recipe",
        "MyRecipe",
        "recipe2",
        "r-2_X",
        "café",
    ] {
        assert_clean(&format!(
            "name: {good}\ndescription: d\nversion: 1.0.0\nsteps:\n{AGENT}"
        ));
    }
}

#[test]
fn version_formats_rejected_with_four_messages() {
    let cases = [
        (
            "\"1.0\"",
            "error invalid-version version 3:10 invalid version '1.0': must be MAJOR.MINOR.PATCH with numeric parts such as 1.0.0",
        ),
        (
            "v1.0.0",
            "error invalid-version version 3:10 version 'v1.0.0' must not start with 'v': use MAJOR.MINOR.PATCH such as 1.0.0",
        ),
        (
            "1.0.0-beta",
            "error invalid-version version 3:10 version '1.0.0-beta' must not have a pre-release suffix ('-'): use MAJOR.MINOR.PATCH",
        ),
        (
            "1.0.0+build5",
            "error invalid-version version 3:10 version '1.0.0+build5' must not have build metadata ('+'): use MAJOR.MINOR.PATCH",
        ),
        (
            "1.a.0",
            "error invalid-version version 3:10 invalid version '1.a.0': must be MAJOR.MINOR.PATCH with numeric parts such as 1.0.0",
        ),
    ];
    for (version, expected) in cases {
        let source = format!("name: n\ndescription: d\nversion: {version}\nsteps:\n{AGENT}");
        assert_eq!(diags(&source), expected, "version {version}");
    }
    // Reference: `version: 1.0` (a YAML float) crashes with AttributeError. Kiln: a typed error.
    expect![[r#"error expected-string version 3:10 version must be a string, found number 1.0 (quote it: "1.0")"#]]
        .assert_eq(&diags(&format!("name: n\ndescription: d\nversion: 1.0\nsteps:\n{AGENT}")));
}

#[test]
fn recipe_without_steps() {
    expect![[r#"error no-steps <root> 4:1 recipe must have at least one step or stage"#]]
        .assert_eq(&diags(&format!("{HEADER}steps: []\n")));
    expect![[r#"error no-steps <root> 1:1 recipe must have at least one step or stage"#]]
        .assert_eq(&diags(HEADER));
}

#[test]
fn duplicate_step_ids() {
    expect![[r#"error duplicate-step-id steps[1].id 8:9 duplicate step id 's1' (also defined at steps[0])"#]]
        .assert_eq(&diags(&flat(&format!("{AGENT}{AGENT}"))));
}

#[test]
fn depends_on_unknown_and_self() {
    expect![[r#"
        warning depends-on-not-enforced steps[0].depends_on 8:5 recipe 'test-recipe' declares depends_on on 1 step; Kiln validates but does not currently enforce depends_on: steps run in declaration order
        error depends-on-unknown steps[0].depends_on[0] 8:18 step 's1': depends_on references unknown step 'ghost'"#]]
    .assert_eq(&diags(&flat(&format!("{AGENT}    depends_on: [ghost]\n"))));
    // Reference: reported twice (both layers) and also as an ordering error. Kiln: once.
    expect![[r#"
        warning depends-on-not-enforced steps[0].depends_on 8:5 recipe 'test-recipe' declares depends_on on 1 step; Kiln validates but does not currently enforce depends_on: steps run in declaration order
        error depends-on-self steps[0].depends_on[0] 8:18 step 's1' cannot depend on itself"#]]
    .assert_eq(&diags(&flat(&format!("{AGENT}    depends_on: [s1]\n"))));
}

#[test]
fn loading_yaml_keeps_fields_and_context() {
    let source = format!(
        "{HEADER}context:\n  topic: rust\n  count: 3\n  nested:\n    a: [1, true, null]\nsteps:\n{AGENT}  - id: s2\n    agent: dev\n    prompt: two\n"
    );
    let recipe = recipe(&source);
    assert_eq!(recipe.name, "test-recipe");
    assert_eq!(recipe.version, "1.0.0");
    assert_eq!(recipe.all_steps().len(), 2);
    assert_eq!(
        serde_json::Value::Object(recipe.context),
        serde_json::json!({"topic": "rust", "count": 3, "nested": {"a": [1, true, null]}})
    );
}

// "Loading a missing file raises a not-found error": no I/O in this crate; the
// controller's intake and the agent's `load_recipe` runner own file lookup.

#[test]
fn invalid_yaml_is_a_syntax_error_with_position() {
    expect!["error yaml-syntax <root> 6:10 invalid YAML: illegal placement of ':' indicator"]
        .assert_eq(&diags(&flat("  - id: [a, b\n    agent: x\n")));
    assert!(checked("name: [unclosed").recipe.is_none());
}

#[test]
fn root_must_be_a_dictionary() {
    expect![[r#"error expected-mapping <root> 1:1 recipe file must be a dictionary (a YAML mapping of fields), found list"#]]
        .assert_eq(&diags("- a\n- b\n"));
    expect![[r#"error expected-mapping <root> 1:1 recipe file must be a dictionary (a YAML mapping of fields), found null"#]]
        .assert_eq(&diags(""));
    assert!(checked("- a\n").recipe.is_none());
}

#[test]
fn steps_must_be_a_list_and_each_step_a_dictionary() {
    expect![[r#"
        error no-steps <root> 4:1 recipe must have at least one step or stage
        error expected-list steps 4:8 'steps' must be a list, found string "not-a-list""#]]
    .assert_eq(&diags(&format!("{HEADER}steps: not-a-list\n")));
    expect![[r#"error expected-mapping steps[0] 5:5 each step must be a dictionary, found string "just-a-string""#]]
        .assert_eq(&diags(&flat(&format!("  - just-a-string\n{AGENT}"))));
}

#[test]
fn depends_on_kept_from_yaml() {
    let source = flat(&format!(
        "{AGENT}  - id: s2\n    agent: dev\n    prompt: p\n    depends_on: [s1]\n"
    ));
    assert_eq!(
        recipe(&source).all_steps()[1].depends_on,
        vec!["s1".to_string()]
    );
}

#[test]
fn nested_steps_become_the_loop_body() {
    let source = flat(
        "  - id: loop\n    foreach: \"{{items}}\"\n    steps:\n      - id: inner1\n        agent: dev\n        prompt: \"{{item}}\"\n      - id: inner2\n        type: bash\n        command: echo hi\n",
    );
    let source = source.replace(
        "steps:\n  - id: loop",
        "context:\n  items: [1]\nsteps:\n  - id: loop",
    );
    assert_clean(&source);
    let step = first_step(&source);
    assert!(matches!(step.looping, Some(Loop::Foreach(_))));
    let ids: Vec<&str> = step.body.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["inner1", "inner2"]);
    assert_eq!(step.body[1].kind.type_name(), "bash");

    let source = flat(
        "  - id: w\n    while_condition: \"{{n}} < 3\"\n    while_steps:\n      - id: inner\n        agent: dev\n        prompt: go\n",
    )
    .replace("steps:\n  - id: w", "context:\n  n: 0\nsteps:\n  - id: w");
    assert_clean(&source);
    let step = first_step(&source);
    assert!(matches!(step.looping, Some(Loop::While(_))));
    assert_eq!(step.body[0].id, "inner");
}

#[test]
fn containers_need_no_agent_or_prompt() {
    let source = format!(
        "{HEADER}context:\n  items: [a]\n  done: false\nsteps:\n  - id: each\n    foreach: \"{{{{items}}}}\"\n    steps:\n      - id: a\n        agent: dev\n        prompt: x\n  - id: w\n    while_condition: \"not {{{{done}}}}\"\n    break_when: \"{{{{items}}}} contains 'a'\"\n    steps:\n      - id: b\n        agent: dev\n        prompt: y\n"
    );
    assert_clean(&source);
}

#[test]
fn nested_body_without_loop_requires_foreach_or_while() {
    expect![[r#"error requires-loop steps[0].steps 8:5 step 's1': nested steps requires foreach or while_condition"#]]
        .assert_eq(&diags(&flat(&format!("{AGENT}    steps:\n      - id: in\n        agent: dev\n        prompt: p\n"))));
}

#[test]
fn staged_nested_foreach_while_validates_and_inner_body_is_loaded() {
    let source = format!(
        "{HEADER}context:
  tasks: [1, 2]
stages:
  - name: build
    steps:
      - id: each-task
        foreach: \"{{{{tasks}}}}\"
        as: task
        steps:
          - id: refine
            while_condition: \"{{{{quality}}}} != 'good'\"
            max_while_iterations: 3
            steps:
              - id: judge
                agent: dev
                prompt: \"judge {{{{task}}}} {{{{_loop_iteration}}}}\"
                output: quality
                condition: \"{{{{task}}}} != 'skip'\"
"
    );
    // Reference: the inner while body stays an unparsed mapping and is never validated.
    // Kiln loads and checks it up front; `quality` is the body's own output, so the
    // while_condition may read it.
    assert_clean(&source);
    let recipe = recipe(&source);
    let Body::Staged(stages) = &recipe.body else {
        panic!("staged")
    };
    let refine = &stages[0].steps[0].body[0];
    assert_eq!(refine.id, "refine");
    assert_eq!(refine.body[0].id, "judge");
    assert_eq!(
        refine.body[0].condition.as_deref(),
        Some("{{task}} != 'skip'")
    );
}

#[test]
fn retry_must_be_a_mapping() {
    let cases = [
        ("\"3\"", "string \"3\""),
        ("3", "integer 3"),
        ("true", "boolean true"),
        ("[1, 2]", "list"),
    ];
    for (value, found) in cases {
        let out = diags(&flat(&format!("{AGENT}    retry: {value}\n")));
        assert_eq!(
            out,
            format!(
                "error expected-mapping steps[0].retry 8:12 retry must be a mapping, found {found}"
            )
        );
    }
}

#[test]
fn retry_mapping_kept_absent_and_null_accepted() {
    let source = flat(&format!(
        "{AGENT}    retry:\n      max_attempts: 3\n      backoff: linear\n      initial_delay: 2\n      max_delay: 10.5\n"
    ));
    assert_clean(&source);
    assert_eq!(
        first_step(&source).retry,
        Some(Retry {
            max_attempts: 3,
            backoff: recipe::model::Backoff::Linear,
            initial_delay_secs: 2.0,
            max_delay_secs: 10.5
        })
    );
    assert_clean(&flat(&format!("{AGENT}    retry: null\n")));
    assert_eq!(
        first_step(&flat(&format!("{AGENT}    retry:\n"))).retry,
        None
    );
    // Defaults follow the reference code (1 attempt), not its docs (3).
    let source = flat(&format!("{AGENT}    retry: {{}}\n"));
    assert_eq!(first_step(&source).retry, Some(Retry::default()));
    assert_eq!(Retry::default().max_attempts, 1);
}

#[test]
fn unknown_step_keys_are_errors_with_path() {
    // Reference: unknown keys crash loading with a Python TypeError.
    expect![[r#"error unknown-field steps[0].timout 8:5 unknown step field 'timout'; did you mean 'timeout'?"#]]
        .assert_eq(&diags(&flat(&format!("{AGENT}    timout: 5\n"))));
    assert_eq!(
        codes(&flat(&format!("{AGENT}    retry:\n      attempts: 2\n"))),
        ["unknown-field steps[0].retry.attempts"]
    );
}

#[test]
fn step_type_detection_and_invalid_type() {
    let source = flat(&format!(
        "{AGENT}  - id: b\n    type: bash\n    command: ls\n  - id: r\n    type: recipe\n    recipe: child.yaml\n  - id: c\n    command: ls\n    agent: dev\n    prompt: p\n"
    ));
    let recipe = recipe(&source);
    let types: Vec<&str> = recipe
        .all_steps()
        .iter()
        .map(|s| s.kind.type_name())
        .collect();
    // A step without `type` is an agent step even when it has `command` (which agents forbid).
    assert_eq!(types, ["agent", "bash", "recipe", "agent"]);
    assert_eq!(codes(&source), ["forbidden-field steps[3].command"]);
    expect![[r#"error invalid-value steps[0].type 8:11 step 's1': type must be 'agent', 'bash' or 'recipe', found 'python'"#]]
        .assert_eq(&diags(&flat(&format!("{AGENT}    type: python\n"))));
    assert!(matches!(first_step(&flat(AGENT)).kind, StepKind::Agent(_)));
}
