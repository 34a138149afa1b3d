//! A WebSocket agent's messages that arrive faster than they are stored share a store
//! transaction; an HTTP batch is one store call. Either way each message keeps what it
//! means: every response stored once, in order, each message answered as it would be alone.

mod common;

use common::{TestServer, eventually, response};
use nonstop_model::{AgentMessage, ServerMessage};
use serde_json::{Value, json};

#[test]
fn five_hundred_one_response_messages_back_to_back_are_stored_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let rule = s.add_rule(r#"{"at":"src/cart.rs:42","action":"log","template":"m"}"#);
    let mut a = s.agent("burst-1", "checkout");
    a.recv_rule_ids();
    let sent: Vec<_> = (0..500).map(|n| response(&rule, "burst-1", n)).collect();
    for r in &sent {
        a.send(&AgentMessage::Responses {
            responses: vec![r.clone()],
            dropped: 1,
        });
    }
    // Messages are handled in order: the pong comes after all 500 are stored.
    a.send(&AgentMessage::Ping);
    let answer = a.recv();
    assert!(matches!(answer, ServerMessage::Pong), "{answer:?}");

    let want: Vec<Value> = sent
        .iter()
        .map(|r| serde_json::to_value(r).unwrap())
        .collect();
    assert_eq!(
        s.get_json(&format!("/api/v1/responses?rule={rule}&limit=1000")),
        json!(want)
    );
    let view = s.get_json(&format!("/api/v1/rules/{rule}"));
    assert_eq!(view["hits"], json!(500));
    assert_eq!(s.get_json("/api/v1/agents")[0]["dropped"], json!(500));
}

#[test]
fn each_message_of_a_burst_is_answered_as_alone() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let rule = s.add_rule(r#"{"at":"src/cart.rs:42","action":"snapshot"}"#);
    let mut a = s.agent("burst-2", "checkout");
    a.recv_rule_ids();
    a.send(&AgentMessage::Responses {
        responses: vec![response(&rule, "burst-2", 1)],
        dropped: 0,
    });
    a.send(&AgentMessage::Responses {
        responses: vec![response("r-gone", "burst-2", 2)],
        dropped: 0,
    });
    a.send(&AgentMessage::Status {
        statuses: vec![serde_json::from_value(json!({"rule": rule, "status": "armed"})).unwrap()],
    });
    a.send(&AgentMessage::Responses {
        responses: vec![response(&rule, "burst-2", 3)],
        dropped: 0,
    });
    a.send(&AgentMessage::Ping);
    match a.recv() {
        ServerMessage::Error { message } => {
            assert!(message.contains("r-gone"), "{message}")
        }
        other => panic!("expected the unknown rule's error, got {other:?}"),
    }
    assert!(matches!(a.recv(), ServerMessage::Pong));
    let stored = s.get_json(&format!("/api/v1/responses?rule={rule}"));
    let messages: Vec<&str> = stored
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages, ["hit 1", "hit 3"]);
    let view = eventually(|| {
        let v = s.get_json(&format!("/api/v1/rules/{rule}"));
        (v["agents"].as_array().unwrap().len() == 1).then_some(v)
    });
    assert_eq!(view["agents"][0]["status"], json!("armed"));
}

#[test]
fn an_http_hello_with_responses_records_the_agent_and_the_responses() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let rule = s.add_rule(r#"{"at":"src/cart.rs:42","action":"snapshot"}"#);
    let body = json!([
        {"type": "hello", "agent": common::info("fn-7", "lambda")},
        {"type": "status", "statuses": [{"rule": rule, "status": "armed"}]},
        {"type": "responses", "responses": [response(&rule, "fn-7", 1), response(&rule, "fn-7", 2)], "dropped": 4},
        {"type": "responses", "responses": [response(&rule, "fn-7", 3)], "dropped": 0}
    ]);
    let (status, answer) = common::call(
        &s.url("/agent/v1/responses"),
        "POST",
        Some(&s.agent),
        Some(&body.to_string()),
    );
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["type"], "rules");
    assert_eq!(answer["rules"][0]["id"], json!(rule));

    let agents = s.get_json("/api/v1/agents");
    assert_eq!(agents.as_array().unwrap().len(), 1);
    assert_eq!(agents[0]["id"], "fn-7");
    assert_eq!(agents[0]["service"], "lambda");
    assert_eq!(agents[0]["dropped"], json!(4));
    let stored = s.get_json(&format!("/api/v1/responses?rule={rule}"));
    let messages: Vec<(&str, &str)> = stored
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["message"].as_str().unwrap(),
                r["service"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        messages,
        [
            ("hit 1", "lambda"),
            ("hit 2", "lambda"),
            ("hit 3", "lambda")
        ]
    );
    let view = s.get_json(&format!("/api/v1/rules/{rule}"));
    assert_eq!(view["agents"][0]["status"], json!("armed"));
}

#[test]
fn a_rule_added_after_a_request_is_in_the_next_answer() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let first = s.add_rule(r#"{"at":"src/cart.rs:42","action":"snapshot"}"#);
    let hello = json!({"type": "hello", "agent": common::info("fn-8", "lambda")}).to_string();
    let ids = |answer: &str| -> Vec<String> {
        let v: Value = serde_json::from_str(answer).unwrap();
        v["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, answer) = common::call(
        &s.url("/agent/v1/responses"),
        "POST",
        Some(&s.agent),
        Some(&hello),
    );
    assert_eq!(ids(&answer), std::slice::from_ref(&first));
    // The cached rule set goes with the change.
    let second = s.add_rule(r#"{"at":"src/cart.rs:50","action":"snapshot"}"#);
    let (_, answer) = common::call(
        &s.url("/agent/v1/responses"),
        "POST",
        Some(&s.agent),
        Some(&hello),
    );
    assert_eq!(ids(&answer), [first.clone(), second.clone()]);
    let (status, _) = s.call("DELETE", &format!("/api/v1/rules/{first}"), None);
    assert!(status < 300);
    let (_, answer) = common::call(
        &s.url("/agent/v1/responses"),
        "POST",
        Some(&s.agent),
        Some(&hello),
    );
    assert_eq!(ids(&answer), [second]);
}
