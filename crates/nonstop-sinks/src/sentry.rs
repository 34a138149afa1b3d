//! Sentry: each hit is an event in its own envelope (Sentry takes one event per
//! envelope), `POST {proto}://{host}{path}/api/{project}/envelope/` with
//! `X-Sentry-Auth: Sentry sentry_version=7, sentry_client=nonstop/VERSION, sentry_key=KEY`.
//!
//! The event: `event_id` 32 hex characters derived from the delivery id (the same on every
//! retry, so Sentry drops a duplicate), `platform: native`, `level: info`, `logger:
//! nonstop`, the message (log) or summary (snapshot), tags `service`, `rule`, `agent`,
//! `location` (`file:line`), a thread whose stacktrace has the frames oldest→newest, the
//! captured locals as the probed (newest) frame's `vars`, watch values and the link in
//! `extra`; `server_name` and `release` when the [`SinkContext`] knows the agent. Logs are
//! sent as events too (with their message), not as Sentry log items. Metric series are
//! [`Outcome::Skipped`].
//!
//! Answers: 2xx sent; 429 retried after `X-Sentry-Rate-Limits` (the limit for events:
//! categories `error`, `default` or all), else `Retry-After`, else 60 s; such a limit
//! seen on any answer holds the next sends until it ends (they are retried without being
//! sent). 5xx retried; 400, 401, 403, 413 and other statuses final.

use crate::http::{self, Answer};
use crate::render;
use crate::{Delivery, Outcome, Payload, SendFuture, Sink, SinkContext, SinkLimits, SpecError};
use nonstop_model::Response;
use serde_json::json;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Deliveries per send (one envelope each, in order).
pub const MAX_BATCH: usize = 50;
/// Frames Sentry keeps.
pub const MAX_FRAMES: usize = 50;

/// Sends events to Sentry.
pub struct SentrySink {
    endpoint: String,
    dsn: String,
    auth: String,
    ctx: SinkContext,
    client: reqwest::Client,
    timeout: Duration,
    held_until: Mutex<Option<Instant>>,
}

/// The envelope URL and the public key of a DSN.
pub fn parse_dsn(dsn: &str) -> Result<(String, String), SpecError> {
    let bad = |why: &str| {
        SpecError::Invalid(format!(
            "the Sentry DSN {:?} {why}: copy it from the project's Client Keys page (https://KEY@HOST/PROJECT)",
            crate::spec::redact(dsn)
        ))
    };
    let (scheme, rest) = dsn.split_once("://").ok_or_else(|| bad("has no scheme"))?;
    let (auth, host_path) = rest.rsplit_once('@').ok_or_else(|| bad("has no key"))?;
    let key = auth.split(':').next().unwrap_or("");
    if key.is_empty() {
        return Err(bad("has an empty key"));
    }
    let host_path = host_path.trim_end_matches('/');
    let (host_and_path, project) = host_path
        .rsplit_once('/')
        .ok_or_else(|| bad("has no project id"))?;
    if project.is_empty() || host_and_path.is_empty() {
        return Err(bad("has no project id"));
    }
    Ok((
        format!("{scheme}://{host_and_path}/api/{project}/envelope/"),
        key.to_string(),
    ))
}

/// The wait an `X-Sentry-Rate-Limits` value asks for events, if any.
pub fn rate_limit(value: &str) -> Option<Duration> {
    value
        .split(',')
        .filter_map(|limit| {
            let mut parts = limit.trim().split(':');
            let secs: f64 = parts.next()?.trim().parse().ok()?;
            let categories = parts.next().unwrap_or("");
            let ours = categories.is_empty()
                || categories
                    .split(';')
                    .any(|c| matches!(c.trim(), "error" | "default"));
            ours.then(|| Duration::from_secs_f64(secs.max(0.0)))
        })
        .max()
}

/// The event of one hit.
pub fn event(ctx: &SinkContext, d: &Delivery, r: &Response) -> serde_json::Value {
    let (locals, watch) = render::plain_locals(r);
    let mut frames: Vec<serde_json::Value> = render::unfolded(&r.frames)
        .iter()
        .take(MAX_FRAMES)
        .map(|f| {
            json!({
                "function": f.function,
                "filename": f.file,
                "abs_path": f.file,
                "lineno": f.line,
                "in_app": !nonstop_model::is_runtime_frame(&f.function),
            })
        })
        .collect();
    if frames.is_empty() {
        frames.push(json!({
            "function": r.location.function,
            "filename": r.location.file,
            "lineno": r.location.line,
            "in_app": true,
        }));
    }
    // The probed frame (innermost) carries the variables; Sentry wants oldest first.
    frames[0]["vars"] = locals;
    frames.reverse();
    let cut = |s: &str| render::cut(s, 200);
    let mut e = json!({
        "event_id": render::hex_id(&d.id),
        "timestamp": r.time,
        "platform": "native",
        "level": "info",
        "logger": "nonstop",
        "culprit": r.location.function,
        "message": {"formatted": render::body(r)},
        "tags": {
            "service": cut(&r.service),
            "rule": cut(&r.rule),
            "agent": cut(&r.agent),
            "location": cut(&render::location(r)),
            "kind": if render::is_log(r) { "log" } else { "snapshot" },
        },
        "threads": {"values": [{
            "id": r.thread,
            "name": r.thread,
            "current": true,
            "crashed": false,
            "stacktrace": {"frames": frames},
        }]},
        "extra": {"nonstop.hit.id": d.id},
        "sdk": {"name": "nonstop", "version": env!("CARGO_PKG_VERSION")},
    });
    if !r.watch.is_empty() {
        e["extra"]["watch"] = watch;
    }
    if let Some(link) = &d.link {
        e["extra"]["link"] = link.as_str().into();
    }
    if let Some(info) = ctx.agent(&r.agent) {
        if !info.host.is_empty() {
            e["server_name"] = info.host.into();
        }
        if let Some(v) = info.version {
            e["release"] = v.into();
        }
    }
    e
}

