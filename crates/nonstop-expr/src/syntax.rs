//! The grammar: tokens, the syntax tree and a hand-written precedence-climbing parser.
//!
//! ```text
//! expr    := or
//! or      := and ("||" and)*
//! and     := cmp ("&&" cmp)*
//! cmp     := sum (("==" | "!=" | "<" | "<=" | ">" | ">=") sum)?     (not chained, as in Rust)
//! sum     := product (("+" | "-") product)*
//! product := unary (("*" | "/" | "%") unary)*
//! unary   := ("!" | "-" | "*") unary | postfix
//! postfix := primary ("." NAME | "." INDEX | "." METHOD "(" args ")" | "[" expr "]")*
//! primary := literal | NAME ("::" NAME)* | "len" "(" expr ")" | "matches" "(" expr "," variant ")" | "(" expr ")"
//! ```
//!
//! There is no node for assignment or for calling the program: the tree cannot express
//! either, so evaluation is read-only by construction.

use std::fmt;

/// Longest expression accepted, in bytes. Keeps parsing and evaluation bounded.
pub const MAX_EXPR_LEN: usize = 1024;
/// Deepest nesting of parentheses, unary operators and calls.
pub const MAX_NESTING: u32 = 96;

/// A byte range in the source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

/// A literal value.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    /// `true`, `false`.
    Bool(bool),
    /// A signed integer (unsuffixed literals that fit, and `i8`..`i64`/`isize` suffixes).
    Int(i64),
    /// An unsigned integer (`u8`..`u64`/`usize` suffixes, or too large for `i64`).
    Uint(u64),
    /// A float (`1.5`, `1e3`, `2f64`).
    Float(f64),
    /// A string, escapes resolved.
    Str(String),
    /// A `char` (compares equal to the one-character strings captured `char`s decode to).
    Char(char),
}

/// A unary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnOp {
    /// `!`
    Not,
    /// `-`
    Neg,
    /// `*` (a no-op: captured references already hold their pointee).
    Deref,
}

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    /// `||`
    Or,
    /// `&&`
    And,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Rem,
}

impl BinOp {
    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "||",
            BinOp::And => "&&",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
        }
    }

    /// Whether the operator compares (`==` … `>=`).
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge
        )
    }

    fn precedence(self) -> u8 {
        match self {
            BinOp::Or => 1,
            BinOp::And => 2,
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => 3,
            BinOp::Add | BinOp::Sub => 4,
            BinOp::Mul | BinOp::Div | BinOp::Rem => 5,
        }
    }
}

/// A built-in function or method. These read captured values; none reaches the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// `len(x)` / `x.len()`: bytes of a string, elements of a list or map.
    Len,
    /// `x.contains(y)`: substring, list element, or map key.
    Contains,
    /// `x.starts_with(s)`.
    StartsWith,
    /// `x.ends_with(s)`.
    EndsWith,
    /// `x.is_some()`.
    IsSome,
    /// `x.is_none()`.
    IsNone,
    /// `x.is_ok()`.
    IsOk,
    /// `x.is_err()`.
    IsErr,
}

impl Builtin {
    /// Methods by name, with their argument count besides the receiver.
    pub const METHODS: [(&'static str, Builtin, usize); 8] = [
        ("len", Builtin::Len, 0),
        ("contains", Builtin::Contains, 1),
        ("starts_with", Builtin::StartsWith, 1),
        ("ends_with", Builtin::EndsWith, 1),
        ("is_some", Builtin::IsSome, 0),
        ("is_none", Builtin::IsNone, 0),
        ("is_ok", Builtin::IsOk, 0),
        ("is_err", Builtin::IsErr, 0),
    ];

    /// The method's name.
    pub fn name(self) -> &'static str {
        Builtin::METHODS
            .iter()
            .find(|m| m.1 == self)
            .map_or("?", |m| m.0)
    }
}

/// A node of the syntax tree, with where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// What it is.
    pub kind: NodeKind,
    /// Its source text range.
    pub span: Span,
}

/// The kinds of nodes.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// A name: a variable in scope, the built-ins `thread` and `hit_count` (a variable of
    /// the same name wins), or, as an operand of `==`/`!=`/`matches`, a variant name
    /// when it starts with an uppercase letter and no variable has that name.
    Name(String),
    /// A path `Kind::Credit`: always a variant (the last segment is the variant's name).
    Path(Vec<String>),
    /// A literal.
    Lit(Lit),
    /// `base.name`, or `base.0` for a tuple field.
    Field(Box<Node>, String),
    /// `base[index]`.
    Index(Box<Node>, Box<Node>),
    /// A built-in applied to a receiver and arguments (`len(x)` is `Call(Len, x, [])`).
    Call(Builtin, Box<Node>, Vec<Node>),
    /// `matches(value, Variant)`.
    Matches(Box<Node>, Box<Node>),
    /// A unary operation.
    Unary(UnOp, Box<Node>),
    /// A binary operation.
    Binary(BinOp, Box<Node>, Box<Node>),
}

