//! Rule validation, the per-action defaults of DESIGN.md, and rule ids.

use nonstop_expr::check::{Scope, Ty};
use nonstop_model::{Action, CaptureLimits, Rule};
use std::time::Duration;

/// Longest `expires` a rule may ask for.
pub const MAX_EXPIRES: Duration = Duration::from_secs(30 * 86_400);
/// Highest `max_hits`.
pub const MAX_HITS: u64 = 1_000_000;
/// Highest rate, in hits per second.
pub const MAX_RATE_PER_SEC: u64 = 100_000;

/// The largest capture limits a rule may ask for when the server sets none
/// (`nonstop serve --max-limits`).
pub const DEFAULT_MAX_LIMITS: CaptureLimits = CaptureLimits {
    depth: 16,
    string: 1 << 20,
    collection: 100_000,
    fields: 1000,
    frames: 1000,
};

/// Parses `depth=5,string=4096,collection=1000,fields=100,frames=64` into maximums; what
/// is not given keeps its value in [`DEFAULT_MAX_LIMITS`].
pub fn parse_max_limits(s: &str) -> Result<CaptureLimits, String> {
    let mut max = DEFAULT_MAX_LIMITS;
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((name, value)) = item.split_once('=') else {
            return Err(format!(
                "{item:?}: write NAME=N, e.g. depth=5,string=4096,collection=1000,fields=100,frames=64"
            ));
        };
        let slot = match name.trim() {
            "depth" => &mut max.depth,
            "string" => &mut max.string,
            "collection" => &mut max.collection,
            "fields" => &mut max.fields,
            "frames" => &mut max.frames,
            other => {
                return Err(format!(
                    "no capture limit {other:?}: the limits are depth, string, collection, fields, frames"
                ));
            }
        };
        *slot = value.trim().parse().map_err(|_| {
            format!("{item:?}: the maximum must be a whole number, e.g. {name}=100")
        })?;
    }
    Ok(max)
}

/// A scope where every name is a variable of unknown type: what the server knows without
/// debug info. Checking against it still catches mismatches among literals and operators
/// (`"a" > 3`, `!5`, `"x" + 1`).
struct UnknownTypes;

impl Scope for UnknownTypes {
    fn var(&self, _name: &str) -> Option<Ty> {
        Some(Ty::Unknown)
    }
    fn names(&self) -> Vec<String> {
        Vec::new()
    }
}

/// A type error with the source under it and a caret at the part the message quotes
/// (the text after a `: `, or a `` `…` `` fragment, found in the source), like a parse error.
fn with_caret(source: &str, message: &str) -> String {
    let after_colons = message.match_indices(": ").map(|(i, _)| &message[i + 2..]);
    let backticked = message.split('`').skip(1).step_by(2);
    let at = after_colons
        .chain(backticked)
        .filter(|q| !q.trim().is_empty())
        .find_map(|q| source.find(q));
    match at {
        Some(at) => nonstop_expr::ParseError::new(source, at, message.to_string()).to_string(),
        None => format!("{message}\n{source}"),
    }
}

fn check_expr(
    what: &str,
    source: &str,
    check: impl Fn(&nonstop_expr::Expr) -> Result<(), nonstop_expr::check::CheckError>,
) -> Result<(), String> {
    let expr = nonstop_expr::Expr::parse(source).map_err(|e| format!("{what}: {e}"))?;
    check(&expr).map_err(|e| format!("{what}: {}", with_caret(source, &e.to_string())))
}

