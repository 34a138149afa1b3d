//! Debug info is read wherever it lives: DWARF 4 and 5, compressed sections, a separate
//! debug file found by `.gnu_debuglink`; and file addresses map to this process's
//! addresses through the load bias.

mod common;

use nonstop_debuginfo::DebugInfo;
use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) {
    assert!(cmd.status().unwrap().success(), "{cmd:?}");
}

fn same_answers(a: &Path, b: &Path, locations: &[String]) {
    let a = DebugInfo::load(a).unwrap();
    let b = DebugInfo::load(b).unwrap();
    for l in locations {
        let sa = a.resolve(l).unwrap();
        assert_eq!(sa, b.resolve(l).unwrap(), "{l}");
        assert_eq!(
            a.variables_at(sa[0].address).unwrap(),
            b.variables_at(sa[0].address).unwrap(),
            "{l}"
        );
    }
}

#[test]
fn rust_is_dwarf_4_and_gcc_is_dwarf_5() {
    let version = |p: &Path| {
        let out = nonstop_testkit::tool::command("llvm-dwarfdump")
            .arg("--debug-info")
            .arg(p)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split("version = ").nth(1).unwrap()[..6].to_string()
    };
    assert_eq!(version(&common::shop_debug().binary), "0x0004");
    assert_eq!(version(&common::points_o0().binary), "0x0005");
}

#[test]
fn compressed_sections_give_the_same_answers() {
    for (f, marks) in [
        (common::shop_release(), ["line_total", "shadow_outer"]),
        (common::points_o2(), ["scale_ret", "main_call"]),
    ] {
        let locations: Vec<String> = marks.iter().map(|m| f.at(m)).collect();
        for kind in ["zlib", "zstd"] {
            let out = common::out_dir().join(format!(
                "{}-{kind}",
                f.binary.file_name().unwrap().to_string_lossy()
            ));
            let status = nonstop_testkit::tool::command("objcopy")
                .arg(format!("--compress-debug-sections={kind}"))
                .arg(&f.binary)
                .arg(&out)
                .status()
                .unwrap();
            if !status.success() && kind == "zstd" {
                eprintln!("objcopy cannot write zstd here; skipped");
                continue;
            }
            assert!(status.success());
            same_answers(&f.binary, &out, &locations);
        }
    }
}

#[test]
fn a_separate_debug_file_is_found_by_debuglink() {
    let f = common::points_o0();
    let dir = common::out_dir().join("debuglink");
    std::fs::create_dir_all(dir.join(".debug")).unwrap();
    let exe = dir.join("points");
    let debug = dir.join(".debug/points.debug");
    run(nonstop_testkit::tool::command("objcopy")
        .arg("--only-keep-debug")
        .arg(&f.binary)
        .arg(&debug));
    run(nonstop_testkit::tool::command("objcopy")
        .arg("--strip-debug")
        .arg(format!("--add-gnu-debuglink={}", debug.display()))
        .arg(&f.binary)
        .arg(&exe));
    let info = DebugInfo::load(&exe).unwrap();
    assert_eq!(info.debug_file(), Some(debug.as_path()));
    same_answers(
        &f.binary,
        &exe,
        &[f.at("scale_ret"), f.at("loop_body"), "scale".into()],
    );
}

#[inline(never)]
fn probe_me(x: u64) -> u64 {
    std::hint::black_box(x) * 3 + 1
}

#[test]
fn file_addresses_plus_the_load_bias_are_this_process_addresses() {
    let exe = std::env::current_exe().unwrap();
    let info = DebugInfo::load(&exe).unwrap();
    let bias = info.load_bias_in(None).unwrap();
    let runtime = probe_me as fn(u64) -> u64 as usize as u64;
    let sites = info
        .resolve("debug_info_is_found_where_it_lives::probe_me")
        .unwrap();
    assert_eq!(sites.len(), 1);
    // The site is past the prologue, a few bytes into the function.
    let entry = runtime - bias;
    assert!(
        (entry..entry + 64).contains(&sites[0].address),
        "{:#x} not just after {entry:#x}",
        sites[0].address
    );
    assert_eq!(probe_me(1), 4);
}
