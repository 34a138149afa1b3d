//! The units of a binary, wherever their DIEs live: in the file itself, in split DWARF
//! (`.dwo` files beside the objects, or a `.dwp` package beside the program), or in a
//! supplementary file (`.gnu_debugaltlink`, written by `dwz`).
//!
//! Every unit is paired with the sections its DIEs are read with, and given a place in
//! one space of DIE offsets, so a [`DieRef`] names a DIE in any of these files: the
//! file's own units keep their `.debug_info` offsets, the supplementary file's and each
//! split file's follow past the end of the file's `.debug_info`.
//!
//! A split unit replaces its skeleton (at the same index, so the order of units is the
//! order of the file's compilation units) and takes the skeleton's line program and
//! address ranges (whose strings are read with the program's sections). A skeleton whose split file is missing
//! stays: its lines still resolve, and [`UnitEntry::missing`] says which file to put back.

use crate::{DebugInfo, DieRef, Reader};
use gimli::{AttributeValue, Section, UnitOffset};
use std::path::PathBuf;
use std::sync::Arc;

type Dwarf = gimli::Dwarf<Reader>;

/// One unit and the sections its DIEs are read with.
pub(crate) struct UnitEntry {
    /// The sections of the file holding the DIEs (a split unit's: the `.dwo`'s, with the
    /// program's `.debug_addr`).
    pub(crate) dwarf: Arc<Dwarf>,
    /// The sections the line program's strings are read with: the program's for a split
    /// unit (its line program is the skeleton's).
    pub(crate) line_dwarf: Arc<Dwarf>,
    /// The unit, with a skeleton's relocated attributes and line program when it is split.
    pub(crate) unit: gimli::Unit<Reader>,
    /// The skeleton unit a split unit came from: its ranges are the unit's.
    skeleton: Option<gimli::Unit<Reader>>,
    /// Where offset 0 of `dwarf`'s `.debug_info` is in the [`DieRef`] space.
    base: usize,
    /// Where offset 0 of the supplementary file's `.debug_info` is in that space.
    sup_base: usize,
    /// The split file this skeleton's DIEs are in, when it could not be read (`Some` of
    /// an empty path when the skeleton does not name it).
    pub(crate) missing: Option<PathBuf>,
}

/// The unit's header, abbreviations and attributes, as gimli reads them.
impl std::ops::Deref for UnitEntry {
    type Target = gimli::Unit<Reader>;

    fn deref(&self) -> &Self::Target {
        &self.unit
    }
}

impl UnitEntry {
    /// The [`DieRef`] of a DIE of this unit.
    pub(crate) fn die_ref(&self, off: UnitOffset) -> Option<DieRef> {
        let o = off.to_debug_info_offset(&self.unit.header)?;
        Some(DieRef(self.base.checked_add(o.0)?))
    }

    /// The [`DieRef`] a reference attribute of this unit names.
    pub(crate) fn reference(&self, value: &AttributeValue<Reader>) -> Option<DieRef> {
        match *value {
            AttributeValue::UnitRef(o) => self.die_ref(o),
            AttributeValue::DebugInfoRef(o) => Some(DieRef(self.base.checked_add(o.0)?)),
            AttributeValue::DebugInfoRefSup(o) => Some(DieRef(self.sup_base.checked_add(o.0)?)),
            _ => None,
        }
    }

    /// Where the unit starts in the [`DieRef`] space, and where it ends.
    pub(crate) fn span(&self) -> Option<(usize, usize)> {
        let start = self
            .base
            .checked_add(self.unit.header.debug_info_offset()?.0)?;
        Some((
            start,
            start.saturating_add(self.unit.header.length_including_self()),
        ))
    }

    /// The address ranges of the unit (a split unit's are its skeleton's).
    pub(crate) fn ranges(&self, main: &Dwarf) -> gimli::Result<gimli::RangeIter<Reader>> {
        match &self.skeleton {
            Some(skeleton) => main.unit_ranges(skeleton),
            None => self.dwarf.unit_ranges(&self.unit),
        }
    }
}

