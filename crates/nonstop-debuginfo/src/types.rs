//! The type model: type DIEs read lazily by [`DieRef`], cached, with Rust-aware names.
//!
//! A [`Type`] refers to other types by [`DieRef`], never by value, so recursive types
//! (`struct Node { next: Option<Box<Node>> }`) need no special care: each DIE is read once,
//! when first asked for, and kept in a cache shared by every thread.
//!
//! Two names are kept per type: [`Type::name`], the full path as the program spells it
//! (`alloc::vec::Vec<i32, alloc::alloc::Global>`), used to recognise std types, and
//! [`Type::display`], the short form shown to people and put in `Value::type_name`:
//! std paths cut to their last segment and allocator/hasher parameters dropped
//! (`Vec<i32>`, `HashMap<String, u32>`, `Option<&str>`); user types keep their path
//! (`shop::cart::Cart`).

use crate::{DebugInfo, DieRef, Reader};
use gimli::constants as dw;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Most DIEs read for one type's subtree (a guard against garbage DWARF).
const MAX_SUBTREE: usize = 20_000;
/// Most typedef/const/volatile links followed, and most levels when building a name.
const MAX_CHAIN: u32 = 16;

/// One type, as read from its DIE.
#[derive(Debug, Clone, PartialEq)]
pub struct Type {
    /// The DIE it was read from (after typedefs and qualifiers).
    pub die: DieRef,
    /// Full name with its namespace path (`alloc::string::String`); empty when anonymous.
    pub name: String,
    /// Short name for people (`String`, `Vec<u8>`, `fixture::Order`).
    pub display: String,
    /// Size in bytes.
    pub size: u64,
    /// What kind of type it is.
    pub kind: TypeKind,
}

/// The kinds of types the decoder knows.
#[derive(Debug, Clone, PartialEq)]
pub enum TypeKind {
    /// `()` and other zero-sized base types.
    Unit,
    /// `bool`.
    Bool,
    /// Rust `char`: a Unicode scalar value in a `u32`.
    Char,
    /// An integer; C `char`s are integers with `c_char` set.
    Int {
        /// Signed or not.
        signed: bool,
        /// A C character type (`char`, `signed char`, `unsigned char`).
        c_char: bool,
    },
    /// `f32` / `f64` (and C `float` / `double`).
    Float,
    /// A thin pointer: reference, raw pointer, `Box<T>` or function pointer.
    Pointer {
        /// What it points to (`None` for `void *`).
        pointee: Option<DieRef>,
        /// Which kind of pointer.
        kind: PointerKind,
    },
    /// A struct, tuple or tuple struct.
    Struct {
        /// Members in declaration order (not memory order).
        fields: Vec<Field>,
        /// Template type parameters (`T` of `Vec<T>`).
        params: Vec<(String, DieRef)>,
        /// Fields are named `__0`, `__1`, …: a tuple or tuple struct.
        tuple_like: bool,
    },
    /// A union (C or Rust): every member at its own offset, usually 0.
    Union {
        /// Members in declaration order.
        fields: Vec<Field>,
    },
    /// A fixed-size array; several dimensions for C's `int a[2][3]`.
    Array {
        /// The element type.
        elem: Option<DieRef>,
        /// Element counts, outermost first.
        dims: Vec<u64>,
    },
    /// A Rust enum with a variant part.
    Enum {
        /// Where the discriminant is (none for single-variant enums).
        discr: Option<Discriminant>,
        /// The variants in declaration order.
        variants: Vec<Variant>,
    },
    /// A C-like enumeration (`DW_TAG_enumeration_type`).
    Enumeration {
        /// Whether the underlying integer is signed.
        signed: bool,
        /// Enumerators with their values truncated to the type's size.
        values: Vec<(String, u64)>,
    },
    /// A function type (the target of a function pointer); it has no bytes to show.
    Function,
    /// Something nonstop does not decode (shown as its raw bytes' absence).
    Unknown,
}

/// The kinds of thin pointers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointerKind {
    /// `&T` / `&mut T`.
    Reference,
    /// `*const T` / `*mut T`, and C pointers.
    Raw,
    /// `Box<T>`.
    Box,
    /// A function pointer.
    Function,
}

/// A member of a struct, union or variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Its name (`__0` for tuple fields).
    pub name: String,
    /// Its offset from the start of the containing value.
    pub offset: u64,
    /// Its type.
    pub ty: Option<DieRef>,
    /// Marked artificial by the compiler.
    pub artificial: bool,
    /// A C++ base class (`DW_TAG_inheritance`): `name` is the base's type name and the
    /// base's own members are at `offset` within this value.
    pub base: bool,
    /// A bit-field (`unsigned flags : 3`): its bits within the containing value, which
    /// then replace `offset` (the start of the bytes that hold them).
    pub bits: Option<Bits>,
}

/// Where a bit-field's bits are: `size` bits from bit `offset` of the containing value
/// (bit 0 is the lowest bit of its first byte, as on x86_64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bits {
    /// The first bit, counted from the start of the containing value.
    pub offset: u64,
    /// How many bits (1..=64).
    pub size: u64,
}

/// Where an enum's discriminant lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Discriminant {
    /// Offset in the enum.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

/// One variant of a Rust enum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    /// Its name (`Some`).
    pub name: String,
    /// Its discriminant value truncated to the discriminant's size; `None` for the
    /// default (untagged) variant of a niche enum.
    pub discr_value: Option<u64>,
    /// The variant's struct: fields at offsets from the start of the enum.
    pub ty: Option<DieRef>,
}

/// Cache of the types read so far, and of per-unit facts. Shared by all threads.
#[derive(Default)]
pub(crate) struct TypeCache {
    types: Mutex<HashMap<DieRef, Arc<Type>>>,
    /// Per unit (by index in [`DebugInfo::units`]): its index, built on first use.
    units: OnceLock<Vec<OnceLock<Option<UnitInfo>>>>,
}

/// A unit with the sections its DIEs are read with.
type UnitSlot = crate::units::UnitEntry;

struct UnitInfo {
    rust: bool,
    /// DIE → namespace path of named types (`alloc::vec`).
    paths: HashMap<usize, Arc<str>>,
    /// Short DW_AT_name → DIEs of structs with that name (for `InternalNode<K, V>`).
    structs: HashMap<String, Vec<usize>>,
}

/// One DIE read with its subtree, flattened: (depth, entry).
type Subtree = Vec<(isize, gimli::DebuggingInformationEntry<Reader>)>;

impl DebugInfo {
    fn type_cache(&self) -> &TypeCache {
        &self.index.types
    }

    /// The unit that holds `die` (indexed on first use), and the DIE's offset in it.
    fn unit_of(&self, die: DieRef) -> Option<(&UnitSlot, &UnitInfo, gimli::UnitOffset)> {
        let units = self.units().ok()?;
        let (ui, off) = self.die_unit(die).ok()??;
        let slot = units.get(ui)?;
        let infos = self
            .type_cache()
            .units
            .get_or_init(|| units.iter().map(|_| OnceLock::new()).collect());
        let info = infos.get(ui)?.get_or_init(|| index_unit(slot)).as_ref()?;
        Some((slot, info, off))
    }

    /// The type at `die`, with typedefs, `const` and `volatile` looked through.
    /// Read on first use and cached; `None` when the DIE is not a type nonstop can read.
    pub fn type_of(&self, die: DieRef) -> Option<Arc<Type>> {
        if let Ok(cache) = self.type_cache().types.lock()
            && let Some(t) = cache.get(&die)
        {
            return Some(t.clone());
        }
        let ty = Arc::new(self.read_type(die, 0)?);
        if let Ok(mut cache) = self.type_cache().types.lock() {
            cache.insert(die, ty.clone());
        }
        Some(ty)
    }

    /// [`DebugInfo::type_of`] of an optional DIE.
    pub(crate) fn type_of_opt(&self, die: Option<DieRef>) -> Option<Arc<Type>> {
        self.type_of(die?)
    }

    /// The size in bytes of the type at `die` (0 when unknown).
    pub fn type_size(&self, die: Option<DieRef>) -> u64 {
        die.and_then(|d| self.type_of(d)).map_or(0, |t| t.size)
    }

