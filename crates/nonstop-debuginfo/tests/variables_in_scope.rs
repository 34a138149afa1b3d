//! `variables_at` gives exactly the variables in scope at a marked line, with their
//! type names, innermost scope first, and locations evaluated at that address.

mod common;

use common::Fixture;
use nonstop_capture::capture::{BinOp, LocOp, Piece, PieceSource, REG_RSP};
use nonstop_debuginfo::{Availability, DebugInfo, VariableKind};

/// `name: type` for each variable at the first site of a mark; parameters end in ` (p)`.
fn variables(f: &Fixture, mark: &str) -> Vec<String> {
    let info = DebugInfo::load(&f.binary).unwrap();
    let sites = info.resolve(&f.at(mark)).unwrap();
    let vars = info.variables_at(sites[0].address).unwrap();
    vars.iter()
        .map(|v| {
            let p = if v.kind == VariableKind::Parameter {
                " (p)"
            } else {
                ""
            };
            format!("{}: {}{p}", v.name, v.type_name)
        })
        .collect()
}

#[test]
fn rust_debug_variables_at_marks() {
    let f = common::shop_debug();
    assert_eq!(
        variables(f, "add_push"),
        [
            "item: shop::Item",
            "self: &mut shop::Cart (p)",
            "name: &str (p)",
            "price: u32 (p)",
            "qty: u32 (p)"
        ]
    );
    // `line_total` is declared on this line: not in scope before it runs.
    assert_eq!(
        variables(f, "line_total"),
        [
            "item: &shop::Item",
            "iter: core::slice::iter::Iter<shop::Item>",
            "sum: u64",
            "self: &shop::Cart (p)"
        ]
    );
    assert_eq!(
        variables(f, "total_end"),
        ["discount: u32", "sum: u64", "self: &shop::Cart (p)"]
    );
    assert_eq!(
        variables(f, "main_end"),
        [
            "p: *const u8",
            "text: &str",
            "arr: [i32; 4]",
            "opt: core::option::Option<u32>",
            "s: u32",
            "t: u64",
            "cart: shop::Cart"
        ]
    );
}

#[test]
fn an_inner_variable_hides_an_outer_one_of_the_same_name() {
    let f = common::shop_debug();
    assert_eq!(variables(f, "shadow_inner"), ["x: u32", "y: u32"]);
    assert_eq!(variables(f, "shadow_outer"), ["y: u32", "x: u32 (p)"]);
}

#[test]
fn debug_locations_are_stack_slots() {
    let f = common::shop_debug();
    let info = DebugInfo::load(&f.binary).unwrap();
    let sites = info.resolve(&f.at("total_end")).unwrap();
    for v in info.variables_at(sites[0].address).unwrap() {
        let Availability::Available(pieces) = &v.availability else {
            panic!("{} not available", v.name);
        };
        let [
            Piece {
                size,
                source: PieceSource::Memory { reg, .. },
            },
        ] = pieces.as_slice()
        else {
            panic!("{}: {pieces:?}", v.name);
        };
        assert_eq!(*reg, REG_RSP, "{}", v.name);
        let expected = match v.name.as_str() {
            "discount" => 4,
            _ => 8,
        };
        assert_eq!(*size, expected, "{}", v.name);
    }
}

#[test]
fn rust_release_variables_at_marks() {
    let f = common::shop_release();
    assert_eq!(
        variables(f, "line_total"),
        [
            "item: &shop::Item",
            "iter: core::slice::iter::Iter<shop::Item>",
            "sum: u64",
            "self: &shop::Cart (p)"
        ]
    );
    assert_eq!(variables(f, "shadow_outer"), ["y: u32", "x: u32 (p)"]);
    let info = DebugInfo::load(&f.binary).unwrap();
    let sites = info.resolve(&f.at("shadow_outer")).unwrap();
    let vars = info.variables_at(sites[0].address).unwrap();
    // x arrives in edi; y was folded into the addition.
    assert_eq!(
        vars[1].availability,
        Availability::Available(vec![Piece {
            size: 4,
            source: PieceSource::Register { reg: 5 }
        }])
    );
    // y was folded into the addition: DWARF computes it from x (`DW_OP_breg5 +1;
    // DW_OP_constu 0xffffffff; DW_OP_and; DW_OP_stack_value`), as gdb does.
    assert_eq!(
        vars[0].availability,
        Availability::Available(vec![Piece {
            size: 4,
            source: PieceSource::Expr {
                ops: vec![
                    LocOp::Reg { reg: 5, offset: 1 },
                    LocOp::Const(0xffff_ffff),
                    LocOp::Bin(BinOp::And)
                ],
                value: true
            }
        }])
    );
}

