//! `/proc/PID/maps`: the one parser of nonstop, and the load bias of a mapped ELF file.
//!
//! Everything here works on text ([`parse`]) or on parsed [`Mapping`]s, except [`read`],
//! which reads the file. Used by the probe engine (gaps for out-of-line slots), the
//! debug-info reader (where a file is loaded, the modules for stack traces) and the agent
//! (which copy of itself is the preloaded one).

use std::path::{Path, PathBuf};

/// Page size the bias arithmetic rounds to (x86_64 Linux).
const PAGE: u64 = 4096;

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
    /// Offset in the mapped file of the byte at `start`.
    pub offset: u64,
    /// Device of the mapped file: (major, minor).
    pub dev: (u64, u64),
    /// Inode of the mapped file, 0 for anonymous mappings.
    pub inode: u64,
    /// The path or pseudo-name (`[heap]`, `[stack]`), possibly empty; paths may contain
    /// spaces and end in ` (deleted)`.
    pub name: String,
}

impl Mapping {
    /// Whether `address` is inside this mapping.
    pub fn contains(&self, address: u64) -> bool {
        self.start <= address && address < self.end
    }

    /// The file this maps, if it maps one that is still there: an absolute path, not
    /// ` (deleted)`.
    pub fn file(&self) -> Option<&Path> {
        (self.name.starts_with('/') && !self.name.ends_with(" (deleted)"))
            .then(|| Path::new(&self.name))
    }

    /// Whether this maps the file identified by `id` (device and inode), or, when the
    /// identity does not tell, the file at the canonical path `canonical`.
    pub fn maps_file(&self, id: Option<FileId>, canonical: Option<&Path>) -> bool {
        let by_path = || canonical.is_some_and(|c| Path::new(&self.name) == c);
        match id {
            Some(id) if self.inode != 0 && self.inode == id.inode => {
                self.dev == id.dev || by_path()
            }
            _ => by_path(),
        }
    }
}

/// Parses one line (`start-end perms offset dev inode [name]`); `None` for a line that is
/// not in that form.
pub fn parse_line(line: &str) -> Option<Mapping> {
    let (range, rest) = next_field(line)?;
    let (perms, rest) = next_field(rest)?;
    let (offset, rest) = next_field(rest)?;
    let (dev, rest) = next_field(rest)?;
    let (inode, rest) = next_field(rest)?;
    let (start, end) = range.split_once('-')?;
    let (major, minor) = dev.split_once(':')?;
    let perms = perms.as_bytes();
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        read: perms.first() == Some(&b'r'),
        write: perms.get(1) == Some(&b'w'),
        exec: perms.get(2) == Some(&b'x'),
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev: (
            u64::from_str_radix(major, 16).ok()?,
            u64::from_str_radix(minor, 16).ok()?,
        ),
        inode: inode.parse().ok()?,
        name: rest.trim_start().to_string(),
    })
}

/// The first space-separated field of `text` and what follows it.
fn next_field(text: &str) -> Option<(&str, &str)> {
    let text = text.trim_start();
    if text.is_empty() {
        return None;
    }
    Some(text.split_once(' ').unwrap_or((text, "")))
}

/// Parses the text of a `/proc/PID/maps` file; lines not in its form are left out.
pub fn parse(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

/// The path of the maps file of `pid` (`None`: this process).
pub fn path(pid: Option<u32>) -> PathBuf {
    match pid {
        Some(pid) => PathBuf::from(format!("/proc/{pid}/maps")),
        None => PathBuf::from("/proc/self/maps"),
    }
}

/// Reads and parses the maps of `pid` (`None`: this process).
pub fn read(pid: Option<u32>) -> std::io::Result<Vec<Mapping>> {
    std::fs::read_to_string(path(pid)).map(|text| parse(&text))
}

/// The mapping that contains `address`.
pub fn containing(maps: &[Mapping], address: u64) -> Option<&Mapping> {
    maps.iter().find(|m| m.contains(address))
}

/// The mappings of each file ([`Mapping::file`]) that pass `keep`, grouped by path, files
/// in the order first seen and each file's mappings in the order given.
pub fn by_file(maps: &[Mapping], keep: impl Fn(&Mapping) -> bool) -> Vec<(PathBuf, Vec<Mapping>)> {
    let mut out: Vec<(PathBuf, Vec<Mapping>)> = Vec::new();
    for m in maps.iter().filter(|m| keep(m)) {
        let Some(file) = m.file() else { continue };
        match out.iter_mut().find(|(p, _)| p == file) {
            Some((_, list)) => list.push(m.clone()),
            None => out.push((file.to_path_buf(), vec![m.clone()])),
        }
    }
    out
}

/// A file's identity as the maps show it: device (major, minor) and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    /// Device: (major, minor).
    pub dev: (u64, u64),
    /// Inode.
    pub inode: u64,
}

