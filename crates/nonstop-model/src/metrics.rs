//! Metric series: what an agent aggregates for `metric` rules and reports to the server.
//!
//! An agent keeps one [`MetricSeries`] per rule and combination of tag values. Every
//! report carries the series' **cumulative** values since the agent started, so a report
//! that is lost or sent twice changes nothing: the next one carries the totals again. The
//! server keeps the newest report of each (agent, series) and sums over a service's
//! agents when it exports them (`/metrics`, Prometheus text format).

use crate::rule::MetricKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Upper bounds of the histogram buckets every agent uses: 1, 2.5 and 5 times each power
/// of ten from 10⁻³ to 10⁹, then `+Inf` (the last bucket, implicit). One fixed set means
/// series from different agents add up bucket by bucket.
pub const HISTOGRAM_BOUNDS: [f64; 39] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0,
    100.0, 250.0, 500.0, 1e3, 2.5e3, 5e3, 1e4, 2.5e4, 5e4, 1e5, 2.5e5, 5e5, 1e6, 2.5e6, 5e6, 1e7,
    2.5e7, 5e7, 1e8, 2.5e8, 5e8, 1e9, 2.5e9, 5e9,
];

/// The most series one rule may have on one agent; hits with a new combination of tag
/// values past it are counted in [`MetricSeries::overflow`] of the rule's first series
/// and the rule's status says so, so a tag over an unbounded value cannot grow the agent.
pub const MAX_SERIES_PER_RULE: usize = 1000;

/// One metric series of one agent: a rule's values for one combination of tag values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSeries {
    /// The rule that records it.
    pub rule: String,
    /// The metric's name, as the rule gives it.
    pub name: String,
    /// Count, gauge or histogram.
    pub kind: MetricKind,
    /// Tag name → the tag expression's value at the hit, rendered as text.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Hits recorded (for a gauge or histogram: values observed).
    pub count: u64,
    /// Sum of the observed values (gauge, histogram; 0 for a count).
    #[serde(default)]
    pub sum: f64,
    /// The last observed value (gauge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<f64>,
    /// Histogram: values per bucket, not cumulative: `buckets[i]` counts values in
    /// `(HISTOGRAM_BOUNDS[i-1], HISTOGRAM_BOUNDS[i]]`; the last entry counts values above
    /// every bound. Empty for counts and gauges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<u64>,
    /// When the series last changed (RFC 3339, UTC): which agent's gauge is newest.
    pub updated: String,
    /// Hits not recorded because the rule already had [`MAX_SERIES_PER_RULE`] series.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub overflow: u64,
}

