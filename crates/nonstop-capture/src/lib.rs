//! What nonstop's trap path runs: registers, memory reads, capture plans and conditions.
//!
//! # Overview
//! - [`Registers`] and the [`Memory`] trait: the machine state at a hit, as the probe
//!   engine sees it (a fault-safe reader) and as the agent thread sees it afterwards
//!   ([`CapturedMemory`], the bytes a capture kept).
//! - [`capture::CapturePlan`]: which bytes to read at a hit, built by `nonstop-debuginfo`
//!   from DWARF, and [`capture::execute`], which reads them into a caller-provided buffer.
//! - [`filter::Filter`]: a condition compiled by `nonstop-expr`, and [`filter::eval_filter`],
//!   which the probe engine runs before the capture.
//!
//! - [`maps`]: `/proc/PID/maps` parsed once, and the load bias of a mapped ELF file (not
//!   trap-path code, but the probe engine, the debug-info reader and the agent all need it).
//!
//! Both entry points run inside the signal handler of the host program: they never
//! allocate, never panic on any plan, filter or memory contents, and do bounded work.
//! The crate lints against the ways Rust code panics (`panic!`, slice indexing, unchecked
//! arithmetic, `unwrap`/`expect`), so a reviewer need not find them by eye. It depends on
//! nothing of nonstop's, so both the producer of a plan (debuginfo) and its executor
//! (probe) can share it without depending on each other.
//!
//! # Example
//! ```
//! use nonstop_capture::capture::{
//!     CapturePlan, CapturedMemory, CapturedRoot, Piece, PieceSource, RootPlan, execute,
//! };
//! use nonstop_capture::{Memory, ReadError, Registers};
//!
//! /// The program's memory: 8 bytes at 0x1000.
//! struct Flat;
//! impl Memory for Flat {
//!     fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
//!         let data = 42u64.to_le_bytes();
//!         let start = addr.checked_sub(0x1000).ok_or(ReadError::Fault)? as usize;
//!         let src = data.get(start..start + buf.len()).ok_or(ReadError::Fault)?;
//!         buf.copy_from_slice(src);
//!         Ok(())
//!     }
//! }
//!
//! let plan = CapturePlan {
//!     roots: vec![RootPlan {
//!         pieces: vec![Piece { size: 8, source: PieceSource::Absolute { addr: 0x1000 } }],
//!         node: None,
//!     }],
//!     ..CapturePlan::default()
//! };
//! let mut record = [0u8; 4096];
//! let outcome = execute(&plan, &Registers::default(), &Flat, &mut record);
//! let captured = CapturedMemory::parse(&record[..outcome.len]).unwrap();
//! assert_eq!(
//!     captured.roots,
//!     [CapturedRoot::Bytes { bytes: 42u64.to_le_bytes().to_vec(), addr: Some(0x1000) }]
//! );
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        clippy::unwrap_used,
        clippy::expect_used
    )
)]

pub mod capture;
pub mod filter;
pub mod maps;

pub use capture::{CapturedMemory, Memory, ReadError, Registers};
