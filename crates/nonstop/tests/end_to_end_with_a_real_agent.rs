//! End to end: the real server (`nonstop serve`), real programs under the real agent
//! (`nonstop run`), and the CLI (`rules add|rm`, `tail --json`, `agents --json`), all as
//! processes talking over loopback.

use nonstop_model::Response;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NONSTOP: &str = env!("CARGO_BIN_EXE_nonstop");

fn tmp(name: &str) -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The ticker fixture, built with debug info, and the agent library beside `nonstop`.
fn ticker() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = Path::new(NONSTOP);
            let profile_dir = exe.parent().unwrap();
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args([
                "build",
                "--quiet",
                "-p",
                "nonstop-agent",
                "--lib",
                "--target-dir",
            ])
            .arg(profile_dir.parent().unwrap());
            if profile_dir.ends_with("release") {
                cmd.arg("--release");
            }
            assert!(cmd.status().unwrap().success(), "building the agent failed");
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ticker.rs");
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ticker");
            let ok = Command::new("rustc")
                .args(["--edition", "2021", "-C", "debuginfo=2", "-o"])
                .arg(&out)
                .arg(&src)
                .status()
                .unwrap();
            assert!(ok.success());
            out
        })
        .clone()
}

fn mark_line() -> u32 {
    let src = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ticker.rs"),
    )
    .unwrap();
    src.lines()
        .position(|l| l.contains("// @mark tick"))
        .unwrap() as u32
        + 1
}

/// A `nonstop serve` process on a fixed port with its data folder.
struct Server {
    child: Child,
    url: String,
    data: PathBuf,
}

impl Server {
    fn start(port: u16, data: &Path) -> Server {
        let child = Command::new(NONSTOP)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Server {
            child,
            url,
            data: data.to_path_buf(),
        }
    }

