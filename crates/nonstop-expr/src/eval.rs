//! Evaluation over captured values.
//!
//! Runs on the agent thread after a capture (the trap-time fast path is
//! `nonstop_capture::filter`). Never panics, never loops: work is bounded by the size of the
//! expression (at most [`MAX_EXPR_LEN`](crate::syntax::MAX_EXPR_LEN) bytes) times the size
//! of the captured values, which capture limits bound.

use crate::syntax::{BinOp, Builtin, Expr, Lit, Node, NodeKind, UnOp};
use nonstop_model::{Data, Value};
use std::borrow::Cow;
use std::cmp::Ordering;

/// What an expression reads at a hit: the captured variables and the built-ins.
pub trait Env {
    /// The captured value of the variable `name`, if it is in scope. An optimized-out
    /// variable is a [`Value`] with its `error` set.
    fn var(&self, name: &str) -> Option<&Value>;
    /// The name of the thread that hit the probe (`thread`).
    fn thread(&self) -> &str;
    /// How many times the probe has been hit on this agent, this hit included (`hit_count`).
    fn hit_count(&self) -> u64;
}

/// The result of evaluating an expression.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Val<'a> {
    /// A bool.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    Uint(u64),
    /// A float.
    Float(f64),
    /// Text: a string literal, or the `thread` name.
    Str(&'a str),
    /// A char literal.
    Char(char),
    /// A captured value (or a part of one), as it was captured.
    Value(&'a Value),
}

/// Why an expression could not be evaluated at a hit. A condition that fails counts as
/// false, and the rule's status reports the message with a count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// The name is not a captured variable here.
    #[error("unknown variable `{0}` at this hit")]
    UnknownVariable(String),
    /// The value could not be read (optimized out, unreadable memory).
    #[error("`{what}` cannot be read: {reason}")]
    Unreadable {
        /// The expression.
        what: String,
        /// The reason the capture gave.
        reason: String,
    },
    /// The value was redacted; expressions cannot look into secrets.
    #[error("`{0}` is redacted: expressions cannot read redacted values")]
    Redacted(String),
    /// A capture limit cut the value short, so the answer is unknown.
    #[error("`{what}` was cut short by a capture limit ({detail}): raise the rule's limits")]
    Truncated {
        /// The expression.
        what: String,
        /// Which part is missing.
        detail: String,
    },
    /// A path through `None` or a null pointer.
    #[error("`{0}` is null (None or a null pointer)")]
    Null(String),
    /// A field the value does not have.
    #[error("`{what}` has no field `{field}`")]
    NoField {
        /// The expression before the field.
        what: String,
        /// The field.
        field: String,
    },
    /// An index past the end.
    #[error("index {index} is out of bounds: `{what}` has {len} elements")]
    OutOfBounds {
        /// The indexed expression.
        what: String,
        /// The index.
        index: i128,
        /// The number of elements.
        len: usize,
    },
    /// A map key that is not there.
    #[error("`{what}` has no key {key:?}")]
    NoKey {
        /// The indexed expression.
        what: String,
        /// The key.
        key: String,
    },
    /// Division or remainder by zero.
    #[error("division by zero in `{0}`")]
    DivisionByZero(String),
    /// Integer arithmetic left the 64-bit range.
    #[error("integer overflow in `{0}`")]
    Overflow(String),
    /// An operation on values it does not apply to.
    #[error("{0}")]
    Type(String),
}

impl Expr {
    /// Evaluates the expression over `env`.
    pub fn eval<'a>(&'a self, env: &'a dyn Env) -> Result<Val<'a>, EvalError> {
        Eval { expr: self, env }.eval(self.root())
    }

    /// Evaluates a condition: the result must be a bool.
    pub fn eval_condition(&self, env: &dyn Env) -> Result<bool, EvalError> {
        let e = Eval { expr: self, env };
        e.truth(self.root())
    }

    /// Evaluates a metric value (gauge, histogram) as a number; `true`/`false` count as 1/0.
    pub fn eval_number(&self, env: &dyn Env) -> Result<f64, EvalError> {
        let e = Eval { expr: self, env };
        let v = e.eval(self.root())?;
        match e.scalar(v, self.root())? {
            Val::Bool(b) => Ok(if b { 1.0 } else { 0.0 }),
            Val::Int(i) => Ok(i as f64),
            Val::Uint(u) => Ok(u as f64),
            Val::Float(f) => Ok(f),
            _ => Err(EvalError::Type(format!(
                "a metric value must be a number, but `{}` is not",
                self.source()
            ))),
        }
    }

    /// Evaluates to a [`Value`] (a snapshot's watch expressions): a path gives the captured
    /// value itself, marks included (so a redacted field stays redacted); a computed result
    /// gets the type it has here (`i64`, `u64`, `f64`, `bool`, `&str`, `char`); a failure is
    /// a value of type `?` with its `error` set. Never fails.
    pub fn eval_value(&self, env: &dyn Env) -> Value {
        match self.eval(env) {
            Ok(Val::Value(v)) => v.clone(),
            Ok(Val::Bool(b)) => Value::new("bool", Data::Bool(b)),
            Ok(Val::Int(i)) => Value::new("i64", Data::Int(i)),
            Ok(Val::Uint(u)) => Value::new("u64", Data::Uint(u)),
            Ok(Val::Float(f)) => Value::new("f64", Data::Float(f)),
            Ok(Val::Str(t)) => Value::new("&str", Data::Str(t.to_owned())),
            Ok(Val::Char(c)) => Value::new("char", Data::Str(c.to_string())),
            // What a failed expression would have been is not known.
            Err(e) => Value::error("?", e.to_string()),
        }
    }

