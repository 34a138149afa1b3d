//! Entry values under real traps (int3): a companion probe at the entry of a recursive
//! function records rdi, a line probe after the recursive call returns reads "rdi at entry"
//! (`LocOp::EntryReg`) for its own frame, matched by CFA. Each live frame must read its
//! own value, never its callee's; frames whose record is gone (deeper than the table's
//! frames per thread, or entered before the companion was armed) read unavailable.
//! Own process: the probe engine and its signal handlers are process-global.

mod common;

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use common::*;
use iced_x86::{FlowControl, Instruction, Mnemonic, OpKind, Register};
use nonstop_capture::capture::{
    CapturePlan, CapturedRoot, LocOp, Piece, PieceSource, REG_RSP, RootPlan,
};
use nonstop_probe::{Engine, EntrySource, ProbeId, ProbeSpec};

/// The depth at which `down` runs [`HOOK`] (on entering that frame, before recursing).
static ARM_AT: AtomicU64 = AtomicU64::new(u64::MAX);
/// Run once by `down` at depth [`ARM_AT`].
type Hook = Box<dyn FnOnce() + Send>;
static HOOK: Mutex<Option<Hook>> = Mutex::new(None);

/// down(n) = n + (n - 1) + … + 0, one frame per level; `depth` arrives in rdi.
#[inline(never)]
extern "C" fn down(depth: u64) -> u64 {
    if depth == ARM_AT.load(Ordering::SeqCst) {
        let hook = HOOK.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(hook) = hook {
            hook();
        }
    }
    if depth == 0 {
        return black_box(0);
    }
    let below = down(black_box(depth.wrapping_sub(1)));
    black_box(below.wrapping_add(black_box(depth)))
}

fn down_addr() -> u64 {
    down as extern "C" fn(u64) -> u64 as usize as u64
}

/// Where to probe `down`: its entry, the return address of its recursive call, and the
/// CFA rule there (`CFA = rsp + offset`), from its live code.
#[derive(Clone, Copy)]
struct Sites {
    entry: u64,
    after_call: u64,
    cfa_offset: i64,
}

/// Decodes `down` up to its recursive call (a direct call to itself), adding up what the
/// prologue takes off rsp (pushes, `sub rsp, imm`); anything else writing rsp there is
/// refused, so the CFA rule is exact.
fn sites() -> Sites {
    let entry = down_addr();
    let instrs = decode(entry, nonstop_probe::text_bytes(entry, 1024).len());
    let mut below = 0i64; // bytes between rsp and the return address of `down`'s caller
    let mut call: Option<Instruction> = None;
    for i in &instrs {
        assert!(!i.is_invalid(), "undecodable code in down at {:#x}", i.ip());
        if i.is_call_near() && i.near_branch_target() == entry {
            call = Some(*i);
            break;
        }
        assert_ne!(
            i.flow_control(),
            FlowControl::Return,
            "a ret in down before its recursive call: {i}"
        );
        match i.mnemonic() {
            Mnemonic::Push => below += 8,
            Mnemonic::Pop => below -= 8,
            Mnemonic::Sub | Mnemonic::Add
                if i.op0_kind() == OpKind::Register
                    && i.op0_register() == Register::RSP
                    && matches!(
                        i.op1_kind(),
                        OpKind::Immediate8to64 | OpKind::Immediate32to64 | OpKind::Immediate8
                    ) =>
            {
                let imm = i.immediate(1) as i64;
                below += if i.mnemonic() == Mnemonic::Sub {
                    imm
                } else {
                    -imm
                };
            }
            _ if !i.is_call_near() && !i.is_call_near_indirect() => {
                let writes_rsp = i.op_count() > 0
                    && i.op0_kind() == OpKind::Register
                    && i.op0_register().full_register() == Register::RSP;
                assert!(!writes_rsp, "down changes rsp in a way not followed: {i}");
            }
            _ => {}
        }
    }
    let call = call.expect("down calls itself directly");
    Sites {
        entry,
        after_call: call.next_ip(),
        cfa_offset: below + 8,
    }
}

/// The line probe's plan: one root, the 8 bytes of rdi at this frame's entry.
fn entry_rdi_plan() -> Arc<CapturePlan> {
    Arc::new(CapturePlan {
        roots: vec![RootPlan {
            pieces: vec![Piece {
                size: 8,
                source: PieceSource::Expr {
                    ops: vec![LocOp::EntryReg { reg: 5, offset: 0 }],
                    value: true,
                },
            }],
            node: None,
        }],
        nodes: vec![],
        stack_bytes: 0,
        max_bytes: 4096,
    })
}

/// Arms the companion at `down`'s entry and the line probe after its recursive call.
fn arm(engine: &Engine, s: &Sites) -> (ProbeId, ProbeId) {
    let companion = engine
        .arm(ProbeSpec {
            records_entry: true,
            ..ProbeSpec::new(s.entry, empty_plan())
        })
        .expect("companion arms");
    let line = engine
        .arm(ProbeSpec {
            entry: Some(EntrySource {
                companion,
                cfa_reg: REG_RSP,
                cfa_offset: s.cfa_offset,
            }),
            ..ProbeSpec::new(s.after_call, entry_rdi_plan())
        })
        .expect("line probe arms");
    (companion, line)
}

