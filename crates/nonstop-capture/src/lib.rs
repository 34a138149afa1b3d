//! The leaf crate of nonstop: code that depends on nothing else of ours, used by the probe
//! engine, the debug-info reader and the agent.
//!
//! - [`maps`]: `/proc/PID/maps` parsed once, and the load bias of a mapped ELF file.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod maps;
