//! Errors a person can act on.

use std::path::PathBuf;

/// What went wrong reading debug info or resolving a location.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not an ELF object nonstop can read.
    #[error("{path} is not an ELF executable or shared object: {reason}")]
    NotElf {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// The binary has no DWARF.
    #[error(
        "{path} has no debug info: build with `debug = \"line-tables-only\"` at least (in Cargo.toml: \
         [profile.release] debug = true for variables), or install its separate debug file"
    )]
    NoDebugInfo {
        /// The file.
        path: PathBuf,
    },
    /// The supplementary debug file (`.gnu_debugaltlink`, written by `dwz -m`) cannot be read.
    #[error(
        "{path} keeps part of its debug info in {sup}, which cannot be read: put that file \
         back where `.gnu_debugaltlink` says, or install the package that has it"
    )]
    NoSupplementaryFile {
        /// The file.
        path: PathBuf,
        /// The supplementary file it names.
        sup: PathBuf,
    },
    /// The address is in a unit built with `-gsplit-dwarf` whose split file is missing.
    #[error(
        "the variables at {address:#x} are in the split DWARF file {}, which cannot be read: \
         keep the .dwo files where they were built, or pack them with `dwp` into PROGRAM.dwp \
         beside the program",
        dwo.display()
    )]
    NoSplitFile {
        /// The address.
        address: u64,
        /// The `.dwo` file the unit names (empty when it names none).
        dwo: PathBuf,
    },
    /// The DWARF is malformed.
    #[error("malformed debug info: {0}")]
    Dwarf(#[from] gimli::Error),
    /// The location string is neither `FILE:LINE` nor a function name.
    #[error(
        "cannot read location {location:?}: write FILE:LINE (src/cart.rs:42) or a function name (shop::cart::Cart::total)"
    )]
    BadLocation {
        /// What was given.
        location: String,
    },
    /// No source file of the binary matches.
    #[error(
        "no source file {file} in the debug info{}",
        suggest(" (closest: ", closest, ")")
    )]
    UnknownFile {
        /// The file asked for.
        file: String,
        /// Known paths that look closest.
        closest: Vec<String>,
    },
    /// Several source files match.
    #[error("{file} matches several source files; write more of the path: {}", candidates.join(", "))]
    AmbiguousFile {
        /// The file asked for.
        file: String,
        /// The matching paths.
        candidates: Vec<String>,
    },
    /// The line has no code.
    #[error("no code at {file}:{line} (inlined away or blank?); nearest lines with code: {}", nearest(*above, *below))]
    NoCode {
        /// The file (full path).
        file: String,
        /// The line asked for.
        line: u32,
        /// The nearest line above with code.
        above: Option<u32>,
        /// The nearest line below with code.
        below: Option<u32>,
    },
    /// No function has that name.
    #[error(
        "no function {name} in the debug info{}",
        suggest(" (did you mean: ", suggestions, ")")
    )]
    UnknownFunction {
        /// The name asked for.
        name: String,
        /// Close names.
        suggestions: Vec<String>,
    },
    /// Several different functions match a partial name.
    #[error("{name} matches several functions; write the full path: {}", candidates.join(", "))]
    AmbiguousFunction {
        /// The name asked for.
        name: String,
        /// The matching functions.
        candidates: Vec<String>,
    },
    /// No function contains the address.
    #[error("no function contains address {address:#x}")]
    NoCodeAt {
        /// The address.
        address: u64,
    },
    /// The function has lines but no variable info.
    #[error(
        "{function} (at {address:#x}) has no variable info: it was built with line tables only; \
         build with `debug = true` (Cargo.toml: [profile.release] debug = true) to see variables"
    )]
    NoVariableInfo {
        /// The address.
        address: u64,
        /// The function containing it.
        function: String,
    },
    /// The file is not mapped in the process.
    #[error("{path} is not mapped in the process ({maps} has no mapping of it)")]
    NotMapped {
        /// The file.
        path: PathBuf,
        /// The maps file read.
        maps: PathBuf,
    },
}

fn suggest(open: &str, items: &[String], close: &str) -> String {
    if items.is_empty() {
        String::new()
    } else {
        format!("{open}{}{close}", items.join(", "))
    }
}

fn nearest(above: Option<u32>, below: Option<u32>) -> String {
    match (above, below) {
        (Some(a), Some(b)) => format!("{a}, {b}"),
        (Some(a), None) => a.to_string(),
        (None, Some(b)) => b.to_string(),
        (None, None) => "none in this file".into(),
    }
}
