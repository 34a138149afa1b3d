//! Bad input gives the right error variant with a message a person can act on, never
//! a panic.

mod common;

use nonstop_debuginfo::{DebugInfo, Error};

#[test]
fn a_stripped_binary_has_no_debug_info() {
    let f = common::shop_debug();
    let stripped = common::out_dir().join("shop-stripped");
    let ok = nonstop_testkit::tool::command("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&f.binary)
        .status()
        .unwrap();
    assert!(ok.success());
    let err = DebugInfo::load(&stripped).err().unwrap();
    assert!(matches!(err, Error::NoDebugInfo { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("has no debug info"), "{msg}");
    assert!(msg.contains("[profile.release] debug = true"), "{msg}");
}

#[test]
fn a_text_file_is_not_elf() {
    let path = common::out_dir().join("not-elf.txt");
    std::fs::write(&path, "hello, I am not a program\n").unwrap();
    let err = DebugInfo::load(&path).err().unwrap();
    assert!(matches!(err, Error::NotElf { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("is not an ELF executable or shared object")
    );
}

#[test]
fn a_truncated_elf_is_an_error_not_a_panic() {
    let f = common::shop_debug();
    let bytes = std::fs::read(&f.binary).unwrap();
    for len in [
        0,
        10,
        64,
        200,
        4096,
        bytes.len() / 3,
        bytes.len() / 2,
        bytes.len() - 1,
    ] {
        let path = common::out_dir().join(format!("truncated-{len}"));
        std::fs::write(&path, &bytes[..len]).unwrap();
        match DebugInfo::load(&path) {
            Err(Error::NotElf { .. } | Error::NoDebugInfo { .. } | Error::Dwarf(_)) => {}
            Err(e) => panic!("{len}: unexpected {e:?}"),
            // A file cut late may still load; queries must then fail cleanly.
            Ok(info) => {
                let _ = info.resolve("shop.rs:31");
                let _ = info.resolve("shop::Cart::total");
                let _ = info.variables_at(0x17c1a);
            }
        }
    }
}

#[test]
fn a_missing_file_is_an_io_error() {
    let err = DebugInfo::load("/nonexistent/binary").err().unwrap();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("cannot read /nonexistent/binary")
    );
}

#[test]
fn an_unknown_file_lists_the_closest_known_paths() {
    let f = common::shop_debug();
    let info = DebugInfo::load(&f.binary).unwrap();
    let err = info.resolve("shops.rs:10").err().unwrap();
    let Error::UnknownFile { closest, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(closest[0].ends_with("fixtures/shop.rs"), "{closest:?}");
    assert!(
        err.to_string()
            .starts_with("no source file shops.rs in the debug info (closest: ")
    );
}

#[test]
fn a_file_name_matching_several_files_is_ambiguous() {
    let f = common::shop_debug();
    let info = DebugInfo::load(&f.binary).unwrap();
    // std has many `mod.rs`.
    let err = info.resolve("mod.rs:10").err().unwrap();
    let Error::AmbiguousFile { candidates, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(candidates.len() > 1);
    assert!(
        err.to_string()
            .contains("matches several source files; write more of the path")
    );
}

#[test]
fn a_line_with_no_code_names_the_nearest_lines_with_code() {
    let f = common::shop_debug();
    let info = DebugInfo::load(&f.binary).unwrap();
    // The blank line before `println!`.
    let blank = f.line("main_end") + 1;
    let err = info.resolve(&format!("shop.rs:{blank}")).err().unwrap();
    let Error::NoCode { above, below, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!((*above, *below), (Some(blank - 1), Some(blank + 1)));
    assert!(err.to_string().ends_with(&format!(
        "fixtures/shop.rs:{blank} (inlined away or blank?); nearest lines with code: {}, {}",
        blank - 1,
        blank + 1
    )));
    // Past the end of the file.
    let err = info.resolve("shop.rs:5000").err().unwrap();
    let Error::NoCode {
        above, below: None, ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert!(above.is_some());
}

#[test]
fn an_unknown_function_suggests_close_names() {
    let f = common::shop_debug();
    let info = DebugInfo::load(&f.binary).unwrap();
    let err = info.resolve("shop::Cart::totl").err().unwrap();
    let Error::UnknownFunction { suggestions, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(
        suggestions.iter().any(|s| s == "shop::Cart::total"),
        "{suggestions:?}"
    );
}

#[test]
fn a_bad_location_says_how_to_write_one() {
    let f = common::shop_debug();
    let info = DebugInfo::load(&f.binary).unwrap();
    for bad in ["", "shop.rs:0", "shop.rs:99999999999"] {
        let err = info.resolve(bad).err().unwrap();
        assert!(matches!(err, Error::BadLocation { .. }), "{bad}: {err:?}");
        assert!(err.to_string().contains("write FILE:LINE"));
    }
}

#[test]
fn an_address_outside_any_function_is_an_error() {
    let f = common::shop_debug();
    let info = DebugInfo::load(&f.binary).unwrap();
    let err = info.variables_at(0).err().unwrap();
    assert!(matches!(err, Error::NoCodeAt { address: 0 }), "{err:?}");
}

#[test]
fn line_tables_only_resolves_lines_but_says_why_there_are_no_variables() {
    let src = nonstop_testkit::fixture::source(env!("CARGO_MANIFEST_DIR"), "shop.rs");
    let flags = ["-C", "debuginfo=line-tables-only", "-C", "opt-level=0"];
    let bin = nonstop_testkit::fixture::build(&src, &flags).binary;
    let info = DebugInfo::load(&bin).unwrap();
    let sites = info.resolve("shop.rs:42").unwrap();
    assert_eq!(sites[0].functions, ["shop::Cart::total"]);
    let err = info.variables_at(sites[0].address).err().unwrap();
    assert!(matches!(err, Error::NoVariableInfo { .. }), "{err:?}");
    assert!(err.to_string().contains("debug = true"));
}
