//! Table-driven tests for templates, expressions and result extraction, plus
//! property tests (arbitrary input never panics; error offsets stay inside it).
//! Grouped like `recipe-behaviours.md` (test_executor.py, test_resolve_dotted_path.py,
//! test_fix1, test_expression_evaluator.py, test_json_extraction.py, test_json_parsing.py,
//! test_fix2).
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use recipe::expr;
use recipe::extract::{ResultSource, post_process};
use recipe::template::{self, Undefined};
use serde_json::{Map, Value, json};

fn ctx(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => panic!("context must be a mapping"),
    }
}

fn sample() -> Map<String, Value> {
    ctx(json!({
        "name": "World", "greeting": "Hello", "count": 42, "ratio": 1.5, "big": 1e20,
        "small": 0.00001, "hundred": 100.0, "flag": true, "off": false, "nothing": null,
        "empty": "", "items": ["a", "b", "c"], "mapping": {"key": "value"},
        "accent": {"k": "é😀"}, "recipe": {"name": "demo", "version": "1.0.0"},
        "session": {"id": "s-1"}, "data": {"files": ["x"], "user": {"name": "ann"}},
        "text": "plain", "user_name": "bob", "neg": -5, "status": "in progress",
    }))
}

// ---- test_executor.py: variable substitution ----

