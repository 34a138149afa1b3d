//! Bytes → typed [`Value`]s, Rust-aware, over any [`Memory`]: the live process or a
//! [`CapturedMemory`](nonstop_capture::capture::CapturedMemory) record.
//!
//! # Shapes (the JSON form of `Value`)
//! - structs: `Map` of fields in declaration order; tuples and tuple structs: `List`.
//! - enums: `variant` set, value `Map` (struct variant), `List` (tuple variant) or `Null`.
//! - C-like enums: `Str(name)` (an unknown value: `Int`).
//! - `char`: `Str`; `String`, `&str`, `PathBuf`, `&Path`, `OsString`, `&OsStr`: `Str`
//!   (invalid UTF-8 shown lossily).
//! - `&dyn Trait`, `Box<dyn Trait>`: the value of the concrete type its vtable names (with
//!   that type's name), once the load bias is set ([`DebugInfo::set_load_bias`]); else
//!   `Map {pointer, vtable}`.
//! - `Mutex<T>`, `RwLock<T>`: `Map {data, poisoned}`, the data as it is in memory (the hit
//!   takes no lock, so a locked value is shown mid-update if it is being written).
//! - references, `Box`, `Rc`, `Arc`: the pointee's value, with the pointer's type name.
//!   `Cell`, `RefCell`, `NonZero`: the inner value, with the wrapper's type name.
//! - raw and function pointers: `Uint(address)`; C `char *`: `Str`.
//! - `HashMap`, `BTreeMap`: `Map`; each key is rendered as a string: a string key as
//!   itself (`apple`), anything else as its [`debug_string`](nonstop_model::debug::debug_string) (`7`, `(1, 2)`).
//!   `HashSet`, `BTreeSet`: `List`. Entries in the program's iteration order.
//! - C++ (libstdc++, as gdb's printers show it): `std::string`, `std::string_view`:
//!   `Str`; `std::vector`, `std::array`, `std::span`, `std::deque`, `std::list`,
//!   `std::set`, `std::unordered_set`: `List`; `std::map`, `std::unordered_map`: `Map`
//!   (keys as above); `std::multimap`: `List` of `[key, value]`; `std::unique_ptr`: the
//!   value it owns (`Null` when empty); `std::shared_ptr`, `std::weak_ptr`:
//!   `Map {value, use_count, weak_count}` (the weak count as gdb shows it, without the
//!   owners' one; an expired `weak_ptr`'s value is `Null`); `std::optional`: the value, or
//!   `Null`; `std::variant`: the active alternative with `variant` set to its index.
//!   Base classes are fields named by the base (`"Base": {…}`); empty bases are left
//!   out. `std::vector<bool>` is an error (not decoded); libc++ types decode as structs.
//!
//! Limits: strings cut at `limits.string` bytes, collections at `limits.collection`
//! elements, structs at `limits.fields` fields (all marked `truncated`); pointers are
//! followed at most `limits.depth` times (deeper values: `truncated`, no value). Bytes
//! the capture did not take (`NotCaptured`) make the value `truncated`; unreadable
//! memory makes it an `error`.

use crate::types::{
    BTREE_CAPACITY, BTreeLayout, Bits, NodesLayout, PointerKind, Shape, StdLayout, Type, TypeKind,
    truncate,
};
use crate::{Availability, DebugInfo, DieRef, Variable};
use nonstop_capture::capture::{CapturedRoot, Memory, PieceSource, ReadError, Registers};
use nonstop_model::debug::key_string;
use nonstop_model::{CaptureLimits, Data, RefCounts, Value};
use std::cell::Cell;
use std::sync::Arc;

/// Most values one decode produces, whatever the limits say (bounds nested arrays).
const MAX_VALUES: usize = 50_000;
/// Largest single read the decoder makes.
const MAX_READ: u64 = 1 << 20;
/// Most hash buckets the decoder scans.
const MAX_BUCKETS: u64 = 1 << 24;

/// What a variable located by its entry value says when its frame's entry was not
/// recorded.
pub const ENTRY_NOT_RECORDED: &str = "unavailable here (its value at function entry was not recorded for this frame: the function was entered before the probe was armed, or the entry was missed)";

impl DebugInfo {
    /// Decodes one variable from its captured root (see [`DebugInfo::capture_plan`]),
    /// following pointers through `mem`.
    pub fn decode(
        &self,
        var: &Variable,
        root: &CapturedRoot,
        mem: &dyn Memory,
        limits: &CaptureLimits,
    ) -> Value {
        let type_name = var
            .type_die
            .and_then(|d| self.type_of(d))
            .map_or_else(|| var.type_name.clone(), |t| t.display.clone());
        match &var.availability {
            Availability::OptimizedOut => return Value::error(type_name, "optimized out"),
            Availability::EntryValue => {
                return Value::error(
                    type_name,
                    "optimized out (only its value at function entry is described)",
                );
            }
            Availability::Available(_) | Availability::FromEntry(_) => {}
        }
        match root {
            CapturedRoot::Bytes { bytes, addr } => match var.type_die {
                Some(ty) => self.decode_type(ty, bytes, *addr, mem, limits),
                None => Value::error(type_name, "no type information"),
            },
            CapturedRoot::Unavailable => match &var.availability {
                Availability::FromEntry(_) => Value::error(type_name, ENTRY_NOT_RECORDED),
                _ => Value::error(type_name, "optimized out"),
            },
            CapturedRoot::Fault => {
                let at = match &var.availability {
                    Availability::Available(p) => p.iter().find_map(|p| match p.source {
                        PieceSource::Absolute { addr } => Some(addr),
                        _ => None,
                    }),
                    _ => None,
                };
                let through = match &var.availability {
                    Availability::Available(p) => p.iter().any(|p| {
                        matches!(&p.source, PieceSource::Expr { ops, .. }
                            if ops.iter().any(|o| matches!(o, nonstop_capture::capture::LocOp::Deref { .. })))
                    }),
                    _ => false,
                };
                match at {
                    Some(a) => Value::error(type_name, format!("cannot read memory at {a:#x}")),
                    None if through => Value::error(
                        type_name,
                        "cannot read the variable's memory (a pointer on its location's path is bad)",
                    ),
                    None => Value::error(type_name, "cannot read the variable's memory"),
                }
            }
            CapturedRoot::NoSpace => Value {
                truncated: true,
                ..Value::new(type_name, Data::Null)
            },
        }
    }

