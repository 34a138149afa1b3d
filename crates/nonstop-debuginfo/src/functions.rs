//! Resolving function names to entry addresses.

use crate::dies::demangle;
use crate::lines::{FunctionEntry, FunctionIndex, distance};
use crate::{DebugInfo, DieRef, Error, Site};
use gimli::AttributeValue;
use std::collections::HashMap;

/// Removes generic arguments (`foo<i32>` → `foo`), keeping the `<A as B>` of trait
/// impls, which stand where a path segment starts.
pub(crate) fn strip_generics(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut depth = 0usize;
    let mut skip_from = None;
    for c in s.chars() {
        match c {
            '<' => {
                let at_segment_start = out.is_empty() || out.ends_with("::") || out.ends_with('<');
                if skip_from.is_none() && !at_segment_start {
                    skip_from = Some(depth);
                }
                depth += 1;
                if skip_from.is_none() {
                    out.push(c);
                }
            }
            '>' => {
                depth = depth.saturating_sub(1);
                if skip_from.is_none() {
                    out.push(c);
                } else if skip_from == Some(depth) {
                    skip_from = None;
                }
            }
            _ if skip_from.is_none() => out.push(c),
            _ => {}
        }
    }
    out
}

/// Names a DIE is known by: its qualified DWARF name and its demangled linkage name.
#[derive(Default, Clone)]
struct Names {
    qualified: Option<String>,
    linkage: Option<String>,
}

impl DebugInfo {
    /// The function index, built on first use by walking every unit's DIEs once.
    fn function_index(&self) -> Result<&FunctionIndex, Error> {
        let units = self.units()?;
        let index = self.index.functions.get_or_init(|| {
            let mut names: HashMap<usize, Names> = HashMap::new();
            // (unit, own DIE, referenced DIE, entry address, inlined)
            let mut instances: Vec<(usize, usize, Option<DieRef>, u64, bool)> = Vec::new();
            for (ui, unit) in units.iter().enumerate() {
                let mut stack: Vec<(isize, String)> = Vec::new();
                let mut cursor = unit.entries();
                loop {
                    let e = match cursor.next_dfs() {
                        Ok(Some(e)) => e,
                        Ok(None) => break,
                        Err(_) => break,
                    };
                    let depth = e.depth();
                    while stack.last().is_some_and(|(d, _)| *d >= depth) {
                        stack.pop();
                    }
                    let tag = e.tag();
                    let string = |at| {
                        e.attr_value(at)
                            .and_then(|v| unit.dwarf.attr_string(unit, v).ok())
                            .and_then(|r| {
                                gimli::Reader::to_string_lossy(&r)
                                    .ok()
                                    .map(|c| c.into_owned())
                            })
                    };
                    match tag {
                        gimli::DW_TAG_namespace
                        | gimli::DW_TAG_structure_type
                        | gimli::DW_TAG_union_type
                        | gimli::DW_TAG_enumeration_type
                        | gimli::DW_TAG_class_type => {
                            let n = string(gimli::DW_AT_name).unwrap_or_else(|| "{anon}".into());
                            stack.push((depth, n));
                        }
                        gimli::DW_TAG_subprogram | gimli::DW_TAG_inlined_subroutine => {
                            let Some(own) = unit.die_ref(e.offset()) else {
                                continue;
                            };
                            if tag == gimli::DW_TAG_subprogram {
                                let qualified = string(gimli::DW_AT_name).map(|n| {
                                    let mut p: Vec<&str> =
                                        stack.iter().map(|(_, s)| s.as_str()).collect();
                                    p.push(&n);
                                    p.join("::")
                                });
                                let linkage = string(gimli::DW_AT_linkage_name)
                                    .or_else(|| string(gimli::DW_AT_MIPS_linkage_name))
                                    .map(|l| demangle(&l));
                                if qualified.is_some() || linkage.is_some() {
                                    names.insert(own.0, Names { qualified, linkage });
                                }
                            }
                            let reference = e
                                .attr_value(gimli::DW_AT_abstract_origin)
                                .or_else(|| e.attr_value(gimli::DW_AT_specification))
                                .and_then(|v| unit.reference(&v));
                            let entry = match e.attr_value(gimli::DW_AT_entry_pc) {
                                Some(AttributeValue::Addr(a)) => Some(a),
                                _ => self.die_contains(unit, e, 0).ok().and_then(|(_, low)| low),
                            };
                            if let Some(entry) = entry.filter(|&a| a != 0) {
                                instances.push((
                                    ui,
                                    own.0,
                                    reference,
                                    entry,
                                    tag == gimli::DW_TAG_inlined_subroutine,
                                ));
                            }
                        }
                        _ => {}
                    }
                }
            }
            let mut entries = Vec::new();
            for (ui, own, reference, entry, inlined) in instances {
                // Names from the DIE itself, then along its origin/specification chain.
                let mut merged = names.get(&own).cloned().unwrap_or_default();
                let mut next = reference;
                for _ in 0..4 {
                    let Some(r) = next else { break };
                    if let Some(n) = names.get(&r.0) {
                        merged.linkage = merged.linkage.or_else(|| n.linkage.clone());
                        merged.qualified = merged.qualified.or_else(|| n.qualified.clone());
                    }
                    next = self
                        .die_unit(r)
                        .ok()
                        .flatten()
                        .and_then(|(u, o)| self.die(u, o).ok().map(|d| (u, d)))
                        .and_then(|(u, d)| {
                            d.attr_value(gimli::DW_AT_abstract_origin)
                                .or_else(|| d.attr_value(gimli::DW_AT_specification))
                                .and_then(|v| self.follow(u, v).ok().flatten())
                                .and_then(|(u, o)| self.die_ref(u, o))
                        });
                }
                for name in [merged.linkage, merged.qualified].into_iter().flatten() {
                    entries.push(FunctionEntry {
                        name: strip_generics(&name),
                        unit: ui,
                        entry,
                        inlined,
                    });
                }
            }
            entries.sort_by(|a, b| a.name.cmp(&b.name).then(a.entry.cmp(&b.entry)));
            entries.dedup_by(|a, b| a.name == b.name && a.entry == b.entry);
            Ok(FunctionIndex { entries })
        });
        index.as_ref().map_err(|e| Error::Dwarf(*e))
    }

