//! Rule limits: durations, rates and the per-action defaults of DESIGN.md.

use nonstop_model::{Action, Rule};
use std::time::Duration;

/// A rule's limits with the defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RuleLimits {
    /// Hits per second per agent.
    pub per_second: f64,
    /// Burst of the token bucket.
    pub burst: u32,
    /// Most hits in all.
    pub max_hits: Option<u64>,
    /// Time to live.
    pub expires: Duration,
}

/// The token-bucket burst for a rate: one second's worth, at least one hit.
pub fn burst_for(per_second: f64) -> u32 {
    per_second.ceil().clamp(1.0, 10_000.0) as u32
}

/// Parses a duration such as `30m`, `1h`, `10s`, `2d`, `250ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: write e.g. 30s, 10m, 1h or 2d"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?}; use ms, s, m, h or d"
            ));
        }
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 366.0 * 86400.0 {
        return Err(format!("{text:?} is out of range: between 1ms and 366d"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a rate such as `1/s`, `100/m`, `10/h`, into hits per second.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let bad = || format!("{text:?} is not a rate: write e.g. 1/s, 100/m or 10/h");
    let (n, per) = text.trim().split_once('/').ok_or_else(bad)?;
    let n: f64 = n.trim().parse().map_err(|_| bad())?;
    let secs = match per.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    if !n.is_finite() || n <= 0.0 {
        return Err(bad());
    }
    Ok(n / secs)
}

impl RuleLimits {
    /// The limits of `rule`, with DESIGN.md's defaults for its action.
    pub fn of(rule: &Rule) -> Result<RuleLimits, String> {
        let (rate, max_hits, expires) = match rule.action {
            Action::Snapshot => (1.0, Some(100), Duration::from_secs(3600)),
            Action::Log | Action::Metric => (5000.0, None, Duration::from_secs(24 * 3600)),
        };
        let per_second = match &rule.rate {
            Some(r) => parse_rate(r)?,
            None => rate,
        };
        Ok(RuleLimits {
            per_second,
            burst: burst_for(per_second),
            max_hits: rule.max_hits.or(max_hits),
            expires: match &rule.expires {
                Some(e) => parse_duration(e)?,
                None => expires,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_rates_parse_with_clear_errors() {
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_rate("120/m"), Ok(2.0));
        assert!(
            parse_duration("5 weeks")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_rate("fast").unwrap_err().contains("1/s"));
    }

    #[test]
    fn defaults_follow_the_action() {
        let snap: Rule = serde_json::from_str(r#"{"at":"a.rs:1","action":"snapshot"}"#).unwrap();
        let l = RuleLimits::of(&snap).unwrap();
        assert_eq!(
            (l.per_second, l.max_hits, l.expires.as_secs()),
            (1.0, Some(100), 3600)
        );
        let log: Rule =
            serde_json::from_str(r#"{"at":"a.rs:1","action":"log","rate":"10/s","max_hits":3}"#)
                .unwrap();
        let l = RuleLimits::of(&log).unwrap();
        assert_eq!(
            (l.per_second, l.max_hits, l.expires.as_secs()),
            (10.0, Some(3), 86400)
        );
    }
}
