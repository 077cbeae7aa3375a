//! Loading: YAML text → typed [`Recipe`] plus every structural diagnostic.
//!
//! Covers Part B sections 1-5 of the format spec and Part A item 2: unknown
//! top-level keys are warnings (`metadata`, `output` and `validation` are
//! accepted silently, real recipes carry them), unknown keys on a step, stage,
//! approval, retry, recursion, rate-limiting, backoff or provider-preference
//! entry are errors, wrong types are typed errors, the per-step-type rules of
//! section 5.7 are checked here (they need to know which keys were written),
//! and nested loop bodies are loaded recursively. Cross-step rules (names,
//! duplicates, depends_on, variables, expressions) live in `validate`.

mod fields;
pub mod yaml;

pub use fields::{ScalarPos, SourceMap};

use self::fields::{Fields, Walker, describe, index, join};
use self::yaml::{Node, NodeKind, Resolved, resolve, yaml11_bool};
use crate::diagnostic::{Diagnostic, Sink};
use crate::model::{
    AgentStep, Approval, ApprovalDefault, Backoff, BashStep, Body, ContextUpdate,
    DEFAULT_LOOP_VARIABLE, DEFAULT_MAX_ITERATIONS, DEFAULT_MAX_WHILE_ITERATIONS,
    DEFAULT_STEP_TIMEOUT_SECS, Foreach, Loop, OnError, Orchestrator, Parallel, ProviderPreference,
    RESERVED_NAMES, RateBackoff, RateLimiting, Recipe, RecipeStep, RecursionLimits, Retry, Stage,
    Step, StepKind, While,
};

const TOP_LEVEL_KEYS: &[&str] = &[
    "name",
    "description",
    "version",
    "author",
    "created",
    "updated",
    "tags",
    "context",
    "recursion",
    "rate_limiting",
    "orchestrator",
    "steps",
    "stages",
];
/// Top-level keys real recipes carry that the reference ignores; accepted silently.
const IGNORED_TOP_LEVEL_KEYS: &[&str] = &["metadata", "output", "validation"];
const STAGE_KEYS: &[&str] = &["name", "steps", "approval"];
const APPROVAL_KEYS: &[&str] = &["required", "prompt", "timeout", "default"];
const RETRY_KEYS: &[&str] = &["max_attempts", "backoff", "initial_delay", "max_delay"];
const RECURSION_KEYS: &[&str] = &["max_depth", "max_total_steps"];
const RATE_KEYS: &[&str] = &["max_concurrent_llm", "min_delay_ms", "backoff"];
const RATE_BACKOFF_KEYS: &[&str] = &[
    "enabled",
    "initial_delay_ms",
    "max_delay_ms",
    "multiplier",
    "reset_after_success",
];
const PREFERENCE_KEYS: &[&str] = &["provider", "model", "class"];
const AGENT_KEYS: &[&str] = &[
    "agent",
    "prompt",
    "mode",
    "agent_config",
    "provider",
    "model",
    "provider_preferences",
    "model_role",
    "spawn_mode",
];
const BASH_KEYS: &[&str] = &[
    "command",
    "cwd",
    "env",
    "output_exit_code",
    "shell",
    "output_stderr",
    "max_output_size",
    "delay_between",
];
const RECIPE_KEYS: &[&str] = &["recipe", "context", "recursion"];
const COMMON_KEYS: &[&str] = &[
    "id",
    "type",
    "output",
    "condition",
    "timeout",
    "retry",
    "on_error",
    "depends_on",
    "parse_json",
    "foreach",
    "as",
    "collect",
    "max_iterations",
    "parallel",
    "checkpoint_iterations",
    "while_condition",
    "max_while_iterations",
    "break_when",
    "update_context",
    "steps",
    "while_steps",
];

/// What loading produced: the model (when the root was a mapping) and the
/// side table validation uses to point into the source.
#[derive(Debug)]
pub struct Loaded {
    pub recipe: Option<Recipe>,
    pub source_map: SourceMap,
}

/// Loads `source` on its own: the model and the loading diagnostics only
/// (no cross-step validation; see [`crate::check::check`] for both).
pub fn load(source: &str) -> (Option<Recipe>, Vec<Diagnostic>) {
    let mut sink = Sink::new(source);
    let loaded = load_into(source, &mut sink);
    (loaded.recipe, sink.finish())
}

pub fn load_into(source: &str, sink: &mut Sink<'_>) -> Loaded {
    let Some(root) = yaml::parse(source, sink) else {
        return Loaded {
            recipe: None,
            source_map: SourceMap::default(),
        };
    };
    let mut walker = Walker {
        sink,
        map: SourceMap::default(),
    };
    let recipe = load_recipe(&mut walker, &root);
    Loaded {
        recipe,
        source_map: walker.map,
    }
}

