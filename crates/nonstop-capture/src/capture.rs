//! Capture plans: which bytes to read at a hit, and the executor that reads them.
//!
//! `nonstop-debuginfo` builds a [`CapturePlan`] for a probe address from DWARF (variable
//! locations and type layouts); `nonstop-probe` runs it inside the trap handler through
//! [`execute`], which never allocates, never panics on any input bytes and writes into a
//! caller-provided buffer; the agent thread then turns the record back into a
//! [`CapturedMemory`] and decodes typed values from it.
//!
//! The plan lives here, in a leaf crate, because its producer (debuginfo) and its executor
//! (probe) must agree on it and neither may depend on the other.
//!
//! # Record layout (little endian, written by [`execute`])
//!
//! ```text
//! header   magic u32 | flags u32 | roots u32 | blocks u32
//! regs     17 × u64 (DWARF order: rax rdx rcx rbx rsi rdi rbp rsp r8..r15 rip) | 16 × 16 B xmm0..15
//! roots    per root: status u32 | len u32 | addr u64 | len bytes when status == ROOT_OK
//! blocks   per block: addr u64 | len u32 | status u32 | len bytes when status == BLOCK_OK
//! ```

/// The number of general registers in a [`Registers`] set (DWARF numbers 0..=16, 16 = rip).
pub const GPR_COUNT: usize = 17;
/// The number of vector registers kept (xmm0..xmm15, DWARF numbers 17..=32).
pub const XMM_COUNT: usize = 16;
/// DWARF register number of the stack pointer on x86_64.
pub const REG_RSP: u16 = 7;
/// DWARF register number of the frame pointer on x86_64.
pub const REG_RBP: u16 = 6;
/// DWARF register number of the instruction pointer (return address column) on x86_64.
pub const REG_RIP: u16 = 16;
/// DWARF register number of xmm0 on x86_64.
pub const REG_XMM0: u16 = 17;

const MAGIC: u32 = 0x4e53_4331; // "NSC1"
const HEADER_LEN: usize = 16;
const REGS_LEN: usize = GPR_COUNT * 8 + XMM_COUNT * 16;
/// Where the first root record starts.
const ROOTS_AT: usize = HEADER_LEN + REGS_LEN;
/// Bytes of a root or block header (status, length, address).
const ITEM_HEADER_LEN: usize = 16;
/// Record flag: the per-hit byte cap cut the capture short.
pub const FLAG_TRUNCATED: u32 = 1;

/// Root status: the bytes follow.
pub const ROOT_OK: u32 = 0;
/// Root status: reading the variable's memory faulted.
pub const ROOT_FAULT: u32 = 1;
/// Root status: the variable has no location at this address (optimized out).
pub const ROOT_UNAVAILABLE: u32 = 2;
/// Root status: the record ran out of space before this root.
pub const ROOT_NO_SPACE: u32 = 3;
/// Block status: the bytes follow.
pub const BLOCK_OK: u32 = 0;
/// Block status: reading faulted; no bytes follow.
pub const BLOCK_FAULT: u32 = 1;

/// Register values at a hit, numbered as DWARF numbers them on x86_64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registers {
    /// rax rdx rcx rbx rsi rdi rbp rsp r8..r15 rip.
    pub gpr: [u64; GPR_COUNT],
    /// xmm0..xmm15, low byte first.
    pub xmm: [[u8; 16]; XMM_COUNT],
}

impl Default for Registers {
    fn default() -> Self {
        Registers {
            gpr: [0; GPR_COUNT],
            xmm: [[0; 16]; XMM_COUNT],
        }
    }
}

impl Registers {
    /// The 16 bytes of a vector register (DWARF 17..=32); `None` for general registers,
    /// which [`Registers::value`] gives.
    #[inline]
    pub fn bytes(&self, reg: u16) -> Option<&[u8]> {
        (reg as usize)
            .checked_sub(GPR_COUNT)
            .and_then(|i| self.xmm.get(i))
            .map(|x| &x[..])
    }

    /// The value of a general register, or the low 8 bytes of an xmm register.
    #[inline]
    pub fn value(&self, reg: u16) -> Option<u64> {
        if let Some(&g) = self.gpr.get(reg as usize) {
            return Some(g);
        }
        let x = self.bytes(reg)?;
        let mut b = [0u8; 8];
        b.copy_from_slice(x.get(..8)?);
        Some(u64::from_le_bytes(b))
    }
}

/// Why a read of program memory failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// The address is not mapped or not readable.
    Fault,
    /// The bytes were not captured at the hit (decoding from a record).
    NotCaptured,
}

/// Read access to a program's memory. The probe engine implements it with fault-safe
/// reads; tests implement it over another process; [`CapturedMemory`] over a record.
pub trait Memory {
    /// Fills `buf` with the bytes at `addr`, entirely or not at all.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError>;
}

/// Where one piece of a variable's value is at the probe address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PieceSource {
    /// In a register (its low bytes).
    Register {
        /// DWARF register number.
        reg: u16,
    },
    /// In memory at `reg + offset` (frame-base and CFA offsets already resolved).
    Memory {
        /// DWARF register number of the base.
        reg: u16,
        /// Byte offset from the register's value.
        offset: i64,
    },
    /// In memory at a fixed address (statics, already relocated by the load bias).
    Absolute {
        /// The address.
        addr: u64,
    },
    /// The value is `reg + offset` itself (`DW_OP_bregN; DW_OP_stack_value`).
    Computed {
        /// DWARF register number.
        reg: u16,
        /// Added to the register's value.
        offset: i64,
    },
    /// A constant known from debug info (`DW_OP_implicit_value`, `DW_OP_constu; DW_OP_stack_value`).
    Implicit(Vec<u8>),
    /// Computed at the hit by a location program (a DWARF expression with `DW_OP_deref`
    /// chains and arithmetic, or a frame base that itself needs evaluating): the address of
    /// the bytes, or the value itself when `value` is set (`DW_OP_stack_value`).
    Expr {
        /// The program, run by [`eval_location`]; at most [`MAX_LOC_OPS`] steps.
        ops: Vec<LocOp>,
        /// Whether the result is the value rather than its address.
        value: bool,
    },
    /// Not available at this address (optimized out).
    Unavailable,
}

/// Most steps of a location program the executor runs; a longer one fails.
pub const MAX_LOC_OPS: usize = 64;
/// Deepest stack of a location program.
pub const MAX_LOC_STACK: usize = 16;

/// One step of a location program: a DWARF location expression compiled for the trap
/// path (registers and offsets resolved, file addresses relocated, no branches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocOp {
    /// Push `reg + offset` (`DW_OP_bregN`, `DW_OP_fbreg` over a register frame base).
    Reg {
        /// DWARF register number.
        reg: u16,
        /// Added to its value.
        offset: i64,
    },
    /// Push `reg + offset` with the register's value at the function's entry
    /// (`DW_OP_entry_value(DW_OP_regN)`): read from the [`EntryRegisters`] a companion
    /// probe recorded for this frame; without them the program gives
    /// [`LocError::NoEntryValue`].
    EntryReg {
        /// DWARF register number (0..=15, or xmm0..7 as 17..=24).
        reg: u16,
        /// Added to its value.
        offset: i64,
    },
    /// Push a constant.
    Const(u64),
    /// Push an address in the program (`DW_OP_addr`; relocated by the load bias).
    Addr(u64),
    /// Pop an address, read `size` (1..=8) bytes there with the fault-safe reader and
    /// push them zero-extended (`DW_OP_deref`, `DW_OP_deref_size`).
    Deref {
        /// Bytes to read.
        size: u8,
    },
    /// Add a constant to the top (`DW_OP_plus_uconst`).
    PlusConst(u64),
    /// Pop `b`, then `a`; push `a OP b`.
    Bin(BinOp),
    /// Negate the top (two's complement).
    Neg,
    /// Bitwise not of the top.
    Not,
    /// Absolute value of the top, read as signed.
    Abs,
    /// Push a copy of the entry `n` below the top (`DW_OP_dup` is 0, `DW_OP_over` 1).
    Pick(u8),
    /// Pop the top.
    Drop,
    /// Swap the two top entries.
    Swap,
    /// Rotate the three top entries (the top goes third).
    Rot,
}

/// A binary operation of a location program (64-bit, wrapping; comparisons push 1 or 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    /// `a + b`.
    Plus,
    /// `a - b`.
    Minus,
    /// `a * b`.
    Mul,
    /// Signed division; by zero fails.
    Div,
    /// Unsigned remainder; by zero fails.
    Mod,
    /// `a & b`.
    And,
    /// `a | b`.
    Or,
    /// `a ^ b`.
    Xor,
    /// `a << b`.
    Shl,
    /// Logical `a >> b`.
    Shr,
    /// Arithmetic `a >> b`.
    Shra,
    /// `a == b`.
    Eq,
    /// `a != b`.
    Ne,
    /// Signed `a < b`.
    Lt,
    /// Signed `a > b`.
    Gt,
    /// Signed `a <= b`.
    Le,
    /// Signed `a >= b`.
    Ge,
}

/// Why a location program gave no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocError {
    /// A `Deref` read faulted at this address (a bad pointer on the way).
    Fault(u64),
    /// The program is malformed (stack underflow or overflow, a division by zero, an
    /// unknown register, too many steps).
    Invalid,
    /// The program reads a register's value at function entry, and none was recorded for
    /// this frame (the function was entered before the companion probe was armed, or the
    /// entry went unrecorded).
    NoEntryValue,
}

/// The number of general registers an [`EntryRegisters`] keeps (rax..r15, DWARF 0..=15).
pub const ENTRY_GPR_COUNT: usize = 16;
/// The number of vector registers an [`EntryRegisters`] keeps (low halves of xmm0..7,
/// where the System V ABI passes floating-point arguments).
pub const ENTRY_XMM_COUNT: usize = 8;