#[test]
fn render_table() {
    let context = sample();
    let cases: &[(&str, &str)] = &[
        ("Hello {{name}}", "Hello World"),
        ("{{greeting}}, {{name}}!", "Hello, World!"),
        ("{{recipe.name}} v{{recipe.version}}", "demo v1.0.0"),
        ("{{session.id}}", "s-1"),
        ("no placeholders", "no placeholders"),
        ("{{user_name}}", "bob"),
        ("n={{count}}", "n=42"),
        ("before {{name}} after", "before World after"),
        ("{{name}} and {{name}}", "World and World"),
        ("[{{empty}}]", "[]"),
        ("line1\n{{name}}\nline3", "line1\nWorld\nline3"),
        ("{{items}}", r#"["a", "b", "c"]"#),
        ("{{mapping}}", r#"{"key": "value"}"#),
        ("{{flag}}/{{off}}", "true/false"),
        ("{{nothing}}", "None"),
        (
            "{{ratio}} {{big}} {{small}} {{hundred}} {{neg}}",
            "1.5 1e+20 1e-05 100.0 -5",
        ),
        ("{{accent}}", r#"{"k": "\u00e9\ud83d\ude00"}"#),
        // Not placeholders: spaces, Handlebars blocks, expressions.
        ("{{ name }}", "{{ name }}"),
        ("{{#if name}}x{{/if}}", "{{#if name}}x{{/if}}"),
        ("{{\" + y + \"}}", "{{\" + y + \"}}"),
        ("{{{name}}}", "{World}"),
        ("{{a.}}", "{{a.}}"),
    ];
    for (text, expected) in cases {
        assert_eq!(
            template::render(text, &context).unwrap(),
            *expected,
            "template {text:?}"
        );
    }
}

#[test]
fn render_single_pass() {
    let context = ctx(json!({"a": "{{b}}", "b": "no"}));
    assert_eq!(template::render("{{a}}", &context).unwrap(), "{{b}}");
}

#[test]
fn render_errors() {
    let context = ctx(json!({"b": 1, "a": {"y": 1, "x": 2}, "s": "text", "l": [1]}));
    let cases: &[(&str, &str)] = &[
        (
            "{{zz}}",
            "Undefined variable: {{zz}}. Available variables: a, b, l, s",
        ),
        (
            "{{a.q}}",
            "Undefined variable: {{a.q}}. Key 'q' not found. Available keys at 'a': x, y",
        ),
        (
            "{{zz.q}}",
            "Undefined variable: {{zz.q}}. Key 'zz' not found. Available keys at 'root': a, b, l, s",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(
            template::render(text, &context).unwrap_err().message,
            *expected
        );
    }
    let error = template::render("x {{s.y}}", &context).unwrap_err();
    assert!(
        error
            .message
            .starts_with("Cannot access 'y' on {{s}} - it's a str, not a dict. Hint:")
    );
    assert!(error.message.contains("parse_json"));
    assert_eq!((error.start, error.end), (2, 9));
    let error = template::render("{{l.0}}", &context).unwrap_err();
    assert!(
        error.message.contains("it's a list, not a dict"),
        "{}",
        error.message
    );
}

#[test]
fn approval_prompt_keeps_handlebars_else_literal() {
    let context = ctx(json!({"x": true}));
    let text = "{{#if x}}yes{{else}}no{{/if}}";
    assert_eq!(
        template::render_with(text, &context, Undefined::KeepHandlebarsKeywords).unwrap(),
        text
    );
    assert!(template::render(text, &context).is_err());
    assert!(
        template::render_with("{{other}}", &context, Undefined::KeepHandlebarsKeywords).is_err()
    );
}

#[test]
fn placeholders_offsets() {
    let found = template::placeholders("a {{x.y}} é{{z}}");
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].path, vec!["x", "y"]);
    assert_eq!((found[0].start, found[0].end), (2, 9));
    assert_eq!(found[1].path, vec!["z"]);
    assert_eq!((found[1].start, found[1].end), (12, 17));
    assert!(template::placeholders("{{#if x}} {{/if}} {{ x }}").is_empty());
    let unicode = template::placeholders("{{café_1}}");
    assert_eq!(unicode[0].path, vec!["café_1"]);
}

// ---- test_resolve_dotted_path.py ----

#[test]
fn resolve_dotted_paths() {
    let context = ctx(json!({"a": {"b": {"c": 1}, "l": [1, 2], "n": null, "t": true}, "s": "x"}));
    let path = |text: &str| text.split('.').map(String::from).collect::<Vec<_>>();
    assert_eq!(
        template::resolve(&context, &path("a.b.c")).unwrap(),
        &json!(1)
    );
    assert_eq!(
        template::resolve(&context, &path("a.b")).unwrap(),
        &json!({"c": 1})
    );
    assert_eq!(
        template::resolve(&context, &path("a.l")).unwrap(),
        &json!([1, 2])
    );
    assert_eq!(
        template::resolve(&context, &path("a.n")).unwrap(),
        &Value::Null
    );
    assert_eq!(
        template::resolve(&context, &path("a.t")).unwrap(),
        &json!(true)
    );
    let missing = template::resolve(&context, &path("a.zz"))
        .unwrap_err()
        .message;
    assert!(
        missing.contains("Key 'zz' not found") && missing.contains("b, l, n, t"),
        "{missing}"
    );
    assert!(
        template::resolve(&context, &path("s.y"))
            .unwrap_err()
            .message
            .contains("it's a str, not a dict")
    );
    assert!(
        template::resolve(&context, &path("x.y"))
            .unwrap_err()
            .message
            .contains("Key 'x' not found")
    );
    assert!(
        template::resolve(&context, &path("s.y"))
            .unwrap_err()
            .message
            .contains("Hint:")
    );
}

// ---- test_fix1_context_type_preservation.py ----

#[test]
fn render_value_preserves_types() {
    let context =
        ctx(json!({"task": {"id": 1}, "list": [1, 2], "n": 3, "b": true, "z": null, "x": "v"}));
    let cases: Vec<(Value, Value)> = vec![
        (json!("{{task}}"), json!({"id": 1})),
        (json!("{{list}}"), json!([1, 2])),
        (json!("{{n}}"), json!(3)),
        (json!("{{b}}"), json!(true)),
        (json!("{{z}}"), Value::Null),
        (json!("  {{task}}  "), json!({"id": 1})),
        (json!("id: {{n}}"), json!("id: 3")),
        (json!("prefix-{{x}}"), json!("prefix-v")),
        (json!("{{task.id}}"), json!(1)),
        (
            json!({"a": "{{task}}", "b": "{{n}}"}),
            json!({"a": {"id": 1}, "b": 3}),
        ),
        (json!(["{{list}}", "lit", 7]), json!([[1, 2], "lit", 7])),
        (json!({"d": [{"e": "{{b}}"}]}), json!({"d": [{"e": true}]})),
        (json!(5), json!(5)),
    ];
    for (input, expected) in cases {
        assert_eq!(
            template::render_value(&input, &context).unwrap(),
            expected,
            "{input}"
        );
    }
}

// ---- test_expression_evaluator.py and Kiln's typed superset ----

#[test]
fn expression_table() {
    let context = ctx(json!({
        "status": "success", "value": "test", "flag": true, "off": false, "n": 42, "neg": -5,
        "a": {"b": {"c": "deep"}}, "category": "simple", "severity": "high", "type": "bug",
        "ten": "10", "nine": "9", "words": "in progress", "list": ["x", "y"], "empty_list": [],
        "map": {"k": 1}, "nothing": null, "zero": 0, "zero_f": 0.0, "other": "success",
        "inject": "x' or 'a' == 'a", "tpl": "{{flag}}", "title": "True",
    }));
    let cases: &[(&str, bool)] = &[
        ("{{status}} == 'success'", true),
        ("{{status}} == 'failure'", false),
        ("{{status}} == \"success\"", true),
        ("{{status}} != 'failure'", true),
        ("{{status}} != 'success'", false),
        ("{{value}}=='test'", true),
        ("   {{value}} == 'test'   ", true),
        ("{{status}} == 'success' and {{value}} == 'test'", true),
        ("{{status}} == 'success' and {{value}} == 'x'", false),
        ("{{status}} == 'x' or {{value}} == 'test'", true),
        ("{{status}} == 'x' or {{value}} == 'y'", false),
        ("{{flag}} and {{n}} == 42 and {{value}} == 'test'", true),
        ("{{flag}} and {{n}} == 42 and {{value}} == 'no'", false),
        ("{{off}} or {{off}} or {{flag}}", true),
        ("{{flag}} or {{off}} and {{off}}", true),
        ("({{flag}} or {{off}}) and {{off}}", false),
        ("{{a.b.c}} == 'deep'", true),
        ("{{flag}} == true", true),
        ("{{flag}} == false", false),
        ("{{off}} == false", true),
        ("{{flag}} == TRUE", true),
        ("{{flag}} == True", true),
        ("", true),
        ("   ", true),
        ("{{words}} == 'in progress'", true),
        ("{{status}} == {{other}}", true),
        ("{{n}} == '42'", true),
        ("{{category}} == 'simple'", true),
        ("{{severity}} == 'critical' or {{severity}} == 'high'", true),
        ("{{status}} == 'success' and {{type}} == 'bug'", true),
        // Reference numeric/string comparison rules.
        ("'10' > '9'", true),
        ("{{ten}} > {{nine}}", true),
        ("'abc' > 'abb'", true),
        ("10 == 10.0", true),
        ("{{title}} == true", false),
        ("not {{off}}", true),
        ("not {{flag}}", false),
        ("{{zero}}", false),
        ("{{zero_f}}", true),
        ("'no'", true),
        ("none", false),
        ("1 == 2", false),
        // Kiln superset (each an error in the reference).
        ("{{neg}} < 0", true),
        ("{{neg}} == -5", true),
        ("-1.5 < -1", true),
        ("{{nothing}} == null", true),
        ("{{n}} == null", false),
        ("{{nothing}}", false),
        ("{{list}}", true),
        ("{{empty_list}}", false),
        ("{{map}}", true),
        ("{{list}} contains 'x'", true),
        ("{{list}} contains 'z'", false),
        ("'y' in {{list}}", true),
        ("{{words}} contains 'progress'", true),
        ("'k' in {{map}}", true),
        ("{{list}} == {{list}}", true),
        // Values never change the structure and are never re-substituted.
        ("{{inject}} == 'x'", false),
        ("{{tpl}} == '{{flag}}'", true),
        ("{{tpl}} == 'true'", false),
    ];
    for (text, expected) in cases {
        assert_eq!(
            expr::evaluate(text, &context),
            Ok(*expected),
            "expression {text:?}"
        );
    }
}

#[test]
fn expression_errors() {
    let context = ctx(json!({"x": "value", "a": {"b": 1}, "l": [1]}));
    let cases: &[(&str, &str, usize)] = &[
        ("{{x}} >>> 'value'", "Invalid expression", 7),
        ("{{missing}} == 'a'", "Undefined variable: missing", 0),
        ("{{a.zz}} == 1", "Undefined variable: a.zz", 0),
        ("'open", "Unterminated string literal", 0),
        ("({{x}} == 'a'", "Expected ')'", 13),
        ("{{x}} == 'a' and", "Unexpected end of expression", 16),
        ("and {{x}}", "Unexpected keyword 'and'", 0),
        ("{{x}} & 'a'", "Unexpected character '&'", 6),
        ("{{x}} = 'a'", "Unexpected character '='", 6),
        ("{ x }", "Unexpected character '{'", 0),
        ("{{x}} == 'a' 'b'", "Unexpected token", 13),
        ("{{l}} < 3", "Cannot apply '<'", 6),
        ("é {{x}} @", "Unexpected character '@'", 8),
    ];
    for (text, fragment, offset) in cases {
        let error = expr::evaluate(text, &context).unwrap_err();
        assert!(
            error.message.contains(fragment),
            "{text:?}: {}",
            error.message
        );
        assert_eq!(error.offset, *offset, "{text:?}: {}", error.message);
    }
}

#[test]
fn expression_variables() {
    let parsed = expr::parse("{{a.b}} == 1 and not ({{c}} or 'x' in {{d}})").unwrap();
    assert_eq!(
        parsed.variables(),
        vec![
            vec!["a".to_string(), "b".to_string()],
            vec!["c".to_string()],
            vec!["d".to_string()]
        ]
    );
    let refs = parsed.variable_refs();
    assert_eq!((refs[1].start, refs[1].end), (22, 27));
}

// ---- test_json_extraction.py, test_json_parsing.py, test_fix2, Part A item 8 ----

#[test]
fn extraction_table() {
    use ResultSource::{Agent, Bash, Recipe};
    let s = |text: &str| Value::String(text.to_string());
    let nested = r#"{"tasks": [{"id": 1, "sub": {"deep": {"x": [1, 2]}}}], "n": 2}"#;
    let cases: Vec<(ResultSource, bool, Value, Value)> = vec![
        // Default mode, agent.
        (
            Agent,
            false,
            s(r#"Here it is: {"a": 1} ok"#),
            s(r#"Here it is: {"a": 1} ok"#),
        ),
        (
            Agent,
            false,
            s("```json\n{\"a\": 1}\n```"),
            s("```json\n{\"a\": 1}\n```"),
        ),
        (
            Agent,
            false,
            s(r#"{"files": ["a"], "count": 1}"#),
            json!({"files": ["a"], "count": 1}),
        ),
        (Agent, false, s(" [1, 2, 3] \n"), json!([1, 2, 3])),
        (Agent, false, s("true"), json!(true)),
        (Agent, false, s("42"), json!(42)),
        (Agent, false, s("2.5"), json!(2.5)),
        (Agent, false, s("null"), Value::Null),
        (Agent, false, s("plain text"), s("plain text")),
        (Agent, false, s(r#"{"a": [1, 2"#), s(r#"{"a": [1, 2"#)),
        (
            Agent,
            false,
            json!({"output": "{\"x\": 1}"}),
            json!({"x": 1}),
        ),
        (Agent, false, json!({"output": "hi", "other": 1}), s("hi")),
        (Agent, false, s("text\n"), s("text\n")),
        // parse_json: true.
        (
            Agent,
            true,
            s(r#"Result: {"a": 1, "b": "two"} done"#),
            json!({"a": 1, "b": "two"}),
        ),
        (
            Agent,
            true,
            s("Sure:\n```json\n{\"a\": 1}\n```\nbye"),
            json!({"a": 1}),
        ),
        (Agent, true, s("Sure:\n```\n[1, 2]\n```"), json!([1, 2])),
        (
            Agent,
            true,
            s("The list is [\"a\", \"b\"] here"),
            json!(["a", "b"]),
        ),
        (
            Agent,
            true,
            s(&format!("Prose {nested} more")),
            serde_json::from_str(nested).unwrap(),
        ),
        (
            Agent,
            true,
            s(&format!("```json\n{nested}\n```")),
            serde_json::from_str(nested).unwrap(),
        ),
        (
            Agent,
            true,
            s(&format!("```\n{nested}\n```")),
            serde_json::from_str(nested).unwrap(),
        ),
        (
            Agent,
            true,
            s("Text\n{\n  \"a\": 1,\n  \"b\": [1, 2]\n}\nend"),
            json!({"a": 1, "b": [1, 2]}),
        ),
        (
            Agent,
            true,
            s(r#"x {"q": "say \"hi\"\nnow", "u": "\u00e9"} y"#),
            json!({"q": "say \"hi\"\nnow", "u": "é"}),
        ),
        (
            Agent,
            true,
            s(r#"{"first": 1} and {"second": 2}"#),
            json!({"first": 1}),
        ),
        (
            Agent,
            true,
            s(r#"a {"first": 1} and {"second": 2}"#),
            json!({"first": 1}),
        ),
        (Agent, true, s("empty {} then [1, 2]"), json!([1, 2])),
        (Agent, true, s("only {} here"), json!({})),
        (
            Agent,
            true,
            s("```json\n{broken\n```\nlater {\"fallback\": true}"),
            json!({"fallback": true}),
        ),
        (
            Agent,
            true,
            s("```json\n[{\"a\": 1}, {\"b\": 2}]\n```"),
            json!([{"a": 1}, {"b": 2}]),
        ),
        (Agent, true, s("no json at all"), s("no json at all")),
        (Agent, true, s(r#"{"a": 1}"#), json!({"a": 1})),
        (Agent, true, s("[1]"), json!([1])),
        // Bash default mode: whole JSON, trailing JSON, prose stays text.
        (Bash, false, s("{\"ok\": true}\n"), json!({"ok": true})),
        (
            Bash,
            false,
            s("log line\nmore logs\n{\"ok\": true}\n"),
            json!({"ok": true}),
        ),
        (
            Bash,
            false,
            s("building...\n{\n  \"a\": [\n    1\n  ]\n}\n"),
            json!({"a": [1]}),
        ),
        (
            Bash,
            false,
            s("Usage: tool [] options\n"),
            s("Usage: tool [] options"),
        ),
        (
            Bash,
            false,
            s("function() {} done\n"),
            s("function() {} done"),
        ),
        (Bash, false, s("msg=[1]\n"), s("msg=[1]")),
        (
            Bash,
            false,
            s("we saw [1, 2] and more\n"),
            s("we saw [1, 2] and more"),
        ),
        (Bash, false, s("done\n"), s("done")),
        (Bash, false, s("two\n\n"), s("two\n")),
        (Bash, false, s("crlf\r\n"), s("crlf")),
        (Bash, false, s("42\n"), json!(42)),
        (Bash, false, s("total:\n42\n"), s("total:\n42")),
        (Bash, true, s("noise [] then {\"a\": 1}\n"), json!({"a": 1})),
        // Sub-recipe results are never unwrapped or parsed.
        (
            Recipe,
            false,
            json!({"output": 1, "other": 2}),
            json!({"output": 1, "other": 2}),
        ),
        (Recipe, true, json!({"output": 1}), json!({"output": 1})),
    ];
    for (source, parse_json, input, expected) in cases {
        let label = format!("{source:?} parse_json={parse_json} {input}");
        assert_eq!(post_process(input, source, parse_json), expected, "{label}");
    }
}

proptest! {
    #[test]
    fn templates_never_panic(text in ".{0,64}", key in "[a-z]{1,3}") {
        let context = ctx(json!({key.clone(): {"x": 1}, "s": "v"}));
        for placeholder in template::placeholders(&text) {
            prop_assert!(placeholder.start < placeholder.end && placeholder.end <= text.len());
            prop_assert!(text.is_char_boundary(placeholder.start) && text.is_char_boundary(placeholder.end));
        }
        if let Err(error) = template::render(&text, &context) {
            prop_assert!(error.end <= text.len());
        }
    }

    #[test]
    fn templates_with_braces_never_panic(text in "[{}a-z.é _#/]{0,40}") {
        let context = ctx(json!({"a": {"b": 1}}));
        let _ = template::render_value(&Value::String(text.clone()), &context);
        for placeholder in template::placeholders(&text) {
            prop_assert!(placeholder.end <= text.len());
        }
    }

    #[test]
    fn expressions_never_panic(text in "[{}a-z0-9 .'\"()=!<>&|é-]{0,48}") {
        let n_chars = text.chars().count();
        let context = ctx(json!({"a": 1, "b": "x", "l": [1]}));
        match expr::parse(&text) {
            Ok(parsed) => {
                for var in parsed.variable_refs() {
                    prop_assert!(var.end <= n_chars);
                }
                if let Err(error) = parsed.eval(&context) {
                    prop_assert!(error.offset <= n_chars);
                }
            }
            Err(error) => prop_assert!(error.offset <= n_chars, "{} > {}", error.offset, n_chars),
        }
    }

    #[test]
    fn arbitrary_expressions_never_panic(text in ".{0,48}") {
        let n_chars = text.chars().count();
        if let Err(error) = expr::parse(&text) {
            prop_assert!(error.offset <= n_chars);
        }
    }

    #[test]
    fn extraction_never_panics(text in "[{}\\[\\]a-z0-9 ,:\"`\n]{0,64}", parse_json: bool) {
        let _ = post_process(Value::String(text.clone()), ResultSource::Bash, parse_json);
        let _ = post_process(Value::String(text), ResultSource::Agent, parse_json);
    }
}

#[test]
fn python_number_text() {
    let cases: &[(f64, &str)] = &[
        (1.0, "1.0"),
        (1.5, "1.5"),
        (-0.5, "-0.5"),
        (100.0, "100.0"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (1e16, "1e+16"),
        (123456789012345.0, "123456789012345.0"),
        (1e22, "1e+22"),
        (1.5e300, "1.5e+300"),
        (0.1 + 0.2, "0.30000000000000004"),
        (2.5e-10, "2.5e-10"),
        (f64::NAN, "nan"),
        (f64::INFINITY, "inf"),
    ];
    for (value, expected) in cases {
        assert_eq!(template::python_float(*value), *expected, "{value:e}");
    }
}

#[test]
fn python_float_parsing() {
    let cases: &[(&str, Option<f64>)] = &[
        ("42", Some(42.0)),
        (" 42 ", Some(42.0)),
        ("-3.5", Some(-3.5)),
        ("1e3", Some(1000.0)),
        ("1_000", Some(1000.0)),
        ("1__0", None),
        ("_1", None),
        ("inf", Some(f64::INFINITY)),
        ("-Infinity", Some(f64::NEG_INFINITY)),
        (".5", Some(0.5)),
        ("1.2.3", None),
        ("abc", None),
        ("", None),
        ("--1", None),
    ];
    for (text, expected) in cases {
        assert_eq!(expr::parse_python_float(text), *expected, "{text:?}");
    }
    assert!(expr::parse_python_float("nan").unwrap().is_nan());
}
