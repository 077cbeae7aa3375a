//! The condition language (Part B section 12, Part A item 10), typed.
//!
//! Grammar (lowest precedence first):
//! ```text
//! or-expr    = and-expr ("or" and-expr)*
//! and-expr   = not-expr ("and" not-expr)*
//! not-expr   = "not" not-expr | comparison
//! comparison = atom [op atom]          op: == != < <= > >= contains in
//! atom       = "(" or-expr ")" | {{path}} | 'string' | "string" | word | true | false | null
//! ```
//! Variables are written `{{path}}` inside the expression and evaluate to their
//! *typed* context values: nothing is substituted into the text, so a value can
//! never change the expression's structure (the reference's W6).
//!
//! Compatibility: for every expression the reference evaluates without error,
//! Kiln gives the same answer. Scalars compare like the reference: both sides are
//! turned into text (`true`/`false`, Python number text) and, when both parse as
//! Python floats, compared as numbers (`'10' > '9'` is true, `42 == '42'` is
//! true); otherwise compared as strings (`"True" == true` is false). Truthiness of
//! a scalar follows the reference too (`false`, `False`, empty, `0`, `none`,
//! `None` are false, so `0.0` is true).
//!
//! Deliberate differences (each was an error in the reference): negative numbers
//! (`-5`), the `null` literal, null variables (a null value is defined; it only
//! equals `null`), lists and maps (truthy when non-empty, compared structurally
//! with `==`/`!=`), `contains` and `in`, short-circuit `and`/`or`, and error
//! positions are character offsets (the reference reported token indexes). The
//! bare words `null`, `contains` and `in` are keywords now, not text.

use serde_json::{Map, Value};

use crate::template::{self, python_number};

/// A syntax or evaluation error. `offset` is a character offset into the
/// expression text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExprError {
    pub message: String,
    pub offset: usize,
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `a contains b`: substring, list element or mapping key.
    Contains,
    /// `a in b`: `b contains a`.
    In,
}

impl CmpOp {
    fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Contains => "contains",
            CmpOp::In => "in",
        }
    }
}

/// A `{{path}}` reference in an expression.
#[derive(Debug, Clone, PartialEq)]
pub struct VarRef {
    pub path: Vec<String>,
    /// Character offsets of the whole `{{...}}`.
    pub start: usize,
    pub end: usize,
}

/// A value position in an expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Var(VarRef),
    /// A quoted string or a bare word (numbers are bare words, as in the reference).
    Text(String),
    Bool(bool),
    Null,
    Group(Box<Expr>),
}

/// A parsed condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// The empty expression (always true).
    Empty,
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    Compare {
        op: CmpOp,
        left: Operand,
        right: Operand,
        /// Character offset of the operator.
        offset: usize,
    },
    Truthy(Operand),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Var(VarRef),
    Str(String),
    Word(String),
    Op(CmpOp),
    LParen,
    RParen,
    And,
    Or,
    Not,
}

fn describe(token: &Token) -> String {
    match token {
        Token::Var(var) => format!("{{{{{}}}}}", var.path.join(".")),
        Token::Str(text) => format!("'{text}'"),
        Token::Word(word) => word.clone(),
        Token::Op(op) => op.symbol().to_string(),
        Token::LParen => "(".into(),
        Token::RParen => ")".into(),
        Token::And => "and".into(),
        Token::Or => "or".into(),
        Token::Not => "not".into(),
    }
}

fn invalid(message: String, offset: usize) -> ExprError {
    ExprError {
        message: format!("Invalid expression: {message}"),
        offset,
    }
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '.'
}

