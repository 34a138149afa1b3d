//! `nonstop dap` driven over stdio by a DAP client written here from the protocol's
//! schema, against the real server and the ticker under the real agent: a logpoint and a
//! snapshot breakpoint give `output` events with the program's values, the snapshot's
//! variables expand, a line without code is a `failed` breakpoint with the agent's
//! message, and clearing the breakpoints removes the rules and restores the program.

mod ticker;

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use ticker::{
    NONSTOP, Program, Server, file_bytes, free_port, line_address, live_bytes, mark_line, tmp,
    wait_for_agents,
};

/// A DAP client: Content-Length framed JSON over the adapter's stdin/stdout.
struct Dap {
    child: Child,
    stdin: ChildStdin,
    rx: mpsc::Receiver<Value>,
    seq: u64,
    /// Events seen so far, in order.
    events: Vec<Value>,
}

impl Dap {
    fn start() -> Dap {
        let mut child = Command::new(NONSTOP)
            .arg("dap")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            loop {
                let mut len = None;
                loop {
                    let mut line = String::new();
                    if out.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let l = line.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    if let Some(n) = l.strip_prefix("Content-Length: ") {
                        len = Some(n.parse::<usize>().unwrap());
                    }
                }
                let mut body = vec![0; len.expect("a message without Content-Length")];
                out.read_exact(&mut body).unwrap();
                if tx.send(serde_json::from_slice(&body).unwrap()).is_err() {
                    return;
                }
            }
        });
        Dap {
            child,
            stdin,
            rx,
            seq: 0,
            events: Vec::new(),
        }
    }

    fn next(&mut self, deadline: Instant) -> Value {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = self.rx.recv_timeout(left).unwrap_or_else(|_| {
            panic!(
                "no message from the adapter in time; events: {:#?}",
                self.events
            )
        });
        if m["type"] == "event" {
            self.events.push(m.clone());
        }
        m
    }

    /// Sends a request and returns its response (events that come before are kept).
    fn request(&mut self, command: &str, arguments: Value) -> Value {
        self.seq += 1;
        let body = serde_json::to_vec(
            &json!({"seq": self.seq, "type": "request", "command": command, "arguments": arguments}),
        )
        .unwrap();
        write!(self.stdin, "Content-Length: {}\r\n\r\n", body.len()).unwrap();
        self.stdin.write_all(&body).unwrap();
        self.stdin.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let m = self.next(deadline);
            if m["type"] == "response" && m["request_seq"] == self.seq {
                assert_eq!(m["command"], command);
                return m;
            }
        }
    }

    fn ok(&mut self, command: &str, arguments: Value) -> Value {
        let r = self.request(command, arguments);
        assert_eq!(r["success"], true, "{command} failed: {r:#}");
        r["body"].clone()
    }

    /// Waits for an event that `f` accepts (seen already or arriving within 30 s).
    fn event(&mut self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        if let Some(e) = self.events.iter().find(|e| f(e)) {
            return e.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let m = self.next(deadline);
            if m["type"] == "event" && f(&m) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "no {what}; events: {:#?}",
                self.events
            );
        }
    }
}

impl Drop for Dap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The marked line's file address, from `nonstop where --json`.
fn mark_address() -> u64 {
    line_address(mark_line())
}

