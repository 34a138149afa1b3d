//! The engine: the probe table read by the trap handler, arming and disarming, the trap
//! handler itself, limits and capture.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nonstop_capture::capture::{
    CaptureOutcome, CapturePlan, EntryRegisters, Memory, REG_RSP, ReadError, Registers,
    execute_with_entry,
};
use nonstop_capture::filter::{Filter, FilterResult, eval_filter_with_entry};

use crate::arch::asm;
use crate::arch::context::Context;
use crate::arch::fastpath::{self, FastFrame, FastRefusal, FastSite};
use crate::arch::site::{self, Emulation, SiteError};
use crate::backoff::{Sampling, SiteBudget};
use crate::entry;
use crate::limits::{Budget, Gcra};
use crate::quiescence;
use crate::ring::{RecordMeta, Ring};
use crate::signals;
use crate::slots::{self, Slots};
use crate::sys;
use crate::threads;

/// Most probes armed (or retiring) at once.
pub const MAX_PROBES: usize = 4096;
/// Cells of the address table; an address keeps its cell once armed (see `table_find`).
const TABLE_CELLS: usize = 16384;

const FREE: u8 = 0;
const ARMED: u8 = 1;
const RETIRED: u8 = 2;

const REASON_NONE: u8 = 0;
const REASON_MAX_HITS: u8 = 1;
const REASON_TIME_CAP: u8 = 2;

/// A probe's state, shared with the trap handler. All fields are atomics; the arming
/// thread writes the configuration before publishing the address in the table (release)
/// and the handler reads it after finding the address (acquire).
struct ProbeState {
    addr: AtomicU64,
    id: AtomicU64,
    status: AtomicU8,
    orig_byte: AtomicU8,
    emulation: AtomicU32,
    target: AtomicU64,
    next_ip: AtomicU64,
    slot: AtomicU64,
    plan: AtomicPtr<CapturePlan>,
    /// The condition checked before capturing (null: none).
    filter: AtomicPtr<Filter>,
    max_hits: AtomicU64,
    time_cap_ns: AtomicU64,
    rate: Gcra,
    in_flight: AtomicU32,
    traps: AtomicU64,
    hits: AtomicU64,
    dropped_rate: AtomicU64,
    dropped_budget: AtomicU64,
    dropped_full: AtomicU64,
    dropped_nested: AtomicU64,
    filtered: AtomicU64,
    filter_errors: AtomicU64,
    slowest_ns: AtomicU64,
    /// The last timed fast-path hit's handler time, charged for the untimed ones (see
    /// [`TIME_EVERY`]).
    hit_ns: AtomicU64,
    done: AtomicBool,
    reason: AtomicU8,
    reason_ns: AtomicU64,
    /// Only count matching traps (no record): see [`ProbeSpec::count_only`].
    count_only: AtomicBool,
    /// Whether the budget has the site out, and its back-off.
    budget: SiteBudget,
    /// The site is patched with the fast path's `jmp` (not just an `int3`).
    fast: AtomicBool,
    /// Where the `int3` path resumes a trapped thread instead of performing the instruction
    /// itself: the trampoline's relocated span (0: none). Set for fast-path sites before
    /// their `int3` is written, so no trapped thread ever resumes inside the span.
    tramp_resume: AtomicU64,
    /// The fast-path span's original bytes (little-endian in 3 words) and length.
    fast_orig: [AtomicU64; 3],
    fast_len: AtomicU8,
    /// A companion probe: it records the registers at a function's entry (see
    /// [`ProbeSpec::records_entry`]) and captures nothing.
    records_entry: AtomicBool,
    /// A companion's epoch: moves whenever an entry may have gone unrecorded, so that no
    /// older record matches a frame any more (see `entry`).
    entry_epoch: AtomicU64,
    /// The companion whose records this probe's plan reads: its state index + 1 (0: none)
    /// and its id (the state may have been reused for another probe since).
    entry_from: AtomicU32,
    entry_from_id: AtomicU64,
    /// This probe's frame's CFA rule: `CFA = reg + offset`.
    entry_cfa_reg: AtomicU32,
    entry_cfa_offset: AtomicU64,
    /// On the probe the address table points at: the other probe armed at the same
    /// address, its state index + 1 (0: none). A companion may share its address with one
    /// probe that is not a companion (a line probe at a function's entry); the trap path
    /// runs both, the companion first, and performs the instruction once.
    partner: AtomicU32,
    /// This probe is the second at its address (the table points at the first, whose
    /// `partner` it is): it patches nothing, and the first's site budget is the site's.
    is_partner: AtomicBool,
}

impl ProbeState {
    const fn new() -> ProbeState {
        ProbeState {
            addr: AtomicU64::new(0),
            id: AtomicU64::new(0),
            status: AtomicU8::new(FREE),
            orig_byte: AtomicU8::new(0),
            emulation: AtomicU32::new(0),
            target: AtomicU64::new(0),
            next_ip: AtomicU64::new(0),
            slot: AtomicU64::new(0),
            plan: AtomicPtr::new(std::ptr::null_mut()),
            filter: AtomicPtr::new(std::ptr::null_mut()),
            max_hits: AtomicU64::new(u64::MAX),
            time_cap_ns: AtomicU64::new(u64::MAX),
            rate: Gcra::new(),
            in_flight: AtomicU32::new(0),
            traps: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            dropped_rate: AtomicU64::new(0),
            dropped_budget: AtomicU64::new(0),
            dropped_full: AtomicU64::new(0),
            dropped_nested: AtomicU64::new(0),
            filtered: AtomicU64::new(0),
            filter_errors: AtomicU64::new(0),
            slowest_ns: AtomicU64::new(0),
            hit_ns: AtomicU64::new(0),
            done: AtomicBool::new(false),
            reason: AtomicU8::new(REASON_NONE),
            reason_ns: AtomicU64::new(0),
            count_only: AtomicBool::new(false),
            budget: SiteBudget::new(),
            fast: AtomicBool::new(false),
            tramp_resume: AtomicU64::new(0),
            fast_orig: [const { AtomicU64::new(0) }; 3],
            fast_len: AtomicU8::new(0),
            records_entry: AtomicBool::new(false),
            entry_epoch: AtomicU64::new(0),
            entry_from: AtomicU32::new(0),
            entry_from_id: AtomicU64::new(0),
            entry_cfa_reg: AtomicU32::new(0),
            entry_cfa_offset: AtomicU64::new(0),
            partner: AtomicU32::new(0),
            is_partner: AtomicBool::new(false),
        }
    }

    /// The fast-path span's original bytes.
    fn fast_orig_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(24);
        for w in &self.fast_orig {
            b.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        b.truncate(self.fast_len.load(Ordering::Relaxed) as usize);
        b
    }

    fn set_fast_orig(&self, bytes: &[u8]) {
        let mut padded = [0u8; 24];
        let n = bytes.len().min(24);
        padded[..n].copy_from_slice(&bytes[..n]);
        for (w, chunk) in self.fast_orig.iter().zip(padded.chunks_exact(8)) {
            let mut a = [0u8; 8];
            a.copy_from_slice(chunk);
            w.store(u64::from_le_bytes(a), Ordering::Relaxed);
        }
        self.fast_len.store(n as u8, Ordering::Relaxed);
    }

    fn reset_counters(&self) {
        for c in [
            &self.traps,
            &self.hits,
            &self.dropped_rate,
            &self.dropped_budget,
            &self.dropped_full,
            &self.dropped_nested,
            &self.filtered,
            &self.filter_errors,
            &self.slowest_ns,
            &self.hit_ns,
            &self.reason_ns,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        SLOT_TRAPS.reset(self.index());
        SLOT_COUNTED.reset(self.index());
        SLOT_HANDLER_NS.reset(self.index());
        self.done.store(false, Ordering::Relaxed);
        self.reason.store(REASON_NONE, Ordering::Relaxed);
    }

    /// This probe's index in `STATES`.
    fn index(&self) -> usize {
        (self as *const ProbeState as usize - STATES.as_ptr() as usize)
            / std::mem::size_of::<ProbeState>()
    }

    /// Traps so far: by threads in a guard slot, and by the others.
    fn traps(&self) -> u64 {
        let i = self.index();
        self.traps
            .load(Ordering::Relaxed)
            .wrapping_add(SLOT_TRAPS.sum(i))
    }

    /// Handler time of the traps so far, ns.
    fn handler_ns(&self) -> u64 {
        SLOT_HANDLER_NS.sum(self.index())
    }

    fn stats(&self, armed: bool) -> ProbeStats {
        let r = Ordering::Relaxed;
        ProbeStats {
            armed,
            traps: self.traps(),
            hits: self.hits.load(r),
            dropped_rate: self.dropped_rate.load(r),
            dropped_budget: self.dropped_budget.load(r),
            dropped_full: self.dropped_full.load(r),
            dropped_nested: self.dropped_nested.load(r),
            filtered: self.filtered.load(r),
            filter_errors: self.filter_errors.load(r),
            slowest_hit: Duration::from_nanos(self.slowest_ns.load(r)),
            // Counted only by guarded threads (a nested trap is dropped).
            counted: SLOT_COUNTED.sum(self.index()),
            sampling: self.budget.stats(sys::now_ns()),
            fast_path: FastPath::default(),
            done: self.done.load(r),
            disarm_reason: match self.reason.load(r) {
                REASON_MAX_HITS => Some(DisarmReason::MaxHits),
                REASON_TIME_CAP => Some(DisarmReason::TimeCap {
                    took: Duration::from_nanos(self.reason_ns.load(r)),
                }),
                _ => None,
            },
        }
    }

    /// Marks the probe done with a reason (first reason wins).
    fn finish(&self, reason: u8, ns: u64) {
        if self
            .reason
            .compare_exchange(REASON_NONE, reason, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.reason_ns.store(ns, Ordering::Relaxed);
        }
        self.done.store(true, Ordering::Release);
    }
}

static STATES: [ProbeState; MAX_PROBES] = [const { ProbeState::new() }; MAX_PROBES];
static KEYS: [AtomicU64; TABLE_CELLS] = [const { AtomicU64::new(0) }; TABLE_CELLS];
/// State index + 1, or 0: "was a probe, now retired: re-run the original instruction".
static VALS: [AtomicU32; TABLE_CELLS] = [const { AtomicU32::new(0) }; TABLE_CELLS];
static ENGINE: AtomicPtr<Engine> = AtomicPtr::new(std::ptr::null_mut());
static FORKED: AtomicBool = AtomicBool::new(false);

#[unsafe(link_section = "nonstop_probe_trap")]
fn hash(addr: u64) -> usize {
    (addr.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as usize % TABLE_CELLS
}

/// The cell of `addr`, if it was ever armed. Lock-free; cells are never emptied, so a
/// trap that arrives late for a retired probe is still recognised as ours.
#[unsafe(link_section = "nonstop_probe_trap")]
fn table_find(addr: u64) -> Option<usize> {
    if addr == 0 {
        return None;
    }
    let start = hash(addr);
    for k in 0..TABLE_CELLS {
        let i = (start + k) % TABLE_CELLS;
        let key = KEYS.get(i)?.load(Ordering::Acquire);
        if key == addr {
            return Some(i);
        }
        if key == 0 {
            return None;
        }
    }
    None
}

/// The cell for `addr`, claiming an empty one (arming thread only). Keeps a quarter free.
fn table_cell(addr: u64, used: &mut usize) -> Option<usize> {
    if let Some(i) = table_find(addr) {
        return Some(i);
    }
    if *used >= TABLE_CELLS * 3 / 4 {
        return None;
    }
    let start = hash(addr);
    for k in 0..TABLE_CELLS {
        let i = (start + k) % TABLE_CELLS;
        if KEYS[i].load(Ordering::Relaxed) == 0 {
            VALS[i].store(0, Ordering::Relaxed);
            KEYS[i].store(addr, Ordering::Release);
            *used += 1;
            return Some(i);
        }
    }
    None
}

/// A probe's identity (unique for the life of the process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProbeId(pub u64);

impl std::fmt::Display for ProbeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "probe {}", self.0)
    }
}

/// A rate limit: `per_second` hits on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Average hits per second.
    pub per_second: f64,
    /// Hits allowed back to back.
    pub burst: u32,
}

/// What to arm.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    /// The instruction address (must be the start of an instruction).
    pub address: u64,
    /// What to capture at each hit.
    pub plan: Arc<CapturePlan>,
    /// Stop capturing after this many hits (then `ProbeStats::done`).
    pub max_hits: Option<u64>,
    /// Drop hits above this rate.
    pub rate: Option<RateLimit>,
    /// A hit whose capture takes longer marks the probe for disarm (default 10 ms).
    pub time_cap: Duration,
    /// A condition checked in the trap path before anything else: a hit where it is false
    /// (or cannot be evaluated) costs the trap and the few reads the condition needs.
    pub filter: Option<Arc<Filter>>,
    /// Count the traps where the filter holds (in [`ProbeStats::counted`]) and capture
    /// nothing: no record, no rate limit, exact at any rate the budget allows.
    pub count_only: bool,
    /// The bounds of the function holding `address` (from symbols or CFI): the fast path
    /// decodes the whole function to prove a `jmp` safe there; without them, `int3`.
    pub function: Option<std::ops::Range<u64>>,
    /// A companion probe at a function's entry: at each hit it records the general
    /// registers, the low halves of xmm0–7 and the frame's CFA (`rsp + 8`) into the
    /// calling thread's entry table, and captures nothing (no record, no filter, no rate;
    /// the budget applies). Line probes of the function read them ([`ProbeSpec::entry`]).
    pub records_entry: bool,
    /// Where this probe's plan reads register values at function entry
    /// (`LocOp::EntryReg`): the function's companion, and this frame's CFA rule.
    pub entry: Option<EntrySource>,
}

