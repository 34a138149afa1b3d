//! Webhooks signed as Standard Webhooks: one JSON POST per delivery,
//! `{"type", "timestamp", "data"}` with `data` the response in the JSON form of DESIGN.md
//! (or a metric series with `agent`, `service`, `time_ms`), and `link` beside them when
//! the server knows it.
//!
//! Headers: `webhook-id` (the delivery id: the same on every retry, the receiver's
//! idempotency key), `webhook-timestamp` (Unix seconds of this attempt) and, with a
//! secret, `webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`
//! where the key is the base64-decoded part after `whsec_`.
//!
//! Answers: 2xx sent; 410 disables the target; 408, 409, 425, 429 and 5xx are retried
//! (`Retry-After` honoured); other 4xx are final. After a delivery that is retried, the
//! rest of the batch is not tried (order kept, a down receiver not hammered).

use crate::http;
use crate::render;
use crate::{Delivery, Outcome, Payload, SendFuture, Sink, SinkLimits, SpecError};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Deliveries per send (each its own POST, in order).
pub const MAX_BATCH: usize = 50;

/// Posts signed JSON.
pub struct WebhookSink {
    url: String,
    key: Option<Vec<u8>>,
    headers: BTreeMap<String, String>,
    client: reqwest::Client,
    timeout: Duration,
}

/// The signing key of a `whsec_…` secret.
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, SpecError> {
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    STANDARD.decode(b64).map_err(|e| {
        SpecError::Invalid(format!(
            "the webhook secret is not whsec_ followed by base64 ({e}): generate one with `openssl rand -base64 32` and prefix it with whsec_"
        ))
    })
}

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
pub fn signature(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The JSON body of a delivery.
pub fn payload(d: &Delivery) -> serde_json::Value {
    let (kind, timestamp, data) = match &d.payload {
        Payload::Response(r) => (
            render::event_name(r),
            r.time.clone(),
            serde_json::to_value(r).unwrap_or(serde_json::Value::Null),
        ),
        Payload::Metric {
            agent,
            service,
            series,
            time_ms,
        } => {
            let mut data = serde_json::to_value(series).unwrap_or(serde_json::Value::Null);
            data["agent"] = agent.as_str().into();
            data["service"] = service.as_str().into();
            data["time_ms"] = (*time_ms).into();
            ("nonstop.metric", render::rfc3339_ms(*time_ms), data)
        }
    };
    let mut body = serde_json::json!({"type": kind, "timestamp": timestamp, "data": data});
    if let Some(link) = &d.link {
        body["link"] = link.as_str().into();
    }
    body
}

impl WebhookSink {
    /// A sink posting to `url`, signing with `secret` when given.
    pub fn new(
        url: &str,
        secret: Option<&str>,
        headers: &BTreeMap<String, String>,
        client: reqwest::Client,
        timeout: Duration,
    ) -> Result<WebhookSink, SpecError> {
        let key = secret.map(decode_secret).transpose()?;
        for (k, v) in headers {
            if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err()
                || reqwest::header::HeaderValue::from_str(v).is_err()
            {
                return Err(SpecError::Invalid(format!(
                    "the webhook header {k:?} is not a valid header name and value (use --header NAME=VALUE with printable ASCII)"
                )));
            }
        }
        Ok(WebhookSink {
            url: url.to_string(),
            key,
            headers: headers.clone(),
            client,
            timeout,
        })
    }

    async fn send_one(&self, d: &Delivery) -> Outcome {
        let body = payload(d).to_string().into_bytes();
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |t| t.as_secs());
        let mut req = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("webhook-id", &d.id)
            .header("webhook-timestamp", ts.to_string());
        if let Some(key) = &self.key {
            req = req.header("webhook-signature", signature(key, &d.id, ts, &body));
        }
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        let answer = match http::send(req.body(body), self.timeout, "the webhook").await {
            Ok(a) => a,
            Err(o) => return o,
        };
        match answer.status {
            200..=299 => Outcome::Sent,
            410 => Outcome::Disable {
                reason: format!(
                    "{}: the receiver says this endpoint is gone (410); the target is disabled until it is added again",
                    answer.describe("the webhook")
                ),
            },
            408 | 409 | 425 | 429 | 500..=599 => Outcome::Retry {
                after: answer.retry_after(),
                reason: answer.describe("the webhook"),
            },
            _ => Outcome::Failed {
                reason: answer.describe("the webhook"),
            },
        }
    }
}

impl Sink for WebhookSink {
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
                if let Some(first) = &stop {
                    out.push(http::not_tried(first));
                    continue;
                }
                let o = self.send_one(d).await;
                if matches!(o, Outcome::Retry { .. } | Outcome::Disable { .. }) {
                    stop = Some(o.clone());
                }
                out.push(o);
            }
            out
        })
    }
}
