//! `nonstop mcp` against the real server and the ticker under the real agent: driven by a
//! minimal JSON-RPC client written here, and by the official MCP Python SDK's stdio client
//! (installed by `.ci/run`).

mod ticker;

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};
use ticker::{NONSTOP, Program, Server, free_port, mark_line, ticker, tmp, wait_for_agents};

/// A JSON-RPC client of `nonstop mcp`: one JSON object a line each way.
struct Mcp {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    id: u64,
}

impl Mcp {
    fn start(server: &Server, extra: &[&str]) -> Mcp {
        let mut child = Command::new(NONSTOP)
            .arg("mcp")
            .args(extra)
            .args(["--server", &server.url, "--token", &server.token("admin")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Mcp {
            child,
            stdin,
            stdout,
            id: 0,
        }
    }

    fn send(&mut self, v: &Value) {
        writeln!(self.stdin, "{v}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        self.id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": self.id, "method": method, "params": params}));
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert_eq!(v["id"], self.id, "{v}");
        v
    }

    fn call(&mut self, tool: &str, args: Value) -> Value {
        let r = self.request("tools/call", json!({"name": tool, "arguments": args}));
        r["result"].clone()
    }

    fn initialize(&mut self) -> Value {
        let r = self.request(
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "test", "version": "1"}}),
        );
        self.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        r["result"].clone()
    }
}

impl Drop for Mcp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn at() -> String {
    format!("ticker.rs:{}", mark_line())
}

/// Checks a response the ticker's marked line produced: its values are the program's.
fn check_response(r: &Value) -> u64 {
    assert_eq!(r["location"]["function"], "ticker::tick", "{r:#}");
    let n = r["locals"]["n"]["value"].as_u64().unwrap();
    assert_eq!(r["locals"]["label"]["value"], format!("mcp-{n}"));
    assert_eq!(r["locals"]["square"]["value"], n * n);
    assert_eq!(r["locals"]["name"]["value"], "mcp");
    n
}

