//! Loading an ELF file and its DWARF sections (from the file itself or its separate
//! debug file), and the load bias of the file in a running process.

use crate::{DebugInfo, Error, Reader};
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// Facts about the loaded file.
pub(crate) struct LoadedFile {
    /// The file given to [`DebugInfo::load`].
    pub(crate) path: PathBuf,
    /// The separate debug file the DWARF came from, if any.
    pub(crate) debug_path: Option<PathBuf>,
    /// The GNU build id, if the file has one.
    pub(crate) build_id: Option<Vec<u8>>,
    /// `PT_LOAD` segments.
    pub(crate) loads: Vec<nonstop_capture::maps::Segment>,
    /// Address ranges of executable sections; line rows outside them are discarded code.
    pub(crate) code_ranges: Vec<(u64, u64)>,
    /// `.eh_frame` and the addresses its pointers are relative to.
    pub(crate) eh_frame: Option<(gimli::EhFrame<Reader>, gimli::BaseAddresses)>,
    /// `.debug_frame`, when present.
    pub(crate) debug_frame: Option<gimli::DebugFrame<Reader>>,
    /// Function symbols (`.symtab`, else `.dynsym`): (address, size, raw name), by address.
    pub(crate) symbols: Vec<(u64, u64, String)>,
    /// The split DWARF package beside the file (`PROGRAM.dwp`), if there is one.
    pub(crate) dwp: Option<gimli::DwarfPackage<Reader>>,
    /// The supplementary file's sections (`.gnu_debugaltlink`), if it has one.
    pub(crate) sup: Option<Arc<gimli::Dwarf<Reader>>>,
}

/// Lazily built indexes; each is built on the first query that needs it and kept.
#[derive(Default)]
pub(crate) struct Indexes {
    /// Types read so far (see `types.rs`).
    pub(crate) types: crate::types::TypeCache,
    /// Every compilation unit, parsed (header, abbreviations, line program header).
    pub(crate) units: OnceLock<Result<crate::units::UnitTable, gimli::Error>>,
    /// Address → unit.
    pub(crate) unit_ranges: OnceLock<Vec<(u64, u64, usize)>>,
    /// `(file, line)` → addresses.
    pub(crate) lines: OnceLock<Result<crate::lines::LineIndex, gimli::Error>>,
    /// Function names → DIEs.
    pub(crate) functions: OnceLock<Result<crate::lines::FunctionIndex, gimli::Error>>,
    /// Per unit: the namespace path of named DIEs (built when a unit is first needed).
    pub(crate) paths: Mutex<std::collections::HashMap<usize, Arc<crate::scope::UnitPaths>>>,
    /// addr2line's context and the symbol table, for address → frames (symbolize.rs).
    pub(crate) symbolizer: std::sync::OnceLock<crate::symbolize::Symbolizer>,
    /// Vtable address → concrete type (see `vtables.rs`).
    pub(crate) vtables: OnceLock<crate::vtables::VtableIndex>,
    /// The load bias of the process whose values are decoded, once set.
    pub(crate) bias: std::sync::atomic::AtomicU64,
    pub(crate) bias_known: std::sync::atomic::AtomicBool,
    /// Address of a closure frame → the DWARF function chain there (coroutine names).
    pub(crate) async_names: Mutex<std::collections::HashMap<u64, Option<Vec<String>>>>,
}

/// Reads a whole file into one shared buffer without an extra copy.
fn read_shared(path: &Path) -> Result<Arc<[u8]>, Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let len = usize::try_from(len).map_err(|_| Error::NotElf {
        path: path.to_path_buf(),
        reason: "file too large".into(),
    })?;
    let mut data: Arc<[u8]> = std::iter::repeat_n(0u8, len).collect();
    let buf = Arc::get_mut(&mut data).ok_or_else(|| Error::NotElf {
        path: path.to_path_buf(),
        reason: "internal: shared buffer".into(),
    })?;
    file.read_exact(buf).map_err(io)?;
    Ok(data)
}

