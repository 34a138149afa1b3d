//! The one grammar of durations and rates, shared by the agent, the server and the CLI.
//!
//! ```text
//! duration  NUMBER [UNIT]          30m  1h  2d  500ms  1.5h  90 (seconds)
//! rate      NUMBER "/" PER         1/s  100/m  10/h  0.5/s
//! NUMBER    digits, with an optional fraction (`1.5`); no sign, no exponent
//! UNIT      ms | s | m | h | d     (none: seconds); spaces around it are allowed
//! PER       s | m | h
//! ```
//!
//! These parsers say only what the text means. Bounds are the caller's: a rule's
//! `expires` must be positive, the server caps it and the rate (`nonstop serve`), a
//! command-line timeout may be zero.

use std::time::Duration;

/// Parses a duration such as `30m`, `1h`, `2d`, `500ms`, `1.5h` or `90` (seconds).
///
/// Zero is accepted (`0s`); the caller decides whether it means anything.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let bad = || {
        format!(
            "invalid duration {text:?}: write a number and a unit, e.g. 500ms, 30s, 30m, 1h, 2d"
        )
    };
    let (n, unit) = split_number(t).ok_or_else(bad)?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        other => {
            return Err(format!(
                "invalid duration {text:?}: unknown unit {other:?}; use ms, s, m, h or d"
            ));
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

/// A rate: `hits` per `per`, as a rule's `rate` says it (`100/m`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Hits allowed in each `per`.
    pub hits: f64,
    /// The period: one second, minute or hour.
    pub per: Duration,
}

impl Rate {
    /// The rate in hits per second.
    pub fn per_second(&self) -> f64 {
        self.hits / self.per.as_secs_f64()
    }
}

/// Parses a rate such as `1/s`, `100/m`, `10/h` or `0.5/s`; the hits must be positive.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    let bad = || {
        format!(
            "invalid rate {text:?}: write hits per second, minute or hour, e.g. 1/s, 100/m or 10/h"
        )
    };
    let (n, per) = text.trim().split_once('/').ok_or_else(bad)?;
    let (hits, rest) = split_number(n.trim()).ok_or_else(bad)?;
    if !rest.is_empty() || hits <= 0.0 {
        return Err(bad());
    }
    let per = match per.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return Err(bad()),
    };
    Ok(Rate { hits, per })
}

/// Splits `1.5h` into `(1.5, "h")`: a finite, non-negative number and the trimmed rest.
fn split_number(t: &str) -> Option<(f64, &str)> {
    let end = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, rest) = t.split_at(end);
    // `f64::from_str` also takes "inf", "1e3" and "+1"; the split above leaves only
    // digits and dots, so those never reach it.
    let n: f64 = num.parse().ok()?;
    n.is_finite().then_some((n, rest.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_every_unit_fractions_and_bare_seconds() {
        for (text, want) in [
            ("30m", Duration::from_secs(1800)),
            ("1h", Duration::from_secs(3600)),
            ("2d", Duration::from_secs(172_800)),
            ("500ms", Duration::from_millis(500)),
            ("1.5h", Duration::from_secs(5400)),
            ("90", Duration::from_secs(90)),
            ("0.25", Duration::from_millis(250)),
            (" 10 s ", Duration::from_secs(10)),
            ("0s", Duration::ZERO),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn bad_durations_say_what_to_write() {
        assert_eq!(
            parse_duration("forever").unwrap_err(),
            "invalid duration \"forever\": write a number and a unit, e.g. 500ms, 30s, 30m, 1h, 2d"
        );
        assert_eq!(
            parse_duration("5 weeks").unwrap_err(),
            "invalid duration \"5 weeks\": unknown unit \"weeks\"; use ms, s, m, h or d"
        );
        for text in ["", "-1s", "1e3s", "inf", "1..2s", "h"] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
    }

    #[test]
    fn rates_take_seconds_minutes_hours_and_fractions() {
        let per_second = |t: &str| parse_rate(t).map(|r| r.per_second());
        assert_eq!(per_second("10/s"), Ok(10.0));
        assert_eq!(per_second("120/m"), Ok(2.0));
        assert_eq!(per_second("36/h"), Ok(0.01));
        assert_eq!(per_second("0.5/s"), Ok(0.5));
        assert_eq!(
            parse_rate(" 100 / m "),
            Ok(Rate {
                hits: 100.0,
                per: Duration::from_secs(60)
            })
        );
        assert_eq!(
            parse_rate("fast").unwrap_err(),
            "invalid rate \"fast\": write hits per second, minute or hour, e.g. 1/s, 100/m or 10/h"
        );
        for text in ["0/s", "1/d", "1/", "/s", "-1/s", "1x/s", "inf/s"] {
            assert!(parse_rate(text).is_err(), "{text}");
        }
    }
}
