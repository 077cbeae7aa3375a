//! Variable substitution (`{{a.b}}` placeholders), Part B section 11.
//!
//! A placeholder is `{{` + identifier + (`.` identifier)* + `}}` where an
//! identifier is one or more word characters (Unicode letters, digits, `_`).
//! No whitespace is allowed inside, so `{{ x }}`, `{{#if x}}` and `{{/if}}` are
//! plain text. Substitution is a single pass: substituted values are never
//! re-scanned. Values render like the reference (Python `str` / `json.dumps`):
//! see [`value_to_text`].
//!
//! Used by the validator (H1) through [`placeholders`] and by the engine for
//! prompts, commands, cwd, env values, sub-recipe paths and contexts.

use serde_json::{Map, Value};

/// One `{{path}}` occurrence in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    /// The dotted path, one segment per element (`{{a.b}}` → `["a", "b"]`).
    pub path: Vec<String>,
    /// Byte offset of the opening `{{`.
    pub start: usize,
    /// Byte offset just past the closing `}}`.
    pub end: usize,
}

impl Placeholder {
    /// The dotted name as written (`a.b`).
    pub fn dotted(&self) -> String {
        self.path.join(".")
    }
}

/// What went wrong while resolving a placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderErrorKind {
    /// The first segment is not a context variable.
    UndefinedVariable,
    /// A later segment is missing from its parent mapping.
    KeyNotFound,
    /// A later segment was applied to a value that is not a mapping.
    NotAMapping,
}

/// A template could not be rendered. The message follows the reference
/// executor's wording (recipes and tests match on its fragments).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RenderError {
    pub kind: RenderErrorKind,
    pub message: String,
    /// Byte range of the placeholder in the template text (0..0 for path lookups).
    pub start: usize,
    pub end: usize,
}

fn is_word_char(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// Try to read a placeholder starting at byte `start` (which holds `{{`).
fn placeholder_at(text: &str, start: usize) -> Option<Placeholder> {
    let rest = text.get(start..)?;
    let inner = rest.strip_prefix("{{")?;
    let mut path = Vec::new();
    let mut segment = String::new();
    let mut consumed = 0usize;
    for c in inner.chars() {
        if is_word_char(c) {
            segment.push(c);
        } else if c == '.' {
            if segment.is_empty() {
                return None;
            }
            path.push(std::mem::take(&mut segment));
        } else {
            break;
        }
        consumed += c.len_utf8();
    }
    if segment.is_empty() {
        return None;
    }
    path.push(segment);
    let after = inner.get(consumed..)?;
    if !after.starts_with("}}") {
        return None;
    }
    Some(Placeholder {
        path,
        start,
        end: start + 2 + consumed + 2,
    })
}

/// Every placeholder in `text`, left to right, non-overlapping (like Python's
/// `re.finditer(r"\{\{(\w+(?:\.\w+)*)\}\}")`).
pub fn placeholders(text: &str) -> Vec<Placeholder> {
    let mut found = Vec::new();
    let bytes = text.as_bytes();
    let mut idx = 0usize;
    while idx + 1 < bytes.len() {
        if bytes[idx] == b'{'
            && bytes[idx + 1] == b'{'
            && let Some(placeholder) = placeholder_at(text, idx)
        {
            idx = placeholder.end;
            found.push(placeholder);
            continue;
        }
        idx += 1;
    }
    found
}

/// If `text` (ignoring surrounding whitespace) is exactly one placeholder,
/// return it. Used for type preservation in sub-recipe contexts.
pub fn single_placeholder(text: &str) -> Option<Placeholder> {
    let trimmed = text.trim();
    let offset = text.len() - text.trim_start().len();
    let placeholder = placeholder_at(text, offset)?;
    if placeholder.end - placeholder.start == trimmed.len() {
        Some(placeholder)
    } else {
        None
    }
}

/// Python type names, as the reference's error messages show them.
pub fn python_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(number) if number.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

fn sorted_keys(map: &Map<String, Value>) -> String {
    let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys.join(", ")
}

/// Resolve a dotted path against the context. Errors carry the reference
/// wording; `start`/`end` are 0 (callers with a template position fill them).
pub fn resolve<'a>(
    context: &'a Map<String, Value>,
    path: &[String],
) -> Result<&'a Value, RenderError> {
    let dotted = path.join(".");
    let error = |kind, message| RenderError {
        kind,
        message,
        start: 0,
        end: 0,
    };
    let Some(first) = path.first() else {
        return Err(error(
            RenderErrorKind::UndefinedVariable,
            "Undefined variable: {{}}. Available variables: ".to_string() + &sorted_keys(context),
        ));
    };
    let Some(mut current) = context.get(first) else {
        let message = if path.len() == 1 {
            format!(
                "Undefined variable: {{{{{dotted}}}}}. Available variables: {}",
                sorted_keys(context)
            )
        } else {
            format!(
                "Undefined variable: {{{{{dotted}}}}}. Key '{first}' not found. Available keys at 'root': {}",
                sorted_keys(context)
            )
        };
        return Err(error(RenderErrorKind::UndefinedVariable, message));
    };
    for (segment_idx, segment) in path.iter().enumerate().skip(1) {
        let parent = path[..segment_idx].join(".");
        match current {
            Value::Object(map) => match map.get(segment) {
                Some(next) => current = next,
                None => {
                    return Err(error(
                        RenderErrorKind::KeyNotFound,
                        format!(
                            "Undefined variable: {{{{{dotted}}}}}. Key '{segment}' not found. Available keys at '{parent}': {}",
                            sorted_keys(map)
                        ),
                    ));
                }
            },
            other => {
                return Err(error(
                    RenderErrorKind::NotAMapping,
                    format!(
                        "Cannot access '{segment}' on {{{{{parent}}}}} - it's a {}, not a dict. \
                         Hint: if '{parent}' holds JSON text, set parse_json: true on the step that produces it",
                        python_type_name(other)
                    ),
                ));
            }
        }
    }
    Ok(current)
}