    /// Finds a struct type by its short DWARF name in the unit that holds `near`
    /// (std types are emitted per unit, so the unit of a related type is the place to look).
    pub(crate) fn struct_named_near(&self, near: DieRef, name: &str) -> Option<DieRef> {
        let (_, info, _) = self.unit_of(near)?;
        info.structs.get(name)?.first().map(|o| DieRef(*o))
    }

    fn subtree(&self, die: DieRef) -> Option<(&UnitSlot, &UnitInfo, Subtree)> {
        let (slot, info, off) = self.unit_of(die)?;
        let mut cursor = slot.entries_at_offset(off).ok()?;
        let mut out = Vec::new();
        while let Ok(Some(entry)) = cursor.next_dfs() {
            let depth = entry.depth();
            if depth <= 0 && !out.is_empty() {
                break;
            }
            out.push((depth, entry.clone()));
            if out.len() >= MAX_SUBTREE || !entry.has_children() && out.len() == 1 {
                break;
            }
        }
        if out.is_empty() {
            None
        } else {
            Some((slot, info, out))
        }
    }

    fn read_type(&self, die: DieRef, chain: u32) -> Option<Type> {
        if chain > MAX_CHAIN {
            return None;
        }
        let (slot, info, tree) = self.subtree(die)?;
        let (_, entry) = tree.first()?;
        let unit = &slot.unit;
        let name = attr_string(&slot.dwarf, unit, entry, dw::DW_AT_name);
        let size = entry
            .attr_value(dw::DW_AT_byte_size)
            .and_then(|v| v.udata_value());
        let target = type_ref(slot, entry);
        let path = info.paths.get(&die.0).cloned();
        let full = match (&name, path) {
            (Some(n), Some(p)) if !p.is_empty() => format!("{p}::{n}"),
            (Some(n), _) => n.clone(),
            (None, _) => String::new(),
        };
        let tag = entry.tag();
        let mut ty = Type {
            die,
            display: String::new(),
            name: full,
            size: size.unwrap_or(0),
            kind: TypeKind::Unknown,
        };
        match tag {
            dw::DW_TAG_typedef
            | dw::DW_TAG_const_type
            | dw::DW_TAG_volatile_type
            | dw::DW_TAG_restrict_type
            | dw::DW_TAG_atomic_type => {
                let Some(t) = target.and_then(|t| self.read_type(t, chain + 1)) else {
                    // `void` typedefs and qualifiers on nothing.
                    ty.kind = TypeKind::Unit;
                    ty.display = if ty.name.is_empty() {
                        "void".into()
                    } else {
                        ty.name.clone()
                    };
                    return Some(ty);
                };
                let mut t = t;
                if tag == dw::DW_TAG_typedef && t.name.is_empty() {
                    t.name = ty.name;
                    t.display = t.name.clone();
                }
                return Some(t);
            }
            dw::DW_TAG_base_type => {
                let enc = match entry.attr_value(dw::DW_AT_encoding) {
                    Some(gimli::AttributeValue::Encoding(e)) => e,
                    _ => dw::DwAte(0),
                };
                ty.kind = match enc {
                    _ if ty.size == 0 => TypeKind::Unit,
                    dw::DW_ATE_boolean => TypeKind::Bool,
                    dw::DW_ATE_UTF if ty.size == 4 && info.rust => TypeKind::Char,
                    dw::DW_ATE_float => TypeKind::Float,
                    dw::DW_ATE_signed => TypeKind::Int {
                        signed: true,
                        c_char: false,
                    },
                    dw::DW_ATE_unsigned | dw::DW_ATE_UTF => TypeKind::Int {
                        signed: false,
                        c_char: false,
                    },
                    dw::DW_ATE_signed_char => TypeKind::Int {
                        signed: true,
                        c_char: true,
                    },
                    dw::DW_ATE_unsigned_char => TypeKind::Int {
                        signed: false,
                        c_char: true,
                    },
                    _ => TypeKind::Unknown,
                };
            }
            dw::DW_TAG_pointer_type
            | dw::DW_TAG_reference_type
            | dw::DW_TAG_rvalue_reference_type => {
                if size.is_none() {
                    ty.size = u64::from(slot.header.address_size());
                }
                let pointee_is_fn = target
                    .and_then(|t| self.type_of(t))
                    .is_some_and(|t| t.kind == TypeKind::Function);
                let c_followable = target.and_then(|t| self.type_of(t)).is_some_and(|t| {
                    matches!(
                        t.kind,
                        TypeKind::Struct { .. }
                            | TypeKind::Union { .. }
                            | TypeKind::Int { c_char: false, .. }
                            | TypeKind::Float
                            | TypeKind::Enumeration { .. }
                    )
                });
                let kind = if pointee_is_fn {
                    PointerKind::Function
                } else if ty.name.starts_with('&') || tag != dw::DW_TAG_pointer_type {
                    PointerKind::Reference
                } else if ty.name.starts_with("alloc::boxed::Box<") {
                    PointerKind::Box
                } else if !info.rust && ty.name.is_empty() && c_followable {
                    // C pointers to data are shown as what they point to, as `&T` is.
                    PointerKind::Reference
                } else {
                    PointerKind::Raw
                };
                if ty.name.is_empty() {
                    let inner = self.name_of(target, chain + 1);
                    ty.name = if info.rust {
                        format!("*const {inner}")
                    } else if tag == dw::DW_TAG_reference_type {
                        format!("{inner} &")
                    } else if tag == dw::DW_TAG_rvalue_reference_type {
                        format!("{inner} &&")
                    } else {
                        format!("{inner} *")
                    };
                }
                ty.kind = TypeKind::Pointer {
                    pointee: target,
                    kind,
                };
            }
            dw::DW_TAG_subroutine_type => {
                ty.kind = TypeKind::Function;
                if ty.name.is_empty() {
                    ty.name = "fn".into();
                }
            }
            dw::DW_TAG_array_type => {
                let mut dims = Vec::new();
                for (d, e) in &tree[1..] {
                    if *d == 1 && e.tag() == dw::DW_TAG_subrange_type {
                        let count = e
                            .attr_value(dw::DW_AT_count)
                            .and_then(|v| v.udata_value())
                            .or_else(|| {
                                e.attr_value(dw::DW_AT_upper_bound)
                                    .and_then(|v| v.udata_value())
                                    .map(|u| u.saturating_add(1))
                            })
                            .unwrap_or(0);
                        dims.push(count);
                    }
                }
                if dims.is_empty() {
                    dims.push(0);
                }
                let elem_size = self.type_size(target);
                if size.is_none() {
                    ty.size = dims.iter().fold(elem_size, |a, d| a.saturating_mul(*d));
                }
                let inner = self.name_of(target, chain + 1);
                ty.name = if info.rust {
                    dims.iter()
                        .rev()
                        .fold(inner, |acc, d| format!("[{acc}; {d}]"))
                } else {
                    let ds: String = dims.iter().map(|d| format!("[{d}]")).collect();
                    format!("{inner}{ds}")
                };
                ty.kind = TypeKind::Array { elem: target, dims };
            }
            dw::DW_TAG_enumeration_type => {
                let signed = target
                    .and_then(|t| self.type_of(t))
                    .is_some_and(|t| matches!(t.kind, TypeKind::Int { signed: true, .. }));
                let mut values = Vec::new();
                for (d, e) in &tree[1..] {
                    if *d == 1 && e.tag() == dw::DW_TAG_enumerator {
                        let n =
                            attr_string(&slot.dwarf, unit, e, dw::DW_AT_name).unwrap_or_default();
                        if let Some(v) = e
                            .attr_value(dw::DW_AT_const_value)
                            .and_then(|v| discr_bits(&v))
                        {
                            values.push((n, truncate(v, ty.size)));
                        }
                    }
                }
                ty.kind = TypeKind::Enumeration { signed, values };
            }
            dw::DW_TAG_structure_type | dw::DW_TAG_class_type | dw::DW_TAG_union_type => {
                ty.kind =
                    self.read_aggregate(slot, info, &tree, tag == dw::DW_TAG_union_type, ty.size);
            }
            _ => {}
        }
        ty.display = if ty.name.is_empty() {
            // Anonymous: a typedef naming it gives it its name (see above).
            match tag {
                dw::DW_TAG_union_type => "union".into(),
                dw::DW_TAG_enumeration_type => "enum".into(),
                _ => "struct".into(),
            }
        } else if info.rust {
            short_name(&ty.name)
        } else if ty.name.starts_with("std::") {
            cpp_short_name(&ty.name)
        } else {
            ty.name.clone()
        };
        Some(ty)
    }

