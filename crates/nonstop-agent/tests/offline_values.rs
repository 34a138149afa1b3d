//! The agent in offline mode captures exact values: what it reports at a marked line equals
//! what the program itself prints there, in debug and in release-with-debuginfo builds.

mod common;

use common::{Build, build_fixture, marks, printed, run_plain, run_with_rules};
use nonstop_debuginfo::debug_string;

fn rules_for_marks(file: &str, rate: &str) -> String {
    let rules: Vec<serde_json::Value> = marks(file)
        .iter()
        .map(|(name, line)| {
            serde_json::json!({"id": name, "at": format!("{file}:{line}"), "action": "snapshot", "rate": rate})
        })
        .collect();
    serde_json::to_string(&rules).unwrap()
}

fn check_values(build: Build) {
    check_values_of(&build_fixture("orders.rs", build), build);
}

/// Checks the values at every mark against what the program prints, and returns each
/// response's stack as `function file:line` lines.
fn check_values_of(program: &std::path::Path, build: Build) -> Vec<Vec<String>> {
    let run = run_with_rules(
        program,
        &["3"],
        &rules_for_marks("orders.rs", "1000/s"),
        &[],
    );
    assert!(
        run.output.status.success(),
        "fixture failed: {}",
        run.stderr()
    );
    for mark in ["price", "describe"] {
        let status = run
            .status_of(mark)
            .unwrap_or_else(|| panic!("no status for {mark}: {}", run.stderr()));
        assert_eq!(status["status"], "armed", "{mark}: {status}");
        let expected = printed(&run.stdout(), mark);
        let got: Vec<_> = run.responses.iter().filter(|r| r.rule == mark).collect();
        assert_eq!(
            got.len(),
            expected.len(),
            "{mark}: one response per execution; stderr: {}",
            run.stderr()
        );
        for (response, printed) in got.iter().zip(&expected) {
            assert_eq!(response.location.line, marks("orders.rs")[mark]);
            let mut available = 0;
            for (var, text) in printed {
                let value = response.locals.get(var).unwrap_or_else(|| {
                    panic!("{mark}: `{var}` missing from {:?}", response.locals)
                });
                // Optimized code may keep no location for a variable at this address (or
                // only its value at function entry): the agent must say so, never guess.
                if build == Build::Release
                    && let Some(why) = &value.error
                {
                    assert!(
                        why == "optimized out" || why.starts_with("unavailable here"),
                        "{mark}: `{var}`: {why}"
                    );
                    continue;
                }
                available += 1;
                assert_eq!(
                    &debug_string(value),
                    text,
                    "{mark}: `{var}` in a {build:?} build: {value:?}"
                );
            }
            assert!(
                available * 2 >= printed.len(),
                "{mark}: only {available} of {} variables available in a {build:?} build",
                printed.len()
            );
            assert!(!response.frames.is_empty());
            assert_eq!(response.frames[0].line, Some(marks("orders.rs")[mark]));
        }
    }
    // The program's own output is unchanged by the agent.
    assert_eq!(
        run.stdout(),
        String::from_utf8_lossy(&run_plain(program, &["3"]).stdout)
    );
    run.responses
        .iter()
        .map(|r| {
            r.frames
                .iter()
                .map(|f| {
                    let file = f.file.as_deref().unwrap_or("?");
                    format!("{} {file}:{:?}", f.function, f.line)
                })
                .collect()
        })
        .collect()
}

