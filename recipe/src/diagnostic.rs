//! Diagnostics: what loading and validation report about a recipe.
//!
//! Every problem becomes one [`Diagnostic`] with a stable kebab-case code, a
//! severity, a message, the YAML path of the node (`stages[1].steps[3].timeout`)
//! and its position (byte span plus 1-based line:column). Checking never stops
//! at the first problem; callers get them all, sorted by position.

use serde::{Deserialize, Serialize};

/// How bad a diagnostic is. Only errors stop a recipe from running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// A byte range in the recipe source (`start <= end <= source.len()`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span {
            start,
            end: end.max(start),
        }
    }
}

/// One problem found in a recipe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// Stable, kebab-case, e.g. `unknown-step-field`, `undefined-variable`.
    pub code: String,
    pub severity: Severity,
    /// Lower-case start except for quoted names; no trailing period.
    pub message: String,
    /// YAML path such as `stages[1].steps[3].timeout` (`""` for the root).
    pub path: String,
    /// 1-based line of `span.start`.
    pub line: u32,
    /// 1-based column (in characters) of `span.start`.
    pub column: u32,
    pub span: Span,
}

impl Diagnostic {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl std::fmt::Display for Diagnostic {
    /// `severity code path line:col message`, the format of the `.expected` fixture files.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = if self.path.is_empty() {
            "<root>"
        } else {
            &self.path
        };
        write!(
            f,
            "{} {} {} {}:{} {}",
            self.severity.as_str(),
            self.code,
            path,
            self.line,
            self.column,
            self.message
        )
    }
}

/// Maps byte offsets of one source text to 1-based line:column.
#[derive(Clone, Debug)]
pub struct LineIndex {
    line_starts: Vec<usize>,
}

impl LineIndex {
    pub fn new(source: &str) -> LineIndex {
        let mut line_starts = vec![0];
        for (idx, byte) in source.bytes().enumerate() {
            if byte == b'\n' {
                line_starts.push(idx + 1);
            }
        }
        LineIndex { line_starts }
    }

    /// 1-based (line, column); the column counts characters. Offsets past the
    /// end or inside a UTF-8 sequence are clamped to the nearest valid position.
    pub fn line_col(&self, source: &str, offset: usize) -> (u32, u32) {
        let mut offset = offset.min(source.len());
        while !source.is_char_boundary(offset) {
            offset -= 1;
        }
        let line_idx = match self.line_starts.binary_search(&offset) {
            Ok(idx) => idx,
            Err(idx) => idx - 1,
        };
        let line_start = self.line_starts[line_idx];
        let column = source[line_start..offset].chars().count() + 1;
        (to_u32(line_idx + 1), to_u32(column))
    }
}

fn to_u32(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// At most this many diagnostics are kept; the rest are summarised in one
/// `too-many-diagnostics` error (hostile input must not amplify into a huge report).
pub const MAX_DIAGNOSTICS: usize = 500;
/// Messages and paths are cut to these many bytes (names in them come from the input).
pub const MAX_MESSAGE_BYTES: usize = 1024;
pub const MAX_PATH_BYTES: usize = 256;

fn truncate(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &text[..cut])
}

/// Collects diagnostics for one source text, filling in line and column.
#[derive(Debug)]
pub struct Sink<'src> {
    source: &'src str,
    lines: LineIndex,
    pub diagnostics: Vec<Diagnostic>,
    dropped: usize,
    dropped_errors: bool,
}

impl<'src> Sink<'src> {
    pub fn new(source: &'src str) -> Sink<'src> {
        Sink {
            source,
            lines: LineIndex::new(source),
            diagnostics: Vec::new(),
            dropped: 0,
            dropped_errors: false,
        }
    }

    pub fn source(&self) -> &'src str {
        self.source
    }

    pub fn push(
        &mut self,
        severity: Severity,
        code: &str,
        path: &str,
        span: Span,
        message: String,
    ) {
        if self.diagnostics.len() >= MAX_DIAGNOSTICS {
            self.dropped += 1;
            self.dropped_errors |= severity == Severity::Error;
            return;
        }
        let end = span.end.min(self.source.len());
        let start = span.start.min(end);
        let (line, column) = self.lines.line_col(self.source, start);
        self.diagnostics.push(Diagnostic {
            code: code.to_string(),
            severity,
            message: truncate(message, MAX_MESSAGE_BYTES),
            path: truncate(path.to_string(), MAX_PATH_BYTES),
            line,
            column,
            span: Span { start, end },
        });
    }

    pub fn error(&mut self, code: &str, path: &str, span: Span, message: String) {
        self.push(Severity::Error, code, path, span, message);
    }

    pub fn warning(&mut self, code: &str, path: &str, span: Span, message: String) {
        self.push(Severity::Warning, code, path, span, message);
    }

    /// Sorted by position (then code, then message) with exact duplicates removed.
    pub fn finish(self) -> Vec<Diagnostic> {
        let mut diagnostics = self.diagnostics;
        diagnostics.sort_by(|a, b| {
            (a.span.start, a.span.end, &a.path, &a.code, &a.message).cmp(&(
                b.span.start,
                b.span.end,
                &b.path,
                &b.code,
                &b.message,
            ))
        });
        diagnostics.dedup();
        if self.dropped > 0 {
            let end = self.source.len();
            let (line, column) = self.lines.line_col(self.source, end);
            diagnostics.push(Diagnostic {
                code: "too-many-diagnostics".to_string(),
                // Only an error when an error was among the dropped ones.
                severity: if self.dropped_errors {
                    Severity::Error
                } else {
                    Severity::Warning
                },
                message: format!(
                    "{} more diagnostics were not reported (the limit is {MAX_DIAGNOSTICS})",
                    self.dropped
                ),
                path: String::new(),
                line,
                column,
                span: Span { start: end, end },
            });
        }
        diagnostics
    }
}
