//! Paths into variables as trap-path reads: what a condition such as
//! `order.total > 10000` reads, compiled to a register or stack location, pointer hops and
//! an offset (`nonstop_capture::filter::FilterRead`), so the probe engine can decide a hit
//! before capturing anything.

use crate::types::{PointerKind, StdLayout, Type, TypeKind};
use crate::{Availability, DebugInfo, Variable};
use nonstop_capture::capture::PieceSource;
use nonstop_capture::filter::{FilterRead, ReadKind};
use std::sync::Arc;

/// Where a path led: the variable's location, the pointers followed, the offset and the type.
struct Place {
    root: PieceSource,
    derefs: Vec<u32>,
    offset: u64,
    ty: Arc<Type>,
}

impl DebugInfo {
    /// The trap-path read of `path` inside `var` (`path` excludes the variable's name):
    /// fields, tuple fields (`"0"`), references and boxes followed, and a final `"len()"`
    /// for a string's or vector's length. `None` when the value cannot be read that way
    /// (several pieces, a computed value, a map lookup, …): the condition then runs after
    /// the capture instead.
    pub fn filter_read(&self, var: &Variable, path: &[String]) -> Option<FilterRead> {
        if let Some((last, init)) = path.split_last()
            && last == "len()"
        {
            let place = self.place(var, init)?;
            let (_, len) = self.string_layout(&place.ty)?;
            return Some(FilterRead {
                root: place.root,
                derefs: place.derefs,
                offset: u32::try_from(place.offset + len).ok()?,
                kind: ReadKind::Int {
                    size: 8,
                    signed: false,
                },
            });
        }
        let place = self.place(var, path)?;
        let kind = match &place.ty.kind {
            TypeKind::Int { signed, .. } | TypeKind::Enumeration { signed, .. }
                if matches!(place.ty.size, 1 | 2 | 4 | 8) =>
            {
                ReadKind::Int {
                    size: place.ty.size as u8,
                    signed: *signed,
                }
            }
            TypeKind::Bool => ReadKind::Bool,
            TypeKind::Float if matches!(place.ty.size, 4 | 8) => ReadKind::Float {
                size: place.ty.size as u8,
            },
            _ => {
                let (ptr, len) = self.string_layout(&place.ty)?;
                ReadKind::Str {
                    ptr_offset: u32::try_from(ptr).ok()?,
                    len_offset: u32::try_from(len).ok()?,
                }
            }
        };
        Some(FilterRead {
            root: place.root,
            derefs: place.derefs,
            offset: u32::try_from(place.offset).ok()?,
            kind,
        })
    }

    /// The read of the discriminant of the enum at `path` inside `var`, and the value that
    /// means `variant`. `None` when one equality cannot decide it (the untagged variant
    /// of a niche enum, which covers a range).
    pub fn filter_variant(
        &self,
        var: &Variable,
        path: &[String],
        variant: &str,
    ) -> Option<(FilterRead, u64)> {
        let place = self.place(var, path)?;
        let name = variant.rsplit("::").next().unwrap_or(variant);
        let (offset, size, value) = match &place.ty.kind {
            TypeKind::Enum {
                discr: Some(d),
                variants,
            } => {
                let v = variants.iter().find(|v| v.name == name)?;
                (d.offset, d.size, v.discr_value?)
            }
            TypeKind::Enumeration { values, .. } => {
                let (_, v) = values.iter().find(|(n, _)| n == name)?;
                (0, place.ty.size, *v)
            }
            _ => return None,
        };
        if !matches!(size, 1 | 2 | 4 | 8) {
            return None;
        }
        let read = FilterRead {
            root: place.root,
            derefs: place.derefs,
            offset: u32::try_from(place.offset + offset).ok()?,
            kind: ReadKind::Int {
                size: size as u8,
                signed: false,
            },
        };
        Some((read, value))
    }