/// Checks `rule` and fills in the defaults of its action (rate, max hits, expiry), so
/// agents receive explicit values; capture limits must lie within `max` (a default above
/// a maximum is lowered to it). The error says what is wrong and what to write instead.
pub fn check_and_fill(rule: &mut Rule, max: &CaptureLimits) -> Result<(), String> {
    if !rule.id.is_empty() && !is_valid_id(&rule.id) {
        return Err(format!(
            "invalid id {:?}: use 1-64 letters, digits, `-` or `_`, or leave it out to get one",
            rule.id
        ));
    }
    check_location(&rule.at)?;
    match rule.action {
        Action::Log => {
            if rule.template.as_deref().is_none_or(|t| t.trim().is_empty()) {
                return Err(
                    "a log rule needs a template, e.g. \"template\": \"paid {order.total}\"".into(),
                );
            }
        }
        Action::Metric => {
            let Some(m) = &rule.metric else {
                return Err("a metric rule needs a metric, e.g. \"metric\": {\"kind\": \"count\", \"name\": \"cart.add\"}".into());
            };
            if m.name.trim().is_empty() {
                return Err("the metric needs a name".into());
            }
            if m.kind != nonstop_model::MetricKind::Count && m.value.is_none() {
                return Err(format!(
                    "a {:?} metric needs a value expression, e.g. \"value\": \"order.total\"",
                    m.kind
                )
                .to_lowercase());
            }
        }
        Action::Snapshot => {}
    }
    if rule.action != Action::Log && rule.template.is_some() {
        return Err(
            "template is only used by log rules: remove it or use \"action\": \"log\"".into(),
        );
    }
    if rule.action != Action::Metric && rule.metric.is_some() {
        return Err(
            "metric is only used by metric rules: remove it or use \"action\": \"metric\"".into(),
        );
    }
    if let Some(w) = &rule.when
        && w.trim().is_empty()
    {
        return Err("when is empty: remove it or give a condition such as \"user.id == 7\"".into());
    }
    // Syntax, and the types that are known without debug info (literals, operators);
    // names and the variables' types are checked by each agent against its debug info.
    let scope = UnknownTypes;
    if let Some(w) = &rule.when {
        check_expr("when", w, |e| e.check_condition(&scope))?;
    }
    if let Some(t) = &rule.template {
        let template = nonstop_expr::Template::parse(t).map_err(|e| format!("template: {e}"))?;
        template
            .check(&scope)
            .map_err(|e| format!("template: {}", with_caret(t, &e.to_string())))?;
    }
    check_watch(rule, &scope)?;
    if let Some(m) = &rule.metric {
        if let Some(v) = &m.value {
            check_expr("metric value", v, |e| e.check_number(&scope))?;
        }
        for (tag, expr) in &m.tags {
            check_expr(&format!("metric tag {tag}"), expr, |e| {
                e.check(&scope).map(|_| ())
            })?;
        }
    }
    if let Some(n) = rule.max_hits
        && !(1..=MAX_HITS).contains(&n)
    {
        return Err(format!(
            "max_hits must be between 1 and {MAX_HITS}, not {n}"
        ));
    }
    if let Some(e) = &rule.expires {
        parse_expires(e)?;
    }
    if let Some(r) = &rule.rate {
        check_rate(r)?;
    }
    check_limits(&mut rule.limits, max)?;
    for t in &rule.to {
        if t.is_empty() || t.chars().any(char::is_whitespace) {
            return Err(format!(
                "invalid target {t:?}: name a target such as \"ui\" or \"slack\""
            ));
        }
    }
    if let Some(s) = &rule.service
        && s.trim().is_empty()
    {
        return Err("service is empty: remove it to select every service".into());
    }
    // Defaults per action (DESIGN.md, "Defaults").
    let defaults = rule.action.defaults();
    rule.rate.get_or_insert_with(|| defaults.rate.to_string());
    if rule.max_hits.is_none() {
        rule.max_hits = defaults.max_hits;
    }
    rule.expires
        .get_or_insert_with(|| defaults.expires.to_string());
    Ok(())
}

/// Checks a rule's watch expressions: snapshot rules only, at most
/// [`MAX_WATCH`](nonstop_model::rule::MAX_WATCH), each one an expression whose known types fit.
fn check_watch(rule: &Rule, scope: &dyn nonstop_expr::Scope) -> Result<(), String> {
    if rule.watch.is_empty() {
        return Ok(());
    }
    if rule.action != Action::Snapshot {
        return Err(
            "watch is only used by snapshot rules: in a log rule, put the expressions in the \
             template (\"paid {order.total}\"), or use \"action\": \"snapshot\""
                .into(),
        );
    }
    let max = nonstop_model::rule::MAX_WATCH;
    if rule.watch.len() > max {
        return Err(format!(
            "{} watch expressions: a rule takes at most {max}; remove some or split the rule",
            rule.watch.len()
        ));
    }
    for (i, w) in rule.watch.iter().enumerate() {
        if w.trim().is_empty() {
            return Err(format!(
                "watch {} is empty: give an expression such as \"order.total\"",
                i + 1
            ));
        }
        check_expr(&format!("watch {} `{w}`", i + 1), w, |e| {
            e.check(scope).map(|_| ())
        })?;
    }
    Ok(())
}

