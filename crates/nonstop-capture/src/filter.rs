//! Conditions evaluated in the trap handler, before the capture.
//!
//! A [`Filter`] is a condition compiled (by `nonstop_expr::filter::compile`) into a few
//! [`FilterRead`]s — a scalar or a short string reached from a variable's location through
//! a fixed chain of pointers — and a tiny stack program of [`Op`]s over them. The probe
//! engine runs [`eval_filter`] at every hit: a false condition then costs the trap plus
//! these few reads, not a capture.
//!
//! [`eval_filter`] never allocates (fixed arrays on the stack: a frame of about 1.3 KB), never panics
//! on any filter or memory (every index and every operation is checked), and does bounded
//! work: one pass over at most [`MAX_CODE`] ops, each read following at most
//! [`MAX_DEREFS`] pointers.
//!
//! Errors (a null pointer on the way, an unreadable address, a type mismatch, an overflow,
//! a string longer than the [`MAX_STR`] bytes read when the answer depends on the rest)
//! make a comparison `Error`; `&&`/`||` follow Kleene logic, so `false && error` is
//! `false` and `true || error` is `true`, as short-circuit evaluation would give.

use crate::capture::{EntryRegisters, Memory, PieceSource, Registers};

/// Most reads a filter may have.
pub const MAX_READS: usize = 8;
/// Most ops a filter may have.
pub const MAX_CODE: usize = 64;
/// Depth of the evaluation stack.
pub const MAX_STACK: usize = 16;
/// Most bytes of a string read at a hit (the rest is known only by its length).
pub const MAX_STR: usize = 64;
/// Most pointers one read follows.
pub const MAX_DEREFS: usize = 8;
/// Most string reads a filter may have (each takes a [`MAX_STR`]-byte buffer at a hit).
pub const MAX_STR_READS: usize = 4;
/// Most constant strings a filter may have.
pub const MAX_STRINGS: usize = 16;

/// How to interpret the bytes at the end of a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadKind {
    /// An integer of `size` bytes (1, 2, 4 or 8), little endian.
    Int {
        /// Its size in bytes.
        size: u8,
        /// Whether it is signed.
        signed: bool,
    },
    /// An `f32` (`size` 4) or `f64` (`size` 8).
    Float {
        /// Its size in bytes.
        size: u8,
    },
    /// A `bool` (one byte; non-zero is true).
    Bool,
    /// A pointer-and-length string (`&str`, `String`, `&[u8]`): the data pointer and the
    /// length (a `usize`) at these offsets from the value's start. At most [`MAX_STR`]
    /// bytes are read.
    Str {
        /// Offset of the data pointer.
        ptr_offset: u32,
        /// Offset of the length.
        len_offset: u32,
    },
}

/// One value a filter reads: from a variable's location, through `derefs`, at `offset`.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterRead {
    /// Where the variable is (a single piece; multi-piece variables are not filterable).
    pub root: PieceSource,
    /// Pointers to follow: for each, read the 8-byte pointer at `current + offset` and
    /// continue at its target. A null pointer makes the read fail.
    pub derefs: Vec<u32>,
    /// Offset of the value from the last location.
    pub offset: u32,
    /// What the bytes are.
    pub kind: ReadKind,
}

/// One instruction of the filter's stack machine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    /// Push the value of `reads[i]` (read once per hit, then reused).
    Read(u8),
    /// Push a signed integer.
    Int(i64),
    /// Push an unsigned integer.
    Uint(u64),
    /// Push a float.
    Float(f64),
    /// Push a bool.
    Bool(bool),
    /// Push `strings[i]`.
    Str(u8),
    /// Push the hit count.
    HitCount,
    /// Pop b, a; push `a == b` (numbers exactly across signed, unsigned and float;
    /// strings bytewise; bools).
    Eq,
    /// `a != b`.
    Ne,
    /// `a < b` (numbers, or strings bytewise).
    Lt,
    /// `a <= b`.
    Le,
    /// `a > b`.
    Gt,
    /// `a >= b`.
    Ge,
    /// If the top of the stack is `false`, skip the next `n` ops, leaving it there
    /// (`a && b` compiles to `a, SkipIfFalse(len(b) + 1), b, And`: a false `a` reads nothing
    /// of `b`). Jumps only go forward, so a filter is still one pass.
    SkipIfFalse(u8),
    /// If the top of the stack is `true`, skip the next `n` ops (for `||`).
    SkipIfTrue(u8),
    /// `a && b` (Kleene: false wins over an error).
    And,
    /// `a || b` (Kleene: true wins over an error).
    Or,
    /// `!a`.
    Not,
    /// `a + b` (integers checked to the 64-bit range).
    Add,
    /// `a - b`.
    Sub,
    /// `a * b`.
    Mul,
    /// `a / b` (by zero: error).
    Div,
    /// `a % b` (by zero: error).
    Rem,
    /// `-a`.
    Neg,
    /// The length of a string.
    Len,
    /// `a.contains(b)` on strings.
    Contains,
    /// `a.starts_with(b)`.
    StartsWith,
    /// `a.ends_with(b)`.
    EndsWith,
}

/// A compiled condition. Build it on the agent thread; run it with [`eval_filter`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    /// The values read (at most [`MAX_READS`]).
    pub reads: Vec<FilterRead>,
    /// Constant strings (at most [`MAX_STRINGS`], each at most [`MAX_STR`] bytes).
    pub strings: Vec<Vec<u8>>,
    /// The program (at most [`MAX_CODE`] ops); it leaves one bool.
    pub code: Vec<Op>,
}

