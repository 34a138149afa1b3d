//! Ingest benchmarks against a real `nonstop serve` process (built in release beside this
//! example, SQLite in a temp folder, loopback):
//!
//! - `throughput [ROW…]`: responses/s stored with 1 and 10 agents, over HTTP and the
//!   WebSocket, in messages of 1 and of 200 responses (rows `http-1-1`, `ws-10-200`, …;
//!   all eight by default). Each row runs 3 times on a fresh server; it prints the median,
//!   the runs, and the server's CPU time per response (steadier than wall time on a shared VM).
//! - `memory [N]`: N idle WebSocket agents that said hello (2,000 by default): the server's
//!   RSS before, with them, and after they left, per agent; three rounds of the same fleet.
//! - `floor [N]`: what one sequential HTTP client costs before the store: N `GET /healthz`
//!   round trips (3,000 by default), then N agent-route posts of a hello with an empty
//!   `responses` message (a round trip with one write transaction and the rule set
//!   answered), then N posts of one response naming the agent by `?agent=ID` (what the
//!   agent's HTTP link sends), each as requests/s and the server's CPU µs per request,
//!   median of 3 runs.
//!   Against `http-1-1` it splits a batch-1 post's time into HTTP, transaction and rows.
//! - `latency [SECONDS]`: 100 WebSocket agents sending one response per message, 2,000/s in
//!   all, for SECONDS (10 by default): the time from send to arrival on
//!   `GET /api/v1/responses/stream`, p50 / p99 / max.
//!
//! `cargo run --release -p nonstop-server --example ingest_bench -- MODE` (`NONSTOP_BIN=PATH`
//! to use a `nonstop` binary already built instead of building one aside).

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nonstop_testkit::ServerProcess;
use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

/// The `nonstop` binary: `NONSTOP_BIN` when set (a release build already at hand), else
/// built (in this example's profile) into a target dir of its own.
fn nonstop() -> PathBuf {
    if let Some(bin) = std::env::var_os("NONSTOP_BIN") {
        return PathBuf::from(bin);
    }
    nonstop_testkit::cargo_build_aside("bench", &["-p", "nonstop", "--bin", "nonstop"])
        .join("nonstop")
}

struct Server {
    process: ServerProcess,
    admin: String,
    agent: String,
    rule: String,
}