fn load_recipe(w: &mut Walker<'_, '_>, root: &Node) -> Option<Recipe> {
    let Some(fields) = w.fields(root, "") else {
        let found = describe(root);
        w.sink.error(
            "expected-mapping",
            "",
            root.span,
            format!("recipe file must be a dictionary (a YAML mapping of fields), found {found}"),
        );
        return None;
    };
    let mut known: Vec<&str> = TOP_LEVEL_KEYS.to_vec();
    known.extend_from_slice(IGNORED_TOP_LEVEL_KEYS);
    w.unknown_keys(&fields, &known, "", "top-level", false);

    let required = |w: &mut Walker<'_, '_>, key: &str| -> String {
        let value = fields.get(key).and_then(|node| w.string(node, key));
        match value {
            Some(text) if !text.trim().is_empty() => text,
            _ => {
                let span = fields.key_span(key).unwrap_or(root.span);
                let span = if fields.has(key) {
                    span
                } else {
                    crate::diagnostic::Span::new(root.span.start, root.span.start)
                };
                let wrong_type = fields.given(key).is_some_and(|node| {
                    !matches!(&node.kind, NodeKind::Scalar(s) if matches!(resolve(s), Resolved::Str))
                });
                if !wrong_type {
                    w.sink.error(
                        "missing-field",
                        key,
                        span,
                        format!("recipe missing required field: {key}"),
                    );
                }
                String::new()
            }
        }
    };
    let name = required(w, "name");
    let description = required(w, "description");
    let version = required(w, "version");
    let optional =
        |w: &mut Walker<'_, '_>, key: &str| fields.get(key).and_then(|node| w.string(node, key));
    let author = optional(w, "author");
    let created = optional(w, "created");
    let updated = optional(w, "updated");
    let tags = fields
        .get("tags")
        .map(|node| w.string_list(node, "tags"))
        .unwrap_or_default();
    let context = fields
        .get("context")
        .map(|node| w.json_map(node, "context"))
        .unwrap_or_default();
    let recursion = fields
        .given("recursion")
        .and_then(|node| load_recursion(w, node, "recursion"))
        .unwrap_or_default();
    let rate_limiting = fields
        .given("rate_limiting")
        .and_then(|node| load_rate_limiting(w, node));
    let orchestrator = fields
        .given("orchestrator")
        .and_then(|node| load_orchestrator(w, node));

    let steps = fields.given("steps");
    let stages = fields.given("stages");
    let steps_list = steps.and_then(|node| list_items(w, node, "steps"));
    let stages_list = stages.and_then(|node| list_items(w, node, "stages"));
    let has_steps = steps_list.is_some_and(|items| !items.is_empty());
    let has_stages = stages_list.is_some_and(|items| !items.is_empty());
    if has_steps && has_stages {
        let span = fields.key_span("stages").unwrap_or(root.span);
        w.sink.error(
            "steps-and-stages",
            "stages",
            span,
            "recipe cannot have both 'steps' and 'stages'; use stages (each with its own steps) or steps alone"
                .to_string(),
        );
    }
    let body = if has_stages {
        let mut out = Vec::new();
        for (idx, node) in stages_list.unwrap_or_default().iter().enumerate() {
            if let Some(stage) = load_stage(w, node, &index("stages", idx)) {
                out.push(stage);
            }
        }
        Body::Staged(out)
    } else {
        Body::Flat(load_steps(w, steps_list.unwrap_or_default(), "steps"))
    };
    Some(Recipe {
        name,
        description,
        version,
        author,
        created,
        updated,
        tags,
        context,
        recursion,
        rate_limiting,
        orchestrator,
        body,
        span: root.span,
    })
}

fn list_items<'n>(w: &mut Walker<'_, '_>, node: &'n Node, path: &str) -> Option<&'n [Node]> {
    match &node.kind {
        NodeKind::Seq(items) => Some(items),
        _ => {
            let found = describe(node);
            w.sink.error(
                "expected-list",
                path,
                node.span,
                format!("'{path}' must be a list, found {found}"),
            );
            None
        }
    }
}

fn load_steps(w: &mut Walker<'_, '_>, items: &[Node], path: &str) -> Vec<Step> {
    let mut out = Vec::with_capacity(items.len());
    for (idx, node) in items.iter().enumerate() {
        if let Some(step) = load_step(w, node, &index(path, idx)) {
            out.push(step);
        }
    }
    out
}

fn load_stage(w: &mut Walker<'_, '_>, node: &Node, path: &str) -> Option<Stage> {
    let fields = w.element_fields(node, path, "stage")?;
    w.unknown_keys(&fields, STAGE_KEYS, path, "stage", true);
    let name_path = join(path, "name");
    let name = fields
        .get("name")
        .and_then(|value| w.string(value, &name_path))
        .unwrap_or_default();
    let steps = match fields.given("steps") {
        Some(value) => {
            let steps_path = join(path, "steps");
            let items = list_items(w, value, &steps_path).unwrap_or_default();
            load_steps(w, items, &steps_path)
        }
        None => Vec::new(),
    };
    let approval = fields
        .given("approval")
        .and_then(|value| load_approval(w, value, &join(path, "approval")));
    Some(Stage {
        name,
        steps,
        approval,
        span: node.span,
    })
}

fn load_approval(w: &mut Walker<'_, '_>, node: &Node, path: &str) -> Option<Approval> {
    let Some(fields) = w.fields(node, path) else {
        let found = describe(node);
        w.sink.error(
            "expected-mapping",
            path,
            node.span,
            format!("approval must be a mapping, found {found}"),
        );
        return None;
    };
    w.unknown_keys(&fields, APPROVAL_KEYS, path, "approval", true);
    let required = fields
        .get("required")
        .and_then(|value| w.boolean(value, &join(path, "required")))
        .unwrap_or(false);
    let prompt = fields
        .get("prompt")
        .and_then(|value| w.string(value, &join(path, "prompt")))
        .unwrap_or_default();
    let timeout_path = join(path, "timeout");
    let timeout_secs = fields
        .get("timeout")
        .and_then(|value| w.integer_min(value, &timeout_path, 0, "non-negative (0 waits forever)"))
        .map_or(0, |value| value.unsigned_abs());
    let default_path = join(path, "default");
    let default = match fields
        .get("default")
        .and_then(|value| w.string(value, &default_path))
    {
        None => ApprovalDefault::Deny,
        Some(text) => match text.as_str() {
            "deny" => ApprovalDefault::Deny,
            "approve" => ApprovalDefault::Approve,
            other => {
                let span = fields.get("default").map_or(node.span, |value| value.span);
                w.sink.error(
                    "invalid-value",
                    &default_path,
                    span,
                    format!("approval default must be 'deny' or 'approve', found '{other}'"),
                );
                ApprovalDefault::Deny
            }
        },
    };
    if required && prompt.trim().is_empty() {
        w.sink.error(
            "missing-field",
            &join(path, "prompt"),
            node.span,
            "approval prompt is required when approval is required".to_string(),
        );
    }
    Some(Approval {
        required,
        prompt,
        timeout_secs,
        default,
        span: node.span,
    })
}

