//! The server under an agent token used as an attacker would (issue 12): numbers out of
//! range, oversized or malformed hellos. Each case is the exact request, on a real server
//! with a real SQLite store, and the admin API must keep answering for everyone.

mod common;

use common::{FakeAgent, TestServer, call};
use nonstop_model::{AgentMessage, ServerMessage};
use serde_json::{Value, json};

fn post_agent(s: &TestServer, path: &str, body: &str) -> (u16, Value) {
    let (status, body) = call(&s.url(path), "POST", Some(&s.agent), Some(body));
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|_| json!({"raw": body})),
    )
}

/// Every admin route that reads agents, rules or statuses answers 200; returns the agents.
fn admin_api_answers(s: &TestServer, rule: &str, agent: &str) -> Value {
    let agents = s.get_json("/api/v1/agents");
    let rules = s.get_json("/api/v1/rules");
    assert_eq!(rules.as_array().unwrap().len(), 1, "{rules}");
    let one = s.get_json(&format!("/api/v1/rules/{rule}"));
    assert_eq!(one["rule"]["id"], json!(rule), "{one}");
    s.get_json("/api/v1/services");
    let (status, body) = call(
        &s.url(&format!("/agent/v1/poll?agent={agent}")),
        "GET",
        Some(&s.agent),
        None,
    );
    assert_eq!(status, 200, "{body}");
    agents
}

fn dropped_of(agents: &Value, id: &str) -> Value {
    agents
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == json!(id))
        .unwrap_or_else(|| panic!("no agent {id} in {agents}"))["dropped"]
        .clone()
}

