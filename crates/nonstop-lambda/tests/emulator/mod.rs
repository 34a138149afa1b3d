//! A local emulator of the AWS Lambda Runtime API, written from AWS's documented endpoints
//! (the AWS Runtime Interface Emulator is not in a package registry this project can use):
//!
//! - `GET /2018-06-01/runtime/invocation/next` waits for an event and answers it with the
//!   headers `Lambda-Runtime-Aws-Request-Id`, `-Deadline-Ms`, `-Invoked-Function-Arn`,
//!   `-Trace-Id`;
//! - `POST /2018-06-01/runtime/invocation/{id}/response` and `…/{id}/error` take the result
//!   (`202 Accepted`);
//! - `POST /2018-06-01/runtime/init/error` takes an init failure.
//!
//! And the Extensions API, on the same address as Lambda has it:
//!
//! - `POST /2020-01-01/extension/register` with the header `Lambda-Extension-Name` and the
//!   body `{"events": ["INVOKE", "SHUTDOWN"]}` answers `200` with the header
//!   `Lambda-Extension-Identifier` and `{"functionName", "functionVersion", "handler"}`;
//! - `GET /2020-01-01/extension/event/next` with `Lambda-Extension-Identifier` waits for the
//!   extension's next event: `{"eventType": "INVOKE", "deadlineMs", "requestId",
//!   "invokedFunctionArn", "tracing": {"type", "value"}}` for every invocation handed to the
//!   runtime, or `{"eventType": "SHUTDOWN", "shutdownReason", "deadlineMs"}` after
//!   [`RuntimeApi::shutdown`]; without a known identifier it answers `403`.
//!
//! As on Lambda, an invocation starts only when every registered extension waits in
//! `event/next`: the previous invocation is over once the runtime and all the extensions have
//! asked for their next event (that is when Lambda would freeze the environment).
//!
//! HTTP/1.1 with keep-alive, one thread per connection, as the runtime's client needs.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What the function posted for one invocation.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `response` or `error`.
    pub kind: String,
    pub body: Vec<u8>,
    /// When the event was handed out by `/next`, and when the result came.
    pub handed_at: Instant,
    pub posted_at: Instant,
}

#[derive(Default)]
struct State {
    queue: VecDeque<(String, Vec<u8>)>,
    handed: BTreeMap<String, Instant>,
    outcomes: BTreeMap<String, Outcome>,
    /// How many `/next` calls arrived.
    next_calls: u64,
    init_error: Option<String>,
    next_id: u64,
    /// Registered extensions by identifier.
    extensions: BTreeMap<String, Extension>,
    shutdown: bool,
}

/// One registered extension.
#[derive(Debug, Clone, Default)]
pub struct Extension {
    pub name: String,
    pub events: Vec<String>,
    /// Events not yet taken by `event/next`.
    queue: VecDeque<String>,
    /// How many `event/next` calls arrived.
    pub next_calls: u64,
    /// Whether it waits in `event/next` now.
    waiting: bool,
}

fn epoch_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

const ARN: &str = "arn:aws:lambda:eu-west-1:123456789012:function:greeter";

/// The emulator, listening on a loopback port until the test ends.
#[derive(Clone)]
pub struct RuntimeApi {
    /// `HOST:PORT`, the value of `AWS_LAMBDA_RUNTIME_API`.
    pub address: String,
    shared: Arc<(Mutex<State>, Condvar)>,
}

