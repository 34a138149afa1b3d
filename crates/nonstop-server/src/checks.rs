//! What an agent sends, checked before anything is stored: the numbers of its messages
//! (so no sum in the store can overflow into a REAL) and the fields of its hello (bounded,
//! no control characters). A message that fails is refused with a reason to that agent
//! and changes nothing for anyone.

use crate::ids;
use nonstop_model::{AgentInfo, AgentMessage};

/// The largest count an agent may report (`dropped`, `hits`, a metric's `count`, `overflow`
/// and buckets): SQLite's largest integer, so a stored count is always an integer.
pub const MAX_COUNT: u64 = i64::MAX as u64;

/// Longest hello `service`, in characters.
pub const MAX_SERVICE: usize = 128;
/// Longest hello `host`, in characters (a DNS name is at most 253).
pub const MAX_HOST: usize = 255;
/// Longest hello `version`, in characters.
pub const MAX_VERSION: usize = 128;
/// Longest hello `commit`, in characters (a SHA-256 id in hex is 64).
pub const MAX_COMMIT: usize = 64;
/// Longest hello `started`, in characters (an RFC 3339 time is about 30).
pub const MAX_STARTED: usize = 64;
/// Most labels in a hello.
pub const MAX_LABELS: usize = 64;
/// Longest label key, in characters.
pub const MAX_LABEL_KEY: usize = 64;
/// Longest label value, in characters.
pub const MAX_LABEL_VALUE: usize = 256;

fn text(field: &str, value: &str, max: usize, empty_ok: bool) -> Result<(), String> {
    if !empty_ok && value.trim().is_empty() {
        return Err(format!("the hello's {field} is empty"));
    }
    let n = value.chars().count();
    if n > max {
        return Err(format!(
            "the hello's {field} is {n} characters long: at most {max} are accepted"
        ));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(format!(
            "the hello's {field} holds the control character {:?}: use printable text",
            c
        ));
    }
    Ok(())
}

/// Checks a hello: the id (1-64 of `[A-Za-z0-9_.-]`), and every text field bounded and
/// free of control characters (limits above, in DESIGN.md and the OpenAPI document).
pub fn hello(info: &AgentInfo) -> Result<(), String> {
    if !ids::is_valid_id(&info.id) {
        let shown: String = info.id.chars().take(80).collect();
        return Err(format!(
            "invalid agent id {shown:?}: use 1-64 letters, digits, `-`, `_` or `.`"
        ));
    }
    if info.service.trim().is_empty() {
        return Err("the hello has no service: set NONSTOP_SERVICE".into());
    }
    text("service", &info.service, MAX_SERVICE, false)?;
    text("host", &info.host, MAX_HOST, true)?;
    text("started", &info.started, MAX_STARTED, true)?;
    if let Some(v) = &info.version {
        text("version", v, MAX_VERSION, true)?;
    }
    if let Some(c) = &info.commit {
        text("commit", c, MAX_COMMIT, true)?;
    }
    if info.labels.len() > MAX_LABELS {
        return Err(format!(
            "the hello has {} labels: at most {MAX_LABELS} are accepted",
            info.labels.len()
        ));
    }
    for (k, v) in &info.labels {
        text("label key", k, MAX_LABEL_KEY, false)?;
        text(&format!("label {k:?}"), v, MAX_LABEL_VALUE, true)?;
    }
    Ok(())
}

fn count(what: &str, n: u64) -> Result<(), String> {
    if n > MAX_COUNT {
        return Err(format!(
            "{what} {n} is out of range: counts go up to {MAX_COUNT}; nothing of this message was kept"
        ));
    }
    Ok(())
}

/// Checks the numbers of a message: every count at most [`MAX_COUNT`]; a hello as
/// [`hello`] does.
pub fn message(msg: &AgentMessage) -> Result<(), String> {
    match msg {
        AgentMessage::Hello { agent } => hello(agent),
        AgentMessage::Ping => Ok(()),
        AgentMessage::Responses { dropped, .. } => count("dropped", *dropped),
        AgentMessage::Status { statuses } => statuses.iter().try_for_each(|s| {
            count(&format!("rule {}: hits", s.rule), s.hits)?;
            count(&format!("rule {}: dropped", s.rule), s.dropped)
        }),
        AgentMessage::Metrics { series } => series.iter().try_for_each(|s| {
            count(&format!("rule {}: count", s.rule), s.count)?;
            count(&format!("rule {}: overflow", s.rule), s.overflow)?;
            s.buckets
                .iter()
                .try_for_each(|b| count(&format!("rule {}: a bucket", s.rule), *b))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(json: serde_json::Value) -> AgentInfo {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn hello_fields_are_bounded_and_printable() {
        assert_eq!(
            hello(&info(serde_json::json!({"id": "a", "service": "s"}))),
            Ok(())
        );
        let long_commit = "é".repeat(64);
        assert_eq!(
            hello(&info(
                serde_json::json!({"id": "a", "service": "s", "commit": long_commit})
            )),
            Ok(()),
            "64 characters, 128 bytes"
        );
        assert_eq!(
            hello(&info(
                serde_json::json!({"id": "a", "service": "s\u{1b}[31m"})
            )),
            Err(
                "the hello's service holds the control character '\\u{1b}': use printable text"
                    .into()
            )
        );
        assert_eq!(
            hello(&info(
                serde_json::json!({"id": "a", "service": "s", "host": "h".repeat(256)})
            )),
            Err("the hello's host is 256 characters long: at most 255 are accepted".into())
        );
    }

    #[test]
    fn counts_past_sqlites_integers_are_refused() {
        let m = |d: u64| AgentMessage::Responses {
            responses: vec![],
            dropped: d,
        };
        assert_eq!(message(&m(MAX_COUNT)), Ok(()));
        assert_eq!(
            message(&m(MAX_COUNT + 1)),
            Err("dropped 9223372036854775808 is out of range: counts go up to 9223372036854775807; nothing of this message was kept".into())
        );
    }
}