/// Where a line probe finds its frame's values at function entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntrySource {
    /// The companion probe at the function's entry (armed with
    /// [`ProbeSpec::records_entry`]).
    pub companion: ProbeId,
    /// The CFA rule at the line probe's address (from CFI): `CFA = reg + offset`.
    pub cfa_reg: u16,
    /// See `cfa_reg`.
    pub cfa_offset: i64,
}

impl ProbeSpec {
    /// A spec with no limits but the default time cap.
    pub fn new(address: u64, plan: Arc<CapturePlan>) -> ProbeSpec {
        ProbeSpec {
            address,
            plan,
            max_hits: None,
            rate: None,
            time_cap: DEFAULT_TIME_CAP,
            filter: None,
            count_only: false,
            function: None,
            records_entry: false,
            entry: None,
        }
    }
}

/// What one trap is taken to cost the kernel when it cannot be measured, ns.
const FALLBACK_TRAP_COST_NS: u64 = 2_500;
/// Calibration: rounds of traps, and traps per round (the fastest round counts).
const CALIBRATION_ROUNDS: usize = 5;

/// How long [`Engine::wait`] sleeps before it looks for work again (see
/// `Engine::wake_if_sleeping`).
const RECHECK: Duration = Duration::from_millis(2);
const CALIBRATION_TRAPS: usize = 20;

/// The per-hit time cap of DESIGN.md's defaults.
pub const DEFAULT_TIME_CAP: Duration = Duration::from_millis(10);

/// Why a probe asks to be disarmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisarmReason {
    /// It reached its max hits.
    MaxHits,
    /// One hit's capture took longer than the time cap.
    TimeCap {
        /// How long that hit took.
        took: Duration,
    },
}

impl std::fmt::Display for DisarmReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DisarmReason::MaxHits => write!(f, "reached its max hits"),
            DisarmReason::TimeCap { took } => {
                write!(f, "one hit took {took:?}, over the per-hit time cap")
            }
        }
    }
}

/// Counters of one probe. `dropped_*` should be 0; when greater, hits were lost for that
/// reason (`dropped_budget` > 0 means the rule is `rate-limited`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ProbeStats {
    /// Still armed.
    pub armed: bool,
    /// Executions of the probe site (every trap).
    pub traps: u64,
    /// Hits captured into the ring.
    pub hits: u64,
    /// Hits dropped by the probe's rate limit.
    pub dropped_rate: u64,
    /// Hits dropped because the global trap budget was exceeded.
    pub dropped_budget: u64,
    /// Hits dropped because the ring was full (or no capture stack was free).
    pub dropped_full: u64,
    /// Hits not captured because they happened inside the trap handler on the same thread.
    pub dropped_nested: u64,
    /// Traps where the probe's filter was false (no capture, not a hit).
    pub filtered: u64,
    /// Traps where the probe's filter could not be evaluated (counted as false).
    pub filter_errors: u64,
    /// The slowest capture.
    pub slowest_hit: Duration,
    /// Traps counted by a [`ProbeSpec::count_only`] probe (where its filter held).
    pub counted: u64,
    /// How the budget has sampled the site: taken out (original bytes back) when its
    /// traps exceed the budget or its rate limit, put back after a back-off.
    pub sampling: Sampling,
    /// The probe stopped capturing (max hits or time cap); the agent should disarm it.
    pub done: bool,
    /// Why it is done.
    pub disarm_reason: Option<DisarmReason>,
    /// Whether the site got the fast path (a `jmp` to a trampoline), or why not.
    pub fast_path: FastPath,
}

/// Whether a probe runs on the fast path: its site patched with a 5-byte `jmp` to a
/// trampoline that calls the hit path without a trap. `Display` reads
/// `fast path: yes` / `fast path: no — a branch at 0x… lands inside the patched bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastPath {
    /// Patched with a `jmp`; `span` bytes were displaced into the trampoline.
    Yes {
        /// The trampoline's address.
        trampoline: u64,
        /// Bytes of the patched span.
        span: u8,
    },
    /// On the `int3` path, for this reason.
    No(FastRefusal),
}

impl Default for FastPath {
    fn default() -> Self {
        FastPath::No(FastRefusal::Off)
    }
}

impl std::fmt::Display for FastPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FastPath::Yes { .. } => write!(f, "fast path: yes"),
            FastPath::No(reason) => write!(f, "fast path: no — {reason}"),
        }
    }
}

/// One captured hit, as the agent thread drains it.
#[derive(Debug, Clone, Copy)]
pub struct Hit<'a> {
    /// The probe.
    pub probe: ProbeId,
    /// CLOCK_MONOTONIC at the hit, in ns.
    pub time_ns: u64,
    /// The thread id (`gettid`).
    pub tid: u32,
    /// The capture record (`nonstop_capture::capture::CapturedMemory::parse` reads it).
    pub record: &'a [u8],
}

/// Why a probe cannot be armed or disarmed; the message is for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ArmError {
    /// The engine could not start.
    Engine(EngineError),
    /// The address is not in mapped memory.
    NotMapped {
        /// The address.
        address: u64,
    },
    /// The address is not in executable memory.
    NotCode {
        /// The address.
        address: u64,
    },
    /// The bytes there are not a valid instruction.
    Undecodable {
        /// The address.
        address: u64,
    },
    /// The instruction cannot be probed.
    Unsupported {
        /// The address.
        address: u64,
        /// The instruction as text.
        instruction: String,
        /// Why.
        reason: &'static str,
    },
    /// Relocating the instruction out of line failed.
    Relocation {
        /// The address.
        address: u64,
        /// The instruction as text.
        instruction: String,
        /// Details.
        detail: String,
    },
    /// No memory for out-of-line slots within ±2 GB of the address.
    NoSlotNearby {
        /// The address.
        address: u64,
    },
    /// A probe is already armed there.
    AlreadyArmed {
        /// The address.
        address: u64,
    },
    /// Too many probes.
    TooManyProbes {
        /// The limit.
        max: usize,
    },
    /// Writing the code failed.
    Patch {
        /// The address.
        address: u64,
        /// The system's error.
        error: String,
    },
    /// No such armed probe.
    UnknownProbe(ProbeId),
    /// This process is a forked child of the one that armed probes; they were disarmed here.
    Forked,
}

impl std::fmt::Display for ArmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArmError::Engine(e) => write!(f, "probe engine unavailable: {e}"),
            ArmError::NotMapped { address } => {
                write!(f, "cannot probe {address:#x}: nothing is mapped there")
            }
            ArmError::NotCode { address } => {
                write!(f, "cannot probe {address:#x}: not in executable memory")
            }
            ArmError::Undecodable { address } => {
                write!(f, "cannot probe {address:#x}: no valid instruction there")
            }
            ArmError::Unsupported {
                address,
                instruction,
                reason,
            } => write!(
                f,
                "cannot probe {address:#x}: instruction `{instruction}` cannot run out of line ({reason})"
            ),
            ArmError::Relocation {
                address,
                instruction,
                detail,
            } => write!(
                f,
                "cannot probe {address:#x}: cannot relocate `{instruction}`: {detail}"
            ),
            ArmError::NoSlotNearby { address } => write!(
                f,
                "cannot probe {address:#x}: no free address space within ±2 GB for its out-of-line copy"
            ),
            ArmError::AlreadyArmed { address } => {
                write!(f, "a probe is already armed at {address:#x}")
            }
            ArmError::TooManyProbes { max } => write!(f, "too many probes (at most {max} at once)"),
            ArmError::Patch { address, error } => write!(
                f,
                "cannot write code at {address:#x} through /proc/self/mem: {error} (a hardened kernel may forbid it)"
            ),
            ArmError::UnknownProbe(id) => write!(f, "{id} is not armed"),
            ArmError::Forked => write!(f, "probes cannot be changed in a forked child process"),
        }
    }
}

impl std::error::Error for ArmError {}

/// Why the engine could not start.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EngineError {
    /// `/proc/self/mem` could not be opened.
    ProcMem(String),
    /// The signal handlers could not be installed.
    Signals(String),
    /// Memory for the ring or capture stacks could not be mapped.
    OutOfMemory,
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineError::ProcMem(e) => write!(f, "cannot open /proc/self/mem: {e}"),
            EngineError::Signals(e) => write!(f, "cannot install signal handlers: {e}"),
            EngineError::OutOfMemory => write!(f, "cannot map memory for the hit buffer"),
        }
    }
}

impl std::error::Error for EngineError {}

/// Engine settings, fixed at the first [`Engine::init`].
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Records in the hit ring (rounded up to a power of two).
    pub ring_slots: usize,
    /// Bytes per record.
    pub ring_slot_size: usize,
    /// Share of one core the trap handler may use over `budget_window` (DESIGN: 1%).
    pub budget: f64,
    /// The budget's sliding window.
    pub budget_window: Duration,
    /// How long a retired slot waits before reuse, after no handler is using it.
    pub grace: Duration,
    /// Captures that may run at once (each on its own preallocated stack).
    pub capture_stacks: u32,
    /// Bytes of each capture stack.
    pub capture_stack_size: usize,
    /// Patch a `jmp` to a trampoline where that is provably safe (see [`FastPath`]);
    /// default: on, unless `NONSTOP_FAST_PATH=0` is in the environment.
    pub fast_path: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            ring_slots: 256,
            ring_slot_size: 64 * 1024,
            budget: 0.01,
            budget_window: Duration::from_secs(1),
            grace: Duration::from_millis(100),
            capture_stacks: 16,
            capture_stack_size: 256 * 1024,
            fast_path: std::env::var("NONSTOP_FAST_PATH")
                .ok()
                .is_none_or(|v| v != "0"),
        }
    }
}

/// Preallocated stacks the capture runs on (the signal stack may be small).
struct StackPool {
    base: u64,
    stride: u64,
    size: u64,
    free: AtomicU64,
}

impl StackPool {
    fn new(count: u32, size: usize) -> Option<StackPool> {
        let count = count.clamp(1, 64);
        let size = (size as u64).max(64 * 1024).next_multiple_of(4096);
        let stride = size + 4096;
        let base = sys::mmap_anon((stride * count as u64) as usize)?;
        for i in 0..count as u64 {
            sys::protect_none(base + i * stride, 4096);
        }
        let free = if count == 64 {
            u64::MAX
        } else {
            (1u64 << count) - 1
        };
        Some(StackPool {
            base,
            stride,
            size,
            free: AtomicU64::new(free),
        })
    }

    fn take(&self) -> Option<u32> {
        let mut m = self.free.load(Ordering::Acquire);
        loop {
            if m == 0 {
                return None;
            }
            let bit = m.trailing_zeros();
            match self.free.compare_exchange_weak(
                m,
                m & !(1 << bit),
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(bit),
                Err(now) => m = now,
            }
        }
    }

    fn top(&self, i: u32) -> u64 {
        self.base + i as u64 * self.stride + 4096 + self.size
    }

    fn give(&self, i: u32) {
        self.free.fetch_or(1 << i, Ordering::Release);
    }
}

/// How many threads can be inside the hit path at once with a guard slot of their own
/// (more are served, dropped as nested).
const GUARDS: usize = 64;

/// Reentrancy guard: thread pointers of threads inside the hit path, one per slot.
static ACTIVE: [AtomicU64; GUARDS] = [const { AtomicU64::new(0) }; GUARDS];

/// How many times each guard slot was left, moved by its owner only: a probe retired
/// while a slot was taken is free to reclaim once that slot's count moves (see
/// [`guard_snapshot`]). This stands for a shared in-flight count, two locked instructions
/// a hit fewer.
static LEFT: [AtomicU64; GUARDS] = [const { AtomicU64::new(0) }; GUARDS];

/// A hot counter of every probe, one per guard slot: written only by the slot's owner
/// (a plain load and store, no locked instruction), summed by readers.
struct SlotCounter([[AtomicU64; MAX_PROBES]; GUARDS]);

impl SlotCounter {
    const fn new() -> SlotCounter {
        SlotCounter([const { [const { AtomicU64::new(0) }; MAX_PROBES] }; GUARDS])
    }

