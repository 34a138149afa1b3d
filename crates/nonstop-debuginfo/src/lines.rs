//! Resolving `FILE:LINE` and function names to code addresses.

/// One code address a location resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// The address, relative to the file (add the load bias for a running process).
    pub address: u64,
    /// The function that contains it, outermost last: `[inlined callee, …, containing function]`.
    pub functions: Vec<String>,
    /// The source file of the line-table row.
    pub file: String,
    /// The line.
    pub line: u32,
    /// Whether the row is a statement start.
    pub is_stmt: bool,
}
