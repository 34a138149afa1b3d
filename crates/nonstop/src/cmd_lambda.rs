//! `nonstop lambda-extension` (the Lambda extension, run by Lambda from `/opt/extensions/nonstop`)
//! and `nonstop lambda package` (the layer zip that installs it).
//!
//! # The extension
//! Lambda starts it before the function's runtime. It
//! 1. listens on a loopback port and writes its address (`http://127.0.0.1:PORT`) to the file
//!    `$NONSTOP_EXTENSION_FILE` (default [`DEFAULT_EXTENSION_FILE`]), where the function's
//!    `NonstopLayer` finds it and points the agent's HTTP link at it instead of the server;
//! 2. registers with the Extensions API (`POST /2020-01-01/extension/register`, events
//!    `INVOKE` and `SHUTDOWN`), then loops on `GET /2020-01-01/extension/event/next`.
//!
//! To the agent it looks like the server's agent routes: the agent's first batch (its hello)
//! is passed to the server and answered with the server's answer; later batches are queued
//! and answered at once with the cached rule set, and `GET /agent/v1/poll` is answered from
//! the cache (`304` when the agent's `If-None-Match` matches). A poller thread keeps each
//! agent's cached rules fresh from the server (`If-None-Match`, every [`POLL_EVERY`], and at
//! once on an `INVOKE` when the last poll is older than that), while the environment is thawed.
//!
//! After an `INVOKE`, when a layer connected to it (else no notice would come) and one of its
//! agents holds a rule or a batch is queued (else nothing can come), the extension
//! waits for the layer's `POST /extension/v1/done?request=ID`
//! (sent after the function's response was posted and its captures flushed to the extension;
//! bounded by the invocation's deadline), sends the queued batches to the server, and only then
//! asks for the next event: Lambda freezes the environment once the runtime and every extension
//! wait for their next event, so nothing captured waits in a frozen process. On `SHUTDOWN` it
//! sends what is still queued within the shutdown deadline, less [`SHUTDOWN_MARGIN`], and exits.

use anyhow::{Context, Result, anyhow, bail};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// Where the extension writes its address when `NONSTOP_EXTENSION_FILE` is not set (the layer
/// reads the same file; `/tmp` is shared by the function and its extensions).
pub const DEFAULT_EXTENSION_FILE: &str = "/tmp/nonstop-extension";
/// How often the cached rules are polled from the server while the environment runs.
pub const POLL_EVERY: Duration = Duration::from_millis(500);
/// Deadline of one request to the server. A shipment that fails stays queued for the next
/// invocation or the shutdown.
pub const SERVER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a batch may wait for the background shipper while the environment is thawed.
pub const SEND_EVERY: Duration = Duration::from_millis(100);
/// The background shipper's pause after the server failed it.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);
/// Time kept in hand before the shutdown deadline, when Lambda kills the extension.
pub const SHUTDOWN_MARGIN: Duration = Duration::from_millis(200);
/// Batches held while the server is away; past this the oldest are dropped.
pub const QUEUE_BOUND: usize = 1000;
/// Largest request body the extension takes from the agent.
const MAX_BODY: usize = 8 << 20;

/// `nonstop lambda-extension`.
#[derive(Debug, clap::Args)]
pub struct ExtensionArgs {
    /// The nonstop server the agents' batches go to.
    #[arg(long, env = "NONSTOP_SERVER")]
    server: String,
    /// The agent token (agent.token in the server's data folder).
    #[arg(long, env = "NONSTOP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The Extensions API (`host:port`), set by Lambda.
    #[arg(long, env = "AWS_LAMBDA_RUNTIME_API")]
    runtime_api: String,
    /// The file the extension's address is written to, where the layer looks for it.
    #[arg(long, env = "NONSTOP_EXTENSION_FILE", default_value = DEFAULT_EXTENSION_FILE)]
    address_file: PathBuf,
    /// The name registered with Lambda: the extension's file name in /opt/extensions.
    #[arg(long, default_value = "nonstop")]
    name: String,
}

/// `nonstop lambda …`.
#[derive(Debug, clap::Args)]
pub struct LambdaArgs {
    #[command(subcommand)]
    command: LambdaCommand,
}

#[derive(Debug, clap::Subcommand)]
enum LambdaCommand {
    /// Write a Lambda layer zip: `extensions/nonstop` (this binary, the extension) and
    /// `lib/libnonstop_agent.so` (for LD_PRELOAD in functions not written in Rust).
    Package {
        /// The zip to write.
        #[arg(long, value_name = "FILE.zip")]
        out: PathBuf,
    },
}

