//! Compiling a condition into a [`Filter`] the probe engine evaluates before the capture.
//!
//! The agent compiles each rule's condition with a [`PathResolver`] built from debug info
//! at the probe address. When every path the condition reads can be reached from a
//! variable's location through fixed offsets and pointers, [`compile`] returns a
//! [`Filter`] and a false condition costs the trap plus those few reads. Otherwise it
//! returns [`NotFilterable`] with the reason, and the agent evaluates the condition after
//! the capture with [`Expr::eval_condition`](crate::Expr::eval_condition): correct, slower.
//!
//! Check the condition ([`Expr::check_condition`](crate::Expr::check_condition)) first:
//! compiling does not type-check, and a mistyped filter only ever answers `Error`.

use crate::syntax::{BinOp, Builtin, Expr, Lit, Node, NodeKind, UnOp};
use nonstop_capture::filter::{
    Filter, FilterRead, MAX_CODE, MAX_READS, MAX_STACK, MAX_STR, MAX_STR_READS, MAX_STRINGS, Op,
    ReadKind,
};

/// Maps the paths a condition reads to [`FilterRead`]s. The agent implements it over
/// DWARF: variable locations at the probe address and type layouts.
pub trait PathResolver {
    /// The read for `path`: a variable then its fields (`["order", "customer", "tier"]`),
    /// tuple fields as `"0"`, constant indexes into arrays as `"[2]"`, and a final
    /// `"len()"` for the length of a `Vec`/slice/`String` (an integer read of the length
    /// field). `None` when the path cannot be read this way (a multi-piece variable, a
    /// `HashMap` lookup, a dynamic index…).
    fn read(&self, path: &[String]) -> Option<FilterRead>;

    /// For the enum at `path`: the read of its discriminant and the value that means
    /// `variant` (`"Credit"`, `"Some"`, `"None"`, `"Ok"`, `"Err"`). `None` when a single
    /// equality cannot decide it (e.g. the dataful variant of a niche-optimised enum).
    fn variant(&self, path: &[String], variant: &str) -> Option<(FilterRead, u64)>;
}

/// Why a condition cannot run in the trap handler; the agent then evaluates it after the
/// capture, which is correct but costs a capture per hit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("condition evaluated after the capture (slower): {reason}")]
pub struct NotFilterable {
    /// What part of the condition is the obstacle.
    pub reason: String,
}

/// Compiles the condition `expr` into a [`Filter`].
pub fn compile(expr: &Expr, resolver: &dyn PathResolver) -> Result<Filter, NotFilterable> {
    let mut c = Compiler {
        expr,
        resolver,
        keys: Vec::new(),
        depth: 0,
        max_depth: 0,
        filter: Filter::default(),
    };
    c.node(expr.root())?;
    Ok(c.filter)
}

struct Compiler<'a> {
    expr: &'a Expr,
    resolver: &'a dyn PathResolver,
    /// One key per read, to read each path once.
    keys: Vec<String>,
    /// Values on the stack after the ops emitted so far, and the most there were.
    depth: usize,
    max_depth: usize,
    filter: Filter,
}

fn no(reason: String) -> NotFilterable {
    NotFilterable { reason }
}

/// The path a node reads: `order.items[0].price` → `["order", "items", "[0]", "price"]`.
fn path(node: &Node) -> Option<Vec<String>> {
    match &node.kind {
        NodeKind::Name(n) => Some(vec![n.clone()]),
        NodeKind::Field(b, f) => {
            let mut p = path(b)?;
            p.push(f.clone());
            Some(p)
        }
        NodeKind::Index(b, i) => {
            let idx = match &i.kind {
                NodeKind::Lit(Lit::Int(i)) if *i >= 0 => *i as u64,
                NodeKind::Lit(Lit::Uint(u)) => *u,
                _ => return None,
            };
            let mut p = path(b)?;
            p.push(format!("[{idx}]"));
            Some(p)
        }
        NodeKind::Unary(UnOp::Deref, x) => path(x),
        _ => None,
    }
}

