//! Datadog: responses to the logs intake v2 (`POST {base}/api/v2/logs`, base
//! `https://http-intake.logs.{site}` or the target's `url`), with `DD-API-KEY`, gzip, at
//! most 1000 entries and 5 MB (uncompressed) a request: a larger batch is split. Each
//! entry: `ddsource: nonstop`, `ddtags` (`rule:…,agent:…,location:…,kind:…`), `service`,
//! `hostname` (the agent's host when the [`SinkContext`] knows it, else the agent id),
//! `message`, `status: info`, and a `nonstop` object with the hit id, rule, location,
//! thread, plain locals, watch values and the stack.
//!
//! Metric series go to `POST {api}/api/v2/series` (`https://api.{site}` or the `url`):
//! Datadog's `count` type is a delta per interval, and the agents report cumulative
//! totals, so every series is sent as gauges (type 3): a count as `NAME` (the running
//! total), a gauge as `NAME` (the last value), a histogram as `NAME.count`, `NAME.sum`
//! and the bucket upper bounds of its median and 99th percentile, `NAME.p50`, `NAME.p99`.
//!
//! Answers (docs.datadoghq.com): 2xx sent; 408, 429 and 5xx retried (`Retry-After`);
//! 400, 401, 403, 413 and other 4xx final.

use crate::http::{self, Answer};
use crate::render;
use crate::{Delivery, Outcome, Payload, SendFuture, Sink, SinkContext, SinkLimits};
use flate2::Compression;
use flate2::write::GzEncoder;
use nonstop_model::metrics::{MetricSeries, quantile_upper_bound};
use nonstop_model::{MetricKind, Response};
use serde_json::json;
use std::io::Write;
use std::time::Duration;

/// Entries per request, Datadog's limit.
pub const MAX_BATCH: usize = 1000;
/// Uncompressed bytes per request, Datadog's limit (5 MB), less room for the brackets.
pub const MAX_BYTES: usize = 5_000_000 - 1024;

/// Sends to Datadog.
pub struct DatadogSink {
    api_key: String,
    logs_base: String,
    api_base: String,
    ctx: SinkContext,
    client: reqwest::Client,
    timeout: Duration,
}

fn tag_value(v: &str) -> String {
    // Tags are `key:value` joined by commas: a comma would split one.
    render::cut(&v.replace(',', ";"), 200)
}

/// The log entry of one hit.
pub fn entry(ctx: &SinkContext, d: &Delivery, r: &Response) -> serde_json::Value {
    let hostname = ctx
        .agent(&r.agent)
        .map(|a| a.host)
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| r.agent.clone());
    let (locals, watch) = render::plain_locals(r);
    let ddtags = [
        format!("rule:{}", tag_value(&r.rule)),
        format!("agent:{}", tag_value(&r.agent)),
        format!("location:{}", tag_value(&render::location(r))),
        format!(
            "kind:{}",
            if render::is_log(r) { "log" } else { "snapshot" }
        ),
    ]
    .join(",");
    let mut e = json!({
        "ddsource": "nonstop",
        "ddtags": ddtags,
        "service": r.service,
        "hostname": hostname,
        "message": render::body(r),
        "status": "info",
        "timestamp": render::unix_nanos(&r.time) / 1_000_000,
        "logger": {"name": "nonstop", "thread_name": r.thread, "method_name": r.location.function},
        "nonstop": {
            "hit_id": d.id,
            "rule": r.rule,
            "agent": r.agent,
            "event": render::event_name(r),
            "location": {"file": r.location.file, "line": r.location.line, "function": r.location.function},
            "locals": locals,
            "stack": render::stacktrace(r),
        },
    });
    if !r.watch.is_empty() {
        e["nonstop"]["watch"] = watch;
    }
    if let Some(link) = &d.link {
        e["nonstop"]["link"] = link.as_str().into();
    }
    e
}

/// The series of one metric report (see the module's notes on types).
pub fn series(
    ctx: &SinkContext,
    agent: &str,
    service: &str,
    s: &MetricSeries,
    time_ms: i64,
) -> Vec<serde_json::Value> {
    let host = ctx
        .agent(agent)
        .map(|a| a.host)
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| agent.to_string());
    let mut tags = vec![
        format!("service:{}", tag_value(service)),
        format!("rule:{}", tag_value(&s.rule)),
        format!("agent:{}", tag_value(agent)),
    ];
    tags.extend(s.tags.iter().map(|(k, v)| format!("{k}:{}", tag_value(v))));
    let one = |name: String, value: f64| {
        json!({
            "metric": name,
            "type": 3,
            "points": [{"timestamp": time_ms / 1000, "value": value}],
            "tags": tags,
            "resources": [{"name": host, "type": "host"}],
        })
    };
    match s.kind {
        MetricKind::Count => vec![one(s.name.clone(), s.count as f64)],
        MetricKind::Gauge => vec![one(s.name.clone(), s.last.unwrap_or(0.0))],
        MetricKind::Histogram => {
            let mut out = vec![
                one(format!("{}.count", s.name), s.count as f64),
                one(format!("{}.sum", s.name), s.sum),
            ];
            for (q, suffix) in [(0.5, "p50"), (0.99, "p99")] {
                if let Some(b) = quantile_upper_bound(&s.buckets, q).filter(|b| b.is_finite()) {
                    out.push(one(format!("{}.{suffix}", s.name), b));
                }
            }
            out
        }
    }
}