fn parse<'a>(path: &Path, data: &'a [u8]) -> Result<object::File<'a>, Error> {
    let obj = object::File::parse(data).map_err(|e| Error::NotElf {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if obj.format() != object::BinaryFormat::Elf {
        return Err(Error::NotElf {
            path: path.to_path_buf(),
            reason: format!("it is {:?}, not ELF", obj.format()),
        });
    }
    Ok(obj)
}

/// A section's bytes as a reader: a range of the shared file buffer, or a new buffer when
/// the section is compressed.
fn section_reader(
    data: &Arc<[u8]>,
    section: &object::Section<'_, '_>,
    endian: gimli::RunTimeEndian,
) -> Result<Reader, String> {
    let whole = Reader::new(data.clone(), endian);
    let range = section.compressed_file_range().map_err(|e| e.to_string())?;
    if range.format == object::CompressionFormat::None {
        if section.kind() == object::SectionKind::UninitializedData {
            return Ok(Reader::new(Arc::from(&[][..]), endian));
        }
        let start = usize::try_from(range.offset).map_err(|e| e.to_string())?;
        let size = usize::try_from(range.uncompressed_size).map_err(|e| e.to_string())?;
        let end = start.checked_add(size).filter(|&e| e <= data.len());
        match end {
            Some(end) => Ok(whole.range(start..end)),
            None => Err(format!(
                "section {} is past the end of the file",
                section.name().unwrap_or("?")
            )),
        }
    } else {
        let bytes = section.uncompressed_data().map_err(|e| e.to_string())?;
        Ok(Reader::new(Arc::from(&*bytes), endian))
    }
}

fn has_dwarf(obj: &object::File<'_>) -> bool {
    obj.section_by_name(".debug_info")
        .is_some_and(|s| s.size() > 0)
        || obj.section_by_name(".zdebug_info").is_some()
}

/// Where a separate debug file may be: build-id first, then `.gnu_debuglink`.
fn debug_file_candidates(path: &Path, obj: &object::File<'_>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(Some(id)) = obj.build_id()
        && id.len() >= 2
    {
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        out.push(PathBuf::from(format!(
            "/usr/lib/debug/.build-id/{}/{}.debug",
            &hex[..2],
            &hex[2..]
        )));
    }
    if let Ok(Some((name, _crc))) = obj.gnu_debuglink()
        && let Ok(name) = std::str::from_utf8(name)
    {
        let dir = path.parent().unwrap_or(Path::new("."));
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        out.push(dir.join(name));
        out.push(dir.join(".debug").join(name));
        let rel = dir.strip_prefix("/").unwrap_or(&dir);
        out.push(Path::new("/usr/lib/debug").join(rel).join(name));
    }
    out
}

/// The DWARF sections of an ELF file read into `data` (the `.dwo` sections when `dwo`).
/// Compressed sections are decompressed; missing ones are empty.
fn dwarf_sections(
    data: &Arc<[u8]>,
    obj: &object::File<'_>,
    endian: gimli::RunTimeEndian,
    dwo: bool,
) -> Result<gimli::Dwarf<Reader>, String> {
    gimli::Dwarf::load(|id: gimli::SectionId| {
        let name = if dwo { id.dwo_name() } else { Some(id.name()) };
        let section = name.and_then(|name| {
            obj.section_by_name(name).or_else(|| {
                let z = format!(".zdebug_{}", name.trim_start_matches(".debug_"));
                obj.section_by_name(&z)
            })
        });
        match section {
            Some(s) => section_reader(data, &s, endian),
            None => Ok(Reader::new(Arc::from(&[][..]), endian)),
        }
    })
}

/// The sections of a split DWARF file (`.dwo`), not yet tied to its program's.
pub(crate) fn dwo_sections(path: &Path) -> Result<gimli::Dwarf<Reader>, Error> {
    let data = read_shared(path)?;
    let obj = parse(path, &data)?;
    dwarf_sections(&data, &obj, endian_of(&obj), true).map_err(|reason| Error::NotElf {
        path: path.to_path_buf(),
        reason,
    })
}

fn endian_of(obj: &object::File<'_>) -> gimli::RunTimeEndian {
    if obj.is_little_endian() {
        gimli::RunTimeEndian::Little
    } else {
        gimli::RunTimeEndian::Big
    }
}

/// The supplementary file `.gnu_debugaltlink` names (`dwz -m`), relative to the folder of
/// the file that names it.
fn supplementary_file(path: &Path, obj: &object::File<'_>) -> Option<PathBuf> {
    let (name, _build_id) = obj.gnu_debugaltlink().ok()??;
    let name = Path::new(std::str::from_utf8(name).ok()?);
    Some(match path.parent() {
        Some(dir) if name.is_relative() => dir.join(name),
        _ => name.to_path_buf(),
    })
}

/// The split DWARF package of a program: `PROGRAM.dwp` beside it.
fn package_file(path: &Path) -> Option<PathBuf> {
    let mut name = path.file_name()?.to_os_string();
    name.push(".dwp");
    Some(path.with_file_name(name)).filter(|p| p.is_file())
}

impl DebugInfo {
    /// Loads `path` (an ELF executable or shared object) and its DWARF: from the file,
    /// or from its separate debug file (build id under `/usr/lib/debug/.build-id/`, or
    /// `.gnu_debuglink` next to it, in `.debug/`, or under `/usr/lib/debug/`).
    /// Compressed sections are decompressed here. Indexes are built on first use.
    pub fn load(path: impl AsRef<Path>) -> Result<DebugInfo, Error> {
        let path = path.as_ref().to_path_buf();
        let data = read_shared(&path)?;
        let obj = parse(&path, &data)?;
        let endian = endian_of(&obj);
        let not_elf = |reason: String| Error::NotElf {
            path: path.clone(),
            reason,
        };

        let loads = segments(&obj);
        let code_ranges = obj
            .sections()
            .filter(|s| s.kind() == object::SectionKind::Text && s.size() > 0)
            .map(|s| (s.address(), s.address().saturating_add(s.size())))
            .collect();
        let mut bases = gimli::BaseAddresses::default();
        if let Some(s) = obj.section_by_name(".eh_frame_hdr") {
            bases = bases.set_eh_frame_hdr(s.address());
        }
        if let Some(s) = obj.section_by_name(".text") {
            bases = bases.set_text(s.address());
        }
        if let Some(s) = obj.section_by_name(".got") {
            bases = bases.set_got(s.address());
        }
        let eh_frame = match obj.section_by_name(".eh_frame") {
            Some(s) => {
                bases = bases.set_eh_frame(s.address());
                let r = section_reader(&data, &s, endian).map_err(not_elf)?;
                Some((gimli::EhFrame::from(r), bases))
            }
            None => None,
        };
        let build_id = obj.build_id().ok().flatten().map(<[u8]>::to_vec);
        let mut symbols: Vec<(u64, u64, String)> = obj
            .symbols()
            .chain(obj.dynamic_symbols())
            .filter(|s| s.kind() == object::SymbolKind::Text && s.address() != 0)
            .filter_map(|s| Some((s.address(), s.size(), s.name().ok()?.to_string())))
            .collect();
        symbols.sort_unstable();
        symbols.dedup_by_key(|s| s.0);

        // The DWARF: here, or in a separate debug file.
        let (debug_data, debug_path) = if has_dwarf(&obj) {
            (data.clone(), None)
        } else {
            let found = debug_file_candidates(&path, &obj)
                .into_iter()
                .find(|p| p.is_file());
            match found {
                Some(p) => (read_shared(&p)?, Some(p)),
                None => return Err(Error::NoDebugInfo { path }),
            }
        };
        let debug_obj_storage;
        let dobj = match &debug_path {
            None => &obj,
            Some(p) => {
                debug_obj_storage = parse(p, &debug_data)?;
                if !has_dwarf(&debug_obj_storage) {
                    return Err(Error::NoDebugInfo { path });
                }
                &debug_obj_storage
            }
        };
        let mut sup_dwarf = None;
        let mut dwarf = dwarf_sections(&debug_data, dobj, endian, false).map_err(not_elf)?;
        if let Some(sup) = supplementary_file(debug_path.as_deref().unwrap_or(&path), dobj) {
            let sup_data = read_shared(&sup).map_err(|_| Error::NoSupplementaryFile {
                path: path.clone(),
                sup: sup.clone(),
            })?;
            let sup_obj = parse(&sup, &sup_data)?;
            let sections = || {
                dwarf_sections(&sup_data, &sup_obj, endian, false).map_err(|reason| Error::NotElf {
                    path: sup.clone(),
                    reason,
                })
            };
            // gimli keeps its own copy (for strings); the other is for reading the DIEs.
            dwarf.set_sup(sections()?);
            sup_dwarf = Some(Arc::new(sections()?));
        }
        let dwp = package_file(&path).and_then(|p| {
            let dwp_data = read_shared(&p).ok()?;
            let dwp_obj = parse(&p, &dwp_data).ok()?;
            let empty = Reader::new(Arc::from(&[][..]), endian);
            // An unreadable section reads as empty: its units are then missing, not wrong.
            let section = |id: gimli::SectionId| -> Result<Reader, gimli::Error> {
                let found = id.dwo_name().and_then(|n| dwp_obj.section_by_name(n));
                Ok(found
                    .and_then(|s| section_reader(&dwp_data, &s, endian).ok())
                    .unwrap_or_else(|| empty.clone()))
            };
            gimli::DwarfPackage::load(section, empty.clone()).ok()
        });
        let debug_frame = dobj
            .section_by_name(".debug_frame")
            .and_then(|s| section_reader(&debug_data, &s, endian).ok())
            .map(|r| {
                let mut f = gimli::DebugFrame::from(r);
                f.set_address_size(if dobj.is_64() { 8 } else { 4 });
                f
            });
        drop(obj);
        Ok(DebugInfo {
            dwarf: Arc::new(dwarf),
            file: LoadedFile {
                path,
                debug_path,
                build_id,
                loads,
                code_ranges,
                eh_frame,
                debug_frame,
                symbols,
                dwp,
                sup: sup_dwarf,
            },
            index: Indexes::default(),
        })
    }

    /// The file this was loaded from.
    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// The file's bytes at file addresses `range`, read from the file now: the code as it
    /// is before any probe (what the fast path's check decodes, `nonstop where`). `None`
    /// when no executable `PT_LOAD` segment holds all of `range` in the file, or the read
    /// fails.
    pub fn code_bytes(&self, range: std::ops::Range<u64>) -> Option<Vec<u8>> {
        use std::io::{Read, Seek, SeekFrom};
        let seg = self.file.loads.iter().find(|s| {
            s.exec && s.vaddr <= range.start && range.end <= s.vaddr.saturating_add(s.file_size)
        })?;
        let len = usize::try_from(range.end.checked_sub(range.start)?).ok()?;
        let mut file = std::fs::File::open(&self.file.path).ok()?;
        file.seek(SeekFrom::Start(seg.file_offset + (range.start - seg.vaddr)))
            .ok()?;
        let mut buf = vec![0u8; len];
        file.read_exact(&mut buf).ok()?;
        Some(buf)
    }

    /// The separate debug file the DWARF was read from, if it was not in the file itself.
    pub fn debug_file(&self) -> Option<&Path> {
        self.file.debug_path.as_deref()
    }

    /// The GNU build id of the file, if it has one.
    pub fn build_id(&self) -> Option<&[u8]> {
        self.file.build_id.as_deref()
    }

    /// The load bias of this file in a running process (`None`: this process): what to
    /// add to a file address ([`crate::Site::address`], `PieceSource::Absolute`) to get
    /// the runtime address. 0 for a non-PIE executable. Reads `/proc/PID/maps` and
    /// matches the mapping by device and inode (or path).
    pub fn load_bias_in(&self, pid: Option<u32>) -> Result<u64, Error> {
        let maps_path = crate::maps::path(pid);
        let maps = std::fs::read_to_string(&maps_path).map_err(|source| Error::Io {
            path: maps_path.clone(),
            source,
        })?;
        load_bias_from_maps(&maps, &self.file.path, &self.file.loads).ok_or_else(|| {
            Error::NotMapped {
                path: self.file.path.clone(),
                maps: maps_path,
            }
        })
    }
}

/// The `PT_LOAD` segments of `obj`, as the load-bias computation takes them.
pub(crate) fn segments(obj: &object::File<'_>) -> Vec<crate::maps::Segment> {
    obj.segments()
        .map(|s| crate::maps::Segment {
            vaddr: s.address(),
            file_offset: s.file_range().0,
            file_size: s.file_range().1,
            exec: matches!(s.flags(), object::SegmentFlags::Elf { p_flags, .. } if p_flags.contains(object::elf::PF_X)),
        })
        .collect()
}

/// The bias from the text of a `/proc/PID/maps` file: the mappings of `path` (matched by
/// device and inode, or by canonical path) and its `PT_LOAD` segments, see
/// [`crate::maps::load_bias`].
pub(crate) fn load_bias_from_maps(
    maps: &str,
    path: &Path,
    loads: &[crate::maps::Segment],
) -> Option<u64> {
    let id = crate::maps::FileId::of(path);
    let canon = std::fs::canonicalize(path).ok();
    let mine: Vec<crate::maps::Mapping> = crate::maps::parse(maps)
        .into_iter()
        .filter(|m| m.maps_file(id, canon.as_deref()))
        .collect();
    crate::maps::load_bias(&mine, loads)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE0: crate::maps::Segment = crate::maps::Segment {
        vaddr: 0,
        file_offset: 0,
        file_size: 0x4000,
        exec: false,
    };

    #[test]
    fn bias_of_a_pie_mapping() {
        let exe = std::env::current_exe().unwrap();
        let maps = "555555554000-555555558000 r--p 00000000 00:00 0 /nowhere\n";
        assert_eq!(load_bias_from_maps(maps, &exe, &[PAGE0]), None);
        let maps = format!(
            "555555554000-555555558000 r--p 00000000 00:00 0 {}\n",
            std::fs::canonicalize(&exe).unwrap().display()
        );
        assert_eq!(
            load_bias_from_maps(&maps, &exe, &[PAGE0]),
            Some(0x5555_5555_4000)
        );
    }
}
