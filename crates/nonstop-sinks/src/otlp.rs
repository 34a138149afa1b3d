//! OTLP: responses as log records (`POST {url}/v1/logs`, `application/x-protobuf`, or
//! gRPC `LogsService/Export`), metric series as OTLP metrics (`/v1/metrics` or
//! `MetricsService/Export`), built from the `opentelemetry-proto` crate's types.
//!
//! One LogRecord per hit: `event_name` `nonstop.snapshot` / `nonstop.log`, body the
//! rendered message or a short summary, attributes `code.file.path`, `code.line.number`,
//! `code.function.name`, `code.stacktrace`, `thread.name`, `nonstop.rule.id`,
//! `nonstop.hit.id` (the delivery id), `nonstop.locals` and `nonstop.watch` (kvlists of
//! `{type, value, variant?, truncated?, redacted?, error?}` per value, nested as the values
//! are). The resource has `service.name`, `service.instance.id` (the agent id) and, when
//! the [`SinkContext`] knows the agent, `host.name`, `process.pid`, `service.version`.
//!
//! Answers: HTTP 2xx is sent; only 429/502/503/504 are retried (with `Retry-After`, or a
//! `google.rpc.RetryInfo` in the error body); 413 and every other status are final. gRPC:
//! CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE, DATA_LOSS are retried,
//! RESOURCE_EXHAUSTED only with a RetryInfo. A `partial_success` that rejected records is
//! final for the whole request (OTLP does not say which records were rejected), with the
//! collector's message.

use crate::http::{self, Answer};
use crate::render;
use crate::{Delivery, Outcome, Payload, SendFuture, Sink, SinkContext, SinkLimits, SpecError};
use nonstop_model::metrics::{HISTOGRAM_BOUNDS, MetricSeries};
use nonstop_model::{Data, MetricKind, Response, Value};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::OnceCell;

/// The most log records (or series) in one export.
pub const MAX_BATCH: usize = 512;

/// Sends to an OTLP collector.
pub struct OtlpSink {
    base: String,
    grpc: bool,
    headers: BTreeMap<String, String>,
    ctx: SinkContext,
    client: reqwest::Client,
    timeout: Duration,
    channel: OnceCell<Result<tonic::transport::Channel, String>>,
}