    /// The count of probe `idx` in slot `guard`.
    #[unsafe(link_section = "nonstop_probe_trap")]
    fn get(&self, guard: usize, idx: usize) -> u64 {
        self.0
            .get(guard)
            .and_then(|row| row.get(idx))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Adds one for probe `idx`; `guard` is the caller's own slot.
    #[unsafe(link_section = "nonstop_probe_trap")]
    fn add(&self, guard: usize, idx: usize) {
        self.add_n(guard, idx, 1);
    }

    /// Adds `n` for probe `idx`; `guard` is the caller's own slot.
    #[unsafe(link_section = "nonstop_probe_trap")]
    fn add_n(&self, guard: usize, idx: usize, n: u64) {
        if let Some(c) = self.0.get(guard).and_then(|row| row.get(idx)) {
            c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
        }
    }

    fn sum(&self, idx: usize) -> u64 {
        self.0
            .iter()
            .filter_map(|row| row.get(idx))
            .fold(0u64, |n, c| n.wrapping_add(c.load(Ordering::Relaxed)))
    }

    /// Only when no thread can be inside the probe (armed anew after quarantine).
    fn reset(&self, idx: usize) {
        for c in self.0.iter().filter_map(|row| row.get(idx)) {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// A fast-path hit whose capture follows no pointer is timed once in this many traps of
/// a thread (the first included); the others are charged the last timed one's handler
/// time. A clock read is ~10 ns here, a tenth of such a hit. Hits that follow pointers,
/// and every `int3` hit, are always timed.
const TIME_EVERY: u64 = 8;

/// Traps of each probe counted by guarded threads (the rest are in `ProbeState::traps`).
static SLOT_TRAPS: SlotCounter = SlotCounter::new();
/// Matching traps of each count-only probe, by guarded threads.
static SLOT_COUNTED: SlotCounter = SlotCounter::new();
/// Handler time of each probe's traps, ns (every trap that reaches the handler is guarded).
static SLOT_HANDLER_NS: SlotCounter = SlotCounter::new();

/// Handler time (with the kernel's part of `int3` traps) not yet added to the global
/// budget, per guard slot, moved by its owner only: added once it reaches
/// [`CHARGE_EVERY_NS`], a locked instruction every few dozen fast hits instead of one
/// each. A locked instruction after a hit's stores waits for them to reach the cache
/// (~20 ns a fast hit here). The budget then lags by at most `GUARDS` times that.
static PENDING_NS: [AtomicU64; GUARDS] = [const { AtomicU64::new(0) }; GUARDS];

/// See [`PENDING_NS`]: 64 slots lag by 256 µs at most, 2.6 % of the default budget's
/// 10 ms a second.
const CHARGE_EVERY_NS: u64 = 4_000;

/// What [`guard_enter`] found.
enum Guard {
    /// The thread holds this slot until [`guard_exit`].
    Entered(usize),
    /// The thread is already inside the hit path (a probe on something it calls, or a
    /// signal handler that interrupted it).
    Nested,
    /// Every slot is taken.
    Full,
}

#[unsafe(link_section = "nonstop_probe_trap")]
fn thread_pointer() -> u64 {
    let tp: u64;
    // SAFETY: on x86_64 Linux, fs:0 holds the thread control block's own address (glibc
    // and musl); reading it has no side effects and needs no TLS initialisation.
    unsafe {
        std::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly, preserves_flags))
    };
    tp
}

/// Takes a guard slot for this thread. The taking is a sequentially consistent locked
/// instruction, before the caller reads its probe's status: a retirer that stores the
/// status and then takes a [`guard_snapshot`] either sees this slot taken or is seen to
/// have retired the probe.
#[unsafe(link_section = "nonstop_probe_trap")]
fn guard_enter(tp: u64) -> Guard {
    if ACTIVE.iter().any(|c| c.load(Ordering::Acquire) == tp) {
        return Guard::Nested;
    }
    let start = (tp >> 6) as usize % GUARDS;
    (0..GUARDS)
        .map(|k| (start + k) % GUARDS)
        .find(|&i| {
            ACTIVE[i]
                .compare_exchange(0, tp, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
        })
        .map_or(Guard::Full, Guard::Entered)
}

#[unsafe(link_section = "nonstop_probe_trap")]
fn guard_exit(i: usize) {
    if let (Some(left), Some(c)) = (LEFT.get(i), ACTIVE.get(i)) {
        // Only the owner writes `LEFT[i]`; the release orders the hit's reads before it.
        left.store(
            left.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Release,
        );
        c.store(0, Ordering::Release);
    }
}

/// Each taken guard slot's leave count (`None`: free), read after a probe's status was
/// stored as retired: once every taken slot's count has moved ([`guard_moved`]), no thread
/// that saw the probe armed is still inside it.
fn guard_snapshot() -> [Option<u64>; GUARDS] {
    std::array::from_fn(|i| {
        // The count first: an owner leaving in between moves it past what was read.
        let left = LEFT[i].load(Ordering::Acquire);
        (ACTIVE[i].load(Ordering::SeqCst) != 0).then_some(left)
    })
}

fn guard_moved(snapshot: &[Option<u64>; GUARDS]) -> bool {
    snapshot
        .iter()
        .zip(LEFT.iter())
        .all(|(seen, now)| seen.is_none_or(|n| now.load(Ordering::Acquire) != n))
}

/// Fault-safe reads of this process's memory: a guarded copy whose faults the SIGSEGV/SIGBUS
/// handler turns into `Err(Fault)`, or `process_vm_readv` when the handlers are not installed.
#[derive(Debug, Clone, Copy, Default)]
pub struct SafeMemory;

impl Memory for SafeMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        if buf.is_empty() {
            return Ok(());
        }
        if addr < 4096 || addr.checked_add(buf.len() as u64).is_none() {
            return Err(ReadError::Fault);
        }
        let ok = if signals::installed() {
            // SAFETY: `buf` is an exclusively borrowed buffer of `buf.len()` bytes; the source
            // may be anything: faults are caught by the installed handler.
            unsafe { asm::guarded_copy(buf.as_mut_ptr(), addr as *const u8, buf.len()) }
        } else {
            sys::process_vm_read(addr, buf)
        };
        if ok { Ok(()) } else { Err(ReadError::Fault) }
    }
}

/// Reads through `process_vm_readv`: for hits where a fault in the guarded copy could not
/// be handled safely (see `Context::faults_unsafe`).
struct SyscallMemory;

impl Memory for SyscallMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        if buf.is_empty() {
            return Ok(());
        }
        if addr < 4096 || addr.checked_add(buf.len() as u64).is_none() {
            return Err(ReadError::Fault);
        }
        if sys::process_vm_read(addr, buf) {
            Ok(())
        } else {
            Err(ReadError::Fault)
        }
    }
}

#[unsafe(link_section = "nonstop_probe_trap")]
fn write_u64_guarded(addr: u64, v: u64) -> bool {
    let bytes = v.to_le_bytes();
    // SAFETY: writes 8 bytes to the interrupted thread's stack below its stack pointer,
    // exactly what the emulated push/call would write; a fault returns false.
    unsafe { asm::guarded_copy(addr as *mut u8, bytes.as_ptr(), 8) }
}

struct Job<'a> {
    /// Which reads may raise SIGSEGV/SIGBUS (see `Context::faults_unsafe`).
    faults: Faults,
    plan: *const CapturePlan,
    /// Borrowed, not copied: ~400 bytes a hit would otherwise move (a `memcpy` call).
    regs: &'a Registers,
    /// The frame's register values at function entry, when the plan reads them and its
    /// companion recorded this frame.
    entry: Option<EntryRegisters>,
    out: *mut u8,
    out_len: usize,
    outcome: CaptureOutcome,
}

unsafe extern "C" fn run_job(arg: *mut u8) {
    // SAFETY: `arg` is the `Job` on the handler's stack passed by `capture`, alive and
    // exclusively ours for this call.
    let job = unsafe { &mut *arg.cast::<Job>() };
    // SAFETY: the plan is kept alive by the probe (freed only after quarantine), and `out`
    // is the reserved ring slot of `out_len` bytes, exclusive until commit.
    let (plan, out) = unsafe {
        (
            &*job.plan,
            std::slice::from_raw_parts_mut(job.out, job.out_len),
        )
    };
    let entry = job.entry.as_ref();
    job.outcome = execute_with_entry(plan, job.regs, entry, &HitMemory::new(job.faults), out);
}

/// Whether a hit's guarded reads may fault.
#[derive(Debug, Clone, Copy)]
enum Faults {
    /// Known from the signal context: `true` when a fault could not be handled safely.
    Unsafe(bool),
    /// Reads inside `[lo, hi)`, the interrupted thread's own stack around its stack
    /// pointer `rsp`, cannot fault; whether others may is found when one comes: the
    /// kernel is asked whether the thread blocks SIGSEGV or SIGBUS, and the thread's
    /// alternate signal stack (asked of the kernel once per thread) says whether it runs
    /// on it.
    Outside { lo: u64, hi: u64, rsp: u64 },
}

/// The memory a hit reads: guarded copies where faults are safe, `process_vm_readv`
/// where they are not.
struct HitMemory {
    faults: Faults,
    /// For `Faults::Outside`: a fault could not be handled safely, once asked.
    asked: std::cell::Cell<Option<bool>>,
}

impl HitMemory {
    fn new(faults: Faults) -> HitMemory {
        HitMemory {
            faults,
            asked: std::cell::Cell::new(None),
        }
    }

    fn faults_unsafe(&self, addr: u64, len: usize) -> bool {
        match self.faults {
            Faults::Unsafe(known) => known,
            Faults::Outside { lo, hi, rsp } => {
                if lo <= addr && addr.checked_add(len as u64).is_some_and(|end| end <= hi) {
                    return false;
                }
                if let Some(known) = self.asked.get() {
                    return known;
                }
                let tp = thread_pointer();
                let not_safe = sys::fault_signals_blocked()
                    || threads::on_alternate_stack(tp, threads::tid(tp), rsp);
                self.asked.set(Some(not_safe));
                not_safe
            }
        }
    }
}

impl Memory for HitMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        if self.faults_unsafe(addr, buf.len()) {
            SyscallMemory.read(addr, buf)
        } else {
            SafeMemory.read(addr, buf)
        }
    }
}

struct Retired {
    id: u64,
    idx: usize,
    at: Instant,
    /// The guard slots taken when the probe's status was stored as retired.
    inside: [Option<u64>; GUARDS],
}

/// The out-of-line slot of a site. A slot keeps its code for as long as the site's bytes
/// are the same, so a thread that is preempted inside a slot (on return from the handler,
/// a common preemption point) finds the same instructions there however long it waits;
/// slots are rewritten only when a site's bytes changed, after a long quarantine.
struct SiteSlot {
    slot: u64,
    bytes: [u8; 16],
}

struct Arming {
    mem_fd: RawFd,
    next_id: u64,
    live: HashMap<u64, (usize, usize)>,
    finished: HashMap<u64, ProbeStats>,
    free: Vec<usize>,
    quarantine: Vec<Retired>,
    slots: Slots,
    site_slots: HashMap<u64, SiteSlot>,
    /// Slots of sites whose bytes changed, with when they were replaced.
    stale_slots: Vec<(u64, Instant)>,
    table_used: usize,
    /// Trampolines of fast-path sites: never unmapped or rewritten while their site's bytes
    /// are the same, so a thread preempted inside one always finds the same code.
    tramps: Slots,
    site_tramps: HashMap<u64, SiteTramp>,
    /// The fast-path outcome of each live probe.
    fast_status: HashMap<u64, FastPath>,
    /// The function bounds each live probe was armed with (for a later fast-path check).
    functions: HashMap<u64, std::ops::Range<u64>>,
}

/// A site's trampoline, kept for the life of the process.
struct SiteTramp {
    tramp: u64,
    /// The span's original bytes it was built for.
    orig: Vec<u8>,
    /// Offset of the relocated span (where the `int3` path resumes).
    displaced: usize,
}

/// The process-global probe engine. See the crate docs.
pub struct Engine {
    config: EngineConfig,
    ring: Ring,
    budget: Budget,
    stacks: StackPool,
    sync_core: bool,
    arming: Mutex<Arming>,
    /// The eventfd the agent thread sleeps on (-1: none, it then naps).
    wake_fd: RawFd,
    /// The agent thread is (about to be) asleep in [`Engine::wait`].
    sleeping: AtomicBool,
    /// The eventfd the budget's thread sleeps on (-1: none; the agent thread then does the
    /// budget's work).
    out_fd: RawFd,
    /// The budget's thread runs.
    budget_thread: AtomicBool,
    /// Requests to take a site out since start (the agent compares with what it saw).
    out_requests: AtomicU64,
    out_requests_seen: AtomicU64,
    /// The kernel's cost of one trap and return, ns (measured at start).
    trap_cost_ns: AtomicU64,
    /// How trampolines save the vector registers (None: no fast path).
    vectors: Option<fastpath::VectorSave>,
}

static CELL: OnceLock<Result<Engine, EngineError>> = OnceLock::new();

