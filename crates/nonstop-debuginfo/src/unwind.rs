//! Stack traces at a hit: registers and a copy of the stack → return addresses → frames.
//!
//! The probe engine copies the registers and a bounded slice of the stack at a hit; the
//! agent thread then unwinds here, off the trap path (this code allocates).
//!
//! # Overview
//! - [`Module`]: one ELF file mapped into a process, with its call frame information
//!   (`.eh_frame`, looked up through `.eh_frame_hdr`, and `.debug_frame` when present).
//! - [`Unwinder`]: the modules of a process; [`Unwinder::unwind`] walks the stack with
//!   the CFI rules, falling back to the frame-pointer chain where no CFI covers an address.
//! - [`Stacks`]: an [`Unwinder`] plus the debug info of every module, cached;
//!   [`Stacks::frames`] gives symbolized [`Frame`]s, inlined frames expanded.

use crate::maps::Mapping;
use crate::symbolize::SymbolMap;
use crate::{DebugInfo, Error, Reader};
use gimli::{
    BaseAddresses, CfaRule, DebugFrame, EhFrame, EhFrameHdr, Encoding, EvaluationResult,
    Expression, Location, ParsedEhFrameHdr, Register, RegisterRule, UnwindContext, UnwindSection,
    UnwindTableRow, Value,
};
use nonstop_capture::capture::{GPR_COUNT, Memory, REG_RBP, REG_RIP, REG_RSP, Registers};
use nonstop_model::Frame;
use object::{Object, ObjectSection};
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Frames unwound when the caller gives no limit (DESIGN.md: stack frames = 20).
pub const DEFAULT_MAX_FRAMES: usize = 20;

/// Most operations one CFI expression may run: real ones have a handful.
const MAX_EXPRESSION_STEPS: u32 = 1000;

/// How often [`Stacks::frames`] may re-read the process's mappings when it meets an
/// address in no known module (a `dlopen`ed library, JIT code, the vDSO).
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// One frame found by unwinding, before symbolization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawFrame {
    /// Runtime address: the instruction pointer of the innermost frame, a return address
    /// for the callers.
    pub address: u64,
    /// Whether `address` is a return address (every frame but the first): symbolize
    /// `address - 1` so the frame shows the line of the call.
    pub is_return_address: bool,
}

/// One ELF file mapped into a process, with what unwinding needs from it.
pub struct Module {
    path: PathBuf,
    bias: u64,
    ranges: Vec<Range<u64>>,
    cfi: Cfi,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module")
            .field("path", &self.path)
            .field("bias", &format_args!("{:#x}", self.bias))
            .field("ranges", &self.ranges)
            .field("eh_frame", &self.cfi.eh_frame.is_some())
            .field("eh_frame_hdr", &self.cfi.eh_frame_hdr.is_some())
            .field("debug_frame", &self.cfi.debug_frame.is_some())
            .finish()
    }
}

/// The call frame information of one file, addressed as in the file.
struct Cfi {
    bases: BaseAddresses,
    encoding: Encoding,
    eh_frame: Option<EhFrame<Reader>>,
    eh_frame_hdr: Option<ParsedEhFrameHdr<Reader>>,
    /// FDEs of `.eh_frame` sorted by start `(start, end, offset)`, built only when there is
    /// no `.eh_frame_hdr` table to search.
    eh_frame_index: Vec<(u64, u64, usize)>,
    debug_frame: Option<DebugFrame<Reader>>,
    debug_frame_index: Vec<(u64, u64, usize)>,
}

impl Module {
    /// Loads the CFI of the ELF file at `path`, mapped at runtime so that runtime address =
    /// file address + `bias`, with its code at the runtime `ranges`.
    pub fn load(
        path: impl AsRef<Path>,
        bias: u64,
        ranges: Vec<Range<u64>>,
    ) -> Result<Module, Error> {
        let path = path.as_ref().to_path_buf();
        let data = read_file(&path)?;
        let obj = parse_object(&path, &data)?;
        Ok(Module::from_object(path, bias, ranges, &obj))
    }

    fn from_object(
        path: PathBuf,
        bias: u64,
        ranges: Vec<Range<u64>>,
        obj: &object::File<'_>,
    ) -> Module {
        Module {
            path,
            bias,
            ranges,
            cfi: Cfi::new(obj),
        }
    }

