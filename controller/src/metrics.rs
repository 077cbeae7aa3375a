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

/// Most `(provider, model)` label pairs shown. With `allow_unlisted_models`
/// a recipe names the model, so the number of series must not be the
/// author's to choose: the pairs with the fewest calls beyond this many are
/// summed under the model [`OTHER_MODELS`].
pub const MAX_MODEL_SERIES: usize = 100;

/// The `model` label of the folded pairs.
pub const OTHER_MODELS: &str = "_other";

/// `model_calls` with at most [`MAX_MODEL_SERIES`] `(provider, model)`
/// pairs: the busiest kept (ties by name), the rest folded into
/// `(provider, "_other")`, summed per status.
fn bounded_series(model_calls: &[ModelCallTotals]) -> Vec<ModelCallTotals> {
    let mut calls_by_pair: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for totals in model_calls {
        *calls_by_pair
            .entry((totals.provider.as_str(), totals.model.as_str()))
            .or_default() += totals.usage.requests;
    }
    if calls_by_pair.len() <= MAX_MODEL_SERIES {
        return model_calls.to_vec();
    }
    let mut ranked: Vec<((&str, &str), u64)> = calls_by_pair.into_iter().collect();
    ranked.sort_by(|(a_pair, a_calls), (b_pair, b_calls)| {
        b_calls.cmp(a_calls).then(a_pair.cmp(b_pair))
    });
    let kept: std::collections::BTreeSet<(&str, &str)> = ranked
        .iter()
        .take(MAX_MODEL_SERIES)
        .map(|(pair, _)| *pair)
        .collect();
    let mut folded: BTreeMap<(String, String, ModelCallStatus), ModelUsage> = BTreeMap::new();
    for totals in model_calls {
        let model = if kept.contains(&(totals.provider.as_str(), totals.model.as_str())) {
            totals.model.clone()
        } else {
            OTHER_MODELS.to_string()
        };
        let sum = folded
            .entry((totals.provider.clone(), model, totals.status))
            .or_default();
        sum.requests = sum.requests.saturating_add(totals.usage.requests);
        sum.input_tokens = sum.input_tokens.saturating_add(totals.usage.input_tokens);
        sum.output_tokens = sum.output_tokens.saturating_add(totals.usage.output_tokens);
    }
    folded
        .into_iter()
        .map(|((provider, model, status), usage)| ModelCallTotals {
            provider,
            model,
            status,
            usage,
        })
        .collect()
}

/// The exposition text: one `# HELP` and `# TYPE` per family, samples sorted
/// by their labels, every line ending in `\n`.
pub fn render(snapshot: &MetricsSnapshot) -> String {
    let mut out = String::new();
    let model_calls = bounded_series(&snapshot.model_calls);

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
    for totals in &model_calls {
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
    for totals in &model_calls {
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
