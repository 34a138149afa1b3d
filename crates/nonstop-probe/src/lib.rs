//! x86_64 Linux code patching for nonstop: probes that capture and never stop the program.
//!
//! # Overview
//!
//! - [`Engine`]: the process-global probe engine. [`Engine::get`] starts it once (opens
//!   `/proc/self/mem`, installs the SIGTRAP/SIGSEGV/SIGBUS handlers, maps the hit ring);
//!   [`Engine::arm`] patches an `int3` over an instruction while other threads run,
//!   [`Engine::disarm`] restores the original byte, [`Engine::drain`] hands captured hits
//!   to the agent thread, [`Engine::stats`] reports counters and drops.
//! - [`ProbeSpec`]: where, what to capture (a [`CapturePlan`]) and the limits of one probe.
//! - [`Hit`]: one captured record, parsed with
//!   [`nonstop_capture::capture::CapturedMemory::parse`].
//! - [`read_memory`] / [`SafeMemory`]: fault-safe reads (a bad pointer gives
//!   `Err(ReadError::Fault)`, never a crash).
//!
//! At a hit the trap handler checks the probe's limits (done, rate, global budget, max
//! hits), copies the registers and runs the plan into a preallocated ring slot, then performs
//! the displaced instruction: `nop`, `jmp`, `jcc`, `call rel32` and `push r64` are emulated;
//! anything else runs from an out-of-line slot within ±2 GB that ends in `jmp back` (a call
//! through a register or memory runs as `push <original return address>; jmp <operand>`, so
//! no return address ever points into a slot). One trap per hit, no single-step. The
//! handler never allocates, locks, touches lazy TLS or panics.
//!
//! # Decisions
//!
//! - **LOCK-prefixed instructions are probed** (uprobes refuses them): the relocated copy is
//!   the same atomic instruction. FS/GS prefixes are fine; ES/CS/DS/SS prefixes, traps,
//!   system instructions, `syscall`/`sysenter`, far transfers, `mov ss`/`pop ss`,
//!   operand-size-prefixed branches and transactional regions are refused with a reason.
//! - **Slots belong to their site.** Re-arming a site reuses its slot unchanged, so a
//!   thread preempted inside a slot (returning from the handler is a preemption point)
//!   always finds the same code; a slot is rewritten only for a site whose bytes changed,
//!   after 10 × the grace period. Probe states are reused after the grace period once no
//!   handler is using them; the address table never forgets an address, so a trap that
//!   arrives late for a disarmed probe re-runs the original instruction.
//! - **Stacks.** SIGTRAP is installed *without* `SA_ONSTACK`: the capture runs on one of a
//!   pool of preallocated stacks, and a fault in a guarded read there would put the
//!   SIGSEGV frame at the top of the alternate stack, over a SIGTRAP frame kept there. The
//!   trap frame therefore goes on the thread's own stack (≈ 1–3 KB plus a small handler
//!   frame, below the red zone). When the interrupted code was itself on the alternate
//!   stack, or blocks SIGSEGV/SIGBUS, that hit reads with `process_vm_readv` instead.
//! - **Nesting.** SIGTRAP uses `SA_NODEFER`: a probed function called from a signal
//!   handler that interrupted ours, or a probe on something the handler calls (`memcpy`,
//!   `clock_gettime`), traps again; the handler sees the same thread inside it (by its
//!   thread pointer, no TLS) and only runs the displaced instruction, counting
//!   `dropped_nested`. The code the handler runs before that check sits in the
//!   `nonstop_probe_trap` section and cannot be probed.
//! - **Budget** is measured handler time plus the kernel's trap delivery and return (timed
//!   once at start on a private page, ≈ 1.3–3.7 µs a trap), summed over a sliding window;
//!   every trap is charged, captured or not. A site whose traps exceed the budget, or its
//!   own rate limit many times over, asks to be taken out: the handler only flips a flag
//!   and, once the hit is timed, writes an eventfd (both async-signal-safe); the budget's
//!   thread `nonstop-budget` ([`Engine::start_budget_thread`], running
//!   [`Engine::enforce_budget`]) restores the original byte and patches it back after a
//!   back-off (100 ms doubling to 10 s, reset after a calm window). So the program pays the
//!   budget plus the traps until that thread wakes, not a trap per execution forever.
//! - **The agent thread sleeps** in [`Engine::wait`] on an eventfd: a committed hit or a
//!   site asking to go out wakes it; with probes armed and no hits it uses no CPU.
//! - **Count-only probes** ([`ProbeSpec::count_only`]) add one to an atomic counter in the
//!   trap path and write no record, so counts stay exact at any rate the budget allows.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use nonstop_capture::capture::{CapturePlan, CapturedMemory};
//! use nonstop_probe::{Engine, ProbeSpec};
//!
//! #[inline(never)]
//! extern "C" fn add(a: u64, b: u64) -> u64 {
//!     std::hint::black_box(a) + b
//! }
//!
//! let engine = Engine::get()?;
//! let entry = add as usize as u64;
//! let id = engine.arm(ProbeSpec::new(entry, Arc::new(CapturePlan::default())))?;
//! assert_eq!(std::hint::black_box(add)(2, 3), 5); // runs as before, and is captured
//! engine.disarm(id)?;
//! let mut first_arg = None;
//! engine.drain(|hit| {
//!     let rec = CapturedMemory::parse(hit.record).unwrap();
//!     first_arg = Some(rec.regs.gpr[5]); // rdi, DWARF register 5
//! });
//! assert_eq!(first_arg, Some(2));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Signals and linking
//!
//! The crate exports `sigaction` and `signal`: when it is linked into the executable or
//! loaded with `LD_PRELOAD`, a handler the program installs later for SIGTRAP, SIGSEGV or
//! SIGBUS is chained behind ours instead of replacing it. Calls that bind to libc directly
//! (from other shared libraries in a linked build) bypass this; [`Engine::signals_owned`]
//! tells whether the handlers are still ours.
//!
//! # fork
//!
//! A forked child inherits the `int3`s but not the agent thread: a `pthread_atfork` child
//! hook restores every original byte in the child, and the engine refuses to arm there.
//!
//! [`CapturePlan`]: nonstop_capture::capture::CapturePlan
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
compile_error!("nonstop-probe supports x86_64 Linux only");