    /// The file this module was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runtime address minus file address.
    pub fn bias(&self) -> u64 {
        self.bias
    }

    /// The runtime address ranges of its code, `[start, end)`.
    pub fn ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }

    /// Whether `address` (runtime) is in this module's code.
    pub fn contains(&self, address: u64) -> bool {
        self.ranges.iter().any(|r| r.contains(&address))
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_object<'d>(path: &Path, data: &'d [u8]) -> Result<object::File<'d>, Error> {
    object::File::parse(data).map_err(|e| Error::NotElf {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

impl Cfi {
    fn new(obj: &object::File<'_>) -> Cfi {
        let endian = if obj.is_little_endian() {
            gimli::RunTimeEndian::Little
        } else {
            gimli::RunTimeEndian::Big
        };
        let address_size = if obj.is_64() { 8 } else { 4 };
        let section = |name: &str| -> Option<(u64, Reader)> {
            let s = obj.section_by_name(name)?;
            let data = s.uncompressed_data().ok()?;
            (!data.is_empty()).then(|| (s.address(), Reader::new(Arc::from(&*data), endian)))
        };
        let address_of = |name: &str| obj.section_by_name(name).map(|s| s.address());

        let mut bases = BaseAddresses::default();
        if let Some(text) = address_of(".text") {
            bases = bases.set_text(text);
        }
        if let Some(got) = address_of(".got") {
            bases = bases.set_got(got);
        }
        let eh_frame = section(".eh_frame").map(|(addr, data)| {
            bases = bases.clone().set_eh_frame(addr);
            let mut s = EhFrame::from(data);
            s.set_address_size(address_size);
            s
        });
        let eh_frame_hdr = section(".eh_frame_hdr").and_then(|(addr, data)| {
            bases = bases.clone().set_eh_frame_hdr(addr);
            EhFrameHdr::from(data).parse(&bases, address_size).ok()
        });
        let debug_frame = section(".debug_frame").map(|(_, data)| {
            let mut s = DebugFrame::from(data);
            s.set_address_size(address_size);
            s
        });
        let has_table = eh_frame_hdr.as_ref().is_some_and(|h| h.table().is_some());
        let eh_frame_index = match (&eh_frame, has_table) {
            (Some(s), false) => fde_index(s, &bases),
            _ => Vec::new(),
        };
        let debug_frame_index = debug_frame
            .as_ref()
            .map(|s| fde_index(s, &bases))
            .unwrap_or_default();
        Cfi {
            bases,
            encoding: Encoding {
                format: gimli::Format::Dwarf32,
                version: 1,
                address_size,
            },
            eh_frame,
            eh_frame_hdr,
            eh_frame_index,
            debug_frame,
            debug_frame_index,
        }
    }

    /// The caller's registers for a frame at file address `pc`, and whether this frame is a
    /// signal trampoline (then the caller's pc is where the signal struck, not a return
    /// address). `None` when no CFI covers `pc`; `Some(None)` when CFI covers it but
    /// unwinding cannot continue.
    fn step(
        &self,
        ctx: &mut Ctx,
        pc: u64,
        regs: &Regs,
        mem: &dyn Memory,
    ) -> Option<Option<(Regs, bool)>> {
        if let Some(eh_frame) = &self.eh_frame {
            let fde = match self.eh_frame_hdr.as_ref().and_then(|h| h.table()) {
                Some(table) => table
                    .fde_for_address(eh_frame, &self.bases, pc, EhFrame::cie_from_offset)
                    .ok(),
                None => find_fde(eh_frame, &self.bases, &self.eh_frame_index, pc),
            };
            if let Some(fde) = fde {
                let row = fde
                    .unwind_info_for_address(eh_frame, &self.bases, ctx, pc)
                    .ok();
                let encoding = Encoding {
                    version: fde.cie().version().into(),
                    ..self.encoding
                };
                let next = row.and_then(|row| apply_row(eh_frame, encoding, row, regs, mem));
                return Some(next.map(|next| (next, fde.is_signal_trampoline())));
            }
        }
        if let Some(debug_frame) = &self.debug_frame
            && let Some(fde) = find_fde(debug_frame, &self.bases, &self.debug_frame_index, pc)
        {
            let row = fde
                .unwind_info_for_address(debug_frame, &self.bases, ctx, pc)
                .ok();
            let encoding = Encoding {
                version: fde.cie().version().into(),
                ..self.encoding
            };
            let next = row.and_then(|row| apply_row(debug_frame, encoding, row, regs, mem));
            return Some(next.map(|next| (next, fde.is_signal_trampoline())));
        }
        None
    }
}

type Ctx = UnwindContext<usize>;
type Fde = gimli::FrameDescriptionEntry<Reader>;

/// Every FDE of a section, sorted by start address: `(start, end, offset)`.
fn fde_index<S: UnwindSection<Reader>>(section: &S, bases: &BaseAddresses) -> Vec<(u64, u64, usize)>
where
    S::Offset: gimli::UnwindOffset<usize>,
{
    let mut index = Vec::new();
    let mut entries = section.entries(bases);
    // A malformed entry ends the walk: the FDEs before it still serve.
    while let Ok(Some(entry)) = entries.next() {
        if let gimli::CieOrFde::Fde(partial) = entry
            && let Ok(fde) = partial.parse(S::cie_from_offset)
        {
            index.push((fde.initial_address(), fde.end_address(), fde.offset()));
        }
    }
    index.sort_unstable();
    index
}

fn find_fde<S: UnwindSection<Reader>>(
    section: &S,
    bases: &BaseAddresses,
    index: &[(u64, u64, usize)],
    pc: u64,
) -> Option<Fde>
where
    S::Offset: gimli::UnwindOffset<usize>,
{
    let upto = index.partition_point(|e| e.0 <= pc);
    let &(start, end, offset) = index.get(upto.checked_sub(1)?)?;
    if !(start..end).contains(&pc) {
        return None;
    }
    section
        .fde_from_offset(bases, S::Offset::from(offset), S::cie_from_offset)
        .ok()
}

/// Register values while unwinding; `None` where the value is not known.
type Regs = [Option<u64>; GPR_COUNT];

fn reg(regs: &Regs, r: Register) -> Option<u64> {
    regs.get(r.0 as usize).copied().flatten()
}

fn read_u64(mem: &dyn Memory, addr: u64) -> Option<u64> {
    let mut b = [0u8; 8];
    mem.read(addr, &mut b).ok()?;
    Some(u64::from_le_bytes(b))
}

/// The caller's registers from one CFI row: rsp = CFA, the rest by their rules; the
/// return address is in the `rip` slot. `None` when the CFA or the return address cannot
/// be found (or the row says this is the outermost frame).
fn apply_row<S: UnwindSection<Reader>>(
    section: &S,
    encoding: Encoding,
    row: &UnwindTableRow<usize>,
    regs: &Regs,
    mem: &dyn Memory,
) -> Option<Regs> {
    let cfa = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            reg(regs, *register)?.wrapping_add_signed(*offset)
        }
        CfaRule::Expression(e) => {
            let expr = e.get(section).ok()?;
            evaluate(expr, encoding, None, regs, mem)?
        }
    };
    let mut next = *regs;
    next[REG_RSP as usize] = Some(cfa);
    // Without a rule the return address is lost: the outermost frame.
    next[REG_RIP as usize] = None;
    for (register, rule) in row.registers() {
        let Some(slot) = next.get_mut(register.0 as usize) else {
            continue;
        };
        *slot = match rule {
            RegisterRule::Undefined => None,
            RegisterRule::SameValue => reg(regs, *register),
            RegisterRule::Offset(n) => read_u64(mem, cfa.wrapping_add_signed(*n)),
            RegisterRule::ValOffset(n) => Some(cfa.wrapping_add_signed(*n)),
            RegisterRule::Register(r) => reg(regs, *r),
            RegisterRule::Expression(e) => e
                .get(section)
                .ok()
                .and_then(|expr| evaluate(expr, encoding, Some(cfa), regs, mem))
                .and_then(|addr| read_u64(mem, addr)),
            RegisterRule::ValExpression(e) => e
                .get(section)
                .ok()
                .and_then(|expr| evaluate(expr, encoding, Some(cfa), regs, mem)),
            RegisterRule::Constant(v) => Some(*v),
            _ => None,
        };
    }
    next[REG_RIP as usize]?;
    Some(next)
}