/// Every unit, and their starts in the [`DieRef`] space for lookups.
pub(crate) struct UnitTable {
    pub(crate) units: Vec<UnitEntry>,
    /// `(start, index)` sorted by start.
    starts: Vec<(usize, usize)>,
}

impl UnitTable {
    /// The unit holding `die`, and the offset within it.
    pub(crate) fn find(&self, die: DieRef) -> Option<(usize, UnitOffset)> {
        let pos = self.starts.partition_point(|s| s.0 <= die.0);
        let &(start, ui) = self.starts.get(pos.checked_sub(1)?)?;
        let entry = self.units.get(ui)?;
        let (_, end) = entry.span()?;
        if die.0 >= end {
            return None;
        }
        let within = die.0.checked_sub(start)?;
        let header_offset = entry.unit.header.debug_info_offset()?.0;
        gimli::DebugInfoOffset(header_offset + within)
            .to_unit_offset(&entry.unit.header)
            .map(|o| (ui, o))
    }
}

/// The length of a file's `.debug_info`: the size of its part of the [`DieRef`] space.
fn info_len(dwarf: &Dwarf) -> usize {
    gimli::Reader::len(dwarf.debug_info.reader())
}

/// Reads the units of the file (and its supplementary file's), each skeleton's split
/// unit read from the `.dwp` package or its `.dwo` file. Units that fail to parse are
/// skipped; an error only when the first header cannot be read.
pub(crate) fn read(info: &DebugInfo) -> gimli::Result<UnitTable> {
    let dwarf = &info.dwarf;
    let mut next_base = info_len(dwarf);
    let sup = info.file.sup.clone();
    let sup_base = next_base;
    if let Some(s) = &sup {
        next_base = next_base.saturating_add(info_len(s));
    }
    let mut units = Vec::new();
    let mut headers = dwarf.units();
    loop {
        let header = match headers.next() {
            Ok(Some(h)) => h,
            Ok(None) => break,
            Err(e) if units.is_empty() => return Err(e),
            Err(_) => break,
        };
        let Ok(unit) = dwarf.unit(header) else {
            continue;
        };
        let mut entry = UnitEntry {
            dwarf: dwarf.clone(),
            line_dwarf: dwarf.clone(),
            unit,
            skeleton: None,
            base: 0,
            sup_base,
            missing: None,
        };
        if entry.unit.dwo_id.is_some() && is_skeleton(&entry.unit) {
            match split_unit(info, &entry.unit) {
                SplitUnit::Found(dwo) => match join(*dwo, &entry.unit) {
                    Some((dwo, unit)) => {
                        let base = next_base;
                        next_base = next_base.saturating_add(info_len(&dwo));
                        let skeleton = std::mem::replace(&mut entry.unit, unit);
                        entry.skeleton = Some(skeleton);
                        entry.dwarf = dwo;
                        entry.base = base;
                    }
                    None => {
                        entry.missing = Some(split_path(dwarf, &entry.unit).unwrap_or_default())
                    }
                },
                SplitUnit::Missing(path) => entry.missing = Some(path.unwrap_or_default()),
            }
        }
        units.push(entry);
    }
    if let Some(sup) = &sup {
        let mut headers = sup.units();
        while let Ok(Some(header)) = headers.next() {
            if let Ok(unit) = sup.unit(header) {
                units.push(UnitEntry {
                    dwarf: sup.clone(),
                    line_dwarf: sup.clone(),
                    unit,
                    skeleton: None,
                    base: sup_base,
                    sup_base,
                    missing: None,
                });
            }
        }
    }
    let mut starts: Vec<(usize, usize)> = units
        .iter()
        .enumerate()
        .filter_map(|(i, u)| Some((u.span()?.0, i)))
        .collect();
    starts.sort_unstable();
    Ok(UnitTable { units, starts })
}

