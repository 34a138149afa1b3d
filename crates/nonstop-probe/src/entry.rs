//! Entry records: register values a companion probe at a function's entry keeps for the
//! line probes of the same frame (`DW_OP_entry_value`).
//!
//! A fixed table of [`THREADS`] rows × [`FRAMES`] records, allocated statically: a row
//! belongs to one thread (claimed by its thread pointer on its first record, never given
//! back), a record to one frame, keyed by (companion probe id, the companion's epoch,
//! the frame's CFA). The companion writes a record at each entry, over the one with the
//! same companion and CFA (that frame has returned) or else over the oldest; a line probe
//! reads the record whose key matches its own frame's CFA and the companion's current
//! epoch, or none.
//!
//! The epoch moves whenever an entry may have gone unrecorded (a nested trap, a hit
//! dropped for the budget, the site taken out or put back), so a frame never gets the
//! values of an earlier frame at the same CFA: it gets nothing, and says so.
//!
//! Only the owning thread touches its row, from inside the trap handler, and a trap
//! nested there is not recorded (the handler's guard): records are never written by two
//! parties at once. Atomics (relaxed) keep the statics safe without `unsafe`.

use std::sync::atomic::{AtomicU64, Ordering};

use nonstop_capture::capture::{ENTRY_GPR_COUNT, ENTRY_XMM_COUNT, EntryRegisters, Registers};

/// Threads with entry records at once; a thread beyond them records nothing (its
/// entry-value variables are unavailable).
pub const THREADS: usize = 128;
/// Frames kept per thread (the newest ones; recursion deeper than this loses the oldest).
pub const FRAMES: usize = 8;

/// Words of a record: companion id, epoch, CFA, sequence, then the registers.
const KEY: usize = 4;
const WORDS: usize = KEY + ENTRY_GPR_COUNT + ENTRY_XMM_COUNT;

struct Row {
    /// The owning thread's pointer (0: free).
    owner: AtomicU64,
    /// The sequence number of the next record (orders records by age).
    seq: AtomicU64,
    frames: [[AtomicU64; WORDS]; FRAMES],
}

impl Row {
    const fn new() -> Row {
        Row {
            owner: AtomicU64::new(0),
            seq: AtomicU64::new(1),
            frames: [const { [const { AtomicU64::new(0) }; WORDS] }; FRAMES],
        }
    }
}

static ROWS: [Row; THREADS] = [const { Row::new() }; THREADS];

fn start(tp: u64) -> usize {
    (tp.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 57) as usize % THREADS
}

/// The row of the thread `tp`, claiming a free one when `claim` is set.
fn row(tp: u64, claim: bool) -> Option<&'static Row> {
    if tp == 0 {
        return None;
    }
    let first = start(tp);
    for k in 0..THREADS {
        let row = ROWS.get((first + k) % THREADS)?;
        let owner = row.owner.load(Ordering::Acquire);
        if owner == tp {
            return Some(row);
        }
        if owner == 0 {
            if !claim {
                return None;
            }
            match row
                .owner
                .compare_exchange(0, tp, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(row),
                Err(now) if now == tp => return Some(row),
                Err(_) => {}
            }
        }
    }
    None
}

/// Trap path: records the registers at the entry of a frame whose CFA is `cfa`, for
/// companion `id` at `epoch`. Returns false when the thread has no row (table full).
pub(crate) fn record(tp: u64, id: u64, epoch: u64, cfa: u64, regs: &Registers) -> bool {
    let Some(row) = row(tp, true) else {
        return false;
    };
    let r = Ordering::Relaxed;
    // The same frame position (it has returned), else an empty record, else the oldest.
    let mut pick = 0usize;
    let mut oldest = u64::MAX;
    for (i, f) in row.frames.iter().enumerate() {
        if f[0].load(r) == id && f[2].load(r) == cfa {
            pick = i;
            break;
        }
        let seq = if f[0].load(r) == 0 { 0 } else { f[3].load(r) };
        if seq < oldest {
            oldest = seq;
            pick = i;
        }
    }
    let Some(f) = row.frames.get(pick) else {
        return false;
    };
    let entry = EntryRegisters::from_registers(regs);
    f[0].store(0, r);
    for (w, v) in f[KEY..]
        .iter()
        .zip(entry.gpr.iter().chain(entry.xmm.iter()))
    {
        w.store(*v, r);
    }
    f[1].store(epoch, r);
    f[2].store(cfa, r);
    f[3].store(row.seq.fetch_add(1, r), r);
    f[0].store(id, r);
    true
}

/// Trap path: the registers recorded at the entry of this thread's frame whose CFA is
/// `cfa`, by companion `id` at `epoch`.
pub(crate) fn lookup(tp: u64, id: u64, epoch: u64, cfa: u64) -> Option<EntryRegisters> {
    let row = row(tp, false)?;
    let r = Ordering::Relaxed;
    let f = row
        .frames
        .iter()
        .find(|f| id != 0 && f[0].load(r) == id && f[1].load(r) == epoch && f[2].load(r) == cfa)?;
    let mut e = EntryRegisters::default();
    let (gpr, xmm) = f[KEY..].split_at(ENTRY_GPR_COUNT);
    for (d, w) in e.gpr.iter_mut().zip(gpr) {
        *d = w.load(r);
    }
    for (d, w) in e.xmm.iter_mut().zip(xmm) {
        *d = w.load(r);
    }
    Some(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_reads_its_own_record_and_the_oldest_is_overwritten() {
        let tp = 0x7f00_0000_1000;
        let mut regs = Registers::default();
        for k in 0..(FRAMES as u64 + 2) {
            regs.gpr[5] = k;
            assert!(record(tp, 9, 1, 0x1000 - 0x40 * k, &regs));
        }
        // The two oldest frames are gone; the others read exactly their own values.
        for k in 0..(FRAMES as u64 + 2) {
            let got = lookup(tp, 9, 1, 0x1000 - 0x40 * k).map(|e| e.gpr[5]);
            assert_eq!(got, (k >= 2).then_some(k), "frame {k}");
        }
        // Another epoch, another companion, another thread: nothing.
        assert_eq!(lookup(tp, 9, 2, 0x1000 - 0x40 * 5), None);
        assert_eq!(lookup(tp, 8, 1, 0x1000 - 0x40 * 5), None);
        assert_eq!(lookup(tp + 0x1000, 9, 1, 0x1000 - 0x40 * 5), None);
        // A new entry at the same CFA replaces that frame's record.
        regs.gpr[5] = 99;
        assert!(record(tp, 9, 1, 0x1000 - 0x40 * 5, &regs));
        assert_eq!(
            lookup(tp, 9, 1, 0x1000 - 0x40 * 5).map(|e| e.gpr[5]),
            Some(99)
        );
        assert_eq!(
            lookup(tp, 9, 1, 0x1000 - 0x40 * 6).map(|e| e.gpr[5]),
            Some(6)
        );
    }
}