/// The outcome of a filter at one hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterResult {
    /// The condition holds: capture.
    True,
    /// It does not: skip the hit.
    False,
    /// It could not be decided (null pointer, unreadable memory, overflow, …): the agent
    /// counts it as false and reports it in the rule's status.
    Error,
}

/// `id`: a buffer index, or `CONST | i` for `strings[i]`; `have` bytes of a string of
/// `len` bytes are in the buffer. (Fields inline keep a slot at 16 bytes.)
#[derive(Clone, Copy)]
enum Slot {
    Err,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str { id: u8, have: u8, len: u64 },
}

const CONST: u8 = 0x80;

/// An integer slot's value, exactly.
fn wide(s: Slot) -> Option<i128> {
    match s {
        Slot::Int(i) => Some(i as i128),
        Slot::Uint(u) => Some(u as i128),
        _ => None,
    }
}

/// Where a value is while a read follows its chain.
#[derive(Clone, Copy)]
enum Loc {
    Addr(u64),
    /// A general register's (or a computed) value: its 8 bytes.
    Word(u64),
    /// The value's bytes themselves (a register, a computed or implicit value).
    Bytes([u8; 16], usize),
}

// Sizes are small on purpose: every slot is initialised at each hit, so the fixed cost
// of a filter grows with them (16 + 8 slots, and 4 string buffers only when needed).
struct Machine<'a, M: Memory + ?Sized, const BUFS: usize> {
    filter: &'a Filter,
    regs: &'a Registers,
    entry: Option<&'a EntryRegisters>,
    mem: &'a M,
    cache: [Slot; MAX_READS],
    /// Bit `i`: `cache[i]` holds read `i`.
    loaded: u32,
    bufs: [[u8; MAX_STR]; BUFS],
    bufs_used: u8,
}

/// Evaluates `filter` at a hit. Never allocates, never panics, bounded work.
pub fn eval_filter<M: Memory + ?Sized>(
    filter: &Filter,
    regs: &Registers,
    mem: &M,
    hit_count: u64,
) -> FilterResult {
    eval_filter_with_entry(filter, regs, None, mem, hit_count)
}

/// [`eval_filter`] with the frame's registers at function entry, when its companion probe
/// recorded them: reads located by entry values ([`LocOp::EntryReg`](crate::capture::LocOp))
/// use them, and are errors without them.
pub fn eval_filter_with_entry<M: Memory + ?Sized>(
    filter: &Filter,
    regs: &Registers,
    entry: Option<&EntryRegisters>,
    mem: &M,
    hit_count: u64,
) -> FilterResult {
    if filter.code.len() > MAX_CODE {
        return FilterResult::Error;
    }
    // String buffers only for filters that read strings: zeroing them is most of the
    // fixed cost of a filter that does not.
    if filter
        .reads
        .iter()
        .any(|r| matches!(r.kind, ReadKind::Str { .. }))
    {
        run::<M, MAX_STR_READS>(filter, regs, entry, mem, hit_count)
    } else {
        run::<M, 0>(filter, regs, entry, mem, hit_count)
    }
}

fn run<M: Memory + ?Sized, const BUFS: usize>(
    filter: &Filter,
    regs: &Registers,
    entry: Option<&EntryRegisters>,
    mem: &M,
    hit_count: u64,
) -> FilterResult {
    let mut m = Machine::<M, BUFS> {
        filter,
        regs,
        entry,
        mem,
        cache: [Slot::Err; MAX_READS],
        loaded: 0,
        bufs: [[0; MAX_STR]; BUFS],
        bufs_used: 0,
    };
    let mut stack = [Slot::Err; MAX_STACK];
    let mut sp = 0usize;
    let mut pc = 0usize;
    // `pc` and `sp` stay small: `pc` is at most `MAX_CODE` plus one skip, `sp` at most `MAX_STACK`.
    while let Some(op) = filter.code.get(pc) {
        pc = pc.saturating_add(1);
        let pushed = match *op {
            Op::SkipIfFalse(n) | Op::SkipIfTrue(n) => {
                let want = matches!(op, Op::SkipIfTrue(_));
                if let Some(Slot::Bool(b)) = sp.checked_sub(1).and_then(|i| stack.get(i))
                    && *b == want
                {
                    pc = pc.saturating_add(n as usize);
                }
                continue;
            }
            Op::Read(i) => m.read(i as usize),
            Op::Int(v) => Slot::Int(v),
            Op::Uint(v) => Slot::Uint(v),
            Op::Float(v) => Slot::Float(v),
            Op::Bool(v) => Slot::Bool(v),
            Op::Str(i) => match filter.strings.get(i as usize) {
                Some(s) if s.len() <= MAX_STR && (i as usize) < MAX_STRINGS => Slot::Str {
                    id: CONST | i,
                    have: s.len() as u8,
                    len: s.len() as u64,
                },
                _ => Slot::Err,
            },
            Op::HitCount => Slot::Uint(hit_count),
            Op::Not | Op::Neg | Op::Len => {
                let Some(top) = sp.checked_sub(1) else {
                    return FilterResult::Error;
                };
                let Some(a) = stack.get(top).copied() else {
                    return FilterResult::Error;
                };
                sp = top;
                m.unary(*op, a)
            }
            _ => {
                let Some(below) = sp.checked_sub(2) else {
                    return FilterResult::Error;
                };
                let (Some(a), Some(b)) = (
                    stack.get(below).copied(),
                    below.checked_add(1).and_then(|i| stack.get(i).copied()),
                ) else {
                    return FilterResult::Error;
                };
                sp = below;
                m.binary(*op, a, b)
            }
        };
        let Some(slot) = stack.get_mut(sp) else {
            return FilterResult::Error;
        };
        *slot = pushed;
        sp = sp.saturating_add(1);
    }
    match (sp, stack.first()) {
        (1, Some(Slot::Bool(true))) => FilterResult::True,
        (1, Some(Slot::Bool(false))) => FilterResult::False,
        _ => FilterResult::Error,
    }
}

