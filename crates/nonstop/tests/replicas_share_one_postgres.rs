//! Two `nonstop serve` replicas on one real PostgreSQL (a throwaway cluster the testkit
//! starts with `initdb`/`pg_ctl`), real programs under the real agent, and the CLI, all as
//! processes over loopback: a rule added on one replica reaches agents on the other, the
//! live stream of one shows what the other ingested, max hits hold across replicas, and an
//! agent whose replica dies moves to the next one in `NONSTOP_SERVER` with its rules.

mod ticker;

use nonstop_model::Response;
use nonstop_testkit::postgres::{Cluster, Database};
use std::time::Duration;
use ticker::{Program, Server, expected_output, free_port, tail, tmp, wait_until_armed};

/// Two replicas (A started first, so its tokens are the ones both use) on one database.
fn replicas(name: &str) -> (Database, Server, Server) {
    let db = Cluster::shared().database();
    let data = tmp(name);
    let a = Server::start_with(free_port(), &data.join("a"), &["--store", &db.url]);
    let b = Server::start_with(free_port(), &data.join("b"), &["--store", &db.url]);
    (db, a, b)
}

const TEMPLATE: &str = "tick {n}: {label} squared is {square}";

/// The tick a response of the [`TEMPLATE`] rule was made at, after checking its message
/// says exactly what the ticker computed at that tick.
fn tick_of(r: &Response, name: &str) -> u64 {
    let msg = r
        .message
        .as_deref()
        .expect("a log rule's response has a message");
    let n: u64 = msg
        .split(&[' ', ':'][..])
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no tick in {msg:?}"));
    assert_eq!(msg, format!("tick {n}: {name}-{n} squared is {}", n * n));
    n
}

/// The stored responses of a rule, oldest first, as a replica's API lists them.
fn stored(server: &Server, rule: &str) -> Vec<Response> {
    let v = server.get_json(&format!("/api/v1/responses?rule={rule}&limit=10000"));
    serde_json::from_value(v).unwrap()
}