/// Runs a CFI expression; its result is an address (or a value, for `ValExpression`).
fn evaluate(
    expr: Expression<Reader>,
    encoding: Encoding,
    initial: Option<u64>,
    regs: &Regs,
    mem: &dyn Memory,
) -> Option<u64> {
    let mut eval = expr.evaluation(encoding);
    eval.set_max_iterations(MAX_EXPRESSION_STEPS);
    if let Some(v) = initial {
        eval.set_initial_value(v);
    }
    let mut state = eval.evaluate().ok()?;
    loop {
        state = match state {
            EvaluationResult::Complete => break,
            EvaluationResult::RequiresMemory {
                address,
                size,
                space: None,
                ..
            } if (1..=8).contains(&size) => {
                let mut b = [0u8; 8];
                mem.read(address, &mut b[..size as usize]).ok()?;
                eval.resume_with_memory(Value::Generic(u64::from_le_bytes(b)))
                    .ok()?
            }
            EvaluationResult::RequiresRegister { register, .. } => {
                let v = reg(regs, register)?;
                eval.resume_with_register(Value::Generic(v)).ok()?
            }
            _ => return None,
        };
    }
    match eval.result().first()?.location {
        Location::Address { address } => Some(address),
        Location::Value { value } => value.to_u64(!0).ok(),
        _ => None,
    }
}