    /// The name of the type at `die` for use inside another type's name.
    fn name_of(&self, die: Option<DieRef>, chain: u32) -> String {
        if chain > MAX_CHAIN {
            return "?".into();
        }
        match die {
            None => "void".into(),
            Some(d) => self
                .read_type(d, chain)
                .map_or_else(|| "?".into(), |t| t.name),
        }
    }

    fn read_aggregate(
        &self,
        slot: &UnitSlot,
        info: &UnitInfo,
        tree: &Subtree,
        union: bool,
        size: u64,
    ) -> TypeKind {
        let unit = &slot.unit;
        let mut fields = Vec::new();
        let mut params = Vec::new();
        let mut variant_part = None;
        for (i, (d, e)) in tree.iter().enumerate().skip(1) {
            if *d != 1 {
                continue;
            }
            match e.tag() {
                dw::DW_TAG_member => {
                    if e.attr_value(dw::DW_AT_external).is_some() {
                        continue; // a static member: not part of the value
                    }
                    if let Some(f) = member(slot, e) {
                        fields.push(f);
                    }
                }
                dw::DW_TAG_inheritance => {
                    if let Some(mut f) = member(slot, e) {
                        f.base = true;
                        f.name = self.name_of(f.ty, 1);
                        fields.push(f);
                    }
                }
                dw::DW_TAG_template_type_parameter => {
                    let n = attr_string(&slot.dwarf, unit, e, dw::DW_AT_name).unwrap_or_default();
                    if let Some(t) = type_ref(slot, e) {
                        params.push((n, t));
                    }
                }
                dw::DW_TAG_variant_part => variant_part = Some(i),
                _ => {}
            }
        }
        if union {
            return TypeKind::Union { fields };
        }
        if let Some(vp) = variant_part {
            return self.read_variant_part(slot, tree, vp, size);
        }
        let tuple_like =
            info.rust && !fields.is_empty() && fields.iter().all(|f| f.name.starts_with("__"));
        TypeKind::Struct {
            fields,
            params,
            tuple_like,
        }
    }

    fn read_variant_part(&self, slot: &UnitSlot, tree: &Subtree, vp: usize, size: u64) -> TypeKind {
        let unit = &slot.unit;
        let Some((vp_depth, vp_entry)) = tree.get(vp) else {
            return TypeKind::Unknown;
        };
        let discr_die = match vp_entry.attr_value(dw::DW_AT_discr) {
            Some(gimli::AttributeValue::UnitRef(o)) => Some(o),
            _ => None,
        };
        let mut discr = None;
        let mut variants = Vec::new();
        let mut current: Option<(Option<u64>, bool)> = None;
        for (d, e) in tree.iter().skip(vp + 1) {
            if *d <= *vp_depth {
                break;
            }
            if *d == vp_depth + 1 {
                match e.tag() {
                    dw::DW_TAG_member if Some(e.offset()) == discr_die => {
                        if let Some(f) = member(slot, e) {
                            let dsize = self.type_size(f.ty).clamp(0, 16);
                            discr = Some(Discriminant {
                                offset: f.offset,
                                size: if dsize == 0 { size.min(8) } else { dsize },
                            });
                        }
                        current = None;
                    }
                    dw::DW_TAG_variant => {
                        let v = e
                            .attr_value(dw::DW_AT_discr_value)
                            .and_then(|v| discr_bits(&v));
                        current = Some((v, true));
                    }
                    _ => current = None,
                }
            } else if *d == vp_depth + 2
                && e.tag() == dw::DW_TAG_member
                && let Some((v, fresh)) = current
                && fresh
            {
                let name = attr_string(&slot.dwarf, unit, e, dw::DW_AT_name).unwrap_or_default();
                variants.push(Variant {
                    name,
                    discr_value: v,
                    ty: type_ref(slot, e),
                });
                current = Some((v, false));
            }
        }
        if let Some(dsc) = discr {
            for v in &mut variants {
                v.discr_value = v.discr_value.map(|x| truncate(x, dsc.size));
            }
        }
        TypeKind::Enum { discr, variants }
    }
}

/// Builds the per-unit index: namespace paths of named types and structs by name.
fn index_unit(slot: &UnitSlot) -> Option<UnitInfo> {
    let (dwarf, unit) = (&slot.dwarf, &slot.unit);
    let rust = matches!(
        unit.entry(unit.header.root_offset())
            .ok()
            .and_then(|e| e.attr_value(dw::DW_AT_language)),
        Some(gimli::AttributeValue::Language(dw::DW_LANG_Rust))
    );
    let mut paths = HashMap::new();
    let mut structs: HashMap<String, Vec<usize>> = HashMap::new();
    let mut scope: Vec<(isize, String)> = Vec::new();
    let mut joined: Arc<str> = Arc::from("");
    {
        let mut cursor = unit.entries();
        while let Ok(Some(entry)) = cursor.next_dfs() {
            let depth = entry.depth();
            let before = scope.len();
            while scope.last().is_some_and(|(d, _)| *d >= depth) {
                scope.pop();
            }
            if scope.len() != before {
                joined = join_scope(&scope);
            }
            let tag = entry.tag();
            let is_type = matches!(
                tag,
                dw::DW_TAG_structure_type
                    | dw::DW_TAG_union_type
                    | dw::DW_TAG_enumeration_type
                    | dw::DW_TAG_class_type
                    | dw::DW_TAG_typedef
                    | dw::DW_TAG_base_type
            );
            let scoping = matches!(
                tag,
                dw::DW_TAG_namespace
                    | dw::DW_TAG_structure_type
                    | dw::DW_TAG_union_type
                    | dw::DW_TAG_enumeration_type
                    | dw::DW_TAG_class_type
            );
            if !is_type && !scoping {
                continue;
            }
            let name = attr_string(dwarf, unit, entry, dw::DW_AT_name);
            let Some(DieRef(offset)) = slot.die_ref(entry.offset()) else {
                continue;
            };
            if is_type && !joined.is_empty() {
                paths.insert(offset, joined.clone());
            }
            if tag == dw::DW_TAG_structure_type
                && let Some(n) = &name
                && rust
            {
                structs.entry(n.clone()).or_default().push(offset);
            }
            if scoping && entry.has_children() {
                scope.push((depth, name.unwrap_or_else(|| "{anon}".into())));
                joined = join_scope(&scope);
            }
        }
    }
    Some(UnitInfo {
        rust,
        paths,
        structs,
    })
}

fn join_scope(scope: &[(isize, String)]) -> Arc<str> {
    let v: Vec<&str> = scope.iter().map(|(_, n)| n.as_str()).collect();
    Arc::from(v.join("::"))
}

fn attr_string(
    dwarf: &gimli::Dwarf<Reader>,
    unit: &gimli::Unit<Reader>,
    entry: &gimli::DebuggingInformationEntry<Reader>,
    at: gimli::DwAt,
) -> Option<String> {
    let v = entry.attr_value(at)?;
    let s = dwarf.attr_string(unit, v).ok()?;
    let s = gimli::Reader::to_string_lossy(&s).ok()?;
    Some(s.into_owned())
}

/// The DIE a `DW_AT_type` attribute refers to.
fn type_ref(slot: &UnitSlot, entry: &gimli::DebuggingInformationEntry<Reader>) -> Option<DieRef> {
    slot.reference(&entry.attr_value(dw::DW_AT_type)?)
}

