//! Targets: where responses go beyond nonstop's own store and IDE.
//!
//! A target is named and configured on the server ([`TargetSpec`], stored as JSON). The
//! server's delivery pipeline keeps a persistent outbox per target and hands each target's
//! [`Sink`] batches of [`Delivery`]s; the sink speaks the receiving API's documented format
//! and says, per delivery, what happened ([`Outcome`]). Retrying, back-off, rate limits and
//! bookkeeping are the pipeline's; a sink sends once and classifies the answer.
//!
//! - [`spec`]: the kinds of target, their settings, validation and the redacted view;
//! - [`file`]: JSON lines in a file, rotated by size, fsync'd per batch;
//! - [`otlp`]: OTLP logs and metrics over HTTP/protobuf or gRPC;
//! - [`sentry`]: Sentry events through the envelope endpoint;
//! - [`datadog`]: Datadog logs intake v2 and metric series;
//! - [`honeycomb`]: Honeycomb's batch events API;
//! - [`slack`]: Slack incoming webhooks with Block Kit, bursts folded into one message;
//! - [`webhook`]: JSON POSTs signed as Standard Webhooks;
//! - [`http`]: the HTTP client and the answer classification they share;
//! - [`render`]: texts, plain JSON and ids derived from responses.

pub mod datadog;
pub mod file;
pub mod honeycomb;
pub mod http;
pub mod otlp;
pub mod render;
pub mod sentry;
pub mod slack;
pub mod spec;
pub mod webhook;

pub use spec::{SpecError, TargetKind, TargetSpec};

use nonstop_model::metrics::MetricSeries;
use nonstop_model::{AgentInfo, Response};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// What one delivery carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// A log or snapshot hit.
    Response(Response),
    /// An agent's newest report of a metric rule's series (cumulative values).
    Metric {
        /// The agent that reported it.
        agent: String,
        /// That agent's service.
        service: String,
        /// The series.
        series: MetricSeries,
        /// When the server received it, Unix ms.
        time_ms: i64,
    },
}

/// One item of a target's outbox, handed to its sink.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Stable for this item across retries and server restarts (the outbox row's id in the
    /// store, prefixed): the webhook id, the Sentry `event_id`'s seed, OTLP's
    /// `nonstop.hit.id`, so a receiver can recognise a batch sent again after a crash.
    pub id: String,
    /// What to deliver.
    pub payload: Payload,
    /// A link to this response in the IDE, when the server knows its public URL.
    pub link: Option<String>,
}

/// What happened to one delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The receiver took it.
    Sent,
    /// Try again later: a retryable status or a network error. `after` is what the receiver
    /// asked for (`Retry-After`, `RetryInfo`, Sentry's rate limits), if anything.
    Retry {
        /// How long the receiver asked to wait.
        after: Option<Duration>,
        /// What went wrong, for the delivery state.
        reason: String,
    },
    /// Final: the receiver refused it (a 4xx other than those retried, a rejected event, a
    /// partial success); never sent again.
    Failed {
        /// Why, for the delivery state.
        reason: String,
    },
    /// The receiver said the target is gone (a webhook's 410): the pipeline disables the
    /// target, with this reason as its status.
    Disable {
        /// Why.
        reason: String,
    },
    /// This kind of target does not take this payload (a metric for Slack): nothing sent,
    /// nothing to retry.
    Skipped,
}

/// How a target wants to be fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkLimits {
    /// Most deliveries in one [`Sink::send`].
    pub max_batch: usize,
    /// Least time between two sends (Slack: 1 s per webhook), or zero.
    pub min_interval: Duration,
    /// How long one send may take before the pipeline gives up on it (and retries).
    pub timeout: Duration,
}

/// A future a sink returns; boxed so sinks can be chosen at run time.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Vec<Outcome>> + Send + 'a>>;

/// One target's sender.
pub trait Sink: Send + Sync {
    /// How to batch and pace this target.
    fn limits(&self) -> SinkLimits;
    /// Sends a batch (at most `limits().max_batch`) once; returns one outcome per delivery,
    /// in the batch's order.
    fn send<'a>(&'a self, batch: &'a [Delivery]) -> SendFuture<'a>;
}

/// Looks up what the server knows of an agent (host, pid, version) by its id.
pub type AgentLookup = Arc<dyn Fn(&str) -> Option<AgentInfo> + Send + Sync>;

/// What the server can give sinks beyond the target's own settings. Everything is
/// optional: [`build`] uses the default.
#[derive(Clone, Default)]
pub struct SinkContext {
    /// Agents by id: fills OTLP's `host.name`, `process.pid`, `service.version` (and
    /// Sentry's `server_name`/`release`, Datadog's `hostname`), which a [`Response`] does
    /// not carry. Without it those are left out.
    pub agents: Option<AgentLookup>,
    /// An HTTP client to share between sinks; without it each sink makes its own
    /// ([`http::client`]).
    pub client: Option<reqwest::Client>,
    /// Overrides each sink's [`SinkLimits::timeout`] (per request).
    pub timeout: Option<Duration>,
}

impl SinkContext {
    /// What the lookup knows of `agent`.
    pub fn agent(&self, agent: &str) -> Option<AgentInfo> {
        self.agents.as_ref().and_then(|f| f(agent))
    }

    fn client(&self) -> Result<reqwest::Client, SpecError> {
        match &self.client {
            Some(c) => Ok(c.clone()),
            None => http::client().map_err(SpecError::Invalid),
        }
    }
}

impl std::fmt::Debug for SinkContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkContext")
            .field("agents", &self.agents.is_some())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The sink for a target, with the default [`SinkContext`].
pub fn build(spec: &TargetSpec) -> Result<Box<dyn Sink>, SpecError> {
    build_with(spec, &SinkContext::default())
}

/// The sink for a target, with what the server knows beyond its settings.
pub fn build_with(spec: &TargetSpec, ctx: &SinkContext) -> Result<Box<dyn Sink>, SpecError> {
    spec.check()?;
    let timeout = |default: u64| ctx.timeout.unwrap_or(Duration::from_secs(default));
    Ok(match &spec.kind {
        TargetKind::File { path, max_size } => Box::new(file::FileSink::new(path, *max_size)),
        TargetKind::Otlp { url, grpc, headers } => Box::new(otlp::OtlpSink::new(
            url,
            *grpc,
            headers,
            ctx.clone(),
            ctx.client()?,
            timeout(30),
        )?),
        TargetKind::Sentry { dsn } => Box::new(sentry::SentrySink::new(
            dsn,
            ctx.clone(),
            ctx.client()?,
            timeout(30),
        )?),
        TargetKind::Datadog { api_key, site, url } => Box::new(datadog::DatadogSink::new(
            api_key,
            site,
            url.as_deref(),
            ctx.clone(),
            ctx.client()?,
            timeout(30),
        )),
        TargetKind::Honeycomb { key, dataset, url } => Box::new(honeycomb::HoneycombSink::new(
            key,
            dataset,
            url.as_deref(),
            ctx.client()?,
            timeout(30),
        )),
        TargetKind::Slack { webhook } => {
            Box::new(slack::SlackSink::new(webhook, ctx.client()?, timeout(15)))
        }
        TargetKind::Webhook {
            url,
            secret,
            headers,
        } => Box::new(webhook::WebhookSink::new(
            url,
            secret.as_deref(),
            headers,
            ctx.client()?,
            timeout(30),
        )?),
    })
}
