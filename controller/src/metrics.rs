//! Stage: store → **metrics** → api (`GET /metrics`).
//!
//! Renders the Prometheus text exposition format (version 0.0.4) from a
//! snapshot the API reads from the store at scrape time, so every figure is
//! exact and survives restarts (nothing is counted in memory). Pure: no I/O,
//! no clock; the API builds the [`MetricsSnapshot`] and sends the text.
//!
//! Counters are sums over stored rows. Retention deletes executions with their
//! model calls, so a counter can go down after a purge; Prometheus treats a
//! decrease as a counter reset.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::store::{ExecutionStatus, ModelCallStatus, ModelCallTotals, ModelUsage};

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// What one scrape shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// The controller's version (`kiln_build_info`).
    pub version: String,
    /// Executions per status, every status listed.
    pub executions: Vec<(ExecutionStatus, u64)>,
    /// Model calls and tokens by `(provider, model, status)`.
    pub model_calls: Vec<ModelCallTotals>,
}

/// The exposition text: one `# HELP` and `# TYPE` per family, samples sorted
/// by their labels, every line ending in `\n`.
pub fn render(snapshot: &MetricsSnapshot) -> String {
    let mut out = String::new();

    family(
        &mut out,
        "kiln_build_info",
        "gauge",
        "Always 1; the version label is the controller's version.",
    );
    sample(
        &mut out,
        "kiln_build_info",
        &[("version", &snapshot.version)],
        1,
    );

    family(
        &mut out,
        "kiln_executions",
        "gauge",
        "Executions in the store, by status.",
    );
    for (status, count) in &snapshot.executions {
        sample(
            &mut out,
            "kiln_executions",
            &[("status", status.as_str())],
            *count,
        );
    }

    family(
        &mut out,
        "kiln_model_calls_total",
        "counter",
        "Model calls that ended, by provider, model and status.",
    );
    for totals in &snapshot.model_calls {
        if totals.status == ModelCallStatus::Running {
            continue;
        }
        sample(
            &mut out,
            "kiln_model_calls_total",
            &[
                ("provider", &totals.provider),
                ("model", &totals.model),
                ("status", totals.status.as_str()),
            ],
            totals.usage.requests,
        );
    }

    let mut running: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut tokens: BTreeMap<(&str, &str), ModelUsage> = BTreeMap::new();
    for totals in &snapshot.model_calls {
        let key = (totals.provider.as_str(), totals.model.as_str());
        if totals.status == ModelCallStatus::Running {
            *running.entry(key).or_default() += totals.usage.requests;
        }
        let sum = tokens.entry(key).or_default();
        sum.input_tokens = sum.input_tokens.saturating_add(totals.usage.input_tokens);
        sum.output_tokens = sum.output_tokens.saturating_add(totals.usage.output_tokens);
    }

    family(
        &mut out,
        "kiln_model_calls_running",
        "gauge",
        "Model calls in flight, by provider and model.",
    );
    for ((provider, model), count) in &running {
        sample(
            &mut out,
            "kiln_model_calls_running",
            &[("provider", provider), ("model", model)],
            *count,
        );
    }

    let token_families = [
        (
            "kiln_model_input_tokens_total",
            "Input (prompt) tokens of model calls, by provider and model.",
            false,
        ),
        (
            "kiln_model_output_tokens_total",
            "Output (completion) tokens of model calls, by provider and model.",
            true,
        ),
    ];
    for (name, help, is_output) in token_families {
        family(&mut out, name, "counter", help);
        for ((provider, model), usage) in &tokens {
            let value = if is_output {
                usage.output_tokens
            } else {
                usage.input_tokens
            };
            sample(
                &mut out,
                name,
                &[("provider", provider), ("model", model)],
                value,
            );
        }
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: u64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (idx, (label, text)) in labels.iter().enumerate() {
            if idx > 0 {
                out.push(',');
            }
            let _ = write!(out, "{label}=\"{}\"", escape_label_value(text));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// A label value as the format wants it: `\` → `\\`, `"` → `\"`, newline → `\n`.
pub fn escape_label_value(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// HELP text: `\` → `\\`, newline → `\n`.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
