//! Scalar resolution (YAML 1.2 core schema plus the 1.1 boolean detector)
//! and the event-tree builder, table-driven.

use super::{Resolved, Scalar, parse, resolve, yaml11_bool};
use crate::diagnostic::Sink;

fn plain(text: &str) -> Scalar {
    Scalar {
        text: text.to_string(),
        plain: true,
        tag: None,
    }
}

#[test]
fn resolves_plain_scalars_like_the_core_schema() {
    let cases: [(&str, Resolved); 22] = [
        ("", Resolved::Null),
        ("~", Resolved::Null),
        ("null", Resolved::Null),
        ("NULL", Resolved::Null),
        ("true", Resolved::Bool(true)),
        ("False", Resolved::Bool(false)),
        ("yes", Resolved::Str),
        ("42", Resolved::Int(42)),
        ("-7", Resolved::Int(-7)),
        ("+3", Resolved::Int(3)),
        ("0x1F", Resolved::Int(31)),
        ("0o17", Resolved::Int(15)),
        ("1.5", Resolved::Float(1.5)),
        ("1e3", Resolved::Float(1000.0)),
        ("-.inf", Resolved::Float(f64::NEG_INFINITY)),
        ("99999999999999999999", Resolved::Float(1e20)),
        ("1.0.0", Resolved::Str),
        ("v1", Resolved::Str),
        ("1_000", Resolved::Str),
        ("e5", Resolved::Str),
        (".", Resolved::Str),
        ("2024-01-15", Resolved::Str),
    ];
    for (text, expected) in cases {
        assert_eq!(resolve(&plain(text)), expected, "{text:?}");
    }
    let quoted = Scalar {
        text: "42".to_string(),
        plain: false,
        tag: None,
    };
    assert_eq!(resolve(&quoted), Resolved::Str);
    let tagged = Scalar {
        text: "42".to_string(),
        plain: true,
        tag: Some("str".to_string()),
    };
    assert_eq!(resolve(&tagged), Resolved::Str);
}

#[test]
fn detects_exactly_pyyaml_yaml11_booleans() {
    for text in ["yes", "Yes", "YES", "on", "On", "ON"] {
        assert_eq!(yaml11_bool(&plain(text)), Some(true), "{text}");
    }
    for text in ["no", "No", "NO", "off", "Off", "OFF"] {
        assert_eq!(yaml11_bool(&plain(text)), Some(false), "{text}");
    }
    for text in ["y", "n", "yEs", "true", "oN"] {
        assert_eq!(yaml11_bool(&plain(text)), None, "{text}");
    }
    assert_eq!(
        yaml11_bool(&Scalar {
            text: "yes".to_string(),
            plain: false,
            tag: None
        }),
        None
    );
}

#[test]
fn builds_spans_in_bytes_for_non_ascii_sources() {
    let source = "é: [a, \"ü\"]\n";
    let mut sink = Sink::new(source);
    let root = parse(source, &mut sink).expect("parses");
    assert!(sink.diagnostics.is_empty());
    let super::NodeKind::Map(entries) = &root.kind else {
        panic!("map")
    };
    let (key, value) = &entries[0];
    assert_eq!(&source[key.span.start..key.span.end], "é");
    let super::NodeKind::Seq(items) = &value.kind else {
        panic!("seq")
    };
    assert_eq!(&source[items[1].span.start..items[1].span.end], "\"ü\"");
}
