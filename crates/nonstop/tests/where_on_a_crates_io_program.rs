//! `nonstop where` on a real program: a tiny cargo project using `semver` from
//! crates.io, built `--release` with `debug = true`, asked about a line of semver's own
//! source (found in the cargo registry). Nothing is vendored: cargo fetches the crate
//! (or uses its cache) and the build is cached under the target directory.

use std::path::{Path, PathBuf};
use std::process::Command;

const MAIN: &str = r#"
fn main() {
    let input = std::env::args().nth(1).unwrap_or_else(|| "1.20.3-alpha.1+build.5".into());
    let v = semver::Version::parse(&input).unwrap();
    let req = semver::VersionReq::parse(">=1.0, <2.0").unwrap();
    println!("{v} {}", req.matches(&v));
}
"#;

const MANIFEST: &str = r#"
[package]
name = "semver-app"
version = "0.1.0"
edition = "2021"

[dependencies]
semver = "1"

[profile.release]
debug = true

[workspace]
"#;

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").unwrap()).join(".cargo"))
}

/// Builds the project (cached) and returns (binary, semver's source folder).
fn build() -> (PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("semver-app");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("Cargo.toml"), MANIFEST).unwrap();
    std::fs::write(dir.join("src/main.rs"), MAIN).unwrap();
    let target = dir.join("target");
    let build = |offline: bool| {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--release", "--quiet"])
            .current_dir(&dir)
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("RUSTFLAGS");
        if offline {
            cmd.arg("--offline");
        }
        cmd.status().unwrap().success()
    };
    assert!(build(true) || build(false), "building semver-app failed");
    let lock = std::fs::read_to_string(dir.join("Cargo.lock")).unwrap();
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"semver\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
        .map(|v| v.trim_end_matches('"').to_string())
        .expect("semver in Cargo.lock");
    let src = std::fs::read_dir(cargo_home().join("registry/src"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path().join(format!("semver-{version}")))
        .find(|p| p.is_dir())
        .expect("semver's source in the cargo registry");
    (target.join("release/semver-app"), src)
}

#[test]
fn where_resolves_a_line_of_a_dependency_with_its_inline_chain_and_variables() {
    let (binary, src) = build();
    let parse_rs = src.join("src/parse.rs");
    let text = std::fs::read_to_string(&parse_rs).unwrap();
    let line = text
        .lines()
        .position(|l| l.contains("if value == 0 && len > 0"))
        .expect("the line in semver's numeric_identifier")
        + 1;
    let dir_name = src.file_name().unwrap().to_string_lossy().into_owned();
    let location = format!("{dir_name}/src/parse.rs:{line}");

    let out = Command::new(env!("CARGO_BIN_EXE_nonstop"))
        .args(["where"])
        .arg(&binary)
        .arg(&location)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sites = json["sites"].as_array().unwrap();
    assert!(!sites.is_empty());
    for site in sites {
        assert_eq!(site["file"].as_str().unwrap(), parse_rs.to_str().unwrap());
        assert_eq!(site["line"].as_u64().unwrap(), line as u64);
        let functions: Vec<&str> = site["functions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        // Inlined into the parser: the chain names the helper and, last, a function
        // that holds it.
        assert!(
            functions.contains(&"semver::parse::numeric_identifier"),
            "{functions:?}"
        );
        assert!(
            functions.last().unwrap().starts_with("semver::"),
            "{functions:?}"
        );
        assert!(site["variables_error"].is_null(), "{site}");
        let names: Vec<&str> = site["variables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        for expected in ["value", "len", "input", "pos"] {
            assert!(names.contains(&expected), "{expected} not in {names:?}");
        }
        // addr2line agrees on where the address is.
        let addr = site["address"].as_str().unwrap();
        let a2l = Command::new("addr2line")
            .arg("-e")
            .arg(&binary)
            .arg(addr)
            .output()
            .unwrap();
        let a2l = String::from_utf8_lossy(&a2l.stdout);
        assert!(
            a2l.starts_with(&format!("{}:{line}", parse_rs.display())),
            "{addr}: {a2l}"
        );
    }
}

#[test]
fn where_prints_errors_once_and_exits_1() {
    let out = Command::new(env!("CARGO_BIN_EXE_nonstop"))
        .args(["where", "/nonexistent", "main.rs:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "nonstop: cannot read /nonexistent: No such file or directory (os error 2)\n"
    );
}