    fn token(&self, which: &str) -> String {
        std::fs::read_to_string(self.data.join(format!("{which}.token")))
            .unwrap()
            .trim()
            .to_owned()
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(NONSTOP)
            .args(args)
            .args(["--server", &self.url, "--token", &self.token("admin")])
            .output()
            .unwrap()
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A program under `nonstop run`, its stdout collected as it goes.
struct Program {
    child: Child,
    out: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Program {
    fn start(server: &Server, ticks: u64, name: &str) -> Program {
        let mut child = Command::new(NONSTOP)
            .args([
                "run",
                "--server",
                &server.url,
                "--token",
                &server.token("agent"),
                "--service",
                "ticker",
                "--",
            ])
            .arg(ticker())
            .args([ticks.to_string(), name.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = out.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Program {
            child,
            out,
            reader: Some(reader),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn finish(mut self) -> (bool, String) {
        let ok = self.child.wait().unwrap().success();
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        let out = self.out.lock().unwrap().clone();
        (ok, out)
    }
}

fn expected_output(ticks: u64, name: &str) -> String {
    (0..ticks)
        .map(|n| format!("{n} {name}-{n} {}\n", n * n))
        .collect()
}

fn wait_for_agents(server: &Server, n: usize) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = server.cli(&["agents", "--json"]);
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            let connected = v
                .as_array()
                .map(|a| a.iter().filter(|x| x["connected"] == true).count())
                .unwrap_or(0);
            if connected >= n {
                return v;
            }
        }
        assert!(Instant::now() < deadline, "{n} agents did not connect");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn add_rule(server: &Server, args: &[&str]) -> String {
    let mut all = vec![
        "rules",
        "add",
        &*Box::leak(format!("ticker.rs:{}", mark_line()).into_boxed_str()),
    ];
    all.extend_from_slice(args);
    let out = server.cli(&all);
    assert!(
        out.status.success(),
        "rules add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn tail(server: &Server, rule: &str, count: usize, timeout: &str) -> (bool, Vec<Response>) {
    let out = server.cli(&[
        "tail",
        "--rule",
        rule,
        "--json",
        "--count",
        &count.to_string(),
        "--timeout",
        timeout,
    ]);
    let responses = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad response {l}: {e}")))
        .collect();
    (out.status.success(), responses)
}

/// The marked line's address in the ticker (a file address), from `nonstop where --json`.
fn mark_address() -> u64 {
    let out = Command::new(NONSTOP)
        .args(["where"])
        .arg(ticker())
        .arg(format!("ticker.rs:{}", mark_line()))
        .arg("--json")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = v["sites"][0]["address"].as_str().unwrap();
    u64::from_str_radix(text.trim_start_matches("0x"), 16).unwrap()
}

/// The 16 bytes at file address `addr` as the ELF file has them (through `readelf -lW`).
fn file_bytes(addr: u64) -> Vec<u8> {
    let out = Command::new("readelf")
        .arg("-lW")
        .arg(ticker())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    for line in text.lines().filter(|l| l.trim_start().starts_with("LOAD")) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (offset, vaddr, filesz) = (hex(f[1]), hex(f[2]), hex(f[4]));
        if (vaddr..vaddr + filesz).contains(&addr) {
            let data = std::fs::read(ticker()).unwrap();
            let at = (addr - vaddr + offset) as usize;
            return data[at..at + 16].to_vec();
        }
    }
    panic!("0x{addr:x} is in no LOAD segment of the ticker");
}

/// The 16 bytes at file address `addr` in the running program's memory.
fn live_bytes(pid: u32, addr: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let name = ticker().to_string_lossy().into_owned();
    let base = maps
        .lines()
        .find(|l| l.ends_with(&name) && l.split_whitespace().nth(2) == Some("00000000"))
        .map(|l| u64::from_str_radix(l.split('-').next().unwrap(), 16).unwrap())
        .expect("the ticker's first mapping");
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut buf = vec![0u8; 16];
    mem.read_exact_at(&mut buf, base + addr).unwrap();
    buf
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

    let snap = add_rule(
        &server,
        &[
            "--snapshot",
            "--service",
            "ticker",
            "--max-hits",
            "2",
            "--watch",
            "n * 2 + 1",
            "--watch",
            "t.label.starts_with(name)",
        ],
    );
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

    let log = add_rule(
        &server,
        &[
            "--log",
            "tick {n}: {label} squared is {square}",
            "--service",
            "ticker",
        ],
    );
    let (ok, got) = tail(&server, &log, 3, "30s");
    assert!(ok);
    for r in &got {
        let msg = r.message.as_deref().unwrap();
        let n: u64 = msg.split(&[' ', ':'][..]).nth(1).unwrap().parse().unwrap();
        assert_eq!(msg, format!("tick {n}: alpha-{n} squared is {}", n * n));
    }

    // Armed: the line's first byte is the trap.
    let addr = mark_address();
    let original = file_bytes(addr);
    assert_eq!(live_bytes(program.pid(), addr)[0], 0xcc);

    let rm = server.cli(&["rules", "rm", &log]);
    assert!(
        rm.status.success(),
        "{}",
        String::from_utf8_lossy(&rm.stderr)
    );
    std::thread::sleep(Duration::from_millis(500));
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
    let rule = add_rule(&server, &["--log", "{label}", "--service", "ticker"]);
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
    let rule = add_rule(&server, &["--log", "{n}", "--service", "ticker"]);
    let (ok, _) = tail(&server, &rule, 1, "30s");
    assert!(ok);

    server.kill();
    std::thread::sleep(Duration::from_millis(1500));
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

/// `GET path` on the server with the admin token, as JSON (a plain HTTP/1.1 request, so the
/// test needs no HTTP client crate).
fn api_get(server: &Server, path: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let addr = server.url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        server.token("admin")
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "GET {path}: {head}\n{body}"
    );
    serde_json::from_str(body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

fn stored_responses(server: &Server, rule: &str) -> Vec<Response> {
    serde_json::from_value(api_get(server, &format!("/api/v1/responses?rule={rule}"))).unwrap()
}

fn show(server: &Server, rule: &str) -> serde_json::Value {
    let out = server.cli(&["rules", "show", rule, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
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

fn cli_ok(server: &Server, args: &[&str]) -> String {
    let out = server.cli(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn max_hits_stops_at_exactly_n_across_two_agents() {
    let data = tmp("maxhits");
    let server = Server::start(free_port(), &data);
    let a = Program::start(&server, 150, "one");
    let b = Program::start(&server, 150, "two");
    wait_for_agents(&server, 2);
    let rule = add_rule(
        &server,
        &["--log", "{label}", "--service", "ticker", "--max-hits", "3"],
    );
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
    let program = Program::start(&server, 400, "delta");
    wait_for_agents(&server, 1);
    let rule = add_rule(
        &server,
        &["--log", "{n}", "--service", "ticker", "--expires", "2s"],
    );
    let (ok, _) = tail(&server, &rule, 1, "10s");
    assert!(ok, "no response before expiry");
    let addr = mark_address();
    assert_eq!(live_bytes(program.pid(), addr)[0], 0xcc);

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
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        stored_responses(&server, &rule).len(),
        before,
        "responses after expiry"
    );
    assert_eq!(live_bytes(program.pid(), addr), file_bytes(addr));
    assert_eq!(program.finish(), (true, expected_output(400, "delta")));
}

#[test]
fn a_disabled_rule_stops_keeps_its_history_and_resumes_when_enabled() {
    let data = tmp("disable");
    let server = Server::start(free_port(), &data);
    let program = Program::start(&server, 500, "eps");
    wait_for_agents(&server, 1);
    let rule = add_rule(&server, &["--log", "{n}", "--service", "ticker"]);
    let (ok, _) = tail(&server, &rule, 2, "10s");
    assert!(ok);
    let addr = mark_address();

    cli_ok(&server, &["rules", "disable", &rule]);
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
    std::thread::sleep(Duration::from_millis(600));
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
    let list = cli_ok(&server, &["rules", "list"]);
    assert!(list.contains("active, disabled"), "{list}");

    cli_ok(&server, &["rules", "enable", &rule]);
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
    assert_eq!(live_bytes(program.pid(), addr)[0], 0xcc);
    let v = show(&server, &rule);
    assert_eq!(v["enabled"], true);
    assert!(v["hits"].as_u64().unwrap() >= history.len() as u64 + 2);
    assert_eq!(program.finish(), (true, expected_output(500, "eps")));
}

#[test]
fn the_trace_template_logs_a_functions_arguments_at_its_entry() {
    let data = tmp("template");
    let server = Server::start(free_port(), &data);
    let listed = cli_ok(&server, &["rules", "templates"]);
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
    let rule = cli_ok(
        &server,
        &[
            "rules",
            "add",
            "ticker::tick",
            "--template",
            "trace",
            "--param",
            "args=n,name",
            "--service",
            "ticker",
        ],
    );
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
