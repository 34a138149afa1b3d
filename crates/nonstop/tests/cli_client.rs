//! `nonstop serve`, `rules`, `tail` and `agents` as real processes against a real server.
//! The server runs as `nonstop serve --listen 127.0.0.1:0`; a fake agent speaks the wire
//! protocol over a real WebSocket.

use nonstop_model::{AgentMessage, Response};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tungstenite::Message;
use tungstenite::client::IntoClientRequest;

const BIN: &str = env!("CARGO_BIN_EXE_nonstop");

struct Serve {
    child: Child,
    /// Kept open so the server's stdout stays a live pipe.
    _stdout: BufReader<std::process::ChildStdout>,
    base: String,
    admin: String,
    agent: String,
    home: tempfile::TempDir,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve() -> Serve {
    serve_with(tempfile::tempdir().unwrap(), &[])
}

fn serve_with(home: tempfile::TempDir, extra: &[&str]) -> Serve {
    serve_at(home, "127.0.0.1:0", extra)
}

fn serve_at(home: tempfile::TempDir, listen: &str, extra: &[&str]) -> Serve {
    let data = home.path().join("data");
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", listen, "--data"])
        .arg(&data)
        .args(extra)
        .env("HOME", home.path())
        .env_remove("NONSTOP_DATA")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let url = first
        .trim()
        .strip_prefix("nonstop: serving on ")
        .unwrap_or_else(|| panic!("unexpected first line: {first}"));
    let (scheme, rest) = url.split_once("://").unwrap();
    let (addr, token) = rest.split_once("/?token=").unwrap();
    let mut second = String::new();
    out.read_line(&mut second).unwrap();
    assert!(second.contains(&data.display().to_string()), "{second}");
    let agent = std::fs::read_to_string(data.join("agent.token"))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(
        std::fs::read_to_string(data.join("admin.token"))
            .unwrap()
            .trim(),
        token
    );
    Serve {
        child,
        _stdout: out,
        base: format!("{scheme}://{addr}"),
        admin: token.to_string(),
        agent,
        home,
    }
}

impl Serve {
    /// Stops the server process; returns its home (with the data folder) for a restart.
    fn kill(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.home, tempfile::tempdir().unwrap())
    }

