//! Log templates: `"paid {order.total} for {user.id}"`, with `{expr:?}` for the debug form.
//!
//! Holes are paths into the captured variables: `name`, `name.field`, `name.0`, `name[2]`.
//! (The full expression language of conditions comes with `nonstop-expr`.)

use nonstop_model::{Data, Locals, Value};

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Hole { path: Vec<String>, debug: bool },
}

/// A parsed log template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// Why a template cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A `{` without its `}`.
    #[error("unclosed `{{` at column {0}: close it with `}}`, or write `{{{{` for a literal brace")]
    Unclosed(usize),
    /// A `}` without its `{`.
    #[error("unmatched `}}` at column {0}: write `}}}}` for a literal brace")]
    Unmatched(usize),
    /// A hole that is not a path.
    #[error("`{{{0}}}` is not a variable path: write a name like `order.total` or `items[0]`")]
    BadPath(String),
}

impl Template {
    /// Parses a template.
    pub fn parse(src: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = src.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|p| p.1) == Some('{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek().map(|p| p.1) == Some('}') => {
                    chars.next();
                    text.push('}');
                }
                '}' => return Err(TemplateError::Unmatched(i + 1)),
                '{' => {
                    let mut hole = String::new();
                    let mut closed = false;
                    for (_, c) in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        hole.push(c);
                    }
                    if !closed {
                        return Err(TemplateError::Unclosed(i + 1));
                    }
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    let (expr, debug) = match hole.trim().strip_suffix(":?") {
                        Some(e) => (e.trim().to_owned(), true),
                        None => (hole.trim().to_owned(), false),
                    };
                    let path = parse_path(&expr).ok_or(TemplateError::BadPath(hole.clone()))?;
                    parts.push(Part::Hole { path, debug });
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Template { parts })
    }

    /// The variable names the holes start from.
    pub fn roots(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Hole { path, .. } => path.first().map(String::as_str),
            Part::Text(_) => None,
        })
    }

    /// Renders the template over captured variables. A hole that names nothing renders as
    /// `<no x>` so the message still shows what was asked for.
    pub fn render(&self, locals: &Locals, debug: impl Fn(&Value) -> String) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Hole { path, debug: dbg } => match lookup(locals, path) {
                    Some(v) if v.redacted => out.push_str("<redacted>"),
                    Some(v) if v.error.is_some() => {
                        out.push('<');
                        out.push_str(v.error.as_deref().unwrap_or_default());
                        out.push('>');
                    }
                    Some(v) => match (&v.value, dbg) {
                        (Data::Str(s), false) => out.push_str(s),
                        _ => out.push_str(&debug(v)),
                    },
                    None => {
                        out.push_str("<no ");
                        out.push_str(&path.join("."));
                        out.push('>');
                    }
                },
            }
        }
        out
    }
}

fn parse_path(expr: &str) -> Option<Vec<String>> {
    let mut path = Vec::new();
    for (i, segment) in expr.split('.').enumerate() {
        let (name, mut rest) = match segment.find('[') {
            Some(b) => (&segment[..b], &segment[b..]),
            None => (segment, ""),
        };
        let valid_name = !name.is_empty()
            && name.chars().all(|c| c.is_alphanumeric() || c == '_')
            && (i > 0 || !name.starts_with(|c: char| c.is_ascii_digit()));
        if !valid_name {
            return None;
        }
        path.push(name.to_owned());
        while let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let index = &r[..end];
            index.parse::<usize>().ok()?;
            path.push(index.to_owned());
            rest = &r[end + 1..];
        }
        if !rest.is_empty() {
            return None;
        }
    }
    Some(path)
}

fn lookup<'a>(locals: &'a Locals, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut v = locals.get(first)?;
    for seg in rest {
        v = v.field(seg)?;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locals() -> Locals {
        let order = Value::new(
            "Order",
            Data::Map(vec![
                ("total".into(), Value::new("u64", Data::Uint(1250))),
                (
                    "items".into(),
                    Value::new(
                        "Vec<&str>",
                        Data::List(vec![Value::new("&str", Data::Str("tea".into()))]),
                    ),
                ),
            ]),
        );
        Locals(vec![
            ("order".into(), order),
            ("user".into(), Value::new("&str", Data::Str("ann".into()))),
        ])
    }

    fn dbg(v: &Value) -> String {
        match &v.value {
            Data::Str(s) => format!("{s:?}"),
            Data::Uint(u) => u.to_string(),
            _ => "?".into(),
        }
    }

    #[test]
    fn renders_paths_indexes_and_debug_form() {
        let t = Template::parse("paid {order.total} for {user:?}: {order.items[0]} {{x}}").unwrap();
        assert_eq!(t.render(&locals(), dbg), "paid 1250 for \"ann\": tea {x}");
        assert_eq!(
            t.roots().collect::<Vec<_>>(),
            vec!["order", "user", "order"]
        );
        let t = Template::parse("{nope.x}").unwrap();
        assert_eq!(t.render(&locals(), dbg), "<no nope.x>");
    }

    #[test]
    fn bad_templates_say_where_and_what_to_do() {
        assert_eq!(Template::parse("a {b"), Err(TemplateError::Unclosed(3)));
        assert_eq!(Template::parse("a } b"), Err(TemplateError::Unmatched(3)));
        assert_eq!(
            Template::parse("{a + b}"),
            Err(TemplateError::BadPath("a + b".into()))
        );
        assert!(Template::parse("{1x}").is_err());
    }
}
