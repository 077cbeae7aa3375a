//! Typed access to YAML nodes: every wrong type becomes a diagnostic that says
//! what was expected and what was found, never a panic.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Number, Value};

use super::yaml::{Node, NodeKind, Resolved, Scalar, resolve, yaml11_bool};
use crate::diagnostic::{Sink, Span};

/// Where a scalar's text sits in the source, so positions inside a template
/// or expression can be mapped back to the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScalarPos {
    pub span: Span,
    /// Byte offset of the text's first character when the source slice equals
    /// the text (plain, or quoted without escapes or line breaks).
    pub content_start: Option<usize>,
}

impl ScalarPos {
    /// Span in the file of `start..end` inside the scalar's text.
    pub fn inner(&self, start: usize, end: usize) -> Span {
        match self.content_start {
            Some(base) => Span::new(base + start, base + end.max(start)),
            None => self.span,
        }
    }
}

/// Side table from the loader: YAML paths and spans of interesting nodes.
#[derive(Clone, Debug, Default)]
pub struct SourceMap {
    pub scalars: HashMap<String, ScalarPos>,
    /// Path of each step and stage node, keyed by its span.
    pub paths: HashMap<Span, String>,
    /// Spans of mapping keys, keyed by the path of the value.
    pub keys: HashMap<String, Span>,
}

impl SourceMap {
    pub fn scalar(&self, path: &str) -> Option<ScalarPos> {
        self.scalars.get(path).copied()
    }
}

pub fn scalar_pos(source: &str, node: &Node) -> ScalarPos {
    let span = node.span;
    let content_start = match &node.kind {
        NodeKind::Scalar(scalar) => {
            let slice = source.get(span.start..span.end).unwrap_or("");
            if slice == scalar.text {
                Some(span.start)
            } else if slice.len() >= 2
                && (slice.starts_with('\'') || slice.starts_with('"'))
                && slice.get(1..slice.len() - 1) == Some(scalar.text.as_str())
            {
                Some(span.start + 1)
            } else if let Some(idx) = slice
                .find(scalar.text.as_str())
                .filter(|_| !scalar.text.is_empty())
            {
                // e.g. a tagged scalar `!!str x`: the text appears verbatim.
                (!scalar.text.contains('\n') && slice.matches(scalar.text.as_str()).count() == 1)
                    .then_some(span.start + idx)
            } else {
                None
            }
        }
        _ => None,
    };
    ScalarPos {
        span,
        content_start,
    }
}

/// One mapping's entries by key, after duplicate-key handling.
pub struct Fields<'n> {
    pub entries: Vec<(&'n str, &'n Node, &'n Node)>,
}

impl<'n> Fields<'n> {
    pub fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(name, _, _)| *name == key)
            .map(|(_, _, value)| *value)
    }

    pub fn key_span(&self, key: &str) -> Option<Span> {
        self.entries
            .iter()
            .find(|(name, _, _)| *name == key)
            .map(|(_, key, _)| key.span)
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Present and not null.
    pub fn given(&self, key: &str) -> Option<&'n Node> {
        self.get(key).filter(|node| !node.is_null())
    }
}

pub fn describe(node: &Node) -> String {
    match &node.kind {
        NodeKind::Scalar(scalar) => {
            let shown: String = scalar.text.chars().take(40).collect();
            let ellipsis = if scalar.text.chars().count() > 40 {
                "..."
            } else {
                ""
            };
            match resolve(scalar) {
                Resolved::Null => "null".to_string(),
                Resolved::Str => format!("string \"{shown}{ellipsis}\""),
                _ => format!("{} {shown}", node.kind_name()),
            }
        }
        _ => node.kind_name().to_string(),
    }
}

pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub fn index(path: &str, idx: usize) -> String {
    format!("{path}[{idx}]")
}

/// Diagnostics + source map while walking one document.
pub struct Walker<'s, 'a> {
    pub sink: &'a mut Sink<'s>,
    pub map: SourceMap,
}

