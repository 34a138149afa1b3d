//! Addresses to stack frames: function, file and line, with inlined frames expanded.
//!
//! DWARF answers through addr2line's [`addr2line::Context`], built once per binary on
//! the first query (it is costly) and kept in [`crate::load::Indexes`]. Addresses that
//! DWARF does not cover (C objects built without `-g`, stripped libraries) fall back to
//! the ELF symbol tables, demangled without the hash.

use crate::{DebugInfo, Reader};
use nonstop_model::Frame;
use object::{Object, ObjectSection, ObjectSymbol, SectionKind, SymbolKind};
use std::borrow::Cow;
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex};

impl DebugInfo {
    /// The frames at `address` (file-relative, as in the ELF file): the innermost inlined
    /// function first, then the functions it was inlined into, ending with the function
    /// that owns the machine code. Names are demangled without the hash
    /// (`shop::cart::Cart::total`, `<T as Trait>::method`).
    ///
    /// Where DWARF does not cover the address, the symbol table gives the function name
    /// (no file, no line). An empty list means nothing is known about the address.
    ///
    /// The first call builds addr2line's context for the whole binary (costly); later
    /// calls reuse it.
    pub fn frames_at(&self, address: u64) -> Vec<Frame> {
        let mut frames = self
            .symbolizer()
            .frames(address, &|id| self.split_dwarf(id));
        // A closure symbol may be the poll function of an `async fn` or block: DWARF
        // names those (`{async_fn#0}`), so the frame shows `shop::handle (async)`.
        if frames.iter().any(|f| f.function.contains("{{closure}}"))
            && let Some(names) = self.async_names_at(address)
            && names.len() == frames.len()
        {
            for (f, n) in frames.iter_mut().zip(names) {
                if n.ends_with(" (async)") || n.ends_with(" (async block)") {
                    f.function = n;
                }
            }
        }
        frames
    }

    /// The DWARF function chain at `address`, innermost first, with coroutine names.
    fn async_names_at(&self, address: u64) -> Option<Vec<String>> {
        /// Past this many addresses the cache starts over (bounded memory).
        const MAX_CACHED: usize = 4096;
        if let Ok(cache) = self.index.async_names.lock()
            && let Some(hit) = cache.get(&address)
        {
            return hit.clone();
        }
        let names = self.async_names_uncached(address);
        if let Ok(mut cache) = self.index.async_names.lock() {
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
            cache.insert(address, names.clone());
        }
        names
    }

    fn async_names_uncached(&self, address: u64) -> Option<Vec<String>> {
        for ui in self.units_at(address).ok()? {
            let chain = self.scope_chain(ui, address).ok()?;
            if chain.is_empty() {
                continue;
            }
            return Some(self.function_chain(ui, &chain));
        }
        None
    }

    /// Like [`DebugInfo::frames_at`], for a return address found on the stack (a caller's
    /// frame): looks up `address - 1`, so the frames show the line of the call rather than
    /// the line after it, and a call that ends a function (a `noreturn` callee) is not
    /// attributed to the next function.
    pub fn frames_at_return_address(&self, address: u64) -> Vec<Frame> {
        self.frames_at(address.saturating_sub(1))
    }

    /// The sections of the split unit `id` (a `.dwo` or a `.dwp`'s unit), as the unit
    /// table read them: addr2line asks for them when an address is in a skeleton unit.
    fn split_dwarf(&self, id: gimli::DwoId) -> Option<Arc<gimli::Dwarf<Reader>>> {
        self.units()
            .ok()?
            .iter()
            .find(|u| u.unit.dwo_id == Some(id) && u.missing.is_none())
            .map(|u| Arc::clone(&u.dwarf))
    }

    fn symbolizer(&self) -> &Symbolizer {
        self.index
            .symbolizer
            .get_or_init(|| Symbolizer::new(&self.dwarf, &self.file.path))
    }
}

/// What answers address queries for one binary: DWARF, then the symbol tables.
pub(crate) struct Symbolizer {
    /// addr2line's context parses units lazily through `OnceCell`s, so it is `Send` but not
    /// `Sync`; the mutex makes [`DebugInfo`] shareable. Queries are short, so contention is low.
    dwarf: Option<Mutex<addr2line::Context<Reader>>>,
    symbols: SymbolMap,
}

impl Symbolizer {
    fn new(dwarf: &Arc<gimli::Dwarf<Reader>>, path: &Path) -> Symbolizer {
        Symbolizer {
            dwarf: addr2line::Context::from_arc_dwarf(Arc::clone(dwarf))
                .ok()
                .map(Mutex::new),
            symbols: SymbolMap::load(path).unwrap_or_default(),
        }
    }

