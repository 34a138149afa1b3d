//! Fixture programs built once per test binary, and helpers to look up their marks.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// One built fixture.
pub struct Fixture {
    /// The binary.
    pub binary: PathBuf,
    /// The source file.
    pub source: PathBuf,
    /// `@mark NAME` → line.
    pub marks: HashMap<String, u32>,
}

impl Fixture {
    /// The line of a mark.
    pub fn line(&self, mark: &str) -> u32 {
        *self
            .marks
            .get(mark)
            .unwrap_or_else(|| panic!("no mark {mark}"))
    }

    /// `FILE:LINE` of a mark, with the file's name only.
    pub fn at(&self, mark: &str) -> String {
        format!("{}:{}", self.file_name(), self.line(mark))
    }

    /// The source's file name.
    pub fn file_name(&self) -> String {
        self.source
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Where built fixtures go (one folder per test binary, under the target dir).
pub fn out_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let name = exe.file_stem().unwrap().to_string_lossy().into_owned();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("fixtures")
        .join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn marks(source: &Path) -> HashMap<String, u32> {
    let text = std::fs::read_to_string(source).unwrap();
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(rest) = line.split("@mark ").nth(1) {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.insert(name, i as u32 + 1);
        }
    }
    out
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn build(name: &str, make: impl FnOnce(&Path, &Path)) -> Fixture {
    let source = if name.starts_with("shop") {
        "shop.rs"
    } else if name.starts_with("typed") {
        if name.ends_with("-c") {
            "typed.c"
        } else {
            "typed.rs"
        }
    } else {
        "points.c"
    };
    let source = fixtures_dir().join(source);
    let binary = out_dir().join(name);
    make(&source, &binary);
    Fixture {
        marks: marks(&source),
        binary,
        source,
    }
}

fn rust(name: &str, opt: &str) -> Fixture {
    build(name, |src, bin| {
        run(Command::new("rustc")
            .args(["--edition", "2021", "-C", "debuginfo=2", "-C"])
            .arg(format!("opt-level={opt}"))
            .arg(src)
            .arg("-o")
            .arg(bin));
    })
}

fn c(name: &str, opt: &str) -> Fixture {
    build(name, |src, bin| {
        run(Command::new("gcc")
            .args(["-g", opt])
            .arg(src)
            .arg("-o")
            .arg(bin));
    })
}

/// The Rust fixture at `-C opt-level=0 -C debuginfo=2`.
pub fn shop_debug() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| rust("shop-debug", "0"))
}

/// The Rust fixture at `-C opt-level=2 -C debuginfo=2`.
pub fn shop_release() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| rust("shop-release", "2"))
}

/// The expression-type fixture (`typed.rs`) at `-C opt-level=0`.
pub fn typed_debug() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| rust("typed-debug", "0"))
}

/// The expression-type fixture (`typed.rs`) at `-C opt-level=2`.
pub fn typed_release() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| rust("typed-release", "2"))
}

/// The C expression-type fixture (`typed.c`) at `-g -O0`.
pub fn typed_c_o0() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| c("typed-O0-c", "-O0"))
}

/// The C expression-type fixture (`typed.c`) at `-g -O2`.
pub fn typed_c_o2() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| c("typed-O2-c", "-O2"))
}

/// The C fixture at `-g -O0`.
pub fn points_o0() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| c("points-O0", "-O0"))
}

/// The C fixture at `-g -O2`.
pub fn points_o2() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| c("points-O2", "-O2"))
}

/// `addr2line -e BINARY ADDRESS`: (file name, line) of the innermost row.
pub fn addr2line(binary: &Path, address: u64) -> (String, u32) {
    let out = Command::new("addr2line")
        .arg("-e")
        .arg(binary)
        .arg(format!("{address:#x}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or("").to_string();
    let (file, line) = first.rsplit_once(':').unwrap_or(("?", "0"));
    let line: String = line.chars().take_while(char::is_ascii_digit).collect();
    let name = Path::new(file)
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    (name, line.parse().unwrap_or(0))
}

/// `gdb -batch -ex 'info line FILE:N'`: the address where gdb says the line starts.
pub fn gdb_line_start(binary: &Path, location: &str) -> Option<u64> {
    let out = Command::new("gdb")
        .args(["-nx", "-batch", "-ex"])
        .arg(format!("info line {location}"))
        .arg(binary)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rest = text.split("starts at address ").nth(1)?;
    let hex = rest.split_whitespace().next()?.trim_start_matches("0x");
    u64::from_str_radix(hex, 16).ok()
}

/// `llvm-dwarfdump --debug-line`: every (address, line) row.
pub fn line_rows(binary: &Path) -> std::collections::HashSet<(u64, u32)> {
    let out = Command::new("llvm-dwarfdump")
        .arg("--debug-line")
        .arg(binary)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("0x"))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let addr = u64::from_str_radix(f.next()?.trim_start_matches("0x"), 16).ok()?;
            Some((addr, f.next()?.parse().ok()?))
        })
        .collect()
}
