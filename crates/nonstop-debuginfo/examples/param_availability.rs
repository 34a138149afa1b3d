//! How many parameters a release build lets nonstop read, line by line.
//!
//! `cargo run -p nonstop-debuginfo --release --example param_availability -- BINARY...`
//!
//! For every statement row of every line program (each address once) it asks
//! [`DebugInfo::variables_at`] — what `nonstop where` and the agent use — for the
//! variables in scope and counts the parameters (`DW_TAG_formal_parameter`) by what
//! their location is there:
//!
//! - `available`: a register, memory, an expression or a constant;
//! - `from-entry`: computed from register values at function entry, readable when a
//!   companion probe recorded the entry ([`DebugInfo::entry_needs`] says what it needs;
//!   rows where it cannot be told are counted apart);
//! - `entry-value`: only an entry value nonstop cannot record;
//! - `optimized out`: no location at that address (or one nonstop cannot express).
//!
//! "Before" is the decoder without entry values: `from-entry` counted as unavailable.
//! A second table says which DWARF operations the entry values are made of, weighted
//! by statement rows, to tell why the rest stays unavailable.

use gimli::Reader as _;
use nonstop_capture::capture::LocOp;
use nonstop_debuginfo::{Availability, DebugInfo, VariableKind};
use object::{Object, ObjectSection};
use std::collections::BTreeMap;
use std::process::ExitCode;