impl RuntimeApi {
    pub fn start() -> RuntimeApi {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let api = RuntimeApi {
            address,
            shared: Arc::new((Mutex::new(State::default()), Condvar::new())),
        };
        let server = api.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                let server = server.clone();
                std::thread::spawn(move || server.serve(conn));
            }
        });
        api
    }

    /// Queues an event; returns its request id.
    pub fn invoke(&self, payload: &[u8]) -> String {
        let (lock, changed) = &*self.shared;
        let mut st = lock.lock().unwrap();
        st.next_id += 1;
        let id = format!("req-{:04}", st.next_id);
        st.queue.push_back((id.clone(), payload.to_vec()));
        changed.notify_all();
        id
    }

    /// Waits (at most `within`) for the result of invocation `id`.
    pub fn outcome(&self, id: &str, within: Duration) -> Outcome {
        self.wait(&format!("the result of {id}"), within, |st| {
            st.outcomes.get(id).cloned()
        })
    }

    /// Waits until `/next` has been called `n` times (the function asks for event `n`).
    pub fn wait_for_next_call(&self, n: u64, within: Duration) {
        self.wait(&format!("/next call {n}"), within, |st| {
            (st.next_calls >= n).then_some(())
        })
    }

    /// Waits for the first extension's registration; returns it.
    pub fn wait_for_extension(&self, within: Duration) -> Extension {
        self.wait("an extension's registration", within, |st| {
            st.extensions.values().next().cloned()
        })
    }

    /// Waits until the extensions' `event/next` has been called `n` times (each one's).
    pub fn wait_for_extension_next_call(&self, n: u64, within: Duration) {
        self.wait(
            &format!("the extensions' event/next call {n}"),
            within,
            |st| {
                (!st.extensions.is_empty() && st.extensions.values().all(|e| e.next_calls >= n))
                    .then_some(())
            },
        )
    }

    /// Sends `SHUTDOWN` (with `reason`: `spindown`, `timeout` or `failure`) to the extensions
    /// that registered for it, with a deadline `budget` from now; returns that deadline.
    pub fn shutdown(&self, reason: &str, budget: Duration) -> Instant {
        let (lock, changed) = &*self.shared;
        let mut st = lock.lock().unwrap();
        st.shutdown = true;
        let deadline = epoch_ms() + budget.as_millis();
        let event = serde_json::json!({
            "eventType": "SHUTDOWN",
            "shutdownReason": reason,
            "deadlineMs": deadline as u64,
        })
        .to_string();
        for e in st.extensions.values_mut() {
            if e.events.iter().any(|k| k == "SHUTDOWN") {
                e.queue.push_back(event.clone());
            }
        }
        changed.notify_all();
        Instant::now() + budget
    }

    pub fn next_calls(&self) -> u64 {
        self.shared.0.lock().unwrap().next_calls
    }

    pub fn init_error(&self) -> Option<String> {
        self.shared.0.lock().unwrap().init_error.clone()
    }

    fn wait<T>(&self, what: &str, within: Duration, f: impl Fn(&State) -> Option<T>) -> T {
        let (lock, changed) = &*self.shared;
        let deadline = Instant::now() + within;
        let mut st = lock.lock().unwrap();
        loop {
            if let Some(v) = f(&st) {
                return v;
            }
            if let Some(e) = &st.init_error {
                panic!("{what}: the function failed to start: {e}");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{what}: not within {within:?}");
            st = changed.wait_timeout(st, left).unwrap().0;
        }
    }

    fn serve(&self, conn: TcpStream) {
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut out = conn;
        while let Some((method, path, headers, body)) = read_request(&mut reader) {
            let answer = if let Some(rest) = path.strip_prefix("/2020-01-01/extension/") {
                self.extension_answer(&method, rest, &headers, &body)
            } else {
                self.answer(&method, &path, body)
            };
            if out.write_all(&answer).is_err() {
                return;
            }
        }
    }

    fn extension_answer(
        &self,
        method: &str,
        rest: &str,
        headers: &BTreeMap<String, String>,
        body: &[u8],
    ) -> Vec<u8> {
        let (lock, changed) = &*self.shared;
        match (method, rest) {
            ("POST", "register") => {
                let Some(name) = headers.get("lambda-extension-name") else {
                    return error(400, "InvalidRequest", "missing Lambda-Extension-Name");
                };
                let Ok(request) = serde_json::from_slice::<serde_json::Value>(body) else {
                    return error(400, "InvalidRequest", "the body is not JSON");
                };
                let events: Vec<String> = request["events"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|e| e.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                let mut st = lock.lock().unwrap();
                let id = format!("ext-{:04}", st.extensions.len() + 1);
                st.extensions.insert(
                    id.clone(),
                    Extension {
                        name: name.clone(),
                        events,
                        ..Extension::default()
                    },
                );
                changed.notify_all();
                let body = serde_json::json!({
                    "functionName": "greeter-fn",
                    "functionVersion": "7",
                    "handler": "bootstrap"
                })
                .to_string();
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                     Lambda-Extension-Identifier: {id}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes()
            }
            ("GET", "event/next") => {
                let id = headers
                    .get("lambda-extension-identifier")
                    .cloned()
                    .unwrap_or_default();
                let mut st = lock.lock().unwrap();
                let Some(e) = st.extensions.get_mut(&id) else {
                    return error(403, "Extension.Forbidden", "unknown extension identifier");
                };
                e.next_calls += 1;
                e.waiting = true;
                changed.notify_all();
                let event = loop {
                    let e = st.extensions.get_mut(&id).unwrap();
                    if let Some(event) = e.queue.pop_front() {
                        e.waiting = false;
                        break event;
                    }
                    st = changed.wait(st).unwrap();
                };
                changed.notify_all();
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                     Lambda-Extension-Event-Identifier: evt-{}\r\n\r\n{event}",
                    event.len(),
                    epoch_ms()
                )
                .into_bytes()
            }
            _ => not_found(),
        }
    }

    fn answer(&self, method: &str, path: &str, body: Vec<u8>) -> Vec<u8> {
        let (lock, changed) = &*self.shared;
        let rest = path.strip_prefix("/2018-06-01/runtime/").unwrap_or("");
        match (method, rest) {
            ("GET", "invocation/next") => {
                let mut st = lock.lock().unwrap();
                st.next_calls += 1;
                changed.notify_all();
                // The next invocation starts once every extension asked for its next event.
                let (id, payload) = loop {
                    let extensions_ready = st.extensions.values().all(|e| e.waiting);
                    if extensions_ready
                        && !st.shutdown
                        && let Some(e) = st.queue.pop_front()
                    {
                        break e;
                    }
                    st = changed.wait(st).unwrap();
                };
                st.handed.insert(id.clone(), Instant::now());
                let deadline = epoch_ms() + 30_000;
                let invoke = serde_json::json!({
                    "eventType": "INVOKE",
                    "deadlineMs": deadline as u64,
                    "requestId": id,
                    "invokedFunctionArn": ARN,
                    "tracing": {
                        "type": "X-Amzn-Trace-Id",
                        "value": "Root=1-00000000-000000000000000000000000;Sampled=0"
                    }
                })
                .to_string();
                for e in st.extensions.values_mut() {
                    if e.events.iter().any(|k| k == "INVOKE") {
                        e.queue.push_back(invoke.clone());
                    }
                }
                changed.notify_all();
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                     Lambda-Runtime-Aws-Request-Id: {id}\r\nLambda-Runtime-Deadline-Ms: {deadline}\r\n\
                     Lambda-Runtime-Invoked-Function-Arn: {ARN}\r\n\
                     Lambda-Runtime-Trace-Id: Root=1-00000000-000000000000000000000000;Sampled=0\r\n\r\n",
                    payload.len()
                );
                [head.into_bytes(), payload].concat()
            }
            ("POST", "init/error") => {
                let mut st = lock.lock().unwrap();
                st.init_error = Some(String::from_utf8_lossy(&body).into_owned());
                changed.notify_all();
                accepted()
            }
            ("POST", invocation) => {
                let Some((id, kind)) = invocation
                    .strip_prefix("invocation/")
                    .and_then(|r| r.split_once('/'))
                else {
                    return not_found();
                };
                let mut st = lock.lock().unwrap();
                let Some(handed_at) = st.handed.get(id).copied() else {
                    return not_found();
                };
                st.outcomes.insert(
                    id.to_owned(),
                    Outcome {
                        kind: kind.to_owned(),
                        body,
                        handed_at,
                        posted_at: Instant::now(),
                    },
                );
                changed.notify_all();
                accepted()
            }
            _ => not_found(),
        }
    }
}

