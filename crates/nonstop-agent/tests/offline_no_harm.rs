//! The agent never harms the program: its output is byte-identical with and without nonstop,
//! with a probe on every line that has code, and whatever the input.

mod common;

use common::{Build, build_fixture, fixture_source, marks, run_plain, run_with_rules, tempdir};

#[test]
fn output_is_identical_with_a_probe_on_every_line() {
    for build in [Build::Debug, Build::Release] {
        let program = build_fixture("orders.rs", build);
        let lines = std::fs::read_to_string(fixture_source("orders.rs"))
            .unwrap()
            .lines()
            .count();
        let rules: Vec<serde_json::Value> = (1..=lines)
            .map(|l| {
                serde_json::json!({"id": format!("l{l}"), "at": format!("orders.rs:{l}"),
                    "action": "snapshot", "rate": "100000/s", "max_hits": 1000000})
            })
            .collect();
        let run = run_with_rules(
            &program,
            &["4"],
            &serde_json::to_string(&rules).unwrap(),
            &[],
        );
        let plain = run_plain(&program, &["4"]);
        assert!(run.output.status.success(), "{build:?}: {}", run.stderr());
        assert_eq!(
            run.stdout(),
            String::from_utf8_lossy(&plain.stdout),
            "{build:?}"
        );
        let armed = run.working_rules();
        assert!(
            armed >= 30,
            "{build:?}: only {armed} lines armed; stderr: {}",
            run.stderr()
        );
        assert!(!run.responses.is_empty(), "{build:?}: no responses");
        let blank = run.status_of("l1").unwrap();
        assert_eq!(
            blank["status"], "error",
            "a comment line has no code: {blank}"
        );
    }
}

#[test]
fn a_rules_file_that_is_not_json_is_reported_and_the_program_runs_on() {
    let program = build_fixture("orders.rs", Build::Debug);
    let run = run_with_rules(&program, &["2"], "{ this is not json", &[]);
    assert!(run.output.status.success());
    assert_eq!(
        run.stdout(),
        String::from_utf8_lossy(&run_plain(&program, &["2"]).stdout)
    );
    assert!(
        run.stderr().contains("is not a JSON array of rules"),
        "stderr: {}",
        run.stderr()
    );
    assert!(run.responses.is_empty());
}

#[test]
fn a_rule_at_a_line_without_code_gets_an_error_status_naming_nearby_lines() {
    let program = build_fixture("orders.rs", Build::Debug);
    let run = run_with_rules(
        &program,
        &["1"],
        r#"[{"id":"blank","at":"orders.rs:2","action":"snapshot"},{"id":"nofile","at":"nowhere.rs:5","action":"snapshot"}]"#,
        &[],
    );
    assert!(run.output.status.success());
    let blank = run.status_of("blank").unwrap();
    assert_eq!(blank["status"], "error");
    assert!(
        blank["message"].as_str().unwrap().contains("no code at"),
        "{blank}"
    );
    let nofile = run.status_of("nofile").unwrap();
    assert_eq!(nofile["status"], "error");
    assert!(
        nofile["message"].as_str().unwrap().contains("nowhere.rs"),
        "{nofile}"
    );
}

#[test]
fn a_log_rule_naming_an_unknown_variable_lists_the_ones_in_scope() {
    let program = build_fixture("orders.rs", Build::Debug);
    let line = marks("orders.rs")["describe"];
    let rules =
        format!(r#"[{{"id":"bad","at":"orders.rs:{line}","action":"log","template":"{{nope}}"}}]"#);
    let run = run_with_rules(&program, &["1"], &rules, &[]);
    let status = run.status_of("bad").unwrap();
    assert_eq!(status["status"], "error");
    let message = status["message"].as_str().unwrap();
    assert!(message.contains("unknown variable `nope`"), "{message}");
    assert!(message.contains("label"), "{message}");
}

#[test]
fn a_binary_without_debug_info_runs_unharmed_and_says_why() {
    let program = build_fixture("orders.rs", Build::Debug);
    let stripped = tempdir().join("orders-stripped");
    let ok = std::process::Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&program)
        .status()
        .unwrap();
    assert!(ok.success());
    let run = run_with_rules(
        &stripped,
        &["2"],
        r#"[{"at":"orders.rs:60","action":"snapshot"}]"#,
        &[],
    );
    assert!(run.output.status.success());
    assert_eq!(
        run.stdout(),
        String::from_utf8_lossy(&run_plain(&program, &["2"]).stdout)
    );
    assert!(
        run.stderr().contains("no debug info"),
        "stderr: {}",
        run.stderr()
    );
}

