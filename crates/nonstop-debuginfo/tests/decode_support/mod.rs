//! Shared by the decoder tests: building fixtures, running them, reading their memory
//! and finding their locals' types.
#![allow(dead_code)]

use gimli::constants as dw;
use nonstop_capture::capture::{Memory, ReadError};
use nonstop_debuginfo::DieRef;
use object::{Object, ObjectSection};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Another process's memory, read through `/proc/PID/mem`.
pub struct ProcMem(pub std::fs::File);

impl ProcMem {
    pub fn open(pid: u32) -> ProcMem {
        ProcMem(std::fs::File::open(format!("/proc/{pid}/mem")).expect("open /proc/PID/mem"))
    }
}

impl Memory for ProcMem {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        match self.0.read_exact_at(buf, addr) {
            Ok(()) => Ok(()),
            Err(_) => Err(ReadError::Fault),
        }
    }
}

/// Builds `tests/fixtures/SOURCE` with full debug info (rustc `-C debuginfo=2`, gcc `-g`)
/// and `args`, once per content (the testkit caches it).
pub fn build(source: &str, args: &[&str]) -> PathBuf {
    let src = nonstop_testkit::fixture::source(env!("CARGO_MANIFEST_DIR"), source);
    let debug: &[&str] = if source.ends_with(".c") {
        &["-g"]
    } else {
        &["-C", "debuginfo=2"]
    };
    let flags: Vec<&str> = debug.iter().chain(args).copied().collect();
    nonstop_testkit::fixture::build(&src, &flags).binary
}

/// A running fixture that printed `name\taddr\tdebug` lines, `pid\tPID` and `ready`.
pub struct Running {
    pub child: Child,
    pub pid: u32,
    /// name → (address, printed text).
    pub values: Vec<(String, u64, String)>,
}

impl Running {
    pub fn start(exe: &Path) -> Running {
        let mut child = Command::new(exe)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start fixture");
        let stdout = child.stdout.take().expect("stdout");
        let mut values = Vec::new();
        let mut pid = 0;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("read fixture output");
            if line == "ready" {
                break;
            }
            let parts: Vec<&str> = line.splitn(3, '\t').collect();
            match parts.as_slice() {
                ["pid", p] => pid = p.parse().expect("pid"),
                [name, addr, text] => values.push((
                    name.to_string(),
                    addr.parse().expect("addr"),
                    text.to_string(),
                )),
                _ => panic!("unexpected fixture line {line:?}"),
            }
        }
        assert!(pid != 0, "fixture printed no pid");
        Running { child, pid, values }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stdin) = self.child.stdin.as_mut() {
            let _ = stdin.write_all(b"\n");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The type DIEs of the variables declared (anywhere) inside functions named `function`,
/// and of any variable whose name starts with `prefix`.
pub fn local_types(exe: &Path, function: &str, prefix: Option<&str>) -> HashMap<String, DieRef> {
    let data = std::fs::read(exe).expect("read fixture");
    let obj = object::File::parse(&*data).expect("parse fixture");
    let load = |id: gimli::SectionId| -> Result<std::borrow::Cow<[u8]>, gimli::Error> {
        Ok(obj
            .section_by_name(id.name())
            .and_then(|s| s.uncompressed_data().ok())
            .unwrap_or(std::borrow::Cow::Borrowed(&[])))
    };
    let sections = gimli::DwarfSections::load(load).expect("load dwarf");
    let dwarf = sections.borrow(|s| gimli::EndianSlice::new(s, gimli::RunTimeEndian::Little));
    let mut out = HashMap::new();
    let mut units = dwarf.units();
    while let Some(header) = units.next().expect("unit") {
        let unit = dwarf.unit(header).expect("unit");
        let start = header.debug_info_offset().expect("offset").0;
        let mut cursor = unit.entries();
        let mut inside: Option<isize> = None;
        while let Some(e) = cursor.next_dfs().expect("dfs") {
            let depth = e.depth();
            if inside.is_some_and(|d| depth <= d) {
                inside = None;
            }
            let name = e
                .attr_value(dw::DW_AT_name)
                .and_then(|v| dwarf.attr_string(&unit, v).ok())
                .map(|s| s.to_string_lossy().into_owned());
            if e.tag() == dw::DW_TAG_subprogram
                && name.as_deref() == Some(function)
                && inside.is_none()
            {
                inside = Some(depth);
                continue;
            }
            // Optimised builds may move locals into abstract/inlined copies: any variable
            // of the unit will do when names are unique (the fixtures prefix them).
            if (inside.is_some()
                || prefix.is_some_and(|p| name.as_deref().is_some_and(|n| n.starts_with(p))))
                && e.tag() == dw::DW_TAG_variable
                && let Some(n) = name
            {
                let die = match e.attr_value(dw::DW_AT_type) {
                    Some(gimli::AttributeValue::UnitRef(o)) => DieRef(start + o.0),
                    Some(gimli::AttributeValue::DebugInfoRef(o)) => DieRef(o.0),
                    _ => continue,
                };
                out.entry(n).or_insert(die);
            }
        }
    }
    out
}