/// The modules of one process, for unwinding its stacks.
#[derive(Debug, Default)]
pub struct Unwinder {
    modules: Vec<Module>,
    /// `(start, end, module index)` of every code range, sorted by start.
    ranges: Vec<(u64, u64, usize)>,
}

impl Unwinder {
    /// An unwinder over `modules`.
    pub fn new(modules: Vec<Module>) -> Unwinder {
        let mut ranges: Vec<(u64, u64, usize)> = modules
            .iter()
            .enumerate()
            .flat_map(|(i, m)| m.ranges.iter().map(move |r| (r.start, r.end, i)))
            .collect();
        ranges.sort_unstable();
        Unwinder { modules, ranges }
    }

    /// The modules of process `pid` (`None`: this process), from `/proc/PID/maps`: every
    /// file with an executable mapping. Files that cannot be read are left out (their
    /// frames fall back to frame pointers and show as addresses).
    pub fn from_proc_maps(pid: Option<u32>) -> Result<Unwinder, Error> {
        let mut unwinder = Unwinder::default();
        unwinder.reread_proc_maps(pid)?;
        Ok(unwinder)
    }

    /// Reads `/proc/PID/maps` again (after a `dlopen`, say), keeping the modules that are
    /// still mapped at the same addresses instead of loading them again: only new mappings
    /// cost a file read. On error, nothing changes.
    pub fn reread_proc_maps(&mut self, pid: Option<u32>) -> Result<(), Error> {
        let maps = read_proc_maps(pid)?;
        let mut old = std::mem::take(&mut self.modules);
        let modules = maps
            .iter()
            .filter_map(|(path, mappings)| {
                let same = |m: &Module| {
                    m.path == *path
                        && m.ranges.len() == mappings.len()
                        && m.ranges
                            .iter()
                            .zip(mappings)
                            .all(|(r, m)| r.start == m.start && r.end == m.end)
                };
                if let Some(i) = old.iter().position(same) {
                    return Some(old.swap_remove(i));
                }
                let data = std::fs::read(path).ok()?;
                let obj = object::File::parse(&*data).ok()?;
                let (bias, ranges) = bias_and_ranges(&obj, mappings)?;
                Some(Module::from_object(path.clone(), bias, ranges, &obj))
            })
            .collect();
        *self = Unwinder::new(modules);
        Ok(())
    }

    /// The modules, in the order given.
    pub fn modules(&self) -> &[Module] {
        &self.modules
    }

    /// The module whose code contains `address` (runtime).
    pub fn module_for(&self, address: u64) -> Option<&Module> {
        let upto = self.ranges.partition_point(|r| r.0 <= address);
        let &(_, end, i) = self.ranges.get(upto.checked_sub(1)?)?;
        (address < end).then(|| self.modules.get(i)).flatten()
    }

