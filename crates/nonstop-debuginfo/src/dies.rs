//! Shared DIE helpers: the parsed units, references between DIEs, names, namespace
//! paths and the chain of scopes containing an address.

use crate::{DebugInfo, DieRef, Error, Reader};
use gimli::Reader as _;
use gimli::{AttributeValue, UnitOffset};
use std::collections::HashMap;
use std::sync::Arc;

pub(crate) type Unit = crate::units::UnitEntry;
pub(crate) type Die = gimli::DebuggingInformationEntry<Reader>;

/// Deepest DIE nesting followed; deeper trees are malformed or hostile.
const MAX_DEPTH: usize = 64;

/// Per unit: the namespace path (`shop::cart`) of every named DIE that can be a type or a
/// function, so names can be qualified without parent pointers.
#[derive(Default)]
pub(crate) struct UnitPaths {
    prefixes: Vec<String>,
    of: HashMap<usize, u32>,
}

impl UnitPaths {
    fn prefix(&self, off: UnitOffset) -> &str {
        self.of
            .get(&off.0)
            .and_then(|&i| self.prefixes.get(i as usize))
            .map_or("", String::as_str)
    }
}

/// One scope containing an address: a subprogram, lexical block or inlined subroutine.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scope {
    pub(crate) tag: gimli::DwTag,
    pub(crate) offset: UnitOffset,
    /// The lowest address of its ranges (the entry for subprograms), or `DW_AT_entry_pc`.
    pub(crate) entry: Option<u64>,
}

impl Scope {
    pub(crate) fn is_function(&self) -> bool {
        self.tag == gimli::DW_TAG_subprogram || self.tag == gimli::DW_TAG_inlined_subroutine
    }
}

/// Whether a DWARF name is rustc's name of a coroutine: `{async_fn#0}`, `{async_block#1}`
/// (or their state types, `{async_fn_env#0}`, `{async_block_env#1}`).
pub(crate) fn is_async_name(name: &str) -> bool {
    async_part(name).is_some()
}

/// `Some(true)` for an async fn component, `Some(false)` for an async block.
fn async_part(component: &str) -> Option<bool> {
    let inner = component.strip_prefix('{')?.strip_suffix('}')?;
    let (kind, n) = inner.split_once('#')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match kind {
        "async_fn" | "async_fn_env" => Some(true),
        "async_block" | "async_block_env" => Some(false),
        _ => None,
    }
}