/// `orders.rs` built by rustc with split debug info, into a folder of its own: `unpacked`
/// leaves one `.dwo` per codegen unit beside the program, `packed` one `PROGRAM.dwp`.
fn build_split(build: Build, split: &str) -> std::path::PathBuf {
    let dir = nonstop_testkit::target_dir()
        .join("nonstop-split")
        .join(format!("{build:?}-{split}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let opt = match build {
        Build::Debug => "opt-level=0",
        Build::Release => "opt-level=2",
    };
    let program = dir.join("orders");
    let out = nonstop_testkit::tool::command("rustc")
        .current_dir(&dir)
        .args(["--edition", "2021", "-C", "debuginfo=2", "-C", opt])
        .arg(format!("-Csplit-debuginfo={split}"))
        .arg("-o")
        .arg(&program)
        .arg(common::fixture_source("orders.rs"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let wanted = if split == "packed" { ".dwp" } else { ".dwo" };
    assert!(
        files.iter().any(|f| f.ends_with(wanted)),
        "rustc -Csplit-debuginfo={split} wrote no {wanted}: {files:?}"
    );
    program
}

#[test]
fn snapshot_values_are_the_same_with_split_debug_info() {
    for build in [Build::Debug, Build::Release] {
        let plain = check_values_of(&build_fixture("orders.rs", build), build);
        for split in ["unpacked", "packed"] {
            let program = build_split(build, split);
            // The stacks too, inlined frames included (they are in the split files).
            assert_eq!(check_values_of(&program, build), plain, "{build:?} {split}");
            let _ = std::fs::remove_dir_all(program.parent().unwrap());
        }
    }
}

#[test]
fn snapshot_values_equal_what_the_debug_build_prints() {
    check_values(Build::Debug);
}

#[test]
fn snapshot_values_equal_what_the_release_build_prints() {
    check_values(Build::Release);
}

#[test]
fn log_rule_renders_the_programs_values() {
    let program = build_fixture("orders.rs", Build::Debug);
    let line = marks("orders.rs")["describe"];
    let rules = format!(
        r#"[{{"id":"greet","at":"orders.rs:{line}","action":"log","template":"{{label}} total={{total}} vip={{vip}} code={{code:?}}"}}]"#
    );
    let run = run_with_rules(&program, &["3"], &rules, &[]);
    let messages: Vec<_> = run
        .responses
        .iter()
        .filter_map(|r| r.message.clone())
        .collect();
    assert_eq!(
        messages,
        vec![
            "Ann#7 total=4050 vip=true code=Some('A')",
            "Bob#8 total=4950 vip=false code=Some('B')",
            "Cyd#9 total=3825 vip=false code=Some('C')",
        ],
        "stderr: {}",
        run.stderr()
    );
}

#[test]
fn a_conditional_snapshot_fires_exactly_for_the_matching_executions() {
    let program = build_fixture("orders.rs", Build::Debug);
    let line = marks("orders.rs")["price"];
    let rules = serde_json::json!([
        {"id": "coupon", "at": format!("orders.rs:{line}"), "action": "snapshot", "rate": "1000/s",
         "when": "order.coupon.is_some() && order.customer.name != \"Ann\""},
        {"id": "big", "at": format!("orders.rs:{line}"), "action": "log", "template": "{total}",
         "when": "total > 4500"},
        {"id": "ratio", "at": format!("orders.rs:{line}"), "action": "log", "template": "{subtotal / discount}",
         "when": "subtotal / discount > 1"},
    ]);
    let run = run_with_rules(&program, &["3"], &rules.to_string(), &[]);
    assert!(run.output.status.success(), "{}", run.stderr());
    let of = |rule: &str| -> Vec<_> { run.responses.iter().filter(|r| r.rule == rule).collect() };
    // Rounds: Ann (coupon), Bob (none), Cyd (coupon): only Cyd's matches.
    let coupon = of("coupon");
    assert_eq!(coupon.len(), 1, "{}", run.stderr());
    assert_eq!(debug_string(coupon[0].locals.get("total").unwrap()), "3825");
    let big: Vec<_> = of("big")
        .iter()
        .map(|r| r.message.clone().unwrap())
        .collect();
    assert_eq!(big, vec!["4950"]);
    // Bob has no discount: division by zero counts as false and is reported.
    let ratio: Vec<_> = of("ratio")
        .iter()
        .map(|r| r.message.clone().unwrap())
        .collect();
    assert_eq!(ratio, vec!["10", "6"]);
    let status = run.status_of("ratio").unwrap();
    let message = status["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("1 hits where the condition could not be evaluated"),
        "{status}"
    );
}

#[test]
fn a_condition_on_an_unknown_variable_names_the_ones_in_scope() {
    let program = build_fixture("orders.rs", Build::Debug);
    let line = marks("orders.rs")["price"];
    let rules = format!(
        r#"[{{"id":"bad","at":"orders.rs:{line}","action":"snapshot","when":"ordr.id == 1"}}]"#
    );
    let run = run_with_rules(&program, &["1"], &rules, &[]);
    assert!(run.output.status.success());
    let status = run.status_of("bad").unwrap();
    assert_eq!(status["status"], "error");
    let message = status["message"].as_str().unwrap();
    assert!(message.contains("unknown variable `ordr`"), "{message}");
    assert!(message.contains("order"), "{message}");
}

#[test]
fn conditions_decided_in_the_trap_path_select_exactly_the_matching_executions() {
    for build in [Build::Debug, Build::Release] {
        let program = build_fixture("orders.rs", build);
        let (price, describe) = (marks("orders.rs")["price"], marks("orders.rs")["describe"]);
        // One rule per line: each probe has a single user, so its condition is compiled into
        // the trap path (through references, fields and a string comparison).
        let rules = serde_json::json!([
            {"id": "bob", "at": format!("orders.rs:{price}"), "action": "log", "template": "{order.id}",
             "when": "order.customer.id == 8"},
            {"id": "big", "at": format!("orders.rs:{describe}"), "action": "log", "template": "{label}",
             "when": "total > 4000 && customer.name != \"Cyd\""},
        ]);
        let run = run_with_rules(&program, &["6"], &rules.to_string(), &[]);
        assert!(run.output.status.success(), "{build:?}: {}", run.stderr());
        let messages = |rule: &str| -> Vec<String> {
            run.responses
                .iter()
                .filter(|r| r.rule == rule)
                .map(|r| r.message.clone().unwrap())
                .collect()
        };
        // Optimized, `order` is only described by its value at function entry: the companion
        // probe at `price`'s entry recorded it, so the same executions match in both builds.
        assert_eq!(
            messages("bob"),
            vec!["101", "104"],
            "{build:?}: {}",
            run.stderr()
        );
        assert_eq!(
            messages("big"),
            vec!["Ann#7", "Bob#8", "Ann#7"],
            "{build:?}"
        );
    }
}

#[test]
fn mistakes_in_a_condition_are_refused_at_arm_time_naming_what_exists() {
    let program = build_fixture("orders.rs", Build::Debug);
    let line = marks("orders.rs")["price"];
    let cases = [
        (
            "order.custmer.id == 1",
            "`order` has no field `custmer`; its fields: id, customer, lines, coupon",
        ),
        (
            "order.customer.name > 3",
            "cannot compare a string with a number: order.customer.name > 3",
        ),
        (
            "matches(order.customer.tier, Platinum)",
            "has no variant `Platinum`; its variants: Basic, Gold, Partner",
        ),
    ];
    let rules: Vec<String> = cases
        .iter()
        .enumerate()
        .map(|(i, (when, _))| {
            serde_json::json!({"id": format!("bad-{i}"), "at": format!("orders.rs:{line}"),
                "action": "snapshot", "when": when})
            .to_string()
        })
        .collect();
    let run = run_with_rules(&program, &["3"], &format!("[{}]", rules.join(",")), &[]);
    assert!(run.output.status.success());
    for (i, (when, want)) in cases.iter().enumerate() {
        let status = run.status_of(&format!("bad-{i}")).unwrap();
        assert_eq!(status["status"], "error", "{when}");
        let message = status["message"].as_str().unwrap();
        assert!(message.contains(want), "{when}: {message}");
    }
    assert!(run.responses.is_empty(), "{:?}", run.responses);
}

#[test]
fn a_condition_through_a_null_pointer_counts_as_false_and_says_so() {
    for build in [Build::Debug, Build::Release] {
        let program = build_fixture("links.c", build);
        let line = marks("links.c")["visit"];
        // `n.next.value` reads through two pointers: `n` is NULL when i % 5 == 0, `next`
        // when i % 3 == 0. Those hits cannot decide the condition; the rest can.
        let rules = format!(
            r#"[{{"id":"deep","at":"links.c:{line}","action":"log","template":"{{i}} {{n.next.value}}","when":"n.next.value >= 0","rate":"1000/s"}}]"#
        );
        let run = run_with_rules(&program, &[], &rules, &[]);
        let plain = run_plain(&program, &[]);
        assert!(run.output.status.success(), "{build:?}: {}", run.stderr());
        assert_eq!(run.stdout(), String::from_utf8_lossy(&plain.stdout));
        let decided: Vec<i32> = (0..30).filter(|i| i % 5 != 0 && i % 3 != 0).collect();
        let logged: Vec<String> = run
            .responses
            .iter()
            .map(|r| r.message.clone().unwrap())
            .collect();
        let want: Vec<String> = decided.iter().map(|i| format!("{i} {}", i * 10)).collect();
        assert_eq!(logged, want, "{build:?}");
        let status = run.status_of("deep").unwrap();
        assert_eq!(status["status"], "armed", "{build:?}: {status}");
        let undecided = 30 - decided.len();
        let message = status["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!(
                "{undecided} hits where the condition could not be evaluated"
            )),
            "{build:?}: {message}"
        );
    }
}