#[test]
fn disabled_agent_does_nothing() {
    let program = build_fixture("orders.rs", Build::Debug);
    let line = marks("orders.rs")["price"];
    let rules = format!(r#"[{{"at":"orders.rs:{line}","action":"snapshot"}}]"#);
    let run = run_with_rules(&program, &["2"], &rules, &[("NONSTOP_DISABLE", "1")]);
    assert!(run.responses.is_empty());
    assert_eq!(
        run.stdout(),
        String::from_utf8_lossy(&run_plain(&program, &["2"]).stdout)
    );
}

/// The agent's environment without the fast path (`NONSTOP_FAST_PATH=0`) and with it (the
/// default).
const PATHS: [&[(&str, &str)]; 2] = [&[("NONSTOP_FAST_PATH", "0")], &[]];

#[test]
fn a_program_with_its_own_sigtrap_handler_keeps_its_traps_and_ours_work() {
    for (build, env) in [Build::Debug, Build::Release]
        .into_iter()
        .flat_map(|b| PATHS.map(|e| (b, e)))
    {
        let program = build_fixture("traps.c", build);
        let line = marks("traps.c")["area"];
        let rules = format!(
            r#"[{{"id":"area","at":"traps.c:{line}","action":"snapshot","rate":"1000/s"}}]"#
        );
        let run = run_with_rules(&program, &[], &rules, env);
        let plain = run_plain(&program, &[]);
        assert!(
            run.output.status.success(),
            "{build:?} {env:?}: {}",
            run.stderr()
        );
        // With the fast path on, the probe takes it (and the program's int3s still trap).
        let fast = run.status_of("area").unwrap().get("fast_path").cloned();
        let want = env.is_empty().then(|| serde_json::json!("fast path: yes"));
        assert_eq!(fast, want, "{build:?} {env:?}");
        assert_eq!(run.stdout(), String::from_utf8_lossy(&plain.stdout));
        assert!(run.stdout().contains("sum 80 traps 3"), "{}", run.stdout());
        assert_eq!(run.responses.len(), 3, "{build:?}: {}", run.stderr());
        let scales: Vec<_> = run
            .responses
            .iter()
            .map(|r| nonstop_debuginfo::debug_string(r.locals.get("scale").unwrap()))
            .collect();
        assert_eq!(scales, vec!["2", "2", "2"]);
    }
}

#[test]
fn panics_unwinding_through_probed_frames_and_a_forked_child_run_as_without_nonstop() {
    let lines = std::fs::read_to_string(fixture_source("unwinds.rs"))
        .unwrap()
        .lines()
        .count();
    let rules: Vec<serde_json::Value> = (1..=lines)
        .map(|l| {
            serde_json::json!({"id": format!("l{l}"), "at": format!("unwinds.rs:{l}"),
                "action": "snapshot", "rate": "100000/s", "max_hits": 1000000})
        })
        .collect();
    let rules = serde_json::to_string(&rules).unwrap();
    let share = format!("l{}", marks("unwinds.rs")["share"]);
    for (build, env) in [Build::Debug, Build::Release]
        .into_iter()
        .flat_map(|b| PATHS.map(|e| (b, e)))
    {
        let program = build_fixture("unwinds.rs", build);
        let run = run_with_rules(&program, &[], &rules, env);
        let plain = run_plain(&program, &[]);
        assert!(
            run.output.status.success(),
            "{build:?} {env:?}: {}",
            run.stderr()
        );
        assert_eq!(
            run.stdout(),
            String::from_utf8_lossy(&plain.stdout),
            "{build:?} {env:?}"
        );
        assert!(
            run.stdout().contains("child status 0x300"),
            "{}",
            run.stdout()
        );
        // The parent's two rounds of 9 calls hit the line (the 6 that panic only at -O0,
        // where the division comes before the check); the child's hits are not taken.
        let hits = run.responses.iter().filter(|r| r.rule == share).count();
        let want = if build == Build::Debug { 18 } else { 12 };
        assert_eq!(hits, want, "{build:?} {env:?}: {}", run.stderr());
        let fast = run.status_of(&share).unwrap().get("fast_path").cloned();
        let want = env.is_empty().then(|| serde_json::json!("fast path: yes"));
        assert_eq!(fast, want, "{build:?} {env:?}");
    }
}