fn accepted() -> Vec<u8> {
    let body = r#"{"status":"OK"}"#;
    format!(
        "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn error(status: u16, kind: &str, message: &str) -> Vec<u8> {
    let body = serde_json::json!({"errorMessage": message, "errorType": kind}).to_string();
    format!(
        "HTTP/1.1 {status} Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn not_found() -> Vec<u8> {
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec()
}

/// A request: method, path, headers (names in lower case), body.
type Request = (String, String, BTreeMap<String, String>, Vec<u8>);

/// Reads one request (`Content-Length` or chunked body); `None` at the end of the connection.
fn read_request(r: &mut impl BufRead) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut words = line.split_whitespace();
    let method = words.next()?.to_owned();
    let path = words.next()?.to_owned();
    let mut length = 0;
    let mut chunked = false;
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = v.trim().parse().ok()?,
            "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        body.resize(length, 0);
        r.read_exact(&mut body).ok()?;
    }
    Some((method, path, headers, body))
}

/// The CLI and server (`nonstop`) and the example functions (`greeter`, `http_greeter`),
/// built once per process into the tests' side target dir: one build for every test file
/// and the bench, so the shared crates compile once, with the profile of whoever asks
/// (release under `cargo bench`, debug under `cargo test`).
pub fn side_build() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            nonstop_testkit::cargo_build_aside(
                "tests",
                &[
                    "-p",
                    "nonstop",
                    "--bin",
                    "nonstop",
                    "-p",
                    "nonstop-lambda",
                    "--example",
                    "greeter",
                    "--example",
                    "http_greeter",
                ],
            )
        })
        .clone()
}