fn tokenize(text: &str) -> Result<Vec<(Token, usize)>, ExprError> {
    let chars: Vec<char> = text.chars().collect();
    // Byte offset of each char, to reuse the template placeholder scanner.
    let byte_offsets: Vec<usize> = text.char_indices().map(|(offset, _)| offset).collect();
    let mut tokens = Vec::new();
    let mut idx = 0usize;
    while idx < chars.len() {
        let c = chars[idx];
        if c.is_whitespace() {
            idx += 1;
            continue;
        }
        let start = idx;
        match c {
            '{' => {
                let byte_start = byte_offsets[idx];
                let placeholder = template::placeholders(&text[byte_start..])
                    .into_iter()
                    .next()
                    .filter(|placeholder| placeholder.start == 0);
                let Some(placeholder) = placeholder else {
                    return Err(invalid(
                        format!("Unexpected character '{{' at position {idx}"),
                        idx,
                    ));
                };
                let n_chars = text[byte_start..byte_start + placeholder.end]
                    .chars()
                    .count();
                tokens.push((
                    Token::Var(VarRef {
                        path: placeholder.path,
                        start,
                        end: start + n_chars,
                    }),
                    start,
                ));
                idx += n_chars;
            }
            '\'' | '"' => {
                let quote = c;
                let mut value = String::new();
                idx += 1;
                let mut closed = false;
                while idx < chars.len() {
                    let ch = chars[idx];
                    if ch == '\\' && idx + 1 < chars.len() {
                        let next = chars[idx + 1];
                        if matches!(next, '\\' | '\'' | '"') {
                            value.push(next);
                        } else {
                            value.push('\\');
                            value.push(next);
                        }
                        idx += 2;
                        continue;
                    }
                    if ch == quote {
                        closed = true;
                        idx += 1;
                        break;
                    }
                    value.push(ch);
                    idx += 1;
                }
                if !closed {
                    return Err(invalid(
                        format!("Unterminated string literal at position {start}"),
                        start,
                    ));
                }
                tokens.push((Token::Str(value), start));
            }
            '(' => {
                tokens.push((Token::LParen, start));
                idx += 1;
            }
            ')' => {
                tokens.push((Token::RParen, start));
                idx += 1;
            }
            '=' | '!' | '<' | '>' => {
                let next = chars.get(idx + 1).copied();
                let (op, len) = match (c, next) {
                    ('=', Some('=')) => (CmpOp::Eq, 2),
                    ('!', Some('=')) => (CmpOp::Ne, 2),
                    ('<', Some('=')) => (CmpOp::Le, 2),
                    ('>', Some('=')) => (CmpOp::Ge, 2),
                    ('<', _) => (CmpOp::Lt, 1),
                    ('>', _) => (CmpOp::Gt, 1),
                    _ => {
                        return Err(invalid(
                            format!("Unexpected character '{c}' at position {idx}"),
                            idx,
                        ));
                    }
                };
                tokens.push((Token::Op(op), start));
                idx += len;
            }
            _ => {
                let is_negative_number = c == '-'
                    && chars.get(idx + 1).is_some_and(|next| {
                        next.is_ascii_digit()
                            || (*next == '.'
                                && chars.get(idx + 2).is_some_and(char::is_ascii_digit))
                    });
                if !is_word_char(c) && !is_negative_number {
                    return Err(invalid(
                        format!("Unexpected character '{c}' at position {idx}"),
                        idx,
                    ));
                }
                let mut word = String::new();
                word.push(c);
                idx += 1;
                while idx < chars.len() && is_word_char(chars[idx]) {
                    word.push(chars[idx]);
                    idx += 1;
                }
                let token = match word.as_str() {
                    "and" => Token::And,
                    "or" => Token::Or,
                    "not" => Token::Not,
                    "contains" => Token::Op(CmpOp::Contains),
                    "in" => Token::Op(CmpOp::In),
                    _ => Token::Word(word),
                };
                tokens.push((token, start));
            }
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    pos: usize,
    text_len: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|(token, _)| token)
    }

    fn offset(&self) -> usize {
        self.tokens
            .get(self.pos)
            .map_or(self.text_len, |(_, offset)| *offset)
    }

    fn parse_or(&mut self) -> Result<Expr, ExprError> {
        let mut parts = vec![self.parse_and()?];
        while self.peek() == Some(&Token::Or) {
            self.pos += 1;
            parts.push(self.parse_and()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Expr::Or(parts)
        })
    }

    fn parse_and(&mut self) -> Result<Expr, ExprError> {
        let mut parts = vec![self.parse_not()?];
        while self.peek() == Some(&Token::And) {
            self.pos += 1;
            parts.push(self.parse_not()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Expr::And(parts)
        })
    }

    fn parse_not(&mut self) -> Result<Expr, ExprError> {
        if self.peek() == Some(&Token::Not) {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.parse_not()?)));
        }
        self.parse_comparison()
    }

    fn parse_comparison(&mut self) -> Result<Expr, ExprError> {
        let left = self.parse_atom()?;
        if let Some(Token::Op(op)) = self.peek() {
            let op = *op;
            let offset = self.offset();
            self.pos += 1;
            let right = self.parse_atom()?;
            return Ok(Expr::Compare {
                op,
                left,
                right,
                offset,
            });
        }
        Ok(Expr::Truthy(left))
    }

    fn parse_atom(&mut self) -> Result<Operand, ExprError> {
        let offset = self.offset();
        let Some((token, _)) = self.tokens.get(self.pos).cloned() else {
            return Err(invalid("Unexpected end of expression".into(), offset));
        };
        self.pos += 1;
        match token {
            Token::LParen => {
                let inner = self.parse_or()?;
                if self.peek() != Some(&Token::RParen) {
                    let at = self.offset();
                    return Err(invalid(format!("Expected ')' at position {at}"), at));
                }
                self.pos += 1;
                Ok(Operand::Group(Box::new(inner)))
            }
            Token::Var(var) => Ok(Operand::Var(var)),
            Token::Str(text) => Ok(Operand::Text(text)),
            Token::Word(word) => {
                if word.eq_ignore_ascii_case("true") {
                    Ok(Operand::Bool(true))
                } else if word.eq_ignore_ascii_case("false") {
                    Ok(Operand::Bool(false))
                } else if word == "null" {
                    Ok(Operand::Null)
                } else {
                    Ok(Operand::Text(word))
                }
            }
            Token::And | Token::Or | Token::Not => Err(invalid(
                format!(
                    "Unexpected keyword '{}' where value expected at position {offset}",
                    describe(&token)
                ),
                offset,
            )),
            Token::Op(op) => Err(invalid(
                format!("Unexpected operator '{}' at position {offset}", op.symbol()),
                offset,
            )),
            Token::RParen => Err(invalid(
                format!("Unexpected token ')' at position {offset}"),
                offset,
            )),
        }
    }
}