fn load_recursion(w: &mut Walker<'_, '_>, node: &Node, path: &str) -> Option<RecursionLimits> {
    let Some(fields) = w.fields(node, path) else {
        w.type_error(node, path, "expected-mapping", "a mapping");
        return None;
    };
    w.unknown_keys(&fields, RECURSION_KEYS, path, "recursion", true);
    let mut limits = RecursionLimits::default();
    if let Some(value) = fields.given("max_depth") {
        let field_path = join(path, "max_depth");
        if let Some(depth) = ranged(w, value, &field_path, 1, 20) {
            limits.max_depth = depth;
        }
    }
    if let Some(value) = fields.given("max_total_steps") {
        let field_path = join(path, "max_total_steps");
        if let Some(total) = ranged(w, value, &field_path, 1, 1000) {
            limits.max_total_steps = total;
        }
    }
    Some(limits)
}

/// An integer in `min..=max`, reported as `out-of-range` otherwise.
fn ranged(w: &mut Walker<'_, '_>, node: &Node, path: &str, min: i64, max: i64) -> Option<u32> {
    let value = w.integer(node, path)?;
    if value < min || value > max {
        let name = fields::display_name(path);
        w.sink.error(
            "out-of-range",
            path,
            node.span,
            format!("{name} must be between {min} and {max}, found {value}"),
        );
        return None;
    }
    u32::try_from(value).ok()
}

fn load_rate_limiting(w: &mut Walker<'_, '_>, node: &Node) -> Option<RateLimiting> {
    let path = "rate_limiting";
    let Some(fields) = w.fields(node, path) else {
        w.type_error(node, path, "expected-mapping", "a mapping");
        return None;
    };
    w.unknown_keys(&fields, RATE_KEYS, path, "rate_limiting", true);
    let mut limits = RateLimiting {
        max_concurrent_llm: None,
        min_delay_ms: 0,
        backoff: RateBackoff::default(),
    };
    if let Some(value) = fields.given("max_concurrent_llm") {
        let field_path = join(path, "max_concurrent_llm");
        if let Some(n) = w.integer_min(value, &field_path, 1, "at least 1") {
            if n > 100 {
                // The reference rejects this (an error phrased like a warning); Kiln warns.
                w.sink.warning(
                    "unusual-rate-limit",
                    &field_path,
                    value.span,
                    format!("max_concurrent_llm {n} is unusually high (above 100)"),
                );
            }
            limits.max_concurrent_llm = Some(u32::try_from(n).unwrap_or(u32::MAX));
        }
    }
    if let Some(value) = fields.given("min_delay_ms") {
        let field_path = join(path, "min_delay_ms");
        if let Some(n) = w.integer_min(value, &field_path, 0, "non-negative") {
            if n > 60_000 {
                w.sink.warning(
                    "unusual-rate-limit",
                    &field_path,
                    value.span,
                    format!("min_delay_ms {n} is unusually high (above 60000)"),
                );
            }
            limits.min_delay_ms = n.unsigned_abs();
        }
    }
    if let Some(value) = fields.given("backoff") {
        let backoff_path = join(path, "backoff");
        if let Some(backoff_fields) = w.fields(value, &backoff_path) {
            w.unknown_keys(
                &backoff_fields,
                RATE_BACKOFF_KEYS,
                &backoff_path,
                "rate_limiting.backoff",
                true,
            );
            let b = &mut limits.backoff;
            if let Some(v) = backoff_fields
                .get("enabled")
                .and_then(|n| w.boolean(n, &join(&backoff_path, "enabled")))
            {
                b.enabled = v;
            }
            if let Some(node) = backoff_fields.given("initial_delay_ms")
                && let Some(v) = w.integer_min(
                    node,
                    &join(&backoff_path, "initial_delay_ms"),
                    100,
                    "at least 100",
                )
            {
                b.initial_delay_ms = v.unsigned_abs();
            }
            if let Some(node) = backoff_fields.given("max_delay_ms") {
                let field_path = join(&backoff_path, "max_delay_ms");
                if let Some(v) = w.integer_min(node, &field_path, 0, "non-negative") {
                    if v.unsigned_abs() < b.initial_delay_ms {
                        w.sink.error(
                            "out-of-range",
                            &field_path,
                            node.span,
                            format!(
                                "max_delay_ms must be at least initial_delay_ms ({}), found {v}",
                                b.initial_delay_ms
                            ),
                        );
                    } else {
                        b.max_delay_ms = v.unsigned_abs();
                    }
                }
            }
            if let Some(node) = backoff_fields.given("multiplier") {
                let field_path = join(&backoff_path, "multiplier");
                if let Some(v) = w.number(node, &field_path) {
                    if v < 1.0 {
                        w.sink.error(
                            "out-of-range",
                            &field_path,
                            node.span,
                            format!("multiplier must be at least 1, found {v}"),
                        );
                    } else {
                        b.multiplier = v;
                    }
                }
            }
            if let Some(node) = backoff_fields.given("reset_after_success")
                && let Some(v) = w.integer_min(
                    node,
                    &join(&backoff_path, "reset_after_success"),
                    1,
                    "at least 1",
                )
            {
                b.reset_after_success = u32::try_from(v).unwrap_or(u32::MAX);
            }
        } else {
            w.type_error(value, &backoff_path, "expected-mapping", "a mapping");
        }
    }
    Some(limits)
}

fn load_orchestrator(w: &mut Walker<'_, '_>, node: &Node) -> Option<Orchestrator> {
    let path = "orchestrator";
    let Some(fields) = w.fields(node, path) else {
        w.type_error(node, path, "expected-mapping", "a mapping");
        return None;
    };
    for (name, key, _) in &fields.entries {
        if *name != "config" {
            w.sink.warning(
                "ignored-field",
                &join(path, name),
                key.span,
                format!("orchestrator field '{name}' is ignored (only 'config' is read)"),
            );
        }
    }
    let config = fields
        .given("config")
        .map(|value| w.json_map(value, "orchestrator.config"))
        .unwrap_or_default();
    if let Some(delay) = config.get("min_delay_between_calls_ms") {
        let ok = delay.as_u64().is_some();
        if !ok {
            let field_path = "orchestrator.config.min_delay_between_calls_ms";
            let span = w.map.keys.get(field_path).copied().unwrap_or(node.span);
            w.sink.error(
                "out-of-range",
                field_path,
                span,
                format!("min_delay_between_calls_ms must be a non-negative integer, found {delay}"),
            );
        }
    }
    Some(Orchestrator { config })
}

