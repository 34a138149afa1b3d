//! Capture plans: from variables and their types to the bytes the probe engine reads at
//! a hit ([`CapturePlan`]).
//!
//! The plan follows exactly what the decoder will look at, within the same limits:
//! pointers are followed at most `limits.depth` times (every `Deref`, and every step into
//! the elements of a `Slice`, `Ring`, `HashTable`, `BTree`, `Span`, `Chain`, `Tree` or `Deque`,
//! counts one), strings are
//! read up to `limits.string` bytes, collections up to `limits.collection` elements and
//! structs up to `limits.fields` fields. Offsets of nested fields are summed into the
//! node offsets.

use crate::types::{PointerKind, StdLayout, TypeKind};
use crate::{Availability, DebugInfo, DieRef, Variable};
use nonstop_capture::capture::{CapturePlan, NodeId, Piece, PieceSource, PlanNode, RootPlan};
use nonstop_model::CaptureLimits;

/// Default cap on the bytes one hit may record (64 KiB).
pub const DEFAULT_MAX_BYTES: u32 = 64 * 1024;
/// Default bytes of stack copied at a hit for unwinding (16 KiB).
pub const DEFAULT_STACK_BYTES: u32 = 16 * 1024;
/// Most nodes one plan may hold; what does not fit is not captured (and decodes as
/// truncated).
const MAX_PLAN_NODES: usize = 4096;
/// Largest block a single `Deref` may read.
const MAX_DEREF: u64 = 1 << 20;

/// A plan node before numbering: a tree, numbered in pre-order at the end so a node only
/// refers to nodes with a higher index.
enum Draft {
    All(Vec<Draft>),
    Deref {
        offset: u32,
        size: u32,
        then: Option<Box<Draft>>,
    },
    Slice {
        ptr_offset: u32,
        len_offset: u32,
        elem_size: u32,
        max_elems: u32,
        each: Option<Box<Draft>>,
    },
    Ring {
        ptr_offset: u32,
        cap_offset: u32,
        head_offset: u32,
        len_offset: u32,
        elem_size: u32,
        max_elems: u32,
        each: Option<Box<Draft>>,
    },
    Hash {
        ctrl_offset: u32,
        mask_offset: u32,
        items_offset: u32,
        elem_size: u32,
        max_elems: u32,
        each: Option<Box<Draft>>,
    },
    CString {
        offset: u32,
        max_len: u32,
    },
    Switch {
        offset: u32,
        size: u32,
        cases: Vec<(u64, Draft)>,
        default: Option<Box<Draft>>,
    },
    BTree {
        node: PlanNode,
        key_each: Option<Box<Draft>>,
        val_each: Option<Box<Draft>>,
    },
    /// `Span`, `Chain` and `Tree` nodes: the node with `each` to fill in.
    Each {
        node: PlanNode,
        each: Option<Box<Draft>>,
    },
}

impl DebugInfo {
    /// Builds the plan to capture `vars` (one root each, in the given order) within
    /// `limits`. `max_bytes` is [`DEFAULT_MAX_BYTES`] and `stack_bytes`
    /// [`DEFAULT_STACK_BYTES`]; change the returned plan's fields to use others.
    pub fn capture_plan(&self, vars: &[Variable], limits: &CaptureLimits) -> CapturePlan {
        let mut b = Builder {
            di: self,
            limits,
            count: 0,
        };
        let mut plan = CapturePlan {
            roots: Vec::with_capacity(vars.len()),
            nodes: Vec::new(),
            stack_bytes: DEFAULT_STACK_BYTES,
            max_bytes: DEFAULT_MAX_BYTES,
        };
        for var in vars {
            let size = u32::try_from(self.type_size(var.type_die)).unwrap_or(u32::MAX);
            let root = match &var.availability {
                Availability::Available(pieces) | Availability::FromEntry(pieces) => {
                    let tree = combine(b.nodes(var.type_die, 0, limits.depth));
                    RootPlan {
                        pieces: pieces.clone(),
                        node: tree.map(|t| emit(&mut plan.nodes, t)),
                    }
                }
                Availability::OptimizedOut | Availability::EntryValue => RootPlan {
                    pieces: vec![Piece {
                        size,
                        source: PieceSource::Unavailable,
                    }],
                    node: None,
                },
            };
            plan.roots.push(root);
        }
        plan
    }
}

struct Builder<'a> {
    di: &'a DebugInfo,
    limits: &'a CaptureLimits,
    count: usize,
}

fn off(base: u64, rel: u64) -> Option<u32> {
    u32::try_from(base.checked_add(rel)?).ok()
}

