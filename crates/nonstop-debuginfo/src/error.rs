//! Errors a person can act on.

use std::path::PathBuf;

/// What went wrong reading debug info or resolving a location.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
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
    /// The DWARF is malformed.
    #[error("malformed debug info: {0}")]
    Dwarf(#[from] gimli::Error),
}