/// Parse an expression. Blank text is [`Expr::Empty`] (true).
pub fn parse(text: &str) -> Result<Expr, ExprError> {
    let tokens = tokenize(text)?;
    if tokens.is_empty() {
        return Ok(Expr::Empty);
    }
    let mut parser = Parser {
        tokens,
        pos: 0,
        text_len: text.chars().count(),
    };
    let expr = parser.parse_or()?;
    if let Some((token, offset)) = parser.tokens.get(parser.pos) {
        return Err(invalid(
            format!(
                "Unexpected token '{}' at position {offset}",
                describe(token)
            ),
            *offset,
        ));
    }
    Ok(expr)
}

/// Parse and evaluate in one go.
pub fn evaluate(text: &str, context: &Map<String, Value>) -> Result<bool, ExprError> {
    parse(text)?.eval(context)
}

/// Python `float(text)`: surrounding whitespace, `nan`, `inf`, `infinity`,
/// underscores between digits, exponents.
pub fn parse_python_float(text: &str) -> Option<f64> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return None;
    }
    let unsigned = trimmed.trim_start_matches(['+', '-']);
    if trimmed.len() - unsigned.len() > 1 {
        return None;
    }
    let lower = unsigned.to_ascii_lowercase();
    if matches!(lower.as_str(), "nan" | "inf" | "infinity") {
        return trimmed.to_ascii_lowercase().parse::<f64>().ok();
    }
    if !unsigned
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-' | '_'))
    {
        return None;
    }
    let chars: Vec<char> = trimmed.chars().collect();
    let mut cleaned = String::with_capacity(trimmed.len());
    for (idx, c) in chars.iter().enumerate() {
        if *c == '_' {
            let before = idx.checked_sub(1).and_then(|prev| chars.get(prev));
            let after = chars.get(idx + 1);
            if !(before.is_some_and(char::is_ascii_digit)
                && after.is_some_and(char::is_ascii_digit))
            {
                return None;
            }
            continue;
        }
        cleaned.push(*c);
    }
    cleaned.parse::<f64>().ok()
}

/// The text the reference would compare for a scalar (`None` for null,
/// lists and maps).
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Bool(true) => Some("true".into()),
        Value::Bool(false) => Some("false".into()),
        Value::Number(number) => Some(python_number(number)),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// Reference truthiness for scalars; emptiness for lists and maps; null is false.
pub fn is_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Array(items) => !items.is_empty(),
        Value::Object(map) => !map.is_empty(),
        Value::Bool(flag) => *flag,
        other => {
            let text = scalar_text(other).unwrap_or_default();
            !matches!(
                text.as_str(),
                "false" | "False" | "" | "0" | "none" | "None"
            )
        }
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "mapping",
    }
}

/// Equality with the reference's scalar rule, structural for lists/maps.
pub fn values_equal(left: &Value, right: &Value) -> bool {
    match (scalar_text(left), scalar_text(right)) {
        (Some(left_text), Some(right_text)) => {
            match (
                parse_python_float(&left_text),
                parse_python_float(&right_text),
            ) {
                (Some(left_num), Some(right_num)) => left_num == right_num,
                _ => left_text == right_text,
            }
        }
        (None, None) => match (left, right) {
            (Value::Array(left_items), Value::Array(right_items)) => {
                left_items.len() == right_items.len()
                    && left_items
                        .iter()
                        .zip(right_items)
                        .all(|(a, b)| values_equal(a, b))
            }
            (Value::Object(left_map), Value::Object(right_map)) => {
                left_map.len() == right_map.len()
                    && left_map
                        .iter()
                        .all(|(key, a)| right_map.get(key).is_some_and(|b| values_equal(a, b)))
            }
            (Value::Null, Value::Null) => true,
            _ => false,
        },
        _ => false,
    }
}