/// How a placeholder that cannot be resolved is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undefined {
    /// Fail (prompts, commands, paths, contexts).
    Error,
    /// Approval prompts: a Handlebars keyword placeholder (`{{else}}`, `{{this}}`)
    /// that is not a variable stays literal; any other undefined name fails.
    KeepHandlebarsKeywords,
}

/// Placeholder names that Handlebars-style prompts use as keywords.
pub const HANDLEBARS_KEYWORDS: &[&str] = &["else", "this"];

/// Render `text` against `context` (single pass).
pub fn render(text: &str, context: &Map<String, Value>) -> Result<String, RenderError> {
    render_with(text, context, Undefined::Error)
}

/// Render with an explicit policy for undefined placeholders.
pub fn render_with(
    text: &str,
    context: &Map<String, Value>,
    undefined: Undefined,
) -> Result<String, RenderError> {
    let found = placeholders(text);
    if found.is_empty() {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut last = 0usize;
    for placeholder in found {
        out.push_str(&text[last..placeholder.start]);
        match resolve(context, &placeholder.path) {
            Ok(value) => push_value_text(&mut out, value),
            Err(error) => {
                let is_keyword = placeholder.path.len() == 1
                    && HANDLEBARS_KEYWORDS.contains(&placeholder.path[0].as_str());
                if undefined == Undefined::KeepHandlebarsKeywords && is_keyword {
                    out.push_str(&text[placeholder.start..placeholder.end]);
                } else {
                    return Err(RenderError {
                        start: placeholder.start,
                        end: placeholder.end,
                        ..error
                    });
                }
            }
        }
        last = placeholder.end;
    }
    out.push_str(&text[last..]);
    Ok(out)
}

/// Render a (sub-recipe context) value recursively, keeping native types for
/// strings that are exactly one placeholder (optionally wrapped in whitespace).
/// Other strings become text; non-string scalars pass unchanged.
pub fn render_value(value: &Value, context: &Map<String, Value>) -> Result<Value, RenderError> {
    match value {
        Value::String(text) => {
            if let Some(placeholder) = single_placeholder(text) {
                return resolve(context, &placeholder.path)
                    .cloned()
                    .map_err(|error| RenderError {
                        start: placeholder.start,
                        end: placeholder.end,
                        ..error
                    });
            }
            render(text, context).map(Value::String)
        }
        Value::Array(items) => items
            .iter()
            .map(|item| render_value(item, context))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, item) in map {
                out.insert(key.clone(), render_value(item, context)?);
            }
            Ok(Value::Object(out))
        }
        other => Ok(other.clone()),
    }
}