    /// Evaluates to the display form (`{expr}` in a template, metric tag values):
    /// strings without quotes, numbers plain, other values in their debug form.
    pub fn eval_display(
        &self,
        env: &dyn Env,
        debug: &dyn Fn(&Value) -> String,
    ) -> Result<String, EvalError> {
        let v = self.eval(env)?;
        check_readable(v, self.source())?;
        Ok(v.display(debug))
    }

    /// Evaluates to the debug form (`{expr:?}` in a template), like Rust's `{:?}`.
    pub fn eval_debug(
        &self,
        env: &dyn Env,
        debug: &dyn Fn(&Value) -> String,
    ) -> Result<String, EvalError> {
        let v = self.eval(env)?;
        check_readable(v, self.source())?;
        Ok(v.debug(debug))
    }
}

fn check_readable(v: Val<'_>, what: &str) -> Result<(), EvalError> {
    if let Val::Value(v) = v {
        readable(v, what)?;
    }
    Ok(())
}

impl Val<'_> {
    /// The display form: strings without quotes, numbers plain, other values through `debug`.
    pub fn display(&self, debug: &dyn Fn(&Value) -> String) -> String {
        match self {
            Val::Bool(b) => b.to_string(),
            Val::Int(i) => i.to_string(),
            Val::Uint(u) => u.to_string(),
            Val::Float(f) => f.to_string(),
            Val::Str(s) => (*s).to_owned(),
            Val::Char(c) => c.to_string(),
            Val::Value(v) if v.redacted => "<redacted>".into(),
            Val::Value(v) => match &v.value {
                Data::Str(s) if v.variant.is_none() => {
                    if v.truncated {
                        format!("{s}…")
                    } else {
                        s.clone()
                    }
                }
                Data::Bool(b) => b.to_string(),
                Data::Int(i) => i.to_string(),
                Data::Uint(u) if !v.type_name.contains('*') => u.to_string(),
                // An f32 widened to f64 shows as the f32 it was (0.1, not 0.10000000149011612).
                Data::Float(f) if v.type_name == "f32" => (*f as f32).to_string(),
                Data::Float(f) => f.to_string(),
                _ => debug(v),
            },
        }
    }

    /// The debug form, like Rust's `{:?}`; captured values go through `debug`.
    pub fn debug(&self, debug: &dyn Fn(&Value) -> String) -> String {
        match self {
            Val::Bool(b) => format!("{b:?}"),
            Val::Int(i) => format!("{i:?}"),
            Val::Uint(u) => format!("{u:?}"),
            Val::Float(f) => format!("{f:?}"),
            Val::Str(s) => format!("{s:?}"),
            Val::Char(c) => format!("{c:?}"),
            Val::Value(v) => debug(v),
        }
    }
}

/// A number for arithmetic and comparison: integers exactly, or a float.
#[derive(Clone, Copy)]
enum Num {
    I(i128),
    F(f64),
}

fn readable<'a>(v: &'a Value, what: &str) -> Result<&'a Value, EvalError> {
    if let Some(reason) = &v.error {
        return Err(EvalError::Unreadable {
            what: what.to_owned(),
            reason: reason.clone(),
        });
    }
    if v.redacted {
        return Err(EvalError::Redacted(what.to_owned()));
    }
    Ok(v)
}

struct Eval<'a> {
    expr: &'a Expr,
    env: &'a dyn Env,
}

impl<'a> Eval<'a> {
    fn text(&self, node: &Node) -> String {
        self.expr.text(node).to_owned()
    }

    fn type_err(&self, msg: String) -> EvalError {
        EvalError::Type(msg)
    }

    fn truth(&self, node: &'a Node) -> Result<bool, EvalError> {
        let v = self.eval(node)?;
        match self.scalar(v, node)? {
            Val::Bool(b) => Ok(b),
            _ => Err(self.type_err(format!(
                "`{}` is not true or false: a condition must be a bool",
                self.text(node)
            ))),
        }
    }

