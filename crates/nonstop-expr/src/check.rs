//! Type checking against the variables in scope at a location.
//!
//! The agent checks a rule's expressions when it arms the rule (debug info at hand) and
//! turns a [`CheckError`] into the rule's `error` status; the server, without debug info,
//! only parses ([`Expr::parse`]).

use crate::syntax::{BinOp, Builtin, Expr, Lit, Node, NodeKind, UnOp};

/// A coarse type: enough to catch typos and mismatches before a rule is armed.
///
/// Tuples are [`Ty::Struct`] with fields named `0`, `1`, …; `Result` is an [`Ty::Enum`]
/// with variants `Ok` and `Err`; references, `Box`, `Rc` are their pointee; C-like enums
/// are [`Ty::Enum`]. Map recursive types to [`Ty::Unknown`] below a few levels: anything
/// is allowed on `Unknown`, and evaluation still checks at hit time.
#[derive(Debug, Clone, PartialEq)]
pub enum Ty {
    /// `bool`.
    Bool,
    /// Signed integers.
    Int,
    /// Unsigned integers.
    Uint,
    /// `f32`, `f64`.
    Float,
    /// `String`, `&str`, C strings.
    Str,
    /// `char`.
    Char,
    /// Arrays, slices, `Vec`, sets, with the element type.
    List(Box<Ty>),
    /// Maps keyed by (the string rendering of) their keys, with the value type.
    Map(Box<Ty>),
    /// A struct (or tuple) and its fields in order.
    Struct {
        /// The type's name, for messages (`Order`).
        name: String,
        /// Field names and types.
        fields: Vec<(String, Ty)>,
    },
    /// An enum and its variant names.
    Enum {
        /// The type's name, for messages (`Kind`).
        name: String,
        /// Its variants.
        variants: Vec<String>,
    },
    /// `Option<T>`.
    Option(Box<Ty>),
    /// Not known here: every operation is allowed and checked at hit time.
    Unknown,
}

impl Ty {
    fn describe(&self) -> &'static str {
        match self {
            Ty::Bool => "a bool",
            Ty::Int | Ty::Uint | Ty::Float => "a number",
            Ty::Str => "a string",
            Ty::Char => "a char",
            Ty::List(_) => "a list",
            Ty::Map(_) => "a map",
            Ty::Struct { .. } => "a struct",
            Ty::Enum { .. } => "an enum",
            Ty::Option(_) => "an Option",
            Ty::Unknown => "a value",
        }
    }

    fn is_number(&self) -> bool {
        matches!(self, Ty::Int | Ty::Uint | Ty::Float | Ty::Unknown)
    }

    fn is_text(&self) -> bool {
        matches!(self, Ty::Str | Ty::Char | Ty::Unknown)
    }
}

/// The variables in scope at a location, with their types.
///
/// `Vec<(String, Ty)>` implements it; the agent may implement it lazily over DWARF.
pub trait Scope {
    /// The type of the variable `name`, if it is in scope.
    fn var(&self, name: &str) -> Option<Ty>;
    /// The names in scope, for "in scope: …" messages.
    fn names(&self) -> Vec<String>;
}

impl Scope for Vec<(String, Ty)> {
    fn var(&self, name: &str) -> Option<Ty> {
        self.iter().find(|(n, _)| n == name).map(|(_, t)| t.clone())
    }
    fn names(&self) -> Vec<String> {
        self.iter().map(|(n, _)| n.clone()).collect()
    }
}

/// Why an expression does not fit the variables in scope. Messages quote the source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// A name that is neither a variable in scope nor a built-in.
    #[error("unknown variable `{name}`; in scope: {in_scope}")]
    UnknownVariable {
        /// The name as written.
        name: String,
        /// The variables that exist, comma-separated (`(none)` if there are none).
        in_scope: String,
    },
    /// A field that the struct does not have.
    #[error("`{path}` has no field `{field}`; its fields: {fields}")]
    NoField {
        /// The expression before the field.
        path: String,
        /// The missing field.
        field: String,
        /// The fields that exist, comma-separated.
        fields: String,
    },
    /// A variant that the enum does not have.
    #[error("`{ty}` has no variant `{variant}`; its variants: {variants}")]
    NoVariant {
        /// The enum's name.
        ty: String,
        /// The variant as written.
        variant: String,
        /// The variants that exist, comma-separated.
        variants: String,
    },
    /// An operation on types it does not apply to.
    #[error("{message}")]
    Mismatch {
        /// What does not fit, with the source text (`cannot compare a string with a number: "a" > 3`).
        message: String,
    },
}

