//! OTLP over HTTP/protobuf and gRPC into loopback receivers, decoded with the real
//! protobuf types.

mod support;

use nonstop_model::metrics::{HISTOGRAM_BOUNDS, MetricSeries};
use nonstop_model::{MetricKind, Response};
use nonstop_sinks::otlp::{ProtoAny, ProtoDuration, RETRY_INFO_TYPE, RetryInfo, RpcStatus};
use nonstop_sinks::{Delivery, Outcome, Payload, TargetKind, TargetSpec, build, build_with};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::metric;
use prost::Message;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{Req, context, delivery, receiver};

fn spec(url: &str, grpc: bool) -> TargetSpec {
    TargetSpec {
        name: "otel".into(),
        kind: TargetKind::Otlp {
            url: url.into(),
            grpc,
            headers: BTreeMap::from([("authorization".to_string(), "Bearer t0k".to_string())]),
        },
    }
}

fn attr<'a>(kvs: &'a [KeyValue], key: &str) -> &'a any_value::Value {
    kvs.iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
        .unwrap_or_else(|| panic!("no attribute {key} in {kvs:?}"))
}

fn text(v: &any_value::Value) -> &str {
    match v {
        any_value::Value::StringValue(s) => s,
        other => panic!("not a string: {other:?}"),
    }
}

fn int(v: &any_value::Value) -> i64 {
    match v {
        any_value::Value::IntValue(i) => *i,
        other => panic!("not an int: {other:?}"),
    }
}

fn kvlist(v: &any_value::Value) -> &[KeyValue] {
    match v {
        any_value::Value::KvlistValue(l) => &l.values,
        other => panic!("not a kvlist: {other:?}"),
    }
}

fn metric_delivery(id: &str) -> Delivery {
    let mut buckets = vec![0u64; HISTOGRAM_BOUNDS.len() + 1];
    buckets[9] = 3; // (0.5, 1]
    buckets[12] = 1; // (5, 10]
    Delivery {
        id: id.into(),
        payload: Payload::Metric {
            agent: "web-1-4242-ab12".into(),
            service: "shop".into(),
            series: MetricSeries {
                rule: "m-1".into(),
                name: "cart.latency_ms".into(),
                kind: MetricKind::Histogram,
                tags: BTreeMap::from([("route".to_string(), "/cart".to_string())]),
                count: 4,
                sum: 11.5,
                last: None,
                buckets,
                updated: "2026-12-04T10:00:00Z".into(),
                overflow: 0,
            },
            time_ms: 1_796_378_400_000,
        },
        link: None,
    }
}