/// What looking for a skeleton's split unit found.
enum SplitUnit {
    /// The split file's sections, made a `.dwo` of the program's.
    Found(Box<Dwarf>),
    /// The split file, not found or not readable.
    Missing(Option<PathBuf>),
}

/// The sections holding `skeleton`'s split unit: its part of the `.dwp` package, else
/// its `.dwo` file (`DW_AT_comp_dir` joined with `DW_AT_dwo_name`).
fn split_unit(info: &DebugInfo, skeleton: &gimli::Unit<Reader>) -> SplitUnit {
    let dwarf = &info.dwarf;
    if let (Some(dwp), Some(id)) = (&info.file.dwp, skeleton.dwo_id)
        && let Some(cu) = package_unit(dwp, id, dwarf)
    {
        return SplitUnit::Found(Box::new(cu));
    }
    let Some(path) = split_path(dwarf, skeleton) else {
        return SplitUnit::Missing(None);
    };
    match crate::load::dwo_sections(&path) {
        Ok(mut dwo) => {
            dwo.make_dwo(dwarf);
            SplitUnit::Found(Box::new(dwo))
        }
        Err(_) => SplitUnit::Missing(Some(path)),
    }
}

/// The sections of unit `id` in a `.dwp` package: by its index, else by the id in each
/// unit's header (binutils 2.40's `dwp` indexes DWARF 5 units under id 0).
fn package_unit(
    dwp: &gimli::DwarfPackage<Reader>,
    id: gimli::DwoId,
    parent: &Dwarf,
) -> Option<Dwarf> {
    if let Ok(Some(cu)) = dwp.find_cu(id, parent) {
        return Some(cu);
    }
    (1..=dwp.cu_index.unit_count()).find_map(|row| {
        let cu = dwp.cu_sections(row, parent).ok()?;
        let header = cu.units().next().ok()??;
        let unit = cu.unit(header).ok()?;
        (unit.dwo_id == Some(id)).then_some(cu)
    })
}

/// Where a skeleton's `.dwo` file is: `DW_AT_dwo_name`, under `DW_AT_comp_dir` when
/// relative.
fn split_path(dwarf: &Dwarf, skeleton: &gimli::Unit<Reader>) -> Option<PathBuf> {
    let name = dwarf
        .attr_string(skeleton, skeleton.dwo_name().ok()??)
        .ok()?;
    let name = PathBuf::from(gimli::Reader::to_string_lossy(&name).ok()?.into_owned());
    let dir = skeleton
        .comp_dir
        .as_ref()
        .and_then(|d| gimli::Reader::to_string_lossy(d).ok())
        .map(|d| PathBuf::from(d.into_owned()));
    Some(match dir {
        Some(dir) => dir.join(name),
        None => name,
    })
}

/// Whether the unit is a skeleton (DWARF 5) or a GNU split-DWARF skeleton (DWARF 4).
fn is_skeleton(unit: &gimli::Unit<Reader>) -> bool {
    matches!(unit.header.type_(), gimli::UnitType::Skeleton(_))
        || unit.dwo_name().ok().flatten().is_some()
}

/// The split unit of `skeleton` in `dwo`, made ready to read with the program's
/// sections; `None` when `dwo` does not hold it.
fn join(dwo: Dwarf, skeleton: &gimli::Unit<Reader>) -> Option<(Arc<Dwarf>, gimli::Unit<Reader>)> {
    let dwo = Arc::new(dwo);
    let mut headers = dwo.units();
    while let Ok(Some(header)) = headers.next() {
        let Ok(mut unit) = dwo.unit(header) else {
            continue;
        };
        if unit.dwo_id != skeleton.dwo_id {
            continue;
        }
        unit.copy_relocated_attributes(skeleton);
        unit.line_program = skeleton.line_program.clone();
        if unit.comp_dir.is_none() {
            unit.comp_dir = skeleton.comp_dir.clone();
        }
        if unit.name.is_none() {
            unit.name = skeleton.name.clone();
        }
        return Some((dwo, unit));
    }
    None
}