/// The entry value each line hit read, in hit order (innermost frame first): `Some(rdi)`,
/// or `None` when unavailable. Checks the hits are at the line probe, outward.
fn entry_values(engine: &Engine, line: ProbeId, s: &Sites) -> Vec<Option<u64>> {
    let records = drain_for(engine, line);
    let mut last_rsp = 0u64;
    records
        .iter()
        .map(|r| {
            assert_eq!(r.regs.gpr[16], s.after_call, "rip of a line hit");
            let rsp = r.regs.gpr[REG_RSP as usize];
            assert!(
                rsp > last_rsp,
                "hits go outward: rsp {rsp:#x} after {last_rsp:#x}"
            );
            last_rsp = rsp;
            match &r.roots[..] {
                [CapturedRoot::Bytes { bytes, addr: None }] => Some(u64::from_le_bytes(
                    bytes.as_slice().try_into().expect("8 bytes"),
                )),
                [CapturedRoot::Unavailable] => None,
                other => panic!("unexpected roots {other:?}"),
            }
        })
        .collect()
}

/// Disarms the line probe, then its companion; no probe is left.
fn disarm(engine: &Engine, companion: ProbeId, line: ProbeId) {
    engine.disarm(line).unwrap();
    engine.disarm(companion).unwrap();
    assert_eq!(engine.armed_count(), 0);
}

fn sum_to(n: u64) -> u64 {
    n * (n + 1) / 2
}

#[test]
fn each_frame_of_a_recursion_reads_its_own_entry_value() {
    let _s = serial();
    let engine = engine();
    let s = sites();
    assert_eq!(down(black_box(5)), sum_to(5), "the fixture itself");
    let (companion, line) = arm(engine, &s);
    // down(5) enters frames 5, 4, …, 0; frames 1..=5 return from a recursive call, the
    // innermost first. Each reads its own rdi at entry, not its callee's (one less).
    assert_eq!(down(black_box(5)), sum_to(5));
    assert_eq!(
        entry_values(engine, line, &s),
        [Some(1), Some(2), Some(3), Some(4), Some(5)]
    );
    // Again, shallower, over the same stack (the same CFAs as frames of the first run):
    // every frame reads the value of this run's entry, none a stale one.
    assert_eq!(down(black_box(3)), sum_to(3));
    assert_eq!(entry_values(engine, line, &s), [Some(1), Some(2), Some(3)]);
    let stats = engine.stats(line).unwrap();
    assert_eq!(stats.hits, 8);
    assert_eq!(engine.stats(companion).unwrap().traps, 6 + 4);
    disarm(engine, companion, line);
}

#[test]
fn recursion_deeper_than_the_table_loses_the_oldest_frames_not_their_values() {
    let _s = serial();
    let engine = engine();
    let s = sites();
    let (companion, line) = arm(engine, &s);
    // down(12) enters 13 frames (12, …, 0); the table keeps the newest 8 entries: frames
    // 7..=0. Frames 1..=7 read exactly their own value, frames 8..=12 unavailable.
    assert_eq!(down(black_box(12)), sum_to(12));
    let want: Vec<Option<u64>> = (1..=12)
        .map(|k| (k < nonstop_probe::ENTRY_FRAMES as u64).then_some(k))
        .collect();
    assert_eq!(
        want,
        [
            Some(1),
            Some(2),
            Some(3),
            Some(4),
            Some(5),
            Some(6),
            Some(7),
            None,
            None,
            None,
            None,
            None
        ]
    );
    assert_eq!(entry_values(engine, line, &s), want);
    // The lost frames do not poison the next run: a shallow one reads every value.
    assert_eq!(down(black_box(4)), sum_to(4));
    assert_eq!(
        entry_values(engine, line, &s),
        [Some(1), Some(2), Some(3), Some(4)]
    );
    disarm(engine, companion, line);
}

#[test]
fn a_frame_entered_before_the_companion_was_armed_reads_unavailable() {
    let _s = serial();
    let engine = engine();
    let s = sites();
    let (tx, rx) = mpsc::channel();
    let hook_sites = s;
    // Armed from inside frame 3 (after its entry, before it recurses): frames 5, 4 and 3
    // were entered unprobed, frames 2, 1 and 0 with the companion armed.
    *HOOK.lock().unwrap() = Some(Box::new(move || {
        tx.send(arm(engine, &hook_sites)).unwrap();
    }));
    ARM_AT.store(3, Ordering::SeqCst);
    assert_eq!(down(black_box(5)), sum_to(5));
    ARM_AT.store(u64::MAX, Ordering::SeqCst);
    let (companion, line) = rx.try_recv().expect("the hook armed the probes");
    assert_eq!(
        engine.stats(companion).unwrap().traps,
        3,
        "entries of 2, 1, 0"
    );
    assert_eq!(
        entry_values(engine, line, &s),
        [Some(1), Some(2), None, None, None]
    );
    // A whole run after arming: every frame has its record.
    assert_eq!(down(black_box(5)), sum_to(5));
    assert_eq!(
        entry_values(engine, line, &s),
        [Some(1), Some(2), Some(3), Some(4), Some(5)]
    );
    disarm(engine, companion, line);
}
