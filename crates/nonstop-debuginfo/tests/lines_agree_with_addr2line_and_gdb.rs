//! `resolve(FILE:LINE)` gives the addresses binutils' addr2line and gdb give.

mod common;

use common::{Fixture, addr2line, gdb_line_start, line_rows};
use nonstop_debuginfo::DebugInfo;

/// Every site of every marked line maps back to the file:line the site names in
/// addr2line. Where optimised code puts several rows at one address (addr2line names the
/// last), llvm-dwarfdump must show a row for the site's line at that address.
fn sites_map_back(f: &Fixture) {
    let info = DebugInfo::load(&f.binary).unwrap();
    let rows = line_rows(&f.binary);
    let mut resolved = 0;
    for (mark, line) in &f.marks {
        let Ok(sites) = info.resolve(&format!("{}:{line}", f.file_name())) else {
            continue;
        };
        resolved += 1;
        for s in &sites {
            let (file, l) = addr2line(&f.binary, s.address);
            assert_eq!(file, f.file_name(), "{mark} at {:#x}", s.address);
            assert!(
                l == s.line || rows.contains(&(s.address, s.line)),
                "{mark} at {:#x}: addr2line says line {l}, the site {}",
                s.address,
                s.line
            );
            assert!(s.file.ends_with(&f.file_name()));
        }
    }
    assert!(
        resolved > 0,
        "no marked line resolved in {}",
        f.binary.display()
    );
}

#[test]
fn rust_debug_sites_map_back_in_addr2line() {
    sites_map_back(common::shop_debug());
}

#[test]
fn rust_release_sites_map_back_in_addr2line() {
    sites_map_back(common::shop_release());
}

#[test]
fn c_sites_map_back_in_addr2line() {
    sites_map_back(common::points_o0());
    sites_map_back(common::points_o2());
}

/// For lines that are not a function's first line, the first site is where gdb says the
/// line starts.
#[test]
fn first_site_is_where_gdb_says_the_line_starts() {
    for (f, marks) in [
        (
            common::shop_debug(),
            &[
                "add_push",
                "line_total",
                "total_end",
                "shadow_inner",
                "main_end",
            ][..],
        ),
        (
            common::points_o0(),
            &["scale_sy", "scale_ret", "main_call", "loop_body"][..],
        ),
    ] {
        let info = DebugInfo::load(&f.binary).unwrap();
        for mark in marks {
            let at = f.at(mark);
            let sites = info.resolve(&at).unwrap();
            let gdb = gdb_line_start(&f.binary, &at).expect("gdb answers");
            assert_eq!(sites[0].address, gdb, "{at}");
            assert!(
                sites.iter().all(|s| s.line == f.line(mark) && s.is_stmt),
                "{at}: {sites:?}"
            );
        }
    }
}

#[test]
fn debug_build_addresses_are_exact() {
    let f = common::shop_debug();
    let info = DebugInfo::load(&f.binary).unwrap();
    // One site for a straight-line statement, in the function that holds it.
    let sites = info.resolve(&f.at("add_push")).unwrap();
    assert_eq!(sites.len(), 1);
    assert_eq!(sites[0].functions, ["shop::Cart::add"]);
    let sites = info.resolve(&f.at("shadow_inner")).unwrap();
    assert_eq!(sites.len(), 1);
    assert_eq!(sites[0].functions, ["shop::shadow"]);
}

#[test]
fn a_function_opening_line_resolves_past_the_prologue() {
    let f = common::shop_debug();
    let info = DebugInfo::load(&f.binary).unwrap();
    let opening = f.line("line_total") - 3; // `pub fn total(&self) -> u64 {`
    let sites = info.resolve(&format!("shop.rs:{opening}")).unwrap();
    assert_eq!(sites.len(), 1, "{sites:?}");
    assert_eq!(sites[0].line, opening + 1);
    let by_name = info.resolve("shop::Cart::total").unwrap();
    assert_eq!(by_name, sites);
    let gdb = gdb_line_start(&f.binary, &format!("shop.rs:{}", opening + 1)).unwrap();
    assert_eq!(sites[0].address, gdb);
}

#[test]
fn functions_resolve_by_path_and_by_c_name() {
    let f = common::shop_debug();
    let info = DebugInfo::load(&f.binary).unwrap();
    assert_eq!(
        info.resolve("shop::shadow").unwrap(),
        info.resolve("shadow").unwrap()
    );
    assert_eq!(
        info.resolve("Cart::add").unwrap(),
        info.resolve("shop::Cart::add").unwrap()
    );
    let c = common::points_o0();
    let info = DebugInfo::load(&c.binary).unwrap();
    let sites = info.resolve("scale").unwrap();
    assert_eq!(sites.len(), 1);
    assert_eq!(sites[0].line, c.line("scale_sx"));
    assert_eq!(sites[0].functions, ["scale"]);
}

#[test]
fn an_inlined_line_resolves_to_every_copy() {
    // In the release build `Cart::new` is inlined into main: its line resolves to code in
    // main, with the inline chain naming both.
    let f = common::shop_release();
    let info = DebugInfo::load(&f.binary).unwrap();
    let line = f.line("add_push") - 13; // `Cart {` in `Cart::new`
    let sites = info.resolve(&format!("shop.rs:{line}")).unwrap();
    assert!(!sites.is_empty());
    for s in &sites {
        assert_eq!(
            s.functions.last().map(String::as_str),
            Some("shop::main"),
            "{s:?}"
        );
        assert!(s.functions.iter().any(|f| f == "shop::Cart::new"), "{s:?}");
    }
}

#[test]
fn a_trait_impl_method_resolves_by_its_demangled_name() {
    let f = common::shop_debug();
    let info = DebugInfo::load(&f.binary).unwrap();
    let sites = info
        .resolve("<shop::Item as core::fmt::Display>::fmt")
        .unwrap();
    assert_eq!(sites.len(), 1, "{sites:?}");
    assert_eq!(sites[0].line, f.line("item_fmt"));
    assert_eq!(
        sites[0].functions,
        ["<shop::Item as core::fmt::Display>::fmt"]
    );
    assert_eq!(info.resolve(&f.at("item_fmt")).unwrap(), sites);
}