impl<'s> Walker<'s, '_> {
    pub fn source(&self) -> &'s str {
        self.sink.source()
    }

    pub fn type_error(&mut self, node: &Node, path: &str, code: &str, what: &str) {
        let found = describe(node);
        self.sink.error(
            code,
            path,
            node.span,
            format!("{} must be {what}, found {found}", display_name(path)),
        );
    }

    /// The entries of a list element that must be a mapping (a stage, a step),
    /// recording its path; otherwise an `expected-mapping` error naming `what`.
    pub fn element_fields<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        what: &str,
    ) -> Option<Fields<'n>> {
        let Some(fields) = self.fields(node, path) else {
            let found = describe(node);
            self.sink.error(
                "expected-mapping",
                path,
                node.span,
                format!("each {what} must be a dictionary, found {found}"),
            );
            return None;
        };
        self.map.paths.insert(node.span, path.to_string());
        Some(fields)
    }

    /// The entries of a mapping node; `None` (and no diagnostic) otherwise.
    pub fn fields<'n>(&mut self, node: &'n Node, path: &str) -> Option<Fields<'n>> {
        let NodeKind::Map(entries) = &node.kind else {
            return None;
        };
        let mut fields: Vec<(&'n str, &'n Node, &'n Node)> = Vec::with_capacity(entries.len());
        // Position of each key in `fields` (hash lookups: mappings may have 10^5 keys).
        let mut positions: HashMap<&'n str, usize> = HashMap::with_capacity(entries.len());
        let mut merged: Vec<(&'n str, &'n Node, &'n Node)> = Vec::new();
        let mut merged_names: HashSet<&'n str> = HashSet::new();
        for (key, value) in entries {
            // YAML 1.1 merge key (`<<: *defaults`), which PyYAML's safe_load supports:
            // the merged mapping's keys apply unless the mapping sets them itself.
            if key
                .as_scalar()
                .is_some_and(|scalar| scalar.plain && scalar.text == "<<")
            {
                let sources: Vec<&'n Node> = match &value.kind {
                    NodeKind::Seq(items) => items.iter().collect(),
                    _ => vec![value],
                };
                for source in sources {
                    match &source.kind {
                        NodeKind::Map(source_entries) => {
                            for (merged_key, merged_value) in source_entries {
                                if let Some(name) =
                                    merged_key.as_scalar().map(|scalar| scalar.text.as_str())
                                    && merged_names.insert(name)
                                {
                                    merged.push((name, merged_key, merged_value));
                                }
                            }
                        }
                        _ => {
                            let found = describe(source);
                            self.sink.error(
                                "expected-mapping",
                                &join(path, "<<"),
                                source.span,
                                format!("a merge key (<<) must merge a mapping, found {found}"),
                            );
                        }
                    }
                }
                continue;
            }
            let Some(name) = key.as_scalar().map(|scalar| scalar.text.as_str()) else {
                self.sink.error(
                    "expected-string",
                    path,
                    key.span,
                    format!(
                        "mapping keys in {} must be strings, found {}",
                        display_name(path),
                        key.kind_name()
                    ),
                );
                continue;
            };
            self.map.keys.insert(join(path, name), key.span);
            if let Some(&existing) = positions.get(name) {
                self.sink.warning(
                    "duplicate-key",
                    &join(path, name),
                    key.span,
                    format!("key '{name}' appears more than once; the last value wins"),
                );
                // Like a Python dict: the first position, the last value.
                fields[existing] = (name, key, value);
                continue;
            }
            positions.insert(name, fields.len());
            fields.push((name, key, value));
        }
        for entry in merged {
            if !positions.contains_key(entry.0) {
                positions.insert(entry.0, fields.len());
                fields.push(entry);
            }
        }
        Some(Fields { entries: fields })
    }

    /// Reports keys not in `known` as `code` with the given severity.
    pub fn unknown_keys(
        &mut self,
        fields: &Fields<'_>,
        known: &[&str],
        path: &str,
        what: &str,
        error: bool,
    ) {
        for (name, key, _) in &fields.entries {
            if known.contains(name) {
                continue;
            }
            let hint = suggestion(name, known)
                .map(|best| format!("; did you mean '{best}'?"))
                .unwrap_or_default();
            let message = format!("unknown {what} field '{name}'{hint}");
            if error {
                self.sink
                    .error("unknown-field", &join(path, name), key.span, message);
            } else {
                self.sink.warning(
                    "unknown-top-level-key",
                    &join(path, name),
                    key.span,
                    message,
                );
            }
        }
    }

    /// A string field. Null means absent. Numbers and booleans are type errors.
    pub fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        let NodeKind::Scalar(scalar) = &node.kind else {
            self.type_error(node, path, "expected-string", "a string");
            return None;
        };
        match resolve(scalar) {
            Resolved::Null => None,
            Resolved::Str => {
                let pos = scalar_pos(self.source(), node);
                self.map.scalars.insert(path.to_string(), pos);
                Some(scalar.text.clone())
            }
            _ => {
                let hint = if scalar.plain {
                    format!(" (quote it: \"{}\")", scalar.text)
                } else {
                    String::new()
                };
                let found = describe(node);
                self.sink.error(
                    "expected-string",
                    path,
                    node.span,
                    format!(
                        "{} must be a string, found {found}{hint}",
                        display_name(path)
                    ),
                );
                None
            }
        }
    }

    pub fn integer(&mut self, node: &Node, path: &str) -> Option<i64> {
        if let NodeKind::Scalar(scalar) = &node.kind {
            match resolve(scalar) {
                Resolved::Null => return None,
                Resolved::Int(value) => return Some(value),
                Resolved::Float(value) if value.fract() == 0.0 && value.abs() < 9.0e15 => {
                    #[allow(clippy::cast_possible_truncation)]
                    return Some(value as i64);
                }
                _ => {}
            }
        }
        self.type_error(node, path, "expected-integer", "an integer");
        None
    }

    /// An integer that must be at least `min`; reports `out-of-range` below.
    pub fn integer_min(&mut self, node: &Node, path: &str, min: i64, rule: &str) -> Option<i64> {
        let value = self.integer(node, path)?;
        if value < min {
            self.sink.error(
                "out-of-range",
                path,
                node.span,
                format!("{} must be {rule}, found {value}", display_name(path)),
            );
            return None;
        }
        Some(value)
    }

    pub fn number(&mut self, node: &Node, path: &str) -> Option<f64> {
        if let NodeKind::Scalar(scalar) = &node.kind {
            match resolve(scalar) {
                Resolved::Null => return None,
                #[allow(clippy::cast_precision_loss)]
                Resolved::Int(value) => return Some(value as f64),
                Resolved::Float(value) if value.is_finite() => return Some(value),
                _ => {}
            }
        }
        self.type_error(node, path, "expected-number", "a number");
        None
    }

    /// A boolean; YAML 1.1 `yes/no/on/off` are accepted with a warning.
    pub fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        if let NodeKind::Scalar(scalar) = &node.kind {
            match resolve(scalar) {
                Resolved::Null => return None,
                Resolved::Bool(value) => return Some(value),
                _ => {}
            }
            if let Some(value) = yaml11_bool(scalar) {
                self.yaml11_warning(node, scalar, path, &format!("read as the boolean {value}"));
                return Some(value);
            }
        }
        self.type_error(node, path, "expected-boolean", "a boolean (true or false)");
        None
    }

    pub fn yaml11_warning(&mut self, node: &Node, scalar: &Scalar, path: &str, outcome: &str) {
        self.sink.warning(
            "yaml11-boolean",
            path,
            node.span,
            format!(
                "'{}' is a boolean in YAML 1.1 (the reference) but a string in YAML 1.2; {outcome}",
                scalar.text
            ),
        );
    }

    /// A list of strings; a single string is accepted as a one-element list.
    pub fn string_list(&mut self, node: &Node, path: &str) -> Vec<String> {
        match &node.kind {
            NodeKind::Seq(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (idx, item) in items.iter().enumerate() {
                    if let Some(text) = self.string(item, &index(path, idx)) {
                        out.push(text);
                    }
                }
                out
            }
            NodeKind::Scalar(_) if node.is_null() => Vec::new(),
            NodeKind::Scalar(_) => self.string(node, path).into_iter().collect(),
            NodeKind::Map(_) => {
                self.type_error(node, path, "expected-list", "a list");
                Vec::new()
            }
        }
    }

    /// Any YAML value as JSON. String scalars are recorded in the source map;
    /// YAML 1.1 booleans stay strings (YAML 1.2) with a warning.
    pub fn json_value(&mut self, node: &Node, path: &str) -> Value {
        match &node.kind {
            NodeKind::Scalar(scalar) => match resolve(scalar) {
                Resolved::Null => Value::Null,
                Resolved::Bool(value) => Value::Bool(value),
                Resolved::Int(value) => Value::Number(value.into()),
                Resolved::Float(value) => Number::from_f64(value)
                    .map(Value::Number)
                    .unwrap_or_else(|| Value::String(scalar.text.clone())),
                Resolved::Str => {
                    if yaml11_bool(scalar).is_some() {
                        self.yaml11_warning(
                            node,
                            scalar,
                            path,
                            "Kiln keeps the string (quote it to silence this)",
                        );
                    }
                    let pos = scalar_pos(self.source(), node);
                    self.map.scalars.insert(path.to_string(), pos);
                    Value::String(scalar.text.clone())
                }
            },
            NodeKind::Seq(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(idx, item)| self.json_value(item, &index(path, idx)))
                    .collect(),
            ),
            NodeKind::Map(_) => Value::Object(self.json_map(node, path)),
        }
    }

    /// A mapping as a JSON object; null is an empty object; other types are errors.
    pub fn json_map(&mut self, node: &Node, path: &str) -> Map<String, Value> {
        let mut out = Map::new();
        if node.is_null() {
            return out;
        }
        let Some(fields) = self.fields(node, path) else {
            self.type_error(node, path, "expected-mapping", "a mapping");
            return out;
        };
        for (name, _, value) in fields.entries {
            let value = self.json_value(value, &join(path, name));
            out.insert(name.to_string(), value);
        }
        out
    }
}

/// `stages[0].steps[1].timeout` → `timeout`; used at the start of messages.
pub fn display_name(path: &str) -> String {
    if path.is_empty() {
        return "the recipe".to_string();
    }
    let last = path.rsplit('.').next().unwrap_or(path);
    if last.ends_with(']') {
        format!("'{path}'")
    } else {
        last.to_string()
    }
}

/// The closest known key within edit distance 2, for "did you mean" hints.
pub fn suggestion<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|candidate| (edit_distance(name, candidate), *candidate))
        .filter(|(distance, _)| *distance <= 2)
        .min()
        .map(|(_, candidate)| candidate)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    if a.len().abs_diff(b.len()) > 2 || a.len() > 64 {
        return 3;
    }
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            current[j + 1] = (previous[j] + cost)
                .min(previous[j + 1] + 1)
                .min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}
