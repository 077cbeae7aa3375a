//! test_approval_gates.py (52): the structure and validation parts. The
//! session/status/timeout behaviours are the engine's and the controller's.

use expect_test::expect;
use recipe::model::{ApprovalDefault, Body};

use super::{HEADER, assert_clean, codes, diags, recipe};

const STEP: &str = "      - id: s1\n        agent: dev\n        prompt: hi\n";

/// One stage named `name` with one step and the given approval block.
fn staged(name: &str, approval: &str) -> String {
    format!("{HEADER}stages:\n  - name: {name}\n    steps:\n{STEP}{approval}")
}

#[test]
fn approval_defaults() {
    let recipe = recipe(&staged("plan", "    approval: {}\n"));
    let Body::Staged(stages) = &recipe.body else {
        panic!("staged")
    };
    let approval = stages[0].approval.clone().unwrap();
    assert!(!approval.required);
    assert_eq!(approval.prompt, "");
    assert_eq!(approval.timeout_secs, 0);
    assert_eq!(approval.default, ApprovalDefault::Deny);
}

#[test]
fn full_valid_approval_and_default_approve() {
    assert_clean(&staged(
        "plan",
        "    approval:\n      required: true\n      prompt: Ship it?\n      timeout: 300\n      default: deny\n",
    ));
    assert_clean(&staged(
        "plan",
        "    approval:\n      required: true\n      prompt: Ship it?\n      default: approve\n",
    ));
    assert_clean(&staged(
        "plan",
        "    approval:\n      required: true\n      prompt: ok?\n      timeout: 0\n",
    ));
    assert_clean(&staged("plan", "    approval:\n      required: false\n"));
}

