//! Resolving `FILE:LINE` and function names to code addresses.

use crate::dies::Scope;
use crate::{DebugInfo, Error};
use gimli::Reader as _;
use std::collections::HashMap;

/// One code address a location resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// The address, relative to the file (add the load bias for a running process).
    pub address: u64,
    /// The function that contains it, outermost last: `[inlined callee, …, containing function]`.
    pub functions: Vec<String>,
    /// The source file of the line-table row.
    pub file: String,
    /// The line.
    pub line: u32,
    /// Whether the row is a statement start.
    pub is_stmt: bool,
}

/// Where a run of line-table rows for one `(file, line)` begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Run {
    pub(crate) file: u32,
    pub(crate) line: u32,
    pub(crate) addr: u64,
    pub(crate) unit: u32,
    pub(crate) is_stmt: bool,
    /// The run's first row is the first row at its address (not a second line placed
    /// at the same address, as gcc does for a function's first statement at -O2).
    pub(crate) first_at_address: bool,
}

/// Every line program walked once: the runs sorted by `(file, line, address)`.
pub(crate) struct LineIndex {
    pub(crate) files: Vec<String>,
    pub(crate) runs: Vec<Run>,
}

impl LineIndex {
    fn runs_of(&self, file: u32) -> &[Run] {
        let lo = self.runs.partition_point(|r| r.file < file);
        let hi = self.runs.partition_point(|r| r.file <= file);
        &self.runs[lo..hi]
    }
}

/// Function names → their DIEs (built on the first function-name query).
pub(crate) struct FunctionIndex {
    /// Sorted by name, then entry address; one entry per name a function is known by.
    pub(crate) entries: Vec<FunctionEntry>,
}

/// One function instance: an out-of-line subprogram or an inlined copy.
#[derive(Debug, Clone)]
pub(crate) struct FunctionEntry {
    pub(crate) name: String,
    pub(crate) unit: usize,
    pub(crate) entry: u64,
    pub(crate) inlined: bool,
}

/// Removes `.` components and doubled slashes.
pub(crate) fn normalize_path(p: &str) -> String {
    let abs = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." if parts.last().is_some_and(|l| *l != "..") => {
                parts.pop();
            }
            _ => parts.push(c),
        }
    }
    let joined = parts.join("/");
    if abs { format!("/{joined}") } else { joined }
}

/// Whether `path` ends with `query` on a component boundary.
pub(crate) fn path_matches(path: &str, query: &str) -> bool {
    if query.starts_with('/') {
        path == query
    } else {
        path == query || (path.ends_with(query) && path[..path.len() - query.len()].ends_with('/'))
    }
}

/// A parsed location string.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Location<'a> {
    FileLine(&'a str, u32),
    Function(&'a str),
}

pub(crate) fn parse_location(s: &str) -> Result<Location<'_>, Error> {
    let s = s.trim();
    if s.is_empty() {
        return Err(Error::BadLocation {
            location: s.to_string(),
        });
    }
    if let Some((file, line)) = s.rsplit_once(':')
        && !file.is_empty()
        && !file.ends_with(':')
        && line.chars().all(|c| c.is_ascii_digit())
    {
        return match line.parse::<u32>() {
            Ok(n) if n > 0 => Ok(Location::FileLine(file, n)),
            _ => Err(Error::BadLocation {
                location: s.to_string(),
            }),
        };
    }
    Ok(Location::Function(s))
}

/// Levenshtein distance, for suggestions.
pub(crate) fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