/// Register values at a function's entry, as a companion probe there recorded them for
/// one frame: what `DW_OP_entry_value` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EntryRegisters {
    /// rax rdx rcx rbx rsi rdi rbp rsp r8..r15 (DWARF 0..=15) at entry.
    pub gpr: [u64; ENTRY_GPR_COUNT],
    /// The low 8 bytes of xmm0..xmm7 (DWARF 17..=24) at entry.
    pub xmm: [u64; ENTRY_XMM_COUNT],
}

impl EntryRegisters {
    /// The entry values of the registers in `regs` that an [`EntryRegisters`] keeps.
    pub fn from_registers(regs: &Registers) -> EntryRegisters {
        let mut e = EntryRegisters::default();
        for (d, s) in e.gpr.iter_mut().zip(regs.gpr.iter()) {
            *d = *s;
        }
        for (d, s) in e.xmm.iter_mut().zip(regs.xmm.iter()) {
            let mut b = [0u8; 8];
            if let Some(low) = s.get(..8) {
                b.copy_from_slice(low);
            }
            *d = u64::from_le_bytes(b);
        }
        e
    }

    /// The value a register had at entry, when it is one that is kept.
    #[inline]
    pub fn value(&self, reg: u16) -> Option<u64> {
        if let Some(&g) = self.gpr.get(reg as usize) {
            return Some(g);
        }
        let x = (reg as usize).checked_sub(GPR_COUNT)?;
        self.xmm.get(x).copied()
    }

    /// Whether a register's entry value is one an [`EntryRegisters`] keeps.
    pub fn keeps(reg: u16) -> bool {
        EntryRegisters::default().value(reg).is_some()
    }
}

/// Runs a location program over `regs` and `mem` and returns the top of its stack.
///
/// Bounded and allocation-free: at most [`MAX_LOC_OPS`] steps over a fixed stack of
/// [`MAX_LOC_STACK`] entries; every read goes through `mem` (fault-safe at a hit).
pub fn eval_location<M: Memory + ?Sized>(
    ops: &[LocOp],
    regs: &Registers,
    mem: &M,
) -> Result<u64, LocError> {
    eval_location_with_entry(ops, regs, None, mem)
}

/// [`eval_location`] with the frame's register values at function entry, for programs
/// with [`LocOp::EntryReg`] steps (`None`: not recorded for this frame).
pub fn eval_location_with_entry<M: Memory + ?Sized>(
    ops: &[LocOp],
    regs: &Registers,
    entry: Option<&EntryRegisters>,
    mem: &M,
) -> Result<u64, LocError> {
    if ops.len() > MAX_LOC_OPS {
        return Err(LocError::Invalid);
    }
    let mut stack = [0u64; MAX_LOC_STACK];
    let mut n = 0usize;
    let push = |stack: &mut [u64; MAX_LOC_STACK], n: &mut usize, v: u64| -> Result<(), LocError> {
        let slot = stack.get_mut(*n).ok_or(LocError::Invalid)?;
        *slot = v;
        *n = n.saturating_add(1);
        Ok(())
    };
    let pop = |stack: &[u64; MAX_LOC_STACK], n: &mut usize| -> Result<u64, LocError> {
        *n = n.checked_sub(1).ok_or(LocError::Invalid)?;
        stack.get(*n).copied().ok_or(LocError::Invalid)
    };
    for op in ops {
        match *op {
            LocOp::Reg { reg, offset } => {
                let v = regs.value(reg).ok_or(LocError::Invalid)?;
                push(&mut stack, &mut n, v.wrapping_add(offset as u64))?;
            }
            LocOp::EntryReg { reg, offset } => {
                let v = entry
                    .ok_or(LocError::NoEntryValue)?
                    .value(reg)
                    .ok_or(LocError::NoEntryValue)?;
                push(&mut stack, &mut n, v.wrapping_add(offset as u64))?;
            }
            LocOp::Const(c) | LocOp::Addr(c) => push(&mut stack, &mut n, c)?,
            LocOp::Deref { size } => {
                let addr = pop(&stack, &mut n)?;
                let mut b = [0u8; 8];
                let dst = b.get_mut(..size as usize).ok_or(LocError::Invalid)?;
                if dst.is_empty() {
                    return Err(LocError::Invalid);
                }
                mem.read(addr, dst).map_err(|_| LocError::Fault(addr))?;
                push(&mut stack, &mut n, u64::from_le_bytes(b))?;
            }
            LocOp::PlusConst(c) => {
                let a = pop(&stack, &mut n)?;
                push(&mut stack, &mut n, a.wrapping_add(c))?;
            }
            LocOp::Bin(bin) => {
                let b = pop(&stack, &mut n)?;
                let a = pop(&stack, &mut n)?;
                let (sa, sb) = (a as i64, b as i64);
                let v = match bin {
                    BinOp::Plus => a.wrapping_add(b),
                    BinOp::Minus => a.wrapping_sub(b),
                    BinOp::Mul => a.wrapping_mul(b),
                    BinOp::Div => sa.checked_div(sb).ok_or(LocError::Invalid)? as u64,
                    BinOp::Mod => a.checked_rem(b).ok_or(LocError::Invalid)?,
                    BinOp::And => a & b,
                    BinOp::Or => a | b,
                    BinOp::Xor => a ^ b,
                    BinOp::Shl => a.checked_shl(b.min(64) as u32).unwrap_or(0),
                    BinOp::Shr => a.checked_shr(b.min(64) as u32).unwrap_or(0),
                    BinOp::Shra => sa.wrapping_shr(b.min(63) as u32) as u64,
                    BinOp::Eq => u64::from(a == b),
                    BinOp::Ne => u64::from(a != b),
                    BinOp::Lt => u64::from(sa < sb),
                    BinOp::Gt => u64::from(sa > sb),
                    BinOp::Le => u64::from(sa <= sb),
                    BinOp::Ge => u64::from(sa >= sb),
                };
                push(&mut stack, &mut n, v)?;
            }
            LocOp::Neg => {
                let a = pop(&stack, &mut n)?;
                push(&mut stack, &mut n, (a as i64).wrapping_neg() as u64)?;
            }
            LocOp::Not => {
                let a = pop(&stack, &mut n)?;
                push(&mut stack, &mut n, !a)?;
            }
            LocOp::Abs => {
                let a = pop(&stack, &mut n)?;
                push(&mut stack, &mut n, (a as i64).wrapping_abs() as u64)?;
            }
            LocOp::Pick(k) => {
                let i = n
                    .checked_sub(1)
                    .and_then(|t| t.checked_sub(k as usize))
                    .ok_or(LocError::Invalid)?;
                let v = stack.get(i).copied().ok_or(LocError::Invalid)?;
                push(&mut stack, &mut n, v)?;
            }
            LocOp::Drop => {
                pop(&stack, &mut n)?;
            }
            LocOp::Swap => {
                let b = pop(&stack, &mut n)?;
                let a = pop(&stack, &mut n)?;
                push(&mut stack, &mut n, b)?;
                push(&mut stack, &mut n, a)?;
            }
            LocOp::Rot => {
                let c = pop(&stack, &mut n)?;
                let b = pop(&stack, &mut n)?;
                let a = pop(&stack, &mut n)?;
                push(&mut stack, &mut n, c)?;
                push(&mut stack, &mut n, a)?;
                push(&mut stack, &mut n, b)?;
            }
        }
    }
    pop(&stack, &mut n)
}

/// One piece of a variable: `size` bytes from `source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Bytes this piece contributes.
    pub size: u32,
    /// Where they are.
    pub source: PieceSource,
}

/// How to read one variable: its pieces (in order) and what to follow from its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootPlan {
    /// The variable's bytes, piece by piece; together `size` bytes.
    pub pieces: Vec<Piece>,
    /// The plan to apply to the variable's bytes (pointers to follow), if any.
    pub node: Option<NodeId>,
}

/// Index of a node in [`CapturePlan::nodes`].
pub type NodeId = u32;