/// True when `name` is usable as a variable: non-empty, letters, digits and `_`.
pub fn is_variable_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_')
}

struct StepCtx<'f, 'n> {
    fields: &'f Fields<'n>,
    path: &'f str,
    label: String,
    span: crate::diagnostic::Span,
}

impl StepCtx<'_, '_> {
    fn at(&self, key: &str) -> String {
        join(self.path, key)
    }

    fn span_of(&self, key: &str) -> crate::diagnostic::Span {
        self.fields.key_span(key).unwrap_or(self.span)
    }
}

fn load_step(w: &mut Walker<'_, '_>, node: &Node, path: &str) -> Option<Step> {
    let fields = w.element_fields(node, path, "step")?;
    let mut known: Vec<&str> = COMMON_KEYS.to_vec();
    known.extend_from_slice(AGENT_KEYS);
    known.extend_from_slice(BASH_KEYS);
    known.extend_from_slice(RECIPE_KEYS);
    w.unknown_keys(&fields, &known, path, "step", true);

    let id_path = join(path, "id");
    let id = fields
        .get("id")
        .and_then(|value| w.string(value, &id_path))
        .unwrap_or_default();
    let label = if id.is_empty() {
        format!("step at {path}")
    } else {
        format!("step '{id}'")
    };
    let cx = StepCtx {
        fields: &fields,
        path,
        label,
        span: node.span,
    };
    if id.trim().is_empty()
        && fields.given("id").is_none_or(|value| {
            value
                .as_scalar()
                .is_some_and(|s| matches!(resolve(s), Resolved::Str))
        })
    {
        w.sink.error(
            "missing-field",
            &id_path,
            cx.span_of("id"),
            "step is missing required field 'id' (it must be non-empty)".to_string(),
        );
    }

    let opt_string = |w: &mut Walker<'_, '_>, key: &str| {
        fields
            .get(key)
            .and_then(|value| w.string(value, &cx.at(key)))
    };

    // Common fields.
    let output = opt_string(w, "output");
    if let Some(name) = &output {
        check_output_name(w, &cx, "output", name);
    }
    let condition = opt_string(w, "condition");
    let timeout_secs = fields
        .given("timeout")
        .and_then(|value| w.integer_min(value, &cx.at("timeout"), 1, "positive (seconds)"))
        .map_or(DEFAULT_STEP_TIMEOUT_SECS, |value| value.unsigned_abs());
    let retry = fields
        .given("retry")
        .and_then(|value| load_retry(w, value, &cx.at("retry")));
    let on_error = match opt_string(w, "on_error").as_deref() {
        None | Some("fail") => OnError::Fail,
        Some("continue") => OnError::Continue,
        Some("skip_remaining") => OnError::SkipRemaining,
        Some(other) => {
            let span = fields.get("on_error").map_or(node.span, |value| value.span);
            w.sink.error(
                "invalid-value",
                &cx.at("on_error"),
                span,
                format!(
                    "{}: on_error must be 'fail', 'continue' or 'skip_remaining', found '{other}'",
                    cx.label
                ),
            );
            OnError::Fail
        }
    };
    let depends_on = fields
        .get("depends_on")
        .map(|value| w.string_list(value, &cx.at("depends_on")))
        .unwrap_or_default();
    let parse_json = fields
        .get("parse_json")
        .and_then(|value| w.boolean(value, &cx.at("parse_json")))
        .unwrap_or(false);

    // Nested body.
    let body_key = match (fields.has("steps"), fields.has("while_steps")) {
        (true, true) => {
            w.sink.error(
                "conflicting-fields",
                &cx.at("while_steps"),
                cx.span_of("while_steps"),
                format!("{}: cannot have both 'steps' and 'while_steps'", cx.label),
            );
            Some("steps")
        }
        (true, false) => Some("steps"),
        (false, true) => Some("while_steps"),
        (false, false) => None,
    };
    let body = match body_key.and_then(|key| fields.given(key).map(|value| (key, value))) {
        Some((key, value)) => {
            let body_path = cx.at(key);
            let items = list_items(w, value, &body_path).unwrap_or_default();
            load_steps(w, items, &body_path)
        }
        None => Vec::new(),
    };

    let looping = load_loop(w, &cx, body_key.filter(|key| fields.given(key).is_some()));
    let is_container = !body.is_empty() && looping.is_some();

    let step_type = match fields.get("type") {
        None => "agent".to_string(),
        Some(value) => w
            .string(value, &cx.at("type"))
            .unwrap_or_else(|| "agent".to_string()),
    };
    let kind = match step_type.as_str() {
        "bash" => StepKind::Bash(load_bash(w, &cx)),
        "recipe" => StepKind::Recipe(load_recipe_step(w, &cx)),
        "agent" => StepKind::Agent(load_agent(w, &cx, is_container)),
        other => {
            let span = fields.get("type").map_or(node.span, |value| value.span);
            w.sink.error(
                "invalid-value",
                &cx.at("type"),
                span,
                format!(
                    "{}: type must be 'agent', 'bash' or 'recipe', found '{other}'",
                    cx.label
                ),
            );
            StepKind::Agent(AgentStep::default())
        }
    };
    if !matches!(kind, StepKind::Agent(_)) {
        for key in ["provider", "model", "provider_preferences", "model_role"] {
            if fields.has(key) {
                w.sink.error(
                    "forbidden-field",
                    &cx.at(key),
                    cx.span_of(key),
                    format!(
                        "{}: '{key}' is only valid on agent steps, not on {} steps",
                        cx.label,
                        kind.type_name()
                    ),
                );
            }
        }
    }
    if matches!(kind, StepKind::Recipe(_)) && fields.has("agent_config") {
        w.sink.warning(
            "ignored-field",
            &cx.at("agent_config"),
            cx.span_of("agent_config"),
            format!(
                "{}: 'agent_config' only applies to agent steps and is ignored on recipe steps",
                cx.label
            ),
        );
    }
    Some(Step {
        id,
        output,
        condition,
        timeout_secs,
        retry,
        on_error,
        depends_on,
        parse_json,
        kind,
        looping,
        body,
        span: node.span,
    })
}