impl DebugInfo {
    /// The line index, built on first use by walking every line program once.
    pub(crate) fn line_index(&self) -> Result<&LineIndex, Error> {
        let units = self.units()?;
        let index = self.index.lines.get_or_init(|| {
            let mut files: Vec<String> = Vec::new();
            let mut by_path: HashMap<String, u32> = HashMap::new();
            let mut runs = Vec::new();
            for (ui, unit) in units.iter().enumerate() {
                let Some(program) = unit.line_program.clone() else {
                    continue;
                };
                let mut local: HashMap<u64, u32> = HashMap::new();
                let mut rows = program.rows();
                // The run being read: (file index, line, first address, first stmt
                // address, first row at its address).
                let mut run: Option<(u64, u64, u64, Option<u64>, bool)> = None;
                let mut prev_addr: Option<u64> = None;
                let mut in_code = false;
                let mut seq_start = true;
                let flush = |run: Option<(u64, u64, u64, Option<u64>, bool)>,
                             in_code: bool,
                             runs: &mut Vec<Run>,
                             local: &HashMap<u64, u32>| {
                    if let Some((f, line, first, stmt, first_at_address)) = run
                        && in_code
                        && line != 0
                        && let (Some(&file), Ok(line)) = (local.get(&f), u32::try_from(line))
                    {
                        runs.push(Run {
                            file,
                            line,
                            addr: stmt.unwrap_or(first),
                            unit: ui as u32,
                            is_stmt: stmt.is_some(),
                            first_at_address,
                        });
                    }
                };
                loop {
                    let (header, row) = match rows.next_row() {
                        Ok(Some(x)) => x,
                        Ok(None) => break,
                        Err(_) => break,
                    };
                    if row.end_sequence() {
                        flush(run.take(), in_code, &mut runs, &local);
                        seq_start = true;
                        prev_addr = None;
                        continue;
                    }
                    if seq_start {
                        in_code = self.in_code(row.address());
                        seq_start = false;
                    }
                    let f = row.file_index();
                    if let std::collections::hash_map::Entry::Vacant(slot) = local.entry(f) {
                        let path = self.file_path(ui, header, f).unwrap_or_default();
                        let next = files.len() as u32;
                        let id = *by_path.entry(path.clone()).or_insert_with(|| {
                            files.push(path);
                            next
                        });
                        slot.insert(id);
                    }
                    let line = row.line().map_or(0, |l| l.get());
                    match &mut run {
                        Some((rf, rl, _, stmt, _)) if *rf == f && *rl == line => {
                            if stmt.is_none() && row.is_stmt() {
                                *stmt = Some(row.address());
                            }
                        }
                        _ => {
                            flush(run.take(), in_code, &mut runs, &local);
                            let stmt = row.is_stmt().then_some(row.address());
                            let first = prev_addr != Some(row.address());
                            run = Some((f, line, row.address(), stmt, first));
                        }
                    }
                    prev_addr = Some(row.address());
                }
                flush(run.take(), in_code, &mut runs, &local);
            }
            runs.sort_unstable();
            runs.dedup();
            Ok(LineIndex { files, runs })
        });
        index.as_ref().map_err(|e| Error::Dwarf(*e))
    }

    fn in_code(&self, addr: u64) -> bool {
        addr != 0
            && (self.file.code_ranges.is_empty()
                || self
                    .file
                    .code_ranges
                    .iter()
                    .any(|&(b, e)| b <= addr && addr < e))
    }

    /// The full path of a line-program file entry: `comp_dir/dir/name`, normalised.
    pub(crate) fn file_path(
        &self,
        ui: usize,
        header: &gimli::LineProgramHeader<crate::Reader>,
        index: u64,
    ) -> Option<String> {
        let unit = self.units().ok()?.get(ui)?;
        let file = header.file(index)?;
        let s = |v| {
            unit.line_dwarf
                .attr_string(unit, v)
                .ok()
                .and_then(|r| r.to_string_lossy().ok().map(|c| c.into_owned()))
        };
        let name = s(file.path_name())?;
        if name.starts_with('/') {
            return Some(normalize_path(&name));
        }
        let mut path = String::new();
        if let Some(dir) = file.directory(header).and_then(s) {
            path = dir;
        }
        if !path.starts_with('/')
            && let Some(comp) = &unit.comp_dir
            && let Ok(comp) = comp.to_string_lossy()
        {
            path = if path.is_empty() {
                comp.into_owned()
            } else {
                format!("{comp}/{path}")
            };
        }
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(&name);
        Some(normalize_path(&path))
    }

    /// Resolves a location: `FILE:LINE` (FILE matched by path suffix on component
    /// boundaries) or a function name (`shop::cart::Cart::total`, `main`), to one
    /// [`Site`] per distinct address, sorted by address.
    ///
    /// The first call builds the line index (or the function index), which later calls
    /// reuse.
    pub fn resolve(&self, location: &str) -> Result<Vec<Site>, Error> {
        match parse_location(location)? {
            Location::FileLine(file, line) => self.resolve_line(file, line),
            Location::Function(name) => self.resolve_function(name),
        }
    }

