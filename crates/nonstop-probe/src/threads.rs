//! What a fast-path hit asks of the current thread without a system call (each costs
//! ~200 ns on this VM, more than the rest of the hit):
//! - its id, read from the C library's thread control block at an offset found at start
//!   on three threads (glibc and musl keep the kernel's tid there, and glibc's `fork`
//!   updates it); `gettid` where no offset was found;
//! - whether it runs on its alternate signal stack: the stack's range is asked once per
//!   thread and kept in a table keyed by the thread pointer and id, so a thread that
//!   reuses a dead thread's control block asks again. What the table cannot see: a thread
//!   that replaces its alternate stack after its first fast hit (Rust's std and C
//!   programs set it once, when the thread starts).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use nonstop_capture::capture::Memory;

use crate::sys;

/// No offset found: ask the kernel.
const UNKNOWN: usize = usize::MAX;
/// Bytes of the control block searched for the tid.
const SEARCH: usize = 2048;

static TID_OFFSET: AtomicUsize = AtomicUsize::new(UNKNOWN);

/// Finds where the C library keeps the thread id in its control block: the offsets that
/// hold the tid on this thread and on two new ones, the first of them. Call once, from a
/// thread that may spawn threads, before any fast-path hit.
pub fn find_tid_offset(thread_pointer: fn() -> u64) {
    let here = move |found: &mut Vec<usize>| {
        let tp = thread_pointer();
        let tid = sys::gettid();
        let mut block = vec![0u8; SEARCH];
        if crate::engine::SafeMemory.read(tp, &mut block).is_err() {
            found.clear();
            return;
        }
        found.retain(|&off| block[off..off + 4] == tid.to_le_bytes());
    };
    let mut found: Vec<usize> = (0..SEARCH).step_by(4).collect();
    here(&mut found);
    for _ in 0..2 {
        let mine = std::mem::take(&mut found);
        let spawned = std::thread::Builder::new()
            .name("nonstop-tid".into())
            .spawn(move || {
                let mut f = mine;
                here(&mut f);
                f
            });
        found = match spawned.map(|h| h.join()) {
            Ok(Ok(f)) => f,
            _ => Vec::new(),
        };
    }
    if let Some(&off) = found.first() {
        TID_OFFSET.store(off, Ordering::Release);
    }
}

/// The calling thread's id; `tp` is its thread pointer.
#[unsafe(link_section = "nonstop_probe_trap")]
pub fn tid(tp: u64) -> u32 {
    let off = TID_OFFSET.load(Ordering::Acquire);
    if off == UNKNOWN {
        return sys::gettid();
    }
    // SAFETY: `tp` is the calling thread's own control block, mapped for as long as the
    // thread runs; `off + 4 <= SEARCH`, read on three threads at start (aligned: a
    // multiple of 4, read unaligned).
    unsafe { ((tp as usize + off) as *const u32).read_unaligned() }
}

/// One thread's alternate signal stack, written only by that thread.
struct Row {
    tp: AtomicU64,
    tid: AtomicU32,
    lo: AtomicU64,
    hi: AtomicU64,
}

const ROWS: usize = 1024;
/// Rows tried from a thread's hash before it gives up and asks every time.
const PROBE: usize = 16;

static TABLE: [Row; ROWS] = [const {
    Row {
        tp: AtomicU64::new(0),
        tid: AtomicU32::new(0),
        lo: AtomicU64::new(0),
        hi: AtomicU64::new(0),
    }
}; ROWS];

/// Whether the calling thread (thread pointer `tp`, id `tid`) runs on its alternate
/// signal stack at `rsp`. True when that cannot be known (the caller then holds signals).
#[unsafe(link_section = "nonstop_probe_trap")]
pub fn on_alternate_stack(tp: u64, tid: u32, rsp: u64) -> bool {
    let start = (tp >> 6) as usize % ROWS;
    let mut free = None;
    for k in 0..PROBE {
        let row = &TABLE[(start + k) % ROWS];
        let owner = row.tp.load(Ordering::Acquire);
        if owner == tp {
            if row.tid.load(Ordering::Relaxed) == tid {
                let (lo, hi) = (
                    row.lo.load(Ordering::Relaxed),
                    row.hi.load(Ordering::Relaxed),
                );
                return lo <= rsp && rsp < hi;
            }
            // A dead thread's control block, reused: ask again.
            return ask(row, tid);
        }
        if owner == 0 && free.is_none() {
            free = Some(row);
        }
    }
    match free {
        Some(row)
            if row
                .tp
                .compare_exchange(0, tp, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok() =>
        {
            ask(row, tid)
        }
        _ => sys::alternate_stack().is_none_or(|s| s.on),
    }
}

/// Asks the kernel and keeps the answer in `row` (the calling thread's).
fn ask(row: &Row, tid: u32) -> bool {
    let Some(s) = sys::alternate_stack() else {
        row.tid.store(0, Ordering::Relaxed);
        return true;
    };
    row.lo.store(s.lo, Ordering::Relaxed);
    row.hi.store(s.hi, Ordering::Relaxed);
    row.tid.store(tid, Ordering::Release);
    s.on
}