/// Refuses a limit above the server's maximum; lowers an unset limit whose default is
/// above the maximum to the maximum, so agents never capture more than the server allows.
fn check_limits(l: &mut nonstop_model::Limits, max: &CaptureLimits) -> Result<(), String> {
    let defaults = CaptureLimits::default();
    let limits = [
        ("depth", &mut l.depth, defaults.depth, max.depth),
        ("string", &mut l.string, defaults.string, max.string),
        (
            "collection",
            &mut l.collection,
            defaults.collection,
            max.collection,
        ),
        ("fields", &mut l.fields, defaults.fields, max.fields),
        ("frames", &mut l.frames, defaults.frames, max.frames),
    ];
    for (name, value, default, hi) in limits {
        match *value {
            Some(v) if v > hi => {
                return Err(format!(
                    "limits.{name} is {v}, above this server's maximum of {hi}: ask for at most {hi} (the server's maximums are set by `nonstop serve --max-limits`)"
                ));
            }
            None if default > hi => *value = Some(hi),
            _ => {}
        }
    }
    Ok(())
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
    let bytes = at.as_bytes();
    let i = at.rfind(':')?;
    let double = (i > 0 && bytes[i - 1] == b':') || bytes.get(i + 1) == Some(&b':');
    if double {
        return None;
    }
    Some((&at[..i], &at[i + 1..]))
}

/// Parses a rule's `expires` (the model's grammar) and holds it to this server's bounds:
/// more than zero, at most [`MAX_EXPIRES`].
pub fn parse_expires(s: &str) -> Result<Duration, String> {
    let d = nonstop_model::parse_duration(s)?;
    if d.is_zero() || d > MAX_EXPIRES {
        return Err(format!(
            "duration {s:?} must be more than 0s and at most 30d"
        ));
    }
    Ok(d)
}

/// Parses a rule's `rate` (the model's grammar) and holds it to this server's bounds:
/// at most [`MAX_RATE_PER_SEC`] hits per second.
pub fn check_rate(s: &str) -> Result<nonstop_model::Rate, String> {
    let rate = nonstop_model::parse_rate(s)?;
    if rate.per_second() > MAX_RATE_PER_SEC as f64 {
        return Err(format!(
            "rate {s:?} must allow at most {MAX_RATE_PER_SEC} hits per second"
        ));
    }
    Ok(rate)
}