impl FileId {
    /// The identity of the file at `path`, if it can be read.
    pub fn of(path: &Path) -> Option<FileId> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        Some(FileId::from_raw(meta.dev(), meta.ino()))
    }

    /// From a raw `st_dev` (glibc's encoding of major and minor) and an inode.
    pub fn from_raw(dev: u64, inode: u64) -> FileId {
        let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
        let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
        FileId {
            dev: (major, minor),
            inode,
        }
    }
}

/// A `PT_LOAD` segment of an ELF file, as the bias computation needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// `p_vaddr`.
    pub vaddr: u64,
    /// `p_offset`.
    pub file_offset: u64,
    /// `p_filesz`.
    pub file_size: u64,
    /// `PF_X`.
    pub exec: bool,
}

/// The load bias of a file (what to add to its file addresses to get runtime ones) from
/// where its mappings landed: `mappings` are the file's lines of the maps, in address
/// order (any permissions), `segments` its `PT_LOAD` segments. 0 for a non-PIE executable.
///
/// The loader maps the whole image at the first segment, so when the file's lowest
/// mapping is that segment's (same page offset, same executable flag), the bias is its
/// start minus that segment's page. Otherwise (the first mapping is not in the list, say only the executable ones
/// were kept) the bias comes from the first executable mapping and the segment that holds
/// its offset; where several segments share that page (lld packs its `r--`, `r-x` and
/// `rw-` segments into the same file pages), the executable one that starts latest.
pub fn load_bias(mappings: &[Mapping], segments: &[Segment]) -> Option<u64> {
    let first_segment = segments.iter().min_by_key(|s| s.vaddr)?;
    let first = mappings.iter().min_by_key(|m| m.start)?;
    if first.offset == first_segment.file_offset & !(PAGE - 1) && first.exec == first_segment.exec {
        return Some(first.start.wrapping_sub(first_segment.vaddr & !(PAGE - 1)));
    }
    let exec = mappings.iter().filter(|m| m.exec).min_by_key(|m| m.start)?;
    let segment = segments
        .iter()
        .filter(|s| {
            s.exec == exec.exec
                && s.file_offset & !(PAGE - 1) <= exec.offset
                && exec.offset < s.file_offset.saturating_add(s.file_size)
        })
        .max_by_key(|s| s.file_offset)?;
    // runtime(exec.start) = file address of offset `exec.offset` + bias
    let mapped_vaddr = segment
        .vaddr
        .wrapping_add(exec.offset)
        .wrapping_sub(segment.file_offset);
    Some(exec.start.wrapping_sub(mapped_vaddr))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gcc/GNU ld PIE (`-z separate-code`): one page-aligned segment a mapping, the
    /// RELRO part of the data segment remapped read-only.
    const GCC_PIE: &str = "\
5627254cf000-5627254d0000 r--p 00000000 fe:00 10011510                   /tmp/dwarfmaps/pie
5627254d0000-5627254d1000 r-xp 00001000 fe:00 10011510                   /tmp/dwarfmaps/pie
5627254d1000-5627254d2000 r--p 00002000 fe:00 10011510                   /tmp/dwarfmaps/pie
5627254d2000-5627254d3000 r--p 00002000 fe:00 10011510                   /tmp/dwarfmaps/pie
5627254d3000-5627254d4000 rw-p 00003000 fe:00 10011510                   /tmp/dwarfmaps/pie
56273725f000-562737280000 rw-p 00000000 00:00 0                          [heap]
7fa7287d9000-7fa72892f000 r-xp 00026000 fe:00 326279                     /usr/lib/x86_64-linux-gnu/libc.so.6
7ffe8feca000-7ffe8feeb000 rw-p 00000000 00:00 0                          [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";
    /// `readelf -lW pie`: its `PT_LOAD`s.
    const GCC_PIE_LOADS: [Segment; 4] = [
        seg(0x0, 0x0, 0x6c0, false),
        seg(0x1000, 0x1000, 0x1c9, true),
        seg(0x2000, 0x2000, 0xf4, false),
        seg(0x3dd0, 0x2dd0, 0x258, false),
    ];

    /// An lld-linked PIE: the segments are packed into the same file page, so every
    /// mapping has offset 0 and the page offset does not tell the segments apart.
    const LLD_PIE: &str = "\
55de5af0d000-55de5af0e000 r--p 00000000 fe:00 10010882                   /tmp/dwarfmaps/lldpie
55de5af0e000-55de5af0f000 r-xp 00000000 fe:00 10010882                   /tmp/dwarfmaps/lldpie
55de5af0f000-55de5af10000 r--p 00000000 fe:00 10010882                   /tmp/dwarfmaps/lldpie
55de5af10000-55de5af11000 rw-p 00000000 fe:00 10010882                   /tmp/dwarfmaps/lldpie
55de8427c000-55de8429d000 rw-p 00000000 00:00 0                          [heap]
";
    const LLD_PIE_LOADS: [Segment; 4] = [
        seg(0x0, 0x0, 0x6e0, false),
        seg(0x16e0, 0x6e0, 0x1d0, true),
        seg(0x28b0, 0x8b0, 0x1d8, false),
        seg(0x3a88, 0xa88, 0x48, false),
    ];

    /// A non-PIE executable (`gcc -no-pie`): linked at 0x400000, mapped there.
    const NON_PIE: &str = "\
00400000-00401000 r--p 00000000 fe:00 10011511                           /tmp/dwarfmaps/nopie
00401000-00402000 r-xp 00001000 fe:00 10011511                           /tmp/dwarfmaps/nopie
00402000-00403000 r--p 00002000 fe:00 10011511                           /tmp/dwarfmaps/nopie
00403000-00404000 r--p 00002000 fe:00 10011511                           /tmp/dwarfmaps/nopie
00404000-00405000 rw-p 00003000 fe:00 10011511                           /tmp/dwarfmaps/nopie
05556000-05577000 rw-p 00000000 00:00 0                                  [heap]
";
    const NON_PIE_LOADS: [Segment; 4] = [
        seg(0x400000, 0x0, 0x5a0, false),
        seg(0x401000, 0x1000, 0x1b9, true),
        seg(0x402000, 0x2000, 0xec, false),
        seg(0x403df8, 0x2df8, 0x230, false),
    ];

    const fn seg(vaddr: u64, file_offset: u64, file_size: u64, exec: bool) -> Segment {
        Segment {
            vaddr,
            file_offset,
            file_size,
            exec,
        }
    }

    fn of_file(text: &str, file: &str) -> Vec<Mapping> {
        parse(text).into_iter().filter(|m| m.name == file).collect()
    }

    #[test]
    fn lines_parse_into_every_field() {
        let maps = parse(GCC_PIE);
        assert_eq!(maps.len(), 9);
        assert_eq!(
            maps[1],
            Mapping {
                start: 0x5627_254d_0000,
                end: 0x5627_254d_1000,
                read: true,
                write: false,
                exec: true,
                offset: 0x1000,
                dev: (0xfe, 0),
                inode: 10011510,
                name: "/tmp/dwarfmaps/pie".into(),
            }
        );
        assert_eq!(maps[5].name, "[heap]");
        assert_eq!(maps[5].file(), None);
        assert_eq!(maps[8].start, 0xffff_ffff_ff60_0000);
        assert!(maps[8].exec && !maps[8].read);
        assert_eq!(
            parse_line("7f00-7f10 r-xp 00000000 08:01 12 /lib/with space.so").map(|m| m.name),
            Some("/lib/with space.so".to_string())
        );
        assert_eq!(
            parse_line("7f00-7f10 r-xp 00000000 08:01 12 /lib/gone.so (deleted)")
                .and_then(|m| m.file().map(Path::to_path_buf)),
            None
        );
        assert_eq!(parse_line("not a maps line"), None);
        assert_eq!(parse_line(""), None);
    }

    #[test]
    fn a_gcc_pie_is_biased_by_where_its_first_page_landed() {
        let mine = of_file(GCC_PIE, "/tmp/dwarfmaps/pie");
        assert_eq!(load_bias(&mine, &GCC_PIE_LOADS), Some(0x5627_254c_f000));
        // From the executable mapping alone (as the unwinder keeps them): the same.
        let exec: Vec<Mapping> = mine.into_iter().filter(|m| m.exec).collect();
        assert_eq!(load_bias(&exec, &GCC_PIE_LOADS), Some(0x5627_254c_f000));
    }

    #[test]
    fn an_lld_pie_with_segments_sharing_a_page_gets_the_right_bias() {
        let mine = of_file(LLD_PIE, "/tmp/dwarfmaps/lldpie");
        assert_eq!(load_bias(&mine, &LLD_PIE_LOADS), Some(0x55de_5af0_d000));
        // The executable mapping's offset 0 lies in all four segments' first page: only
        // the executable segment says it maps file address 0x1000.
        let exec: Vec<Mapping> = mine.into_iter().filter(|m| m.exec).collect();
        assert_eq!(exec.len(), 1);
        assert_eq!(load_bias(&exec, &LLD_PIE_LOADS), Some(0x55de_5af0_d000));
    }

    #[test]
    fn a_non_pie_executable_has_no_bias() {
        let mine = of_file(NON_PIE, "/tmp/dwarfmaps/nopie");
        assert_eq!(load_bias(&mine, &NON_PIE_LOADS), Some(0));
        let exec: Vec<Mapping> = mine.into_iter().filter(|m| m.exec).collect();
        assert_eq!(load_bias(&exec, &NON_PIE_LOADS), Some(0));
    }

    #[test]
    fn no_bias_without_mappings_or_segments() {
        assert_eq!(load_bias(&[], &GCC_PIE_LOADS), None);
        let mine = of_file(GCC_PIE, "/tmp/dwarfmaps/pie");
        assert_eq!(load_bias(&mine, &[]), None);
        // A mapping at an offset no segment holds.
        let stray = parse("1000-2000 r-xp 00900000 fe:00 1 /x");
        assert_eq!(load_bias(&stray, &GCC_PIE_LOADS), None);
    }

    #[test]
    fn files_group_their_mappings_in_order() {
        let files = by_file(&parse(GCC_PIE), |m| m.exec);
        let names: Vec<&Path> = files.iter().map(|(p, _)| p.as_path()).collect();
        assert_eq!(
            names,
            [
                Path::new("/tmp/dwarfmaps/pie"),
                Path::new("/usr/lib/x86_64-linux-gnu/libc.so.6")
            ]
        );
        assert_eq!(files[0].1.len(), 1);
        assert_eq!(files[0].1[0].start, 0x5627_254d_0000);
        let all = by_file(&parse(GCC_PIE), |_| true);
        assert_eq!(all[0].1.len(), 5);
    }

    #[test]
    fn a_mapping_is_matched_to_a_file_by_device_and_inode_or_path() {
        let m = &parse(GCC_PIE)[0];
        let id = FileId {
            dev: (0xfe, 0),
            inode: 10011510,
        };
        assert!(m.maps_file(Some(id), None));
        let other_inode = FileId { inode: 7, ..id };
        assert!(!m.maps_file(Some(other_inode), None));
        assert!(m.maps_file(Some(other_inode), Some(Path::new("/tmp/dwarfmaps/pie"))));
        assert!(!m.maps_file(None, Some(Path::new("/tmp/dwarfmaps/nopie"))));
        // glibc's st_dev encoding of 0xfe:0x00 and of a large minor.
        assert_eq!(FileId::from_raw(0xfe00, 1).dev, (0xfe, 0));
        assert_eq!(FileId::from_raw(0x0010_0803, 1).dev, (8, 0x103));
    }

    #[test]
    fn this_process_maps_its_own_code() {
        let maps = read(None).unwrap();
        let here = this_process_maps_its_own_code as *const () as usize as u64;
        let m = containing(&maps, here).unwrap();
        assert!(m.exec);
        let exe = std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
        assert!(m.maps_file(FileId::of(&exe), Some(&exe)));
    }
}
