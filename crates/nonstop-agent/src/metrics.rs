//! Aggregation of metric hits into series, on the agent thread (never in the trap path).
//!
//! A metric rule keeps one [`MetricSeries`] per combination of tag values, at most
//! [`MAX_SERIES_PER_RULE`]; hits with a new combination past the cap are counted in the
//! first series' `overflow`. Values are cumulative since the rule was armed, so reports
//! can be lost or repeated without harm; the series that changed since the last report
//! are marked so that only they go out.

use nonstop_model::MetricKind;
use nonstop_model::metrics::{HISTOGRAM_BOUNDS, MAX_SERIES_PER_RULE, MetricSeries, bucket_of};
use std::collections::{BTreeMap, HashMap};

/// What happened to one recorded hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Added to a series (new or existing).
    Added,
    /// The rule already had [`MAX_SERIES_PER_RULE`] series and this combination of tag
    /// values is new: counted in the first series' `overflow` only.
    Overflow,
}

/// The series of one metric rule on this agent.
#[derive(Debug)]
pub struct RuleSeries {
    rule: String,
    name: String,
    kind: MetricKind,
    series: Vec<MetricSeries>,
    /// Tag values → index in `series`.
    index: HashMap<BTreeMap<String, String>, usize>,
    /// Per series: changed since the last [`RuleSeries::take_changed`].
    changed: Vec<bool>,
}

impl RuleSeries {
    /// No series yet for rule `rule`, metric `name`.
    pub fn new(rule: &str, name: &str, kind: MetricKind) -> RuleSeries {
        RuleSeries {
            rule: rule.to_owned(),
            name: name.to_owned(),
            kind,
            series: Vec::new(),
            index: HashMap::new(),
            changed: Vec::new(),
        }
    }

    /// Creates the series of `tags` with nothing recorded (so a counter reads 0 rather
    /// than being absent before its first hit). Gauges have no value to show yet and
    /// are left alone.
    pub fn start_at_zero(&mut self, tags: BTreeMap<String, String>, time: &str) {
        if self.kind != MetricKind::Gauge && !self.index.contains_key(&tags) {
            self.add_series(tags, time);
        }
    }

    fn add_series(&mut self, tags: BTreeMap<String, String>, time: &str) -> usize {
        let i = self.series.len();
        self.series.push(MetricSeries {
            rule: self.rule.clone(),
            name: self.name.clone(),
            kind: self.kind,
            tags: tags.clone(),
            count: 0,
            sum: 0.0,
            last: None,
            buckets: match self.kind {
                MetricKind::Histogram => vec![0; HISTOGRAM_BOUNDS.len() + 1],
                _ => Vec::new(),
            },
            updated: time.to_owned(),
            overflow: 0,
        });
        self.changed.push(true);
        self.index.insert(tags, i);
        i
    }

    /// Records one hit with its tag values and (for gauges and histograms) its value,
    /// at `time` (RFC 3339).
    pub fn record(
        &mut self,
        tags: BTreeMap<String, String>,
        value: Option<f64>,
        time: &str,
    ) -> Recorded {
        let i = match self.index.get(&tags) {
            Some(&i) => i,
            None if self.series.len() >= MAX_SERIES_PER_RULE => {
                // The first series carries the rule's overflow; its values and time stay.
                self.series[0].overflow += 1;
                self.changed[0] = true;
                return Recorded::Overflow;
            }
            None => self.add_series(tags, time),
        };
        let s = &mut self.series[i];
        s.count += 1;
        if let Some(v) = value {
            match self.kind {
                MetricKind::Count => {}
                MetricKind::Gauge => {
                    s.sum += v;
                    s.last = Some(v);
                }
                MetricKind::Histogram => {
                    s.sum += v;
                    if let Some(b) = s.buckets.get_mut(bucket_of(v)) {
                        *b += 1;
                    }
                }
            }
        }
        s.updated.clear();
        s.updated.push_str(time);
        self.changed[i] = true;
        Recorded::Added
    }

    /// Adds `n` hits counted in the trap path (a count-only probe) to the series without
    /// tags.
    pub fn add_count(&mut self, n: u64, time: &str) {
        let tags = BTreeMap::new();
        let i = match self.index.get(&tags) {
            Some(&i) => i,
            None => self.add_series(tags, time),
        };
        let s = &mut self.series[i];
        s.count += n;
        s.updated.clear();
        s.updated.push_str(time);
        self.changed[i] = true;
    }

