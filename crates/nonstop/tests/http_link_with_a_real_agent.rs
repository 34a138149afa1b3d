//! End to end for the agent's HTTP link (`NONSTOP_LINK=http`, the one serverless functions
//! use): the real server (`nonstop serve`), the ticker fixture under the real agent
//! (`nonstop run`), rules added with the CLI. Between the agent and the server sits a
//! loopback proxy that forwards every byte and records each exchange (request line and
//! answer status), so the test sees the ETag polls the link makes and what they get.

mod ticker;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use ticker::{Program, Server, expected_output, free_port, tmp, wait_until_armed};

/// Ticks the program runs (20 ms each).
const TICKS: u64 = 600;
/// Ticks between the tick seen when the rules are added and the window's start.
const LEAD: u64 = 150;
/// Ticks in the window.
const WINDOW: u64 = 100;
/// Ticks after the window until the program ends, at least.
const TAIL: u64 = 100;

/// One request and the status of its answer, as seen on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Exchange {
    /// `METHOD PATH` without the query.
    request: String,
    status: u16,
}

/// A TCP proxy in front of the server that records the HTTP exchanges passing through.
struct RecordingProxy {
    url: String,
    log: Arc<Mutex<Vec<Exchange>>>,
}

impl RecordingProxy {
    fn start(upstream: u16) -> RecordingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let requests = Arc::new(Mutex::new(VecDeque::new()));
                let (c, s) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let asked = requests.clone();
                std::thread::spawn(move || {
                    pump(client, server, |first| {
                        let mut words = first.split(' ');
                        let method = words.next().unwrap_or("");
                        let path = words.next().unwrap_or("").split('?').next().unwrap_or("");
                        asked.lock().unwrap().push_back(format!("{method} {path}"));
                    })
                });
                let sink = sink.clone();
                std::thread::spawn(move || {
                    pump(s, c, |first| {
                        let status = first.split(' ').nth(1).and_then(|s| s.parse().ok());
                        let request = requests.lock().unwrap().pop_front().unwrap_or_default();
                        sink.lock().unwrap().push(Exchange {
                            request,
                            status: status.unwrap_or(0),
                        });
                    })
                });
            }
        });
        RecordingProxy { url, log }
    }

    fn exchanges(&self) -> Vec<Exchange> {
        self.log.lock().unwrap().clone()
    }

    /// The statuses of the rule polls (`GET /agent/v1/poll`) from the `from`th exchange on.
    fn poll_statuses(&self, from: usize) -> Vec<u16> {
        self.exchanges()[from..]
            .iter()
            .filter(|e| e.request == "GET /agent/v1/poll")
            .map(|e| e.status)
            .collect()
    }
}

/// Copies `from` to `to`, calling `on_message` with the first line of every complete HTTP
/// message (requests one way, answers the other; keep-alive, no pipelining).
fn pump(mut from: TcpStream, mut to: TcpStream, mut on_message: impl FnMut(&str)) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let n = match from.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&chunk[..n]).is_err() {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let length = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() < end + 4 + length {
                break;
            }
            buf.drain(..end + 4 + length);
            on_message(head.lines().next().unwrap_or(""));
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}

/// `GET /metrics` with the admin token, as a Prometheus scrape sends it.
fn sample(server: &Server, name: &str) -> Option<String> {
    let (_, text) = server.get("/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ').map(str::to_owned))
}

#[test]
fn rules_statuses_responses_and_metrics_travel_over_the_http_link_with_etag_polls() {
    let server = Server::start(free_port(), &tmp("http"));
    let proxy = RecordingProxy::start(server.port());
    let program = Program::start_with(&server, &proxy.url, TICKS, "h", &[("NONSTOP_LINK", "http")]);

    // The hello is a POST answered with the rule set; then, nothing having changed, every
    // poll sends the set's ETag and gets a 304.
    nonstop_testkit::wait_for(
        "three rule polls of the HTTP link",
        Duration::from_secs(30),
        || (proxy.poll_statuses(0).len() >= 3).then_some(()),
    );
    let before = proxy.exchanges();
    assert_eq!(
        before[0],
        Exchange {
            request: "POST /agent/v1/responses".into(),
            status: 200
        },
        "{before:?}"
    );
    assert!(
        proxy.poll_statuses(0).iter().all(|s| *s == 304),
        "polls of an unchanged rule set must be answered 304: {before:?}"
    );
    let agents = server.cli_json(&["agents", "--json"]);
    assert_eq!(agents.as_array().map(Vec::len), Some(1), "{agents:#}");
    assert_eq!(agents[0]["service"], "ticker");

    let now =
        nonstop_testkit::wait_for("a tick", Duration::from_secs(10), || program.current_tick());
    let (start, end) = (now + LEAD, now + LEAD + WINDOW);
    assert!(end + TAIL <= TICKS, "the program got too far ({now})");
    let window = format!("n >= {start} && n < {end}");
    let added_at = proxy.exchanges().len();
    let snapshot = server.add_rule(&[
        "--service",
        "ticker",
        "--snapshot",
        "--max-hits",
        "1000",
        "--rate",
        "1000/s",
        "--when",
        &format!("n % 5 == 1 && {window}"),
    ]);
    let log = server.add_rule(&[
        "--service",
        "ticker",
        "--log",
        "tick {n} squared is {square}",
        "--when",
        &format!("n % 4 == 3 && {window}"),
    ]);
    let count = server.add_rule(&[
        "--service",
        "ticker",
        "--metric",
        "http_ticks",
        "--when",
        &format!("n % 2 == 0 && {window}"),
    ]);
    // Statuses travel over the link: `armed` is the agent's word.
    for rule in [&snapshot, &log, &count] {
        wait_until_armed(&server, rule);
    }
    let armed_at = program.current_tick().unwrap();
    assert!(
        armed_at < start,
        "armed at tick {armed_at}, after the window opened at {start}"
    );
    // The new rules came with a changed ETag: a poll answered 200 with the new set.
    let after = proxy.poll_statuses(added_at);
    assert!(
        after.contains(&200),
        "no poll brought the new rules: {after:?}"
    );

    let (ok, out) = program.finish();
    assert!(ok, "the program failed under the agent");
    assert_eq!(
        out,
        expected_output(TICKS, "h"),
        "the program's output changed"
    );

    let responses =
        |rule: &str| server.get_json(&format!("/api/v1/responses?rule={rule}&limit=1000"));
    let snapshots = responses(&snapshot);
    let got: Vec<(u64, u64)> = snapshots
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["locals"]["n"]["value"].as_u64().unwrap(),
                r["locals"]["square"]["value"].as_u64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(u64, u64)> = (start..end)
        .filter(|n| n % 5 == 1)
        .map(|n| (n, n * n))
        .collect();
    assert_eq!(got, want);
    let messages: Vec<String> = responses(&log)
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["message"].as_str().unwrap().to_owned())
        .collect();
    let want: Vec<String> = (start..end)
        .filter(|n| n % 4 == 3)
        .map(|n| format!("tick {n} squared is {}", n * n))
        .collect();
    assert_eq!(messages, want);
    let evens = (start..end).filter(|n| n % 2 == 0).count();
    assert_eq!(
        sample(&server, "http_ticks_total{service=\"ticker\"}"),
        Some(evens.to_string())
    );
    // Responses and metric series went out as batched POSTs on the same link.
    let posts = proxy
        .exchanges()
        .iter()
        .filter(|e| e.request == "POST /agent/v1/responses" && e.status == 200)
        .count();
    assert!(posts >= 2, "{:?}", proxy.exchanges());
}
