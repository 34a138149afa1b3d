//! Values as Rust's `{:?}` prints them, for logs, the DAP adapter and the CLI: one
//! rendering of a captured [`Value`], written once in the model.

use crate::value::{Data, Value};

impl Value {
    /// This value as Rust's `{:?}` prints it (see [`debug_string`]).
    pub fn rust_debug(&self) -> String {
        debug_string(self)
    }
}

/// How a map key is written as a JSON key: strings as themselves, anything else as its
/// [`debug_string`].
pub fn key_string(key: &Value) -> String {
    match &key.value {
        Data::Str(s) if key.error.is_none() => s.clone(),
        _ => debug_string(key),
    }
}

/// Renders a value as Rust's `{:?}` prints it, for the types the decoder knows:
/// `Order { id: 7, items: [1, 2] }`, `Some("x")`, `Point(1, 2)`, `{"a": 1}`, `'c'`, `1.0`.
///
/// Marks are written in a form `{:?}` never produces: a value cut short ends with `..`
/// (`"abc"..`, `[1, 2, ..]`), an error is `<error: why>`.
pub fn debug_string(v: &Value) -> String {
    let mut out = String::new();
    fmt_value(v, &v.type_name, &mut out);
    out
}

/// Strips pointer-like wrappers whose `Debug` shows the pointee: `&T`, `Box<T>`, `Rc<T>`.
fn peel(mut t: &str) -> &str {
    loop {
        let before = t;
        if let Some(r) = t.strip_suffix(" *") {
            t = r;
        } else if let Some(r) = t.strip_prefix("&mut ") {
            t = r;
        } else if let Some(r) = t.strip_prefix('&') {
            t = r;
        } else {
            for w in ["Box<", "Rc<", "Arc<"] {
                if let Some(r) = t.strip_prefix(w)
                    && let Some(inner) = r.strip_suffix('>')
                {
                    t = inner;
                    break;
                }
            }
        }
        if t == before {
            return t;
        }
    }
}