impl MetricSeries {
    /// Adds another agent's series of the same metric and tags into this one: counts,
    /// sums, buckets and overflow add up; `last` and `updated` come from the newer.
    pub fn merge(&mut self, other: &MetricSeries) {
        self.count = self.count.saturating_add(other.count);
        self.sum += other.sum;
        self.overflow = self.overflow.saturating_add(other.overflow);
        if other.updated > self.updated {
            self.updated = other.updated.clone();
            if other.last.is_some() {
                self.last = other.last;
            }
        }
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a = a.saturating_add(*b);
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The bucket of [`MetricSeries::buckets`] a value falls in.
pub fn bucket_of(value: f64) -> usize {
    HISTOGRAM_BOUNDS
        .iter()
        .position(|b| value <= *b)
        .unwrap_or(HISTOGRAM_BOUNDS.len())
}

/// An upper bound of the `q`-quantile (`0.5` for the median, `0.99`, …) of a histogram's
/// [`MetricSeries::buckets`]: the upper bound of the bucket holding the value of rank
/// `⌈q·n⌉`, so the true quantile is at most this (and above the bucket below). `None`
/// when the buckets hold no value; [`f64::INFINITY`] when the value is above every bound.
pub fn quantile_upper_bound(buckets: &[u64], q: f64) -> Option<f64> {
    let total = buckets.iter().fold(0u64, |t, n| t.saturating_add(*n));
    if total == 0 {
        return None;
    }
    // The rank of the value sought, 1-based, clamped to the values there are.
    let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0u64;
    for (i, n) in buckets.iter().enumerate() {
        seen = seen.saturating_add(*n);
        if seen >= rank {
            return Some(HISTOGRAM_BOUNDS.get(i).copied().unwrap_or(f64::INFINITY));
        }
    }
    Some(f64::INFINITY)
}

/// The Prometheus text exposition (format 0.0.4) of the series of several agents,
/// each given with its agent's service.
///
/// Series of one service with the same metric name and tag values add up over the
/// service's agents: counts, sums and buckets are summed, a gauge shows the value of the
/// series updated last. Each sample carries a `service` label and one label per tag.
/// Names are made valid for Prometheus (`cart.add` → `cart_add`); a count is exported as
/// a counter named `NAME_total`. When two rules export one name with different kinds,
/// the later kind's name gets the kind as a suffix (`NAME_gauge`) rather than clash.
/// Hits lost to the series cap are exported as `nonstop_metric_overflow_total`.
pub fn render_prometheus<'a>(
    series: impl IntoIterator<Item = (&'a str, &'a MetricSeries)>,
) -> String {
    use std::fmt::Write;

    // (exported family name) → kind, and (family, labels) → merged series.
    let mut kinds: BTreeMap<String, MetricKind> = BTreeMap::new();
    let mut first_kind: BTreeMap<String, MetricKind> = BTreeMap::new();
    let mut merged: BTreeMap<(String, Vec<(String, String)>), MetricSeries> = BTreeMap::new();
    let mut overflow: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (service, s) in series {
        let base = metric_name(&s.name);
        let first = *first_kind.entry(base.clone()).or_insert(s.kind);
        let mut family = if first == s.kind {
            base.clone()
        } else {
            format!("{base}_{}", kind_word(s.kind))
        };
        if s.kind == MetricKind::Count {
            family.push_str("_total");
        }
        kinds.insert(family.clone(), s.kind);
        let mut labels = vec![("service".to_owned(), service.to_owned())];
        for (k, v) in &s.tags {
            let mut name = label_name(k);
            if name == "service" || name == "le" {
                name = format!("tag_{name}");
            }
            labels.push((name, v.clone()));
        }
        labels.sort();
        if s.overflow > 0 {
            *overflow
                .entry((service.to_owned(), s.name.clone()))
                .or_default() += s.overflow;
        }
        match merged.get_mut(&(family.clone(), labels.clone())) {
            None => {
                merged.insert((family, labels), s.clone());
            }
            Some(m) => m.merge(s),
        }
    }

    let mut out = String::new();
    let mut current = String::new();
    for ((family, labels), s) in &merged {
        let kind = kinds[family];
        if *family != current {
            current = family.clone();
            let _ = writeln!(
                out,
                "# HELP {family} recorded by nonstop metric rules ({})",
                s.name
            );
            let _ = writeln!(out, "# TYPE {family} {}", prometheus_type(kind));
        }
        let l = render_labels(labels, None);
        match kind {
            MetricKind::Count => {
                let _ = writeln!(out, "{family}{l} {}", s.count);
            }
            MetricKind::Gauge => {
                let _ = writeln!(out, "{family}{l} {}", float(s.last.unwrap_or(0.0)));
            }
            MetricKind::Histogram => {
                let mut cumulative = 0;
                for (i, bound) in HISTOGRAM_BOUNDS.iter().enumerate() {
                    cumulative += s.buckets.get(i).copied().unwrap_or(0);
                    let l = render_labels(labels, Some(&float(*bound)));
                    let _ = writeln!(out, "{family}_bucket{l} {cumulative}");
                }
                let l_inf = render_labels(labels, Some("+Inf"));
                let _ = writeln!(out, "{family}_bucket{l_inf} {}", s.count);
                let _ = writeln!(out, "{family}_sum{l} {}", float(s.sum));
                let _ = writeln!(out, "{family}_count{l} {}", s.count);
            }
        }
    }
    if !overflow.is_empty() {
        let family = "nonstop_metric_overflow_total";
        let _ = writeln!(
            out,
            "# HELP {family} hits not recorded because a metric rule had {MAX_SERIES_PER_RULE} tag combinations on an agent"
        );
        let _ = writeln!(out, "# TYPE {family} counter");
        for ((service, metric), n) in overflow {
            let labels = vec![
                ("metric".to_owned(), metric),
                ("service".to_owned(), service),
            ];
            let _ = writeln!(out, "{family}{} {n}", render_labels(&labels, None));
        }
    }
    out
}

/// A metric rule's hits that its agents did not record — dropped by the rule's rate limit,
/// the CPU budget or a full buffer — so its values undercount by this much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedHits {
    /// The rule.
    pub rule: String,
    /// Its metric's name, as the rule gives it.
    pub metric: String,
    /// Hits dropped over all agents that reported a status.
    pub dropped: u64,
}

