//! `resolve` and `variables_at` never panic, whatever they are given.

mod common;

use nonstop_debuginfo::DebugInfo;
use proptest::prelude::*;
use std::sync::OnceLock;

fn info() -> &'static DebugInfo {
    static I: OnceLock<DebugInfo> = OnceLock::new();
    I.get_or_init(|| DebugInfo::load(&common::shop_debug().binary).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    #[test]
    fn any_string(s in ".{0,80}") {
        let _ = info().resolve(&s);
    }

    #[test]
    fn file_line_shapes(file in "[a-z/._<>:]{0,20}", line in any::<u64>()) {
        let _ = info().resolve(&format!("{file}:{line}"));
        let _ = info().resolve(&format!("{file}::{file}"));
    }

    #[test]
    fn any_address(addr in any::<u64>(), near in 0x17000u64..0x18500) {
        let _ = info().variables_at(addr);
        let _ = info().variables_at(near);
    }
}