impl Engine {
    /// The engine, started with the default settings on first use.
    pub fn get() -> Result<&'static Engine, EngineError> {
        Engine::init(EngineConfig::default())
    }

    /// The engine if it has been started (and started well); never starts it. For code
    /// that only wakes or asks, and must not start an engine with the default settings.
    pub fn running() -> Option<&'static Engine> {
        CELL.get().and_then(|r| r.as_ref().ok())
    }

    /// The engine, started with `config` if this is the first call (later calls return the
    /// running engine and ignore `config`).
    pub fn init(config: EngineConfig) -> Result<&'static Engine, EngineError> {
        let r = CELL.get_or_init(|| Engine::start(config));
        match r {
            Ok(e) => {
                ENGINE.store(e as *const Engine as *mut Engine, Ordering::Release);
                static CALIBRATED: std::sync::Once = std::sync::Once::new();
                CALIBRATED.call_once(|| {
                    threads::find_tid_offset(thread_pointer);
                    sys::measure_tsc();
                    e.calibrate()
                });
                Ok(e)
            }
            Err(e) => Err(e.clone()),
        }
    }

    fn start(config: EngineConfig) -> Result<Engine, EngineError> {
        let mem_fd = sys::open_proc_self_mem().map_err(|e| EngineError::ProcMem(e.to_string()))?;
        let ring =
            Ring::new(config.ring_slots, config.ring_slot_size).ok_or(EngineError::OutOfMemory)?;
        let stacks = StackPool::new(config.capture_stacks, config.capture_stack_size)
            .ok_or(EngineError::OutOfMemory)?;
        let budget = Budget::new();
        budget.set(config.budget, config.budget_window.as_nanos() as u64);
        let sync_core = sys::membarrier_register_sync_core();
        signals::install(on_sigtrap, on_fault).map_err(EngineError::Signals)?;
        // SAFETY: registering a child hook that only uses async-signal-safe calls.
        unsafe { libc::pthread_atfork(None, None, Some(atfork_child)) };
        Ok(Engine {
            config,
            ring,
            budget,
            stacks,
            sync_core,
            arming: Mutex::new(Arming {
                mem_fd,
                next_id: 1,
                live: HashMap::new(),
                finished: HashMap::new(),
                free: (0..MAX_PROBES).rev().collect(),
                quarantine: Vec::new(),
                slots: Slots::default(),
                site_slots: HashMap::new(),
                stale_slots: Vec::new(),
                table_used: 0,
                tramps: Slots::with_unit(fastpath::TRAMPOLINE_SIZE),
                site_tramps: HashMap::new(),
                fast_status: HashMap::new(),
                functions: HashMap::new(),
            }),
            wake_fd: sys::eventfd().unwrap_or(-1),
            out_fd: sys::eventfd().unwrap_or(-1),
            budget_thread: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            out_requests: AtomicU64::new(0),
            out_requests_seen: AtomicU64::new(0),
            trap_cost_ns: AtomicU64::new(FALLBACK_TRAP_COST_NS),
            vectors: fastpath::VectorState::detect().map(|state| {
                let (save, restore) = asm::vector_routines(state);
                fastpath::VectorSave {
                    state,
                    save,
                    restore,
                }
            }),
        })
    }

    /// Measures what one trap costs the program: a few traps on a count-only probe (the
    /// handler's least work, no record) over a `nop; ret` on a private page, timed. Falls
    /// back to a typical figure when that cannot be done (a hardened kernel, a forked
    /// child). The calibration's traps are not charged to the budget.
    fn calibrate(&self) {
        let Some(page) = sys::map_code_page(&[0x90, 0xc3]) else {
            return;
        };
        let mut spec = ProbeSpec::new(page, Arc::new(CapturePlan::default()));
        spec.count_only = true;
        let Ok(id) = self.arm(spec) else {
            return;
        };
        // SAFETY: the page holds `nop; ret`, a valid function of this signature; it is
        // mapped for the life of the process (never unmapped).
        let f: extern "C" fn() = unsafe { std::mem::transmute(page as usize) };
        let mut fastest = u64::MAX;
        let mut handlers = 0;
        for _ in 0..CALIBRATION_ROUNDS {
            let h0 = self.site_handler_ns(id);
            let t0 = sys::now_ns();
            for _ in 0..CALIBRATION_TRAPS {
                std::hint::black_box(f)();
            }
            let total = sys::now_ns().saturating_sub(t0);
            if total < fastest {
                fastest = total;
                handlers = self.site_handler_ns(id).saturating_sub(h0);
            }
        }
        let _ = self.disarm(id);
        self.budget.clear();
        for pending in &PENDING_NS {
            pending.store(0, Ordering::Relaxed);
        }
        // The fastest round: the others were slowed by something else (a preemption, cold
        // caches), which is not what a trap costs. The handler's own time is measured on
        // every trap anyway, so only the kernel's part is kept.
        if fastest != u64::MAX {
            let kernel = fastest.saturating_sub(handlers) / CALIBRATION_TRAPS as u64;
            self.trap_cost_ns.store(kernel.max(100), Ordering::Relaxed);
        }
    }

    /// The handler time of a probe's traps so far, ns (0 when it is not armed).
    fn site_handler_ns(&self, id: ProbeId) -> u64 {
        self.lock()
            .live
            .get(&id.0)
            .and_then(|&(idx, _)| STATES.get(idx))
            .map_or(0, ProbeState::handler_ns)
    }

    /// The kernel's cost of one trap and its return, as measured at start; the budget
    /// charges it to every trap along with the handler's own time.
    pub fn trap_cost(&self) -> Duration {
        Duration::from_nanos(self.trap_cost_ns.load(Ordering::Relaxed))
    }

    /// The global budget: the share of one core the traps may take.
    pub fn budget_fraction(&self) -> f64 {
        self.config.budget
    }

    /// Trap path: a site asked to go out; wake the budget's thread (or, without one, the
    /// agent thread).
    #[unsafe(link_section = "nonstop_probe_trap")]
    fn request_out(&self) {
        self.out_requests.fetch_add(1, Ordering::SeqCst);
        if self.budget_thread.load(Ordering::Acquire) {
            sys::eventfd_signal(self.out_fd);
        } else {
            self.wake();
        }
    }

    /// Starts the budget's own thread, `nonstop-budget`: it sleeps on an eventfd the trap
    /// path writes when a site asks to go out, and wakes when an out site is due back. So a
    /// hot site goes out within a wake-up of asking, whatever the agent thread is busy with
    /// (loading debug info, formatting a burst of hits). Without it (never started, or it
    /// could not be), sites only go out when someone calls [`Engine::enforce_budget`], and
    /// a site's requests wake the thread in [`Engine::wait`]. Later calls do nothing.
    pub fn start_budget_thread(&'static self) {
        static STARTED: std::sync::Once = std::sync::Once::new();
        STARTED.call_once(|| self.spawn_budget_thread());
    }

    fn spawn_budget_thread(&'static self) {
        if self.out_fd < 0 || FORKED.load(Ordering::Acquire) {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("nonstop-budget".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                loop {
                    let due = self.enforce_budget();
                    if FORKED.load(Ordering::Acquire) {
                        return;
                    }
                    // A site due back: then (rounded up to a millisecond); else a second,
                    // for the calm-window resets.
                    let ms = due.map_or(1000, |d| {
                        (d.as_nanos().div_ceil(1_000_000)).clamp(1, 1000) as i32
                    });
                    sys::eventfd_wait(self.out_fd, ms);
                }
            });
        self.budget_thread.store(spawned.is_ok(), Ordering::Release);
    }

    /// Trap path: a record is committed; wake the agent thread if it sleeps.
    fn wake_if_sleeping(&self) {
        // No fence between the commit and this load: one would wait for the hit's stores
        // to drain (~20 ns a fast hit). Without it, a thread going to sleep just as the
        // record is committed may miss both it and this wake; `wait` looks again after
        // `RECHECK`, so such a record waits that long at most.
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::SeqCst) {
            sys::eventfd_signal(self.wake_fd);
        }
    }

    /// Wakes the thread in [`Engine::wait`] (async-signal-safe: one `write`).
    #[unsafe(link_section = "nonstop_probe_trap")]
    pub fn wake(&self) {
        if self.wake_fd >= 0 {
            sys::eventfd_signal(self.wake_fd);
        }
    }

    /// Sleeps until a hit is committed, a site asks to go out, [`Engine::wake`] is called
    /// or `timeout` passes — without using the CPU meanwhile. For the agent thread.
    pub fn wait(&self, timeout: Duration) {
        if self.wake_fd < 0 {
            std::thread::sleep(timeout.min(Duration::from_millis(5)));
            return;
        }
        self.sleeping.store(true, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        let work = || {
            self.ring.has_committed()
                || self.out_requests.load(Ordering::SeqCst)
                    != self.out_requests_seen.load(Ordering::Relaxed)
        };
        let ms = |d: Duration| d.as_millis().clamp(0, i32::MAX as u128) as i32;
        if !work() {
            // First a short sleep: a record committed as this thread went to sleep may
            // have come without its wake (see `wake_if_sleeping`); then the rest.
            let first = timeout.min(RECHECK);
            let woken = sys::eventfd_wait(self.wake_fd, ms(first));
            if !woken && timeout > first && !work() {
                sys::eventfd_wait(self.wake_fd, ms(timeout - first));
            }
        }
        self.sleeping.store(false, Ordering::SeqCst);
    }

    /// The budget's work (the budget's thread runs it; the agent thread may too, and a
    /// test): takes out every site that asked (original
    /// bytes back), puts back those whose back-off is over (while the budget has room), and
    /// resets the back-off of sites that stayed in for a calm window. Returns how long
    /// until the next site is due back, if one is out.
    pub fn enforce_budget(&self) -> Option<Duration> {
        if FORKED.load(Ordering::Acquire) {
            return None;
        }
        let seen = self.out_requests.load(Ordering::SeqCst);
        let a = self.lock();
        self.out_requests_seen.store(seen, Ordering::Relaxed);
        let now = sys::now_ns();
        let calm = self.config.budget_window.as_nanos() as u64;
        let trap_cost = self.trap_cost_ns.load(Ordering::Relaxed);
        let room = !self.budget.exceeded(now);
        let mut next: Option<u64> = None;
        let mut changed = false;
        for (id, &(idx, _)) in a.live.iter() {
            let p = &STATES[idx];
            if p.is_partner.load(Ordering::Relaxed) {
                // Its site's probe takes the site out and puts it back, for both.
                continue;
            }
            let partner = (p.partner.load(Ordering::Relaxed) as usize)
                .checked_sub(1)
                .and_then(|i| STATES.get(i));
            let b = &p.budget;
            let addr = p.addr.load(Ordering::Relaxed);
            if b.pending() {
                let orig = p.orig_byte.load(Ordering::Relaxed);
                let out = if p.fast.load(Ordering::SeqCst) {
                    self.unpatch_fast(&a, p).is_ok()
                } else {
                    sys::write_mem(a.mem_fd, addr, &[orig]).is_ok()
                };
                if out {
                    b.went_out(now, p.traps(), p.handler_ns(), trap_cost);
                    changed = true;
                    // Entries from now on go unrecorded: no older record may match them.
                    for s in std::iter::once(p).chain(partner) {
                        s.entry_epoch.fetch_add(1, Ordering::SeqCst);
                    }
                }
            } else if b.due(now) && room {
                if sys::write_mem(a.mem_fd, addr, &[0xcc]).is_ok() {
                    b.went_in(now, p.traps(), p.handler_ns());
                    changed = true;
                    // Frames entered while it was out have no record; a record made before
                    // it went out at the same CFA must not stand in for theirs.
                    for s in std::iter::once(p).chain(partner) {
                        s.entry_epoch.fetch_add(1, Ordering::SeqCst);
                    }
                    let tramp = match a.fast_status.get(id) {
                        Some(FastPath::Yes { trampoline, .. }) => Some(*trampoline),
                        _ => None,
                    };
                    if let Some(tramp) = tramp {
                        self.sync();
                        // On failure the int3 stays in, which is as correct.
                        let _ = self.patch_fast(&a, p, &fast_site_of(p), tramp);
                    }
                }
            } else {
                b.note_calm(now, calm);
            }
            if let Some(due) = b.due_in(now) {
                // Over budget when due: look again after a bucket of the budget's window.
                let due = if due == 0 { calm / 10 } else { due };
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
        drop(a);
        if changed {
            self.sync();
        }
        next.map(Duration::from_nanos)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Arming> {
        self.arming.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sync(&self) {
        if self.sync_core {
            sys::membarrier_sync_core();
        }
    }

    /// Arms a probe: from now on every execution of `spec.address` is a hit. Other threads
    /// keep running; the instruction there still runs exactly once per execution.
    pub fn arm(&self, spec: ProbeSpec) -> Result<ProbeId, ArmError> {
        if FORKED.load(Ordering::Acquire) {
            return Err(ArmError::Forked);
        }
        let address = spec.address;
        let mut a = self.lock();
        self.reap(&mut a);
        // A probe already here: a companion and a probe that is not one share the address
        // (the new one becomes the first's partner); anything else is refused.
        let mut shared = None;
        if let Some(cell) = table_find(address) {
            let v = VALS[cell].load(Ordering::Acquire) as usize;
            if let Some(first) = v.checked_sub(1) {
                let q = &STATES[first];
                if q.partner.load(Ordering::Relaxed) != 0
                    || q.records_entry.load(Ordering::Relaxed) == spec.records_entry
                {
                    return Err(ArmError::AlreadyArmed { address });
                }
                shared = Some((cell, first));
            }
        }
        let maps = slots::read_maps();
        let Some(m) = maps.iter().find(|m| m.start <= address && address < m.end) else {
            return Err(ArmError::NotMapped { address });
        };
        if !m.exec {
            return Err(ArmError::NotCode { address });
        }
        if asm::own_code_ranges()
            .iter()
            .any(|&(lo, hi)| address >= lo && address < hi)
            || a.slots.contains(address)
            || a.tramps.contains(address)
        {
            return Err(ArmError::Unsupported {
                address,
                instruction: String::from("(nonstop's own code)"),
                reason: "the probe engine's trap path and slots cannot be probed",
            });
        }
        if let Some(owner) = fast_span_owner(&a, address) {
            // The new probe goes in; the one whose jump covers its address goes back to its
            // int3, which leaves the rest of its span as in the file.
            self.demote_fast(&mut a, owner, address)
                .map_err(|e| ArmError::Patch {
                    address,
                    error: e.to_string(),
                })?;
        }
        let mut bytes = site_bytes(address, m.end);
        if let Some((_, first)) = shared {
            // The bytes as in the file: the first probe's patch replaced by its originals.
            let q = &STATES[first];
            let orig = if q.fast.load(Ordering::SeqCst) {
                q.fast_orig_bytes()
            } else {
                vec![q.orig_byte.load(Ordering::Relaxed)]
            };
            for (d, b) in bytes.iter_mut().zip(orig) {
                *d = b;
            }
        }
        let site = site::analyze(address, &bytes).map_err(|e| site_error(address, e))?;
        let needs_slot = matches!(
            site.emulation,
            Emulation::OutOfLine | Emulation::CallRel | Emulation::Push(_)
        );
        let slot = if needs_slot {
            self.slot_for(&mut a, &site, address, &maps)?
        } else {
            0
        };
        let entry_from = match spec.entry {
            Some(src) => match a.live.get(&src.companion.0) {
                Some(&(cidx, _)) if STATES[cidx].records_entry.load(Ordering::Relaxed) => {
                    Some((cidx, src))
                }
                _ => return Err(ArmError::UnknownProbe(src.companion)),
            },
            None => None,
        };
        let Some(idx) = a.free.pop() else {
            return Err(ArmError::TooManyProbes { max: MAX_PROBES });
        };
        let cell = match shared {
            Some((cell, _)) => cell,
            None => {
                let mut used = a.table_used;
                let Some(cell) = table_cell(address, &mut used) else {
                    a.free.push(idx);
                    return Err(ArmError::TooManyProbes { max: MAX_PROBES });
                };
                a.table_used = used;
                cell
            }
        };
        let id = a.next_id;
        a.next_id += 1;
        let p = &STATES[idx];
        let r = Ordering::Relaxed;
        p.reset_counters();
        p.addr.store(address, r);
        p.id.store(id, r);
        p.orig_byte.store(site.bytes[0], r);
        p.emulation.store(site.emulation.pack(), r);
        p.target.store(site.target, r);
        p.next_ip.store(site.next_ip, r);
        p.slot.store(slot, r);
        p.plan
            .store(Arc::into_raw(spec.plan) as *mut CapturePlan, r);
        p.filter.store(
            spec.filter
                .map_or(std::ptr::null_mut(), |f| Arc::into_raw(f) as *mut Filter),
            r,
        );
        p.max_hits.store(spec.max_hits.unwrap_or(u64::MAX), r);
        p.time_cap_ns.store(
            u64::try_from(spec.time_cap.as_nanos()).unwrap_or(u64::MAX),
            r,
        );
        match spec.rate {
            Some(l) => p.rate.set(Some(l.per_second), l.burst),
            None => p.rate.set(None, 1),
        }
        p.count_only.store(spec.count_only, r);
        p.records_entry.store(spec.records_entry, r);
        // A new companion id starts a new key space; the epoch only has to move from here.
        p.entry_epoch.fetch_add(1, r);
        match entry_from {
            Some((cidx, src)) => {
                p.entry_from.store(cidx as u32 + 1, r);
                p.entry_from_id.store(src.companion.0, r);
                p.entry_cfa_reg.store(u32::from(src.cfa_reg), r);
                p.entry_cfa_offset.store(src.cfa_offset as u64, r);
            }
            None => {
                p.entry_from.store(0, r);
                p.entry_from_id.store(0, r);
            }
        }
        p.budget.reset(sys::now_ns());
        p.fast.store(false, r);
        p.tramp_resume.store(0, r);
        p.fast_len.store(0, r);
        p.partner.store(0, r);
        p.is_partner.store(shared.is_some(), r);
        if let Some((_, first)) = shared {
            // The site is patched already (the first's int3 or jump): publishing the partner
            // is the whole arm. Traps from now on run it too.
            p.status.store(ARMED, Ordering::SeqCst);
            STATES[first]
                .partner
                .store(idx as u32 + 1, Ordering::SeqCst);
            a.live.insert(id, (idx, cell));
            a.fast_status
                .insert(id, FastPath::No(FastRefusal::ProbeInSpan { at: address }));
            return Ok(ProbeId(id));
        }
        let fast = if self.config.fast_path {
            self.prepare_fast(&mut a, address, spec.function.as_ref(), &maps)
        } else {
            Err(FastRefusal::Off)
        };
        if let Ok((fsite, tramp, displaced)) = &fast {
            p.set_fast_orig(&fsite.orig);
            p.tramp_resume.store(tramp + *displaced as u64, r);
        }
        p.status.store(ARMED, Ordering::SeqCst);
        VALS[cell].store(idx as u32 + 1, Ordering::Release);
        if let Err(e) = sys::write_mem(a.mem_fd, address, &[0xcc]) {
            VALS[cell].store(0, Ordering::Release);
            p.status.store(RETIRED, Ordering::SeqCst);
            a.quarantine.push(Retired {
                id,
                idx,
                at: Instant::now(),
                inside: guard_snapshot(),
            });
            return Err(ArmError::Patch {
                address,
                error: e.to_string(),
            });
        }
        self.sync();
        a.live.insert(id, (idx, cell));
        if let Some(f) = &spec.function {
            a.functions.insert(id, f.clone());
        }
        let status = match fast {
            Ok((fsite, tramp, _)) => self.jump_in(&a, p, &fsite, tramp),
            Err(e) => FastPath::No(e),
        };
        a.fast_status.insert(id, status);
        Ok(ProbeId(id))
    }

    /// The fast-path check for a site, and its trampoline (built now, or the site's own
    /// from an earlier arm when its bytes are the same).
    fn prepare_fast(
        &self,
        a: &mut Arming,
        address: u64,
        function: Option<&std::ops::Range<u64>>,
        maps: &[slots::Mapping],
    ) -> Result<(FastSite, u64, usize), FastRefusal> {
        let vectors = self.vectors.ok_or(FastRefusal::CpuState)?;
        let f = fastpath::check_bounds(address, function)?;
        let in_one_mapping = maps
            .iter()
            .any(|m| m.exec && m.start <= f.start && f.end <= m.end);
        if !in_one_mapping {
            return Err(FastRefusal::BoundsUnknown);
        }
        let mut bytes = vec![0u8; (f.end - f.start) as usize];
        SafeMemory
            .read(f.start, &mut bytes)
            .map_err(|_| FastRefusal::Undecodable { at: f.start })?;
        // The function as in the file: other probes' patches replaced by their originals.
        let mut others = Vec::new();
        for &(idx, _) in a.live.values() {
            let q = &STATES[idx];
            let at = q.addr.load(Ordering::Relaxed);
            let orig = if q.fast.load(Ordering::Relaxed) {
                q.fast_orig_bytes()
            } else {
                vec![q.orig_byte.load(Ordering::Relaxed)]
            };
            for (k, b) in orig.iter().enumerate() {
                let x = at + k as u64;
                if x >= f.start && x < f.end {
                    bytes[(x - f.start) as usize] = *b;
                }
            }
            others.push(at);
        }
        let fsite = fastpath::analyze(address, f.start, &bytes)?;
        if let Some(last) = fsite.instrs.last()
            && (last.is_call_near() || last.is_call_near_indirect())
            && shadow_stack_enabled()
        {
            // push + jmp instead of the call: the callee's `ret` would not match the
            // shadow stack.
            return Err(FastRefusal::Unsupported {
                at: last.ip(),
                reason: "a call cannot be emulated under a CET shadow stack",
            });
        }
        if let Some(&at) = others.iter().find(|&&at| fsite.interior(at)) {
            return Err(FastRefusal::ProbeInSpan { at });
        }
        if let Some(t) = a.site_tramps.get(&address)
            && t.orig == fsite.orig
        {
            return Ok((fsite, t.tramp, t.displaced));
        }
        let tramp = a
            .tramps
            .alloc_near(address, maps)
            .ok_or(FastRefusal::NoTrampolineNearby)?;
        let hit = nonstop_probe_fast_hit as *const () as u64;
        let built = fastpath::trampoline_code(&fsite, tramp, hit, vectors);
        let (code, displaced) = match built {
            Ok(c) => c,
            Err(e) => {
                a.tramps.free(tramp);
                return Err(e);
            }
        };
        if sys::write_mem(a.mem_fd, tramp, &code).is_err() {
            a.tramps.free(tramp);
            return Err(FastRefusal::Patch);
        }
        self.sync();
        // An older trampoline of this address (its bytes changed) is kept: a thread may
        // still be inside it.
        a.site_tramps.insert(
            address,
            SiteTramp {
                tramp,
                orig: fsite.orig.clone(),
                displaced,
            },
        );
        Ok((fsite, tramp, displaced))
    }

    /// [`Engine::patch_fast`], as the status a rule shows: the jump in, or why not.
    fn jump_in(&self, a: &Arming, p: &ProbeState, fsite: &FastSite, tramp: u64) -> FastPath {
        match self.patch_fast(a, p, fsite, tramp) {
            Ok(()) => FastPath::Yes {
                trampoline: tramp,
                span: fsite.span_len() as u8,
            },
            Err(e) => FastPath::No(e),
        }
    }

    /// Patches the `jmp` over a site whose `int3` is in place (and whose `tramp_resume`
    /// is set): no thread paused inside the span, then the tail bytes, then the first byte,
    /// each step serialized on every core. On failure the `int3` stays (which resumes in
    /// the trampoline's copy of the span, so it is just as correct).
    fn patch_fast(
        &self,
        a: &Arming,
        p: &ProbeState,
        fsite: &FastSite,
        tramp: u64,
    ) -> Result<(), FastRefusal> {
        let address = fsite.addr;
        if fsite.instrs.len() > 1 && !self.span_quiescent(fsite) {
            return Err(FastRefusal::ThreadInSpan);
        }
        let patch = fsite.patch_bytes(tramp);
        let orig = &fsite.orig;
        if sys::write_mem(a.mem_fd, address + 1, &patch[1..]).is_err() {
            let _ = sys::write_mem(a.mem_fd, address + 1, &orig[1..]);
            self.sync();
            return Err(FastRefusal::Patch);
        }
        self.sync();
        if sys::write_mem(a.mem_fd, address, &patch[..1]).is_err() {
            let _ = sys::write_mem(a.mem_fd, address + 1, &orig[1..]);
            self.sync();
            return Err(FastRefusal::Patch);
        }
        self.sync();
        p.fast.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Waits until no thread can be at an instruction boundary inside a span whose `int3`
    /// is in place (and serialized): every other thread has been seen to run past it, was
    /// created since, or is blocked with its program counter outside the span (see
    /// [`quiescence`]). False after 100 ms, or when the threads cannot be listed. Not seen:
    /// a thread interrupted at such a boundary by a signal whose handler runs for the whole
    /// wait.
    fn span_quiescent(&self, fsite: &FastSite) -> bool {
        let me = sys::gettid();
        let Some(first) = sys::thread_states() else {
            return false;
        };
        let began = Instant::now();
        let deadline = began + Duration::from_millis(100);
        let mut pending: Vec<quiescence::Watch> = first
            .iter()
            .filter(|t| t.tid != me)
            .map(|t| quiescence::Watch::new(t, began))
            .collect();
        loop {
            std::thread::sleep(Duration::from_micros(100));
            // Only the threads not yet proven are read again: with many threads, most are
            // proven in the first rounds.
            let mut unreadable = false;
            pending.retain_mut(|w| {
                let Some(t) = sys::thread_state(w.tid) else {
                    unreadable = true;
                    return true;
                };
                w.may_be_inside(t.as_ref(), |pc| fsite.interior(pc), Instant::now())
            });
            if unreadable {
                return false;
            }
            let seen = Instant::now();
            if pending.is_empty() {
                return true;
            }
            if seen >= deadline {
                return false;
            }
        }
    }

    /// Restores a fast-path site's original bytes: `int3` over the `jmp`'s first byte
    /// (threads arriving now trap and resume in the trampoline), the tail, the first byte.
    fn unpatch_fast(&self, a: &Arming, p: &ProbeState) -> std::io::Result<()> {
        self.fast_to_int3(a, p)?;
        let orig = p.fast_orig_bytes();
        sys::write_mem(a.mem_fd, p.addr.load(Ordering::Relaxed), &orig[..1])?;
        self.sync();
        Ok(())
    }

    /// A fast-path site back to the `int3` path: `int3` over the `jmp`'s first byte, then
    /// the tail as in the file.
    fn fast_to_int3(&self, a: &Arming, p: &ProbeState) -> std::io::Result<()> {
        let address = p.addr.load(Ordering::Relaxed);
        let orig = p.fast_orig_bytes();
        sys::write_mem(a.mem_fd, address, &[0xcc])?;
        self.sync();
        sys::write_mem(a.mem_fd, address + 1, &orig[1..])?;
        self.sync();
        p.fast.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Puts live probe `id`, which has the fast path, back on its `int3` because a probe is
    /// to be armed at `at` inside its span. Its trampoline stays (a thread may be inside
    /// it) and the budget's put-back no longer patches the jump; where the budget has the
    /// site out, the bytes are the file's already and the put-back writes the `int3`.
    fn demote_fast(&self, a: &mut Arming, id: u64, at: u64) -> std::io::Result<()> {
        let Some(&(idx, _)) = a.live.get(&id) else {
            return Ok(());
        };
        let q = &STATES[idx];
        if q.fast.load(Ordering::SeqCst) {
            self.fast_to_int3(a, q)?;
        }
        // Its traps now run its own instruction, not the trampoline's whole span (which
        // would pass over the new probe's address); a trap that read the old value still
        // resumes correctly in the trampoline.
        q.tramp_resume.store(0, Ordering::SeqCst);
        q.fast_len.store(0, Ordering::Relaxed);
        a.fast_status
            .insert(id, FastPath::No(FastRefusal::ProbeInSpan { at }));
        Ok(())
    }

    /// Disarms a probe: the original byte is back when this returns; its slot is reused
    /// only once no thread can be inside it.
    pub fn disarm(&self, id: ProbeId) -> Result<(), ArmError> {
        if FORKED.load(Ordering::Acquire) {
            // The child hook already put every original byte back; the lock may be held
            // by a thread that does not exist in this process.
            return Ok(());
        }
        let mut a = self.lock();
        let Some(&(idx, cell)) = a.live.get(&id.0) else {
            return Err(ArmError::UnknownProbe(id));
        };
        let p = &STATES[idx];
        let address = p.addr.load(Ordering::Relaxed);
        let orig = p.orig_byte.load(Ordering::Relaxed);
        let partner = (p.partner.load(Ordering::SeqCst) as usize).checked_sub(1);
        if p.is_partner.load(Ordering::Relaxed) {
            // The first probe keeps the site patched; it only stops running this one.
            let first = (VALS[cell].load(Ordering::Acquire) as usize).checked_sub(1);
            if let Some(q) = first.and_then(|i| STATES.get(i)) {
                q.partner.store(0, Ordering::SeqCst);
            }
        } else if let Some(q) = partner.and_then(|i| STATES.get(i)) {
            // The partner stays: the site goes on trapping, now for it alone (an int3, also
            // where the budget had the site out or this probe had the fast path's jump).
            let patched = if p.fast.load(Ordering::SeqCst) {
                self.fast_to_int3(&a, p)
            } else {
                sys::write_mem(a.mem_fd, address, &[0xcc])
            };
            patched.map_err(|e| ArmError::Patch {
                address,
                error: e.to_string(),
            })?;
            self.sync();
            // Entries may have gone unrecorded meanwhile.
            q.entry_epoch.fetch_add(1, Ordering::SeqCst);
            q.budget.reset(sys::now_ns());
            q.is_partner.store(false, Ordering::SeqCst);
        } else if p.fast.load(Ordering::SeqCst) {
            self.unpatch_fast(&a, p).map_err(|e| ArmError::Patch {
                address,
                error: e.to_string(),
            })?;
        } else {
            sys::write_mem(a.mem_fd, address, &[orig]).map_err(|e| ArmError::Patch {
                address,
                error: e.to_string(),
            })?;
            self.sync();
        }
        a.live.remove(&id.0);
        let fast_status = a.fast_status.remove(&id.0).unwrap_or_default();
        p.status.store(RETIRED, Ordering::SeqCst);
        if !p.is_partner.load(Ordering::Relaxed) {
            // The partner, if any, is the site's probe now; else a trap re-runs the byte.
            let next = partner.map_or(0, |i| i as u32 + 1);
            VALS[cell].store(next, Ordering::Release);
        }
        // (`partner` stays: a thread still inside this probe runs the partner as well.)
        let mut stats = p.stats(false);
        stats.fast_path = fast_status;
        a.finished.insert(id.0, stats);
        a.quarantine.push(Retired {
            id: id.0,
            idx,
            at: Instant::now(),
            inside: guard_snapshot(),
        });
        a.functions.remove(&id.0);
        // Probes that kept their int3 only because this one was inside their span.
        let waiting: Vec<u64> = a
            .fast_status
            .iter()
            .filter(|(_, s)| {
                matches!(s, FastPath::No(FastRefusal::ProbeInSpan { at }) if *at == address)
            })
            .map(|(&id, _)| id)
            .collect();
        for q in waiting {
            self.promote_fast(&mut a, q);
        }
        self.reap(&mut a);
        Ok(())
    }

    /// Gives live probe `id`, on its `int3`, the fast path if its site passes the check now
    /// (the probe that was inside its span is gone). Sites that share their address, or
    /// that the budget has out, keep the `int3` path.
    fn promote_fast(&self, a: &mut Arming, id: u64) {
        let Some(&(idx, _)) = a.live.get(&id) else {
            return;
        };
        let q = &STATES[idx];
        let shared = q.partner.load(Ordering::SeqCst) != 0 || q.is_partner.load(Ordering::Relaxed);
        if shared || q.fast.load(Ordering::SeqCst) || q.budget.due_in(sys::now_ns()).is_some() {
            return;
        }
        let address = q.addr.load(Ordering::Relaxed);
        let function = a.functions.get(&id).cloned();
        let maps = slots::read_maps();
        let status = match self.prepare_fast(a, address, function.as_ref(), &maps) {
            Ok((fsite, tramp, displaced)) => {
                // As at arm: the int3 is in place, a trap from now on resumes in the
                // trampoline, then the jump goes in.
                q.set_fast_orig(&fsite.orig);
                q.tramp_resume
                    .store(tramp + displaced as u64, Ordering::SeqCst);
                self.jump_in(a, q, &fsite, tramp)
            }
            Err(e) => FastPath::No(e),
        };
        a.fast_status.insert(id, status);
    }

    /// The slot of a site: the existing one when its bytes are unchanged, else a new one.
    fn slot_for(
        &self,
        a: &mut Arming,
        site: &site::Site,
        address: u64,
        maps: &[slots::Mapping],
    ) -> Result<u64, ArmError> {
        if let Some(s) = a.site_slots.get(&address)
            && s.bytes == site.bytes
        {
            return Ok(s.slot);
        }
        let slot = a
            .slots
            .alloc_near(address, maps)
            .ok_or(ArmError::NoSlotNearby { address })?;
        let written = site::slot_code(site, slot)
            .map_err(|e| site_error(address, e))
            .and_then(|code| {
                sys::write_mem(a.mem_fd, slot, &code).map_err(|e| ArmError::Patch {
                    address: slot,
                    error: e.to_string(),
                })
            });
        if let Err(e) = written {
            a.slots.free(slot);
            return Err(e);
        }
        self.sync();
        let old = a.site_slots.insert(
            address,
            SiteSlot {
                slot,
                bytes: site.bytes,
            },
        );
        if let Some(old) = old {
            a.stale_slots.push((old.slot, Instant::now()));
        }
        Ok(slot)
    }

    /// Frees retired probes that no thread can be using any more.
    fn reap(&self, a: &mut Arming) {
        let grace = self.config.grace;
        let stale_grace = grace * 10;
        let mut i = 0;
        while i < a.stale_slots.len() {
            if a.stale_slots[i].1.elapsed() >= stale_grace {
                let (slot, _) = a.stale_slots.swap_remove(i);
                a.slots.free(slot);
            } else {
                i += 1;
            }
        }
        let mut i = 0;
        while i < a.quarantine.len() {
            let r = &a.quarantine[i];
            let p = &STATES[r.idx];
            if r.at.elapsed() < grace
                || p.in_flight.load(Ordering::SeqCst) != 0
                || !guard_moved(&r.inside)
            {
                i += 1;
                continue;
            }
            let r = a.quarantine.swap_remove(i);
            let mut stats = p.stats(false);
            if let Some(old) = a.finished.get(&r.id) {
                stats.fast_path = old.fast_path;
            }
            a.finished.insert(r.id, stats);
            let plan = p.plan.swap(std::ptr::null_mut(), Ordering::AcqRel);
            if !plan.is_null() {
                // SAFETY: the pointer came from Arc::into_raw at arm time and no handler can
                // use it any more (in_flight is 0, every guard slot taken at retirement
                // was left since, and the grace period passed).
                drop(unsafe { Arc::from_raw(plan) });
            }
            let filter = p.filter.swap(std::ptr::null_mut(), Ordering::AcqRel);
            if !filter.is_null() {
                // SAFETY: as for the plan: from Arc::into_raw at arm time, no handler can
                // use it any more.
                drop(unsafe { Arc::from_raw(filter) });
            }
            p.addr.store(0, Ordering::Relaxed);
            p.status.store(FREE, Ordering::SeqCst);
            a.free.push(r.idx);
        }
    }

    /// Counters of a probe, armed or disarmed.
    pub fn stats(&self, id: ProbeId) -> Option<ProbeStats> {
        let a = self.lock();
        if let Some(&(idx, _)) = a.live.get(&id.0) {
            let mut s = STATES[idx].stats(true);
            s.fast_path = a.fast_status.get(&id.0).copied().unwrap_or_default();
            return Some(s);
        }
        if let Some(r) = a.quarantine.iter().find(|r| r.id == id.0) {
            return Some(STATES[r.idx].stats(false));
        }
        a.finished.get(&id.0).copied()
    }

    /// Hands every committed hit to `f`, oldest first; returns how many. Call from one
    /// thread (the agent's); the records are valid only during `f`.
    pub fn drain(&self, mut f: impl FnMut(Hit<'_>)) -> usize {
        let n = self.ring.drain(|m, record| {
            f(Hit {
                probe: ProbeId(m.probe),
                time_ns: m.time_ns,
                tid: m.tid,
                record,
            })
        });
        if let Ok(mut a) = self.arming.try_lock() {
            self.reap(&mut a);
        }
        n
    }

    /// Disarms every probe (e.g. when [`Engine::signals_owned`] turns false); returns how
    /// many were disarmed.
    pub fn disarm_all(&self) -> usize {
        let ids: Vec<u64> = self.lock().live.keys().copied().collect();
        ids.into_iter()
            .filter(|&id| self.disarm(ProbeId(id)).is_ok())
            .count()
    }

    /// Probes armed now.
    pub fn armed_count(&self) -> usize {
        self.lock().live.len()
    }

    /// Whether the SIGTRAP/SIGSEGV/SIGBUS handlers are still ours; if not, disarm all.
    pub fn signals_owned(&self) -> bool {
        signals::owned()
    }

    /// Bytes one record may take (the ring's slot size).
    pub fn record_capacity(&self) -> usize {
        self.ring.slot_size()
    }
}

/// Whether this process runs with a CET shadow stack (`x86_Thread_features: shstk`).
fn shadow_stack_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("x86_Thread_features:") && l.contains("shstk"))
        })
    })
}

/// Whether `address` is inside (after the first byte of) a live fast-path probe's span.
/// The live probe whose fast-path span holds `address` after its first byte.
fn fast_span_owner(a: &Arming, address: u64) -> Option<u64> {
    a.live.iter().find_map(|(&id, &(idx, _))| {
        let q = &STATES[idx];
        let at = q.addr.load(Ordering::Relaxed);
        let len = q.fast_len.load(Ordering::Relaxed) as u64;
        (len > 0 && address > at && address < at + len).then_some(id)
    })
}

/// A fast-path site rebuilt from a probe's saved span (for the budget's put-back).
fn fast_site_of(p: &ProbeState) -> FastSite {
    let addr = p.addr.load(Ordering::Relaxed);
    let orig = p.fast_orig_bytes();
    let instrs = iced_x86::Decoder::with_ip(64, &orig, addr, iced_x86::DecoderOptions::NONE)
        .into_iter()
        .collect();
    FastSite { addr, instrs, orig }
}

fn site_error(address: u64, e: SiteError) -> ArmError {
    match e {
        SiteError::Undecodable => ArmError::Undecodable { address },
        SiteError::Unsupported {
            instruction,
            reason,
        } => ArmError::Unsupported {
            address,
            instruction,
            reason,
        },
        SiteError::Relocation {
            instruction,
            detail,
        } => ArmError::Relocation {
            address,
            instruction,
            detail,
        },
    }
}

/// Up to 15 live bytes at `addr`, not past the end of its mapping.
fn site_bytes(addr: u64, map_end: u64) -> Vec<u8> {
    let n = (map_end - addr).min(15) as usize;
    let mut buf = vec![0u8; n];
    if SafeMemory.read(addr, &mut buf).is_err() {
        buf.clear();
    }
    buf
}

#[unsafe(link_section = "nonstop_probe_trap")]
extern "C" fn on_sigtrap(sig: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    if !handle_trap(info, uc) {
        signals::forward(sig, info, uc);
    }
}

#[unsafe(link_section = "nonstop_probe_trap")]
extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    signals::handle_fault(sig, info, uc);
}