fn combine(mut v: Vec<Draft>) -> Option<Draft> {
    match v.len() {
        0 => None,
        1 => v.pop(),
        _ => Some(Draft::All(v)),
    }
}

fn boxed(v: Vec<Draft>) -> Option<Box<Draft>> {
    combine(v).map(Box::new)
}

impl Builder<'_> {
    fn room(&mut self) -> bool {
        if self.count >= MAX_PLAN_NODES {
            return false;
        }
        self.count += 1;
        true
    }

    /// The nodes to apply to a value holding a `die` at `base`, with `hops` pointer
    /// hops left.
    fn nodes(&mut self, die: Option<DieRef>, base: u64, hops: u32) -> Vec<Draft> {
        let mut out = Vec::new();
        let Some(ty) = die.and_then(|d| self.di.type_of(d)) else {
            return out;
        };
        if self.count >= MAX_PLAN_NODES {
            return out;
        }
        match &ty.kind {
            TypeKind::Pointer { pointee, kind } => {
                if hops == 0 {
                    return out;
                }
                let target = pointee.and_then(|d| self.di.type_of(d));
                let c_char = matches!(
                    target.as_deref().map(|t| &t.kind),
                    Some(TypeKind::Int { c_char: true, .. })
                );
                match kind {
                    PointerKind::Function => {}
                    PointerKind::Raw if !c_char => {}
                    _ if c_char => {
                        if let Some(offset) = off(base, 0)
                            && self.room()
                        {
                            out.push(Draft::CString {
                                offset,
                                max_len: self.limits.string,
                            });
                        }
                    }
                    _ => {
                        let size = target.as_deref().map_or(0, |t| t.size);
                        if size == 0 || size > MAX_DEREF {
                            return out;
                        }
                        if let Some(offset) = off(base, 0)
                            && self.room()
                        {
                            let then = boxed(self.nodes(*pointee, 0, hops - 1));
                            out.push(Draft::Deref {
                                offset,
                                size: size as u32,
                                then,
                            });
                        }
                    }
                }
            }
            TypeKind::Struct { fields, .. } => {
                if let Some(layout) = self.di.std_layout(&ty) {
                    self.std(&layout, base, hops, &mut out);
                    return out;
                }
                let mut taken = 0;
                for f in fields {
                    let fty = f.ty.and_then(|d| self.di.type_of(d));
                    if fty
                        .as_deref()
                        .is_some_and(|t| t.base_name() == "core::marker::PhantomData")
                    {
                        continue;
                    }
                    if taken >= self.limits.fields {
                        break;
                    }
                    taken += 1;
                    if let Some(at) = base.checked_add(f.offset) {
                        out.extend(self.nodes(f.ty, at, hops));
                    }
                }
            }
            TypeKind::Union { fields } => {
                for f in fields.iter().take(self.limits.fields as usize) {
                    if let Some(at) = base.checked_add(f.offset) {
                        out.extend(self.nodes(f.ty, at, hops));
                    }
                }
            }
            TypeKind::Array { elem, dims } => self.array(*elem, dims, base, hops, &mut out),
            TypeKind::Enum { discr, variants } => {
                let variant_nodes = |b: &mut Self, ty: Option<DieRef>| b.nodes(ty, base, hops);
                match discr {
                    None => {
                        let v = match variants.as_slice() {
                            [v] => Some(v),
                            _ => variants.iter().find(|v| v.discr_value.is_none()),
                        };
                        if let Some(v) = v {
                            out.extend(variant_nodes(self, v.ty));
                        }
                    }
                    Some(d) => {
                        let mut cases = Vec::new();
                        let mut default = None;
                        let mut any = false;
                        for v in variants {
                            let n = variant_nodes(self, v.ty);
                            any |= !n.is_empty();
                            match v.discr_value {
                                Some(x) => cases.push((x, Draft::All(n))),
                                None if default.is_none() => default = combine(n).map(Box::new),
                                None => {}
                            }
                        }
                        if any
                            && let Some(offset) = off(base, d.offset)
                            && self.room()
                        {
                            self.count += cases.len();
                            out.push(Draft::Switch {
                                offset,
                                size: d.size.min(8) as u32,
                                cases,
                                default,
                            });
                        }
                    }
                }
            }
            _ => {}
        }
        out
    }

    fn array(
        &mut self,
        elem: Option<DieRef>,
        dims: &[u64],
        base: u64,
        hops: u32,
        out: &mut Vec<Draft>,
    ) {
        let Some((&n, rest)) = dims.split_first() else {
            out.extend(self.nodes(elem, base, hops));
            return;
        };
        let esize = rest
            .iter()
            .fold(self.di.type_size(elem), |a, d| a.saturating_mul(*d));
        for i in 0..n.min(u64::from(self.limits.collection)) {
            if self.count >= MAX_PLAN_NODES {
                return;
            }
            let before = out.len();
            if let Some(at) = base.checked_add(i.saturating_mul(esize)) {
                self.array(elem, rest, at, hops, out);
            }
            // Elements without pointers need nothing; neither will the next ones.
            if out.len() == before {
                return;
            }
        }
    }

    fn std(&mut self, layout: &StdLayout, base: u64, hops: u32, out: &mut Vec<Draft>) {
        match layout {
            StdLayout::Transparent { offset, inner } | StdLayout::Lock { offset, inner, .. } => {
                if let Some(at) = base.checked_add(*offset) {
                    out.extend(self.nodes(*inner, at, hops));
                }
                return;
            }
            StdLayout::Unsupported(_) => return,
            StdLayout::Optional {
                engaged,
                offset,
                value,
            } => {
                let inner = match base.checked_add(*offset) {
                    Some(at) => self.nodes(*value, at, hops),
                    None => Vec::new(),
                };
                if !inner.is_empty()
                    && let Some(offset) = off(base, *engaged)
                    && self.room()
                {
                    out.push(Draft::Switch {
                        offset,
                        size: 1,
                        cases: vec![(1, Draft::All(inner))],
                        default: None,
                    });
                }
                return;
            }
            StdLayout::Alternatives {
                index,
                index_size,
                alts,
            } => {
                let mut cases = Vec::new();
                for (k, (at, alt)) in alts.iter().enumerate() {
                    let n = match base.checked_add(*at) {
                        Some(at) => self.nodes(*alt, at, hops),
                        None => Vec::new(),
                    };
                    if !n.is_empty() {
                        cases.push((k as u64, Draft::All(n)));
                    }
                }
                if !cases.is_empty()
                    && let Some(offset) = off(base, *index)
                    && self.room()
                {
                    self.count += cases.len();
                    out.push(Draft::Switch {
                        offset,
                        size: *index_size as u32,
                        cases,
                        default: None,
                    });
                }
                return;
            }
            _ if hops == 0 => return,
            _ => {}
        }
        if !self.room() {
            return;
        }
        let lim = self.limits;
        let node = match layout {
            StdLayout::Slice {
                ptr,
                len,
                elem,
                elem_size,
                text,
            } => {
                let each = if *text {
                    None
                } else {
                    boxed(self.nodes(*elem, 0, hops - 1))
                };
                (|| {
                    Some(Draft::Slice {
                        ptr_offset: off(base, *ptr)?,
                        len_offset: off(base, *len)?,
                        elem_size: u32::try_from(*elem_size).ok()?,
                        max_elems: if *text { lim.string } else { lim.collection },
                        each,
                    })
                })()
            }
            StdLayout::Ring {
                ptr,
                cap,
                head,
                len,
                elem,
                elem_size,
            } => {
                let each = boxed(self.nodes(*elem, 0, hops - 1));
                (|| {
                    Some(Draft::Ring {
                        ptr_offset: off(base, *ptr)?,
                        cap_offset: off(base, *cap)?,
                        head_offset: off(base, *head)?,
                        len_offset: off(base, *len)?,
                        elem_size: u32::try_from(*elem_size).ok()?,
                        max_elems: lim.collection,
                        each,
                    })
                })()
            }
            StdLayout::Hash {
                ctrl,
                mask,
                items,
                pair,
                pair_size,
                ..
            } => {
                let each = boxed(self.nodes(Some(*pair), 0, hops - 1));
                (|| {
                    Some(Draft::Hash {
                        ctrl_offset: off(base, *ctrl)?,
                        mask_offset: off(base, *mask)?,
                        items_offset: off(base, *items)?,
                        elem_size: u32::try_from(*pair_size).ok()?,
                        max_elems: lim.collection,
                        each,
                    })
                })()
            }
            StdLayout::BTree(l) => {
                let key_each = boxed(self.nodes(l.key, 0, hops - 1));
                let val_each = boxed(self.nodes(l.val, 0, hops - 1));
                (|| {
                    Some(Draft::BTree {
                        node: PlanNode::BTree {
                            root_offset: off(base, l.root)?,
                            height_offset: off(base, l.height)?,
                            leaf_size: u32::try_from(l.leaf_size).ok()?,
                            internal_size: u32::try_from(l.internal_size).ok()?,
                            len_offset: u32::try_from(l.len_offset).ok()?,
                            keys_offset: u32::try_from(l.keys_offset).ok()?,
                            vals_offset: u32::try_from(l.vals_offset).ok()?,
                            edges_offset: u32::try_from(l.edges_offset).ok()?,
                            key_size: u32::try_from(l.key_size).ok()?,
                            val_size: u32::try_from(l.val_size).ok()?,
                            max_elems: lim.collection,
                            key_each: None,
                            val_each: None,
                        },
                        key_each,
                        val_each,
                    })
                })()
            }
            // One case per implementation of the trait, chosen by the vtable word at the
            // hit: the concrete value's bytes, and what they point at.
            StdLayout::Dyn {
                pointer,
                vtable,
                trait_name,
            } => {
                let mut cases = Vec::new();
                for (addr, concrete) in self.di.implementations(trait_name) {
                    let size = self.di.type_size(Some(concrete));
                    let (Some(offset), Ok(size)) = (off(base, *pointer), u32::try_from(size))
                    else {
                        continue;
                    };
                    if size == 0 || u64::from(size) > MAX_DEREF || !self.room() {
                        continue;
                    }
                    let then = boxed(self.nodes(Some(concrete), 0, hops - 1));
                    cases.push((addr, Draft::Deref { offset, size, then }));
                }
                if cases.is_empty() {
                    return;
                }
                self.count += cases.len();
                (|| {
                    Some(Draft::Switch {
                        offset: off(base, *vtable)?,
                        size: 8,
                        cases,
                        default: None,
                    })
                })()
            }
            StdLayout::Shared {
                ptr,
                inner_size,
                value_offset,
                value,
                ..
            } => {
                if *inner_size == 0 || *inner_size > MAX_DEREF {
                    return;
                }
                let then = boxed(self.nodes(*value, *value_offset, hops - 1));
                (|| {
                    Some(Draft::Deref {
                        offset: off(base, *ptr)?,
                        size: u32::try_from(*inner_size).ok()?,
                        then,
                    })
                })()
            }
            StdLayout::Span {
                begin,
                end,
                elem,
                elem_size,
            } => {
                let each = boxed(self.nodes(*elem, 0, hops - 1));
                (|| {
                    Some(Draft::Each {
                        node: PlanNode::Span {
                            begin_offset: off(base, *begin)?,
                            end_offset: off(base, *end)?,
                            elem_size: u32::try_from(*elem_size).ok()?,
                            max_elems: lim.collection,
                            each: None,
                        },
                        each,
                    })
                })()
            }
            StdLayout::Counted {
                ptr,
                value,
                block,
                block_size,
                ..
            } => {
                let size = self.di.type_size(*value);
                let then = boxed(self.nodes(*value, 0, hops - 1));
                let mut both = Vec::new();
                if size > 0
                    && size <= MAX_DEREF
                    && let Some(offset) = off(base, *ptr)
                {
                    both.push(Draft::Deref {
                        offset,
                        size: size as u32,
                        then,
                    });
                }
                if let Some(offset) = off(base, *block) {
                    both.push(Draft::Deref {
                        offset,
                        size: u32::try_from(*block_size).unwrap_or(16),
                        then: None,
                    });
                }
                combine(both)
            }
            StdLayout::Nodes(l) => {
                let each = boxed(self.nodes(l.value, 0, hops - 1));
                (|| {
                    let node_size =
                        u32::try_from(l.value_offset.checked_add(l.value_size)?).ok()?;
                    let value_offset = u32::try_from(l.value_offset).ok()?;
                    let node = if l.tree {
                        PlanNode::Tree {
                            root_offset: off(base, l.root)?,
                            left_offset: u32::try_from(l.left).ok()?,
                            right_offset: u32::try_from(l.right).ok()?,
                            node_size,
                            value_offset,
                            max_elems: lim.collection,
                            each: None,
                        }
                    } else {
                        PlanNode::Chain {
                            head_offset: off(base, l.root)?,
                            count_offset: off(base, l.count)?,
                            next_offset: u32::try_from(l.left).ok()?,
                            node_size,
                            value_offset,
                            max_elems: lim.collection,
                            each: None,
                        }
                    };
                    Some(Draft::Each { node, each })
                })()
            }
            StdLayout::Deque {
                start,
                finish,
                elem,
                elem_size,
                buf_elems,
            } => {
                let each = boxed(self.nodes(*elem, 0, hops - 1));
                (|| {
                    let o = |x: u64| off(base, x);
                    Some(Draft::Each {
                        node: PlanNode::Deque {
                            start: [o(start[0])?, o(start[1])?, o(start[2])?],
                            finish: [o(finish[0])?, o(finish[1])?, o(finish[2])?],
                            elem_size: u32::try_from(*elem_size).ok()?,
                            buf_elems: u32::try_from(*buf_elems).ok()?,
                            max_elems: lim.collection,
                            each: None,
                        },
                        each,
                    })
                })()
            }
            StdLayout::Fixed {
                ptr,
                count,
                elem,
                elem_size,
            } => {
                let n = (*count).min(u64::from(lim.collection));
                let size = n.saturating_mul(*elem_size);
                if size == 0 || size > MAX_DEREF {
                    return;
                }
                let mut each = Vec::new();
                for i in 0..n {
                    let before = each.len();
                    each.extend(self.nodes(*elem, i * elem_size, hops - 1));
                    // Elements without pointers need nothing; neither will the next ones.
                    if each.len() == before || self.count >= MAX_PLAN_NODES {
                        break;
                    }
                }
                (|| {
                    Some(Draft::Deref {
                        offset: off(base, *ptr)?,
                        size: size as u32,
                        then: boxed(each),
                    })
                })()
            }
            StdLayout::Transparent { .. }
            | StdLayout::Lock { .. }
            | StdLayout::Unsupported(_)
            | StdLayout::Optional { .. }
            | StdLayout::Alternatives { .. } => None,
        };
        out.extend(node);
    }
}

