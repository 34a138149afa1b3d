//! DESIGN.md's defaults (its "Defaults" table), written once for the agent, the server and the CLI.
//!
//! Change a value only with the reason written in DESIGN.md beside it.

use crate::rule::{Action, CaptureLimits};
use std::time::Duration;

/// Capture limits of a rule that sets none: depth 3, strings 255 bytes, 100 elements,
/// 20 fields, 20 frames.
pub const CAPTURE_LIMITS: CaptureLimits = CaptureLimits {
    depth: 3,
    string: 255,
    collection: 100,
    fields: 20,
    frames: 20,
};

impl Default for CaptureLimits {
    /// DESIGN.md's defaults ([`CAPTURE_LIMITS`]).
    fn default() -> Self {
        CAPTURE_LIMITS
    }
}

/// A rule's limits when it sets none, by action.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActionDefaults {
    /// Hits per time per agent, as a rule writes it.
    pub rate: &'static str,
    /// `rate` in hits per second.
    pub per_second: f64,
    /// Most hits in all (`None`: no cap).
    pub max_hits: Option<u64>,
    /// How long the rule lives, as a rule writes it.
    pub expires: &'static str,
    /// `expires` as a duration.
    pub expires_after: Duration,
}

/// A snapshot rule: 1 hit per second per agent, 100 hits in all, expires after 1 h.
pub const SNAPSHOT: ActionDefaults = ActionDefaults {
    rate: "1/s",
    per_second: 1.0,
    max_hits: Some(100),
    expires: "1h",
    expires_after: Duration::from_secs(3600),
};

/// A log (and metric) rule: 5,000 hits per second per agent, expires after 24 h.
pub const LOG: ActionDefaults = ActionDefaults {
    rate: "5000/s",
    per_second: 5000.0,
    max_hits: None,
    expires: "24h",
    expires_after: Duration::from_secs(24 * 3600),
};

impl Action {
    /// The limits a rule of this action has when it sets none.
    pub fn defaults(self) -> ActionDefaults {
        match self {
            Action::Snapshot => SNAPSHOT,
            Action::Log | Action::Metric => LOG,
        }
    }
}

/// The global trap budget: share of one core per agent the trap handler may use (1%).
pub const TRAP_BUDGET: f64 = 0.01;

/// One hit's time cap; above it the probe is disarmed on that agent.
pub const HIT_TIME_CAP: Duration = Duration::from_millis(10);

/// How often the agent pings the server.
pub const PING_EVERY: Duration = Duration::from_secs(10);

/// First reconnect delay; it doubles up to [`BACKOFF_MAX`], with jitter.
pub const BACKOFF_MIN: Duration = Duration::from_millis(200);

/// Longest reconnect delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grammar::{parse_duration, parse_rate};

    #[test]
    fn the_typed_defaults_say_what_their_text_says() {
        for d in [SNAPSHOT, LOG] {
            assert_eq!(parse_rate(d.rate).map(|r| r.per_second()), Ok(d.per_second));
            assert_eq!(parse_duration(d.expires), Ok(d.expires_after));
        }
        assert_eq!(Action::Metric.defaults(), LOG);
        assert_eq!(Action::Snapshot.defaults(), SNAPSHOT);
    }
}
