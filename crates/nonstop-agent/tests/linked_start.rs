//! A Rust program that links the agent and calls `nonstop_agent::start()` gets the same
//! offline service as a preloaded one (the `linked` example).

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn a_program_that_calls_start_captures_its_own_lines() {
    // Built aside: a `cargo build -p nonstop-agent` into this test's own target dir would
    // replace the rlibs other tests and doc tests link against (E0460).
    let profile_dir = nonstop_testkit::cargo_build_aside(
        "tests",
        &["-p", "nonstop-agent", "--example", "linked"],
    );
    let example = profile_dir.join("examples/linked");
    let src =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/linked.rs"))
            .unwrap();
    let line = src
        .lines()
        .position(|l| l.contains("// @mark greet"))
        .unwrap()
        + 1;
    let dir = common::tempdir();
    std::fs::write(
        dir.join("rules.json"),
        format!(r#"[{{"id":"g","at":"linked.rs:{line}","action":"log","template":"{{name}} {{times}} {{line}}"}}]"#),
    )
    .unwrap();
    let out = Command::new(&example)
        .env("NONSTOP_RULES", dir.join("rules.json"))
        .env("NONSTOP_OUT", dir.join("out.jsonl"))
        .env_remove("LD_PRELOAD")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello ann x1\nhello bob x2\n"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("agent running: true"));
    let messages: Vec<String> = std::fs::read_to_string(dir.join("out.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<nonstop_model::Response>(l)
                .unwrap()
                .message
                .unwrap()
        })
        .collect();
    assert_eq!(messages, vec!["ann 1 hello ann x1", "bob 2 hello bob x2"]);
}