/// Names that evaluate to something when no variable shadows them.
pub const BUILTINS: [&str; 2] = ["thread", "hit_count"];

impl Expr {
    /// Checks the expression against the variables in `scope` and returns its type.
    pub fn check(&self, scope: &dyn Scope) -> Result<Ty, CheckError> {
        Checker { expr: self, scope }.ty(self.root())
    }

    /// Checks that the expression is a condition: it must be a `bool`.
    pub fn check_condition(&self, scope: &dyn Scope) -> Result<(), CheckError> {
        match self.check(scope)? {
            Ty::Bool | Ty::Unknown => Ok(()),
            other => Err(CheckError::Mismatch {
                message: format!(
                    "a condition must be true or false, but `{}` is {}: compare it, e.g. `{} > 0`",
                    self.source(),
                    other.describe(),
                    self.source()
                ),
            }),
        }
    }

    /// Checks that the expression is a metric value: it must be a number.
    pub fn check_number(&self, scope: &dyn Scope) -> Result<(), CheckError> {
        match self.check(scope)? {
            t if t.is_number() || t == Ty::Bool => Ok(()),
            other => Err(CheckError::Mismatch {
                message: format!(
                    "a metric value must be a number, but `{}` is {}",
                    self.source(),
                    other.describe()
                ),
            }),
        }
    }
}

struct Checker<'a> {
    expr: &'a Expr,
    scope: &'a dyn Scope,
}

