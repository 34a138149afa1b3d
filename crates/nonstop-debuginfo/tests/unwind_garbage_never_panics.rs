//! Random registers over random stack memory: unwinding and symbolizing never panic and
//! never return more frames than asked for. Code addresses are mixed into the registers
//! and the stack words so the CFI paths of real modules (this test binary, libc) run.

use nonstop_capture::capture::{GPR_COUNT, Memory, REG_RSP, ReadError, Registers};
use nonstop_debuginfo::{Stacks, Unwinder};
use proptest::prelude::*;
use std::sync::{Mutex, OnceLock};

/// Words of memory starting at `base`.
struct Words {
    base: u64,
    words: Vec<u64>,
}

impl Memory for Words {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let bytes: Vec<u8> = self.words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let start = addr.checked_sub(self.base).ok_or(ReadError::NotCaptured)? as usize;
        let end = start.checked_add(buf.len()).ok_or(ReadError::NotCaptured)?;
        buf.copy_from_slice(bytes.get(start..end).ok_or(ReadError::NotCaptured)?);
        Ok(())
    }
}

fn stacks() -> &'static Mutex<Stacks> {
    static STACKS: OnceLock<Mutex<Stacks>> = OnceLock::new();
    STACKS.get_or_init(|| Mutex::new(Stacks::new_for_self().unwrap()))
}

/// The code ranges of this process, to aim random addresses at.
fn code_ranges() -> &'static [(u64, u64)] {
    static RANGES: OnceLock<Vec<(u64, u64)>> = OnceLock::new();
    RANGES.get_or_init(|| {
        let u = Unwinder::from_proc_maps(None).unwrap();
        u.modules()
            .iter()
            .flat_map(|m| m.ranges().iter().map(|r| (r.start, r.end)))
            .collect()
    })
}

/// Any word, or an address inside some module's code.
fn word() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        (any::<prop::sample::Index>(), any::<u64>()).prop_map(|(i, off)| {
            let ranges = code_ranges();
            let (start, end) = ranges[i.index(ranges.len())];
            start + off % (end - start).max(1)
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_registers_and_stack_never_panic(
        gpr in prop::collection::vec(word(), GPR_COUNT),
        words in prop::collection::vec(word(), 0..256),
        below in 0u64..64,
        max_frames in 0usize..40,
    ) {
        let mut regs = Registers::default();
        regs.gpr.copy_from_slice(&gpr);
        // Put the stack where rsp points (a little below it, sometimes).
        let base = regs.gpr[REG_RSP as usize].wrapping_sub(below * 8);
        let mem = Words { base, words };
        let mut stacks = stacks().lock().unwrap();
        let raw = stacks.unwinder().unwind(&regs, &mem, max_frames);
        prop_assert!(raw.len() <= max_frames);
        let frames = stacks.frames(&regs, &mem, max_frames);
        prop_assert!(frames.len() <= max_frames);
        prop_assert!(frames.iter().all(|f| !f.function.is_empty()));
    }
}