    fn resolve_line(&self, query: &str, line: u32) -> Result<Vec<Site>, Error> {
        let index = self.line_index()?;
        let q = if query.starts_with('/') {
            normalize_path(query)
        } else {
            normalize_path(query).trim_start_matches("../").to_string()
        };
        let matching: Vec<u32> = index
            .files
            .iter()
            .enumerate()
            .filter(|(_, p)| path_matches(p, &q))
            .map(|(i, _)| i as u32)
            .filter(|&i| !index.runs_of(i).is_empty())
            .collect();
        let file = match matching.as_slice() {
            [] => {
                return Err(Error::UnknownFile {
                    file: query.to_string(),
                    closest: self.closest_files(index, &q),
                });
            }
            [one] => *one,
            many => {
                let mut candidates: Vec<String> = many
                    .iter()
                    .map(|&i| index.files[i as usize].clone())
                    .collect();
                candidates.sort();
                return Err(Error::AmbiguousFile {
                    file: query.to_string(),
                    candidates,
                });
            }
        };
        let path = index.files[file as usize].clone();
        let runs = index.runs_of(file);
        let lo = runs.partition_point(|r| r.line < line);
        let hi = runs.partition_point(|r| r.line <= line);
        let here = &runs[lo..hi];
        if here.is_empty() {
            return Err(Error::NoCode {
                file: path,
                line,
                above: lo.checked_sub(1).map(|i| runs[i].line),
                below: runs.get(hi).map(|r| r.line),
            });
        }
        let any_stmt = here.iter().any(|r| r.is_stmt);
        let mut sites = Vec::new();
        // Runs of a function's opening line other than its entry (cleanup and landing
        // pads rustc attributes to it) are dropped once the entry was found.
        let mut entered: Vec<(usize, gimli::UnitOffset)> = Vec::new();
        type Keyed = (Option<(usize, gimli::UnitOffset)>, Site);
        let mut others: Vec<(usize, gimli::UnitOffset, Keyed)> = Vec::new();
        for run in here.iter().filter(|r| r.is_stmt || !any_stmt) {
            let ui = run.unit as usize;
            let chain = self.scope_chain(ui, run.addr)?;
            let function = chain
                .iter()
                .rev()
                .find(|s| s.is_function())
                .filter(|s| s.tag == gimli::DW_TAG_subprogram)
                .map(|s| (ui, s.offset));
            let skip = if run.first_at_address {
                self.prologue_skip(ui, &chain, run.addr)?
            } else {
                None
            };
            let moved = skip.is_some();
            let (address, row_line) = match skip {
                Some(r) => {
                    entered.extend(function);
                    (r.addr, r.line)
                }
                None => (run.addr, line),
            };
            let chain = if address == run.addr {
                chain
            } else {
                self.scope_chain(ui, address)?
            };
            let instance = chain
                .iter()
                .rev()
                .find(|s| s.is_function())
                .map(|s| (ui, s.offset));
            let site = Site {
                address,
                functions: self.functions_at(ui, &chain, address),
                file: path.clone(),
                line: row_line,
                is_stmt: run.is_stmt,
            };
            match function {
                Some((u, o)) if !moved => others.push((u, o, (instance, site))),
                _ => sites.push((instance, site)),
            }
        }
        for (u, o, site) in others {
            if !entered.contains(&(u, o)) || !self.opens_function(u, o, line) {
                sites.push(site);
            }
        }
        // One execution of a line must be one hit: keep the first address of the line in
        // each function instance (a subprogram, or one inlined copy of it), as gdb does.
        // The line's later runs in the same instance (a loop's increment, code the
        // compiler split) would fire again for the same execution.
        sites.sort_by_key(|(_, s)| s.address);
        let mut seen = Vec::new();
        sites.retain(|(instance, _)| match instance {
            Some(key) if seen.contains(key) => false,
            Some(key) => {
                seen.push(*key);
                true
            }
            None => true,
        });
        let mut sites: Vec<Site> = sites.into_iter().map(|(_, s)| s).collect();
        sites.dedup_by_key(|s| s.address);
        Ok(sites)
    }

    /// Whether `line` is the line a subprogram is declared on (its opening line).
    fn opens_function(&self, ui: usize, off: gimli::UnitOffset, line: u32) -> bool {
        self.die(ui, off).ok().is_some_and(|d| {
            d.attr_value(gimli::DW_AT_decl_line)
                .and_then(|v| v.udata_value())
                .is_some_and(|l| l == u64::from(line))
                || d.attr_value(gimli::DW_AT_specification).is_some()
        })
    }