    /// Walks the stack from `regs`, reading saved values through `mem`: the innermost
    /// frame first, at most `max_frames`.
    ///
    /// Uses the CFI of the module that contains each address, and the frame-pointer chain
    /// (`rbp`) where no CFI covers it. Stops at a zero or missing return address, at a stack
    /// pointer that does not grow, at `max_frames`, or at a read that fails (a record
    /// holds only part of the stack: the list then just ends). Never panics on any input.
    pub fn unwind(&self, regs: &Registers, mem: &dyn Memory, max_frames: usize) -> Vec<RawFrame> {
        let mut frames = Vec::new();
        if max_frames == 0 {
            return frames;
        }
        let mut ctx = Ctx::new();
        let mut cur: Regs = regs.gpr.map(Some);
        let mut is_return_address = false;
        while let Some(pc) = cur[REG_RIP as usize] {
            if pc == 0 {
                break;
            }
            frames.push(RawFrame {
                address: pc,
                is_return_address,
            });
            if frames.len() >= max_frames {
                break;
            }
            // A return address points after the call, possibly past the function's end.
            let lookup = if is_return_address { pc - 1 } else { pc };
            let cfi = self
                .module_for(lookup)
                .and_then(|m| m.cfi.step(&mut ctx, lookup.wrapping_sub(m.bias), &cur, mem));
            let next = match cfi {
                Some(next) => next,
                None => frame_pointer_step(&cur, mem).map(|next| (next, false)),
            };
            let Some((next, signal_frame)) = next else {
                break;
            };
            match (cur[REG_RSP as usize], next[REG_RSP as usize]) {
                (Some(old), Some(new)) if new > old => {}
                _ => break,
            }
            cur = next;
            is_return_address = !signal_frame;
        }
        frames
    }
}

/// One step along the frame-pointer chain: `[rbp]` is the caller's rbp, `[rbp + 8]` the
/// return address, and the caller's rsp is `rbp + 16`.
fn frame_pointer_step(regs: &Regs, mem: &dyn Memory) -> Option<Regs> {
    let rbp = regs[REG_RBP as usize]?;
    if rbp == 0 || rbp < regs[REG_RSP as usize]? {
        return None;
    }
    let mut next = *regs;
    next[REG_RBP as usize] = Some(read_u64(mem, rbp)?);
    next[REG_RIP as usize] = Some(read_u64(mem, rbp.checked_add(8)?)?);
    next[REG_RSP as usize] = Some(rbp.checked_add(16)?);
    Some(next)
}

/// Executable file mappings of a process, grouped by file, in the order first seen.
fn read_proc_maps(pid: Option<u32>) -> Result<Vec<(PathBuf, Vec<Mapping>)>, Error> {
    let path = crate::maps::path(pid);
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Io { path, source })?;
    Ok(parse_proc_maps(&text))
}

fn parse_proc_maps(text: &str) -> Vec<(PathBuf, Vec<Mapping>)> {
    crate::maps::by_file(&crate::maps::parse(text), |m| m.exec)
}

/// The load bias of a file from where its executable mappings landed
/// ([`crate::maps::load_bias`]), and their ranges.
fn bias_and_ranges(obj: &object::File<'_>, mappings: &[Mapping]) -> Option<(u64, Vec<Range<u64>>)> {
    let bias = crate::maps::load_bias(mappings, &crate::load::segments(obj))?;
    Some((bias, mappings.iter().map(|m| m.start..m.end).collect()))
}

/// Whether the file at `path` has a non-empty `.debug_info` of its own.
fn has_own_dwarf(path: &Path) -> bool {
    use object::{Object, ObjectSection};
    let Ok(data) = std::fs::read(path) else {
        return false;
    };
    object::File::parse(&*data).is_ok_and(|obj| {
        obj.section_by_name(".debug_info")
            .is_some_and(|s| s.size() > 0)
    })
}

/// What gives names to one module's addresses.
enum Symbols {
    Dwarf(Arc<DebugInfo>),
    Table(SymbolMap),
    Nothing,
}

