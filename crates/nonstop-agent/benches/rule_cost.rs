//! What a hit costs end to end with the real agent, per action: the program's time per call
//! and the agent thread's CPU time per recorded hit.
//!
//! The fixture `tests/fixtures/hot_loop.rs` (built with `-C opt-level=2`) calls a small
//! function in a loop and prints the loop's time and the CPU time of the `nonstop-agent`
//! thread (from `/proc/self/task/*/schedstat`, from the loop's start until the agent is
//! idle again; the agent's idle rate, measured with no rule, is taken off). It runs without the agent, with the agent (`LD_PRELOAD`, offline
//! mode) and no rule, and with one rule on the hot line per case. Every rule's `rate` is
//! `1000000/s`, so the rule's own gate is not the limit; the engine's global CPU budget (1 %
//! of a core of trap-handler time per second, DESIGN.md; it has no setting) is left as it is.
//!
//! Two modes: **flat out** (200,000 back-to-back calls: every call traps, the budget drops
//! most hits, as it would in a production hot path) and **paced** (2,000 calls 500 µs
//! apart, only the calls timed: the trap rate stays inside the budget, so the numbers are
//! the cost of a recorded hit).
//!
//! `cargo bench -p nonstop-agent --bench rule_cost` (about a minute and a half).

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Build, build_fixture, marks, run_plain, run_with_rules};
use serde_json::{Value, json};
use std::path::Path;

/// Runs of each case; the table shows medians.
const RUNS: usize = 3;

/// A way to run the loop.
struct Mode {
    name: &'static str,
    calls: u64,
    gap_us: u64,
}

const MODES: [Mode; 2] = [
    Mode {
        name: "flat out: 200,000 calls back to back",
        calls: 200_000,
        gap_us: 0,
    },
    Mode {
        name: "paced: 2,000 calls 500 µs apart (inside the CPU budget)",
        calls: 2_000,
        gap_us: 500,
    },
];

/// One row of the table: no agent (`rule` None, `agent` false), or the agent with at most
/// one rule.
struct Case {
    name: &'static str,
    agent: bool,
    rule: Option<Value>,
}

fn cases(at: &str) -> Vec<Case> {
    let rule = |extra: Value| {
        let mut r = json!({"id": "bench", "at": at, "rate": "1000000/s", "max_hits": 100_000_000});
        if let (Some(r), Value::Object(extra)) = (r.as_object_mut(), extra) {
            r.extend(extra);
        }
        Some(r)
    };
    vec![
        Case {
            name: "no agent",
            agent: false,
            rule: None,
        },
        Case {
            name: "agent, no rule",
            agent: true,
            rule: None,
        },
        Case {
            name: "metric count",
            agent: true,
            rule: rule(json!({"action": "metric",
                "metric": {"kind": "count", "name": "hot_calls"}})),
        },
        Case {
            name: "metric histogram + tag",
            agent: true,
            rule: rule(json!({"action": "metric",
                "metric": {"kind": "histogram", "name": "hot_grams", "value": "grams",
                           "tags": {"size": "size"}}})),
        },
        Case {
            name: "log",
            agent: true,
            rule: rule(json!({"action": "log", "template": "served {n}: {grams} g, {size:?}"})),
        },
        Case {
            name: "snapshot",
            agent: true,
            rule: rule(json!({"action": "snapshot"})),
        },
        Case {
            name: "count, condition false",
            agent: true,
            rule: rule(json!({"action": "metric", "when": "grams == 1",
                "metric": {"kind": "count", "name": "never"}})),
        },
    ]
}

/// What one run measured.
#[derive(Debug, Clone, Copy)]
struct Measure {
    elapsed_ns: u64,
    recorded: u64,
    dropped: u64,
    /// Agent-thread CPU ns over the loop and the draining after it, and that span's length.
    agent_cpu_ns: Option<(u64, u64)>,
}

/// The value of `KEY N` in the fixture's output.
fn field(stdout: &str, key: &str) -> Option<u64> {
    let prefix = format!("{key} ");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// What reached the outputs: the sum of a metric's samples in the `.prom` text (a count's
/// `_total`, a histogram's `_count`), else the number of responses.
fn delivered(case: &Case, metrics: Option<&str>, responses: usize) -> u64 {
    let Some(rule) = &case.rule else { return 0 };
    if rule["action"] != "metric" {
        return responses as u64;
    }
    let name = rule["metric"]["name"].as_str().unwrap_or_default();
    let family = match rule["metric"]["kind"].as_str() {
        Some("histogram") => format!("{name}_count{{"),
        _ => format!("{name}_total{{"),
    };
    metrics
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(&family))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}

