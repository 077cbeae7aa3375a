//! Step-result post-processing and JSON extraction (Part B section 8, Part A item 8).
//!
//! * Agent results: a mapping with an `output` key is unwrapped (the spawn
//!   result shape). Sub-recipe results are never unwrapped (the reference's W17).
//! * Default mode (`parse_json: false`): a string result whose whole trimmed
//!   text is JSON becomes that value (`"42"` → 42, as in the reference). For bash
//!   only, a JSON object/array that *ends* the output (its last non-empty line,
//!   or a trailing multi-line block) is also taken, so JSON printed after log
//!   lines works. Fragments out of prose (`Usage: tool [] options`) are never
//!   taken (the reference's W16).
//! * `parse_json: true`: the whole trimmed text; else the first code fence
//!   (raw-decoded, empty `{}`/`[]` ignored); else a left-to-right scan for `[`/`{`
//!   that returns the first non-empty value (or the first empty one); else the
//!   text unchanged. Never fails (compatible with the reference).
//! * Trailing newline policy: a bash result that stays text loses exactly one
//!   trailing `\n` (or `\r\n`), so `echo done` gives `done` and
//!   `{{status}} == 'done'` holds. The reference kept the newline.
//!
//! JSON dialect: strict JSON (serde_json). Python's `NaN`/`Infinity` extensions
//! are not accepted; such text stays text.

use serde_json::Value;

/// Which kind of step produced a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultSource {
    Agent,
    Bash,
    Recipe,
}

/// Upper bound on decode attempts in scans, so hostile text cannot make
/// extraction quadratic without limit.
const MAX_SCAN_ATTEMPTS: usize = 2_000;

/// Post-process one step result (section 8).
pub fn post_process(result: Value, source: ResultSource, parse_json: bool) -> Value {
    let result = match (source, result) {
        (ResultSource::Agent, Value::Object(mut map)) if map.contains_key("output") => {
            map.remove("output").unwrap_or(Value::Null)
        }
        (_, other) => other,
    };
    let Value::String(text) = result else {
        return result;
    };
    if source == ResultSource::Recipe {
        return Value::String(text);
    }
    if parse_json {
        if let Some(value) = extract_json(&text) {
            return value;
        }
    } else {
        if let Some(value) = parse_whole(&text) {
            return value;
        }
        if source == ResultSource::Bash
            && let Some(value) = parse_trailing(&text)
        {
            return value;
        }
    }
    if source == ResultSource::Bash {
        return Value::String(strip_one_newline(text));
    }
    Value::String(text)
}

/// Remove exactly one trailing `\n` or `\r\n`.
pub fn strip_one_newline(mut text: String) -> String {
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    text
}

/// The whole trimmed text as one JSON value.
pub fn parse_whole(text: &str) -> Option<Value> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return None;
    }
    serde_json::from_str(trimmed).ok()
}

/// Decode the first JSON value at the start of `text`, ignoring what follows
/// (Python's `JSONDecoder.raw_decode`).
pub fn raw_decode(text: &str) -> Option<Value> {
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    match stream.next() {
        Some(Ok(value)) => Some(value),
        _ => None,
    }
}

fn is_empty_structure(value: &Value) -> bool {
    match value {
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.is_empty(),
        _ => false,
    }
}

/// Bash default mode: a JSON object or array that ends the output, starting at
/// the beginning of a line (a last line like `{"ok": true}` after log lines, or
/// a pretty-printed trailing block).
pub fn parse_trailing(text: &str) -> Option<Value> {
    let body = text.trim_end();
    if !(body.ends_with('}') || body.ends_with(']')) {
        return None;
    }
    let mut line_starts: Vec<usize> = vec![0];
    line_starts.extend(body.match_indices('\n').map(|(idx, _)| idx + 1));
    for &line_start in line_starts.iter().rev().take(MAX_SCAN_ATTEMPTS) {
        let candidate = body[line_start..].trim_start();
        if !(candidate.starts_with('{') || candidate.starts_with('[')) {
            continue;
        }
        if let Ok(value) = serde_json::from_str::<Value>(candidate)
            && (value.is_object() || value.is_array())
        {
            return Some(value);
        }
    }
    None
}

/// `parse_json: true` extraction (8.4 steps 1-3). `None` means "keep the text".
pub fn extract_json(text: &str) -> Option<Value> {
    if let Some(value) = parse_whole(text) {
        return Some(value);
    }
    if let Some(value) = first_fence(text)
        && !is_empty_structure(&value)
    {
        return Some(value);
    }
    scan(text)
}

/// The first fenced block: three backticks, optionally `json`, content up to
/// the next three backticks, raw-decoded.
fn first_fence(text: &str) -> Option<Value> {
    let open = text.find("```")?;
    let mut rest = &text[open + 3..];
    rest = rest.strip_prefix("json").unwrap_or(rest);
    let close = rest.find("```")?;
    raw_decode(rest[..close].trim())
}

/// Left-to-right scan: at each `[` or `{`, try to decode one value. The first
/// non-empty value wins; if only empty ones decode, the first of those.
fn scan(text: &str) -> Option<Value> {
    let mut first_empty = None;
    let mut attempts = 0usize;
    for (idx, c) in text.char_indices() {
        if c != '[' && c != '{' {
            continue;
        }
        attempts += 1;
        if attempts > MAX_SCAN_ATTEMPTS {
            break;
        }
        if let Some(value) = raw_decode(&text[idx..]) {
            if !is_empty_structure(&value) {
                return Some(value);
            }
            first_empty.get_or_insert(value);
        }
    }
    first_empty
}
