//! The agent's `Link` (crates/nonstop-agent/src/connection.rs) against the real server:
//! rule sets, responses, statuses, the bounded buffer, and reconnecting after the server
//! restarts on the same address. The module is compiled in here by path so that it is
//! tested without linking the whole agent.

mod common;
#[path = "../../nonstop-agent/src/connection.rs"]
#[allow(dead_code)]
mod connection;

use common::{TestServer, eventually, info, response};
use connection::{Link, LinkConfig};
use serde_json::json;

fn link(s_addr: std::net::SocketAddr, token: &str, id: &str) -> Link {
    Link::start(LinkConfig::new(
        format!("http://{s_addr}"),
        Some(token.to_string()),
        info(id, "checkout"),
    ))
}

#[test]
fn the_link_syncs_rules_ships_responses_and_survives_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let addr = s.addr;
    let id = s.add_rule(r#"{"at":"src/cart.rs:42","action":"log","template":"{n}"}"#);
    let l = link(addr, &s.agent, "link-1");
    let rules = eventually(|| l.latest_rules());
    assert_eq!(
        rules.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        vec![id.clone()]
    );
    assert!(l.connected());
    assert_eq!(l.latest_rules(), None, "a set is handed out once");

    l.send_responses(vec![response(&id, "link-1", 1), response(&id, "link-1", 2)]);
    l.send_status(vec![
        serde_json::from_value(json!({"rule": id, "status": "armed", "probes": 1})).unwrap(),
    ]);
    eventually(|| (s.get_json("/api/v1/responses").as_array().unwrap().len() == 2).then_some(()));
    let view = eventually(|| {
        let v = s.get_json(&format!("/api/v1/rules/{id}"));
        (v["agents"].as_array().unwrap().len() == 1).then_some(v)
    });
    assert_eq!(view["agents"][0]["status"], json!("armed"));

    // A new rule is pushed at once.
    let second = s.add_rule(r#"{"at":"cart::add","action":"snapshot"}"#);
    let rules = eventually(|| l.latest_rules());
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[1].id, second);

    // The server goes away and comes back on the same address.
    let token = s.agent.clone();
    s.stop();
    eventually(|| (!l.connected()).then_some(()));
    let s = TestServer::start_at(dir.path(), addr, |_| {});
    assert_eq!(s.agent, token);
    let rules = eventually(|| l.latest_rules());
    assert_eq!(
        rules.len(),
        2,
        "the rule set is sent again after the reconnect"
    );
    assert!(l.connected());
    l.send_responses(vec![response(&id, "link-1", 3)]);
    eventually(|| (s.get_json("/api/v1/responses").as_array().unwrap().len() == 3).then_some(()));
    l.stop();
}

#[test]
fn a_full_buffer_drops_the_oldest_and_the_server_is_told_how_many() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let addr = s.addr;
    let id = s.add_rule(r#"{"at":"src/cart.rs:42","action":"log","template":"{n}"}"#);
    let token = s.agent.clone();
    s.stop();

    // The server is down: responses wait in the buffer, the oldest dropped past its size.
    let l = link(addr, &token, "link-2");
    let total = connection::RESPONSE_BUFFER as u32 + 5;
    l.send_responses((0..total).map(|n| response(&id, "link-2", n)).collect());
    assert!(!l.connected());

    let s = TestServer::start_at(dir.path(), addr, |_| {});
    let stored = eventually(|| {
        let v = s.get_json("/api/v1/responses?limit=10000");
        (v.as_array().unwrap().len() == connection::RESPONSE_BUFFER).then_some(v)
    });
    assert_eq!(
        stored[0]["message"],
        json!("hit 5"),
        "the oldest five were dropped"
    );
    eventually(|| (s.get_json("/api/v1/agents")[0]["dropped"] == json!(5)).then_some(()));
    l.stop();
}

#[test]
fn a_wrong_token_keeps_retrying_without_harm() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let l = link(s.addr, "not-the-token", "link-3");
    // The event: the server answered the first attempt, and the link says what to do.
    let problem = eventually(|| l.problem());
    assert!(
        problem.contains("refused the token: set NONSTOP_TOKEN"),
        "{problem}"
    );
    assert!(!l.connected());
    assert_eq!(l.latest_rules(), None);
    l.send_responses(vec![response("r-x", "link-3", 1)]);
    l.stop();
}
