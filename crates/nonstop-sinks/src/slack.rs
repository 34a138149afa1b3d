//! Slack incoming webhooks: one Block Kit message per send. A batch of several hits (a
//! burst) is folded into ONE message about the first, with "N more hits" and the rules
//! and locations they came from; all of them are then sent. The pipeline paces sends at
//! 1 per second ([`SinkLimits::min_interval`]), Slack's documented rate.
//!
//! The message: a section with the service and location, the rendered message (log) or
//! the top variables (snapshot), a context line with rule, agent and thread, and a link to
//! the response when the server knows it. Metric series are [`Outcome::Skipped`].
//!
//! Answers: 200 sent; 429 retried after `Retry-After`; 5xx retried; 410
//! (`channel_is_archived`) disables the target; other 4xx are final.

use crate::http;
use crate::render;
use crate::{Delivery, Outcome, Payload, SendFuture, Sink, SinkLimits};
use nonstop_model::Response;
use serde_json::json;
use std::time::Duration;

/// Hits folded into one message at most.
pub const MAX_BATCH: usize = 500;
/// Variables shown for a snapshot.
pub const TOP_VARIABLES: usize = 6;

/// Posts to a Slack incoming webhook.
pub struct SlackSink {
    webhook: String,
    client: reqwest::Client,
    timeout: Duration,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The Block Kit message for a burst: the first hit in full, the others counted.
pub fn message(hits: &[(&Delivery, &Response)]) -> serde_json::Value {
    let Some((d, r)) = hits.first() else {
        return json!({"text": "no hits"});
    };
    let head = format!(
        "*{}* · `{}` in `{}`",
        escape(&r.service),
        escape(&render::location(r)),
        escape(&r.location.function)
    );
    let mut blocks = vec![
        json!({"type": "section", "text": {"type": "mrkdwn", "text": render::cut(&head, 3000)}}),
    ];
    let detail = match &r.message {
        Some(m) => format!("> {}", escape(m)),
        None if r.locals.is_empty() && r.watch.is_empty() => "_no variables in scope_".into(),
        None => r
            .watch
            .0
            .iter()
            .chain(r.locals.0.iter())
            .take(TOP_VARIABLES)
            .map(|(k, v)| format!("`{}` = `{}`", escape(k), escape(&render::short(v, 200))))
            .collect::<Vec<_>>()
            .join("\n"),
    };
    blocks.push(
        json!({"type": "section", "text": {"type": "mrkdwn", "text": render::cut(&detail, 3000)}}),
    );
    let mut context = format!(
        "rule `{}` · agent `{}` · thread `{}` · {}",
        escape(&r.rule),
        escape(&r.agent),
        escape(&r.thread),
        escape(&r.time)
    );
    if let Some(link) = &d.link {
        context.push_str(&format!(" · <{link}|open in nonstop>"));
    }
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": render::cut(&context, 3000)}]}));
    let more = hits.len() - 1;
    if more > 0 {
        let mut places: Vec<String> = Vec::new();
        for (_, r) in &hits[1..] {
            let p = format!("`{}`", escape(&render::location(r)));
            if !places.contains(&p) {
                places.push(p);
            }
        }
        let shown = places
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        let text = format!(
            "{more} more hit{} ({shown}{})",
            if more == 1 { "" } else { "s" },
            if places.len() > 5 { ", …" } else { "" }
        );
        blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": render::cut(&text, 3000)}]}));
    }
    let mut fallback = format!(
        "{} at {}: {}",
        r.service,
        render::location(r),
        render::body(r)
    );
    if more > 0 {
        fallback.push_str(&format!(" ({more} more hits)"));
    }
    json!({"text": render::cut(&fallback, 3000), "blocks": blocks})
}

impl SlackSink {
    /// A sink posting to `webhook`.
    pub fn new(webhook: &str, client: reqwest::Client, timeout: Duration) -> SlackSink {
        SlackSink {
            webhook: webhook.to_string(),
            client,
            timeout,
        }
    }
}

impl Sink for SlackSink {
    fn limits(&self) -> SinkLimits {
        SinkLimits {
            max_batch: MAX_BATCH,
            min_interval: Duration::from_secs(1),
            timeout: self.timeout,
        }
    }

    fn send<'a>(&'a self, batch: &'a [Delivery]) -> SendFuture<'a> {
        Box::pin(async move {
            let hits: Vec<(&Delivery, &Response)> = batch
                .iter()
                .filter_map(|d| match &d.payload {
                    Payload::Response(r) => Some((d, r)),
                    Payload::Metric { .. } => None,
                })
                .collect();
            let outcome = if hits.is_empty() {
                Outcome::Skipped
            } else {
                let req = self
                    .client
                    .post(&self.webhook)
                    .header("content-type", "application/json")
                    .body(message(&hits).to_string());
                match http::send(req, self.timeout, "Slack").await {
                    Err(o) => o,
                    Ok(a) => match a.status {
                        200..=299 => Outcome::Sent,
                        429 | 500..=599 => Outcome::Retry {
                            after: a.retry_after(),
                            reason: a.describe("Slack"),
                        },
                        410 => Outcome::Disable {
                            reason: format!(
                                "{}: the channel is archived or the webhook removed",
                                a.describe("Slack")
                            ),
                        },
                        _ => Outcome::Failed {
                            reason: a.describe("Slack"),
                        },
                    },
                }
            };
            batch
                .iter()
                .map(|d| match d.payload {
                    Payload::Response(_) => outcome.clone(),
                    Payload::Metric { .. } => Outcome::Skipped,
                })
                .collect()
        })
    }
}