/// The Prometheus text of [`DroppedHits`]: the counter `nonstop_metric_dropped_hits_total`
/// with `rule` and `metric` labels; empty when `rows` is.
pub fn render_dropped(rows: &[DroppedHits]) -> String {
    use std::fmt::Write;
    if rows.is_empty() {
        return String::new();
    }
    let family = "nonstop_metric_dropped_hits_total";
    let mut out = format!(
        "# HELP {family} hits of a metric rule its agents did not record (rate limit, CPU budget, full buffer): its values undercount by this much\n# TYPE {family} counter\n"
    );
    for r in rows {
        let labels = vec![
            ("metric".to_owned(), r.metric.clone()),
            ("rule".to_owned(), r.rule.clone()),
        ];
        let _ = writeln!(
            out,
            "{family}{} {}",
            render_labels(&labels, None),
            r.dropped
        );
    }
    out
}

fn kind_word(kind: MetricKind) -> &'static str {
    match kind {
        MetricKind::Count => "count",
        MetricKind::Gauge => "gauge",
        MetricKind::Histogram => "histogram",
    }
}

fn prometheus_type(kind: MetricKind) -> &'static str {
    match kind {
        MetricKind::Count => "counter",
        MetricKind::Gauge => "gauge",
        MetricKind::Histogram => "histogram",
    }
}

/// A valid Prometheus metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`, other characters as `_`.
pub fn metric_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// A valid Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`, other characters as `_`.
fn label_name(name: &str) -> String {
    metric_name(name).replace(':', "_")
}

