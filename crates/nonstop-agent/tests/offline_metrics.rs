//! Metric rules in offline mode: the agent aggregates hits into series and writes them in
//! Prometheus text format to `NONSTOP_OUT.prom`; every expected number is computed here
//! from the fixture's formulas (round `n` weighs `7 n + 3` g, size by `n % 3`, spare `n % 4`).

mod common;

use common::{Build, Run, build_fixture, marks, run_plain, run_with_rules};

const ROUNDS: u64 = 90;

fn grams(n: u64) -> u64 {
    7 * n + 3
}

fn run(rules: serde_json::Value) -> Run {
    let program = build_fixture("meter.rs", Build::Debug);
    let rounds = ROUNDS.to_string();
    let run = run_with_rules(
        &program,
        &[&rounds],
        &rules.to_string(),
        &[("NONSTOP_SERVICE", "meter")],
    );
    assert!(run.output.status.success(), "{}", run.stderr());
    // The program computes and prints exactly what it does without the agent.
    assert_eq!(
        run.stdout(),
        String::from_utf8_lossy(&run_plain(&program, &[&rounds]).stdout)
    );
    run
}

fn at() -> String {
    format!("meter.rs:{}", marks("meter.rs")["weigh"])
}

/// The value of the sample written exactly as `series` (name and labels) in `text`.
fn sample(text: &str, series: &str) -> String {
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
        .to_owned()
}

fn metrics(run: &Run) -> &str {
    run.metrics
        .as_deref()
        .unwrap_or_else(|| panic!("no metrics file; stderr: {}", run.stderr()))
}

#[test]
fn a_conditional_count_equals_the_number_of_matching_rounds() {
    // Alone on its line, the condition is decided in the trap path.
    let run = run(serde_json::json!([
        {"id": "fives", "at": at(), "action": "metric", "when": "n % 5 == 1 && grams > 20",
         "metric": {"kind": "count", "name": "parcels.fives"}},
    ]));
    let expected = (0..ROUNDS).filter(|n| n % 5 == 1 && grams(*n) > 20).count();
    assert_eq!(expected, 17);
    let text = metrics(&run);
    assert_eq!(
        sample(text, "parcels_fives_total{service=\"meter\"}"),
        expected.to_string()
    );
    assert!(
        text.contains("# TYPE parcels_fives_total counter\n"),
        "{text}"
    );
    let status = run.status_of("fives").unwrap();
    assert_eq!(status["status"], "armed", "{status}");
    assert_eq!(status["hits"], expected as u64, "{status}");
    // Metric hits produce no responses.
    assert!(run.responses.is_empty());
}

#[test]
fn a_histogram_and_a_gauge_of_real_values_are_exact() {
    let run = run(serde_json::json!([
        {"id": "weight", "at": at(), "action": "metric",
         "metric": {"kind": "histogram", "name": "parcel_grams", "value": "grams"}},
        {"id": "last", "at": at(), "action": "metric",
         "metric": {"kind": "gauge", "name": "last_parcel_kg", "value": "grams / 1000.0"}},
    ]));
    for id in ["weight", "last"] {
        let status = run.status_of(id).unwrap();
        assert_eq!(status["status"], "armed", "{status}");
        assert_eq!(status["hits"], ROUNDS, "{status}");
    }
    let text = metrics(&run);
    let all: Vec<u64> = (0..ROUNDS).map(grams).collect();
    let le = |bound: u64| all.iter().filter(|g| **g <= bound).count().to_string();
    let h = |s: &str| sample(text, &format!("parcel_grams{s}"));
    assert_eq!(h("_count{service=\"meter\"}"), ROUNDS.to_string());
    assert_eq!(
        h("_sum{service=\"meter\"}"),
        all.iter().sum::<u64>().to_string()
    );
    assert_eq!(h("_bucket{service=\"meter\",le=\"10\"}"), le(10));
    assert_eq!(h("_bucket{service=\"meter\",le=\"250\"}"), le(250));
    assert_eq!(h("_bucket{service=\"meter\",le=\"500\"}"), le(500));
    assert_eq!(
        h("_bucket{service=\"meter\",le=\"+Inf\"}"),
        ROUNDS.to_string()
    );
    assert_eq!(
        (le(10), le(250), le(500)),
        ("2".into(), "36".into(), "72".into())
    );
    let last = grams(ROUNDS - 1) as f64 / 1000.0;
    assert_eq!(
        sample(text, "last_parcel_kg{service=\"meter\"}"),
        format!("{last}")
    );
    assert_eq!(last, 0.626);
}