/// The trap path. Returns false when the trap is not ours. No allocation, no locks, no
/// TLS, no panics: every index is checked and every call is async-signal-safe.
#[unsafe(link_section = "nonstop_probe_trap")]
fn handle_trap(info: *mut libc::siginfo_t, uc: *mut libc::c_void) -> bool {
    // SAFETY: the kernel's siginfo for this handler (or null).
    let Some(info) = (unsafe { info.as_ref() }) else {
        return false;
    };
    if info.si_code != libc::SI_KERNEL {
        return false;
    }
    // SAFETY: the kernel's ucontext for this running handler; we are its only user.
    let Some(mut ctx) = (unsafe { Context::new(uc) }) else {
        return false;
    };
    let addr = ctx.rip().wrapping_sub(1);
    let Some(cell) = table_find(addr) else {
        return false;
    };
    let Entered { p, idx, q, guard } = match enter(cell, addr) {
        Entry::Hit(hit) => hit,
        // Retired: the original byte is back (or a new probe is there); run it again.
        Entry::Gone => {
            ctx.set_rip(addr);
            return true;
        }
        // Nested on this thread: only perform the instruction, calling nothing outside
        // this section, so nesting cannot recurse.
        Entry::Unguarded(p, q) => {
            perform(p, &mut ctx);
            leave_unguarded(p, q);
            return true;
        }
    };
    let start = sys::Start::now();
    let t0 = start.ns;
    // SAFETY: ENGINE is null or points at the engine in its OnceLock, which lives forever.
    let engine = unsafe { ENGINE.load(Ordering::Acquire).as_ref() };
    // Wake-ups wait until the hit is timed: the woken thread may take this CPU.
    let mut wake = Wake::default();
    if let Some(engine) = engine {
        capture_site(engine, p, q, &ctx, addr, &start, guard, &mut wake);
    }
    perform(p, &mut ctx);
    if let Some(engine) = engine {
        // Every trap is charged: the handler's time, and the kernel's trap and return
        // (measured once at start), which the handler cannot see.
        let t1 = wake.end_ns.unwrap_or_else(|| start.now_ns());
        let kernel = engine.trap_cost_ns.load(Ordering::Relaxed);
        charge(engine, p, idx, guard, t0, t1, kernel);
        wake.send(engine);
    }
    guard_exit(guard);
    true
}

