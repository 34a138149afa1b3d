//! Locals of an `async fn` live in its future's state, reached through the pointer in the
//! poll frame (`DW_OP_fbreg N; DW_OP_deref; DW_OP_plus_uconst OFF`): they are available,
//! captured through that pointer, and a bad pointer gives an error mark, never a crash.

use nonstop_capture::capture::{
    CapturedMemory, CapturedRoot, LocOp, Memory, PieceSource, REG_RSP, ReadError, Registers,
    execute,
};
use nonstop_debuginfo::{Availability, DebugInfo, Variable};
use nonstop_model::{CaptureLimits, Data};
use std::collections::BTreeMap;

/// The agent's async fixture (one source for both crates' tests).
fn fixture() -> nonstop_testkit::Fixture {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../nonstop-agent/tests/fixtures/async_orders.rs");
    nonstop_testkit::fixture::build(&src, &["-C", "debuginfo=2", "-C", "opt-level=0"])
}

/// A few mapped ranges of a fake process; everything else faults.
struct Fake(BTreeMap<u64, Vec<u8>>);

impl Memory for Fake {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        for (start, bytes) in &self.0 {
            if let Some(off) = addr.checked_sub(*start)
                && let Some(src) = bytes.get(off as usize..off as usize + buf.len())
            {
                buf.copy_from_slice(src);
                return Ok(());
            }
        }
        Err(ReadError::Fault)
    }
}

/// `(frame-slot offset from rsp, member offset)` of a variable reached through the env.
fn through_env(v: &Variable) -> (i64, u64) {
    let Availability::Available(pieces) = &v.availability else {
        panic!("{} is not available: {:?}", v.name, v.availability);
    };
    match pieces.as_slice() {
        [p] => match &p.source {
            PieceSource::Expr { ops, value: false } => match ops.as_slice() {
                [
                    LocOp::Reg {
                        reg: REG_RSP,
                        offset,
                    },
                    LocOp::Deref { size: 8 },
                    LocOp::PlusConst(member),
                ] => (*offset, *member),
                other => panic!("{}: {other:?}", v.name),
            },
            other => panic!("{}: {other:?}", v.name),
        },
        other => panic!("{}: {other:?}", v.name),
    }
}

#[test]
fn async_locals_are_read_through_the_future_and_a_bad_pointer_is_an_error_mark() {
    let f = fixture();
    let di = DebugInfo::load(&f.binary).unwrap();
    let sites = di.resolve(&f.at("handle")).unwrap();
    assert_eq!(sites[0].functions[0], "async_orders::handle (async)");
    let vars = di.variables_at(sites[0].address).unwrap();
    let names: Vec<&str> = vars.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "count",
            "discounted",
            "subtotal",
            "totals",
            "order",
            "_task_context"
        ]
    );
    // Every local that lives across an `.await` goes through the same frame slot.
    let subtotal = vars.iter().find(|v| v.name == "subtotal").unwrap();
    let discounted = vars.iter().find(|v| v.name == "discounted").unwrap();
    let (slot, sub_off) = through_env(subtotal);
    let (slot2, disc_off) = through_env(discounted);
    assert_eq!(slot, slot2);
    assert_ne!(sub_off, disc_off);

    let wanted = vec![subtotal.clone(), discounted.clone()];
    let limits = CaptureLimits::default();
    let plan = di.capture_plan(&wanted, &limits);
    let mut regs = Registers::default();
    let rsp = 0x7ff0_0000u64;
    regs.gpr[REG_RSP as usize] = rsp;
    let frame_slot = rsp.wrapping_add(slot as u64);
    let capture = |env_ptr: u64| {
        let mut mem = BTreeMap::new();
        mem.insert(frame_slot, env_ptr.to_le_bytes().to_vec());
        let mut env = vec![0u8; 0x400];
        env[sub_off as usize..sub_off as usize + 8].copy_from_slice(&2899u64.to_le_bytes());
        env[disc_off as usize..disc_off as usize + 8].copy_from_slice(&2610u64.to_le_bytes());
        mem.insert(0x5000_0000, env);
        let mut record = vec![0u8; 1 << 16];
        let done = execute(&plan, &regs, &Fake(mem), &mut record);
        CapturedMemory::parse(&record[..done.len]).unwrap()
    };

    // A good pointer: the values of the future's state.
    let good = capture(0x5000_0000);
    let got: Vec<_> = wanted
        .iter()
        .zip(&good.roots)
        .map(|(v, r)| di.decode(v, r, &good, &limits))
        .collect();
    assert_eq!(got[0].value, Data::Uint(2899), "{:?}", got[0]);
    assert_eq!(got[1].value, Data::Uint(2610), "{:?}", got[1]);
    assert_eq!(
        good.roots[0],
        CapturedRoot::Bytes {
            bytes: 2899u64.to_le_bytes().to_vec(),
            addr: Some(0x5000_0000 + sub_off)
        }
    );

    // A wild pointer in the frame slot: every such local is an error mark.
    let bad = capture(0xdead_0000_0000);
    for (v, r) in wanted.iter().zip(&bad.roots) {
        assert_eq!(r, &CapturedRoot::Fault, "{}", v.name);
        let value = di.decode(v, r, &bad, &limits);
        assert_eq!(value.value, Data::Null);
        assert_eq!(
            value.error.as_deref(),
            Some("cannot read the variable's memory (a pointer on its location's path is bad)"),
            "{}",
            v.name
        );
    }
    // The live reader (no record) agrees.
    let mut mem = BTreeMap::new();
    mem.insert(frame_slot, 0xdead_0000_0000u64.to_le_bytes().to_vec());
    assert_eq!(
        di.read_root(subtotal, &regs, &Fake(mem)),
        CapturedRoot::Fault
    );
}

