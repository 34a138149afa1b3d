//! Watch expressions of snapshot rules, evaluated by the agent over the values it captured
//! in a real program: paths keep their captured type, computations get theirs, failures
//! are errors in the value (the response still comes), and redaction holds.

mod common;

use common::{Build, build_fixture, marks, run_with_rules};
use nonstop_debuginfo::debug_string;
use nonstop_model::{Data, Value};

/// The JSON form of values (the contract; JSON does not tell `i64` 6 from `u64` 6).
fn json(values: &[&Value]) -> serde_json::Value {
    serde_json::to_value(values).unwrap()
}

/// The watch value `expr` of every response of `rule`, in hit order.
fn watched<'a>(run: &'a common::Run, rule: &str, expr: &str) -> Vec<&'a Value> {
    run.responses
        .iter()
        .filter(|r| r.rule == rule)
        .map(|r| {
            r.watch
                .get(expr)
                .unwrap_or_else(|| panic!("no watch `{expr}` in {:?}", r.watch))
        })
        .collect()
}

#[test]
fn watch_values_are_the_programs_values_and_errors_stay_in_their_watch() {
    let program = build_fixture("orders.rs", Build::Debug);
    let price = marks("orders.rs")["price"];
    let watch = [
        "order.customer.name",
        "subtotal * 2 - discount",
        "len(order.lines)",
        "order.customer.name.starts_with(\"A\")",
        "subtotal / discount",
        "order.customer.email",
        "order.customer.email.is_some()",
    ];
    let rules = serde_json::json!([
        {"id": "w", "at": format!("orders.rs:{price}"), "action": "snapshot", "rate": "1000/s",
         "watch": watch},
    ]);
    // `email` joins the names redacted inside the process.
    let run = run_with_rules(
        &program,
        &["3"],
        &rules.to_string(),
        &[("NONSTOP_REDACT", "email")],
    );
    assert!(run.output.status.success(), "{}", run.stderr());
    assert_eq!(
        run.status_of("w").unwrap()["status"],
        "armed",
        "{}",
        run.stderr()
    );
    let responses: Vec<_> = run.responses.iter().filter(|r| r.rule == "w").collect();
    // Rounds: Ann (gold, 10% off 4500), Bob (no discount, 4950), Cyd (15% coupon on 4500).
    assert_eq!(responses.len(), 3, "{}", run.stderr());
    for r in &responses {
        let order: Vec<&str> = r.watch.0.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(order, watch, "watch values keep the rule's order");
    }

    // A path: the captured value itself, with the program's type.
    let names = watched(&run, "w", "order.customer.name");
    assert_eq!(
        names.iter().map(|v| debug_string(v)).collect::<Vec<_>>(),
        ["\"Ann\"", "\"Bob\"", "\"Cyd\""]
    );
    assert!(
        names.iter().all(|v| v.type_name.ends_with("String")),
        "{names:?}"
    );

    // Computations: a value of the result's type.
    let computed = watched(&run, "w", "subtotal * 2 - discount");
    assert_eq!(
        json(&computed),
        serde_json::json!([
            {"type": "i64", "value": 8550},
            {"type": "i64", "value": 9900},
            {"type": "i64", "value": 8325},
        ])
    );
    assert_eq!(
        json(&watched(&run, "w", "len(order.lines)")),
        serde_json::json!([{"type": "u64", "value": 2}, {"type": "u64", "value": 2}, {"type": "u64", "value": 2}])
    );
    let starts = watched(&run, "w", "order.customer.name.starts_with(\"A\")");
    assert_eq!(
        json(&starts),
        serde_json::json!([
            {"type": "bool", "value": true},
            {"type": "bool", "value": false},
            {"type": "bool", "value": false},
        ])
    );

    // Bob has no discount: his division is an error in that watch only; the response has
    // its locals and other watches.
    assert_eq!(
        json(&watched(&run, "w", "subtotal / discount")),
        serde_json::json!([
            {"type": "i64", "value": 10},
            {"type": "?", "value": null, "error": "division by zero in `subtotal / discount`"},
            {"type": "i64", "value": 6},
        ])
    );
    assert_eq!(
        debug_string(responses[1].locals.get("total").unwrap()),
        "4950"
    );
    assert_eq!(
        responses[1].watch.get("len(order.lines)").unwrap().value,
        Data::Uint(2)
    );

    // Redaction holds: the secret's watch shows it redacted, and expressions cannot read it.
    for v in watched(&run, "w", "order.customer.email") {
        assert!(v.redacted, "{v:?}");
        assert_eq!(v.value, Data::Null);
    }
    for v in watched(&run, "w", "order.customer.email.is_some()") {
        assert_eq!(
            v.error.as_deref(),
            Some("`order.customer.email` is redacted: expressions cannot read redacted values")
        );
    }
    let all = serde_json::to_string(&run.responses).unwrap();
    assert!(!all.contains("ann@example.com"), "{all}");
}

#[test]
fn a_watch_on_an_unknown_variable_or_on_a_log_rule_is_an_error_status() {
    let program = build_fixture("orders.rs", Build::Debug);
    let describe = marks("orders.rs")["describe"];
    let at = format!("orders.rs:{describe}");
    let rules = serde_json::json!([
        {"id": "typo", "at": at, "action": "snapshot", "watch": ["label", "ordr.id"]},
        {"id": "logged", "at": at, "action": "log", "template": "{label}", "watch": ["total"]},
        {"id": "syntax", "at": at, "action": "snapshot", "watch": ["total +"]},
    ]);
    let run = run_with_rules(&program, &["2"], &rules.to_string(), &[]);
    assert!(run.output.status.success(), "{}", run.stderr());
    let message = |rule: &str| -> String {
        let status = run
            .status_of(rule)
            .unwrap_or_else(|| panic!("no status for {rule}"));
        assert_eq!(status["status"], "error", "{status}");
        status["message"].as_str().unwrap().to_owned()
    };
    let typo = message("typo");
    assert!(
        typo.starts_with("watch `ordr.id`: unknown variable `ordr`; in scope: "),
        "{typo}"
    );
    for name in ["customer", "total", "label", "vip", "code"] {
        assert!(typo.contains(name), "{typo}");
    }
    assert!(
        message("logged").starts_with("watch expressions belong to snapshot rules"),
        "{}",
        message("logged")
    );
    assert_eq!(
        message("syntax"),
        "bad watch expression 1 `total +`:\n\
         unexpected end of input at column 8: expected an expression\ntotal +\n       ^"
    );
    assert!(run.responses.is_empty(), "{:?}", run.responses);
    // The program ran as it does without the agent.
    assert!(run.stdout().contains("Bob#8: 4950"), "{}", run.stdout());
}
