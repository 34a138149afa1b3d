//! The variables in scope at an address, with their locations.

use crate::dies::{Die, Scope, Unit};
use crate::{DebugInfo, DieRef, Error, Reader};
use gimli::Reader as _;
use gimli::{AttributeValue, Operation, UnitOffset};
use nonstop_capture::capture::{BinOp, EntryRegisters, LocOp, MAX_LOC_OPS, Piece, PieceSource};
use std::collections::HashSet;

pub(crate) use crate::dies::UnitPaths;

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
    /// No location at this address (or one nonstop cannot express as capture pieces,
    /// such as `DW_OP_deref` chains or TLS).
    OptimizedOut,
    /// Its bytes, piece by piece, computed (at least in part) from register values at
    /// function entry (`DW_OP_entry_value(DW_OP_regN)`, [`LocOp::EntryReg`]): available in
    /// a frame whose entry a companion probe recorded ([`DebugInfo::entry_needs`]), else
    /// unavailable.
    FromEntry(Vec<Piece>),
    /// Only its value at function entry is described, in a form nonstop cannot record
    /// (an entry value of memory, or of a register the entry record does not keep).
    EntryValue,
}

impl Availability {
    /// Adds the load bias to every `Absolute` piece (file address → runtime address).
    pub fn relocate(&mut self, bias: u64) {
        if let Availability::Available(pieces) | Availability::FromEntry(pieces) = self {
            for p in pieces {
                relocate_source(&mut p.source, bias);
            }
        }
    }

    /// What [`DebugInfo::pieces`] made of a location expression.
    fn of_pieces(pieces: Result<Vec<Piece>, Unexpressible>) -> Availability {
        match pieces {
            Ok(p) if p.is_empty() => Availability::OptimizedOut,
            Ok(p) if uses_entry(&p) => Availability::FromEntry(p),
            Ok(p) => Availability::Available(p),
            Err(Unexpressible::EntryValue) => Availability::EntryValue,
            Err(Unexpressible::Unsupported) => Availability::OptimizedOut,
        }
    }
}

/// Whether any piece reads a register's value at function entry.
fn uses_entry(pieces: &[Piece]) -> bool {
    pieces.iter().any(|p| {
        matches!(&p.source, PieceSource::Expr { ops, .. }
            if ops.iter().any(|o| matches!(o, LocOp::EntryReg { .. })))
    })
}

/// What a probe needs recorded at its function's entry so that variables located by
/// their entry values ([`Availability::FromEntry`]) can be read there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryNeeds {
    /// The function's entry (a file address): the start of its symbol, never a `.cold`
    /// part. A companion probe there records the registers.
    pub entry: u64,
    /// The registers whose entry values the variables read (DWARF numbers), sorted.
    pub regs: Vec<u16>,
    /// The probe's frame's CFA rule at the probe address: `CFA = reg + offset`. At the
    /// entry the CFA is `rsp + 8`, so the two probes agree on which frame is which.
    pub cfa: (u16, i64),
}

