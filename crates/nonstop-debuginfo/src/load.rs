//! Loading an ELF file and its DWARF sections.

use crate::{DebugInfo, Error, Reader};
use object::{Object, ObjectSection};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Facts about the loaded file.
pub(crate) struct LoadedFile {
    pub(crate) path: PathBuf,
}

/// Lazily built indexes.
#[derive(Default)]
pub(crate) struct Indexes {
    /// Types read so far (see `types.rs`).
    pub(crate) types: crate::types::TypeCache,
}

impl DebugInfo {
    /// Loads `path` (an ELF executable or shared object) and its DWARF.
    pub fn load(path: impl AsRef<Path>) -> Result<DebugInfo, Error> {
        let path = path.as_ref().to_path_buf();
        let data = std::fs::read(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let obj = object::File::parse(&*data).map_err(|e| Error::NotElf {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let endian = if obj.is_little_endian() {
            gimli::RunTimeEndian::Little
        } else {
            gimli::RunTimeEndian::Big
        };
        if obj.section_by_name(".debug_info").is_none() {
            return Err(Error::NoDebugInfo { path });
        }
        let load = |id: gimli::SectionId| -> Result<Reader, gimli::Error> {
            let bytes: Cow<[u8]> = match obj.section_by_name(id.name()) {
                Some(s) => s.uncompressed_data().unwrap_or(Cow::Borrowed(&[])),
                None => Cow::Borrowed(&[]),
            };
            Ok(Reader::new(Arc::from(&*bytes), endian))
        };
        let dwarf = gimli::Dwarf::load(load)?;
        Ok(DebugInfo {
            dwarf: Arc::new(dwarf),
            file: LoadedFile { path },
            index: Indexes::default(),
        })
    }
}