fn render_labels(labels: &[(String, String)], le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    format!("{{{}}}", parts.join(","))
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_fall_in_the_bucket_whose_bound_is_the_first_not_below_them() {
        assert_eq!(bucket_of(-5.0), 0);
        assert_eq!(bucket_of(0.001), 0);
        assert_eq!(bucket_of(0.0011), 1);
        assert_eq!(bucket_of(100.0), 15);
        assert_eq!(bucket_of(1e12), HISTOGRAM_BOUNDS.len());
        assert_eq!(bucket_of(f64::NAN), HISTOGRAM_BOUNDS.len());
        assert!(HISTOGRAM_BOUNDS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_series_has_the_documented_json_form() {
        let s = MetricSeries {
            rule: "r-1".into(),
            name: "cart.add".into(),
            kind: MetricKind::Count,
            tags: BTreeMap::from([("sku".into(), "A-1".into())]),
            count: 3,
            sum: 0.0,
            last: None,
            buckets: vec![],
            updated: "2026-11-25T15:00:00Z".into(),
            overflow: 0,
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"rule":"r-1","name":"cart.add","kind":"count","tags":{"sku":"A-1"},"count":3,"sum":0.0,"updated":"2026-11-25T15:00:00Z"}"#
        );
    }

    #[test]
    fn a_quantile_is_bounded_by_the_bucket_of_its_rank() {
        let mut b = vec![0u64; HISTOGRAM_BOUNDS.len() + 1];
        for v in [0.2, 1.5, 2.0, 7.0, 40.0, 40.0, 90.0, 300.0, 600.0, 6e9] {
            b[bucket_of(v)] += 1;
        }
        // Ranks 5, 9 and 10 of ten values: 40 (≤ 50), 600 (≤ 1000), 6e9 (above every bound).
        assert_eq!(quantile_upper_bound(&b, 0.5), Some(50.0));
        assert_eq!(quantile_upper_bound(&b, 0.9), Some(1000.0));
        assert_eq!(quantile_upper_bound(&b, 0.99), Some(f64::INFINITY));
        assert_eq!(quantile_upper_bound(&b, 0.0), Some(0.25));
        assert_eq!(quantile_upper_bound(&b[..3], 0.5), None);
        assert_eq!(quantile_upper_bound(&[], 0.5), None);
    }

    fn series(name: &str, kind: MetricKind, tags: &[(&str, &str)], count: u64) -> MetricSeries {
        MetricSeries {
            rule: "r-1".into(),
            name: name.into(),
            kind,
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            count,
            sum: 0.0,
            last: None,
            buckets: vec![],
            updated: "2026-11-25T15:00:00Z".into(),
            overflow: 0,
        }
    }

    #[test]
    fn counts_of_a_service_add_up_over_its_agents() {
        let a = series("cart.add", MetricKind::Count, &[("sku", "A\"1")], 3);
        let b = series("cart.add", MetricKind::Count, &[("sku", "A\"1")], 4);
        let c = series("cart.add", MetricKind::Count, &[("sku", "A\"1")], 5);
        let text = render_prometheus([("shop", &a), ("shop", &b), ("admin", &c)]);
        assert_eq!(
            text,
            "# HELP cart_add_total recorded by nonstop metric rules (cart.add)\n\
             # TYPE cart_add_total counter\n\
             cart_add_total{service=\"admin\",sku=\"A\\\"1\"} 5\n\
             cart_add_total{service=\"shop\",sku=\"A\\\"1\"} 7\n"
        );
    }

    #[test]
    fn a_gauge_shows_the_newest_value_and_a_histogram_cumulative_buckets() {
        let mut old = series("queue", MetricKind::Gauge, &[], 2);
        old.last = Some(9.0);
        let mut new = series("queue", MetricKind::Gauge, &[], 1);
        new.last = Some(4.5);
        new.updated = "2026-11-25T15:00:01Z".into();
        let text = render_prometheus([("s", &new), ("s", &old)]);
        assert!(
            text.ends_with("# TYPE queue gauge\nqueue{service=\"s\"} 4.5\n"),
            "{text}"
        );

        let mut h = series("latency", MetricKind::Histogram, &[("service", "x")], 3);
        h.sum = 1.5 + 2.0 + 7e9;
        h.buckets = vec![0; HISTOGRAM_BOUNDS.len() + 1];
        h.buckets[bucket_of(1.5)] += 1;
        h.buckets[bucket_of(2.0)] += 1;
        h.buckets[bucket_of(7e9)] += 1;
        let text = render_prometheus([("s", &h)]);
        assert!(
            text.contains("latency_bucket{service=\"s\",tag_service=\"x\",le=\"1\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("latency_bucket{service=\"s\",tag_service=\"x\",le=\"2.5\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("latency_bucket{service=\"s\",tag_service=\"x\",le=\"5000000000\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("latency_bucket{service=\"s\",tag_service=\"x\",le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("latency_count{service=\"s\",tag_service=\"x\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("latency_sum{service=\"s\",tag_service=\"x\"} 7000000003.5\n"),
            "{text}"
        );
    }

    #[test]
    fn names_are_made_valid_and_kinds_do_not_clash() {
        assert_eq!(metric_name("cart.add-item"), "cart_add_item");
        assert_eq!(metric_name("9lives"), "_9lives");
        assert_eq!(metric_name(""), "_");
        let c = series("x", MetricKind::Gauge, &[], 1);
        let mut o = series("x", MetricKind::Histogram, &[("bad tag", "v")], 1);
        o.overflow = 2;
        let text = render_prometheus([("s", &c), ("s", &o)]);
        assert!(text.contains("# TYPE x gauge\n"), "{text}");
        assert!(text.contains("# TYPE x_histogram histogram\n"), "{text}");
        assert!(
            text.contains("x_histogram_count{bad_tag=\"v\",service=\"s\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("nonstop_metric_overflow_total{metric=\"x\",service=\"s\"} 2\n"),
            "{text}"
        );
    }
}