fn member(slot: &UnitSlot, e: &gimli::DebuggingInformationEntry<Reader>) -> Option<Field> {
    let name = attr_string(&slot.dwarf, slot, e, dw::DW_AT_name).unwrap_or_default();
    let offset = match e.attr_value(dw::DW_AT_data_member_location) {
        None => 0,
        Some(gimli::AttributeValue::Exprloc(expr)) => plus_uconst(expr)?,
        Some(v) => v.udata_value()?,
    };
    let udata = |at| e.attr_value(at).and_then(|v| v.udata_value());
    let bits = udata(dw::DW_AT_bit_size)
        .filter(|&size| (1..=64).contains(&size))
        .and_then(|size| {
            let first = match udata(dw::DW_AT_data_bit_offset) {
                // DWARF 4 and later: from the start of the containing value.
                Some(b) => b,
                // DWARF 2 and 3: from the most significant bit of a storage unit of
                // `DW_AT_byte_size` bytes at the member's location (little-endian here).
                None => {
                    let unit_bits = udata(dw::DW_AT_byte_size)?.checked_mul(8)?;
                    let from_top = udata(dw::DW_AT_bit_offset)?;
                    (offset.checked_mul(8)? + unit_bits).checked_sub(from_top + size)?
                }
            };
            Some(Bits {
                offset: first,
                size,
            })
        });
    let offset = bits.map_or(offset, |b| b.offset / 8);
    Some(Field {
        name,
        offset,
        ty: type_ref(slot, e),
        artificial: matches!(
            e.attr_value(dw::DW_AT_artificial),
            Some(gimli::AttributeValue::Flag(true))
        ),
        base: false,
        bits,
    })
}

/// A member location written as `DW_OP_plus_uconst N` (older C compilers).
fn plus_uconst(expr: gimli::Expression<Reader>) -> Option<u64> {
    let mut r = expr.0;
    let op = gimli::Reader::read_u8(&mut r).ok()?;
    if op != dw::DW_OP_plus_uconst.0 {
        return None;
    }
    gimli::Reader::read_uleb128(&mut r).ok()
}

/// The raw bits of a discriminant or enumerator value, whatever form it was written in.
fn discr_bits(v: &gimli::AttributeValue<Reader>) -> Option<u64> {
    use gimli::AttributeValue as A;
    Some(match v {
        A::Data1(x) => u64::from(*x),
        A::Data2(x) => u64::from(*x),
        A::Data4(x) => u64::from(*x),
        A::Data8(x) => *x,
        A::Data16(x) => *x as u64,
        A::Udata(x) => *x,
        A::Sdata(x) => *x as u64,
        A::Block(b) => {
            let mut r = b.clone();
            let mut bytes = [0u8; 8];
            let n = gimli::Reader::len(&r).min(8);
            gimli::Reader::read_slice(&mut r, &mut bytes[..n]).ok()?;
            u64::from_le_bytes(bytes)
        }
        _ => return None,
    })
}

/// `v` truncated to `size` bytes.
pub(crate) fn truncate(v: u64, size: u64) -> u64 {
    if size >= 8 || size == 0 {
        v
    } else {
        v & ((1u64 << (size * 8)) - 1)
    }
}

/// Crates whose paths are cut to their last segment in display names.
const STD_CRATES: [&str; 5] = [
    "alloc::",
    "core::",
    "std::",
    "hashbrown::",
    "compiler_builtins::",
];

/// The short display form of a full Rust type name: std paths cut to their last
/// segment, allocator and hasher parameters dropped.
pub fn short_name(full: &str) -> String {
    let mut out = String::with_capacity(full.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        if token.contains("{async_") {
            // A future's state: `shop::handle::{async_fn_env#0}` → `shop::handle (async)`.
            out.push_str(&crate::dies::async_display_name(token));
        } else if STD_CRATES.iter().any(|c| token.starts_with(c)) {
            let last = token.rsplit("::").next().unwrap_or(token.as_str());
            out.push_str(last);
        } else {
            out.push_str(token);
        }
        token.clear();
    };
    for c in full.chars() {
        if c.is_alphanumeric() || matches!(c, '_' | ':' | '{' | '}' | '#' | '$') {
            token.push(c);
        } else {
            flush(&mut token, &mut out);
            out.push(c);
        }
    }
    flush(&mut token, &mut out);
    for drop in ["Global", "RandomState"] {
        loop {
            let before = out.len();
            out = out
                .replace(&format!(", {drop}>"), ">")
                .replace(&format!(", {drop},"), ",");
            if out.len() == before {
                break;
            }
        }
    }
    out
}

/// Template arguments the C++ standard library fills in by default; gdb leaves them out.
const CPP_DEFAULT_ARGS: [&str; 6] = [
    "std::allocator<",
    "std::default_delete<",
    "std::less<",
    "std::hash<",
    "std::equal_to<",
    "std::char_traits<",
];

/// The short display form of a C++ standard-library type name, as gdb's type printers
/// show it: `std::string` for `std::__cxx11::basic_string<char, std::char_traits<char>,
/// std::allocator<char> >`, default arguments (allocators, comparators, hashers,
/// deleters, `std::dynamic_extent`) dropped: `std::map<std::string, int>`.
pub fn cpp_short_name(full: &str) -> String {
    let cleaned = full
        .replace("std::__cxx11::", "std::")
        .replace("std::__1::", "std::");
    simplify_cpp(&cleaned, 0)
}

fn simplify_cpp(s: &str, depth: u32) -> String {
    if depth > MAX_CHAIN {
        return s.to_string();
    }
    let Some(lt) = s.find('<') else {
        return s.to_string();
    };
    // The matching `>` of the first `<`, and the top-level commas between them.
    let mut level = 0i32;
    let mut gt = None;
    let mut cuts = vec![lt];
    for (i, c) in s.char_indices().skip_while(|(i, _)| *i < lt) {
        match c {
            '<' | '(' => level += 1,
            '>' | ')' => {
                level -= 1;
                if level == 0 {
                    gt = Some(i);
                    break;
                }
            }
            ',' if level == 1 => cuts.push(i),
            _ => {}
        }
    }
    let Some(gt) = gt else {
        return s.to_string();
    };
    cuts.push(gt);
    let head = s[..lt].trim_end();
    let (qualifier, head) = match head.strip_prefix("const ") {
        Some(h) => ("const ", h),
        None => ("", head),
    };
    let std_head = head.starts_with("std::");
    let mut args: Vec<String> = cuts
        .windows(2)
        .map(|w| simplify_cpp(s[w[0] + 1..w[1]].trim(), depth + 1))
        .filter(|a| !a.is_empty())
        .collect();
    if std_head {
        args.retain(|a| {
            !CPP_DEFAULT_ARGS.iter().any(|d| a.starts_with(d)) && a != "18446744073709551615"
        });
    }
    let rest = simplify_cpp(&s[gt + 1..], depth + 1);
    let joined = match (head, args.as_slice()) {
        ("std::basic_string", [c]) if c == "char" => "std::string".to_string(),
        ("std::basic_string_view", [c]) if c == "char" => "std::string_view".to_string(),
        _ => format!("{head}<{}>", args.join(", ")),
    };
    format!("{qualifier}{joined}{rest}")
}

impl Type {
    /// The name before any generic arguments (`alloc::vec::Vec`).
    pub fn base_name(&self) -> &str {
        base_of(&self.name)
    }

    /// A member by name.
    pub fn field(&self, name: &str) -> Option<&Field> {
        match &self.kind {
            TypeKind::Struct { fields, .. } | TypeKind::Union { fields } => {
                fields.iter().find(|f| f.name == name)
            }
            _ => None,
        }
    }

    /// A template type parameter by name (`T`).
    pub fn param(&self, name: &str) -> Option<DieRef> {
        match &self.kind {
            TypeKind::Struct { params, .. } => {
                params.iter().find(|(n, _)| n == name).map(|(_, t)| *t)
            }
            _ => None,
        }
    }
}

