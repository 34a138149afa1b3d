//! End to end for metric and conditional rules: the real server (`nonstop serve`), the ticker fixture under
//! the real agent (`nonstop run`), rules added with the CLI, and `GET /metrics` read as
//! Prometheus reads it, all as processes talking over loopback.
//!
//! An online agent arms rules a moment after the program starts, so the first ticks may
//! pass unprobed. To know exactly which iterations a rule sees, the rules' conditions take a
//! window of ticks that begins well after the current tick; the test checks that the rules
//! were armed before the window opened, and the window closes well before the program ends,
//! so the agent has reported its final counts while still running.

mod ticker;

use std::ops::Range;
use std::time::{Duration, Instant};
use ticker::{Program, Server, expected_output, free_port, tmp, wait_for_agents, wait_until_armed};

/// Ticks the program runs (20 ms each).
const TICKS: u64 = 800;
/// Ticks between the tick seen when the rules are added and the window's start: room for
/// the CLI and the agent to arm them on a loaded machine (6 s).
const LEAD: u64 = 300;
/// Ticks in the window.
const WINDOW: u64 = 150;
/// Ticks after the window until the program ends, at least.
const TAIL: u64 = 100;

/// Runs the ticker under the agent with the rules `add_rules` adds, given the window's
/// condition (`n >= START && n < END`); checks they were armed before the window opened and
/// that the program's output is unchanged. Returns the server (still up), the rules' ids and
/// the window.
fn run_with_window(
    name: &str,
    add_rules: impl FnOnce(&Server, &str) -> Vec<String>,
) -> (Server, Vec<String>, Range<u64>) {
    let server = Server::start(free_port(), &tmp(name));
    let program = Program::start(&server, TICKS, "m");
    wait_for_agents(&server, 1);
    let now = loop {
        if let Some(n) = program.current_tick() {
            break n;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (start, end) = (now + LEAD, now + LEAD + WINDOW);
    assert!(
        end + TAIL <= TICKS,
        "the program got too far ({now}) before the test began"
    );
    let rules = add_rules(&server, &format!("n >= {start} && n < {end}"));
    for rule in &rules {
        wait_until_armed(&server, rule);
    }
    let armed_at = program.current_tick().unwrap();
    assert!(
        armed_at < start,
        "the rules were armed at tick {armed_at}, after the window opened at {start}"
    );
    let (ok, out) = program.finish();
    assert!(ok, "the program failed under the agent");
    assert_eq!(
        out,
        expected_output(TICKS, "m"),
        "the program's output changed under the agent"
    );
    (server, rules, start..end)
}

/// `GET /metrics` with the admin token, as a Prometheus scrape sends it.
fn scrape(server: &Server) -> String {
    let (kind, text) = server.get("/metrics");
    assert_eq!(kind, "text/plain; version=0.0.4; charset=utf-8");
    text
}

/// Scrapes until the samples `want` (name, value) are all exported, for at most 30 s, and
/// returns the last scrape. The agent's last report leaves at the program's exit, and the
/// server may still be writing it when the program is gone: waiting for the values (rather
/// than scraping once) keeps the check exact on a loaded machine. A wrong or missing value
/// still fails, with the whole scrape to read.
fn scrape_until(server: &Server, want: &[(&str, String)]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape(server);
        let all = want
            .iter()
            .all(|(name, value)| sample(&text, name).as_deref() == Some(value.as_str()));
        if all || Instant::now() >= deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of the sample `name` in Prometheus text, if exported.
fn sample(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ').map(str::to_owned))
}

#[test]
fn a_count_and_a_histogram_at_metrics_equal_the_matching_iterations_exactly() {
    let (server, rules, window) = run_with_window("count", |server, window| {
        vec![
            server.add_rule(&[
                "--service",
                "ticker",
                "--metric",
                "ticks",
                "--when",
                &format!("n % 3 == 0 && {window}"),
            ]),
            server.add_rule(&[
                "--service",
                "ticker",
                "--metric",
                "sq=square",
                "--kind",
                "histogram",
                "--when",
                window,
            ]),
        ]
    });
    let (ticks, squares) = (&rules[0], &rules[1]);

    let matching = window.clone().filter(|n| n % 3 == 0).count();
    let sum_of_squares: u64 = window.map(|n| n * n).sum();
    let text = scrape_until(
        &server,
        &[
            ("ticks_total{service=\"ticker\"}", matching.to_string()),
            ("sq_count{service=\"ticker\"}", WINDOW.to_string()),
        ],
    );
    assert_eq!(
        sample(&text, "ticks_total{service=\"ticker\"}"),
        Some(matching.to_string()),
        "{text}"
    );
    assert_eq!(
        sample(&text, "sq_count{service=\"ticker\"}"),
        Some(WINDOW.to_string()),
        "{text}"
    );
    assert_eq!(
        sample(&text, "sq_sum{service=\"ticker\"}"),
        Some(sum_of_squares.to_string()),
        "{text}"
    );
    assert_eq!(
        sample(&text, "sq_bucket{service=\"ticker\",le=\"+Inf\"}"),
        Some(WINDOW.to_string()),
        "{text}"
    );
    // The rule's hits, as `rules show` gives them, are the metric's count.
    let view = server.cli_json(&["rules", "show", ticks, "--json"]);
    assert_eq!(view["hits"], matching as u64);
    let listed = server.cli_json(&["rules", "list", "--json"]);
    let hits = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"]["id"] == squares.as_str())
        .map(|r| r["hits"].clone());
    assert_eq!(hits, Some(serde_json::json!(WINDOW)));
}

/// The `n` of each response, in order, and the message of each.
fn ticks_of(responses: &serde_json::Value) -> Vec<(u64, Option<String>)> {
    responses
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let n = r["locals"]["n"]["value"].as_u64();
            let message = r["message"].as_str().map(str::to_owned);
            // A log response carries no locals: its tick is the word after "tick".
            let n = n.or_else(|| {
                let word = message.as_deref()?.split(' ').nth(1)?;
                word.trim_end_matches(':').parse().ok()
            });
            (n.unwrap(), message)
        })
        .collect()
}

#[test]
fn a_conditional_snapshot_and_log_fire_exactly_for_the_matching_iterations() {
    let (server, rules, window) = run_with_window("conditional", |server, window| {
        vec![
            server.add_rule(&[
                "--service",
                "ticker",
                "--snapshot",
                "--max-hits",
                "1000",
                "--rate",
                "1000/s",
                "--when",
                &format!("n % 7 == 2 && t.label.ends_with(\"5\") == false && {window}"),
            ]),
            server.add_rule(&[
                "--service",
                "ticker",
                "--log",
                "tick {n}: {t.label:?} squared is {square}",
                "--when",
                &format!("square % 2 == 1 && {window}"),
            ]),
        ]
    });
    // The last responses leave at the program's exit and may still be on their way into the
    // store: read until as many as expected are there (or 30 s passed), then compare exactly.
    let responses = |rule: &str, expected: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got =
                ticks_of(&server.get_json(&format!("/api/v1/responses?rule={rule}&limit=1000")));
            if got.len() >= expected || Instant::now() >= deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    let want: Vec<u64> = window
        .clone()
        .filter(|n| n % 7 == 2 && !format!("m-{n}").ends_with('5'))
        .collect();
    let snapshots = responses(&rules[0], want.len());
    assert_eq!(snapshots.iter().map(|(n, _)| *n).collect::<Vec<_>>(), want);
    let want: Vec<(u64, Option<String>)> = window
        .filter(|n| (n * n) % 2 == 1)
        .map(|n| (n, Some(format!("tick {n}: \"m-{n}\" squared is {}", n * n))))
        .collect();
    let logs = responses(&rules[1], want.len());
    assert_eq!(logs, want);
}