/// What to follow from a value whose bytes are captured. Offsets are from the start of
/// that value. Every count is already capped by the capture limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanNode {
    /// Apply every listed node to the same value.
    All(Vec<NodeId>),
    /// A pointer at `offset`: read `size` bytes where it points (unless null), then `then`.
    Deref {
        /// Offset of the pointer.
        offset: u32,
        /// Bytes to read at the target.
        size: u32,
        /// Plan for the target's bytes.
        then: Option<NodeId>,
    },
    /// A pointer and a count (`&[T]`, `&str`, `Vec`, `String`): read up to `max_elems`
    /// elements of `elem_size` bytes, then `each` on every element.
    Slice {
        /// Offset of the data pointer.
        ptr_offset: u32,
        /// Offset of the element count (a usize).
        len_offset: u32,
        /// Size of one element (0 for zero-sized types: nothing is read).
        elem_size: u32,
        /// Most elements to read.
        max_elems: u32,
        /// Plan for each element.
        each: Option<NodeId>,
    },
    /// A ring buffer (`VecDeque`): element `i` is at `(head + i) % cap`.
    Ring {
        /// Offset of the data pointer.
        ptr_offset: u32,
        /// Offset of the capacity.
        cap_offset: u32,
        /// Offset of the head index.
        head_offset: u32,
        /// Offset of the length.
        len_offset: u32,
        /// Size of one element.
        elem_size: u32,
        /// Most elements to read.
        max_elems: u32,
        /// Plan for each element.
        each: Option<NodeId>,
    },
    /// A hashbrown table: control bytes at the pointer at `ctrl_offset`, `bucket_mask + 1`
    /// buckets of `elem_size` bytes stored below them in reverse (bucket `i` at
    /// `ctrl - (i + 1) * elem_size`). Reads the control bytes, then each full bucket in
    /// ascending index, up to `max_elems`.
    HashTable {
        /// Offset of the control pointer.
        ctrl_offset: u32,
        /// Offset of `bucket_mask`.
        mask_offset: u32,
        /// Offset of `items`.
        items_offset: u32,
        /// Size of one bucket (the `(K, V)` tuple).
        elem_size: u32,
        /// Most entries to read.
        max_elems: u32,
        /// Plan for each entry.
        each: Option<NodeId>,
    },
    /// A NUL-terminated C string whose pointer is at `offset`: read up to `max_len` bytes.
    CString {
        /// Offset of the `char *`.
        offset: u32,
        /// Most bytes to read (the NUL not included).
        max_len: u32,
    },
    /// An enum: read the `size`-byte discriminant at `offset` and apply the node of the
    /// matching case, else `default`.
    Switch {
        /// Offset of the discriminant.
        offset: u32,
        /// Its size in bytes (1, 2, 4 or 8).
        size: u32,
        /// (discriminant, node) pairs.
        cases: Vec<(u64, NodeId)>,
        /// The node when no case matches (the untagged variant of a niche enum).
        default: Option<NodeId>,
    },
    /// A B-tree map (`BTreeMap`): walks nodes in order, reading up to `max_elems` entries.
    BTree {
        /// Offset of the root node pointer (0 = empty).
        root_offset: u32,
        /// Offset of the root's height.
        height_offset: u32,
        /// Size of a leaf node.
        leaf_size: u32,
        /// Size of an internal node.
        internal_size: u32,
        /// Offset of `len` (u16) in a node.
        len_offset: u32,
        /// Offset of the keys array in a node.
        keys_offset: u32,
        /// Offset of the values array in a node.
        vals_offset: u32,
        /// Offset of the edges array in an internal node.
        edges_offset: u32,
        /// Size of a key.
        key_size: u32,
        /// Size of a value.
        val_size: u32,
        /// Most entries to read.
        max_elems: u32,
        /// Plan for each key.
        key_each: Option<NodeId>,
        /// Plan for each value.
        val_each: Option<NodeId>,
    },
    /// Two pointers, `[begin, end)` (C++ `std::vector`): up to `max_elems` elements of
    /// `elem_size` bytes from `begin`, then `each` on every element.
    Span {
        /// Offset of the pointer to the first element.
        begin_offset: u32,
        /// Offset of the pointer one past the last element.
        end_offset: u32,
        /// Size of one element.
        elem_size: u32,
        /// Most elements to read.
        max_elems: u32,
        /// Plan for each element.
        each: Option<NodeId>,
    },
    /// A linked list of nodes (`std::list`, the node list of `std::unordered_map`): the
    /// first node's address at `head_offset`, the element count at `count_offset`; each
    /// node is `node_size` bytes with its successor at `next_offset` and its value from
    /// `value_offset`. Stops at a null link, after `count` or `max_elems` nodes.
    Chain {
        /// Offset of the pointer to the first node.
        head_offset: u32,
        /// Offset of the element count (a usize).
        count_offset: u32,
        /// Offset of the next-node pointer in a node.
        next_offset: u32,
        /// Bytes of one node read.
        node_size: u32,
        /// Offset of the value in a node (the value runs to the node's end).
        value_offset: u32,
        /// Most nodes to read.
        max_elems: u32,
        /// Plan for each value.
        each: Option<NodeId>,
    },
    /// A binary search tree walked in order (the red-black tree of `std::map`/`set`):
    /// the root's address at `root_offset`, each node `node_size` bytes with its children
    /// at `left_offset` and `right_offset` (null at the leaves) and its value from
    /// `value_offset`. Reads up to `max_elems` nodes, in order.
    Tree {
        /// Offset of the root pointer (0 = empty).
        root_offset: u32,
        /// Offset of the left-child pointer in a node.
        left_offset: u32,
        /// Offset of the right-child pointer in a node.
        right_offset: u32,
        /// Bytes of one node read.
        node_size: u32,
        /// Offset of the value in a node (the value runs to the node's end).
        value_offset: u32,
        /// Most nodes to read.
        max_elems: u32,
        /// Plan for each value.
        each: Option<NodeId>,
    },
    /// A C++ `std::deque`: elements from the start iterator to the finish iterator over
    /// fixed-size buffers listed in a map of buffer pointers (`_M_node` points into it).
    /// Reads the map entries between the two iterators' nodes, then up to `max_elems`
    /// elements in order.
    Deque {
        /// Offsets of the start iterator's `_M_cur`, `_M_last` and `_M_node`.
        start: [u32; 3],
        /// Offsets of the finish iterator's `_M_cur`, `_M_first` and `_M_node`.
        finish: [u32; 3],
        /// Size of one element.
        elem_size: u32,
        /// Elements in one buffer.
        buf_elems: u32,
        /// Most elements to read.
        max_elems: u32,
        /// Plan for each element.
        each: Option<NodeId>,
    },
}

/// Deepest binary tree [`PlanNode::Tree`] walks (a red-black tree of 2^31 nodes is at
/// most 62 levels deep); deeper parts are not read.
pub const MAX_TREE_DEPTH: usize = 64;

/// Everything to read at one probe address.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CapturePlan {
    /// One entry per variable, in the order the decoder expects them.
    pub roots: Vec<RootPlan>,
    /// Nodes referenced by roots and by each other (always by a higher index: no cycles).
    pub nodes: Vec<PlanNode>,
    /// Bytes of stack to copy from the stack pointer up, for unwinding off the trap path.
    pub stack_bytes: u32,
    /// Most bytes one record may take (the per-hit cap); the rest is dropped and marked.
    pub max_bytes: u32,
}

/// Deepest nesting of nodes the executor follows, whatever the plan says.
pub const MAX_NODE_DEPTH: u32 = 16;

/// The result of running a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureOutcome {
    /// Bytes of `out` used by the record.
    pub len: usize,
    /// Whether a byte cap cut the capture short.
    pub truncated: bool,
}

/// Runs `plan` over `regs` and `mem`, writing a record into `out`.
///
/// Never allocates and never panics: every index is checked, every count is capped by
/// `plan.max_bytes`, `out.len()` and [`MAX_NODE_DEPTH`], so it may run in a signal handler.
pub fn execute<M: Memory + ?Sized>(
    plan: &CapturePlan,
    regs: &Registers,
    mem: &M,
    out: &mut [u8],
) -> CaptureOutcome {
    execute_with_entry(plan, regs, None, mem, out)
}

/// [`execute`] with the frame's register values at function entry, which pieces computed
/// by [`LocOp::EntryReg`] steps read (`None`: none recorded for this frame, and those
/// roots are unavailable).
pub fn execute_with_entry<M: Memory + ?Sized>(
    plan: &CapturePlan,
    regs: &Registers,
    entry: Option<&EntryRegisters>,
    mem: &M,
    out: &mut [u8],
) -> CaptureOutcome {
    let cap = out.len().min(plan.max_bytes.max(1024) as usize);
    let mut w = Writer {
        plan,
        mem,
        entry,
        out: out.get_mut(..cap).unwrap_or_default(),
        pos: 0,
        blocks: 0,
        truncated: false,
    };
    if w.out.len() < ROOTS_AT {
        return CaptureOutcome {
            len: 0,
            truncated: true,
        };
    }
    // `ROOTS_AT` bytes fit (checked above): the registers in one pass, no bounds per word.
    if let Some(dst) = w.out.get_mut(HEADER_LEN..ROOTS_AT) {
        let (gpr, xmm) = dst.split_at_mut(GPR_COUNT * 8);
        for (d, g) in gpr.chunks_exact_mut(8).zip(regs.gpr) {
            d.copy_from_slice(&g.to_le_bytes());
        }
        for (d, x) in xmm.chunks_exact_mut(16).zip(&regs.xmm) {
            d.copy_from_slice(x);
        }
    }
    w.pos = ROOTS_AT;
    // All root records first, then what their nodes follow: the record keeps the roots
    // contiguous, as `CapturedMemory::parse` reads them.
    let mut written = 0u32;
    for root in &plan.roots {
        if w.root(root, regs) {
            written = written.saturating_add(1);
        }
    }
    let roots_end = w.pos;
    let mut at = ROOTS_AT;
    // What roots' nodes follow (none in a plan of plain values: skip the walk).
    let follows = if plan.nodes.is_empty() {
        &[][..]
    } else {
        &plan.roots[..]
    };
    for root in follows {
        let Some(data) = at.checked_add(ITEM_HEADER_LEN) else {
            break;
        };
        if data > roots_end {
            break;
        }
        let (Some(status), Some(len)) = (w.get(at, 4), w.get(at.saturating_add(4), 4)) else {
            break;
        };
        if status == u64::from(ROOT_OK)
            && let Some(node) = root.node
        {
            w.apply(node, data, len as usize, 0);
        }
        let Some(next) = data.checked_add(len as usize) else {
            break;
        };
        at = next;
    }
    if plan.stack_bytes > 0
        && let Some(rsp) = regs.value(REG_RSP)
    {
        w.stack(rsp, plan.stack_bytes);
    }
    let flags = if w.truncated { FLAG_TRUNCATED } else { 0 };
    let (roots, blocks, len) = (written, w.blocks, w.pos);
    put_u32(w.out, 0, MAGIC);
    put_u32(w.out, 4, flags);
    put_u32(w.out, 8, roots);
    put_u32(w.out, 12, blocks);
    CaptureOutcome {
        len,
        truncated: w.truncated,
    }
}

