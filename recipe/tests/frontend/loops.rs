//! test_executor_loops.py and test_foreach_checkpointing.py (validation
//! parts), plus while-loop rules (section 5.6) and `parallel` decoding.

use expect_test::expect;
use recipe::model::{Loop, Parallel};

use super::{HEADER, assert_clean, codes, diags, first_step};

fn looped(extra: &str) -> String {
    format!(
        "{HEADER}context:\n  items: [a, b]\nsteps:\n  - id: l\n    agent: dev\n    prompt: \"{{{{item}}}}\"\n{extra}"
    )
}

fn foreach_of(source: &str) -> recipe::model::Foreach {
    match first_step(source).looping {
        Some(Loop::Foreach(foreach)) => foreach,
        other => panic!("not a foreach: {other:?}"),
    }
}

#[test]
fn well_formed_foreach_and_defaults() {
    let source = looped("    foreach: \"{{items}}\"\n");
    assert_clean(&source);
    let foreach = foreach_of(&source);
    assert_eq!(foreach.as_name, "item");
    assert_eq!(foreach.max_iterations, 100);
    assert_eq!(foreach.parallel, Parallel::Sequential);
    assert!(!foreach.checkpoint_iterations);
    assert_eq!(foreach.collect, None);
}

#[test]
fn foreach_rules() {
    expect![[r#"error foreach-no-variable steps[0].foreach 10:14 step 'l': foreach must contain a variable reference such as {{items}}"#]]
        .assert_eq(&diags(&looped("    foreach: \"[1, 2]\"\n")));
    expect![[r#"
        error undefined-variable steps[0].prompt 9:14 undefined variable {{item}} in prompt: 'item' is not defined. Available variables: _loop_index, _loop_iteration, bad-name, items, recipe, session, step
        error invalid-variable-name steps[0].as 11:9 step 'l': 'as' must be a valid variable name (letters, digits, underscores), found 'bad-name'"#]]
        .assert_eq(&diags(&looped("    foreach: \"{{items}}\"\n    as: bad-name\n")));
    expect![[r#"error invalid-variable-name steps[0].collect 11:14 step 'l': 'collect' must be a valid variable name (letters, digits, underscores), found 'my results'"#]]
        .assert_eq(&diags(&looped("    foreach: \"{{items}}\"\n    collect: my results\n")));
    expect![[r#"error out-of-range steps[0].max_iterations 11:21 step 'l': max_iterations must be positive, found 0"#]]
        .assert_eq(&diags(&looped("    foreach: \"{{items}}\"\n    max_iterations: 0\n")));
    // Trailing text after the reference is ignored by the reference at run time; Kiln warns.
    expect![[r#"warning foreach-extra-text steps[0].foreach 10:14 step 'l': foreach should be a single reference such as {{items}}; only the first reference is used"#]]
        .assert_eq(&diags(&looped("    foreach: \"{{items}} and more\"\n")));
}

#[test]
fn custom_as_is_usable_and_reserved_as_is_allowed() {
    let source =
        looped("    foreach: \"{{items}}\"\n    as: thing\n").replace("{{item}}", "{{thing}}");
    assert_clean(&source);
    assert_eq!(foreach_of(&source).as_name, "thing");
    // The reference allows `as: recipe` (the corpus uses it); Kiln restores the shadowed value.
    assert_clean(
        &looped("    foreach: \"{{items}}\"\n    as: recipe\n").replace("{{item}}", "{{recipe}}"),
    );
}

#[test]
fn parallel_rules() {
    expect![[
        r#"error requires-foreach steps[0].parallel 10:5 step 'l': parallel requires foreach"#
    ]]
    .assert_eq(&diags(
        &looped("    parallel: true\n").replace("{{item}}", "x"),
    ));
    let cases: [(&str, Parallel); 8] = [
        ("true", Parallel::Unbounded),
        ("false", Parallel::Sequential),
        ("3", Parallel::Limit(3)),
        // Reference: a string is truthy, so "false" runs unbounded parallel (W22). Part A item 9.
        ("\"false\"", Parallel::Sequential),
        ("\"True\"", Parallel::Unbounded),
        ("\"4\"", Parallel::Limit(4)),
        ("null", Parallel::Sequential),
        ("1", Parallel::Limit(1)),
    ];
    for (value, expected) in cases {
        let source = looped(&format!(
            "    foreach: \"{{{{items}}}}\"\n    parallel: {value}\n"
        ));
        assert_clean(&source);
        assert_eq!(foreach_of(&source).parallel, expected, "parallel: {value}");
    }
    expect![[r#"error out-of-range steps[0].parallel 11:15 step 'l': parallel must be at least 1 when an integer, found 0"#]]
        .assert_eq(&diags(&looped("    foreach: \"{{items}}\"\n    parallel: 0\n")));
    expect![[r#"warning parallel-string steps[0].parallel 11:15 step 'l': parallel '{{mode}}' is not true, false or a number; it is not templated and runs unbounded parallel (as the reference does)"#]]
        .assert_eq(&diags(&looped("    foreach: \"{{items}}\"\n    parallel: \"{{mode}}\"\n")));
}

#[test]
fn checkpoint_rules() {
    assert_clean(&looped(
        "    foreach: \"{{items}}\"\n    checkpoint_iterations: true\n",
    ));
    assert!(
        foreach_of(&looped(
            "    foreach: \"{{items}}\"\n    checkpoint_iterations: true\n"
        ))
        .checkpoint_iterations
    );
    expect![[r#"error requires-foreach steps[0].checkpoint_iterations 10:5 step 'l': checkpoint_iterations requires foreach"#]]
        .assert_eq(&diags(&looped("    checkpoint_iterations: true\n").replace("{{item}}", "x")));
    expect![[r#"error conflicting-fields steps[0].checkpoint_iterations 12:5 step 'l': checkpoint_iterations cannot be used with parallel"#]]
        .assert_eq(&diags(&looped("    foreach: \"{{items}}\"\n    parallel: 2\n    checkpoint_iterations: true\n")));
}

#[test]
fn parallel_foreach_over_recipe_step_warns_agent_does_not() {
    let source = format!(
        "{HEADER}context:\n  items: [a]\nsteps:\n  - id: r\n    type: recipe\n    recipe: child.yaml\n    foreach: \"{{{{items}}}}\"\n    parallel: true\n"
    );
    expect![[r#"warning parallel-recipe-foreach steps[0].parallel 11:5 step 'r': parallel foreach with type='recipe' runs sub-recipes concurrently; approval gates inside them are not supported"#]]
        .assert_eq(&diags(&source));
    assert_clean(&looped("    foreach: \"{{items}}\"\n    parallel: true\n"));
}

fn while_step(extra: &str) -> String {
    format!(
        "{HEADER}context:\n  done: false\nsteps:\n  - id: w\n    agent: dev\n    prompt: \"{{{{_loop_iteration}}}}\"\n    output: answer\n{extra}"
    )
}

#[test]
fn while_rules() {
    let ok = while_step(
        "    while_condition: \"not {{done}}\"\n    max_while_iterations: 5\n    break_when: \"{{answer}} == 'stop'\"\n    update_context:\n      done: \"{{answer}}\"\n      note: \"{{_loop_index}}\"\n",
    );
    assert_clean(&ok);
    let Some(Loop::While(while_loop)) = first_step(&ok).looping else {
        panic!("while")
    };
    assert_eq!(while_loop.max_while_iterations, 5);
    let names: Vec<&str> = while_loop
        .update_context
        .iter()
        .map(|u| u.name.as_str())
        .collect();
    assert_eq!(names, ["done", "note"], "declaration order");
    // `while_condition: true` (unquoted boolean) is the literal-true loop.
    let literal = while_step("    while_condition: true\n    break_when: \"{{answer}} == 'x'\"\n");
    assert_clean(&literal);
    let Some(Loop::While(while_loop)) = first_step(&literal).looping else {
        panic!("while")
    };
    assert_eq!(while_loop.condition, "true");
    assert_eq!(while_loop.max_while_iterations, 100);

    expect![[r#"error while-no-variable steps[0].while_condition 11:22 step 'w': while_condition must contain a variable reference or be 'true'"#]]
        .assert_eq(&diags(&while_step("    while_condition: \"1 == 1\"\n")));
    expect![[r#"error out-of-range steps[0].max_while_iterations 12:27 step 'w': max_while_iterations must be between 1 and 1000, found 1001"#]]
        .assert_eq(&diags(&while_step("    while_condition: \"{{done}}\"\n    max_while_iterations: 1001\n")));
    expect![[r#"error conflicting-fields steps[0].while_condition 12:5 step 'w': cannot have both foreach and while_condition"#]]
        .assert_eq(&diags(&while_step("    foreach: \"{{done}}\"\n    while_condition: \"{{done}}\"\n")));
    // The reference silently ignores max_iterations on a while loop (W23); Kiln warns.
    expect![[r#"warning while-max-iterations-ignored steps[0].max_iterations 12:5 step 'w': max_iterations is ignored on while loops; use max_while_iterations"#]]
        .assert_eq(&diags(&while_step("    while_condition: \"{{done}}\"\n    max_iterations: 3\n")));
    expect![[r#"
        error undefined-variable steps[0].prompt 9:14 undefined variable {{_loop_iteration}} in prompt: '_loop_iteration' is not defined. Available variables: done, recipe, session, step
        error requires-loop steps[0].break_when 11:5 step 'w': break_when requires foreach or while_condition
        error requires-loop steps[0].update_context 12:5 step 'w': update_context requires foreach or while_condition"#]]
    .assert_eq(&diags(&while_step("    break_when: \"{{done}}\"\n    update_context:\n      done: x\n")));
    // break_when on a foreach is accepted and ignored by the reference; Kiln warns.
    assert_eq!(
        codes(&while_step(
            "    foreach: \"{{done}}\"\n    break_when: \"{{done}}\"\n"
        )),
        ["ignored-field steps[0].break_when"]
    );
    expect!["error invalid-variable-name steps[0].update_context.step 13:7 step 'w': update_context key 'step' must be a variable name that is not reserved"]
        .assert_eq(&diags(&while_step("    while_condition: \"{{done}}\"\n    update_context:\n      step: x\n")));
    // Reference: a non-string update_context value crashes with TypeError (W18).
    assert_eq!(
        codes(&while_step(
            "    while_condition: \"{{done}}\"\n    update_context:\n      done: 5\n"
        )),
        ["expected-string steps[0].update_context.done"]
    );
}

#[test]
fn nested_body_ids_are_checked_up_front() {
    // Reference: ids inside nested bodies are never checked (1.11).
    let source = format!(
        "{HEADER}context:\n  items: [a]\nsteps:\n  - id: outer\n    foreach: \"{{{{items}}}}\"\n    steps:\n      - id: outer\n        agent: dev\n        prompt: x\n      - id: bad\n        agent: dev\n"
    );
    assert_eq!(
        codes(&source),
        [
            "duplicate-step-id steps[0].steps[0].id",
            "missing-field steps[0].steps[1].prompt"
        ]
    );
}

#[test]
fn body_outputs_leak_to_later_steps_but_loop_vars_do_not() {
    let source = format!(
        "{HEADER}context:\n  items: [a]\nsteps:\n  - id: each\n    foreach: \"{{{{items}}}}\"\n    as: it\n    steps:\n      - id: first\n        agent: dev\n        prompt: \"{{{{it}}}}\"\n        output: partial\n      - id: second\n        agent: dev\n        prompt: \"{{{{partial}}}} {{{{_loop_index}}}}\"\n  - id: after\n    agent: dev\n    prompt: \"{{{{partial}}}}\"\n"
    );
    assert_clean(&source);
    assert_eq!(
        codes(&source.replace("prompt: \"{{partial}}\"\n", "prompt: \"{{it}}\"\n")),
        ["undefined-variable steps[1].prompt"]
    );
}

#[test]
fn while_collect_is_kept_and_available_afterwards() {
    let source = format!(
        "{}  - id: after\n    agent: dev\n    prompt: \"{{{{answers}}}}\"\n",
        while_step("    while_condition: \"not {{done}}\"\n    collect: answers\n")
    );
    assert_clean(&source);
    let Some(Loop::While(while_loop)) = first_step(&source).looping else {
        panic!("while")
    };
    assert_eq!(while_loop.collect.as_deref(), Some("answers"));
}