/// Waits until `server` shows `n` agents connected; fails with what the programs' agents
/// said and what the server shows.
fn wait_connected(server: &Server, n: usize, programs: &[&Program]) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ids = connected(server);
        if ids.len() >= n {
            return ids;
        }
        if std::time::Instant::now() > deadline {
            let said: Vec<String> = programs.iter().map(|p| p.stderr()).collect();
            panic!(
                "{n} agents did not connect to {}: {}\nthe agents said: {said:#?}",
                server.url,
                server.cli_ok(&["agents", "--json"])
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The ids of the agents a replica shows as connected.
fn connected(server: &Server) -> Vec<String> {
    let v = server.cli_json(&["agents", "--json"]);
    v.as_array()
        .unwrap()
        .iter()
        .filter(|a| a["connected"] == true)
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_rule_added_on_replica_b_reaches_the_agent_on_replica_a_and_tail_on_b_shows_its_responses() {
    let (_db, a, b) = replicas("across");
    // Both replicas hand out the same tokens.
    assert_eq!(a.token("admin"), b.token("admin"));
    assert_eq!(a.token("agent"), b.token("agent"));

    let program = Program::start(&a, 3000, "alpha");
    let agent = wait_connected(&a, 1, &[&program]).remove(0);
    // B sees the agent A holds, through the store.
    wait_connected(&b, 1, &[&program]);
    assert_eq!(connected(&b), std::slice::from_ref(&agent));

    let rule = b.add_rule(&["--log", TEMPLATE, "--service", "ticker"]);
    wait_until_armed(&b, &rule);
    let (ok, got) = tail(&b, &rule, 5, "30s");
    assert!(ok, "tail on B ended before 5 responses: {got:?}");
    assert_eq!(got.len(), 5);
    let ticks: Vec<u64> = got.iter().map(|r| tick_of(r, "alpha")).collect();
    for (r, pair) in got.iter().zip(ticks.windows(2)) {
        assert_eq!(r.rule, rule);
        assert_eq!(r.agent, agent);
        assert_eq!(r.service, "ticker");
        // One response per tick, in order: the relay feeds B's stream in id order.
        assert_eq!(pair[1], pair[0] + 1, "ticks {ticks:?}");
    }
    // A's view of the rule is B's: the same status on the same agent.
    let view = a.cli_json(&["rules", "show", &rule, "--json"]);
    assert_eq!(view["agents"][0]["agent"], agent.as_str());
    assert_eq!(view["agents"][0]["status"], "armed");

    // Removed on A: the agent on A disarms, and B's stream has nothing more of it.
    a.cli_ok(&["rules", "rm", &rule]);
    nonstop_testkit::wait_for("B forgets the rule", Duration::from_secs(10), || {
        (!b.cli(&["rules", "show", &rule]).status.success()).then_some(())
    });
    drop(program);
}

#[test]
fn max_hits_hold_exactly_across_agents_on_two_replicas() {
    let (_db, a, b) = replicas("maxhits");
    let on_a = Program::start(&a, 3000, "alpha");
    let on_b = Program::start(&b, 3000, "beta");
    wait_connected(&a, 2, &[&on_a, &on_b]);
    let holders = [connected(&a), connected(&b)];
    assert_eq!(holders[0].len(), 2, "{holders:?}");

    // 50 ticks a second per program: 150 hits take both agents well over a second.
    let rule = a.add_rule(&[
        "--log",
        TEMPLATE,
        "--service",
        "ticker",
        "--max-hits",
        "150",
    ]);
    nonstop_testkit::wait_for("the rule is done", Duration::from_secs(60), || {
        let v = b.cli_json(&["rules", "show", &rule, "--json"]);
        (v["state"] == "done").then_some(v)
    });
    let view = a.cli_json(&["rules", "show", &rule, "--json"]);
    assert_eq!(view["hits"], 150);
    let got = stored(&b, &rule);
    assert_eq!(got.len(), 150);
    let mut per_name = std::collections::BTreeMap::new();
    for r in &got {
        let name = r
            .message
            .as_deref()
            .and_then(|m| m.split(' ').nth(2))
            .and_then(|l| l.split('-').next())
            .unwrap()
            .to_owned();
        tick_of(r, &name);
        *per_name.entry(name).or_insert(0) += 1;
    }
    // Both agents hit it, and together exactly the max.
    assert_eq!(per_name.len(), 2, "{per_name:?}");
    assert_eq!(per_name.values().sum::<u32>(), 150);
    // Done leaves every agent's set: nothing more is stored on either replica.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(stored(&a, &rule).len(), 150);
    drop((on_a, on_b));
}

#[test]
fn when_replica_a_dies_the_agent_moves_to_b_keeps_its_rules_and_loses_nothing_b_stored() {
    let (_db, a, b) = replicas("failover");
    let ticks = 1500;
    let both = format!("{},{}", a.url, b.url);
    let program = Program::start_with(&a, &both, ticks, "alpha", &[]);
    let agent = wait_connected(&a, 1, &[&program]).remove(0);

    let rule = b.add_rule(&["--log", TEMPLATE, "--service", "ticker"]);
    wait_until_armed(&b, &rule);
    let (ok, before) = tail(&b, &rule, 3, "30s");
    assert!(ok, "{before:?}");
    let stored_before = stored(&b, &rule);
    assert!(stored_before.len() >= 3);

    a.kill();
    // The agent moves to B and gets its rule there without anyone adding it again: new
    // responses come in, which only B can have taken.
    let (ok, after) = tail(&b, &rule, 5, "30s");
    assert!(ok, "no responses after A died: {after:?}");
    let last_before = stored_before
        .iter()
        .map(|r| tick_of(r, "alpha"))
        .max()
        .unwrap();
    let ticks_after: Vec<u64> = after.iter().map(|r| tick_of(r, "alpha")).collect();
    assert!(
        ticks_after[0] > last_before,
        "{ticks_after:?} after {last_before}"
    );
    for r in &after {
        assert_eq!(r.agent, agent);
    }
    let view = b.cli_json(&["rules", "show", &rule, "--json"]);
    assert_eq!(view["agents"][0]["status"], "armed");
    assert_eq!(view["state"], "active");

    // Nothing B had stored is lost: what it listed before is still there, first, in order;
    // and each tick is there once, in order.
    let before_ticks: Vec<u64> = stored_before.iter().map(|r| tick_of(r, "alpha")).collect();
    let all: Vec<u64> = stored(&b, &rule)
        .iter()
        .map(|r| tick_of(r, "alpha"))
        .collect();
    assert_eq!(all[..before_ticks.len()], before_ticks[..]);
    assert!(all.windows(2).all(|w| w[1] > w[0]), "{all:?}");
    // Up to A's death, one response per tick (what the agent sent A as A was killed may be
    // gone with A; nothing after the move is).
    let first = before_ticks[0];
    let expected: Vec<u64> = (first..first + before_ticks.len() as u64).collect();
    assert_eq!(before_ticks, expected);

    // The program never noticed: all its output, exactly, and a clean exit.
    let (ok, out) = program.finish();
    assert!(ok);
    assert_eq!(out, expected_output(ticks, "alpha"));
}