/// The part of a type name before its generic arguments.
pub(crate) fn base_of(name: &str) -> &str {
    name.split('<').next().unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_drop_std_paths_and_allocators() {
        assert_eq!(
            short_name("alloc::vec::Vec<i32, alloc::alloc::Global>"),
            "Vec<i32>"
        );
        assert_eq!(
            short_name(
                "std::collections::hash::map::HashMap<alloc::string::String, u32, std::hash::random::RandomState, alloc::alloc::Global>"
            ),
            "HashMap<String, u32>"
        );
        assert_eq!(
            short_name(
                "alloc::vec::Vec<alloc::vec::Vec<u8, alloc::alloc::Global>, alloc::alloc::Global>"
            ),
            "Vec<Vec<u8>>"
        );
        assert_eq!(short_name("core::option::Option<&str>"), "Option<&str>");
        assert_eq!(short_name("fixture::Order"), "fixture::Order");
        assert_eq!(short_name("&dyn core::fmt::Debug"), "&dyn Debug");
    }

    #[test]
    fn cpp_names_read_as_gdb_prints_them() {
        let s = "std::__cxx11::basic_string<char, std::char_traits<char>, std::allocator<char> >";
        assert_eq!(cpp_short_name(s), "std::string");
        assert_eq!(
            cpp_short_name("std::vector<Item, std::allocator<Item> >"),
            "std::vector<Item>"
        );
        assert_eq!(
            cpp_short_name(&format!(
                "std::map<{s}, int, std::less<{s}>, std::allocator<std::pair<{s} const, int> > >"
            )),
            "std::map<std::string, int>"
        );
        assert_eq!(
            cpp_short_name("std::unique_ptr<Item, std::default_delete<Item> >"),
            "std::unique_ptr<Item>"
        );
        assert_eq!(
            cpp_short_name("std::span<int, 18446744073709551615>"),
            "std::span<int>"
        );
        assert_eq!(
            cpp_short_name(&format!("std::variant<int, {s}>")),
            "std::variant<int, std::string>"
        );
        assert_eq!(cpp_short_name("std::array<int, 3>"), "std::array<int, 3>");
        assert_eq!(
            cpp_short_name(&format!("std::pair<const {s}, int>")),
            "std::pair<const std::string, int>"
        );
    }

    #[test]
    fn truncation_keeps_the_low_bytes() {
        assert_eq!(truncate(0xffff_ffff_ffff_ffff, 1), 0xff);
        assert_eq!(truncate(0x1_0000_0002, 4), 2);
        assert_eq!(truncate(5, 8), 5);
    }
}

/// How a std container keeps its elements, with offsets from the start of the container.
/// Shared by the capture plan and the decoder so both read the same bytes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StdLayout {
    /// A pointer and a count: `&[T]`, `&str`, `Box<[T]>`, `Vec<T>`, `String`.
    Slice {
        ptr: u64,
        len: u64,
        elem: Option<DieRef>,
        elem_size: u64,
        /// UTF-8 text (`String`, `&str`): shown as a string, capped by the string limit.
        text: bool,
    },
    /// `VecDeque<T>`.
    Ring {
        ptr: u64,
        cap: u64,
        head: u64,
        len: u64,
        elem: Option<DieRef>,
        elem_size: u64,
    },
    /// hashbrown `HashMap<K, V>` / `HashSet<T>`: buckets of `(K, V)` tuples.
    Hash {
        ctrl: u64,
        mask: u64,
        items: u64,
        pair: DieRef,
        pair_size: u64,
        set: bool,
    },
    /// `BTreeMap<K, V>` / `BTreeSet<T>`.
    BTree(BTreeLayout),
    /// `Rc<T>` / `Arc<T>`: a pointer at `ptr` to an inner block of `inner_size` bytes
    /// holding the value at `value_offset`.
    Shared {
        ptr: u64,
        inner_size: u64,
        value_offset: u64,
        value: Option<DieRef>,
        /// Offsets in the inner block of the strong and weak counts (`usize`s).
        counts: Option<(u64, u64)>,
    },
    /// A wrapper shown as the value it holds: `Cell`, `RefCell`, `NonZero`, `ManuallyDrop`.
    Transparent { offset: u64, inner: Option<DieRef> },
    /// `Mutex<T>` / `RwLock<T>`: the value it guards at `offset` (read as it is in memory,
    /// locked or not: the hit takes no lock) and the poison flag's byte at `poison`.
    Lock {
        offset: u64,
        inner: Option<DieRef>,
        poison: u64,
    },
    /// C++ `std::vector<T>`: pointers to the first element and one past the last.
    Span {
        begin: u64,
        end: u64,
        elem: Option<DieRef>,
        elem_size: u64,
    },
    /// C++ `std::shared_ptr<T>` / `weak_ptr<T>`: the pointer to the value and the pointer
    /// to the control block with its counts.
    Counted {
        ptr: u64,
        value: Option<DieRef>,
        block: u64,
        block_size: u64,
        use_count: u64,
        weak_count: u64,
    },
    /// C++ `std::optional<T>`: an engaged flag (one byte) and the value.
    Optional {
        engaged: u64,
        offset: u64,
        value: Option<DieRef>,
    },
    /// C++ `std::variant<Ts…>`: the active index and each alternative's place.
    Alternatives {
        index: u64,
        index_size: u64,
        alts: Vec<(u64, Option<DieRef>)>,
    },
    /// C++ node-based containers: `std::map`/`set` (a tree walked in order) and
    /// `std::list`/`unordered_map`/`unordered_set` (a chain of nodes).
    Nodes(NodesLayout),
    /// C++ `std::deque<T>`: offsets of the start iterator's `_M_cur`, `_M_last`,
    /// `_M_node` and of the finish iterator's `_M_cur`, `_M_first`, `_M_node`.
    Deque {
        start: [u64; 3],
        finish: [u64; 3],
        elem: Option<DieRef>,
        elem_size: u64,
        buf_elems: u64,
    },
    /// C++ `std::span<T, N>` with a static extent: a pointer to `count` elements.
    Fixed {
        ptr: u64,
        count: u64,
        elem: Option<DieRef>,
        elem_size: u64,
    },
    /// A Rust `&dyn Trait`, `Box<dyn Trait>`, `*const dyn Trait`: the data pointer and
    /// the vtable pointer, which names the concrete type (see `vtables.rs`).
    Dyn {
        pointer: u64,
        vtable: u64,
        /// The principal trait, as vtables name it (`d::Pay`).
        trait_name: String,
    },
    /// A standard type nonstop recognises but does not decode (`std::vector<bool>`).
    Unsupported(&'static str),
}

/// How the values of a C++ node-based container are shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// A list of the values (`std::list`, sets).
    List,
    /// Values are `std::pair<const K, V>`: a map of keys to values.
    Map,
    /// Pairs with keys that may repeat (`std::multimap`): a list of `[key, value]`.
    MultiMap,
}

/// Offsets of a C++ node-based container and of its nodes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NodesLayout {
    /// A tree (`left`/`right` links from `root`) or a chain (`next` links from `root`).
    pub tree: bool,
    /// The root or first node pointer.
    pub root: u64,
    /// The element count (a usize).
    pub count: u64,
    /// Offsets of the links in a node (`next` is `left` for a chain).
    pub left: u64,
    pub right: u64,
    /// Where the value starts in a node.
    pub value_offset: u64,
    pub value: Option<DieRef>,
    pub value_size: u64,
    pub shape: Shape,
}

/// Offsets of a `BTreeMap` and of its nodes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BTreeLayout {
    pub root: u64,
    pub height: u64,
    pub leaf_size: u64,
    pub internal_size: u64,
    pub len_offset: u64,
    pub keys_offset: u64,
    pub vals_offset: u64,
    pub edges_offset: u64,
    pub key: Option<DieRef>,
    pub key_size: u64,
    pub val: Option<DieRef>,
    pub val_size: u64,
    pub set: bool,
}

/// Capacity of a B-tree node (`B = 6`, `CAPACITY = 2 * B - 1`).
pub(crate) const BTREE_CAPACITY: u64 = 11;

impl DebugInfo {
    /// Follows a path of member names from `ty`, summing their offsets.
    pub(crate) fn field_path(
        &self,
        ty: &Type,
        path: &[&str],
    ) -> Option<(u64, Option<Arc<Type>>, Option<DieRef>)> {
        let mut offset = 0u64;
        let mut cur: Option<Arc<Type>> = None;
        let mut cur_die = None;
        for (i, name) in path.iter().enumerate() {
            let t: &Type = if i == 0 { ty } else { cur.as_deref()? };
            let f = t.field(name)?;
            offset = offset.checked_add(f.offset)?;
            cur_die = f.ty;
            cur = f.ty.and_then(|d| self.type_of(d));
        }
        Some((offset, cur, cur_die))
    }

    /// The first of several member paths that exists, with its offset.
    fn first_path(
        &self,
        ty: &Type,
        paths: &[&[&str]],
    ) -> Option<(u64, Option<Arc<Type>>, Option<DieRef>)> {
        paths.iter().find_map(|p| self.field_path(ty, p))
    }

