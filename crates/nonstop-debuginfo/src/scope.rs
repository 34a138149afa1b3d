//! The variables in scope at an address, with their locations.

use crate::DieRef;
use nonstop_model::capture::Piece;

/// A parameter or a local.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VariableKind {
    /// A function parameter.
    Parameter,
    /// A local variable.
    Local,
}

/// Whether and where a variable's value is at one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// Its bytes, piece by piece.
    Available(Vec<Piece>),
    /// No location at this address.
    OptimizedOut,
    /// Only its value at function entry is described, which nonstop cannot recover here.
    EntryValue,
}

/// One variable in scope at an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    /// Its name.
    pub name: String,
    /// Parameter or local.
    pub kind: VariableKind,
    /// Its type's DIE.
    pub type_die: Option<DieRef>,
    /// Its type's name as the program writes it (`alloc::string::String`).
    pub type_name: String,
    /// The line it is declared on.
    pub decl_line: Option<u32>,
    /// Where its value is at the address.
    pub availability: Availability,
}
