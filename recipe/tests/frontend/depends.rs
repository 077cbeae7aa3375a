//! test_fix3_depends_on_warning.py (13), as Kiln behaviour: `check` reports
//! one `depends-on-not-enforced` warning per recipe with the count, and a
//! string `depends_on` is a one-element list (Part A item 9).
//!
//! Reference: the warning is a log line emitted once per recipe name per
//! *process*. Kiln's `check` is pure, so it warns once per check of a recipe;
//! de-duplication across runs is the caller's business.

use super::{assert_clean, checked, codes, first_step, flat};

fn step(id: &str, deps: &str) -> String {
    format!("  - id: {id}\n    agent: dev\n    prompt: p\n{deps}")
}

fn warnings(source: &str) -> Vec<String> {
    checked(source)
        .diagnostics
        .iter()
        .filter(|d| d.code == "depends-on-not-enforced")
        .map(|d| d.message.clone())
        .collect()
}

#[test]
fn one_depends_on_step_gives_one_warning_with_name_count_and_order() {
    let source = flat(&format!(
        "{}{}",
        step("a", ""),
        step("b", "    depends_on: [a]\n")
    ));
    let warnings = warnings(&source);
    assert_eq!(warnings.len(), 1);
    assert_eq!(
        warnings[0],
        "recipe 'test-recipe' declares depends_on on 1 step; Kiln validates but does not currently enforce depends_on: steps run in declaration order"
    );
    assert!(warnings[0].contains("does not currently enforce"));
    assert!(warnings[0].contains("declaration order"));
}

#[test]
fn no_depends_on_no_warning() {
    assert_clean(&flat(&format!("{}{}", step("a", ""), step("b", ""))));
}

#[test]
fn several_depends_on_steps_give_one_warning_with_the_count_and_no_ids() {
    let source = flat(&format!(
        "{}{}{}{}",
        step("a", ""),
        step("bee", "    depends_on: [a]\n"),
        step("cee", "    depends_on: [a]\n"),
        step("dee", "    depends_on: [a, bee]\n")
    ));
    let found = warnings(&source);
    assert_eq!(found.len(), 1);
    assert!(found[0].contains("on 3 steps"), "{}", found[0]);
    for id in ["bee", "cee", "dee"] {
        assert!(
            !found[0].contains(&format!("'{id}'")),
            "lists step ids: {}",
            found[0]
        );
    }
    let two = flat(&format!(
        "{}{}{}",
        step("a", ""),
        step("b", "    depends_on: [a]\n"),
        step("c", "    depends_on: a\n")
    ));
    assert!(warnings(&two)[0].contains("on 2 steps"));
}

#[test]
fn checking_twice_warns_once_per_check_and_different_recipes_each_warn() {
    let x = flat(&format!(
        "{}{}",
        step("a", ""),
        step("b", "    depends_on: [a]\n")
    ));
    let y = x.replace("name: test-recipe", "name: other-recipe");
    assert_eq!(warnings(&x).len(), 1);
    assert_eq!(warnings(&x).len(), 1);
    assert!(warnings(&y)[0].contains("'other-recipe'"));
}

#[test]
fn depends_on_to_a_missing_step_still_warns_and_is_an_error() {
    let source = flat(&step("a", "    depends_on: [ghost]\n"));
    assert_eq!(
        codes(&source),
        [
            "depends-on-not-enforced steps[0].depends_on",
            "depends-on-unknown steps[0].depends_on[0]"
        ]
    );
}

#[test]
fn string_depends_on_is_a_one_element_list() {
    // Reference: a string is iterated per character, one "unknown step" error per letter (W24).
    let source = flat(&format!(
        "{}{}",
        step("step1", ""),
        step("b", "    depends_on: \"step1\"\n")
    ));
    assert_eq!(
        codes(&source),
        ["depends-on-not-enforced steps[1].depends_on"]
    );
    assert_eq!(super::recipe(&source).all_steps()[1].depends_on, ["step1"]);
    let unknown = flat(&step("b", "    depends_on: ghost\n"));
    assert_eq!(
        codes(&unknown),
        [
            "depends-on-not-enforced steps[0].depends_on",
            "depends-on-unknown steps[0].depends_on[0]"
        ]
    );
    assert!(
        first_step(&flat(&step("a", "    depends_on: []\n")))
            .depends_on
            .is_empty()
    );
}