#[test]
fn an_overflowing_dropped_count_saturates_and_the_admin_api_answers_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let rule = s.add_rule(r#"{"at":"src/cart.rs:42","action":"log","template":"m"}"#);
    // The issue's exact request.
    let (status, body) = post_agent(
        &s,
        "/agent/v1/responses",
        r#"[{"type":"hello","agent":{"id":"x1","service":"svc"}},{"type":"responses","responses":[],"dropped":9223372036854775807},{"type":"responses","responses":[],"dropped":1}]"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["type"], json!("rules"));
    let agents = admin_api_answers(&s, &rule, "x1");
    assert_eq!(dropped_of(&agents, "x1"), json!(9223372036854775807u64));

    // A count past SQLite's integers is refused whole, with the reason.
    let (status, body) = post_agent(
        &s,
        "/agent/v1/responses?agent=x1",
        r#"[{"type":"responses","responses":[],"dropped":3},{"type":"responses","responses":[],"dropped":18446744073709551615}]"#,
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body,
        json!({"error": "message 1 of the batch: dropped 18446744073709551615 is out of range: counts go up to 9223372036854775807; nothing of this message was kept"})
    );

    let data = dir.path().to_path_buf();
    s.stop();
    let s = TestServer::start(&data);
    let agents = admin_api_answers(&s, &rule, "x1");
    assert_eq!(dropped_of(&agents, "x1"), json!(9223372036854775807u64));
}

#[test]
fn a_store_holding_an_overflowed_real_heals_on_start() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let rule = s.add_rule(r#"{"at":"src/cart.rs:42","action":"log","template":"m"}"#);
    let (status, _) = post_agent(
        &s,
        "/agent/v1/responses",
        r#"{"type":"hello","agent":{"id":"x1","service":"svc"}}"#,
    );
    assert_eq!(status, 200);
    s.stop();
    // What an older server left: the overflowing sum SQLite made a REAL, and no record
    // yet of the migration that heals it.
    {
        let db = rusqlite::Connection::open(dir.path().join("nonstop.db")).unwrap();
        // Version 4 heals; the ones after it run again: the targets' tables harmlessly,
        // and the statuses' fast_path column, dropped here as an older server had none.
        db.execute("DELETE FROM schema_migrations WHERE version >= 4", [])
            .unwrap();
        db.execute("ALTER TABLE rule_status DROP COLUMN fast_path", [])
            .unwrap();
        db.execute(
            "UPDATE agents SET dropped = 9223372036854775807 + 1.0 WHERE id = 'x1'",
            [],
        )
        .unwrap();
        let kind: String = db
            .query_row(
                "SELECT typeof(dropped) FROM agents WHERE id = 'x1'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(kind, "real");
    }
    let s = TestServer::start(dir.path());
    let agents = admin_api_answers(&s, &rule, "x1");
    assert_eq!(dropped_of(&agents, "x1"), json!(9223372036854775807u64));
}

const COUNT_RULE: &str = r#"{"id":"adds","at":"src/cart.rs:42","action":"metric","metric":{"kind":"count","name":"cart.add"}}"#;

fn metrics(count: u64) -> AgentMessage {
    serde_json::from_value(json!({"type": "metrics", "series": [{
        "rule": "adds", "name": "cart.add", "kind": "count", "count": count,
        "sum": 0.0, "updated": "2026-11-25T15:00:00Z"
    }]}))
    .unwrap()
}

fn hits(s: &TestServer) -> Value {
    s.get_json("/api/v1/rules/adds")["hits"].clone()
}

#[test]
fn a_count_out_of_range_is_refused_to_its_agent_and_others_report_on() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    s.add_rule(COUNT_RULE);
    let mut good = s.agent("good", "svc");
    good.recv_rule_ids();
    let mut bad = s.agent("bad", "svc");
    bad.recv_rule_ids();
    good.send(&metrics(5));
    good.send(&AgentMessage::Ping);
    assert_eq!(good.recv(), ServerMessage::Pong);
    assert_eq!(hits(&s), json!(5));

    // The issue's count, over the WebSocket: refused with the reason; the connection goes on.
    bad.send(&metrics(18446744073709551615));
    assert_eq!(
        bad.recv(),
        ServerMessage::Error {
            message: "rule adds: count 18446744073709551615 is out of range: counts go up to 9223372036854775807; nothing of this message was kept".into()
        }
    );
    bad.send(&AgentMessage::Ping);
    assert_eq!(bad.recv(), ServerMessage::Pong);
    assert_eq!(hits(&s), json!(5));
    // And over HTTP.
    let (status, body) = post_agent(
        &s,
        "/agent/v1/responses?agent=bad",
        &serde_json::to_string(&metrics(18446744073709551615)).unwrap(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().starts_with(
            "message 0 of the batch: rule adds: count 18446744073709551615 is out of range"
        ),
        "{body}"
    );

    // Another agent's reports keep working.
    good.send(&metrics(6));
    good.send(&AgentMessage::Ping);
    assert_eq!(good.recv(), ServerMessage::Pong);
    assert_eq!(hits(&s), json!(6));

    // The largest count accepted, from two agents: the rule's hits saturate, and later
    // reports of anyone still work.
    bad.send(&metrics(9223372036854775807));
    bad.send(&AgentMessage::Ping);
    assert_eq!(bad.recv(), ServerMessage::Pong);
    good.send(&metrics(9223372036854775807));
    good.send(&AgentMessage::Ping);
    assert_eq!(good.recv(), ServerMessage::Pong);
    assert_eq!(hits(&s), json!(9223372036854775807u64));
    let (status, body) = s.call("GET", "/api/v1/metrics", None);
    assert_eq!(status, 200, "{body}");
    let m: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(m[0]["count"], json!(2 * 9223372036854775807u64), "{m}");
    assert_eq!(m[0]["agents"], json!(2), "{m}");
    let (status, body) = s.call("GET", "/metrics", None);
    assert_eq!(status, 200, "{body}");
    let mut third = FakeAgent::connect(s.addr, &s.agent, "third", "svc");
    third.recv_rule_ids();
    third.send(&metrics(1));
    third.send(&AgentMessage::Ping);
    assert_eq!(third.recv(), ServerMessage::Pong);
    assert_eq!(hits(&s), json!(9223372036854775807u64));
}

#[test]
fn oversized_or_control_character_hellos_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let host = "h".repeat(5 << 20);
    let (status, body) = post_agent(
        &s,
        "/agent/v1/responses",
        &json!({"type": "hello", "agent": {"id": "x1", "service": "svc", "host": host}})
            .to_string(),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body,
        json!({"error": "message 0 of the batch: the hello's host is 5242880 characters long: at most 255 are accepted"})
    );
    let labels: serde_json::Map<String, Value> = (0..100_000)
        .map(|i| (format!("k{i}"), json!("v")))
        .collect();
    let (status, body) = post_agent(
        &s,
        "/agent/v1/responses",
        &json!({"type": "hello", "agent": {"id": "x1", "service": "svc", "labels": labels}})
            .to_string(),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body,
        json!({"error": "message 0 of the batch: the hello has 100000 labels: at most 64 are accepted"})
    );
    assert_eq!(s.get_json("/api/v1/agents"), json!([]), "nothing stored");

    // On the WebSocket: the first hello closes with the reason; a re-sent one is refused.
    let mut a = FakeAgent::open(s.addr, &s.agent);
    a.send(
        &serde_json::from_value::<AgentMessage>(
            json!({"type": "hello", "agent": {"id": "x2", "service": "svc\u{1b}[2J"}}),
        )
        .unwrap(),
    );
    assert_eq!(
        a.recv(),
        ServerMessage::Error {
            message:
                "the hello's service holds the control character '\\u{1b}': use printable text"
                    .into()
        }
    );
    let mut b = s.agent("x3", "svc");
    b.recv_rule_ids();
    b.send(
        &serde_json::from_value::<AgentMessage>(
            json!({"type": "hello", "agent": {"id": "x3", "service": "s".repeat(129)}}),
        )
        .unwrap(),
    );
    assert_eq!(
        b.recv(),
        ServerMessage::Error {
            message: "the hello's service is 129 characters long: at most 128 are accepted".into()
        }
    );
    let agents = s.get_json("/api/v1/agents");
    assert_eq!(agents.as_array().unwrap().len(), 1, "{agents}");
    assert_eq!(agents[0]["service"], json!("svc"));
}

#[test]
fn limit_10001_is_a_400_and_an_agent_without_started_shows_a_date_time() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let (status, body) = s.call("GET", "/api/v1/responses?limit=10001", None);
    assert_eq!(status, 400);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"error": "limit=10001 is too large: at most 10000 responses per request"})
    );
    let (status, body) = s.call("GET", "/api/v1/responses?limit=10000", None);
    assert_eq!((status, body.as_str()), (200, "[]"));

    let (status, _) = post_agent(
        &s,
        "/agent/v1/responses",
        r#"[{"type":"hello","agent":{"id":"x1","service":"svc"}}]"#,
    );
    assert_eq!(status, 200);
    let agents = s.get_json("/api/v1/agents");
    let started = agents[0]["started"].as_str().unwrap().to_string();
    // RFC 3339 in UTC with milliseconds, as the server writes times.
    let shape: String = started
        .chars()
        .map(|c| if c.is_ascii_digit() { '9' } else { c })
        .collect();
    assert_eq!(shape, "9999-99-99T99:99:99.999Z", "{started}");
}