    /// Reads a variable's own bytes live (no record): its pieces from `regs` and `mem`.
    /// The counterpart of what the capture executor does at a hit.
    pub fn read_root(&self, var: &Variable, regs: &Registers, mem: &dyn Memory) -> CapturedRoot {
        let Availability::Available(pieces) = &var.availability else {
            return CapturedRoot::Unavailable;
        };
        let mut bytes = Vec::new();
        let single = pieces.len() == 1;
        let mut addr = None;
        for p in pieces {
            let n = p.size as usize;
            if n as u64 > MAX_READ {
                return CapturedRoot::NoSpace;
            }
            let mut buf = vec![0u8; n];
            let ok = match &p.source {
                PieceSource::Register { reg } => match (regs.bytes(*reg), regs.value(*reg)) {
                    (Some(x), _) => {
                        let k = n.min(x.len());
                        buf[..k].copy_from_slice(&x[..k]);
                        true
                    }
                    (None, Some(v)) => {
                        let b = v.to_le_bytes();
                        let k = n.min(8);
                        buf[..k].copy_from_slice(&b[..k]);
                        true
                    }
                    _ => return CapturedRoot::Unavailable,
                },
                PieceSource::Memory { reg, offset } => match regs.value(*reg) {
                    Some(base) => {
                        let a = base.wrapping_add(*offset as u64);
                        if single {
                            addr = Some(a);
                        }
                        mem.read(a, &mut buf).is_ok()
                    }
                    None => false,
                },
                PieceSource::Absolute { addr: a } => {
                    if single {
                        addr = Some(*a);
                    }
                    mem.read(*a, &mut buf).is_ok()
                }
                PieceSource::Computed { reg, offset } => match regs.value(*reg) {
                    Some(base) => {
                        let b = base.wrapping_add(*offset as u64).to_le_bytes();
                        let k = n.min(8);
                        buf[..k].copy_from_slice(&b[..k]);
                        true
                    }
                    None => false,
                },
                PieceSource::Implicit(v) => {
                    let k = n.min(v.len());
                    buf[..k].copy_from_slice(&v[..k]);
                    true
                }
                PieceSource::Expr { ops, value } => {
                    match nonstop_capture::capture::eval_location(ops, regs, mem) {
                        Ok(v) if *value => {
                            let b = v.to_le_bytes();
                            let k = n.min(8);
                            buf[..k].copy_from_slice(&b[..k]);
                            true
                        }
                        Ok(a) => {
                            if single {
                                addr = Some(a);
                            }
                            mem.read(a, &mut buf).is_ok()
                        }
                        Err(nonstop_capture::capture::LocError::Fault(_)) => false,
                        Err(
                            nonstop_capture::capture::LocError::Invalid
                            | nonstop_capture::capture::LocError::NoEntryValue,
                        ) => {
                            return CapturedRoot::Unavailable;
                        }
                    }
                }
                PieceSource::Unavailable => return CapturedRoot::Unavailable,
            };
            if !ok {
                return CapturedRoot::Fault;
            }
            bytes.extend_from_slice(&buf);
        }
        CapturedRoot::Bytes { bytes, addr }
    }

    /// Decodes a value of type `ty` from its `bytes` (found at `addr`, when it lives in
    /// memory), following pointers through `mem` within `limits`.
    pub fn decode_type(
        &self,
        ty: DieRef,
        bytes: &[u8],
        addr: Option<u64>,
        mem: &dyn Memory,
        limits: &CaptureLimits,
    ) -> Value {
        let _ = addr;
        let d = Decoder {
            di: self,
            mem,
            limits,
            budget: Cell::new(MAX_VALUES),
        };
        d.value(Some(ty), bytes, limits.depth)
    }
}

struct Decoder<'a> {
    di: &'a DebugInfo,
    mem: &'a dyn Memory,
    limits: &'a CaptureLimits,
    budget: Cell<usize>,
}

/// Why bytes could not be read.
enum Miss {
    /// Not captured: show what we have, marked truncated.
    Truncated,
    /// The read faulted at this address.
    Fault(u64),
}

/// A bit-field's value as the little-endian bytes of its type (sign-extended when the
/// type is signed), or `None` when its bits are not all in `bytes`.
fn bit_field(bytes: &[u8], bits: Bits, ty: Option<&Type>) -> Option<[u8; 8]> {
    let first = usize::try_from(bits.offset / 8).ok()?;
    let last = usize::try_from((bits.offset + bits.size).div_ceil(8)).ok()?;
    let held = bytes.get(first..last)?;
    let mut word = [0u8; 16];
    word.get_mut(..held.len())?.copy_from_slice(held);
    let shift = bits.offset % 8;
    let mask = if bits.size >= 64 {
        u128::from(u64::MAX)
    } else {
        (1u128 << bits.size) - 1
    };
    let mut v = ((u128::from_le_bytes(word) >> shift) & mask) as u64;
    let signed = ty.is_some_and(|t| {
        matches!(
            t.kind,
            TypeKind::Int { signed: true, .. } | TypeKind::Enumeration { signed: true, .. }
        )
    });
    if signed && bits.size < 64 && v >> (bits.size - 1) & 1 == 1 {
        v |= u64::MAX << bits.size;
    }
    Some(v.to_le_bytes())
}

fn truncated(type_name: impl Into<String>) -> Value {
    Value {
        truncated: true,
        ..Value::new(type_name, Data::Null)
    }
}

