//! Log templates: text with `{expr}` and `{expr:?}` holes.

use crate::check::{CheckError, Scope};
use crate::eval::{Env, EvalError};
use crate::syntax::{Expr, ParseError};

/// One piece of a template.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    /// Text copied as it is (`{{`/`}}` already turned into braces).
    Text(String),
    /// A hole.
    Hole {
        /// The expression.
        expr: Expr,
        /// `{expr:?}`: the debug form; else the display form.
        debug: bool,
    },
}

/// A parsed log template, e.g. `"paid {order.total} for {user.id:?}"`.
///
/// `{expr}` renders the display form (strings without quotes, numbers plain, other values
/// in their debug form), `{expr:?}` the debug form like Rust's `{:?}`; `{{` and `}}` are
/// literal braces.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

/// A rendered template, with the holes that failed (rendered as `<error: …>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The message.
    pub text: String,
    /// Why holes failed, in order; empty when every hole rendered.
    pub errors: Vec<EvalError>,
}

impl Template {
    /// Parses a template. Errors carry the column in the template.
    pub fn parse(source: &str) -> Result<Template, ParseError> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let bytes = source.as_bytes();
        let mut i = 0;
        let mut text_from = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'{' if bytes.get(i + 1) == Some(&b'{') => {
                    text.push_str(&source[text_from..i + 1]);
                    i += 2;
                    text_from = i;
                }
                b'}' if bytes.get(i + 1) == Some(&b'}') => {
                    text.push_str(&source[text_from..i + 1]);
                    i += 2;
                    text_from = i;
                }
                b'}' => {
                    return Err(ParseError::new(
                        source,
                        i,
                        format!(
                            "unmatched `}}` at column {}: write `}}}}` for a literal brace",
                            i + 1
                        ),
                    ));
                }
                b'{' => {
                    text.push_str(&source[text_from..i]);
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    let close = hole_end(source, i + 1).ok_or_else(|| {
                        ParseError::new(
                            source,
                            i,
                            format!(
                                "unclosed `{{` at column {}: close the hole with `}}`, or write `{{{{` for a literal brace",
                                i + 1
                            ),
                        )
                    })?;
                    let inner = &source[i + 1..close];
                    // `{expr:?}`; any other format spec fails to parse at its `:`.
                    let trimmed = inner.trim_end();
                    let (end, debug) = match trimmed.strip_suffix(":?") {
                        Some(e) if !e.ends_with(':') => (i + 1 + e.len(), true),
                        _ => (close, false),
                    };
                    if source[i + 1..end].trim().is_empty() {
                        return Err(ParseError::new(
                            source,
                            i,
                            format!(
                                "empty hole at column {}: write an expression, e.g. {{order.total}}",
                                i + 1
                            ),
                        ));
                    }
                    let expr = Expr::parse_hole(source, i + 1, end)?;
                    parts.push(Part::Hole { expr, debug });
                    i = close + 1;
                    text_from = i;
                }
                _ => i += 1,
            }
        }
        text.push_str(&source[text_from..]);
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Template {
            source: source.to_owned(),
            parts,
        })
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The pieces: text and holes.
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// Checks every hole against the variables in scope (any type can be shown).
    pub fn check(&self, scope: &dyn Scope) -> Result<(), CheckError> {
        for part in &self.parts {
            if let Part::Hole { expr, .. } = part {
                expr.check(scope)?;
            }
        }
        Ok(())
    }

    /// The names the holes read, in order of first use: the variables to capture.
    pub fn roots(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for part in &self.parts {
            if let Part::Hole { expr, .. } = part {
                for r in expr.roots() {
                    if !out.contains(&r) {
                        out.push(r);
                    }
                }
            }
        }
        out
    }

    /// Renders the template; a hole that fails renders as `<error: …>` and is listed in
    /// [`Rendered::errors`]. A captured value in a `{x:?}` hole (or one with no plain
    /// form) renders like Rust's `{:?}` ([`Value::rust_debug`](nonstop_model::Value::rust_debug)).
    pub fn render(&self, env: &dyn Env) -> Rendered {
        let mut text = String::new();
        let mut errors = Vec::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => text.push_str(t),
                Part::Hole { expr, debug: d } => {
                    let r = if *d {
                        expr.eval_debug(env)
                    } else {
                        expr.eval_display(env)
                    };
                    match r {
                        Ok(s) => text.push_str(&s),
                        Err(e) => {
                            text.push_str("<error: ");
                            text.push_str(&e.to_string());
                            text.push('>');
                            errors.push(e);
                        }
                    }
                }
            }
        }
        Rendered { text, errors }
    }
}