    /// `split` gives the sections of a split unit by its id.
    fn frames(&self, address: u64, split: &SplitDwarf<'_>) -> Vec<Frame> {
        // DWARF of functions the linker dropped says they start at 0 (or another
        // tombstone): an address outside the code must not resolve to them.
        if !self.symbols.is_code(address) {
            return Vec::new();
        }
        let mut frames = self.dwarf_frames(address, split).unwrap_or_default();
        if frames.iter().all(|f| f.function.is_empty()) {
            // DWARF had at most a line for it: take the name from the symbol table.
            let (file, line) = frames
                .pop()
                .map(|f| (f.file, f.line))
                .unwrap_or((None, None));
            frames.clear();
            if let Some(name) = self.symbols.lookup(address) {
                frames.push(Frame {
                    function: name.to_owned(),
                    file,
                    line,
                    folded: Vec::new(),
                });
            }
        } else if let Some(name) = self.symbols.lookup(address) {
            // A frame of a function DWARF gives no name for still gets a name.
            for f in frames.iter_mut().filter(|f| f.function.is_empty()) {
                f.function = name.to_owned();
            }
        }
        frames
    }

    /// The frames addr2line finds; names may be empty where DWARF has none.
    fn dwarf_frames(&self, address: u64, split: &SplitDwarf<'_>) -> Option<Vec<Frame>> {
        use addr2line::{LookupContinuation, LookupResult};
        let ctx = self.dwarf.as_ref()?;
        // A panic while holding the lock (there is none in addr2line's lookups) would
        // leave the context as valid as before: take it back.
        let ctx = ctx.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut lookup = ctx.find_frames(address);
        // One load per split unit on the way (addr2line keeps what it was given).
        let mut iter = loop {
            match lookup {
                LookupResult::Output(found) => break found.ok()?,
                LookupResult::Load { load, continuation } => {
                    lookup = continuation.resume(split(load.dwo_id));
                }
            }
        };
        let mut frames = Vec::new();
        // Bounded: inline depth in real programs is tens at most.
        while let Ok(Some(frame)) = iter.next() {
            let function = frame
                .function
                .as_ref()
                .and_then(|name| name.demangle().ok())
                .map(Cow::into_owned)
                .unwrap_or_default();
            let (file, line) = match frame.location {
                Some(loc) => (loc.file.map(str::to_owned), loc.line.filter(|&l| l != 0)),
                None => (None, None),
            };
            frames.push(Frame {
                function,
                file,
                line,
                folded: Vec::new(),
            });
            if frames.len() >= MAX_INLINE_DEPTH {
                break;
            }
        }
        Some(frames)
    }
}

/// The sections of a split unit by its `DW_AT_dwo_id`, when they could be read.
type SplitDwarf<'a> = dyn Fn(gimli::DwoId) -> Option<Arc<gimli::Dwarf<Reader>>> + 'a;

/// Most frames one address expands to; a guard against malformed inline trees.
const MAX_INLINE_DEPTH: usize = 64;

/// The function symbols of an ELF file (`.symtab` and `.dynsym`), demangled, sorted by
/// address, for addresses that DWARF does not cover.
#[derive(Debug, Default)]
pub(crate) struct SymbolMap {
    /// `(start, end, name)`, sorted by start; `end == start` when the size is unknown.
    entries: Vec<(u64, u64, Box<str>)>,
    /// Address ranges of the executable sections; empty when unknown.
    code: Vec<Range<u64>>,
}

impl SymbolMap {
    /// Reads the symbol tables of the ELF file at `path`.
    pub(crate) fn load(path: &Path) -> Option<SymbolMap> {
        let data = std::fs::read(path).ok()?;
        let obj = object::File::parse(&*data).ok()?;
        Some(SymbolMap::from_object(&obj))
    }

    /// The symbol tables of a parsed object file.
    pub(crate) fn from_object(obj: &object::File<'_>) -> SymbolMap {
        let mut entries: Vec<(u64, u64, Box<str>)> = obj
            .symbols()
            .chain(obj.dynamic_symbols())
            .filter(|s| s.kind() == SymbolKind::Text && s.is_definition() && s.address() != 0)
            .filter_map(|s| {
                let name = s.name().ok()?;
                if name.is_empty() {
                    return None;
                }
                let demangled = addr2line::demangle_auto(Cow::Borrowed(name), None);
                let end = s.address().saturating_add(s.size());
                Some((s.address(), end, Box::from(demangled.as_ref())))
            })
            .collect();
        // Sized symbols first at an address, so a lookup prefers them over aliases without size.
        entries.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        entries.dedup_by(|later, earlier| later.0 == earlier.0);
        let code = obj
            .sections()
            .filter(|s| s.kind() == SectionKind::Text && s.size() > 0)
            .map(|s| s.address()..s.address().saturating_add(s.size()))
            .collect();
        SymbolMap { entries, code }
    }

