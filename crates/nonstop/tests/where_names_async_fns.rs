//! `nonstop where` inside an `async fn`: the function by its source name, and its locals
//! available through the future's state (a location that dereferences the frame's pointer).

use std::process::Command;

#[test]
fn where_names_the_async_fn_and_reads_its_locals_through_the_future() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../nonstop-agent/tests/fixtures/async_orders.rs");
    let f = nonstop_testkit::fixture::build(&src, &["-C", "debuginfo=2", "-C", "opt-level=0"]);
    let out = Command::new(env!("CARGO_BIN_EXE_nonstop"))
        .arg("where")
        .arg(&f.binary)
        .arg(f.at("handle"))
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let site = &j["sites"][0];
    assert_eq!(site["functions"][0], "async_orders::handle (async)");
    let vars = site["variables"].as_array().unwrap();
    let names: Vec<&str> = vars.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "count",
            "discounted",
            "subtotal",
            "totals",
            "order",
            "_task_context"
        ]
    );
    for name in ["discounted", "subtotal", "totals", "order"] {
        let v = vars.iter().find(|v| v["name"] == name).unwrap();
        assert_eq!(v["availability"], "available", "{v}");
        let at = v["pieces"][0]["location"].as_str().unwrap();
        assert!(
            at.starts_with("at rsp+0x") && at.contains("; deref; +0x"),
            "{name}: {at}"
        );
    }
    // The text form says the same.
    let text = Command::new(env!("CARGO_BIN_EXE_nonstop"))
        .arg("where")
        .arg(&f.binary)
        .arg(f.at("price"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("in async_orders::price (async)"), "{text}");
}
