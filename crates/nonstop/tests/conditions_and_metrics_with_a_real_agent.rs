//! End to end for metric and conditional rules: the real server (`nonstop serve`), the ticker fixture under
//! the real agent (`nonstop run`), rules added with the CLI, and `GET /metrics` read as
//! Prometheus reads it, all as processes talking over loopback.
//!
//! An online agent arms rules a moment after the program starts, so the first ticks may
//! pass unprobed. To know exactly which iterations a rule sees, the rules' conditions take a
//! window of ticks that begins well after the current tick; the test checks that the rules
//! were armed before the window opened, and the window closes well before the program ends,
//! so the agent has reported its final counts while still running.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NONSTOP: &str = env!("CARGO_BIN_EXE_nonstop");

/// Ticks the program runs (20 ms each).
const TICKS: u64 = 600;
/// Ticks between the tick seen when the rules are added and the window's start.
const LEAD: u64 = 150;
/// Ticks in the window.
const WINDOW: u64 = 150;
/// Ticks after the window until the program ends, at least.
const TAIL: u64 = 100;

fn tmp(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("metric-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The ticker fixture with debug info, and the agent library built beside `nonstop`.
fn ticker() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let profile_dir = Path::new(NONSTOP).parent().unwrap();
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
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ticker-metrics");
            let ok = Command::new("rustc")
                .args(["--edition", "2021", "-C", "debuginfo=2", "-o"])
                .arg(&out)
                .arg(&src)
                .status()
                .unwrap();
            assert!(ok.success(), "building the ticker failed");
            out
        })
        .clone()
}

/// The line marked `// @mark tick` in the fixture, where `n`, `label` and `square` live.
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

/// A `nonstop serve` process with its own data folder, killed on drop.
struct Server {
    child: Child,
    url: String,
    data: PathBuf,
}

impl Server {
    fn start(data: &Path) -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(NONSTOP)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
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

    fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "nonstop {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Adds a rule on the marked line; returns its id.
    fn add_rule(&self, args: &[&str]) -> String {
        let at = format!("ticker.rs:{}", mark_line());
        let mut all = vec!["rules", "add", at.as_str(), "--service", "ticker"];
        all.extend_from_slice(args);
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "rules add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// `GET path` with the admin token: the content type and the body.
    fn get(&self, path: &str) -> (String, String) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut resp = agent
            .get(format!("{}{path}", self.url))
            .header("Authorization", format!("Bearer {}", self.token("admin")))
            .call()
            .unwrap();
        let kind = resp
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        (kind, resp.body_mut().read_to_string().unwrap())
    }

    /// `GET /metrics` with the admin token, as a Prometheus scrape sends it.
    fn scrape(&self) -> String {
        let (kind, text) = self.get("/metrics");
        assert_eq!(kind, "text/plain; version=0.0.4; charset=utf-8");
        text
    }

