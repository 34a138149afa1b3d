//! A companion probe and another probe at the same address, under real traps (int3): a
//! probe at a function's entry (a rule at its first line) and the companion that a line
//! probe later in the function needs there. Both run at every trap, each with its own
//! counts and limits: the other probe's hit limit and rate never keep the companion from
//! recording, and the companion's traps are never the other's hits. Either can be
//! disarmed first and the other goes on; with both gone the bytes are the file's again.
//! Own process: the probe engine and its signal handlers are process-global.

mod common;

use std::hint::black_box;
use std::sync::Arc;

use common::*;
use iced_x86::{FlowControl, Instruction, Mnemonic, OpKind, Register};
use nonstop_capture::capture::{
    CapturePlan, CapturedRoot, LocOp, Piece, PieceSource, REG_RSP, RootPlan,
};
use nonstop_probe::{ArmError, Engine, EntrySource, ProbeId, ProbeSpec, RateLimit};

/// down(n) = n + (n - 1) + … + 0, one frame per level; `depth` arrives in rdi.
#[inline(never)]
extern "C" fn down(depth: u64) -> u64 {
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

/// A plan of one root: 8 bytes from `source`.
fn plan_of(source: PieceSource) -> Arc<CapturePlan> {
    Arc::new(CapturePlan {
        roots: vec![RootPlan {
            pieces: vec![Piece { size: 8, source }],
            node: None,
        }],
        nodes: vec![],
        stack_bytes: 0,
        max_bytes: 4096,
    })
}

/// The entry probe's plan: rdi as it is at the entry (live there).
fn rdi_plan() -> Arc<CapturePlan> {
    plan_of(PieceSource::Register { reg: 5 })
}

/// The line probe's plan: rdi at this frame's entry (`DW_OP_entry_value`).
fn entry_rdi_plan() -> Arc<CapturePlan> {
    plan_of(PieceSource::Expr {
        ops: vec![LocOp::EntryReg { reg: 5, offset: 0 }],
        value: true,
    })
}

fn arm_companion(engine: &Engine, s: &Sites) -> Result<ProbeId, ArmError> {
    engine.arm(ProbeSpec {
        records_entry: true,
        ..ProbeSpec::new(s.entry, empty_plan())
    })
}

/// A probe at the entry that is not a companion, with `limit` applied.
fn arm_at_entry(
    engine: &Engine,
    s: &Sites,
    limit: impl FnOnce(&mut ProbeSpec),
) -> Result<ProbeId, ArmError> {
    let mut spec = ProbeSpec::new(s.entry, rdi_plan());
    limit(&mut spec);
    engine.arm(spec)
}

fn arm_line(engine: &Engine, s: &Sites, companion: ProbeId) -> ProbeId {
    engine
        .arm(ProbeSpec {
            entry: Some(EntrySource {
                companion,
                cfa_reg: REG_RSP,
                cfa_offset: s.cfa_offset,
            }),
            ..ProbeSpec::new(s.after_call, entry_rdi_plan())
        })
        .expect("line probe arms")
}

/// Each record's one root as a number (`None`: unavailable), in hit order.
fn values(records: &[nonstop_capture::capture::CapturedMemory]) -> Vec<Option<u64>> {
    records
        .iter()
        .map(|r| match &r.roots[..] {
            [CapturedRoot::Bytes { bytes, addr: None }] => Some(u64::from_le_bytes(
                bytes.as_slice().try_into().expect("8 bytes"),
            )),
            [CapturedRoot::Unavailable] => None,
            other => panic!("unexpected roots {other:?}"),
        })
        .collect()
}

/// Runs down(5) and returns what the entry probe and the line probe captured, by probe.
fn run(engine: &Engine, entry: Option<ProbeId>, line: Option<ProbeId>) -> [Vec<Option<u64>>; 2] {
    assert_eq!(down(black_box(5)), 15);
    let mut got = [Vec::new(), Vec::new()];
    engine.drain(|hit| {
        let k = if Some(hit.probe) == entry {
            0
        } else if Some(hit.probe) == line {
            1
        } else {
            panic!("a record of {:?}, no probe of this test's", hit.probe)
        };
        got[k].push(hit.record.to_vec());
    });
    got.map(|records| {
        let parsed: Vec<_> = records
            .iter()
            .map(|r| nonstop_capture::capture::CapturedMemory::parse(r).expect("record parses"))
            .collect();
        values(&parsed)
    })
}

/// down(5) enters frames 5, 4, …, 0: the entry probe sees rdi 5 down to 0.
const AT_ENTRY: [Option<u64>; 6] = [Some(5), Some(4), Some(3), Some(2), Some(1), Some(0)];
/// Frames 1..=5 return from their recursive call, innermost first, each with its own entry rdi.
const AFTER_CALL: [Option<u64>; 5] = [Some(1), Some(2), Some(3), Some(4), Some(5)];

fn code(s: &Sites) -> Vec<u8> {
    nonstop_probe::text_bytes(s.entry, (s.after_call - s.entry + 16) as usize)
}

#[test]
fn an_entry_probe_and_the_companion_share_the_address_armed_in_either_order() {
    let _s = serial();
    let engine = engine();
    let s = sites();
    let original = code(&s);
    for companion_first in [false, true] {
        let (entry, companion) = if companion_first {
            let c = arm_companion(engine, &s).expect("companion arms");
            (
                arm_at_entry(engine, &s, |_| {}).expect("entry probe arms beside it"),
                c,
            )
        } else {
            let e = arm_at_entry(engine, &s, |_| {}).expect("entry probe arms");
            (
                e,
                arm_companion(engine, &s).expect("companion arms beside it"),
            )
        };
        let line = arm_line(engine, &s, companion);
        assert_eq!(nonstop_probe::text_bytes(s.entry, 1), [0xcc]);
        // Both get every value: the entry probe its live rdi, the line probe its frame's
        // entry rdi; the companion's traps are not the entry probe's hits.
        assert_eq!(
            run(engine, Some(entry), Some(line)),
            [AT_ENTRY.to_vec(), AFTER_CALL.to_vec()]
        );
        assert_eq!(
            engine.stats(entry).unwrap().hits,
            6,
            "companion first: {companion_first}"
        );
        assert_eq!(engine.stats(entry).unwrap().traps, 6);
        assert_eq!(engine.stats(companion).unwrap().traps, 6);
        assert_eq!(engine.stats(line).unwrap().hits, 5);
        // A second companion or a second plain probe at the entry is refused, and the
        // ones there go on as before.
        let twice = ArmError::AlreadyArmed { address: s.entry };
        assert_eq!(arm_companion(engine, &s).map(|_| ()), Err(twice.clone()));
        assert_eq!(arm_at_entry(engine, &s, |_| {}).map(|_| ()), Err(twice));
        assert_eq!(
            run(engine, Some(entry), Some(line)),
            [AT_ENTRY.to_vec(), AFTER_CALL.to_vec()]
        );
        for id in [line, entry, companion] {
            engine.disarm(id).unwrap();
        }
        assert_eq!(engine.armed_count(), 0);
        assert_eq!(code(&s), original, "companion first: {companion_first}");
    }
}

#[test]
fn the_entry_probe_s_hit_limit_and_rate_do_not_stop_the_companion() {
    let _s = serial();
    let engine = engine();
    let s = sites();
    let original = code(&s);
    // At most 2 hits.
    let entry = arm_at_entry(engine, &s, |spec| spec.max_hits = Some(2)).unwrap();
    let companion = arm_companion(engine, &s).unwrap();
    let line = arm_line(engine, &s, companion);
    assert_eq!(
        run(engine, Some(entry), Some(line)),
        [vec![Some(5), Some(4)], AFTER_CALL.to_vec()]
    );
    let stats = engine.stats(entry).unwrap();
    assert_eq!((stats.hits, stats.done), (2, true));
    assert_eq!(
        run(engine, Some(entry), Some(line)),
        [vec![], AFTER_CALL.to_vec()]
    );
    engine.disarm(entry).unwrap();
    // One hit per hour, the companion armed first this time.
    let entry = arm_at_entry(engine, &s, |spec| {
        spec.rate = Some(RateLimit {
            per_second: 1.0 / 3600.0,
            burst: 1,
        })
    })
    .unwrap();
    assert_eq!(
        run(engine, Some(entry), Some(line)),
        [vec![Some(5)], AFTER_CALL.to_vec()]
    );
    let stats = engine.stats(entry).unwrap();
    assert_eq!((stats.hits, stats.dropped_rate), (1, 5));
    for id in [entry, line, companion] {
        engine.disarm(id).unwrap();
    }
    assert_eq!(code(&s), original);
}

#[test]
fn disarming_the_entry_probe_first_leaves_the_companion_recording() {
    let _s = serial();
    let engine = engine();
    let s = sites();
    let original = code(&s);
    for companion_first in [false, true] {
        let (entry, companion) = if companion_first {
            let c = arm_companion(engine, &s).unwrap();
            (arm_at_entry(engine, &s, |_| {}).unwrap(), c)
        } else {
            let e = arm_at_entry(engine, &s, |_| {}).unwrap();
            (e, arm_companion(engine, &s).unwrap())
        };
        let line = arm_line(engine, &s, companion);
        assert_eq!(
            run(engine, Some(entry), Some(line)),
            [AT_ENTRY.to_vec(), AFTER_CALL.to_vec()]
        );
        engine.disarm(entry).unwrap();
        assert_eq!(
            nonstop_probe::text_bytes(s.entry, 1),
            [0xcc],
            "the companion's trap stays"
        );
        assert_eq!(run(engine, None, Some(line)), [vec![], AFTER_CALL.to_vec()]);
        // And a new entry probe joins it again.
        let entry = arm_at_entry(engine, &s, |_| {}).unwrap();
        assert_eq!(
            run(engine, Some(entry), Some(line)),
            [AT_ENTRY.to_vec(), AFTER_CALL.to_vec()]
        );
        for id in [entry, line, companion] {
            engine.disarm(id).unwrap();
        }
        assert_eq!(code(&s), original, "companion first: {companion_first}");
    }
}

#[test]
fn disarming_the_companion_first_leaves_the_entry_probe_hitting() {
    let _s = serial();
    let engine = engine();
    let s = sites();
    let original = code(&s);
    for companion_first in [false, true] {
        let (entry, companion) = if companion_first {
            let c = arm_companion(engine, &s).unwrap();
            (arm_at_entry(engine, &s, |_| {}).unwrap(), c)
        } else {
            let e = arm_at_entry(engine, &s, |_| {}).unwrap();
            (e, arm_companion(engine, &s).unwrap())
        };
        let line = arm_line(engine, &s, companion);
        assert_eq!(
            run(engine, Some(entry), Some(line)),
            [AT_ENTRY.to_vec(), AFTER_CALL.to_vec()]
        );
        engine.disarm(companion).unwrap();
        assert_eq!(
            nonstop_probe::text_bytes(s.entry, 1),
            [0xcc],
            "the entry probe's trap stays"
        );
        // The line probe's frames now have no record: unavailable, never a stale value.
        assert_eq!(
            run(engine, Some(entry), Some(line)),
            [AT_ENTRY.to_vec(), vec![None; 5]]
        );
        assert_eq!(engine.stats(entry).unwrap().hits, 12);
        engine.disarm(line).unwrap();
        engine.disarm(entry).unwrap();
        assert_eq!(engine.armed_count(), 0);
        assert_eq!(code(&s), original, "companion first: {companion_first}");
    }
}