/// The envelope of one event: header, item header, payload, `\n`-separated.
pub fn envelope(dsn: &str, event: &serde_json::Value) -> Vec<u8> {
    let payload = event.to_string();
    let header = json!({
        "event_id": event["event_id"],
        "dsn": dsn,
        "sdk": {"name": "nonstop", "version": env!("CARGO_PKG_VERSION")},
        "sent_at": render::now_rfc3339(),
    });
    let item =
        json!({"type": "event", "length": payload.len(), "content_type": "application/json"});
    format!("{header}\n{item}\n{payload}\n").into_bytes()
}

impl SentrySink {
    /// A sink for the project of `dsn`.
    pub fn new(
        dsn: &str,
        ctx: SinkContext,
        client: reqwest::Client,
        timeout: Duration,
    ) -> Result<SentrySink, SpecError> {
        let (endpoint, key) = parse_dsn(dsn)?;
        Ok(SentrySink {
            endpoint,
            dsn: dsn.to_string(),
            auth: format!(
                "Sentry sentry_version=7, sentry_client=nonstop/{}, sentry_key={key}",
                env!("CARGO_PKG_VERSION")
            ),
            ctx,
            client,
            timeout,
            held_until: Mutex::new(None),
        })
    }

    fn hold(&self, wait: Duration) {
        let mut held = self.held_until.lock().unwrap_or_else(|p| p.into_inner());
        let until = Instant::now() + wait;
        if held.is_none_or(|h| h < until) {
            *held = Some(until);
        }
    }

    fn held(&self) -> Option<Duration> {
        let held = self.held_until.lock().unwrap_or_else(|p| p.into_inner());
        held.and_then(|h| h.checked_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }

    fn classify(&self, a: &Answer) -> Outcome {
        let limit = http::header_str(&a.headers, "x-sentry-rate-limits").and_then(rate_limit);
        if let Some(wait) = limit {
            self.hold(wait);
        }
        match a.status {
            200..=299 => Outcome::Sent,
            429 => {
                let wait = limit
                    .or_else(|| a.retry_after())
                    .unwrap_or(Duration::from_secs(60));
                self.hold(wait);
                Outcome::Retry {
                    after: Some(wait),
                    reason: a.describe("Sentry"),
                }
            }
            500..=599 => Outcome::Retry {
                after: a.retry_after(),
                reason: a.describe("Sentry"),
            },
            _ => Outcome::Failed {
                reason: a.describe("Sentry"),
            },
        }
    }

    async fn send_one(&self, d: &Delivery, r: &Response) -> Outcome {
        if let Some(wait) = self.held() {
            return Outcome::Retry {
                after: Some(wait),
                reason: "Sentry's rate limit for events is in force".into(),
            };
        }
        let body = envelope(&self.dsn, &event(&self.ctx, d, r));
        let req = self
            .client
            .post(&self.endpoint)
            .header("content-type", "application/x-sentry-envelope")
            .header("x-sentry-auth", &self.auth)
            .body(body);
        match http::send(req, self.timeout, "Sentry").await {
            Ok(a) => self.classify(&a),
            Err(o) => o,
        }
    }
}

impl Sink for SentrySink {
    fn limits(&self) -> SinkLimits {
        SinkLimits {
            max_batch: MAX_BATCH,
            min_interval: Duration::ZERO,
            timeout: self.timeout,
        }
    }

    fn send<'a>(&'a self, batch: &'a [Delivery]) -> SendFuture<'a> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(batch.len());
            let mut stop: Option<Outcome> = None;
            for d in batch {
                let Payload::Response(r) = &d.payload else {
                    out.push(Outcome::Skipped);
                    continue;
                };
                if let Some(first) = &stop {
                    out.push(http::not_tried(first));
                    continue;
                }
                let o = self.send_one(d, r).await;
                if matches!(o, Outcome::Retry { .. }) {
                    stop = Some(o.clone());
                }
                out.push(o);
            }
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsns_and_rate_limits_are_read() {
        assert_eq!(
            parse_dsn("https://abc123@o1.ingest.sentry.io/42").unwrap(),
            (
                "https://o1.ingest.sentry.io/api/42/envelope/".to_string(),
                "abc123".to_string()
            )
        );
        assert_eq!(
            parse_dsn("http://k:secret@127.0.0.1:9000/sub/7").unwrap().0,
            "http://127.0.0.1:9000/sub/api/7/envelope/"
        );
        assert!(parse_dsn("https://abc@host").is_err());
        assert_eq!(
            rate_limit("60:transaction:key, 2700:default;error:organization"),
            Some(Duration::from_secs(2700))
        );
        assert_eq!(
            rate_limit("30::organization"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(rate_limit("30:transaction:key"), None);
    }
}