/// The source name of a coroutine's qualified DWARF name:
/// `shop::handle::{async_fn#0}` → `shop::handle (async)`,
/// `shop::handle::{async_fn#0}::{async_block#0}` → `shop::handle (async block)`,
/// and the same for their state types (`{async_fn_env#0}`). Other names are kept.
pub fn async_display_name(qualified: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut last = None;
    // Split on `::` outside generic brackets.
    let mut depth = 0i32;
    let mut start = 0;
    let bytes = qualified.as_bytes();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'<' => depth += 1,
            b'>' => depth -= 1,
            b':' if depth == 0 && bytes.get(i + 1) == Some(&b':') => {
                parts.push(&qualified[start..i]);
                start = i + 2;
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(&qualified[start..]);
    for p in parts {
        match async_part(p) {
            Some(kind) => last = Some(kind),
            None => {
                kept.push(p);
                last = None;
            }
        }
    }
    match last {
        Some(true) => format!("{} (async)", kept.join("::")),
        Some(false) => format!("{} (async block)", kept.join("::")),
        None => qualified.to_string(),
    }
}

/// Rust's `{:#}` demangling (no hash); C++ (Itanium) names as `cpp_demangle` writes them
/// (`restock(Stock&, Item const&, int)`); other names as they are.
pub(crate) fn demangle(name: &str) -> String {
    match rustc_demangle::try_demangle(name) {
        Ok(d) => format!("{d:#}"),
        Err(_) if name.starts_with("_Z") => {
            addr2line::demangle(name, gimli::DW_LANG_C_plus_plus).unwrap_or_else(|| name.into())
        }
        Err(_) => name.to_string(),
    }
}

impl DebugInfo {
    /// Every unit, parsed once, wherever its DIEs live (see `units.rs`). Units that fail
    /// to parse are skipped.
    pub(crate) fn units(&self) -> Result<&[Unit], Error> {
        Ok(&self.unit_table()?.units)
    }

    fn unit_table(&self) -> Result<&crate::units::UnitTable, Error> {
        let table = self.index.units.get_or_init(|| crate::units::read(self));
        match table {
            Ok(t) => Ok(t),
            Err(e) => Err(Error::Dwarf(*e)),
        }
    }

    /// `(begin, end, unit)` sorted by begin: which unit holds an address.
    pub(crate) fn unit_ranges(&self) -> Result<&[(u64, u64, usize)], Error> {
        let units = self.units()?;
        Ok(self.index.unit_ranges.get_or_init(|| {
            let mut out = Vec::new();
            for (i, unit) in units.iter().enumerate() {
                if let Ok(mut ranges) = unit.ranges(&self.dwarf) {
                    while let Ok(Some(r)) = ranges.next() {
                        if r.begin < r.end && r.begin != 0 {
                            out.push((r.begin, r.end, i));
                        }
                    }
                }
            }
            out.sort_unstable();
            out
        }))
    }

    /// The units whose ranges contain `addr` (usually one).
    pub(crate) fn units_at(&self, addr: u64) -> Result<Vec<usize>, Error> {
        let ranges = self.unit_ranges()?;
        let end = ranges.partition_point(|r| r.0 <= addr);
        let mut out: Vec<usize> = ranges[..end]
            .iter()
            .filter(|r| addr < r.1)
            .map(|r| r.2)
            .collect();
        out.dedup();
        Ok(out)
    }

    /// The unit holding a DIE, and the offset within it.
    pub(crate) fn die_unit(&self, die: DieRef) -> Result<Option<(usize, UnitOffset)>, Error> {
        Ok(self.unit_table()?.find(die))
    }

    /// The [`DieRef`] of a DIE.
    pub(crate) fn die_ref(&self, ui: usize, off: UnitOffset) -> Option<DieRef> {
        self.units().ok()?.get(ui)?.die_ref(off)
    }

    /// Follows a reference attribute to the DIE it names.
    pub(crate) fn follow(
        &self,
        ui: usize,
        value: AttributeValue<Reader>,
    ) -> Result<Option<(usize, UnitOffset)>, Error> {
        if let AttributeValue::UnitRef(o) = value {
            return Ok(Some((ui, o)));
        }
        match self.units()?.get(ui).and_then(|u| u.reference(&value)) {
            Some(die) => self.die_unit(die),
            None => Ok(None),
        }
    }

    pub(crate) fn die(&self, ui: usize, off: UnitOffset) -> Result<Die, Error> {
        let unit =
            self.units()?
                .get(ui)
                .ok_or(Error::Dwarf(gimli::Error::NoEntryAtGivenOffset(
                    off.0 as u64,
                )))?;
        Ok(unit.entry(off)?)
    }

    /// A string attribute, if present and readable.
    pub(crate) fn attr_string(&self, ui: usize, die: &Die, at: gimli::DwAt) -> Option<String> {
        let unit = self.units().ok()?.get(ui)?;
        let value = die.attr_value(at)?;
        let r = unit.dwarf.attr_string(unit, value).ok()?;
        Some(r.to_string_lossy().ok()?.into_owned())
    }

    /// Whether the unit is C++ (names are namespaced, no `struct` tag).
    pub(crate) fn is_cpp(&self, ui: usize) -> bool {
        let Ok(units) = self.units() else {
            return false;
        };
        let Some(unit) = units.get(ui) else {
            return false;
        };
        let Ok(root) = unit.entry(unit.header.root_offset()) else {
            return false;
        };
        matches!(
            root.attr_value(gimli::DW_AT_language),
            Some(AttributeValue::Language(
                gimli::DW_LANG_C_plus_plus
                    | gimli::DW_LANG_C_plus_plus_03
                    | gimli::DW_LANG_C_plus_plus_11
                    | gimli::DW_LANG_C_plus_plus_14
            ))
        ) || matches!(
            root.attr_value(gimli::DW_AT_language),
            Some(AttributeValue::Language(l)) if l.0 == 0x2a || l.0 == 0x2b
        )
    }

    /// Whether the unit is Rust (names are built the Rust way) or not (C).
    pub(crate) fn is_rust(&self, ui: usize) -> bool {
        let Ok(units) = self.units() else {
            return false;
        };
        let Some(unit) = units.get(ui) else {
            return false;
        };
        let Ok(root) = unit.entry(unit.header.root_offset()) else {
            return false;
        };
        matches!(
            root.attr_value(gimli::DW_AT_language),
            Some(AttributeValue::Language(gimli::DW_LANG_Rust))
        )
    }

    /// The namespace paths of one unit (built on first use, then cached).
    pub(crate) fn unit_paths(&self, ui: usize) -> Result<Arc<UnitPaths>, Error> {
        if let Ok(map) = self.index.paths.lock()
            && let Some(p) = map.get(&ui)
        {
            return Ok(p.clone());
        }
        let unit = self
            .units()?
            .get(ui)
            .ok_or(Error::Dwarf(gimli::Error::UnexpectedEof(
                gimli::ReaderOffsetId(0),
            )))?;
        let mut paths = UnitPaths::default();
        let mut interned: HashMap<String, u32> = HashMap::new();
        let mut stack: Vec<(isize, String)> = Vec::new();
        let mut cursor = unit.entries();
        while let Some(e) = cursor.next_dfs()? {
            let depth = e.depth();
            while stack.last().is_some_and(|(d, _)| *d >= depth) {
                stack.pop();
            }
            let tag = e.tag();
            let records = matches!(
                tag,
                gimli::DW_TAG_subprogram
                    | gimli::DW_TAG_structure_type
                    | gimli::DW_TAG_union_type
                    | gimli::DW_TAG_enumeration_type
                    | gimli::DW_TAG_class_type
                    | gimli::DW_TAG_typedef
            );
            if records && !stack.is_empty() {
                let prefix = stack
                    .iter()
                    .map(|(_, n)| n.as_str())
                    .collect::<Vec<_>>()
                    .join("::");
                let next = paths.prefixes.len() as u32;
                let id = *interned.entry(prefix.clone()).or_insert_with(|| {
                    paths.prefixes.push(prefix);
                    next
                });
                paths.of.insert(e.offset().0, id);
            }
            let scopes = matches!(
                tag,
                gimli::DW_TAG_namespace
                    | gimli::DW_TAG_structure_type
                    | gimli::DW_TAG_union_type
                    | gimli::DW_TAG_enumeration_type
                    | gimli::DW_TAG_class_type
            );
            if scopes {
                let name = e
                    .attr_value(gimli::DW_AT_name)
                    .and_then(|v| unit.dwarf.attr_string(unit, v).ok())
                    .and_then(|r| r.to_string_lossy().ok().map(|c| c.into_owned()))
                    .unwrap_or_else(|| "{anon}".into());
                stack.push((depth, name));
            }
        }
        let paths = Arc::new(paths);
        if let Ok(mut map) = self.index.paths.lock() {
            map.insert(ui, paths.clone());
        }
        Ok(paths)
    }

    /// `DW_AT_name` qualified by its namespaces: `shop::cart::Cart`.
    pub(crate) fn qualified_name(&self, ui: usize, die: &Die) -> Option<String> {
        let name = self.attr_string(ui, die, gimli::DW_AT_name)?;
        let paths = self.unit_paths(ui).ok()?;
        let prefix = paths.prefix(die.offset());
        Some(if prefix.is_empty() {
            name
        } else {
            format!("{prefix}::{name}")
        })
    }

    /// The name of a function DIE (subprogram or inlined subroutine): its demangled
    /// linkage name without hash, else its qualified name, following abstract origins
    /// and specifications.
    pub(crate) fn function_name(&self, ui: usize, off: UnitOffset) -> String {
        let mut chain = Vec::new();
        let mut cur = Some((ui, off));
        while let Some((u, o)) = cur {
            if chain.len() >= 8 {
                break;
            }
            let Ok(die) = self.die(u, o) else { break };
            cur = die
                .attr_value(gimli::DW_AT_abstract_origin)
                .or_else(|| die.attr_value(gimli::DW_AT_specification))
                .and_then(|v| self.follow(u, v).ok().flatten());
            chain.push((u, die));
        }
        // The poll function of an `async fn` or `async` block: named by its source name
        // (`shop::handle (async)`), not by its closure symbol (`shop::handle::{{closure}}`).
        for (u, die) in &chain {
            if let Some(n) = self.attr_string(*u, die, gimli::DW_AT_name)
                && is_async_name(&n)
                && let Some(q) = self.qualified_name(*u, die)
            {
                return async_display_name(&q);
            }
        }
        for (u, die) in &chain {
            if let Some(l) = self
                .attr_string(*u, die, gimli::DW_AT_linkage_name)
                .or_else(|| self.attr_string(*u, die, gimli::DW_AT_MIPS_linkage_name))
            {
                return demangle(&l);
            }
        }
        for (u, die) in &chain {
            if let Some(n) = self.qualified_name(*u, die) {
                return n;
            }
        }
        "??".into()
    }

    /// Whether a DIE's address ranges contain `addr`; also its lowest address.
    pub(crate) fn die_contains(
        &self,
        unit: &Unit,
        die: &Die,
        addr: u64,
    ) -> Result<(bool, Option<u64>), Error> {
        let mut ranges = unit.dwarf.die_ranges(unit, die)?;
        let mut hit = false;
        let mut low: Option<u64> = None;
        while let Some(r) = ranges.next()? {
            if r.begin <= addr && addr < r.end {
                hit = true;
            }
            if r.begin < r.end {
                low = Some(low.map_or(r.begin, |l| l.min(r.begin)));
            }
        }
        Ok((hit, low))
    }

    /// The scopes containing `addr` in unit `ui`, outermost first:
    /// `[subprogram, lexical block…, inlined subroutine, …]`.
    pub(crate) fn scope_chain(&self, ui: usize, addr: u64) -> Result<Vec<Scope>, Error> {
        let unit = self
            .units()?
            .get(ui)
            .ok_or(Error::Dwarf(gimli::Error::UnexpectedEof(
                gimli::ReaderOffsetId(0),
            )))?;
        let mut tree = unit.entries_tree(None)?;
        let root = tree.root()?;
        let mut chain = Vec::new();
        self.descend(unit, root, addr, &mut chain, 0)?;
        Ok(chain)
    }

    fn descend(
        &self,
        unit: &Unit,
        node: gimli::EntriesTreeNode<'_, '_, Reader>,
        addr: u64,
        chain: &mut Vec<Scope>,
        depth: usize,
    ) -> Result<bool, Error> {
        if depth > MAX_DEPTH {
            return Ok(false);
        }
        let mut children = node.children();
        while let Some(child) = children.next()? {
            let e = child.entry();
            match e.tag() {
                gimli::DW_TAG_subprogram
                | gimli::DW_TAG_lexical_block
                | gimli::DW_TAG_inlined_subroutine => {
                    let (hit, low) = self.die_contains(unit, e, addr)?;
                    if hit {
                        let entry = match e.attr_value(gimli::DW_AT_entry_pc) {
                            Some(AttributeValue::Addr(a)) => Some(a),
                            _ => low,
                        };
                        chain.push(Scope {
                            tag: e.tag(),
                            offset: e.offset(),
                            entry,
                        });
                        self.descend(unit, child, addr, chain, depth + 1)?;
                        return Ok(true);
                    }
                }
                gimli::DW_TAG_namespace
                | gimli::DW_TAG_module
                | gimli::DW_TAG_structure_type
                | gimli::DW_TAG_class_type
                | gimli::DW_TAG_union_type
                | gimli::DW_TAG_enumeration_type => {
                    // Functions nest in namespaces and types (methods), never the
                    // other way round once a function was found.
                    let found =
                        chain.is_empty() && self.descend(unit, child, addr, chain, depth + 1)?;
                    if found {
                        return Ok(true);
                    }
                }
                _ => {}
            }
        }
        Ok(false)
    }

    /// The function chain at an address, falling back to the ELF symbol containing it
    /// when the debug info has no function there (line-tables-only builds).
    pub(crate) fn functions_at(&self, ui: usize, chain: &[Scope], addr: u64) -> Vec<String> {
        let names = self.function_chain(ui, chain);
        if names.is_empty() {
            self.symbol_at(addr).into_iter().collect()
        } else {
            names
        }
    }

    /// The demangled name of the ELF function symbol containing `addr`.
    pub(crate) fn symbol_at(&self, addr: u64) -> Option<String> {
        let syms = &self.file.symbols;
        let i = syms.partition_point(|s| s.0 <= addr).checked_sub(1)?;
        let (start, size, name) = &syms[i];
        (addr < start.saturating_add((*size).max(1))).then(|| demangle(name))
    }

    /// The entry (a file address) of the function whose code holds `addr`: the start of
    /// the ELF function symbol containing it, or, inside a GCC `NAME.cold` part, of
    /// `NAME` (a cold part is entered by jumps, never called). `None` without a symbol.
    pub fn function_entry(&self, addr: u64) -> Option<u64> {
        let syms = &self.file.symbols;
        let i = syms.partition_point(|s| s.0 <= addr).checked_sub(1)?;
        let (start, size, name) = syms.get(i)?;
        if addr >= start.saturating_add((*size).max(1)) {
            return None;
        }
        match name.find(".cold") {
            Some(at) => {
                let hot = name.get(..at)?;
                syms.iter().find(|s| s.2 == hot).map(|s| s.0)
            }
            None => Some(*start),
        }
    }

    /// The bounds (file addresses) of the sized ELF function symbol containing `addr`: the
    /// fast path decodes the whole function there. `None` when no sized symbol holds it, or
    /// when the function has a part elsewhere (GCC's `NAME.cold`), whose jumps back into
    /// the body a decode of the bounds would not see.
    pub fn function_bounds(&self, addr: u64) -> Option<std::ops::Range<u64>> {
        let syms = &self.file.symbols;
        let i = syms.partition_point(|s| s.0 <= addr).checked_sub(1)?;
        let (start, size, name) = &syms[i];
        if *size == 0 || addr >= start.saturating_add(*size) {
            return None;
        }
        let cold = format!("{name}.cold");
        if syms.iter().any(|s| s.2.starts_with(&cold)) {
            return None;
        }
        Some(*start..start + size)
    }

    /// The function chain at an address, innermost first (inlined callees first, the
    /// containing function last).
    pub(crate) fn function_chain(&self, ui: usize, chain: &[Scope]) -> Vec<String> {
        chain
            .iter()
            .rev()
            .filter(|s| s.is_function())
            .map(|s| self.function_name(ui, s.offset))
            .collect()
    }
}

#[cfg(test)]
mod cpp_tests {
    #[test]
    fn cpp_names_are_demangled() {
        assert_eq!(
            super::demangle("_Z7restockR5StockRK4Itemi"),
            "restock(Stock&, Item const&, int)"
        );
        assert_eq!(super::demangle("main"), "main");
    }
}
