//! C structs, unions, enums, `char *` and fixed arrays decode to what the C program
//! itself prints for them (in `debug_string` form), live and through a capture plan.
//!
//! Needs its own process: the fixture runs as a child and the test reads its memory
//! through `/proc/PID/mem`.

mod decode_support;

use decode_support::{ProcMem, Running, build, local_types};
use nonstop_capture::capture::{CapturedMemory, Piece, PieceSource, Registers, execute};
use nonstop_debuginfo::{Availability, DebugInfo, Variable, VariableKind, debug_string};
use nonstop_model::CaptureLimits;

#[test]
fn c_locals_decode_like_the_program_prints_them() {
    check(&["-O0"]);
}

/// DWARF 4 places bit-fields the older way (`DW_AT_bit_offset` from the storage unit's
/// most significant bit), DWARF 5 by `DW_AT_data_bit_offset`: both give the same values.
#[test]
fn c_bit_fields_decode_under_dwarf_4_too() {
    check(&["-O0", "-gdwarf-4"]);
}

fn check(flags: &[&str]) {
    let exe = build("values.c", flags);
    let di = DebugInfo::load(&exe).expect("load fixture");
    let types = local_types(&exe, "main", None);
    let run = Running::start(&exe);
    let mem = ProcMem::open(run.pid);
    let limits = CaptureLimits::default();
    let vars: Vec<Variable> = run
        .values
        .iter()
        .map(|(name, addr, _)| {
            let die = *types
                .get(name)
                .unwrap_or_else(|| panic!("no DIE for {name}"));
            let ty = di.type_of(die).expect("type");
            Variable {
                name: name.clone(),
                kind: VariableKind::Local,
                type_die: Some(die),
                type_name: ty.display.clone(),
                decl_line: None,
                availability: Availability::Available(vec![Piece {
                    size: ty.size as u32,
                    source: PieceSource::Absolute { addr: *addr },
                }]),
            }
        })
        .collect();
    let plan = di.capture_plan(&vars, &limits);
    let mut out = vec![0u8; 1 << 20];
    let done = execute(&plan, &Registers::default(), &mem, &mut out);
    let record = CapturedMemory::parse(&out[..done.len]).expect("parse record");
    for (i, (var, (name, _, want))) in vars.iter().zip(&run.values).enumerate() {
        let root = di.read_root(var, &Registers::default(), &mem);
        let live = debug_string(&di.decode(var, &root, &mem, &limits));
        assert_eq!(&live, want, "live {name} ({flags:?})");
        let captured = debug_string(&di.decode(var, &record.roots[i], &record, &limits));
        assert_eq!(&captured, want, "captured {name} ({flags:?})");
    }
}