impl Server {
    fn start(nonstop: &std::path::Path) -> Server {
        let data = nonstop_testkit::tempdir("ingest-bench");
        let process = ServerProcess::start(nonstop, nonstop_testkit::free_port(), &data, &[]);
        let admin = process.token("admin");
        let agent = process.token("agent");
        let mut s = Server {
            process,
            admin,
            agent,
            rule: String::new(),
        };
        let rule = s.call(
            "POST",
            "/api/v1/rules",
            Some(r#"{"at":"src/cart.rs:42","action":"log","template":"m"}"#),
        );
        s.rule = rule["rule"]["id"].as_str().expect("rule id").to_string();
        s
    }

    fn http() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            // Timeouts per phase, not global: a global timeout makes ureq resolve the host
            // on a thread of its own, one per request, which the bench would then measure.
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_recv_body(Some(Duration::from_secs(60)))
            .build()
            .into()
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Value {
        let url = format!("{}{path}", self.process.url);
        let auth = format!("Bearer {}", self.admin);
        let http = Self::http();
        let mut r = match body {
            Some(b) => http
                .post(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(b),
            None => {
                assert_eq!(method, "GET");
                http.get(&url).header("Authorization", &auth).call()
            }
        }
        .expect("admin call");
        serde_json::from_str(&r.body_mut().read_to_string().expect("body")).expect("json")
    }

    /// Resident memory of the server, in KiB.
    fn rss_kib(&self) -> u64 {
        proc_field(self.process.pid(), "status", "VmRSS:")
    }

    /// CPU time of the server so far (user + system), in seconds.
    fn cpu_secs(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.process.pid()))
            .expect("server stat");
        // Fields after the command's closing parenthesis: utime is the 14th field, stime the 15th.
        let rest = &stat[stat.rfind(')').expect("stat") + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 =
            f[11].parse::<f64>().expect("utime") + f[12].parse::<f64>().expect("stime");
        ticks / 100.0
    }

    fn ws(&self, id: &str) -> WebSocket<TcpStream> {
        let addr = format!("127.0.0.1:{}", self.process.port);
        let stream = TcpStream::connect(&addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let mut req = format!("ws://{addr}/agent/v1/ws")
            .into_client_request()
            .expect("request");
        req.headers_mut().insert(
            "Authorization",
            format!("Bearer {}", self.agent).parse().expect("header"),
        );
        let (mut ws, _) = tungstenite::client::client(req, stream).expect("handshake");
        let hello = json!({"type": "hello", "agent": {"id": id, "service": "svc"}});
        ws.send(Message::text(hello.to_string())).expect("hello");
        // The server answers a hello with the agent's rule set.
        loop {
            if let Message::Text(t) = ws.read().expect("rules") {
                let v: Value = serde_json::from_str(&t).expect("json");
                assert_eq!(v["type"], "rules", "{v}");
                break;
            }
        }
        ws
    }
}

fn proc_field(pid: u32, file: &str, name: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).expect("proc");
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("proc field")
}

fn response(rule: &str, id: &str, message: String) -> Value {
    json!({
        "rule": rule, "agent": id, "service": "svc",
        "time": "2026-01-01T00:00:00Z", "thread": "main",
        "location": {"file": "src/cart.rs", "line": 42, "function": "cart::add"},
        "message": message,
        "frames": [{"function": "cart::add", "file": "src/cart.rs", "line": 42}],
        "locals": {"n": {"type": "u32", "value": 7}}
    })
}

fn batch(rule: &str, id: &str, n: usize) -> Value {
    let responses: Vec<_> = (0..n)
        .map(|i| response(rule, id, format!("hit {i}")))
        .collect();
    json!({"type": "responses", "responses": responses, "dropped": 0})
}

#[derive(Clone, Copy, PartialEq)]
enum Transport {
    Http,
    Ws,
}

/// One run: `agents` agents send `total` responses in messages of `batch`; returns
/// responses/s and the server's CPU µs per response.
fn run(
    nonstop: &std::path::Path,
    t: Transport,
    agents: usize,
    size: usize,
    total: usize,
) -> (f64, f64) {
    let server = Server::start(nonstop);
    let per_agent = total / agents;
    // Connections and hellos before the clock starts.
    let sockets: Vec<Option<WebSocket<TcpStream>>> = (0..agents)
        .map(|a| (t == Transport::Ws).then(|| server.ws(&format!("bench-{a}"))))
        .collect();
    let cpu = server.cpu_secs();
    let start = Instant::now();
    let threads: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(a, ws)| {
            let url = format!("{}/agent/v1/responses", server.process.url);
            let (token, rule) = (server.agent.clone(), server.rule.clone());
            std::thread::spawn(move || {
                let id = format!("bench-{a}");
                let message = batch(&rule, &id, size).to_string();
                match ws {
                    Some(mut ws) => {
                        for _ in 0..per_agent / size {
                            ws.send(Message::text(message.clone())).expect("send");
                        }
                        // A session handles its messages in order: the pong says all are stored.
                        ws.send(Message::text(r#"{"type":"ping"}"#)).expect("ping");
                        loop {
                            if let Message::Text(t) = ws.read().expect("pong") {
                                let v: Value = serde_json::from_str(&t).expect("json");
                                match v["type"].as_str() {
                                    Some("pong") => break,
                                    Some("error") => panic!("server said {v}"),
                                    _ => {}
                                }
                            }
                        }
                    }
                    None => {
                        let http = Server::http();
                        let hello = json!({"type": "hello", "agent": {"id": id, "service": "svc"}});
                        let body = format!("[{hello},{message}]");
                        for _ in 0..per_agent / size {
                            let mut r = http
                                .post(&url)
                                .header("Authorization", &format!("Bearer {token}"))
                                .header("Content-Type", "application/json")
                                .send(&body)
                                .expect("post");
                            assert_eq!(r.status().as_u16(), 200, "agent route");
                            // Read to the end, as an agent does, so the connection is kept.
                            r.body_mut().read_to_vec().expect("rule set");
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("agent thread");
    }
    let secs = start.elapsed().as_secs_f64();
    let sent = (per_agent / size * size * agents) as f64;
    let cpu = server.cpu_secs() - cpu;
    server.process.kill();
    (sent / secs, cpu * 1e6 / sent)
}

fn throughput(rows: &[String]) {
    let nonstop = nonstop();
    for (t, agents, size, total) in [
        (Transport::Http, 1, 1, 3_000),
        (Transport::Http, 10, 1, 6_000),
        (Transport::Http, 1, 200, 60_000),
        (Transport::Http, 10, 200, 100_000),
        (Transport::Ws, 1, 1, 10_000),
        (Transport::Ws, 10, 1, 20_000),
        (Transport::Ws, 1, 200, 60_000),
        (Transport::Ws, 10, 200, 100_000),
    ] {
        let name = format!(
            "{}-{agents}-{size}",
            if t == Transport::Http { "http" } else { "ws" }
        );
        if !rows.is_empty() && !rows.contains(&name) {
            continue;
        }
        let runs = (0..3)
            .map(|_| run(&nonstop, t, agents, size, total))
            .collect();
        report(&name, "response", runs);
    }
}

/// Prints a row's three runs of (rate, server CPU µs per `unit`): the median rate, the
/// runs, and the median CPU.
fn report(name: &str, unit: &str, mut runs: Vec<(f64, f64)>) {
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let rates: Vec<String> = runs.iter().map(|r| format!("{:.0}", r.0)).collect();
    let mut cpus: Vec<f64> = runs.iter().map(|r| r.1).collect();
    cpus.sort_by(f64::total_cmp);
    println!(
        "{name:>10}: median {:>7.0} {unit}s/s (runs {}), server CPU {:.1} µs/{unit}",
        runs[1].0,
        rates.join(", "),
        cpus[1]
    );
}

/// What one sequential client sends in the `floor` mode.
#[derive(Clone, Copy)]
enum Request {
    /// `GET /healthz`: HTTP alone.
    Healthz,
    /// A hello and an empty `responses` message: the agent route and one transaction.
    HelloOnly,
    /// One response, the agent named by `?agent=ID` after one hello: what the agent's
    /// HTTP link sends.
    Named,
}

/// One sequential client: `n` requests of one kind; returns requests/s and server CPU µs per
/// request.
fn sequential(nonstop: &std::path::Path, n: usize, kind: Request) -> (f64, f64) {
    let server = Server::start(nonstop);
    let http = Server::http();
    let health = format!("{}/healthz", server.process.url);
    let agent = format!("{}/agent/v1/responses", server.process.url);
    let auth = format!("Bearer {}", server.agent);
    let hello = json!({"type": "hello", "agent": {"id": "floor", "service": "svc"}});
    let post = |url: &str, body: &str| {
        http.post(url)
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .send(body)
    };
    let (url, body) = match kind {
        Request::Healthz => (health, String::new()),
        Request::HelloOnly => (
            agent,
            format!(r#"[{hello},{{"type":"responses","responses":[],"dropped":0}}]"#),
        ),
        Request::Named => {
            let mut r = post(&agent, &hello.to_string()).expect("hello");
            assert_eq!(r.status().as_u16(), 200, "hello");
            r.body_mut().read_to_vec().expect("body");
            (
                format!("{agent}?agent=floor"),
                batch(&server.rule, "floor", 1).to_string(),
            )
        }
    };
    let cpu = server.cpu_secs();
    let start = Instant::now();
    for _ in 0..n {
        let mut r = match kind {
            Request::Healthz => http.get(&url).call(),
            _ => post(&url, &body),
        }
        .expect("request");
        assert_eq!(r.status().as_u16(), 200, "floor request");
        r.body_mut().read_to_vec().expect("body");
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = server.cpu_secs() - cpu;
    server.process.kill();
    (n as f64 / secs, cpu * 1e6 / n as f64)
}

fn floor(n: usize) {
    let nonstop = nonstop();
    for (name, kind) in [
        ("healthz", Request::Healthz),
        ("hello-only", Request::HelloOnly),
        ("named-1", Request::Named),
    ] {
        let runs = (0..3).map(|_| sequential(&nonstop, n, kind)).collect();
        report(name, "request", runs);
    }
}

fn memory(n: usize) {
    let nonstop = nonstop();
    let server = Server::start(&nonstop);
    // One agent first, so what every server allocates once is in the baseline.
    let warm = server.ws("warm");
    std::thread::sleep(Duration::from_millis(500));
    let before = server.rss_kib();
    // Three rounds of the same fleet connecting and leaving (a fleet restarting): what
    // stays after the first is the allocator's to reuse when it grows after each.
    for round in 1..=3 {
        let sockets: Vec<_> = (0..n).map(|a| server.ws(&format!("idle-{a}"))).collect();
        std::thread::sleep(Duration::from_secs(1));
        let with = server.rss_kib();
        drop(sockets);
        let gone = Instant::now();
        loop {
            let agents = server.call("GET", "/api/v1/agents", None);
            let connected = agents["agents"]
                .as_array()
                .map(|a| a.iter().filter(|a| a["connected"] == true).count())
                .unwrap_or(usize::MAX);
            if connected <= 1 || gone.elapsed() > Duration::from_secs(30) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(1));
        let after = server.rss_kib();
        let threads = proc_field(server.process.pid(), "status", "Threads:");
        println!(
            "round {round}, {n} idle agents: RSS {before} KiB before, {with} KiB with them \
             ({:.1} KiB per agent), {after} KiB after they left ({:.1} KiB per agent not \
             returned, {threads} threads)",
            (with.saturating_sub(before)) as f64 / n as f64,
            (after.saturating_sub(before)) as f64 / n as f64,
        );
    }
    drop(warm);
    server.process.kill();
}

fn latency(seconds: u64) {
    const AGENTS: usize = 100;
    const RATE: u64 = 2_000;
    let nonstop = nonstop();
    let server = Server::start(&nonstop);
    let base = Instant::now();
    let stream_url = format!("{}/api/v1/responses/stream", server.process.url);
    let admin = server.admin.clone();
    let expected = AGENTS as u64 * (RATE / AGENTS as u64) * seconds;
    let received = Arc::new(Mutex::new(Vec::<u64>::new()));
    let got = received.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let http = Server::http();
        let r = http
            .get(&stream_url)
            .header("Authorization", &format!("Bearer {admin}"))
            .config()
            .timeout_global(Some(Duration::from_secs(seconds + 30)))
            .build()
            .call()
            .expect("stream");
        let _ = ready_tx.send(());
        let mut lines = BufReader::new(r.into_body().into_reader());
        let mut line = String::new();
        let mut n = 0;
        while n < expected {
            line.clear();
            if lines.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let now = base.elapsed().as_micros() as u64;
            let v: Value = serde_json::from_str(data.trim()).expect("event json");
            let sent: u64 = v["message"]
                .as_str()
                .and_then(|m| m.strip_prefix("t="))
                .and_then(|m| m.parse().ok())
                .expect("send time");
            got.lock().expect("lock").push(now.saturating_sub(sent));
            n += 1;
        }
    });
    let _ = ready_rx.recv();
    let sockets: Vec<_> = (0..AGENTS)
        .map(|a| server.ws(&format!("lat-{a}")))
        .collect();
    let start = Instant::now() + Duration::from_millis(200);
    let per_agent = RATE / AGENTS as u64 * seconds;
    let interval = Duration::from_micros(1_000_000 * AGENTS as u64 / RATE);
    let threads: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(a, mut ws)| {
            let rule = server.rule.clone();
            // Spread the agents over one interval.
            let first = start + interval * a as u32 / AGENTS as u32;
            std::thread::spawn(move || {
                let id = format!("lat-{a}");
                for i in 0..per_agent {
                    let at = first + interval * i as u32;
                    if let Some(wait) = at.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let t = base.elapsed().as_micros();
                    let msg = json!({"type": "responses", "dropped": 0,
                        "responses": [response(&rule, &id, format!("t={t}"))]});
                    ws.send(Message::text(msg.to_string())).expect("send");
                }
                ws
            })
        })
        .collect();
    let sockets: Vec<_> = threads
        .into_iter()
        .map(|t| t.join().expect("agent"))
        .collect();
    let sent_for = start.elapsed();
    let _ = reader.join();
    drop(sockets);
    let mut lat = received.lock().expect("lock").clone();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{AGENTS} agents, {RATE} responses/s for {seconds} s ({:.0}/s achieved): {} of {expected} \
         streamed; send -> stream p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        expected as f64 / sent_for.as_secs_f64(),
        lat.len(),
        pct(0.50) as f64 / 1000.0,
        pct(0.99) as f64 / 1000.0,
        lat.last().copied().unwrap_or(0) as f64 / 1000.0,
    );
    server.process.kill();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("throughput") | None => throughput(args.get(1..).unwrap_or_default()),
        Some("memory") => memory(args.get(1).and_then(|n| n.parse().ok()).unwrap_or(2_000)),
        Some("latency") => latency(args.get(1).and_then(|n| n.parse().ok()).unwrap_or(10)),
        Some("floor") => floor(args.get(1).and_then(|n| n.parse().ok()).unwrap_or(3_000)),
        Some(other) => {
            eprintln!(
                "ingest_bench: unknown mode {other}: throughput [ROW…], floor [N], memory [N], latency [SECONDS]"
            );
            std::process::exit(2);
        }
    }
}
