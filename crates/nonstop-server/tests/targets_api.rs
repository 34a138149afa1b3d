//! Targets over the real API of a real server: settings in whole and out redacted, rules
//! that must name configured targets, the test event, a 410 that disables, and the outbox
//! bound by size. Receivers are plain HTTP servers on loopback.

mod common;

use common::{FakeAgent, TestServer, eventually, http_receiver, response};
use nonstop_model::AgentMessage;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};

/// A receiver answering `status` to every request; counts the requests.
struct Receiver {
    url: String,
    status: Arc<AtomicU16>,
    requests: Arc<AtomicUsize>,
}

impl Receiver {
    fn start(status: u16) -> Receiver {
        let st = Arc::new(AtomicU16::new(status));
        let requests = Arc::new(AtomicUsize::new(0));
        let (s2, r2) = (st.clone(), requests.clone());
        let url = http_receiver(move |_| {
            r2.fetch_add(1, Ordering::SeqCst);
            s2.load(Ordering::SeqCst)
        });
        Receiver {
            url: format!("{url}/in"),
            status: st,
            requests,
        }
    }
}

fn webhook(name: &str, url: &str) -> String {
    json!({"name": name, "kind": "webhook", "url": url,
           "secret": "whsec_bm9uc3RvcC10ZXN0LXNlY3JldC0yNC1i",
           "headers": {"authorization": "Bearer abcdefgh1234"}})
    .to_string()
}

fn target(s: &TestServer, name: &str) -> Value {
    s.get_json(&format!("/api/v1/targets/{name}"))
}

