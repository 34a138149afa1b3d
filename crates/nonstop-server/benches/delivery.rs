//! The delivery pipeline's throughput and latency: a real server (SQLite store) takes
//! responses from an agent over the WebSocket and delivers them to an OTLP/HTTP collector
//! and a webhook receiver on loopback, both answering 200 at once.
//!
//! `cargo bench -p nonstop-server --bench delivery [-- RESPONSES]` (default 20,000).
//! For each target it prints responses per second (from the first response sent to the
//! last one received) and the latency from the agent's send to the receiver's read,
//! p50/p99: once for a burst sent as fast as the server takes it (batches of 100; the
//! latency there is mostly queueing), once at a steady 200 responses/s (batches of 10).

#[path = "../tests/common/mod.rs"]
mod common;

use common::{FakeAgent, TestServer, http_receiver, response};
use nonstop_model::AgentMessage;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// When each `t=NANOS` message arrived, as nanoseconds since the bench's epoch.
type Arrivals = Arc<Mutex<Vec<(u64, u64)>>>;

/// A receiver answering 200 that notes when each `t=` stamp `parse` finds in a body arrived.
fn receiver(epoch: Instant, parse: fn(&[u8]) -> Vec<u64>) -> (String, Arrivals) {
    let arrivals: Arrivals = Arc::default();
    let out = arrivals.clone();
    let url = http_receiver(move |body| {
        let now = epoch.elapsed().as_nanos() as u64;
        let stamps = parse(body);
        out.lock()
            .expect("arrivals")
            .extend(stamps.into_iter().map(|t| (t, now)));
        200
    });
    (url, arrivals)
}

fn stamp(message: &str) -> Option<u64> {
    message.strip_prefix("t=")?.parse().ok()
}

/// A webhook body: `{"data": {"message": "t=…"}}`.
fn webhook_stamps(body: &[u8]) -> Vec<u64> {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    v["data"]["message"]
        .as_str()
        .and_then(stamp)
        .into_iter()
        .collect()
}

/// An OTLP logs export: each record's string body.
fn otlp_stamps(body: &[u8]) -> Vec<u64> {
    let Ok(req) = ExportLogsServiceRequest::decode(body) else {
        return Vec::new();
    };
    req.resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .flat_map(|s| &s.log_records)
        .filter_map(|l| match l.body.as_ref().and_then(|b| b.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => stamp(s),
            _ => None,
        })
        .collect()
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(0)
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    let epoch = Instant::now();
    let (otlp_url, otlp) = receiver(epoch, otlp_stamps);
    let (hook_url, hook) = receiver(epoch, webhook_stamps);

    let dir = tempfile::tempdir().expect("a temp dir");
    let s = TestServer::start_at(dir.path(), "127.0.0.1:0".parse().expect("addr"), |c| {
        c.retention.per_rule = 2 * n as u64 + 1;
        c.outbox.limits.max_pending = 2 * n as u64 + 1;
    });
    for body in [
        serde_json::json!({"name": "otel", "kind": "otlp", "url": otlp_url}),
        serde_json::json!({"name": "hook", "kind": "webhook", "url": format!("{hook_url}/in"),
                           "secret": "whsec_bm9uc3RvcC1iZW5jaC1zZWNyZXQ="}),
    ] {
        let (status, answer) = s.call("POST", "/api/v1/targets", Some(&body.to_string()));
        assert_eq!(status, 201, "{answer}");
    }
    let rule = s.add_rule(
        r#"{"at":"src/cart.rs:42","action":"log","template":"{n}","to":["ui","otel","hook"]}"#,
    );
    let mut agent: FakeAgent = s.agent("bench-1", "checkout");
    agent.recv_rule_ids();

    println!("| load | target | delivered | responses/s | hit → target p50 | p99 |");
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    // A burst as fast as the server takes it: the pipeline's throughput (latency is queueing).
    let burst = format!("burst of {n}, batches of 100");
    send(&mut agent, &rule, epoch, n, 100, None, &[&otlp, &hook]);
    report(&burst, &otlp, &hook);
    // A steady 200 responses/s (batches of 10 every 50 ms): the latency of one delivery.
    let steady = n.min(2_000);
    send(
        &mut agent,
        &rule,
        epoch,
        steady,
        10,
        Some(Duration::from_millis(50)),
        &[&otlp, &hook],
    );
    report(&format!("{steady} at 200/s"), &otlp, &hook);
}

/// Sends `n` responses stamped with their send time in batches of `batch` (every `pace`, or
/// as fast as they go), then waits until every receiver has them all.
fn send(
    agent: &mut FakeAgent,
    rule: &str,
    epoch: Instant,
    n: usize,
    batch: usize,
    pace: Option<Duration>,
    receivers: &[&Arrivals],
) {
    for r in receivers {
        r.lock().expect("arrivals").clear();
    }
    let mut i = 0;
    while i < n {
        let responses: Vec<_> = (i..(i + batch).min(n))
            .map(|k| {
                let mut r = response(rule, "bench-1", k as u32);
                r.message = Some(format!("t={}", epoch.elapsed().as_nanos()));
                r
            })
            .collect();
        i += responses.len();
        agent.send(&AgentMessage::Responses {
            responses,
            dropped: 0,
        });
        if let Some(p) = pace {
            std::thread::sleep(p);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while receivers
        .iter()
        .any(|r| r.lock().expect("arrivals").len() < n)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn report(load: &str, otlp: &Arrivals, hook: &Arrivals) {
    for (name, arrivals) in [("OTLP/HTTP", otlp), ("webhook", hook)] {
        let a = arrivals.lock().expect("arrivals");
        let first = a.iter().map(|x| x.0).min().unwrap_or(0);
        let last = a.iter().map(|x| x.1).max().unwrap_or(first);
        let mut lat: Vec<u64> = a.iter().map(|(t, at)| at.saturating_sub(*t)).collect();
        lat.sort_unstable();
        println!(
            "| {load} | {name} | {} | {:.0} | {:.1} ms | {:.1} ms |",
            a.len(),
            a.len() as f64 / ((last.saturating_sub(first)).max(1) as f64 / 1e9),
            percentile(&lat, 0.5) as f64 / 1e6,
            percentile(&lat, 0.99) as f64 / 1e6,
        );
    }
}
