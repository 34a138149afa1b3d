//! Agents over real WebSockets and HTTP: rule sets on hello and on change, responses into
//! the store and the live stream, isolation of a bad connection, and max hits over agents.

mod common;

use common::{FakeAgent, TestServer, eventually, info, response};
use nonstop_model::{AgentMessage, ServerMessage};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::time::Duration;
use tungstenite::Message;

#[test]
fn an_agent_gets_its_rules_on_hello_and_each_change_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let before = s.add_rule(r#"{"at":"src/cart.rs:42","action":"snapshot","service":"checkout"}"#);
    s.add_rule(r#"{"at":"src/cart.rs:43","action":"snapshot","service":"billing"}"#);
    let mut a = s.agent("a-1", "checkout");
    assert_eq!(a.recv_rule_ids(), vec![before.clone()]);
    // Until the agent reports, the rule shows it as pending.
    let view = s.get_json(&format!("/api/v1/rules/{before}"));
    assert_eq!(view["agents"].as_array().unwrap().len(), 1);
    assert_eq!(
        (
            &view["agents"][0]["agent"],
            &view["agents"][0]["status"],
            &view["agents"][0]["connected"]
        ),
        (&json!("a-1"), &json!("pending"), &json!(true))
    );

    let added = s
        .add_rule(r#"{"at":"cart::add","action":"log","template":"{n}","labels":{"region":"eu"}}"#);
    assert_eq!(a.recv_rule_ids(), vec![before.clone(), added.clone()]);
    // A rule for other agents changes nothing here; the next push is the removal.
    s.add_rule(r#"{"at":"cart::add","action":"snapshot","labels":{"region":"us"}}"#);
    s.call("DELETE", &format!("/api/v1/rules/{before}"), None);
    assert_eq!(a.recv_rule_ids(), vec![added]);

    a.send(&AgentMessage::Ping);
    assert_eq!(a.recv(), ServerMessage::Pong);
    let agents = s.get_json("/api/v1/agents");
    assert_eq!(
        agents[0],
        json!({"id": "a-1", "service": "checkout", "version": "1.0.0", "commit": "abc123",
               "host": "test-host", "pid": 4242, "labels": {"region": "eu"},
               "started": "2026-01-01T00:00:00Z", "connected": true,
               "first_seen": agents[0]["first_seen"], "last_seen": agents[0]["last_seen"], "dropped": 0})
    );
    drop(a);
    eventually(|| (s.get_json("/api/v1/agents")[0]["connected"] == json!(false)).then_some(()));
}

#[test]
fn responses_are_stored_and_streamed_and_statuses_shown() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let id = s.add_rule(r#"{"at":"src/cart.rs:42","action":"snapshot"}"#);
    let other = s.add_rule(r#"{"at":"src/cart.rs:50","action":"snapshot"}"#);

    // A live stream of this rule only, opened before the responses arrive.
    let http: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let stream = http
        .get(s.url(&format!("/api/v1/responses/stream?rule={id}")))
        .header("Authorization", format!("Bearer {}", s.admin))
        .call()
        .unwrap();
    let mut lines = BufReader::new(stream.into_body().into_reader()).lines();

    let mut a = s.agent("a-1", "checkout");
    a.recv_rule_ids();
    a.send(&AgentMessage::Status {
        statuses: vec![
            serde_json::from_value(json!({"rule": id, "status": "error",
            "message": "no code at src/cart.rs:42; nearest lines with code: 41, 44"}))
            .unwrap(),
        ],
    });
    let sent = vec![
        response(&id, "a-1", 1),
        response(&other, "a-1", 9),
        response(&id, "a-1", 2),
    ];
    a.send(&AgentMessage::Responses {
        responses: sent.clone(),
        dropped: 3,
    });

    let mut streamed = Vec::new();
    let mut ids = Vec::new();
    while streamed.len() < 2 {
        let line = lines.next().unwrap().unwrap();
        if let Some(data) = line.strip_prefix("data: ") {
            streamed.push(serde_json::from_str::<Value>(data).unwrap());
        } else if let Some(id) = line.strip_prefix("id: ") {
            ids.push(id.to_string());
        }
    }
    assert_eq!(ids.len(), 2, "every event carries its id");
    let want: Vec<Value> = [&sent[0], &sent[2]]
        .iter()
        .map(|r| serde_json::to_value(r).unwrap())
        .collect();
    assert_eq!(streamed, want);
    assert_eq!(
        streamed[0]["locals"],
        json!({"n": {"type": "u32", "value": 1}})
    );

    // A client that reconnects with Last-Event-ID gets what came after, from the store.
    let resumed = http
        .get(s.url(&format!("/api/v1/responses/stream?rule={id}")))
        .header("Authorization", format!("Bearer {}", s.admin))
        .header("Last-Event-ID", &ids[0])
        .call()
        .unwrap();
    let first = BufReader::new(resumed.into_body().into_reader())
        .lines()
        .map(|l| l.unwrap())
        .find_map(|l| l.strip_prefix("data: ").map(str::to_string))
        .unwrap();
    assert_eq!(serde_json::from_str::<Value>(&first).unwrap(), want[1]);

    let stored = s.get_json(&format!("/api/v1/responses?rule={id}"));
    assert_eq!(stored, json!(want));
    assert_eq!(
        s.get_json("/api/v1/responses?limit=1"),
        json!([serde_json::to_value(&sent[2]).unwrap()])
    );

    let view = eventually(|| {
        let v = s.get_json(&format!("/api/v1/rules/{id}"));
        (v["agents"].as_array().unwrap().len() == 1).then_some(v)
    });
    assert_eq!(view["hits"], json!(2));
    assert_eq!(view["agents"][0]["status"], json!("error"));
    assert!(
        view["agents"][0]["message"]
            .as_str()
            .unwrap()
            .contains("nearest lines")
    );
    assert_eq!(s.get_json("/api/v1/agents")[0]["dropped"], json!(3));
}

#[test]
fn a_garbage_frame_closes_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let id = s.add_rule(r#"{"at":"src/cart.rs:42","action":"snapshot"}"#);
    let mut good = s.agent("good", "checkout");
    let mut bad = s.agent("bad", "checkout");
    good.recv_rule_ids();
    bad.recv_rule_ids();

    bad.ws.send(Message::text("{this is not json")).unwrap();
    match bad.recv() {
        ServerMessage::Error { message } => {
            assert!(message.contains("malformed message"), "{message}")
        }
        other => panic!("expected an error, got {other:?}"),
    }
    let close = loop {
        match bad.ws.read() {
            Ok(Message::Close(f)) => break f,
            Ok(_) => continue,
            Err(e) => panic!("expected a close frame, got {e}"),
        }
    };
    assert_eq!(u16::from(close.unwrap().code), 1007);

    // A first message other than hello is refused too.
    let mut rude = common::FakeAgent::open(s.addr, &s.agent);
    rude.send(&AgentMessage::Ping);
    assert!(matches!(rude.recv(), ServerMessage::Error { .. }));

    good.send(&AgentMessage::Responses {
        responses: vec![response(&id, "good", 1)],
        dropped: 0,
    });
    good.send(&AgentMessage::Ping);
    assert_eq!(good.recv(), ServerMessage::Pong);
    assert_eq!(s.get_json("/api/v1/responses").as_array().unwrap().len(), 1);
}

#[test]
fn max_hits_over_two_agents_stops_at_exactly_n_and_agents_disarm() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let id = s.add_rule(r#"{"at":"src/cart.rs:42","action":"snapshot","max_hits":5}"#);
    let mut a = s.agent("a", "checkout");
    let mut b = s.agent("b", "checkout");
    assert_eq!(a.recv_rule_ids(), vec![id.clone()]);
    assert_eq!(b.recv_rule_ids(), vec![id.clone()]);
    for n in 0..4 {
        a.send(&AgentMessage::Responses {
            responses: vec![response(&id, "a", n)],
            dropped: 0,
        });
        b.send(&AgentMessage::Responses {
            responses: vec![response(&id, "b", n)],
            dropped: 0,
        });
    }
    // Both agents are told the rule is gone.
    assert_eq!(a.recv_rule_ids(), Vec::<String>::new());
    assert_eq!(b.recv_rule_ids(), Vec::<String>::new());
    let view = s.get_json(&format!("/api/v1/rules/{id}"));
    assert_eq!(
        (view["state"].clone(), view["hits"].clone()),
        (json!("done"), json!(5))
    );
    // Late responses are not stored.
    a.send(&AgentMessage::Responses {
        responses: vec![response(&id, "a", 99)],
        dropped: 0,
    });
    a.send(&AgentMessage::Ping);
    assert_eq!(a.recv(), ServerMessage::Pong);
    assert_eq!(
        s.get_json(&format!("/api/v1/responses?rule={id}"))
            .as_array()
            .unwrap()
            .len(),
        5
    );
}

#[test]
fn a_serverless_agent_uses_http_with_etags() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let id = s.add_rule(r#"{"at":"handler::run","action":"snapshot","service":"lambda"}"#);
    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let auth = format!("Bearer {}", s.agent);
    let hello = json!([
        {"type": "hello", "agent": common::info("fn-1", "lambda")},
        {"type": "responses", "responses": [response(&id, "fn-1", 1)]}
    ]);
    let mut resp = http
        .post(s.url("/agent/v1/responses"))
        .header("Authorization", &auth)
        .send_json(&hello)
        .unwrap();
    assert_eq!(resp.status(), 200);
    let etag = resp
        .headers()
        .get("etag")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = resp.body_mut().read_json().unwrap();
    assert_eq!(body["type"], json!("rules"));
    assert_eq!(body["rules"][0]["id"], json!(id));

    let poll = s.url("/agent/v1/poll?agent=fn-1");
    let resp = http
        .get(&poll)
        .header("Authorization", &auth)
        .header("If-None-Match", &etag)
        .call()
        .unwrap();
    assert_eq!(resp.status(), 304);
    assert_eq!(s.get_json("/api/v1/responses").as_array().unwrap().len(), 1);
    s.call("DELETE", &format!("/api/v1/rules/{id}"), None);
    let mut resp = http
        .get(&poll)
        .header("Authorization", &auth)
        .header("If-None-Match", &etag)
        .call()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.body_mut().read_json::<Value>().unwrap(),
        json!({"type": "rules", "rules": []})
    );
    // Deleting the rule deleted what it had captured.
    assert_eq!(s.get_json("/api/v1/responses").as_array().unwrap().len(), 0);

    // Without a hello the agent must be named; an unknown one is told to say hello.
    let resp = http
        .post(s.url("/agent/v1/responses?agent=stranger"))
        .header("Authorization", &auth)
        .send_json(json!({"type": "ping"}))
        .unwrap();
    assert_eq!(resp.status(), 404);
    let (status, _) = common::post_sized(s.addr, "/agent/v1/responses", &s.agent, 9 << 20);
    assert_eq!(status, 413);
    // 2 MiB is fine for an agent batch, though not for the API.
    let (status, _) = common::post_sized(s.addr, "/agent/v1/responses", &s.agent, 2 << 20);
    assert_eq!(
        status, 400,
        "a batch of zeros is malformed JSON, but not too large"
    );
}

#[test]
fn rules_expire_and_leave_the_agents() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let id = s.add_rule(r#"{"at":"src/cart.rs:42","action":"snapshot","expires":"1s"}"#);
    let mut a = s.agent("a", "checkout");
    assert_eq!(a.recv_rule_ids(), vec![id.clone()]);
    assert_eq!(a.recv_rule_ids(), Vec::<String>::new());
    assert_eq!(
        s.get_json(&format!("/api/v1/rules/{id}"))["state"],
        json!("expired")
    );
}

#[test]
fn a_disabled_rule_leaves_the_agents_set_keeps_its_history_and_counts_on_when_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let mut a = s.agent("a", "checkout");
    assert_eq!(a.recv_rule_ids(), Vec::<String>::new());
    let id = s.add_rule(r#"{"at":"cart::add","action":"log","template":"x","max_hits":3}"#);
    assert_eq!(a.recv_rule_ids(), vec![id.clone()]);
    let armed = || AgentMessage::Status {
        statuses: vec![
            serde_json::from_value(json!({"rule": id, "status": "armed", "probes": 1})).unwrap(),
        ],
    };
    a.send(&armed());
    a.send(&AgentMessage::Responses {
        responses: vec![response(&id, "a", 0)],
        dropped: 0,
    });
    eventually(|| (s.get_json(&format!("/api/v1/rules/{id}"))["hits"] == 1).then_some(()));

    let (status, body) = s.call("POST", &format!("/api/v1/rules/{id}/disable"), None);
    assert_eq!(status, 200, "{body}");
    let view: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (&view["enabled"], &view["state"], &view["hits"]),
        (&json!(false), &json!("active"), &json!(1))
    );
    assert_eq!(a.recv_rule_ids(), Vec::<String>::new());
    // A response still in flight is refused; the history stays listed.
    a.send(&AgentMessage::Responses {
        responses: vec![response(&id, "a", 1)],
        dropped: 0,
    });
    a.send(&AgentMessage::Ping);
    assert_eq!(a.recv(), ServerMessage::Pong);
    let kept = s.get_json(&format!("/api/v1/responses?rule={id}"));
    assert_eq!(kept.as_array().unwrap().len(), 1);
    assert_eq!(s.get_json("/api/v1/rules")[0]["enabled"], json!(false));
    // The agent's last word was "armed"; the rule's view says what the agent did since.
    let agent = &s.get_json(&format!("/api/v1/rules/{id}"))["agents"][0];
    assert_eq!(
        (&agent["status"], &agent["probes"]),
        (&json!("disabled"), &json!(0))
    );

    let (status, body) = s.call("POST", &format!("/api/v1/rules/{id}/enable"), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(a.recv_rule_ids(), vec![id.clone()]);
    a.send(&armed());
    eventually(|| {
        (s.get_json(&format!("/api/v1/rules/{id}"))["agents"][0]["status"] == "armed").then_some(())
    });
    a.send(&AgentMessage::Responses {
        responses: (2..6).map(|n| response(&id, "a", n)).collect(),
        dropped: 0,
    });
    // The hit before the pause counts toward the max of 3: two more, then done.
    let view = eventually(|| {
        let v = s.get_json(&format!("/api/v1/rules/{id}"));
        (v["state"] == "done").then_some(v)
    });
    assert_eq!((&view["hits"], &view["enabled"]), (&json!(3), &json!(true)));
    assert_eq!(a.recv_rule_ids(), Vec::<String>::new());
    let (status, body) = s.call("POST", &format!("/api/v1/rules/{id}/enable"), None);
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("is done and cannot run again"), "{body}");
    let (status, body) = s.call("POST", "/api/v1/rules/r-none/disable", None);
    assert_eq!(status, 404, "{body}");
}

#[test]
fn rules_reach_only_agents_of_their_version() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let hello = |id: &str, version: &str| {
        let mut agent = FakeAgent::open(s.addr, &s.agent);
        let mut i = info(id, "checkout");
        i.version = Some(version.into());
        agent.send(&AgentMessage::Hello { agent: i });
        agent
    };
    let mut old = hello("old", "1.2.0");
    let mut new = hello("new", "1.3.0");
    assert_eq!(old.recv_rule_ids(), Vec::<String>::new());
    assert_eq!(new.recv_rule_ids(), Vec::<String>::new());
    let id = s.add_rule(r#"{"at":"cart::add","action":"snapshot","version":"1.3.0"}"#);
    assert_eq!(new.recv_rule_ids(), vec![id.clone()]);
    let view = s.get_json(&format!("/api/v1/rules/{id}"));
    let agents: Vec<&Value> = view["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["agent"])
        .collect();
    assert_eq!(agents, [&json!("new")]);
    // The old agent got nothing: its next message is the pong.
    old.send(&AgentMessage::Ping);
    assert_eq!(old.recv(), ServerMessage::Pong);
}

#[test]
fn an_agents_fast_path_status_is_stored_and_shown_as_it_said_it() {
    const SAID: &str =
        "fast path: 2 of 3 probes; no — a branch at 0x4a3f12 lands inside the patched bytes";
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let s = TestServer::start(&data);
    let fast = s.add_rule(r#"{"at":"src/cart.rs:42","action":"snapshot"}"#);
    let slow = s.add_rule(r#"{"at":"src/cart.rs:50","action":"snapshot"}"#);
    let mut a = s.agent("a-1", "checkout");
    a.recv_rule_ids();
    a.send(&AgentMessage::Status {
        statuses: vec![
            serde_json::from_value(
                json!({"rule": fast, "status": "armed", "probes": 3, "fast_path": SAID}),
            )
            .unwrap(),
            serde_json::from_value(json!({"rule": slow, "status": "armed", "probes": 1})).unwrap(),
        ],
    });
    let shown = |s: &TestServer| {
        let one = s.get_json(&format!("/api/v1/rules/{fast}"));
        let other = s.get_json(&format!("/api/v1/rules/{slow}"));
        let listed = s.get_json("/api/v1/rules");
        let in_list = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule"]["id"] == json!(fast))
            .map(|r| r["agents"][0]["fast_path"].clone());
        (
            one["agents"][0]["fast_path"].clone(),
            in_list,
            other["agents"][0].get("fast_path").cloned(),
        )
    };
    let want = (json!(SAID), Some(json!(SAID)), None);
    eventually(|| (shown(&s) == want).then_some(()));
    // From the store, not from memory: the same after a restart, the agent gone.
    drop(a);
    s.stop();
    let s = TestServer::start(&data);
    assert_eq!(shown(&s), want);
}

#[test]
fn a_stream_gets_exactly_what_the_store_holds_in_store_order_while_ten_agents_post_at_once() {
    const AGENTS: u32 = 10;
    const EACH: u32 = 200;
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let rule = s.add_rule(r#"{"at":"src/cart.rs:42","action":"log","template":"{n}"}"#);
    let http: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let stream = http
        .get(s.url("/api/v1/responses/stream"))
        .header("Authorization", format!("Bearer {}", s.admin))
        .call()
        .unwrap();
    let mut lines = BufReader::new(stream.into_body().into_reader()).lines();

    // Each agent sends one response per message, all agents at once: their sessions store
    // in turn and broadcast as they finish, so broadcasts overtake each other.
    let mut agents: Vec<FakeAgent> = (0..AGENTS)
        .map(|a| s.agent(&format!("a-{a}"), "checkout"))
        .collect();
    for a in &mut agents {
        a.recv_rule_ids();
    }
    let senders: Vec<_> = agents
        .into_iter()
        .enumerate()
        .map(|(a, mut agent)| {
            let rule = rule.clone();
            std::thread::spawn(move || {
                let id = format!("a-{a}");
                for i in 0..EACH {
                    agent.send(&AgentMessage::Responses {
                        responses: vec![response(&rule, &id, a as u32 * 1000 + i)],
                        dropped: 0,
                    });
                }
                agent
            })
        })
        .collect();
    let mut streamed = Vec::new();
    let mut ids = Vec::new();
    while streamed.len() < (AGENTS * EACH) as usize {
        let line = lines.next().unwrap().unwrap();
        if let Some(data) = line.strip_prefix("data: ") {
            streamed.push(serde_json::from_str::<Value>(data).unwrap());
        } else if let Some(id) = line.strip_prefix("id: ") {
            ids.push(id.parse::<i64>().unwrap());
        }
    }
    let _agents: Vec<FakeAgent> = senders.into_iter().map(|t| t.join().unwrap()).collect();
    let key = |r: &Value| {
        (
            r["agent"].as_str().unwrap().to_string(),
            r["locals"]["n"]["value"].as_u64().unwrap(),
        )
    };
    let stored = s.get_json(&format!("/api/v1/responses?rule={rule}&limit=10000"));
    let stored: Vec<_> = stored.as_array().unwrap().iter().map(key).collect();
    assert_eq!(stored.len(), (AGENTS * EACH) as usize);
    let streamed_keys: Vec<_> = streamed.iter().map(key).collect();
    assert_eq!(
        streamed_keys, stored,
        "the stream is the store, in its order"
    );
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "event ids rise");
    // Every agent's responses, each once, in the order it sent them.
    for a in 0..AGENTS {
        let mine: Vec<u64> = streamed
            .iter()
            .filter(|r| r["agent"] == json!(format!("a-{a}")))
            .map(|r| r["locals"]["n"]["value"].as_u64().unwrap())
            .collect();
        let want: Vec<u64> = (0..EACH).map(|i| (a * 1000 + i) as u64).collect();
        assert_eq!(mine, want, "agent a-{a}");
    }
}

/// The events of an SSE stream as (event type, id, data), `event` empty for a `message`.
fn sse_events(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    n: usize,
) -> Vec<(String, Option<i64>, Value)> {
    let mut out = Vec::new();
    let (mut event, mut id, mut data) = (String::new(), None, None);
    while out.len() < n {
        let line = lines.next().unwrap().unwrap();
        if line.is_empty() {
            if let Some(d) = data.take() {
                out.push((std::mem::take(&mut event), id.take(), d));
            }
        } else if let Some(v) = line.strip_prefix("event: ") {
            event = v.to_string();
        } else if let Some(v) = line.strip_prefix("id: ") {
            id = Some(v.parse::<i64>().unwrap());
        } else if let Some(v) = line.strip_prefix("data: ") {
            data = Some(serde_json::from_str::<Value>(v).unwrap());
        }
    }
    out
}

#[test]
fn a_stream_resumed_past_what_retention_pruned_says_how_many_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_at(dir.path(), "127.0.0.1:0".parse().unwrap(), |c| {
        c.retention.per_rule = 100;
    });
    let rule = s.add_rule(r#"{"at":"src/cart.rs:42","action":"log","template":"{n}"}"#);
    let mut a = s.agent("a-1", "checkout");
    a.recv_rule_ids();
    for batch in 0..5u32 {
        a.send(&AgentMessage::Responses {
            responses: (0..50)
                .map(|i| response(&rule, "a-1", batch * 50 + i + 1))
                .collect(),
            dropped: 0,
        });
    }
    // 250 stored with ids 1..=250; retention keeps the newest 100, ids 151..=250.
    eventually(|| {
        let kept = s.get_json(&format!("/api/v1/responses?rule={rule}&limit=10000"));
        let kept = kept.as_array().unwrap();
        (kept.len() == 100 && kept[99]["locals"]["n"]["value"] == json!(250)).then_some(())
    });
    let http: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let open = |after: i64| {
        let stream = http
            .get(s.url(&format!("/api/v1/responses/stream?after={after}")))
            .header("Authorization", format!("Bearer {}", s.admin))
            .call()
            .unwrap();
        BufReader::new(stream.into_body().into_reader()).lines()
    };

    // A client that last saw id 40 is told that 110 responses (41..=150) are gone, then
    // gets every one still stored, in order.
    let got = sse_events(&mut open(40), 101);
    assert_eq!(
        got[0],
        (
            "missed".to_string(),
            None,
            json!({"after": 40, "next": 151, "count": 110})
        )
    );
    let ids: Vec<i64> = got[1..].iter().map(|(_, id, _)| id.unwrap()).collect();
    assert_eq!(ids, (151..=250).collect::<Vec<_>>());
    assert!(got[1..].iter().all(|(event, _, _)| event.is_empty()));
    assert_eq!(got[1].2["locals"]["n"]["value"], json!(151));

    // One that is past the pruned ones misses nothing and hears no such event.
    let got = sse_events(&mut open(200), 50);
    let ids: Vec<i64> = got.iter().map(|(_, id, _)| id.unwrap()).collect();
    assert_eq!(ids, (201..=250).collect::<Vec<_>>());
}

/// A live subscriber that stops reading while far more responses arrive than its socket,
/// the broadcast and retention hold: when it reads again, every id is either received or
/// counted in a `missed` event that names exactly the gap, in store order, to the last.
#[test]
fn a_live_subscriber_that_stalls_is_told_exactly_what_it_missed() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_at(dir.path(), "127.0.0.1:0".parse().unwrap(), |c| {
        c.retention.per_rule = 100;
    });
    let rule = s.add_rule(r#"{"at":"src/cart.rs:42","action":"log","template":"{n}"}"#);

    // The subscriber: a socket with a small receive buffer, so it stalls the server's
    // stream soon after it stops reading.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&s.addr.into()).unwrap();
    let mut stream: std::net::TcpStream = socket.into();
    write!(
        stream,
        "GET /api/v1/responses/stream HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n",
        s.addr, s.admin
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut lines = BufReader::new(stream).lines();
    // Headers, then nothing is read until every response is stored.
    let status = lines.next().unwrap().unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    while !lines.next().unwrap().unwrap().is_empty() {}

    const SENT: u32 = 30_000;
    let mut a = s.agent("a-1", "checkout");
    a.recv_rule_ids();
    for batch in 0..SENT / 200 {
        a.send(&AgentMessage::Responses {
            responses: (1..=200)
                .map(|i| response(&rule, "a-1", batch * 200 + i))
                .collect(),
            dropped: 0,
        });
    }
    eventually(|| {
        let kept = s.get_json(&format!("/api/v1/responses?rule={rule}&limit=10000"));
        let kept = kept.as_array().unwrap();
        (kept.len() == 100 && kept[99]["locals"]["n"]["value"] == json!(SENT)).then_some(())
    });
    // A fresh store: the responses have ids 1..=SENT.
    let last = i64::from(SENT);

    // Chunked transfer: the SSE lines are inside chunks, their size lines in between;
    // only the SSE fields are looked at.
    let (mut received, mut missed, mut events) = (0i64, 0i64, 0);
    let (mut at, mut pending_missed) = (0i64, None::<Value>);
    let (mut event, mut id, mut data) = (String::new(), None::<i64>, None::<Value>);
    while at < last {
        let line = lines.next().unwrap().unwrap();
        if let Some(v) = line.strip_prefix("event: ") {
            event = v.to_string();
        } else if let Some(v) = line.strip_prefix("id: ") {
            id = Some(v.parse().unwrap());
        } else if let Some(v) = line.strip_prefix("data: ") {
            data = Some(serde_json::from_str(v).unwrap());
        } else if line.is_empty()
            && let Some(data) = data.take()
        {
            if std::mem::take(&mut event) == "missed" {
                assert_eq!(
                    data["after"],
                    json!(at),
                    "a missed event starts where the stream is"
                );
                let next = data["next"].as_i64().unwrap();
                assert_eq!(data["count"], json!(next - at - 1), "{data}");
                missed += next - at - 1;
                events += 1;
                pending_missed = Some(data);
            } else {
                let id = id.take().unwrap();
                match pending_missed.take() {
                    Some(m) => assert_eq!(json!(id), m["next"], "the stream goes on where it said"),
                    None => assert_eq!(id, at + 1, "no silent jump after {at}"),
                }
                at = id;
                received += 1;
            }
        }
    }
    assert_eq!(at, last);
    assert_eq!(
        received + missed,
        last,
        "every id received or counted missed"
    );
    assert!(
        events >= 1,
        "the stall outran retention: {received} received"
    );
    assert!(
        missed >= i64::from(SENT) - 100 - received,
        "{missed} missed, {received} received"
    );
}