#[test]
fn targets_round_trip_redacted_and_rules_must_name_them() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let (status, body) = s.call(
        "POST",
        "/api/v1/targets",
        Some(&webhook("ui", "http://127.0.0.1:9/x")),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not \\\"ui\\\""), "{body}");
    let (status, body) = s.call(
        "POST",
        "/api/v1/targets",
        Some(r#"{"name":"h","kind":"webhook","url":"http://127.0.0.1:9/x","secret":"whsec_!!"}"#),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("whsec_"), "{body}");
    let (status, body) = s.call(
        "POST",
        "/api/v1/targets",
        Some(r#"{"name":"h","kind":"pager"}"#),
    );
    assert_eq!(status, 400, "{body}");

    let (status, body) = s.call(
        "POST",
        "/api/v1/targets",
        Some(&webhook("hook", "http://127.0.0.1:9/x")),
    );
    assert_eq!(status, 201, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["spec"],
        json!({"name": "hook", "kind": "webhook", "url": "http://127.0.0.1:9/x",
               "secret": "…NC1i", "headers": {"authorization": "…1234"}})
    );
    assert_eq!(
        (&v["kind"], &v["status"], &v["pending"], &v["sent"]),
        (&json!("webhook"), &json!("active"), &json!(0), &json!(0))
    );
    let (status, _) = s.call(
        "POST",
        "/api/v1/targets",
        Some(&webhook("hook", "http://127.0.0.1:9/y")),
    );
    assert_eq!(status, 200, "replacing answers 200");
    assert_eq!(target(&s, "hook")["spec"]["url"], "http://127.0.0.1:9/y");
    let list = s.get_json("/api/v1/targets");
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(!list.to_string().contains("abcdefgh"), "{list}");

    let (status, body) = s.call(
        "POST",
        "/api/v1/rules",
        Some(r#"{"at":"a.rs:1","action":"snapshot","to":["ui","hook","pager","mail"]}"#),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("unknown targets pager, mail") && body.contains("ui, hook"),
        "{body}"
    );
    let rule = s.add_rule(r#"{"at":"a.rs:1","action":"snapshot","to":["ui","hook"]}"#);
    s.add_rule(r#"{"at":"a.rs:2","action":"snapshot","to":["ui"]}"#);
    assert_eq!(
        s.get_json(&format!("/api/v1/rules/{rule}"))["rule"]["to"],
        json!(["ui", "hook"])
    );

    let (status, body) = s.call("GET", "/api/v1/targets/nope", None);
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("nonstop targets list"), "{body}");
    assert_eq!(s.call("DELETE", "/api/v1/targets/hook", None).0, 204);
    assert_eq!(s.call("DELETE", "/api/v1/targets/hook", None).0, 404);
}

#[test]
fn the_test_event_says_what_the_receiver_answered() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let ok = Receiver::start(204);
    let gone = Receiver::start(410);
    let file = dir.path().join("out.jsonl");
    for spec in [
        webhook("ok", &ok.url),
        webhook("gone", &gone.url),
        webhook("nobody", "http://127.0.0.1:1/x"),
        json!({"name": "file", "kind": "file", "path": file}).to_string(),
    ] {
        assert_eq!(s.call("POST", "/api/v1/targets", Some(&spec)).0, 201);
    }
    let test = |name: &str| -> Value {
        let (status, body) = s.call("POST", &format!("/api/v1/targets/{name}/test"), Some("{}"));
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let v = test("ok");
    assert_eq!((&v["ok"], &v["outcome"]), (&json!(true), &json!("sent")));
    assert_eq!(ok.requests.load(Ordering::SeqCst), 1);
    let v = test("gone");
    assert_eq!(
        (&v["ok"], &v["outcome"]),
        (&json!(false), &json!("disable"))
    );
    assert!(v["message"].as_str().unwrap().contains("410"), "{v}");
    let v = test("nobody");
    assert_eq!((&v["ok"], &v["outcome"]), (&json!(false), &json!("retry")));
    let v = test("file");
    assert_eq!(v["outcome"], "sent");
    let line: Value = serde_json::from_str(std::fs::read_to_string(&file).unwrap().trim()).unwrap();
    assert_eq!(line["rule"], "nonstop-test");
    // A test is not a delivery: nothing counted.
    assert_eq!(target(&s, "ok")["sent"], 0);
}

#[test]
fn a_410_disables_the_target_and_adding_it_again_delivers_what_waited() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let r = Receiver::start(410);
    assert_eq!(
        s.call("POST", "/api/v1/targets", Some(&webhook("hook", &r.url)))
            .0,
        201
    );
    let rule =
        s.add_rule(r#"{"at":"src/cart.rs:42","action":"snapshot","to":["hook"],"max_hits":10}"#);
    let mut a: FakeAgent = s.agent("a-1", "checkout");
    a.recv_rule_ids();
    a.send(&AgentMessage::Responses {
        responses: vec![response(&rule, "a-1", 1), response(&rule, "a-1", 2)],
        dropped: 0,
    });
    let t = eventually(|| {
        let t = target(&s, "hook");
        t["status"]
            .as_str()
            .unwrap()
            .starts_with("disabled:")
            .then_some(t)
    });
    assert!(t["status"].as_str().unwrap().contains("410"), "{t}");
    assert_eq!((&t["pending"], &t["sent"]), (&json!(2), &json!(0)));
    assert_eq!(
        r.requests.load(Ordering::SeqCst),
        1,
        "nothing after the 410"
    );

    r.status.store(200, Ordering::SeqCst);
    assert_eq!(
        s.call("POST", "/api/v1/targets", Some(&webhook("hook", &r.url)))
            .0,
        200
    );
    let t = eventually(|| {
        let t = target(&s, "hook");
        (t["sent"] == 2).then_some(t)
    });
    assert_eq!((&t["status"], &t["pending"]), (&json!("active"), &json!(0)));
    let view = s.get_json(&format!("/api/v1/rules/{rule}"));
    assert_eq!(
        view["deliveries"],
        json!([{"target": "hook", "pending": 0, "sent": 2, "failed": 0, "dropped": 0}])
    );
}

#[test]
fn the_outbox_keeps_the_newest_and_counts_what_it_drops() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_at(dir.path(), "127.0.0.1:0".parse().unwrap(), |c| {
        c.outbox.limits.max_pending = 2;
    });
    let r = Receiver::start(503);
    assert_eq!(
        s.call("POST", "/api/v1/targets", Some(&webhook("hook", &r.url)))
            .0,
        201
    );
    let rule =
        s.add_rule(r#"{"at":"src/cart.rs:42","action":"snapshot","to":["hook"],"max_hits":10}"#);
    let mut a = s.agent("a-1", "checkout");
    a.recv_rule_ids();
    a.send(&AgentMessage::Responses {
        responses: (1..=5).map(|n| response(&rule, "a-1", n)).collect(),
        dropped: 0,
    });
    // The drops are counted when the entries are queued; the 503 once the worker has tried.
    let t = eventually(|| {
        let t = target(&s, "hook");
        (t["dropped"] == 3 && t["last_error"].is_string()).then_some(t)
    });
    assert_eq!(t["pending"], 2);
    assert!(t["last_error"].as_str().unwrap().contains("503"), "{t}");
    let view = s.get_json(&format!("/api/v1/rules/{rule}"));
    assert_eq!(
        view["deliveries"],
        json!([{"target": "hook", "pending": 2, "sent": 0, "failed": 0, "dropped": 3}])
    );
}

#[test]
fn a_metric_rule_delivers_each_report_as_a_metric() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let file = dir.path().join("metrics.jsonl");
    let spec = json!({"name": "file", "kind": "file", "path": file}).to_string();
    assert_eq!(s.call("POST", "/api/v1/targets", Some(&spec)).0, 201);
    let rule = s.add_rule(
        r#"{"at":"src/cart.rs:42","action":"metric","metric":{"kind":"count","name":"cart.add"},"to":["file"]}"#,
    );
    let mut a = s.agent("a-1", "checkout");
    a.recv_rule_ids();
    for count in [3u64, 5] {
        let series = nonstop_model::MetricSeries {
            rule: rule.clone(),
            name: String::new(),
            kind: nonstop_model::MetricKind::Count,
            tags: Default::default(),
            count,
            sum: 0.0,
            last: None,
            buckets: vec![],
            updated: "2026-11-25T15:00:00Z".into(),
            overflow: 0,
        };
        a.send(&AgentMessage::Metrics {
            series: vec![series],
        });
    }
    eventually(|| (target(&s, "file")["sent"] == 2).then_some(()));
    let lines: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<(&Value, &Value, &Value, &Value)> = lines
        .iter()
        .map(|l| (&l["name"], &l["count"], &l["agent"], &l["service"]))
        .collect();
    assert_eq!(
        got,
        [
            (
                &json!("cart.add"),
                &json!(3),
                &json!("a-1"),
                &json!("checkout")
            ),
            (
                &json!("cart.add"),
                &json!(5),
                &json!("a-1"),
                &json!("checkout")
            ),
        ]
    );
    assert_ne!(lines[0]["id"], lines[1]["id"]);
}
