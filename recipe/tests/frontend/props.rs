//! Property tests: arbitrary text and arbitrary YAML-ish structures fed to
//! `check` never panic, and every diagnostic's span lies inside the input
//! with a line:column that agrees with the span.

use proptest::prelude::*;
use recipe::diagnostic::LineIndex;

fn assert_consistent(source: &str) {
    let checked = recipe::check(source, &recipe::CheckOptions::default());
    let lines = LineIndex::new(source);
    for diagnostic in &checked.diagnostics {
        let span = diagnostic.span;
        assert!(
            span.start <= span.end && span.end <= source.len(),
            "span {span:?} outside input of {} bytes: {diagnostic}",
            source.len()
        );
        assert!(
            source.is_char_boundary(span.start),
            "span start inside a character: {diagnostic}"
        );
        assert_eq!(
            lines.line_col(source, span.start),
            (diagnostic.line, diagnostic.column),
            "{diagnostic}"
        );
        assert!(!diagnostic.code.is_empty() && !diagnostic.message.is_empty());
    }
    if checked.recipe.is_none() {
        assert!(checked.has_errors(), "no model without an error");
    }
}

/// Scalars that exercise the interesting corners: YAML 1.1 booleans, numbers,
/// templates, expressions, quotes, unicode.
fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("yes".to_string()),
        Just("off".to_string()),
        Just("~".to_string()),
        Just("-3".to_string()),
        Just("1.5".to_string()),
        Just("\"{{a.b}} == 'x'\"".to_string()),
        Just("\"{{#if x}}{{else}}{{/if}}\"".to_string()),
        Just("'{{ghost}} >>> 1'".to_string()),
        Just("\"héllo {{wörld}}\"".to_string()),
        Just("&anchor value".to_string()),
        Just("*anchor".to_string()),
        "[a-z_{}.: '\"-]{0,12}",
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("name"),
        Just("description"),
        Just("version"),
        Just("context"),
        Just("steps"),
        Just("stages"),
        Just("id"),
        Just("type"),
        Just("agent"),
        Just("prompt"),
        Just("command"),
        Just("recipe"),
        Just("timeout"),
        Just("retry"),
        Just("foreach"),
        Just("while_condition"),
        Just("condition"),
        Just("depends_on"),
        Just("parallel"),
        Just("approval"),
        Just("required"),
        Just("output"),
        Just("update_context"),
        Just("env"),
        Just("provider_preferences"),
        Just("class"),
        Just("as"),
        Just("collect"),
        Just("max_attempts"),
        Just("bogus"),
    ]
    .prop_map(str::to_string)
}

#[derive(Clone, Debug)]
enum Tree {
    Scalar(String),
    List(Vec<Tree>),
    Map(Vec<(String, Tree)>),
}

fn tree() -> impl Strategy<Value = Tree> {
    let leaf = scalar().prop_map(Tree::Scalar);
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Tree::List),
            prop::collection::vec((key(), inner), 0..6).prop_map(Tree::Map),
        ]
    })
}

fn render(tree: &Tree, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match tree {
        Tree::Scalar(text) => {
            out.push(' ');
            out.push_str(text);
            out.push('\n');
        }
        Tree::List(items) if items.is_empty() => out.push_str(" []\n"),
        Tree::Map(entries) if entries.is_empty() => out.push_str(" {}\n"),
        Tree::List(items) => {
            out.push('\n');
            for item in items {
                out.push_str(&pad);
                out.push('-');
                render(item, indent + 2, out);
            }
        }
        Tree::Map(entries) => {
            out.push('\n');
            for (key, value) in entries {
                out.push_str(&pad);
                out.push_str(key);
                out.push(':');
                render(value, indent + 2, out);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(source in "\\PC{0,200}") {
        assert_consistent(&source);
    }

    #[test]
    fn arbitrary_yamlish_bytes_never_panic(source in "[a-z{}\\[\\]:,'\"&*!|>#\\- \n\t]{0,160}") {
        assert_consistent(&source);
    }

    #[test]
    fn arbitrary_recipe_structures_never_panic(entries in prop::collection::vec((key(), tree()), 0..8)) {
        let mut source = String::from("name: fuzz\ndescription: d\nversion: 1.0.0\n");
        for (key, value) in &entries {
            source.push_str(key);
            source.push(':');
            render(value, 2, &mut source);
        }
        assert_consistent(&source);
    }

    #[test]
    fn mutated_valid_recipe_never_panics(cut in 0usize..2000, insert in "[\\[\\]{}:'\"\n -]{0,3}") {
        let base = include_str!("../fixtures/valid/nested-loops.yaml");
        let mut cut = cut.min(base.len());
        while !base.is_char_boundary(cut) { cut -= 1; }
        let source = format!("{}{}{}", &base[..cut], insert, &base[cut..]);
        assert_consistent(&source);
    }
}
