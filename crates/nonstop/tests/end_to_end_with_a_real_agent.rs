//! End to end: the real server (`nonstop serve`), real programs under the real agent
//! (`nonstop run`), and the CLI (`rules add|rm`, `tail --json`, `agents --json`), all as
//! processes talking over loopback.

mod ticker;

use nonstop_model::Response;
use std::path::Path;
use std::time::{Duration, Instant};
use ticker::{
    Program, Server, expected_output, file_bytes, free_port, line_address, live_bytes, mark_line,
    tail, tmp, wait_for_agents,
};

/// The marked line's address in the ticker (a file address).
fn mark_address() -> u64 {
    line_address(mark_line())
}

fn value(r: &Response, name: &str) -> serde_json::Value {
    serde_json::to_value(
        r.locals
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", r.locals)),
    )
    .unwrap()
}

#[test]
fn snapshot_and_log_rules_reach_a_running_program_and_removal_restores_it() {
    let data = tmp("rules");
    let server = Server::start(free_port(), &data);
    let program = Program::start(&server, 400, "alpha");
    wait_for_agents(&server, 1);

    let snap = server.add_rule(&[
        "--snapshot",
        "--service",
        "ticker",
        "--max-hits",
        "2",
        "--watch",
        "n * 2 + 1",
        "--watch",
        "t.label.starts_with(name)",
    ]);
    let (ok, got) = tail(&server, &snap, 2, "30s");
    assert!(ok, "tail ended before 2 responses");
    assert_eq!(got.len(), 2);
    for r in &got {
        assert_eq!(r.rule, snap);
        assert_eq!(r.service, "ticker");
        assert_eq!(r.location.line, mark_line());
        assert_eq!(r.frames[0].function, "ticker::tick");
        let n = value(r, "n")["value"].as_u64().unwrap();
        assert_eq!(value(r, "label")["value"], format!("alpha-{n}"));
        assert_eq!(value(r, "square")["value"], n * n);
        assert_eq!(value(r, "name")["value"], "alpha");
        let watched: Vec<(&str, serde_json::Value)> = r
            .watch
            .0
            .iter()
            .map(|(e, v)| {
                (
                    e.as_str(),
                    serde_json::to_value(v).unwrap()["value"].clone(),
                )
            })
            .collect();
        assert_eq!(
            watched,
            [
                ("n * 2 + 1", serde_json::json!(n * 2 + 1)),
                ("t.label.starts_with(name)", serde_json::json!(true))
            ]
        );
        assert_eq!(
            value(r, "t")["value"]["label"]["value"],
            format!("alpha-{n}")
        );
    }

    let log = server.add_rule(&[
        "--log",
        "tick {n}: {label} squared is {square}",
        "--service",
        "ticker",
    ]);
    let (ok, got) = tail(&server, &log, 3, "30s");
    assert!(ok);
    for r in &got {
        let msg = r.message.as_deref().unwrap();
        let n: u64 = msg.split(&[' ', ':'][..]).nth(1).unwrap().parse().unwrap();
        assert_eq!(msg, format!("tick {n}: alpha-{n} squared is {}", n * n));
    }

    // Armed: the line's first byte is the trap, or the jmp where the fast path took it.
    let addr = mark_address();
    let original = file_bytes(addr);
    assert_armed(&server, &log, program.pid(), addr);

    let rm = server.cli(&["rules", "rm", &log]);
    assert!(
        rm.status.success(),
        "{}",
        String::from_utf8_lossy(&rm.stderr)
    );
    // The event: the agent disarmed the line (its first byte is the file's again).
    nonstop_testkit::wait_for("the probe is removed", Duration::from_secs(10), || {
        (live_bytes(program.pid(), addr) == original).then_some(())
    });
    let (_, late) = tail(&server, &log, 1, "2s");
    assert!(late.is_empty(), "responses after removal: {late:?}");
    // Removed: the program's code is the file's again, byte for byte.
    assert_eq!(live_bytes(program.pid(), addr), original);

    let (ok, out) = program.finish();
    assert!(ok);
    assert_eq!(out, expected_output(400, "alpha"));
}

