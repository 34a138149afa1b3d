//! `nonstop demo` starts the server and the shop under the agent, sends the shop traffic, prints
//! where everything is, and stops all of it on Ctrl-C.
//!
//! Needs the `shop` binary beside `nonstop` (`cargo test --workspace` builds it; alone:
//! `cargo build -p shop`). The agent library is an empty stand-in: this test checks what the demo
//! starts and how, not the agent (the loader ignores the file, and the shop runs as usual).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `nonstop demo`, stopped when dropped: Ctrl-C first, so it stops its shop too (a SIGKILL would
/// leave the shop running), then SIGKILL if it has not stopped within 10 s.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        // Already reaped: its pid may belong to another process by now.
        if !matches!(self.0.try_wait(), Ok(None)) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if !matches!(self.0.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One request; the status and body.
fn get(addr: &str, target: &str, token: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The line of the shop's pricing.rs that the demo suggests: `applied.push(` in `apply_discounts`.
fn suggested_line() -> usize {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/shop/src/pricing.rs");
    let source = std::fs::read_to_string(path).expect("read the shop's pricing.rs");
    source
        .lines()
        .position(|l| l.contains("applied.push(AppliedDiscount {"))
        .expect("applied.push in pricing.rs")
        + 1
}

/// The pids of `pid`'s children.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn environ(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

#[test]
fn the_demo_serves_instruments_the_shop_sends_traffic_and_stops_on_ctrl_c() {
    let nonstop = PathBuf::from(env!("CARGO_BIN_EXE_nonstop"));
    let shop = nonstop.with_file_name("shop");
    assert!(
        shop.is_file(),
        "{} is missing: build it first with `cargo build -p shop` (cargo test --workspace does)",
        shop.display()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let agent = dir.path().join("libnonstop_agent.so");
    std::fs::write(&agent, b"").expect("fake agent library");
    let data = dir.path().join("data");

    let mut child = Command::new(&nonstop)
        .args(["demo", "--listen", "127.0.0.1:0", "--rate", "40", "--data"])
        .arg(&data)
        .env("NONSTOP_AGENT_LIB", &agent)
        .env_remove("LD_PRELOAD")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nonstop demo");
    let stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let demo = Demo(child);
    let pid = demo.0.id();

    // Read what the demo prints up to its last suggestion.
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    while !printed
        .iter()
        .any(|l: &String| l.trim().ends_with("nonstop agents"))
    {
        match lines_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => printed.push(line),
            Err(_) => panic!("the demo printed no welcome; stdout so far: {printed:#?}"),
        }
    }
    let find = |prefix: &str| {
        printed
            .iter()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(prefix)
                    .map(str::trim)
                    .map(String::from)
            })
            .unwrap_or_else(|| panic!("no line starting with {prefix:?} in {printed:#?}"))
    };
    let ui = find("web UI and API");
    let shop_url = find("demo shop");
    let server = find("export NONSTOP_SERVER=");
    let admin = find("export NONSTOP_TOKEN=");

    let admin_token = std::fs::read_to_string(data.join("admin.token")).expect("admin.token");
    let agent_token = std::fs::read_to_string(data.join("agent.token")).expect("agent.token");
    assert_eq!(admin, admin_token.trim());
    assert_eq!(ui, format!("{server}/?token={admin}"));
    let line = suggested_line();
    assert!(
        printed.iter().any(|l| l.trim()
            == format!(
                "{} rules add examples/shop/src/pricing.rs:{line} --service shop --snapshot",
                nonstop.display()
            )),
        "{printed:#?}"
    );
    assert!(
        printed
            .iter()
            .any(|l| l.trim() == format!("{} tail", nonstop.display()))
    );

    // The server answers with the admin token.
    let server_addr = server.trim_start_matches("http://").to_string();
    let (status, _) = get(&server_addr, "/api/v1/rules", Some(&admin)).expect("server");
    assert_eq!(status, 200);

    // The shop runs under the agent, as `nonstop run --service shop` would run it.
    let shop_addr = shop_url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .expect("shop address")
        .to_string();
    let shops = children(pid);
    assert_eq!(shops.len(), 1, "children of the demo: {shops:?}");
    let env = environ(shops[0]);
    for expected in [
        format!("LD_PRELOAD={}", agent.display()),
        "NONSTOP_SERVICE=shop".to_string(),
        format!("NONSTOP_SERVER={server}"),
        format!("NONSTOP_TOKEN={}", agent_token.trim()),
    ] {
        assert!(env.contains(&expected), "{expected} not in {env:#?}");
    }

    // Traffic flows: orders get placed.
    wait_until("a first order", Duration::from_secs(30), || {
        matches!(get(&shop_addr, "/orders/1", None), Ok((200, _)))
    });

    // Ctrl-C stops the demo, the shop and the server.
    let status = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill -INT");
    assert!(status.success());
    let mut demo = demo;
    let start = Instant::now();
    let exit = loop {
        if let Some(exit) = demo.0.try_wait().expect("wait") {
            break exit;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the demo did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    let _ = stderr.read_to_string(&mut err);
    assert_eq!(exit.code(), Some(0), "stderr: {err}");
    assert!(
        err.contains("nonstop demo: stopped; sent "),
        "stderr: {err}"
    );
    assert!(
        TcpStream::connect(&shop_addr).is_err(),
        "the shop still listens"
    );
    assert!(
        TcpStream::connect(&server_addr).is_err(),
        "the server still listens"
    );
    assert!(!Path::new(&format!("/proc/{}", shops[0])).exists() || environ(shops[0]).is_empty());
}