fn check_output_name(w: &mut Walker<'_, '_>, cx: &StepCtx<'_, '_>, key: &str, name: &str) {
    let span = cx.fields.get(key).map_or(cx.span, |value| value.span);
    if !is_variable_name(name) {
        w.sink.error(
            "invalid-variable-name",
            &cx.at(key),
            span,
            format!(
                "{}: {key} '{name}' must be alphanumeric (letters, digits and underscores)",
                cx.label
            ),
        );
    } else if RESERVED_NAMES.contains(&name) {
        w.sink.error(
            "reserved-name",
            &cx.at(key),
            span,
            format!(
                "{}: {key} '{name}' is reserved (recipe, session and step are reserved names)",
                cx.label
            ),
        );
    }
}

fn load_retry(w: &mut Walker<'_, '_>, node: &Node, path: &str) -> Option<Retry> {
    let Some(fields) = w.fields(node, path) else {
        let found = describe(node);
        w.sink.error(
            "expected-mapping",
            path,
            node.span,
            format!("retry must be a mapping, found {found}"),
        );
        return None;
    };
    w.unknown_keys(&fields, RETRY_KEYS, path, "retry", true);
    let mut retry = Retry::default();
    if let Some(value) = fields.given("max_attempts")
        && let Some(n) = w.integer_min(value, &join(path, "max_attempts"), 1, "a positive integer")
    {
        retry.max_attempts = u32::try_from(n).unwrap_or(u32::MAX);
    }
    if let Some(value) = fields.given("backoff") {
        let backoff_path = join(path, "backoff");
        match w.string(value, &backoff_path).as_deref() {
            Some("exponential") => retry.backoff = Backoff::Exponential,
            Some("linear") => retry.backoff = Backoff::Linear,
            Some(other) => w.sink.error(
                "invalid-value",
                &backoff_path,
                value.span,
                format!("retry backoff must be 'exponential' or 'linear', found '{other}'"),
            ),
            None => {}
        }
    }
    for (key, slot) in [
        ("initial_delay", &mut retry.initial_delay_secs),
        ("max_delay", &mut retry.max_delay_secs),
    ] {
        if let Some(value) = fields.given(key) {
            let field_path = join(path, key);
            if let Some(n) = w.number(value, &field_path) {
                if n < 0.0 {
                    w.sink.error(
                        "out-of-range",
                        &field_path,
                        value.span,
                        format!("{key} must be non-negative, found {n}"),
                    );
                } else {
                    *slot = n;
                }
            }
        }
    }
    Some(retry)
}