/// Whether `id` can name a rule or agent: 1-64 of `[A-Za-z0-9_-.]`.
pub fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// A new rule id: `r-` and 8 base32 characters (40 random bits).
pub fn new_rule_id() -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut bytes = [0u8; 5];
    crate::auth::fill_random(&mut bytes);
    let bits = bytes.iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b));
    let mut id = String::from("r-");
    for i in (0..8).rev() {
        id.push(ALPHABET[((bits >> (i * 5)) & 31) as usize] as char);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(json: &str) -> Rule {
        serde_json::from_str(json).unwrap()
    }

    fn check_and_fill(rule: &mut Rule) -> Result<(), String> {
        super::check_and_fill(rule, &DEFAULT_MAX_LIMITS)
    }

    #[test]
    fn snapshot_defaults_are_filled_in() {
        let mut r = rule(r#"{"at":"src/cart.rs:42","action":"snapshot"}"#);
        check_and_fill(&mut r).unwrap();
        assert_eq!(
            (r.rate.as_deref(), r.max_hits, r.expires.as_deref()),
            (Some("1/s"), Some(100), Some("1h"))
        );
        let mut r = rule(r#"{"at":"cart::add","action":"log","template":"x","max_hits":5}"#);
        check_and_fill(&mut r).unwrap();
        assert_eq!(
            (r.rate.as_deref(), r.max_hits, r.expires.as_deref()),
            (Some("5000/s"), Some(5), Some("24h"))
        );
    }

    #[test]
    fn bad_rules_are_refused_with_a_reason() {
        for (json, needle) in [
            (r#"{"at":"a.rs:0","action":"snapshot"}"#, "lines start at 1"),
            (r#"{"at":"a.rs:x","action":"snapshot"}"#, "line number"),
            (r#"{"at":"","action":"snapshot"}"#, "at is empty"),
            (r#"{"at":"a.rs:1","action":"log"}"#, "needs a template"),
            (r#"{"at":"a.rs:1","action":"metric"}"#, "needs a metric"),
            (
                r#"{"at":"a.rs:1","action":"snapshot","when":"qty >"}"#,
                "when: unexpected end of input at column 6: expected an expression",
            ),
            (
                r#"{"at":"a.rs:1","action":"log","template":"paid {order.total"}"#,
                "template: ",
            ),
            (
                r#"{"at":"a.rs:1","action":"snapshot","max_hits":0}"#,
                "max_hits",
            ),
            (
                r#"{"at":"a.rs:1","action":"snapshot","watch":["order.total","len(items"]}"#,
                "watch 2 `len(items`: unexpected end of input at column 10",
            ),
            (
                r#"{"at":"a.rs:1","action":"snapshot","watch":["n", "\"a\" > 3"]}"#,
                "watch 2 `\"a\" > 3`: cannot compare",
            ),
            (
                r#"{"at":"a.rs:1","action":"snapshot","watch":[" "]}"#,
                "watch 1 is empty",
            ),
            (
                r#"{"at":"a.rs:1","action":"log","template":"x","watch":["n"]}"#,
                "watch is only used by snapshot rules",
            ),
            (
                r#"{"at":"a.rs:1","action":"snapshot","expires":"5x"}"#,
                "invalid duration",
            ),
            (
                r#"{"at":"a.rs:1","action":"snapshot","rate":"1/d"}"#,
                "invalid rate",
            ),
            (
                r#"{"at":"a.rs:1","action":"snapshot","limits":{"depth":99}}"#,
                "limits.depth",
            ),
        ] {
            let err = check_and_fill(&mut rule(json)).unwrap_err();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn watch_expressions_are_checked_and_counted() {
        let watch = |n: usize| -> Rule {
            let exprs: Vec<String> = (0..n).map(|i| format!("v{i} + 1")).collect();
            serde_json::from_value(serde_json::json!(
                {"at": "a.rs:1", "action": "snapshot", "watch": exprs}
            ))
            .unwrap()
        };
        let mut ok = watch(nonstop_model::rule::MAX_WATCH);
        check_and_fill(&mut ok).unwrap();
        assert_eq!(ok.watch.len(), 20);
        let err = check_and_fill(&mut watch(21)).unwrap_err();
        assert_eq!(
            err,
            "21 watch expressions: a rule takes at most 20; remove some or split the rule"
        );
    }

    #[test]
    fn limits_above_the_server_maximum_are_refused_with_the_limit_and_the_maximum() {
        let max = parse_max_limits("depth=5,string=4096, frames=10").unwrap();
        assert_eq!(
            max,
            CaptureLimits {
                depth: 5,
                string: 4096,
                collection: 100_000,
                fields: 1000,
                frames: 10
            }
        );
        let mut r = rule(r#"{"at":"a.rs:1","action":"snapshot","limits":{"string":5000}}"#);
        assert_eq!(
            super::check_and_fill(&mut r, &max).unwrap_err(),
            "limits.string is 5000, above this server's maximum of 4096: ask for at most 4096 (the server's maximums are set by `nonstop serve --max-limits`)"
        );
        let mut r = rule(r#"{"at":"a.rs:1","action":"snapshot","limits":{"depth":5}}"#);
        super::check_and_fill(&mut r, &max).unwrap();
        assert_eq!(r.limits.depth, Some(5));
        // A default above a maximum is lowered to it; others stay unset.
        let low = parse_max_limits("depth=2").unwrap();
        let mut r = rule(r#"{"at":"a.rs:1","action":"snapshot"}"#);
        super::check_and_fill(&mut r, &low).unwrap();
        assert_eq!((r.limits.depth, r.limits.string), (Some(2), None));
        for (bad, needle) in [
            ("depth", "write NAME=N"),
            ("size=3", "no capture limit \"size\""),
            ("depth=-1", "whole number"),
        ] {
            let err = parse_max_limits(bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn type_mismatches_known_without_debug_info_are_refused_with_a_caret() {
        let mut r = rule(r#"{"at":"a.rs:1","action":"snapshot","when":"n > 2 && \"a\" > 3"}"#);
        assert_eq!(
            check_and_fill(&mut r).unwrap_err(),
            "when: cannot compare a string with a number: \"a\" > 3\nn > 2 && \"a\" > 3\n         ^"
        );
        let mut r = rule(r#"{"at":"a.rs:1","action":"snapshot","when":"name.len() + 1"}"#);
        let err = check_and_fill(&mut r).unwrap_err();
        assert!(
            err.starts_with("when: a condition must be true or false"),
            "{err}"
        );
        let mut r = rule(
            r#"{"at":"a.rs:1","action":"metric","metric":{"kind":"gauge","name":"g","value":"\"x\""}}"#,
        );
        let err = check_and_fill(&mut r).unwrap_err();
        assert!(
            err.starts_with("metric value: a metric value must be a number"),
            "{err}"
        );
        // Unknown names are the agent's to check: any variable passes here.
        let mut r = rule(
            r#"{"at":"a.rs:1","action":"snapshot","when":"order.total > 3 && user.name == \"x\""}"#,
        );
        check_and_fill(&mut r).unwrap();
    }

    #[test]
    fn ids_are_short_and_valid() {
        let id = new_rule_id();
        assert_eq!(id.len(), 10);
        assert!(is_valid_id(&id));
        assert_ne!(id, new_rule_id());
        assert!(check_location("checkout::cart::add").is_ok());
        assert!(check_location("<T as Foo>::bar").is_ok());
    }
}
