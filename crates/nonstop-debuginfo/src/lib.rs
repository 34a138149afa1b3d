//! ELF/DWARF for nonstop: from `FILE:LINE` to addresses, variables, capture plans and
//! typed values.
//!
//! # Overview
//! - [`DebugInfo`]: one loaded binary (executable or shared object) with its DWARF.
//!   Loading is the costly step; keep it and reuse it for every location.
//! - [`DebugInfo::resolve`]: a location (`src/cart.rs:42`, `shop::cart::Cart::total`)
//!   to [`Site`]s, each an address with its inline chain.
//! - [`DebugInfo::variables_at`]: the [`Variable`]s in scope at an address, each with a
//!   location made of capture-plan pieces, or a reason it is not available.
//! - [`DebugInfo::capture_plan`] and [`DebugInfo::decode`]: what to read at a hit, and
//!   the bytes read turned into [`nonstop_model::Value`]s (Rust-aware).
//! - [`DebugInfo::expr_scope`]: the variables' types as `nonstop_expr::Ty`, to check a
//!   rule's expressions against the real types when it is armed.
//!
//! Addresses are file addresses; [`DebugInfo::load_bias_in`] gives what to add for a
//! running process, and [`Availability::relocate`] moves static (`Absolute`) pieces.
//!
//! # Example
//! ```no_run
//! use nonstop_debuginfo::DebugInfo;
//!
//! let info = DebugInfo::load("target/release/shop")?;
//! for site in info.resolve("src/cart.rs:42")? {
//!     println!("{:#x} in {}", site.address, site.functions.join(", inlined into "));
//!     for var in info.variables_at(site.address)? {
//!         println!("  {}: {} {:?}", var.name, var.type_name, var.availability);
//!     }
//! }
//! # Ok::<(), nonstop_debuginfo::Error>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod decode;
mod dies;
mod error;
mod expr_types;
mod filter_paths;
mod functions;
mod lines;
mod load;
mod plan;
mod scope;
mod symbolize;
mod types;
mod units;
mod unwind;
mod vtables;

pub use decode::ENTRY_NOT_RECORDED;
pub use dies::async_display_name;
pub use error::Error;
pub use lines::Site;
/// `/proc/PID/maps`, parsed (re-exported for the agent).
pub use nonstop_capture::maps;
pub use nonstop_model::debug::{debug_string, key_string};
pub use plan::{DEFAULT_MAX_BYTES, DEFAULT_STACK_BYTES};
pub use scope::{Availability, EntryNeeds, Variable, VariableKind, relocate_source};
pub use types::{
    Discriminant, Field, PointerKind, Type, TypeKind, Variant, cpp_short_name, short_name,
};
pub use unwind::{DEFAULT_MAX_FRAMES, Module, RawFrame, Stacks, Unwinder};

use std::sync::Arc;

/// The gimli reader used throughout: owned, cheap to clone, sendable.
pub type Reader = gimli::EndianArcSlice<gimli::RunTimeEndian>;

/// A reference to a DIE that does not depend on a unit: its offset in `.debug_info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DieRef(pub usize);

/// One loaded binary with its DWARF, ready for queries. Costly to build; reuse it.
pub struct DebugInfo {
    /// All DWARF sections (from the file itself or its separate debug file).
    pub(crate) dwarf: Arc<gimli::Dwarf<Reader>>,
    /// Details of the loaded file (path, build id, load-time facts).
    pub(crate) file: load::LoadedFile,
    /// Lazily built indexes (line table, functions, types).
    pub(crate) index: load::Indexes,
}

// Queries run from several threads (the agent thread, the CLI's workers).
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<DebugInfo>();
};
