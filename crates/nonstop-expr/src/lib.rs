//! The expression language of nonstop: conditions, log-template holes and metric values.
//!
//! # Overview
//! - [`Expr`]: one expression, parsed by [`Expr::parse`] (the server's syntax-only check),
//!   checked against the variables in scope by [`Expr::check`] (a [`Scope`] of [`Ty`]s),
//!   evaluated over captured [`Value`](nonstop_model::Value)s by [`Expr::eval`] (an [`Env`]),
//!   or into a value of its own by [`Expr::eval_value`] (a snapshot's watch expressions).
//! - [`Template`]: a log message with `{expr}` and `{expr:?}` holes.
//! - [`filter::compile`]: turns a condition into a [`nonstop_capture::filter::Filter`] that the
//!   probe engine evaluates in the trap handler, before the capture, without allocating.
//!
//! **Read-only by construction**: the syntax tree has no node for assignment or for
//! calling the program; the built-ins (`len`, `contains`, `starts_with`, `ends_with`,
//! `is_some`, `is_none`, `is_ok`, `is_err`, `matches`, `thread`, `hit_count`) read
//! captured values only.
//!
//! # Example
//! ```
//! use nonstop_expr::{Env, Expr, Scope, Ty};
//! use nonstop_model::{Data, Value};
//!
//! let cond = Expr::parse("order.total > 10000 && thread == \"worker-1\"").unwrap();
//!
//! let scope: Vec<(String, Ty)> = vec![(
//!     "order".into(),
//!     Ty::Struct { name: "Order".into(), fields: vec![("total".into(), Ty::Uint)] },
//! )];
//! cond.check_condition(&scope).unwrap();
//!
//! struct Hit(Value);
//! impl Env for Hit {
//!     fn var(&self, name: &str) -> Option<&Value> { (name == "order").then_some(&self.0) }
//!     fn thread(&self) -> &str { "worker-1" }
//!     fn hit_count(&self) -> u64 { 1 }
//! }
//! let order = Value::new("Order", Data::Map(vec![("total".into(), Value::new("u64", Data::Uint(12000)))]));
//! assert_eq!(cond.eval_condition(&Hit(order)), Ok(true));
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod check;
pub mod eval;
pub mod filter;
pub mod syntax;
pub mod template;

pub use check::{CheckError, Scope, Ty};
pub use eval::{Env, EvalError, Val};
pub use syntax::{Expr, ParseError};
pub use template::{Rendered, Template};