/// Checks the records of the snapshot `d1` and the log `d2` as decoded.
fn check_logs(req: &ExportLogsServiceRequest) {
    assert_eq!(req.resource_logs.len(), 1);
    let rl = &req.resource_logs[0];
    let res = &rl.resource.as_ref().unwrap().attributes;
    assert_eq!(text(attr(res, "service.name")), "shop");
    assert_eq!(text(attr(res, "service.instance.id")), "web-1-4242-ab12");
    assert_eq!(text(attr(res, "host.name")), "web-1");
    assert_eq!(int(attr(res, "process.pid")), 4242);
    assert_eq!(text(attr(res, "service.version")), "1.4.2");
    let records: &[LogRecord] = &rl.scope_logs[0].log_records;
    assert_eq!(rl.scope_logs[0].scope.as_ref().unwrap().name, "nonstop");
    assert_eq!(records.len(), 2);
    let (snap, log) = (&records[0], &records[1]);
    assert_eq!(snap.event_name, "nonstop.snapshot");
    assert_eq!(log.event_name, "nonstop.log");
    assert_eq!(
        snap.body.as_ref().unwrap().value,
        Some(any_value::Value::StringValue(
            "snapshot at src/cart.rs:42 in shop::cart::add (7 locals), 1 watched".into()
        ))
    );
    assert_eq!(
        log.body.as_ref().unwrap().value,
        Some(any_value::Value::StringValue("added 3 x widget".into()))
    );
    assert_eq!(snap.time_unix_nano, 1_796_378_400_250_000_000);
    assert_eq!(snap.severity_text, "INFO");
    let a = &snap.attributes;
    assert_eq!(text(attr(a, "code.file.path")), "src/cart.rs");
    assert_eq!(int(attr(a, "code.line.number")), 42);
    assert_eq!(text(attr(a, "code.function.name")), "shop::cart::add");
    assert_eq!(text(attr(a, "thread.name")), "tokio-runtime-worker");
    assert_eq!(text(attr(a, "nonstop.rule.id")), "r-7");
    assert_eq!(text(attr(a, "nonstop.hit.id")), "d1");
    assert_eq!(text(attr(&log.attributes, "nonstop.hit.id")), "d2");
    assert_eq!(
        text(attr(a, "code.stacktrace")),
        "   0: shop::cart::add\n             at src/cart.rs:42\n   1: shop::api::handle\n             at src/api.rs:17\n   2: shop::main\n             at src/main.rs:9\n"
    );
    // The captured values: kvlists of {type, value, marks}, nested.
    let locals = kvlist(attr(a, "nonstop.locals"));
    let names: Vec<&str> = locals.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        names,
        ["qty", "name", "price", "ok", "cart", "token", "gone"]
    );
    let qty = kvlist(attr(locals, "qty"));
    assert_eq!(text(attr(qty, "type")), "u32");
    assert_eq!(int(attr(qty, "value")), 3);
    let name = kvlist(attr(locals, "name"));
    assert_eq!(text(attr(name, "value")), "widget-deluxe");
    assert_eq!(attr(name, "truncated"), &any_value::Value::BoolValue(true));
    assert_eq!(
        attr(kvlist(attr(locals, "price")), "value"),
        &any_value::Value::DoubleValue(9.5)
    );
    let cart = kvlist(attr(locals, "cart"));
    assert_eq!(text(attr(cart, "type")), "shop::cart::Cart");
    let fields = kvlist(attr(cart, "value"));
    assert_eq!(int(attr(kvlist(attr(fields, "id")), "value")), 7);
    let items = match attr(kvlist(attr(fields, "items")), "value") {
        any_value::Value::ArrayValue(a) => &a.values,
        other => panic!("items: {other:?}"),
    };
    let item = kvlist(items[0].value.as_ref().unwrap());
    let item_fields = kvlist(attr(item, "value"));
    assert_eq!(text(attr(kvlist(attr(item_fields, "sku")), "value")), "A1");
    assert_eq!(int(attr(kvlist(attr(item_fields, "qty")), "value")), -2);
    let owner = kvlist(attr(fields, "owner"));
    assert_eq!(text(attr(owner, "variant")), "Some");
    let token = kvlist(attr(locals, "token"));
    assert_eq!(attr(token, "redacted"), &any_value::Value::BoolValue(true));
    assert!(
        token
            .iter()
            .find(|kv| kv.key == "value")
            .is_some_and(|kv| kv.value == Some(AnyValue { value: None }))
    );
    let gone = kvlist(attr(locals, "gone"));
    assert_eq!(text(attr(gone, "error")), "optimized out");
    let watch = kvlist(attr(a, "nonstop.watch"));
    assert_eq!(int(attr(kvlist(attr(watch, "qty * 2")), "value")), 6);
}

fn check_metrics(req: &ExportMetricsServiceRequest) {
    let rm = &req.resource_metrics[0];
    assert_eq!(
        text(attr(
            &rm.resource.as_ref().unwrap().attributes,
            "service.name"
        )),
        "shop"
    );
    let m = &rm.scope_metrics[0].metrics[0];
    assert_eq!(m.name, "cart.latency_ms");
    let Some(metric::Data::Histogram(h)) = &m.data else {
        panic!("not a histogram: {m:?}");
    };
    assert_eq!(h.aggregation_temporality, 2); // cumulative
    let p = &h.data_points[0];
    assert_eq!(p.count, 4);
    assert_eq!(p.sum, Some(11.5));
    assert_eq!(p.explicit_bounds, HISTOGRAM_BOUNDS.to_vec());
    assert_eq!(p.bucket_counts.len(), HISTOGRAM_BOUNDS.len() + 1);
    assert_eq!(p.bucket_counts.iter().sum::<u64>(), 4);
    assert_eq!((p.bucket_counts[9], p.bucket_counts[12]), (3, 1));
    assert_eq!(text(attr(&p.attributes, "route")), "/cart");
    assert_eq!(text(attr(&p.attributes, "nonstop.rule.id")), "m-1");
    assert_eq!(p.time_unix_nano, 1_796_378_400_000_000_000);
    assert_eq!(p.start_time_unix_nano, 1_796_374_800_000_000_000);
}