#[test]
fn two_instances_of_a_service_both_receive_a_rule() {
    let data = tmp("two");
    let server = Server::start(free_port(), &data);
    let a = Program::start(&server, 400, "one");
    let b = Program::start(&server, 400, "two");
    wait_for_agents(&server, 2);
    let rule = server.add_rule(&["--log", "{label}", "--service", "ticker"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut agents = std::collections::BTreeSet::new();
    let mut names = std::collections::BTreeSet::new();
    while (agents.len() < 2 || names.len() < 2) && Instant::now() < deadline {
        let (_, got) = tail(&server, &rule, 10, "3s");
        for r in got {
            agents.insert(r.agent.clone());
            names.insert(
                r.message
                    .unwrap_or_default()
                    .split('-')
                    .next()
                    .unwrap_or("")
                    .to_owned(),
            );
        }
    }
    assert_eq!(agents.len(), 2, "responses from {agents:?}");
    assert_eq!(names.into_iter().collect::<Vec<_>>(), vec!["one", "two"]);
    assert_eq!(a.finish().1, expected_output(400, "one"));
    assert_eq!(b.finish().1, expected_output(400, "two"));
}

#[test]
fn the_program_outlives_the_server_and_reconnects_when_it_returns() {
    let data = tmp("restart");
    let port = free_port();
    let server = Server::start(port, &data);
    let program = Program::start(&server, 600, "gamma");
    wait_for_agents(&server, 1);
    let rule = server.add_rule(&["--log", "{n}", "--service", "ticker"]);
    let (ok, _) = tail(&server, &rule, 1, "30s");
    assert!(ok);

    let at_kill = program.current_tick();
    server.kill();
    // The event: the program ticks on while no server is there.
    nonstop_testkit::wait_for(
        "the program runs on without the server",
        Duration::from_secs(10),
        || (program.current_tick() >= at_kill.map(|t| t + 10)).then_some(()),
    );
    let server = Server::start(port, &data);
    // The rule survived the restart, the agent reconnected and re-synced.
    let shown = server.cli(&["rules", "show", &rule, "--json"]);
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    wait_for_agents(&server, 1);
    let (ok, got) = tail(&server, &rule, 2, "30s");
    assert!(ok, "no responses after the server came back");
    assert_eq!(got.len(), 2);
    let pid = program.pid();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    let (ok, out) = program.finish();
    assert!(ok);
    assert_eq!(out, expected_output(600, "gamma"));
}

fn stored_responses(server: &Server, rule: &str) -> Vec<Response> {
    serde_json::from_value(server.get_json(&format!("/api/v1/responses?rule={rule}"))).unwrap()
}

/// Proves that nothing captured earlier is still on its way: a witness rule on the same
/// line, whose first response is stored only after everything the agent captured before
/// it (the agent ships in order). The witness is removed again and the line restored.
fn wait_for_a_later_hit(server: &Server, program: &Program, addr: u64) {
    let witness = server.add_rule(&["--log", "witness {n}", "--service", "ticker"]);
    let (ok, got) = tail(server, &witness, 1, "10s");
    assert!(ok, "no response of the witness rule: {got:?}");
    server.cli_ok(&["rules", "rm", &witness]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while live_bytes(program.pid(), addr) != file_bytes(addr) {
        assert!(
            Instant::now() < deadline,
            "the witness probe stayed armed after rm"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn show(server: &Server, rule: &str) -> serde_json::Value {
    server.cli_json(&["rules", "show", rule, "--json"])
}

/// The line is armed: its first byte is the fast path's `jmp` where the agent says the rule's
/// probe took it, else the `int3`.
fn assert_armed(server: &Server, rule: &str, pid: u32, addr: u64) {
    let v = show_until(server, rule, |v| v["agents"][0]["fast_path"].is_string());
    let want = if v["agents"][0]["fast_path"] == "fast path: yes" {
        0xe9
    } else {
        0xcc
    };
    assert_eq!(live_bytes(pid, addr)[0], want, "{}", v["agents"][0]);
}

/// Polls `rules show ID --json` until `f` holds on it, for at most 15 s.
fn show_until(
    server: &Server,
    rule: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = show(server, rule);
        if f(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "rule never got there: {v:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn max_hits_stops_at_exactly_n_across_two_agents() {
    let data = tmp("maxhits");
    let server = Server::start(free_port(), &data);
    let a = Program::start(&server, 150, "one");
    let b = Program::start(&server, 150, "two");
    wait_for_agents(&server, 2);
    let rule = server.add_rule(&["--log", "{label}", "--service", "ticker", "--max-hits", "3"]);
    let done = show_until(&server, &rule, |v| v["state"] == "done");
    assert_eq!(a.finish(), (true, expected_output(150, "one")));
    assert_eq!(b.finish(), (true, expected_output(150, "two")));

    // After both programs ended: exactly 3 stored, over both agents' hits.
    let stored = stored_responses(&server, &rule);
    assert_eq!(stored.len(), 3, "{stored:?}");
    for r in &stored {
        let msg = r.message.as_deref().unwrap();
        assert!(msg.starts_with("one-") || msg.starts_with("two-"), "{msg}");
    }
    let v = show(&server, &rule);
    assert_eq!((&v["state"], &v["hits"]), (&"done".into(), &3.into()));
    assert_eq!(done["rule"]["max_hits"], 3);
    for agent in v["agents"].as_array().unwrap() {
        assert_eq!(agent["status"], "done", "{agent}");
    }
}

#[test]
fn an_expired_rule_stops_says_expired_and_restores_the_program() {
    let data = tmp("expires");
    let server = Server::start(free_port(), &data);
    let program = Program::start(&server, 800, "delta");
    wait_for_agents(&server, 1);
    let rule = server.add_rule(&["--log", "{n}", "--service", "ticker", "--expires", "2s"]);
    let (ok, _) = tail(&server, &rule, 1, "10s");
    assert!(ok, "no response before expiry");
    let addr = mark_address();
    assert_armed(&server, &rule, program.pid(), addr);

    let v = show_until(&server, &rule, |v| v["state"] == "expired");
    let agents = v["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 1, "{v:#}");
    assert_eq!(agents[0]["status"], "expired", "{v:#}");
    // The agent disarms once the rule leaves its set: the line is the file's again.
    let deadline = Instant::now() + Duration::from_secs(5);
    while live_bytes(program.pid(), addr) != file_bytes(addr) {
        assert!(
            Instant::now() < deadline,
            "the probe stayed armed after expiry"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = stored_responses(&server, &rule).len();
    assert!(before >= 1);
    wait_for_a_later_hit(&server, &program, addr);
    assert_eq!(
        stored_responses(&server, &rule).len(),
        before,
        "responses after expiry"
    );
    assert_eq!(live_bytes(program.pid(), addr), file_bytes(addr));
    assert_eq!(program.finish(), (true, expected_output(800, "delta")));
}

#[test]
fn a_disabled_rule_stops_keeps_its_history_and_resumes_when_enabled() {
    let data = tmp("disable");
    let server = Server::start(free_port(), &data);
    let program = Program::start(&server, 900, "eps");
    wait_for_agents(&server, 1);
    let rule = server.add_rule(&["--log", "{n}", "--service", "ticker"]);
    let (ok, _) = tail(&server, &rule, 2, "10s");
    assert!(ok);
    let addr = mark_address();

    server.cli_ok(&["rules", "disable", &rule]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while live_bytes(program.pid(), addr) != file_bytes(addr) {
        assert!(
            Instant::now() < deadline,
            "the probe stayed armed after disable"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let history = stored_responses(&server, &rule);
    assert!(history.len() >= 2, "{history:?}");
    wait_for_a_later_hit(&server, &program, addr);
    assert_eq!(
        stored_responses(&server, &rule).len(),
        history.len(),
        "responses while disabled"
    );
    let v = show(&server, &rule);
    assert_eq!(
        (&v["enabled"], &v["state"], &v["hits"]),
        (&false.into(), &"active".into(), &history.len().into())
    );
    let list = server.cli_ok(&["rules", "list"]);
    assert!(list.contains("active, disabled"), "{list}");

    server.cli_ok(&["rules", "enable", &rule]);
    let (ok, resumed) = tail(&server, &rule, 2, "10s");
    assert!(ok, "no responses after enable");
    let last_before: u64 = history
        .last()
        .unwrap()
        .message
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    for r in &resumed {
        let n: u64 = r.message.as_deref().unwrap().parse().unwrap();
        assert!(
            n > last_before + 10,
            "tick {n} is not after the pause (last {last_before})"
        );
    }
    assert_armed(&server, &rule, program.pid(), addr);
    let v = show(&server, &rule);
    assert_eq!(v["enabled"], true);
    assert!(v["hits"].as_u64().unwrap() >= history.len() as u64 + 2);
    assert_eq!(program.finish(), (true, expected_output(900, "eps")));
}

#[test]
fn the_trace_template_logs_a_functions_arguments_at_its_entry() {
    let data = tmp("template");
    let server = Server::start(free_port(), &data);
    let listed = server.cli_ok(&["rules", "templates"]);
    for name in ["snapshot", "log", "count", "measure", "trace"] {
        assert!(
            listed.lines().any(|l| l.starts_with(name)),
            "{name} missing:\n{listed}"
        );
    }
    assert!(listed.contains("--param args=…"), "{listed}");
    let missing = server.cli(&["rules", "add", "ticker::tick", "--template", "trace"]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("template trace needs the parameter args"),
        "{err}"
    );

    let program = Program::start(&server, 300, "zeta");
    wait_for_agents(&server, 1);
    let rule = server.cli_ok(&[
        "rules",
        "add",
        "ticker::tick",
        "--template",
        "trace",
        "--param",
        "args=n,name",
        "--service",
        "ticker",
    ]);
    let rule = rule.trim();
    let (ok, got) = tail(&server, rule, 2, "15s");
    let v = show(&server, rule);
    assert!(ok, "no trace responses: {v:#}");
    for r in &got {
        let msg = r.message.as_deref().unwrap();
        let n: u64 = msg
            .trim_start_matches("ticker::tick(n=")
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("{msg}"));
        assert_eq!(msg, format!("ticker::tick(n={n}, name=\"zeta\")"));
    }
    assert_eq!(program.finish(), (true, expected_output(300, "zeta")));
}