    /// Whether `address` is in an executable section (`true` when the sections are unknown).
    pub(crate) fn is_code(&self, address: u64) -> bool {
        self.code.is_empty() || self.code.iter().any(|r| r.contains(&address))
    }

    /// The name of the function containing `address`: the nearest symbol at or below it,
    /// if its size covers the address (or it has no size and is the last before it).
    pub(crate) fn lookup(&self, address: u64) -> Option<&str> {
        let upto = self.entries.partition_point(|e| e.0 <= address);
        let (start, end, name) = self.entries.get(upto.checked_sub(1)?)?;
        (address < *end || end == start).then_some(&**name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn resolve_me() -> u64 {
        std::hint::black_box(7)
    }

    fn map() -> SymbolMap {
        SymbolMap {
            entries: vec![
                (0x1000, 0x1010, "a".into()),
                (0x1020, 0x1020, "b".into()),
                (0x1100, 0x1180, "c".into()),
            ],
            code: Vec::new(),
        }
    }

    trait Shape {
        fn area(&self) -> u64;
    }

    struct Square(u64);

    impl Shape for Square {
        #[inline(never)]
        fn area(&self) -> u64 {
            std::hint::black_box(self.0 * self.0)
        }
    }

    /// The test binary's own DWARF, and the load bias of this process.
    fn own_debug_info() -> (DebugInfo, u64) {
        let unwinder = crate::Unwinder::from_proc_maps(None).unwrap();
        let here = own_debug_info as *const () as u64;
        let bias = unwinder.module_for(here).unwrap().bias();
        (
            DebugInfo::load(std::env::current_exe().unwrap()).unwrap(),
            bias,
        )
    }

    #[test]
    fn trait_methods_are_named_as_qualified_paths_without_hash() {
        assert_eq!(Square(3).area(), 9);
        let (info, bias) = own_debug_info();
        let f = <Square as Shape>::area as *const () as u64;
        let frames = info.frames_at(f - bias);
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(
            frames[0].function,
            "<nonstop_debuginfo::symbolize::tests::Square as \
             nonstop_debuginfo::symbolize::tests::Shape>::area"
        );
        assert!(
            frames[0]
                .file
                .as_deref()
                .unwrap()
                .ends_with("src/symbolize.rs")
        );
        // The same answer again, from the cached context.
        assert_eq!(info.frames_at(f - bias), frames);
    }

    #[test]
    fn addresses_outside_the_binary_give_no_frames() {
        let (info, _) = own_debug_info();
        assert!(info.frames_at(0).is_empty());
        assert!(info.frames_at(u64::MAX).is_empty());
        assert!(info.frames_at_return_address(0).is_empty());
    }

    #[test]
    fn debug_info_stays_shareable_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<DebugInfo>();
        send_sync::<crate::Stacks>();
    }

    #[test]
    fn symbol_lookup_respects_sizes() {
        let m = map();
        assert_eq!(m.lookup(0xfff), None);
        assert_eq!(m.lookup(0x1000), Some("a"));
        assert_eq!(m.lookup(0x100f), Some("a"));
        assert_eq!(m.lookup(0x1010), None);
        assert_eq!(m.lookup(0x1050), Some("b"));
        assert_eq!(m.lookup(0x117f), Some("c"));
        assert_eq!(m.lookup(0x1180), None);
        assert_eq!(m.lookup(u64::MAX), None);
    }

    #[test]
    fn symbol_table_of_the_test_binary_names_a_function_without_hash() {
        let exe = std::env::current_exe().unwrap();
        let m = SymbolMap::load(&exe).unwrap();
        assert!(resolve_me() == 7);
        // The runtime address is biased (PIE); find the symbol by name instead.
        let found = m
            .entries
            .iter()
            .find(|e| e.2.ends_with("symbolize::tests::resolve_me"));
        let found = found.expect("resolve_me in .symtab");
        assert!(!found.2.contains("::h"), "{}", found.2);
        assert_eq!(
            m.lookup(found.0).map(str::to_owned),
            Some(found.2.to_string())
        );
    }
}
