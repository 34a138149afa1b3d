//! x86_64: instruction analysis and relocation, register access, assembly helpers.

pub mod asm;
pub mod context;
pub mod fastpath;
pub mod site;
