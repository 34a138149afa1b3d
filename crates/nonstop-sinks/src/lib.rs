//! Targets: where responses go beyond nonstop's own store and IDE.
//!
//! A target is named and configured on the server ([`TargetSpec`], stored as JSON). The
//! server's delivery pipeline keeps a persistent outbox per target and hands each target's
//! [`Sink`] batches of [`Delivery`]s; the sink speaks the receiving API's documented format
//! and says, per delivery, what happened ([`Outcome`]). Retrying, back-off, rate limits and
//! bookkeeping are the pipeline's; a sink sends once and classifies the answer.
//!
//! - [`spec`]: the kinds of target, their settings, validation and the redacted view;
//! - [`file`]: JSON lines in a file, rotated by size, fsync'd per batch.

pub mod file;
pub mod spec;

pub use spec::{SpecError, TargetKind, TargetSpec};

use nonstop_model::Response;
use nonstop_model::metrics::MetricSeries;
use std::future::Future;
use std::pin::Pin;
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

/// The sink for a target.
pub fn build(spec: &TargetSpec) -> Result<Box<dyn Sink>, SpecError> {
    spec.check()?;
    match &spec.kind {
        TargetKind::File { path, max_size } => Ok(Box::new(file::FileSink::new(path, *max_size))),
        other => Err(SpecError::Unsupported(other.name())),
    }
}
