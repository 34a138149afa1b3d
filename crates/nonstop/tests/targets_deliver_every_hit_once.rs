//! End to end for targets: the real server (`nonstop serve`), the ticker under the real
//! agent (`nonstop run`), targets and rules added with the CLI, and receivers on loopback
//! (plain HTTP/1.1 servers in this test, so each can answer 503, hang or not listen).
//!
//! Each hit must reach each target exactly once, in order, with the same delivery id on
//! every target and on every re-send; receivers that are down, hang, or come up late must
//! not lose hits nor hold up the others; a server killed mid-delivery re-sends what was in
//! flight with the same `webhook-id`.

mod ticker;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use ticker::{Program, Server, free_port, tmp, wait_for_agents};

/// The signing secret of the webhook targets (24 bytes, base64).
const SECRET: &str = "whsec_bm9uc3RvcC10ZXN0LXNlY3JldC0yNC1i";
/// Hits per rule.
const HITS: u64 = 20;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// 200 and record.
    Take,
    /// 503, nothing recorded as taken.
    Unavailable,
    /// Read the request, never answer (the connection stays open).
    Hang,
}

/// One request the receiver took (answered 200).
#[derive(Debug, Clone)]
struct Taken {
    id: String,
    body: serde_json::Value,
}

#[derive(Default)]
struct State {
    mode: Option<Mode>,
    taken: Vec<Taken>,
    /// Every webhook-id seen, answered or not, in arrival order.
    seen: Vec<String>,
    refused: usize,
    hanging: usize,
    bad_signatures: Vec<String>,
}

/// A webhook receiver on loopback that checks Standard Webhooks signatures.
struct Receiver {
    port: u16,
    state: Arc<(Mutex<State>, Condvar)>,
}

impl Receiver {
    fn start(port: u16, mode: Mode) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let state = Arc::new((
            Mutex::new(State {
                mode: Some(mode),
                ..State::default()
            }),
            Condvar::new(),
        ));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || serve(conn, &st));
            }
        });
        Receiver { port, state }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn set_mode(&self, mode: Mode) {
        self.state.0.lock().unwrap().mode = Some(mode);
    }

    /// Waits (60 s at most) until `f` holds of the state; returns what it gives.
    fn wait<T>(&self, what: &str, mut f: impl FnMut(&State) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(60);
        let (lock, cond) = &*self.state;
        let mut s = lock.lock().unwrap();
        loop {
            if let Some(v) = f(&s) {
                return v;
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| {
                    panic!(
                        "{what}: not in 60 s (taken {}, seen {}, refused {}, hanging {})",
                        s.taken.len(),
                        s.seen.len(),
                        s.refused,
                        s.hanging
                    )
                });
            s = cond.wait_timeout(s, left).unwrap().0;
        }
    }

    fn taken(&self) -> Vec<Taken> {
        self.state.0.lock().unwrap().taken.clone()
    }
}

fn serve(conn: TcpStream, st: &Arc<(Mutex<State>, Condvar)>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = std::collections::HashMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let id = headers.get("webhook-id").cloned().unwrap_or_default();
        let ts = headers
            .get("webhook-timestamp")
            .cloned()
            .unwrap_or_default();
        let sig = headers
            .get("webhook-signature")
            .cloned()
            .unwrap_or_default();
        let (lock, cond) = &**st;
        let mode = {
            let mut s = lock.lock().unwrap();
            s.seen.push(id.clone());
            if !signed(&id, &ts, &body, &sig) {
                s.bad_signatures.push(id.clone());
            }
            let mode = s.mode.unwrap_or(Mode::Take);
            match mode {
                Mode::Take => s.taken.push(Taken {
                    id,
                    body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
                }),
                Mode::Unavailable => s.refused += 1,
                Mode::Hang => s.hanging += 1,
            }
            cond.notify_all();
            mode
        };
        let answer: &[u8] = match mode {
            Mode::Take => b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            Mode::Unavailable => b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
            Mode::Hang => {
                // Hold the connection until the sender gives up (or dies).
                let mut sink = Vec::new();
                let _ = reader.read_to_end(&mut sink);
                return;
            }
        };
        if out.write_all(answer).is_err() {
            return;
        }
    }
}