pub fn run_lambda(args: LambdaArgs) -> Result<ExitCode> {
    match args.command {
        LambdaCommand::Package { out } => {
            let exe = std::env::current_exe().context("cannot find the nonstop executable")?;
            let lib = crate::cmd_run::find_agent_library()?;
            package(&exe, &lib, &out)?;
            eprintln!(
                "nonstop: wrote {} (extensions/nonstop, lib/{})",
                out.display(),
                crate::cmd_run::AGENT_LIB_NAME
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Writes the layer zip: Lambda unpacks a layer into `/opt`, starts every executable in
/// `/opt/extensions`, and `/opt/lib` is on the library path.
pub fn package(exe: &Path, lib: &Path, out: &Path) -> Result<()> {
    use zip::write::SimpleFileOptions;
    let file =
        std::fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(file));
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    zip.add_directory("extensions/", options.unix_permissions(0o755))?;
    zip.add_directory("lib/", options.unix_permissions(0o755))?;
    for (name, path, mode) in [
        ("extensions/nonstop", exe, 0o755),
        (
            &*format!("lib/{}", crate::cmd_run::AGENT_LIB_NAME),
            lib,
            0o755,
        ),
    ] {
        let mut input =
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        zip.start_file(name, options.unix_permissions(mode))?;
        std::io::copy(&mut input, &mut zip)
            .with_context(|| format!("cannot write {name} into {}", out.display()))?;
    }
    zip.finish()?.flush()?;
    Ok(())
}

/// One agent's rules as the server last gave them.
#[derive(Default)]
struct Cached {
    etag: Option<String>,
    body: Vec<u8>,
    /// The set holds a rule: the agent may capture, so an invocation's end is awaited.
    any_rule: bool,
}

impl Cached {
    fn new(etag: Option<String>, body: Vec<u8>) -> Cached {
        let any_rule = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("rules")?.as_array().map(|r| !r.is_empty()))
            // A set the extension cannot read might hold rules: await as if it did.
            .unwrap_or(true);
        Cached {
            etag,
            body,
            any_rule,
        }
    }
}

#[derive(Default)]
struct State {
    /// Per agent id.
    rules: BTreeMap<String, Cached>,
    /// Batches for the server, in order: (agent id, body).
    queue: VecDeque<(String, Vec<u8>)>,
    dropped: u64,
    /// Invocations the layer said it finished: the current one at most, once its `INVOKE` came
    /// (older ids, of invocations not awaited or whose wait timed out, are dropped then).
    done: BTreeSet<String>,
    /// A poll of the server is wanted now.
    poll_asked: bool,
    /// When the poller last started polling the server.
    polled_at: Option<Instant>,
    /// Something connected to the local port: the function's layer found the extension (at
    /// its start, before the first event), so it says when each invocation is done. Without
    /// it (a function without the layer, or an agent under `LD_PRELOAD` that speaks to the
    /// server itself) no notice ever comes, and waiting for one would hold every invocation
    /// until its deadline.
    layer_seen: bool,
    /// Each agent's hello message, sent again if the server forgets the agent.
    hellos: BTreeMap<String, serde_json::Value>,
    phase: Phase,
}

/// Where the extension is in Lambda's lifecycle.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the first event: the function is starting; batches go out in the background.
    #[default]
    Init,
    /// An invocation runs: batches go out in the background and when it is done.
    Invoke,
    /// Waiting for the next event: on Lambda the environment is frozen, so nothing is sent;
    /// what failed waits for the next invocation or the shutdown.
    Idle,
}

struct Extension {
    server: String,
    token: Option<String>,
    http: ureq::Agent,
    state: Mutex<State>,
    /// Signalled when the layer says an invocation is done.
    done_said: Condvar,
    /// Signalled when a poll of the server is asked for (the poller's own, so an invocation's
    /// events wake it only when it has work).
    poll_wanted: Condvar,
    /// Held while batches go out, so they leave once each and in order.
    shipping: Mutex<()>,
    /// The last problem printed.
    logged: Mutex<Option<String>>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the server answered.
struct Answer {
    status: u16,
    etag: Option<String>,
    body: Vec<u8>,
}

impl Extension {
    fn server_request(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<&[u8]>,
        etag: Option<&str>,
        timeout: Duration,
    ) -> Result<Answer> {
        let url = format!("{}{path_and_query}", self.server);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let timeout = Some(timeout.clamp(Duration::from_millis(1), SERVER_TIMEOUT));
        let mut resp = if method == "GET" {
            let mut req = self.http.get(&url).config().timeout_global(timeout).build();
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            if let Some(tag) = etag {
                req = req.header("If-None-Match", tag);
            }
            req.call()
        } else {
            let mut req = self
                .http
                .post(&url)
                .config()
                .timeout_global(timeout)
                .build()
                .header("Content-Type", "application/json");
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            req.send(body.unwrap_or(&[]))
        }
        .map_err(|e| anyhow!("cannot reach the nonstop server at {} ({e})", self.server))?;
        let status = resp.status().as_u16();
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY as u64)
            .read_to_vec()
            .map_err(|e| anyhow!("reading the server's answer: {e}"))?;
        Ok(Answer { status, etag, body })
    }

    /// Prints a problem once (not again until it changes), and the recovery.
    fn log(&self, problem: Option<String>) {
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        match problem {
            Some(p) if logged.as_deref() != Some(p.as_str()) => {
                eprintln!("nonstop: {p}");
                *logged = Some(p);
            }
            None if logged.take().is_some() => {
                eprintln!("nonstop: reached the nonstop server at {}", self.server);
            }
            _ => {}
        }
    }

    fn remember(&self, agent: &str, a: &Answer) {
        let mut st = lock(&self.state);
        match a.status {
            200 => {
                st.rules.insert(
                    agent.to_owned(),
                    Cached::new(a.etag.clone(), a.body.clone()),
                );
            }
            // The server forgot the agent: its next poll says so and it says hello again.
            404 => {
                st.rules.remove(agent);
            }
            _ => {}
        }
    }

    /// Polls the server for every known agent's rules.
    fn poll_all(&self) {
        let agents: Vec<(String, Option<String>)> = lock(&self.state)
            .rules
            .iter()
            .map(|(id, c)| (id.clone(), c.etag.clone()))
            .collect();
        for (id, etag) in agents {
            let path = format!("/agent/v1/poll?agent={}", encode(&id));
            match self.server_request("GET", &path, None, etag.as_deref(), SERVER_TIMEOUT) {
                Ok(a) => {
                    self.remember(&id, &a);
                    self.log(None);
                }
                Err(e) => self.log(Some(format!("{e:#}; the batches are kept for later"))),
            }
        }
    }

    /// Sends the queued batches, in order, until `until`; what fails stays queued. Returns
    /// whether the queue is empty.
    fn ship(&self, until: Instant) -> bool {
        let _one_at_a_time = self.shipping.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let Some((agent, body)) = lock(&self.state).queue.front().cloned() else {
                return true;
            };
            if Instant::now() >= until {
                return false;
            }
            let path = format!("/agent/v1/responses?agent={}", encode(&agent));
            let left = || until.saturating_duration_since(Instant::now());
            let mut sent = self.server_request("POST", &path, Some(&body), None, left());
            if sent.is_err() && !left().is_zero() {
                // Once more at once: a kept-alive connection may be one the server closed.
                sent = self.server_request("POST", &path, Some(&body), None, left());
            }
            if sent.as_ref().is_ok_and(|a| a.status == 404) {
                // The server forgot the agent (a new data folder): say hello for it first.
                let hello = lock(&self.state).hellos.get(&agent).cloned();
                if let Some(body) = hello.and_then(|h| with_hello(h, &body)) {
                    sent = self.server_request("POST", &path, Some(&body), None, left());
                }
            }
            match sent {
                Ok(a) if (200..300).contains(&a.status) => {
                    self.remember(&agent, &a);
                    self.log(None);
                    lock(&self.state).queue.pop_front();
                }
                Ok(a) if a.status == 400 => {
                    // The server will never take it: drop it rather than block the rest.
                    eprintln!(
                        "nonstop: the server refused a batch: {}",
                        String::from_utf8_lossy(&a.body[..a.body.len().min(300)])
                    );
                    let mut st = lock(&self.state);
                    st.queue.pop_front();
                    st.dropped += 1;
                }
                Ok(a) => {
                    self.remember(&agent, &a);
                    eprintln!(
                        "nonstop: the server answered {} to a batch; kept for later",
                        a.status
                    );
                    return false;
                }
                Err(e) => {
                    self.log(Some(format!("{e:#}; the batches are kept for later")));
                    return false;
                }
            }
        }
    }

    /// One request of the agent or the layer on the local port.
    fn answer(&self, req: &Request) -> LocalAnswer {
        let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
        let param = |name: &str| {
            query.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k == name).then(|| decode(v))
            })
        };
        match (req.method.as_str(), path) {
            ("POST", "/agent/v1/responses") => {
                let hello = batch_has_hello(&req.body);
                let known = param("agent").filter(|id| lock(&self.state).rules.contains_key(id));
                match (hello, known) {
                    (false, Some(agent)) => {
                        let mut st = lock(&self.state);
                        if st.queue.len() >= QUEUE_BOUND {
                            st.queue.pop_front();
                            st.dropped += 1;
                        }
                        st.queue.push_back((agent.clone(), req.body.clone()));
                        let c = &st.rules[&agent];
                        LocalAnswer::rules(c)
                    }
                    // A hello (or an agent we hold no rules for) goes to the server now,
                    // after what is queued, and the server's answer goes back.
                    _ => {
                        self.ship(Instant::now() + SERVER_TIMEOUT);
                        if let Some((id, hello)) = hello_of(&req.body) {
                            lock(&self.state).hellos.insert(id, hello);
                        }
                        match self.server_request(
                            "POST",
                            &req.target,
                            Some(&req.body),
                            None,
                            SERVER_TIMEOUT,
                        ) {
                            Ok(a) => {
                                if let Some(id) = hello_id(&req.body).or_else(|| param("agent")) {
                                    self.remember(&id, &a);
                                }
                                LocalAnswer {
                                    status: a.status,
                                    etag: a.etag,
                                    body: a.body,
                                }
                            }
                            Err(e) => LocalAnswer::error(502, &format!("{e:#}")),
                        }
                    }
                }
            }
            ("GET", "/agent/v1/poll") => {
                let st = lock(&self.state);
                match param("agent").and_then(|id| st.rules.get(&id)) {
                    Some(c) if c.etag.is_some() && c.etag == req.if_none_match => LocalAnswer {
                        status: 304,
                        etag: c.etag.clone(),
                        body: Vec::new(),
                    },
                    Some(c) => LocalAnswer::rules(c),
                    None => LocalAnswer::error(404, "unknown agent: POST a hello first"),
                }
            }
            ("POST", "/extension/v1/done") => {
                let mut st = lock(&self.state);
                if let Some(id) = param("request") {
                    st.done.insert(id);
                }
                self.done_said.notify_all();
                LocalAnswer {
                    status: 204,
                    etag: None,
                    body: Vec::new(),
                }
            }
            _ => LocalAnswer::error(404, "no such route on the nonstop extension"),
        }
    }

    /// Waits until the layer says invocation `request` is done, or `until`.
    fn wait_done(&self, request: &str, until: Instant) -> bool {
        let mut st = lock(&self.state);
        loop {
            if st.done.remove(request) {
                return true;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = match self.done_said.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// The background shipper: sends queued batches while the environment is thawed (the
    /// function starting, or an invocation running), at most every [`SEND_EVERY`], and after
    /// a failure every [`RETRY_EVERY`].
    fn shipper(&self) {
        let mut pause = SEND_EVERY;
        loop {
            std::thread::sleep(pause);
            let due = {
                let st = lock(&self.state);
                !st.queue.is_empty() && st.phase != Phase::Idle
            };
            if due {
                pause = if self.ship(Instant::now() + SERVER_TIMEOUT) {
                    SEND_EVERY
                } else {
                    RETRY_EVERY
                };
            }
        }
    }

    fn set_phase(&self, phase: Phase) {
        lock(&self.state).phase = phase;
    }

    /// The poller: every [`POLL_EVERY`], or when asked.
    fn poller(&self) {
        loop {
            {
                let st = lock(&self.state);
                let (mut st, _) = self
                    .poll_wanted
                    .wait_timeout_while(st, POLL_EVERY, |s| !s.poll_asked)
                    .unwrap_or_else(|p| p.into_inner());
                st.poll_asked = false;
                st.polled_at = Some(Instant::now());
            }
            self.poll_all();
        }
    }
}

fn batch_has_hello(body: &[u8]) -> bool {
    hello_id(body).is_some()
}

/// The messages of a batch (an array of messages, or one message).
fn messages(body: &[u8]) -> Option<Vec<serde_json::Value>> {
    match serde_json::from_slice(body).ok()? {
        serde_json::Value::Array(a) => Some(a),
        one => Some(vec![one]),
    }
}

/// The agent id and the hello message in a batch.
fn hello_of(body: &[u8]) -> Option<(String, serde_json::Value)> {
    messages(body)?.into_iter().find_map(|m| {
        if m.get("type")?.as_str()? != "hello" {
            return None;
        }
        let id = m.get("agent")?.get("id")?.as_str()?.to_owned();
        Some((id, m))
    })
}

/// The agent id of a hello in a batch.
fn hello_id(body: &[u8]) -> Option<String> {
    hello_of(body).map(|(id, _)| id)
}

/// The batch with `hello` in front.
fn with_hello(hello: serde_json::Value, body: &[u8]) -> Option<Vec<u8>> {
    let mut all = vec![hello];
    all.extend(messages(body)?);
    serde_json::to_vec(&all).ok()
}

struct LocalAnswer {
    status: u16,
    etag: Option<String>,
    body: Vec<u8>,
}

impl LocalAnswer {
    fn rules(c: &Cached) -> LocalAnswer {
        LocalAnswer {
            status: 200,
            etag: c.etag.clone(),
            body: c.body.clone(),
        }
    }

    fn error(status: u16, message: &str) -> LocalAnswer {
        LocalAnswer {
            status,
            etag: None,
            body: serde_json::json!({ "error": message })
                .to_string()
                .into_bytes(),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            204 => "No Content",
            304 => "Not Modified",
            404 => "Not Found",
            _ => "Error",
        };
        let mut head = format!("HTTP/1.1 {} {reason}\r\n", self.status);
        if let Some(tag) = &self.etag {
            head.push_str(&format!("ETag: {tag}\r\n"));
        }
        if !matches!(self.status, 204 | 304) {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                self.body.len()
            ));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if !matches!(self.status, 204 | 304) {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

struct Request {
    method: String,
    target: String,
    if_none_match: Option<String>,
    body: Vec<u8>,
}

/// Reads one request (with a `Content-Length` body); `None` at the end of the connection or
/// on a request this small server does not take.
fn read_request(r: &mut impl BufRead) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut words = line.split_whitespace();
    let method = words.next()?.to_owned();
    let target = words.next()?.to_owned();
    let mut length = 0usize;
    let mut if_none_match = None;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = v.trim().parse().ok()?,
            "if-none-match" => if_none_match = Some(v.trim().to_owned()),
            _ => {}
        }
    }
    if length > MAX_BODY {
        return None;
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        target,
        if_none_match,
        body,
    })
}