fn load_loop(w: &mut Walker<'_, '_>, cx: &StepCtx<'_, '_>, body_key: Option<&str>) -> Option<Loop> {
    let fields = cx.fields;
    let opt_string = |w: &mut Walker<'_, '_>, key: &str| {
        fields
            .get(key)
            .and_then(|value| w.string(value, &cx.at(key)))
    };
    let foreach = opt_string(w, "foreach");
    let while_condition = match fields.given("while_condition") {
        Some(value) => match &value.kind {
            // `while_condition: true` (unquoted) is the literal-true loop.
            NodeKind::Scalar(scalar) if resolve(scalar) == Resolved::Bool(true) => {
                Some("true".to_string())
            }
            _ => w.string(value, &cx.at("while_condition")),
        },
        None => None,
    };
    let as_name = opt_string(w, "as");
    let collect = opt_string(w, "collect");
    if let Some(name) = &as_name
        && !is_variable_name(name)
    {
        w.sink.error(
                "invalid-variable-name",
                &cx.at("as"),
                cx.fields.get("as").map_or(cx.span, |value| value.span),
                format!("{}: 'as' must be a valid variable name (letters, digits, underscores), found '{name}'", cx.label),
            );
    }
    if let Some(name) = &collect
        && !is_variable_name(name)
    {
        w.sink.error(
                "invalid-variable-name",
                &cx.at("collect"),
                cx.fields.get("collect").map_or(cx.span, |value| value.span),
                format!("{}: 'collect' must be a valid variable name (letters, digits, underscores), found '{name}'", cx.label),
            );
    }
    let max_iterations = fields
        .given("max_iterations")
        .and_then(|value| {
            let value_i = w.integer(value, &cx.at("max_iterations"))?;
            if value_i <= 0 {
                w.sink.error(
                    "out-of-range",
                    &cx.at("max_iterations"),
                    value.span,
                    format!(
                        "{}: max_iterations must be positive, found {value_i}",
                        cx.label
                    ),
                );
                return None;
            }
            Some(value_i.unsigned_abs())
        })
        .unwrap_or(DEFAULT_MAX_ITERATIONS);
    let parallel = fields
        .given("parallel")
        .and_then(|value| load_parallel(w, value, &cx.at("parallel"), &cx.label));
    let checkpoint = fields
        .get("checkpoint_iterations")
        .and_then(|value| w.boolean(value, &cx.at("checkpoint_iterations")))
        .unwrap_or(false);
    let max_while = fields.given("max_while_iterations").and_then(|value| {
        let n = w.integer(value, &cx.at("max_while_iterations"))?;
        if !(1..=1000).contains(&n) {
            w.sink.error(
                "out-of-range",
                &cx.at("max_while_iterations"),
                value.span,
                format!(
                    "{}: max_while_iterations must be between 1 and 1000, found {n}",
                    cx.label
                ),
            );
            return None;
        }
        Some(n.unsigned_abs())
    });
    let break_when = opt_string(w, "break_when");
    let update_context = match fields.given("update_context") {
        Some(value) => {
            let update_path = cx.at("update_context");
            match w.fields(value, &update_path) {
                Some(entries) => {
                    let mut out = Vec::new();
                    for (name, key, item) in &entries.entries {
                        let item_path = join(&update_path, name);
                        if !is_variable_name(name) || RESERVED_NAMES.contains(name) {
                            w.sink.error(
                                "invalid-variable-name",
                                &item_path,
                                key.span,
                                format!("{}: update_context key '{name}' must be a variable name that is not reserved", cx.label),
                            );
                        }
                        if let Some(text) = w.string(item, &item_path) {
                            out.push(ContextUpdate {
                                name: (*name).to_string(),
                                value: text,
                            });
                        }
                    }
                    out
                }
                None => {
                    w.type_error(value, &update_path, "expected-mapping", "a mapping");
                    Vec::new()
                }
            }
        }
        None => Vec::new(),
    };

    let parallel_on = parallel.is_some_and(|p| p != Parallel::Sequential);
    if foreach.is_some() && while_condition.is_some() {
        w.sink.error(
            "conflicting-fields",
            &cx.at("while_condition"),
            cx.span_of("while_condition"),
            format!("{}: cannot have both foreach and while_condition", cx.label),
        );
    }
    if fields.has("parallel") && foreach.is_none() {
        w.sink.error(
            "requires-foreach",
            &cx.at("parallel"),
            cx.span_of("parallel"),
            format!("{}: parallel requires foreach", cx.label),
        );
    }
    if checkpoint && foreach.is_none() {
        w.sink.error(
            "requires-foreach",
            &cx.at("checkpoint_iterations"),
            cx.span_of("checkpoint_iterations"),
            format!("{}: checkpoint_iterations requires foreach", cx.label),
        );
    }
    if checkpoint && parallel_on {
        w.sink.error(
            "conflicting-fields",
            &cx.at("checkpoint_iterations"),
            cx.span_of("checkpoint_iterations"),
            format!(
                "{}: checkpoint_iterations cannot be used with parallel",
                cx.label
            ),
        );
    }
    if foreach.is_none() && while_condition.is_none() {
        for key in ["break_when", "update_context"] {
            if fields.has(key) {
                w.sink.error(
                    "requires-loop",
                    &cx.at(key),
                    cx.span_of(key),
                    format!("{}: {key} requires foreach or while_condition", cx.label),
                );
            }
        }
        if let Some(key) = body_key {
            w.sink.error(
                "requires-loop",
                &cx.at(key),
                cx.span_of(key),
                format!(
                    "{}: nested steps requires foreach or while_condition",
                    cx.label
                ),
            );
        }
    }
    if foreach.is_some() {
        for key in ["break_when", "update_context", "max_while_iterations"] {
            if fields.has(key) {
                w.sink.warning(
                    "ignored-field",
                    &cx.at(key),
                    cx.span_of(key),
                    format!(
                        "{}: {key} only applies to while loops and is ignored on a foreach",
                        cx.label
                    ),
                );
            }
        }
    }
    if while_condition.is_some() && fields.has("max_iterations") {
        w.sink.warning(
            "while-max-iterations-ignored",
            &cx.at("max_iterations"),
            cx.span_of("max_iterations"),
            format!(
                "{}: max_iterations is ignored on while loops; use max_while_iterations",
                cx.label
            ),
        );
    }
    if foreach.is_none() {
        for key in ["as", "max_iterations"] {
            if fields.has(key) && !(key == "max_iterations" && while_condition.is_some()) {
                w.sink.warning(
                    "ignored-field",
                    &cx.at(key),
                    cx.span_of(key),
                    format!("{}: {key} is ignored without foreach", cx.label),
                );
            }
        }
        if while_condition.is_none() && fields.has("collect") {
            w.sink.warning(
                "ignored-field",
                &cx.at("collect"),
                cx.span_of("collect"),
                format!("{}: collect is ignored without a loop", cx.label),
            );
        }
    }
    if while_condition.is_none() && foreach.is_none() && fields.has("max_while_iterations") {
        w.sink.warning(
            "ignored-field",
            &cx.at("max_while_iterations"),
            cx.span_of("max_while_iterations"),
            format!(
                "{}: max_while_iterations is ignored without while_condition",
                cx.label
            ),
        );
    }

    if let Some(foreach) = foreach {
        return Some(Loop::Foreach(Foreach {
            foreach,
            as_name: as_name.unwrap_or_else(|| DEFAULT_LOOP_VARIABLE.to_string()),
            collect,
            max_iterations,
            parallel: parallel.unwrap_or(Parallel::Sequential),
            checkpoint_iterations: checkpoint,
        }));
    }
    while_condition.map(|condition| {
        Loop::While(While {
            condition,
            max_while_iterations: max_while.unwrap_or(DEFAULT_MAX_WHILE_ITERATIONS),
            break_when,
            update_context,
            collect,
        })
    })
}