#[path = "arch/x86_64/mod.rs"]
mod arch;
mod backoff;
mod engine;
mod entry;
mod limits;
mod quiescence;
mod ring;
mod signals;
mod slots;
#[path = "sys/linux.rs"]
mod sys;
mod threads;

pub use arch::fastpath::{FastRefusal, check_in_file as fast_path_check};
pub use backoff::{FIRST_BACKOFF, MAX_BACKOFF, OutReason, Sampling};
pub use engine::{
    ArmError, DEFAULT_TIME_CAP, DisarmReason, Engine, EngineConfig, EngineError, EntrySource,
    FastPath, Hit, MAX_PROBES, ProbeId, ProbeSpec, ProbeStats, RateLimit, SafeMemory, read_memory,
    text_bytes, trap_path_range,
};
pub use entry::{FRAMES as ENTRY_FRAMES, THREADS as ENTRY_THREADS};
pub use signals::{sigaction, signal};

/// Runs `function` when the shared object (or executable) is loaded, before `main`: for the
/// `LD_PRELOAD` agent, whose crate may contain no `unsafe` itself. The expansion is a
/// `.init_array` entry; `#![forbid(unsafe_code)]` in the calling crate accepts it.
///
/// ```
/// fn start() {}
/// nonstop_probe::on_load!(start);
/// ```
#[macro_export]
macro_rules! on_load {
    ($function:path) => {
        const _: () = {
            extern "C" fn __nonstop_on_load() {
                $function()
            }
            #[used]
            #[unsafe(link_section = ".init_array")]
            static __NONSTOP_ON_LOAD: extern "C" fn() = __nonstop_on_load;
        };
    };
}

/// CLOCK_MONOTONIC now, in ns: the clock of [`Hit::time_ns`], so the agent can turn hit
/// times into wall-clock times.
pub fn monotonic_ns() -> u64 {
    sys::now_ns()
}

/// Runs `function` when the process exits normally (`exit`, or `main` returning), before
/// the C runtime tears down: the agent flushes the hits still in the ring there.
pub fn at_exit(function: extern "C" fn()) -> bool {
    // SAFETY: `atexit` only records the pointer; `function` is a plain `extern "C" fn` that
    // lives as long as the program.
    unsafe { libc::atexit(function) == 0 }
}