    pub(crate) fn resolve_function(&self, query: &str) -> Result<Vec<Site>, Error> {
        let index = self.function_index()?;
        let q = strip_generics(query.trim());
        let exact: Vec<&FunctionEntry> = {
            let lo = index.entries.partition_point(|e| e.name < q);
            index.entries[lo..]
                .iter()
                .take_while(|e| e.name == q)
                .collect()
        };
        let matches = if exact.is_empty() {
            let suffix = format!("::{q}");
            let found: Vec<&FunctionEntry> = index
                .entries
                .iter()
                .filter(|e| e.name.ends_with(&suffix))
                .collect();
            let mut distinct: Vec<&str> = found.iter().map(|e| e.name.as_str()).collect();
            distinct.dedup();
            if distinct.len() > 1 {
                return Err(Error::AmbiguousFunction {
                    name: query.to_string(),
                    candidates: distinct.into_iter().take(10).map(String::from).collect(),
                });
            }
            found
        } else {
            exact
        };
        if matches.is_empty() {
            if let Some(sites) = self.resolve_symbol(&q)? {
                return Ok(sites);
            }
            return Err(Error::UnknownFunction {
                name: query.to_string(),
                suggestions: self.close_functions(index, &q),
            });
        }
        let mut sites = Vec::new();
        for m in matches {
            let chain = self.scope_chain(m.unit, m.entry)?;
            let picked = if m.inlined {
                None
            } else {
                self.prologue_skip(m.unit, &chain, m.entry)?
            };
            let address = picked.map_or(m.entry, |r| r.addr);
            let chain = if address == m.entry {
                chain
            } else {
                self.scope_chain(m.unit, address)?
            };
            let row = match picked {
                Some(r) => {
                    let file = self.units()?[m.unit]
                        .line_program
                        .as_ref()
                        .and_then(|p| self.file_path(m.unit, p.header(), r.file));
                    file.map(|f| (f, r))
                }
                None => self.row_at(m.unit, address)?,
            };
            let (file, line, is_stmt) = match row {
                Some((f, r)) => (f, r.line, r.is_stmt),
                None => (String::new(), 0, false),
            };
            sites.push(Site {
                address,
                functions: self.functions_at(m.unit, &chain, address),
                file,
                line,
                is_stmt,
            });
        }
        sites.sort_by_key(|s| s.address);
        sites.dedup_by_key(|s| s.address);
        Ok(sites)
    }

    /// Functions the debug info does not describe (line-tables-only builds): the ELF
    /// symbol with that demangled name (or path suffix), past its prologue.
    fn resolve_symbol(&self, q: &str) -> Result<Option<Vec<Site>>, Error> {
        let suffix = format!("::{q}");
        let mut sites = Vec::new();
        for (addr, size, raw) in &self.file.symbols {
            let name = strip_generics(&demangle(raw));
            if name != q && !name.ends_with(&suffix) {
                continue;
            }
            let Some(&ui) = self.units_at(*addr)?.first() else {
                continue;
            };
            let end = (*size > 0).then(|| addr.saturating_add(*size));
            let row = self.post_prologue(ui, *addr, end)?;
            let address = row.map_or(*addr, |r| r.addr);
            let file = row.and_then(|r| {
                let unit = self.units().ok()?.get(ui)?;
                self.file_path(ui, unit.line_program.as_ref()?.header(), r.file)
            });
            sites.push(Site {
                address,
                functions: vec![demangle(raw)],
                file: file.unwrap_or_default(),
                line: row.map_or(0, |r| r.line),
                is_stmt: row.is_some_and(|r| r.is_stmt),
            });
        }
        sites.sort_by_key(|s| s.address);
        sites.dedup_by_key(|s| s.address);
        Ok((!sites.is_empty()).then_some(sites))
    }

    fn close_functions(&self, index: &FunctionIndex, q: &str) -> Vec<String> {
        let last = |s: &str| s.rsplit("::").next().unwrap_or(s).to_string();
        let ql = last(q);
        let mut scored: Vec<(usize, &str)> = index
            .entries
            .iter()
            .map(|e| (e.name.as_str(), last(&e.name)))
            .filter(|(_, l)| l.len() + 3 >= ql.len() && ql.len() + 3 >= l.len())
            .map(|(n, l)| (distance(&l, &ql), n))
            .filter(|(d, _)| *d <= 2.max(ql.len() / 4))
            .collect();
        scored.sort();
        scored.dedup_by(|a, b| a.1 == b.1);
        scored
            .into_iter()
            .take(5)
            .map(|(_, n)| n.to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::strip_generics;

    #[test]
    fn generics_are_stripped_but_trait_impls_kept() {
        assert_eq!(strip_generics("a::foo<i32>"), "a::foo");
        assert_eq!(strip_generics("a::Vec<T, A>::push"), "a::Vec::push");
        assert_eq!(
            strip_generics("<a::Cart as core::fmt::Display>::fmt"),
            "<a::Cart as core::fmt::Display>::fmt"
        );
        assert_eq!(strip_generics("x<<y>>"), "x");
    }
}