fn serve_connection(ext: &Extension, conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut out = conn;
    while let Some(req) = read_request(&mut reader) {
        let answer = ext.answer(&req).bytes();
        if out.write_all(&answer).is_err() {
            return;
        }
    }
}

/// An event from `GET /2020-01-01/extension/event/next`.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    event_type: String,
    #[serde(default)]
    deadline_ms: u64,
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    shutdown_reason: Option<String>,
}

/// An instant for a deadline in milliseconds since the Unix epoch.
fn instant_of(epoch_ms: u64) -> Instant {
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Instant::now() + Duration::from_millis(epoch_ms.saturating_sub(now_ms))
}

pub fn run_extension(args: ExtensionArgs) -> Result<ExitCode> {
    let server = args
        .server
        .split(',')
        .next()
        .unwrap_or_default()
        .trim()
        .trim_end_matches('/')
        .to_owned();
    if server.is_empty() {
        bail!("set NONSTOP_SERVER to the nonstop server's address");
    }
    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(SERVER_TIMEOUT))
        .build()
        .into();
    let ext = Arc::new(Extension {
        server,
        token: args.token.filter(|t| !t.is_empty()),
        http,
        state: Mutex::new(State::default()),
        done_said: Condvar::new(),
        poll_wanted: Condvar::new(),
        shipping: Mutex::new(()),
        logged: Mutex::new(None),
    });

    // The local port first, so the layer finds it as soon as the function starts.
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot listen on a loopback port")?;
    let address = format!("http://{}", listener.local_addr()?);
    let tmp = args.address_file.with_extension("tmp");
    std::fs::write(&tmp, format!("{address}\n"))
        .and_then(|()| std::fs::rename(&tmp, &args.address_file))
        .with_context(|| format!("cannot write {}", args.address_file.display()))?;
    {
        let ext = ext.clone();
        std::thread::Builder::new()
            .name("nonstop-ext-local".into())
            .spawn(move || {
                for conn in listener.incoming().map_while(Result::ok) {
                    lock(&ext.state).layer_seen = true;
                    let ext = ext.clone();
                    let _ = std::thread::Builder::new()
                        .name("nonstop-ext-conn".into())
                        .spawn(move || serve_connection(&ext, conn));
                }
            })?;
    }
    {
        let ext = ext.clone();
        std::thread::Builder::new()
            .name("nonstop-ext-poll".into())
            .spawn(move || ext.poller())?;
    }
    {
        let ext = ext.clone();
        std::thread::Builder::new()
            .name("nonstop-ext-ship".into())
            .spawn(move || ext.shipper())?;
    }

    // The Extensions API: it blocks in event/next while nothing happens.
    let lambda: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let base = format!("http://{}/2020-01-01/extension", args.runtime_api);
    let mut resp = lambda
        .post(format!("{base}/register"))
        .header("Lambda-Extension-Name", &args.name)
        .header("Content-Type", "application/json")
        .send(r#"{"events":["INVOKE","SHUTDOWN"]}"#)
        .map_err(|e| anyhow!("cannot register with the Extensions API at {base}: {e}"))?;
    if !resp.status().is_success() {
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        bail!(
            "the Extensions API refused the registration ({}): {text}",
            resp.status()
        );
    }
    let id = resp
        .headers()
        .get("Lambda-Extension-Identifier")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("the Extensions API gave no Lambda-Extension-Identifier"))?;
    let mut invoked = false;
    loop {
        ext.set_phase(if invoked { Phase::Idle } else { Phase::Init });
        let mut resp = lambda
            .get(format!("{base}/event/next"))
            .header("Lambda-Extension-Identifier", &id)
            .call()
            .map_err(|e| anyhow!("the Extensions API at {base}: {e}"))?;
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| anyhow!("the Extensions API's event: {e}"))?;
        if !resp.status().is_success() {
            bail!("the Extensions API answered {}: {text}", resp.status());
        }
        let event: Event = serde_json::from_str(&text)
            .with_context(|| format!("an event the extension cannot read: {text}"))?;
        let deadline = instant_of(event.deadline_ms);
        match event.event_type.as_str() {
            "INVOKE" => {
                invoked = true;
                let awaited = {
                    let mut st = lock(&ext.state);
                    st.phase = Phase::Invoke;
                    // After a freeze the rules may be stale: poll at once, unless a poll
                    // started within POLL_EVERY (a busy function is not polled per event).
                    if st.polled_at.is_none_or(|t| t.elapsed() >= POLL_EVERY) {
                        st.poll_asked = true;
                        ext.poll_wanted.notify_one();
                    }
                    st.done.retain(|id| event.request_id.as_ref() == Some(id));
                    // The layer's notice is awaited only when it can bring something: a layer
                    // is there and one of its agents holds a rule (else nothing is captured;
                    // a batch of statuses it still sends waits in the queue for the next
                    // invocation or the shutdown).
                    let may_capture = st.rules.values().any(|c| c.any_rule);
                    event
                        .request_id
                        .as_ref()
                        .filter(|_| st.layer_seen && (may_capture || !st.queue.is_empty()))
                        .cloned()
                };
                if let Some(request) = awaited {
                    ext.wait_done(&request, deadline);
                    ext.ship(deadline.max(Instant::now() + SERVER_TIMEOUT));
                }
            }
            "SHUTDOWN" => {
                let until = deadline
                    .checked_sub(SHUTDOWN_MARGIN)
                    .unwrap_or_else(Instant::now);
                let all = ext.ship(until);
                let st = lock(&ext.state);
                if !all || st.dropped > 0 {
                    eprintln!(
                        "nonstop: shutting down ({}) with {} batches unsent and {} dropped",
                        event.shutdown_reason.as_deref().unwrap_or("unknown reason"),
                        st.queue.len(),
                        st.dropped
                    );
                }
                let _ = std::fs::remove_file(&args.address_file);
                return Ok(ExitCode::SUCCESS);
            }
            _ => {}
        }
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

/// Decodes a percent-encoded query value (invalid escapes are kept as they are).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_round_trip() {
        assert_eq!(decode(&encode("host-1/a b%")), "host-1/a b%");
        assert_eq!(decode("%zz"), "%zz");
    }

    #[test]
    fn a_hello_names_its_agent() {
        let body = br#"[{"type":"hello","agent":{"id":"a-1"}},{"type":"status","statuses":[]}]"#;
        assert_eq!(hello_id(body).as_deref(), Some("a-1"));
        assert_eq!(hello_id(br#"[{"type":"status","statuses":[]}]"#), None);
        assert_eq!(hello_id(b"not json"), None);
    }
}