fn gzip(body: &[u8]) -> Result<Vec<u8>, String> {
    let mut enc = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::fast());
    enc.write_all(body)
        .and_then(|()| enc.finish())
        .map_err(|e| format!("cannot gzip the request: {e}"))
}

fn classify(a: &Answer) -> Outcome {
    match a.status {
        200..=299 => Outcome::Sent,
        408 | 429 | 500..=599 => Outcome::Retry {
            after: a.retry_after(),
            reason: a.describe("Datadog"),
        },
        _ => Outcome::Failed {
            reason: a.describe("Datadog"),
        },
    }
}

/// Splits serialized entries into chunks of at most `max_bytes` as a JSON array (an
/// entry larger than that goes alone: Datadog truncates it).
pub fn chunks(entries: &[String], max_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut size = 2;
    for (i, e) in entries.iter().enumerate() {
        if i > start && size + e.len() + 1 > max_bytes {
            out.push(start..i);
            start = i;
            size = 2;
        }
        size += e.len() + 1;
    }
    if start < entries.len() {
        out.push(start..entries.len());
    }
    out
}

impl DatadogSink {
    /// A sink for `site` (or the `url` override) with `api_key`.
    pub fn new(
        api_key: &str,
        site: &str,
        url: Option<&str>,
        ctx: SinkContext,
        client: reqwest::Client,
        timeout: Duration,
    ) -> DatadogSink {
        let (logs_base, api_base) = match url {
            Some(u) => (
                u.trim_end_matches('/').to_string(),
                u.trim_end_matches('/').to_string(),
            ),
            None => (
                format!("https://http-intake.logs.{site}"),
                format!("https://api.{site}"),
            ),
        };
        DatadogSink {
            api_key: api_key.to_string(),
            logs_base,
            api_base,
            ctx,
            client,
            timeout,
        }
    }

    async fn post(&self, url: String, json_body: &[u8]) -> Outcome {
        let body = match gzip(json_body) {
            Ok(b) => b,
            Err(reason) => {
                return Outcome::Retry {
                    after: None,
                    reason,
                };
            }
        };
        let req = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .header("dd-api-key", &self.api_key)
            .body(body);
        match http::send(req, self.timeout, "Datadog").await {
            Ok(a) => classify(&a),
            Err(o) => o,
        }
    }
}

impl Sink for DatadogSink {
    fn limits(&self) -> SinkLimits {
        SinkLimits {
            max_batch: MAX_BATCH,
            min_interval: Duration::ZERO,
            timeout: self.timeout,
        }
    }

    fn send<'a>(&'a self, batch: &'a [Delivery]) -> SendFuture<'a> {
        Box::pin(async move {
            let mut out = vec![Outcome::Skipped; batch.len()];
            let mut logs: Vec<(usize, String)> = Vec::new();
            let mut metric_idx = Vec::new();
            let mut metric_series = Vec::new();
            for (i, d) in batch.iter().enumerate() {
                match &d.payload {
                    Payload::Response(r) => logs.push((i, entry(&self.ctx, d, r).to_string())),
                    Payload::Metric {
                        agent,
                        service,
                        series: s,
                        time_ms,
                    } => {
                        metric_idx.push(i);
                        metric_series.extend(series(&self.ctx, agent, service, s, *time_ms));
                    }
                }
            }
            let texts: Vec<String> = logs.iter().map(|(_, t)| t.clone()).collect();
            for range in chunks(&texts, MAX_BYTES) {
                let body = format!("[{}]", texts[range.clone()].join(","));
                let o = self
                    .post(format!("{}/api/v2/logs", self.logs_base), body.as_bytes())
                    .await;
                for (i, _) in &logs[range] {
                    out[*i] = o.clone();
                }
            }
            if !metric_idx.is_empty() {
                let body = json!({"series": metric_series}).to_string();
                let o = self
                    .post(format!("{}/api/v2/series", self.api_base), body.as_bytes())
                    .await;
                for i in metric_idx {
                    out[i] = o.clone();
                }
            }
            out
        })
    }
}
