//! End to end on a local Lambda: the example function (`examples/greeter.rs`, built with
//! `lambda_runtime` and `NonstopLayer`) runs under a local Runtime API emulator
//! (`emulator/`), with the real `nonstop serve` on loopback. Rules added with the CLI for the
//! function's service deliver a response per invocation with exact values, every one of them
//! at the server before the function asks for its next event, and the function's answers
//! are byte-identical to the same function's without the layer.

mod emulator;

use emulator::{RuntimeApi, side_build};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FUNCTION: &str = "greeter-fn";
const INVOCATIONS: u64 = 20;

fn nonstop() -> PathBuf {
    side_build().join("nonstop")
}

fn greeter() -> PathBuf {
    side_build().join("examples/greeter")
}

fn source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/greeter.rs")
}

/// The function process with the Lambda environment pointing at `api`.
fn spawn_function(
    binary: &Path,
    api: &RuntimeApi,
    args: &[&str],
    env: &[(&str, &str)],
) -> nonstop_testkit::ChildGuard {
    let mut cmd = Command::new(binary);
    cmd.args(args)
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", &api.address)
        .env("AWS_LAMBDA_FUNCTION_NAME", FUNCTION)
        .env("AWS_LAMBDA_FUNCTION_VERSION", "7")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    nonstop_testkit::ChildGuard(cmd.spawn().unwrap())
}

/// The event of invocation `k`, and what `price` sees in it: (items, count, total).
fn event(k: u64) -> (Vec<u8>, Vec<u32>, u64, u64) {
    let items: Vec<u32> = (0..=k % 4).map(|i| (100 * k + i) as u32).collect();
    let total = items.iter().map(|&i| u64::from(i)).sum();
    let body = serde_json::json!({"customer": format!("c{k}"), "items": items}).to_string();
    (body.into_bytes(), items.clone(), items.len() as u64, total)
}

/// Runs the invocations on a function; returns each one's answer.
fn run_invocations(api: &RuntimeApi, mut before_each: impl FnMut(u64)) -> Vec<Vec<u8>> {
    let mut answers = Vec::new();
    for k in 0..INVOCATIONS {
        before_each(k);
        let id = api.invoke(&event(k).0);
        let outcome = api.outcome(&id, Duration::from_secs(30));
        assert_eq!(
            outcome.kind,
            "response",
            "{}",
            String::from_utf8_lossy(&outcome.body)
        );
        answers.push(outcome.body);
    }
    answers
}

struct Server {
    process: Option<nonstop_testkit::ServerProcess>,
    nonstop: PathBuf,
    port: u16,
    data: PathBuf,
    url: String,
    admin: String,
    agent: String,
}

impl Server {
    fn start() -> Server {
        let nonstop = nonstop();
        let data = nonstop_testkit::tempdir("lambda-server");
        let port = nonstop_testkit::free_port();
        let process = nonstop_testkit::ServerProcess::start(&nonstop, port, &data, &[]);
        Server {
            url: process.url.clone(),
            admin: process.token("admin"),
            agent: process.token("agent"),
            process: Some(process),
            nonstop,
            port,
            data,
        }
    }

    /// Kills the server process (the function's agent finds it gone).
    fn stop(&mut self) {
        if let Some(p) = self.process.take() {
            p.kill();
        }
    }

    /// Starts the server again on the same port and data folder (same tokens, same rules).
    fn restart(&mut self) {
        self.stop();
        self.process = Some(nonstop_testkit::ServerProcess::start(
            &self.nonstop,
            self.port,
            &self.data,
            &[],
        ));
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(&self.nonstop)
            .args(args)
            .args(["--server", &self.url, "--token", &self.admin])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nonstop {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.cli(args)).unwrap()
    }

    fn responses(&self, rule: &str) -> Vec<serde_json::Value> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let body = agent
            .get(format!(
                "{}/api/v1/responses?rule={rule}&limit=1000",
                self.url
            ))
            .header("Authorization", format!("Bearer {}", self.admin))
            .call()
            .unwrap_or_else(|e| panic!("GET /api/v1/responses: {e}"))
            .body_mut()
            .read_to_string()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v.as_array().unwrap().clone()
    }

    fn wait_until_armed(&self, rule: &str) {
        nonstop_testkit::wait_for(
            &format!("rule {rule} armed"),
            Duration::from_secs(30),
            || {
                let view = self.json(&["rules", "show", rule, "--json"]);
                match view["agents"][0]["status"].as_str() {
                    Some("armed") => Some(()),
                    Some("error") => panic!("rule {rule} failed: {:#}", view["agents"]),
                    _ => None,
                }
            },
        );
    }
}

