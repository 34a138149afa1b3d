//! The external programs the tests use. A test asks for one with [`tool`] before running
//! it; a missing one fails the test with one line that names the Debian package to install
//! (`scripts/test` installs them all), never with a cryptic spawn error.

use std::path::{Path, PathBuf};

/// The Debian package that installs `name`, for the tools the tests use.
pub fn package_of(name: &str) -> &'static str {
    match name {
        "gdb" => "gdb",
        "gcc" => "gcc",
        "g++" => "g++",
        "llvm-dwarfdump" => "llvm",
        "objcopy" | "addr2line" | "readelf" | "strip" => "binutils",
        "chromium" => "chromium",
        "git" => "git",
        "rustc" | "cargo" => "rustc (or Rust from rustup.rs)",
        _ => "the package that provides it",
    }
}

/// Where `name` is on the `PATH`, if it is.
pub fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The path of the program `name`; fails the test with one line naming the Debian package
/// to install when it is not on the `PATH`.
pub fn tool(name: &str) -> PathBuf {
    find(name).unwrap_or_else(|| {
        panic!(
            "{name} is not installed: `apt-get install {}` (or run scripts/test, which installs what the tests need)",
            package_of(name)
        )
    })
}

/// A [`std::process::Command`] for the tool `name`, checked with [`tool`] first.
pub fn command(name: &str) -> std::process::Command {
    std::process::Command::new(tool(name))
}