impl Node {
    /// The variant name this node stands for when used as a variant: a path's last
    /// segment, or a capitalised name.
    pub fn as_variant(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Path(segs) => segs.last().map(String::as_str),
            NodeKind::Name(n) if n.starts_with(|c: char| c.is_ascii_uppercase()) => Some(n),
            _ => None,
        }
    }

    /// Moves every span `by` bytes to the left.
    fn shift(&mut self, by: usize) {
        self.span.start = self.span.start.saturating_sub(by);
        self.span.end = self.span.end.saturating_sub(by);
        match &mut self.kind {
            NodeKind::Name(_) | NodeKind::Path(_) | NodeKind::Lit(_) => {}
            NodeKind::Field(b, _) | NodeKind::Unary(_, b) => b.shift(by),
            NodeKind::Index(a, b) | NodeKind::Binary(_, a, b) | NodeKind::Matches(a, b) => {
                a.shift(by);
                b.shift(by);
            }
            NodeKind::Call(_, r, args) => {
                r.shift(by);
                for a in args {
                    a.shift(by);
                }
            }
        }
    }

    fn visit_names<'a>(&'a self, out: &mut Vec<&'a str>) {
        match &self.kind {
            NodeKind::Name(n) => {
                if !out.contains(&n.as_str()) {
                    out.push(n);
                }
            }
            NodeKind::Path(_) | NodeKind::Lit(_) => {}
            NodeKind::Field(b, _) | NodeKind::Unary(_, b) => b.visit_names(out),
            NodeKind::Index(a, b) | NodeKind::Binary(_, a, b) | NodeKind::Matches(a, b) => {
                a.visit_names(out);
                b.visit_names(out);
            }
            NodeKind::Call(_, r, args) => {
                r.visit_names(out);
                for a in args {
                    a.visit_names(out);
                }
            }
        }
    }
}

/// A parsed expression: its source text and its tree.
///
/// Parse once when a rule arrives, then [`Expr::check`](crate::Expr::check) it against
/// the variables in scope and [`Expr::eval`](crate::Expr::eval) it at every hit.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    source: String,
    root: Node,
}

impl Expr {
    /// Parses an expression. This is also the syntax-only check the server runs.
    pub fn parse(source: &str) -> Result<Expr, ParseError> {
        let root = parse_within(source, 0, source.len())?;
        Ok(Expr {
            source: source.to_owned(),
            root,
        })
    }

    /// An expression from `template[start..end]`, parsed in place so that error columns
    /// count from the template's start.
    pub(crate) fn parse_hole(template: &str, start: usize, end: usize) -> Result<Expr, ParseError> {
        let mut root = parse_within(template, start, end)?;
        root.shift(start);
        Ok(Expr {
            source: template.get(start..end).unwrap_or("").to_owned(),
            root,
        })
    }

    /// The source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The syntax tree.
    pub fn root(&self) -> &Node {
        &self.root
    }

    /// The source text of a node.
    pub fn text(&self, node: &Node) -> &str {
        self.source
            .get(node.span.start..node.span.end)
            .unwrap_or("")
    }