impl Symbols {
    /// DWARF when the module carries it itself; otherwise its symbol table. Separate debug
    /// files (system libraries' `/usr/lib/debug`) are not chased here: they are large,
    /// often compressed, and names are what a stack needs from them.
    fn load(path: &Path) -> Symbols {
        if !has_own_dwarf(path) {
            return match SymbolMap::load(path) {
                Some(map) => Symbols::Table(map),
                None => Symbols::Nothing,
            };
        }
        match DebugInfo::load(path) {
            Ok(info) => Symbols::Dwarf(Arc::new(info)),
            Err(_) => match SymbolMap::load(path) {
                Some(map) => Symbols::Table(map),
                None => Symbols::Nothing,
            },
        }
    }

    fn frames(&self, address: u64, is_return_address: bool) -> Vec<Frame> {
        match self {
            Symbols::Dwarf(info) if is_return_address => info.frames_at_return_address(address),
            Symbols::Dwarf(info) => info.frames_at(address),
            Symbols::Table(map) => {
                let a = if is_return_address {
                    address.saturating_sub(1)
                } else {
                    address
                };
                map.lookup(a)
                    .map(|name| Frame {
                        function: name.to_owned(),
                        file: None,
                        line: None,
                        folded: Vec::new(),
                    })
                    .into_iter()
                    .collect()
            }
            Symbols::Nothing => Vec::new(),
        }
    }
}

/// Stack traces of one process: its modules, and their debug info loaded on first use and
/// kept (per file path). Build once at agent start; reuse for every hit.
pub struct Stacks {
    pid: Option<u32>,
    /// Whether the modules came from `/proc/PID/maps` (and may be re-read).
    from_proc: bool,
    unwinder: Unwinder,
    symbols: Mutex<HashMap<PathBuf, Arc<Symbols>>>,
    /// Frames of recently seen runtime addresses `(address, is_return_address)`: the same
    /// call sites come back hit after hit. Cleared when full or when the mappings change.
    recent: Mutex<HashMap<(u64, bool), Vec<Frame>>>,
    refreshed: Instant,
}

/// Most addresses [`Stacks`] keeps symbolized frames for.
const RECENT_CAPACITY: usize = 4096;

impl std::fmt::Debug for Stacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stacks")
            .field("pid", &self.pid)
            .field("unwinder", &self.unwinder)
            .finish_non_exhaustive()
    }
}

impl Stacks {
    /// Stack traces for this process, from `/proc/self/maps`.
    pub fn new_for_self() -> Result<Stacks, Error> {
        Stacks::new_for_pid(None)
    }

    /// Stack traces for process `pid` (`None`: this process), from `/proc/PID/maps`.
    pub fn new_for_pid(pid: Option<u32>) -> Result<Stacks, Error> {
        Ok(Stacks {
            pid,
            from_proc: true,
            unwinder: Unwinder::from_proc_maps(pid)?,
            symbols: Mutex::new(HashMap::new()),
            recent: Mutex::new(HashMap::new()),
            refreshed: Instant::now(),
        })
    }

    /// Stack traces over a given set of modules (no `/proc` reading, no refresh).
    pub fn from_unwinder(unwinder: Unwinder) -> Stacks {
        Stacks {
            pid: None,
            from_proc: false,
            unwinder,
            symbols: Mutex::new(HashMap::new()),
            recent: Mutex::new(HashMap::new()),
            refreshed: Instant::now(),
        }
    }

    /// Re-reads the process's mappings (after a `dlopen`, say). Debug info already loaded
    /// is kept.
    pub fn refresh(&mut self) -> Result<(), Error> {
        if !self.from_proc {
            return Ok(());
        }
        self.refreshed = Instant::now();
        self.unwinder.reread_proc_maps(self.pid)?;
        // A library mapped where another one was would make remembered frames wrong.
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(())
    }

    /// The unwinder in use.
    pub fn unwinder(&self) -> &Unwinder {
        &self.unwinder
    }

    /// The symbolized stack at a hit: at most `limit` frames, innermost first, inlined
    /// frames expanded (each a frame of its own). A frame in no known module, or with no
    /// name in its module, shows its address (`libfoo.so+0x1234`, `0x7f..`).
    ///
    /// When the walk meets an address in no known module, the mappings are re-read (at
    /// most once a second) and the walk is done again.
    pub fn frames(&mut self, regs: &Registers, mem: &dyn Memory, limit: usize) -> Vec<Frame> {
        let mut raw = self.unwinder.unwind(regs, mem, limit);
        let unknown = raw
            .iter()
            .any(|f| self.unwinder.module_for(f.address).is_none());
        if unknown && self.from_proc && self.refreshed_long_ago() && self.refresh().is_ok() {
            raw = self.unwinder.unwind(regs, mem, limit);
        }
        self.symbolize(&raw, limit)
    }