#[inline]
fn put_u32(out: &mut [u8], at: usize, v: u32) {
    if let Some(dst) = at.checked_add(4).and_then(|end| out.get_mut(at..end)) {
        dst.copy_from_slice(&v.to_le_bytes());
    }
}

struct Writer<'a, M: Memory + ?Sized> {
    plan: &'a CapturePlan,
    mem: &'a M,
    entry: Option<&'a EntryRegisters>,
    out: &'a mut [u8],
    pos: usize,
    blocks: u32,
    truncated: bool,
}

impl<M: Memory + ?Sized> Writer<'_, M> {
    fn room(&self) -> usize {
        self.out.len().saturating_sub(self.pos)
    }

    /// Whether `bytes` more fit after a root or block header.
    fn fits_item(&self, bytes: usize) -> bool {
        bytes
            .checked_add(ITEM_HEADER_LEN)
            .is_some_and(|need| self.room() >= need)
    }

    fn put(&mut self, bytes: &[u8]) {
        let Some(end) = self.pos.checked_add(bytes.len()) else {
            return;
        };
        if let Some(dst) = self.out.get_mut(self.pos..end) {
            dst.copy_from_slice(bytes);
            self.pos = end;
        }
    }

    /// Reads a little-endian unsigned value of `size` bytes at `at` in the record.
    fn get(&self, at: usize, size: usize) -> Option<u64> {
        let src = self.out.get(at..at.checked_add(size)?)?;
        let mut b = [0u8; 8];
        b.get_mut(..size)?.copy_from_slice(src);
        Some(u64::from_le_bytes(b))
    }

    /// Writes one root's record (header and bytes); returns whether a header was written.
    fn root(&mut self, root: &RootPlan, regs: &Registers) -> bool {
        let size: u64 = root
            .pieces
            .iter()
            .fold(0u64, |sum, p| sum.saturating_add(u64::from(p.size)));
        let head = self.pos;
        if size > u32::MAX as u64 || !self.fits_item(size as usize) {
            if self.room() >= ITEM_HEADER_LEN {
                self.put(&ROOT_NO_SPACE.to_le_bytes());
                self.put(&0u32.to_le_bytes());
                self.put(&0u64.to_le_bytes());
                self.truncated = true;
                return true;
            }
            self.truncated = true;
            return false;
        }
        let single = root.pieces.len() == 1;
        let mut computed_addr = None;
        let single_memory = match root.pieces.as_slice() {
            [
                Piece {
                    source: PieceSource::Memory { reg, offset },
                    ..
                },
            ] => regs.value(*reg).map(|v| v.wrapping_add(*offset as u64)),
            [
                Piece {
                    source: PieceSource::Absolute { addr },
                    ..
                },
            ] => Some(*addr),
            _ => None,
        };
        // `fits_item` above: the header and all pieces fit after `head`.
        let data = head.saturating_add(ITEM_HEADER_LEN);
        self.pos = data;
        let mut status = ROOT_OK;
        for piece in &root.pieces {
            let n = piece.size as usize;
            let start = self.pos;
            let Some(end) = start.checked_add(n) else {
                status = ROOT_NO_SPACE;
                break;
            };
            let Some(dst) = self.out.get_mut(start..end) else {
                status = ROOT_NO_SPACE;
                break;
            };
            let ok = match &piece.source {
                PieceSource::Register { reg } => fill_from_register(dst, regs, *reg),
                PieceSource::Memory { reg, offset } => match regs.value(*reg) {
                    Some(base) => self
                        .mem
                        .read(base.wrapping_add(*offset as u64), dst)
                        .is_ok(),
                    None => false,
                },
                PieceSource::Absolute { addr } => self.mem.read(*addr, dst).is_ok(),
                PieceSource::Computed { reg, offset } => match regs.value(*reg) {
                    Some(base) => {
                        fill_le(dst, base.wrapping_add(*offset as u64));
                        true
                    }
                    None => false,
                },
                PieceSource::Implicit(bytes) => {
                    fill_padded(dst, bytes);
                    true
                }
                PieceSource::Expr { ops, value } => {
                    match eval_location_with_entry(ops, regs, self.entry, self.mem) {
                        Ok(v) if *value => {
                            fill_le(dst, v);
                            true
                        }
                        Ok(a) => {
                            if single {
                                computed_addr = Some(a);
                            }
                            self.mem.read(a, dst).is_ok()
                        }
                        Err(LocError::Fault(_)) => false,
                        Err(LocError::Invalid | LocError::NoEntryValue) => {
                            status = ROOT_UNAVAILABLE;
                            break;
                        }
                    }
                }
                PieceSource::Unavailable => {
                    status = ROOT_UNAVAILABLE;
                    break;
                }
            };
            if !ok && status == ROOT_OK {
                status = match piece.source {
                    PieceSource::Register { .. } => ROOT_UNAVAILABLE,
                    _ => ROOT_FAULT,
                };
            }
            if status != ROOT_OK {
                break;
            }
            self.pos = end;
        }
        let len = if status == ROOT_OK { size as u32 } else { 0 };
        if status != ROOT_OK {
            self.pos = data;
        }
        let addr = single_memory.or(computed_addr).unwrap_or(0);
        self.pos = head;
        self.put(&status.to_le_bytes());
        self.put(&len.to_le_bytes());
        self.put(&addr.to_le_bytes());
        self.pos = data.saturating_add(len as usize);
        true
    }

    fn stack(&mut self, rsp: u64, want: u32) {
        // Stack pages below the top of the mapping fault; halve until a read fits.
        let mut len = (want as usize).min(self.room().saturating_sub(ITEM_HEADER_LEN));
        while len >= 64 {
            if self.block(rsp, len).is_some() {
                return;
            }
            len /= 2;
        }
    }

    /// Reads `len` bytes at `addr` into a new block; returns where its bytes start.
    fn block(&mut self, addr: u64, len: usize) -> Option<usize> {
        if !self.fits_item(len) || len > u32::MAX as usize {
            self.truncated = true;
            return None;
        }
        // `fits_item` above: neither sum overflows, both ends are inside `out`.
        let data = self.pos.saturating_add(ITEM_HEADER_LEN);
        let end = data.saturating_add(len);
        let ok = match self.out.get_mut(data..end) {
            Some(dst) => self.mem.read(addr, dst).is_ok(),
            None => false,
        };
        self.put(&addr.to_le_bytes());
        self.put(&(len as u32).to_le_bytes());
        self.put(&(if ok { BLOCK_OK } else { BLOCK_FAULT }).to_le_bytes());
        self.blocks = self.blocks.saturating_add(1);
        if ok {
            self.pos = end;
            Some(data)
        } else {
            None
        }
    }

    /// Applies `node` to the value whose `len` bytes start at `at` in the record.
    fn apply(&mut self, node: NodeId, at: usize, len: usize, depth: u32) {
        if depth >= MAX_NODE_DEPTH {
            return;
        }
        let plan = self.plan;
        let Some(node) = plan.nodes.get(node as usize) else {
            return;
        };
        let field = |w: &Self, off: u32, size: usize| -> Option<u64> {
            if (off as usize).checked_add(size)? > len {
                return None;
            }
            w.get(at.checked_add(off as usize)?, size)
        };
        // `depth < MAX_NODE_DEPTH`: one more level cannot overflow.
        let deeper = depth.saturating_add(1);
        match node {
            PlanNode::All(nodes) => {
                for &n in nodes {
                    self.apply(n, at, len, deeper);
                }
            }
            PlanNode::Deref { offset, size, then } => {
                let Some(ptr) = field(self, *offset, 8) else {
                    return;
                };
                if ptr == 0 || *size == 0 {
                    return;
                }
                if let Some(data) = self.block(ptr, *size as usize)
                    && let Some(then) = then
                {
                    self.apply(*then, data, *size as usize, deeper);
                }
            }
            PlanNode::Slice {
                ptr_offset,
                len_offset,
                elem_size,
                max_elems,
                each,
            } => {
                let (Some(ptr), Some(count)) =
                    (field(self, *ptr_offset, 8), field(self, *len_offset, 8))
                else {
                    return;
                };
                let n = count.min(*max_elems as u64);
                self.elements(ptr, n, *elem_size, *each, depth);
            }
            PlanNode::Ring {
                ptr_offset,
                cap_offset,
                head_offset,
                len_offset,
                elem_size,
                max_elems,
                each,
            } => {
                let (Some(ptr), Some(cap), Some(head), Some(count)) = (
                    field(self, *ptr_offset, 8),
                    field(self, *cap_offset, 8),
                    field(self, *head_offset, 8),
                    field(self, *len_offset, 8),
                ) else {
                    return;
                };
                if cap == 0 || head >= cap || count > cap {
                    return;
                }
                let n = count.min(*max_elems as u64);
                // `head < cap` and `first <= n` (checked above and by `min`).
                let first = n.min(cap.saturating_sub(head));
                let size = *elem_size as u64;
                self.elements(
                    ptr.wrapping_add(head.wrapping_mul(size)),
                    first,
                    *elem_size,
                    *each,
                    depth,
                );
                self.elements(ptr, n.saturating_sub(first), *elem_size, *each, depth);
            }
            PlanNode::HashTable {
                ctrl_offset,
                mask_offset,
                items_offset,
                elem_size,
                max_elems,
                each,
            } => {
                let (Some(ctrl), Some(mask), Some(items)) = (
                    field(self, *ctrl_offset, 8),
                    field(self, *mask_offset, 8),
                    field(self, *items_offset, 8),
                ) else {
                    return;
                };
                if items == 0 || ctrl == 0 || *elem_size == 0 {
                    return;
                }
                let buckets = mask.wrapping_add(1);
                // More buckets than the record can hold control bytes for: not a table we can show.
                if buckets == 0 || buckets > self.room() as u64 || items > buckets {
                    self.truncated = true;
                    return;
                }
                let Some(ctrl_at) = self.block(ctrl, buckets as usize) else {
                    return;
                };
                let mut taken = 0u32;
                for i in 0..buckets as usize {
                    if taken >= *max_elems {
                        break;
                    }
                    let Some(c) = ctrl_at
                        .checked_add(i)
                        .and_then(|at| self.out.get(at))
                        .copied()
                    else {
                        return;
                    };
                    if c & 0x80 != 0 {
                        continue; // EMPTY or DELETED
                    }
                    taken = taken.saturating_add(1);
                    // Addresses wrap as the program's pointer arithmetic would; a wild one faults.
                    let below = (i as u64)
                        .wrapping_add(1)
                        .wrapping_mul(u64::from(*elem_size));
                    let addr = ctrl.wrapping_sub(below);
                    if let Some(data) = self.block(addr, *elem_size as usize)
                        && let Some(each) = each
                    {
                        self.apply(*each, data, *elem_size as usize, deeper);
                    }
                }
            }
            PlanNode::CString { offset, max_len } => {
                let Some(ptr) = field(self, *offset, 8) else {
                    return;
                };
                if ptr != 0 {
                    self.c_string(ptr, *max_len as usize);
                }
            }
            PlanNode::Switch {
                offset,
                size,
                cases,
                default,
            } => {
                let size = (*size as usize).min(8);
                let Some(d) = field(self, *offset, size) else {
                    return;
                };
                let chosen = cases
                    .iter()
                    .find(|(v, _)| truncate(*v, size) == d)
                    .map(|(_, n)| *n)
                    .or(*default);
                if let Some(n) = chosen {
                    self.apply(n, at, len, deeper);
                }
            }
            PlanNode::BTree { .. } => self.btree(node, at, len, depth),
            PlanNode::Span {
                begin_offset,
                end_offset,
                elem_size,
                max_elems,
                each,
            } => {
                let (Some(begin), Some(end)) =
                    (field(self, *begin_offset, 8), field(self, *end_offset, 8))
                else {
                    return;
                };
                if *elem_size == 0 || end < begin {
                    return;
                }
                let count = end
                    .saturating_sub(begin)
                    .checked_div(u64::from(*elem_size))
                    .unwrap_or(0);
                let n = count.min(u64::from(*max_elems));
                self.elements(begin, n, *elem_size, *each, depth);
            }
            PlanNode::Chain {
                head_offset,
                count_offset,
                next_offset,
                node_size,
                value_offset,
                max_elems,
                each,
            } => {
                let (Some(mut ptr), Some(count)) =
                    (field(self, *head_offset, 8), field(self, *count_offset, 8))
                else {
                    return;
                };
                let n = count.min(u64::from(*max_elems));
                let size = *node_size as usize;
                let value_len = size.saturating_sub(*value_offset as usize);
                for _ in 0..n {
                    if ptr == 0 {
                        return;
                    }
                    let Some(data) = self.block(ptr, size) else {
                        return;
                    };
                    if let Some(each) = each
                        && let Some(v) = data.checked_add(*value_offset as usize)
                    {
                        self.apply(*each, v, value_len, deeper);
                    }
                    let Some(next) = data
                        .checked_add(*next_offset as usize)
                        .filter(|_| (*next_offset as usize).saturating_add(8) <= size)
                        .and_then(|a| self.get(a, 8))
                    else {
                        return;
                    };
                    ptr = next;
                }
            }
            PlanNode::Tree { .. } => self.tree(node, at, len, depth),
            PlanNode::Deque { .. } => self.deque(node, at, len, depth),
        }
    }

    /// The element ranges of a `std::deque` (see [`PlanNode::Deque`]).
    fn deque(&mut self, node: &PlanNode, at: usize, len: usize, depth: u32) {
        let PlanNode::Deque {
            start,
            finish,
            elem_size,
            buf_elems,
            max_elems,
            each,
        } = node
        else {
            return;
        };
        let field = |w: &Self, off: u32| -> Option<u64> {
            if (off as usize).checked_add(8)? > len {
                return None;
            }
            w.get(at.checked_add(off as usize)?, 8)
        };
        let [sc, sl, sn] = *start;
        let [fc, ff, fnode] = *finish;
        let (Some(s_cur), Some(s_last), Some(s_node), Some(f_cur), Some(f_first), Some(f_node)) = (
            field(self, sc),
            field(self, sl),
            field(self, sn),
            field(self, fc),
            field(self, ff),
            field(self, fnode),
        ) else {
            return;
        };
        let size = u64::from(*elem_size);
        if size == 0 || f_node < s_node {
            return;
        }
        let mut left = u64::from(*max_elems);
        let count = |from: u64, to: u64| to.saturating_sub(from).checked_div(size).unwrap_or(0);
        if s_node == f_node {
            self.elements(
                s_cur,
                count(s_cur, f_cur).min(left),
                *elem_size,
                *each,
                depth,
            );
            return;
        }
        let first = count(s_cur, s_last).min(left);
        self.elements(s_cur, first, *elem_size, *each, depth);
        left = left.saturating_sub(first);
        // The map entries of the full buffers in between, then the last buffer.
        let middle = count(s_node, f_node).saturating_sub(1);
        let buf = u64::from(*buf_elems).max(1);
        let wanted = left.div_ceil(buf).min(middle);
        let mut entries = 0usize;
        let map_at = if wanted > 0 {
            let Some(bytes) = usize::try_from(wanted).ok().and_then(|n| n.checked_mul(8)) else {
                return;
            };
            entries = wanted as usize;
            self.block(s_node.wrapping_add(8), bytes)
        } else {
            None
        };
        for i in 0..entries {
            if left == 0 {
                return;
            }
            let Some(ptr) = map_at
                .and_then(|m| m.checked_add(i.saturating_mul(8)))
                .and_then(|a| self.get(a, 8))
            else {
                return;
            };
            let n = buf.min(left);
            self.elements(ptr, n, *elem_size, *each, depth);
            left = left.saturating_sub(n);
        }
        if left > 0 && wanted == middle {
            self.elements(
                f_first,
                count(f_first, f_cur).min(left),
                *elem_size,
                *each,
                depth,
            );
        }
    }

    /// In-order walk of a binary tree with a fixed-size stack of node addresses.
    fn tree(&mut self, node: &PlanNode, at: usize, len: usize, depth: u32) {
        let PlanNode::Tree {
            root_offset,
            left_offset,
            right_offset,
            node_size,
            value_offset,
            max_elems,
            each,
        } = node
        else {
            return;
        };
        let size = *node_size as usize;
        let link = |off: u32| (off as usize).saturating_add(8) <= size;
        if !link(*left_offset) || !link(*right_offset) {
            return;
        }
        if (*root_offset as usize).saturating_add(8) > len {
            return;
        }
        let Some(root) = at
            .checked_add(*root_offset as usize)
            .and_then(|a| self.get(a, 8))
        else {
            return;
        };
        let value_len = size.saturating_sub(*value_offset as usize);
        let deeper = depth.saturating_add(1);
        let mut sp = 0usize;
        let mut cur = root;
        let mut taken = 0u32;
        // Each node is read once, on the way down; its right link and where its bytes are
        // in the record are kept on the stack.
        let mut pending = [0u64; MAX_TREE_DEPTH];
        let mut values = [0usize; MAX_TREE_DEPTH];
        while taken < *max_elems {
            while cur != 0 {
                if sp >= MAX_TREE_DEPTH {
                    self.truncated = true;
                    return;
                }
                let Some(data) = self.block(cur, size) else {
                    return;
                };
                let (Some(left), Some(right)) = (
                    data.checked_add(*left_offset as usize)
                        .and_then(|a| self.get(a, 8)),
                    data.checked_add(*right_offset as usize)
                        .and_then(|a| self.get(a, 8)),
                ) else {
                    return;
                };
                if let (Some(p), Some(v)) = (pending.get_mut(sp), values.get_mut(sp)) {
                    *p = right;
                    *v = data;
                }
                sp = sp.saturating_add(1);
                cur = left;
            }
            let Some(top) = sp.checked_sub(1) else {
                return;
            };
            sp = top;
            let (Some(&right), Some(&data)) = (pending.get(top), values.get(top)) else {
                return;
            };
            taken = taken.saturating_add(1);
            if let Some(each) = each
                && let Some(v) = data.checked_add(*value_offset as usize)
            {
                self.apply(*each, v, value_len, deeper);
            }
            cur = right;
        }
    }

    fn elements(&mut self, ptr: u64, n: u64, elem_size: u32, each: Option<NodeId>, depth: u32) {
        if n == 0 || elem_size == 0 || ptr == 0 {
            return;
        }
        let total = n.saturating_mul(elem_size as u64);
        let space = self.room().saturating_sub(ITEM_HEADER_LEN);
        let n = if total as usize > space {
            self.truncated = true;
            space.checked_div(elem_size as usize).unwrap_or(0) as u64
        } else {
            n
        };
        if n == 0 {
            return;
        }
        // At most `space` bytes: no overflow.
        let size = elem_size as usize;
        let bytes = (n as usize).saturating_mul(size);
        let Some(data) = self.block(ptr, bytes) else {
            return;
        };
        if let Some(each) = each {
            let deeper = depth.saturating_add(1);
            for i in 0..n as usize {
                self.apply(
                    each,
                    data.saturating_add(i.saturating_mul(size)),
                    size,
                    deeper,
                );
            }
        }
    }

    fn c_string(&mut self, ptr: u64, max_len: usize) {
        // Read in chunks that never cross a page, so a string ending just before an
        // unmapped page is still read; stop at the first NUL.
        let mut len = 0usize;
        let mut probe = [0u8; 64];
        // The NUL is kept too: at most `max_len + 1` bytes.
        let most = max_len.saturating_add(1);
        while len < most {
            let addr = ptr.wrapping_add(len as u64);
            let to_page_end = 4096usize.saturating_sub((addr % 4096) as usize);
            let chunk = probe.len().min(to_page_end).min(most.saturating_sub(len));
            let Some(window) = probe.get_mut(..chunk) else {
                break;
            };
            if chunk == 0 || self.mem.read(addr, window).is_err() {
                break;
            }
            if let Some(nul) = window.iter().position(|&b| b == 0) {
                len = len.saturating_add(nul).saturating_add(1);
                break;
            }
            len = len.saturating_add(chunk);
        }
        if len > 0 {
            self.block(ptr, len.min(most));
        }
    }

    fn btree(&mut self, node: &PlanNode, at: usize, len: usize, depth: u32) {
        let PlanNode::BTree {
            root_offset,
            height_offset,
            leaf_size,
            internal_size,
            len_offset,
            keys_offset,
            vals_offset,
            edges_offset,
            key_size,
            val_size,
            max_elems,
            key_each,
            val_each,
        } = node
        else {
            return;
        };
        let get = |w: &Self, off: u32| {
            if (off as usize).checked_add(8)? > len {
                None
            } else {
                w.get(at.checked_add(off as usize)?, 8)
            }
        };
        let (Some(root), Some(height)) = (get(self, *root_offset), get(self, *height_offset))
        else {
            return;
        };
        if root == 0 || height > 32 {
            return;
        }
        // Iterative in-order walk with a fixed-size stack: (node address, height, next edge).
        // `sp` counts the entries in use; `height <= 32` bounds it by the array's length.
        let mut stack = [(0u64, 0u64, 0usize); 33];
        let mut sp = 0usize;
        if let Some(bottom) = stack.first_mut() {
            *bottom = (root, height, 0);
            sp = 1;
        }
        let mut taken = 0u32;
        let mut visited = 0u32;
        while let Some(top) = sp.checked_sub(1)
            && taken < *max_elems
        {
            visited = visited.saturating_add(1);
            if visited > max_elems.saturating_mul(4).saturating_add(64) {
                self.truncated = true;
                return;
            }
            let Some(&(addr, h, edge)) = stack.get(top) else {
                return;
            };
            let size = if h == 0 { *leaf_size } else { *internal_size } as usize;
            let Some(data) = self.block(addr, size) else {
                return;
            };
            let Some(n) = data
                .checked_add(*len_offset as usize)
                .and_then(|at| self.get(at, 2))
            else {
                return;
            };
            let n = (n as usize).min(11);
            // Re-reading the node each visit keeps the walk allocation-free; nodes are small.
            if edge > n {
                sp = top;
                continue;
            }
            if h > 0 && edge <= n {
                if let Some(entry) = stack.get_mut(top) {
                    entry.2 = edge.saturating_add(1);
                }
                if let Some(before) = edge.checked_sub(1) {
                    self.btree_entry(data, before, node, &mut taken, depth);
                }
                // `edge <= 11`: the edge's offset is small.
                let Some(child) = data
                    .checked_add(*edges_offset as usize)
                    .and_then(|at| at.checked_add(edge.saturating_mul(8)))
                    .and_then(|at| self.get(at, 8))
                else {
                    return;
                };
                if child != 0
                    && let Some(slot) = stack.get_mut(sp)
                {
                    *slot = (child, h.saturating_sub(1), 0);
                    sp = sp.saturating_add(1);
                }
                continue;
            }
            for i in 0..n {
                if taken >= *max_elems {
                    break;
                }
                self.btree_entry(data, i, node, &mut taken, depth);
            }
            sp = top;
            let _ = (
                key_each,
                val_each,
                keys_offset,
                vals_offset,
                key_size,
                val_size,
            );
        }
    }

    fn btree_entry(&mut self, data: usize, i: usize, node: &PlanNode, taken: &mut u32, depth: u32) {
        let PlanNode::BTree {
            keys_offset,
            vals_offset,
            key_size,
            val_size,
            key_each,
            val_each,
            ..
        } = node
        else {
            return;
        };
        *taken = taken.saturating_add(1);
        let deeper = depth.saturating_add(1);
        let entry = |offset: u32, size: u32| {
            data.checked_add(offset as usize)?
                .checked_add(i.checked_mul(size as usize)?)
        };
        if let Some(k) = key_each
            && let Some(at) = entry(*keys_offset, *key_size)
        {
            self.apply(*k, at, *key_size as usize, deeper);
        }
        if let Some(v) = val_each
            && let Some(at) = entry(*vals_offset, *val_size)
        {
            self.apply(*v, at, *val_size as usize, deeper);
        }
    }
}

