//! The debug info's types as the expression checker sees them ([`nonstop_expr::Ty`]).
//!
//! The mapping mirrors what [`DebugInfo::decode`] makes of the same bytes, because
//! expressions are evaluated over decoded values: a struct is its fields (tuples: `0`,
//! `1`, …), a reference, `Box`, `Rc`, `Arc` or C pointer to data is its pointee, `String`,
//! `&str`, C `char *` and `char[N]` are strings, `Vec`/slices/arrays/sets are lists,
//! `HashMap`/`BTreeMap` are maps of their values, `Option<T>` is [`Ty::Option`], other
//! enums (Rust and C) are [`Ty::Enum`] with their variant names, raw pointers are numbers.
//!
//! A wrong type would refuse a valid rule, so whatever is not surely known is
//! [`Ty::Unknown`], which the checker lets through to be checked at hit time: types
//! below [`MAX_DEPTH`] levels (recursive types), beyond a budget of [`MAX_NODES`] per
//! variable, structs with more than [`MAX_FIELDS`] members, unreadable DIEs.

use crate::types::{PointerKind, Shape, StdLayout, Type, TypeKind};
use crate::{DebugInfo, DieRef, Variable};
use nonstop_expr::Ty;
use std::cell::Cell;

/// Deepest nesting mapped, counting pointers and wrappers as levels (`&order` →
/// `items` → `[0]` → `sku` is 4); deeper parts are unknown. Also bounds the recursion.
const MAX_DEPTH: u32 = 12;
/// Most types visited for one variable; the rest are unknown.
const MAX_NODES: usize = 4096;
/// Structs with more members than this are unknown: their member list may have been
/// cut by the type reader, and a member missing from it would refuse a valid field.
const MAX_FIELDS: usize = 1024;

impl DebugInfo {
    /// The expression type of a variable, for checking a rule's expressions when it is
    /// armed: what its decoded value looks like to an expression. [`Ty::Unknown`] where
    /// the type is not surely known; parts nested more than 12 levels deep, and parts
    /// beyond 4096 types per variable, are unknown too (recursive and huge types).
    pub fn expr_ty(&self, var: &Variable) -> Ty {
        match var.type_die {
            Some(die) => self.expr_ty_of(die),
            None => Ty::Unknown,
        }
    }

    /// The expression type of the type at `die`.
    pub fn expr_ty_of(&self, die: DieRef) -> Ty {
        Mapper {
            di: self,
            budget: Cell::new(MAX_NODES),
        }
        .die(Some(die), 0)
    }

    /// The scope to check expressions in at a site: each variable's name with its type.
    /// A name held by several variables of different types (shadowing across inlined
    /// frames or blocks) is [`Ty::Unknown`], since which one a hit reads is not fixed here.
    pub fn expr_scope(&self, vars: &[Variable]) -> Vec<(String, Ty)> {
        let mut out: Vec<(String, Ty)> = Vec::with_capacity(vars.len());
        for v in vars {
            let ty = self.expr_ty(v);
            match out.iter_mut().find(|(n, _)| *n == v.name) {
                Some((_, seen)) if *seen != ty => *seen = Ty::Unknown,
                Some(_) => {}
                None => out.push((v.name.clone(), ty)),
            }
        }
        out
    }
}

struct Mapper<'a> {
    di: &'a DebugInfo,
    budget: Cell<usize>,
}