    fn refreshed_long_ago(&self) -> bool {
        self.refreshed.elapsed() >= REFRESH_INTERVAL
    }

    /// Symbolizes unwound frames: at most `limit` frames, inlined frames expanded.
    pub fn symbolize(&self, raw: &[RawFrame], limit: usize) -> Vec<Frame> {
        let mut out = Vec::new();
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        for f in raw {
            if out.len() >= limit {
                break;
            }
            let key = (f.address, f.is_return_address);
            let frames = match recent.get(&key) {
                Some(frames) => frames,
                None => {
                    if recent.len() >= RECENT_CAPACITY {
                        recent.clear();
                    }
                    recent.entry(key).or_insert(self.symbolize_one(f))
                }
            };
            out.extend(frames.iter().take(limit - out.len()).cloned());
        }
        out
    }

    /// The frames of one unwound address; never empty.
    fn symbolize_one(&self, f: &RawFrame) -> Vec<Frame> {
        let lookup = if f.is_return_address {
            f.address.saturating_sub(1)
        } else {
            f.address
        };
        let module = self.unwinder.module_for(lookup);
        let mut frames = match module {
            Some(m) => self
                .symbols_for(&m.path)
                .frames(f.address.wrapping_sub(m.bias), f.is_return_address),
            None => Vec::new(),
        };
        if frames.is_empty() {
            frames.push(Frame {
                function: match module {
                    Some(m) => format!(
                        "{}+{:#x}",
                        m.path
                            .file_name()
                            .unwrap_or(m.path.as_os_str())
                            .to_string_lossy(),
                        f.address.wrapping_sub(m.bias)
                    ),
                    None => format!("{:#x}", f.address),
                },
                file: None,
                line: None,
                folded: Vec::new(),
            });
        }
        frames
    }

