//! Unit tests for the Prometheus text rendering: exact text.

#![allow(clippy::unwrap_used)]

use super::*;

fn totals(
    provider: &str,
    model: &str,
    status: ModelCallStatus,
    requests: u64,
    input_tokens: u64,
    output_tokens: u64,
) -> ModelCallTotals {
    ModelCallTotals {
        provider: provider.to_string(),
        model: model.to_string(),
        status,
        usage: ModelUsage {
            requests,
            input_tokens,
            output_tokens,
        },
    }
}

#[test]
fn renders_every_family_with_exact_samples() {
    let snapshot = MetricsSnapshot {
        version: "0.1.0".to_string(),
        executions: vec![
            (ExecutionStatus::Queued, 2),
            (ExecutionStatus::Running, 1),
            (ExecutionStatus::Succeeded, 0),
        ],
        model_calls: vec![
            totals("anthropic", "claude-y", ModelCallStatus::Completed, 1, 7, 2),
            totals("openai", "gpt-x", ModelCallStatus::Completed, 2, 11, 4),
            totals("openai", "gpt-x", ModelCallStatus::Failed, 1, 0, 0),
            totals("openai", "gpt-x", ModelCallStatus::Running, 3, 0, 0),
        ],
    };
    let expected = "\
# HELP kiln_build_info Always 1; the version label is the controller's version.
# TYPE kiln_build_info gauge
kiln_build_info{version=\"0.1.0\"} 1
# HELP kiln_executions Executions in the store, by status.
# TYPE kiln_executions gauge
kiln_executions{status=\"queued\"} 2
kiln_executions{status=\"running\"} 1
kiln_executions{status=\"succeeded\"} 0
# HELP kiln_model_calls_total Model calls that ended, by provider, model and status.
# TYPE kiln_model_calls_total counter
kiln_model_calls_total{provider=\"anthropic\",model=\"claude-y\",status=\"completed\"} 1
kiln_model_calls_total{provider=\"openai\",model=\"gpt-x\",status=\"completed\"} 2
kiln_model_calls_total{provider=\"openai\",model=\"gpt-x\",status=\"failed\"} 1
# HELP kiln_model_calls_running Model calls in flight, by provider and model.
# TYPE kiln_model_calls_running gauge
kiln_model_calls_running{provider=\"openai\",model=\"gpt-x\"} 3
# HELP kiln_model_input_tokens_total Input (prompt) tokens of model calls, by provider and model.
# TYPE kiln_model_input_tokens_total counter
kiln_model_input_tokens_total{provider=\"anthropic\",model=\"claude-y\"} 7
kiln_model_input_tokens_total{provider=\"openai\",model=\"gpt-x\"} 11
# HELP kiln_model_output_tokens_total Output (completion) tokens of model calls, by provider and model.
# TYPE kiln_model_output_tokens_total counter
kiln_model_output_tokens_total{provider=\"anthropic\",model=\"claude-y\"} 2
kiln_model_output_tokens_total{provider=\"openai\",model=\"gpt-x\"} 4
";
    assert_eq!(render(&snapshot), expected);
}

#[test]
fn families_without_samples_keep_their_help_and_type() {
    let snapshot = MetricsSnapshot {
        version: "0.1.0".to_string(),
        executions: vec![],
        model_calls: vec![],
    };
    let text = render(&snapshot);
    let lines: Vec<_> = text.lines().filter(|line| !line.starts_with('#')).collect();
    assert_eq!(lines, ["kiln_build_info{version=\"0.1.0\"} 1"]);
    assert_eq!(text.matches("# TYPE ").count(), 6);
    assert!(text.ends_with('\n'));
}

#[test]
fn label_values_are_escaped() {
    let cases = [
        ("plain-model.v1", "plain-model.v1"),
        ("a\"b", "a\\\"b"),
        ("back\\slash", "back\\\\slash"),
        ("two\nlines", "two\\nlines"),
        ("\\\"\n", "\\\\\\\"\\n"),
        ("ünïcode", "ünïcode"),
    ];
    for (raw, escaped) in cases {
        assert_eq!(escape_label_value(raw), escaped, "{raw:?}");
    }
    let snapshot = MetricsSnapshot {
        version: "1\"}\nevil 1".to_string(),
        executions: vec![],
        model_calls: vec![totals(
            "p\\",
            "m\"}\nkiln_executions 9",
            ModelCallStatus::Cancelled,
            1,
            2,
            3,
        )],
    };
    let text = render(&snapshot);
    let samples: Vec<_> = text.lines().filter(|line| !line.starts_with('#')).collect();
    assert_eq!(
        samples,
        [
            "kiln_build_info{version=\"1\\\"}\\nevil 1\"} 1",
            "kiln_model_calls_total{provider=\"p\\\\\",model=\"m\\\"}\\nkiln_executions 9\",status=\"cancelled\"} 1",
            "kiln_model_input_tokens_total{provider=\"p\\\\\",model=\"m\\\"}\\nkiln_executions 9\"} 2",
            "kiln_model_output_tokens_total{provider=\"p\\\\\",model=\"m\\\"}\\nkiln_executions 9\"} 3",
        ]
    );
}

#[test]
fn model_series_beyond_the_bound_fold_into_other() {
    // 101 models at one provider: the one with the fewest calls (and, among
    // equals, the last by name) is folded; its tokens move with it.
    let mut model_calls: Vec<ModelCallTotals> = (0..MAX_MODEL_SERIES)
        .map(|idx| {
            totals(
                "local",
                &format!("m{idx:03}"),
                ModelCallStatus::Completed,
                2,
                10,
                1,
            )
        })
        .collect();
    model_calls.push(totals("local", "rare", ModelCallStatus::Completed, 1, 7, 3));
    model_calls.push(totals("local", "rare", ModelCallStatus::Failed, 0, 0, 0));
    let snapshot = MetricsSnapshot {
        version: "0.1.0".to_string(),
        executions: Vec::new(),
        model_calls,
    };
    let text = render(&snapshot);
    let calls: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with("kiln_model_calls_total{"))
        .collect();
    assert_eq!(calls.len(), MAX_MODEL_SERIES + 2);
    assert!(!text.contains("\"rare\""), "{text}");
    assert!(text.contains(
        "kiln_model_calls_total{provider=\"local\",model=\"_other\",status=\"completed\"} 1\n"
    ));
    assert!(text.contains(
        "kiln_model_calls_total{provider=\"local\",model=\"_other\",status=\"failed\"} 0\n"
    ));
    assert!(
        text.contains("kiln_model_input_tokens_total{provider=\"local\",model=\"_other\"} 7\n")
    );
    assert!(text.contains("kiln_model_input_tokens_total{provider=\"local\",model=\"m099\"} 10\n"));
}

#[test]
fn model_series_within_the_bound_are_shown_as_they_are() {
    let model_calls = vec![totals("local", "rare", ModelCallStatus::Completed, 1, 7, 3)];
    let snapshot = MetricsSnapshot {
        version: "0.1.0".to_string(),
        executions: Vec::new(),
        model_calls,
    };
    assert!(render(&snapshot).contains(
        "kiln_model_calls_total{provider=\"local\",model=\"rare\",status=\"completed\"} 1\n"
    ));
}
