//! The link keeps only the newest value of each metric series, drops the series of removed
//! rules, and sends every series it holds again after a reconnect. A real WebSocket server
//! on loopback plays the nonstop server.

use nonstop_agent::connection::{Link, LinkConfig};
use nonstop_model::{AgentInfo, AgentMessage, MetricKind, MetricSeries};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;
use tungstenite::{Message, WebSocket};

fn series(rule: &str, count: u64) -> MetricSeries {
    MetricSeries {
        rule: rule.into(),
        name: format!("{rule}.hits"),
        kind: MetricKind::Count,
        tags: Default::default(),
        count,
        sum: 0.0,
        last: None,
        buckets: Vec::new(),
        updated: format!("2026-01-01T00:00:{count:02}Z"),
        overflow: 0,
    }
}

fn info() -> AgentInfo {
    AgentInfo {
        id: "test-agent".into(),
        service: "meter".into(),
        version: None,
        commit: None,
        host: "localhost".into(),
        pid: std::process::id(),
        labels: Default::default(),
        started: "2026-01-01T00:00:00Z".into(),
    }
}

/// The next message from the agent, pings skipped.
fn next(ws: &mut WebSocket<TcpStream>) -> AgentMessage {
    loop {
        if let Message::Text(t) = ws.read().expect("the agent's connection broke") {
            match serde_json::from_str(&t).expect("not an agent message") {
                AgentMessage::Ping => {}
                m => return m,
            }
        }
    }
}

/// The (rule, count) of a `metrics` message.
fn counts(message: AgentMessage) -> Vec<(String, u64)> {
    match message {
        AgentMessage::Metrics { series } => series.into_iter().map(|s| (s.rule, s.count)).collect(),
        other => panic!("expected metrics, got {other:?}"),
    }
}

fn accept(listener: &TcpListener) -> WebSocket<TcpStream> {
    let (stream, _) = listener.accept().unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut ws = tungstenite::accept(stream).unwrap();
    assert!(matches!(next(&mut ws), AgentMessage::Hello { .. }));
    ws
}

#[test]
fn only_the_newest_values_go_out_and_all_are_sent_again_after_a_reconnect() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (go, wait) = mpsc::channel::<()>();
    let (report, seen) = mpsc::channel::<Vec<(String, u64)>>();
    let (next_step, step) = mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        // Not accepted until the agent has queued its first values.
        wait.recv().unwrap();
        let mut ws = accept(&listener);
        report.send(counts(next(&mut ws))).unwrap();
        step.recv().unwrap();
        report.send(counts(next(&mut ws))).unwrap();
        ws.close(None).unwrap();
        let _ = ws.flush();
        drop(ws);
        let mut ws = accept(&listener);
        report.send(counts(next(&mut ws))).unwrap();
    });

    let link = Link::start(LinkConfig::new(format!("http://{addr}"), None, info()));
    link.send_metrics(vec![series("r1", 1)]);
    link.send_metrics(vec![series("r1", 2), series("r2", 1)]);
    go.send(()).unwrap();
    let first = seen.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(first, [("r1".into(), 2), ("r2".into(), 1)]);

    // r2 is removed; r1 moves on.
    link.forget_metrics(&["r2".to_owned()]);
    link.send_metrics(vec![series("r1", 3)]);
    next_step.send(()).unwrap();
    let second = seen.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(second, [("r1".into(), 3)]);

    // After the server drops the connection, the link reconnects and sends what it holds.
    let third = seen.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(third, [("r1".into(), 3)]);
    server.join().unwrap();
    link.stop();
}
