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
}
