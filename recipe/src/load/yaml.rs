//! YAML text → a small span-carrying node tree, with hostile-input bounds.
//!
//! We drive `saphyr-parser`'s event stream ourselves instead of using a
//! ready-made DOM so that we keep, for every node: its byte span, whether a
//! scalar was quoted (needed for the YAML 1.1 decisions and to map positions
//! inside a scalar back to the file), and the spans of mapping keys. It also
//! lets us bound nesting depth and alias expansion (billion-laughs) and report
//! duplicate keys instead of silently dropping one.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError};

use crate::diagnostic::{Sink, Span};

/// Sources larger than this are refused before parsing.
pub const MAX_SOURCE_BYTES: usize = 1024 * 1024;
/// Deeper nesting of collections is refused.
pub const MAX_DEPTH: usize = 64;
/// Upper bound on nodes materialised through aliases.
const MAX_ALIAS_NODES: usize = 100_000;

#[derive(Clone, Debug)]
pub struct Node {
    pub span: Span,
    pub kind: NodeKind,
}

#[derive(Clone, Debug)]
pub enum NodeKind {
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Clone, Debug)]
pub struct Scalar {
    pub text: String,
    /// Plain (unquoted, not a block scalar).
    pub plain: bool,
    /// `!!str` and friends; `None` when untagged.
    pub tag: Option<String>,
}

impl Node {
    pub fn kind_name(&self) -> &'static str {
        match &self.kind {
            NodeKind::Scalar(scalar) => match resolve(scalar) {
                Resolved::Null => "null",
                Resolved::Bool(_) => "boolean",
                Resolved::Int(_) => "integer",
                Resolved::Float(_) => "number",
                Resolved::Str => "string",
            },
            NodeKind::Seq(_) => "list",
            NodeKind::Map(_) => "mapping",
        }
    }

    pub fn as_scalar(&self) -> Option<&Scalar> {
        match &self.kind {
            NodeKind::Scalar(scalar) => Some(scalar),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar(s) if matches!(resolve(s), Resolved::Null))
    }
}

/// A scalar's YAML 1.2 core-schema value (the types saphyr gives it too).
#[derive(Clone, Debug, PartialEq)]
pub enum Resolved {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str,
}

pub fn resolve(scalar: &Scalar) -> Resolved {
    match scalar.tag.as_deref() {
        Some("str") => return Resolved::Str,
        Some("null") => return Resolved::Null,
        _ => {}
    }
    if !scalar.plain {
        return Resolved::Str;
    }
    let text = scalar.text.as_str();
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Resolved::Null,
        "true" | "True" | "TRUE" => return Resolved::Bool(true),
        "false" | "False" | "FALSE" => return Resolved::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Resolved::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Resolved::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Resolved::Float(f64::NAN),
        _ => {}
    }
    if let Some(hex) = text.strip_prefix("0x")
        && let Ok(value) = i64::from_str_radix(hex, 16)
    {
        return Resolved::Int(value);
    }
    if let Some(oct) = text.strip_prefix("0o")
        && let Ok(value) = i64::from_str_radix(oct, 8)
    {
        return Resolved::Int(value);
    }
    let bytes = text.as_bytes();
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(value) = text.parse::<i64>() {
            return Resolved::Int(value);
        }
        if let Ok(value) = text.parse::<f64>() {
            return Resolved::Float(value);
        }
    }
    let looks_float = !digits.is_empty()
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && digits.bytes().any(|b| b.is_ascii_digit())
        && (digits.as_bytes()[0].is_ascii_digit() || digits.as_bytes()[0] == b'.');
    if looks_float
        && bytes.iter().any(|b| matches!(b, b'.' | b'e' | b'E'))
        && let Ok(value) = text.parse::<f64>()
    {
        return Resolved::Float(value);
    }
    Resolved::Str
}

/// PyYAML's YAML 1.1 booleans that YAML 1.2 reads as strings.
pub fn yaml11_bool(scalar: &Scalar) -> Option<bool> {
    if !scalar.plain || scalar.tag.is_some() {
        return None;
    }
    match scalar.text.as_str() {
        "yes" | "Yes" | "YES" | "on" | "On" | "ON" => Some(true),
        "no" | "No" | "NO" | "off" | "Off" | "OFF" => Some(false),
        _ => None,
    }
}

/// Converts the parser's character offsets into byte offsets.
struct Offsets<'src> {
    source: &'src str,
    /// Byte offset of every char index; empty when the source is ASCII.
    table: Vec<usize>,
}

