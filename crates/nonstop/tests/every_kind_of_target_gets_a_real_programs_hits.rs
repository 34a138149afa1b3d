//! A real program under the real agent, one log rule routed to an OTLP collector, Sentry,
//! Datadog, Honeycomb and Slack, all served by one loopback receiver that answers as each
//! API documents and keeps what it was sent. Each receives every hit (Slack: folded into
//! its messages) in its own documented format: OTLP decoded with prost, Sentry's envelope
//! and auth header, Datadog's gzip'd intake with its API key, Honeycomb's batch with its
//! team header, Slack's Block Kit text.

mod ticker;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use ticker::{Program, Server, free_port, tmp, wait_for_agents};

const HITS: usize = 20;

/// One request: its path, headers (lower-case names) and body.
#[derive(Clone, Debug)]
struct Request {
    path: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

type Requests = Arc<Mutex<Vec<Request>>>;

/// What each API answers a request that it takes.
fn answer(path: &str, body: &[u8]) -> (u16, String) {
    match path {
        "/v1/logs" => (200, String::new()),
        "/api/42/envelope/" => (200, r#"{"id":"0"}"#.into()),
        "/api/v2/logs" => (202, "{}".into()),
        "/1/batch/prod" => {
            let events = serde_json::from_slice::<Vec<serde_json::Value>>(body)
                .map(|v| v.len())
                .unwrap_or(0);
            (
                200,
                format!("[{}]", vec![r#"{"status":202}"#; events].join(",")),
            )
        }
        "/slack" => (200, "ok".into()),
        _ => (404, String::new()),
    }
}

fn receiver(port: u16) -> Requests {
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let requests: Requests = Arc::default();
    let out = requests.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            let out = out.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split(' ').nth(1).unwrap_or("").to_string();
                    let mut headers = BTreeMap::new();
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        if h.trim().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                        }
                    }
                    let len = headers
                        .get("content-length")
                        .and_then(|l| l.parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0; len];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let (code, text) = answer(&path, &body);
                    out.lock().unwrap().push(Request {
                        path,
                        headers,
                        body,
                    });
                    let reply = format!(
                        "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
                        text.len()
                    );
                    if conn.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    requests
}

fn of(requests: &Requests, path: &str) -> Vec<Request> {
    let all = requests.lock().unwrap();
    all.iter().filter(|r| r.path == path).cloned().collect()
}

/// `tick N squared is N²`, checked; returns N.
fn tick_of(message: &str) -> u64 {
    let n: u64 = message
        .strip_prefix("tick ")
        .and_then(|m| m.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected message {message:?}"));
    assert_eq!(message, format!("tick {n} squared is {}", n * n));
    n
}

#[test]
fn otlp_sentry_datadog_honeycomb_and_slack_each_get_every_hit_in_their_format() {
    let dir = tmp("kinds");
    let server = Server::start(free_port(), &dir.join("data"));
    let port = free_port();
    let requests = receiver(port);
    let base = format!("http://127.0.0.1:{port}");
    for args in [
        vec!["otel", "--otlp", &base],
        vec![
            "errors",
            "--sentry",
            &format!("http://k3y@127.0.0.1:{port}/42"),
        ],
        vec!["dd", "--datadog", "dd-api-key-1234", "--url", &base],
        vec![
            "hny",
            "--honeycomb",
            "hny-key-5678",
            "--dataset",
            "prod",
            "--url",
            &base,
        ],
        vec!["chat", "--slack", &format!("{base}/slack")],
    ] {
        let mut a = vec!["targets", "add"];
        a.extend(args.iter().copied());
        server.cli_ok(&a);
    }

    let program = Program::start(&server, 100_000, "kinds");
    wait_for_agents(&server, 1);
    let mut add = vec![
        "--service",
        "ticker",
        "--log",
        "tick {n} squared is {square}",
        "--max-hits",
        "20",
        "--rate",
        "1000/s",
    ];
    for t in ["otel", "errors", "dd", "hny", "chat"] {
        add.extend(["--to", t]);
    }
    let rule = server.add_rule(&add);
    for t in ["otel", "errors", "dd", "hny", "chat"] {
        nonstop_testkit::wait_for(
            &format!("{t} took every hit"),
            Duration::from_secs(60),
            || {
                let v = server.cli_json(&["targets", "show", t, "--json"]);
                (v["sent"] == HITS as u64).then_some(())
            },
        );
    }
    let stored: Vec<u64> = server
        .get_json(&format!("/api/v1/responses?rule={rule}&limit=100"))
        .as_array()
        .unwrap()
        .iter()
        .map(|r| tick_of(r["message"].as_str().unwrap()))
        .collect();
    assert_eq!(stored.len(), HITS);

    // OTLP/HTTP: protobuf log records, one per hit, in order, with the rule and service.
    let mut otlp = Vec::new();
    for r in of(&requests, "/v1/logs") {
        assert_eq!(r.headers["content-type"], "application/x-protobuf");
        let req = ExportLogsServiceRequest::decode(r.body.as_slice()).unwrap();
        for rl in &req.resource_logs {
            let attrs = &rl.resource.as_ref().unwrap().attributes;
            let service = attrs.iter().find(|a| a.key == "service.name").unwrap();
            assert_eq!(
                service.value.as_ref().unwrap().value,
                Some(Any::StringValue("ticker".into()))
            );
            for l in rl.scope_logs.iter().flat_map(|s| &s.log_records) {
                let Some(Any::StringValue(body)) = l.body.as_ref().unwrap().value.clone() else {
                    panic!("a log record without a string body: {l:?}")
                };
                let rule_attr = l.attributes.iter().find(|a| a.key == "nonstop.rule.id");
                assert_eq!(
                    rule_attr.unwrap().value.as_ref().unwrap().value,
                    Some(Any::StringValue(rule.clone()))
                );
                otlp.push(tick_of(&body));
            }
        }
    }
    assert_eq!(otlp, stored, "OTLP: every hit once, in order");

    // Sentry: one envelope per hit, the DSN's key in X-Sentry-Auth, the message formatted.
    let mut sentry = Vec::new();
    for r in of(&requests, "/api/42/envelope/") {
        let auth = &r.headers["x-sentry-auth"];
        assert!(
            auth.starts_with("Sentry sentry_version=7") && auth.contains("sentry_key=k3y"),
            "{auth}"
        );
        let text = String::from_utf8(r.body).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let head: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        let item: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        let event: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
        assert_eq!(item["type"], "event");
        assert_eq!(item["length"], lines[2].len());
        assert_eq!(head["event_id"], event["event_id"]);
        assert_eq!(event["platform"], "native");
        assert_eq!(event["tags"]["rule"], rule.as_str());
        sentry.push(tick_of(event["message"]["formatted"].as_str().unwrap()));
    }
    assert_eq!(sentry, stored, "Sentry: every hit once, in order");

    // Datadog: gzip'd JSON arrays with the API key.
    let mut datadog = Vec::new();
    for r in of(&requests, "/api/v2/logs") {
        assert_eq!(r.headers["dd-api-key"], "dd-api-key-1234");
        assert_eq!(r.headers["content-encoding"], "gzip");
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(r.body.as_slice())
            .read_to_end(&mut json)
            .unwrap();
        let entries: Vec<serde_json::Value> = serde_json::from_slice(&json).unwrap();
        for e in entries {
            assert_eq!(
                (&e["ddsource"], &e["service"]),
                (&"nonstop".into(), &"ticker".into())
            );
            datadog.push(tick_of(e["message"].as_str().unwrap()));
        }
    }
    assert_eq!(datadog, stored, "Datadog: every hit once, in order");

    // Honeycomb: batches of events with the team header.
    let mut honeycomb = Vec::new();
    for r in of(&requests, "/1/batch/prod") {
        assert_eq!(r.headers["x-honeycomb-team"], "hny-key-5678");
        let events: Vec<serde_json::Value> = serde_json::from_slice(&r.body).unwrap();
        for e in events {
            assert_eq!(e["data"]["nonstop.rule.id"], rule.as_str());
            honeycomb.push(tick_of(e["data"]["message"].as_str().unwrap()));
        }
    }
    assert_eq!(honeycomb, stored, "Honeycomb: every hit once, in order");

    // Slack: Block Kit messages, a burst folded into one about its first hit.
    let slack = of(&requests, "/slack");
    assert!(!slack.is_empty() && slack.len() <= HITS);
    let first: serde_json::Value = serde_json::from_slice(&slack[0].body).unwrap();
    let text = first["blocks"].to_string();
    assert!(
        text.contains(&format!(
            "tick {0} squared is {1}",
            stored[0],
            stored[0] * stored[0]
        )),
        "{text}"
    );
    drop(program);
}
