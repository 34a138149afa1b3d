//! Fixture programs built once per test binary, and helpers to look up their marks.
#![allow(dead_code)]

use nonstop_testkit::tool;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use nonstop_testkit::Fixture;

/// A folder of this test binary's own under the target dir, for files a test derives from
/// a fixture (stripped or compressed copies, separate debug files).
pub fn out_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let name = exe.file_stem().unwrap().to_string_lossy().into_owned();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("fixtures")
        .join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn source(name: &str) -> PathBuf {
    nonstop_testkit::fixture::source(env!("CARGO_MANIFEST_DIR"), name)
}

fn rust(name: &str, opt: &str) -> Fixture {
    let opt = format!("opt-level={opt}");
    nonstop_testkit::fixture::build(&source(name), &["-C", "debuginfo=2", "-C", &opt])
}

fn c(name: &str, opt: &str) -> Fixture {
    nonstop_testkit::fixture::build(&source(name), &["-g", opt])
}

/// The Rust fixture at `-C opt-level=0 -C debuginfo=2`.
pub fn shop_debug() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| rust("shop.rs", "0"))
}

/// The Rust fixture at `-C opt-level=2 -C debuginfo=2`.
pub fn shop_release() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| rust("shop.rs", "2"))
}

/// The expression-type fixture (`typed.rs`) at `-C opt-level=0`.
pub fn typed_debug() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| rust("typed.rs", "0"))
}

/// The expression-type fixture (`typed.rs`) at `-C opt-level=2`.
pub fn typed_release() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| rust("typed.rs", "2"))
}

/// The C expression-type fixture (`typed.c`) at `-g -O0`.
pub fn typed_c_o0() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| c("typed.c", "-O0"))
}

/// The C expression-type fixture (`typed.c`) at `-g -O2`.
pub fn typed_c_o2() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| c("typed.c", "-O2"))
}

/// The C fixture at `-g -O0`.
pub fn points_o0() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| c("points.c", "-O0"))
}

/// The C fixture at `-g -O2`.
pub fn points_o2() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| c("points.c", "-O2"))
}

/// `addr2line -e BINARY ADDRESS`: (file name, line) of the innermost row.
pub fn addr2line(binary: &Path, address: u64) -> (String, u32) {
    let out = tool::command("addr2line")
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
    let out = tool::command("gdb")
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
    let out = tool::command("llvm-dwarfdump")
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