/// Numbers `tree` in pre-order into `nodes`; returns the id of its root.
fn emit(nodes: &mut Vec<PlanNode>, tree: Draft) -> NodeId {
    let id = nodes.len() as NodeId;
    nodes.push(PlanNode::All(Vec::new()));
    let sub = |t: Option<Box<Draft>>, nodes: &mut Vec<PlanNode>| t.map(|t| emit(nodes, *t));
    let node = match tree {
        Draft::All(children) => {
            let mut ids = Vec::with_capacity(children.len());
            for c in children {
                // Flatten nested `All`s: the executor counts every level against its depth cap.
                match c {
                    Draft::All(inner) => {
                        for i in inner {
                            ids.push(emit(nodes, i));
                        }
                    }
                    c => ids.push(emit(nodes, c)),
                }
            }
            PlanNode::All(ids)
        }
        Draft::Deref { offset, size, then } => PlanNode::Deref {
            offset,
            size,
            then: sub(then, nodes),
        },
        Draft::Slice {
            ptr_offset,
            len_offset,
            elem_size,
            max_elems,
            each,
        } => PlanNode::Slice {
            ptr_offset,
            len_offset,
            elem_size,
            max_elems,
            each: sub(each, nodes),
        },
        Draft::Ring {
            ptr_offset,
            cap_offset,
            head_offset,
            len_offset,
            elem_size,
            max_elems,
            each,
        } => PlanNode::Ring {
            ptr_offset,
            cap_offset,
            head_offset,
            len_offset,
            elem_size,
            max_elems,
            each: sub(each, nodes),
        },
        Draft::Hash {
            ctrl_offset,
            mask_offset,
            items_offset,
            elem_size,
            max_elems,
            each,
        } => PlanNode::HashTable {
            ctrl_offset,
            mask_offset,
            items_offset,
            elem_size,
            max_elems,
            each: sub(each, nodes),
        },
        Draft::CString { offset, max_len } => PlanNode::CString { offset, max_len },
        Draft::Switch {
            offset,
            size,
            cases,
            default,
        } => {
            let cases = cases
                .into_iter()
                .map(|(v, t)| (v, emit(nodes, t)))
                .collect();
            PlanNode::Switch {
                offset,
                size,
                cases,
                default: sub(default, nodes),
            }
        }
        Draft::BTree {
            mut node,
            key_each,
            val_each,
        } => {
            if let PlanNode::BTree {
                key_each: k,
                val_each: v,
                ..
            } = &mut node
            {
                *k = sub(key_each, nodes);
                *v = sub(val_each, nodes);
            }
            node
        }
        Draft::Each { mut node, each } => {
            let id = sub(each, nodes);
            if let PlanNode::Span { each, .. }
            | PlanNode::Chain { each, .. }
            | PlanNode::Tree { each, .. }
            | PlanNode::Deque { each, .. } = &mut node
            {
                *each = id;
            }
            node
        }
    };
    if let Some(slot) = nodes.get_mut(id as usize) {
        *slot = node;
    }
    id
}