    /// The series that changed since the last call (copies), and marks them reported.
    pub fn take_changed(&mut self) -> Vec<MetricSeries> {
        let mut out = Vec::new();
        for (s, changed) in self.series.iter().zip(self.changed.iter_mut()) {
            if std::mem::take(changed) {
                out.push(s.clone());
            }
        }
        out
    }

    /// Every series of the rule.
    pub fn all(&self) -> &[MetricSeries] {
        &self.series
    }

    /// Hits not recorded because the rule reached the series cap.
    pub fn overflow(&self) -> u64 {
        self.series.first().map_or(0, |s| s.overflow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(v: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("k".to_owned(), v.to_owned())])
    }

    #[test]
    fn histogram_values_land_in_their_buckets_with_exact_sum_and_count() {
        let mut r = RuleSeries::new("r", "latency", MetricKind::Histogram);
        for v in [0.5, 1.0, 1.5, 2.5, 2.6, 7e9] {
            assert_eq!(r.record(BTreeMap::new(), Some(v), "t1"), Recorded::Added);
        }
        let s = &r.all()[0];
        assert_eq!(s.count, 6);
        assert_eq!(s.sum, 0.5 + 1.0 + 1.5 + 2.5 + 2.6 + 7e9);
        assert_eq!(s.buckets.len(), HISTOGRAM_BOUNDS.len() + 1);
        // Bounds …, 0.5 (index 8), 1 (9), 2.5 (10), 5 (11), …, 5e9 (38), +Inf (39).
        assert_eq!(s.buckets[8], 1);
        assert_eq!(s.buckets[9], 1);
        assert_eq!(s.buckets[10], 2);
        assert_eq!(s.buckets[11], 1);
        assert_eq!(s.buckets[HISTOGRAM_BOUNDS.len()], 1);
        assert_eq!(s.buckets.iter().sum::<u64>(), 6);
        assert_eq!(s.last, None);
    }

    #[test]
    fn a_gauge_keeps_its_last_value_and_the_time_of_the_last_hit() {
        let mut r = RuleSeries::new("r", "queue", MetricKind::Gauge);
        r.record(tag("a"), Some(3.0), "t1");
        r.record(tag("a"), Some(-1.5), "t2");
        let s = &r.all()[0];
        assert_eq!((s.count, s.sum, s.last), (2, 1.5, Some(-1.5)));
        assert_eq!(s.updated, "t2");
        assert!(s.buckets.is_empty());
    }

    #[test]
    fn new_tag_values_past_the_cap_only_count_as_overflow_of_the_first_series() {
        let mut r = RuleSeries::new("r", "hits", MetricKind::Count);
        for i in 0..MAX_SERIES_PER_RULE {
            assert_eq!(r.record(tag(&i.to_string()), None, "t1"), Recorded::Added);
        }
        assert_eq!(r.take_changed().len(), MAX_SERIES_PER_RULE);
        assert_eq!(r.record(tag("new"), None, "t2"), Recorded::Overflow);
        assert_eq!(r.record(tag("newer"), None, "t2"), Recorded::Overflow);
        // Combinations seen before the cap still count.
        assert_eq!(r.record(tag("7"), None, "t3"), Recorded::Added);
        assert_eq!(r.all().len(), MAX_SERIES_PER_RULE);
        assert_eq!(r.overflow(), 2);
        let first = &r.all()[0];
        assert_eq!((first.tags["k"].as_str(), first.count), ("0", 1));
        assert_eq!(first.updated, "t1", "overflow does not make a series newer");
        let changed = r.take_changed();
        let keys: Vec<&str> = changed.iter().map(|s| s.tags["k"].as_str()).collect();
        assert_eq!(keys, ["0", "7"]);
        assert_eq!(changed[1].count, 2);
        assert!(r.take_changed().is_empty());
    }

    #[test]
    fn counters_and_histograms_start_at_zero_but_gauges_wait_for_a_value() {
        let mut c = RuleSeries::new("r", "hits", MetricKind::Count);
        c.start_at_zero(BTreeMap::new(), "t0");
        assert_eq!(c.take_changed()[0].count, 0);
        c.record(BTreeMap::new(), None, "t1");
        assert_eq!(c.all().len(), 1);
        assert_eq!(c.all()[0].count, 1);
        let mut g = RuleSeries::new("r", "queue", MetricKind::Gauge);
        g.start_at_zero(BTreeMap::new(), "t0");
        assert!(g.all().is_empty());
    }
}