#[test]
fn c_variables_at_marks() {
    let o0 = common::points_o0();
    // `sy` is declared on the next line: not in scope yet.
    assert_eq!(
        variables(o0, "scale_sx"),
        ["p: struct point * (p)", "factor: int (p)", "sx: int"]
    );
    assert_eq!(
        variables(o0, "scale_sy"),
        [
            "p: struct point * (p)",
            "factor: int (p)",
            "sx: int",
            "sy: int"
        ]
    );
    assert_eq!(
        variables(o0, "loop_body"),
        [
            "i: int",
            "argc: int (p)",
            "argv: char * * (p)",
            "pt: struct point",
            "arr: int[4]",
            "r: int"
        ]
    );
    let o2 = common::points_o2();
    assert_eq!(
        variables(o2, "scale_ret"),
        [
            "p: struct point * (p)",
            "factor: int (p)",
            "sx: int",
            "sy: int"
        ]
    );
}

#[test]
fn c_frame_base_is_resolved_through_the_cfa() {
    // gcc's frame base is DW_OP_call_frame_cfa; after the prologue CFA = rbp + 16.
    let f = common::points_o0();
    let info = DebugInfo::load(&f.binary).unwrap();
    let sites = info.resolve(&f.at("scale_ret")).unwrap();
    let vars = info.variables_at(sites[0].address).unwrap();
    for v in &vars {
        let Availability::Available(p) = &v.availability else {
            panic!()
        };
        assert!(
            matches!(p[0].source, PieceSource::Memory { reg: 6, offset } if offset < 0),
            "{}: {p:?}",
            v.name
        );
    }
}

#[test]
fn c_release_has_entry_values_and_registers() {
    let f = common::points_o2();
    let info = DebugInfo::load(&f.binary).unwrap();
    let sites = info.resolve(&f.at("scale_ret")).unwrap();
    let vars = info.variables_at(sites[0].address).unwrap();
    let by = |n: &str| {
        vars.iter()
            .find(|v| v.name == n)
            .unwrap()
            .availability
            .clone()
    };
    assert_eq!(
        by("p"),
        Availability::Available(vec![Piece {
            size: 8,
            source: PieceSource::Register { reg: 5 }
        }])
    );
    // `factor` is described only by its value at entry: `esi` (DWARF register 4) when the
    // function was entered, read from what the companion probe recorded there.
    assert_eq!(
        by("factor"),
        Availability::FromEntry(vec![Piece {
            size: 4,
            source: PieceSource::Expr {
                ops: vec![LocOp::EntryReg { reg: 4, offset: 0 }],
                value: true
            }
        }])
    );
    let needs = info
        .entry_needs(sites[0].address, &vars)
        .expect("`scale` needs an entry value");
    assert_eq!(needs.regs, vec![4]);
    assert_eq!(needs.cfa.0, REG_RSP, "{needs:?}");
    assert!(needs.entry <= sites[0].address, "{needs:?}");
}

#[test]
fn absolute_pieces_are_relocated_by_the_bias() {
    let mut a = Availability::Available(vec![Piece {
        size: 4,
        source: PieceSource::Absolute { addr: 0x4010 },
    }]);
    a.relocate(0x5555_0000_0000);
    assert_eq!(
        a,
        Availability::Available(vec![Piece {
            size: 4,
            source: PieceSource::Absolute {
                addr: 0x5555_0000_4010
            }
        }])
    );
}