/// The low `size` bytes of `v` (all of it from 8 bytes up).
fn truncate(v: u64, size: usize) -> u64 {
    match u32::try_from(size.saturating_mul(8))
        .ok()
        .and_then(|bits| 1u64.checked_shl(bits))
    {
        Some(limit) if size < 8 => v & limit.wrapping_sub(1),
        _ => v,
    }
}

/// Copies `src` to the start of `dst`, cut to `dst`'s length, and zeroes the rest of `dst`.
#[inline]
fn fill_padded(dst: &mut [u8], src: &[u8]) {
    // A word from a word (a register, a computed value): one move, not a copy and a fill.
    if let (Ok(d), Some(s)) = (<&mut [u8; 8]>::try_from(&mut *dst), src.first_chunk::<8>()) {
        *d = *s;
        return;
    }
    let n = dst.len().min(src.len());
    let (head, tail) = dst.split_at_mut(n);
    let (src, _) = src.split_at(n);
    head.copy_from_slice(src);
    tail.fill(0);
}

#[inline]
fn fill_le(dst: &mut [u8], v: u64) {
    fill_padded(dst, &v.to_le_bytes());
}

#[inline]
fn fill_from_register(dst: &mut [u8], regs: &Registers, reg: u16) -> bool {
    if let Some(x) = regs.bytes(reg) {
        fill_padded(dst, x);
        true
    } else if let Some(v) = regs.value(reg) {
        fill_le(dst, v);
        true
    } else {
        false
    }
}

