//! The YAML dialect decision (issue 2 item 6) and hostile-input bounds.
//!
//! Kiln parses YAML 1.2 (saphyr-parser); the reference uses PyYAML's YAML 1.1
//! `safe_load`. The differences that matter are the 1.1 booleans
//! `yes/Yes/YES/no/No/NO/on/On/ON/off/Off/OFF` (PyYAML's exact set):
//! * where the model expects a boolean, they are read as booleans, with a
//!   `yaml11-boolean` warning;
//! * where it expects a string, the text is kept, silently (the reference
//!   would have crashed or rendered `True`);
//! * in free values (`context`, sub-recipe `context`, `env`), the YAML 1.2
//!   string is kept, with a `yaml11-boolean` warning that the reference
//!   would read a boolean.

use expect_test::expect;
use serde_json::json;

use super::{HEADER, assert_clean, checked, codes, diags, first_step, flat, recipe};

const AGENT: &str = "  - id: s1\n    agent: dev\n    prompt: hello\n";

#[test]
fn yaml11_booleans_in_boolean_fields() {
    for (text, value) in [
        ("yes", true),
        ("Yes", true),
        ("YES", true),
        ("on", true),
        ("On", true),
        ("ON", true),
        ("no", false),
        ("No", false),
        ("NO", false),
        ("off", false),
        ("Off", false),
        ("OFF", false),
    ] {
        let source = flat(&format!("{AGENT}    parse_json: {text}\n"));
        assert_eq!(first_step(&source).parse_json, value, "{text}");
        assert_eq!(
            diags(&source),
            format!(
                "warning yaml11-boolean steps[0].parse_json 8:17 '{text}' is a boolean in YAML 1.1 (the reference) but a string in YAML 1.2; read as the boolean {value}"
            )
        );
    }
    // Not in PyYAML's set either: a type error, as in the reference.
    expect![[r#"error expected-boolean steps[0].parse_json 8:17 parse_json must be a boolean (true or false), found string "yEs""#]]
        .assert_eq(&diags(&flat(&format!("{AGENT}    parse_json: yEs\n"))));
    // Quoted: a string in both dialects, so a type error.
    assert_eq!(
        codes(&flat(&format!("{AGENT}    parse_json: \"yes\"\n"))),
        ["expected-boolean steps[0].parse_json"]
    );
    // YAML 1.2 booleans in every spelling the core schema allows.
    for text in ["true", "True", "TRUE"] {
        let source = flat(&format!("{AGENT}    parse_json: {text}\n"));
        assert_clean(&source);
        assert!(first_step(&source).parse_json);
    }
}

#[test]
fn yaml11_booleans_in_other_boolean_fields() {
    let source = format!(
        "{HEADER}stages:\n  - name: a\n    steps:\n      - id: b\n        type: bash\n        command: ls\n        output_stderr: on\n    approval:\n      required: yes\n      prompt: ok?\n"
    );
    assert_eq!(
        codes(&source),
        [
            "yaml11-boolean stages[0].steps[0].output_stderr",
            "yaml11-boolean stages[0].approval.required"
        ]
    );
    let recipe = recipe(&source);
    let recipe::model::Body::Staged(stages) = &recipe.body else {
        panic!("staged")
    };
    assert!(stages[0].approval.as_ref().unwrap().required);
    let parallel = format!(
        "{HEADER}context:\n  xs: [1]\nsteps:\n  - id: l\n    agent: dev\n    prompt: p\n    foreach: \"{{{{xs}}}}\"\n    parallel: yes\n"
    );
    assert_eq!(codes(&parallel), ["yaml11-boolean steps[0].parallel"]);
}

#[test]
fn yaml11_booleans_in_string_fields_stay_text() {
    let source = flat("  - id: s1\n    agent: on\n    prompt: yes\n");
    assert_clean(&source);
    let recipe::model::StepKind::Agent(agent) = first_step(&source).kind else {
        panic!("agent")
    };
    assert_eq!((agent.agent.as_str(), agent.prompt.as_str()), ("on", "yes"));
}

#[test]
fn yaml11_booleans_in_free_values_stay_strings_with_a_warning() {
    let source =
        format!("{HEADER}context:\n  flag: yes\n  quoted: \"no\"\n  real: true\nsteps:\n{AGENT}");
    expect![[r#"warning yaml11-boolean context.flag 5:9 'yes' is a boolean in YAML 1.1 (the reference) but a string in YAML 1.2; Kiln keeps the string (quote it to silence this)"#]]
        .assert_eq(&diags(&source));
    assert_eq!(
        serde_json::Value::Object(recipe(&source).context),
        json!({"flag": "yes", "quoted": "no", "real": true})
    );
    let env = flat("  - id: b\n    type: bash\n    command: ls\n    env:\n      DEBUG: off\n");
    assert_eq!(codes(&env), ["yaml11-boolean steps[0].env.DEBUG"]);
}

#[test]
fn core_schema_scalars() {
    let source = format!(
        "{HEADER}context:\n  f: 1.5\n  i: 42\n  neg: -7\n  hex: 0x1F\n  n1: ~\n  n2: null\n  n3:\n  s: \"42\"\n  date: 2024-01-15\n  e: 1e3\nsteps:\n{AGENT}"
    );
    assert_clean(&source);
    // YAML 1.1 would make `date` a date object; Kiln keeps the text (documented).
    assert_eq!(
        serde_json::Value::Object(recipe(&source).context),
        json!({"f": 1.5, "i": 42, "neg": -7, "hex": 31, "n1": null, "n2": null, "n3": null, "s": "42", "date": "2024-01-15", "e": 1000.0})
    );
}

#[test]
fn wrong_scalar_types_say_what_was_found() {
    let cases = [
        (
            "timeout: \"30\"",
            "error expected-integer steps[0].timeout 8:14 timeout must be an integer, found string \"30\"",
        ),
        (
            "timeout: 1.5",
            "error expected-integer steps[0].timeout 8:14 timeout must be an integer, found number 1.5",
        ),
        (
            "timeout: [1]",
            "error expected-integer steps[0].timeout 8:14 timeout must be an integer, found list",
        ),
        (
            "output: 5",
            "error expected-string steps[0].output 8:13 output must be a string, found integer 5 (quote it: \"5\")",
        ),
        (
            "condition: {a: 1}",
            "error expected-string steps[0].condition 8:16 condition must be a string, found mapping",
        ),
        (
            "depends_on: {a: 1}",
            "error expected-list steps[0].depends_on 8:17 depends_on must be a list, found mapping",
        ),
    ];
    for (line, expected) in cases {
        assert_eq!(
            diags(&flat(&format!("{AGENT}    {line}\n"))),
            expected,
            "{line}"
        );
    }
    // Integer-valued floats are integers.
    assert_eq!(
        first_step(&flat(&format!("{AGENT}    timeout: 30.0\n"))).timeout_secs,
        30
    );
}

#[test]
fn unknown_top_level_keys_warn_known_extras_are_silent() {
    let source = format!(
        "naem: x\n{HEADER}stesp: []\nmetadata: {{a: 1}}\noutput: final\nvalidation: {{}}\nsteps:\n{AGENT}"
    );
    expect![[r#"
        warning unknown-top-level-key naem 1:1 unknown top-level field 'naem'; did you mean 'name'?
        warning unknown-top-level-key stesp 5:1 unknown top-level field 'stesp'; did you mean 'steps'?"#]]
    .assert_eq(&diags(&source));
}

#[test]
fn unknown_keys_in_nested_blocks_are_errors() {
    let source = format!(
        "{HEADER}recursion:\n  max_depth: 3\n  depth: 2\nrate_limiting:\n  max_concurrent: 2\n  backoff:\n    enabled: true\n    factor: 2\nsteps:\n{AGENT}"
    );
    assert_eq!(
        codes(&source),
        [
            "unknown-field recursion.depth",
            "unknown-field rate_limiting.max_concurrent",
            "unknown-field rate_limiting.backoff.factor",
        ]
    );
}

#[test]
fn duplicate_keys_warn_and_the_last_wins() {
    let source = flat(&format!("{AGENT}    timeout: 5\n    timeout: 9\n"));
    expect![[r#"warning duplicate-key steps[0].timeout 9:5 key 'timeout' appears more than once; the last value wins"#]]
        .assert_eq(&diags(&source));
    assert_eq!(first_step(&source).timeout_secs, 9);
}

#[test]
fn anchors_and_aliases_work() {
    let source = format!(
        "{HEADER}context:\n  shared: &shared\n    level: 3\n  copy: *shared\nsteps:\n  - id: a\n    agent: dev\n    prompt: &p \"{{{{copy.level}}}}\"\n  - id: b\n    agent: dev\n    prompt: *p\n"
    );
    assert_clean(&source);
    assert_eq!(recipe(&source).context["copy"], json!({"level": 3}));
}

#[test]
fn syntax_errors_multiple_documents_and_empty_input() {
    expect![[r#"error yaml-syntax <root> 2:7 invalid YAML: mapping values are not allowed in this context"#]]
        .assert_eq(&diags("name: x\nbad: a: b\n"));
    expect!["error yaml-multiple-documents <root> 2:1 a recipe file must contain exactly one YAML document"]
        .assert_eq(&diags("name: a\n---\nname: b\n"));
    expect![[r#"error expected-mapping <root> 1:1 recipe file must be a dictionary (a YAML mapping of fields), found null"#]]
        .assert_eq(&diags("# only a comment\n"));
    expect![[r#"error expected-mapping <root> 1:1 recipe file must be a dictionary (a YAML mapping of fields), found string "just text""#]]
        .assert_eq(&diags("just text"));
}

#[test]
fn columns_count_characters_not_bytes() {
    let source = flat("  - id: s1\n    agent: dev\n    prompt: \"héllo wörld {{ghost}}\"\n");
    let diagnostic = &checked(&source).diagnostics[0];
    assert_eq!((diagnostic.line, diagnostic.column), (7, 26));
    assert_eq!(
        &source[diagnostic.span.start..diagnostic.span.end],
        "{{ghost}}"
    );
}

#[test]
fn hostile_input_bounds() {
    let big = format!(
        "{HEADER}context:\n  blob: \"{}\"\nsteps:\n{AGENT}",
        "x".repeat(1024 * 1024)
    );
    let checked_big = checked(&big);
    assert!(checked_big.recipe.is_none());
    assert_eq!(checked_big.diagnostics.len(), 1);
    assert_eq!(checked_big.diagnostics[0].code, "source-too-large");

    let deep = format!(
        "{HEADER}context:\n  x: {}{}\n",
        "[".repeat(70),
        "]".repeat(70)
    );
    expect!["error yaml-too-deep <root> 5:68 YAML nesting is deeper than 64 levels"]
        .assert_eq(&diags(&deep));

    // Billion laughs: each level doubles; the alias budget stops it.
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for level in 1..12 {
        let prev = level - 1;
        bomb.push_str(&format!("a{level}: &a{level} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"));
    }
    let out = checked(&bomb);
    assert_eq!(out.diagnostics.len(), 1, "{:?}", out.diagnostics);
    assert_eq!(out.diagnostics[0].code, "yaml-alias-expansion");

    // Aliases cannot be used to exceed the depth bound either.
    let mut chain = format!("a0: &a0 {}{}\n", "[".repeat(40), "]".repeat(40));
    chain.push_str(&format!("a1: {}*a0{}\n", "[".repeat(30), "]".repeat(30)));
    assert_eq!(codes(&chain), ["yaml-too-deep "]);
}

#[test]
fn non_string_keys() {
    let source = flat(&format!("{AGENT}    ? [a, b]\n    : 1\n"));
    assert_eq!(codes(&source), ["expected-string steps[0]"]);
}

#[test]
fn merge_keys_like_pyyaml() {
    let source = format!(
        "{HEADER}context:\n  defaults: &defaults\n    agent: dev\n    timeout: 30\nsteps:\n  - id: a\n    <<: *defaults\n    prompt: one\n  - id: b\n    <<: *defaults\n    timeout: 99\n    prompt: two\n"
    );
    let recipe = recipe(&source);
    let steps = recipe.all_steps();
    assert_eq!(
        (steps[0].timeout_secs, steps[1].timeout_secs),
        (30, 99),
        "explicit keys win over merged ones"
    );
    let recipe::model::StepKind::Agent(agent) = &steps[1].kind else {
        panic!("agent")
    };
    assert_eq!(agent.agent, "dev");
    assert_clean(&source);
    assert_eq!(
        codes(&flat(&format!("{AGENT}    <<: [1]\n"))),
        ["expected-mapping steps[0].<<"]
    );
}

#[test]
fn diagnostics_are_bounded() {
    // 2000 undefined variables with long names: at most 500 diagnostics, each message bounded.
    let prompt: String = (0..2000)
        .map(|idx| format!("{{{{v{idx}_{}}}}} ", "x".repeat(200)))
        .collect();
    let source = flat(&format!(
        "  - id: s1\n    agent: dev\n    prompt: \"{prompt}\"\n"
    ));
    let report = checked(&source);
    assert_eq!(report.diagnostics.len(), 501);
    let last = report.diagnostics.last().unwrap();
    assert_eq!(last.code, "too-many-diagnostics");
    assert_eq!(
        last.message,
        "1500 more diagnostics were not reported (the limit is 500)"
    );
    assert_eq!(last.severity, recipe::diagnostic::Severity::Error);
    assert!(
        report
            .diagnostics
            .iter()
            .all(|d| d.message.len() <= 1024 + 3)
    );
    // Only warnings dropped: the summary is a warning, and the recipe stays valid.
    let context: String = (0..600).map(|idx| format!("  k{idx}: yes\n")).collect();
    let source = format!("{HEADER}context:\n{context}steps:\n{AGENT}");
    let report = checked(&source);
    assert!(!report.has_errors());
    assert_eq!(
        report.diagnostics.last().unwrap().code,
        "too-many-diagnostics"
    );
}