impl Compiler<'_> {
    fn text(&self, node: &Node) -> &str {
        self.expr.text(node)
    }

    fn emit(&mut self, op: Op) -> Result<(), NotFilterable> {
        if self.filter.code.len() >= MAX_CODE {
            return Err(no(format!(
                "the condition needs more than {MAX_CODE} steps"
            )));
        }
        self.filter.code.push(op);
        match op {
            Op::Read(_)
            | Op::Int(_)
            | Op::Uint(_)
            | Op::Float(_)
            | Op::Bool(_)
            | Op::Str(_)
            | Op::HitCount => self.depth += 1,
            Op::Not | Op::Neg | Op::Len | Op::SkipIfFalse(_) | Op::SkipIfTrue(_) => {}
            _ => self.depth = self.depth.saturating_sub(1),
        }
        self.max_depth = self.max_depth.max(self.depth);
        if self.max_depth > MAX_STACK {
            return Err(no(format!(
                "the condition nests deeper than {MAX_STACK} values"
            )));
        }
        Ok(())
    }

    fn add_read(&mut self, key: String, read: FilterRead) -> Result<u8, NotFilterable> {
        if let Some(i) = self.keys.iter().position(|k| *k == key) {
            return Ok(i as u8);
        }
        if self.keys.len() >= MAX_READS {
            return Err(no(format!(
                "the condition reads more than {MAX_READS} values"
            )));
        }
        let is_str = |r: &FilterRead| matches!(r.kind, ReadKind::Str { .. });
        if is_str(&read) && self.filter.reads.iter().filter(|r| is_str(r)).count() >= MAX_STR_READS
        {
            return Err(no(format!(
                "the condition reads more than {MAX_STR_READS} strings"
            )));
        }
        self.keys.push(key);
        self.filter.reads.push(read);
        Ok((self.keys.len() - 1) as u8)
    }

    fn string(&mut self, bytes: Vec<u8>) -> Result<(), NotFilterable> {
        if bytes.len() > MAX_STR {
            return Err(no(format!("a string constant longer than {MAX_STR} bytes")));
        }
        let i = match self.filter.strings.iter().position(|s| *s == bytes) {
            Some(i) => i,
            None => {
                if self.filter.strings.len() >= MAX_STRINGS {
                    return Err(no(format!("more than {MAX_STRINGS} string constants")));
                }
                self.filter.strings.push(bytes);
                self.filter.strings.len() - 1
            }
        };
        self.emit(Op::Str(i as u8))
    }

    /// Pushes the value at `node`'s path.
    fn read(&mut self, node: &Node) -> Result<(), NotFilterable> {
        let Some(p) = path(node) else {
            return Err(no(format!(
                "`{}` is not a fixed path from a variable",
                self.text(node)
            )));
        };
        match self.resolver.read(&p) {
            Some(read) => {
                let i = self.add_read(p.join("."), read)?;
                self.emit(Op::Read(i))
            }
            None if p.len() == 1 && p[0] == "hit_count" => self.emit(Op::HitCount),
            None if p.len() == 1 && p[0] == "thread" => Err(no(
                "the thread's name is not known in the trap handler".into(),
            )),
            None => Err(no(format!(
                "`{}` cannot be read in the trap handler",
                self.text(node)
            ))),
        }
    }

    /// Pushes whether the enum at `value` holds `variant` (`eq`) or not.
    fn variant(&mut self, value: &Node, variant: &str, eq: bool) -> Result<(), NotFilterable> {
        let Some(p) = path(value) else {
            return Err(no(format!(
                "`{}` is not a fixed path from a variable",
                self.text(value)
            )));
        };
        let Some((read, discr)) = self.resolver.variant(&p, variant) else {
            return Err(no(format!(
                "the variant of `{}` cannot be tested in the trap handler",
                self.text(value)
            )));
        };
        let i = self.add_read(format!("{}#discriminant", p.join(".")), read)?;
        self.emit(Op::Read(i))?;
        self.emit(Op::Uint(discr))?;
        self.emit(if eq { Op::Eq } else { Op::Ne })
    }

    /// Like [`Compiler::variant`], trying the opposite variant when a single equality
    /// cannot decide the asked one (`is_some` on a niche `Option` is `!= None`).
    fn variant_either(
        &mut self,
        value: &Node,
        want: &str,
        other: &str,
        eq: bool,
    ) -> Result<(), NotFilterable> {
        let p = path(value).unwrap_or_default();
        if self.resolver.variant(&p, want).is_some() {
            self.variant(value, want, eq)
        } else {
            self.variant(value, other, !eq)
        }
    }

    fn is_variant_operand<'n>(&self, node: &'n Node) -> Option<&'n str> {
        match &node.kind {
            NodeKind::Path(_) => node.as_variant(),
            NodeKind::Name(n) if self.resolver.read(std::slice::from_ref(n)).is_none() => {
                node.as_variant()
            }
            _ => None,
        }
    }

    fn node(&mut self, node: &Node) -> Result<(), NotFilterable> {
        match &node.kind {
            NodeKind::Lit(l) => match l {
                Lit::Bool(b) => self.emit(Op::Bool(*b)),
                Lit::Int(i) => self.emit(Op::Int(*i)),
                Lit::Uint(u) => self.emit(Op::Uint(*u)),
                Lit::Float(f) => self.emit(Op::Float(*f)),
                Lit::Str(s) => self.string(s.as_bytes().to_vec()),
                Lit::Char(c) => self.string(c.to_string().into_bytes()),
            },
            NodeKind::Name(_) | NodeKind::Field(..) | NodeKind::Index(..) => self.read(node),
            NodeKind::Path(_) => Err(no(format!(
                "`{}` is a variant, not a value",
                self.text(node)
            ))),
            NodeKind::Unary(UnOp::Deref, x) => self.node(x),
            NodeKind::Unary(op, x) => {
                self.node(x)?;
                self.emit(if *op == UnOp::Not { Op::Not } else { Op::Neg })
            }
            NodeKind::Matches(value, variant) => {
                self.variant(value, variant.as_variant().unwrap_or(""), true)
            }
            NodeKind::Call(b, recv, args) => match b {
                Builtin::Len => {
                    if let Some(mut p) = path(recv) {
                        p.push("len()".into());
                        if let Some(read) = self.resolver.read(&p) {
                            let i = self.add_read(p.join("."), read)?;
                            return self.emit(Op::Read(i));
                        }
                    }
                    self.node(recv)?;
                    self.emit(Op::Len)
                }
                Builtin::Contains | Builtin::StartsWith | Builtin::EndsWith => {
                    self.node(recv)?;
                    let arg = args
                        .first()
                        .ok_or_else(|| no("a missing argument".into()))?;
                    self.node(arg)?;
                    self.emit(match b {
                        Builtin::Contains => Op::Contains,
                        Builtin::StartsWith => Op::StartsWith,
                        _ => Op::EndsWith,
                    })
                }
                Builtin::IsSome => self.variant_either(recv, "Some", "None", true),
                Builtin::IsNone => self.variant_either(recv, "None", "Some", true),
                Builtin::IsOk => self.variant_either(recv, "Ok", "Err", true),
                Builtin::IsErr => self.variant_either(recv, "Err", "Ok", true),
            },
            NodeKind::Binary(op, l, r) => {
                if matches!(op, BinOp::Eq | BinOp::Ne) {
                    let eq = *op == BinOp::Eq;
                    if let Some(v) = self.is_variant_operand(r) {
                        return self.variant(l, v, eq);
                    }
                    if let Some(v) = self.is_variant_operand(l) {
                        return self.variant(r, v, eq);
                    }
                }
                if matches!(op, BinOp::And | BinOp::Or) {
                    // Short-circuit: a decided left side skips the right side's reads.
                    self.node(l)?;
                    let at = self.filter.code.len();
                    self.emit(Op::SkipIfFalse(0))?; // the count is patched below
                    self.node(r)?;
                    self.emit(if *op == BinOp::And { Op::And } else { Op::Or })?;
                    let n = u8::try_from(self.filter.code.len() - at - 1)
                        .map_err(|_| no("the condition is too long".into()))?;
                    self.filter.code[at] = if *op == BinOp::And {
                        Op::SkipIfFalse(n)
                    } else {
                        Op::SkipIfTrue(n)
                    };
                    return Ok(());
                }
                self.node(l)?;
                self.node(r)?;
                self.emit(match op {
                    BinOp::Or => Op::Or,
                    BinOp::And => Op::And,
                    BinOp::Eq => Op::Eq,
                    BinOp::Ne => Op::Ne,
                    BinOp::Lt => Op::Lt,
                    BinOp::Le => Op::Le,
                    BinOp::Gt => Op::Gt,
                    BinOp::Ge => Op::Ge,
                    BinOp::Add => Op::Add,
                    BinOp::Sub => Op::Sub,
                    BinOp::Mul => Op::Mul,
                    BinOp::Div => Op::Div,
                    BinOp::Rem => Op::Rem,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nonstop_capture::capture::{Memory, PieceSource, ReadError, Registers};
    use nonstop_capture::filter::{FilterResult, ReadKind, eval_filter};

    const RDI: u16 = 5;
    const RSI: u16 = 4;

    /// `fn f(order: &Order, user: &User)`: `order` in rdi, `user` in rsi.
    /// `Order { total: u64 @0, kind: u8 @8 (Credit = 0, Debit = 1), coupon: Option<&str> @16 (ptr, len) }`,
    /// `User { country: String { cap @0, ptr @8, len @16 } }`.
    pub(crate) struct Resolver;
    impl PathResolver for Resolver {
        fn read(&self, path: &[String]) -> Option<FilterRead> {
            let p: Vec<&str> = path.iter().map(String::as_str).collect();
            let (reg, offset, kind) = match p.as_slice() {
                ["order", "total"] => (
                    RDI,
                    0,
                    ReadKind::Int {
                        size: 8,
                        signed: false,
                    },
                ),
                ["user", "country"] => (
                    RSI,
                    0,
                    ReadKind::Str {
                        ptr_offset: 8,
                        len_offset: 16,
                    },
                ),
                ["user", "country", "len()"] => (
                    RSI,
                    16,
                    ReadKind::Int {
                        size: 8,
                        signed: false,
                    },
                ),
                _ => return None,
            };
            Some(FilterRead {
                root: PieceSource::Register { reg },
                derefs: vec![0],
                offset,
                kind,
            })
        }
        fn variant(&self, path: &[String], variant: &str) -> Option<(FilterRead, u64)> {
            let p: Vec<&str> = path.iter().map(String::as_str).collect();
            let (offset, value) = match (p.as_slice(), variant) {
                (["order", "kind"], "Credit") => (8, 0),
                (["order", "kind"], "Debit") => (8, 1),
                // Niche: None is a null pointer; Some cannot be told by one equality.
                (["order", "coupon"], "None") => (16, 0),
                _ => return None,
            };
            let size = if offset == 8 { 1 } else { 8 };
            let read = FilterRead {
                root: PieceSource::Register { reg: RDI },
                derefs: vec![0],
                offset,
                kind: ReadKind::Int {
                    size,
                    signed: false,
                },
            };
            Some((read, value))
        }
    }

    pub(crate) struct Mem(Vec<(u64, Vec<u8>)>);
    impl Memory for Mem {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
            for (start, bytes) in &self.0 {
                if addr >= *start && addr + buf.len() as u64 <= start + bytes.len() as u64 {
                    let off = (addr - start) as usize;
                    buf.copy_from_slice(&bytes[off..off + buf.len()]);
                    return Ok(());
                }
            }
            Err(ReadError::Fault)
        }
    }

    pub(crate) fn hit(total: u64, kind: u8, coupon: u64, country: &str) -> (Registers, Mem) {
        let mut regs = Registers::default();
        regs.gpr[RDI as usize] = 0x1000;
        regs.gpr[RSI as usize] = 0x2000;
        let order = [
            total.to_le_bytes().to_vec(),
            vec![kind, 0, 0, 0, 0, 0, 0, 0],
            coupon.to_le_bytes().to_vec(),
            4u64.to_le_bytes().to_vec(),
        ]
        .concat();
        let n = country.len() as u64;
        let user = [n.to_le_bytes(), 0x3000u64.to_le_bytes(), n.to_le_bytes()].concat();
        let mem = Mem(vec![
            (0x1000, order),
            (0x2000, user),
            (0x3000, country.as_bytes().to_vec()),
            (0x500, 0x1000u64.to_le_bytes().to_vec()),
        ]);
        (regs, mem)
    }

    fn run(cond: &str, h: (Registers, Mem)) -> FilterResult {
        let f = compile(&Expr::parse(cond).unwrap(), &Resolver).unwrap();
        eval_filter(&f, &h.0, &h.1, 5)
    }

    #[test]
    fn compiles_the_benchmark_condition_to_a_small_program() {
        let e = Expr::parse("order.total > 10000 && user.country == \"DE\"").unwrap();
        let f = compile(&e, &Resolver).unwrap();
        assert_eq!(
            f.code,
            vec![
                Op::Read(0),
                Op::Int(10000),
                Op::Gt,
                Op::SkipIfFalse(4),
                Op::Read(1),
                Op::Str(0),
                Op::Eq,
                Op::And
            ]
        );
        assert_eq!(f.strings, vec![b"DE".to_vec()]);
        assert_eq!(f.reads.len(), 2);
    }

    #[test]
    fn compiled_conditions_decide_like_the_expression() {
        use FilterResult::*;
        let table = [
            (
                "order.total > 10000 && user.country == \"DE\"",
                hit(12000, 0, 0, "DE"),
                True,
            ),
            (
                "order.total > 10000 && user.country == \"DE\"",
                hit(12000, 0, 0, "FR"),
                False,
            ),
            (
                "order.total > 10000 && user.country == \"DE\"",
                hit(100, 0, 0, "DE"),
                False,
            ),
            ("order.kind == Kind::Credit", hit(1, 0, 0, "DE"), True),
            ("order.kind != Debit", hit(1, 1, 0, "DE"), False),
            ("matches(order.kind, Debit)", hit(1, 1, 0, "DE"), True),
            ("order.coupon.is_none()", hit(1, 1, 0, "DE"), True),
            ("order.coupon.is_some()", hit(1, 1, 0x400, "DE"), True),
            ("order.coupon.is_some()", hit(1, 1, 0, "DE"), False),
            (
                "user.country.len() == 7 && user.country.starts_with(\"Ger\")",
                hit(1, 1, 0, "Germany"),
                True,
            ),
            (
                "len(user.country) == 2 && user.country.contains('E')",
                hit(1, 1, 0, "DE"),
                True,
            ),
            (
                "hit_count % 5 == 0 && *order.total == 3",
                hit(3, 0, 0, "DE"),
                True,
            ),
            (
                "order.total / (order.total - 3) > 1",
                hit(3, 0, 0, "DE"),
                Error,
            ),
            ("false && order.total / 0 > 1", hit(3, 0, 0, "DE"), False),
            ("-order.total < 0.5", hit(3, 0, 0, "DE"), True),
            ("!(order.total >= 4)", hit(3, 0, 0, "DE"), True),
        ];
        for (cond, h, want) in table {
            assert_eq!(run(cond, h), want, "{cond}");
        }
    }

    #[test]
    fn what_cannot_run_in_the_handler_says_why() {
        let table = [
            (
                "thread == \"main\"",
                "the thread's name is not known in the trap handler",
            ),
            (
                "order.items[i] > 1",
                "`order.items[i]` is not a fixed path from a variable",
            ),
            (
                "order.note == \"x\"",
                "`order.note` cannot be read in the trap handler",
            ),
            (
                "order.note.is_some()",
                "the variant of `order.note` cannot be tested in the trap handler",
            ),
        ];
        for (cond, want) in table {
            let err = compile(&Expr::parse(cond).unwrap(), &Resolver).unwrap_err();
            assert_eq!(err.reason, want, "{cond}");
            assert!(
                err.to_string()
                    .starts_with("condition evaluated after the capture (slower): ")
            );
        }
        let long = format!("user.country == \"{}\"", "x".repeat(65));
        assert!(compile(&Expr::parse(&long).unwrap(), &Resolver).is_err());
        let deep = format!("{}1{} > 0", "(1 + ".repeat(17), ")".repeat(17));
        assert_eq!(
            compile(&Expr::parse(&deep).unwrap(), &Resolver)
                .unwrap_err()
                .reason,
            "the condition nests deeper than 16 values"
        );
        let many = vec!["order.total > 1"; 20].join(" && ");
        assert_eq!(
            compile(&Expr::parse(&many).unwrap(), &Resolver)
                .unwrap_err()
                .reason,
            "the condition needs more than 64 steps"
        );
    }
}

#[cfg(test)]
mod random {
    use super::tests::*;
    use super::*;
    use nonstop_capture::capture::PieceSource;
    use nonstop_capture::filter::ReadKind;
    use nonstop_capture::filter::eval_filter;
    use proptest::prelude::*;

    /// Resolves every path, to reads of every kind.
    struct Any;
    impl PathResolver for Any {
        fn read(&self, path: &[String]) -> Option<FilterRead> {
            let n = path.iter().map(String::len).sum::<usize>();
            let kind = match n % 4 {
                0 => ReadKind::Str {
                    ptr_offset: 8,
                    len_offset: 16,
                },
                1 => ReadKind::Int {
                    size: 8,
                    signed: n % 3 == 0,
                },
                2 => ReadKind::Float { size: 8 },
                _ => ReadKind::Bool,
            };
            Some(FilterRead {
                root: PieceSource::Register {
                    reg: (n % 6) as u16,
                },
                derefs: vec![0; n % 3],
                offset: (n % 5) as u32 * 8,
                kind,
            })
        }
        fn variant(&self, path: &[String], _: &str) -> Option<(FilterRead, u64)> {
            Some((self.read(path)?, path.len() as u64))
        }
    }

    proptest! {
        #[test]
        fn random_conditions_compile_and_run_without_panics(
            src in crate::eval::tests::random::expr(),
            total in any::<u64>(),
            kind in any::<u8>(),
            coupon in any::<u64>(),
            country in "[A-Z]{0,80}",
        ) {
            if let Ok(e) = Expr::parse(&src)
                && let Ok(f) = compile(&e, &Any)
            {
                let (regs, mem) = hit(total, kind, coupon, &country);
                let _ = eval_filter(&f, &regs, &mem, 1);
            }
        }
    }
}