#[test]
fn the_tools_add_a_bounded_snapshot_read_it_and_remove_it() {
    let data = tmp("rust");
    let server = Server::start(free_port(), &data);
    let program = Program::start(&server, 3000, "mcp");
    wait_for_agents(&server, 1);
    let mut mcp = Mcp::start(&server, &[]);

    let init = mcp.initialize();
    assert_eq!(init["protocolVersion"], "2025-11-25");
    assert_eq!(init["serverInfo"]["name"], "nonstop");
    let tools = mcp.request("tools/list", json!({}));
    let mut names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(t["inputSchema"]["type"], "object", "{t}");
            t["name"].as_str().unwrap()
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "add_log",
            "add_metric",
            "add_snapshot",
            "get_metrics",
            "get_responses",
            "get_rule",
            "list_agents",
            "list_services",
            "remove_rule",
            "where"
        ]
    );

    let services = mcp.call("list_services", json!({}));
    assert_eq!(
        services["structuredContent"]["services"][0]["service"],
        "ticker"
    );
    assert_eq!(services["structuredContent"]["services"][0]["connected"], 1);

    // `where` on the program's binary: the marked line's function and variables.
    let binary = ticker().to_string_lossy().into_owned();
    let place = mcp.call("where", json!({"binary": binary, "location": at()}));
    assert_eq!(place["isError"], false, "{place:#}");
    let site = &place["structuredContent"]["sites"][0];
    assert_eq!(site["functions"][0], "ticker::tick");
    let vars: Vec<&str> = site["variables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for v in ["n", "name", "label", "square", "t"] {
        assert!(vars.contains(&v), "{v} not in {vars:?}");
    }

    // Too long an expiry is refused; without limits, the defaults bound the rule.
    let long = mcp.call(
        "add_snapshot",
        json!({"at": at(), "service": "ticker", "expires": "90d"}),
    );
    assert_eq!(long["isError"], true);
    assert_eq!(
        long["content"][0]["text"],
        "expires \"90d\": give a duration above 0 and at most 30d, e.g. 15m"
    );
    let added = mcp.call("add_snapshot", json!({"at": at(), "service": "ticker"}));
    assert_eq!(added["isError"], false, "{added:#}");
    let rule = added["structuredContent"]["rule"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(added["structuredContent"]["rule"]["max_hits"], 5);
    assert_eq!(added["structuredContent"]["rule"]["expires"], "15m");

    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        let got = mcp.call("get_responses", json!({"rule": rule, "limit": 3}));
        assert_eq!(got["isError"], false, "{got:#}");
        if got["structuredContent"]["responses"]
            .as_array()
            .unwrap()
            .len()
            >= 3
        {
            break got;
        }
        assert!(Instant::now() < deadline, "no responses: {got:#}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let responses = got["structuredContent"]["responses"].as_array().unwrap();
    assert_eq!(responses.len(), 3);
    let text = got["content"][0]["text"].as_str().unwrap();
    for r in responses {
        let n = check_response(r);
        let line = text
            .lines()
            .find(|l| l.contains(&format!(" n={n} ")))
            .unwrap_or_else(|| panic!("no line for n={n}: {text}"));
        assert!(line.contains(" in ticker::tick"), "{line}");
        for part in [
            format!(" label=\"mcp-{n}\""),
            format!(" square={}", n * n),
            " name=\"mcp\"".to_string(),
            format!(
                " t=Tick {{ n: {n}, label: \"mcp-{n}\", square: {} }}",
                n * n
            ),
        ] {
            assert!(line.contains(&part), "{part} not in {line}");
        }
    }

    let status = mcp.call("get_rule", json!({"rule": rule}));
    let on_agent = &status["structuredContent"]["agents"][0]["status"];
    assert!(
        ["armed", "rate-limited"].contains(&on_agent.as_str().unwrap_or("")),
        "{status:#}"
    );
    let removed = mcp.call("remove_rule", json!({"rule": rule}));
    assert_eq!(removed["structuredContent"], json!({"removed": rule}));
    assert_eq!(server.get_json("/api/v1/rules"), json!([]));

    let unknown = mcp.request("tools/call", json!({"name": "rm_rf", "arguments": {}}));
    assert_eq!(unknown["error"]["code"], -32602);
    let resources = mcp.request("resources/read", json!({"uri": "nonstop://agents"}));
    let agents: Value =
        serde_json::from_str(resources["result"]["contents"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(agents[0]["service"], "ticker");

    let mut ro = Mcp::start(&server, &["--read-only"]);
    ro.initialize();
    for tool in ["add_snapshot", "add_log", "add_metric", "remove_rule"] {
        let r = ro.call(
            tool,
            json!({"at": at(), "service": "ticker", "template": "{n}", "name": "x", "rule": "r"}),
        );
        assert_eq!(r["isError"], true, "{r}");
        assert_eq!(
            r["content"][0]["text"],
            format!(
                "{tool} is refused: this nonstop mcp runs with --read-only, so it may look but not add or remove rules; ask the user to start it without --read-only"
            )
        );
    }
    assert_eq!(server.get_json("/api/v1/rules"), json!([]));
    drop(program);
}

/// The Python interpreter with the `mcp` SDK: `NONSTOP_MCP_PYTHON`, the venv `.ci/run`
/// makes, or `python3`.
fn python_with_mcp() -> String {
    let venv = format!(
        "{}/.cache/nonstop-mcp-venv/bin/python",
        std::env::var("HOME").unwrap_or_default()
    );
    let candidates = [
        std::env::var("NONSTOP_MCP_PYTHON").ok(),
        Some(venv),
        Some("python3".into()),
    ];
    for p in candidates.into_iter().flatten() {
        let ok = Command::new(&p)
            .args(["-c", "import mcp.client.stdio"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return p;
        }
    }
    panic!(
        "the Python `mcp` SDK is missing: run `python3 -m venv ~/.cache/nonstop-mcp-venv && ~/.cache/nonstop-mcp-venv/bin/pip install mcp` (as .ci/run does)"
    );
}

#[test]
fn the_official_python_sdk_adds_a_snapshot_reads_it_and_is_refused_in_read_only_mode() {
    let python = python_with_mcp();
    let data = tmp("python");
    let server = Server::start(free_port(), &data);
    let program = Program::start(&server, 3000, "mcp");
    wait_for_agents(&server, 1);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mcp_client.py");
    let out = Command::new(python)
        .arg(script)
        .args([NONSTOP, &server.url, &server.token("admin"), &at()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["server"], "nonstop");
    assert_eq!(
        seen["tools"],
        json!([
            "add_log",
            "add_metric",
            "add_snapshot",
            "get_metrics",
            "get_responses",
            "get_rule",
            "list_agents",
            "list_services",
            "remove_rule",
            "where"
        ])
    );
    assert_eq!(seen["rule_max_hits"], 2);
    assert_eq!(seen["rule_expires"], "15m");
    let responses = seen["responses"].as_array().unwrap();
    assert_eq!(responses.len(), 2, "{seen:#}");
    for r in responses {
        check_response(r);
    }
    assert_eq!(
        seen["resources"],
        json!(["nonstop://agents", "nonstop://rules", "nonstop://services"])
    );
    assert_eq!(server.get_json("/api/v1/rules"), json!([]));
    assert_eq!(seen["read_only"]["is_error"], true);
    assert!(
        seen["read_only"]["text"]
            .as_str()
            .unwrap()
            .starts_with("add_log is refused: this nonstop mcp runs with --read-only"),
        "{seen:#}"
    );
    assert_eq!(seen["read_only_agents"], 1);
    drop(program);
}
