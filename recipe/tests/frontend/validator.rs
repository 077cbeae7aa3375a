//! test_recipe_validator.py (54): variable references, dependencies, agent
//! warnings, staged checks and dotted context paths; plus the validator gaps
//! Kiln closes (expressions, `_loop_*`, `_approval_message`, `stage.*`,
//! sub-recipe existence).

use expect_test::expect;
use recipe::CheckOptions;

use super::{HEADER, assert_clean, codes, diags, diags_with, flat};

/// A recipe with the given context block (indented by two) and steps.
fn with_context(context: &str, steps: &str) -> String {
    format!("{HEADER}context:\n{context}steps:\n{steps}")
}

fn agent(id: &str, prompt: &str) -> String {
    format!("  - id: {id}\n    agent: dev\n    prompt: \"{prompt}\"\n")
}

fn undefined_names(source: &str) -> Vec<String> {
    super::checked(source)
        .diagnostics
        .iter()
        .filter(|d| d.code == "undefined-variable" || d.code == "unknown-namespace")
        .map(|d| {
            d.message
                .split_whitespace()
                .find(|w| w.starts_with("{{"))
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

#[test]
fn placeholder_extraction_through_validation() {
    let cases: [(&str, &[&str]); 7] = [
        ("Hello {{a1}}", &["{{a1}}"]),
        ("{{a1}} and {{b2}}", &["{{a1}}", "{{b2}}"]),
        ("{{ns.key}}", &["{{ns.key}}"]),
        ("no placeholders", &[]),
        ("{{a1}} {{a1}} {{a1}}", &["{{a1}}"]),
        ("{{my_var_name}}", &["{{my_var_name}}"]),
        // Not placeholders (section 11.1): spaces, `#`, quotes.
        ("{{ spaced }} {{#if x}} {{\" + y + \"}}", &[]),
    ];
    for (prompt, expected) in cases {
        let prompt = prompt.replace('"', "\\\"");
        assert_eq!(
            undefined_names(&flat(&agent("s", &prompt))),
            expected,
            "prompt {prompt}"
        );
    }
}

#[test]
fn context_and_reserved_variables_are_available() {
    assert_clean(&with_context("  topic: x\n", &agent("s", "{{topic}}")));
    assert_clean(&flat(&agent(
        "s",
        "{{recipe.name}} {{session.id}} {{step.id}} {{recipe.anything}}",
    )));
}

#[test]
fn unknown_variable_names_it_and_lists_available() {
    expect!["error undefined-variable steps[0].prompt 9:20 undefined variable {{missing}} in prompt: 'missing' is not defined. Available variables: recipe, session, step, topic"]
        .assert_eq(&diags(&with_context("  topic: x\n", &agent("s", "about {{missing}}"))));
}

#[test]
fn step_outputs_are_available_only_to_later_steps() {
    let later = format!(
        "{}    output: result\n{}",
        agent("a", "go"),
        agent("b", "{{result}}")
    );
    assert_clean(&flat(&later));
    let earlier = format!(
        "{}{}    output: result\n",
        agent("a", "{{result}}"),
        agent("b", "go")
    );
    assert_eq!(
        codes(&flat(&earlier)),
        ["undefined-variable steps[0].prompt"]
    );
}

#[test]
fn dotted_references() {
    expect!["error unknown-namespace steps[0].prompt 7:14 {{nothere.field}} in prompt references unknown namespace 'nothere'. Available variables: recipe, session, step"]
        .assert_eq(&diags(&flat(&agent("s", "{{nothere.field}}"))));
    // Into an earlier step's output: fields are not checked.
    let source = format!(
        "{}    output: res\n{}",
        agent("a", "go"),
        agent("b", "{{res.any.depth}}")
    );
    assert_clean(&flat(&source));
    // Sub-recipe context and recipe path into a step output.
    let source = format!(
        "{}    output: res\n  - id: sub\n    type: recipe\n    recipe: \"{{{{res.path}}}}\"\n    context:\n      task: \"{{{{res.task}}}}\"\n      nested:\n        deep: [\"{{{{res.x}}}}\"]\n",
        agent("a", "go")
    );
    assert_clean(&flat(&source));
}

#[test]
fn output_exit_code_available_later_not_earlier() {
    let bash = "  - id: b\n    type: bash\n    command: ls\n    output_exit_code: rc\n";
    assert_clean(&flat(&format!("{bash}{}", agent("a", "{{rc}}"))));
    assert_eq!(
        codes(&flat(&format!("{}{bash}", agent("a", "{{rc}}")))),
        ["undefined-variable steps[0].prompt"]
    );
}

#[test]
fn dependencies() {
    let ok = format!(
        "{}{}    depends_on: [a]\n{}    depends_on: [a, b]\n",
        agent("a", "x"),
        agent("b", "y"),
        agent("c", "z")
    );
    assert_eq!(
        codes(&flat(&ok)),
        ["depends-on-not-enforced steps[1].depends_on"]
    );
    let later = format!(
        "{}    depends_on: [b]\n{}",
        agent("a", "x"),
        agent("b", "y")
    );
    expect![[r#"
        warning depends-on-not-enforced steps[0].depends_on 8:5 recipe 'test-recipe' declares depends_on on 1 step; Kiln validates but does not currently enforce depends_on: steps run in declaration order
        error depends-on-later steps[0].depends_on[0] 8:18 step 'a': depends_on 'b' appears later in recipe (index 1 >= 0)"#]]
    .assert_eq(&diags(&flat(&later)));
}

#[test]
fn broken_recipe_fails_and_valid_passes() {
    assert!(super::checked("name: x\n").has_errors());
    assert!(!super::checked(&flat(&agent("a", "hi"))).has_errors());
}

#[test]
fn known_agents_warn_for_agent_steps_only() {
    let options = CheckOptions {
        known_agents: Some(vec!["dev".to_string()]),
        available_recipes: None,
    };
    let source = flat(
        "  - id: a\n    agent: ghost\n    prompt: p\n  - id: b\n    agent: dev\n    prompt: p\n  - id: c\n    type: bash\n    command: ls\n  - id: d\n    type: recipe\n    recipe: child.yaml\n",
    );
    // Reference: bash and recipe steps also warn (`Agent 'None' may not be available`).
    expect![[r#"warning unknown-agent steps[0].agent 6:12 step 'a': agent 'ghost' may not be available on this server"#]]
        .assert_eq(&diags_with(&source, &options));
    // Without a host list the check is skipped; warnings alone keep a recipe valid.
    assert_clean(&source);
    assert!(!recipe::check(&source, &options).has_errors());
}

#[test]
fn staged_checks() {
    let source = format!(
        "{HEADER}stages:\n  - name: one\n    steps:\n      - id: a\n        agent: ghost\n        prompt: \"{{{{nope}}}}\"\n        depends_on: [b]\n  - name: two\n    steps:\n      - id: b\n        agent: dev\n        prompt: \"{{{{stage.name}}}}\"\n"
    );
    let options = CheckOptions {
        known_agents: Some(vec!["dev".to_string()]),
        available_recipes: None,
    };
    expect![[r#"
        warning unknown-agent stages[0].steps[0].agent 8:16 step 'a': agent 'ghost' may not be available on this server
        error undefined-variable stages[0].steps[0].prompt 9:18 undefined variable {{nope}} in prompt: 'nope' is not defined. Available variables: recipe, session, stage, step
        warning depends-on-not-enforced stages[0].steps[0].depends_on 10:9 recipe 'test-recipe' declares depends_on on 1 step; Kiln validates but does not currently enforce depends_on: steps run in declaration order
        error depends-on-later stages[0].steps[0].depends_on[0] 10:22 step 'a': depends_on 'b' appears later in recipe (index 1 >= 0)"#]]
    .assert_eq(&diags_with(&source, &options));
}

#[test]
fn retry_wrong_types_are_errors_not_crashes() {
    assert_eq!(
        codes(&flat(&format!("{}    retry: \"3\"\n", agent("a", "x")))),
        ["expected-mapping steps[0].retry"]
    );
    assert_eq!(
        codes(&flat(&format!("{}    retry: 3\n", agent("a", "x")))),
        ["expected-mapping steps[0].retry"]
    );
    assert_clean(&flat(&format!(
        "{}    retry:\n      max_attempts: 2\n",
        agent("a", "x")
    )));
}

const CONTEXT: &str = "  requirements:\n    character_design: hero\n    deep:\n      level: 3\n  title: text\n  count: 7\n  items: [a, b]\n";

#[test]
fn context_paths_are_walked() {
    // Lines: context keys are lines 5-11; steps start at line 13; the prompt is on line 15.
    let cases: [(&str, &str); 9] = [
        ("{{requirements.character_design}}", ""),
        ("{{requirements.deep.level}}", ""),
        ("{{requirements}}", ""),
        (
            "{{requirements.nonexistent}}",
            "error unknown-context-key steps[0].prompt 15:14 {{requirements.nonexistent}} in prompt: key 'nonexistent' not found in 'requirements'. Available keys: character_design, deep",
        ),
        (
            "{{requirements.character_design.x}}",
            "error not-a-dict steps[0].prompt 15:14 {{requirements.character_design.x}} in prompt: 'requirements.character_design' is not a dict (cannot access 'x' on type str)",
        ),
        (
            "{{title.x}}",
            "error not-a-dict steps[0].prompt 15:14 {{title.x}} in prompt: 'title' is not a dict (cannot access 'x' on type str)",
        ),
        (
            "{{count.x}}",
            "error not-a-dict steps[0].prompt 15:14 {{count.x}} in prompt: 'count' is not a dict (cannot access 'x' on type int)",
        ),
        (
            "{{items.0}}",
            "error not-a-dict steps[0].prompt 15:14 {{items.0}} in prompt: 'items' is not a dict (cannot access '0' on type list)",
        ),
        (
            "{{unknown.x}}",
            "error unknown-namespace steps[0].prompt 15:14 {{unknown.x}} in prompt references unknown namespace 'unknown'. Available variables: count, items, recipe, requirements, session, step, title",
        ),
    ];
    for (prompt, expected) in cases {
        assert_eq!(
            diags(&with_context(CONTEXT, &agent("s", prompt))),
            expected,
            "prompt {prompt}"
        );
    }
}

#[test]
fn step_output_shadows_context_key_and_reserved_are_not_walked() {
    let steps = format!(
        "{}    output: title\n{}",
        agent("a", "{{session.id.more}}"),
        agent("b", "{{title.field}}")
    );
    assert_clean(&with_context(CONTEXT, &steps));
}

#[test]
fn deep_checks_apply_to_every_templated_field() {
    let bash = "  - id: b\n    type: bash\n    command: \"echo {{requirements.no1}}\"\n    cwd: \"{{requirements.no2}}\"\n    env:\n      A: \"{{requirements.no3}}\"\n      B: 5\n";
    let sub = "  - id: r\n    type: recipe\n    recipe: \"{{requirements.no4}}.yaml\"\n    context:\n      x: \"{{requirements.no5}}\"\n";
    let out = codes(&with_context(CONTEXT, &format!("{bash}{sub}")));
    assert_eq!(
        out,
        [
            "unknown-context-key steps[0].command",
            "unknown-context-key steps[0].cwd",
            "unknown-context-key steps[0].env.A",
            "unknown-context-key steps[1].recipe",
            "unknown-context-key steps[1].context.x",
        ]
    );
}

#[test]
fn loop_variable_is_local_and_not_walked() {
    let steps = "  - id: l\n    foreach: \"{{items}}\"\n    agent: dev\n    prompt: \"{{item.name}} {{_loop_index}} {{_loop_iteration}}\"\n    output: last\n    collect: all\n";
    let after = agent("after", "{{all}} {{last}} {{_skipped_steps}}");
    assert_clean(&with_context(CONTEXT, &format!("{steps}{after}")));
    let leak = agent("after", "{{item}}");
    assert_eq!(
        codes(&with_context(CONTEXT, &format!("{steps}{leak}"))),
        ["undefined-variable steps[1].prompt"]
    );
    // `_loop_*` only exist inside loops.
    assert_eq!(
        codes(&flat(&agent("a", "{{_loop_index}}"))),
        ["undefined-variable steps[0].prompt"]
    );
}

#[test]
fn runtime_variables_where_the_format_defines_them() {
    // Reference validator: `_approval_message`, `_loop_*` and `stage.*` are rejected (W10, W26).
    assert_eq!(
        codes(&flat(&agent("a", "{{stage.name}}"))),
        ["unknown-namespace steps[0].prompt"]
    );
    assert_eq!(
        codes(&flat(&agent("a", "{{_approval_message}}"))),
        ["undefined-variable steps[0].prompt"]
    );
    let source = format!(
        "{HEADER}stages:\n  - name: one\n    steps:\n      - id: a\n        agent: dev\n        prompt: \"{{{{stage.name}}}} {{{{stage.index}}}}\"\n  - name: two\n    steps:\n      - id: b\n        agent: dev\n        prompt: \"{{{{_approval_message}}}}\"\n"
    );
    assert_clean(&source);
    // `_approval_message` only after the first stage ended.
    let first_stage_use = source.replace("{{stage.name}} {{stage.index}}", "{{_approval_message}}");
    assert_eq!(
        codes(&first_stage_use),
        ["undefined-variable stages[0].steps[0].prompt"]
    );
    // `_skipped_steps` after a step that can be skipped.
    let conditional = format!(
        "{}    condition: \"{{{{recipe.name}}}} == 'x'\"\n{}",
        agent("a", "x"),
        agent("b", "{{_skipped_steps}}")
    );
    assert_clean(&flat(&conditional));
}

#[test]
fn expressions_are_checked_at_load_time_with_positions() {
    // Reference: conditions are never validated; errors appear at run time.
    let plain = format!(
        "{}    condition: not {{{{recipe.name}}}} >>> 1\n",
        agent("a", "x")
    );
    expect!["error expression-syntax steps[0].condition 8:37 condition: Invalid expression: Unexpected operator '>' at position 21"].assert_eq(&diags(&flat(&plain)));
    let quoted = format!(
        "{}    condition: \"{{{{recipe.name}}}} == 'x' and\"\n",
        agent("a", "x")
    );
    expect!["error expression-syntax steps[0].condition 8:43 condition: Invalid expression: Unexpected end of expression"]
        .assert_eq(&diags(&flat(&quoted)));
    // A one-line block scalar still maps exactly (its text appears verbatim).
    let block = format!(
        "{}    condition: >-\n      {{{{recipe.name}}}} ==\n",
        agent("a", "x")
    );
    let out = diags(&flat(&block));
    assert!(
        out.starts_with("error expression-syntax steps[0].condition 9:25 "),
        "{out}"
    );
    // A folded multi-line scalar cannot be mapped character by character: its start is used.
    let folded = format!(
        "{}    condition: >-\n      {{{{recipe.name}}}}\n      ==\n",
        agent("a", "x")
    );
    let out = diags(&flat(&folded));
    assert!(
        out.starts_with("error expression-syntax steps[0].condition 9:7 "),
        "{out}"
    );
    // Variables inside expressions are checked like templates.
    let undefined = format!(
        "{}    condition: \"{{{{ghost}}}} == 'x'\"\n",
        agent("a", "x")
    );
    expect![[r#"error undefined-variable steps[0].condition 8:17 undefined variable {{ghost}} in condition: 'ghost' is not defined. Available variables: recipe, session, step"#]]
        .assert_eq(&diags(&flat(&undefined)));
    // The typed superset parses: negatives, null, contains, in.
    let superset = format!(
        "{}    condition: \"{{{{recipe.name}}}} contains 'a' and -5 < 0 and {{{{recipe.name}}}} != null and 'x' in {{{{recipe.name}}}}\"\n",
        agent("a", "x")
    );
    assert_clean(&flat(&superset));
}

#[test]
fn sub_recipe_paths_checked_against_available_recipes() {
    let options = CheckOptions {
        known_agents: None,
        available_recipes: Some(vec!["child.yaml".to_string(), "lib/other.yaml".to_string()]),
    };
    let steps = "  - id: a\n    type: recipe\n    recipe: child.yaml\n  - id: b\n    type: recipe\n    recipe: ./lib/other.yaml\n  - id: c\n    type: recipe\n    recipe: missing.yaml\n  - id: d\n    type: recipe\n    recipe: \"{{recipe.name}}.yaml\"\n";
    expect![[r#"error sub-recipe-not-found steps[2].recipe 13:13 step 'c': sub-recipe 'missing.yaml' not found among the submitted files and the gallery"#]]
        .assert_eq(&diags_with(&flat(steps), &options));
    // Without a list, paths are not checked.
    assert_clean(&flat(steps));
}

#[test]
fn handlebars_in_prompts_warns_and_else_is_not_undefined() {
    expect!["warning handlebars-literal steps[0].prompt 7:13 Handlebars blocks ({{#if}}, {{else}}, {{/if}}) in this prompt are not supported and stay literal text"]
        .assert_eq(&diags(&flat(&agent("a", "{{#if recipe.name}}a{{else}}b{{/if}}"))));
}

#[test]
fn model_role_and_provider_selection() {
    // test_model_role.py / provider preferences (validation parts).
    let base = "  - id: a\n    agent: dev\n    prompt: p\n";
    assert_clean(&flat(&format!("{base}    model_role: reasoning\n")));
    expect![[r#"error conflicting-fields steps[0].model_role 8:5 step 'a': model_role cannot be combined with provider_preferences"#]]
        .assert_eq(&diags(&flat(&format!("{base}    model_role: fast\n    provider_preferences:\n      - provider: openai\n"))));
    assert_eq!(
        codes(&flat(&format!(
            "{base}    model_role: fast\n    provider: openai\n    model: gpt\n"
        ))),
        ["conflicting-fields steps[0].model_role"]
    );
    assert_eq!(
        codes(&flat(&format!(
            "{base}    provider: openai\n    provider_preferences:\n      - provider: anthropic\n"
        ))),
        ["conflicting-fields steps[0].provider_preferences"]
    );
    // Reference: `- class:` entries crash loading (examples/attractor). Kiln loads them.
    let source = flat(&format!(
        "{base}    provider_preferences:\n      - class: reasoning\n      - provider: anthropic\n        model: claude-*\n"
    ));
    assert_clean(&source);
    let step = super::first_step(&source);
    let recipe::model::StepKind::Agent(agent) = step.kind else {
        panic!("agent")
    };
    assert_eq!(
        agent.provider_preferences.unwrap(),
        [
            recipe::model::ProviderPreference::Class {
                class: "reasoning".to_string()
            },
            recipe::model::ProviderPreference::Provider {
                provider: "anthropic".to_string(),
                model: Some("claude-*".to_string())
            },
        ]
    );
    assert_eq!(
        codes(&flat(&format!("{base}    provider_preferences: []\n"))),
        ["out-of-range steps[0].provider_preferences"]
    );
    assert_eq!(
        codes(&flat(&format!(
            "{base}    provider_preferences:\n      - model: x\n      - provider: a\n        class: b\n      - provider: a\n        weight: 2\n"
        ))),
        [
            "missing-field steps[0].provider_preferences[0]",
            "conflicting-fields steps[0].provider_preferences[1].class",
            "unknown-field steps[0].provider_preferences[2].weight",
        ]
    );
}

#[test]
fn spawn_mode_rules() {
    // test_spawn_mode.py (validation parts).
    let base = "  - id: a\n    agent: dev\n    prompt: p\n";
    assert_clean(&flat(&format!("{base}    spawn_mode: subprocess\n")));
    assert_eq!(
        codes(&flat(&format!("{base}    spawn_mode: thread\n"))),
        ["invalid-value steps[0].spawn_mode"]
    );
    assert_eq!(
        codes(&flat(
            "  - id: r\n    type: recipe\n    recipe: c.yaml\n    spawn_mode: subprocess\n"
        )),
        ["forbidden-field steps[0].spawn_mode"]
    );
}

#[test]
fn diagnostics_serialise_for_the_api() {
    let checked = super::checked(&flat(
        "  - id: s\n    agent: dev\n    prompt: \"{{ghost}}\"\n",
    ));
    let json = serde_json::to_string(&checked.diagnostics).unwrap();
    expect![[r#"[{"code":"undefined-variable","severity":"error","message":"undefined variable {{ghost}} in prompt: 'ghost' is not defined. Available variables: recipe, session, step","path":"steps[0].prompt","line":7,"column":14,"span":{"start":98,"end":107}}]"#]]
        .assert_eq(&json);
    let back: Vec<recipe::diagnostic::Diagnostic> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, checked.diagnostics);
}