#[test]
fn an_oversized_batch_is_a_json_413_and_a_bad_batch_names_the_message_and_the_fault() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let big = format!("\"{}\"", "x".repeat(8 << 20));
    assert_eq!(
        post_agent(&s, "/agent/v1/responses", &big),
        (
            413,
            json!({"error": "the batch is over 8388608 bytes: send fewer responses per request"})
        )
    );
    assert_eq!(
        post_agent(
            &s,
            "/agent/v1/responses",
            r#"[{"type":"hello","agent":{"id":"x1","service":"svc"}},{"type":"nonsense"}]"#
        ),
        (
            400,
            json!({"error": "message 1 of the batch: unknown variant `nonsense`, expected one of `hello`, `status`, `responses`, `metrics`, `ping`"})
        )
    );
}

#[test]
fn deleting_a_rule_deletes_its_stored_responses() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let gone = s.add_rule(r#"{"at":"src/cart.rs:42","action":"log","template":"m"}"#);
    let kept = s.add_rule(r#"{"at":"src/cart.rs:43","action":"log","template":"m"}"#);
    let batch = json!([
        {"type":"hello","agent":{"id":"x1","service":"svc"}},
        {"type":"responses","responses":[
            common::response(&gone, "x1", 1), common::response(&gone, "x1", 2),
            common::response(&kept, "x1", 3)], "dropped": 0}
    ]);
    let (status, body) = post_agent(&s, "/agent/v1/responses", &batch.to_string());
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.get_json("/api/v1/responses").as_array().unwrap().len(), 3);
    let (status, _) = s.call("DELETE", &format!("/api/v1/rules/{gone}"), None);
    assert_eq!(status, 204);
    let left = s.get_json("/api/v1/responses");
    let rules: Vec<&str> = left
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules, vec![kept.as_str()]);
    s.stop();
    let db = rusqlite::Connection::open(dir.path().join("nonstop.db")).unwrap();
    let n: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM responses WHERE rule = ?1",
            [&gone],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 0);
}
