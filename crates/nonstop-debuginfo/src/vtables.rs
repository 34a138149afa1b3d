//! `dyn Trait` values by their concrete type. rustc describes each vtable it emits as a
//! variable `<Concrete as Trait>::{vtable}` at the vtable's address, whose type
//! (`{vtable_type}`) names the concrete type by `DW_AT_containing_type`. A fat pointer's
//! vtable word then says what its data pointer points at, as gdb and lldb read it.
//!
//! Vtable addresses are file addresses here; a process's are those plus its load bias,
//! which the user of a [`DebugInfo`] sets once it knows it ([`DebugInfo::set_load_bias`]).

use crate::units::UnitEntry;
use crate::{DebugInfo, DieRef, Reader};
use gimli::Reader as _;
use gimli::constants as dw;
use std::collections::HashMap;
use std::sync::atomic::Ordering;

/// At most this many concrete types are planned for one `dyn Trait` place (a capture
/// plan switches on the vtable word; a trait with more implementations is left as the
/// pointer pair, and the decoder still names the type when the record holds its bytes).
pub(crate) const MAX_PLANNED_IMPLS: usize = 32;

/// One vtable: the concrete type and the trait it implements (as rustc names it).
#[derive(Debug, Clone)]
pub(crate) struct Vtable {
    pub(crate) concrete: DieRef,
    pub(crate) trait_name: String,
}

/// File address → vtable.
#[derive(Debug, Default)]
pub(crate) struct VtableIndex {
    by_addr: HashMap<u64, Vtable>,
}

impl VtableIndex {
    fn build(di: &DebugInfo) -> VtableIndex {
        let mut by_addr = HashMap::new();
        let Ok(units) = di.units() else {
            return VtableIndex { by_addr };
        };
        for unit in units {
            let mut entries = unit.entries();
            while let Ok(Some(e)) = entries.next_dfs() {
                if e.tag() != dw::DW_TAG_variable {
                    continue;
                }
                let Some(name) = e
                    .attr_value(dw::DW_AT_name)
                    .and_then(|v| unit.dwarf.attr_string(unit, v).ok())
                    .and_then(|s| s.to_string_lossy().ok().map(|c| c.into_owned()))
                else {
                    continue;
                };
                let Some(trait_name) = trait_of(&name) else {
                    continue;
                };
                if let (Some(addr), Some(concrete)) =
                    (address_of(unit, e), containing_type(unit, e))
                {
                    by_addr.insert(
                        addr,
                        Vtable {
                            concrete,
                            trait_name: trait_name.to_string(),
                        },
                    );
                }
            }
        }
        VtableIndex { by_addr }
    }
}

/// The trait of a vtable variable's name: `d::Pay` in `<d::Card as d::Pay>::{vtable}`.
fn trait_of(name: &str) -> Option<&str> {
    let inner = name.strip_suffix(">::{vtable}")?.strip_prefix('<')?;
    inner.rfind(" as ").map(|i| &inner[i + 4..])
}

/// The address in a `DW_OP_addr` location.
fn address_of(
    unit: &gimli::Unit<Reader>,
    e: &gimli::DebuggingInformationEntry<Reader>,
) -> Option<u64> {
    let gimli::AttributeValue::Exprloc(expr) = e.attr_value(dw::DW_AT_location)? else {
        return None;
    };
    let mut ops = expr.operations(unit.encoding());
    match ops.next().ok()? {
        Some(gimli::Operation::Address { address }) => Some(address),
        _ => None,
    }
}

/// The concrete type: the variable's type's `DW_AT_containing_type`.
fn containing_type(
    unit: &UnitEntry,
    e: &gimli::DebuggingInformationEntry<Reader>,
) -> Option<DieRef> {
    let gimli::AttributeValue::UnitRef(ty) = e.attr_value(dw::DW_AT_type)? else {
        return None;
    };
    let vtable_type = unit.entry(ty).ok()?;
    unit.reference(&vtable_type.attr_value(dw::DW_AT_containing_type)?)
}

/// The principal trait of a `dyn` type's name (`&dyn d::Pay`, `alloc::boxed::Box<dyn
/// core::error::Error + core::marker::Send, alloc::alloc::Global>`): `d::Pay`.
pub(crate) fn dyn_trait(type_name: &str) -> Option<&str> {
    let rest = &type_name[type_name.find("dyn ")? + 4..];
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '<' => depth += 1,
            '>' if depth == 0 => return Some(rest[..i].trim_end()),
            '>' => depth -= 1,
            ',' if depth == 0 => return Some(&rest[..i]),
            '+' if depth == 0 => return Some(rest[..i].trim_end()),
            _ => {}
        }
    }
    Some(rest)
}

impl DebugInfo {
    /// Where this file is loaded in the process whose values are decoded (from
    /// [`DebugInfo::load_bias_in`]): lets `dyn Trait` values be shown as their concrete
    /// type, whose vtables are known by file address.
    pub fn set_load_bias(&self, bias: u64) {
        self.index.bias.store(bias, Ordering::Relaxed);
        self.index.bias_known.store(true, Ordering::Release);
    }

    /// The load bias, once set.
    pub(crate) fn load_bias(&self) -> Option<u64> {
        self.index
            .bias_known
            .load(Ordering::Acquire)
            .then(|| self.index.bias.load(Ordering::Relaxed))
    }

    fn vtables(&self) -> &VtableIndex {
        self.index.vtables.get_or_init(|| VtableIndex::build(self))
    }

    /// The vtable at runtime address `addr`, when the load bias is known.
    pub(crate) fn vtable_at(&self, addr: u64) -> Option<&Vtable> {
        let bias = self.load_bias()?;
        self.vtables().by_addr.get(&addr.wrapping_sub(bias))
    }

    /// The runtime addresses of the vtables of `trait_name`'s implementations, with their
    /// concrete types, sorted by address; empty when the load bias is not known or there
    /// are more than [`MAX_PLANNED_IMPLS`].
    pub(crate) fn implementations(&self, trait_name: &str) -> Vec<(u64, DieRef)> {
        let Some(bias) = self.load_bias() else {
            return Vec::new();
        };
        let mut out: Vec<(u64, DieRef)> = self
            .vtables()
            .by_addr
            .iter()
            .filter(|(_, v)| v.trait_name == trait_name)
            .map(|(a, v)| (a.wrapping_add(bias), v.concrete))
            .collect();
        if out.len() > MAX_PLANNED_IMPLS {
            return Vec::new();
        }
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_give_their_traits() {
        assert_eq!(trait_of("<d::Card as d::Pay>::{vtable}"), Some("d::Pay"));
        assert_eq!(
            trait_of(
                "<std::rt::lang_start::{closure_env#0}<()> as core::ops::function::Fn<()>>::{vtable}"
            ),
            Some("core::ops::function::Fn<()>")
        );
        assert_eq!(trait_of("d::CARD"), None);
        assert_eq!(dyn_trait("&dyn d::Pay"), Some("d::Pay"));
        assert_eq!(dyn_trait("*mut dyn d::Pay"), Some("d::Pay"));
        assert_eq!(
            dyn_trait(
                "alloc::boxed::Box<dyn core::error::Error + core::marker::Send, alloc::alloc::Global>"
            ),
            Some("core::error::Error")
        );
        assert_eq!(
            dyn_trait(
                "alloc::boxed::Box<dyn core::ops::function::Fn<(u32,), Output=u32>, alloc::alloc::Global>"
            ),
            Some("core::ops::function::Fn<(u32,), Output=u32>")
        );
        assert_eq!(dyn_trait("&d::Card"), None);
    }
}
