//! Both agent links (WebSocket and HTTP) survive the program being frozen, as AWS Lambda,
//! `docker pause` or a debugger attach freeze it: the ticker under the real agent gets
//! SIGSTOP, stays stopped longer than every deadline of the links (the HTTP link's 2 s
//! request deadline, the WebSocket's 1 s freeze gap), then SIGCONT. The agent must go on
//! with the link it had (no reconnect loop on stderr), and a rule added after the resume
//! is armed and answers with exact values.

mod ticker;

use std::process::Command;
use std::time::Duration;
use ticker::{Program, Server, free_port, tmp, wait_until_armed};

/// Ticks the program runs (20 ms each); the test ends it long before.
const TICKS: u64 = 3000;
/// Ticks between the resume and the tick the rule added after it waits for.
const LEAD: u64 = 250;
/// How long the program stays stopped.
const FROZEN: Duration = Duration::from_secs(4);

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// The process state letter of `/proc/PID/stat` (`T` when stopped).
fn state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = stat.rsplit_once(") ").unwrap().1;
    after_name.chars().next().unwrap()
}

fn a_frozen_program_keeps_its_link(link: &str) {
    let server = Server::start(free_port(), &tmp(link));
    let program = Program::start_with(&server, &server.url, TICKS, "f", &[("NONSTOP_LINK", link)]);
    // A rule armed before the freeze shows the link is up and carrying statuses.
    let before = server.add_rule(&[
        "--service",
        "ticker",
        "--log",
        "tick {n}",
        "--when",
        "n == 1000000",
    ]);
    wait_until_armed(&server, &before);

    let pid = program.pid();
    signal(pid, "STOP");
    nonstop_testkit::wait_for("the program to stop", Duration::from_secs(5), || {
        (state(pid) == 'T').then_some(())
    });
    let frozen_at = program.current_tick().unwrap();
    // The freeze itself is the point of the test: it must outlast the links' deadlines.
    std::thread::sleep(FROZEN);
    signal(pid, "CONT");
    let resumed = nonstop_testkit::wait_for("ticks after SIGCONT", Duration::from_secs(10), || {
        program.current_tick().filter(|n| *n > frozen_at + 5)
    });

    let at = resumed + LEAD;
    // One hit from tick `at` on (the rate limit high, so no earlier tick's hit uses it up);
    // the rule may be done before anyone sees it `armed`, so its response is what counts.
    let after = server.add_rule(&[
        "--service",
        "ticker",
        "--snapshot",
        "--max-hits",
        "1",
        "--rate",
        "1000/s",
        "--when",
        &format!("n >= {at}"),
    ]);
    let response = nonstop_testkit::wait_for(
        "the snapshot of the rule added after the resume",
        Duration::from_secs(30),
        || {
            let got = server.get_json(&format!("/api/v1/responses?rule={after}"));
            got.as_array().and_then(|a| a.first().cloned())
        },
    );
    // Tick `at` itself: the rule was armed before it, within the lead.
    assert_eq!(response["locals"]["n"]["value"], at);
    assert_eq!(response["locals"]["square"]["value"], at * at);
    let agents = server.cli_json(&["agents", "--json"]);
    assert_eq!(
        agents.as_array().map(Vec::len),
        Some(1),
        "one agent, the same: {agents:#}"
    );

    let stderr = program.stderr();
    let troubled: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            [
                "reconnect",
                "retrying",
                "lost the connection",
                "stopped answering",
                "Interrupted",
            ]
            .iter()
            .any(|w| l.contains(w))
        })
        .collect();
    assert!(
        troubled.is_empty(),
        "the {link} link had trouble after the freeze:\n{stderr}"
    );
}

#[test]
fn the_websocket_link_resumes_after_sigstop_and_sigcont() {
    a_frozen_program_keeps_its_link("ws");
}

#[test]
fn the_http_link_resumes_after_sigstop_and_sigcont() {
    a_frozen_program_keeps_its_link("http");
}
