//! Fixture programs: one source file in a crate's `tests/fixtures/`, compiled by rustc
//! (`.rs`), gcc (`.c`) or g++ (`.cpp`, `.cc`) with the flags the test gives.
//!
//! A build is cached by content: the output is `TARGET/nonstop-fixtures/STEM-HASH`, where
//! the hash covers the compiler's version, the flags, the source's path (the debug info names
//! it) and its bytes, so an edited
//! fixture or a new compiler builds again and everything else is reused across test
//! binaries and runs. Parallel test processes are safe: each compiles in a folder of its
//! own and moves the result into place with an atomic rename, so a reader sees either no
//! file or a whole one.

use crate::tool;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// One built fixture.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// The built program.
    pub binary: PathBuf,
    /// The source file.
    pub source: PathBuf,
    /// `@mark NAME` comments of the source → their line.
    pub marks: BTreeMap<String, u32>,
}

impl Fixture {
    /// The line of the mark `name`.
    pub fn line(&self, name: &str) -> u32 {
        *self
            .marks
            .get(name)
            .unwrap_or_else(|| panic!("no `@mark {name}` in {}", self.source.display()))
    }

    /// `FILE:LINE` of a mark, with the source's file name only.
    pub fn at(&self, name: &str) -> String {
        format!("{}:{}", self.file_name(), self.line(name))
    }

    /// The source's file name.
    pub fn file_name(&self) -> String {
        self.source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// `tests/fixtures/NAME` of the crate whose manifest folder is `manifest_dir` (pass
/// `env!("CARGO_MANIFEST_DIR")`).
pub fn source(manifest_dir: &str, name: &str) -> PathBuf {
    Path::new(manifest_dir).join("tests/fixtures").join(name)
}

/// The line numbers of the `@mark NAME` comments in `source` (NAME: letters, digits, `_`).
pub fn marks(source: &Path) -> BTreeMap<String, u32> {
    let text = std::fs::read_to_string(source)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", source.display()));
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if let Some((_, rest)) = line.split_once("@mark ") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name, i as u32 + 1);
            }
        }
    }
    out
}

/// The compiler for a source file, by its extension.
fn compiler(source: &Path) -> &'static str {
    match source.extension().and_then(|e| e.to_str()) {
        Some("rs") => "rustc",
        Some("c") => "gcc",
        Some("cpp" | "cc" | "cxx") => "g++",
        _ => panic!("{}: a fixture is a .rs, .c or .cpp file", source.display()),
    }
}

/// FNV-1a, 64 bits: stable across runs and Rust versions (the cache's names depend on it).
fn fnv(hash: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *hash ^= u64::from(*b);
        *hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // A separator, so ("ab", "c") and ("a", "bc") differ.
    *hash ^= 0xff;
    *hash = hash.wrapping_mul(0x0100_0000_01b3);
}

/// One build at a time inside a process (other processes are kept safe by the rename).
static BUILDING: Mutex<()> = Mutex::new(());

/// Builds `source` with `flags` (rustc also gets `--edition 2021` unless the flags name an
/// edition), or reuses the build of
/// the same compiler, flags and content.
pub fn build(source: &Path, flags: &[&str]) -> Fixture {
    let _one = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let compiler = compiler(source);
    let program = tool::tool(compiler);
    let text = std::fs::read(source)
        .unwrap_or_else(|e| panic!("cannot read the fixture {}: {e}", source.display()));
    let version = Command::new(&program)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {compiler} --version: {e}"));
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    fnv(&mut hash, compiler.as_bytes());
    fnv(&mut hash, &version.stdout);
    for f in flags {
        fnv(&mut hash, f.as_bytes());
    }
    fnv(&mut hash, &text);
    // The debug info names the source by its path: a checkout elsewhere (a CI clone
    // sharing the target folder) must not get a binary that points into another one.
    fnv(&mut hash, source.as_os_str().as_encoded_bytes());

    let stem = source
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "fixture".into());
    let dir = crate::target_dir().join("nonstop-fixtures");
    let binary = dir.join(format!("{stem}-{hash:016x}"));
    if !binary.exists() {
        let work = dir.join(format!(".build-{stem}-{hash:016x}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", work.display()));
        let out = work.join(&stem);
        let mut cmd = Command::new(&program);
        if compiler == "rustc" && !flags.contains(&"--edition") {
            cmd.args(["--edition", "2021"]);
        }
        cmd.args(flags)
            .arg("-o")
            .arg(&out)
            .arg(source)
            .current_dir(&work);
        let done = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        assert!(
            done.status.success(),
            "{cmd:?} failed:\n{}",
            String::from_utf8_lossy(&done.stderr)
        );
        std::fs::rename(&out, &binary).unwrap_or_else(|e| {
            panic!("cannot move {} to {}: {e}", out.display(), binary.display())
        });
        let _ = std::fs::remove_dir_all(&work);
    }
    Fixture {
        marks: marks(source),
        binary,
        source: source.to_path_buf(),
    }
}
