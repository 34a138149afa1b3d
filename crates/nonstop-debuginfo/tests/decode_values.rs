//! Every local of `fixtures/values.rs` decodes to exactly what the program's own
//! `{:?}` prints, both read live from its memory and through a capture plan's record.
//!
//! Needs its own process: the fixture runs as a child and the test reads its memory
//! through `/proc/PID/mem` (allowed for a child of the same user).

mod decode_support;

use decode_support::{ProcMem, Running, build, local_types};
use nonstop_capture::capture::{CapturedMemory, Piece, PieceSource, Registers, execute};
use nonstop_debuginfo::{Availability, DebugInfo, Variable, VariableKind, debug_string};
use nonstop_model::CaptureLimits;

/// What the decoder shows for a value the program printed in full, given the limits.
fn expected(name: &str, printed: &str, limits: &CaptureLimits) -> String {
    match name {
        "v_long_string" => format!("\"{}\"..", "x".repeat(limits.string as usize)),
        "v_long_vec" => {
            let items: Vec<String> = (0..limits.collection).map(|i| i.to_string()).collect();
            format!("[{}, ..]", items.join(", "))
        }
        _ => printed.to_string(),
    }
}

fn variables(
    di: &DebugInfo,
    run: &Running,
    types: &std::collections::HashMap<String, nonstop_debuginfo::DieRef>,
) -> Vec<Variable> {
    run.values
        .iter()
        .map(|(name, addr, _)| {
            let die = *types
                .get(name)
                .unwrap_or_else(|| panic!("no DIE for {name}"));
            let ty = di
                .type_of(die)
                .unwrap_or_else(|| panic!("no type for {name}"));
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
        .collect()
}

fn check(opt: &str) {
    let exe = build("values.rs", &["-C", &format!("opt-level={opt}")]);
    let di = DebugInfo::load(&exe).expect("load fixture");
    let types = local_types(&exe, "main", Some("v_"));
    let run = Running::start(&exe);
    // Vtables are known by file address: `dyn Trait` values need the load bias.
    di.set_load_bias(
        di.load_bias_in(Some(run.pid))
            .expect("the fixture's load bias"),
    );
    let mem = ProcMem::open(run.pid);
    let limits = CaptureLimits::default();
    let vars = variables(&di, &run, &types);

    let mut failures = Vec::new();
    // Live: straight from the process's memory.
    for (var, (name, _, printed)) in vars.iter().zip(&run.values) {
        let root = di.read_root(var, &Registers::default(), &mem);
        let value = di.decode(var, &root, &mem, &limits);
        let got = debug_string(&value);
        let want = expected(name, printed, &limits);
        if got != want {
            failures.push(format!(
                "live {name}: got {got}\n    want {want} ({})",
                value.type_name
            ));
        }
    }
    // Through a capture plan: what the plan read is enough for the decoder.
    for (i, var) in vars.iter().enumerate() {
        let mut plan = di.capture_plan(std::slice::from_ref(var), &limits);
        plan.stack_bytes = 0;
        let mut out = vec![0u8; 1 << 20];
        let done = execute(&plan, &Registers::default(), &mem, &mut out);
        if CapturedMemory::parse(&out[..done.len]).is_err() {
            failures.push(format!(
                "record of {} does not parse: {plan:?}",
                run.values[i].0
            ));
        }
    }
    let mut plan = di.capture_plan(&vars, &limits);
    plan.max_bytes = 4 << 20;
    plan.stack_bytes = 0;
    let mut out = vec![0u8; 4 << 20];
    let done = execute(&plan, &Registers::default(), &mem, &mut out);
    assert!(!done.truncated, "the record was cut short");
    let Ok(record) = CapturedMemory::parse(&out[..done.len]) else {
        panic!("record does not parse:\n{}", failures.join("\n"));
    };
    for (i, (var, (name, _, printed))) in vars.iter().zip(&run.values).enumerate() {
        let value = di.decode(var, &record.roots[i], &record, &limits);
        let got = debug_string(&value);
        let want = expected(name, printed, &limits);
        if got != want {
            failures.push(format!("captured {name}: got {got}\n    want {want}"));
        }
    }
    // `Rc`/`Arc` counts, as `Rc::strong_count` and `Rc::weak_count` give them, live and
    // from the record.
    for (name, strong, weak) in [("v_rc_counted", 2, 1), ("v_arc_counted", 3, 2)] {
        let i = vars.iter().position(|v| v.name == name).expect(name);
        let live = di.decode(
            &vars[i],
            &di.read_root(&vars[i], &Registers::default(), &mem),
            &mem,
            &limits,
        );
        let captured = di.decode(&vars[i], &record.roots[i], &record, &limits);
        for (how, v) in [("live", live), ("captured", captured)] {
            let want = Some(nonstop_model::RefCounts { strong, weak });
            if v.refs != want {
                failures.push(format!("{how} {name}: refs {:?}, want {want:?}", v.refs));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "opt-level={opt}:\n{}",
        failures.join("\n")
    );
}

/// Under tight limits, the plan reads exactly what the decoder shows: decoding from the
/// record gives the same values (marks included) as decoding live.
#[test]
fn plans_capture_what_the_decoder_shows_under_tight_limits() {
    let exe = build("values.rs", &["-C", "opt-level=0"]);
    let di = DebugInfo::load(&exe).expect("load fixture");
    let types = local_types(&exe, "main", Some("v_"));
    let run = Running::start(&exe);
    let mem = ProcMem::open(run.pid);
    let vars = variables(&di, &run, &types);
    for limits in [
        CaptureLimits {
            depth: 1,
            string: 4,
            collection: 2,
            fields: 2,
            frames: 20,
        },
        CaptureLimits {
            depth: 2,
            string: 1,
            collection: 1,
            fields: 1,
            frames: 20,
        },
        CaptureLimits {
            depth: 0,
            string: 0,
            collection: 0,
            fields: 0,
            frames: 20,
        },
    ] {
        let plan = di.capture_plan(&vars, &limits);
        let mut out = vec![0u8; 1 << 20];
        let done = execute(&plan, &Registers::default(), &mem, &mut out);
        let record = CapturedMemory::parse(&out[..done.len]).expect("parse record");
        for (i, var) in vars.iter().enumerate() {
            let root = di.read_root(var, &Registers::default(), &mem);
            let live = di.decode(var, &root, &mem, &limits);
            let captured = di.decode(var, &record.roots[i], &record, &limits);
            assert_eq!(live, captured, "{} under {limits:?}", var.name);
        }
    }
    // A taste of what tight limits show.
    let limits = CaptureLimits {
        depth: 1,
        string: 4,
        collection: 2,
        fields: 2,
        frames: 20,
    };
    let show = |name: &str| {
        let i = vars.iter().position(|v| v.name == name).expect("variable");
        let root = di.read_root(&vars[i], &Registers::default(), &mem);
        debug_string(&di.decode(&vars[i], &root, &mem, &limits))
    };
    assert_eq!(show("v_vec_string"), "[.., ..]");
    assert_eq!(show("v_string"), "\"owne\"..");
    assert_eq!(
        show("v_order"),
        "Order { id: 7, items: [Item { sku: .., qty: 2, .. }, Item { sku: .., qty: 1, .. }], .. }"
    );
}

#[test]
fn every_local_decodes_like_its_debug_output_at_opt_level_0() {
    check("0");
}

#[test]
fn every_local_decodes_like_its_debug_output_at_opt_level_2() {
    check("2");
}