    /// Recognises std containers by name and finds their fields, trying the field paths
    /// of several std versions.
    pub(crate) fn std_layout(&self, ty: &Type) -> Option<StdLayout> {
        let TypeKind::Struct { fields, .. } = &ty.kind else {
            return None;
        };
        let base = ty.base_name();
        // Fat pointers to slices and str: `&[T]`, `&str`, `Box<[T]>`, `Box<str>`.
        if fields.len() == 2
            && let (Some(p), Some(l)) = (ty.field("data_ptr"), ty.field("length"))
        {
            let elem =
                p.ty.and_then(|d| self.type_of(d))
                    .and_then(|t| match t.kind {
                        TypeKind::Pointer { pointee, .. } => pointee,
                        _ => None,
                    });
            let text = ty.name.ends_with(" str")
                || ty.name == "&str"
                || ty.name.contains("<str")
                || ty.name.ends_with("std::path::Path")
                || ty.name.ends_with("std::ffi::os_str::OsStr");
            return Some(StdLayout::Slice {
                ptr: p.offset,
                len: l.offset,
                elem,
                // Text is bytes (`&Path`'s data pointer points at the unsized `Path`).
                elem_size: if text { 1 } else { self.type_size(elem) },
                text,
            });
        }
        if fields.len() == 2
            && let (Some(p), Some(v)) = (ty.field("pointer"), ty.field("vtable"))
            && let Some(trait_name) = crate::vtables::dyn_trait(&ty.name)
        {
            return Some(StdLayout::Dyn {
                pointer: p.offset,
                vtable: v.offset,
                trait_name: trait_name.to_string(),
            });
        }
        if base.starts_with("std::") && !self.is_rust_type(ty.die) {
            return self.cpp_layout(ty, base);
        }
        match base {
            "alloc::string::String" => {
                let (vec_off, vec, _) = self.field_path(ty, &["vec"])?;
                let (ptr, len) = self.vec_fields(vec.as_deref()?)?;
                Some(StdLayout::Slice {
                    ptr: vec_off + ptr,
                    len: vec_off + len,
                    elem: None,
                    elem_size: 1,
                    text: true,
                })
            }
            "alloc::vec::Vec" => {
                let (ptr, len) = self.vec_fields(ty)?;
                let elem = ty.param("T");
                Some(StdLayout::Slice {
                    ptr,
                    len,
                    elem,
                    elem_size: self.type_size(elem),
                    text: false,
                })
            }
            "alloc::collections::vec_deque::VecDeque" => {
                let (ptr, _, _) = self.first_path(
                    ty,
                    &[
                        &["buf", "inner", "ptr", "pointer", "pointer"],
                        &["buf", "ptr", "pointer", "pointer"],
                        &["buf", "ptr", "pointer"],
                    ],
                )?;
                let (cap, _, _) = self.first_path(
                    ty,
                    &[
                        &["buf", "inner", "cap", "__0"],
                        &["buf", "inner", "cap"],
                        &["buf", "cap", "__0"],
                        &["buf", "cap"],
                    ],
                )?;
                let (head, _, _) = self.field_path(ty, &["head"])?;
                let (len, _, _) = self.field_path(ty, &["len"])?;
                let elem = ty.param("T");
                Some(StdLayout::Ring {
                    ptr,
                    cap,
                    head,
                    len,
                    elem,
                    elem_size: self.type_size(elem),
                })
            }
            "std::collections::hash::map::HashMap"
            | "std::collections::hash::set::HashSet"
            | "hashbrown::map::HashMap"
            | "hashbrown::set::HashSet" => {
                let set = base.ends_with("HashSet");
                let (raw_off, raw, _) = self.first_path(
                    ty,
                    &[
                        &["base", "map", "table"],
                        &["base", "table"],
                        &["map", "table"],
                        &["table"],
                        &["map", "base", "table"],
                    ],
                )?;
                let raw = raw?;
                let pair = raw.param("T")?;
                let (inner_off, inner, _) = self.field_path(&raw, &["table"])?;
                let inner = inner?;
                let (ctrl, _, _) = self.first_path(&inner, &[&["ctrl", "pointer"], &["ctrl"]])?;
                let (mask, _, _) = self.field_path(&inner, &["bucket_mask"])?;
                let (items, _, _) = self.field_path(&inner, &["items"])?;
                let at = raw_off + inner_off;
                Some(StdLayout::Hash {
                    ctrl: at + ctrl,
                    mask: at + mask,
                    items: at + items,
                    pair,
                    pair_size: self.type_size(Some(pair)),
                    set,
                })
            }
            "alloc::collections::btree::map::BTreeMap" => {
                self.btree_layout(ty, false).map(StdLayout::BTree)
            }
            "alloc::collections::btree::set::BTreeSet" => {
                let (off, map, _) = self.field_path(ty, &["map"])?;
                let mut l = self.btree_layout(map.as_deref()?, true)?;
                l.root += off;
                l.height += off;
                Some(StdLayout::BTree(l))
            }
            "alloc::rc::Rc" | "alloc::sync::Arc" => {
                let (ptr, p, _) = self.first_path(ty, &[&["ptr", "pointer"], &["ptr"]])?;
                let TypeKind::Pointer {
                    pointee: Some(inner),
                    ..
                } = p?.kind
                else {
                    return None;
                };
                let inner_ty = self.type_of(inner)?;
                let value = inner_ty.field("value").or_else(|| inner_ty.field("data"))?;
                // `Cell<usize>` (Rc) and `AtomicUsize` (Arc) hold the count at their start.
                let counts = inner_ty
                    .field("strong")
                    .zip(inner_ty.field("weak"))
                    .map(|(s, w)| (s.offset, w.offset));
                Some(StdLayout::Shared {
                    ptr,
                    inner_size: inner_ty.size,
                    value_offset: value.offset,
                    value: value.ty,
                    counts,
                })
            }
            "std::sync::poison::mutex::Mutex"
            | "std::sync::poison::rwlock::RwLock"
            | "std::sync::mutex::Mutex"
            | "std::sync::rwlock::RwLock" => {
                let f = ty.field("data")?;
                let inner =
                    f.ty.and_then(|d| self.type_of(d))
                        .and_then(|cell| cell.field("value").map(|v| (v.offset, v.ty)))?;
                let (poison, _, _) = self.first_path(ty, &[&["poison", "failed"]])?;
                Some(StdLayout::Lock {
                    offset: f.offset + inner.0,
                    inner: inner.1,
                    poison,
                })
            }
            // `OsString` and `PathBuf` hold their bytes in a `Vec<u8>` (Unix): text.
            "std::ffi::os_str::OsString" | "std::path::PathBuf" => {
                let (vec_off, vec, _) =
                    self.first_path(ty, &[&["inner", "inner", "inner"], &["inner", "inner"]])?;
                let vec = vec?;
                if vec.base_name() != "alloc::vec::Vec" {
                    return None;
                }
                let (ptr, len) = self.vec_fields(&vec)?;
                Some(StdLayout::Slice {
                    ptr: vec_off + ptr,
                    len: vec_off + len,
                    elem: vec.param("T"),
                    elem_size: 1,
                    text: true,
                })
            }
            "core::cell::Cell"
            | "core::cell::RefCell"
            | "core::cell::UnsafeCell"
            | "core::mem::manually_drop::ManuallyDrop"
            | "core::num::nonzero::NonZero"
            | "core::cell::SyncUnsafeCell" => {
                let f = ty.field("value").or_else(|| ty.field("__0"))?;
                Some(StdLayout::Transparent {
                    offset: f.offset,
                    inner: f.ty,
                })
            }
            _ if ty.name.starts_with("core::num::niche_types::")
                || ty.name.starts_with("core::num::nonzero::private::") =>
            {
                let f = ty.field("__0")?;
                Some(StdLayout::Transparent {
                    offset: f.offset,
                    inner: f.ty,
                })
            }
            _ => None,
        }
    }

    /// Whether bytes `start..end` of a value of type `ty` hold no member's data (padding,
    /// empty classes). `false` when unsure.
    pub(crate) fn only_padding(&self, ty: DieRef, start: u64, end: u64) -> bool {
        let mut budget = 256u32;
        self.no_data_in(ty, 0, start, end, 0, &mut budget)
    }

