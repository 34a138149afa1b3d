//! The shape of a rule, checked once for the server, the offline agent and the CLI: its
//! id, location, action fields and bounds (max hits, expiry, rate, targets, service).
//!
//! Expressions (`when`, templates, metric values) are checked by `nonstop-expr`, capture
//! limits against each server's maximums by the server; what this module accepts, every
//! part of nonstop accepts, so a rules file the agent runs offline is also one the server
//! takes.

use crate::grammar::{Rate, parse_duration, parse_rate};
use crate::rule::{Action, MetricKind, Rule};
use std::time::Duration;

/// Longest `expires` a rule may ask for.
pub const MAX_EXPIRES: Duration = Duration::from_secs(30 * 86_400);
/// Highest `max_hits`.
pub const MAX_HITS: u64 = 1_000_000;
/// Highest rate, in hits per second: a rule may ask for every execution of a hot line; the
/// CPU budget, which takes a hot site out, is what protects the program.
pub const MAX_RATE_PER_SEC: u64 = 1_000_000;
/// Longest rule or agent id.
pub const MAX_ID_LEN: usize = 64;

/// Parses a rule's `expires` and holds it to the bounds: more than zero, at most
/// [`MAX_EXPIRES`].
pub fn parse_expires(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() || d > MAX_EXPIRES {
        return Err(format!(
            "duration {s:?} must be more than 0s and at most {}d",
            MAX_EXPIRES.as_secs() / 86_400
        ));
    }
    Ok(d)
}

/// Parses a rule's `rate` and holds it to the bounds: at most [`MAX_RATE_PER_SEC`] hits
/// per second.
pub fn parse_bounded_rate(s: &str) -> Result<Rate, String> {
    let rate = parse_rate(s)?;
    if rate.per_second() > MAX_RATE_PER_SEC as f64 {
        return Err(format!(
            "rate {s:?} must allow at most {MAX_RATE_PER_SEC} hits per second"
        ));
    }
    Ok(rate)
}

/// Whether `id` can name a rule or agent: 1-64 of `[A-Za-z0-9_-.]`.
pub fn is_valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Checks a location: `FILE:LINE` with a line from 1, or a function path such as
/// `checkout::cart::add`.
pub fn check_location(at: &str) -> Result<(), String> {
    if at.trim().is_empty() {
        return Err(
            "at is empty: give FILE:LINE (src/cart.rs:42) or a function (cart::add)".into(),
        );
    }
    if at.trim() != at || at.chars().any(char::is_control) {
        return Err(format!(
            "at {at:?} has surrounding spaces or control characters"
        ));
    }
    // A single colon (not part of `::`) separates a file from its line.
    if let Some((file, line)) = split_file_line(at) {
        if file.is_empty() {
            return Err(format!("at {at:?} has no file before the line number"));
        }
        return match line.parse::<u32>() {
            Ok(0) => Err(format!("at {at:?}: lines start at 1")),
            Ok(_) => Ok(()),
            Err(_) => Err(format!(
                "at {at:?}: expected FILE:LINE with a line number, e.g. src/cart.rs:42"
            )),
        };
    }
    Ok(())
}

/// Splits `FILE:LINE` at its last single colon; `None` for a function path.
fn split_file_line(at: &str) -> Option<(&str, &str)> {
    let i = at.rfind(':')?;
    let before = at.get(..i)?;
    let after = at.get(i + 1..)?;
    if before.ends_with(':') || after.starts_with(':') {
        return None;
    }
    Some((before, after))
}

impl Rule {
    /// Checks everything about the rule that needs neither debug info nor a server's
    /// settings. The message says what to change.
    pub fn check_shape(&self) -> Result<(), String> {
        if !self.id.is_empty() && !is_valid_id(&self.id) {
            return Err(format!(
                "invalid id {:?}: use 1-64 letters, digits, `-` or `_`, or leave it out to get one",
                self.id
            ));
        }
        check_location(&self.at)?;
        match self.action {
            Action::Log => {
                if self.template.as_deref().is_none_or(|t| t.trim().is_empty()) {
                    return Err(
                        "a log rule needs a template, e.g. \"template\": \"paid {order.total}\""
                            .into(),
                    );
                }
            }
            Action::Metric => {
                let Some(m) = &self.metric else {
                    return Err("a metric rule needs a metric, e.g. \"metric\": {\"kind\": \"count\", \"name\": \"cart.add\"}".into());
                };
                if m.name.trim().is_empty() {
                    return Err("the metric needs a name".into());
                }
                if m.kind != MetricKind::Count && m.value.is_none() {
                    return Err(format!(
                        "a {:?} metric needs a value expression, e.g. \"value\": \"order.total\"",
                        m.kind
                    )
                    .to_lowercase());
                }
            }
            Action::Snapshot => {}
        }
        if self.action != Action::Log && self.template.is_some() {
            return Err(
                "template is only used by log rules: remove it or use \"action\": \"log\"".into(),
            );
        }
        if self.action != Action::Metric && self.metric.is_some() {
            return Err(
                "metric is only used by metric rules: remove it or use \"action\": \"metric\""
                    .into(),
            );
        }
        if let Some(w) = &self.when
            && w.trim().is_empty()
        {
            return Err(
                "when is empty: remove it or give a condition such as \"user.id == 7\"".into(),
            );
        }
        if let Some(n) = self.max_hits
            && !(1..=MAX_HITS).contains(&n)
        {
            return Err(format!(
                "max_hits must be between 1 and {MAX_HITS}, not {n}"
            ));
        }
        if let Some(e) = &self.expires {
            parse_expires(e)?;
        }
        if let Some(r) = &self.rate {
            parse_bounded_rate(r)?;
        }
        for t in &self.to {
            if t.is_empty() || t.chars().any(char::is_whitespace) {
                return Err(format!(
                    "invalid target {t:?}: name a target such as \"ui\" or \"slack\""
                ));
            }
        }
        if let Some(s) = &self.service
            && s.trim().is_empty()
        {
            return Err("service is empty: remove it to select every service".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_and_rate_bounds_say_the_limit() {
        assert_eq!(parse_expires("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(
            parse_expires("31d").unwrap_err(),
            "duration \"31d\" must be more than 0s and at most 30d"
        );
        assert_eq!(
            parse_expires("0s").unwrap_err(),
            "duration \"0s\" must be more than 0s and at most 30d"
        );
        assert_eq!(
            parse_bounded_rate("1000000/s").map(|r| r.per_second()),
            Ok(1_000_000.0)
        );
        assert_eq!(
            parse_bounded_rate("1000001/s").unwrap_err(),
            "rate \"1000001/s\" must allow at most 1000000 hits per second"
        );
    }

    #[test]
    fn locations_are_file_line_or_a_function() {
        assert_eq!(check_location("src/cart.rs:42"), Ok(()));
        assert_eq!(check_location("shop::cart::add"), Ok(()));
        assert_eq!(check_location("<impl Foo>::bar"), Ok(()));
        assert_eq!(
            check_location("src/cart.rs:0").unwrap_err(),
            "at \"src/cart.rs:0\": lines start at 1"
        );
        assert_eq!(
            check_location(":7").unwrap_err(),
            "at \":7\" has no file before the line number"
        );
        assert_eq!(
            check_location("src/cart.rs:x").unwrap_err(),
            "at \"src/cart.rs:x\": expected FILE:LINE with a line number, e.g. src/cart.rs:42"
        );
        // A multi-byte character next to the colon is not sliced through.
        assert_eq!(check_location("é:1"), Ok(()));
    }
}
