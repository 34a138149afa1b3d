//! Slow and numerous clients (issue 12 part 2): connections that never finish their headers
//! or stall their body are closed after the idle timeout; a cap on connections per source
//! address; `/healthz` answers while 2,000 slow connections are held. Real server, real TCP.

mod common;

use common::{TestServer, call};
use nonstop_server::conn::ConnLimits;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Reads until the server closes the connection; `true` if it did within `cap`.
fn closed_by_server(stream: &mut TcpStream, cap: Duration) -> bool {
    stream.set_read_timeout(Some(cap)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            // Reset by the server: closed too.
            Err(_) => return true,
        }
    }
}

fn start(limits: ConnLimits) -> (tempfile::TempDir, TestServer) {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_at(dir.path(), "127.0.0.1:0".parse().unwrap(), |c| {
        c.connections = limits;
    });
    (dir, s)
}

#[test]
fn headers_never_finished_and_a_stalled_body_are_closed_after_the_idle_timeout() {
    let (_dir, s) = start(ConnLimits {
        idle: Duration::from_secs(1),
        ..ConnLimits::default()
    });
    let mut headers = TcpStream::connect(s.addr).unwrap();
    headers
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut body = TcpStream::connect(s.addr).unwrap();
    body.write_all(
        format!(
            "POST /agent/v1/responses HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n[",
            s.agent
        )
        .as_bytes(),
    )
    .unwrap();
    assert!(closed_by_server(&mut headers, Duration::from_secs(30)));
    assert!(closed_by_server(&mut body, Duration::from_secs(30)));
    // The server itself answers on.
    assert_eq!(
        call(&s.url("/healthz"), "GET", None, None),
        (200, r#"{"ok":true}"#.to_string())
    );
}

#[test]
fn healthz_answers_while_2000_slow_connections_are_held() {
    let (_dir, s) = start(ConnLimits::default());
    let mut slow = Vec::new();
    for _ in 0..2000 {
        let mut c = TcpStream::connect(s.addr).unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        slow.push(c);
    }
    assert_eq!(
        call(&s.url("/healthz"), "GET", None, None),
        (200, r#"{"ok":true}"#.to_string())
    );
    // They are still held (the default idle timeout is a minute): none was closed.
    let held = slow
        .iter_mut()
        .take(10)
        .map(|c| closed_by_server(c, Duration::from_millis(10)))
        .filter(|closed| !closed)
        .count();
    assert_eq!(held, 10);
}

#[test]
fn connections_over_the_per_address_cap_are_closed_and_a_freed_slot_serves_again() {
    let (_dir, s) = start(ConnLimits {
        per_address: 3,
        ..ConnLimits::default()
    });
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut c = TcpStream::connect(s.addr).unwrap();
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            c
        })
        .collect();
    // The server accepts in order, so the fourth is over the cap.
    let mut fourth = TcpStream::connect(s.addr).unwrap();
    assert!(closed_by_server(&mut fourth, Duration::from_secs(30)));
    held.pop();
    // The freed slot serves again (the slot is given back once the server sees the close).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = TcpStream::connect(s.addr).unwrap();
        let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut got = String::new();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = c.read_to_string(&mut got);
        if got.starts_with("HTTP/1.1 200") {
            assert!(got.ends_with(r#"{"ok":true}"#), "{got}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no slot freed: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The close frame the server sends next (code and reason).
fn close_frame(agent: &mut common::FakeAgent) -> (u16, String) {
    loop {
        match agent.ws.read() {
            Ok(tungstenite::Message::Close(Some(f))) => {
                return (u16::from(f.code), f.reason.to_string());
            }
            Ok(tungstenite::Message::Close(None)) => panic!("closed without a frame"),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

#[test]
fn a_websocket_frame_too_big_closes_with_1009_and_one_not_utf8_with_1007() {
    let (_dir, s) = start(ConnLimits::default());
    let mut big = s.agent("big-1", "svc");
    big.recv_rule_ids();
    let text = format!("\"{}\"", "x".repeat((8 << 20) + 1));
    big.ws.send(tungstenite::Message::text(text)).unwrap();
    assert_eq!(
        close_frame(&mut big),
        (1009, "message too big: at most 8388608 bytes".to_string())
    );

    let mut bad = s.agent("bad-1", "svc");
    bad.recv_rule_ids();
    let frame = tungstenite::protocol::frame::Frame::message(
        vec![b'"', 0xff, 0xfe, b'"'],
        tungstenite::protocol::frame::coding::OpCode::Data(
            tungstenite::protocol::frame::coding::Data::Text,
        ),
        true,
    );
    bad.ws.send(tungstenite::Message::Frame(frame)).unwrap();
    assert_eq!(
        close_frame(&mut bad),
        (1007, "text frame not UTF-8".to_string())
    );
}