/// Adds the load bias to the file addresses a piece source names (`Absolute`, and the
/// `Addr` steps of a location program).
pub fn relocate_source(source: &mut PieceSource, bias: u64) {
    match source {
        PieceSource::Absolute { addr } => *addr = addr.wrapping_add(bias),
        PieceSource::Expr { ops, .. } => {
            for op in ops {
                if let LocOp::Addr(a) = op {
                    *a = a.wrapping_add(bias);
                }
            }
        }
        _ => {}
    }
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

/// Folds constant steps of a location program: `reg + a` then `+ b` into `reg + (a + b)`,
/// constants added into addresses, and so on.
fn simplify(prog: &mut Vec<LocOp>) {
    let mut out: Vec<LocOp> = Vec::with_capacity(prog.len());
    for &op in prog.iter() {
        let folded = match (out.as_slice(), op) {
            ([.., LocOp::Reg { reg, offset }], LocOp::PlusConst(c)) => Some((
                1,
                LocOp::Reg {
                    reg: *reg,
                    offset: offset.wrapping_add(c as i64),
                },
            )),
            ([.., LocOp::EntryReg { reg, offset }], LocOp::PlusConst(c)) => Some((
                1,
                LocOp::EntryReg {
                    reg: *reg,
                    offset: offset.wrapping_add(c as i64),
                },
            )),
            ([.., LocOp::Const(a)], LocOp::PlusConst(c)) => {
                Some((1, LocOp::Const(a.wrapping_add(c))))
            }
            ([.., LocOp::Addr(a)], LocOp::PlusConst(c)) => {
                Some((1, LocOp::Addr(a.wrapping_add(c))))
            }
            ([.., LocOp::Reg { reg, offset }, LocOp::Const(c)], LocOp::Bin(BinOp::Plus)) => Some((
                2,
                LocOp::Reg {
                    reg: *reg,
                    offset: offset.wrapping_add(*c as i64),
                },
            )),
            ([.., LocOp::Reg { reg, offset }, LocOp::Const(c)], LocOp::Bin(BinOp::Minus)) => {
                Some((
                    2,
                    LocOp::Reg {
                        reg: *reg,
                        offset: offset.wrapping_sub(*c as i64),
                    },
                ))
            }
            ([.., LocOp::Const(c), LocOp::Reg { reg, offset }], LocOp::Bin(BinOp::Plus)) => Some((
                2,
                LocOp::Reg {
                    reg: *reg,
                    offset: offset.wrapping_add(*c as i64),
                },
            )),
            ([.., LocOp::Const(a), LocOp::Const(b)], LocOp::Bin(BinOp::Plus)) => {
                Some((2, LocOp::Const(a.wrapping_add(*b))))
            }
            ([.., LocOp::Const(a), LocOp::Const(b)], LocOp::Bin(BinOp::Minus)) => {
                Some((2, LocOp::Const(a.wrapping_sub(*b))))
            }
            ([.., LocOp::Addr(a), LocOp::Const(b)], LocOp::Bin(BinOp::Plus)) => {
                Some((2, LocOp::Addr(a.wrapping_add(*b))))
            }
            _ => None,
        };
        match folded {
            Some((drop, op)) => {
                out.truncate(out.len() - drop);
                out.push(op);
            }
            None => out.push(op),
        }
    }
    *prog = out;
}

/// The piece source a finished location (one piece's worth of operations) describes.
fn finish(
    prog: &mut Vec<LocOp>,
    reg: &mut Option<u16>,
    implicit: &mut Option<Vec<u8>>,
    is_value: &mut bool,
    size: u64,
) -> Result<PieceSource, Unexpressible> {
    let src = if let Some(r) = reg.take() {
        PieceSource::Register { reg: r }
    } else if let Some(mut b) = implicit.take() {
        b.resize(size as usize, 0);
        PieceSource::Implicit(b)
    } else {
        simplify(prog);
        match (prog.as_slice(), *is_value) {
            ([], _) => PieceSource::Unavailable,
            ([LocOp::Reg { reg, offset }], true) => PieceSource::Computed {
                reg: *reg,
                offset: *offset,
            },
            ([LocOp::Reg { reg, offset }], false) => PieceSource::Memory {
                reg: *reg,
                offset: *offset,
            },
            ([LocOp::Const(c)], true) => {
                let mut b = c.to_le_bytes().to_vec();
                b.resize(size as usize, 0);
                PieceSource::Implicit(b)
            }
            ([LocOp::Const(c) | LocOp::Addr(c)], false) => PieceSource::Absolute { addr: *c },
            (ops, value) => PieceSource::Expr {
                ops: ops.to_vec(),
                value,
            },
        }
    };
    prog.clear();
    *is_value = false;
    Ok(src)
}

/// Why an expression cannot become pieces.
enum Unexpressible {
    EntryValue,
    Unsupported,
}

impl DebugInfo {
    /// The parameters and locals in scope at `address` (a file address), innermost scope
    /// first; an inner variable hides an outer one of the same name. At an address
    /// inside an inlined call, these are the inlined function's variables. Each
    /// variable's location is evaluated at `address`.
    ///
    /// Errors with [`Error::NoCodeAt`] when no function contains the address, with
    /// [`Error::NoVariableInfo`] when the function has no variable info (built with
    /// `line-tables-only` or `limited`), and with [`Error::NoSplitFile`] when its unit was
    /// built with `-gsplit-dwarf` and its `.dwo` file is not where it was built.
    pub fn variables_at(&self, address: u64) -> Result<Vec<Variable>, Error> {
        let mut found = None;
        for ui in self.units_at(address)? {
            let chain = self.scope_chain(ui, address)?;
            if !chain.is_empty() {
                found = Some((ui, chain));
                break;
            }
        }
        let Some((ui, chain)) = found else {
            // A skeleton covers the address, and its DIEs are in a split file not found.
            if let Some(dwo) = self.units_at(address)?.iter().find_map(|&ui| {
                let unit = self.units().ok()?.get(ui)?;
                unit.missing.clone()
            }) {
                return Err(Error::NoSplitFile { address, dwo });
            }
            // A unit covers the address but describes no function: line tables only.
            if let Some(&ui) = self.units_at(address)?.first()
                && !self.has_variable_info(ui, &self.units()?[ui])?
            {
                return Err(Error::NoVariableInfo {
                    address,
                    function: self.symbol_at(address).unwrap_or_else(|| "??".into()),
                });
            }
            return Err(Error::NoCodeAt { address });
        };
        let unit = &self.units()?[ui];
        let function_start = chain.iter().rposition(Scope::is_function).unwrap_or(0);
        let subprogram = chain
            .iter()
            .find(|s| s.tag == gimli::DW_TAG_subprogram)
            .copied();
        let frame_base = match subprogram {
            Some(s) => self.frame_base(ui, unit, s.offset, address)?,
            None => None,
        };
        let here = self.line_at(ui, address)?;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut any_die = false;
        for scope in chain[function_start..].iter().rev() {
            let mut tree = unit.entries_tree(Some(scope.offset))?;
            let root = tree.root()?;
            let mut children = root.children();
            while let Some(child) = children.next()? {
                let e = child.entry();
                let kind = match e.tag() {
                    gimli::DW_TAG_formal_parameter => VariableKind::Parameter,
                    gimli::DW_TAG_variable => VariableKind::Local,
                    _ => continue,
                };
                any_die = true;
                let Some(v) =
                    self.variable(ui, unit, e, kind, address, frame_base.as_deref(), &here)?
                else {
                    continue;
                };
                if seen.insert(v.name.clone()) {
                    out.push(v);
                }
            }
        }
        if !any_die && !self.has_variable_info(ui, unit)? {
            return Err(Error::NoVariableInfo {
                address,
                function: self.function_name(ui, chain[function_start].offset),
            });
        }
        Ok(out)
    }

    /// Whether a unit has any variable or parameter DIEs at all (full debug info).
    fn has_variable_info(&self, _ui: usize, unit: &Unit) -> Result<bool, Error> {
        let mut cursor = unit.entries();
        while let Some(e) = cursor.next_dfs()? {
            if matches!(
                e.tag(),
                gimli::DW_TAG_formal_parameter | gimli::DW_TAG_variable
            ) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    #[allow(clippy::too_many_arguments)]
    fn variable(
        &self,
        ui: usize,
        unit: &Unit,
        e: &Die,
        kind: VariableKind,
        address: u64,
        frame_base: Option<&[LocOp]>,
        here: &Option<(String, u32)>,
    ) -> Result<Option<Variable>, Error> {
        // Name, type and declaration come from the abstract origin when there is one.
        let origin = match e.attr_value(gimli::DW_AT_abstract_origin) {
            Some(v) => match self.follow(ui, v)? {
                Some((u, o)) => Some((u, self.die(u, o)?)),
                None => None,
            },
            None => None,
        };
        let (nui, named) = match &origin {
            Some((u, d)) => (*u, d),
            None => (ui, e),
        };
        let Some(name) = self.attr_string(nui, named, gimli::DW_AT_name) else {
            return Ok(None);
        };
        let decl_line = match named.attr_value(gimli::DW_AT_decl_line) {
            Some(v) => v.udata_value().and_then(|l| u32::try_from(l).ok()),
            None => None,
        };
        // Declared below the current line, in the same file: not yet in scope.
        if let (Some(decl), Some((file, line))) = (decl_line, here)
            && decl > *line
            && let Some(AttributeValue::FileIndex(fi)) = named.attr_value(gimli::DW_AT_decl_file)
            && let Some(units) = self.units().ok()
            && let Some(p) = units.get(nui).and_then(|u| u.line_program.as_ref())
            && self.file_path(nui, p.header(), fi).as_deref() == Some(file.as_str())
        {
            return Ok(None);
        }
        let ty = named
            .attr_value(gimli::DW_AT_type)
            .map(|v| self.follow(nui, v))
            .transpose()?
            .flatten();
        let (type_die, type_name, size) = match ty {
            Some((tu, to)) => (
                self.die_ref(tu, to),
                self.type_name(tu, to, 0),
                self.die_type_size(tu, to, 0),
            ),
            None => (
                None,
                if self.is_rust(nui) { "()" } else { "void" }.into(),
                None,
            ),
        };
        let mut availability = self.availability(ui, unit, e, address, frame_base, size)?;
        // Pieces without a location over padding only (g++ describes `std::optional<int>`
        // as 4 + 1 bytes and 3 of nothing): no data is missing, as gdb shows.
        if let (Availability::Available(pieces) | Availability::FromEntry(pieces), Some(ty)) =
            (&mut availability, type_die)
        {
            let unused = self.unused_bytes(ty, pieces);
            let mut at = 0u64;
            for p in pieces.iter_mut() {
                let end = at.saturating_add(u64::from(p.size));
                if p.source == PieceSource::Unavailable
                    && (self.only_padding(ty, at, end)
                        || unused.is_some_and(|(a, b)| a <= at && end <= b))
                {
                    p.source = PieceSource::Implicit(vec![0; p.size as usize]);
                }
                at = end;
            }
        }
        Ok(Some(Variable {
            name,
            kind,
            type_die,
            type_name,
            decl_line,
            availability,
        }))
    }

    fn availability(
        &self,
        _ui: usize,
        unit: &Unit,
        e: &Die,
        address: u64,
        frame_base: Option<&[LocOp]>,
        size: Option<u64>,
    ) -> Result<Availability, Error> {
        if let Some(c) = e.attr_value(gimli::DW_AT_const_value) {
            let bytes = match c {
                AttributeValue::Block(r) => {
                    r.to_slice().map(|c| c.into_owned()).unwrap_or_default()
                }
                AttributeValue::Sdata(v) => v.to_le_bytes().to_vec(),
                other => match other.udata_value() {
                    Some(v) => v.to_le_bytes().to_vec(),
                    None => return Ok(Availability::OptimizedOut),
                },
            };
            let n = size.map_or(bytes.len(), |s| s as usize).min(bytes.len());
            let mut bytes = bytes;
            bytes.truncate(n);
            return Ok(Availability::Available(vec![Piece {
                size: n as u32,
                source: PieceSource::Implicit(bytes),
            }]));
        }
        let Some(loc) = e.attr_value(gimli::DW_AT_location) else {
            return Ok(Availability::OptimizedOut);
        };
        let expr = match loc {
            AttributeValue::Exprloc(expr) => Some(expr),
            other => match unit.dwarf.attr_locations(unit, other)? {
                Some(mut list) => {
                    let mut hit = None;
                    while let Some(entry) = list.next()? {
                        if entry.range.begin <= address && address < entry.range.end {
                            hit = Some(entry.data);
                            break;
                        }
                    }
                    hit
                }
                None => None,
            },
        };
        let Some(expr) = expr else {
            return Ok(Availability::OptimizedOut);
        };
        Ok(Availability::of_pieces(self.pieces(
            unit,
            expr,
            address,
            frame_base,
            size.unwrap_or(8),
        )))
    }

    /// Turns a location expression into capture pieces: simple ones (a register, `reg +
    /// offset`, a static) as such, anything else (`DW_OP_deref` chains, arithmetic after a
    /// deref, a frame base that needs evaluating) as a location program run at the hit.
    fn pieces(
        &self,
        unit: &Unit,
        expr: gimli::Expression<Reader>,
        address: u64,
        frame_base: Option<&[LocOp]>,
        whole_size: u64,
    ) -> Result<Vec<Piece>, Unexpressible> {
        let mut ops = expr.operations(unit.encoding());
        let mut prog: Vec<LocOp> = Vec::new();
        let mut reg: Option<u16> = None;
        let mut implicit: Option<Vec<u8>> = None;
        let mut is_value = false;
        let mut pieces = Vec::new();
        let mut any_op = false;
        let addr_size = unit.encoding().address_size;
        loop {
            let op = match ops.next() {
                Ok(Some(op)) => op,
                Ok(None) => break,
                Err(_) => return Err(Unexpressible::Unsupported),
            };
            any_op = true;
            match op {
                Operation::Piece {
                    size_in_bits,
                    bit_offset,
                } => {
                    if bit_offset.is_some_and(|b| b != 0) || size_in_bits % 8 != 0 {
                        return Err(Unexpressible::Unsupported);
                    }
                    let size = size_in_bits / 8;
                    let source = finish(&mut prog, &mut reg, &mut implicit, &mut is_value, size)?;
                    pieces.push(Piece {
                        size: u32::try_from(size).map_err(|_| Unexpressible::Unsupported)?,
                        source,
                    });
                }
                Operation::Register { register } => reg = Some(register.0),
                Operation::StackValue => is_value = true,
                Operation::ImplicitValue { data } => {
                    implicit = Some(data.to_slice().map(|c| c.into_owned()).unwrap_or_default())
                }
                Operation::EntryValue { expression } => {
                    // The value a register had at entry: recorded by a companion probe.
                    // Anything else (memory at entry) cannot be recorded.
                    let inner = gimli::Expression(expression);
                    let mut inner_ops = inner.operations(unit.encoding());
                    let reg = match (inner_ops.next(), inner_ops.next()) {
                        (Ok(Some(Operation::Register { register })), Ok(None))
                            if EntryRegisters::keeps(register.0) =>
                        {
                            register.0
                        }
                        _ => return Err(Unexpressible::EntryValue),
                    };
                    prog.push(LocOp::EntryReg { reg, offset: 0 });
                }
                Operation::Nop => {}
                op => self.compile_op(unit, op, address, frame_base, addr_size, &mut prog)?,
            }
            if prog.len() > MAX_LOC_OPS {
                return Err(Unexpressible::Unsupported);
            }
        }
        if !any_op {
            return Ok(Vec::new());
        }
        if pieces.is_empty() {
            let source = finish(
                &mut prog,
                &mut reg,
                &mut implicit,
                &mut is_value,
                whole_size,
            )?;
            pieces.push(Piece {
                size: u32::try_from(whole_size).map_err(|_| Unexpressible::Unsupported)?,
                source,
            });
        } else if reg.is_some() || implicit.is_some() || !prog.is_empty() {
            // Operations after the last piece describe nothing we can place.
            return Err(Unexpressible::Unsupported);
        }
        if pieces.iter().all(|p| p.source == PieceSource::Unavailable) {
            return Ok(Vec::new());
        }
        // Bytes no piece describes are not available (the pieces cover the whole value).
        let covered: u64 = pieces.iter().map(|p| u64::from(p.size)).sum();
        if let Some(rest) = whole_size.checked_sub(covered).filter(|&r| r > 0)
            && let Ok(size) = u32::try_from(rest)
        {
            pieces.push(Piece {
                size,
                source: PieceSource::Unavailable,
            });
        }
        Ok(pieces)
    }

    /// The availability a raw DWARF location expression (`bytes`, in the encoding of the
    /// binary's first unit) gives a `size`-byte variable, with `frame_base` as the
    /// function's frame base program. For tests and tools that check expressions one by
    /// one; [`DebugInfo::variables_at`] is the way to get a variable's location.
    #[doc(hidden)]
    pub fn availability_of_expression(
        &self,
        bytes: &[u8],
        frame_base: Option<&[LocOp]>,
        size: u64,
    ) -> Result<Availability, Error> {
        let units = self.units()?;
        let Some(unit) = units.first() else {
            return Ok(Availability::OptimizedOut);
        };
        // x86_64 only: little endian.
        let endian = gimli::RunTimeEndian::Little;
        let expr = gimli::Expression(Reader::new(std::sync::Arc::from(bytes), endian));
        Ok(Availability::of_pieces(
            self.pieces(unit, expr, 0, frame_base, size),
        ))
    }

    /// Appends the location-program steps of one stack operation to `prog`.
    fn compile_op(
        &self,
        unit: &Unit,
        op: Operation<Reader>,
        address: u64,
        frame_base: Option<&[LocOp]>,
        addr_size: u8,
        prog: &mut Vec<LocOp>,
    ) -> Result<(), Unexpressible> {
        let bin = |b| LocOp::Bin(b);
        let step = match op {
            Operation::RegisterOffset {
                register, offset, ..
            } => LocOp::Reg {
                reg: register.0,
                offset,
            },
            Operation::FrameOffset { offset } => {
                let base = frame_base.ok_or(Unexpressible::Unsupported)?;
                prog.extend_from_slice(base);
                LocOp::PlusConst(offset as u64)
            }
            Operation::CallFrameCFA => {
                let (reg, offset) = self.cfa_at(address).ok_or(Unexpressible::Unsupported)?;
                LocOp::Reg { reg, offset }
            }
            Operation::Address { address } => LocOp::Addr(address),
            Operation::AddressIndex { index } | Operation::ConstantIndex { index } => {
                match unit.dwarf.address(unit, index) {
                    Ok(a) => LocOp::Addr(a),
                    Err(_) => return Err(Unexpressible::Unsupported),
                }
            }
            Operation::UnsignedConstant { value } => LocOp::Const(value),
            Operation::SignedConstant { value } => LocOp::Const(value as u64),
            Operation::PlusConstant { value } => LocOp::PlusConst(value),
            Operation::Deref {
                size, space: false, ..
            } => {
                let size = if size == 0 { addr_size } else { size };
                if !(1..=8).contains(&size) {
                    return Err(Unexpressible::Unsupported);
                }
                LocOp::Deref { size }
            }
            Operation::Plus => bin(BinOp::Plus),
            Operation::Minus => bin(BinOp::Minus),
            Operation::Mul => bin(BinOp::Mul),
            Operation::Div => bin(BinOp::Div),
            Operation::Mod => bin(BinOp::Mod),
            Operation::And => bin(BinOp::And),
            Operation::Or => bin(BinOp::Or),
            Operation::Xor => bin(BinOp::Xor),
            Operation::Shl => bin(BinOp::Shl),
            Operation::Shr => bin(BinOp::Shr),
            Operation::Shra => bin(BinOp::Shra),
            Operation::Eq => bin(BinOp::Eq),
            Operation::Ne => bin(BinOp::Ne),
            Operation::Lt => bin(BinOp::Lt),
            Operation::Gt => bin(BinOp::Gt),
            Operation::Le => bin(BinOp::Le),
            Operation::Ge => bin(BinOp::Ge),
            Operation::Neg => LocOp::Neg,
            Operation::Not => LocOp::Not,
            Operation::Abs => LocOp::Abs,
            Operation::Pick { index } => LocOp::Pick(index),
            Operation::Drop => LocOp::Drop,
            Operation::Swap => LocOp::Swap,
            Operation::Rot => LocOp::Rot,
            _ => return Err(Unexpressible::Unsupported),
        };
        prog.push(step);
        Ok(())
    }

    /// The frame base of a subprogram at `address`, as a location program pushing it.
    fn frame_base(
        &self,
        _ui: usize,
        unit: &Unit,
        sub: UnitOffset,
        address: u64,
    ) -> Result<Option<Vec<LocOp>>, Error> {
        let die = unit.entry(sub)?;
        let expr = match die.attr_value(gimli::DW_AT_frame_base) {
            Some(AttributeValue::Exprloc(e)) => e,
            Some(other) => match unit.dwarf.attr_locations(unit, other)? {
                Some(mut list) => {
                    let mut hit = None;
                    while let Some(entry) = list.next()? {
                        if entry.range.begin <= address && address < entry.range.end {
                            hit = Some(entry.data);
                            break;
                        }
                    }
                    match hit {
                        Some(e) => e,
                        None => return Ok(None),
                    }
                }
                None => return Ok(None),
            },
            None => return Ok(None),
        };
        // A register names the frame base by its value (`DW_OP_reg6`: rbp); anything
        // else is an expression whose result is the frame base.
        let mut ops = expr.operations(unit.encoding());
        let addr_size = unit.encoding().address_size;
        let mut prog = Vec::new();
        while let Ok(Some(op)) = ops.next() {
            match op {
                Operation::Register { register } if prog.is_empty() => prog.push(LocOp::Reg {
                    reg: register.0,
                    offset: 0,
                }),
                Operation::Nop => {}
                op => {
                    if self
                        .compile_op(unit, op, address, None, addr_size, &mut prog)
                        .is_err()
                    {
                        return Ok(None);
                    }
                }
            }
            if prog.len() > MAX_LOC_OPS {
                return Ok(None);
            }
        }
        simplify(&mut prog);
        Ok((!prog.is_empty()).then_some(prog))
    }

    /// What a probe at `address` (a file address) needs recorded at its function's entry
    /// for `vars` (the variables in scope there, from [`DebugInfo::variables_at`]): `None`
    /// when no variable reads an entry value, or when the function's entry or the frame's
    /// CFA at `address` cannot be told (then those variables stay unavailable).
    pub fn entry_needs(&self, address: u64, vars: &[Variable]) -> Option<EntryNeeds> {
        let mut regs: Vec<u16> = vars
            .iter()
            .filter_map(|v| match &v.availability {
                Availability::FromEntry(p) => Some(p),
                _ => None,
            })
            .flatten()
            .filter_map(|p| match &p.source {
                PieceSource::Expr { ops, .. } => Some(ops),
                _ => None,
            })
            .flatten()
            .filter_map(|o| match o {
                LocOp::EntryReg { reg, .. } => Some(*reg),
                _ => None,
            })
            .collect();
        if regs.is_empty() {
            return None;
        }
        regs.sort_unstable();
        regs.dedup();
        let entry = self.function_entry(address)?;
        let cfa = self.cfa_at(address)?;
        Some(EntryNeeds { entry, regs, cfa })
    }

    /// The canonical frame address at `address` as `reg + offset`, from `.eh_frame` or
    /// `.debug_frame`.
    pub(crate) fn cfa_at(&self, address: u64) -> Option<(u16, i64)> {
        use gimli::UnwindSection;
        let mut ctx = Box::new(gimli::UnwindContext::new());
        let rule = |row: &gimli::UnwindTableRow<usize>| match row.cfa() {
            gimli::CfaRule::RegisterAndOffset { register, offset } => Some((register.0, *offset)),
            gimli::CfaRule::Expression(_) => None,
        };
        if let Some((eh, bases)) = &self.file.eh_frame
            && let Ok(row) = eh.unwind_info_for_address(
                bases,
                &mut ctx,
                address,
                gimli::EhFrame::cie_from_offset,
            )
        {
            return rule(row);
        }
        if let Some(df) = &self.file.debug_frame {
            let bases = gimli::BaseAddresses::default();
            if let Ok(row) = df.unwind_info_for_address(
                &bases,
                &mut ctx,
                address,
                gimli::DebugFrame::cie_from_offset,
            ) {
                return rule(row);
            }
        }
        None
    }

    /// The size in bytes of a type, following typedefs and qualifiers.
    pub(crate) fn die_type_size(&self, ui: usize, off: UnitOffset, depth: u32) -> Option<u64> {
        if depth > 16 {
            return None;
        }
        let die = self.die(ui, off).ok()?;
        if let Some(s) = die
            .attr_value(gimli::DW_AT_byte_size)
            .and_then(|v| v.udata_value())
        {
            return Some(s);
        }
        match die.tag() {
            gimli::DW_TAG_pointer_type
            | gimli::DW_TAG_reference_type
            | gimli::DW_TAG_rvalue_reference_type => Some(u64::from(
                self.units().ok()?.get(ui)?.encoding().address_size,
            )),
            gimli::DW_TAG_array_type => {
                let elem = self.die_type_of(ui, &die)?;
                let n = self.array_len(ui, off)?;
                Some(
                    self.die_type_size(elem.0, elem.1, depth + 1)?
                        .checked_mul(n)?,
                )
            }
            _ => {
                let (u, o) = self.die_type_of(ui, &die)?;
                self.die_type_size(u, o, depth + 1)
            }
        }
    }

    fn die_type_of(&self, ui: usize, die: &Die) -> Option<(usize, UnitOffset)> {
        self.follow(ui, die.attr_value(gimli::DW_AT_type)?)
            .ok()
            .flatten()
    }

    fn array_len(&self, ui: usize, off: UnitOffset) -> Option<u64> {
        let unit = self.units().ok()?.get(ui)?;
        let mut tree = unit.entries_tree(Some(off)).ok()?;
        let root = tree.root().ok()?;
        let mut children = root.children();
        while let Ok(Some(child)) = children.next() {
            let e = child.entry();
            if e.tag() == gimli::DW_TAG_subrange_type {
                if let Some(c) = e
                    .attr_value(gimli::DW_AT_count)
                    .and_then(|v| v.udata_value())
                {
                    return Some(c);
                }
                let lower = e
                    .attr_value(gimli::DW_AT_lower_bound)
                    .and_then(|v| v.udata_value())
                    .unwrap_or(0);
                return e
                    .attr_value(gimli::DW_AT_upper_bound)
                    .and_then(|v| v.udata_value())
                    .and_then(|u| (u + 1).checked_sub(lower));
            }
        }
        None
    }

    /// The name of a type as its language writes it: `alloc::string::String`, `&str`,
    /// `[i32; 4]`, `*const u8` for Rust; `int *`, `struct point` for C.
    pub(crate) fn type_name(&self, ui: usize, off: UnitOffset, depth: u32) -> String {
        if depth > 16 {
            return "…".into();
        }
        let Ok(die) = self.die(ui, off) else {
            return "?".into();
        };
        let rust = self.is_rust(ui);
        let inner = |this: &Self| match this.die_type_of(ui, &die) {
            Some((u, o)) => this.type_name(u, o, depth + 1),
            None => if rust { "()" } else { "void" }.to_string(),
        };
        let name = self.attr_string(ui, &die, gimli::DW_AT_name);
        match die.tag() {
            gimli::DW_TAG_base_type | gimli::DW_TAG_unspecified_type => {
                name.unwrap_or_else(|| "?".into())
            }
            gimli::DW_TAG_pointer_type
            | gimli::DW_TAG_reference_type
            | gimli::DW_TAG_rvalue_reference_type => match name {
                Some(n) => n,
                None if rust => format!("*const {}", inner(self)),
                None if die.tag() == gimli::DW_TAG_reference_type => format!("{} &", inner(self)),
                None if die.tag() == gimli::DW_TAG_rvalue_reference_type => {
                    format!("{} &&", inner(self))
                }
                None => format!("{} *", inner(self)),
            },
            gimli::DW_TAG_structure_type
            | gimli::DW_TAG_union_type
            | gimli::DW_TAG_enumeration_type
            | gimli::DW_TAG_class_type
            | gimli::DW_TAG_typedef => {
                let Some(n) = name else {
                    return "{anon}".into();
                };
                if !rust && self.is_cpp(ui) {
                    // C++: the namespaced name as gdb shows it (`std::vector<int>`).
                    let q = self.qualified_name(ui, &die).unwrap_or(n);
                    crate::types::cpp_short_name(&q)
                } else if rust {
                    if n.starts_with(['&', '*', '(', '[']) {
                        n
                    } else {
                        self.qualified_name(ui, &die).unwrap_or(n)
                    }
                } else {
                    match die.tag() {
                        gimli::DW_TAG_structure_type => format!("struct {n}"),
                        gimli::DW_TAG_union_type => format!("union {n}"),
                        gimli::DW_TAG_enumeration_type => format!("enum {n}"),
                        _ => n,
                    }
                }
            }
            gimli::DW_TAG_array_type => {
                let elem = inner(self);
                match (self.array_len(ui, off), rust) {
                    (Some(n), true) => format!("[{elem}; {n}]"),
                    (None, true) => format!("[{elem}]"),
                    (Some(n), false) => format!("{elem}[{n}]"),
                    (None, false) => format!("{elem}[]"),
                }
            }
            gimli::DW_TAG_const_type if !rust => format!("const {}", inner(self)),
            gimli::DW_TAG_volatile_type if !rust => format!("volatile {}", inner(self)),
            gimli::DW_TAG_subroutine_type => name.unwrap_or_else(|| "fn".into()),
            _ => name.unwrap_or_else(|| inner(self)),
        }
    }
}
