//! nonstop on AWS Lambda: live breakpoints in a Rust function that keeps answering.
//!
//! # Overview
//! - [`NonstopLayer`]: a tower `Layer` for `lambda_runtime`'s [`Runtime`](lambda_runtime::Runtime).
//!   It starts the nonstop agent in the function's process with the HTTP link
//!   (`NONSTOP_LINK=http`), the service named `AWS_LAMBDA_FUNCTION_NAME` and the version
//!   `AWS_LAMBDA_FUNCTION_VERSION`.
//! - [`NonstopService`]: what the layer wraps the runtime's service in. Per invocation it
//!   1. brings the rules up to date when they are older than [`NonstopLayer::rules_max_age`]
//!      (default [`DEFAULT_RULES_MAX_AGE`]), waiting for the server at most
//!      [`NonstopLayer::refresh_wait`] (default [`DEFAULT_REFRESH_WAIT`]);
//!   2. runs the function, whose response the runtime posts to the Runtime API;
//!   3. then sends what the invocation captured, at most [`NonstopLayer::flush_timeout`]
//!      (default [`DEFAULT_FLUSH_TIMEOUT`]), before the runtime asks for the next event, so
//!      nothing captured waits in a frozen process and the caller waits for nothing.
//!
//! The layer wraps the runtime's response-posting service (it is outside it), so step 3
//! runs after `POST /runtime/invocation/{id}/response` has returned: the runtime's loop
//! only fetches `/invocation/next` once this service's future completes.
//!
//! # With the extension
//! When the layer zip's extension (`nonstop lambda-extension`, installed as
//! `/opt/extensions/nonstop` by `nonstop lambda package`) runs beside the function, it writes
//! its loopback address to `$NONSTOP_EXTENSION_FILE` (default [`DEFAULT_EXTENSION_FILE`]). The
//! layer reads it once at start and points the agent's HTTP link at the extension instead of
//! the server: refreshing the rules is then a loopback round trip answered from the
//! extension's cache (which the extension keeps fresh from the server in the background), the
//! flush after the response hands the captures to the extension, and a last
//! `POST /extension/v1/done?request=ID` tells the extension the invocation is over, so it ships
//! them to the server before the environment freezes. Without the file (or with nothing
//! listening there) the agent speaks to `NONSTOP_SERVER` itself, as described above.
//!
//! Configured by the agent's environment (`NONSTOP_SERVER`, `NONSTOP_TOKEN`,
//! `NONSTOP_LABELS`, `NONSTOP_DISABLE`, …; see `nonstop_agent::config`). Without
//! `NONSTOP_SERVER` the layer passes invocations through untouched.
//!
//! # Example
//! ```no_run
//! use lambda_runtime::{service_fn, Error, LambdaEvent, Runtime};
//! use serde_json::Value;
//!
//! async fn handler(event: LambdaEvent<Value>) -> Result<Value, Error> {
//!     Ok(event.payload)
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Error> {
//!     Runtime::new(service_fn(handler))
//!         .layer(nonstop_lambda::NonstopLayer::new())
//!         .run()
//!         .await
//! }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use lambda_runtime::LambdaInvocation;
use lambda_runtime::tower::{Layer, Service};
use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

/// Rules older than this are refreshed at the start of an invocation. Shorter means a new
/// rule reaches a busy function sooner, at the cost of more polls (a `304` each).
pub const DEFAULT_RULES_MAX_AGE: Duration = Duration::from_secs(1);
/// The longest an invocation waits for a rules refresh. A slower server answer is used by
/// the next invocation instead.
pub const DEFAULT_REFRESH_WAIT: Duration = Duration::from_millis(20);
/// The longest the layer waits, after the response is posted, for captured responses to
/// reach the server. Only the next event's fetch waits; what is not sent stays queued.
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_millis(500);

/// Where the extension writes its address when `NONSTOP_EXTENSION_FILE` is not set.
pub const DEFAULT_EXTENSION_FILE: &str = "/tmp/nonstop-extension";
/// The longest the layer waits for the extension's local answers (its address check at
/// start, the end-of-invocation notice).
const EXTENSION_TIMEOUT: Duration = Duration::from_millis(100);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The layer: `Runtime::new(service_fn(handler)).layer(NonstopLayer::new())`.
#[derive(Debug, Clone, Copy)]
pub struct NonstopLayer {
    settings: Settings,
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    rules_max_age: Duration,
    refresh_wait: Duration,
    flush_timeout: Duration,
}

impl Default for NonstopLayer {
    fn default() -> NonstopLayer {
        NonstopLayer::new()
    }
}

impl NonstopLayer {
    /// The layer with the defaults.
    pub fn new() -> NonstopLayer {
        NonstopLayer {
            settings: Settings {
                rules_max_age: DEFAULT_RULES_MAX_AGE,
                refresh_wait: DEFAULT_REFRESH_WAIT,
                flush_timeout: DEFAULT_FLUSH_TIMEOUT,
            },
        }
    }

    /// Rules older than `age` are refreshed at the start of an invocation.
    pub fn rules_max_age(mut self, age: Duration) -> NonstopLayer {
        self.settings.rules_max_age = age;
        self
    }

    /// The longest an invocation waits for a rules refresh.
    pub fn refresh_wait(mut self, wait: Duration) -> NonstopLayer {
        self.settings.refresh_wait = wait;
        self
    }

    /// The longest the layer waits, after the response is posted, for captured responses
    /// to go out.
    pub fn flush_timeout(mut self, timeout: Duration) -> NonstopLayer {
        self.settings.flush_timeout = timeout;
        self
    }
}

/// The extension's loopback address, when it runs: read from its file, checked by a connect.
fn find_extension() -> Option<SocketAddr> {
    let file = std::env::var_os("NONSTOP_EXTENSION_FILE")
        .filter(|f| !f.is_empty())
        .unwrap_or_else(|| DEFAULT_EXTENSION_FILE.into());
    let text = std::fs::read_to_string(file).ok()?;
    let addr: SocketAddr = text.trim().strip_prefix("http://")?.parse().ok()?;
    if !addr.ip().is_loopback() {
        return None;
    }
    TcpStream::connect_timeout(&addr, EXTENSION_TIMEOUT).ok()?;
    Some(addr)
}

/// Starts the agent (once per process) as a Lambda function's agent, speaking to the
/// extension when there is one.
fn start_agent(extension: Option<SocketAddr>) -> bool {
    nonstop_agent::start_with(|config| {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        config.link = nonstop_agent::LinkKind::Http;
        if let Some(addr) = extension {
            config.server = Some(format!("http://{addr}"));
        }
        if var("NONSTOP_SERVICE").is_none()
            && let Some(name) = var("AWS_LAMBDA_FUNCTION_NAME")
        {
            config.service = name;
        }
        if config.version.is_none() {
            config.version = var("AWS_LAMBDA_FUNCTION_VERSION");
        }
    })
}

impl<S> Layer<S> for NonstopLayer {
    type Service = NonstopService<S>;

    fn layer(&self, inner: S) -> NonstopService<S> {
        // During the init phase: the agent's thread reads the debug info and says hello
        // while the runtime fetches the first event.
        let extension = find_extension();
        let running = start_agent(extension);
        NonstopService {
            inner,
            settings: self.settings,
            running,
            extension: extension
                .filter(|_| running)
                .map(|addr| Arc::new(Extension::new(addr))),
        }
    }
}

/// The service [`NonstopLayer`] makes.
#[derive(Debug, Clone)]
pub struct NonstopService<S> {
    inner: S,
    settings: Settings,
    running: bool,
    extension: Option<Arc<Extension>>,
}

impl<S> Service<LambdaInvocation> for NonstopService<S>
where
    S: Service<LambdaInvocation, Response = (), Error = BoxError>,
{
    type Response = ();
    type Error = BoxError;
    type Future = Invocation<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, invocation: LambdaInvocation) -> Invocation<S::Future> {
        if self.running {
            nonstop_agent::refresh_rules(self.settings.rules_max_age, self.settings.refresh_wait);
        }
        let done = self
            .extension
            .clone()
            .map(|e| (e, invocation.context.request_id.clone()));
        Invocation {
            inner: Box::pin(self.inner.call(invocation)),
            flush: self.running.then_some(self.settings.flush_timeout),
            done,
        }
    }
}