    fn cli(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .args(["--server", &self.base])
            .env("NONSTOP_TOKEN", &self.admin)
            .env("HOME", self.home.path())
            .env_remove("NONSTOP_SERVER");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self.cli(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn fake_agent(&self, id: &str) -> tungstenite::WebSocket<TcpStream> {
        let addr = self.base.strip_prefix("http://").unwrap();
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut req = format!("ws://{addr}/agent/v1/ws")
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "Authorization",
            format!("Bearer {}", self.agent).parse().unwrap(),
        );
        let (mut ws, _) = tungstenite::client::client(req, stream).unwrap();
        let hello = json!({"type": "hello", "agent": {"id": id, "service": "checkout", "host": "h", "pid": 1, "started": "2026-01-01T00:00:00Z"}});
        ws.send(Message::text(hello.to_string())).unwrap();
        ws
    }
}

fn response(rule: &str, n: u32) -> Response {
    serde_json::from_value(json!({
        "rule": rule, "agent": "cli-agent", "service": "checkout", "time": "2026-01-01T00:00:00Z",
        "thread": "main", "location": {"file": "src/cart.rs", "line": 42, "function": "cart::add"},
        "message": null, "frames": [], "locals": {"n": {"type": "u32", "value": n}}
    }))
    .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn rules_add_list_show_rm_and_tail_work_against_a_real_server() {
    let s = serve();
    let out = s.run(&[
        "rules",
        "add",
        "src/cart.rs:42",
        "--service",
        "checkout",
        "--max-hits",
        "10",
        "--labels",
        "env=prod,region=eu",
        "--label",
        "tier=canary",
        "--limit",
        "string=4096",
    ]);
    let id = stdout(&out).trim().to_string();
    assert!(
        id.starts_with("r-") && id.len() == 10 && !id.contains('\n'),
        "{id:?}"
    );

    let list: Value = serde_json::from_str(&stdout(&s.run(&["rules", "list", "--json"]))).unwrap();
    assert_eq!(list[0]["rule"]["id"], json!(id));
    assert_eq!(list[0]["rule"]["max_hits"], json!(10));
    assert_eq!(
        list[0]["rule"]["labels"],
        json!({"env": "prod", "region": "eu", "tier": "canary"})
    );
    assert_eq!(list[0]["rule"]["limits"], json!({"string": 4096}));
    let table = stdout(&s.run(&["rules", "list"]));
    assert!(
        table.starts_with("RULE") && table.contains(&id) && table.contains("src/cart.rs:42"),
        "{table}"
    );

    // tail: started first, then the agent sends until tail has printed two and left.
    let mut tail = s
        .cli(&[
            "tail",
            "--json",
            "--count",
            "2",
            "--rule",
            &id,
            "--timeout",
            "20s",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ws = s.fake_agent("cli-agent");
    let mut sent = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while tail.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "tail did not finish");
        let r = response(&id, sent.len() as u32);
        ws.send(Message::text(
            serde_json::to_string(&AgentMessage::Responses {
                responses: vec![r.clone()],
                dropped: 0,
            })
            .unwrap(),
        ))
        .unwrap();
        sent.push(serde_json::to_string(&r).unwrap());
        std::thread::sleep(Duration::from_millis(150));
    }
    let out = tail.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let at = sent
        .iter()
        .position(|s| *s == lines[0])
        .expect("first line is a sent response, exactly");
    assert_eq!(lines[1], sent[at + 1]);

    let show: Value =
        serde_json::from_str(&stdout(&s.run(&["rules", "show", &id, "--json"]))).unwrap();
    assert_eq!(show["rule"]["id"], json!(id));
    assert!(show["hits"].as_u64().unwrap() >= 2);
    let human = stdout(&s.run(&["rules", "show", &id]));
    assert!(human.contains("src/cart.rs:42"), "{human}");

    // An agent running with the fast path says so, and the table shows it in a column.
    ws.send(Message::text(
        json!({"type": "status", "statuses": [{"rule": id, "status": "armed", "probes": 3,
               "fast_path": "fast path: yes"}]})
        .to_string(),
    ))
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let table = loop {
        let human = stdout(&s.run(&["rules", "show", &id]));
        if let Some(at) = human.find("AGENT")
            && human.contains("FAST PATH")
        {
            break human[at..].to_string();
        }
        assert!(Instant::now() < deadline, "no fast path shown: {human}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        table,
        "AGENT      STATUS  PROBES  HITS  DROPPED  FAST PATH  MESSAGE\n\
         cli-agent  armed   3       0     0        yes        -\n"
    );

    let agents: Value = serde_json::from_str(&stdout(&s.run(&["agents", "--json"]))).unwrap();
    assert_eq!(agents[0]["id"], json!("cli-agent"));
    assert!(stdout(&s.run(&["agents"])).contains("cli-agent"));

    s.run(&["rules", "rm", &id]);
    let list: Value = serde_json::from_str(&stdout(&s.run(&["rules", "list", "--json"]))).unwrap();
    assert_eq!(list, json!([]));
}

#[test]
fn tail_with_a_timeout_fails_when_too_few_arrive() {
    let s = serve();
    let start = Instant::now();
    let out = s
        .cli(&["tail", "--count", "1", "--timeout", "1s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(start.elapsed() < Duration::from_secs(10));
    let out = s.cli(&["tail", "--timeout", "1s"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn errors_say_what_to_do() {
    let s = serve();
    let out = s
        .cli(&["rules", "list"])
        .env("NONSTOP_TOKEN", "wrong")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the server refused the token: pass --token or set NONSTOP_TOKEN"),
        "{err}"
    );

    let out = s.cli(&["rules", "add", "src/cart.rs:0"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("lines start at 1"),
        "{err}"
    );

    // A port nothing listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = Command::new(BIN)
        .args(["agents", "--server", &format!("http://{free}")])
        .env("NONSTOP_TOKEN", "x")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "cannot reach the nonstop server at http://{free}: is `nonstop serve` running?"
        )),
        "{err}"
    );
}

#[test]
fn the_cli_finds_the_admin_token_in_the_default_data_folder() {
    let s = serve();
    // With NONSTOP_DATA pointing at the server's folder and no token given.
    let out = Command::new(BIN)
        .args(["rules", "list", "--json", "--server", &s.base])
        .env_remove("NONSTOP_TOKEN")
        .env("NONSTOP_DATA", s.home.path().join("data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_cli_talks_https_to_a_server_with_its_own_certificate() {
    let home = tempfile::tempdir().unwrap();
    let nonstop_testkit::tls::TestCert { cert, key } =
        nonstop_testkit::tls::self_signed(home.path());
    let (c, k) = (cert.display().to_string(), key.display().to_string());
    let s = serve_with(home, &["--tls-cert", &c, "--tls-key", &k]);
    assert!(s.base.starts_with("https://"), "{}", s.base);
    let id = stdout(&s.run(&[
        "rules",
        "add",
        "cart::add",
        "--log",
        "added {item}",
        "--ca-cert",
        &c,
    ]));
    let list: Value = serde_json::from_str(&stdout(&s.run(&[
        "rules",
        "list",
        "--json",
        "--ca-cert",
        &c,
    ])))
    .unwrap();
    assert_eq!(list[0]["rule"]["id"], json!(id.trim()));
    // Without trusting the certificate the CLI refuses to talk.
    let out = s.cli(&["rules", "list"]).output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn tail_follows_the_stream_across_a_server_restart() {
    let s = serve();
    let id = stdout(&s.run(&["rules", "add", "cart::add", "--log", "added {n}"]))
        .trim()
        .to_string();
    let mut tail = s
        .cli(&["tail", "--json", "--timeout", "60s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(tail.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let batch = |n: u32| {
        let m = AgentMessage::Responses {
            responses: vec![response(&id, n)],
            dropped: 0,
        };
        Message::text(serde_json::to_string(&m).unwrap())
    };
    let n_of = |line: &str| {
        serde_json::from_str::<Value>(line).unwrap()["locals"]["n"]["value"]
            .as_u64()
            .unwrap()
    };
    // Responses 1, 2, 3… until tail shows one (it may subscribe after the first sends).
    let mut ws = s.fake_agent("cli-agent");
    let mut seen = Vec::new();
    let mut n = 0;
    while seen.is_empty() {
        n += 1;
        assert!(n < 100, "tail shows nothing");
        ws.send(batch(n)).unwrap();
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(n_of(&l));
        }
    }

    // The server restarts on the same address; tail reconnects and goes on after the last
    // response it showed: nothing twice, nothing stored missed.
    let addr = s.base.strip_prefix("http://").unwrap().to_string();
    let home = s.kill();
    drop(ws);
    let s = serve_at(home, &addr, &[]);
    let mut ws = s.fake_agent("cli-agent");
    let after_restart = 1000;
    ws.send(batch(after_restart)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.last() != Some(&u64::from(after_restart)) {
        assert!(
            Instant::now() < deadline,
            "tail did not follow the restart: {seen:?}"
        );
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(300)) {
            seen.push(n_of(&l));
        }
    }
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted, seen, "each response once, in order");
    let _ = tail.kill();
    let _ = tail.wait();
}

/// Sends `message` from a fake agent, then a ping, and waits for the pong: messages of one
/// connection are handled in order, so the server has stored what came before.
fn send_and_sync(ws: &mut tungstenite::WebSocket<TcpStream>, message: &AgentMessage) {
    for m in [message, &AgentMessage::Ping] {
        ws.send(Message::text(serde_json::to_string(m).unwrap()))
            .unwrap();
    }
    loop {
        if let Message::Text(t) = ws.read().unwrap()
            && serde_json::from_str::<nonstop_model::ServerMessage>(&t).ok()
                == Some(nonstop_model::ServerMessage::Pong)
        {
            return;
        }
    }
}

/// A series as an agent reports it: histograms get their buckets from `values`.
fn metric_series(
    rule: &str,
    name: &str,
    kind: nonstop_model::MetricKind,
    tags: &[(&str, &str)],
    values: &[f64],
) -> nonstop_model::MetricSeries {
    use nonstop_model::MetricKind;
    use nonstop_model::metrics::{HISTOGRAM_BOUNDS, bucket_of};
    let mut buckets = Vec::new();
    if kind == MetricKind::Histogram {
        buckets = vec![0; HISTOGRAM_BOUNDS.len() + 1];
        for v in values {
            buckets[bucket_of(*v)] += 1;
        }
    }
    nonstop_model::MetricSeries {
        rule: rule.into(),
        name: name.into(),
        kind,
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        count: values.len() as u64,
        sum: if kind == MetricKind::Count {
            0.0
        } else {
            values.iter().sum()
        },
        last: (kind == MetricKind::Gauge).then(|| values[values.len() - 1]),
        buckets,
        updated: "2026-11-25T15:00:00Z".into(),
        overflow: 0,
    }
}

#[test]
fn metrics_shows_counts_gauges_and_histograms_summed_over_agents() {
    use nonstop_model::MetricKind::{Count, Gauge, Histogram};
    let s = serve();
    let id = |args: &[&str]| stdout(&s.run(args)).trim().to_string();
    let adds = id(&[
        "rules",
        "add",
        "src/cart.rs:42",
        "--service",
        "checkout",
        "--metric",
        "cart.add",
        "--tag",
        "tier=user.tier",
    ]);
    let totals = id(&[
        "rules",
        "add",
        "src/cart.rs:50",
        "--service",
        "checkout",
        "--metric",
        "cart.total=order.total",
        "--kind",
        "histogram",
    ]);
    let depth = id(&[
        "rules",
        "add",
        "src/queue.rs:7",
        "--service",
        "checkout",
        "--metric",
        "queue.depth=q.len",
        "--kind",
        "gauge",
    ]);
    let snap = id(&["rules", "add", "src/cart.rs:60", "--service", "checkout"]);

    // Nothing reported yet: said, per rule too.
    assert_eq!(
        stdout(&s.run(&["metrics"])),
        "no metric series yet: add a metric rule (`nonstop rules add FILE:LINE --metric NAME`); its series appear once an agent records a hit\n"
    );
    assert_eq!(
        stdout(&s.run(&["metrics", "--rule", &adds])),
        format!(
            "rule {adds} has no series yet: they appear once one of its agents records a hit (`nonstop rules show {adds}` shows its status on each agent)\n"
        )
    );

    // Two agents of the service; agent a's gauge is the newer one.
    let mut a = s.fake_agent("m-a");
    let mut b = s.fake_agent("m-b");
    let mut gauge_a = metric_series(&depth, "queue.depth", Gauge, &[], &[9.0, 4.5]);
    gauge_a.updated = "2026-11-25T15:00:01Z".into();
    send_and_sync(
        &mut a,
        &AgentMessage::Metrics {
            series: vec![
                metric_series(&adds, "cart.add", Count, &[("tier", "gold")], &[0.0; 3]),
                metric_series(&adds, "cart.add", Count, &[("tier", "silver")], &[0.0]),
                metric_series(
                    &totals,
                    "cart.total",
                    Histogram,
                    &[],
                    &[0.2, 1.5, 2.0, 7.0, 40.0],
                ),
                gauge_a,
            ],
        },
    );
    send_and_sync(
        &mut b,
        &AgentMessage::Metrics {
            series: vec![
                metric_series(&adds, "cart.add", Count, &[("tier", "gold")], &[0.0; 4]),
                metric_series(
                    &totals,
                    "cart.total",
                    Histogram,
                    &[],
                    &[40.0, 90.0, 300.0, 600.0, 6e9],
                ),
                metric_series(&depth, "queue.depth", Gauge, &[], &[9.0]),
            ],
        },
    );

    // Counts 3+4 and 1; ten values 0.2…6e9: sum 6000001080.7, ranks 5, 9, 10 in the
    // buckets ≤50, ≤1000 and above 5e9; the gauge's newest value 4.5, mean 22.5/3.
    let table = stdout(&s.run(&["metrics"]));
    let want = format!(
        "RULE        METRIC       KIND       SERVICE   TAGS         COUNT  LAST  SUM         MEAN       P50  P90    P99          AGENTS\n\
         {adds}  cart.add     count      checkout  tier=gold    7      -     -           -          -    -      -            2\n\
         {adds}  cart.add     count      checkout  tier=silver  1      -     -           -          -    -      -            1\n\
         {totals}  cart.total   histogram  checkout  -            10     -     6000001081  600000108  ≤50  ≤1000  >5000000000  2\n\
         {depth}  queue.depth  gauge      checkout  -            3      4.5   22.5        7.5        -    -      -            2\n\
         P50/P90/P99 of a histogram are upper bounds: the bound of the bucket the quantile falls in (buckets 1, 2.5, 5 × 10^k).\n"
    );
    assert_eq!(table, want);

    // --rule: one rule's series; --json: the server's JSON as it is.
    let one = stdout(&s.run(&["metrics", "--rule", &adds]));
    assert_eq!(one.lines().count(), 3, "{one}");
    assert!(one.lines().skip(1).all(|l| l.starts_with(&adds)), "{one}");
    let json: Value =
        serde_json::from_str(&stdout(&s.run(&["metrics", "--rule", &totals, "--json"]))).unwrap();
    let h = &json.as_array().unwrap()[0];
    assert_eq!(json.as_array().unwrap().len(), 1);
    assert_eq!(
        (&h["service"], &h["agents"], &h["count"], &h["kind"]),
        (
            &json!("checkout"),
            &json!(2),
            &json!(10),
            &json!("histogram")
        )
    );
    let buckets = h["buckets"].as_array().unwrap();
    assert_eq!(buckets.iter().map(|b| b.as_u64().unwrap()).sum::<u64>(), 10);
    assert_eq!(
        buckets[buckets.len() - 1],
        json!(1),
        "6e9 is above every bound"
    );

    // --prometheus: what a scrape gets.
    let prom = stdout(&s.run(&["metrics", "--prometheus"]));
    for line in [
        "cart_add_total{service=\"checkout\",tier=\"gold\"} 7\n",
        "cart_add_total{service=\"checkout\",tier=\"silver\"} 1\n",
        "cart_total_bucket{service=\"checkout\",le=\"50\"} 6\n",
        "cart_total_bucket{service=\"checkout\",le=\"+Inf\"} 10\n",
        "cart_total_count{service=\"checkout\"} 10\n",
        "queue_depth{service=\"checkout\"} 4.5\n",
    ] {
        assert!(prom.contains(line), "{line} in:\n{prom}");
    }

    // Bad input says what to do.
    let err = |args: &[&str]| {
        let out = s.cli(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8(out.stderr).unwrap()
    };
    assert_eq!(
        err(&["metrics", "--rule", &snap]),
        format!(
            "nonstop: rule {snap} is a snapshot rule, not a metric rule: `nonstop tail --rule {snap}` shows its responses\n"
        )
    );
    let unknown = err(&["metrics", "--rule", "r-nothere"]);
    assert!(
        unknown.contains("r-nothere") && unknown.contains("404"),
        "{unknown}"
    );
    assert!(
        err(&["metrics", "--rule", &adds, "--prometheus"]).contains("cannot be used with"),
        "--rule and --prometheus conflict"
    );
}