    fn no_data_in(
        &self,
        ty: DieRef,
        base: u64,
        start: u64,
        end: u64,
        depth: u32,
        budget: &mut u32,
    ) -> bool {
        if depth > MAX_CHAIN || *budget == 0 {
            return false;
        }
        *budget -= 1;
        let Some(t) = self.type_of(ty) else {
            return false;
        };
        let own_end = base.saturating_add(t.size);
        if own_end <= start || base >= end {
            return true;
        }
        match &t.kind {
            TypeKind::Struct { fields, .. } | TypeKind::Union { fields } => {
                fields.iter().all(|f| match f.ty {
                    Some(d) => self.no_data_in(
                        d,
                        base.saturating_add(f.offset),
                        start,
                        end,
                        depth + 1,
                        budget,
                    ),
                    None => false,
                })
            }
            _ => false,
        }
    }

    /// Bytes of a value the decoder will not look at, given its constant pieces: the
    /// value of an empty `std::optional` (g++ leaves it without a location).
    pub(crate) fn unused_bytes(
        &self,
        ty: DieRef,
        pieces: &[nonstop_capture::capture::Piece],
    ) -> Option<(u64, u64)> {
        let t = self.type_of(ty)?;
        let StdLayout::Optional {
            engaged,
            offset,
            value,
        } = self.std_layout(&t)?
        else {
            return None;
        };
        let mut at = 0u64;
        for p in pieces {
            let end = at.saturating_add(u64::from(p.size));
            if at <= engaged && engaged < end {
                let nonstop_capture::capture::PieceSource::Implicit(bytes) = &p.source else {
                    return None;
                };
                let flag = bytes.get(usize::try_from(engaged - at).ok()?).copied();
                return (flag == Some(0))
                    .then(|| (offset, offset.saturating_add(self.type_size(value))));
            }
            at = end;
        }
        None
    }

    /// Whether `die` comes from a Rust unit (`std::` names mean different things there).
    pub(crate) fn is_rust_type(&self, die: DieRef) -> bool {
        self.unit_of(die).is_some_and(|(_, info, _)| info.rust)
    }

    /// A member by name, looked for in `ty`, then in its base classes and anonymous
    /// members (depth first): its offset from the start of `ty` and its type.
    pub(crate) fn find_member(&self, ty: &Type, name: &str) -> Option<(u64, Option<DieRef>)> {
        self.find_member_where(ty, name, &|_| true, 0)
    }

    fn find_member_where(
        &self,
        ty: &Type,
        name: &str,
        ok: &dyn Fn(Option<DieRef>) -> bool,
        depth: u32,
    ) -> Option<(u64, Option<DieRef>)> {
        if depth > MAX_CHAIN {
            return None;
        }
        let fields = match &ty.kind {
            TypeKind::Struct { fields, .. } | TypeKind::Union { fields } => fields,
            _ => return None,
        };
        if let Some(f) = fields
            .iter()
            .find(|f| !f.base && f.name == name && ok(f.ty))
        {
            return Some((f.offset, f.ty));
        }
        for f in fields.iter().filter(|f| f.base || f.name.is_empty()) {
            if let Some(inner) = f.ty.and_then(|d| self.type_of(d))
                && let Some((o, t)) = self.find_member_where(&inner, name, ok, depth + 1)
            {
                return Some((f.offset.checked_add(o)?, t));
            }
        }
        None
    }

    /// [`DebugInfo::find_member`] along a path of names, summing offsets.
    pub(crate) fn member_path(&self, ty: &Type, path: &[&str]) -> Option<(u64, Option<DieRef>)> {
        let mut offset = 0u64;
        let mut cur: Option<Arc<Type>> = None;
        let mut die = None;
        for (i, name) in path.iter().enumerate() {
            let t: &Type = if i == 0 { ty } else { cur.as_deref()? };
            let (o, d) = self.find_member(t, name)?;
            offset = offset.checked_add(o)?;
            die = d;
            cur = d.and_then(|d| self.type_of(d));
        }
        Some((offset, die))
    }

    /// What a pointer type at `die` points to.
    fn pointee(&self, die: Option<DieRef>) -> Option<DieRef> {
        match self.type_of(die?)?.kind {
            TypeKind::Pointer { pointee, .. } => pointee,
            _ => None,
        }
    }

    /// The type a libstdc++ storage member holds: itself, or the `_Tp` of an
    /// `__aligned_membuf<_Tp>` / `__aligned_buffer<_Tp>`.
    fn stored(&self, die: Option<DieRef>) -> Option<DieRef> {
        let t = self.type_of(die?)?;
        match t.base_name() {
            "__gnu_cxx::__aligned_membuf" | "__gnu_cxx::__aligned_buffer" => t.param("_Tp"),
            _ => die,
        }
    }