/// One invocation: the function and its response post, then the flush.
pub struct Invocation<F> {
    inner: Pin<Box<F>>,
    flush: Option<Duration>,
    /// The extension to tell, and this invocation's request id.
    done: Option<(Arc<Extension>, String)>,
}

impl<F> Future for Invocation<F>
where
    F: Future<Output = Result<(), BoxError>>,
{
    type Output = Result<(), BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = std::task::ready!(self.inner.as_mut().poll(cx));
        // The response is posted. The runtime fetches the next event only after this
        // returns, so a bounded wait here costs the caller nothing; the sequential runtime
        // has nothing else for this thread to do meanwhile.
        if let Some(timeout) = self.flush.take() {
            nonstop_agent::flush(timeout);
        }
        if let Some((extension, request)) = self.done.take() {
            extension.done(&request);
        }
        Poll::Ready(result)
    }
}

/// The layer's side of the extension: one kept-alive loopback connection.
#[derive(Debug)]
struct Extension {
    addr: SocketAddr,
    conn: Mutex<Option<TcpStream>>,
}

impl Extension {
    fn new(addr: SocketAddr) -> Extension {
        Extension {
            addr,
            conn: Mutex::new(None),
        }
    }

    /// Tells the extension invocation `request` is over (its captures were flushed to it).
    /// Bounded by [`EXTENSION_TIMEOUT`]; a failure only means the extension ships later.
    fn done(&self, request: &str) {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let message = format!(
            "POST /extension/v1/done?request={} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\r\n",
            encode(request),
            self.addr
        );
        for _ in 0..2 {
            let stream = match conn.take() {
                Some(s) => s,
                None => match self.connect() {
                    Ok(s) => s,
                    Err(_) => return,
                },
            };
            if let Ok(s) = exchange(stream, message.as_bytes()) {
                *conn = Some(s);
                return;
            }
        }
    }

    fn connect(&self) -> std::io::Result<TcpStream> {
        let s = TcpStream::connect_timeout(&self.addr, EXTENSION_TIMEOUT)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(EXTENSION_TIMEOUT))?;
        s.set_write_timeout(Some(EXTENSION_TIMEOUT))?;
        Ok(s)
    }
}

/// Sends a request and reads an answer without a body (the extension's `204`).
fn exchange(mut s: TcpStream, request: &[u8]) -> std::io::Result<TcpStream> {
    s.write_all(request)?;
    let mut got = Vec::with_capacity(128);
    let mut buf = [0u8; 256];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf)?;
        if n == 0 || got.len() > 4096 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&buf[..n]);
    }
    if got.starts_with(b"HTTP/1.1 2") {
        Ok(s)
    } else {
        Err(std::io::Error::other("the extension refused"))
    }
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