#[tokio::test]
async fn http_protobuf_logs_and_metrics_carry_the_documented_fields() {
    let rx = receiver(|req: &Req, _| {
        let body = if req.path == "/v1/logs" {
            ExportLogsServiceResponse::default().encode_to_vec()
        } else {
            ExportMetricsServiceResponse::default().encode_to_vec()
        };
        (
            200,
            vec![("content-type".into(), "application/x-protobuf".into())],
            body,
        )
    })
    .await;
    let sink = build_with(&spec(&format!("{}/", rx.url), false), &context()).unwrap();
    let batch = [
        delivery("d1", None),
        delivery("d2", Some("added 3 x widget")),
        metric_delivery("m1"),
    ];
    assert_eq!(sink.send(&batch).await, vec![Outcome::Sent; 3]);
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 2);
    let (logs, metrics) = (&reqs[0], &reqs[1]);
    assert_eq!(
        (logs.method.as_str(), logs.path.as_str()),
        ("POST", "/v1/logs")
    );
    assert_eq!(logs.header("content-type"), "application/x-protobuf");
    assert_eq!(logs.header("authorization"), "Bearer t0k");
    check_logs(&ExportLogsServiceRequest::decode(logs.body.as_slice()).unwrap());
    assert_eq!(metrics.path, "/v1/metrics");
    check_metrics(&ExportMetricsServiceRequest::decode(metrics.body.as_slice()).unwrap());
}

fn retry_info_status(secs: i64) -> Vec<u8> {
    RpcStatus {
        code: 8,
        message: "slow down".into(),
        details: vec![ProtoAny {
            type_url: RETRY_INFO_TYPE.into(),
            value: RetryInfo {
                retry_delay: Some(ProtoDuration {
                    seconds: secs,
                    nanos: 0,
                }),
            }
            .encode_to_vec(),
        }],
    }
    .encode_to_vec()
}

#[tokio::test]
async fn http_answers_are_classified_as_otlp_documents() {
    let in_a_minute =
        httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(60));
    let answers: Vec<support::Answer> = vec![
        (429, vec![("retry-after".into(), "7".into())], vec![]),
        (502, vec![], vec![]),
        (503, vec![("retry-after".into(), in_a_minute)], vec![]),
        (504, vec![], retry_info_status(3)),
        (
            400,
            vec![],
            RpcStatus {
                code: 3,
                message: "bad field".into(),
                details: vec![],
            }
            .encode_to_vec(),
        ),
        (413, vec![], vec![]),
        (500, vec![], vec![]),
        (
            200,
            vec![],
            ExportLogsServiceResponse {
                partial_success: Some(ExportLogsPartialSuccess {
                    rejected_log_records: 1,
                    error_message: "attribute too long".into(),
                }),
            }
            .encode_to_vec(),
        ),
    ];
    let n = answers.len();
    let rx = receiver(move |_, i| answers[i].clone()).await;
    let sink = build(&spec(&rx.url, false)).unwrap();
    let mut outcomes = Vec::new();
    for i in 0..n {
        let batch = [
            delivery(&format!("d{i}"), None),
            delivery(&format!("e{i}"), None),
        ];
        let got = sink.send(&batch).await;
        assert_eq!(got[0], got[1], "one outcome for the whole export");
        outcomes.push(got[0].clone());
    }
    let after = |o: &Outcome| match o {
        Outcome::Retry { after, .. } => *after,
        other => panic!("not a retry: {other:?}"),
    };
    assert_eq!(after(&outcomes[0]), Some(Duration::from_secs(7)));
    assert_eq!(after(&outcomes[1]), None);
    let date_wait = after(&outcomes[2]).expect("the HTTP-date is read");
    assert!(
        date_wait > Duration::from_secs(55) && date_wait <= Duration::from_secs(60),
        "{date_wait:?}"
    );
    assert_eq!(
        after(&outcomes[3]),
        Some(Duration::from_secs(3)),
        "RetryInfo in the body"
    );
    let failed = |o: &Outcome| match o {
        Outcome::Failed { reason } => reason.clone(),
        other => panic!("not final: {other:?}"),
    };
    assert_eq!(
        failed(&outcomes[4]),
        "the OTLP collector answered HTTP 400: bad field"
    );
    assert!(
        failed(&outcomes[5]).contains("HTTP 413"),
        "{:?}",
        outcomes[5]
    );
    assert!(failed(&outcomes[5]).contains("too large"));
    assert_eq!(failed(&outcomes[6]), "the OTLP collector answered HTTP 500");
    assert_eq!(
        failed(&outcomes[7]),
        "the collector rejected 1 of 2 log records of this export (partial success; OTLP does not say which): attribute too long"
    );
}