    /// libstdc++ (GCC's C++ standard library) containers, found by name and member paths
    /// (see `/work/shared/notes/cpp-stdlib.md`). libc++ (`std::__1`) lays them out
    /// differently and is not recognised.
    fn cpp_layout(&self, ty: &Type, base: &str) -> Option<StdLayout> {
        if ty.name.starts_with("std::__1::") {
            return None;
        }
        match base {
            "std::__cxx11::basic_string" => {
                let char_ty = ty.param("_CharT").and_then(|d| self.type_of(d))?;
                if char_ty.size != 1 {
                    return None;
                }
                let (ptr, _) = self.member_path(ty, &["_M_dataplus", "_M_p"])?;
                let (len, _) = self.find_member(ty, "_M_string_length")?;
                Some(StdLayout::Slice {
                    ptr,
                    len,
                    elem: None,
                    elem_size: 1,
                    text: true,
                })
            }
            "std::basic_string_view" => {
                let char_ty = ty.param("_CharT").and_then(|d| self.type_of(d))?;
                if char_ty.size != 1 {
                    return None;
                }
                let (ptr, _) = self.find_member(ty, "_M_str")?;
                let (len, _) = self.find_member(ty, "_M_len")?;
                Some(StdLayout::Slice {
                    ptr,
                    len,
                    elem: None,
                    elem_size: 1,
                    text: true,
                })
            }
            "std::span" => {
                let (ptr, p) = self.find_member(ty, "_M_ptr")?;
                let elem = self.pointee(p);
                let elem_size = self.type_size(elem);
                match self.member_path(ty, &["_M_extent", "_M_extent_value"]) {
                    Some((len, _)) => Some(StdLayout::Slice {
                        ptr,
                        len,
                        elem,
                        elem_size,
                        text: false,
                    }),
                    // A static extent: the count is the type's last argument (`span<int, 3>`).
                    None => {
                        let args = ty.name.strip_suffix('>')?;
                        let count = args.rsplit(", ").next()?.trim().parse::<u64>().ok()?;
                        Some(StdLayout::Fixed {
                            ptr,
                            count,
                            elem,
                            elem_size,
                        })
                    }
                }
            }
            "std::vector" => {
                let elem = ty.param("_Tp");
                if elem
                    .and_then(|d| self.type_of(d))
                    .is_some_and(|t| t.kind == TypeKind::Bool)
                {
                    return Some(StdLayout::Unsupported(
                        "std::vector<bool> is not decoded (its bits are packed)",
                    ));
                }
                let (begin, _) = self.member_path(ty, &["_M_impl", "_M_start"])?;
                let (end, _) = self.member_path(ty, &["_M_impl", "_M_finish"])?;
                Some(StdLayout::Span {
                    begin,
                    end,
                    elem,
                    elem_size: self.type_size(elem),
                })
            }
            "std::deque" => {
                let elem = ty.param("_Tp");
                let elem_size = self.type_size(elem);
                let iter = |which: &str, names: [&str; 3]| -> Option<[u64; 3]> {
                    let (base, it) = self.member_path(ty, &["_M_impl", which])?;
                    let it = self.type_of(it?)?;
                    let mut out = [0u64; 3];
                    for (slot, n) in out.iter_mut().zip(names) {
                        *slot = base + self.find_member(&it, n)?.0;
                    }
                    Some(out)
                };
                Some(StdLayout::Deque {
                    start: iter("_M_start", ["_M_cur", "_M_last", "_M_node"])?,
                    finish: iter("_M_finish", ["_M_cur", "_M_first", "_M_node"])?,
                    elem,
                    elem_size,
                    // libstdc++'s `__deque_buf_size`: 512-byte buffers, or one element.
                    buf_elems: if elem_size == 0 || elem_size >= 512 {
                        1
                    } else {
                        512 / elem_size
                    },
                })
            }
            "std::array" => {
                let (offset, inner) = self.find_member(ty, "_M_elems")?;
                Some(StdLayout::Transparent { offset, inner })
            }
            "std::unique_ptr" => {
                let is_ptr = |d: Option<DieRef>| {
                    d.and_then(|d| self.type_of(d))
                        .is_some_and(|t| matches!(t.kind, TypeKind::Pointer { .. }))
                };
                // `_M_t` (`__uniq_ptr_data`) → `_M_t` (a `std::tuple`) → `_M_head_impl`.
                let (o1, t) = self.member_path(ty, &["_M_t", "_M_t"])?;
                let t = self.type_of(t?)?;
                let (o2, inner) = self.find_member_where(&t, "_M_head_impl", &is_ptr, 0)?;
                Some(StdLayout::Transparent {
                    offset: o1 + o2,
                    inner,
                })
            }
            "std::shared_ptr" | "std::weak_ptr" => {
                let (ptr, p) = self.find_member(ty, "_M_ptr")?;
                let (block, b) = self.member_path(ty, &["_M_refcount", "_M_pi"])?;
                let counted = self.type_of(self.pointee(b)?)?;
                let (use_count, _) = self.find_member(&counted, "_M_use_count")?;
                let (weak_count, _) = self.find_member(&counted, "_M_weak_count")?;
                Some(StdLayout::Counted {
                    ptr,
                    value: self.pointee(p),
                    block,
                    block_size: counted.size.max(weak_count + 4),
                    use_count,
                    weak_count,
                })
            }
            "std::optional" => {
                let (payload, p) = self.find_member(ty, "_M_payload")?;
                let p = self.type_of(p?)?;
                let (engaged, _) = self.find_member(&p, "_M_engaged")?;
                let (offset, value) = self.member_path(&p, &["_M_payload", "_M_value"])?;
                Some(StdLayout::Optional {
                    engaged: payload + engaged,
                    offset: payload + offset,
                    value: self.stored(value),
                })
            }
            "std::variant" => {
                let (index, idx) = self.find_member(ty, "_M_index")?;
                let (mut at, mut u) = self.find_member(ty, "_M_u")?;
                let mut alts = Vec::new();
                while let Some(union) = u.and_then(|d| self.type_of(d)) {
                    let Some((first, f)) = self.find_member(&union, "_M_first") else {
                        break;
                    };
                    let holder = self.type_of(f?)?;
                    let (o, v) = self.find_member(&holder, "_M_storage")?;
                    alts.push((at + first + o, self.stored(v)));
                    let Some((rest, r)) = self.find_member(&union, "_M_rest") else {
                        break;
                    };
                    at += rest;
                    u = r;
                    if alts.len() > 64 {
                        break;
                    }
                }
                Some(StdLayout::Alternatives {
                    index,
                    index_size: self.type_size(idx).clamp(1, 8),
                    alts,
                })
            }
            "std::map" | "std::set" | "std::multimap" | "std::multiset" => {
                let (tree_off, tree) = self.find_member(ty, "_M_t")?;
                let tree = self.type_of(tree?)?;
                let value = tree.param("_Val");
                let (header, h) = self.member_path(&tree, &["_M_impl", "_M_header"])?;
                let h = self.type_of(h?)?;
                let (count, _) = self.member_path(&tree, &["_M_impl", "_M_node_count"])?;
                let shape = match base {
                    "std::map" => Shape::Map,
                    "std::multimap" => Shape::MultiMap,
                    _ => Shape::List,
                };
                Some(StdLayout::Nodes(NodesLayout {
                    tree: true,
                    root: tree_off + header + h.field("_M_parent")?.offset,
                    count: tree_off + count,
                    left: h.field("_M_left")?.offset,
                    right: h.field("_M_right")?.offset,
                    // `_Rb_tree_node<V>`: the base's links, then the value.
                    value_offset: h.size,
                    value,
                    value_size: self.type_size(value),
                    shape,
                }))
            }
            "std::__cxx11::list" | "std::list" => {
                let (head, h) = self.member_path(ty, &["_M_impl", "_M_node"])?;
                let h = self.type_of(h?)?;
                let (next, _) = self.find_member(&h, "_M_next")?;
                let (count, _) = self.find_member(&h, "_M_size")?;
                let value = ty.param("_Tp");
                Some(StdLayout::Nodes(NodesLayout {
                    tree: false,
                    root: head + next,
                    count: head + count,
                    left: next,
                    right: next,
                    // `_List_node<T>`: `_M_next`, `_M_prev`, then the value.
                    value_offset: 16,
                    value,
                    value_size: self.type_size(value),
                    shape: Shape::List,
                }))
            }
            "std::unordered_map"
            | "std::unordered_set"
            | "std::unordered_multimap"
            | "std::unordered_multiset" => {
                let (h_off, h) = self.find_member(ty, "_M_h")?;
                let h = self.type_of(h?)?;
                let value = h.param("_Value");
                let (first, _) = self.member_path(&h, &["_M_before_begin", "_M_nxt"])?;
                let (count, _) = self.find_member(&h, "_M_element_count")?;
                let shape = match base {
                    "std::unordered_map" => Shape::Map,
                    "std::unordered_multimap" => Shape::MultiMap,
                    _ => Shape::List,
                };
                Some(StdLayout::Nodes(NodesLayout {
                    tree: false,
                    root: h_off + first,
                    count: h_off + count,
                    left: 0,
                    right: 0,
                    // `_Hash_node<V, _>`: `_M_nxt`, then the value (then a cached hash).
                    value_offset: 8,
                    value,
                    value_size: self.type_size(value),
                    shape,
                }))
            }
            _ => None,
        }
    }

    /// Offsets of a `Vec`'s data pointer and length.
    fn vec_fields(&self, vec: &Type) -> Option<(u64, u64)> {
        let (ptr, _, _) = self.first_path(
            vec,
            &[
                &["buf", "inner", "ptr", "pointer", "pointer"],
                &["buf", "ptr", "pointer", "pointer"],
                &["buf", "ptr", "pointer"],
            ],
        )?;
        let (len, _, _) = self.field_path(vec, &["len"])?;
        Some((ptr, len))
    }

    fn btree_layout(&self, map: &Type, set: bool) -> Option<BTreeLayout> {
        let (root_off, root_opt, _) = self.field_path(map, &["root"])?;
        let root_opt = root_opt?;
        // `Option<NodeRef>`: the `Some` variant's `__0` is the NodeRef, at its absolute offset.
        let TypeKind::Enum { variants, .. } = &root_opt.kind else {
            return None;
        };
        let some = variants.iter().find(|v| v.name == "Some")?;
        let some_ty = self.type_of(some.ty?)?;
        let (nr_off, node_ref, _) = self.field_path(&some_ty, &["__0"])?;
        let node_ref = node_ref?;
        let (node_off, node_ptr, _) =
            self.first_path(&node_ref, &[&["node", "pointer"], &["node"]])?;
        let (height_off, _, _) = self.field_path(&node_ref, &["height"])?;
        let TypeKind::Pointer {
            pointee: Some(leaf_die),
            ..
        } = node_ptr?.kind
        else {
            return None;
        };
        let leaf = self.type_of(leaf_die)?;
        let len_offset = leaf.field("len")?.offset;
        let keys_offset = leaf.field("keys")?.offset;
        let vals_offset = leaf.field("vals")?.offset;
        let short = leaf.name.rsplit("::").next().unwrap_or("");
        let internal_name = short.replacen("LeafNode", "InternalNode", 1);
        let internal = self
            .struct_named_near(leaf_die, &internal_name)
            .and_then(|d| self.type_of(d));
        let (internal_size, edges_offset) = match internal
            .as_deref()
            .and_then(|t| Some((t.size, t.field("edges")?.offset)))
        {
            Some(x) => x,
            None => {
                let edges = leaf.size.div_ceil(8) * 8;
                (edges + 8 * (BTREE_CAPACITY + 1), edges)
            }
        };
        let key = map.param("K");
        let val = map.param("V");
        let at = root_off + nr_off;
        Some(BTreeLayout {
            root: at + node_off,
            height: at + height_off,
            leaf_size: leaf.size,
            internal_size,
            len_offset,
            keys_offset,
            vals_offset,
            edges_offset,
            key,
            key_size: self.type_size(key),
            val,
            val_size: self.type_size(val),
            set,
        })
    }
}
