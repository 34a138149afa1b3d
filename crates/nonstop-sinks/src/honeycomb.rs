//! Honeycomb: `POST {base}/1/batch/{dataset}` (base `https://api.honeycomb.io` or the
//! target's `url`) with `X-Honeycomb-Team`, body `[{"data": {…}, "time": RFC3339}]`.
//!
//! Each hit's `data` is flat: `name` (`nonstop.snapshot`/`nonstop.log`), `message`,
//! `service.name`, `code.file.path`, `code.line.number`, `code.function.name`,
//! `code.stacktrace`, `thread.name`, `nonstop.rule.id`, `nonstop.hit.id`,
//! `nonstop.agent.id`, `nonstop.link`, and one `local.NAME` (`watch.EXPR`) per value:
//! scalars as they are, others as JSON text. A metric series is an event too
//! (`name: nonstop.metric`, `metric.name`, `metric.kind`, `metric.count`, …).
//!
//! Answers: a 200 carries one status per event, in order; 202 is sent, anything else is a
//! final failure of that delivery only, with Honeycomb's error. Request-level: 429 and
//! 5xx retried (`Retry-After`), other statuses final for the batch.

use crate::http;
use crate::render;
use crate::{Delivery, Outcome, Payload, SendFuture, Sink, SinkLimits};
use nonstop_model::Response;
use serde_json::{Map, Value as Json, json};
use std::time::Duration;

/// Events per request.
pub const MAX_BATCH: usize = 500;

/// Sends to Honeycomb.
pub struct HoneycombSink {
    key: String,
    url: String,
    client: reqwest::Client,
    timeout: Duration,
}

fn flat(v: Json) -> Json {
    match v {
        Json::Array(_) | Json::Object(_) => Json::String(v.to_string()),
        other => other,
    }
}

/// The event of one hit.
pub fn event(d: &Delivery, r: &Response) -> Json {
    let mut data = Map::new();
    let mut put = |k: &str, v: Json| {
        data.insert(k.to_string(), v);
    };
    put("name", json!(render::event_name(r)));
    put("message", json!(render::body(r)));
    put("service.name", json!(r.service));
    put("code.file.path", json!(r.location.file));
    put("code.line.number", json!(r.location.line));
    put("code.function.name", json!(r.location.function));
    if !r.frames.is_empty() {
        put("code.stacktrace", json!(render::stacktrace(r)));
    }
    put("thread.name", json!(r.thread));
    put("nonstop.rule.id", json!(r.rule));
    put("nonstop.hit.id", json!(d.id));
    put("nonstop.agent.id", json!(r.agent));
    if let Some(link) = &d.link {
        put("nonstop.link", json!(link));
    }
    for (k, v) in &r.locals.0 {
        put(&format!("local.{k}"), flat(render::plain(v)));
    }
    for (k, v) in &r.watch.0 {
        put(&format!("watch.{k}"), flat(render::plain(v)));
    }
    json!({"data": data, "time": r.time})
}

fn metric_event(d: &Delivery) -> Json {
    let Payload::Metric {
        agent,
        service,
        series,
        time_ms,
    } = &d.payload
    else {
        return Json::Null;
    };
    let mut data = Map::new();
    data.insert("name".into(), json!("nonstop.metric"));
    data.insert("service.name".into(), json!(service));
    data.insert("nonstop.agent.id".into(), json!(agent));
    data.insert("nonstop.rule.id".into(), json!(series.rule));
    data.insert("nonstop.hit.id".into(), json!(d.id));
    data.insert("metric.name".into(), json!(series.name));
    data.insert("metric.kind".into(), json!(series.kind));
    data.insert("metric.count".into(), json!(series.count));
    data.insert("metric.sum".into(), json!(series.sum));
    if let Some(last) = series.last {
        data.insert("metric.last".into(), json!(last));
    }
    for (k, v) in &series.tags {
        data.insert(format!("tag.{k}"), json!(v));
    }
    json!({"data": data, "time": render::rfc3339_ms(*time_ms)})
}

/// The outcomes of a 200's per-event statuses.
pub fn statuses(body: &[u8], n: usize) -> Vec<Outcome> {
    let parsed: Result<Vec<Json>, _> = serde_json::from_slice(body);
    let Ok(items) = parsed else {
        return vec![
            Outcome::Failed {
                reason: format!(
                    "Honeycomb answered 200 without its per-event statuses: {}",
                    render::cut(&String::from_utf8_lossy(body), 200)
                ),
            };
            n
        ];
    };
    (0..n)
        .map(|i| match items.get(i) {
            Some(item) => match item.get("status").and_then(Json::as_u64) {
                Some(200..=299) => Outcome::Sent,
                status => Outcome::Failed {
                    reason: format!(
                        "Honeycomb rejected the event (status {}): {}",
                        status.map_or("?".to_string(), |s| s.to_string()),
                        item.get("error")
                            .and_then(Json::as_str)
                            .unwrap_or("no reason given")
                    ),
                },
            },
            None => Outcome::Failed {
                reason: format!(
                    "Honeycomb answered {} statuses for {n} events: this one's is missing",
                    items.len()
                ),
            },
        })
        .collect()
}

impl HoneycombSink {
    /// A sink for `dataset` with the ingest `key`.
    pub fn new(
        key: &str,
        dataset: &str,
        url: Option<&str>,
        client: reqwest::Client,
        timeout: Duration,
    ) -> HoneycombSink {
        let base = url
            .unwrap_or("https://api.honeycomb.io")
            .trim_end_matches('/');
        // The dataset is one path segment.
        let dataset: String = dataset
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        HoneycombSink {
            key: key.to_string(),
            url: format!("{base}/1/batch/{dataset}"),
            client,
            timeout,
        }
    }
}

impl Sink for HoneycombSink {
    fn limits(&self) -> SinkLimits {
        SinkLimits {
            max_batch: MAX_BATCH,
            min_interval: Duration::ZERO,
            timeout: self.timeout,
        }
    }

    fn send<'a>(&'a self, batch: &'a [Delivery]) -> SendFuture<'a> {
        Box::pin(async move {
            let events: Vec<Json> = batch
                .iter()
                .map(|d| match &d.payload {
                    Payload::Response(r) => event(d, r),
                    Payload::Metric { .. } => metric_event(d),
                })
                .collect();
            let req = self
                .client
                .post(&self.url)
                .header("content-type", "application/json")
                .header("x-honeycomb-team", &self.key)
                .body(Json::Array(events).to_string());
            let answer = match http::send(req, self.timeout, "Honeycomb").await {
                Ok(a) => a,
                Err(o) => return vec![o; batch.len()],
            };
            match answer.status {
                200 => statuses(&answer.body, batch.len()),
                201..=299 => vec![Outcome::Sent; batch.len()],
                429 | 500..=599 => vec![
                    Outcome::Retry {
                        after: answer.retry_after(),
                        reason: answer.describe("Honeycomb"),
                    };
                    batch.len()
                ],
                _ => vec![
                    Outcome::Failed {
                        reason: answer.describe("Honeycomb"),
                    };
                    batch.len()
                ],
            }
        })
    }
}