fn le(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = bytes.len().min(8);
    b[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(b)
}

impl Decoder<'_> {
    fn read(&self, addr: u64, len: u64) -> Result<Vec<u8>, Miss> {
        if len > MAX_READ {
            return Err(Miss::Truncated);
        }
        let mut buf = vec![0u8; len as usize];
        match self.mem.read(addr, &mut buf) {
            Ok(()) => Ok(buf),
            Err(ReadError::NotCaptured) => Err(Miss::Truncated),
            Err(ReadError::Fault) => Err(Miss::Fault(addr)),
        }
    }

    fn miss(&self, name: &str, m: Miss) -> Value {
        match m {
            Miss::Truncated => truncated(name),
            Miss::Fault(a) => Value::error(name, format!("cannot read memory at {a:#x}")),
        }
    }

    /// Takes one unit of the value budget; `false` when it is spent.
    fn spend(&self) -> bool {
        let b = self.budget.get();
        if b == 0 {
            return false;
        }
        self.budget.set(b - 1);
        true
    }

    fn field_bytes(bytes: &[u8], offset: u64, size: u64) -> Option<&[u8]> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(usize::try_from(size).ok()?)?;
        bytes.get(start..end)
    }

    fn value(&self, die: Option<DieRef>, bytes: &[u8], hops: u32) -> Value {
        let Some(ty) = die.and_then(|d| self.di.type_of(d)) else {
            return Value::error("?", "unknown type");
        };
        if !self.spend() {
            return truncated(ty.display.clone());
        }
        let Some(bytes) = bytes.get(
            ..usize::try_from(ty.size)
                .unwrap_or(usize::MAX)
                .min(bytes.len()),
        ) else {
            return truncated(ty.display.clone());
        };
        if (bytes.len() as u64) < ty.size {
            return truncated(ty.display.clone());
        }
        self.typed(&ty, bytes, hops)
    }

    fn typed(&self, ty: &Arc<Type>, bytes: &[u8], hops: u32) -> Value {
        let name = ty.display.clone();
        match &ty.kind {
            TypeKind::Unit | TypeKind::Function => Value::new(name, Data::Null),
            TypeKind::Bool => Value::new(name, Data::Bool(bytes.first().is_some_and(|b| *b != 0))),
            TypeKind::Char => {
                let c = le(bytes) as u32;
                match char::from_u32(c) {
                    Some(ch) => Value::new(name, Data::Str(ch.to_string())),
                    None => Value::error(name, format!("invalid char {c:#x}")),
                }
            }
            TypeKind::Int { signed, .. } => Value::new(name, int_data(bytes, *signed)),
            TypeKind::Float => match bytes.len() {
                4 => Value::new(
                    name,
                    Data::Float(f64::from(f32::from_le_bytes([
                        bytes[0], bytes[1], bytes[2], bytes[3],
                    ]))),
                ),
                8 => Value::new(name, Data::Float(f64::from_bits(le(bytes)))),
                n => Value::error(name, format!("unsupported float size {n}")),
            },
            TypeKind::Pointer { pointee, kind } => self.pointer(ty, *pointee, *kind, bytes, hops),
            TypeKind::Struct { .. } => match self.di.std_layout(ty) {
                Some(layout) => self.std(ty, &layout, bytes, hops),
                None => self.structure(ty, bytes, hops),
            },
            TypeKind::Union { fields } => {
                let mut out = Vec::new();
                let mut cut = false;
                for f in fields {
                    if out.len() >= self.limits.fields as usize {
                        cut = true;
                        break;
                    }
                    let size = self.di.type_size(f.ty);
                    let v = match Self::field_bytes(bytes, f.offset, size) {
                        Some(b) => self.value(f.ty, b, hops),
                        None => truncated("?"),
                    };
                    out.push((f.name.clone(), v));
                }
                Value {
                    truncated: cut,
                    ..Value::new(name, Data::Map(out))
                }
            }
            TypeKind::Array { elem, dims } => self.array(&name, *elem, dims, bytes, hops),
            TypeKind::Enum { discr, variants } => {
                let chosen = match discr {
                    Some(d) => {
                        let Some(raw) = Self::field_bytes(bytes, d.offset, d.size.min(8)) else {
                            return truncated(name);
                        };
                        let tag = truncate(le(raw), d.size);
                        match variants
                            .iter()
                            .find(|v| v.discr_value == Some(tag))
                            .or_else(|| variants.iter().find(|v| v.discr_value.is_none()))
                        {
                            Some(v) => v,
                            None => {
                                return Value::error(
                                    name,
                                    format!("invalid enum discriminant {tag:#x}"),
                                );
                            }
                        }
                    }
                    None => match variants.as_slice() {
                        [v] => v,
                        _ => match variants.iter().find(|v| v.discr_value.is_none()) {
                            Some(v) => v,
                            None => return Value::error(name, "enum without a discriminant"),
                        },
                    },
                };
                let inner = chosen.ty.and_then(|d| self.di.type_of(d));
                let (data, cut) = match inner.as_deref() {
                    Some(vt) => match &vt.kind {
                        TypeKind::Struct { fields, .. } if fields.is_empty() => (Data::Null, false),
                        TypeKind::Struct { .. } => {
                            let s = self.structure(vt, bytes, hops);
                            (s.value, s.truncated)
                        }
                        _ => (Data::Null, false),
                    },
                    None => (Data::Null, false),
                };
                let mut v = Value::new(name, data);
                v.variant = Some(chosen.name.clone());
                v.truncated = cut;
                v
            }
            TypeKind::Enumeration { signed, values } => {
                let raw = truncate(le(bytes), ty.size);
                match values.iter().find(|(_, v)| *v == raw) {
                    Some((n, _)) => Value::new(name, Data::Str(n.clone())),
                    None => Value::new(name, int_data(bytes, *signed)),
                }
            }
            TypeKind::Unknown => Value::error(name, "type not supported"),
        }
    }

    fn pointer(
        &self,
        ty: &Type,
        pointee: Option<DieRef>,
        kind: PointerKind,
        bytes: &[u8],
        hops: u32,
    ) -> Value {
        let name = ty.display.clone();
        let addr = le(bytes);
        let target = pointee.and_then(|d| self.di.type_of(d));
        let c_string = matches!(
            target.as_deref().map(|t| &t.kind),
            Some(TypeKind::Int { c_char: true, .. })
        );
        match kind {
            PointerKind::Function => return Value::new(name, Data::Uint(addr)),
            PointerKind::Raw if !c_string => return Value::new(name, Data::Uint(addr)),
            _ => {}
        }
        if addr == 0 {
            return Value::new(name, Data::Null);
        }
        if hops == 0 {
            return truncated(name);
        }
        if c_string {
            return match self.c_string(addr) {
                Ok((s, cut)) => Value {
                    truncated: cut,
                    ..Value::new(name, Data::Str(s))
                },
                Err(m) => self.miss(&name, m),
            };
        }
        let Some(target) = target else {
            return Value::new(name, Data::Uint(addr));
        };
        let data = if target.size == 0 {
            Vec::new()
        } else {
            match self.read(addr, target.size) {
                Ok(b) => b,
                Err(m) => return self.miss(&name, m),
            }
        };
        let mut v = self.typed(&target, &data, hops - 1);
        v.type_name = name;
        v
    }

    fn c_string(&self, addr: u64) -> Result<(String, bool), Miss> {
        let max = self.limits.string as u64;
        let mut out = Vec::new();
        let mut byte = [0u8; 1];
        for i in 0..=max {
            match self.mem.read(addr.wrapping_add(i), &mut byte) {
                Ok(()) if byte[0] == 0 => {
                    return Ok((String::from_utf8_lossy(&out).into_owned(), false));
                }
                Ok(()) if i == max => break,
                Ok(()) => out.push(byte[0]),
                Err(ReadError::NotCaptured) if i > 0 => break,
                Err(ReadError::NotCaptured) => return Err(Miss::Truncated),
                Err(ReadError::Fault) if i == 0 => return Err(Miss::Fault(addr)),
                Err(ReadError::Fault) => break,
            }
        }
        Ok((String::from_utf8_lossy(&out).into_owned(), true))
    }

    fn structure(&self, ty: &Type, bytes: &[u8], hops: u32) -> Value {
        let name = ty.display.clone();
        let TypeKind::Struct {
            fields, tuple_like, ..
        } = &ty.kind
        else {
            return Value::error(name, "not a struct");
        };
        let mut out: Vec<(String, Value)> = Vec::new();
        let mut cut = false;
        for f in fields {
            let fty = f.ty.and_then(|d| self.di.type_of(d));
            // Markers carry no data: `PhantomData`, zero-sized allocators.
            if fty
                .as_deref()
                .is_some_and(|t| t.base_name() == "core::marker::PhantomData")
            {
                continue;
            }
            // C++ base classes are fields named by the base; empty ones (tags) are left out.
            if f.base && fty.as_deref().is_none_or(is_empty_class) {
                continue;
            }
            if out.len() >= self.limits.fields as usize {
                cut = true;
                break;
            }
            let size = fty.as_deref().map_or(0, |t| t.size);
            let key = match (&fty, f.base) {
                (Some(t), true) => t.display.clone(),
                _ => f.name.clone(),
            };
            let v = match (f.bits, Self::field_bytes(bytes, f.offset, size)) {
                (Some(bits), _) => match bit_field(bytes, bits, fty.as_deref()) {
                    Some(b) => self.value(f.ty, &b[..size.min(8) as usize], hops),
                    None => truncated(fty.map_or_else(|| "?".to_string(), |t| t.display.clone())),
                },
                (None, Some(b)) => self.value(f.ty, b, hops),
                (None, None) => {
                    truncated(fty.map_or_else(|| "?".to_string(), |t| t.display.clone()))
                }
            };
            out.push((key, v));
        }
        let data = if *tuple_like {
            Data::List(out.into_iter().map(|(_, v)| v).collect())
        } else {
            Data::Map(out)
        };
        Value {
            truncated: cut,
            ..Value::new(name, data)
        }
    }

    fn array(
        &self,
        name: &str,
        elem: Option<DieRef>,
        dims: &[u64],
        bytes: &[u8],
        hops: u32,
    ) -> Value {
        let Some((&n, rest)) = dims.split_first() else {
            return self.value(elem, bytes, hops);
        };
        let elem_ty = elem.and_then(|d| self.di.type_of(d));
        let esize = rest
            .iter()
            .fold(elem_ty.as_deref().map_or(0, |t| t.size), |a, d| {
                a.saturating_mul(*d)
            });
        // C character arrays are text up to their first NUL.
        if rest.is_empty()
            && let Some(t) = elem_ty.as_deref()
            && matches!(t.kind, TypeKind::Int { c_char: true, .. })
            && t.name == "char"
        {
            let take = bytes.len().min(n as usize);
            let text = &bytes[..take];
            let end = text.iter().position(|b| *b == 0).unwrap_or(text.len());
            let max = self.limits.string as usize;
            let cut = end > max;
            return Value {
                truncated: cut,
                ..Value::new(
                    name,
                    Data::Str(String::from_utf8_lossy(&text[..end.min(max)]).into_owned()),
                )
            };
        }
        let max = n.min(self.limits.collection as u64);
        let mut items = Vec::new();
        let mut cut = n > max;
        for i in 0..max {
            let Some(b) = Self::field_bytes(bytes, i.saturating_mul(esize), esize) else {
                cut = true;
                break;
            };
            let v = if rest.is_empty() {
                self.value(elem, b, hops)
            } else {
                // `int[2][3]` → `int[3]`.
                let inner_name = match name.find('[').and_then(|i| Some((i, name[i..].find(']')?)))
                {
                    Some((i, j)) => format!("{}{}", &name[..i], &name[i + j + 1..]),
                    None => name.to_string(),
                };
                self.array(&inner_name, elem, rest, b, hops)
            };
            items.push(v);
            if self.budget.get() == 0 {
                cut = true;
                break;
            }
        }
        Value {
            truncated: cut,
            ..Value::new(name, Data::List(items))
        }
    }

    fn std(&self, ty: &Type, layout: &StdLayout, bytes: &[u8], hops: u32) -> Value {
        let name = ty.display.clone();
        let at = |off: u64| Self::field_bytes(bytes, off, 8).map(le);
        match layout {
            StdLayout::Slice {
                ptr,
                len,
                elem,
                elem_size,
                text,
            } => {
                let (Some(p), Some(n)) = (at(*ptr), at(*len)) else {
                    return truncated(name);
                };
                if hops == 0 {
                    return truncated(name);
                }
                if *text {
                    let max = u64::from(self.limits.string);
                    let take = n.min(max);
                    let data = if take == 0 {
                        Vec::new()
                    } else {
                        match self.read(p, take) {
                            Ok(b) => b,
                            Err(m) => return self.miss(&name, m),
                        }
                    };
                    let cut = n > max;
                    return Value {
                        truncated: cut,
                        ..Value::new(name, Data::Str(utf8(&data, cut)))
                    };
                }
                self.elements(name, p, n, *elem, *elem_size, hops - 1)
            }
            StdLayout::Ring {
                ptr,
                cap,
                head,
                len,
                elem,
                elem_size,
            } => {
                let (Some(p), Some(c), Some(h), Some(n)) =
                    (at(*ptr), at(*cap), at(*head), at(*len))
                else {
                    return truncated(name);
                };
                if hops == 0 {
                    return truncated(name);
                }
                if n > 0 && (c == 0 || h >= c || n > c) {
                    return Value::error(name, "inconsistent VecDeque (head/len beyond capacity)");
                }
                let max = n.min(u64::from(self.limits.collection));
                let first = max.min(c.saturating_sub(h));
                let a = self.elements(
                    name.clone(),
                    p.wrapping_add(h.wrapping_mul(*elem_size)),
                    first,
                    *elem,
                    *elem_size,
                    hops - 1,
                );
                let b = self.elements(name.clone(), p, max - first, *elem, *elem_size, hops - 1);
                let mut items = Vec::new();
                let mut cut = n > max || a.truncated || b.truncated;
                for part in [a, b] {
                    if let Some(e) = part.error {
                        return Value::error(name, e);
                    }
                    if let Data::List(l) = part.value {
                        items.extend(l);
                    } else {
                        cut = true;
                    }
                }
                Value {
                    truncated: cut,
                    ..Value::new(name, Data::List(items))
                }
            }
            StdLayout::Hash {
                ctrl,
                mask,
                items,
                pair,
                pair_size,
                set,
            } => self.hash(
                name,
                bytes,
                (*ctrl, *mask, *items),
                *pair,
                *pair_size,
                *set,
                hops,
            ),
            StdLayout::BTree(l) => self.btree(name, bytes, l, hops),
            StdLayout::Shared {
                ptr,
                inner_size,
                value_offset,
                value,
                counts,
            } => {
                let Some(p) = at(*ptr) else {
                    return truncated(name);
                };
                if hops == 0 {
                    return truncated(name);
                }
                if p == 0 {
                    return Value::error(name, "null pointer");
                }
                let data = match self.read(p, *inner_size) {
                    Ok(b) => b,
                    Err(m) => return self.miss(&name, m),
                };
                let size = self.di.type_size(*value);
                let mut v = match Self::field_bytes(&data, *value_offset, size) {
                    Some(b) => self.value(*value, b, hops - 1),
                    None => truncated(name.clone()),
                };
                v.type_name = name;
                // As `Rc::weak_count` counts: the strong owners hold one weak count together.
                v.refs = counts.and_then(|(s, w)| {
                    let strong = le(Self::field_bytes(&data, s, 8)?);
                    let weak = le(Self::field_bytes(&data, w, 8)?);
                    Some(RefCounts {
                        strong,
                        weak: if strong > 0 {
                            weak.saturating_sub(1)
                        } else {
                            weak
                        },
                    })
                });
                v
            }
            StdLayout::Transparent { offset, inner } => {
                let size = self.di.type_size(*inner);
                let mut v = match Self::field_bytes(bytes, *offset, size) {
                    Some(b) => self.value(*inner, b, hops),
                    None => truncated(name.clone()),
                };
                v.type_name = name;
                v
            }
            StdLayout::Lock {
                offset,
                inner,
                poison,
            } => {
                let size = self.di.type_size(*inner);
                let data = match Self::field_bytes(bytes, *offset, size) {
                    Some(b) => self.value(*inner, b, hops),
                    None => truncated("?"),
                };
                let Some(flag) = Self::field_bytes(bytes, *poison, 1) else {
                    return truncated(name);
                };
                let poisoned = Value::new("bool", Data::Bool(flag.first() != Some(&0)));
                Value {
                    truncated: data.truncated,
                    ..Value::new(
                        name,
                        Data::Map(vec![("data".into(), data), ("poisoned".into(), poisoned)]),
                    )
                }
            }
            StdLayout::Dyn {
                pointer, vtable, ..
            } => {
                let (Some(p), Some(vt)) = (at(*pointer), at(*vtable)) else {
                    return truncated(name);
                };
                // An unknown vtable (no load bias set, a vtable rustc did not describe):
                // the pointer pair, as gdb shows it.
                let Some(concrete) = self.di.vtable_at(vt).map(|v| v.concrete) else {
                    let word = |v| Value::new("*const ()", Data::Uint(v));
                    return Value::new(
                        name,
                        Data::Map(vec![
                            ("pointer".into(), word(p)),
                            ("vtable".into(), word(vt)),
                        ]),
                    );
                };
                if hops == 0 {
                    return truncated(name);
                }
                if p == 0 {
                    return Value::error(name, "null pointer");
                }
                let size = self.di.type_size(Some(concrete));
                match self.read(p, size) {
                    // Shown as the concrete type (its name replaces `dyn Trait`'s).
                    Ok(b) => self.value(Some(concrete), &b, hops - 1),
                    Err(m) => self.miss(&name, m),
                }
            }
            StdLayout::Unsupported(why) => Value::error(name, *why),
            StdLayout::Fixed {
                ptr,
                count,
                elem,
                elem_size,
            } => {
                let Some(p) = at(*ptr) else {
                    return truncated(name);
                };
                if hops == 0 {
                    return truncated(name);
                }
                if p == 0 {
                    return Value::error(name, "null pointer");
                }
                self.elements(name, p, *count, *elem, *elem_size, hops - 1)
            }
            StdLayout::Span {
                begin,
                end,
                elem,
                elem_size,
            } => {
                let (Some(b), Some(e)) = (at(*begin), at(*end)) else {
                    return truncated(name);
                };
                if hops == 0 {
                    return truncated(name);
                }
                if e < b || *elem_size == 0 {
                    return Value::error(name, "inconsistent std::vector (end before begin)");
                }
                self.elements(name, b, (e - b) / elem_size, *elem, *elem_size, hops - 1)
            }
            StdLayout::Counted {
                ptr,
                value,
                block,
                use_count,
                weak_count,
                ..
            } => self.counted(
                name,
                bytes,
                (*ptr, *block),
                *value,
                (*use_count, *weak_count),
                hops,
            ),
            StdLayout::Optional {
                engaged,
                offset,
                value,
            } => {
                let Some(flag) = Self::field_bytes(bytes, *engaged, 1) else {
                    return truncated(name);
                };
                if flag[0] == 0 {
                    return Value::new(name, Data::Null);
                }
                let size = self.di.type_size(*value);
                let mut v = match Self::field_bytes(bytes, *offset, size) {
                    Some(b) => self.value(*value, b, hops),
                    None => truncated(name.clone()),
                };
                v.type_name = name;
                v
            }
            StdLayout::Alternatives {
                index,
                index_size,
                alts,
            } => {
                let Some(raw) = Self::field_bytes(bytes, *index, *index_size) else {
                    return truncated(name);
                };
                let k = le(raw);
                // `variant_npos` cast to the index type: valueless by exception.
                if k == truncate(u64::MAX, *index_size) {
                    return Value::new(name, Data::Null);
                }
                let Some((off, alt)) = usize::try_from(k).ok().and_then(|k| alts.get(k)) else {
                    return Value::error(name, format!("invalid std::variant index {k}"));
                };
                let size = self.di.type_size(*alt);
                let mut v = match Self::field_bytes(bytes, *off, size) {
                    Some(b) => self.value(*alt, b, hops),
                    None => truncated(name.clone()),
                };
                v.type_name = name;
                v.variant = Some(k.to_string());
                v
            }
            StdLayout::Nodes(l) => self.node_values(name, bytes, l, hops),
            StdLayout::Deque {
                start,
                finish,
                elem,
                elem_size,
                buf_elems,
            } => {
                let get = |offs: &[u64; 3]| -> Option<[u64; 3]> {
                    Some([at(offs[0])?, at(offs[1])?, at(offs[2])?])
                };
                let (Some(s), Some(f)) = (get(start), get(finish)) else {
                    return truncated(name);
                };
                if hops == 0 {
                    return truncated(name);
                }
                self.deque(name, s, f, *elem, *elem_size, *buf_elems, hops - 1)
            }
        }
    }

    /// A `std::deque`'s elements, buffer by buffer, as [`PlanNode::Deque`] reads them.
    ///
    /// [`PlanNode::Deque`]: nonstop_capture::capture::PlanNode::Deque
    #[allow(clippy::too_many_arguments)]
    fn deque(
        &self,
        name: String,
        [s_cur, s_last, s_node]: [u64; 3],
        [f_cur, f_first, f_node]: [u64; 3],
        elem: Option<DieRef>,
        size: u64,
        buf: u64,
        hops: u32,
    ) -> Value {
        if size == 0 || f_node < s_node || (f_node - s_node) % 8 != 0 {
            return Value::error(name, "inconsistent std::deque");
        }
        let count = |from: u64, to: u64| to.saturating_sub(from) / size;
        let buf = buf.max(1);
        let middle = count(s_node, f_node).saturating_sub(1);
        let total = if s_node == f_node {
            count(s_cur, f_cur)
        } else {
            count(s_cur, s_last)
                .saturating_add(middle.saturating_mul(buf))
                .saturating_add(count(f_first, f_cur))
        };
        let max = u64::from(self.limits.collection);
        let mut left = total.min(max);
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        if s_node == f_node {
            ranges.push((s_cur, left));
        } else {
            let first = count(s_cur, s_last).min(left);
            ranges.push((s_cur, first));
            left -= first;
            let wanted = left.div_ceil(buf).min(middle);
            if wanted > 0 {
                let map = match self.read(s_node.wrapping_add(8), wanted.saturating_mul(8)) {
                    Ok(m) => m,
                    Err(m) => return self.miss(&name, m),
                };
                for chunk in map.chunks_exact(8) {
                    let n = buf.min(left);
                    ranges.push((le(chunk), n));
                    left -= n;
                }
            }
            if left > 0 && wanted == middle {
                ranges.push((f_first, count(f_first, f_cur).min(left)));
            }
        }
        let mut items = Vec::new();
        let mut cut = total > max;
        for (ptr, n) in ranges {
            let part = self.elements(name.clone(), ptr, n, elem, size, hops);
            if let Some(e) = part.error {
                return Value::error(name, e);
            }
            cut |= part.truncated;
            if let Data::List(l) = part.value {
                items.extend(l);
            }
        }
        Value {
            truncated: cut,
            ..Value::new(name, Data::List(items))
        }
    }

    /// `std::shared_ptr` / `weak_ptr`: `{value, use_count, weak_count}` with the counts
    /// as gdb's printer shows them (the weak count without the one the owners hold).
    fn counted(
        &self,
        name: String,
        bytes: &[u8],
        (ptr, block): (u64, u64),
        value: Option<DieRef>,
        (use_at, weak_at): (u64, u64),
        hops: u32,
    ) -> Value {
        let at = |off: u64| Self::field_bytes(bytes, off, 8).map(le);
        let (Some(p), Some(b)) = (at(ptr), at(block)) else {
            return truncated(name);
        };
        if hops == 0 {
            return truncated(name);
        }
        let count = |v: i64| Value::new("int", Data::Int(v));
        let (uses, weaks) = if b == 0 {
            (0, 0)
        } else {
            let Some(end) = use_at.max(weak_at).checked_add(4) else {
                return Value::error(name, "inconsistent std::shared_ptr");
            };
            let data = match self.read(b, end) {
                Ok(d) => d,
                Err(m) => return self.miss(&name, m),
            };
            let get = |o: u64| {
                Self::field_bytes(&data, o, 4).map_or(0, |x| i64::from(le(x) as u32 as i32))
            };
            let (u, w) = (get(use_at), get(weak_at));
            (u, if u > 0 { w - 1 } else { w })
        };
        // An expired `weak_ptr` points at a destroyed value: not read.
        let v = if p == 0 || uses == 0 {
            Value::new(
                self.di
                    .type_of_opt(value)
                    .map_or_else(|| "?".into(), |t| t.display.clone()),
                Data::Null,
            )
        } else {
            let size = self.di.type_size(value);
            match self.read(p, size) {
                Ok(d) => self.value(value, &d, hops - 1),
                Err(m) => self.miss("?", m),
            }
        };
        let cut = v.truncated;
        Value {
            truncated: cut,
            ..Value::new(
                name,
                Data::Map(vec![
                    ("value".into(), v),
                    ("use_count".into(), count(uses)),
                    ("weak_count".into(), count(weaks)),
                ]),
            )
        }
    }

    /// The values of a C++ node-based container (`std::map`, `set`, `list`,
    /// `unordered_map`, …) in its iteration order, capped by the collection limit.
    fn node_values(&self, name: String, bytes: &[u8], l: &NodesLayout, hops: u32) -> Value {
        let at = |off: u64| Self::field_bytes(bytes, off, 8).map(le);
        let (Some(root), Some(count)) = (at(l.root), at(l.count)) else {
            return truncated(name);
        };
        let empty = match l.shape {
            Shape::Map => Data::Map(Vec::new()),
            Shape::List | Shape::MultiMap => Data::List(Vec::new()),
        };
        if count == 0 || root == 0 {
            return Value::new(name, empty);
        }
        if hops == 0 {
            return truncated(name);
        }
        let max = u64::from(self.limits.collection).min(count) as usize;
        let mut cut = count > max as u64;
        let node_size = l.value_offset.saturating_add(l.value_size);
        let mut values = Vec::new();
        let read_node = |addr: u64| -> Result<Vec<u8>, Miss> { self.read(addr, node_size) };
        let link = |node: &[u8], off: u64| Self::field_bytes(node, off, 8).map_or(0, le);
        let value_of = |node: &[u8]| match node.get(l.value_offset as usize..) {
            Some(b) => self.value(l.value, b, hops - 1),
            None => truncated("?"),
        };
        if l.tree {
            let mut stack: Vec<Vec<u8>> = Vec::new();
            let mut cur = root;
            'walk: while values.len() < max {
                while cur != 0 {
                    if stack.len() >= nonstop_capture::capture::MAX_TREE_DEPTH {
                        return Value::error(name, "inconsistent std::map (tree too deep)");
                    }
                    match read_node(cur) {
                        Ok(node) => {
                            cur = link(&node, l.left);
                            stack.push(node);
                        }
                        Err(Miss::Truncated) => {
                            cut = true;
                            break 'walk;
                        }
                        Err(Miss::Fault(a)) => {
                            return Value::error(name, format!("cannot read memory at {a:#x}"));
                        }
                    }
                }
                let Some(node) = stack.pop() else { break };
                values.push(value_of(&node));
                cur = link(&node, l.right);
                if self.budget.get() == 0 {
                    cut = true;
                    break;
                }
            }
        } else {
            let mut p = root;
            while values.len() < max && p != 0 {
                match read_node(p) {
                    Ok(node) => {
                        values.push(value_of(&node));
                        p = link(&node, l.left);
                    }
                    Err(Miss::Truncated) => {
                        cut = true;
                        break;
                    }
                    Err(Miss::Fault(a)) => {
                        return Value::error(name, format!("cannot read memory at {a:#x}"));
                    }
                }
                if self.budget.get() == 0 {
                    cut = true;
                    break;
                }
            }
        }
        if values.len() < max {
            cut = true;
        }
        let data = match l.shape {
            Shape::List => Data::List(values),
            Shape::Map => Data::Map(
                values
                    .into_iter()
                    .map(|v| {
                        cut |= v.truncated;
                        let (k, v) = pair_parts(v);
                        // A cut key is not the key: the map says so.
                        cut |= k.truncated;
                        (key_string(&k), v)
                    })
                    .collect(),
            ),
            Shape::MultiMap => Data::List(
                values
                    .into_iter()
                    .map(|v| {
                        let (k, v) = pair_parts(v);
                        Value::new("std::pair", Data::List(vec![k, v]))
                    })
                    .collect(),
            ),
        };
        Value {
            truncated: cut,
            ..Value::new(name, data)
        }
    }

    /// `n` elements of `elem_size` bytes at `ptr`, capped by the collection limit.
    fn elements(
        &self,
        name: String,
        ptr: u64,
        n: u64,
        elem: Option<DieRef>,
        elem_size: u64,
        hops: u32,
    ) -> Value {
        let max = n.min(u64::from(self.limits.collection));
        let mut cut = n > max;
        let mut items = Vec::new();
        if elem_size == 0 {
            for _ in 0..max {
                if !self.spend() {
                    cut = true;
                    break;
                }
                items.push(self.value(elem, &[], hops));
            }
        } else if max > 0 {
            // One read for all, as the capture takes them; element by element when only a
            // prefix was captured.
            let whole = self.read(ptr, max.saturating_mul(elem_size));
            match whole {
                Ok(data) => {
                    for chunk in data.chunks_exact(elem_size as usize) {
                        items.push(self.value(elem, chunk, hops));
                        if self.budget.get() == 0 {
                            cut = true;
                            break;
                        }
                    }
                }
                Err(Miss::Fault(a)) => {
                    return Value::error(name, format!("cannot read memory at {a:#x}"));
                }
                Err(Miss::Truncated) => {
                    cut = true;
                    for i in 0..max {
                        match self.read(ptr.wrapping_add(i * elem_size), elem_size) {
                            Ok(b) => items.push(self.value(elem, &b, hops)),
                            Err(_) => break,
                        }
                        if self.budget.get() == 0 {
                            break;
                        }
                    }
                }
            }
        }
        Value {
            truncated: cut,
            ..Value::new(name, Data::List(items))
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn hash(
        &self,
        name: String,
        bytes: &[u8],
        offs: (u64, u64, u64),
        pair: DieRef,
        pair_size: u64,
        set: bool,
        hops: u32,
    ) -> Value {
        let at = |off: u64| Self::field_bytes(bytes, off, 8).map(le);
        let (Some(ctrl), Some(mask), Some(items)) = (at(offs.0), at(offs.1), at(offs.2)) else {
            return truncated(name);
        };
        let empty = if set {
            Data::List(Vec::new())
        } else {
            Data::Map(Vec::new())
        };
        if items == 0 {
            return Value::new(name, empty);
        }
        if hops == 0 {
            return truncated(name);
        }
        let buckets = mask.wrapping_add(1);
        if ctrl == 0
            || pair_size == 0
            || buckets == 0
            || buckets > MAX_BUCKETS
            || items > buckets
            || !buckets.is_power_of_two()
        {
            return Value::error(name, "inconsistent hash table");
        }
        let control = match self.read(ctrl, buckets) {
            Ok(c) => c,
            Err(m) => return self.miss(&name, m),
        };
        let max = u64::from(self.limits.collection);
        let mut cut = items > max;
        let mut entries: Vec<Value> = Vec::new();
        for (i, c) in control.iter().enumerate() {
            if entries.len() as u64 >= max {
                break;
            }
            if c & 0x80 != 0 {
                continue;
            }
            let addr = ctrl.wrapping_sub((i as u64 + 1).wrapping_mul(pair_size));
            match self.read(addr, pair_size) {
                Ok(b) => entries.push(self.value(Some(pair), &b, hops - 1)),
                Err(Miss::Truncated) => {
                    cut = true;
                    break;
                }
                Err(Miss::Fault(a)) => {
                    return Value::error(name, format!("cannot read memory at {a:#x}"));
                }
            }
            if self.budget.get() == 0 {
                cut = true;
                break;
            }
        }
        let data = pairs_to_data(entries, set, &mut cut);
        Value {
            truncated: cut,
            ..Value::new(name, data)
        }
    }

    fn btree(&self, name: String, bytes: &[u8], l: &BTreeLayout, hops: u32) -> Value {
        let at = |off: u64| Self::field_bytes(bytes, off, 8).map(le);
        let (Some(root), Some(height)) = (at(l.root), at(l.height)) else {
            return truncated(name);
        };
        let empty = if l.set {
            Data::List(Vec::new())
        } else {
            Data::Map(Vec::new())
        };
        if root == 0 {
            return Value::new(name, empty);
        }
        if hops == 0 {
            return truncated(name);
        }
        if height > 32 {
            return Value::error(name, "inconsistent BTreeMap (height)");
        }
        let max = self.limits.collection as usize;
        let mut entries: Vec<Value> = Vec::new();
        let mut cut = false;
        // In-order walk with an explicit stack of (node, height, next edge), as the capture does.
        let mut stack: Vec<(u64, u64, u64)> = vec![(root, height, 0)];
        let mut visited = 0usize;
        while let Some(&(addr, h, edge)) = stack.last() {
            if entries.len() >= max {
                cut = true;
                break;
            }
            visited += 1;
            if visited > 4 * max + 64 {
                cut = true;
                break;
            }
            let size = if h == 0 { l.leaf_size } else { l.internal_size };
            let node = match self.read(addr, size) {
                Ok(b) => b,
                Err(Miss::Truncated) => {
                    cut = true;
                    break;
                }
                Err(Miss::Fault(a)) => {
                    return Value::error(name, format!("cannot read memory at {a:#x}"));
                }
            };
            let n = Self::field_bytes(&node, l.len_offset, 2)
                .map_or(0, le)
                .min(BTREE_CAPACITY);
            if edge > n {
                stack.pop();
                continue;
            }
            if h > 0 {
                if let Some(top) = stack.last_mut() {
                    top.2 = edge + 1;
                }
                if edge > 0 {
                    entries.push(self.btree_entry(&node, edge - 1, l, hops - 1));
                }
                let child = Self::field_bytes(&node, l.edges_offset + edge * 8, 8).map_or(0, le);
                if child != 0 && stack.len() < 33 {
                    stack.push((child, h - 1, 0));
                }
                continue;
            }
            for i in 0..n {
                if entries.len() >= max {
                    cut = true;
                    break;
                }
                entries.push(self.btree_entry(&node, i, l, hops - 1));
            }
            stack.pop();
        }
        // The walk stops at `max` entries; more may remain.
        let length = at(l.root + 16).unwrap_or(0);
        let _ = length;
        let data = pairs_to_data(entries, l.set, &mut cut);
        Value {
            truncated: cut,
            ..Value::new(name, data)
        }
    }

    fn btree_entry(&self, node: &[u8], i: u64, l: &BTreeLayout, hops: u32) -> Value {
        let key = match Self::field_bytes(node, l.keys_offset + i * l.key_size, l.key_size) {
            Some(b) => self.value(l.key, b, hops),
            None => truncated("?"),
        };
        let val = match Self::field_bytes(node, l.vals_offset + i * l.val_size, l.val_size) {
            Some(b) => self.value(l.val, b, hops),
            None => truncated("?"),
        };
        Value::new("(K, V)", Data::List(vec![key, val]))
    }
}

/// A C++ class without data members (an empty base such as `std::__pair_base`).
pub(crate) fn is_empty_class(t: &Type) -> bool {
    matches!(&t.kind, TypeKind::Struct { fields, .. } if fields.is_empty())
}

/// The `first` and `second` of a decoded `std::pair`.
fn pair_parts(v: Value) -> (Value, Value) {
    let mut first = None;
    let mut second = None;
    if let Data::Map(fields) = v.value {
        for (n, f) in fields {
            match n.as_str() {
                "first" => first = Some(f),
                "second" => second = Some(f),
                _ => {}
            }
        }
    }
    (
        first.unwrap_or_else(|| truncated("?")),
        second.unwrap_or_else(|| truncated("?")),
    )
}

/// Turns decoded `(K, V)` entries into a map (keys rendered as strings) or, for sets,
/// a list of the keys.
fn pairs_to_data(entries: Vec<Value>, set: bool, cut: &mut bool) -> Data {
    let mut keys = Vec::new();
    let mut map = Vec::new();
    for e in entries {
        *cut |= e.truncated;
        let Data::List(mut kv) = e.value else {
            *cut = true;
            continue;
        };
        if kv.len() < 2 {
            *cut = true;
            continue;
        }
        let v = kv.swap_remove(1);
        let k = kv.swap_remove(0);
        if set {
            keys.push(k);
        } else {
            map.push((key_string(&k), v));
        }
    }
    if set {
        Data::List(keys)
    } else {
        Data::Map(map)
    }
}

fn int_data(bytes: &[u8], signed: bool) -> Data {
    let n = bytes.len();
    if n > 8 {
        let mut b = [0u8; 16];
        let k = n.min(16);
        b[..k].copy_from_slice(&bytes[..k]);
        return if signed {
            let v = i128::from_le_bytes(b);
            i64::try_from(v).map_or_else(|_| Data::Str(v.to_string()), Data::Int)
        } else {
            let v = u128::from_le_bytes(b);
            u64::try_from(v).map_or_else(|_| Data::Str(v.to_string()), Data::Uint)
        };
    }
    let raw = le(bytes);
    if signed && n > 0 {
        let shift = 64 - 8 * n as u32;
        Data::Int(((raw << shift) as i64) >> shift)
    } else {
        Data::Uint(raw)
    }
}

/// Bytes as text; a character cut at the end by truncation is dropped, not replaced.
fn utf8(bytes: &[u8], cut: bool) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(e) if cut && e.error_len().is_none() => {
            String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned()
        }
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}