fn run_once(program: &Path, mode: &Mode, case: &Case, expected_total: &str) -> Measure {
    let args = [mode.calls.to_string(), mode.gap_us.to_string()];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    if !case.agent {
        let out = run_plain(program, &args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        return Measure {
            elapsed_ns: field(&stdout, "elapsed_ns").expect("the fixture prints elapsed_ns"),
            recorded: 0,
            dropped: 0,
            agent_cpu_ns: None,
        };
    }
    let rules = Value::Array(case.rule.iter().cloned().collect()).to_string();
    let run = run_with_rules(program, &args, &rules, &[("NONSTOP_SERVICE", "hot")]);
    let stdout = run.stdout();
    assert!(
        run.output.status.success(),
        "{}: {}",
        case.name,
        run.stderr()
    );
    // The agent must not change what the program computes.
    assert_eq!(stdout.lines().next(), Some(expected_total), "{}", case.name);
    let (recorded, dropped) = match run.status_of("bench") {
        Some(s) => {
            let state = s["status"].as_str().unwrap_or_default();
            assert!(
                ["armed", "rate-limited"].contains(&state),
                "{}: the rule is not working: {s}",
                case.name
            );
            (
                s["hits"].as_u64().unwrap_or(0),
                s["dropped"].as_u64().unwrap_or(0),
            )
        }
        None => (0, 0),
    };
    let out = delivered(case, run.metrics.as_deref(), run.responses.len());
    if out != recorded {
        eprintln!(
            "  note: {}: the status says {recorded} hits, the outputs hold {out}",
            case.name
        );
    }
    let agent_cpu_ns = field(&stdout, "agent_cpu_ns").zip(field(&stdout, "window_ns"));
    assert!(
        agent_cpu_ns.is_some(),
        "{}: the fixture found no nonstop-agent thread:\n{stdout}",
        case.name
    );
    Measure {
        elapsed_ns: field(&stdout, "elapsed_ns").expect("the fixture prints elapsed_ns"),
        recorded,
        dropped,
        agent_cpu_ns,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs it with no argument, and
    // then there is nothing to measure.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let program = build_fixture("hot_loop.rs", Build::Release);
    let at = format!("hot_loop.rs:{}", marks("hot_loop.rs")["hot"]);
    let cases = cases(&at);
    for mode in &MODES {
        let expected = run_plain(&program, &[&mode.calls.to_string(), "0"]);
        let expected = String::from_utf8_lossy(&expected.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        println!("\n{} (median of {RUNS} runs)", mode.name);
        println!(
            "| {:<24} | {:>8} | {:>9} | {:>8} | {:>8} | {:>12} | {:>12} |",
            "case", "ns/call", "+ns/call", "recorded", "dropped", "agent ms CPU", "agent µs/hit"
        );
        println!(
            "| {:-<24} | {:->8} | {:->9} | {:->8} | {:->8} | {:->12} | {:->12} |",
            "", "", "", "", "", "", ""
        );
        let mut baseline = None;
        // The agent thread's CPU per second when it has nothing to do (`agent, no rule`),
        // taken off each case's agent CPU over its span.
        let mut idle_per_ns = 0.0;
        for case in &cases {
            // Each case's runs back to back: the fixture's pages and the agent's debug info
            // are as warm for one case as for the next.
            let runs: Vec<Measure> = (0..RUNS)
                .map(|_| run_once(&program, mode, case, &expected))
                .collect();
            let per_call = median(
                runs.iter()
                    .map(|m| m.elapsed_ns as f64 / mode.calls as f64)
                    .collect(),
            );
            let base = *baseline.get_or_insert(per_call);
            let recorded = median(runs.iter().map(|m| m.recorded as f64).collect());
            let dropped = median(runs.iter().map(|m| m.dropped as f64).collect());
            if case.agent && case.rule.is_none() {
                idle_per_ns = median(
                    runs.iter()
                        .filter_map(|m| m.agent_cpu_ns)
                        .map(|(cpu, span)| cpu as f64 / span as f64)
                        .collect(),
                );
            }
            let net_cpu: Vec<f64> = runs
                .iter()
                .filter_map(|m| m.agent_cpu_ns)
                .map(|(cpu, span)| (cpu as f64 - idle_per_ns * span as f64).max(0.0))
                .collect();
            let (cpu_ms, per_hit) = if !case.agent {
                ("-".to_owned(), "-".to_owned())
            } else if case.rule.is_none() {
                (format!("{:.2}/s idle", idle_per_ns * 1e3), "-".to_owned())
            } else {
                let per_hit: Vec<f64> = runs
                    .iter()
                    .zip(&net_cpu)
                    .filter(|(m, _)| m.recorded > 0)
                    .map(|(m, cpu)| cpu / m.recorded as f64 / 1000.0)
                    .collect();
                (
                    format!("{:.2}", median(net_cpu) / 1e6),
                    if per_hit.is_empty() {
                        "-".to_owned()
                    } else {
                        format!("{:.2}", median(per_hit))
                    },
                )
            };
            println!(
                "| {:<24} | {:>8.1} | {:>9.1} | {:>8} | {:>8} | {:>12} | {:>12} |",
                case.name,
                per_call,
                per_call - base,
                recorded,
                dropped,
                cpu_ms,
                per_hit
            );
        }
    }
    println!(
        "\n+ns/call: time per call minus the no-agent row's. agent ms CPU: the nonstop-agent \
         thread's CPU time (schedstat) from the loop's start until it is idle again, less its \
         idle rate (the `agent, no rule` row, ms per s) over that span; agent µs/hit: that \
         divided by recorded hits."
    );
}