impl Checker<'_> {
    fn text(&self, node: &Node) -> String {
        self.expr.text(node).to_owned()
    }

    fn mismatch(&self, message: String) -> CheckError {
        CheckError::Mismatch { message }
    }

    fn unknown(&self, name: &str) -> CheckError {
        let names = self.scope.names();
        CheckError::UnknownVariable {
            name: name.to_owned(),
            in_scope: if names.is_empty() {
                "(none)".into()
            } else {
                names.join(", ")
            },
        }
    }

    /// The variant name when `node` is used as a variant (a path, or a capitalised name
    /// that is not a variable).
    fn variant_operand<'n>(&self, node: &'n Node) -> Option<&'n str> {
        match &node.kind {
            NodeKind::Path(_) => node.as_variant(),
            NodeKind::Name(n) if self.scope.var(n).is_none() => node.as_variant(),
            _ => None,
        }
    }

    fn check_variant(&self, value: &Node, variant: &str) -> Result<(), CheckError> {
        match self.ty(value)? {
            Ty::Enum { name, variants } => {
                if variants.iter().any(|v| v == variant) {
                    Ok(())
                } else {
                    Err(CheckError::NoVariant {
                        ty: name,
                        variant: variant.to_owned(),
                        variants: variants.join(", "),
                    })
                }
            }
            Ty::Option(_) => {
                if matches!(variant, "Some" | "None") {
                    Ok(())
                } else {
                    Err(CheckError::NoVariant {
                        ty: "Option".into(),
                        variant: variant.to_owned(),
                        variants: "Some, None".into(),
                    })
                }
            }
            Ty::Unknown => Ok(()),
            other => Err(self.mismatch(format!(
                "`{}` is {}, not an enum: it has no variant `{variant}`",
                self.text(value),
                other.describe()
            ))),
        }
    }

    fn ty(&self, node: &Node) -> Result<Ty, CheckError> {
        match &node.kind {
            NodeKind::Lit(l) => Ok(match l {
                Lit::Bool(_) => Ty::Bool,
                Lit::Int(_) => Ty::Int,
                Lit::Uint(_) => Ty::Uint,
                Lit::Float(_) => Ty::Float,
                Lit::Str(_) => Ty::Str,
                Lit::Char(_) => Ty::Char,
            }),
            NodeKind::Name(n) => match self.scope.var(n) {
                Some(t) => Ok(t),
                None if n == "thread" => Ok(Ty::Str),
                None if n == "hit_count" => Ok(Ty::Uint),
                None => Err(self.unknown(n)),
            },
            NodeKind::Path(_) => Err(self.mismatch(format!(
                "`{}` is a variant: compare a value with it (`x == {}`) or use `matches(x, {})`",
                self.text(node),
                self.text(node),
                self.text(node)
            ))),
            NodeKind::Field(base, field) => match self.ty(base)? {
                Ty::Struct { fields, .. } => fields
                    .iter()
                    .find(|(f, _)| f == field)
                    .map(|(_, t)| t.clone())
                    .ok_or_else(|| CheckError::NoField {
                        path: self.text(base),
                        field: field.clone(),
                        fields: fields
                            .iter()
                            .map(|(f, _)| f.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    }),
                Ty::Map(v) => Ok(*v),
                Ty::Option(inner) if field == "0" => Ok(*inner),
                Ty::Enum { .. } | Ty::Unknown => Ok(Ty::Unknown),
                other => Err(self.mismatch(format!(
                    "`{}` is {} and has no fields",
                    self.text(base),
                    other.describe()
                ))),
            },
            NodeKind::Index(base, index) => {
                let it = self.ty(index)?;
                match self.ty(base)? {
                    Ty::List(elem) => {
                        if matches!(it, Ty::Int | Ty::Uint | Ty::Unknown) {
                            Ok(*elem)
                        } else {
                            Err(self.mismatch(format!(
                                "a list index must be an integer, but `{}` is {}",
                                self.text(index),
                                it.describe()
                            )))
                        }
                    }
                    Ty::Map(v) => Ok(*v),
                    Ty::Unknown => Ok(Ty::Unknown),
                    other => Err(self.mismatch(format!(
                        "`{}` is {} and cannot be indexed",
                        self.text(base),
                        other.describe()
                    ))),
                }
            }
            NodeKind::Call(b, recv, args) => self.call(*b, recv, args),
            NodeKind::Matches(value, variant) => {
                let name = variant.as_variant().unwrap_or("");
                self.check_variant(value, name)?;
                Ok(Ty::Bool)
            }
            NodeKind::Unary(op, inner) => {
                let t = self.ty(inner)?;
                match op {
                    UnOp::Deref => Ok(t),
                    UnOp::Not if matches!(t, Ty::Bool | Ty::Unknown) => Ok(Ty::Bool),
                    UnOp::Neg if t.is_number() => Ok(if t == Ty::Uint { Ty::Int } else { t }),
                    UnOp::Not => Err(self.mismatch(format!(
                        "`!` needs a bool, but `{}` is {}",
                        self.text(inner),
                        t.describe()
                    ))),
                    UnOp::Neg => Err(self.mismatch(format!(
                        "`-` needs a number, but `{}` is {}",
                        self.text(inner),
                        t.describe()
                    ))),
                }
            }
            NodeKind::Binary(op, l, r) => self.binary(node, *op, l, r),
        }
    }

    fn call(&self, b: Builtin, recv: &Node, args: &[Node]) -> Result<Ty, CheckError> {
        let t = self.ty(recv)?;
        let wrong = |what: &str| {
            self.mismatch(format!(
                "`{}` needs {what}, but `{}` is {}",
                b.name(),
                self.text(recv),
                t.describe()
            ))
        };
        match b {
            Builtin::Len => match t {
                Ty::Str | Ty::List(_) | Ty::Map(_) | Ty::Unknown => Ok(Ty::Uint),
                _ => Err(wrong("a string, list or map")),
            },
            Builtin::Contains | Builtin::StartsWith | Builtin::EndsWith => {
                let arg = args.first().ok_or_else(|| wrong("an argument"))?;
                let at = self.ty(arg)?;
                let ok = match (&t, b) {
                    (Ty::Str | Ty::Unknown, _) => at.is_text(),
                    (Ty::List(elem), Builtin::Contains) => comparable(elem, &at),
                    (Ty::Map(_), Builtin::Contains) => at.is_text() || at.is_number(),
                    _ => {
                        return Err(wrong(if b == Builtin::Contains {
                            "a string, list or map"
                        } else {
                            "a string"
                        }));
                    }
                };
                if ok {
                    Ok(Ty::Bool)
                } else {
                    Err(self.mismatch(format!(
                        "`{}` of {} cannot take {}: `{}`",
                        b.name(),
                        t.describe(),
                        at.describe(),
                        self.text(arg)
                    )))
                }
            }
            Builtin::IsSome | Builtin::IsNone => match t {
                Ty::Option(_) | Ty::Unknown => Ok(Ty::Bool),
                Ty::Enum { ref variants, .. } if variants.iter().any(|v| v == "Some") => {
                    Ok(Ty::Bool)
                }
                _ => Err(wrong("an Option")),
            },
            Builtin::IsOk | Builtin::IsErr => match t {
                Ty::Unknown => Ok(Ty::Bool),
                Ty::Enum { ref variants, .. } if variants.iter().any(|v| v == "Ok") => Ok(Ty::Bool),
                _ => Err(wrong("a Result")),
            },
        }
    }

    fn binary(&self, node: &Node, op: BinOp, l: &Node, r: &Node) -> Result<Ty, CheckError> {
        if matches!(op, BinOp::Eq | BinOp::Ne) {
            if let Some(v) = self.variant_operand(r) {
                self.check_variant(l, v)?;
                return Ok(Ty::Bool);
            }
            if let Some(v) = self.variant_operand(l) {
                self.check_variant(r, v)?;
                return Ok(Ty::Bool);
            }
        }
        let (lt, rt) = (self.ty(l)?, self.ty(r)?);
        let mismatch = |verb: &str| {
            let (a, b) = (lt.describe(), rt.describe());
            let text = self.text(node);
            self.mismatch(if verb == "compare" {
                format!("cannot compare {a} with {b}: {text}")
            } else {
                format!("cannot {verb} {a} and {b}: {text}")
            })
        };
        match op {
            BinOp::And | BinOp::Or => {
                for (t, n) in [(&lt, l), (&rt, r)] {
                    if !matches!(t, Ty::Bool | Ty::Unknown) {
                        return Err(self.mismatch(format!(
                            "`{}` needs bools, but `{}` is {}",
                            op.symbol(),
                            self.text(n),
                            t.describe()
                        )));
                    }
                }
                Ok(Ty::Bool)
            }
            BinOp::Eq | BinOp::Ne => {
                if comparable(&lt, &rt) {
                    Ok(Ty::Bool)
                } else {
                    Err(mismatch("compare"))
                }
            }
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                let ordered = (lt.is_number() && rt.is_number())
                    || (lt.is_text() && rt.is_text())
                    || lt == Ty::Unknown
                    || rt == Ty::Unknown;
                if ordered && comparable(&lt, &rt) {
                    Ok(Ty::Bool)
                } else {
                    Err(mismatch("compare"))
                }
            }
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Rem => {
                if !(lt.is_number() && rt.is_number()) {
                    return Err(mismatch(&format!("apply `{}` to", op.symbol())));
                }
                Ok(match (lt, rt) {
                    (Ty::Float, _) | (_, Ty::Float) => Ty::Float,
                    (Ty::Unknown, _) | (_, Ty::Unknown) => Ty::Unknown,
                    (Ty::Uint, Ty::Uint) => Ty::Uint,
                    _ => Ty::Int,
                })
            }
        }
    }
}