    /// Loads the names of every module now, so the first hit does not wait for them —
    /// except modules whose file name starts with `skip_prefix` (the agent's own library:
    /// its code is never in the program's stacks, and its debug info is large).
    pub fn warm_up(&self, skip_prefix: &str) {
        for m in self.unwinder.modules() {
            let own = m
                .path()
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(skip_prefix));
            if !own {
                let _ = self.symbols_for(m.path());
            }
        }
    }

    /// Uses `info` (already loaded by the caller) for the module at `path`, instead of
    /// loading the file again on the first hit there.
    pub fn share_debug_info(&self, path: &Path, info: Arc<DebugInfo>) {
        let mut cache = self.symbols.lock().unwrap_or_else(|p| p.into_inner());
        cache.insert(path.to_path_buf(), Arc::new(Symbols::Dwarf(info)));
    }

    fn symbols_for(&self, path: &Path) -> Arc<Symbols> {
        let mut cache = self.symbols.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(
            cache
                .entry(path.to_path_buf())
                .or_insert_with(|| Arc::new(Symbols::load(path))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_maps_keep_executable_file_mappings_grouped_by_file() {
        let text = "\
55d0c0000000-55d0c0001000 r--p 00000000 fd:01 123 /usr/bin/x
55d0c0001000-55d0c0005000 r-xp 00001000 fd:01 123 /usr/bin/x
7f0000000000-7f0000001000 r-xp 00000000 00:00 0 [vdso]
7f0000002000-7f0000003000 r-xp 00002000 fd:01 124 /lib/with space.so
7f0000004000-7f0000005000 r-xp 00000000 fd:01 125 /tmp/gone.so (deleted)
garbage line
55d0c0009000-55d0c000a000 r-xp 00009000 fd:01 123 /usr/bin/x
";
        let maps = parse_proc_maps(text);
        assert_eq!(maps.len(), 2);
        assert_eq!(maps[0].0, PathBuf::from("/usr/bin/x"));
        let ranges: Vec<(u64, u64, u64)> = maps[0]
            .1
            .iter()
            .map(|m| (m.start, m.end, m.offset))
            .collect();
        assert_eq!(
            ranges,
            vec![
                (0x55d0c0001000, 0x55d0c0005000, 0x1000),
                (0x55d0c0009000, 0x55d0c000a000, 0x9000)
            ]
        );
        assert_eq!(maps[1].0, PathBuf::from("/lib/with space.so"));
    }

    #[test]
    fn own_process_modules_include_the_test_binary_with_its_function() {
        let unwinder = Unwinder::from_proc_maps(None).unwrap();
        let here =
            own_process_modules_include_the_test_binary_with_its_function as *const () as u64;
        let m = unwinder.module_for(here).expect("module of this test");
        assert_eq!(m.path(), std::env::current_exe().unwrap());
        let info = DebugInfo::load(m.path()).unwrap();
        let frames = info.frames_at(here - m.bias());
        assert_eq!(
            frames.last().map(|f| f.function.as_str()),
            Some(
                "nonstop_debuginfo::unwind::tests::own_process_modules_include_the_test_binary_with_its_function"
            )
        );
    }

    /// 8-byte words at addresses.
    struct Words(HashMap<u64, u64>);
    impl Memory for Words {
        fn read(
            &self,
            addr: u64,
            buf: &mut [u8],
        ) -> Result<(), nonstop_capture::capture::ReadError> {
            let w = self
                .0
                .get(&addr)
                .ok_or(nonstop_capture::capture::ReadError::NotCaptured)?;
            buf.copy_from_slice(w.to_le_bytes().get(..buf.len()).unwrap_or(&[]));
            Ok(())
        }
    }

    fn fp_regs(rip: u64, rsp: u64, rbp: u64) -> Registers {
        let mut regs = Registers::default();
        regs.gpr[REG_RIP as usize] = rip;
        regs.gpr[REG_RSP as usize] = rsp;
        regs.gpr[REG_RBP as usize] = rbp;
        regs
    }

    #[test]
    fn code_without_cfi_is_unwound_along_the_frame_pointer_chain() {
        let mem = Words(HashMap::from([
            (0x1010, 0x1040),
            (0x1018, 0xaaaa),
            (0x1040, 0),
            (0x1048, 0xbbbb),
        ]));
        let frames = Unwinder::default().unwind(&fp_regs(0x5000, 0x1000, 0x1010), &mem, 20);
        let addresses: Vec<(u64, bool)> = frames
            .iter()
            .map(|f| (f.address, f.is_return_address))
            .collect();
        assert_eq!(
            addresses,
            vec![(0x5000, false), (0xaaaa, true), (0xbbbb, true)]
        );
        // The limit holds.
        assert_eq!(
            Unwinder::default()
                .unwind(&fp_regs(0x5000, 0x1000, 0x1010), &mem, 2)
                .len(),
            2
        );
    }

    #[test]
    fn a_frame_pointer_loop_ends_the_walk() {
        // The saved rbp points at itself: after one step it is below the stack pointer.
        let mem = Words(HashMap::from([(0x1010, 0x1010), (0x1018, 0xaaaa)]));
        let frames = Unwinder::default().unwind(&fp_regs(0x5000, 0x1000, 0x1010), &mem, 20);
        assert_eq!(frames.len(), 2, "{frames:?}");
    }

    struct NoMemory;
    impl Memory for NoMemory {
        fn read(&self, _: u64, _: &mut [u8]) -> Result<(), nonstop_capture::capture::ReadError> {
            Err(nonstop_capture::capture::ReadError::NotCaptured)
        }
    }

    #[test]
    fn unwinding_without_memory_gives_only_the_first_frame() {
        let unwinder = Unwinder::from_proc_maps(None).unwrap();
        let mut regs = Registers::default();
        regs.gpr[REG_RIP as usize] =
            unwinding_without_memory_gives_only_the_first_frame as *const () as u64;
        regs.gpr[REG_RSP as usize] = 0x7fff_0000_0000;
        let frames = unwinder.unwind(&regs, &NoMemory, 20);
        assert_eq!(
            frames,
            vec![RawFrame {
                address: regs.gpr[REG_RIP as usize],
                is_return_address: false
            }]
        );
        assert!(unwinder.unwind(&regs, &NoMemory, 0).is_empty());
    }
}