#[test]
fn the_future_s_state_type_is_named_by_its_source_name() {
    assert_eq!(
        nonstop_debuginfo::async_display_name("shop::handle::{async_fn_env#0}"),
        "shop::handle (async)"
    );
    assert_eq!(
        nonstop_debuginfo::async_display_name("shop::handle::{async_fn#0}::{async_block#1}"),
        "shop::handle (async block)"
    );
    assert_eq!(
        nonstop_debuginfo::async_display_name("shop::handle::{closure#0}"),
        "shop::handle::{closure#0}"
    );
    assert_eq!(
        nonstop_debuginfo::short_name(
            "core::pin::Pin<&mut async_orders::handle::{async_fn_env#0}>"
        ),
        "Pin<&mut async_orders::handle (async)>"
    );
}

/// Location expressions as gdb evaluates them, one by one (raw DWARF bytes).
#[test]
fn location_expressions_become_pieces_and_programs() {
    use nonstop_capture::capture::{BinOp, Piece};
    let f = fixture();
    let di = DebugInfo::load(&f.binary).unwrap();
    let rsp_base = [LocOp::Reg {
        reg: REG_RSP,
        offset: 0,
    }];
    let avail = |bytes: &[u8], fb: Option<&[LocOp]>, size: u64| {
        di.availability_of_expression(bytes, fb, size).unwrap()
    };
    let one =
        |size: u32, source: PieceSource| Availability::Available(vec![Piece { size, source }]);

    // DW_OP_fbreg +16; DW_OP_deref; DW_OP_plus_uconst 0x90 — an async fn's local.
    assert_eq!(
        avail(&[0x91, 0x10, 0x06, 0x23, 0x90, 0x01], Some(&rsp_base), 8),
        one(
            8,
            PieceSource::Expr {
                ops: vec![
                    LocOp::Reg {
                        reg: REG_RSP,
                        offset: 16
                    },
                    LocOp::Deref { size: 8 },
                    LocOp::PlusConst(0x90)
                ],
                value: false
            }
        )
    );
    // A frame base that itself needs evaluating (`DW_OP_breg6 +16; DW_OP_deref`), then
    // DW_OP_fbreg +24.
    let deref_base = [LocOp::Reg { reg: 6, offset: 16 }, LocOp::Deref { size: 8 }];
    assert_eq!(
        avail(&[0x91, 0x18], Some(&deref_base), 4),
        one(
            4,
            PieceSource::Expr {
                ops: vec![
                    LocOp::Reg { reg: 6, offset: 16 },
                    LocOp::Deref { size: 8 },
                    LocOp::PlusConst(24)
                ],
                value: false
            }
        )
    );
    // DW_OP_breg3 +16; DW_OP_deref_size 4; DW_OP_lit2; DW_OP_mul; DW_OP_stack_value.
    assert_eq!(
        avail(&[0x73, 0x10, 0x94, 0x04, 0x32, 0x1e, 0x9f], None, 4),
        one(
            4,
            PieceSource::Expr {
                ops: vec![
                    LocOp::Reg { reg: 3, offset: 16 },
                    LocOp::Deref { size: 4 },
                    LocOp::Const(2),
                    LocOp::Bin(BinOp::Mul)
                ],
                value: true
            }
        )
    );
    // Pieces mixing a register, memory through a pointer, and a plain stack slot:
    // DW_OP_reg0; DW_OP_piece 8; DW_OP_fbreg -8; DW_OP_deref; DW_OP_piece 8;
    // DW_OP_breg7 +32; DW_OP_piece 4.
    assert_eq!(
        avail(
            &[
                0x50, 0x93, 0x08, 0x91, 0x78, 0x06, 0x93, 0x08, 0x77, 0x20, 0x93, 0x04
            ],
            Some(&rsp_base),
            20
        ),
        Availability::Available(vec![
            Piece {
                size: 8,
                source: PieceSource::Register { reg: 0 }
            },
            Piece {
                size: 8,
                source: PieceSource::Expr {
                    ops: vec![
                        LocOp::Reg {
                            reg: REG_RSP,
                            offset: -8
                        },
                        LocOp::Deref { size: 8 }
                    ],
                    value: false
                }
            },
            Piece {
                size: 4,
                source: PieceSource::Memory {
                    reg: REG_RSP,
                    offset: 32
                }
            },
        ])
    );
    // Optimized out only when the DWARF says so: an empty location, or a piece with no
    // location at all among described ones.
    assert_eq!(avail(&[], Some(&rsp_base), 8), Availability::OptimizedOut);
    assert_eq!(
        avail(&[0x93, 0x04, 0x51, 0x93, 0x04], None, 8),
        Availability::Available(vec![
            Piece {
                size: 4,
                source: PieceSource::Unavailable
            },
            Piece {
                size: 4,
                source: PieceSource::Register { reg: 1 }
            },
        ])
    );
    // A frame-relative location without a frame base cannot be placed.
    assert_eq!(avail(&[0x91, 0x10], None, 8), Availability::OptimizedOut);
}