/// A thread's way into the hit path of the probe at an address (see [`enter`]).
enum Entry {
    /// No probe is armed there (any more).
    Gone,
    /// The thread is already in the hit path (a probe on something the handler calls, or
    /// a probed function run by a signal handler that interrupted it), or every guard
    /// slot is taken: the probe (and its partner) entered by `in_flight`, the trap counted
    /// as dropped. Nothing is captured; the caller leaves by [`leave_unguarded`].
    Unguarded(&'static ProbeState, Option<&'static ProbeState>),
    /// In a guard slot of its own, the trap counted: the hit is the caller's to capture,
    /// then [`guard_exit`].
    Hit(Entered),
}

/// A hit entered in guard slot `guard`: the site's probe `p` (at `idx` in `STATES`) and
/// its partner `q` at the same address.
struct Entered {
    p: &'static ProbeState,
    idx: usize,
    q: Option<&'static ProbeState>,
    guard: usize,
}

/// Enters the hit path of the probe at `addr` (address table cell `cell`), for the `int3`
/// path and the fast path.
#[unsafe(link_section = "nonstop_probe_trap")]
#[inline(always)]
fn enter(cell: usize, addr: u64) -> Entry {
    let v = VALS.get(cell).map_or(0, |v| v.load(Ordering::Acquire));
    let Some(idx) = (v as usize).checked_sub(1).filter(|&i| i < MAX_PROBES) else {
        return Entry::Gone;
    };
    let p = &STATES[idx];
    let guard = match guard_enter(thread_pointer()) {
        Guard::Entered(g) => g,
        Guard::Nested | Guard::Full => {
            if !enter_unguarded(p, addr) {
                return Entry::Gone;
            }
            let q = partner_unguarded(p, addr);
            drop_nested(p, q);
            return Entry::Unguarded(p, q);
        }
    };
    if !is_armed_at(p, addr) {
        guard_exit(guard);
        return Entry::Gone;
    }
    SLOT_TRAPS.add(guard, idx);
    let q = partner_at(p, addr, guard);
    Entry::Hit(Entered { p, idx, q, guard })
}