fn compare(op: CmpOp, left: &Value, right: &Value, offset: usize) -> Result<bool, ExprError> {
    let type_error = || ExprError {
        message: format!(
            "Cannot apply '{}' to {} and {}",
            op.symbol(),
            type_name(left),
            type_name(right)
        ),
        offset,
    };
    match op {
        CmpOp::Eq => Ok(values_equal(left, right)),
        CmpOp::Ne => Ok(!values_equal(left, right)),
        CmpOp::Lt | CmpOp::Le | CmpOp::Gt | CmpOp::Ge => {
            let (Some(left_text), Some(right_text)) = (scalar_text(left), scalar_text(right))
            else {
                return Err(type_error());
            };
            let ordering = match (
                parse_python_float(&left_text),
                parse_python_float(&right_text),
            ) {
                (Some(left_num), Some(right_num)) => left_num.partial_cmp(&right_num),
                _ => Some(left_text.cmp(&right_text)),
            };
            // NaN compares false with everything, as in Python.
            let Some(ordering) = ordering else {
                return Ok(false);
            };
            Ok(match op {
                CmpOp::Lt => ordering.is_lt(),
                CmpOp::Le => ordering.is_le(),
                CmpOp::Gt => ordering.is_gt(),
                _ => ordering.is_ge(),
            })
        }
        CmpOp::Contains => contains(left, right).ok_or_else(type_error),
        CmpOp::In => contains(right, left).ok_or_else(type_error),
    }
}

fn contains(haystack: &Value, needle: &Value) -> Option<bool> {
    match haystack {
        Value::String(text) => scalar_text(needle).map(|needle_text| text.contains(&needle_text)),
        Value::Array(items) => Some(items.iter().any(|item| values_equal(item, needle))),
        Value::Object(map) => scalar_text(needle).map(|key| map.contains_key(&key)),
        _ => None,
    }
}

impl Expr {
    /// Every `{{path}}` in the expression, in source order.
    pub fn variables(&self) -> Vec<Vec<String>> {
        self.variable_refs()
            .into_iter()
            .map(|var| var.path)
            .collect()
    }

    /// Every variable reference with its character offsets, in source order.
    pub fn variable_refs(&self) -> Vec<VarRef> {
        let mut found = Vec::new();
        self.collect_refs(&mut found);
        found
    }

    fn collect_refs(&self, found: &mut Vec<VarRef>) {
        fn operand(op: &Operand, found: &mut Vec<VarRef>) {
            match op {
                Operand::Var(var) => found.push(var.clone()),
                Operand::Group(inner) => inner.collect_refs(found),
                _ => {}
            }
        }
        match self {
            Expr::Empty => {}
            Expr::Or(parts) | Expr::And(parts) => {
                parts.iter().for_each(|part| part.collect_refs(found))
            }
            Expr::Not(inner) => inner.collect_refs(found),
            Expr::Compare { left, right, .. } => {
                operand(left, found);
                operand(right, found);
            }
            Expr::Truthy(op) => operand(op, found),
        }
    }

    /// Evaluate against typed context values.
    pub fn eval(&self, context: &Map<String, Value>) -> Result<bool, ExprError> {
        match self {
            Expr::Empty => Ok(true),
            Expr::Or(parts) => {
                for part in parts {
                    if part.eval(context)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Expr::And(parts) => {
                for part in parts {
                    if !part.eval(context)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Expr::Not(inner) => Ok(!inner.eval(context)?),
            Expr::Compare {
                op,
                left,
                right,
                offset,
            } => {
                let left = operand_value(left, context)?;
                let right = operand_value(right, context)?;
                compare(*op, &left, &right, *offset)
            }
            Expr::Truthy(op) => Ok(is_truthy(&operand_value(op, context)?)),
        }
    }
}

fn operand_value(op: &Operand, context: &Map<String, Value>) -> Result<Value, ExprError> {
    match op {
        Operand::Var(var) => {
            template::resolve(context, &var.path)
                .cloned()
                .map_err(|_| ExprError {
                    message: format!("Undefined variable: {}", var.path.join(".")),
                    offset: var.start,
                })
        }
        Operand::Text(text) => Ok(Value::String(text.clone())),
        Operand::Bool(flag) => Ok(Value::Bool(*flag)),
        Operand::Null => Ok(Value::Null),
        Operand::Group(inner) => inner.eval(context).map(Value::Bool),
    }
}
