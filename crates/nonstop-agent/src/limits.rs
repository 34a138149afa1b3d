//! Rule limits: a rule's rate, max hits and expiry, with the model's defaults filled in.

use nonstop_model::{Rule, parse_duration, parse_rate};
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

/// The longest `expires` the agent takes (the server caps it lower, `nonstop serve`).
const MAX_EXPIRES: Duration = Duration::from_secs(366 * 86_400);

/// Parses a rule's `expires` (the model's grammar): more than zero, at most 366 days.
pub fn parse_expires(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d.is_zero() || d > MAX_EXPIRES {
        return Err(format!("{text:?} is out of range: between 1ms and 366d"));
    }
    Ok(d)
}

impl RuleLimits {
    /// The limits of `rule`, with DESIGN.md's defaults for its action.
    pub fn of(rule: &Rule) -> Result<RuleLimits, String> {
        let defaults = rule.action.defaults();
        let per_second = match &rule.rate {
            Some(r) => parse_rate(r)?.per_second(),
            None => defaults.per_second,
        };
        Ok(RuleLimits {
            per_second,
            burst: burst_for(per_second),
            max_hits: rule.max_hits.or(defaults.max_hits),
            expires: match &rule.expires {
                Some(e) => parse_expires(e)?,
                None => defaults.expires_after,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_rates_parse_with_clear_errors() {
        assert_eq!(parse_expires("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_expires("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_rate("120/m").map(|r| r.per_second()), Ok(2.0));
        assert!(
            parse_expires("5 weeks")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_rate("fast").unwrap_err().contains("1/s"));
        assert!(
            parse_expires("0s")
                .unwrap_err()
                .contains("between 1ms and 366d")
        );
        assert!(
            parse_expires("367d")
                .unwrap_err()
                .contains("between 1ms and 366d")
        );
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