/// Leaves a probe (and partner) entered unguarded ([`Entry::Unguarded`]).
#[unsafe(link_section = "nonstop_probe_trap")]
fn leave_unguarded(p: &ProbeState, q: Option<&ProbeState>) {
    leave(q);
    p.in_flight.fetch_sub(1, Ordering::Release);
}

/// Charges a trap of probe `p` (at `idx`) whose handler ran from `t0` to `t1`, plus
/// `kernel` ns the handler cannot see: to the site's back-off, to the probe's handler time
/// and to the global budget, without a locked instruction on most hits (see
/// [`PENDING_NS`]).
#[unsafe(link_section = "nonstop_probe_trap")]
fn charge(
    engine: &Engine,
    p: &ProbeState,
    idx: usize,
    guard: usize,
    t0: u64,
    t1: u64,
    kernel: u64,
) {
    let handler = t1.saturating_sub(t0);
    p.budget.add_trap(t0, t1);
    SLOT_HANDLER_NS.add_n(guard, idx, handler);
    let Some(pending) = PENDING_NS.get(guard) else {
        return;
    };
    let r = Ordering::Relaxed;
    let due = pending
        .load(r)
        .saturating_add(handler)
        .saturating_add(kernel);
    if due >= CHARGE_EVERY_NS {
        pending.store(0, r);
        engine.budget.charge(t1, due);
    } else {
        pending.store(due, r);
    }
}

/// Whether `p` is armed at `addr`: read after the thread took its guard slot (or entered
/// `in_flight`), so a probe retired since is seen as such.
#[unsafe(link_section = "nonstop_probe_trap")]
fn is_armed_at(p: &ProbeState, addr: u64) -> bool {
    p.status.load(Ordering::SeqCst) == ARMED && p.addr.load(Ordering::Acquire) == addr
}

/// A thread without a guard slot of its own enters `p` by its shared `in_flight` count,
/// which holds off its reclamation; true when `p` is armed at `addr` (then the caller
/// leaves it with a `fetch_sub`). Its trap is counted.
#[unsafe(link_section = "nonstop_probe_trap")]
fn enter_unguarded(p: &ProbeState, addr: u64) -> bool {
    p.in_flight.fetch_add(1, Ordering::SeqCst);
    if !is_armed_at(p, addr) {
        p.in_flight.fetch_sub(1, Ordering::Release);
        return false;
    }
    p.traps.fetch_add(1, Ordering::Relaxed);
    true
}

/// A nested (or slotless) trap captures nothing: counted as dropped for both probes.
#[unsafe(link_section = "nonstop_probe_trap")]
fn drop_nested(p: &ProbeState, q: Option<&ProbeState>) {
    for s in std::iter::once(p).chain(q) {
        s.dropped_nested.fetch_add(1, Ordering::Relaxed);
        // An entry not recorded (when this is a companion): older records stop matching.
        s.entry_epoch.fetch_add(1, Ordering::Relaxed);
    }
}

/// The partner armed at `addr` with the site's probe `p` (see `ProbeState::partner`),
/// with its trap counted in the caller's guard slot; `None` when there is none (or it
/// is going). The caller's guard slot keeps it from being reclaimed.
#[unsafe(link_section = "nonstop_probe_trap")]
fn partner_at(p: &ProbeState, addr: u64, guard: usize) -> Option<&'static ProbeState> {
    let i = (p.partner.load(Ordering::Acquire) as usize).checked_sub(1)?;
    let q = STATES.get(i)?;
    if !is_armed_at(q, addr) {
        return None;
    }
    SLOT_TRAPS.add(guard, i);
    Some(q)
}

/// [`partner_at`] for a thread without a guard slot: entered by `in_flight` (left by
/// [`leave`]).
#[unsafe(link_section = "nonstop_probe_trap")]
fn partner_unguarded(p: &ProbeState, addr: u64) -> Option<&'static ProbeState> {
    let i = (p.partner.load(Ordering::Acquire) as usize).checked_sub(1)?;
    let q = STATES.get(i)?;
    enter_unguarded(q, addr).then_some(q)
}

/// Leaves a partner entered by [`partner_unguarded`].
#[unsafe(link_section = "nonstop_probe_trap")]
fn leave(q: Option<&ProbeState>) {
    if let Some(q) = q {
        q.in_flight.fetch_sub(1, Ordering::Release);
    }
}

/// One trap's work at a site: the companion first (so its record is there for any
/// reader), then the other probe; each with its own limits, condition and counters, and
/// the site probe `p`'s budget for both.
#[allow(clippy::too_many_arguments)]
fn capture_site<C: HitContext>(
    engine: &Engine,
    p: &ProbeState,
    q: Option<&ProbeState>,
    ctx: &C,
    addr: u64,
    start: &sys::Start,
    guard: usize,
    wake: &mut Wake,
) {
    match q {
        Some(q) if q.records_entry.load(Ordering::Relaxed) => {
            capture(engine, q, p, ctx, addr, start, guard, wake);
            capture(engine, p, p, ctx, addr, start, guard, wake);
        }
        Some(q) => {
            capture(engine, p, p, ctx, addr, start, guard, wake);
            capture(engine, q, p, ctx, addr, start, guard, wake);
        }
        None => capture(engine, p, p, ctx, addr, start, guard, wake),
    }
}

/// Whom the trap path wakes once it is done with a hit.
#[derive(Default)]
struct Wake {
    /// The site asked to go out: the budget's thread.
    out: bool,
    /// A record was committed: the agent thread, if it sleeps.
    committed: bool,
    /// When the capture ended, if it was timed (the hit's end: one clock read less).
    end_ns: Option<u64>,
    /// This hit may go untimed (see [`TIME_EVERY`]).
    untimed: bool,
}

impl Wake {
    /// Wakes them, once the hit is timed and charged.
    #[unsafe(link_section = "nonstop_probe_trap")]
    fn send(&self, engine: &Engine) {
        if self.out {
            engine.request_out();
        }
        if self.committed {
            engine.wake_if_sleeping();
        }
    }
}

/// What the hit path needs of the interrupted thread: the `int3` path's signal context,
/// or the fast path's trampoline frame.
trait HitContext {
    /// Fills `regs` with the registers at the probe, `rip` = the probe's address. In place:
    /// a `Registers` returned by value is ~400 bytes moved by a `memcpy` call.
    fn registers(&self, rip: u64, regs: &mut Registers);
    /// Which guarded reads may fault.
    fn faults(&self) -> Faults;
    /// Whether the thread runs on its alternate signal stack.
    fn on_alternate_stack(&self) -> bool;
}

impl HitContext for Context<'_> {
    fn registers(&self, rip: u64, regs: &mut Registers) {
        Context::registers(self, rip, regs);
    }
    fn faults(&self) -> Faults {
        Faults::Unsafe(Context::faults_unsafe(self))
    }
    fn on_alternate_stack(&self) -> bool {
        Context::on_alternate_stack(self)
    }
}

/// The fast path's view of the thread: the trampoline's frame and vector save area,
/// below the interrupted stack pointer on the thread's own stack.
struct FastContext<'a> {
    frame: &'a FastFrame,
    rsp: u64,
    /// xmm `k` is the first 16 bytes at `vectors + stride * k`.
    vectors: *const u8,
    stride: usize,
}

impl HitContext for FastContext<'_> {
    fn registers(&self, rip: u64, regs: &mut Registers) {
        let f = self.frame;
        regs.gpr = [
            f.rax, f.rdx, f.rcx, f.rbx, f.rsi, f.rdi, f.rbp, self.rsp, f.r8, f.r9, f.r10, f.r11,
            f.r12, f.r13, f.r14, f.r15, rip,
        ];
        for (k, x) in regs.xmm.iter_mut().enumerate() {
            // SAFETY: the trampoline's save area holds 16 vector registers `stride` bytes
            // apart (32 with AVX-512) and lives on the stack until this hit returns; the
            // low 16 bytes of each are its xmm register.
            *x = unsafe {
                self.vectors
                    .add(self.stride * k)
                    .cast::<[u8; 16]>()
                    .read_unaligned()
            };
        }
    }
    fn faults(&self) -> Faults {
        // Every page from the save area's to the stack pointer's holds bytes the
        // trampoline or the interrupted function wrote (the word at rsp is at most the
        // return address), so it is mapped, and the thread runs on it.
        Faults::Outside {
            lo: self.vectors as u64 & !4095,
            hi: (self.rsp & !4095) + 4096,
            rsp: self.rsp,
        }
    }
    fn on_alternate_stack(&self) -> bool {
        let tp = thread_pointer();
        threads::on_alternate_stack(tp, threads::tid(tp), self.rsp)
    }
}

/// The fast path's hit: called by a trampoline with its saved frame, the probe's address
/// and the vector save area. The same limits, condition, capture and budget as the `int3` path;
/// the trampoline then runs the displaced instructions, whatever happens here.
#[unsafe(link_section = "nonstop_probe_trap")]
extern "C" fn nonstop_probe_fast_hit(
    frame: *mut FastFrame,
    addr: u64,
    vectors: *mut u8,
    stride: u32,
) {
    let Some(cell) = table_find(addr) else {
        return;
    };
    let Entered { p, idx, q, guard } = match enter(cell, addr) {
        Entry::Hit(hit) => hit,
        Entry::Gone => return, // disarmed while this thread was on its way in
        Entry::Unguarded(p, q) => {
            leave_unguarded(p, q);
            return;
        }
    };
    // SAFETY: the trampoline passes its frame on the stack, alive and ours for this call.
    let frame_ref = unsafe { &*frame };
    let ctx = FastContext {
        frame: frame_ref,
        rsp: (frame as u64).wrapping_add(fastpath::FRAME_TO_RSP),
        vectors,
        stride: stride as usize,
    };
    let start = sys::Start::now();
    let t0 = start.ns;
    // SAFETY: ENGINE is null or points at the engine in its OnceLock, which lives forever.
    let engine = unsafe { ENGINE.load(Ordering::Acquire).as_ref() };
    let mut wake = Wake {
        untimed: SLOT_TRAPS.get(guard, idx) % TIME_EVERY != 1,
        ..Wake::default()
    };
    if let Some(engine) = engine {
        capture_site(engine, p, q, &ctx, addr, &start, guard, &mut wake);
        // No trap to charge: the handler's own time only, measured or as last measured.
        let r = Ordering::Relaxed;
        let t1 = match wake.end_ns {
            None if wake.untimed => t0.saturating_add(p.hit_ns.load(r)),
            end => {
                let t1 = end.unwrap_or_else(|| start.now_ns());
                p.hit_ns.store(t1.saturating_sub(t0), r);
                t1
            }
        };
        charge(engine, p, idx, guard, t0, t1, 0);
        wake.send(engine);
    }
    guard_exit(guard);
}

