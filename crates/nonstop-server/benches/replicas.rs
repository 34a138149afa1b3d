//! Replicas on one PostgreSQL: responses ingested per second by one replica and by two,
//! and how long a rule added on one replica takes to reach, and be reported armed by, an
//! agent connected to the other.
//!
//! Servers run in this process (each on its own 2-thread runtime) on a throwaway cluster
//! the testkit starts (`initdb`/`pg_ctl`, `fsync=off`); agents are fake ones speaking the
//! wire protocol over real WebSockets on loopback, so the agent's own costs are left out.
//!
//! - **ingest**: [`AGENTS`] agents each send [`PER_AGENT`] log responses in batches of
//!   [`BATCH`] for one rule; the time runs from the first send until the store counts every
//!   one (the rule's hits, read through the API). One replica: every agent on A; two: half on A,
//!   half on B.
//! - **rule → armed**: an agent on A; a rule is POSTed to B; "delivered" is when the agent
//!   receives a rule set containing it, "armed" when B's `GET /api/v1/rules/{id}` shows the
//!   `armed` status the agent sent back at once (through A and the store). [`ROUNDS`] rounds.
//!
//! `cargo bench -p nonstop-server --bench replicas` (under a minute). On a machine with two
//! cores shared by everything, the servers, the database and the fake agents compete: the
//! figures say whether the store is the bottleneck, not what a real deployment reaches.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{FakeAgent, TestServer, response};
use nonstop_model::{AgentMessage, ServerMessage};
use nonstop_server::StoreLocation;
use nonstop_testkit::postgres::Cluster;
use std::time::{Duration, Instant};

const AGENTS: usize = 4;
const PER_AGENT: u32 = 5_000;
const BATCH: u32 = 100;
const ROUNDS: usize = 50;

fn replica(url: &str, data: &std::path::Path) -> TestServer {
    let url = url.to_string();
    TestServer::start_at(data, "127.0.0.1:0".parse().unwrap(), move |c| {
        c.store = StoreLocation::Postgres(url);
    })
}

fn hits(s: &TestServer, rule: &str) -> u64 {
    s.get_json(&format!("/api/v1/rules/{rule}"))["hits"]
        .as_u64()
        .unwrap_or(0)
}

/// Responses per second stored with the agents spread over `servers`.
fn ingest(servers: &[&TestServer]) -> f64 {
    let rule = servers[0].add_rule(
        r#"{"at":"cart::add","action":"log","template":"x","max_hits":1000000,"service":"checkout"}"#,
    );
    let mut agents: Vec<FakeAgent> = (0..AGENTS)
        .map(|i| {
            let s = servers[i % servers.len()];
            let mut a = s.agent(&format!("ingest-{i}"), "checkout");
            // Its first rule set holds the rule (on the other replica: after the notify).
            loop {
                if let ServerMessage::Rules { rules } = a.recv()
                    && rules.iter().any(|r| r.id == rule)
                {
                    break;
                }
            }
            a
        })
        .collect();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for (i, a) in agents.iter_mut().enumerate() {
            let rule = rule.clone();
            scope.spawn(move || {
                let id = format!("ingest-{i}");
                for first in (0..PER_AGENT).step_by(BATCH as usize) {
                    let responses = (first..first + BATCH)
                        .map(|n| response(&rule, &id, n))
                        .collect();
                    a.send(&AgentMessage::Responses {
                        responses,
                        dropped: 0,
                    });
                }
            });
        }
    });
    let total = AGENTS as u64 * u64::from(PER_AGENT);
    let deadline = Instant::now() + Duration::from_secs(120);
    while hits(servers[0], &rule) < total {
        assert!(Instant::now() < deadline, "not all responses were stored");
        std::thread::sleep(Duration::from_millis(5));
    }
    let secs = started.elapsed().as_secs_f64();
    drop(agents);
    total as f64 / secs
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// (delivered, armed) per round: rule POSTed on `b`, agent on `a`.
fn rule_to_armed(a: &TestServer, b: &TestServer) -> (Vec<Duration>, Vec<Duration>) {
    let mut agent = a.agent("latency", "latency");
    agent.recv_rule_ids();
    let (mut delivered, mut armed) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let t0 = Instant::now();
        let id =
            b.add_rule(r#"{"at":"cart::add","action":"log","template":"x","service":"latency"}"#);
        loop {
            if let ServerMessage::Rules { rules } = agent.recv()
                && rules.iter().any(|r| r.id == id)
            {
                break;
            }
        }
        delivered.push(t0.elapsed());
        agent.send(&AgentMessage::Status {
            statuses: vec![
                serde_json::from_value(
                    serde_json::json!({"rule": id, "status": "armed", "probes": 1}),
                )
                .unwrap(),
            ],
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = b.get_json(&format!("/api/v1/rules/{id}"));
            if v["agents"][0]["status"] == "armed" {
                break;
            }
            assert!(Instant::now() < deadline, "never armed: {v}");
            std::thread::sleep(Duration::from_millis(2));
        }
        armed.push(t0.elapsed());
        let (status, body) = b.call("DELETE", &format!("/api/v1/rules/{id}"), None);
        assert!(status < 300, "{body}");
        // The set without it, so the next round starts from nothing.
        loop {
            if let ServerMessage::Rules { rules } = agent.recv()
                && !rules.iter().any(|r| r.id == id)
            {
                break;
            }
        }
    }
    delivered.sort();
    armed.sort();
    (delivered, armed)
}

fn main() {
    let cluster = Cluster::shared();
    let dir = nonstop_testkit::tempdir("bench-replicas");

    let db1 = cluster.database();
    let one = replica(&db1.url, &dir.join("one"));
    let rate_one = ingest(&[&one]);
    drop(one);

    let db2 = cluster.database();
    let a = replica(&db2.url, &dir.join("a"));
    let b = replica(&db2.url, &dir.join("b"));
    let rate_two = ingest(&[&a, &b]);
    let (delivered, armed) = rule_to_armed(&a, &b);

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("ingest ({AGENTS} agents x {PER_AGENT} responses, batches of {BATCH}, PostgreSQL):");
    println!("  one replica:  {rate_one:>8.0} responses/s");
    println!("  two replicas: {rate_two:>8.0} responses/s");
    println!("rule added on B -> agent on A ({ROUNDS} rounds):");
    println!(
        "  delivered: p50 {:.1} ms, p99 {:.1} ms",
        ms(percentile(&delivered, 0.5)),
        ms(percentile(&delivered, 0.99))
    );
    println!(
        "  armed (shown on B): p50 {:.1} ms, p99 {:.1} ms",
        ms(percentile(&armed, 0.5)),
        ms(percentile(&armed, 0.99))
    );
}