    fn closest_files(&self, index: &LineIndex, query: &str) -> Vec<String> {
        let qb = basename(query);
        let mut scored: Vec<(usize, &String)> = index
            .files
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| {
                (
                    distance(basename(p), qb) * 4 + distance(p, query).min(40) / 10,
                    p,
                )
            })
            .collect();
        scored.sort();
        scored.dedup_by(|a, b| a.1 == b.1);
        scored.into_iter().take(5).map(|(_, p)| p.clone()).collect()
    }

    /// When `addr` is the entry of the subprogram containing it, the first address after
    /// its prologue (the `prologue_end` row, else the next statement row) and its line.
    pub(crate) fn prologue_skip(
        &self,
        ui: usize,
        chain: &[Scope],
        addr: u64,
    ) -> Result<Option<Row>, Error> {
        let Some(innermost) = chain.iter().rev().find(|s| s.is_function()) else {
            return Ok(None);
        };
        if innermost.tag != gimli::DW_TAG_subprogram || innermost.entry != Some(addr) {
            return Ok(None);
        }
        let end = self.function_end(ui, innermost, addr)?;
        self.post_prologue(ui, addr, end)
    }

    /// The first row after the prologue of a function entered at `addr` and ending at
    /// `end`: its `prologue_end` row, else its first statement on another line.
    pub(crate) fn post_prologue(
        &self,
        ui: usize,
        addr: u64,
        end: Option<u64>,
    ) -> Result<Option<Row>, Error> {
        let Some(seq) = self.sequence_rows(ui, addr)? else {
            return Ok(None);
        };
        let inside = |a: u64| a >= addr && end.is_none_or(|e| a < e);
        let Some(first) = seq.iter().position(|r| r.addr == addr) else {
            return Ok(None);
        };
        let entry_line = seq[first].line;
        let after = &seq[first..];
        // `prologue_end` where the compiler marks it (LLVM); else the first statement on
        // another line (gcc), which is at the entry itself when there is no prologue.
        let pick = after
            .iter()
            .find(|r| r.prologue_end && inside(r.addr))
            .or_else(|| {
                after
                    .iter()
                    .take_while(|r| inside(r.addr))
                    .find(|r| r.is_stmt && r.line != entry_line && r.line != 0)
            });
        Ok(pick.copied())
    }

    fn function_end(&self, ui: usize, scope: &Scope, addr: u64) -> Result<Option<u64>, Error> {
        let unit = &self.units()?[ui];
        let die = unit.entry(scope.offset)?;
        let mut ranges = unit.dwarf.die_ranges(unit, &die)?;
        while let Some(r) = ranges.next()? {
            if r.begin <= addr && addr < r.end {
                return Ok(Some(r.end));
            }
        }
        Ok(None)
    }

    /// The rows of the line-table sequence containing `addr` (re-reads one line program).
    pub(crate) fn sequence_rows(&self, ui: usize, addr: u64) -> Result<Option<Vec<Row>>, Error> {
        let unit = &self.units()?[ui];
        let Some(program) = unit.line_program.clone() else {
            return Ok(None);
        };
        let mut rows = program.rows();
        let mut seq: Vec<Row> = Vec::new();
        while let Some((_, row)) = rows.next_row()? {
            if row.end_sequence() {
                if seq.first().is_some_and(|f| f.addr <= addr) && addr < row.address() {
                    return Ok(Some(seq));
                }
                seq.clear();
                continue;
            }
            seq.push(Row {
                addr: row.address(),
                file: row.file_index(),
                line: row
                    .line()
                    .map_or(0, |l| u32::try_from(l.get()).unwrap_or(0)),
                is_stmt: row.is_stmt(),
                prologue_end: row.prologue_end(),
            });
        }
        Ok(None)
    }

    /// The line-table row covering `addr`, with its file path.
    pub(crate) fn row_at(&self, ui: usize, addr: u64) -> Result<Option<(String, Row)>, Error> {
        let Some(seq) = self.sequence_rows(ui, addr)? else {
            return Ok(None);
        };
        let Some(row) = seq.iter().rev().find(|r| r.addr <= addr).copied() else {
            return Ok(None);
        };
        let unit = &self.units()?[ui];
        let Some(program) = &unit.line_program else {
            return Ok(None);
        };
        Ok(self
            .file_path(ui, program.header(), row.file)
            .map(|p| (p, row)))
    }

    /// The file path and line of the row covering `addr`.
    pub(crate) fn line_at(&self, ui: usize, addr: u64) -> Result<Option<(String, u32)>, Error> {
        Ok(self.row_at(ui, addr)?.map(|(p, r)| (p, r.line)))
    }
}

/// One line-table row, as kept for a sequence.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Row {
    pub(crate) addr: u64,
    pub(crate) file: u64,
    pub(crate) line: u32,
    pub(crate) is_stmt: bool,
    pub(crate) prologue_end: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_on_component_boundaries() {
        assert!(path_matches("/p/src/main.rs", "main.rs"));
        assert!(path_matches("/p/src/main.rs", "src/main.rs"));
        assert!(path_matches("/p/src/main.rs", "/p/src/main.rs"));
        assert!(!path_matches("/p/src/domain.rs", "main.rs"));
        assert_eq!(normalize_path("/p/./src//a/../main.rs"), "/p/src/main.rs");
    }

    #[test]
    fn locations_parse() {
        assert_eq!(
            parse_location("src/cart.rs:42").unwrap(),
            Location::FileLine("src/cart.rs", 42)
        );
        assert_eq!(
            parse_location("<a::B as c::D>::fmt").unwrap(),
            Location::Function("<a::B as c::D>::fmt")
        );
        assert!(parse_location("x.rs:0").is_err());
        assert!(parse_location("").is_err());
    }
}
