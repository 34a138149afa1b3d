//! What the sinks derive from a response: its kind, short texts, plain JSON of values,
//! the stack as text, times, and ids that stay the same for a delivery.

use nonstop_model::{Data, Frame, Response, Value};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Whether a response is a log line (a log rule renders a message) rather than a snapshot.
pub fn is_log(r: &Response) -> bool {
    r.message.is_some()
}

/// `nonstop.log` or `nonstop.snapshot`: OTLP's `event_name`, the webhook's `type`.
pub fn event_name(r: &Response) -> &'static str {
    if is_log(r) {
        "nonstop.log"
    } else {
        "nonstop.snapshot"
    }
}

/// `src/cart.rs:42`.
pub fn location(r: &Response) -> String {
    format!("{}:{}", r.location.file, r.location.line)
}

/// The rendered message of a log, or for a snapshot a one-line summary:
/// `snapshot at src/cart.rs:42 in shop::cart::add (3 locals)`.
pub fn body(r: &Response) -> String {
    match &r.message {
        Some(m) => m.clone(),
        None => {
            let n = r.locals.0.len();
            let mut s = format!(
                "snapshot at {} in {} ({n} local{})",
                location(r),
                r.location.function,
                if n == 1 { "" } else { "s" }
            );
            if !r.watch.is_empty() {
                s.push_str(&format!(", {} watched", r.watch.0.len()));
            }
            s
        }
    }
}

/// A value as plain JSON, the way a person reads it: structs as objects, lists as
/// arrays; a truncated value ends with `"…"` (a string with `…`), a redacted one is
/// `"[redacted]"`, one that could not be read `"<error: …>"`.
pub fn plain(v: &Value) -> serde_json::Value {
    if v.redacted {
        return json!("[redacted]");
    }
    if let Some(e) = &v.error {
        return json!(format!("<error: {e}>"));
    }
    let mut out = match &v.value {
        Data::Null => serde_json::Value::Null,
        Data::Bool(b) => json!(b),
        Data::Int(i) => json!(i),
        Data::Uint(u) => json!(u),
        Data::Float(f) if f.is_finite() => json!(f),
        Data::Float(f) => json!(f.to_string()),
        Data::Str(s) => json!(s),
        Data::List(items) => serde_json::Value::Array(items.iter().map(plain).collect()),
        Data::Map(fields) => {
            serde_json::Value::Object(fields.iter().map(|(k, v)| (k.clone(), plain(v))).collect())
        }
    };
    if let Some(variant) = &v.variant {
        out = match out {
            serde_json::Value::Null => json!(variant),
            other => json!({ variant.clone(): other }),
        };
    }
    if v.truncated {
        match &mut out {
            serde_json::Value::String(s) => s.push('…'),
            serde_json::Value::Array(a) => a.push(json!("…")),
            serde_json::Value::Object(o) => {
                o.insert("…".into(), json!("truncated"));
            }
            _ => {}
        }
    }
    out
}

/// A value as one short line of text (at most `max` characters).
pub fn short(v: &Value, max: usize) -> String {
    let text = match plain(v) {
        serde_json::Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    };
    cut(&text, max)
}

/// `text` cut to `max` characters, with `…` when cut.
pub fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

/// The locals (and watch values) as one JSON object of plain values.
pub fn plain_locals(r: &Response) -> (serde_json::Value, serde_json::Value) {
    let obj = |l: &nonstop_model::Locals| {
        serde_json::Value::Object(l.0.iter().map(|(k, v)| (k.clone(), plain(v))).collect())
    };
    (obj(&r.locals), obj(&r.watch))
}

/// The frames with the runtime frames a folded frame stands for put back, innermost first.
pub fn unfolded(frames: &[Frame]) -> Vec<&Frame> {
    let mut out = Vec::new();
    for f in frames {
        if f.folded.is_empty() {
            out.push(f);
        } else {
            out.extend(f.folded.iter());
        }
    }
    out
}

/// The stack as text in the form of a Rust backtrace, innermost first
/// (`   0: shop::cart::add\n             at src/cart.rs:42`).
pub fn stacktrace(r: &Response) -> String {
    let mut s = String::new();
    for (i, f) in unfolded(&r.frames).iter().enumerate() {
        s.push_str(&format!("{i:4}: {}\n", f.function));
        if let Some(file) = &f.file {
            match f.line {
                Some(l) => s.push_str(&format!("             at {file}:{l}\n")),
                None => s.push_str(&format!("             at {file}\n")),
            }
        }
    }
    s
}

/// An RFC 3339 time as nanoseconds since the Unix epoch (0 when it cannot be read).
pub fn unix_nanos(rfc3339: &str) -> u64 {
    humantime::parse_rfc3339_weak(rfc3339.trim_end_matches('Z'))
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Now, in nanoseconds since the Unix epoch.
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339_ms(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// Now as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// 32 lowercase hex characters derived from a delivery id (SHA-256, first 16 bytes): the
/// same for every send of the delivery (Sentry's `event_id`).
pub fn hex_id(id: &str) -> String {
    let digest = Sha256::digest(id.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values_keep_their_marks() {
        let mut s = Value::new("String", Data::Str("abc".into()));
        s.truncated = true;
        assert_eq!(plain(&s), json!("abc…"));
        let mut o = Value::new(
            "Option<u32>",
            Data::List(vec![Value::new("u32", Data::Uint(3))]),
        );
        o.variant = Some("Some".into());
        assert_eq!(plain(&o), json!({"Some": [3]}));
        assert_eq!(
            plain(&Value::error("u8", "optimized out")),
            json!("<error: optimized out>")
        );
        assert_eq!(hex_id("d1"), hex_id("d1"));
        assert_eq!(hex_id("d1").len(), 32);
        assert_eq!(
            unix_nanos("2026-12-04T00:00:00.5Z"),
            1_796_342_400_500_000_000
        );
    }
}