/// Up to 16 bytes of a value held outside memory (a vector register, an implicit constant).
fn short_bytes(src: &[u8]) -> Loc {
    let mut b = [0u8; 16];
    let n = src.len().min(b.len());
    for (d, s) in b.iter_mut().zip(src) {
        *d = *s;
    }
    Loc::Bytes(b, n)
}

impl<M: Memory + ?Sized, const BUFS: usize> Machine<'_, M, BUFS> {
    fn read(&mut self, i: usize) -> Slot {
        let Some(cached) = self.cache.get(i).copied() else {
            return Slot::Err;
        };
        if self.loaded & (1 << i) != 0 {
            return cached;
        }
        let slot = self.fetch(i).unwrap_or(Slot::Err);
        if let Some(entry) = self.cache.get_mut(i) {
            *entry = slot;
        }
        self.loaded |= 1 << i;
        slot
    }

    /// Reads `buf.len()` bytes at `off` from `loc`.
    fn bytes(&self, loc: Loc, off: u32, buf: &mut [u8]) -> Option<()> {
        match loc {
            Loc::Addr(a) => self.mem.read(a.wrapping_add(off as u64), buf).ok(),
            Loc::Word(w) => {
                let start = off as usize;
                let src = w.to_le_bytes();
                buf.copy_from_slice(src.get(start..start.checked_add(buf.len())?)?);
                Some(())
            }
            Loc::Bytes(b, n) => {
                let start = off as usize;
                let src = b.get(start..start.checked_add(buf.len())?.min(n.min(16)))?;
                if src.len() != buf.len() {
                    return None;
                }
                buf.copy_from_slice(src);
                Some(())
            }
        }
    }

    fn u64_at(&self, loc: Loc, off: u32) -> Option<u64> {
        if let (Loc::Word(w), 0) = (loc, off) {
            return Some(w);
        }
        let mut b = [0u8; 8];
        self.bytes(loc, off, &mut b)?;
        Some(u64::from_le_bytes(b))
    }

    fn fetch(&mut self, i: usize) -> Option<Slot> {
        if i >= MAX_READS {
            return None;
        }
        let read = self.filter.reads.get(i)?;
        let mut loc = match &read.root {
            PieceSource::Register { reg } => match self.regs.gpr.get(*reg as usize) {
                Some(w) => Loc::Word(*w),
                None => {
                    let x = self.regs.bytes(*reg)?;
                    short_bytes(x)
                }
            },
            PieceSource::Memory { reg, offset } => {
                Loc::Addr(self.regs.value(*reg)?.wrapping_add(*offset as u64))
            }
            PieceSource::Absolute { addr } => Loc::Addr(*addr),
            PieceSource::Computed { reg, offset } => {
                Loc::Word(self.regs.value(*reg)?.wrapping_add(*offset as u64))
            }
            PieceSource::Implicit(bytes) => short_bytes(bytes),
            PieceSource::Expr { ops, value } => {
                let v =
                    crate::capture::eval_location_with_entry(ops, self.regs, self.entry, self.mem)
                        .ok()?;
                if *value { Loc::Word(v) } else { Loc::Addr(v) }
            }
            PieceSource::Unavailable => return None,
        };
        if read.derefs.len() > MAX_DEREFS {
            return None;
        }
        for &off in &read.derefs {
            let ptr = self.u64_at(loc, off)?;
            if ptr == 0 {
                return None;
            }
            loc = Loc::Addr(ptr);
        }
        let off = read.offset;
        Some(match read.kind {
            ReadKind::Bool => {
                let mut b = [0u8; 1];
                self.bytes(loc, off, &mut b)?;
                Slot::Bool(b[0] != 0)
            }
            ReadKind::Int { size, signed } => {
                let size = size as usize;
                if !matches!(size, 1 | 2 | 4 | 8) {
                    return None;
                }
                let mut b = [0u8; 8];
                self.bytes(loc, off, b.get_mut(..size)?)?;
                let raw = u64::from_le_bytes(b);
                if signed {
                    // Sign-extend from `size` bytes: `size` is 1, 2, 4 or 8, so `shift < 64`.
                    let shift = 64u32.saturating_sub(8u32.saturating_mul(size as u32));
                    Slot::Int((raw.wrapping_shl(shift) as i64).wrapping_shr(shift))
                } else {
                    Slot::Uint(raw)
                }
            }
            ReadKind::Float { size: 4 } => {
                let mut b = [0u8; 4];
                self.bytes(loc, off, &mut b)?;
                Slot::Float(f32::from_le_bytes(b) as f64)
            }
            ReadKind::Float { size: 8 } => Slot::Float(f64::from_bits(self.u64_at(loc, off)?)),
            ReadKind::Float { .. } => return None,
            ReadKind::Str {
                ptr_offset,
                len_offset,
            } => {
                // Pointer and length are usually adjacent (`&str`: 0 and 8; `String`: 8
                // and 16): one read of both saves a fault-safe read.
                let (lo, hi) = (ptr_offset.min(len_offset), ptr_offset.max(len_offset));
                let (ptr, len) = if hi.saturating_sub(lo) == 8 {
                    let mut b = [0u8; 16];
                    self.bytes(loc, off.checked_add(lo)?, &mut b)?;
                    let (first, second) = b.split_at(8);
                    let first = u64::from_le_bytes(first.try_into().ok()?);
                    let second = u64::from_le_bytes(second.try_into().ok()?);
                    if ptr_offset < len_offset {
                        (first, second)
                    } else {
                        (second, first)
                    }
                } else {
                    (
                        self.u64_at(loc, off.checked_add(ptr_offset)?)?,
                        self.u64_at(loc, off.checked_add(len_offset)?)?,
                    )
                };
                let have = len.min(MAX_STR as u64) as usize;
                let id = self.bufs_used;
                if have > 0 {
                    if ptr == 0 {
                        return None;
                    }
                    let buf = self.bufs.get_mut(id as usize)?.get_mut(..have)?;
                    self.mem.read(ptr, buf).ok()?;
                }
                self.bufs_used = self.bufs_used.saturating_add(1);
                Slot::Str {
                    id,
                    have: have as u8,
                    len,
                }
            }
        })
    }

    /// The bytes known of a string, and whether they are all of it.
    /// The bytes known of a string slot, whether they are all of it, and its length.
    fn text(&self, s: Slot) -> Option<(&[u8], bool, u64)> {
        let Slot::Str { id, have, len } = s else {
            return None;
        };
        let bytes = if id & CONST != 0 {
            self.filter.strings.get((id & !CONST) as usize)?.as_slice()
        } else {
            self.bufs.get(id as usize)?.as_slice()
        };
        Some((bytes.get(..have as usize)?, len == have as u64, len))
    }

    fn unary(&self, op: Op, a: Slot) -> Slot {
        match (op, a) {
            (Op::Not, Slot::Bool(b)) => Slot::Bool(!b),
            (Op::Neg, Slot::Float(f)) => Slot::Float(-f),
            (Op::Neg, a) => int(wide(a).and_then(i128::checked_neg)),
            (Op::Len, Slot::Str { len, .. }) => Slot::Uint(len),
            _ => Slot::Err,
        }
    }

    fn binary(&self, op: Op, a: Slot, b: Slot) -> Slot {
        match op {
            Op::And => match (a, b) {
                (Slot::Bool(false), _) | (_, Slot::Bool(false)) => Slot::Bool(false),
                (Slot::Bool(true), Slot::Bool(true)) => Slot::Bool(true),
                _ => Slot::Err,
            },
            Op::Or => match (a, b) {
                (Slot::Bool(true), _) | (_, Slot::Bool(true)) => Slot::Bool(true),
                (Slot::Bool(false), Slot::Bool(false)) => Slot::Bool(false),
                _ => Slot::Err,
            },
            Op::Eq | Op::Ne => match self.equal(a, b) {
                Some(e) => Slot::Bool(e == (op == Op::Eq)),
                None => Slot::Err,
            },
            Op::Lt | Op::Le | Op::Gt | Op::Ge => match self.order(a, b) {
                Some(Some(o)) => Slot::Bool(match op {
                    Op::Lt => o.is_lt(),
                    Op::Le => o.is_le(),
                    Op::Gt => o.is_gt(),
                    _ => o.is_ge(),
                }),
                Some(None) => Slot::Bool(false), // NaN
                None => Slot::Err,
            },
            Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Rem => arith(op, a, b),
            Op::Contains | Op::StartsWith | Op::EndsWith => {
                let (Some((hay, hay_all, _)), Some((needle, needle_all, _))) =
                    (self.text(a), self.text(b))
                else {
                    return Slot::Err;
                };
                if !needle_all {
                    return Slot::Err;
                }
                let found = match op {
                    Op::StartsWith => hay.starts_with(needle),
                    Op::EndsWith => hay_all && hay.ends_with(needle),
                    _ => contains(hay, needle),
                };
                // Found in the part read: true. Not found: only false if we read it all.
                if found || hay_all || (op == Op::StartsWith && hay.len() >= needle.len()) {
                    Slot::Bool(found)
                } else {
                    Slot::Err
                }
            }
            _ => Slot::Err,
        }
    }

    fn equal(&self, a: Slot, b: Slot) -> Option<bool> {
        match (a, b) {
            (Slot::Bool(x), Slot::Bool(y)) => Some(x == y),
            (Slot::Str { .. }, Slot::Str { .. }) => {
                let ((xb, x_all, xl), (yb, y_all, yl)) = (self.text(a)?, self.text(b)?);
                if xl != yl {
                    return Some(false);
                }
                if xb != yb {
                    Some(false)
                } else if x_all && y_all {
                    Some(true)
                } else {
                    None
                }
            }
            _ => Some(self.order(a, b)?? == std::cmp::Ordering::Equal),
        }
    }

    /// `None`: not comparable (an error); `Some(None)`: unordered (NaN).
    fn order(&self, a: Slot, b: Slot) -> Option<Option<std::cmp::Ordering>> {
        use std::cmp::Ordering;
        Some(match (a, b) {
            (Slot::Float(x), Slot::Float(y)) => x.partial_cmp(&y),
            (Slot::Float(x), y) => int_float_cmp(wide(y)?, x).map(Ordering::reverse),
            (x, Slot::Float(y)) => int_float_cmp(wide(x)?, y),
            (Slot::Str { .. }, Slot::Str { .. }) => {
                let ((xb, x_all, _), (yb, y_all, _)) = (self.text(a)?, self.text(b)?);
                let n = xb.len().min(yb.len());
                match xb.get(..n)?.cmp(yb.get(..n)?) {
                    Ordering::Equal if x_all && y_all => Some(xb.len().cmp(&yb.len())),
                    // A shorter complete string that is a prefix of the other sorts first.
                    Ordering::Equal if x_all && xb.len() < yb.len() => Some(Ordering::Less),
                    Ordering::Equal if y_all && yb.len() < xb.len() => Some(Ordering::Greater),
                    Ordering::Equal => return None,
                    o => Some(o),
                }
            }
            (x, y) => Some(wide(x)?.cmp(&wide(y)?)),
        })
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// An integer result, if it fits in `i64` or `u64`.
fn int(v: Option<i128>) -> Slot {
    let Some(v) = v else {
        return Slot::Err;
    };
    match (i64::try_from(v), u64::try_from(v)) {
        (Ok(i), _) => Slot::Int(i),
        (_, Ok(u)) => Slot::Uint(u),
        _ => Slot::Err,
    }
}

fn arith(op: Op, a: Slot, b: Slot) -> Slot {
    match (wide(a), wide(b)) {
        (Some(x), Some(y)) => int(match op {
            Op::Add => x.checked_add(y),
            Op::Sub => x.checked_sub(y),
            Op::Mul => x.checked_mul(y),
            Op::Div => x.checked_div(y),
            _ => x.checked_rem(y),
        }),
        _ => {
            let f = |s: Slot| match s {
                Slot::Float(f) => Some(f),
                s => wide(s).map(|i| i as f64),
            };
            let (Some(x), Some(y)) = (f(a), f(b)) else {
                return Slot::Err;
            };
            if matches!(op, Op::Div | Op::Rem) && y == 0.0 {
                return Slot::Err;
            }
            Slot::Float(match op {
                Op::Add => x + y,
                Op::Sub => x - y,
                Op::Mul => x * y,
                Op::Div => x / y,
                _ => x % y,
            })
        }
    }
}

/// `i` compared with `f`, exactly (no rounding of large integers).
fn int_float_cmp(i: i128, f: f64) -> Option<std::cmp::Ordering> {
    use std::cmp::Ordering;
    if f.is_nan() {
        return None;
    }
    const FAR: f64 = 1.2676506002282294e30; // 2^100, beyond any 64-bit integer
    if f >= FAR {
        return Some(Ordering::Less);
    }
    if f <= -FAR {
        return Some(Ordering::Greater);
    }
    let t = f.trunc();
    match i.cmp(&(t as i128)) {
        Ordering::Equal => 0.0f64.partial_cmp(&(f - t)),
        o => Some(o),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{REG_RSP, ReadError};
    use std::collections::BTreeMap;

    /// Memory of a fake process: a few mapped ranges.
    pub(crate) struct Fake(pub BTreeMap<u64, Vec<u8>>);
    impl Memory for Fake {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
            for (start, bytes) in &self.0 {
                let end = start + bytes.len() as u64;
                if addr >= *start && addr.saturating_add(buf.len() as u64) <= end {
                    let off = (addr - start) as usize;
                    buf.copy_from_slice(&bytes[off..off + buf.len()]);
                    return Ok(());
                }
            }
            Err(ReadError::Fault)
        }
    }

    const RDI: u16 = 5;

    /// `order: &Order` in rdi; `Order { total: u64 @0, user: Box<User> @8 }`;
    /// `User { country: String { cap @0, ptr @8, len @16 }, age: i32 @24 }`; `rate: f64` on the stack.
    fn world(country: &[u8], total: u64) -> (Registers, Fake) {
        let mut regs = Registers::default();
        regs.gpr[RDI as usize] = 0x1000;
        regs.gpr[REG_RSP as usize] = 0x7000;
        let mut mem = BTreeMap::new();
        mem.insert(
            0x1000,
            [total.to_le_bytes(), 0x2000u64.to_le_bytes()].concat(),
        );
        let user = [
            (country.len() as u64).to_le_bytes(),
            0x3000u64.to_le_bytes(),
            (country.len() as u64).to_le_bytes(),
        ]
        .concat();
        mem.insert(
            0x2000,
            [user, (-7i32).to_le_bytes().to_vec(), vec![0; 4]].concat(),
        );
        mem.insert(0x3000, country.to_vec());
        mem.insert(0x7010, 2.5f64.to_le_bytes().to_vec());
        (regs, Fake(mem))
    }

    fn total() -> FilterRead {
        FilterRead {
            root: PieceSource::Register { reg: RDI },
            derefs: vec![0],
            offset: 0,
            kind: ReadKind::Int {
                size: 8,
                signed: false,
            },
        }
    }

    fn country() -> FilterRead {
        FilterRead {
            root: PieceSource::Register { reg: RDI },
            derefs: vec![0, 8],
            offset: 0,
            kind: ReadKind::Str {
                ptr_offset: 8,
                len_offset: 16,
            },
        }
    }

    fn age() -> FilterRead {
        FilterRead {
            root: PieceSource::Register { reg: RDI },
            derefs: vec![0, 8],
            offset: 24,
            kind: ReadKind::Int {
                size: 4,
                signed: true,
            },
        }
    }

    fn rate() -> FilterRead {
        FilterRead {
            root: PieceSource::Memory {
                reg: REG_RSP,
                offset: 0x10,
            },
            derefs: vec![],
            offset: 0,
            kind: ReadKind::Float { size: 8 },
        }
    }

    /// `order.total > 10000 && user.country == "DE"`.
    pub(crate) fn bench_filter() -> Filter {
        Filter {
            reads: vec![total(), country()],
            strings: vec![b"DE".to_vec()],
            code: vec![
                Op::Read(0),
                Op::Int(10000),
                Op::Gt,
                Op::SkipIfFalse(4),
                Op::Read(1),
                Op::Str(0),
                Op::Eq,
                Op::And,
            ],
        }
    }

    fn run(f: &Filter, country: &[u8], total: u64) -> FilterResult {
        let (regs, mem) = world(country, total);
        eval_filter(f, &regs, &mem, 3)
    }

    fn program(code: Vec<Op>, strings: &[&str]) -> Filter {
        Filter {
            reads: vec![total(), country(), age(), rate()],
            strings: strings.iter().map(|s| s.as_bytes().to_vec()).collect(),
            code,
        }
    }

    #[test]
    fn the_benchmark_condition() {
        let f = bench_filter();
        assert_eq!(run(&f, b"DE", 12000), FilterResult::True);
        assert_eq!(run(&f, b"DE", 9000), FilterResult::False);
        assert_eq!(run(&f, b"FR", 12000), FilterResult::False);
        assert_eq!(run(&f, b"DEU", 12000), FilterResult::False);
        assert_eq!(run(&f, b"", 12000), FilterResult::False);
    }

    #[test]
    fn a_false_left_side_of_and_reads_nothing_of_the_right() {
        struct Counting<'a>(&'a Fake, std::cell::Cell<u32>);
        impl Memory for Counting<'_> {
            fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
                self.1.set(self.1.get() + 1);
                self.0.read(addr, buf)
            }
        }
        let (regs, mem) = world(b"DE", 9000);
        let counting = Counting(&mem, std::cell::Cell::new(0));
        assert_eq!(
            eval_filter(&bench_filter(), &regs, &counting, 0),
            FilterResult::False
        );
        // `order` is a pointer in rdi: one read of `order.total`, nothing of `user.country`.
        assert_eq!(counting.1.get(), 1);
        // `true || …` likewise; a skip past the end just ends the program.
        let or = program(vec![Op::Bool(true), Op::SkipIfTrue(200), Op::Read(1)], &[]);
        assert_eq!(eval_filter(&or, &regs, &mem, 0), FilterResult::True);
    }

    #[test]
    fn scalars_strings_and_arithmetic() {
        use FilterResult::*;
        let long = "x".repeat(100);
        type Case<'a> = (Vec<Op>, &'a [&'a str], &'a [u8], FilterResult);
        let table: Vec<Case> = vec![
            // age == -7 (sign-extended i32)
            (vec![Op::Read(2), Op::Int(-7), Op::Eq], &[], b"DE", True),
            // age < 0 && total >= 12000
            (
                vec![
                    Op::Read(2),
                    Op::Int(0),
                    Op::Lt,
                    Op::Read(0),
                    Op::Uint(12000),
                    Op::Ge,
                    Op::And,
                ],
                &[],
                b"DE",
                True,
            ),
            // rate * 2 == 5 && rate > 2 (float vs int, exact)
            (
                vec![
                    Op::Read(3),
                    Op::Int(2),
                    Op::Mul,
                    Op::Int(5),
                    Op::Eq,
                    Op::Read(3),
                    Op::Int(2),
                    Op::Gt,
                    Op::And,
                ],
                &[],
                b"DE",
                True,
            ),
            // (total - 12001) / 1 == -1
            (
                vec![
                    Op::Read(0),
                    Op::Int(12001),
                    Op::Sub,
                    Op::Int(1),
                    Op::Div,
                    Op::Int(-1),
                    Op::Eq,
                ],
                &[],
                b"DE",
                True,
            ),
            // total / 0 → error
            (
                vec![Op::Read(0), Op::Int(0), Op::Div, Op::Int(1), Op::Eq],
                &[],
                b"DE",
                Error,
            ),
            // total * total overflows 64 bits → error
            (
                vec![Op::Read(0), Op::Uint(u64::MAX), Op::Mul, Op::Int(1), Op::Gt],
                &[],
                b"DE",
                Error,
            ),
            // false && error → false; true || error → true
            (
                vec![
                    Op::Bool(false),
                    Op::Read(0),
                    Op::Int(0),
                    Op::Div,
                    Op::Int(1),
                    Op::Eq,
                    Op::And,
                ],
                &[],
                b"DE",
                False,
            ),
            (
                vec![
                    Op::Bool(true),
                    Op::Read(0),
                    Op::Int(0),
                    Op::Div,
                    Op::Int(1),
                    Op::Eq,
                    Op::Or,
                ],
                &[],
                b"DE",
                True,
            ),
            // !(country != "DE")
            (
                vec![Op::Read(1), Op::Str(0), Op::Ne, Op::Not],
                &["DE"],
                b"DE",
                True,
            ),
            // country.starts_with("Ger") && country.ends_with("any") && country.contains("rma")
            (
                vec![
                    Op::Read(1),
                    Op::Str(0),
                    Op::StartsWith,
                    Op::Read(1),
                    Op::Str(1),
                    Op::EndsWith,
                    Op::And,
                    Op::Read(1),
                    Op::Str(2),
                    Op::Contains,
                    Op::And,
                ],
                &["Ger", "any", "rma"],
                b"Germany",
                True,
            ),
            // len(country) == 7; "Germany" < "Greece"
            (
                vec![
                    Op::Read(1),
                    Op::Len,
                    Op::Int(7),
                    Op::Eq,
                    Op::Read(1),
                    Op::Str(0),
                    Op::Lt,
                    Op::And,
                ],
                &["Greece"],
                b"Germany",
                True,
            ),
            // A long string: length known, prefix known, equality with a short constant false.
            (
                vec![
                    Op::Read(1),
                    Op::Len,
                    Op::Int(100),
                    Op::Eq,
                    Op::Read(1),
                    Op::Str(0),
                    Op::StartsWith,
                    Op::And,
                    Op::Read(1),
                    Op::Str(0),
                    Op::Ne,
                    Op::And,
                ],
                &["xx"],
                long.as_bytes(),
                True,
            ),
            // ...but whether it ends with or contains something beyond the bytes read is unknown.
            (
                vec![Op::Read(1), Op::Str(0), Op::EndsWith],
                &["y"],
                long.as_bytes(),
                Error,
            ),
            (
                vec![Op::Read(1), Op::Str(0), Op::Contains],
                &["y"],
                long.as_bytes(),
                Error,
            ),
            (
                vec![Op::Read(1), Op::Str(0), Op::Contains],
                &["xx"],
                long.as_bytes(),
                True,
            ),
            // hit_count % 3 == 0
            (
                vec![Op::HitCount, Op::Int(3), Op::Rem, Op::Int(0), Op::Eq],
                &[],
                b"DE",
                True,
            ),
            // Type mismatch → error; a non-bool result → error; stack underflow → error.
            (vec![Op::Read(1), Op::Int(3), Op::Gt], &[], b"DE", Error),
            (vec![Op::Read(0)], &[], b"DE", Error),
            (vec![Op::Eq], &[], b"DE", Error),
            (vec![Op::Read(9), Op::Int(1), Op::Eq], &[], b"DE", Error),
            (vec![Op::Str(5)], &[], b"DE", Error),
            (vec![], &[], b"DE", Error),
        ];
        for (i, (code, strings, country, want)) in table.into_iter().enumerate() {
            assert_eq!(
                run(&program(code, strings), country, 12000),
                want,
                "case {i}"
            );
        }
    }

    #[test]
    fn a_null_or_unreadable_pointer_is_an_error() {
        let f = program(vec![Op::Read(2), Op::Int(0), Op::Lt], &[]);
        let (regs, mut mem) = world(b"DE", 1);
        mem.0
            .insert(0x1000, [1u64.to_le_bytes(), 0u64.to_le_bytes()].concat());
        assert_eq!(eval_filter(&f, &regs, &mem, 0), FilterResult::Error);
        mem.0.insert(
            0x1000,
            [1u64.to_le_bytes(), 0xdead_0000u64.to_le_bytes()].concat(),
        );
        assert_eq!(eval_filter(&f, &regs, &mem, 0), FilterResult::Error);
        let unavailable = Filter {
            reads: vec![FilterRead {
                root: PieceSource::Unavailable,
                ..total()
            }],
            strings: vec![],
            code: vec![Op::Read(0), Op::Int(0), Op::Gt],
        };
        assert_eq!(
            eval_filter(&unavailable, &regs, &mem, 0),
            FilterResult::Error
        );
    }

    #[test]
    fn values_in_registers_and_constants() {
        let (mut regs, mem) = world(b"DE", 1);
        regs.gpr[1] = (-3i64) as u64; // rdx holds an i64
        regs.xmm[0][..8].copy_from_slice(&1.5f64.to_le_bytes());
        let reg = |reg, kind| FilterRead {
            root: PieceSource::Register { reg },
            derefs: vec![],
            offset: 0,
            kind,
        };
        let f = Filter {
            reads: vec![
                reg(
                    1,
                    ReadKind::Int {
                        size: 8,
                        signed: true,
                    },
                ),
                reg(17, ReadKind::Float { size: 8 }),
                FilterRead {
                    root: PieceSource::Implicit(vec![42]),
                    derefs: vec![],
                    offset: 0,
                    kind: ReadKind::Int {
                        size: 1,
                        signed: false,
                    },
                },
                FilterRead {
                    root: PieceSource::Computed {
                        reg: RDI,
                        offset: 8,
                    },
                    derefs: vec![],
                    offset: 0,
                    kind: ReadKind::Int {
                        size: 8,
                        signed: false,
                    },
                },
            ],
            strings: vec![],
            code: vec![
                Op::Read(0),
                Op::Int(-3),
                Op::Eq,
                Op::Read(1),
                Op::Float(1.5),
                Op::Eq,
                Op::And,
                Op::Read(2),
                Op::Int(42),
                Op::Eq,
                Op::And,
                Op::Read(3),
                Op::Uint(0x1008),
                Op::Eq,
                Op::And,
            ],
        };
        assert_eq!(eval_filter(&f, &regs, &mem, 0), FilterResult::True);
    }

    /// A parameter known only by its value at function entry (`DW_OP_entry_value(rdi)`):
    /// read from the frame's entry record when there is one, an error without one, and
    /// never from the register's value now.
    #[test]
    fn an_entry_value_is_read_from_the_entry_record() {
        use crate::capture::{EntryRegisters, LocOp};
        let (mut regs, mem) = world(b"DE", 1);
        regs.gpr[RDI as usize] = 1; // rdi now: reused since the entry
        let f = Filter {
            reads: vec![FilterRead {
                root: PieceSource::Expr {
                    ops: vec![LocOp::EntryReg {
                        reg: RDI,
                        offset: 0,
                    }],
                    value: true,
                },
                derefs: vec![],
                offset: 0,
                kind: ReadKind::Int {
                    size: 4,
                    signed: false,
                },
            }],
            strings: vec![],
            code: vec![Op::Read(0), Op::Int(9), Op::Eq],
        };
        let mut entry = EntryRegisters::default();
        entry.gpr[RDI as usize] = 9;
        assert_eq!(
            eval_filter_with_entry(&f, &regs, Some(&entry), &mem, 0),
            FilterResult::True
        );
        entry.gpr[RDI as usize] = 7;
        assert_eq!(
            eval_filter_with_entry(&f, &regs, Some(&entry), &mem, 0),
            FilterResult::False
        );
        assert_eq!(
            eval_filter_with_entry(&f, &regs, None, &mem, 0),
            FilterResult::Error
        );
        assert_eq!(eval_filter(&f, &regs, &mem, 0), FilterResult::Error);
    }

    mod random {
        use super::*;
        use proptest::prelude::*;

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (0u8..20).prop_map(Op::Read),
                any::<i64>().prop_map(Op::Int),
                any::<u64>().prop_map(Op::Uint),
                any::<f64>().prop_map(Op::Float),
                any::<bool>().prop_map(Op::Bool),
                (0u8..4).prop_map(Op::Str),
                prop::sample::select(vec![
                    Op::HitCount,
                    Op::Eq,
                    Op::Ne,
                    Op::Lt,
                    Op::Le,
                    Op::Gt,
                    Op::Ge,
                    Op::And,
                    Op::Or,
                    Op::Not,
                    Op::Add,
                    Op::Sub,
                    Op::Mul,
                    Op::Div,
                    Op::Rem,
                    Op::Neg,
                    Op::Len,
                    Op::Contains,
                    Op::StartsWith,
                    Op::EndsWith,
                ]),
            ]
        }

        fn read() -> impl Strategy<Value = FilterRead> {
            let root = prop_oneof![
                (0u16..40).prop_map(|reg| PieceSource::Register { reg }),
                (0u16..40, any::<i64>())
                    .prop_map(|(reg, offset)| PieceSource::Memory { reg, offset }),
                (0u64..0x200).prop_map(|addr| PieceSource::Absolute { addr }),
                (0u16..40, any::<i64>())
                    .prop_map(|(reg, offset)| PieceSource::Computed { reg, offset }),
                prop::collection::vec(any::<u8>(), 0..24).prop_map(PieceSource::Implicit),
                Just(PieceSource::Unavailable),
            ];
            let kind = prop_oneof![
                (any::<u8>(), any::<bool>()).prop_map(|(size, signed)| ReadKind::Int {
                    size: size % 10,
                    signed
                }),
                any::<u8>().prop_map(|size| ReadKind::Float { size: size % 10 }),
                Just(ReadKind::Bool),
                (0u32..40, 0u32..40).prop_map(|(ptr_offset, len_offset)| ReadKind::Str {
                    ptr_offset,
                    len_offset
                }),
            ];
            (root, prop::collection::vec(0u32..64, 0..12), 0u32..64, kind).prop_map(
                |(root, derefs, offset, kind)| FilterRead {
                    root,
                    derefs,
                    offset,
                    kind,
                },
            )
        }

        proptest! {
            #[test]
            fn random_filters_over_random_memory_never_panic(
                reads in prop::collection::vec(read(), 0..20),
                strings in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 0..4),
                code in prop::collection::vec(op(), 0..80),
                memory in prop::collection::vec(any::<u8>(), 0..0x200),
                gpr in prop::array::uniform17(0u64..0x220),
                hit_count in any::<u64>(),
            ) {
                let filter = Filter { reads, strings, code };
                let regs = Registers { gpr, ..Registers::default() };
                let mem = Fake(BTreeMap::from([(0u64, memory)]));
                let _ = eval_filter(&filter, &regs, &mem, hit_count);
            }
        }
    }
}

#[cfg(test)]
mod size {
    /// The stack machine's frame stays small on a signal stack: slots are 16 bytes.
    #[test]
    fn a_slot_is_16_bytes() {
        assert_eq!(std::mem::size_of::<super::Slot>(), 16);
    }
}