#[test]
fn a_snapshot_and_a_log_rule_answer_for_every_invocation_before_the_next_one_starts() {
    let server = Server::start();
    let line = nonstop_testkit::marks(&source())["priced"];
    let at = format!("greeter.rs:{line}");

    // The same events through the function without the layer, for its answers.
    let plain_api = RuntimeApi::start();
    let binary = greeter();
    let plain = spawn_function(&binary, &plain_api, &["--without-nonstop"], &[]);
    let plain_answers = run_invocations(&plain_api, |_| {});
    plain.kill();

    let api = RuntimeApi::start();
    let function = spawn_function(
        &binary,
        &api,
        &[],
        &[
            ("NONSTOP_SERVER", &server.url),
            ("NONSTOP_TOKEN", &server.agent),
            ("NONSTOP_LABELS", "stage=test"),
        ],
    );
    // The agent says hello while the function waits for its first event.
    let agent = nonstop_testkit::wait_for("the function's agent", Duration::from_secs(30), || {
        let agents = server.json(&["agents", "--json"]);
        agents.as_array().and_then(|a| a.first().cloned())
    });
    assert_eq!(agent["service"], FUNCTION);
    assert_eq!(agent["version"], "7");
    assert_eq!(agent["labels"], serde_json::json!({"stage": "test"}));

    let snapshot = server
        .cli(&[
            "rules",
            "add",
            &at,
            "--service",
            FUNCTION,
            "--snapshot",
            "--rate",
            "1000/s",
        ])
        .trim()
        .to_owned();
    let log = server
        .cli(&[
            "rules",
            "add",
            &at,
            "--service",
            FUNCTION,
            "--log",
            "{count} items: {total} cents",
            "--rate",
            "1000/s",
        ])
        .trim()
        .to_owned();
    server.wait_until_armed(&snapshot);
    server.wait_until_armed(&log);

    let answers = run_invocations(&api, |k| {
        // The function asked for event k: everything invocation k-1 captured is at the
        // server already (the layer flushed it after posting the answer, before `/next`).
        api.wait_for_next_call(k + 1, Duration::from_secs(30));
        assert_eq!(
            server.responses(&snapshot).len() as u64,
            k,
            "snapshots before event {k}"
        );
        assert_eq!(
            server.responses(&log).len() as u64,
            k,
            "logs before event {k}"
        );
    });
    api.wait_for_next_call(INVOCATIONS + 1, Duration::from_secs(30));
    assert_eq!(
        answers, plain_answers,
        "the function's answers changed under the layer"
    );
    assert_eq!(
        String::from_utf8_lossy(&answers[3]),
        r#"{"message":"thanks c3, that is 1206 cents","total":1206}"#
    );

    let snapshots = server.responses(&snapshot);
    let got: Vec<(u64, u64)> = snapshots
        .iter()
        .map(|r| {
            (
                r["locals"]["count"]["value"].as_u64().unwrap(),
                r["locals"]["total"]["value"].as_u64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(u64, u64)> = (0..INVOCATIONS).map(|k| (event(k).2, event(k).3)).collect();
    assert_eq!(got, want);
    let items: Vec<serde_json::Value> = snapshots
        .iter()
        .map(|r| r["locals"]["items"].clone())
        .collect();
    for (k, got) in items.iter().enumerate() {
        let want: Vec<serde_json::Value> = event(k as u64)
            .1
            .iter()
            .map(|i| serde_json::json!({"type": "u32", "value": i}))
            .collect();
        assert_eq!(
            got["value"],
            serde_json::Value::Array(want),
            "items of invocation {k}"
        );
    }
    let messages: Vec<String> = server
        .responses(&log)
        .iter()
        .map(|r| r["message"].as_str().unwrap().to_owned())
        .collect();
    let want: Vec<String> = (0..INVOCATIONS)
        .map(|k| format!("{} items: {} cents", event(k).2, event(k).3))
        .collect();
    assert_eq!(messages, want);
    assert!(api.init_error().is_none());
    drop(function);
}

/// A log rule's messages at the server, oldest first.
fn messages(server: &Server, rule: &str) -> Vec<String> {
    server
        .responses(rule)
        .iter()
        .map(|r| r["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn log_message(k: u64) -> String {
    format!("{} items: {} cents", event(k).2, event(k).3)
}

/// The answer of invocation `k`, as the function computes it.
fn answer(k: u64) -> String {
    let total = event(k).3;
    format!(r#"{{"message":"thanks c{k}, that is {total} cents","total":{total}}}"#)
}

/// Sends `signal` (`STOP`, `CONT`, `KILL`) to a process.
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

fn with_agent(server: &Server) -> Vec<(&'static str, String)> {
    vec![
        ("NONSTOP_SERVER", server.url.clone()),
        ("NONSTOP_TOKEN", server.agent.clone()),
    ]
}

fn add_log_rule(server: &Server) -> String {
    let at = format!("greeter.rs:{}", nonstop_testkit::marks(&source())["priced"]);
    server
        .cli(&[
            "rules",
            "add",
            &at,
            "--service",
            FUNCTION,
            "--log",
            "{count} items: {total} cents",
            "--rate",
            "1000/s",
        ])
        .trim()
        .to_owned()
}

/// Invocation `k`: its answer must be the function's own.
fn invoke_and_check(api: &RuntimeApi, k: u64) -> emulator::Outcome {
    let id = api.invoke(&event(k).0);
    let outcome = api.outcome(&id, Duration::from_secs(30));
    assert_eq!(outcome.kind, "response");
    assert_eq!(
        String::from_utf8_lossy(&outcome.body),
        answer(k),
        "answer {k}"
    );
    outcome
}

#[test]
fn a_frozen_or_killed_function_loses_nothing_captured_before_its_last_completed_invocation() {
    let server = Server::start();
    let api = RuntimeApi::start();
    let env = with_agent(&server);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let function = spawn_function(&greeter(), &api, &[], &env);
    let pid = function.id();
    let log = add_log_rule(&server);
    server.wait_until_armed(&log);

    // Frozen between every two invocations, as Lambda does: each thaw finds every message
    // of the invocations before it at the server, and the link goes on working.
    const FROZEN: u64 = 8;
    for k in 0..FROZEN {
        invoke_and_check(&api, k);
        api.wait_for_next_call(k + 2, Duration::from_secs(30));
        signal(pid, "STOP");
        let want: Vec<String> = (0..=k).map(log_message).collect();
        assert_eq!(messages(&server, &log), want, "frozen after invocation {k}");
        signal(pid, "CONT");
    }

    // A rule added while the function is thawed reaches it over the same link.
    let snapshot = server
        .cli(&[
            "rules",
            "add",
            &format!("greeter.rs:{}", nonstop_testkit::marks(&source())["priced"]),
            "--service",
            FUNCTION,
            "--snapshot",
        ])
        .trim()
        .to_owned();
    invoke_and_check(&api, FROZEN);
    server.wait_until_armed(&snapshot);

    // Killed while it works on the next event: what the completed invocations captured is
    // at the server; the killed one's capture may or may not have left.
    let id = api.invoke(&event(FROZEN + 1).0);
    api.wait_for_next_call(FROZEN + 3, Duration::from_secs(30));
    signal(pid, "KILL");
    drop(function);
    let got = messages(&server, &log);
    let want: Vec<String> = (0..=FROZEN).map(log_message).collect();
    assert!(
        got == want || got == [want.clone(), vec![log_message(FROZEN + 1)]].concat(),
        "after the kill: {got:?}"
    );
    let _ = id;
}

#[test]
fn with_the_server_down_invocations_go_on_and_rules_come_back_with_it() {
    let mut server = Server::start();
    let api = RuntimeApi::start();
    let env = with_agent(&server);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let function = spawn_function(&greeter(), &api, &[], &env);
    let log = add_log_rule(&server);
    server.wait_until_armed(&log);
    for k in 0..3 {
        invoke_and_check(&api, k);
    }
    api.wait_for_next_call(4, Duration::from_secs(30));
    assert_eq!(
        messages(&server, &log),
        (0..3).map(log_message).collect::<Vec<_>>()
    );

    // The server goes away: the function answers every event as before.
    server.stop();
    let mut slowest = Duration::ZERO;
    for k in 3..8 {
        let outcome = invoke_and_check(&api, k);
        slowest = slowest.max(outcome.posted_at - outcome.handed_at);
    }
    println!(
        "with the server down, the slowest invocation took {slowest:?} from /next to its answer"
    );

    // Back: what was captured meanwhile arrives, and a new rule reaches the function.
    server.restart();
    let mut k = 8;
    nonstop_testkit::wait_for(
        "the messages captured while the server was down",
        Duration::from_secs(60),
        || {
            invoke_and_check(&api, k);
            k += 1;
            api.wait_for_next_call(k + 1, Duration::from_secs(30));
            (messages(&server, &log).len() as u64 >= k).then_some(())
        },
    );
    assert_eq!(
        messages(&server, &log),
        (0..k).map(log_message).collect::<Vec<_>>()
    );
    let second = add_log_rule(&server);
    nonstop_testkit::wait_for("the new rule armed", Duration::from_secs(30), || {
        invoke_and_check(&api, k);
        k += 1;
        let view = server.json(&["rules", "show", &second, "--json"]);
        (view["agents"][0]["status"] == "armed").then_some(())
    });
    drop(function);
}

/// An API Gateway HTTP API (payload 2.0) event for `GET /greet?name=NAME`.
fn http_event(name: &str) -> Vec<u8> {
    serde_json::json!({
        "version": "2.0",
        "routeKey": "GET /greet",
        "rawPath": "/greet",
        "rawQueryString": format!("name={name}"),
        "headers": {"host": "abc123.execute-api.eu-west-1.amazonaws.com", "accept": "text/plain"},
        "queryStringParameters": {"name": name},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.eu-west-1.amazonaws.com",
            "domainPrefix": "abc123",
            "http": {
                "method": "GET",
                "path": "/greet",
                "protocol": "HTTP/1.1",
                "sourceIp": "192.0.2.1",
                "userAgent": "curl/8.5.0"
            },
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "routeKey": "GET /greet",
            "stage": "$default",
            "time": "04/Dec/2026:12:00:00 +0000",
            "timeEpoch": 1796385600000u64
        },
        "isBase64Encoded": false
    })
    .to_string()
    .into_bytes()
}

#[test]
fn an_http_function_with_lambda_http_answers_the_same_and_its_rules_fire() {
    let server = Server::start();
    let binary = side_build().join("examples/http_greeter");
    let names = ["ada", "grace", "linus-t"];
    let run = |api: &RuntimeApi| -> Vec<Vec<u8>> {
        names
            .iter()
            .map(|name| {
                let id = api.invoke(&http_event(name));
                let outcome = api.outcome(&id, Duration::from_secs(30));
                assert_eq!(
                    outcome.kind,
                    "response",
                    "{}",
                    String::from_utf8_lossy(&outcome.body)
                );
                outcome.body
            })
            .collect()
    };
    let plain_api = RuntimeApi::start();
    let plain = spawn_function(&binary, &plain_api, &["--without-nonstop"], &[]);
    let plain_answers = run(&plain_api);
    plain.kill();

    let api = RuntimeApi::start();
    let env = with_agent(&server);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let function = spawn_function(&binary, &api, &[], &env);
    let line = nonstop_testkit::marks(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/http_greeter.rs"),
    )["counted"];
    let rule = server
        .cli(&[
            "rules",
            "add",
            &format!("http_greeter.rs:{line}"),
            "--service",
            FUNCTION,
            "--log",
            "{name}: {count}",
        ])
        .trim()
        .to_owned();
    server.wait_until_armed(&rule);
    let answers = run(&api);
    assert_eq!(
        answers, plain_answers,
        "the answers changed under the layer"
    );
    let first: serde_json::Value = serde_json::from_slice(&answers[0]).unwrap();
    assert_eq!(first["statusCode"], 200);
    assert_eq!(first["body"], "hello ada (3 letters)");
    api.wait_for_next_call(names.len() as u64 + 1, Duration::from_secs(30));
    assert_eq!(
        messages(&server, &rule),
        vec!["ada: 3", "grace: 5", "linus-t: 6"]
    );
    drop(function);
}

/// The cold start the layer adds: the example started with its first event already queued,
/// from the process start to the answer at the emulator, and from `/next` to the answer;
/// medians of [`RUNS`] runs each, printed. Run with
/// `cargo test -p nonstop-lambda --test a_function_with_the_layer_answers_rules_per_invocation -- --ignored --nocapture`.
/// A way to run the function: its name in the figures, its arguments, its environment.
type Setup<'a> = (&'a str, &'a [&'a str], Vec<(&'a str, &'a str)>);

#[test]
#[ignore = "a measurement: prints figures, asserts nothing about them"]
fn cold_start_cost() {
    const RUNS: usize = 15;
    let server = Server::start();
    let binary = greeter();
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let configs: [Setup; 3] = [
        ("without the layer", &["--without-nonstop"], vec![]),
        ("with the layer, no NONSTOP_SERVER", &[], vec![]),
        (
            "with the layer and the server (first poll)",
            &[],
            vec![
                ("NONSTOP_SERVER", server.url.as_str()),
                ("NONSTOP_TOKEN", server.agent.as_str()),
            ],
        ),
    ];
    for (name, args, env) in configs {
        let (mut total, mut first) = (Vec::new(), Vec::new());
        for _ in 0..RUNS {
            let api = RuntimeApi::start();
            let id = api.invoke(&event(3).0);
            let started = Instant::now();
            let function = spawn_function(&binary, &api, args, &env);
            let outcome = api.outcome(&id, Duration::from_secs(30));
            total.push(outcome.posted_at - started);
            first.push(outcome.posted_at - outcome.handed_at);
            function.kill();
        }
        println!(
            "{name}: start to first answer {:?}, /next to answer {:?} (medians of {RUNS})",
            median(total),
            median(first)
        );
    }
}

/// What the layer adds to a warm invocation: from `/next` handing the event to the answer
/// (what the caller waits for), and the whole cycle (event after event, flush included),
/// without the layer, with the layer and no rule, and with one log rule hitting once per
/// invocation; medians and p99 of [`RUNS`] invocations, printed. Run with
/// `cargo test --release -p nonstop-lambda --test a_function_with_the_layer_answers_rules_per_invocation invocation_cost -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement: prints figures, asserts nothing about them"]
fn invocation_cost() {
    const RUNS: usize = 300;
    let server = Server::start();
    let binary = greeter();
    let env = with_agent(&server);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let quantile = |v: &mut Vec<Duration>, q: f64| {
        v.sort();
        v[((v.len() - 1) as f64 * q) as usize]
    };
    let mut log_rule = None;
    for (name, args, with_rule) in [
        ("without the layer", &["--without-nonstop"][..], false),
        ("with the layer, no rule", &[][..], false),
        ("with the layer, one log rule", &[][..], true),
    ] {
        let api = RuntimeApi::start();
        let function = spawn_function(&binary, &api, args, &env);
        if with_rule {
            let rule = add_log_rule(&server);
            server.wait_until_armed(&rule);
            log_rule = Some(rule);
        }
        for k in 0..20 {
            invoke_and_check(&api, k); // warm up
        }
        let mut answer = Vec::new();
        let started = Instant::now();
        for k in 0..RUNS as u64 {
            let o = invoke_and_check(&api, k);
            answer.push(o.posted_at - o.handed_at);
        }
        api.wait_for_next_call(RUNS as u64 + 21, Duration::from_secs(30));
        let cycle = started.elapsed() / RUNS as u32;
        println!(
            "{name}: /next to answer p50 {:?} p99 {:?}; cycle {cycle:?} per invocation",
            quantile(&mut answer, 0.5),
            quantile(&mut answer, 0.99),
        );
        function.kill();
    }
    if let Some(rule) = log_rule {
        println!("log responses stored: {}", server.responses(&rule).len());
    }
}