/// Whether `sig` has a `v1,` signature of `{id}.{ts}.{body}` with the secret's key,
/// recomputed here as the Standard Webhooks spec says.
fn signed(id: &str, ts: &str, body: &[u8], sig: &str) -> bool {
    let key = STANDARD
        .decode(SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let want = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    let fresh = ts.parse::<u64>().is_ok_and(|t| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        now.abs_diff(t) <= 300
    });
    fresh && sig.split(' ').any(|s| s == want)
}

/// The tick of a log response's message `tick N squared is N²`, checked.
fn tick_of(message: &str) -> u64 {
    let n: u64 = message
        .strip_prefix("tick ")
        .and_then(|m| m.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected message {message:?}"));
    assert_eq!(message, format!("tick {n} squared is {}", n * n));
    n
}

fn add_webhook(server: &Server, name: &str, url: &str) {
    server.cli_ok(&[
        "targets",
        "add",
        name,
        "--webhook",
        url,
        "--secret",
        SECRET,
        "--header",
        "x-team=nonstop",
    ]);
}

/// Adds the log rule routed to `to`; returns its id.
fn add_rule(server: &Server, to: &[&str]) -> String {
    let mut args = vec![
        "--service",
        "ticker",
        "--log",
        "tick {n} squared is {square}",
        "--max-hits",
        "20",
        "--rate",
        "1000/s",
    ];
    for t in to {
        args.extend(["--to", t]);
    }
    server.add_rule(&args)
}

fn target(server: &Server, name: &str) -> serde_json::Value {
    server.cli_json(&["targets", "show", name, "--json"])
}

/// Waits until the target's counts satisfy `f`.
fn wait_target(server: &Server, name: &str, what: &str, f: impl Fn(&serde_json::Value) -> bool) {
    nonstop_testkit::wait_for(what, Duration::from_secs(60), || {
        let t = target(server, name);
        f(&t).then_some(())
    });
}

/// The stored responses' ticks, in order.
fn stored_ticks(server: &Server, rule: &str) -> Vec<u64> {
    let v = server.get_json(&format!("/api/v1/responses?rule={rule}&limit=1000"));
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| tick_of(r["message"].as_str().unwrap()))
        .collect()
}

/// The webhook bodies' ticks and ids, in the order taken, each body checked.
fn delivered(r: &Receiver, rule: &str) -> Vec<(u64, String)> {
    r.taken()
        .iter()
        .map(|t| {
            assert_eq!(t.body["type"], "nonstop.log");
            assert_eq!(t.body["data"]["rule"], rule);
            assert_eq!(t.body["data"]["service"], "ticker");
            (
                tick_of(t.body["data"]["message"].as_str().unwrap()),
                t.id.clone(),
            )
        })
        .collect()
}