/// Text rendering of a value (Part B 11.5): strings as is, `true`/`false`,
/// `None`, numbers like Python `str`, mappings and lists as `json.dumps`.
pub fn value_to_text(value: &Value) -> String {
    let mut out = String::new();
    push_value_text(&mut out, value);
    out
}

fn push_value_text(out: &mut String, value: &Value) {
    match value {
        Value::String(text) => out.push_str(text),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Null => out.push_str("None"),
        Value::Number(number) => out.push_str(&python_number(number)),
        Value::Array(_) | Value::Object(_) => push_python_json(out, value),
    }
}

/// Python `str()` of a JSON number (`1.5`, `100.0`, `1e+20`, `1e-05`).
pub fn python_number(number: &serde_json::Number) -> String {
    if number.is_f64() {
        python_float(number.as_f64().unwrap_or(f64::NAN))
    } else {
        number.to_string()
    }
}

/// Python `repr(float)`: shortest round-trip digits, positional notation when
/// the decimal exponent is in -4..16, otherwise `d.ddde+XX`.
pub fn python_float(value: f64) -> String {
    if value.is_nan() {
        return "nan".to_string();
    }
    if value.is_infinite() {
        return if value > 0.0 { "inf" } else { "-inf" }.to_string();
    }
    // `{:e}` gives the shortest round-trip digits: "1.5e0", "-1e20", "1.2345e-5".
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("`{:e}` output always contains an exponent");
    let exponent: i32 = exponent.parse().expect("`{:e}` exponent is an integer");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if (-4..16).contains(&exponent) {
        let mut text = String::from(sign);
        if exponent < 0 {
            text.push_str("0.");
            for _ in 0..(-exponent - 1) {
                text.push('0');
            }
            text.push_str(&digits);
        } else {
            let int_len = usize::try_from(exponent).expect("exponent is non-negative here") + 1;
            if digits.len() <= int_len {
                text.push_str(&digits);
                for _ in digits.len()..int_len {
                    text.push('0');
                }
                text.push_str(".0");
            } else {
                text.push_str(&digits[..int_len]);
                text.push('.');
                text.push_str(&digits[int_len..]);
            }
        }
        text
    } else {
        let mut text = String::from(sign);
        text.push_str(&digits[..1]);
        if digits.len() > 1 {
            text.push('.');
            text.push_str(&digits[1..]);
        }
        let exponent_sign = if exponent < 0 { '-' } else { '+' };
        text.push_str(&format!("e{exponent_sign}{:02}", exponent.abs()));
        text
    }
}

/// `json.dumps(value)` with Python's defaults: `", "` / `": "` separators and
/// ASCII escaping (non-ASCII becomes `\uXXXX`, surrogate pairs above the BMP).
pub fn python_json(value: &Value) -> String {
    let mut out = String::new();
    push_python_json(&mut out, value);
    out
}

fn push_python_json(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(number) => {
            if number.is_f64() {
                let float = number.as_f64().unwrap_or(f64::NAN);
                if float.is_nan() {
                    out.push_str("NaN");
                } else if float.is_infinite() {
                    out.push_str(if float > 0.0 { "Infinity" } else { "-Infinity" });
                } else {
                    out.push_str(&python_float(float));
                }
            } else {
                out.push_str(&number.to_string());
            }
        }
        Value::String(text) => push_python_json_string(out, text),
        Value::Array(items) => {
            out.push('[');
            for (idx, item) in items.iter().enumerate() {
                if idx > 0 {
                    out.push_str(", ");
                }
                push_python_json(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (idx, (key, item)) in map.iter().enumerate() {
                if idx > 0 {
                    out.push_str(", ");
                }
                push_python_json_string(out, key);
                out.push_str(": ");
                push_python_json(out, item);
            }
            out.push('}');
        }
    }
}

fn push_python_json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            other => {
                let mut units = [0u16; 2];
                for unit in other.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
}
