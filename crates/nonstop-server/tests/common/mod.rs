//! Shared by the integration tests: a real server on an ephemeral loopback port, a blocking
//! HTTP client, and a fake agent speaking the wire protocol over a real WebSocket.
#![allow(dead_code)]

use nonstop_model::{AgentInfo, AgentMessage, Response, ServerMessage};
use nonstop_server::{Config, ServerHandle, serve};
use serde_json::Value;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

/// A server running on its own runtime, so tests stay synchronous.
pub struct TestServer {
    pub rt: tokio::runtime::Runtime,
    pub handle: Option<ServerHandle>,
    pub addr: SocketAddr,
    pub admin: String,
    pub agent: String,
}

impl TestServer {
    pub fn start(data: &Path) -> TestServer {
        Self::start_at(data, "127.0.0.1:0".parse().unwrap(), |_| {})
    }

    pub fn start_at(
        data: &Path,
        listen: SocketAddr,
        tweak: impl FnOnce(&mut Config),
    ) -> TestServer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut config = Config::new(listen, data.to_path_buf());
        tweak(&mut config);
        let handle = rt.block_on(serve(config)).unwrap();
        let tokens = handle.tokens().cloned().unwrap();
        TestServer {
            addr: handle.addr(),
            handle: Some(handle),
            admin: tokens.admin,
            agent: tokens.agent,
            rt,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            self.rt.block_on(h.shutdown());
        }
    }

    /// A request with the admin token; returns (status, body).
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        call(&self.url(path), method, Some(&self.admin), body)
    }

    pub fn get_json(&self, path: &str) -> Value {
        let (status, body) = self.call("GET", path, None);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Adds a rule; returns its id.
    pub fn add_rule(&self, json: &str) -> String {
        let (status, body) = self.call("POST", "/api/v1/rules", Some(json));
        assert_eq!(status, 201, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["rule"]["id"].as_str().unwrap().to_string()
    }

    pub fn agent(&self, id: &str, service: &str) -> FakeAgent {
        FakeAgent::connect(self.addr, &self.agent, id, service)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            self.rt.block_on(h.shutdown());
        }
    }
}

pub fn call(url: &str, method: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut resp = match (method, body) {
        ("GET", _) => {
            let mut r = agent.get(url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        ("DELETE", _) => {
            let mut r = agent.delete(url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        (_, b) => {
            let mut r = agent.post(url).header("Content-Type", "application/json");
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.send(b.unwrap_or(""))
        }
    }
    .unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, text)
}

pub fn info(id: &str, service: &str) -> AgentInfo {
    serde_json::from_value(serde_json::json!({
        "id": id, "service": service, "version": "1.0.0", "commit": "abc123",
        "host": "test-host", "pid": 4242, "labels": {"region": "eu"},
        "started": "2026-01-01T00:00:00Z"
    }))
    .unwrap()
}

pub fn response(rule: &str, agent: &str, n: u32) -> Response {
    serde_json::from_value(serde_json::json!({
        "rule": rule, "agent": agent, "service": "checkout", "time": "2026-01-01T00:00:00Z",
        "thread": "main", "location": {"file": "src/cart.rs", "line": 42, "function": "cart::add"},
        "message": format!("hit {n}"),
        "frames": [{"function": "cart::add", "file": "src/cart.rs", "line": 42}],
        "locals": {"n": {"type": "u32", "value": n}}
    }))
    .unwrap()
}

/// An agent speaking the wire protocol by hand.
pub struct FakeAgent {
    pub ws: WebSocket<TcpStream>,
}

impl FakeAgent {
    pub fn connect(addr: SocketAddr, token: &str, id: &str, service: &str) -> FakeAgent {
        let mut agent = Self::open(addr, token);
        agent.send(&AgentMessage::Hello {
            agent: info(id, service),
        });
        agent
    }

    /// A WebSocket without a hello.
    pub fn open(addr: SocketAddr, token: &str) -> FakeAgent {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut req = format!("ws://{addr}/agent/v1/ws")
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("Authorization", format!("Bearer {token}").parse().unwrap());
        let (ws, _) = tungstenite::client::client(req, stream).unwrap();
        FakeAgent { ws }
    }

    pub fn send(&mut self, msg: &AgentMessage) {
        self.ws
            .send(Message::text(serde_json::to_string(msg).unwrap()))
            .unwrap();
    }

    /// The next server message (skipping control frames); panics after 10 s.
    pub fn recv(&mut self) -> ServerMessage {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match self.ws.read().unwrap() {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Close(f) => panic!("closed: {f:?}"),
                _ => {}
            }
        }
        panic!("no message in 10 s")
    }

    /// The ids of the next `rules` message.
    pub fn recv_rule_ids(&mut self) -> Vec<String> {
        match self.recv() {
            ServerMessage::Rules { rules } => rules.into_iter().map(|r| r.id).collect(),
            other => panic!("expected rules, got {other:?}"),
        }
    }
}

/// Polls `f` until it returns Some, for at most 10 s.
pub fn eventually<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "condition not met within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// POSTs a body of `len` bytes to `path` over a raw connection; returns the status and
/// the whole answer. The headers go first, and the server may answer (413) before the body
/// is sent, which a normal client sees as a broken upload; the body follows only if it has not.
pub fn post_sized(addr: SocketAddr, path: &str, token: &str, len: usize) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    if let Ok(n) = stream.read(&mut buf) {
        answer.extend_from_slice(&buf[..n]);
    }
    if answer.is_empty() {
        // No early answer: send the body (the server may still cut it short).
        let chunk = vec![b'0'; 64 << 10];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            if stream.write_all(&chunk[..n]).is_err() {
                break;
            }
            left -= n;
        }
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
    }
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

/// A plain HTTP/1.1 receiver on a loopback port (keep-alive, one thread a connection):
/// `answer` gets each request's body and gives the status to answer. Returns its base URL.
pub fn http_receiver(answer: impl Fn(&[u8]) -> u16 + Send + Sync + 'static) -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answer = std::sync::Arc::new(answer);
    std::thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            let answer = answer.clone();
            std::thread::spawn(move || {
                let Ok(read) = conn.try_clone() else { return };
                let mut reader = BufReader::new(read);
                let mut out = conn;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut len = 0usize;
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        if h.trim().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; len];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let code = answer(&body);
                    let reply = format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\n\r\n");
                    if out.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}
