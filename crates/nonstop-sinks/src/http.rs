//! The HTTP side every network sink shares: the client (reqwest on the workspace's rustls
//! with ring and the webpki roots, as the server's own HTTPS), one request sent once with a
//! timeout, and the reading of `Retry-After`.

use crate::Outcome;
use reqwest::header::HeaderMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A client for the sinks: TLS by rustls with the ring provider and the Mozilla roots
/// (no process-wide provider needed), HTTP/1.1.
pub fn client() -> Result<reqwest::Client, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS for the targets: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .user_agent(concat!("nonstop/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot make the targets' HTTP client: {e}"))
}

/// What a receiver answered.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as text, cut to 300 characters, for a delivery's reason.
    pub fn body_text(&self) -> String {
        let t = String::from_utf8_lossy(&self.body);
        let t = t.trim();
        if t.chars().count() > 300 {
            format!("{}…", t.chars().take(300).collect::<String>())
        } else {
            t.to_string()
        }
    }

    /// `Retry-After` (seconds or an HTTP-date), as a wait from now.
    pub fn retry_after(&self) -> Option<Duration> {
        header_str(&self.headers, "retry-after")
            .and_then(|v| parse_retry_after(v, SystemTime::now()))
    }

    /// `HTTP 503: body` for a reason.
    pub fn describe(&self, who: &str) -> String {
        let body = self.body_text();
        if body.is_empty() {
            format!("{who} answered HTTP {}", self.status)
        } else {
            format!("{who} answered HTTP {}: {body}", self.status)
        }
    }
}

/// A header's value as text, if present and text.
pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Parses a `Retry-After` value: delay-seconds, or an HTTP-date (a date in the past is
/// no wait).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = value.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Some(Duration::from_secs_f64(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Sends a request once with `timeout`; a network error or a timeout is a
/// [`Outcome::Retry`] whose reason names `who`.
pub async fn send(
    req: reqwest::RequestBuilder,
    timeout: Duration,
    who: &str,
) -> Result<Answer, Outcome> {
    let sent = req.timeout(timeout).send().await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) => return Err(network_error(who, &e, timeout)),
    };
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    match resp.bytes().await {
        Ok(body) => Ok(Answer {
            status,
            headers,
            body: body.to_vec(),
        }),
        Err(e) => Err(network_error(who, &e, timeout)),
    }
}

fn network_error(who: &str, e: &reqwest::Error, timeout: Duration) -> Outcome {
    let reason = if e.is_timeout() {
        format!("{who} did not answer within {} s", timeout.as_secs_f64())
    } else {
        // The chain of causes says what actually failed (refused, DNS, TLS).
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        format!("cannot reach {who}: {text}")
    };
    Outcome::Retry {
        after: None,
        reason,
    }
}

/// The common rule for receivers that document "retry 429, 502, 503, 504 only" (OTLP,
/// Standard Webhooks' throttling): those are [`Outcome::Retry`] with `Retry-After`, any
/// other 2xx is [`Outcome::Sent`], anything else [`Outcome::Failed`].
pub fn classify_strict(answer: &Answer, who: &str) -> Outcome {
    match answer.status {
        200..=299 => Outcome::Sent,
        429 | 502 | 503 | 504 => Outcome::Retry {
            after: answer.retry_after(),
            reason: answer.describe(who),
        },
        413 => Outcome::Failed {
            reason: format!(
                "{}; the batch is too large for the receiver (not retried)",
                answer.describe(who)
            ),
        },
        _ => Outcome::Failed {
            reason: answer.describe(who),
        },
    }
}

/// The outcome for the deliveries after one that must be retried, in a sink that sends
/// one request per delivery: not tried now, so order is kept and a down receiver is
/// not hammered.
pub fn not_tried(first: &Outcome) -> Outcome {
    match first {
        Outcome::Retry { after, reason } => Outcome::Retry {
            after: *after,
            reason: format!("not sent: an earlier delivery of the batch failed ({reason})"),
        },
        Outcome::Disable { reason } => Outcome::Disable {
            reason: reason.clone(),
        },
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Fri, 04 Dec 2026 13:00:00 GMT").unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Fri, 04 Dec 2026 13:01:30 GMT", now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse_retry_after("Fri, 04 Dec 2026 12:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