    fn place(&self, var: &Variable, path: &[String]) -> Option<Place> {
        // A value computed from entry registers reads them from the frame's entry record
        // in the trap path too (`eval_filter_with_entry`).
        let (Availability::Available(pieces) | Availability::FromEntry(pieces)) = &var.availability
        else {
            return None;
        };
        let [piece] = pieces.as_slice() else {
            return None;
        };
        let root = match &piece.source {
            s @ (PieceSource::Register { .. }
            | PieceSource::Memory { .. }
            | PieceSource::Absolute { .. }
            // A computed value (`DW_OP_stack_value`) is read as a register is: its bytes.
            | PieceSource::Expr { .. }) => s.clone(),
            _ => return None,
        };
        let mut place = Place {
            root,
            derefs: Vec::new(),
            offset: 0,
            ty: self.type_of(var.type_die?)?,
        };
        for segment in path {
            self.follow_references(&mut place)?;
            let TypeKind::Struct { fields, .. } = &place.ty.kind else {
                return None;
            };
            let name = if segment.bytes().all(|b| b.is_ascii_digit()) {
                format!("__{segment}")
            } else {
                segment.clone()
            };
            // A C++ base class is a field named by the base (as the decoder shows it).
            let field = fields.iter().find(|f| {
                f.name == name
                    || f.base
                        && f.ty
                            .and_then(|d| self.type_of(d))
                            .is_some_and(|t| t.display == name)
            })?;
            // A bit-field is not a whole-byte read: the agent decides such a condition.
            if field.bits.is_some() {
                return None;
            }
            place.offset = place.offset.checked_add(field.offset)?;
            place.ty = self.type_of(field.ty?)?;
        }
        self.follow_references(&mut place)?;
        Some(place)
    }

    /// Steps through `&T` and `Box<T>` (as `.` does in a condition); raw pointers stay.
    fn follow_references(&self, place: &mut Place) -> Option<()> {
        for _ in 0..8 {
            match &place.ty.kind {
                TypeKind::Pointer {
                    pointee: Some(p),
                    kind: PointerKind::Reference | PointerKind::Box,
                } => {
                    place.derefs.push(u32::try_from(place.offset).ok()?);
                    place.offset = 0;
                    place.ty = self.type_of(*p)?;
                }
                _ => return Some(()),
            }
        }
        None
    }

    /// Offsets of the data pointer and the length in a `&str`, `&[T]`, `String` or `Vec`.
    fn string_layout(&self, ty: &Type) -> Option<(u64, u64)> {
        let field = |ty: &Type, name: &str| -> Option<(u64, Arc<Type>)> {
            let TypeKind::Struct { fields, .. } = &ty.kind else {
                return None;
            };
            let f = fields.iter().find(|f| f.name == name)?;
            Some((f.offset, self.type_of(f.ty?)?))
        };
        if let (Some((ptr, _)), Some((len, _))) = (field(ty, "data_ptr"), field(ty, "length")) {
            return Some((ptr, len));
        }
        // C++ `std::string`, `std::string_view`, `std::span`.
        if let Some(StdLayout::Slice { ptr, len, .. }) = self.std_layout(ty)
            && !self.is_rust_type(ty.die)
        {
            return Some((ptr, len));
        }
        // String → vec: Vec<u8>; Vec → buf (RawVec → inner → ptr, or an older buf → ptr), len.
        let (base, vec) = match field(ty, "vec") {
            Some((off, v)) => (off, v),
            None => (0, Arc::new(ty.clone())),
        };
        let (len, _) = field(&vec, "len")?;
        let (buf_off, buf) = field(&vec, "buf")?;
        let (ptr_off, _) = match field(&buf, "inner") {
            Some((inner_off, inner)) => {
                let (p, t) = field(&inner, "ptr")?;
                (inner_off + p, t)
            }
            None => field(&buf, "ptr")?,
        };
        Some((base + buf_off + ptr_off, base + len))
    }
}