#[test]
fn approval_errors() {
    expect!["error out-of-range stages[0].approval.timeout 13:16 timeout must be non-negative (0 waits forever), found -1"]
        .assert_eq(&diags(&staged("plan", "    approval:\n      required: true\n      prompt: p\n      timeout: -1\n")));
    expect!["error invalid-value stages[0].approval.default 13:16 approval default must be 'deny' or 'approve', found 'maybe'"]
        .assert_eq(&diags(&staged("plan", "    approval:\n      required: true\n      prompt: p\n      default: maybe\n")));
    expect!["error missing-field stages[0].approval.prompt 11:7 approval prompt is required when approval is required"]
        .assert_eq(&diags(&staged("plan", "    approval:\n      required: true\n")));
    // Reference: an unknown approval key (e.g. `message:`) crashes loading with a TypeError.
    expect!["error unknown-field stages[0].approval.message 13:7 unknown approval field 'message'"]
        .assert_eq(&diags(&staged(
            "plan",
            "    approval:\n      required: true\n      prompt: p\n      message: hi\n",
        )));
    expect![[r#"error expected-mapping stages[0].approval 10:15 approval must be a mapping, found string "yes please""#]]
        .assert_eq(&diags(&staged("plan", "    approval: yes please\n")));
}

#[test]
fn stage_names() {
    assert_clean(&staged("my-stage_1", ""));
    assert_clean(&staged("\"Planning Phase\"", ""));
    expect![[r#"error missing-field stages[0].name 5:11 stage is missing required field 'name'"#]]
        .assert_eq(&diags(&staged("\"\"", "")));
    expect![[r#"error invalid-name stages[0].name 5:11 stage name 'bad@stage' must be alphanumeric (letters, digits, '-', '_' and spaces)"#]]
        .assert_eq(&diags(&staged("bad@stage", "")));
}

#[test]
fn stage_without_steps() {
    expect![[r#"error empty-stage stages[0] 6:5 stage 'plan' must have at least one step"#]]
        .assert_eq(&diags(&format!(
            "{HEADER}stages:\n  - name: plan\n    steps: []\n"
        )));
}

#[test]
fn duplicate_ids_in_one_stage_and_across_stages() {
    let source = format!("{HEADER}stages:\n  - name: a\n    steps:\n{STEP}{STEP}");
    expect!["error duplicate-step-id stages[0].steps[1].id 10:13 duplicate step id 's1' in stage 'a' (also defined at stages[0].steps[0])"]
        .assert_eq(&diags(&source));
    let source =
        format!("{HEADER}stages:\n  - name: a\n    steps:\n{STEP}  - name: b\n    steps:\n{STEP}");
    expect!["error duplicate-step-id stages[1].steps[0].id 12:13 duplicate step IDs across stages: 's1' in stage 'b' is also defined at stages[0].steps[0]"]
        .assert_eq(&diags(&source));
}

#[test]
fn duplicate_stage_names() {
    let source = format!(
        "{HEADER}stages:\n  - name: a\n    steps:\n{STEP}  - name: a\n    steps:\n      - id: s2\n        agent: dev\n        prompt: x\n"
    );
    expect![[r#"error duplicate-stage-name stages[1].name 10:11 duplicate stage names: 'a' is also used at stages[0]"#]]
        .assert_eq(&diags(&source));
}

#[test]
fn step_and_approval_errors_surface_with_stage_path() {
    let source =
        staged("plan", "    approval:\n      required: true\n").replace("prompt: hi", "prompt: ''");
    assert_eq!(
        codes(&source),
        [
            "missing-field stages[0].steps[0].prompt",
            "missing-field stages[0].approval.prompt"
        ]
    );
}

#[test]
fn staged_detection_and_all_steps_in_order() {
    let source = format!(
        "{HEADER}stages:\n  - name: a\n    steps:\n{STEP}  - name: b\n    steps:\n      - id: s2\n        agent: dev\n        prompt: x\n      - id: s3\n        agent: dev\n        prompt: y\n"
    );
    let recipe = recipe(&source);
    assert!(recipe.is_staged());
    let ids: Vec<&str> = recipe.all_steps().iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["s1", "s2", "s3"]);
    let flat = super::recipe(&super::flat("  - id: s1\n    agent: dev\n    prompt: hi\n"));
    assert!(!flat.is_staged());
}

#[test]
fn two_stages_with_gate_on_first_are_clean_and_load_fields() {
    let source = format!(
        "{HEADER}stages:\n  - name: a\n    steps:\n{STEP}    approval:\n      required: true\n      prompt: \"Continue after {{{{stage.name}}}}?\"\n      timeout: 300\n  - name: b\n    steps:\n      - id: s2\n        agent: dev\n        prompt: \"{{{{_approval_message}}}}\"\n"
    );
    // Reference: `stage.*` and `_approval_message` are rejected by its validator (W10).
    assert_clean(&source);
    let recipe = recipe(&source);
    let Body::Staged(stages) = &recipe.body else {
        panic!("staged")
    };
    let approval = stages[0].approval.as_ref().unwrap();
    assert!(approval.required);
    assert_eq!(approval.timeout_secs, 300);
    assert_eq!(stages[1].approval, None);
}

#[test]
fn steps_and_stages_together_and_neither() {
    let source = format!(
        "{HEADER}steps:\n  - id: x\n    agent: a\n    prompt: p\nstages:\n  - name: a\n    steps:\n{STEP}"
    );
    expect![[r#"error steps-and-stages stages 8:1 recipe cannot have both 'steps' and 'stages'; use stages (each with its own steps) or steps alone"#]]
        .assert_eq(&diags(&source));
    // An empty list counts as absent (reference M:722-729).
    assert_clean(&format!(
        "{HEADER}steps: []\nstages:\n  - name: a\n    steps:\n{STEP}"
    ));
    expect![[r#"error no-steps <root> 1:1 recipe must have at least one step or stage"#]]
        .assert_eq(&diags(HEADER));
}

#[test]
fn handlebars_in_approval_prompt_stays_literal_with_a_warning() {
    // Reference: `{{else}}` is an undefined variable and crashes the gate (W10).
    let source = staged(
        "plan",
        "    approval:\n      required: true\n      prompt: \"{{#if ok}}fine{{else}}check {{stage.name}}{{/if}}\"\n",
    );
    expect!["warning handlebars-literal stages[0].approval.prompt 12:15 Handlebars blocks ({{#if}}, {{else}}, {{/if}}) in this approval prompt are not supported and stay literal text"]
        .assert_eq(&diags(&source));
    let source = staged(
        "plan",
        "    approval:\n      required: true\n      prompt: \"{{#if ok}}{{nope}}{{/if}}\"\n",
    );
    assert_eq!(
        codes(&source),
        [
            "handlebars-literal stages[0].approval.prompt",
            "undefined-variable stages[0].approval.prompt"
        ]
    );
}