/// `parallel`: false / true / N >= 1. Strings `"true"`/`"false"`/digits are
/// read as such (Part A item 9: `"false"` is false, unlike the reference);
/// any other string keeps the reference's reading (unbounded) with a warning.
fn load_parallel(w: &mut Walker<'_, '_>, node: &Node, path: &str, label: &str) -> Option<Parallel> {
    let NodeKind::Scalar(scalar) = &node.kind else {
        w.type_error(
            node,
            path,
            "expected-boolean",
            "true, false or a positive integer",
        );
        return None;
    };
    let from_int = |w: &mut Walker<'_, '_>, n: i64| {
        if n < 1 {
            w.sink.error(
                "out-of-range",
                path,
                node.span,
                format!("{label}: parallel must be at least 1 when an integer, found {n}"),
            );
            None
        } else {
            Some(Parallel::Limit(u32::try_from(n).unwrap_or(u32::MAX)))
        }
    };
    match resolve(scalar) {
        Resolved::Null => None,
        Resolved::Bool(true) => Some(Parallel::Unbounded),
        Resolved::Bool(false) => Some(Parallel::Sequential),
        Resolved::Int(n) => from_int(w, n),
        Resolved::Float(_) => {
            w.type_error(
                node,
                path,
                "expected-integer",
                "true, false or a positive integer",
            );
            None
        }
        Resolved::Str => {
            if let Some(value) = yaml11_bool(scalar) {
                w.yaml11_warning(node, scalar, path, &format!("read as the boolean {value}"));
                return Some(if value {
                    Parallel::Unbounded
                } else {
                    Parallel::Sequential
                });
            }
            let text = scalar.text.trim();
            if text.eq_ignore_ascii_case("false") {
                Some(Parallel::Sequential)
            } else if text.eq_ignore_ascii_case("true") {
                Some(Parallel::Unbounded)
            } else if let Ok(n) = text.parse::<i64>() {
                from_int(w, n)
            } else {
                w.sink.warning(
                    "parallel-string",
                    path,
                    node.span,
                    format!("{label}: parallel '{text}' is not true, false or a number; it is not templated and runs unbounded parallel (as the reference does)"),
                );
                Some(Parallel::Unbounded)
            }
        }
    }
}

fn forbid(w: &mut Walker<'_, '_>, cx: &StepCtx<'_, '_>, step_type: &str, keys: &[&str]) {
    for key in keys {
        if cx.fields.has(key) {
            w.sink.error(
                "forbidden-field",
                &cx.at(key),
                cx.span_of(key),
                format!("{}: {step_type} steps cannot have '{key}'", cx.label),
            );
        }
    }
}

fn ignore_bash_fields(w: &mut Walker<'_, '_>, cx: &StepCtx<'_, '_>, step_type: &str) {
    for key in BASH_KEYS {
        if *key != "command" && cx.fields.has(key) {
            w.sink.warning(
                "ignored-field",
                &cx.at(key),
                cx.span_of(key),
                format!(
                    "{}: '{key}' only applies to bash steps and is ignored on {step_type} steps",
                    cx.label
                ),
            );
        }
    }
}

fn load_agent(w: &mut Walker<'_, '_>, cx: &StepCtx<'_, '_>, is_container: bool) -> AgentStep {
    forbid(w, cx, "agent", &["recipe", "context", "command"]);
    ignore_bash_fields(w, cx, "agent");
    let fields = cx.fields;
    let opt_string = |w: &mut Walker<'_, '_>, key: &str| {
        fields
            .get(key)
            .and_then(|value| w.string(value, &cx.at(key)))
    };
    let agent = opt_string(w, "agent").unwrap_or_default();
    let prompt = opt_string(w, "prompt").unwrap_or_default();
    if !is_container {
        for (key, value) in [("agent", &agent), ("prompt", &prompt)] {
            if value.trim().is_empty()
                && fields
                    .given(key)
                    .is_none_or(|n| n.as_scalar().is_some_and(|s| resolve(s) == Resolved::Str))
            {
                w.sink.error(
                    "missing-field",
                    &cx.at(key),
                    cx.span_of(key),
                    format!("{}: agent steps require a non-empty '{key}'", cx.label),
                );
            }
        }
    }
    let mode = opt_string(w, "mode");
    let agent_config = fields
        .given("agent_config")
        .map(|value| w.json_map(value, &cx.at("agent_config")));
    let provider = opt_string(w, "provider");
    let model = opt_string(w, "model");
    let model_role = opt_string(w, "model_role");
    let spawn_mode = opt_string(w, "spawn_mode");
    if let Some(mode) = &spawn_mode
        && mode != "subprocess"
    {
        w.sink.error(
            "invalid-value",
            &cx.at("spawn_mode"),
            fields.get("spawn_mode").map_or(cx.span, |value| value.span),
            format!(
                "{}: spawn_mode must be 'subprocess' when set, found '{mode}'",
                cx.label
            ),
        );
    }
    let provider_preferences = fields
        .given("provider_preferences")
        .and_then(|value| load_preferences(w, value, cx));
    if fields.has("provider_preferences") && (fields.has("provider") || fields.has("model")) {
        w.sink.error(
            "conflicting-fields",
            &cx.at("provider_preferences"),
            cx.span_of("provider_preferences"),
            format!(
                "{}: provider_preferences cannot be combined with provider/model",
                cx.label
            ),
        );
    }
    if fields.has("model_role") && fields.has("provider_preferences") {
        w.sink.error(
            "conflicting-fields",
            &cx.at("model_role"),
            cx.span_of("model_role"),
            format!(
                "{}: model_role cannot be combined with provider_preferences",
                cx.label
            ),
        );
    }
    if fields.has("model_role") && (fields.has("provider") || fields.has("model")) {
        w.sink.error(
            "conflicting-fields",
            &cx.at("model_role"),
            cx.span_of("model_role"),
            format!(
                "{}: model_role cannot be combined with provider/model",
                cx.label
            ),
        );
    }
    AgentStep {
        agent,
        prompt,
        mode,
        agent_config,
        provider,
        model,
        provider_preferences,
        model_role,
        spawn_mode,
    }
}