/// The top-level generic arguments of a type name: `HashMap<String, u32>` → `[String, u32]`.
fn generic_args(t: &str) -> Vec<&str> {
    let Some(open) = t.find('<') else {
        return Vec::new();
    };
    let Some(inner) = t.get(open + 1..t.len().saturating_sub(1)) else {
        return Vec::new();
    };
    let mut args = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in inner.char_indices() {
        match c {
            '<' | '(' | '[' => depth += 1,
            '>' | ')' | ']' => depth -= 1,
            ',' if depth == 0 => {
                args.push(inner[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    args.push(inner[start..].trim());
    args
}

/// The name `Debug` prints for a user type: its last path segment without generics.
fn short_type(t: &str) -> &str {
    let base = t.split('<').next().unwrap_or(t);
    base.rsplit("::").next().unwrap_or(t)
}

fn fmt_value(v: &Value, type_name: &str, out: &mut String) {
    if let Some(e) = &v.error {
        out.push_str("<error: ");
        out.push_str(e);
        out.push('>');
        return;
    }
    let t = peel(type_name);
    let short = short_type(t);
    // Wrappers whose Debug names themselves.
    if matches!(short, "RefCell" | "Cell") && v.variant.is_none() {
        let inner = generic_args(t).first().copied().unwrap_or("");
        out.push_str(short);
        out.push_str(" { value: ");
        fmt_value(v, inner, out);
        out.push_str(" }");
        return;
    }
    if matches!(short, "NonZero" | "UnsafeCell" | "ManuallyDrop")
        && let Some(inner) = generic_args(t).first()
    {
        fmt_value(v, inner, out);
        return;
    }
    let cut = if v.truncated { ".." } else { "" };
    match &v.value {
        Data::Null if v.truncated => out.push_str(".."),
        Data::Null => match &v.variant {
            Some(n) => out.push_str(n),
            None if t == "()" => out.push_str("()"),
            None if t.starts_with('*') || t.starts_with("fn") || type_name.ends_with('*') => {
                out.push_str("0x0")
            }
            None => out.push_str(if t.starts_with('(') { "()" } else { short }),
        },
        Data::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Data::Int(i) => out.push_str(&i.to_string()),
        Data::Uint(u) if t.starts_with('*') || t.starts_with("fn") || t.contains(" *") => {
            out.push_str(&format!("{u:#x}"))
        }
        Data::Uint(u) => out.push_str(&u.to_string()),
        Data::Float(f) if t == "f32" => out.push_str(&format!("{:?}", *f as f32)),
        Data::Float(f) => out.push_str(&format!("{f:?}")),
        Data::Str(s) => {
            if is_text(type_name) {
                out.push_str(&format!("{s:?}"));
                out.push_str(cut);
            } else if t == "char" {
                match s.chars().next() {
                    Some(c) => out.push_str(&format!("{c:?}")),
                    None => out.push_str("''"),
                }
            } else if matches!(t, "i128" | "u128") {
                out.push_str(s);
            } else if is_text(t) {
                out.push_str(&format!("{s:?}"));
                out.push_str(cut);
            } else {
                // C-like enum variants and other names.
                out.push_str(s);
            }
        }
        Data::List(items) => {
            let kind = list_kind(t, v.variant.as_deref());
            let (open, close) = match kind {
                ListKind::Tuple => ("(", ")"),
                ListKind::Set => ("{", "}"),
                ListKind::Seq => ("[", "]"),
                ListKind::Named(n) => {
                    out.push_str(n);
                    ("(", ")")
                }
            };
            let args = generic_args(t);
            out.push_str(open);
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                fmt_value(item, &item.type_name, out);
            }
            if v.truncated {
                out.push_str(if items.is_empty() { ".." } else { ", .." });
            }
            if matches!(kind, ListKind::Tuple) && items.len() == 1 && !v.truncated {
                out.push(',');
            }
            let _ = args;
            out.push_str(close);
        }
        Data::Map(fields) => {
            if is_map(t) && v.variant.is_none() {
                let key_ty = generic_args(t).first().copied().unwrap_or("");
                out.push('{');
                for (i, (k, val)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    let kt = peel(key_ty);
                    if is_text(kt) {
                        out.push_str(&format!("{k:?}"));
                    } else if kt == "char" {
                        out.push_str(&format!("'{k}'"));
                    } else {
                        out.push_str(k);
                    }
                    out.push_str(": ");
                    fmt_value(val, &val.type_name, out);
                }
                if v.truncated {
                    out.push_str(if fields.is_empty() { ".." } else { ", .." });
                }
                out.push('}');
                return;
            }
            let name = v.variant.as_deref().unwrap_or(short);
            out.push_str(name);
            if fields.is_empty() && !v.truncated {
                return;
            }
            out.push_str(" { ");
            for (i, (k, val)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(k);
                out.push_str(": ");
                fmt_value(val, &val.type_name, out);
            }
            // A lock's Debug leaves out its other fields (`Mutex { data: 5, poisoned: false, .. }`).
            let lock = matches!(short, "Mutex" | "RwLock") && v.variant.is_none();
            if v.truncated || lock {
                out.push_str(if fields.is_empty() { ".." } else { ", .." });
            }
            out.push_str(" }");
        }
    }
}

enum ListKind<'a> {
    Tuple,
    Set,
    Seq,
    Named(&'a str),
}

fn list_kind<'a>(t: &'a str, variant: Option<&'a str>) -> ListKind<'a> {
    if let Some(v) = variant {
        return ListKind::Named(v);
    }
    if t.starts_with('(') {
        return ListKind::Tuple;
    }
    let short = short_type(t);
    if matches!(short, "HashSet" | "BTreeSet") {
        return ListKind::Set;
    }
    if t.starts_with('[')
        || matches!(short, "Vec" | "VecDeque" | "LinkedList" | "BinaryHeap")
        || t.contains('[') && !t.contains('<')
    {
        return ListKind::Seq;
    }
    if t.contains('[') || t.ends_with(']') {
        return ListKind::Seq;
    }
    ListKind::Named(short)
}

fn is_text(t: &str) -> bool {
    // A pointer to text (`&str`, `&Path`, `*const OsStr`) is shown as the text.
    let pointee = ["&mut ", "&", "*const ", "*mut "]
        .iter()
        .find_map(|p| t.strip_prefix(p))
        .unwrap_or(t);
    matches!(
        pointee,
        "str" | "String" | "CString" | "OsString" | "PathBuf" | "Path" | "OsStr"
    ) || t.starts_with("char[")
        || t.ends_with("char *")
        || t.ends_with("char*")
}

fn is_map(t: &str) -> bool {
    matches!(short_type(t), "HashMap" | "BTreeMap" | "IndexMap")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(t: &str, d: Data) -> Value {
        Value::new(t, d)
    }

    #[test]
    fn debug_string_matches_rust_debug_for_common_shapes() {
        let order = v(
            "shop::Order",
            Data::Map(vec![
                ("id".into(), v("u64", Data::Uint(7))),
                (
                    "items".into(),
                    v(
                        "Vec<i32>",
                        Data::List(vec![v("i32", Data::Int(1)), v("i32", Data::Int(-2))]),
                    ),
                ),
                (
                    "note".into(),
                    Value {
                        variant: Some("Some".into()),
                        ..v(
                            "Option<String>",
                            Data::List(vec![v("String", Data::Str("a\"b".into()))]),
                        )
                    },
                ),
                ("ratio".into(), v("f32", Data::Float(0.1f32 as f64))),
                (
                    "t".into(),
                    v("(i32,)", Data::List(vec![v("i32", Data::Int(7))])),
                ),
            ]),
        );
        assert_eq!(
            debug_string(&order),
            format!(
                "Order {{ id: 7, items: [1, -2], note: Some({:?}), ratio: 0.1, t: (7,) }}",
                "a\"b"
            )
        );
        let map = v(
            "HashMap<&str, char>",
            Data::Map(vec![("k".into(), v("char", Data::Str("\n".into())))]),
        );
        assert_eq!(debug_string(&map), r#"{"k": '\n'}"#);
        let boxed = v("Box<RefCell<i32>>", Data::Int(5));
        assert_eq!(debug_string(&boxed), "RefCell { value: 5 }");
        assert_eq!(debug_string(&v("*const u8", Data::Uint(16))), "0x10");
    }

    #[test]
    fn generic_args_split_at_the_top_level() {
        assert_eq!(
            generic_args("HashMap<(u8, u8), Vec<u8>>"),
            vec!["(u8, u8)", "Vec<u8>"]
        );
        assert_eq!(peel("&Box<Rc<String>>"), "String");
    }
}
