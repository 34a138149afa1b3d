//! End to end without a server: `nonstop run` preloads the real agent into the demo shop, the agent
//! arms a log rule from a rules file (offline mode), and a checkout over HTTP produces exact messages.
//!
//! Needs the `shop` binary beside `nonstop` (`cargo test --workspace` builds it; alone:
//! `cargo build -p shop`) and the agent's cdylib, which cargo builds into `deps/` because
//! `nonstop-agent` is a dev-dependency.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent_library(bin_dir: &Path) -> PathBuf {
    [
        bin_dir.join("libnonstop_agent.so"),
        bin_dir.join("deps/libnonstop_agent.so"),
    ]
    .into_iter()
    .find(|path| path.is_file())
    .unwrap_or_else(|| panic!("no libnonstop_agent.so in {}", bin_dir.display()))
}

fn post(addr: &str, target: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to the shop");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "POST {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
}

/// The line of `applied.push(` in the shop's `apply_discounts`.
fn push_line() -> usize {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/shop/src/pricing.rs");
    let source = std::fs::read_to_string(path).expect("read the shop's pricing.rs");
    source
        .lines()
        .position(|l| l.contains("applied.push(AppliedDiscount {"))
        .expect("applied.push in pricing.rs")
        + 1
}

#[test]
fn a_log_rule_in_the_shops_discount_loop_reports_each_discount() {
    let nonstop = PathBuf::from(env!("CARGO_BIN_EXE_nonstop"));
    let bin_dir = nonstop.parent().expect("bin folder").to_path_buf();
    let shop = bin_dir.join("shop");
    assert!(
        shop.is_file(),
        "{} is missing: build it first with `cargo build -p shop` (cargo test --workspace does)",
        shop.display()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let rules = dir.path().join("rules.json");
    let out = dir.path().join("responses.jsonl");
    let line = push_line();
    std::fs::write(
        &rules,
        format!(
            r#"[{{"id": "discounts", "at": "examples/shop/src/pricing.rs:{line}", "action": "log",
                 "template": "{{reason}}: {{cents}} cents off"}}]"#
        ),
    )
    .expect("rules file");

    let mut child = Command::new(&nonstop)
        .args(["run", "--"])
        .arg(&shop)
        .args(["--listen", "127.0.0.1:0"])
        .env("NONSTOP_AGENT_LIB", agent_library(&bin_dir))
        .env("NONSTOP_RULES", &rules)
        .env("NONSTOP_OUT", &out)
        .env_remove("NONSTOP_SERVER")
        .env_remove("LD_PRELOAD")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nonstop run");
    let stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let shop_process = Killed(child);
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("the shop's first line");
    let addr = first
        .trim()
        .strip_prefix("shop: listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_string();

    // Rules in the file at start are armed before main runs, so the first checkout is caught.
    post(&addr, "/cart/alice/add?sku=BOOK-RUST&qty=2");
    let order = post(&addr, "/cart/alice/checkout?coupon=SAVE10&country=DE");
    assert!(order.starts_with("HTTP/1.1 201"), "{order}");

    let start = Instant::now();
    let responses: Vec<serde_json::Value> = loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let parsed: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if parsed.len() >= 2 {
            break parsed;
        }
        if start.elapsed() > Duration::from_secs(20) {
            drop(shop_process);
            let mut err = String::new();
            let _ = stderr.read_to_string(&mut err);
            panic!("fewer than 2 responses after 20 s: {parsed:#?}\nstderr: {err}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let messages: Vec<&str> = responses
        .iter()
        .filter_map(|r| r["message"].as_str())
        .collect();
    assert_eq!(
        messages,
        ["coupon SAVE10: 799 cents off", "tier gold: 359 cents off"]
    );
    for response in &responses {
        assert_eq!(response["rule"], "discounts");
        assert_eq!(response["service"], "shop");
        assert_eq!(
            response["location"]["function"],
            "shop::pricing::apply_discounts"
        );
        assert_eq!(response["location"]["line"], line);
    }
}