/// `google.rpc.Status`, the body of OTLP errors (HTTP) and gRPC status details.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    /// The gRPC code.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// The message.
    #[prost(string, tag = "2")]
    pub message: String,
    /// Details (`google.protobuf.Any`).
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<ProtoAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoAny {
    /// `type.googleapis.com/google.rpc.RetryInfo`, ….
    #[prost(string, tag = "1")]
    pub type_url: String,
    /// The message's bytes.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RetryInfo {
    /// How long to wait.
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoDuration {
    /// Seconds.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// The type URL of `google.rpc.RetryInfo` in a status' details.
pub const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// The RetryInfo delay in an encoded `google.rpc.Status`, if it has one.
pub fn retry_info(status_bytes: &[u8]) -> Option<Duration> {
    let status = RpcStatus::decode(status_bytes).ok()?;
    status
        .details
        .iter()
        .filter(|d| d.type_url == RETRY_INFO_TYPE)
        .find_map(|d| RetryInfo::decode(d.value.as_slice()).ok()?.retry_delay)
        .map(|d| {
            Duration::from_secs(u64::try_from(d.seconds).unwrap_or(0))
                + Duration::from_nanos(u64::try_from(d.nanos).unwrap_or(0))
        })
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn s(text: impl Into<String>) -> any_value::Value {
    any_value::Value::StringValue(text.into())
}

/// A captured value as an AnyValue: a kvlist `{type, value, variant?, truncated?,
/// redacted?, error?}` whose `value` nests lists as arrays and structs/maps as kvlists.
pub fn value_any(v: &Value) -> AnyValue {
    let mut fields = vec![kv("type", s(&v.type_name))];
    if let Some(variant) = &v.variant {
        fields.push(kv("variant", s(variant)));
    }
    let data = match &v.value {
        Data::Null => None,
        Data::Bool(b) => Some(any_value::Value::BoolValue(*b)),
        Data::Int(i) => Some(any_value::Value::IntValue(*i)),
        Data::Uint(u) => Some(match i64::try_from(*u) {
            Ok(i) => any_value::Value::IntValue(i),
            // Past i64: the exact digits as text rather than a wrapped number.
            Err(_) => s(u.to_string()),
        }),
        Data::Float(f) => Some(any_value::Value::DoubleValue(*f)),
        Data::Str(t) => Some(s(t)),
        Data::List(items) => Some(any_value::Value::ArrayValue(ArrayValue {
            values: items.iter().map(value_any).collect(),
        })),
        Data::Map(entries) => Some(any_value::Value::KvlistValue(KeyValueList {
            values: entries
                .iter()
                .map(|(k, v)| KeyValue {
                    key: k.clone(),
                    value: Some(value_any(v)),
                    ..Default::default()
                })
                .collect(),
        })),
    };
    fields.push(KeyValue {
        key: "value".into(),
        value: Some(AnyValue { value: data }),
        ..Default::default()
    });
    if v.truncated {
        fields.push(kv("truncated", any_value::Value::BoolValue(true)));
    }
    if v.redacted {
        fields.push(kv("redacted", any_value::Value::BoolValue(true)));
    }
    if let Some(e) = &v.error {
        fields.push(kv("error", s(e)));
    }
    AnyValue {
        value: Some(any_value::Value::KvlistValue(KeyValueList {
            values: fields,
        })),
    }
}

fn locals_any(l: &nonstop_model::Locals) -> any_value::Value {
    any_value::Value::KvlistValue(KeyValueList {
        values: l
            .0
            .iter()
            .map(|(k, v)| KeyValue {
                key: k.clone(),
                value: Some(value_any(v)),
                ..Default::default()
            })
            .collect(),
    })
}

/// The log record of one hit.
pub fn log_record(d: &Delivery, r: &Response) -> LogRecord {
    let mut attributes = vec![
        kv("code.file.path", s(&r.location.file)),
        kv(
            "code.line.number",
            any_value::Value::IntValue(i64::from(r.location.line)),
        ),
        kv("code.function.name", s(&r.location.function)),
        kv("thread.name", s(&r.thread)),
        kv("nonstop.rule.id", s(&r.rule)),
        kv("nonstop.hit.id", s(&d.id)),
    ];
    if !r.frames.is_empty() {
        attributes.push(kv("code.stacktrace", s(render::stacktrace(r))));
    }
    attributes.push(kv("nonstop.locals", locals_any(&r.locals)));
    if !r.watch.is_empty() {
        attributes.push(kv("nonstop.watch", locals_any(&r.watch)));
    }
    if let Some(link) = &d.link {
        attributes.push(kv("nonstop.link", s(link)));
    }
    LogRecord {
        time_unix_nano: render::unix_nanos(&r.time),
        observed_time_unix_nano: render::now_nanos(),
        severity_number: SeverityNumber::Info as i32,
        severity_text: "INFO".into(),
        body: Some(AnyValue {
            value: Some(s(render::body(r))),
        }),
        attributes,
        event_name: render::event_name(r).into(),
        ..Default::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "nonstop".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

/// The resource of an agent: `service.name`, `service.instance.id`, and what the context
/// knows (`host.name`, `process.pid`, `service.version`).
pub fn resource(ctx: &SinkContext, agent: &str, service: &str) -> Resource {
    let mut attributes = vec![
        kv("service.name", s(service)),
        kv("service.instance.id", s(agent)),
    ];
    if let Some(info) = ctx.agent(agent) {
        if !info.host.is_empty() {
            attributes.push(kv("host.name", s(&info.host)));
        }
        if info.pid != 0 {
            attributes.push(kv(
                "process.pid",
                any_value::Value::IntValue(i64::from(info.pid)),
            ));
        }
        if let Some(v) = &info.version {
            attributes.push(kv("service.version", s(v)));
        }
    }
    Resource {
        attributes,
        ..Default::default()
    }
}

/// The logs export of the responses (grouped by agent, in order).
pub fn logs_request(
    ctx: &SinkContext,
    items: &[(&Delivery, &Response)],
) -> ExportLogsServiceRequest {
    let mut groups: Vec<((String, String), Vec<LogRecord>)> = Vec::new();
    for (d, r) in items {
        let key = (r.agent.clone(), r.service.clone());
        let record = log_record(d, r);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, records)) => records.push(record),
            None => groups.push((key, vec![record])),
        }
    }
    ExportLogsServiceRequest {
        resource_logs: groups
            .into_iter()
            .map(|((agent, service), log_records)| ResourceLogs {
                resource: Some(resource(ctx, &agent, &service)),
                scope_logs: vec![ScopeLogs {
                    scope: Some(scope()),
                    log_records,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

/// The OTLP metric of one series: a count is a monotonic cumulative sum, a gauge a
/// gauge of the last value, a histogram an explicit-bucket histogram over
/// [`HISTOGRAM_BOUNDS`].
pub fn metric(ctx: &SinkContext, agent: &str, series: &MetricSeries, time_ms: i64) -> Metric {
    let time_unix_nano = u64::try_from(time_ms)
        .unwrap_or(0)
        .saturating_mul(1_000_000);
    let start_time_unix_nano = ctx
        .agent(agent)
        .map_or(0, |info| render::unix_nanos(&info.started));
    let mut attributes = vec![kv("nonstop.rule.id", s(&series.rule))];
    for (k, v) in &series.tags {
        attributes.push(kv(k, s(v)));
    }
    let cumulative = AggregationTemporality::Cumulative as i32;
    let data = match series.kind {
        MetricKind::Count => metric::Data::Sum(Sum {
            data_points: vec![NumberDataPoint {
                attributes,
                start_time_unix_nano,
                time_unix_nano,
                value: Some(number_data_point::Value::AsInt(
                    i64::try_from(series.count).unwrap_or(i64::MAX),
                )),
                ..Default::default()
            }],
            aggregation_temporality: cumulative,
            is_monotonic: true,
        }),
        MetricKind::Gauge => metric::Data::Gauge(Gauge {
            data_points: vec![NumberDataPoint {
                attributes,
                start_time_unix_nano,
                time_unix_nano,
                value: Some(number_data_point::Value::AsDouble(
                    series.last.unwrap_or(0.0),
                )),
                ..Default::default()
            }],
        }),
        MetricKind::Histogram => {
            let mut bucket_counts = series.buckets.clone();
            bucket_counts.resize(HISTOGRAM_BOUNDS.len() + 1, 0);
            metric::Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    attributes,
                    start_time_unix_nano,
                    time_unix_nano,
                    count: series.count,
                    sum: Some(series.sum),
                    bucket_counts,
                    explicit_bounds: HISTOGRAM_BOUNDS.to_vec(),
                    ..Default::default()
                }],
                aggregation_temporality: cumulative,
            })
        }
    };
    Metric {
        name: series.name.clone(),
        description: format!("recorded by the nonstop metric rule {}", series.rule),
        data: Some(data),
        ..Default::default()
    }
}

/// The metrics export of the series (grouped by agent).
pub fn metrics_request(
    ctx: &SinkContext,
    items: &[(&str, &str, &MetricSeries, i64)],
) -> ExportMetricsServiceRequest {
    let mut groups: Vec<((String, String), Vec<Metric>)> = Vec::new();
    for (agent, service, series, time_ms) in items {
        let key = (agent.to_string(), service.to_string());
        let m = metric(ctx, agent, series, *time_ms);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, ms)) => ms.push(m),
            None => groups.push((key, vec![m])),
        }
    }
    ExportMetricsServiceRequest {
        resource_metrics: groups
            .into_iter()
            .map(|((agent, service), metrics)| ResourceMetrics {
                resource: Some(resource(ctx, &agent, &service)),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope()),
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

/// The outcome of a partial success: `rejected` of `total` items (records or data
/// points) refused. OTLP does not say which, so a rejection is final for the whole
/// request, with the collector's message.
fn partial(rejected: i64, message: &str, total: usize, what: &str) -> Outcome {
    if rejected <= 0 {
        return Outcome::Sent;
    }
    Outcome::Failed {
        reason: format!(
            "the collector rejected {rejected} of {total} {what} of this export (partial success; OTLP does not say which){}",
            if message.is_empty() {
                String::new()
            } else {
                format!(": {message}")
            }
        ),
    }
}

/// The outcome of an HTTP answer to an export, reading the body as `decode` says on 200.
fn http_outcome(answer: &Answer, on_ok: impl FnOnce(&[u8]) -> Outcome) -> Outcome {
    let who = "the OTLP collector";
    if (200..300).contains(&answer.status) {
        return on_ok(&answer.body);
    }
    // Error bodies are a google.rpc.Status: its message says more than the status.
    let status = RpcStatus::decode(answer.body.as_slice()).ok();
    let described = match status.as_ref().filter(|s| !s.message.is_empty()) {
        Some(s) => format!("{who} answered HTTP {}: {}", answer.status, s.message),
        None => answer.describe(who),
    };
    match http::classify_strict(answer, who) {
        Outcome::Retry { after, .. } => Outcome::Retry {
            after: after.or_else(|| retry_info(&answer.body)),
            reason: described,
        },
        Outcome::Failed { .. } if answer.status == 413 => Outcome::Failed {
            reason: format!("{described}; the export is too large (not retried)"),
        },
        Outcome::Failed { .. } => Outcome::Failed { reason: described },
        other => other,
    }
}

/// The outcome of a gRPC error status.
pub fn grpc_outcome(status: &tonic::Status) -> Outcome {
    use tonic::Code;
    let reason = format!(
        "the OTLP collector answered gRPC {:?}: {}",
        status.code(),
        status.message()
    );
    let info = retry_info(status.details());
    match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => Outcome::Retry {
            after: info,
            reason,
        },
        Code::ResourceExhausted if info.is_some() => Outcome::Retry {
            after: info,
            reason,
        },
        _ => Outcome::Failed { reason },
    }
}

impl OtlpSink {
    /// A sink for the collector at `base` (`http://collector:4318`, or `:4317` with `grpc`).
    pub fn new(
        base: &str,
        grpc: bool,
        headers: &BTreeMap<String, String>,
        ctx: SinkContext,
        client: reqwest::Client,
        timeout: Duration,
    ) -> Result<OtlpSink, SpecError> {
        for (k, v) in headers {
            let bad = reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err()
                || reqwest::header::HeaderValue::from_str(v).is_err()
                || (grpc
                    && tonic::metadata::MetadataKey::<tonic::metadata::Ascii>::from_bytes(
                        k.to_ascii_lowercase().as_bytes(),
                    )
                    .is_err());
            if bad {
                return Err(SpecError::Invalid(format!(
                    "the OTLP header {k:?} is not a valid header name and value (use --header NAME=VALUE with printable ASCII)"
                )));
            }
        }
        Ok(OtlpSink {
            base: base.trim_end_matches('/').to_string(),
            grpc,
            headers: headers.clone(),
            ctx,
            client,
            timeout,
            channel: OnceCell::new(),
        })
    }

    async fn post(&self, path: &str, body: Vec<u8>) -> Result<Answer, Outcome> {
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-protobuf")
            .body(body);
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        http::send(req, self.timeout, "the OTLP collector").await
    }

    async fn channel(&self) -> Result<tonic::transport::Channel, Outcome> {
        let made = self
            .channel
            .get_or_init(|| async {
                let mut endpoint = tonic::transport::Endpoint::from_shared(self.base.clone())
                    .map_err(|e| {
                        format!("the OTLP URL {:?} is not usable for gRPC: {e}", self.base)
                    })?
                    .connect_timeout(self.timeout)
                    .timeout(self.timeout);
                if self.base.starts_with("https://") {
                    endpoint = endpoint
                        .tls_config(tonic::transport::ClientTlsConfig::new().with_webpki_roots())
                        .map_err(|e| format!("cannot set up TLS for {}: {e}", self.base))?;
                }
                Ok(endpoint.connect_lazy())
            })
            .await;
        made.clone().map_err(|reason| Outcome::Retry {
            after: None,
            reason,
        })
    }

    fn grpc_request<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        req.set_timeout(self.timeout);
        for (k, v) in &self.headers {
            if let (Ok(key), Ok(value)) = (
                tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes()),
                v.parse(),
            ) {
                req.metadata_mut().insert(key, value);
            }
        }
        req
    }

    async fn export_logs(&self, items: &[(&Delivery, &Response)]) -> Outcome {
        let request = logs_request(&self.ctx, items);
        let n = items.len();
        if self.grpc {
            let channel = match self.channel().await {
                Ok(c) => c,
                Err(o) => return o,
            };
            let mut client = LogsServiceClient::new(channel);
            match client.export(self.grpc_request(request)).await {
                Ok(resp) => {
                    let p = resp.into_inner().partial_success.unwrap_or_default();
                    partial(p.rejected_log_records, &p.error_message, n, "log records")
                }
                Err(status) => grpc_outcome(&status),
            }
        } else {
            match self.post("/v1/logs", request.encode_to_vec()).await {
                Ok(answer) => http_outcome(&answer, |body| {
                    match ExportLogsServiceResponse::decode(body) {
                        Ok(r) => {
                            let p = r.partial_success.unwrap_or_default();
                            partial(p.rejected_log_records, &p.error_message, n, "log records")
                        }
                        // A 2xx whose body is not the response message (some proxies
                        // answer with nothing or JSON): taken.
                        Err(_) => Outcome::Sent,
                    }
                }),
                Err(o) => o,
            }
        }
    }

    async fn export_metrics(&self, items: &[(&str, &str, &MetricSeries, i64)]) -> Outcome {
        let request = metrics_request(&self.ctx, items);
        let n = items.len();
        if self.grpc {
            let channel = match self.channel().await {
                Ok(c) => c,
                Err(o) => return o,
            };
            let mut client = MetricsServiceClient::new(channel);
            match client.export(self.grpc_request(request)).await {
                Ok(resp) => {
                    let p = resp.into_inner().partial_success.unwrap_or_default();
                    partial(p.rejected_data_points, &p.error_message, n, "data points")
                }
                Err(status) => grpc_outcome(&status),
            }
        } else {
            match self.post("/v1/metrics", request.encode_to_vec()).await {
                Ok(answer) => http_outcome(&answer, |body| {
                    match ExportMetricsServiceResponse::decode(body) {
                        Ok(r) => {
                            let p = r.partial_success.unwrap_or_default();
                            partial(p.rejected_data_points, &p.error_message, n, "data points")
                        }
                        Err(_) => Outcome::Sent,
                    }
                }),
                Err(o) => o,
            }
        }
    }
}

impl Sink for OtlpSink {
    fn limits(&self) -> SinkLimits {
        SinkLimits {
            max_batch: MAX_BATCH,
            min_interval: Duration::ZERO,
            timeout: self.timeout,
        }
    }

    fn send<'a>(&'a self, batch: &'a [Delivery]) -> SendFuture<'a> {
        Box::pin(async move {
            let mut logs = Vec::new();
            let mut metrics = Vec::new();
            for d in batch {
                match &d.payload {
                    Payload::Response(r) => logs.push((d, r)),
                    Payload::Metric {
                        agent,
                        service,
                        series,
                        time_ms,
                    } => metrics.push((agent.as_str(), service.as_str(), series, *time_ms)),
                }
            }
            let logs_outcome = if logs.is_empty() {
                Outcome::Skipped
            } else {
                self.export_logs(&logs).await
            };
            let metrics_outcome = if metrics.is_empty() {
                Outcome::Skipped
            } else {
                self.export_metrics(&metrics).await
            };
            batch
                .iter()
                .map(|d| match d.payload {
                    Payload::Response(_) => logs_outcome.clone(),
                    Payload::Metric { .. } => metrics_outcome.clone(),
                })
                .collect()
        })
    }
}