/// The index of the `}` that closes a hole whose expression starts at `from`, skipping
/// braces inside string and char literals.
fn hole_end(source: &str, from: usize) -> Option<usize> {
    let bytes = source.as_bytes();
    let mut i = from;
    let mut in_str = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_str => i += 1,
            b'"' => in_str = !in_str,
            // A char literal with a brace: `'}'`.
            b'\'' if !in_str && bytes.get(i + 2) == Some(&b'\'') => i += 2,
            b'}' if !in_str => return Some(i),
            b'{' if !in_str => return None,
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::tests::env;

    fn render(src: &str) -> Rendered {
        Template::parse(src).unwrap().render(&env())
    }

    fn error(src: &str) -> String {
        Template::parse(src).unwrap_err().to_string()
    }

    #[test]
    fn holes_render_display_and_debug_forms() {
        let r = render("paid {order.total} for {user.name:?} ({user.name}) on {thread}");
        assert_eq!(r.text, "paid 12000 for \"ann\" (ann) on worker-1");
        assert!(r.errors.is_empty());
        assert_eq!(
            render("{{literal}} {{{order.kind == Credit}}}").text,
            "{literal} {true}"
        );
        assert_eq!(render("no holes").text, "no holes");
        assert_eq!(render("{ \"}\" }:{'}'}").text, "}:}");
        assert_eq!(render("{order.level == Level::High :? }").text, "true");
        assert_eq!(render("{user.name.starts_with(\"a:b\")}").text, "false");
    }

    #[test]
    fn a_failing_hole_renders_its_error() {
        let r = render("x={gone} y={order.total}");
        assert_eq!(
            r.text,
            "x=<error: `gone` cannot be read: optimized out> y=12000"
        );
        assert_eq!(r.errors.len(), 1);
    }

    #[test]
    fn holes_are_checked_against_the_scope() {
        let scope = vec![("order".to_owned(), crate::Ty::Unknown)];
        let t = Template::parse("{order.total} {usr}").unwrap();
        assert_eq!(
            t.check(&scope).unwrap_err().to_string(),
            "unknown variable `usr`; in scope: order"
        );
    }

    #[test]
    fn roots_are_the_variables_read() {
        let t = Template::parse("{order.total} {user.name:?} {order.id}").unwrap();
        assert_eq!(t.roots(), vec!["order", "user"]);
    }

    #[test]
    fn errors_point_at_the_template_column() {
        assert_eq!(
            error("paid {order.total >} now"),
            "unexpected `}` at column 20: expected an expression\npaid {order.total >} now\n                   ^"
        );
        assert_eq!(
            error("paid {order.total"),
            "unclosed `{` at column 6: close the hole with `}`, or write `{{` for a literal brace\npaid {order.total\n     ^"
        );
        assert_eq!(
            error("a } b"),
            "unmatched `}` at column 3: write `}}` for a literal brace\na } b\n  ^"
        );
        assert_eq!(
            error("a {} b"),
            "empty hole at column 3: write an expression, e.g. {order.total}\na {} b\n  ^"
        );
        assert_eq!(
            error("{x:>5}"),
            "unexpected `:` at column 3: expected an operator or the end of the expression\n{x:>5}\n  ^"
        );
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "[{}a-z.:?\" ]{0,40}") {
            if let Ok(t) = Template::parse(&s) {
                let _ = t.render(&env());
            }
        }
    }
}