/// Whether values of the two types can be compared with `==`.
fn comparable(a: &Ty, b: &Ty) -> bool {
    match (a, b) {
        (Ty::Unknown, _) | (_, Ty::Unknown) => true,
        _ if a.is_number() && b.is_number() => true,
        _ if a.is_text() && b.is_text() => true,
        (Ty::Bool, Ty::Bool) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> Vec<(String, Ty)> {
        let kind = Ty::Enum {
            name: "Kind".into(),
            variants: vec!["Credit".into(), "Debit".into()],
        };
        vec![
            (
                "order".into(),
                Ty::Struct {
                    name: "Order".into(),
                    fields: vec![
                        ("id".into(), Ty::Uint),
                        ("total".into(), Ty::Int),
                        ("items".into(), Ty::List(Box::new(Ty::Float))),
                        ("kind".into(), kind),
                        ("note".into(), Ty::Option(Box::new(Ty::Str))),
                        ("tags".into(), Ty::Map(Box::new(Ty::Str))),
                    ],
                },
            ),
            ("user".into(), Ty::Str),
            ("total".into(), Ty::Float),
            ("c".into(), Ty::Char),
            (
                "pair".into(),
                Ty::Struct {
                    name: "(u8, bool)".into(),
                    fields: vec![("0".into(), Ty::Uint), ("1".into(), Ty::Bool)],
                },
            ),
            ("any".into(), Ty::Unknown),
        ]
    }

    fn ty(src: &str) -> Result<Ty, String> {
        Expr::parse(src)
            .unwrap()
            .check(&scope())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn types_of_well_formed_expressions() {
        let table = [
            ("order.total > 10000 && user == \"ann\"", Ty::Bool),
            ("order.total + 1", Ty::Int),
            ("order.id * 2u64", Ty::Uint),
            ("order.id - 1", Ty::Int),
            ("total / 2", Ty::Float),
            ("order.items[0]", Ty::Float),
            ("order.items.len()", Ty::Uint),
            ("len(user)", Ty::Uint),
            ("order.kind == Kind::Credit", Ty::Bool),
            ("order.kind != Debit", Ty::Bool),
            ("matches(order.kind, Credit)", Ty::Bool),
            ("order.note.is_some()", Ty::Bool),
            ("order.note == None", Ty::Bool),
            ("order.note.0", Ty::Str),
            ("order.tags[\"env\"]", Ty::Str),
            ("order.tags.contains(\"env\")", Ty::Bool),
            ("order.items.contains(1.5)", Ty::Bool),
            ("c == 'x' || c == \"y\"", Ty::Bool),
            ("pair.1 && pair.0 > 3", Ty::Bool),
            ("thread.starts_with(\"worker\")", Ty::Bool),
            ("hit_count % 100 == 0", Ty::Bool),
            ("any.whatever[3].x + 1", Ty::Unknown),
            ("*order.total", Ty::Int),
        ];
        for (src, want) in table {
            assert_eq!(ty(src), Ok(want), "{src}");
        }
    }

    #[test]
    fn errors_name_what_exists() {
        let table = [
            (
                "ordr.total > 1",
                "unknown variable `ordr`; in scope: order, user, total, c, pair, any",
            ),
            (
                "order.totl > 1",
                "`order` has no field `totl`; its fields: id, total, items, kind, note, tags",
            ),
            (
                "order.kind == Kind::Credt",
                "`Kind` has no variant `Credt`; its variants: Credit, Debit",
            ),
            (
                "matches(order.note, Ok)",
                "`Option` has no variant `Ok`; its variants: Some, None",
            ),
            (
                "\"a\" > 3",
                "cannot compare a string with a number: \"a\" > 3",
            ),
            (
                "user == 3",
                "cannot compare a string with a number: user == 3",
            ),
            (
                "user + 1",
                "cannot apply `+` to a string and a number: user + 1",
            ),
            (
                "order.total && true",
                "`&&` needs bools, but `order.total` is a number",
            ),
            ("!user", "`!` needs a bool, but `user` is a string"),
            ("-user", "`-` needs a number, but `user` is a string"),
            (
                "total.len()",
                "`len` needs a string, list or map, but `total` is a number",
            ),
            (
                "user.is_some()",
                "`is_some` needs an Option, but `user` is a string",
            ),
            (
                "order.items.contains(\"a\")",
                "`contains` of a list cannot take a string: `\"a\"`",
            ),
            (
                "order.items[\"a\"]",
                "a list index must be an integer, but `\"a\"` is a string",
            ),
            ("user.x", "`user` is a string and has no fields"),
            ("total[0]", "`total` is a number and cannot be indexed"),
            (
                "user == Credit",
                "`user` is a string, not an enum: it has no variant `Credit`",
            ),
            (
                "Kind::Credit",
                "`Kind::Credit` is a variant: compare a value with it (`x == Kind::Credit`) or use `matches(x, Kind::Credit)`",
            ),
        ];
        for (src, want) in table {
            assert_eq!(ty(src), Err(want.to_owned()), "{src}");
        }
    }

    #[test]
    fn conditions_must_be_bools() {
        let e = Expr::parse("order.total + 1").unwrap();
        assert_eq!(
            e.check_condition(&scope()).unwrap_err().to_string(),
            "a condition must be true or false, but `order.total + 1` is a number: compare it, e.g. `order.total + 1 > 0`"
        );
        assert!(
            Expr::parse("any")
                .unwrap()
                .check_condition(&scope())
                .is_ok()
        );
        assert!(
            Expr::parse("total * 2")
                .unwrap()
                .check_number(&scope())
                .is_ok()
        );
        assert_eq!(
            Expr::parse("user")
                .unwrap()
                .check_number(&scope())
                .unwrap_err()
                .to_string(),
            "a metric value must be a number, but `user` is a string"
        );
    }

    #[test]
    fn a_local_shadows_a_builtin() {
        let scope = vec![("thread".to_owned(), Ty::Uint)];
        assert_eq!(
            Expr::parse("thread + 1u64").unwrap().check(&scope),
            Ok(Ty::Uint)
        );
        let none: Vec<(String, Ty)> = Vec::new();
        assert_eq!(
            Expr::parse("x")
                .unwrap()
                .check(&none)
                .unwrap_err()
                .to_string(),
            "unknown variable `x`; in scope: (none)"
        );
    }
}