#[test]
fn logpoints_and_snapshots_arrive_as_output_and_clearing_them_restores_the_program() {
    let data = tmp("dap");
    let server = Server::start(free_port(), &data);
    let program = Program::start(&server, 3000, "alpha");
    wait_for_agents(&server, 1);

    let mut dap = Dap::start();
    let caps = dap.ok(
        "initialize",
        json!({"adapterID": "nonstop", "linesStartAt1": true}),
    );
    let modes: Vec<&str> = caps["breakpointModes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mode"].as_str().unwrap())
        .collect();
    assert_eq!(modes, ["snapshot", "count"]);
    assert_eq!(caps["supportsLogPoints"], true);

    // The editor's checkout is elsewhere: the source map turns its paths into the program's.
    let fixtures = format!("{}/tests/fixtures/", env!("CARGO_MANIFEST_DIR"));
    dap.ok(
        "attach",
        json!({"server": server.url, "token": server.token("admin"), "service": "ticker",
               "sourceMap": {"/home/me/checkout/": fixtures}}),
    );
    dap.event("initialized", |e| e["event"] == "initialized");

    let mark = mark_line();
    let square_line = mark - 2; // `let square = n * n;`
    let source = json!({"name": "ticker.rs", "path": "/home/me/checkout/ticker.rs"});
    let set = dap.ok(
        "setBreakpoints",
        json!({"source": source, "breakpoints": [
            {"line": square_line, "logMessage": "tick {n}: {label}"},
            {"line": mark, "hitCondition": "3"},
            {"line": 1},
        ]}),
    );
    let bps = set["breakpoints"].as_array().unwrap().clone();
    assert_eq!(bps.len(), 3, "{set:#}");
    let ids: Vec<i64> = bps.iter().map(|b| b["id"].as_i64().unwrap()).collect();
    dap.ok("configurationDone", json!({}));

    // The logpoint: the program's own values, exactly.
    let log = dap.event("logpoint output", |e| {
        e["event"] == "output" && e["body"]["line"] == square_line
    });
    assert_eq!(log["body"]["category"], "console");
    assert_eq!(log["body"]["source"]["path"], "/home/me/checkout/ticker.rs");
    let text = log["body"]["output"].as_str().unwrap();
    let n: u64 = text
        .strip_prefix("tick ")
        .and_then(|t| t.split(':').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{text:?}"));
    assert_eq!(text, format!("tick {n}: alpha-{n}\n"));

    // The snapshot: an output event whose variables expand lazily.
    let snap = dap.event("snapshot output", |e| {
        e["event"] == "output" && e["body"]["line"] == mark
    });
    let text = snap["body"]["output"].as_str().unwrap().to_owned();
    assert!(text.starts_with("snapshot in ticker::tick ("), "{text}");
    let top = dap.ok(
        "variables",
        json!({"variablesReference": snap["body"]["variablesReference"]}),
    );
    let vars = top["variables"].as_array().unwrap();
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {vars:#?}"))
            .clone()
    };
    let n: u64 = var("n")["value"].as_str().unwrap().parse().unwrap();
    assert_eq!(var("n")["type"], "u64");
    assert_eq!(var("label")["value"], format!("\"alpha-{n}\""));
    assert_eq!(var("square")["value"], (n * n).to_string());
    assert_eq!(var("name")["value"], "\"alpha\"");
    let t = var("t");
    assert_eq!(t["type"], "ticker::Tick");
    let fields = dap.ok(
        "variables",
        json!({"variablesReference": t["variablesReference"]}),
    );
    let fields: Vec<(String, String)> = fields["variables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().into(),
                v["value"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        fields,
        [
            ("n".to_string(), n.to_string()),
            ("label".to_string(), format!("\"alpha-{n}\"")),
            ("square".to_string(), (n * n).to_string()),
        ]
    );

    // Threads and stacks answer from the latest snapshot; nothing is paused.
    let threads = dap.ok("threads", json!({}));
    let thread = threads["threads"][0]["id"].as_i64().unwrap();
    let stack = dap.ok("stackTrace", json!({"threadId": thread}));
    let top_frame = &stack["stackFrames"][0];
    assert_eq!(top_frame["name"], "ticker::tick");
    assert_eq!(top_frame["source"]["path"], "/home/me/checkout/ticker.rs");
    let scopes = dap.ok("scopes", json!({"frameId": top_frame["id"]}));
    assert_eq!(scopes["scopes"][0]["name"], "Locals");
    let pause = dap.request("pause", json!({"threadId": thread}));
    assert_eq!(pause["success"], false);

    // Statuses: the two real lines verified, the comment line failed with the agent's words.
    for id in &ids[..2] {
        dap.event("a verified breakpoint", |e| {
            e["event"] == "breakpoint"
                && e["body"]["breakpoint"]["id"] == *id
                && e["body"]["breakpoint"]["verified"] == true
        });
    }
    let failed = dap.event("a failed breakpoint", |e| {
        e["event"] == "breakpoint"
            && e["body"]["breakpoint"]["id"] == ids[2]
            && e["body"]["breakpoint"]["reason"] == "failed"
    });
    let message = failed["body"]["breakpoint"]["message"].as_str().unwrap();
    assert!(message.starts_with("no code at "), "{message}");
    assert!(message.contains("ticker.rs:1"), "{message}");
    assert_eq!(failed["body"]["breakpoint"]["verified"], false);

    let rules = server.get_json("/api/v1/rules");
    assert_eq!(rules.as_array().unwrap().len(), 3, "{rules:#}");
    let snapshot_rule = rules
        .as_array()
        .unwrap()
        .iter()
        .find(|r| {
            r["rule"]["action"] == "snapshot"
                && r["rule"]["at"] == format!("{fixtures}ticker.rs:{mark}")
        })
        .unwrap_or_else(|| panic!("{rules:#}"));
    assert_eq!(snapshot_rule["rule"]["max_hits"], 3);

    // Clearing the file's breakpoints removes the rules; the program's bytes are back.
    let addr = mark_address();
    let deadline = Instant::now() + Duration::from_secs(5);
    // (max hits 3 may already have disarmed the snapshot; the logpoint keeps its line armed)
    let _ = live_bytes(program.pid(), addr);
    let cleared = dap.ok(
        "setBreakpoints",
        json!({"source": source, "breakpoints": []}),
    );
    assert_eq!(cleared["breakpoints"], json!([]));
    assert_eq!(server.get_json("/api/v1/rules"), json!([]));
    let square_addr = line_address(square_line);
    while live_bytes(program.pid(), square_addr) != file_bytes(square_addr)
        || live_bytes(program.pid(), addr) != file_bytes(addr)
    {
        assert!(
            Instant::now() < deadline,
            "the probes stayed armed after clearing"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    dap.ok("disconnect", json!({}));
    assert!(dap.child.wait().unwrap().success());
    assert!(Path::new(&format!("/proc/{}", program.pid())).exists());
}
