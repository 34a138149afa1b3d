//! A real third-party crate from crates.io (`semver`), built in release with debug info:
//! with a probe on every line of its parser module, the program's output is unchanged.
//!
//! Builds a small cargo project in the target folder (needs the crates.io registry).

mod common;

use common::{run_plain, run_with_rules};
use std::path::{Path, PathBuf};
use std::process::Command;

const MAIN: &str = r#"
use semver::{Version, VersionReq};
fn main() {
    let req = VersionReq::parse(">=1.2.3, <2.0.0").unwrap();
    let mut versions = Vec::new();
    for text in ["1.2.3", "1.10.0-alpha.1+build.5", "2.0.0", "0.9.9", "1.2.4-rc.2", "1.99.0+meta"] {
        let v = Version::parse(text).unwrap();
        println!("{text} -> {v} pre={} build={} matches={}", v.pre, v.build, req.matches(&v));
        versions.push(v);
    }
    versions.sort();
    println!("{:?}", versions.iter().map(|v| v.to_string()).collect::<Vec<_>>());
    for bad in ["1.2", "01.2.3", "1.2.3-", "x"] {
        println!("{bad} -> {}", Version::parse(bad).unwrap_err());
    }
}
"#;

fn build_semver_tool() -> (PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("semver-tool");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"semver-tool\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
         [dependencies]\nsemver = \"=1.0.26\"\n\n[profile.release]\ndebug = true\n\n[workspace]\n",
    )
    .unwrap();
    std::fs::write(dir.join("src/main.rs"), MAIN).unwrap();
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet"])
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .status()
        .unwrap();
    assert!(status.success(), "building the semver tool failed");
    let meta = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let meta: serde_json::Value = serde_json::from_slice(&meta.stdout).unwrap();
    let manifest = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "semver")
        .unwrap()["manifest_path"]
        .as_str()
        .unwrap()
        .to_owned();
    let parse_rs = Path::new(&manifest).parent().unwrap().join("src/parse.rs");
    (dir.join("target/release/semver-tool"), parse_rs)
}

#[test]
fn probes_on_every_line_of_semvers_parser_leave_its_output_unchanged() {
    let (program, parse_rs) = build_semver_tool();
    let lines = std::fs::read_to_string(&parse_rs).unwrap().lines().count();
    let rules: Vec<serde_json::Value> = (1..=lines)
        .map(|l| {
            serde_json::json!({"id": format!("p{l}"), "at": format!("semver-1.0.26/src/parse.rs:{l}"),
                "action": "snapshot", "rate": "100000/s", "max_hits": 1000000})
        })
        .collect();
    let run = run_with_rules(&program, &[], &serde_json::to_string(&rules).unwrap(), &[]);
    let plain = run_plain(&program, &[]);
    assert!(run.output.status.success(), "{}", run.stderr());
    assert_eq!(run.stdout(), String::from_utf8_lossy(&plain.stdout));
    let armed = run.working_rules();
    assert!(
        armed >= 50,
        "only {armed} lines of parse.rs armed; stderr: {}",
        run.stderr()
    );
    assert!(!run.responses.is_empty());
}

/// Probes on every line of semver's parser again, with the fast path on: the output is
/// unchanged, and each rule's status says how many of its probes got the `jmp` (printed:
/// the share and the most common reasons for the others).
#[test]
fn with_the_fast_path_every_line_of_semvers_parser_leaves_its_output_unchanged() {
    let (program, parse_rs) = build_semver_tool();
    let lines = std::fs::read_to_string(&parse_rs).unwrap().lines().count();
    let rules: Vec<serde_json::Value> = (1..=lines)
        .map(|l| {
            serde_json::json!({"id": format!("p{l}"), "at": format!("semver-1.0.26/src/parse.rs:{l}"),
                "action": "snapshot", "rate": "100000/s", "max_hits": 1000000})
        })
        .collect();
    let run = run_with_rules(
        &program,
        &[],
        &serde_json::to_string(&rules).unwrap(),
        &[("NONSTOP_FAST_PATH", "1")],
    );
    let plain = run_plain(&program, &[]);
    assert!(run.output.status.success(), "{}", run.stderr());
    assert_eq!(run.stdout(), String::from_utf8_lossy(&plain.stdout));
    assert!(run.working_rules() >= 50, "{}", run.stderr());
    let (mut fast, mut probes) = (0u64, 0u64);
    let mut reasons: std::collections::BTreeMap<String, u64> = Default::default();
    for s in run.statuses.as_array().unwrap() {
        let n = s["probes"].as_u64().unwrap_or(0);
        let Some(text) = s["fast_path"].as_str() else {
            continue;
        };
        probes += n;
        let (k, why) = if text == "fast path: yes" {
            (n, None)
        } else if let Some(rest) = text.strip_prefix("fast path: no — ") {
            (0, Some(rest))
        } else {
            let rest = text.strip_prefix("fast path: ").unwrap();
            let (k, why) = rest.split_once(" of ").unwrap();
            (k.parse().unwrap(), why.split_once("no — ").map(|w| w.1))
        };
        fast += k;
        if let Some(why) = why {
            // The kind of reason, without its addresses.
            let kind: String = why
                .split(" at 0x")
                .next()
                .unwrap_or(why)
                .chars()
                .take(60)
                .collect();
            *reasons.entry(kind).or_default() += 1;
        }
    }
    eprintln!(
        "fast path: {fast} of {probes} probes ({:.0} %); rules with other probes, by first reason: {reasons:#?}",
        100.0 * fast as f64 / probes.max(1) as f64
    );
    assert!(fast > 0, "{reasons:?}");
}
