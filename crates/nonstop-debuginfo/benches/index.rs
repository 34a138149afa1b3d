//! Load + first resolve, and a second resolve reusing the index, on a big release binary
//! with full debug info: the workspace's own `nonstop` binary built with `--release`
//! (the workspace profile keeps `debug = true`), or `NONSTOP_BENCH_BINARY` with
//! `NONSTOP_BENCH_FIRST` / `NONSTOP_BENCH_SECOND` locations.
//!
//! Before the criterion runs it prints the cold figures once: wall time of load + first
//! resolve and the peak resident memory (VmHWM) of this process.

use criterion::{Criterion, criterion_group, criterion_main};
use nonstop_debuginfo::{DebugInfo, Error, Site};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `FILE:LINE` of the first line of `file` containing `needle`.
fn line_of(file: &str, needle: &str) -> String {
    let text = std::fs::read_to_string(workspace().join(file)).unwrap_or_default();
    let n = text
        .lines()
        .position(|l| l.contains(needle))
        .map_or(1, |i| i + 1);
    let name = Path::new(file)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    format!("{name}:{n}")
}

/// The binary and two locations in it.
fn subject() -> (PathBuf, String, String) {
    if let Ok(b) = std::env::var("NONSTOP_BENCH_BINARY") {
        let first = std::env::var("NONSTOP_BENCH_FIRST").unwrap_or_else(|_| "main".into());
        let second = std::env::var("NONSTOP_BENCH_SECOND").unwrap_or_else(|_| first.clone());
        return (b.into(), first, second);
    }
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", "nonstop", "--manifest-path"])
        .arg(workspace().join("Cargo.toml"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the nonstop binary failed");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace().join("target"));
    (
        target.join("release/nonstop"),
        line_of(
            "crates/nonstop/src/cmd_where.rs",
            "let info = DebugInfo::load",
        ),
        line_of("crates/nonstop-debuginfo/src/lines.rs", "let any_stmt ="),
    )
}

/// Resolves `location`, or the nearest line above it with code (optimised code folds
/// some lines away).
fn resolve(info: &DebugInfo, location: &str) -> (String, Vec<Site>) {
    match info.resolve(location) {
        Err(Error::NoCode {
            above: Some(line), ..
        }) => {
            let (file, _) = location.rsplit_once(':').unwrap();
            let other = format!("{file}:{line}");
            let sites = info.resolve(&other).unwrap();
            (other, sites)
        }
        other => (location.to_string(), other.unwrap()),
    }
}

fn vm_hwm_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn bench(c: &mut Criterion) {
    let (binary, first, second) = subject();
    let size = std::fs::metadata(&binary).map(|m| m.len()).unwrap_or(0);

    let before = vm_hwm_kb();
    let t = Instant::now();
    let info = DebugInfo::load(&binary).unwrap();
    let (first, sites) = resolve(&info, &first);
    let cold = t.elapsed();
    let t = Instant::now();
    let (second, second_sites) = resolve(&info, &second);
    let warm = t.elapsed();
    eprintln!(
        "{}: {:.1} MB; load + resolve {first} ({} sites): {cold:.2?}, peak RSS {} MB (before: {} MB); \
         then resolve {second} ({} sites): {warm:.2?}",
        binary.display(),
        size as f64 / 1e6,
        sites.len(),
        vm_hwm_kb() / 1024,
        before / 1024,
        second_sites.len(),
    );

    let mut g = c.benchmark_group("index");
    g.sample_size(10);
    g.bench_function("load_and_first_resolve", |b| {
        b.iter(|| {
            let info = DebugInfo::load(&binary).unwrap();
            info.resolve(&first).unwrap()
        })
    });
    g.bench_function("second_resolve_reuses_the_index", |b| {
        b.iter(|| info.resolve(&second).unwrap())
    });
    g.bench_function("variables_at", |b| {
        b.iter(|| info.variables_at(sites[0].address).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