impl<'src> Offsets<'src> {
    fn new(source: &'src str) -> Offsets<'src> {
        let table = if source.is_ascii() {
            Vec::new()
        } else {
            let mut table: Vec<usize> = source.char_indices().map(|(idx, _)| idx).collect();
            table.push(source.len());
            table
        };
        Offsets { source, table }
    }

    fn byte(&self, char_index: usize) -> usize {
        if self.table.is_empty() {
            char_index.min(self.source.len())
        } else {
            self.table
                .get(char_index)
                .copied()
                .unwrap_or(self.source.len())
        }
    }
}

enum Frame {
    Seq {
        start: usize,
        items: Vec<Node>,
        anchor: usize,
    },
    Map {
        start: usize,
        entries: Vec<(Node, Node)>,
        pending_key: Option<Node>,
        anchor: usize,
    },
}

/// Parses the single YAML document in `source`. Returns `None` (with
/// diagnostics) when the text is not usable YAML or breaks a bound. An empty
/// document yields a null scalar.
pub fn parse(source: &str, sink: &mut Sink<'_>) -> Option<Node> {
    if source.len() > MAX_SOURCE_BYTES {
        sink.error(
            "source-too-large",
            "",
            Span::new(0, 0),
            format!(
                "recipe source is {} bytes; the limit is {} bytes",
                source.len(),
                MAX_SOURCE_BYTES
            ),
        );
        return None;
    }
    let offsets = Offsets::new(source);
    let mut parser = Parser::new_from_str(source);
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut alias_nodes = 0usize;
    let mut root: Option<Node> = None;
    let mut documents = 0usize;
    while let Some(next) = parser.next_event() {
        let (event, span) = match next {
            Ok(pair) => pair,
            Err(error) => {
                report_scan_error(&error, &offsets, sink);
                return None;
            }
        };
        let start = offsets.byte(span.start.index());
        let end = offsets.byte(span.end.index()).max(start);
        let node = match event {
            Event::StreamEnd => break,
            Event::Nothing | Event::StreamStart | Event::DocumentEnd => continue,
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    sink.error(
                        "yaml-multiple-documents",
                        "",
                        Span::new(start, end),
                        "a recipe file must contain exactly one YAML document".to_string(),
                    );
                    return None;
                }
                continue;
            }
            Event::Alias(id) => {
                let Some(target) = anchors.get(&id) else {
                    sink.error(
                        "yaml-syntax",
                        "",
                        Span::new(start, end),
                        "alias refers to an unknown anchor".to_string(),
                    );
                    return None;
                };
                if stack.len() + node_depth(target) > MAX_DEPTH {
                    sink.error(
                        "yaml-too-deep",
                        "",
                        Span::new(start, end),
                        format!(
                            "YAML nesting (through an alias) is deeper than {MAX_DEPTH} levels"
                        ),
                    );
                    return None;
                }
                alias_nodes += count_nodes(target);
                if alias_nodes > MAX_ALIAS_NODES {
                    sink.error(
                        "yaml-alias-expansion",
                        "",
                        Span::new(start, end),
                        format!("aliases expand to more than {MAX_ALIAS_NODES} nodes"),
                    );
                    return None;
                }
                let mut copy = target.clone();
                copy.span = Span::new(start, end);
                copy
            }
            Event::Scalar(text, style, anchor, tag) => {
                let node = Node {
                    span: Span::new(start, end),
                    kind: NodeKind::Scalar(Scalar {
                        text: text.into_owned(),
                        plain: style == ScalarStyle::Plain,
                        tag: tag.map(|tag| {
                            if tag.is_yaml_core_schema() {
                                tag.suffix.clone()
                            } else {
                                format!("{}{}", tag.handle, tag.suffix)
                            }
                        }),
                    }),
                };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                node
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if stack.len() >= MAX_DEPTH {
                    sink.error(
                        "yaml-too-deep",
                        "",
                        Span::new(start, end),
                        format!("YAML nesting is deeper than {MAX_DEPTH} levels"),
                    );
                    return None;
                }
                if matches!(event, Event::SequenceStart(..)) {
                    stack.push(Frame::Seq {
                        start,
                        items: Vec::new(),
                        anchor,
                    });
                } else {
                    stack.push(Frame::Map {
                        start,
                        entries: Vec::new(),
                        pending_key: None,
                        anchor,
                    });
                }
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(frame) = stack.pop() else {
                    sink.error(
                        "yaml-syntax",
                        "",
                        Span::new(start, end),
                        "unbalanced collection end".to_string(),
                    );
                    return None;
                };
                let (node, anchor) = match frame {
                    Frame::Seq {
                        start: seq_start,
                        items,
                        anchor,
                    } => (
                        Node {
                            span: Span::new(seq_start, end),
                            kind: NodeKind::Seq(items),
                        },
                        anchor,
                    ),
                    Frame::Map {
                        start: map_start,
                        entries,
                        anchor,
                        ..
                    } => (
                        Node {
                            span: Span::new(map_start, end),
                            kind: NodeKind::Map(entries),
                        },
                        anchor,
                    ),
                };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                node
            }
        };
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                pending_key,
                ..
            }) => match pending_key.take() {
                None => *pending_key = Some(node),
                Some(key) => entries.push((key, node)),
            },
        }
    }
    Some(root.unwrap_or(Node {
        span: Span::new(0, 0),
        kind: NodeKind::Scalar(Scalar {
            text: String::new(),
            plain: true,
            tag: None,
        }),
    }))
}

fn node_depth(node: &Node) -> usize {
    match &node.kind {
        NodeKind::Scalar(_) => 0,
        NodeKind::Seq(items) => 1 + items.iter().map(node_depth).max().unwrap_or(0),
        NodeKind::Map(entries) => {
            1 + entries
                .iter()
                .map(|(key, value)| node_depth(key).max(node_depth(value)))
                .max()
                .unwrap_or(0)
        }
    }
}

fn count_nodes(node: &Node) -> usize {
    match &node.kind {
        NodeKind::Scalar(_) => 1,
        NodeKind::Seq(items) => 1 + items.iter().map(count_nodes).sum::<usize>(),
        NodeKind::Map(entries) => {
            1 + entries
                .iter()
                .map(|(key, value)| count_nodes(key) + count_nodes(value))
                .sum::<usize>()
        }
    }
}

fn report_scan_error(error: &ScanError, offsets: &Offsets<'_>, sink: &mut Sink<'_>) {
    let at = offsets.byte(error.marker().index());
    sink.error(
        "yaml-syntax",
        "",
        Span::new(at, at),
        format!("invalid YAML: {}", error.info()),
    );
}

#[cfg(test)]
mod tests;