/// A root (variable) as read back from a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapturedRoot {
    /// Its bytes, and its address when it lives in memory.
    Bytes {
        /// The variable's bytes.
        bytes: Vec<u8>,
        /// Where it lives, when it is a single piece in memory.
        addr: Option<u64>,
    },
    /// Reading it faulted.
    Fault,
    /// Optimized out at this address.
    Unavailable,
    /// The record had no room for it.
    NoSpace,
}

/// Why a record could not be read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// The record is shorter than its header says or does not start with the magic number.
    Malformed,
}

/// A record read back: registers, roots and the memory blocks captured at the hit.
#[derive(Debug, Clone, Default)]
pub struct CapturedMemory {
    /// Registers at the hit.
    pub regs: Registers,
    /// One entry per root of the plan.
    pub roots: Vec<CapturedRoot>,
    /// Whether a byte cap cut the capture short.
    pub truncated: bool,
    /// Captured blocks, sorted by address: (address, bytes or None if the read faulted).
    blocks: Vec<(u64, u32, Option<Vec<u8>>)>,
}

impl CapturedMemory {
    /// Parses a record written by [`execute`]. Never panics on any input.
    pub fn parse(record: &[u8]) -> Result<CapturedMemory, RecordError> {
        let mut r = Reader {
            buf: record,
            pos: 0,
        };
        if r.u32()? != MAGIC {
            return Err(RecordError::Malformed);
        }
        let flags = r.u32()?;
        let roots = r.u32()?;
        let blocks = r.u32()?;
        let mut regs = Registers::default();
        for g in regs.gpr.iter_mut() {
            *g = r.u64()?;
        }
        for x in regs.xmm.iter_mut() {
            x.copy_from_slice(r.take(16)?);
        }
        let mut mem = CapturedMemory {
            regs,
            truncated: flags & FLAG_TRUNCATED != 0,
            ..CapturedMemory::default()
        };
        for _ in 0..roots {
            let status = r.u32()?;
            let len = r.u32()?;
            let addr = r.u64()?;
            mem.roots.push(match status {
                ROOT_OK => CapturedRoot::Bytes {
                    bytes: r.take(len as usize)?.to_vec(),
                    addr: (addr != 0).then_some(addr),
                },
                ROOT_FAULT => CapturedRoot::Fault,
                ROOT_UNAVAILABLE => CapturedRoot::Unavailable,
                _ => CapturedRoot::NoSpace,
            });
        }
        for _ in 0..blocks {
            let addr = r.u64()?;
            let len = r.u32()?;
            let status = r.u32()?;
            let bytes = if status == BLOCK_OK {
                Some(r.take(len as usize)?.to_vec())
            } else {
                None
            };
            mem.blocks.push((addr, len, bytes));
        }
        mem.blocks.sort_by_key(|b| b.0);
        Ok(mem)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let end = self.pos.checked_add(n).ok_or(RecordError::Malformed)?;
        let s = self.buf.get(self.pos..end).ok_or(RecordError::Malformed)?;
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
}

impl Memory for CapturedMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let end = addr.checked_add(buf.len() as u64).ok_or(ReadError::Fault)?;
        // Blocks can overlap (the same bytes reached twice); any one that covers the read will do.
        let upto = self.blocks.partition_point(|b| b.0 <= addr);
        let mut faulted = false;
        for (start, len, bytes) in self.blocks.get(..upto).unwrap_or_default().iter().rev() {
            if start.saturating_add(*len as u64) < end {
                continue;
            }
            match bytes {
                Some(bytes) => {
                    // `start <= addr` (partition above) and the block covers the read.
                    let off = addr.saturating_sub(*start) as usize;
                    let src = off
                        .checked_add(buf.len())
                        .and_then(|stop| bytes.get(off..stop))
                        .ok_or(ReadError::NotCaptured)?;
                    buf.copy_from_slice(src);
                    return Ok(());
                }
                None => faulted = true,
            }
        }
        Err(if faulted {
            ReadError::Fault
        } else {
            ReadError::NotCaptured
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Memory of a fake process: a few mapped ranges.
    struct Fake(BTreeMap<u64, Vec<u8>>);
    impl Memory for Fake {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
            for (start, bytes) in &self.0 {
                let end = start + bytes.len() as u64;
                if addr >= *start && addr + buf.len() as u64 <= end {
                    let off = (addr - start) as usize;
                    buf.copy_from_slice(&bytes[off..off + buf.len()]);
                    return Ok(());
                }
            }
            Err(ReadError::Fault)
        }
    }

    fn string_at(ptr: u64, len: u64) -> Vec<u8> {
        // String = { cap @0, ptr @8, len @16 } in this layout.
        [len.to_le_bytes(), ptr.to_le_bytes(), len.to_le_bytes()].concat()
    }

    #[test]
    fn follows_a_string_on_the_stack_and_reads_it_back() {
        let mut mem = BTreeMap::new();
        mem.insert(0x7000, string_at(0x9000, 5));
        mem.insert(0x9000, b"hello".to_vec());
        let plan = CapturePlan {
            roots: vec![RootPlan {
                pieces: vec![Piece {
                    size: 24,
                    source: PieceSource::Memory {
                        reg: REG_RSP,
                        offset: 0x10,
                    },
                }],
                node: Some(0),
            }],
            nodes: vec![PlanNode::Slice {
                ptr_offset: 8,
                len_offset: 16,
                elem_size: 1,
                max_elems: 255,
                each: None,
            }],
            stack_bytes: 0,
            max_bytes: 4096,
        };
        let mut regs = Registers::default();
        regs.gpr[REG_RSP as usize] = 0x6ff0;
        let mut out = [0u8; 4096];
        let done = execute(&plan, &regs, &Fake(mem), &mut out);
        assert!(!done.truncated);
        let got = CapturedMemory::parse(&out[..done.len]).unwrap();
        assert_eq!(
            got.roots,
            vec![CapturedRoot::Bytes {
                bytes: string_at(0x9000, 5),
                addr: Some(0x7000)
            }]
        );
        let mut text = [0u8; 5];
        got.read(0x9000, &mut text).unwrap();
        assert_eq!(&text, b"hello");
        assert_eq!(got.read(0x9001, &mut [0u8; 5]), Err(ReadError::NotCaptured));
    }

    #[test]
    fn a_bad_pointer_becomes_a_fault_block_not_a_crash() {
        let mut mem = BTreeMap::new();
        mem.insert(0x7000, string_at(0xdead_0000, 5));
        let plan = CapturePlan {
            roots: vec![RootPlan {
                pieces: vec![Piece {
                    size: 24,
                    source: PieceSource::Absolute { addr: 0x7000 },
                }],
                node: Some(0),
            }],
            nodes: vec![PlanNode::Slice {
                ptr_offset: 8,
                len_offset: 16,
                elem_size: 1,
                max_elems: 255,
                each: None,
            }],
            stack_bytes: 0,
            max_bytes: 4096,
        };
        let mut out = [0u8; 4096];
        let done = execute(&plan, &Registers::default(), &Fake(mem), &mut out);
        let got = CapturedMemory::parse(&out[..done.len]).unwrap();
        assert_eq!(got.read(0xdead_0000, &mut [0u8; 5]), Err(ReadError::Fault));
    }

    fn words(ws: &[u64]) -> Vec<u8> {
        ws.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// A one-root plan over 32 bytes at 0x7000 with `node`.
    fn one(node: PlanNode) -> CapturePlan {
        CapturePlan {
            roots: vec![RootPlan {
                pieces: vec![Piece {
                    size: 32,
                    source: PieceSource::Absolute { addr: 0x7000 },
                }],
                node: Some(0),
            }],
            nodes: vec![node],
            stack_bytes: 0,
            max_bytes: 1 << 16,
        }
    }

    fn run(plan: &CapturePlan, mem: BTreeMap<u64, Vec<u8>>) -> CapturedMemory {
        let mut out = vec![0u8; 1 << 16];
        let done = execute(plan, &Registers::default(), &Fake(mem), &mut out);
        CapturedMemory::parse(&out[..done.len]).unwrap()
    }

    /// A red-black tree's nodes (color, parent, left, right, value) walked in order.
    #[test]
    fn a_tree_is_read_in_order_and_a_cycle_is_bounded() {
        let node = |left: u64, right: u64, v: u64| words(&[0, 0, left, right, v]);
        let mut mem = BTreeMap::new();
        mem.insert(0x7000, words(&[0, 0x8100, 0, 3]));
        mem.insert(0x8000, node(0, 0, 1));
        mem.insert(0x8100, node(0x8000, 0x8200, 2));
        mem.insert(0x8200, node(0, 0, 3));
        let tree = |max| PlanNode::Tree {
            root_offset: 8,
            left_offset: 16,
            right_offset: 24,
            node_size: 40,
            value_offset: 32,
            max_elems: max,
            each: None,
        };
        let got = run(&one(tree(16)), mem.clone());
        for (addr, v) in [(0x8000, 1u64), (0x8100, 2), (0x8200, 3)] {
            let mut b = [0u8; 8];
            got.read(addr + 32, &mut b).unwrap();
            assert_eq!(u64::from_le_bytes(b), v);
        }
        // The collection limit stops the walk after the first node in order.
        let got = run(&one(tree(1)), mem.clone());
        assert!(got.read(0x8000, &mut [0u8; 40]).is_ok());
        assert_eq!(
            got.read(0x8200, &mut [0u8; 40]),
            Err(ReadError::NotCaptured)
        );
        // A node that is its own left child: bounded by the walk's depth.
        mem.insert(0x8000, node(0x8000, 0, 1));
        let got = run(&one(tree(u32::MAX)), mem);
        assert!(got.read(0x8100, &mut [0u8; 40]).is_ok());
    }

    /// A `std::list`: nodes (next, prev, value) followed `count` times, not around the ring.
    #[test]
    fn a_chain_stops_at_its_count_and_at_a_bad_link() {
        let mut mem = BTreeMap::new();
        mem.insert(0x7000, words(&[0x8000, 0x8100, 2, 0]));
        mem.insert(0x8000, words(&[0x8100, 0x7000, 10]));
        mem.insert(0x8100, words(&[0x7000, 0x8000, 20]));
        let chain = PlanNode::Chain {
            head_offset: 0,
            count_offset: 16,
            next_offset: 0,
            node_size: 24,
            value_offset: 16,
            max_elems: 255,
            each: None,
        };
        let got = run(&one(chain.clone()), mem.clone());
        let mut b = [0u8; 8];
        got.read(0x8110, &mut b).unwrap();
        assert_eq!(u64::from_le_bytes(b), 20);
        // A huge count over a cycle: capped by `max_elems`; a bad link: a fault block.
        mem.insert(0x7000, words(&[0x8000, 0, u64::MAX, 0]));
        mem.insert(0x8100, words(&[0xdead_0000, 0, 20]));
        let got = run(&one(chain), mem);
        assert_eq!(got.read(0xdead_0000, &mut [0u8; 24]), Err(ReadError::Fault));
    }

    /// A `std::vector`'s `[begin, end)`, and a `std::deque`'s buffers through its map.
    #[test]
    fn spans_and_deques_read_their_elements() {
        let mut mem = BTreeMap::new();
        mem.insert(0x7000, words(&[0x9000, 0x9010, 0, 0]));
        mem.insert(0x9000, words(&[1, 2]));
        let span = PlanNode::Span {
            begin_offset: 0,
            end_offset: 8,
            elem_size: 8,
            max_elems: 255,
            each: None,
        };
        let got = run(&one(span), mem);
        assert!(got.read(0x9000, &mut [0u8; 16]).is_ok());
        // Start iterator (cur, last, node) in buffer 0xa000, finish (cur, first, node) in
        // 0xb000, map at 0xc000: [0xa000, 0xb000]; 2-element buffers of u64.
        let mut mem = BTreeMap::new();
        mem.insert(
            0x7000,
            words(&[0xa008, 0xa010, 0xc000, 0xb008, 0xb000, 0xc008]),
        );
        mem.insert(0xa000, words(&[0, 5]));
        mem.insert(0xb000, words(&[6, 0]));
        mem.insert(0xc000, words(&[0xa000, 0xb000]));
        let deque = PlanNode::Deque {
            start: [0, 8, 16],
            finish: [24, 32, 40],
            elem_size: 8,
            buf_elems: 2,
            max_elems: 255,
            each: None,
        };
        let mut plan = one(deque);
        plan.roots[0].pieces[0].size = 48;
        let got = run(&plan, mem);
        assert!(got.read(0xa008, &mut [0u8; 8]).is_ok());
        assert!(got.read(0xb000, &mut [0u8; 8]).is_ok());
        assert_eq!(got.read(0xb008, &mut [0u8; 8]), Err(ReadError::NotCaptured));
    }

    /// `DW_OP_fbreg +16; DW_OP_deref; DW_OP_plus_uconst 0x90` over an `rsp` frame base:
    /// an async fn's local in its future's state.
    fn env_local(offset: u64) -> Vec<LocOp> {
        vec![
            LocOp::Reg {
                reg: REG_RSP,
                offset: 16,
            },
            LocOp::Deref { size: 8 },
            LocOp::PlusConst(offset),
        ]
    }

    fn one_root(size: u32, source: PieceSource) -> CapturePlan {
        CapturePlan {
            roots: vec![RootPlan {
                pieces: vec![Piece { size, source }],
                node: None,
            }],
            nodes: vec![],
            stack_bytes: 0,
            max_bytes: 4096,
        }
    }

    #[test]
    fn a_deref_chain_reads_through_the_pointer_in_the_frame() {
        let mut regs = Registers::default();
        regs.gpr[REG_RSP as usize] = 0x7000;
        let mut mem = BTreeMap::new();
        mem.insert(0x7010, 0x9000u64.to_le_bytes().to_vec());
        let mut env = vec![0u8; 0xa0];
        env[0x90..0x98].copy_from_slice(&2899u64.to_le_bytes());
        mem.insert(0x9000, env);
        let plan = one_root(
            8,
            PieceSource::Expr {
                ops: env_local(0x90),
                value: false,
            },
        );
        let mut out = [0u8; 4096];
        let done = execute(&plan, &regs, &Fake(mem), &mut out);
        let got = CapturedMemory::parse(&out[..done.len]).unwrap();
        assert_eq!(
            got.roots,
            [CapturedRoot::Bytes {
                bytes: 2899u64.to_le_bytes().to_vec(),
                addr: Some(0x9090)
            }]
        );
    }

    #[test]
    fn a_deref_through_a_bad_pointer_is_a_fault_not_a_crash() {
        let mut regs = Registers::default();
        regs.gpr[REG_RSP as usize] = 0x7000;
        let mut mem = BTreeMap::new();
        // The frame slot holds a wild pointer; the next root is still captured.
        mem.insert(0x7010, 0xdead_beef_0000u64.to_le_bytes().to_vec());
        mem.insert(0x7018, 7u64.to_le_bytes().to_vec());
        let mut plan = one_root(
            8,
            PieceSource::Expr {
                ops: env_local(0x90),
                value: false,
            },
        );
        plan.roots.push(RootPlan {
            pieces: vec![Piece {
                size: 8,
                source: PieceSource::Memory {
                    reg: REG_RSP,
                    offset: 0x18,
                },
            }],
            node: None,
        });
        let mut out = [0u8; 4096];
        let done = execute(&plan, &regs, &Fake(mem.clone()), &mut out);
        let got = CapturedMemory::parse(&out[..done.len]).unwrap();
        assert_eq!(got.roots[0], CapturedRoot::Fault);
        assert_eq!(
            got.roots[1],
            CapturedRoot::Bytes {
                bytes: 7u64.to_le_bytes().to_vec(),
                addr: Some(0x7018)
            }
        );
        // The address is computed; reading through it (here or as the root) faults.
        let mut through = env_local(0x90);
        assert_eq!(
            eval_location(&through, &regs, &Fake(mem.clone())),
            Ok(0xdead_beef_0090)
        );
        through.push(LocOp::Deref { size: 8 });
        assert_eq!(
            eval_location(&through, &regs, &Fake(mem)),
            Err(LocError::Fault(0xdead_beef_0090))
        );
    }

    #[test]
    fn location_programs_compute_as_dwarf_says() {
        let mut regs = Registers::default();
        regs.gpr[6] = 0x1000; // rbp
        let mut mem = BTreeMap::new();
        mem.insert(0x0ff8, 0x2000u64.to_le_bytes().to_vec());
        mem.insert(0x2000, [0x30u8, 0x00, 0x00, 0x00].to_vec());
        let m = Fake(mem);
        let run = |ops: &[LocOp]| eval_location(ops, &regs, &m);
        // breg6 -8; deref; deref_size 4; lit3; mul; plus_uconst 1
        assert_eq!(
            run(&[
                LocOp::Reg { reg: 6, offset: -8 },
                LocOp::Deref { size: 8 },
                LocOp::Deref { size: 4 },
                LocOp::Const(3),
                LocOp::Bin(BinOp::Mul),
                LocOp::PlusConst(1),
            ]),
            Ok(0x91)
        );
        assert_eq!(
            run(&[
                LocOp::Const(5),
                LocOp::Const(7),
                LocOp::Swap,
                LocOp::Bin(BinOp::Minus)
            ]),
            Ok(2)
        );
        assert_eq!(
            run(&[LocOp::Const(5), LocOp::Pick(0), LocOp::Bin(BinOp::Mul)]),
            Ok(25)
        );
        assert_eq!(
            run(&[
                LocOp::Const(1),
                LocOp::Const(2),
                LocOp::Const(3),
                LocOp::Rot,
                LocOp::Drop,
                LocOp::Drop
            ]),
            Ok(3)
        );
        assert_eq!(run(&[LocOp::Const(u64::MAX), LocOp::Neg]), Ok(1));
        // Malformed programs fail, never panic.
        assert_eq!(run(&[LocOp::Bin(BinOp::Plus)]), Err(LocError::Invalid));
        assert_eq!(run(&[]), Err(LocError::Invalid));
        assert_eq!(
            run(&[LocOp::Const(1), LocOp::Const(0), LocOp::Bin(BinOp::Div)]),
            Err(LocError::Invalid)
        );
        assert_eq!(
            run(&[LocOp::Const(0x10), LocOp::Deref { size: 9 }]),
            Err(LocError::Invalid)
        );
        assert_eq!(
            run(&[LocOp::Reg { reg: 99, offset: 0 }]),
            Err(LocError::Invalid)
        );
        assert_eq!(run(&[LocOp::Const(1); 17]), Err(LocError::Invalid));
        assert_eq!(run(&[LocOp::Const(1); 65]), Err(LocError::Invalid));
    }

    #[test]
    fn an_entry_value_is_read_from_the_recorded_entry_and_unavailable_without_it() {
        // `DW_OP_entry_value(DW_OP_reg4); DW_OP_stack_value`: rsi at entry. At the hit rsi
        // holds something else; only the recorded entry gives the value.
        let mut regs = Registers::default();
        regs.gpr[4] = 7;
        let plan = one_root(
            4,
            PieceSource::Expr {
                ops: vec![LocOp::EntryReg { reg: 4, offset: 0 }],
                value: true,
            },
        );
        let mut entry = EntryRegisters::default();
        entry.gpr[4] = 42;
        let mut out = vec![0u8; 4096];
        let done = execute_with_entry(&plan, &regs, Some(&entry), &Fake(BTreeMap::new()), &mut out);
        let rec = CapturedMemory::parse(&out[..done.len]).unwrap();
        assert_eq!(
            rec.roots,
            [CapturedRoot::Bytes {
                bytes: 42u32.to_le_bytes().to_vec(),
                addr: None
            }]
        );
        let done = execute(&plan, &regs, &Fake(BTreeMap::new()), &mut out);
        let rec = CapturedMemory::parse(&out[..done.len]).unwrap();
        assert_eq!(rec.roots, [CapturedRoot::Unavailable]);
        // xmm1's low half at entry (DWARF 18), plus arithmetic after the entry value.
        entry.xmm[1] = 1.5f64.to_bits();
        let at_entry = |ops: &[LocOp]| {
            eval_location_with_entry(ops, &regs, Some(&entry), &Fake(BTreeMap::new()))
        };
        assert_eq!(
            at_entry(&[LocOp::EntryReg { reg: 18, offset: 0 }]),
            Ok(1.5f64.to_bits())
        );
        assert_eq!(
            at_entry(&[LocOp::EntryReg { reg: 4, offset: 0 }, LocOp::PlusConst(8)]),
            Ok(50)
        );
        // Registers an entry record does not keep (rip, xmm8) are never guessed.
        assert_eq!(
            at_entry(&[LocOp::EntryReg { reg: 25, offset: 0 }]),
            Err(LocError::NoEntryValue)
        );
    }

    use proptest::prelude::Strategy as _;

    proptest::proptest! {
        #[test]
        fn location_programs_never_panic(ops in proptest::collection::vec(
            proptest::prop_oneof![
                (0u16..40, proptest::num::i64::ANY).prop_map(|(reg, offset)| LocOp::Reg { reg, offset }),
                (0u16..40, proptest::num::i64::ANY).prop_map(|(reg, offset)| LocOp::EntryReg { reg, offset }),
                proptest::num::u64::ANY.prop_map(LocOp::Const),
                (0u8..12).prop_map(|size| LocOp::Deref { size }),
                proptest::num::u64::ANY.prop_map(LocOp::PlusConst),
                (0u8..20).prop_map(LocOp::Pick),
                proptest::strategy::Just(LocOp::Bin(BinOp::Div)),
                proptest::strategy::Just(LocOp::Bin(BinOp::Shl)),
                proptest::strategy::Just(LocOp::Bin(BinOp::Shra)),
                proptest::strategy::Just(LocOp::Bin(BinOp::Mod)),
                proptest::strategy::Just(LocOp::Abs),
                proptest::strategy::Just(LocOp::Rot),
                proptest::strategy::Just(LocOp::Swap),
                proptest::strategy::Just(LocOp::Drop),
            ],
            0..80,
        )) {
            /// Readable below 0x100 only; no arithmetic on the address.
            struct Low;
            impl Memory for Low {
                fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
                    if addr < 0x100 && buf.len() <= 8 {
                        buf.fill(0x5a);
                        Ok(())
                    } else {
                        Err(ReadError::Fault)
                    }
                }
            }
            let _ = eval_location(&ops, &Registers::default(), &Low);
            let _ = eval_location_with_entry(
                &ops,
                &Registers::default(),
                Some(&EntryRegisters::default()),
                &Low,
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let _ = CapturedMemory::parse(&bytes);
        }
    }
}