#[tokio::test]
async fn a_collector_that_is_down_is_retried() {
    let port = nonstop_testkit::free_port();
    let sink = build(&spec(&format!("http://127.0.0.1:{port}"), false)).unwrap();
    let got = sink.send(&[delivery("d1", None)]).await;
    match &got[0] {
        Outcome::Retry {
            after: None,
            reason,
        } => {
            assert!(
                reason.starts_with("cannot reach the OTLP collector"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
}

type LogsReply =
    Arc<dyn Fn(usize) -> Result<ExportLogsServiceResponse, tonic::Status> + Send + Sync>;

type Authorized = (ExportLogsServiceRequest, Option<String>);

struct Collector {
    /// Each export with its `authorization` metadata.
    logs: Arc<Mutex<Vec<Authorized>>>,
    metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
    reply: LogsReply,
}

/// The collector as a tonic service.
struct Svc(Arc<Collector>);

#[tonic::async_trait]
impl LogsService for Svc {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let auth = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let n = {
            let mut logs = self.0.logs.lock().unwrap();
            logs.push((request.into_inner(), auth));
            logs.len() - 1
        };
        (self.0.reply)(n).map(tonic::Response::new)
    }
}

#[tonic::async_trait]
impl MetricsService for Svc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.metrics.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

async fn collector(reply: LogsReply) -> (String, Arc<Collector>) {
    let c = Arc::new(Collector {
        logs: Arc::default(),
        metrics: Arc::default(),
        reply,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let server = tonic::transport::Server::builder()
        .add_service(LogsServiceServer::new(Svc(c.clone())))
        .add_service(MetricsServiceServer::new(Svc(c.clone())));
    tokio::spawn(async move {
        let _ = server.serve_with_incoming(incoming).await;
    });
    (format!("http://{addr}"), c)
}

#[tokio::test]
async fn grpc_export_carries_the_same_records_and_metadata() {
    let (url, c) = collector(Arc::new(|_| Ok(ExportLogsServiceResponse::default()))).await;
    let sink = build_with(&spec(&url, true), &context()).unwrap();
    let batch = [
        delivery("d1", None),
        delivery("d2", Some("added 3 x widget")),
        metric_delivery("m1"),
    ];
    assert_eq!(sink.send(&batch).await, vec![Outcome::Sent; 3]);
    let logs = c.logs.lock().unwrap().clone();
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].1.as_deref(), Some("Bearer t0k"));
    check_logs(&logs[0].0);
    check_metrics(&c.metrics.lock().unwrap()[0]);
}

#[tokio::test]
async fn grpc_codes_are_retried_only_where_otlp_says() {
    let details = retry_info_status(4);
    let (url, _c) = collector(Arc::new(move |n| match n {
        0 => Err(tonic::Status::unavailable("restarting")),
        1 => Err(tonic::Status::resource_exhausted("too big")),
        2 => Err(tonic::Status::with_details(
            tonic::Code::ResourceExhausted,
            "slow down",
            details.clone().into(),
        )),
        3 => Err(tonic::Status::invalid_argument("bad record")),
        _ => Ok(ExportLogsServiceResponse {
            partial_success: Some(ExportLogsPartialSuccess {
                rejected_log_records: 2,
                error_message: "dropped".into(),
            }),
        }),
    }))
    .await;
    let sink = build(&spec(&url, true)).unwrap();
    let mut got = Vec::new();
    for i in 0..5 {
        got.push(
            sink.send(&[delivery(&format!("d{i}"), None), delivery("x", None)])
                .await,
        );
    }
    assert!(
        matches!(&got[0][0], Outcome::Retry { after: None, reason } if reason.contains("Unavailable")),
        "{:?}",
        got[0]
    );
    assert!(
        matches!(&got[1][0], Outcome::Failed { reason } if reason.contains("ResourceExhausted"))
    );
    assert_eq!(
        got[2][0],
        Outcome::Retry {
            after: Some(Duration::from_secs(4)),
            reason: "the OTLP collector answered gRPC ResourceExhausted: slow down".into()
        }
    );
    assert!(matches!(&got[3][0], Outcome::Failed { reason } if reason.contains("bad record")));
    assert_eq!(
        got[4],
        vec![
            Outcome::Failed {
                reason: "the collector rejected 2 of 2 log records of this export (partial success; OTLP does not say which): dropped".into()
            };
            2
        ]
    );
}

#[test]
fn responses_without_message_are_snapshots() {
    let r: Response = support::response(None);
    assert_eq!(nonstop_sinks::render::event_name(&r), "nonstop.snapshot");
}
