//! Ingest throughput: responses/s stored by a real server (loopback, SQLite in a temp
//! folder) with 1 and 10 agents posting HTTP batches of 1 and 200 responses.
//! `cargo run --release -p nonstop-server --example ingest_bench` prints the median of 3 runs.

use std::time::{Duration, Instant};

use nonstop_server::{Config, serve};
use serde_json::json;

fn post(agent: &ureq::Agent, url: &str, token: &str, body: &str) -> u16 {
    match agent
        .post(url)
        .header("Authorization", &format!("Bearer {token}"))
        .header("Content-Type", "application/json")
        .send(body)
    {
        Ok(r) => r.status().as_u16(),
        Err(e) => {
            eprintln!("post failed: {e}");
            0
        }
    }
}

fn run(agents: usize, batch: usize, per_agent: usize) -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let config = Config::new("127.0.0.1:0".parse().expect("addr"), dir.path().into());
    let handle = rt.block_on(serve(config)).expect("server");
    let tokens = handle.tokens().cloned().expect("tokens");
    let base = format!("http://{}", handle.addr());
    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut r = http
        .post(&format!("{base}/api/v1/rules"))
        .header("Authorization", &format!("Bearer {}", tokens.admin))
        .header("Content-Type", "application/json")
        .send(r#"{"at":"src/cart.rs:42","action":"log","template":"m"}"#)
        .expect("add rule");
    let rule: serde_json::Value =
        serde_json::from_str(&r.body_mut().read_to_string().expect("body")).expect("json");
    let rule = rule["rule"]["id"].as_str().expect("rule id").to_string();

    let start = Instant::now();
    let threads: Vec<_> = (0..agents)
        .map(|a| {
            let (url, token, rule, http) = (
                format!("{base}/agent/v1/responses"),
                tokens.agent.clone(),
                rule.clone(),
                http.clone(),
            );
            std::thread::spawn(move || {
                let id = format!("bench-{a}");
                let mut sent = 0;
                while sent < per_agent {
                    let responses: Vec<_> = (0..batch)
                        .map(|n| json!({
                            "rule": rule, "agent": id, "service": "svc",
                            "time": "2026-01-01T00:00:00Z", "thread": "main",
                            "location": {"file": "src/cart.rs", "line": 42, "function": "cart::add"},
                            "message": format!("hit {n}"),
                            "frames": [{"function": "cart::add", "file": "src/cart.rs", "line": 42}],
                            "locals": {"n": {"type": "u32", "value": n}}
                        }))
                        .collect();
                    let body = json!([
                        {"type": "hello", "agent": {"id": id, "service": "svc"}},
                        {"type": "responses", "responses": responses, "dropped": 0}
                    ]);
                    let status = post(&http, &url, &token, &body.to_string());
                    assert_eq!(status, 200, "agent route answered {status}");
                    sent += batch;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("agent thread");
    }
    let secs = start.elapsed().as_secs_f64();
    rt.block_on(handle.shutdown());
    (agents * per_agent) as f64 / secs
}

fn main() {
    for (agents, batch, total) in [
        (1, 1, 3_000),
        (10, 1, 6_000),
        (1, 200, 60_000),
        (10, 200, 100_000),
    ] {
        let mut runs: Vec<f64> = (0..3).map(|_| run(agents, batch, total / agents)).collect();
        runs.sort_by(f64::total_cmp);
        println!(
            "agents={agents:>2} batch={batch:>3}: median {:>8.0} responses/s (runs {:.0?})",
            runs[1], runs
        );
    }
}