    /// A rule's stored responses, oldest first.
    fn responses(&self, rule: &str) -> serde_json::Value {
        let (_, body) = self.get(&format!("/api/v1/responses?rule={rule}&limit=1000"));
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ticker under `nonstop run`, its stdout collected as it goes.
struct Program {
    child: Child,
    out: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Program {
    fn start(server: &Server, ticks: u64) -> Program {
        let mut child = Command::new(NONSTOP)
            .args([
                "run",
                "--server",
                &server.url,
                "--token",
                &server.token("agent"),
            ])
            .args(["--service", "ticker", "--"])
            .arg(ticker())
            .args([ticks.to_string(), "m".to_string()])
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

    /// The last tick the program printed (each line starts with its `n`).
    fn current_tick(&self) -> Option<u64> {
        let out = self.out.lock().unwrap();
        out.lines().last()?.split(' ').next()?.parse().ok()
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

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_agent(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let agents = server.cli_json(&["agents", "--json"]);
        if agents
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["connected"] == true))
        {
            return;
        }
        assert!(Instant::now() < deadline, "the agent did not connect");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the rule is armed on the agent; fails with its status if it is not.
fn wait_until_armed(server: &Server, rule: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let view = server.cli_json(&["rules", "show", rule, "--json"]);
        match view["agents"][0]["status"].as_str() {
            Some("armed") => return,
            Some("error") => panic!("rule {rule} failed on the agent: {:#}", view["agents"]),
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "rule {rule} was not armed in 20 s: {:#}",
            view["agents"]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of the sample `name` in Prometheus text, if exported.
fn sample(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ').map(str::to_owned))
}

#[test]
fn a_count_and_a_histogram_at_metrics_equal_the_matching_iterations_exactly() {
    let data = tmp("count");
    let server = Server::start(&data);
    let program = Program::start(&server, TICKS);
    wait_for_agent(&server);
    let now = loop {
        if let Some(n) = program.current_tick() {
            break n;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let start = now + LEAD;
    let end = start + WINDOW;
    assert!(
        end + TAIL <= TICKS,
        "the program got too far ({now}) before the test began"
    );
    let window = format!("n >= {start} && n < {end}");

    let ticks = server.add_rule(&[
        "--metric",
        "ticks",
        "--when",
        &format!("n % 3 == 0 && {window}"),
    ]);
    let squares = server.add_rule(&[
        "--metric",
        "sq=square",
        "--kind",
        "histogram",
        "--when",
        &window,
    ]);
    wait_until_armed(&server, &ticks);
    wait_until_armed(&server, &squares);
    let armed_at = program.current_tick().unwrap();
    assert!(
        armed_at < start,
        "the rules were armed at tick {armed_at}, after the window opened at {start}"
    );

    let (ok, out) = program.finish();
    assert!(ok, "the program failed under the agent");
    let expected: String = (0..TICKS)
        .map(|n| format!("{n} m-{n} {}\n", n * n))
        .collect();
    assert_eq!(
        out, expected,
        "the program's output changed under the agent"
    );

    let matching = (start..end).filter(|n| n % 3 == 0).count();
    let sum_of_squares: u64 = (start..end).map(|n| n * n).sum();
    let text = server.scrape();
    assert_eq!(
        sample(&text, "ticks_total{service=\"ticker\"}"),
        Some(matching.to_string()),
        "{text}"
    );
    assert_eq!(
        sample(&text, "sq_count{service=\"ticker\"}"),
        Some(WINDOW.to_string()),
        "{text}"
    );
    assert_eq!(
        sample(&text, "sq_sum{service=\"ticker\"}"),
        Some(sum_of_squares.to_string()),
        "{text}"
    );
    assert_eq!(
        sample(&text, "sq_bucket{service=\"ticker\",le=\"+Inf\"}"),
        Some(WINDOW.to_string()),
        "{text}"
    );
    // The rule's hits, as `rules show` gives them, are the metric's count.
    let view = server.cli_json(&["rules", "show", &ticks, "--json"]);
    assert_eq!(view["hits"], matching as u64);
    let listed = server.cli_json(&["rules", "list", "--json"]);
    let hits = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"]["id"] == squares.as_str())
        .map(|r| r["hits"].clone());
    assert_eq!(hits, Some(serde_json::json!(WINDOW)));
}

/// The `n` of each response, in order, and the message of each.
fn ticks_of(responses: &serde_json::Value) -> Vec<(u64, Option<String>)> {
    responses
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let n = r["locals"]["n"]["value"].as_u64();
            let message = r["message"].as_str().map(str::to_owned);
            // A log response carries no locals: its tick is the word after "tick".
            let n = n.or_else(|| {
                let word = message.as_deref()?.split(' ').nth(1)?;
                word.trim_end_matches(':').parse().ok()
            });
            (n.unwrap(), message)
        })
        .collect()
}

#[test]
fn a_conditional_snapshot_and_log_fire_exactly_for_the_matching_iterations() {
    let data = tmp("conditional");
    let server = Server::start(&data);
    let program = Program::start(&server, TICKS);
    wait_for_agent(&server);
    let now = loop {
        if let Some(n) = program.current_tick() {
            break n;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let start = now + LEAD;
    let end = start + WINDOW;
    assert!(end + TAIL <= TICKS, "the program got too far ({now})");
    let window = format!("n >= {start} && n < {end}");
    let snapshot = server.add_rule(&[
        "--snapshot",
        "--max-hits",
        "1000",
        "--rate",
        "1000/s",
        "--when",
        &format!("n % 7 == 2 && t.label.ends_with(\"5\") == false && {window}"),
    ]);
    let log = server.add_rule(&[
        "--log",
        "tick {n}: {t.label:?} squared is {square}",
        "--when",
        &format!("square % 2 == 1 && {window}"),
    ]);
    wait_until_armed(&server, &snapshot);
    wait_until_armed(&server, &log);
    let armed_at = program.current_tick().unwrap();
    assert!(armed_at < start, "armed at tick {armed_at}, after {start}");
    let (ok, out) = program.finish();
    assert!(ok, "the program failed under the agent");
    let expected: String = (0..TICKS)
        .map(|n| format!("{n} m-{n} {}\n", n * n))
        .collect();
    assert_eq!(
        out, expected,
        "the program's output changed under the agent"
    );

    let snapshots = ticks_of(&server.responses(&snapshot));
    let want: Vec<u64> = (start..end)
        .filter(|n| n % 7 == 2 && !format!("m-{n}").ends_with('5'))
        .collect();
    assert_eq!(snapshots.iter().map(|(n, _)| *n).collect::<Vec<_>>(), want);
    let logs = ticks_of(&server.responses(&log));
    let want: Vec<(u64, Option<String>)> = (start..end)
        .filter(|n| (n * n) % 2 == 1)
        .map(|n| (n, Some(format!("tick {n}: \"m-{n}\" squared is {}", n * n))))
        .collect();
    assert_eq!(logs, want);
}