    /// The names the expression reads, in order of first use: the variables to capture.
    /// Built-ins (`thread`, `hit_count`) and variant names appear too when written as bare
    /// names; callers skip the ones that are not variables in scope.
    pub fn roots(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.root.visit_names(&mut out);
        out
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// A syntax error, with the column it was found at.
///
/// Its `Display` is the message, then the source with a caret under the column:
/// ```text
/// unexpected `)` at column 15: expected an expression
/// order.total > )
///               ^
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}\n{source_text}\n{caret}^")]
pub struct ParseError {
    /// The message without the source lines.
    pub message: String,
    /// 1-based byte column of the offending token.
    pub column: usize,
    /// The text that was parsed (for the caret rendering).
    pub source_text: String,
    caret: String,
}

impl ParseError {
    /// An error at byte `at` of `source`.
    pub fn new(source: &str, at: usize, message: String) -> ParseError {
        let at = at.min(source.len());
        // Align the caret by characters, so text before the column may hold any UTF-8;
        // tabs stay tabs so terminals line them up the same way.
        let caret = source
            .get(..at)
            .unwrap_or("")
            .chars()
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        // Show one line: expressions are single-line; newlines become spaces.
        ParseError {
            message,
            column: at + 1,
            source_text: source.replace(['\n', '\r'], " "),
            caret,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Name(String),
    Int(u128, Option<String>),
    Float(f64),
    Str(String),
    Char(char),
    Punct(&'static str),
    End,
}

impl Tok {
    fn describe(&self, text: &str) -> String {
        match self {
            Tok::End => "end of input".into(),
            _ => format!("`{text}`"),
        }
    }
}

const PUNCTS: [&str; 23] = [
    "::", "==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "+", "-", "*", "/", "%", "(", ")",
    "[", "]", ".", ",", ":", "=",
];

struct Lexer<'s> {
    src: &'s str,
    pos: usize,
    end: usize,
    /// The previous token was `.`: a number here is a tuple index (`t.0.1`), not a float.
    after_dot: bool,
}

impl<'s> Lexer<'s> {
    fn err(&self, at: usize, msg: String) -> ParseError {
        ParseError::new(self.src, at, msg)
    }

    fn peek_char(&self, at: usize) -> Option<char> {
        self.src.get(at..self.end)?.chars().next()
    }

    /// The next token and its span.
    fn next(&mut self) -> Result<(Tok, Span), ParseError> {
        while let Some(c) = self.peek_char(self.pos) {
            if c.is_whitespace() {
                self.pos += c.len_utf8();
            } else {
                break;
            }
        }
        let start = self.pos;
        let after_dot = std::mem::take(&mut self.after_dot);
        let Some(c) = self.peek_char(start) else {
            return Ok((Tok::End, Span { start, end: start }));
        };
        let tok = if c.is_alphabetic() || c == '_' {
            let len = self.src[start..self.end]
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(self.end - start);
            self.pos += len;
            Tok::Name(self.src[start..self.pos].to_owned())
        } else if c.is_ascii_digit() {
            self.number(start, after_dot)?
        } else if c == '"' {
            self.string(start)?
        } else if c == '\'' {
            self.char_lit(start)?
        } else if let Some(p) = PUNCTS
            .iter()
            .find(|p| self.src[start..self.end].starts_with(**p))
        {
            self.pos += p.len();
            if *p == "." {
                self.after_dot = true;
            }
            Tok::Punct(p)
        } else {
            return Err(self.err(start, format!("unexpected `{c}` at column {}", start + 1)));
        };
        Ok((
            tok,
            Span {
                start,
                end: self.pos,
            },
        ))
    }

    fn number(&mut self, start: usize, index_only: bool) -> Result<Tok, ParseError> {
        let rest = &self.src[start..self.end];
        let bytes = rest.as_bytes();
        let (radix, mut i) = match bytes {
            [b'0', b'x' | b'X', ..] => (16, 2),
            [b'0', b'o' | b'O', ..] => (8, 2),
            [b'0', b'b' | b'B', ..] => (2, 2),
            _ => (10, 0),
        };
        let digits_start = i;
        while i < bytes.len() && (bytes[i] == b'_' || (bytes[i] as char).is_digit(radix)) {
            i += 1;
        }
        let mut is_float = false;
        if radix == 10 && !index_only {
            if i + 1 < bytes.len() && bytes[i] == b'.' && bytes[i + 1].is_ascii_digit() {
                is_float = true;
                i += 1;
                while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'_') {
                    i += 1;
                }
            }
            if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
                let mut j = i + 1;
                if j < bytes.len() && (bytes[j] == b'+' || bytes[j] == b'-') {
                    j += 1;
                }
                if j < bytes.len() && bytes[j].is_ascii_digit() {
                    is_float = true;
                    i = j;
                    while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'_') {
                        i += 1;
                    }
                }
            }
        }
        let body: String = rest[digits_start..i]
            .chars()
            .filter(|c| *c != '_')
            .collect();
        // A suffix: letters and digits right after the number (`10u64`, `2.5f32`).
        let suffix_len = rest[i..]
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len() - i);
        let suffix = &rest[i..i + suffix_len];
        self.pos = start + i + suffix_len;
        let bad_suffix = || {
            self.err(
                start + i,
                format!(
                    "unknown number suffix `{suffix}` at column {}: use i8..i64, u8..u64, isize, usize, f32 or f64",
                    start + i + 1
                ),
            )
        };
        if body.is_empty() {
            return Err(self.err(
                start,
                format!("number without digits at column {}", start + 1),
            ));
        }
        if is_float || matches!(suffix, "f32" | "f64") {
            if radix != 10 || !(suffix.is_empty() || matches!(suffix, "f32" | "f64")) {
                return Err(bad_suffix());
            }
            let v: f64 = body.parse().map_err(|_| {
                self.err(
                    start,
                    format!("`{}` is not a number", &rest[..i + suffix_len]),
                )
            })?;
            return Ok(Tok::Float(v));
        }
        const SUFFIXES: [&str; 10] = [
            "i8", "i16", "i32", "i64", "isize", "u8", "u16", "u32", "u64", "usize",
        ];
        if !suffix.is_empty() && !SUFFIXES.contains(&suffix) {
            return Err(bad_suffix());
        }
        let v = u128::from_str_radix(&body, radix).map_err(|_| {
            self.err(
                start,
                format!(
                    "integer `{}` at column {} is too large for 64 bits",
                    &rest[..i],
                    start + 1
                ),
            )
        })?;
        Ok(Tok::Int(v, (!suffix.is_empty()).then(|| suffix.to_owned())))
    }

    fn escape(&mut self, at: usize) -> Result<char, ParseError> {
        // `at` is the backslash.
        let c = self
            .peek_char(at + 1)
            .ok_or_else(|| self.err(at, "unfinished escape at end of input".into()))?;
        self.pos = at + 1 + c.len_utf8();
        Ok(match c {
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            '0' => '\0',
            '\\' => '\\',
            '"' => '"',
            '\'' => '\'',
            'x' => {
                let hex = self.src.get(at + 2..at + 4).filter(|_| at + 4 <= self.end);
                let v = hex
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .filter(|v| *v < 0x80)
                    .ok_or_else(|| {
                        self.err(
                            at,
                            format!(
                                "bad escape at column {}: `\\x` takes two hex digits up to 7f",
                                at + 1
                            ),
                        )
                    })?;
                self.pos = at + 4;
                v as char
            }
            'u' => {
                let body = self.src.get(at + 2..self.end).unwrap_or("");
                let close = body.find('}');
                let v = match (body.starts_with('{'), close) {
                    (true, Some(close)) => u32::from_str_radix(&body[1..close], 16)
                        .ok()
                        .and_then(char::from_u32)
                        .map(|c| (c, close)),
                    _ => None,
                };
                let (c, close) = v.ok_or_else(|| {
                    self.err(
                        at,
                        format!(
                            "bad escape at column {}: write `\\u{{1F600}}` with up to 6 hex digits",
                            at + 1
                        ),
                    )
                })?;
                self.pos = at + 2 + close + 1;
                c
            }
            other => {
                return Err(self.err(
                    at,
                    format!(
                        "unknown escape `\\{other}` at column {}: use \\n \\t \\r \\0 \\\\ \\\" \\' \\x7f or \\u{{…}}",
                        at + 1
                    ),
                ));
            }
        })
    }

    fn string(&mut self, start: usize) -> Result<Tok, ParseError> {
        let mut out = String::new();
        self.pos = start + 1;
        loop {
            let Some(c) = self.peek_char(self.pos) else {
                return Err(self.err(
                    start,
                    format!(
                        "unterminated string starting at column {}: close it with `\"`",
                        start + 1
                    ),
                ));
            };
            match c {
                '"' => {
                    self.pos += 1;
                    return Ok(Tok::Str(out));
                }
                '\\' => {
                    let e = self.escape(self.pos)?;
                    out.push(e);
                }
                _ => {
                    out.push(c);
                    self.pos += c.len_utf8();
                }
            }
        }
    }

    fn char_lit(&mut self, start: usize) -> Result<Tok, ParseError> {
        self.pos = start + 1;
        let c = match self.peek_char(self.pos) {
            Some('\\') => self.escape(self.pos)?,
            Some(c) if c != '\'' => {
                self.pos += c.len_utf8();
                c
            }
            _ => {
                return Err(self.err(
                    start,
                    format!("empty or unterminated char at column {}", start + 1),
                ));
            }
        };
        if self.peek_char(self.pos) != Some('\'') {
            return Err(self.err(
                start,
                format!(
                    "unterminated char at column {}: a char holds one character; use \"…\" for text",
                    start + 1
                ),
            ));
        }
        self.pos += 1;
        Ok(Tok::Char(c))
    }
}