fn main() -> ExitCode {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.is_empty() {
        eprintln!("usage: param_availability BINARY...");
        return ExitCode::from(2);
    }
    for path in &paths {
        if let Err(e) = report(path) {
            eprintln!("param_availability: {path}: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

type Dwarf = gimli::Dwarf<gimli::EndianRcSlice<gimli::RunTimeEndian>>;
/// The `[start, end)` address ranges of the binary's executable sections.
type CodeRanges = Vec<(u64, u64)>;

fn load_dwarf(data: &[u8]) -> Result<(Dwarf, CodeRanges), Box<dyn std::error::Error>> {
    let obj = object::File::parse(data)?;
    let endian = gimli::RunTimeEndian::Little;
    let dwarf = gimli::Dwarf::load(|id| -> Result<_, gimli::Error> {
        let bytes = obj
            .section_by_name(id.name())
            .and_then(|s| s.uncompressed_data().ok())
            .map(|d| d.into_owned())
            .unwrap_or_default();
        Ok(gimli::EndianRcSlice::new(bytes.into(), endian))
    })?;
    let code = obj
        .sections()
        .filter(|s| s.kind() == object::SectionKind::Text)
        .map(|s| (s.address(), s.address() + s.size()))
        .collect();
    Ok((dwarf, code))
}

/// Every statement row's address inside the code sections, sorted, each once.
fn statement_addresses(dwarf: &Dwarf, code: &[(u64, u64)]) -> Result<Vec<u64>, gimli::Error> {
    let mut out = Vec::new();
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let unit = dwarf.unit(header)?;
        let Some(program) = unit.line_program.clone() else {
            continue;
        };
        let mut rows = program.rows();
        while let Some((_, row)) = rows.next_row()? {
            let a = row.address();
            if row.is_stmt() && !row.end_sequence() && code.iter().any(|&(b, e)| b <= a && a < e) {
                out.push(a);
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

#[derive(Default)]
struct Counts {
    rows: u64,
    available: u64,
    from_entry: u64,
    from_entry_unrecordable: u64,
    entry_value: u64,
    optimized_out: u64,
    no_variable_info: u64,
}

fn report(path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let data = std::fs::read(path)?;
    let (dwarf, code) = load_dwarf(&data)?;
    let addresses = statement_addresses(&dwarf, &code)?;
    let info = DebugInfo::load(path)?;
    let mut c = Counts::default();
    for &a in &addresses {
        let vars = match info.variables_at(a) {
            Ok(v) => v,
            Err(_) => {
                c.no_variable_info += 1;
                continue;
            }
        };
        let needs = info.entry_needs(a, &vars);
        for v in vars.iter().filter(|v| v.kind == VariableKind::Parameter) {
            c.rows += 1;
            match &v.availability {
                Availability::Available(_) => c.available += 1,
                Availability::FromEntry(_) if needs.is_some() => c.from_entry += 1,
                Availability::FromEntry(_) => c.from_entry_unrecordable += 1,
                Availability::EntryValue => c.entry_value += 1,
                Availability::OptimizedOut => c.optimized_out += 1,
            }
        }
    }
    let pct = |n: u64, d: u64| {
        if d == 0 {
            0.0
        } else {
            100.0 * n as f64 / d as f64
        }
    };
    let before = c.available;
    let after = c.available + c.from_entry;
    let unavailable_before = c.rows - before;
    println!("{path}");
    println!(
        "  statement addresses            {:>8}  ({} without variable info)",
        addresses.len(),
        c.no_variable_info
    );
    println!("  rows (parameter x address)     {:>8}", c.rows);
    println!(
        "  available (reg/mem/expr/const) {:>8}  {:5.1} %",
        c.available,
        pct(c.available, c.rows)
    );
    println!(
        "  from-entry, recordable         {:>8}  {:5.1} %",
        c.from_entry,
        pct(c.from_entry, c.rows)
    );
    println!(
        "  from-entry, entry not told     {:>8}  {:5.1} %",
        c.from_entry_unrecordable,
        pct(c.from_entry_unrecordable, c.rows)
    );
    println!(
        "  entry-value, not recordable    {:>8}  {:5.1} %",
        c.entry_value,
        pct(c.entry_value, c.rows)
    );
    println!(
        "  optimized out                  {:>8}  {:5.1} %",
        c.optimized_out,
        pct(c.optimized_out, c.rows)
    );
    println!(
        "  available before               {:>8}  {:5.1} %",
        before,
        pct(before, c.rows)
    );
    println!(
        "  available after                {:>8}  {:5.1} %",
        after,
        pct(after, c.rows)
    );
    println!(
        "  of {} unavailable before, {} ({:.1} %) are now available",
        unavailable_before,
        c.from_entry,
        pct(c.from_entry, unavailable_before)
    );
    // What the agent showed as `unavailable here` before entry values were recorded: a
    // location that is only an entry value. The `optimized out` rows have no location at
    // all, and stay so (gdb shows `<optimized out>` there too).
    let entry_only = c.from_entry + c.from_entry_unrecordable + c.entry_value;
    println!(
        "  of {} `unavailable here` before (only an entry value), {} ({:.1} %) are now \
         available; the {} `optimized out` (no location) stay so",
        entry_only,
        c.from_entry,
        pct(c.from_entry, entry_only),
        c.optimized_out
    );
    let (kinds, unexpressible) = location_forms(&info, &dwarf, &addresses)?;
    println!("  entry values by form (parameter DIE x statement row in its location range):");
    for (kind, n) in &kinds {
        println!("    {n:>8}  {kind}");
    }
    println!("  locations the decoder cannot express (same weighting), most rows first:");
    let mut unexpressible: Vec<_> = unexpressible.into_iter().collect();
    unexpressible.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    for (ops, n) in unexpressible.iter().take(12) {
        println!("    {n:>8}  {ops}");
    }
    Ok(())
}

/// Two tallies over the parameters' location-list entries, each weighted by the
/// statement rows the entry covers: the forms entry values take, and the operations of
/// the expressions the decoder turns into "optimized out" although they exist (frame
/// base taken as `rsp`, what rustc and clang emit for release builds).
#[allow(clippy::type_complexity)]
fn location_forms(
    info: &DebugInfo,
    dwarf: &Dwarf,
    addresses: &[u64],
) -> Result<(BTreeMap<String, u64>, BTreeMap<String, u64>), Box<dyn std::error::Error>> {
    let frame_base = [LocOp::Reg { reg: 7, offset: 0 }];
    let mut kinds = BTreeMap::new();
    let mut unexpressible = BTreeMap::new();
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let unit = dwarf.unit(header)?;
        let mut entries = unit.entries();
        while let Some(e) = entries.next_dfs()? {
            if e.tag() != gimli::DW_TAG_formal_parameter {
                continue;
            }
            let Some(loc) = e.attr_value(gimli::DW_AT_location) else {
                continue;
            };
            let Some(mut list) = dwarf.attr_locations(&unit, loc)? else {
                continue;
            };
            while let Some(entry) = list.next()? {
                let lo = addresses.partition_point(|&a| a < entry.range.begin);
                let hi = addresses.partition_point(|&a| a < entry.range.end);
                let rows = (hi - lo) as u64;
                if let Some(kind) = entry_kind(&unit, entry.data.clone())? {
                    *kinds.entry(kind).or_insert(0) += rows;
                }
                let bytes = entry.data.0.to_slice()?.into_owned();
                if !bytes.is_empty()
                    && info.availability_of_expression(&bytes, Some(&frame_base), 8)?
                        == Availability::OptimizedOut
                {
                    let mut ops = entry.data.operations(unit.encoding());
                    let mut names = Vec::new();
                    while let Some(op) = ops.next()? {
                        names.push(op_name(&op));
                    }
                    *unexpressible.entry(names.join(" ")).or_insert(0) += rows;
                }
            }
        }
    }
    Ok((kinds, unexpressible))
}

/// How an expression uses entry values (`None` when it does not).
fn entry_kind<R: gimli::Reader>(
    unit: &gimli::Unit<R>,
    expr: gimli::Expression<R>,
) -> Result<Option<String>, gimli::Error> {
    let mut ops = expr.operations(unit.encoding());
    let mut found = Vec::new();
    let mut pieces = 0;
    while let Some(op) = ops.next()? {
        match op {
            gimli::Operation::EntryValue { expression } => {
                let mut inner = gimli::Expression(expression).operations(unit.encoding());
                let mut names = Vec::new();
                while let Some(op) = inner.next()? {
                    names.push(op_name(&op));
                }
                found.push(format!("entry_value({})", names.join(" ")));
            }
            gimli::Operation::ParameterRef { .. } => found.push("GNU_parameter_ref".into()),
            gimli::Operation::Piece { .. } => pieces += 1,
            _ => {}
        }
    }
    if found.is_empty() {
        return Ok(None);
    }
    let mut s = found.join(", ");
    if pieces > 0 {
        s.push_str(" in pieces");
    }
    Ok(Some(s))
}

fn op_name<R: gimli::Reader>(op: &gimli::Operation<R>) -> String {
    match op {
        gimli::Operation::Register { register } => format!("reg{}", register.0),
        gimli::Operation::RegisterOffset { register, .. } => format!("breg{}", register.0),
        gimli::Operation::Deref { .. } => "deref".into(),
        other => {
            let s = format!("{other:?}");
            s.split([' ', '{', '(']).next().unwrap_or("?").to_string()
        }
    }
}