fn load_preferences(
    w: &mut Walker<'_, '_>,
    node: &Node,
    cx: &StepCtx<'_, '_>,
) -> Option<Vec<ProviderPreference>> {
    let path = cx.at("provider_preferences");
    let NodeKind::Seq(items) = &node.kind else {
        w.type_error(node, &path, "expected-list", "a list");
        return None;
    };
    if items.is_empty() {
        w.sink.error(
            "out-of-range",
            &path,
            node.span,
            format!("{}: provider_preferences must not be empty", cx.label),
        );
        return None;
    }
    let mut out = Vec::new();
    for (idx, item) in items.iter().enumerate() {
        let item_path = index(&path, idx);
        let Some(fields) = w.fields(item, &item_path) else {
            w.type_error(item, &item_path, "expected-mapping", "a mapping");
            continue;
        };
        w.unknown_keys(
            &fields,
            PREFERENCE_KEYS,
            &item_path,
            "provider_preferences",
            true,
        );
        let provider = fields
            .get("provider")
            .and_then(|v| w.string(v, &join(&item_path, "provider")));
        let model = fields
            .get("model")
            .and_then(|v| w.string(v, &join(&item_path, "model")));
        let class = fields
            .get("class")
            .and_then(|v| w.string(v, &join(&item_path, "class")));
        match (provider, class) {
            (Some(_), Some(_)) => w.sink.error(
                "conflicting-fields",
                &join(&item_path, "class"),
                fields.key_span("class").unwrap_or(item.span),
                format!(
                    "{}: a provider_preferences entry has either 'provider' or 'class', not both",
                    cx.label
                ),
            ),
            (Some(provider), None) => out.push(ProviderPreference::Provider { provider, model }),
            (None, Some(class)) => {
                if model.is_some() {
                    w.sink.error(
                        "conflicting-fields",
                        &join(&item_path, "model"),
                        fields.key_span("model").unwrap_or(item.span),
                        format!(
                            "{}: a provider_preferences 'class' entry cannot name a model",
                            cx.label
                        ),
                    );
                }
                out.push(ProviderPreference::Class { class });
            }
            (None, None) => w.sink.error(
                "missing-field",
                &item_path,
                item.span,
                format!(
                    "{}: each provider_preferences entry requires 'provider' (or 'class')",
                    cx.label
                ),
            ),
        }
    }
    Some(out)
}

fn load_bash(w: &mut Walker<'_, '_>, cx: &StepCtx<'_, '_>) -> BashStep {
    forbid(
        w,
        cx,
        "bash",
        &[
            "agent",
            "prompt",
            "mode",
            "agent_config",
            "recipe",
            "context",
            "recursion",
            "spawn_mode",
        ],
    );
    let fields = cx.fields;
    let opt_string = |w: &mut Walker<'_, '_>, key: &str| {
        fields
            .get(key)
            .and_then(|value| w.string(value, &cx.at(key)))
    };
    let command = opt_string(w, "command").unwrap_or_default();
    let command_is_string = fields
        .given("command")
        .is_none_or(|n| n.as_scalar().is_some_and(|s| resolve(s) == Resolved::Str));
    if command_is_string {
        if !fields.has("command") || command.is_empty() {
            w.sink.error(
                "missing-field",
                &cx.at("command"),
                cx.span_of("command"),
                format!("{}: bash steps require a non-empty 'command'", cx.label),
            );
        } else if command.trim().is_empty() {
            w.sink.error(
                "missing-field",
                &cx.at("command"),
                fields.get("command").map_or(cx.span, |value| value.span),
                format!("{}: bash command must not be only whitespace", cx.label),
            );
        }
    }
    let cwd = opt_string(w, "cwd");
    let env = fields
        .given("env")
        .map(|value| w.json_map(value, &cx.at("env")))
        .unwrap_or_default();
    for (key, value) in &env {
        if value.is_object() || value.is_array() {
            let path = join(&cx.at("env"), key);
            let span = w.map.keys.get(&path).copied().unwrap_or(cx.span);
            w.sink.error(
                "expected-string",
                &path,
                span,
                format!(
                    "{}: env value '{key}' must be a scalar, found {}",
                    cx.label,
                    if value.is_array() { "list" } else { "mapping" }
                ),
            );
        }
    }
    let output_exit_code = opt_string(w, "output_exit_code");
    if let Some(name) = &output_exit_code {
        check_output_name(w, cx, "output_exit_code", name);
    }
    let shell = opt_string(w, "shell");
    let output_stderr = fields
        .get("output_stderr")
        .and_then(|value| w.boolean(value, &cx.at("output_stderr")))
        .unwrap_or(false);
    let max_output_size = fields
        .given("max_output_size")
        .and_then(|value| {
            w.integer_min(
                value,
                &cx.at("max_output_size"),
                1,
                "a positive number of bytes",
            )
        })
        .map(i64::unsigned_abs);
    let delay_between_ms = fields
        .given("delay_between")
        .and_then(|value| {
            w.integer_min(
                value,
                &cx.at("delay_between"),
                0,
                "non-negative (milliseconds)",
            )
        })
        .map(i64::unsigned_abs);
    BashStep {
        command,
        cwd,
        env,
        output_exit_code,
        shell,
        output_stderr,
        max_output_size,
        delay_between_ms,
    }
}

fn load_recipe_step(w: &mut Walker<'_, '_>, cx: &StepCtx<'_, '_>) -> RecipeStep {
    forbid(
        w,
        cx,
        "recipe",
        &["agent", "prompt", "mode", "spawn_mode", "command"],
    );
    ignore_bash_fields(w, cx, "recipe");
    let fields = cx.fields;
    let recipe = fields
        .get("recipe")
        .and_then(|value| w.string(value, &cx.at("recipe")))
        .unwrap_or_default();
    if recipe.trim().is_empty()
        && fields
            .given("recipe")
            .is_none_or(|n| n.as_scalar().is_some_and(|s| resolve(s) == Resolved::Str))
    {
        w.sink.error(
            "missing-field",
            &cx.at("recipe"),
            cx.span_of("recipe"),
            format!(
                "{}: recipe steps require a non-empty 'recipe' path",
                cx.label
            ),
        );
    }
    let context = fields
        .given("context")
        .map(|value| w.json_map(value, &cx.at("context")))
        .unwrap_or_default();
    let recursion = fields
        .given("recursion")
        .and_then(|value| load_recursion(w, value, &cx.at("recursion")));
    RecipeStep {
        recipe,
        context,
        recursion,
    }
}