#[test]
fn tags_split_the_count_into_one_series_per_value() {
    let run = run(serde_json::json!([
        {"id": "sizes", "at": at(), "action": "metric",
         "metric": {"kind": "count", "name": "parcels", "tags": {"size": "size", "lane": "n % 3"}}},
    ]));
    let text = metrics(&run);
    for (lane, size) in [(0, "Small"), (1, "Medium"), (2, "Large")] {
        let expected = (0..ROUNDS).filter(|n| n % 3 == lane).count();
        assert_eq!(
            sample(
                text,
                &format!("parcels_total{{lane=\"{lane}\",service=\"meter\",size=\"{size}\"}}")
            ),
            expected.to_string(),
            "{text}"
        );
    }
    assert_eq!(text.matches("parcels_total{").count(), 3, "{text}");
}

#[test]
fn max_hits_stops_a_metric_rule_at_exactly_n() {
    let run = run(serde_json::json!([
        {"id": "first", "at": at(), "action": "metric", "max_hits": 7,
         "metric": {"kind": "count", "name": "first_parcels"}},
    ]));
    assert_eq!(
        sample(metrics(&run), "first_parcels_total{service=\"meter\"}"),
        "7"
    );
    let status = run.status_of("first").unwrap();
    assert_eq!(status["status"], "done", "{status}");
    assert_eq!(status["hits"], 7, "{status}");
}

#[test]
fn an_unknown_variable_in_the_value_is_an_error_naming_what_exists() {
    let run = run(serde_json::json!([
        {"id": "typo", "at": at(), "action": "metric",
         "metric": {"kind": "gauge", "name": "g", "value": "gram * 2"}},
        {"id": "nokind", "at": at(), "action": "metric",
         "metric": {"kind": "histogram", "name": "h"}},
        {"id": "text", "at": at(), "action": "metric",
         "metric": {"kind": "gauge", "name": "g2", "value": "\"a\""}},
    ]));
    let message = |id: &str| {
        let status = run.status_of(id).unwrap();
        assert_eq!(status["status"], "error", "{status}");
        status["message"].as_str().unwrap().to_owned()
    };
    let typo = message("typo");
    assert!(typo.contains("unknown variable `gram`"), "{typo}");
    assert!(typo.contains("grams"), "{typo}");
    assert!(
        message("nokind").contains("a histogram metric needs a value expression"),
        "{}",
        message("nokind")
    );
    assert!(
        message("text").contains("a metric value must be a number"),
        "{}",
        message("text")
    );
    assert!(
        run.stderr().contains("rule typo: error"),
        "{}",
        run.stderr()
    );
}

#[test]
fn a_division_by_zero_at_hit_time_is_counted_and_not_recorded() {
    let run = run(serde_json::json!([
        {"id": "ratio", "at": at(), "action": "metric",
         "metric": {"kind": "histogram", "name": "grams_per_spare", "value": "grams / spare"}},
    ]));
    let (zero, rest): (Vec<u64>, Vec<u64>) = (0..ROUNDS).partition(|n| n % 4 == 0);
    let text = metrics(&run);
    assert_eq!(
        sample(text, "grams_per_spare_count{service=\"meter\"}"),
        rest.len().to_string()
    );
    let sum: u64 = rest.iter().map(|n| grams(*n) / (n % 4)).sum();
    assert_eq!(
        sample(text, "grams_per_spare_sum{service=\"meter\"}"),
        sum.to_string()
    );
    let status = run.status_of("ratio").unwrap();
    assert_eq!(status["status"], "armed", "{status}");
    assert_eq!(status["hits"], rest.len() as u64, "{status}");
    let message = status["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(&format!(
            "{} hits not recorded because the metric's value or a tag could not be evaluated; \
             last: division by zero in `grams / spare`",
            zero.len()
        )),
        "{status}"
    );
}