    /// A captured scalar as a plain value; compound values stay `Val::Value`.
    fn scalar(&self, v: Val<'a>, node: &Node) -> Result<Val<'a>, EvalError> {
        let Val::Value(v) = v else {
            return Ok(v);
        };
        let v = readable(v, self.expr.text(node))?;
        Ok(match &v.value {
            Data::Bool(b) => Val::Bool(*b),
            Data::Int(i) => Val::Int(*i),
            Data::Uint(u) => Val::Uint(*u),
            Data::Float(f) => Val::Float(*f),
            Data::Str(s) if v.variant.is_none() => {
                if v.truncated {
                    return Err(EvalError::Truncated {
                        what: self.text(node),
                        detail: format!("only the first {} bytes were captured", s.len()),
                    });
                }
                Val::Str(s)
            }
            _ => Val::Value(v),
        })
    }

    fn number(&self, v: Val<'a>, node: &Node) -> Result<Num, EvalError> {
        match self.scalar(v, node)? {
            Val::Int(i) => Ok(Num::I(i as i128)),
            Val::Uint(u) => Ok(Num::I(u as i128)),
            Val::Float(f) => Ok(Num::F(f)),
            Val::Value(v) if v.value == Data::Null => Err(EvalError::Null(self.text(node))),
            _ => Err(self.type_err(format!("`{}` is not a number", self.text(node)))),
        }
    }

    fn text_of(&self, v: Val<'a>, node: &Node) -> Result<Cow<'a, str>, EvalError> {
        match self.scalar(v, node)? {
            Val::Str(s) => Ok(Cow::Borrowed(s)),
            Val::Char(c) => Ok(Cow::Owned(c.to_string())),
            Val::Value(v) if v.value == Data::Null => Err(EvalError::Null(self.text(node))),
            _ => Err(self.type_err(format!("`{}` is not a string", self.text(node)))),
        }
    }

    fn eval(&self, node: &'a Node) -> Result<Val<'a>, EvalError> {
        match &node.kind {
            NodeKind::Lit(l) => Ok(match l {
                Lit::Bool(b) => Val::Bool(*b),
                Lit::Int(i) => Val::Int(*i),
                Lit::Uint(u) => Val::Uint(*u),
                Lit::Float(f) => Val::Float(*f),
                Lit::Str(s) => Val::Str(s),
                Lit::Char(c) => Val::Char(*c),
            }),
            NodeKind::Name(n) => match self.env.var(n) {
                Some(v) => Ok(Val::Value(v)),
                None if n == "thread" => Ok(Val::Str(self.env.thread())),
                None if n == "hit_count" => Ok(Val::Uint(self.env.hit_count())),
                None => Err(EvalError::UnknownVariable(n.clone())),
            },
            NodeKind::Path(_) => Err(self.type_err(format!(
                "`{}` is a variant: compare a value with it or use matches(x, {})",
                self.text(node),
                self.text(node)
            ))),
            NodeKind::Field(base, field) => {
                let b = self.eval(base)?;
                self.field(b, base, field).map(Val::Value)
            }
            NodeKind::Index(base, index) => {
                let b = self.eval(base)?;
                let i = self.eval(index)?;
                self.index(b, base, i, index).map(Val::Value)
            }
            NodeKind::Call(b, recv, args) => self.call(*b, recv, args),
            NodeKind::Matches(value, variant) => {
                let v = self.eval(value)?;
                self.variant_test(v, value, variant.as_variant().unwrap_or(""))
                    .map(Val::Bool)
            }
            NodeKind::Unary(op, inner) => match op {
                UnOp::Deref => self.eval(inner),
                UnOp::Not => Ok(Val::Bool(!self.truth(inner)?)),
                UnOp::Neg => {
                    let v = self.eval(inner)?;
                    match self.number(v, inner)? {
                        Num::F(f) => Ok(Val::Float(-f)),
                        Num::I(i) => fit(-i).ok_or_else(|| EvalError::Overflow(self.text(node))),
                    }
                }
            },
            NodeKind::Binary(op, l, r) => self.binary(node, *op, l, r),
        }
    }

    /// A value's payload: for enums, the variant's fields.
    fn compound(&self, v: Val<'a>, node: &Node) -> Result<&'a Value, EvalError> {
        match self.scalar(v, node)? {
            Val::Value(v) => {
                if v.value == Data::Null {
                    return Err(match v.variant.as_deref() {
                        Some(var) if var != "None" => self.type_err(format!(
                            "`{}` is `{var}`, which holds nothing",
                            self.text(node)
                        )),
                        _ => EvalError::Null(self.text(node)),
                    });
                }
                Ok(v)
            }
            _ => Err(self.type_err(format!(
                "`{}` is a plain value: it has no fields or elements",
                self.text(node)
            ))),
        }
    }

    fn field(&self, b: Val<'a>, base: &Node, field: &str) -> Result<&'a Value, EvalError> {
        let v = self.compound(b, base)?;
        let found = match &v.value {
            Data::Map(fields) => fields.iter().find(|(k, _)| k == field).map(|(_, v)| v),
            Data::List(items) => field.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        };
        match found {
            Some(f) => Ok(f),
            None if v.truncated => Err(EvalError::Truncated {
                what: format!("{}.{field}", self.text(base)),
                detail: "the field was not captured".into(),
            }),
            None => Err(EvalError::NoField {
                what: self.text(base),
                field: field.to_owned(),
            }),
        }
    }

    fn index(
        &self,
        b: Val<'a>,
        base: &Node,
        i: Val<'a>,
        index: &Node,
    ) -> Result<&'a Value, EvalError> {
        let v = self.compound(b, base)?;
        match &v.value {
            Data::List(items) => {
                let Num::I(n) = self.number(i, index)? else {
                    return Err(
                        self.type_err(format!("index `{}` is not an integer", self.text(index)))
                    );
                };
                match usize::try_from(n).ok().and_then(|n| items.get(n)) {
                    Some(item) => Ok(item),
                    None if v.truncated && n >= 0 => Err(EvalError::Truncated {
                        what: self.text(base),
                        detail: format!("only {} elements were captured", items.len()),
                    }),
                    None => Err(EvalError::OutOfBounds {
                        what: self.text(base),
                        index: n,
                        len: items.len(),
                    }),
                }
            }
            Data::Map(entries) => {
                let key = self.key(i, index)?;
                match entries.iter().find(|(k, _)| *k == key) {
                    Some((_, v)) => Ok(v),
                    None if v.truncated => Err(EvalError::Truncated {
                        what: self.text(base),
                        detail: format!("only {} entries were captured", entries.len()),
                    }),
                    None => Err(EvalError::NoKey {
                        what: self.text(base),
                        key: key.into_owned(),
                    }),
                }
            }
            _ => Err(self.type_err(format!("`{}` cannot be indexed", self.text(base)))),
        }
    }

    /// A map key as the string captured maps are keyed by.
    fn key(&self, v: Val<'a>, node: &Node) -> Result<Cow<'a, str>, EvalError> {
        match self.scalar(v, node)? {
            Val::Int(i) => Ok(Cow::Owned(i.to_string())),
            Val::Uint(u) => Ok(Cow::Owned(u.to_string())),
            Val::Bool(b) => Ok(Cow::Owned(b.to_string())),
            other => self.text_of(other, node),
        }
    }

    fn call(&self, b: Builtin, recv: &'a Node, args: &'a [Node]) -> Result<Val<'a>, EvalError> {
        let r = self.eval(recv)?;
        let r = self.scalar(r, recv)?;
        let truncated = |detail: &str| EvalError::Truncated {
            what: self.text(recv),
            detail: detail.to_owned(),
        };
        match b {
            Builtin::Len => match r {
                Val::Str(s) => Ok(Val::Uint(s.len() as u64)),
                Val::Value(v) => match &v.value {
                    _ if v.truncated => Err(truncated("its length is unknown")),
                    Data::List(items) => Ok(Val::Uint(items.len() as u64)),
                    Data::Map(entries) if v.variant.is_none() => {
                        Ok(Val::Uint(entries.len() as u64))
                    }
                    Data::Null => Err(EvalError::Null(self.text(recv))),
                    _ => Err(self.type_err(format!("`{}` has no length", self.text(recv)))),
                },
                _ => Err(self.type_err(format!("`{}` has no length", self.text(recv)))),
            },
            Builtin::Contains | Builtin::StartsWith | Builtin::EndsWith => {
                let arg_node = args
                    .first()
                    .ok_or_else(|| self.type_err(format!("`{}` needs an argument", b.name())))?;
                let arg = self.eval(arg_node)?;
                if let Val::Value(v) = r
                    && b == Builtin::Contains
                {
                    return self.contains(v, recv, arg, arg_node).map(Val::Bool);
                }
                let hay = self.text_of(r, recv)?;
                let needle = self.text_of(arg, arg_node)?;
                Ok(Val::Bool(match b {
                    Builtin::Contains => hay.contains(needle.as_ref()),
                    Builtin::StartsWith => hay.starts_with(needle.as_ref()),
                    _ => hay.ends_with(needle.as_ref()),
                }))
            }
            Builtin::IsSome | Builtin::IsNone | Builtin::IsOk | Builtin::IsErr => {
                let Val::Value(v) = r else {
                    return Err(self.type_err(format!(
                        "`{}` is not an Option or a Result",
                        self.text(recv)
                    )));
                };
                let want = match b {
                    Builtin::IsSome => "Some",
                    Builtin::IsNone => "None",
                    Builtin::IsOk => "Ok",
                    _ => "Err",
                };
                match v.variant.as_deref() {
                    Some(var) => Ok(Val::Bool(var == want)),
                    None => Err(self.type_err(format!(
                        "`{}` is not an Option or a Result (`{}`)",
                        self.text(recv),
                        v.type_name
                    ))),
                }
            }
        }
    }

    fn contains(
        &self,
        v: &'a Value,
        recv: &Node,
        arg: Val<'a>,
        arg_node: &Node,
    ) -> Result<bool, EvalError> {
        let found = match &v.value {
            Data::List(items) => {
                let mut found = false;
                for item in items {
                    if self.equal(Val::Value(item), recv, arg, arg_node)? {
                        found = true;
                        break;
                    }
                }
                found
            }
            Data::Map(entries) if v.variant.is_none() => {
                let key = self.key(arg, arg_node)?;
                entries.iter().any(|(k, _)| *k == key)
            }
            Data::Null => return Err(EvalError::Null(self.text(recv))),
            _ => {
                return Err(self.type_err(format!(
                    "`{}` is not a string, list or map",
                    self.text(recv)
                )));
            }
        };
        if !found && v.truncated {
            return Err(EvalError::Truncated {
                what: self.text(recv),
                detail: "the value may be among the elements not captured".into(),
            });
        }
        Ok(found)
    }

    /// Whether `v` holds the variant `name` (an enum's variant, or a C-like enum's name).
    fn variant_test(&self, v: Val<'a>, node: &Node, name: &str) -> Result<bool, EvalError> {
        let v = match v {
            Val::Value(v) => readable(v, self.expr.text(node))?,
            _ => {
                return Err(self.type_err(format!(
                    "`{}` is not an enum: it has no variant `{name}`",
                    self.text(node)
                )));
            }
        };
        match (&v.variant, &v.value) {
            (Some(var), _) => Ok(var == name),
            (None, Data::Str(s)) => Ok(s == name),
            _ => Err(self.type_err(format!(
                "`{}` is not an enum: it has no variant `{name}`",
                self.text(node)
            ))),
        }
    }

    fn variant_operand(&self, node: &'a Node) -> Option<&'a str> {
        match &node.kind {
            NodeKind::Path(_) => node.as_variant(),
            NodeKind::Name(n) if self.env.var(n).is_none() => node.as_variant(),
            _ => None,
        }
    }

    fn binary(
        &self,
        node: &'a Node,
        op: BinOp,
        l: &'a Node,
        r: &'a Node,
    ) -> Result<Val<'a>, EvalError> {
        match op {
            BinOp::And => return Ok(Val::Bool(self.truth(l)? && self.truth(r)?)),
            BinOp::Or => return Ok(Val::Bool(self.truth(l)? || self.truth(r)?)),
            BinOp::Eq | BinOp::Ne => {
                let test = if let Some(var) = self.variant_operand(r) {
                    Some(self.variant_test(self.eval(l)?, l, var)?)
                } else if let Some(var) = self.variant_operand(l) {
                    Some(self.variant_test(self.eval(r)?, r, var)?)
                } else {
                    None
                };
                if let Some(t) = test {
                    return Ok(Val::Bool(t == (op == BinOp::Eq)));
                }
            }
            _ => {}
        }
        let (lv, rv) = (self.eval(l)?, self.eval(r)?);
        match op {
            BinOp::Eq => self.equal(lv, l, rv, r).map(Val::Bool),
            BinOp::Ne => self.equal(lv, l, rv, r).map(|b| Val::Bool(!b)),
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                let ord = self.order(lv, l, rv, r)?;
                Ok(Val::Bool(match ord {
                    None => false, // NaN compares false, as in Rust
                    Some(o) => match op {
                        BinOp::Lt => o == Ordering::Less,
                        BinOp::Le => o != Ordering::Greater,
                        BinOp::Gt => o == Ordering::Greater,
                        _ => o != Ordering::Less,
                    },
                }))
            }
            _ => self.arith(node, op, lv, l, rv, r),
        }
    }

    fn equal(&self, lv: Val<'a>, l: &Node, rv: Val<'a>, r: &Node) -> Result<bool, EvalError> {
        let (a, b) = (self.scalar(lv, l)?, self.scalar(rv, r)?);
        match (a, b) {
            (Val::Bool(x), Val::Bool(y)) => Ok(x == y),
            (Val::Value(x), Val::Value(y))
                if x.variant.is_some()
                    && y.variant.is_some()
                    && x.value == Data::Null
                    && y.value == Data::Null =>
            {
                Ok(x.variant == y.variant)
            }
            (Val::Value(x), _) if x.value == Data::Null && x.variant.is_none() => {
                Err(EvalError::Null(self.text(l)))
            }
            (_, Val::Value(y)) if y.value == Data::Null && y.variant.is_none() => {
                Err(EvalError::Null(self.text(r)))
            }
            _ => Ok(self.order(a, l, b, r)? == Some(Ordering::Equal)),
        }
    }

    fn order(
        &self,
        lv: Val<'a>,
        l: &Node,
        rv: Val<'a>,
        r: &Node,
    ) -> Result<Option<Ordering>, EvalError> {
        let (a, b) = (self.scalar(lv, l)?, self.scalar(rv, r)?);
        let is_num = |v: &Val| matches!(v, Val::Int(_) | Val::Uint(_) | Val::Float(_));
        let is_text = |v: &Val| matches!(v, Val::Str(_) | Val::Char(_));
        if is_num(&a) && is_num(&b) {
            let (x, y) = (self.number(a, l)?, self.number(b, r)?);
            return Ok(num_cmp(x, y));
        }
        if is_text(&a) && is_text(&b) {
            let (x, y) = (self.text_of(a, l)?, self.text_of(b, r)?);
            return Ok(Some(x.as_ref().cmp(y.as_ref())));
        }
        for (v, n) in [(a, l), (b, r)] {
            if let Val::Value(v) = v
                && v.value == Data::Null
            {
                return Err(EvalError::Null(self.text(n)));
            }
        }
        let kind = |v: &Val| match v {
            Val::Bool(_) => "a bool",
            Val::Int(_) | Val::Uint(_) | Val::Float(_) => "a number",
            Val::Str(_) | Val::Char(_) => "a string",
            Val::Value(_) => "a compound value",
        };
        Err(self.type_err(format!(
            "cannot compare {} with {}: `{}` and `{}` (compare their fields instead)",
            kind(&a),
            kind(&b),
            self.text(l),
            self.text(r)
        )))
    }

    fn arith(
        &self,
        node: &Node,
        op: BinOp,
        lv: Val<'a>,
        l: &Node,
        rv: Val<'a>,
        r: &Node,
    ) -> Result<Val<'a>, EvalError> {
        let (x, y) = (self.number(lv, l)?, self.number(rv, r)?);
        let what = || self.text(node);
        match (x, y) {
            (Num::I(a), Num::I(b)) => {
                let v = match op {
                    BinOp::Add => a.checked_add(b),
                    BinOp::Sub => a.checked_sub(b),
                    BinOp::Mul => a.checked_mul(b),
                    BinOp::Div | BinOp::Rem if b == 0 => {
                        return Err(EvalError::DivisionByZero(what()));
                    }
                    BinOp::Div => a.checked_div(b),
                    _ => a.checked_rem(b),
                };
                v.and_then(fit).ok_or_else(|| EvalError::Overflow(what()))
            }
            _ => {
                let (a, b) = (as_f64(x), as_f64(y));
                if matches!(op, BinOp::Div | BinOp::Rem) && b == 0.0 {
                    return Err(EvalError::DivisionByZero(what()));
                }
                Ok(Val::Float(match op {
                    BinOp::Add => a + b,
                    BinOp::Sub => a - b,
                    BinOp::Mul => a * b,
                    BinOp::Div => a / b,
                    _ => a % b,
                }))
            }
        }
    }
}

fn as_f64(n: Num) -> f64 {
    match n {
        Num::I(i) => i as f64,
        Num::F(f) => f,
    }
}

/// An exact integer result as an `i64` if it fits, else a `u64`, else nothing (overflow).
fn fit<'a>(v: i128) -> Option<Val<'a>> {
    if let Ok(i) = i64::try_from(v) {
        Some(Val::Int(i))
    } else {
        u64::try_from(v).ok().map(Val::Uint)
    }
}

/// Compares two numbers exactly (no rounding of large integers to floats).
fn num_cmp(a: Num, b: Num) -> Option<Ordering> {
    match (a, b) {
        (Num::I(x), Num::I(y)) => Some(x.cmp(&y)),
        (Num::F(x), Num::F(y)) => x.partial_cmp(&y),
        (Num::I(x), Num::F(y)) => int_float_cmp(x, y),
        (Num::F(x), Num::I(y)) => int_float_cmp(y, x).map(Ordering::reverse),
    }
}

/// `i` compared with `f`, exactly.
fn int_float_cmp(i: i128, f: f64) -> Option<Ordering> {
    if f.is_nan() {
        return None;
    }
    // Beyond ±2^100 no 64-bit integer comes close (integers here are at most 2^64).
    const FAR: f64 = 1.2676506002282294e30; // 2^100
    if f >= FAR {
        return Some(Ordering::Less);
    }
    if f <= -FAR {
        return Some(Ordering::Greater);
    }
    let t = f.trunc();
    // |t| < 2^100, an integer: the conversion is exact.
    let ti = t as i128;
    match i.cmp(&ti) {
        Ordering::Equal => 0.0f64.partial_cmp(&(f - t)),
        o => Some(o),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) struct Vars(pub Vec<(String, Value)>);
    impl Env for Vars {
        fn var(&self, name: &str) -> Option<&Value> {
            self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
        }
        fn thread(&self) -> &str {
            "worker-1"
        }
        fn hit_count(&self) -> u64 {
            7
        }
    }

    fn v(t: &str, d: Data) -> Value {
        Value::new(t, d)
    }

    fn variant(t: &str, name: &str, d: Data) -> Value {
        Value {
            variant: Some(name.into()),
            ..v(t, d)
        }
    }

    pub(crate) fn env() -> Vars {
        let order = v(
            "shop::Order",
            Data::Map(vec![
                ("id".into(), v("u64", Data::Uint(u64::MAX))),
                ("total".into(), v("i64", Data::Int(12_000))),
                ("ratio".into(), v("f64", Data::Float(0.5))),
                ("small".into(), v("f32", Data::Float(0.1f32 as f64))),
                (
                    "items".into(),
                    v(
                        "Vec<u32>",
                        Data::List(vec![v("u32", Data::Uint(3)), v("u32", Data::Uint(4))]),
                    ),
                ),
                ("kind".into(), variant("Kind", "Credit", Data::Null)),
                ("level".into(), v("Level", Data::Str("High".into()))),
                (
                    "note".into(),
                    variant(
                        "Option<String>",
                        "Some",
                        Data::List(vec![v("String", Data::Str("gift".into()))]),
                    ),
                ),
                ("coupon".into(), variant("Option<&str>", "None", Data::Null)),
                (
                    "tags".into(),
                    v(
                        "HashMap<String, String>",
                        Data::Map(vec![("env".into(), v("String", Data::Str("prod".into())))]),
                    ),
                ),
                (
                    "res".into(),
                    variant("Result<u8, E>", "Err", Data::List(vec![v("E", Data::Null)])),
                ),
            ]),
        );
        let user = v(
            "User",
            Data::Map(vec![
                ("name".into(), v("&str", Data::Str("ann".into()))),
                ("country".into(), v("String", Data::Str("DE".into()))),
                ("initial".into(), v("char", Data::Str("a".into()))),
                (
                    "password".into(),
                    Value {
                        redacted: true,
                        ..v("String", Data::Str("<redacted>".into()))
                    },
                ),
                ("parent".into(), v("*const User", Data::Null)),
                (
                    "pair".into(),
                    v(
                        "(i32, bool)",
                        Data::List(vec![v("i32", Data::Int(-1)), v("bool", Data::Bool(true))]),
                    ),
                ),
            ]),
        );
        let mut long = v("String", Data::Str("abc".into()));
        long.truncated = true;
        let mut big = v(
            "Vec<i32>",
            Data::List(vec![v("i32", Data::Int(1)), v("i32", Data::Int(2))]),
        );
        big.truncated = true;
        Vars(vec![
            ("order".into(), order),
            ("user".into(), user),
            ("gone".into(), Value::error("u32", "optimized out")),
            ("long".into(), long),
            ("big".into(), big),
            ("zero".into(), v("i32", Data::Int(0))),
            ("nan".into(), v("f64", Data::Float(f64::NAN))),
            ("min".into(), v("i64", Data::Int(i64::MIN))),
        ])
    }

    fn cond(src: &str) -> Result<bool, String> {
        Expr::parse(src)
            .unwrap()
            .eval_condition(&env())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn watch_values_are_captured_values_or_typed_results_or_errors() {
        let env = env();
        let value = |src: &str| Expr::parse(src).unwrap().eval_value(&env);
        let user = env.var("user").unwrap();
        assert_eq!(value("user.name"), *user.field("name").unwrap());
        assert_eq!(value("user.pair"), *user.field("pair").unwrap());
        assert_eq!(value("order.total * 2"), v("i64", Data::Int(24_000)));
        assert_eq!(value("len(order.items)"), v("u64", Data::Uint(2)));
        assert_eq!(value("order.ratio / 2.0"), v("f64", Data::Float(0.25)));
        assert_eq!(
            value("user.name.starts_with(\"a\")"),
            v("bool", Data::Bool(true))
        );
        assert_eq!(value("thread"), v("&str", Data::Str("worker-1".into())));
        assert_eq!(value("'x'"), v("char", Data::Str("x".into())));
        // A secret stays redacted, and nothing can be computed from it.
        let secret = value("user.password");
        assert!(secret.redacted, "{secret:?}");
        assert_eq!(
            value("len(user.password)"),
            Value::error(
                "?",
                "`user.password` is redacted: expressions cannot read redacted values"
            )
        );
        assert_eq!(
            value("order.total / zero"),
            Value::error("?", "division by zero in `order.total / zero`")
        );
        assert_eq!(value("gone"), Value::error("u32", "optimized out"));
        assert_eq!(
            value("gone + 1"),
            Value::error("?", "`gone` cannot be read: optimized out")
        );
        assert_eq!(
            value("user.parent.name"),
            Value::error("?", "`user.parent` is null (None or a null pointer)")
        );
        assert_eq!(
            value("nobody"),
            Value::error("?", "unknown variable `nobody` at this hit")
        );
    }

    #[test]
    fn conditions_evaluate_exactly() {
        let truths = [
            "order.total > 10000 && user.country == \"DE\"",
            "order.total == 12000u64",
            "order.id == 18446744073709551615",
            "order.id > 9223372036854775807",
            "order.id > order.total",
            "-1 < order.id",
            "order.ratio == 0.5 && order.ratio < 1 && 1 > order.ratio",
            "order.id < 1e30 && order.id > 1.8e19",
            "9007199254740993 > 9007199254740992.0",
            "order.items[1] == 4 && order.items.len() == 2 && len(order.items) == 2",
            "order.items.contains(3) && !order.items.contains(5)",
            "order.kind == Kind::Credit && order.kind != Debit && matches(order.kind, Credit)",
            "order.level == Level::High && order.level != Low",
            "order.note.is_some() && !order.note.is_none() && order.note.0 == \"gift\"",
            "order.coupon.is_none() && order.coupon == None",
            "order.res.is_err() && !order.res.is_ok()",
            "order.tags[\"env\"] == \"prod\" && order.tags.contains(\"env\")",
            "user.name.starts_with(\"an\") && user.name.ends_with('n') && user.name.contains(\"x\") == false",
            "user.initial == 'a' && user.initial < \"b\"",
            "user.pair.0 == -1 && user.pair.1",
            "*user.name == \"ann\"",
            "thread == \"worker-1\" && hit_count == 7 && hit_count % 7 == 0",
            "(order.total - 12001) * 2 == -2",
            "order.total / 7 == 1714 && order.total % 7 == 2",
            "7.0 / 2 == 3.5",
            "nan != nan && !(nan < 1) && !(nan >= 1)",
            "-min == 9223372036854775808",
            "order.id - order.id == 0",
            "user.name.len() == 3",
        ];
        for t in truths {
            assert_eq!(cond(t), Ok(true), "{t}");
        }
        let falses = [
            "order.total < 10000",
            "order.kind == Debit",
            "user.country != \"DE\"",
            "order.items.contains(9)",
        ];
        for f in falses {
            assert_eq!(cond(f), Ok(false), "{f}");
        }
    }

    #[test]
    fn failures_say_why() {
        let table = [
            ("gone > 1", "`gone` cannot be read: optimized out"),
            (
                "user.password == \"x\"",
                "`user.password` is redacted: expressions cannot read redacted values",
            ),
            (
                "user.parent.name == \"x\"",
                "`user.parent` is null (None or a null pointer)",
            ),
            (
                "order.coupon.0 == \"x\"",
                "`order.coupon` is null (None or a null pointer)",
            ),
            (
                "order.total / zero > 1",
                "division by zero in `order.total / zero`",
            ),
            (
                "order.total % 0 > 1",
                "division by zero in `order.total % 0`",
            ),
            (
                "order.ratio / 0 > 1",
                "division by zero in `order.ratio / 0`",
            ),
            (
                "order.id + order.id > 1",
                "integer overflow in `order.id + order.id`",
            ),
            (
                "order.id * order.id > 1",
                "integer overflow in `order.id * order.id`",
            ),
            ("min * 2 * 1 < 0", "integer overflow in `min * 2`"),
            ("min - 1 < min", "integer overflow in `min - 1`"),
            (
                "order.items[2] == 1",
                "index 2 is out of bounds: `order.items` has 2 elements",
            ),
            (
                "order.items[-1] == 1",
                "index -1 is out of bounds: `order.items` has 2 elements",
            ),
            (
                "big[5] == 1",
                "`big` was cut short by a capture limit (only 2 elements were captured): raise the rule's limits",
            ),
            (
                "big.len() > 1",
                "`big` was cut short by a capture limit (its length is unknown): raise the rule's limits",
            ),
            (
                "big.contains(9)",
                "`big` was cut short by a capture limit (the value may be among the elements not captured): raise the rule's limits",
            ),
            (
                "long == \"abc\"",
                "`long` was cut short by a capture limit (only the first 3 bytes were captured): raise the rule's limits",
            ),
            (
                "order.tags[\"x\"] == \"y\"",
                "`order.tags` has no key \"x\"",
            ),
            ("user.nme == \"x\"", "`user` has no field `nme`"),
            ("nobody > 1", "unknown variable `nobody` at this hit"),
            (
                "order.total",
                "`order.total` is not true or false: a condition must be a bool",
            ),
            (
                "user.name > 1",
                "cannot compare a string with a number: `user.name` and `1` (compare their fields instead)",
            ),
            (
                "user == user",
                "cannot compare a compound value with a compound value: `user` and `user` (compare their fields instead)",
            ),
            (
                "order.total.x == 1",
                "`order.total` is a plain value: it has no fields or elements",
            ),
            (
                "user.name.is_some()",
                "`user.name` is not an Option or a Result",
            ),
            (
                "order.total == Credit",
                "`order.total` is not an enum: it has no variant `Credit`",
            ),
        ];
        for (src, want) in table {
            assert_eq!(cond(src), Err(want.to_owned()), "{src}");
        }
        // Short-circuit: the right side is not evaluated when the left decides.
        assert_eq!(cond("false && gone > 1"), Ok(false));
        assert_eq!(cond("true || gone > 1"), Ok(true));
    }

    #[test]
    fn numbers_and_display_forms() {
        let env = env();
        let num = |s: &str| Expr::parse(s).unwrap().eval_number(&env);
        assert_eq!(num("order.total * 2"), Ok(24000.0));
        assert_eq!(num("order.ratio"), Ok(0.5));
        assert_eq!(num("order.items.len() > 1"), Ok(1.0));
        assert!(num("user.name").is_err());
        let dbg = |v: &Value| format!("<{}>", v.type_name);
        let show = |s: &str| Expr::parse(s).unwrap().eval_display(&env, &dbg);
        let debug = |s: &str| Expr::parse(s).unwrap().eval_debug(&env, &dbg);
        assert_eq!(show("user.name").as_deref(), Ok("ann"));
        assert_eq!(show("order.total").as_deref(), Ok("12000"));
        assert_eq!(show("order.ratio").as_deref(), Ok("0.5"));
        assert_eq!(show("order.small").as_deref(), Ok("0.1"));
        assert_eq!(show("order.level").as_deref(), Ok("High"));
        assert_eq!(show("order.items").as_deref(), Ok("<Vec<u32>>"));
        assert_eq!(show("long").as_deref(), Ok("abc…"));
        assert_eq!(show("order.total + 1").as_deref(), Ok("12001"));
        assert_eq!(show("\"x\"").as_deref(), Ok("x"));
        assert_eq!(debug("\"x\"").as_deref(), Ok("\"x\""));
        assert_eq!(debug("1.0").as_deref(), Ok("1.0"));
        assert_eq!(debug("user.name").as_deref(), Ok("<&str>"));
        assert!(show("gone").is_err());
        assert!(show("user.password").is_err());
    }

    #[test]
    fn exact_int_float_comparison() {
        use std::cmp::Ordering::*;
        assert_eq!(
            int_float_cmp(9007199254740993, 9007199254740992.0),
            Some(Greater)
        );
        assert_eq!(
            int_float_cmp(u64::MAX as i128, 18446744073709551616.0),
            Some(Less)
        );
        assert_eq!(int_float_cmp(-1, -0.5), Some(Less));
        assert_eq!(int_float_cmp(0, -0.5), Some(Greater));
        assert_eq!(int_float_cmp(3, 3.0), Some(Equal));
        assert_eq!(int_float_cmp(3, f64::INFINITY), Some(Less));
        assert_eq!(int_float_cmp(3, f64::NEG_INFINITY), Some(Greater));
        assert_eq!(int_float_cmp(3, f64::NAN), None);
    }

    pub(crate) mod random {
        use super::*;
        use proptest::prelude::*;

        fn value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Data::Null),
                any::<bool>().prop_map(Data::Bool),
                any::<i64>().prop_map(Data::Int),
                any::<u64>().prop_map(Data::Uint),
                any::<f64>().prop_map(Data::Float),
                "[a-c]{0,3}".prop_map(Data::Str),
            ]
            .prop_map(|d| Value::new("t", d));
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4)
                        .prop_map(|l| Value::new("l", Data::List(l))),
                    prop::collection::vec(("[a-c0-2]", inner), 0..4)
                        .prop_map(|m| Value::new("m", Data::Map(m))),
                ]
            })
            .prop_flat_map(|v| {
                (
                    Just(v),
                    any::<bool>(),
                    any::<bool>(),
                    prop::option::of("Some|None|Ok|Err|A"),
                )
            })
            .prop_map(|(mut v, t, r, var)| {
                v.truncated = t;
                v.redacted = r && t; // rarer
                v.variant = var;
                v
            })
        }

        pub(crate) fn expr() -> impl Strategy<Value = String> {
            let leaf = prop_oneof![
                Just("a".to_owned()),
                Just("b".to_owned()),
                Just("a.a".to_owned()),
                Just("b[0]".to_owned()),
                Just("a.0.b".to_owned()),
                Just("a[\"c\"]".to_owned()),
                any::<i64>().prop_map(|i| i.to_string()),
                any::<u64>().prop_map(|i| format!("{i}u64")),
                Just("1.5".to_owned()),
                Just("\"ab\"".to_owned()),
                Just("'a'".to_owned()),
                Just("true".to_owned()),
                Just("hit_count".to_owned()),
                Just("thread".to_owned()),
                Just("Some".to_owned()),
                Just("K::A".to_owned()),
            ];
            leaf.prop_recursive(4, 32, 2, |inner| {
                let ops = prop::sample::select(vec![
                    "==", "!=", "<", "<=", ">", ">=", "&&", "||", "+", "-", "*", "/", "%",
                ]);
                let methods = prop::sample::select(vec![
                    "len()",
                    "is_some()",
                    "is_none()",
                    "is_ok()",
                    "is_err()",
                ]);
                let arg_methods =
                    prop::sample::select(vec!["contains", "starts_with", "ends_with"]);
                prop_oneof![
                    (inner.clone(), ops, inner.clone())
                        .prop_map(|(a, o, b)| format!("({a}) {o} ({b})")),
                    inner.clone().prop_map(|a| format!("!({a})")),
                    inner.clone().prop_map(|a| format!("-({a})")),
                    (inner.clone(), methods).prop_map(|(a, m)| format!("({a}).{m}")),
                    (inner.clone(), arg_methods, inner.clone())
                        .prop_map(|(a, m, b)| format!("({a}).{m}({b})")),
                    (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a})[{b}]")),
                    inner.clone().prop_map(|a| format!("matches({a}, A)")),
                ]
            })
        }

        proptest! {
            #[test]
            fn random_expressions_over_random_values_never_panic(
                src in expr(), a in value(), b in value()
            ) {
                if let Ok(e) = Expr::parse(&src) {
                    let env = Vars(vec![("a".into(), a), ("b".into(), b)]);
                    let _ = e.eval_condition(&env);
                    let _ = e.eval_number(&env);
                    let _ = e.eval_display(&env, &|v: &Value| v.type_name.clone());
                }
            }
        }
    }
}
