//! Shared helpers of the end-to-end tests that run the ticker fixture under the real
//! agent: a `nonstop serve` process, the ticker under `nonstop run`, and the CLI.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const NONSTOP: &str = env!("CARGO_BIN_EXE_nonstop");

/// A fresh folder for one test, named after the test binary so binaries running at the
/// same time do not share it.
pub fn tmp(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{}-{name}-{}",
        env!("CARGO_CRATE_NAME"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn ticker_source() -> PathBuf {
    nonstop_testkit::fixture::source(env!("CARGO_MANIFEST_DIR"), "ticker.rs")
}

/// The ticker fixture, built with debug info (cached by content by the testkit), with the
/// agent library brought up to date beside `nonstop`.
pub fn ticker() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            nonstop_testkit::agent_library();
            nonstop_testkit::fixture::build(&ticker_source(), &["-C", "debuginfo=2"]).binary
        })
        .clone()
}

/// The line of the ticker's `// @mark tick` comment.
pub fn mark_line() -> u32 {
    nonstop_testkit::fixture::marks(&ticker_source())["tick"]
}

pub use nonstop_testkit::free_port;

/// What the ticker prints when it runs `ticks` ticks named `name`.
pub fn expected_output(ticks: u64, name: &str) -> String {
    (0..ticks)
        .map(|n| format!("{n} {name}-{n} {}\n", n * n))
        .collect()
}

/// A `nonstop serve` process on a fixed port with its data folder.
pub struct Server {
    process: nonstop_testkit::ServerProcess,
    pub url: String,
}

impl Server {
    pub fn start(port: u16, data: &Path) -> Server {
        Server::start_with(port, data, &[])
    }

    /// [`Server::start`] with more `nonstop serve` arguments (e.g. `--store URL`).
    pub fn start_with(port: u16, data: &Path, extra: &[&str]) -> Server {
        let process = nonstop_testkit::ServerProcess::start(Path::new(NONSTOP), port, data, extra);
        Server {
            url: process.url.clone(),
            process,
        }
    }

    pub fn token(&self, which: &str) -> String {
        self.process.token(which)
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.process.port
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(NONSTOP)
            .args(args)
            .args(["--server", &self.url, "--token", &self.token("admin")])
            .output()
            .unwrap()
    }

    /// The CLI's stdout; fails the test with its stderr when it fails.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "nonstop {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.cli_ok(args)).unwrap()
    }

    /// Adds a rule on the ticker's marked line; returns its id.
    pub fn add_rule(&self, args: &[&str]) -> String {
        let at = format!("ticker.rs:{}", mark_line());
        let mut all = vec!["rules", "add", at.as_str()];
        all.extend_from_slice(args);
        self.cli_ok(&all).trim().to_owned()
    }

    /// `GET path` with the admin token: the content type and the body (a status other
    /// than 2xx fails the test).
    pub fn get(&self, path: &str) -> (String, String) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut resp = agent
            .get(format!("{}{path}", self.url))
            .header("Authorization", format!("Bearer {}", self.token("admin")))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let kind = resp
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        (kind, resp.body_mut().read_to_string().unwrap())
    }

    /// `GET path` as JSON.
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let (_, body) = self.get(path);
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    pub fn kill(self) {
        self.process.kill();
    }
}

/// The ticker under `nonstop run` (service `ticker`), its stdout and stderr collected as it goes.
pub struct Program {
    child: Child,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// Collects the lines of `from` into `into` on a thread.
fn collect_lines(
    from: impl std::io::Read + Send + 'static,
    into: &Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    let sink = into.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    })
}

impl Program {
    pub fn start(server: &Server, ticks: u64, name: &str) -> Program {
        Program::start_with(server, &server.url, ticks, name, &[])
    }

    /// [`Program::start`] with the agent pointed at `url` (the server, or a proxy in front of
    /// it) and extra environment variables (e.g. `NONSTOP_LINK=http`).
    pub fn start_with(
        server: &Server,
        url: &str,
        ticks: u64,
        name: &str,
        env: &[(&str, &str)],
    ) -> Program {
        let mut child = Command::new(NONSTOP)
            .args([
                "run",
                "--server",
                url,
                "--token",
                &server.token("agent"),
                "--service",
                "ticker",
                "--",
            ])
            .arg(ticker())
            .args([ticks.to_string(), name.to_string()])
            // The agent library the testkit built aside (not always beside `nonstop`).
            .env("NONSTOP_AGENT_LIB", nonstop_testkit::agent_library())
            // These tests count every hit, so the budget must not sample. Under test the agent
            // is a debug build: in the HTTP link test its snapshot hits averaged 212 µs
            // (slowest 3.5 ms) on this 2-core VM, about 1 % of a core at 50 ticks a second
            // with three rules, and the default budget (1 %) then rightly takes the site out
            // for 100 ms windows. The budget's own tests are in nonstop-agent and
            // nonstop-probe; a test may set its own `NONSTOP_BUDGET` in `env`.
            .env("NONSTOP_BUDGET", "100")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Arc::new(Mutex::new(String::new()));
        let err = Arc::new(Mutex::new(String::new()));
        let reader = collect_lines(child.stdout.take().unwrap(), &out);
        collect_lines(child.stderr.take().unwrap(), &err);
        Program {
            child,
            out,
            err,
            reader: Some(reader),
        }
    }

    /// What the program (and its agent) printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last tick the program printed (each line starts with its `n`).
    pub fn current_tick(&self) -> Option<u64> {
        let out = self.out.lock().unwrap();
        out.lines().last()?.split(' ').next()?.parse().ok()
    }

    /// Waits for the program to end: whether it succeeded, and all it printed.
    pub fn finish(mut self) -> (bool, String) {
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

/// Waits until `n` agents are connected; returns `agents --json`.
pub fn wait_for_agents(server: &Server, n: usize) -> serde_json::Value {
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

/// Waits until the rule is armed on the agent; fails with its status if it is not.
pub fn wait_until_armed(server: &Server, rule: &str) {
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

/// The 16 bytes at file address `addr` as the ELF file has them (through `readelf -lW`).
pub fn file_bytes(addr: u64) -> Vec<u8> {
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
pub fn live_bytes(pid: u32, addr: u64) -> Vec<u8> {
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

/// The file address of `line` in the ticker, from `nonstop where --json` (its first site).
pub fn line_address(line: u32) -> u64 {
    let out = Command::new(NONSTOP)
        .arg("where")
        .arg(ticker())
        .arg(format!("ticker.rs:{line}"))
        .arg("--json")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = v["sites"][0]["address"].as_str().unwrap();
    u64::from_str_radix(text.trim_start_matches("0x"), 16).unwrap()
}

/// `nonstop tail --rule RULE --json --count COUNT --timeout TIMEOUT` against `server`:
/// whether it ended well, and the responses it printed.
pub fn tail(
    server: &Server,
    rule: &str,
    count: usize,
    timeout: &str,
) -> (bool, Vec<nonstop_model::Response>) {
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
