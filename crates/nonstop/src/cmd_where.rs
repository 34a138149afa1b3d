//! `nonstop where BINARY LOCATION [--json]`: what a location resolves to.

use anyhow::Context as _;
use nonstop_capture::capture::{LocOp, Piece, PieceSource};
use nonstop_debuginfo::{Availability, DebugInfo, Site, Variable, VariableKind};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `nonstop where`.
#[derive(clap::Args)]
pub struct Args {
    /// The executable or shared object (with debug info).
    binary: PathBuf,
    /// `FILE:LINE` (`src/cart.rs:42`) or a function (`shop::cart::Cart::total`).
    location: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// The JSON output (stable: add fields, never rename them).
#[derive(Serialize)]
struct Output {
    binary: String,
    location: String,
    sites: Vec<SiteOut>,
}

#[derive(Serialize)]
struct SiteOut {
    /// File address in hex (`0x1a2b`): add the load bias for a running process.
    address: String,
    /// Innermost first: inlined callees, then the containing function.
    functions: Vec<String>,
    file: String,
    line: u32,
    is_stmt: bool,
    variables: Vec<VariableOut>,
    /// Why variables could not be listed, if they could not.
    variables_error: Option<String>,
    /// Whether an agent (fast path on, the default) would patch a `jmp` here: `yes`, or why
    /// not (the check on the file's code; the agent may still refuse when it arms).
    fast_path: String,
}

#[derive(Serialize)]
struct VariableOut {
    name: String,
    kind: &'static str,
    #[serde(rename = "type")]
    type_name: String,
    decl_line: Option<u32>,
    /// `available`, `from-entry` (computed from register values a companion probe records
    /// at function entry), `optimized-out` or `entry-value` (not recordable).
    availability: &'static str,
    /// Where the bytes are, piece by piece: `[rsp+0x18]` (memory), `reg rdi`,
    /// `value rsp+0x8` (computed), `const 0x2a`, `[0x4010]` (a static), `optimized out`.
    pieces: Vec<PieceOut>,
}

#[derive(Serialize)]
struct PieceOut {
    size: u32,
    location: String,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let out = output(&args.binary, &args.location)?;
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut stdout, &out)?;
        writeln!(stdout)?;
    } else {
        print_text(&mut stdout, &out)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn output(binary: &std::path::Path, location: &str) -> anyhow::Result<Output> {
    let info = DebugInfo::load(binary)?;
    let sites = info
        .resolve(location)
        .with_context(|| format!("cannot resolve {location}"))?;
    Ok(Output {
        binary: binary.display().to_string(),
        location: location.to_string(),
        sites: sites.iter().map(|s| site_out(&info, s)).collect(),
    })
}

/// What `nonstop where` prints for `location` in `binary`: its `--json` object and its text
/// (for the MCP server's `where` tool).
pub(crate) fn resolve(
    binary: &std::path::Path,
    location: &str,
) -> anyhow::Result<(serde_json::Value, String)> {
    let out = output(binary, location)?;
    let mut text = Vec::new();
    print_text(&mut text, &out)?;
    Ok((
        serde_json::to_value(&out)?,
        String::from_utf8_lossy(&text).into_owned(),
    ))
}

fn site_out(info: &DebugInfo, site: &Site) -> SiteOut {
    let (variables, variables_error) = match info.variables_at(site.address) {
        Ok(v) => (v.iter().map(variable_out).collect(), None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    SiteOut {
        address: format!("{:#x}", site.address),
        functions: site.functions.clone(),
        file: site.file.clone(),
        line: site.line,
        is_stmt: site.is_stmt,
        variables,
        variables_error,
        fast_path: fast_path(info, site.address),
    }
}

/// The fast path's check, as the agent runs it, on the function's bytes in the file.
fn fast_path(info: &DebugInfo, address: u64) -> String {
    let bounds = info.function_bounds(address);
    let bytes = match &bounds {
        Some(f) => match info.code_bytes(f.clone()) {
            Some(b) => b,
            None => return "the function's code is not in the file".into(),
        },
        None => Vec::new(),
    };
    match nonstop_probe::fast_path_check(address, bounds.as_ref(), &bytes) {
        Ok(_) => "yes".into(),
        Err(why) => why.to_string(),
    }
}

fn variable_out(v: &Variable) -> VariableOut {
    let (availability, pieces) = match &v.availability {
        Availability::Available(p) => ("available", p.iter().map(piece_out).collect()),
        Availability::FromEntry(p) => ("from-entry", p.iter().map(piece_out).collect()),
        Availability::OptimizedOut => ("optimized-out", Vec::new()),
        Availability::EntryValue => ("entry-value", Vec::new()),
    };
    VariableOut {
        name: v.name.clone(),
        kind: match v.kind {
            VariableKind::Parameter => "parameter",
            VariableKind::Local => "local",
        },
        type_name: v.type_name.clone(),
        decl_line: v.decl_line,
        availability,
        pieces,
    }
}

/// x86_64 DWARF register names.
fn reg_name(reg: u16) -> String {
    const GPR: [&str; 17] = [
        "rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15", "rip",
    ];
    match GPR.get(reg as usize) {
        Some(n) => (*n).to_string(),
        None if (17..33).contains(&reg) => format!("xmm{}", reg - 17),
        None => format!("reg{reg}"),
    }
}

fn offset(reg: u16, off: i64) -> String {
    match off {
        0 => reg_name(reg),
        o if o < 0 => format!("{}-{:#x}", reg_name(reg), o.unsigned_abs()),
        o => format!("{}+{:#x}", reg_name(reg), o),
    }
}

/// One step of a location program, as `where` prints it (`rsp+0x10`, `deref`, `+0x90`).
fn loc_op(op: &LocOp) -> String {
    match op {
        LocOp::Reg { reg, offset: o } => offset(*reg, *o),
        LocOp::EntryReg { reg, offset: o } => format!("{}@entry", offset(*reg, *o)),
        LocOp::Const(c) => format!("{c:#x}"),
        LocOp::Addr(a) => format!("addr {a:#x}"),
        LocOp::Deref { size: 8 } => "deref".into(),
        LocOp::Deref { size } => format!("deref {size}"),
        LocOp::PlusConst(c) => format!("+{c:#x}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn piece_out(p: &Piece) -> PieceOut {
    let location = match &p.source {
        PieceSource::Register { reg } => format!("reg {}", reg_name(*reg)),
        PieceSource::Memory { reg, offset: o } => format!("[{}]", offset(*reg, *o)),
        PieceSource::Absolute { addr } => format!("[{addr:#x}]"),
        PieceSource::Computed { reg, offset: o } => format!("value {}", offset(*reg, *o)),
        PieceSource::Implicit(bytes) => {
            let hex: String = bytes.iter().rev().map(|b| format!("{b:02x}")).collect();
            format!("const 0x{hex}")
        }
        PieceSource::Expr { ops, value } => {
            let steps: Vec<String> = ops.iter().map(loc_op).collect();
            format!(
                "{}{}",
                if *value { "value " } else { "at " },
                steps.join("; ")
            )
        }
        PieceSource::Unavailable => "optimized out".into(),
    };
    PieceOut {
        size: p.size,
        location,
    }
}

fn print_text(w: &mut impl Write, out: &Output) -> std::io::Result<()> {
    if out.sites.len() != 1 {
        writeln!(
            w,
            "{} resolves to {} addresses",
            out.location,
            out.sites.len()
        )?;
    }
    for s in &out.sites {
        writeln!(
            w,
            "{} {}:{}{}",
            s.address,
            s.file,
            s.line,
            if s.is_stmt {
                ""
            } else {
                " (not a statement start)"
            }
        )?;
        for (i, f) in s.functions.iter().enumerate() {
            let how = if i + 1 < s.functions.len() {
                "inlined into"
            } else {
                "in"
            };
            if i == 0 {
                writeln!(w, "  in {f}")?;
            } else {
                writeln!(w, "  {how} {f}")?;
            }
        }
        if s.fast_path == "yes" {
            writeln!(w, "  fast path: yes")?;
        } else {
            writeln!(w, "  fast path: no — {}", s.fast_path)?;
        }
        if let Some(e) = &s.variables_error {
            writeln!(w, "  variables: {e}")?;
        } else if s.variables.is_empty() {
            writeln!(w, "  no variables in scope")?;
        }
        for v in &s.variables {
            let avail = match v.availability {
                "available" | "from-entry" => {
                    let p: Vec<String> = if v.pieces.len() == 1 {
                        vec![v.pieces[0].location.clone()]
                    } else {
                        v.pieces
                            .iter()
                            .map(|p| format!("{}B {}", p.size, p.location))
                            .collect()
                    };
                    if v.availability == "from-entry" {
                        format!("entry-value (recorded at function entry): {}", p.join(", "))
                    } else {
                        format!("available: {}", p.join(", "))
                    }
                }
                "optimized-out" => "optimized out".into(),
                _ => "unavailable (only its value at function entry is described)".into(),
            };
            let tag = if v.kind == "parameter" {
                " (parameter)"
            } else {
                ""
            };
            writeln!(w, "  {}: {}{} — {}", v.name, v.type_name, tag, avail)?;
        }
    }
    Ok(())
}