#[test]
fn every_hit_reaches_each_target_once_in_order_through_outages_and_a_hanging_receiver() {
    let dir = tmp("outages");
    let server = Server::start_with(
        free_port(),
        &dir.join("data"),
        &["--target-retry-max", "1s", "--target-timeout", "120s"],
    );
    let down = Receiver::start(free_port(), Mode::Unavailable);
    let slow = Receiver::start(free_port(), Mode::Hang);
    let late_port = free_port();
    add_webhook(&server, "down", &down.url());
    add_webhook(&server, "slow", &slow.url());
    add_webhook(
        &server,
        "late",
        &format!("http://127.0.0.1:{late_port}/hook"),
    );
    let file = dir.join("hits.jsonl");
    server.cli_ok(&["targets", "add", "file", "--file", file.to_str().unwrap()]);

    // An unknown target is refused with the configured ones listed.
    let out = server.cli(&["rules", "add", "ticker.rs:1", "--to", "nowhere"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nowhere") && err.contains("ui, down, file, late, slow"),
        "{err}"
    );

    let program = Program::start(&server, 100_000, "m");
    wait_for_agents(&server, 1);
    let rule = add_rule(&server, &["down", "slow", "late", "file", "ui"]);

    // The file target takes all while the others are down, unanswered or not listening.
    wait_target(&server, "file", "the file target has every hit", |t| {
        t["sent"] == HITS
    });
    let ticks = stored_ticks(&server, &rule);
    assert_eq!(ticks.len() as u64, HITS);
    assert!(ticks.windows(2).all(|w| w[0] < w[1]), "{ticks:?}");
    slow.wait("the hanging receiver holds a request", |s| {
        (s.hanging > 0).then_some(())
    });
    down.wait("the down receiver refused a try", |s| {
        (s.refused > 0).then_some(())
    });
    wait_target(
        &server,
        "late",
        "the late target has every hit waiting",
        |t| t["pending"] == HITS && t["last_error"].as_str().is_some_and(|e| !e.is_empty()),
    );

    // The receivers come back: each gets every hit once, in order.
    down.set_mode(Mode::Take);
    let late = Receiver::start(late_port, Mode::Take);
    for (name, r) in [("down", &down), ("late", &late)] {
        r.wait(&format!("{name} has every hit"), |s| {
            (s.taken.len() as u64 >= HITS).then_some(())
        });
        wait_target(
            &server,
            name,
            &format!("{name} counts every hit sent"),
            |t| t["sent"] == HITS && t["pending"] == 0,
        );
        let got = delivered(r, &rule);
        assert_eq!(
            got.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            ticks,
            "{name}: every hit once, in order"
        );
        let ids: HashSet<&String> = got.iter().map(|(_, id)| id).collect();
        assert_eq!(ids.len() as u64, HITS, "{name}: one id per hit");
        assert!(r.state.0.lock().unwrap().bad_signatures.is_empty());
    }
    // Every target got the same ids for the same hits.
    assert_eq!(delivered(&down, &rule), delivered(&late, &rule));

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let in_file: Vec<(u64, String)> = lines
        .iter()
        .map(|l| {
            assert_eq!(l["rule"], rule.as_str());
            (
                tick_of(l["message"].as_str().unwrap()),
                l["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(in_file, delivered(&down, &rule));

    // The hanging receiver still holds its first request: the others were not held up.
    {
        let s = slow.state.0.lock().unwrap();
        assert_eq!((s.hanging, s.taken.len()), (1, 0));
    }
    let slow_t = target(&server, "slow");
    assert_eq!(
        (slow_t["pending"].as_u64(), slow_t["sent"].as_u64()),
        (Some(HITS), Some(0))
    );

    let view = server.cli_json(&["rules", "show", &rule, "--json"]);
    let deliveries: Vec<(String, u64, u64)> = view["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["target"].as_str().unwrap().to_string(),
                d["sent"].as_u64().unwrap(),
                d["pending"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        deliveries,
        [
            ("down".to_string(), HITS, 0),
            ("file".to_string(), HITS, 0),
            ("late".to_string(), HITS, 0),
            ("slow".to_string(), 0, HITS),
        ]
    );
    // Secrets never come back whole.
    let listed = server.cli_ok(&["targets", "list", "--json"]);
    assert!(
        !listed.contains(SECRET.trim_start_matches("whsec_")),
        "{listed}"
    );
    assert!(
        listed.contains("\"secret\":\"…NC1i\"") && listed.contains("\"x-team\":\"…stop\""),
        "{listed}"
    );
    drop(program);
}

#[test]
fn a_server_killed_mid_delivery_sends_again_with_the_same_ids_and_loses_nothing() {
    let dir = tmp("killed");
    let port = free_port();
    let flags = ["--target-retry-max", "1s", "--target-timeout", "120s"];
    let server = Server::start_with(port, &dir.join("data"), &flags);
    let hook = Receiver::start(free_port(), Mode::Hang);
    add_webhook(&server, "hook", &hook.url());
    let program = Program::start(&server, 100_000, "m");
    wait_for_agents(&server, 1);
    let rule = add_rule(&server, &["hook"]);
    // The first delivery is in flight (its request unanswered) when the server dies.
    let first = hook.wait("the first delivery is in flight", |s| {
        s.seen.first().cloned()
    });
    wait_target(&server, "hook", "every hit is queued", |t| {
        t["pending"] == HITS
    });
    let ticks = stored_ticks(&server, &rule);
    server.kill();
    drop(program);

    hook.set_mode(Mode::Take);
    let server = Server::start_with(port, &dir.join("data"), &flags);
    hook.wait("every hit arrives after the restart", |s| {
        (s.taken.len() as u64 >= HITS).then_some(())
    });
    wait_target(&server, "hook", "every hit counted sent", |t| {
        t["sent"] == HITS && t["pending"] == 0
    });
    let got = delivered(&hook, &rule);
    assert_eq!(got.iter().map(|(n, _)| *n).collect::<Vec<_>>(), ticks);
    assert_eq!(
        got[0].1, first,
        "the delivery in flight is sent again with its id"
    );
    let ids: HashSet<&String> = got.iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len() as u64, HITS);
    assert!(hook.state.0.lock().unwrap().bad_signatures.is_empty());
}