impl Mapper<'_> {
    /// Takes one unit of the budget; `false` when it is spent.
    fn spend(&self) -> bool {
        let b = self.budget.get();
        if b == 0 {
            return false;
        }
        self.budget.set(b - 1);
        true
    }

    fn die(&self, die: Option<DieRef>, depth: u32) -> Ty {
        match die.and_then(|d| self.di.type_of(d)) {
            Some(t) => self.ty(&t, depth),
            None => Ty::Unknown,
        }
    }

    /// Every recursion goes through here with `depth + 1`.
    fn ty(&self, t: &Type, depth: u32) -> Ty {
        if depth > MAX_DEPTH || !self.spend() {
            return Ty::Unknown;
        }
        let next = depth + 1;
        match &t.kind {
            TypeKind::Bool => Ty::Bool,
            TypeKind::Char => Ty::Char,
            TypeKind::Int { signed: true, .. } => Ty::Int,
            TypeKind::Int { signed: false, .. } => Ty::Uint,
            TypeKind::Float => Ty::Float,
            TypeKind::Pointer { pointee, kind } => self.pointer(*pointee, *kind, next),
            TypeKind::Struct { .. } => match self.di.std_layout(t) {
                Some(layout) => self.std(&layout, next),
                None => self.structure(t, next),
            },
            TypeKind::Union { .. } => self.structure(t, next),
            TypeKind::Array { elem, dims } => self.array(*elem, dims, next),
            TypeKind::Enum { variants, .. } => {
                if t.base_name() == "core::option::Option" {
                    // `Some`'s payload is its field `__0`.
                    let inner = variants
                        .iter()
                        .find(|v| v.name == "Some")
                        .and_then(|v| v.ty)
                        .and_then(|d| self.di.type_of(d))
                        .and_then(|s| s.field("__0").map(|f| f.ty));
                    return Ty::Option(Box::new(match inner {
                        Some(d) => self.die(d, next),
                        None => Ty::Unknown,
                    }));
                }
                Ty::Enum {
                    name: t.display.clone(),
                    variants: variants.iter().map(|v| v.name.clone()).collect(),
                }
            }
            TypeKind::Enumeration { values, .. } => Ty::Enum {
                name: t.display.clone(),
                variants: values.iter().map(|(n, _)| n.clone()).collect(),
            },
            // `()` and functions decode as null; an unknown type as an error.
            TypeKind::Unit | TypeKind::Function | TypeKind::Unknown => Ty::Unknown,
        }
    }

    fn pointer(&self, pointee: Option<DieRef>, kind: PointerKind, depth: u32) -> Ty {
        let target = pointee.and_then(|d| self.di.type_of(d));
        // Any pointer to a C character type decodes as a C string.
        if target
            .as_deref()
            .is_some_and(|t| matches!(t.kind, TypeKind::Int { c_char: true, .. }))
        {
            return Ty::Str;
        }
        match kind {
            PointerKind::Function | PointerKind::Raw => Ty::Uint,
            // Followed and shown as the pointee.
            PointerKind::Reference | PointerKind::Box => match target {
                Some(t) => self.ty(&t, depth),
                None => Ty::Unknown,
            },
        }
    }

    fn std(&self, layout: &StdLayout, depth: u32) -> Ty {
        match layout {
            StdLayout::Slice { text: true, .. } => Ty::Str,
            StdLayout::Slice { elem, .. } | StdLayout::Ring { elem, .. } => {
                Ty::List(Box::new(self.die(*elem, depth)))
            }
            StdLayout::Hash { pair, set, .. } => {
                // Buckets hold `(K, V)` tuples; a set is its keys, a map its values.
                let part = self
                    .di
                    .type_of(*pair)
                    .and_then(|p| p.field(if *set { "__0" } else { "__1" }).map(|f| f.ty));
                let inner = match part {
                    Some(d) => self.die(d, depth),
                    None => Ty::Unknown,
                };
                if *set {
                    Ty::List(Box::new(inner))
                } else {
                    Ty::Map(Box::new(inner))
                }
            }
            StdLayout::BTree(l) if l.set => Ty::List(Box::new(self.die(l.key, depth))),
            StdLayout::BTree(l) => Ty::Map(Box::new(self.die(l.val, depth))),
            StdLayout::Shared { value, .. } => self.die(*value, depth),
            StdLayout::Transparent { inner, .. } => self.die(*inner, depth),
            StdLayout::Lock { inner, .. } => Ty::Struct {
                name: "Mutex".into(),
                fields: vec![
                    ("data".into(), self.die(*inner, depth)),
                    ("poisoned".into(), Ty::Bool),
                ],
            },
            StdLayout::Span { elem, .. }
            | StdLayout::Deque { elem, .. }
            | StdLayout::Fixed { elem, .. } => Ty::List(Box::new(self.die(*elem, depth))),
            StdLayout::Counted { value, .. } => Ty::Struct {
                name: "std::shared_ptr".into(),
                fields: vec![
                    ("value".into(), self.die(*value, depth)),
                    ("use_count".into(), Ty::Int),
                    ("weak_count".into(), Ty::Int),
                ],
            },
            StdLayout::Nodes(l) => match l.shape {
                Shape::List => Ty::List(Box::new(self.die(l.value, depth))),
                Shape::Map => {
                    let second = l
                        .value
                        .and_then(|d| self.di.type_of(d))
                        .and_then(|p| p.field("second").map(|f| f.ty));
                    Ty::Map(Box::new(match second {
                        Some(d) => self.die(d, depth),
                        None => Ty::Unknown,
                    }))
                }
                Shape::MultiMap => Ty::List(Box::new(Ty::Unknown)),
            },
            // Null when empty or valueless: left to be checked at hit time.
            StdLayout::Optional { .. }
            | StdLayout::Dyn { .. }
            | StdLayout::Alternatives { .. }
            | StdLayout::Unsupported(_) => Ty::Unknown,
        }
    }

    fn structure(&self, t: &Type, depth: u32) -> Ty {
        let (fields, tuple_like) = match &t.kind {
            TypeKind::Struct {
                fields, tuple_like, ..
            } => (fields, *tuple_like),
            TypeKind::Union { fields } => (fields, false),
            _ => return Ty::Unknown,
        };
        if fields.len() > MAX_FIELDS {
            return Ty::Unknown;
        }
        let mut out = Vec::with_capacity(fields.len());
        for f in fields {
            let fty = f.ty.and_then(|d| self.di.type_of(d));
            // The decoder leaves markers out: `PhantomData` carries no data.
            if fty
                .as_deref()
                .is_some_and(|ft| ft.base_name() == "core::marker::PhantomData")
            {
                continue;
            }
            if f.base && fty.as_deref().is_none_or(crate::decode::is_empty_class) {
                continue;
            }
            let name = match f.name.strip_prefix("__") {
                Some(index) if tuple_like => index.to_owned(),
                _ if f.base => fty
                    .as_deref()
                    .map_or_else(|| f.name.clone(), |t| t.display.clone()),
                _ => f.name.clone(),
            };
            let ty = match fty {
                Some(ft) => self.ty(&ft, depth),
                None => Ty::Unknown,
            };
            out.push((name, ty));
        }
        Ty::Struct {
            name: t.display.clone(),
            fields: out,
        }
    }

    fn array(&self, elem: Option<DieRef>, dims: &[u64], depth: u32) -> Ty {
        if depth > MAX_DEPTH {
            return Ty::Unknown;
        }
        let Some((_, rest)) = dims.split_first() else {
            return self.die(elem, depth);
        };
        if rest.is_empty() {
            // C `char[N]` is text up to its first NUL.
            let elem_ty = elem.and_then(|d| self.di.type_of(d));
            if elem_ty.as_deref().is_some_and(|t| {
                matches!(t.kind, TypeKind::Int { c_char: true, .. }) && t.name == "char"
            }) {
                return Ty::Str;
            }
            return Ty::List(Box::new(self.die(elem, depth)));
        }
        Ty::List(Box::new(self.array(elem, rest, depth + 1)))
    }
}