/// One probe's work at a trap; `site` is the probe the address table points at, whose
/// budget is the site's (`p` itself unless `p` is its partner); `guard` is the thread's
/// guard slot.
#[allow(clippy::too_many_arguments)]
fn capture<C: HitContext>(
    engine: &Engine,
    p: &ProbeState,
    site: &ProbeState,
    ctx: &C,
    addr: u64,
    start: &sys::Start,
    guard: usize,
    wake: &mut Wake,
) {
    let r = Ordering::Relaxed;
    let t0 = start.ns;
    let over_budget = engine.budget.exceeded(t0);
    if over_budget && site.budget.request_for_budget() {
        wake.out = true;
    }
    if p.done.load(Ordering::Acquire) {
        return;
    }
    if p.records_entry.load(r) {
        record_entry(p, ctx, addr, over_budget);
        return;
    }
    // The registers and the frame's entry record, read once: for the condition, then for
    // the record.
    let mut regs = Registers::default();
    let mut regs_read = false;
    let mut entry = None;
    let filter = p.filter.load(Ordering::Acquire);
    if !filter.is_null() {
        ctx.registers(addr, &mut regs);
        regs_read = true;
        entry = entry_values(p, &regs);
        // SAFETY: the filter is kept alive by the probe (freed with the plan, only after
        // quarantine with no handler in flight); it never allocates or panics.
        let filter = unsafe { &*filter };
        let hits = p.hits.load(r);
        let mem = HitMemory::new(ctx.faults());
        let result = eval_filter_with_entry(filter, &regs, entry.as_ref(), &mem, hits);
        match result {
            FilterResult::True => {}
            FilterResult::False => {
                p.filtered.fetch_add(1, r);
                return;
            }
            FilterResult::Error => {
                p.filter_errors.fetch_add(1, r);
                return;
            }
        }
    }
    if p.count_only.load(r) {
        SLOT_COUNTED.add(guard, p.index());
        return;
    }
    if !p.rate.allow(t0) {
        p.dropped_rate.fetch_add(1, r);
        if site.budget.refused() {
            wake.out = true;
        }
        return;
    }
    if over_budget {
        p.dropped_budget.fetch_add(1, r);
        return;
    }
    let max = p.max_hits.load(r);
    let mut hits = p.hits.load(r);
    loop {
        if hits >= max {
            p.finish(REASON_MAX_HITS, 0);
            return;
        }
        match p
            .hits
            .compare_exchange_weak(hits, hits + 1, Ordering::AcqRel, Ordering::Relaxed)
        {
            Ok(_) => break,
            Err(h) => hits = h,
        }
    }
    let plan = p.plan.load(Ordering::Acquire);
    // SAFETY: a non-null plan is kept alive by the probe (freed only after quarantine with
    // no handler in flight).
    let plain = unsafe { plan.as_ref() }.is_none_or(|plan| plan.nodes.is_empty());
    let on_alternate = !plan.is_null() && ctx.on_alternate_stack();
    // A plan of plain values (no pointers followed) runs on the thread's own stack: its
    // depth is fixed and small (a few hundred bytes, as the handler's own frames). One that
    // follows pointers may go deep, and runs on a capture stack of its own, as does any
    // plan when the thread is on its alternate signal stack (often a few KiB).
    let stack = if plain && !on_alternate {
        None
    } else {
        let Some(stack) = engine.stacks.take() else {
            p.hits.fetch_sub(1, r);
            p.dropped_full.fetch_add(1, r);
            return;
        };
        Some(stack)
    };
    let Some(mut res) = engine.ring.reserve() else {
        if let Some(stack) = stack {
            engine.stacks.give(stack);
        }
        p.hits.fetch_sub(1, r);
        p.dropped_full.fetch_add(1, r);
        return;
    };
    let out = engine.ring.buffer(&mut res);
    if !regs_read {
        ctx.registers(addr, &mut regs);
        entry = entry_values(p, &regs);
    }
    let mut job = Job {
        faults: ctx.faults(),
        plan,
        regs: &regs,
        entry: None,
        out: out.as_mut_ptr(),
        out_len: out.len(),
        outcome: CaptureOutcome {
            len: 0,
            truncated: false,
        },
    };
    // Set only when there is one: `None` is a flag, not a copy of the whole option.
    if let Some(e) = entry {
        job.entry = Some(e);
    }
    match stack {
        _ if job.plan.is_null() => {}
        // SAFETY: the job outlives the call and is exclusively ours; `run_job` cannot
        // unwind (execute never panics).
        None => unsafe { run_job((&mut job as *mut Job).cast()) },
        Some(stack) => {
            // Interrupted code on the alternate stack (a program's handler): a signal
            // arriving while we are on the capture stack would have its frame put at the top
            // of the alternate stack, over that handler's frames. Hold asynchronous signals
            // meanwhile.
            let held = on_alternate.then(hold_async_signals);
            // SAFETY: the job outlives the call; the stack is exclusively ours until `give`,
            // 16-byte aligned at its top, and `run_job` cannot unwind (execute never panics).
            unsafe {
                asm::call_on_stack(
                    (&mut job as *mut Job).cast(),
                    run_job,
                    engine.stacks.top(stack),
                )
            };
            if let Some(old) = held {
                let mut ignored = old;
                sys::sigprocmask(libc::SIG_SETMASK, &old, &mut ignored);
            }
        }
    }
    if let Some(stack) = stack {
        engine.stacks.give(stack);
    }
    engine.ring.commit(
        res,
        RecordMeta {
            probe: p.id.load(r),
            time_ns: t0,
            tid: threads::tid(thread_pointer()),
            len: job.outcome.len as u32,
        },
    );
    wake.committed = true;
    if plain && wake.untimed {
        // Bounded by its plan (no pointer followed): timed on a sample of the hits.
        if hits + 1 >= max {
            p.finish(REASON_MAX_HITS, 0);
        }
        return;
    }
    let end = start.now_ns();
    wake.end_ns = Some(end);
    let took = end.saturating_sub(t0);
    if p.slowest_ns.load(r) < took {
        p.slowest_ns.fetch_max(took, r);
    }
    if took > p.time_cap_ns.load(r) {
        p.finish(REASON_TIME_CAP, took);
    }
    if hits + 1 >= max {
        p.finish(REASON_MAX_HITS, 0);
    }
}

/// A companion's hit: records this frame's entry registers, or, when the budget drops
/// the hit, moves the epoch (that entry goes unrecorded).
fn record_entry<C: HitContext>(p: &ProbeState, ctx: &C, addr: u64, over_budget: bool) {
    let r = Ordering::Relaxed;
    if over_budget {
        p.dropped_budget.fetch_add(1, r);
        p.entry_epoch.fetch_add(1, Ordering::SeqCst);
        return;
    }
    let mut regs = Registers::default();
    ctx.registers(addr, &mut regs);
    // At the entry, before the first instruction, the return address is at rsp.
    let cfa = regs.gpr[REG_RSP as usize].wrapping_add(8);
    let epoch = p.entry_epoch.load(Ordering::SeqCst);
    if entry::record(thread_pointer(), p.id.load(r), epoch, cfa, &regs) {
        p.hits.fetch_add(1, r);
    } else {
        // More threads than the table has rows: this thread's frames stay unavailable.
        p.dropped_full.fetch_add(1, r);
    }
}

/// A line probe's entry values for the frame it interrupted: the record its companion made
/// at this frame's entry (same thread, same CFA, the companion's current epoch), if any.
fn entry_values(p: &ProbeState, regs: &Registers) -> Option<EntryRegisters> {
    let r = Ordering::Relaxed;
    let c = (p.entry_from.load(r) as usize).checked_sub(1)?;
    let id = p.entry_from_id.load(r);
    let companion = STATES.get(c)?;
    if companion.id.load(r) != id || companion.status.load(Ordering::SeqCst) != ARMED {
        return None;
    }
    let epoch = companion.entry_epoch.load(Ordering::SeqCst);
    let cfa_reg = u16::try_from(p.entry_cfa_reg.load(r)).ok()?;
    let cfa = regs
        .value(cfa_reg)?
        .wrapping_add(p.entry_cfa_offset.load(r));
    entry::lookup(thread_pointer(), id, epoch, cfa)
}

/// Blocks every signal but the synchronous ones; returns the previous mask.
fn hold_async_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain bits; all-zero is the empty set.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset; these only modify it.
    unsafe {
        libc::sigfillset(&mut set);
        for sig in [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGTRAP,
            libc::SIGILL,
            libc::SIGFPE,
        ] {
            libc::sigdelset(&mut set, sig);
        }
    }
    let mut old = set;
    sys::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
    old
}

/// Performs the displaced instruction: emulated, or by resuming in the slot.
#[unsafe(link_section = "nonstop_probe_trap")]
fn perform(p: &ProbeState, ctx: &mut Context<'_>) {
    let r = Ordering::Relaxed;
    let next = p.next_ip.load(r);
    let target = p.target.load(r);
    let slot = p.slot.load(r);
    let resume = p.tramp_resume.load(r);
    if resume != 0 {
        // A fast-path site: its trampoline runs the whole span (mid-patch, or while the
        // budget has the jump out).
        ctx.set_rip(resume);
        return;
    }
    match Emulation::unpack(p.emulation.load(r)) {
        Emulation::OutOfLine => ctx.set_rip(slot),
        Emulation::Nop => ctx.set_rip(next),
        Emulation::Jmp => ctx.set_rip(target),
        Emulation::Jcc(c) => {
            let taken = site::condition_holds(c, ctx.flags());
            ctx.set_rip(if taken { target } else { next });
        }
        Emulation::CallRel => {
            let sp = ctx.rsp().wrapping_sub(8);
            if !ctx.faults_unsafe() && write_u64_guarded(sp, next) {
                ctx.set_rsp(sp);
                ctx.set_rip(target);
            } else {
                // The slot's `push [ret]; jmp target` faults as the call would have.
                ctx.set_rip(slot);
            }
        }
        Emulation::Push(reg) => {
            let v = ctx.greg(reg as usize);
            let sp = ctx.rsp().wrapping_sub(8);
            if !ctx.faults_unsafe() && write_u64_guarded(sp, v) {
                ctx.set_rsp(sp);
                ctx.set_rip(next);
            } else {
                ctx.set_rip(slot);
            }
        }
    }
}

/// In a forked child: put every original byte back (the child has no agent thread).
/// Runs between fork and the child's return: async-signal-safe calls only.
extern "C" fn atfork_child() {
    FORKED.store(true, Ordering::Release);
    // The parent's /proc/self/mem fd still points at the parent: open the child's own.
    let fd = sys::open_proc_self_mem_raw();
    if fd < 0 {
        return;
    }
    for p in STATES.iter() {
        if p.status.load(Ordering::Acquire) == ARMED {
            let addr = p.addr.load(Ordering::Relaxed);
            if p.fast.load(Ordering::Acquire) {
                // Single-threaded here: any order is fine. The span's tail, then its start.
                let n = p.fast_len.load(Ordering::Relaxed) as usize;
                for k in (0..n).rev() {
                    let word = p.fast_orig[k / 8].load(Ordering::Relaxed);
                    sys::pwrite_byte(fd, addr + k as u64, (word >> (8 * (k % 8))) as u8);
                }
            }
            sys::pwrite_byte(fd, addr, p.orig_byte.load(Ordering::Relaxed));
            p.status.store(RETIRED, Ordering::SeqCst);
        }
    }
    sys::close(fd);
}

/// The address range of the trap path's code (which cannot be probed); for tests.
#[doc(hidden)]
pub fn trap_path_range() -> (u64, u64) {
    asm::own_code_ranges()[1]
}

/// Reads `buf.len()` bytes at `addr` without ever crashing: `Err(Fault)` when unmapped.
pub fn read_memory(addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
    let _ = Engine::get();
    SafeMemory.read(addr, buf)
}

/// The bytes of code at `addr` as they are now (for tests comparing with the original).
pub fn text_bytes(addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    match read_memory(addr, &mut buf) {
        Ok(()) => buf,
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retired_probe_waits_for_the_guard_slots_taken_when_it_retired() {
        let tp = 0x7f00_dead_0040u64;
        let Guard::Entered(g) = guard_enter(tp) else {
            panic!("no guard slot");
        };
        assert!(matches!(guard_enter(tp), Guard::Nested));
        let inside = guard_snapshot();
        assert!(inside[g].is_some());
        assert!(!guard_moved(&inside));
        // Another thread entering and leaving a slot of its own does not release it.
        let Guard::Entered(h) = guard_enter(tp + 0x1000) else {
            panic!("no second guard slot");
        };
        guard_exit(h);
        assert!(!guard_moved(&inside));
        guard_exit(g);
        assert!(guard_moved(&inside));
        // Taken again by the same thread later: still released (its count moved).
        let Guard::Entered(again) = guard_enter(tp) else {
            panic!("no guard slot");
        };
        assert!(guard_moved(&inside));
        guard_exit(again);
        assert!(guard_snapshot().iter().all(Option::is_none));
    }

    #[test]
    fn slot_counters_sum_over_the_slots_and_reset() {
        static C: SlotCounter = SlotCounter::new();
        let c = &C;
        c.add(0, 7);
        c.add(5, 7);
        c.add(5, 7);
        c.add(5, 8);
        assert_eq!((c.sum(7), c.sum(8), c.sum(9)), (3, 1, 0));
        // Handler time, as `charge` adds it: 20,000 traps of 3 µs over two slots.
        for k in 0..20_000 {
            c.add_n(k % 2, 9, 3_000);
        }
        assert_eq!(c.sum(9), 60_000_000);
        c.reset(7);
        assert_eq!((c.sum(7), c.sum(8), c.sum(9)), (0, 1, 60_000_000));
    }
}