/// Parses `source[start..end]` (template holes parse a slice of the template, so that
/// columns count from the template's start).
pub(crate) fn parse_within(source: &str, start: usize, end: usize) -> Result<Node, ParseError> {
    let end = end.min(source.len());
    if end.saturating_sub(start) > MAX_EXPR_LEN {
        return Err(ParseError::new(
            source,
            start + MAX_EXPR_LEN,
            format!(
                "expression too long: {} bytes, at most {MAX_EXPR_LEN}",
                end - start
            ),
        ));
    }
    if !source.is_char_boundary(start) || !source.is_char_boundary(end) {
        return Err(ParseError::new(
            source,
            start,
            "expression not on a character boundary".into(),
        ));
    }
    let mut p = Parser {
        lex: Lexer {
            src: source,
            pos: start,
            end,
            after_dot: false,
        },
        tok: Tok::End,
        span: Span::default(),
        depth: 0,
    };
    p.bump()?;
    let node = p.expr(0)?;
    if p.tok != Tok::End {
        return Err(p.unexpected("expected an operator or the end of the expression"));
    }
    Ok(node)
}

struct Parser<'s> {
    lex: Lexer<'s>,
    tok: Tok,
    span: Span,
    depth: u32,
}

impl Parser<'_> {
    fn bump(&mut self) -> Result<(Tok, Span), ParseError> {
        let (tok, span) = self.lex.next()?;
        let prev = (std::mem::replace(&mut self.tok, tok), self.span);
        self.span = span;
        Ok((prev.0, prev.1))
    }

    fn text(&self) -> &str {
        self.lex
            .src
            .get(self.span.start..self.span.end)
            .unwrap_or("")
    }

    fn unexpected(&self, expected: &str) -> ParseError {
        // In a template hole, the end of the expression is the `}` (or `:?}`) that closes it.
        let rest = self.lex.src.get(self.span.start..).unwrap_or("");
        let what = match (&self.tok, rest.chars().next()) {
            (Tok::End, Some(c)) => format!("`{c}`"),
            (tok, _) => tok.describe(self.text()),
        };
        ParseError::new(
            self.lex.src,
            self.span.start,
            format!(
                "unexpected {what} at column {}: {expected}",
                self.span.start + 1
            ),
        )
    }

    fn eat(&mut self, p: &str) -> Result<bool, ParseError> {
        if matches!(&self.tok, Tok::Punct(q) if *q == p) {
            self.bump()?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn expect(&mut self, p: &str, expected: &str) -> Result<Span, ParseError> {
        if matches!(&self.tok, Tok::Punct(q) if *q == p) {
            Ok(self.bump()?.1)
        } else {
            Err(self.unexpected(expected))
        }
    }

    fn nest(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(ParseError::new(
                self.lex.src,
                self.span.start,
                format!(
                    "expression nests too deeply at column {} (at most {MAX_NESTING} levels)",
                    self.span.start + 1
                ),
            ));
        }
        Ok(())
    }

    fn binop(&self) -> Option<BinOp> {
        let Tok::Punct(p) = &self.tok else {
            return None;
        };
        Some(match *p {
            "||" => BinOp::Or,
            "&&" => BinOp::And,
            "==" => BinOp::Eq,
            "!=" => BinOp::Ne,
            "<" => BinOp::Lt,
            "<=" => BinOp::Le,
            ">" => BinOp::Gt,
            ">=" => BinOp::Ge,
            "+" => BinOp::Add,
            "-" => BinOp::Sub,
            "*" => BinOp::Mul,
            "/" => BinOp::Div,
            "%" => BinOp::Rem,
            _ => return None,
        })
    }

    /// Precedence climbing: operators binding tighter than `min` are consumed here.
    fn expr(&mut self, min: u8) -> Result<Node, ParseError> {
        self.nest()?;
        let mut lhs = self.unary()?;
        while let Some(op) = self.binop() {
            let prec = op.precedence();
            if prec <= min {
                break;
            }
            let op_span = self.span;
            self.bump()?;
            let rhs = self.expr(prec)?;
            if op.is_comparison()
                && let Some(next) = self.binop()
                && next.is_comparison()
            {
                return Err(ParseError::new(
                    self.lex.src,
                    self.span.start,
                    format!(
                        "comparison operators cannot be chained (column {}): write `a < b && b < c`",
                        self.span.start + 1
                    ),
                ));
            }
            let _ = op_span;
            let span = Span {
                start: lhs.span.start,
                end: rhs.span.end,
            };
            lhs = Node {
                kind: NodeKind::Binary(op, Box::new(lhs), Box::new(rhs)),
                span,
            };
        }
        self.depth -= 1;
        Ok(lhs)
    }

    fn unary(&mut self) -> Result<Node, ParseError> {
        let op = match &self.tok {
            Tok::Punct("!") => Some(UnOp::Not),
            Tok::Punct("-") => Some(UnOp::Neg),
            Tok::Punct("*") => Some(UnOp::Deref),
            _ => None,
        };
        if let Some(op) = op {
            self.nest()?;
            let (_, span) = self.bump()?;
            let inner = self.unary()?;
            self.depth -= 1;
            let span = Span {
                start: span.start,
                end: inner.span.end,
            };
            return Ok(Node {
                kind: NodeKind::Unary(op, Box::new(inner)),
                span,
            });
        }
        let base = self.primary()?;
        self.postfix(base)
    }

    fn postfix(&mut self, mut node: Node) -> Result<Node, ParseError> {
        loop {
            if self.eat(".")? {
                let (tok, span) = self.bump()?;
                let name = match tok {
                    Tok::Name(n) => n,
                    Tok::Int(v, None) => v.to_string(),
                    other => {
                        self.tok = other;
                        self.span = span;
                        return Err(self.unexpected(
                            "expected a field name, a tuple index or a method after `.`",
                        ));
                    }
                };
                if matches!(self.tok, Tok::Punct("(")) {
                    let Some((_, builtin, arity)) =
                        Builtin::METHODS.iter().find(|m| m.0 == name).copied()
                    else {
                        return Err(ParseError::new(
                            self.lex.src,
                            span.start,
                            format!(
                                "unknown method `{name}` at column {}: nonstop never calls the program; methods are len, contains, starts_with, ends_with, is_some, is_none, is_ok, is_err",
                                span.start + 1
                            ),
                        ));
                    };
                    self.bump()?;
                    let args = self.args(arity, &name)?;
                    let end = self.expect(")", "expected `)`")?.end;
                    let start = node.span.start;
                    node = Node {
                        kind: NodeKind::Call(builtin, Box::new(node), args),
                        span: Span { start, end },
                    };
                } else {
                    let start = node.span.start;
                    node = Node {
                        kind: NodeKind::Field(Box::new(node), name),
                        span: Span {
                            start,
                            end: span.end,
                        },
                    };
                }
            } else if self.eat("[")? {
                self.nest()?;
                let index = self.expr(0)?;
                self.depth -= 1;
                let end = self.expect("]", "expected `]`")?.end;
                let start = node.span.start;
                node = Node {
                    kind: NodeKind::Index(Box::new(node), Box::new(index)),
                    span: Span { start, end },
                };
            } else {
                return Ok(node);
            }
        }
    }

    fn args(&mut self, arity: usize, name: &str) -> Result<Vec<Node>, ParseError> {
        let mut args = Vec::new();
        while !matches!(self.tok, Tok::Punct(")")) {
            if !args.is_empty() {
                self.expect(",", "expected `,` or `)`")?;
            }
            if args.len() == arity {
                return Err(self.unexpected(&format!(
                    "`{name}` takes {arity} argument{}",
                    if arity == 1 { "" } else { "s" }
                )));
            }
            self.nest()?;
            args.push(self.expr(0)?);
            self.depth -= 1;
        }
        if args.len() < arity {
            return Err(self.unexpected(&format!(
                "`{name}` takes {arity} argument{}",
                if arity == 1 { "" } else { "s" }
            )));
        }
        Ok(args)
    }

    fn primary(&mut self) -> Result<Node, ParseError> {
        let start = self.span.start;
        let lit = |kind| Ok(Some(kind));
        let kind: Result<Option<NodeKind>, ParseError> = match &self.tok {
            Tok::Int(v, suffix) => lit(NodeKind::Lit(self.int_lit(*v, suffix.as_deref())?)),
            Tok::Float(f) => lit(NodeKind::Lit(Lit::Float(*f))),
            Tok::Str(s) => lit(NodeKind::Lit(Lit::Str(s.clone()))),
            Tok::Char(c) => lit(NodeKind::Lit(Lit::Char(*c))),
            Tok::Name(n) if n == "true" || n == "false" => {
                lit(NodeKind::Lit(Lit::Bool(n == "true")))
            }
            _ => Ok(None),
        };
        if let Some(kind) = kind? {
            let (_, span) = self.bump()?;
            return Ok(Node { kind, span });
        }
        match self.tok.clone() {
            Tok::Punct("(") => {
                self.bump()?;
                self.nest()?;
                let mut inner = self.expr(0)?;
                self.depth -= 1;
                let end = self.expect(")", "expected `)`")?.end;
                inner.span = Span { start, end };
                Ok(inner)
            }
            Tok::Name(name) => {
                let (_, span) = self.bump()?;
                if matches!(self.tok, Tok::Punct("::")) {
                    let mut segs = vec![name];
                    let mut end = span.end;
                    while self.eat("::")? {
                        match self.bump()? {
                            (Tok::Name(n), s) => {
                                segs.push(n);
                                end = s.end;
                            }
                            (other, s) => {
                                self.tok = other;
                                self.span = s;
                                return Err(self.unexpected("expected a name after `::`"));
                            }
                        }
                    }
                    return Ok(Node {
                        kind: NodeKind::Path(segs),
                        span: Span { start, end },
                    });
                }
                if matches!(self.tok, Tok::Punct("(")) {
                    return self.function(name, span);
                }
                Ok(Node {
                    kind: NodeKind::Name(name),
                    span,
                })
            }
            _ => Err(self.unexpected("expected an expression")),
        }
    }

    fn function(&mut self, name: String, span: Span) -> Result<Node, ParseError> {
        self.bump()?; // `(`
        match name.as_str() {
            "len" => {
                let mut args = self.args(1, "len")?;
                let end = self.expect(")", "expected `)`")?.end;
                let arg = args
                    .pop()
                    .ok_or_else(|| self.unexpected("expected an argument"))?;
                Ok(Node {
                    kind: NodeKind::Call(Builtin::Len, Box::new(arg), Vec::new()),
                    span: Span {
                        start: span.start,
                        end,
                    },
                })
            }
            "matches" => {
                let mut args = self.args(2, "matches")?;
                let end = self.expect(")", "expected `)`")?.end;
                let (Some(variant), Some(value)) = (args.pop(), args.pop()) else {
                    return Err(self.unexpected("`matches` takes 2 arguments"));
                };
                if variant.as_variant().is_none() {
                    return Err(ParseError::new(
                        self.lex.src,
                        variant.span.start,
                        format!(
                            "expected a variant name like `Debit` or `Kind::Debit` at column {}",
                            variant.span.start + 1
                        ),
                    ));
                }
                Ok(Node {
                    kind: NodeKind::Matches(Box::new(value), Box::new(variant)),
                    span: Span {
                        start: span.start,
                        end,
                    },
                })
            }
            _ => Err(ParseError::new(
                self.lex.src,
                span.start,
                format!(
                    "`{name}` is not a built-in (column {}): nonstop never calls the program; functions are len(x) and matches(x, Variant)",
                    span.start + 1
                ),
            )),
        }
    }

    fn int_lit(&self, v: u128, suffix: Option<&str>) -> Result<Lit, ParseError> {
        let (lo, hi): (i128, i128) = match suffix {
            None => (0, u64::MAX as i128),
            Some("i8") => (i8::MIN as i128, i8::MAX as i128),
            Some("i16") => (i16::MIN as i128, i16::MAX as i128),
            Some("i32") => (i32::MIN as i128, i32::MAX as i128),
            Some("i64" | "isize") => (i64::MIN as i128, i64::MAX as i128),
            Some("u8") => (0, u8::MAX as i128),
            Some("u16") => (0, u16::MAX as i128),
            Some("u32") => (0, u32::MAX as i128),
            _ => (0, u64::MAX as i128),
        };
        let fits = i128::try_from(v).is_ok_and(|v| v >= lo && v <= hi);
        if !fits {
            return Err(ParseError::new(
                self.lex.src,
                self.span.start,
                format!(
                    "`{}` at column {} does not fit in {}",
                    self.text(),
                    self.span.start + 1,
                    suffix.unwrap_or("64 bits")
                ),
            ));
        }
        let signed = suffix.is_some_and(|s| s.starts_with('i'));
        let unsigned = suffix.is_some_and(|s| s.starts_with('u'));
        Ok(match i64::try_from(v) {
            Ok(i) if !unsigned => Lit::Int(i),
            // A signed suffix never gets here with a value above i64::MAX (checked above).
            _ if signed => Lit::Int(0),
            _ => Lit::Uint(v as u64),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tree, fully parenthesised.
    fn tree(src: &str) -> String {
        fn go(n: &Node) -> String {
            match &n.kind {
                NodeKind::Name(s) => s.clone(),
                NodeKind::Path(p) => p.join("::"),
                NodeKind::Lit(Lit::Str(s)) => format!("{s:?}"),
                NodeKind::Lit(Lit::Char(c)) => format!("{c:?}"),
                NodeKind::Lit(Lit::Int(i)) => format!("{i}"),
                NodeKind::Lit(Lit::Uint(u)) => format!("{u}u"),
                NodeKind::Lit(Lit::Float(f)) => format!("{f:?}"),
                NodeKind::Lit(Lit::Bool(b)) => format!("{b}"),
                NodeKind::Field(b, f) => format!("{}.{f}", go(b)),
                NodeKind::Index(b, i) => format!("{}[{}]", go(b), go(i)),
                NodeKind::Call(b, r, args) => {
                    let args: Vec<String> = args.iter().map(go).collect();
                    format!("{}.{}({})", go(r), b.name(), args.join(", "))
                }
                NodeKind::Matches(v, p) => format!("matches({}, {})", go(v), go(p)),
                NodeKind::Unary(op, x) => {
                    let s = match op {
                        UnOp::Not => "!",
                        UnOp::Neg => "-",
                        UnOp::Deref => "*",
                    };
                    format!("({s}{})", go(x))
                }
                NodeKind::Binary(op, a, b) => format!("({} {} {})", go(a), op.symbol(), go(b)),
            }
        }
        go(Expr::parse(src).unwrap().root())
    }

    fn error(src: &str) -> String {
        Expr::parse(src).unwrap_err().to_string()
    }

    #[test]
    fn precedence_follows_rust() {
        let table = [
            ("a || b && c", "(a || (b && c))"),
            ("a && b || c", "((a && b) || c)"),
            ("a == b && c != d", "((a == b) && (c != d))"),
            ("a + b * c", "(a + (b * c))"),
            ("a * b + c", "((a * b) + c)"),
            ("a - b - c", "((a - b) - c)"),
            ("a / b % c", "((a / b) % c)"),
            ("a + b < c * d", "((a + b) < (c * d))"),
            ("!a && b", "((!a) && b)"),
            ("-a * b", "((-a) * b)"),
            ("-a.b", "(-a.b)"),
            ("!x.is_some()", "(!x.is_some())"),
            ("*x.y", "(*x.y)"),
            ("(a + b) * c", "((a + b) * c)"),
            ("a || b || c", "((a || b) || c)"),
            (
                "order.total > 10000 && user.country == \"DE\"",
                "((order.total > 10000) && (user.country == \"DE\"))",
            ),
            ("cart.items[0].price >= 1.5", "(cart.items[0].price >= 1.5)"),
            ("self.0.1 == 'x'", "(self.0.1 == 'x')"),
            ("e.kind == Kind::Credit", "(e.kind == Kind::Credit)"),
            ("matches(e.kind, Debit)", "matches(e.kind, Debit)"),
            ("len(s) + s.len()", "(s.len() + s.len())"),
            (
                "s.contains(\"a\") || s.starts_with('b') || s.ends_with(\"c\")",
                "((s.contains(\"a\") || s.starts_with('b')) || s.ends_with(\"c\"))",
            ),
            (
                "thread == \"main\" && hit_count % 10 == 0",
                "((thread == \"main\") && ((hit_count % 10) == 0))",
            ),
            ("- -1", "(-(-1))"),
            ("m[\"k\"][2]", "m[\"k\"][2]"),
        ];
        for (src, want) in table {
            assert_eq!(tree(src), want, "{src}");
        }
    }

    #[test]
    fn literals() {
        assert_eq!(tree("0xff"), "255");
        assert_eq!(tree("0b1010"), "10");
        assert_eq!(tree("0o17"), "15");
        assert_eq!(tree("1_000_000"), "1000000");
        assert_eq!(tree("10u64"), "10u");
        assert_eq!(tree("10i8"), "10");
        assert_eq!(tree("18446744073709551615"), "18446744073709551615u");
        assert_eq!(tree("1.5e3"), "1500.0");
        assert_eq!(tree("2f32"), "2.0");
        assert_eq!(tree("1e-2"), "0.01");
        assert_eq!(tree(r#""a\"b\n\u{e9}\x41""#), r#""a\"b\néA""#);
        assert_eq!(tree(r"'\n'"), r"'\n'");
        assert_eq!(tree("true != false"), "(true != false)");
        // `.0.1` is two tuple fields, not a float.
        assert_eq!(tree("t.0.1"), "t.0.1");
    }

    #[test]
    fn errors_point_at_the_column() {
        assert_eq!(
            error("order.total > )"),
            "unexpected `)` at column 15: expected an expression\norder.total > )\n              ^"
        );
        assert_eq!(
            error("a +"),
            "unexpected end of input at column 4: expected an expression\na +\n   ^"
        );
        assert_eq!(
            error("a b"),
            "unexpected `b` at column 3: expected an operator or the end of the expression\na b\n  ^"
        );
        assert_eq!(
            error("(a + b"),
            "unexpected end of input at column 7: expected `)`\n(a + b\n      ^"
        );
        assert_eq!(
            error("a < b < c"),
            "comparison operators cannot be chained (column 7): write `a < b && b < c`\na < b < c\n      ^"
        );
        assert_eq!(
            error("x.push(1)"),
            "unknown method `push` at column 3: nonstop never calls the program; methods are len, contains, starts_with, ends_with, is_some, is_none, is_ok, is_err\nx.push(1)\n  ^"
        );
        assert_eq!(
            error("f(x)"),
            "`f` is not a built-in (column 1): nonstop never calls the program; functions are len(x) and matches(x, Variant)\nf(x)\n^"
        );
        assert_eq!(
            error("x = 1"),
            "unexpected `=` at column 3: expected an operator or the end of the expression\nx = 1\n  ^"
        );
        assert_eq!(
            error("\"abc"),
            "unterminated string starting at column 1: close it with `\"`\n\"abc\n^"
        );
        assert_eq!(
            error("x == 'ab'"),
            "unterminated char at column 6: a char holds one character; use \"…\" for text\nx == 'ab'\n     ^"
        );
        assert_eq!(
            error("300u8 > x"),
            "`300u8` at column 1 does not fit in u8\n300u8 > x\n^"
        );
        assert_eq!(
            error("x > 1q"),
            "unknown number suffix `q` at column 6: use i8..i64, u8..u64, isize, usize, f32 or f64\nx > 1q\n     ^"
        );
        assert_eq!(error("x # 1"), "unexpected `#` at column 3\nx # 1\n  ^");
        assert_eq!(
            error("x.len(1)"),
            "unexpected `1` at column 7: `len` takes 0 arguments\nx.len(1)\n      ^"
        );
        assert_eq!(
            error("matches(x, 1)"),
            "expected a variant name like `Debit` or `Kind::Debit` at column 12\nmatches(x, 1)\n           ^"
        );
        assert_eq!(
            error("x."),
            "unexpected end of input at column 3: expected a field name, a tuple index or a method after `.`\nx.\n  ^"
        );
        assert_eq!(
            error(r#""\q""#),
            "unknown escape `\\q` at column 2: use \\n \\t \\r \\0 \\\\ \\\" \\' \\x7f or \\u{…}\n\"\\q\"\n ^"
        );
        assert_eq!(
            error("99999999999999999999 > 1"),
            "`99999999999999999999` at column 1 does not fit in 64 bits\n99999999999999999999 > 1\n^"
        );
        assert!(error(&"9".repeat(45)).starts_with("integer `999"));
        // The caret lines up under multi-byte text.
        assert_eq!(
            error("s == \"é\" )"),
            "unexpected `)` at column 11: expected an operator or the end of the expression\ns == \"é\" )\n         ^"
        );
    }

    #[test]
    fn nesting_and_length_are_bounded() {
        let deep = format!("{}x{}", "(".repeat(100), ")".repeat(100));
        assert!(error(&deep).starts_with("expression nests too deeply"));
        let long = "x + ".repeat(300) + "x";
        assert!(error(&long).starts_with("expression too long"));
        let negs = "-".repeat(100) + "x";
        assert!(error(&negs).starts_with("expression nests too deeply"));
    }

    #[test]
    fn roots_are_the_names_read() {
        let e = Expr::parse("order.total > limit && order.user.id == thread").unwrap();
        assert_eq!(e.roots(), vec!["order", "limit", "thread"]);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = Expr::parse(&s);
        }

        #[test]
        fn parse_never_panics_on_expression_like_text(
            s in "[a-z_0-9.()\\[\\]!=<>&|+*/%\"' :,-]{0,60}"
        ) {
            if let Err(e) = Expr::parse(&s) {
                // The rendering always works and ends with a caret line.
                proptest::prop_assert!(e.to_string().ends_with('^'));
                proptest::prop_assert!(e.column >= 1 && e.column <= s.len() + 1);
            }
        }
    }
}
