//! The agent's link to the nonstop server: one named thread (`nonstop-link`) with blocking
//! I/O over a WebSocket, so no async runtime is forced into the host program.
//!
//! The protocol is [`nonstop_model::wire`]: on every connect the link sends a hello and
//! receives the full rule set; later sets replace it whole. Responses and statuses are queued
//! without blocking (a bounded buffer that drops the oldest and counts what it dropped) and
//! shipped by the thread. Metric series are cumulative, so the link keeps only the newest
//! value of each series (never a queue of them), sends those that changed, and sends them
//! all again after a reconnect. Lost connections are retried with exponential backoff and jitter.
//! `https://` servers are reached over TLS (rustls).
//!
//! ```ignore
//! # use nonstop_model::AgentInfo;
//! # fn demo(info: AgentInfo) {
//! let link = Link::start(LinkConfig::new("http://127.0.0.1:7070", None, info));
//! if let Some(rules) = link.latest_rules() {
//!     // arm what is new, disarm what is gone
//! #   drop(rules);
//! }
//! # }
//! ```

use nonstop_model::{
    AgentInfo, AgentMessage, MetricSeries, Response, Rule, RuleStatus, ServerMessage,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

/// Responses held while the server is slow or away; past this the oldest are dropped (and counted).
pub const RESPONSE_BUFFER: usize = 1000;
/// Responses per `responses` message.
const BATCH: usize = 200;
/// Series per `metrics` message.
const METRICS_BATCH: usize = 500;
/// How often the link pings the server.
pub const PING_EVERY: Duration = nonstop_model::defaults::PING_EVERY;
/// Silence from the server after which the connection counts as dead.
const DEAD_AFTER: Duration = Duration::from_secs(35);
/// First and last reconnect delays (doubling in between, with jitter).
pub const BACKOFF_MIN: Duration = nonstop_model::defaults::BACKOFF_MIN;
/// See [`BACKOFF_MIN`].
pub const BACKOFF_MAX: Duration = nonstop_model::defaults::BACKOFF_MAX;
/// How long one read waits; bounds the delay before queued responses go out. Longer
/// means fewer wake-ups of an idle process, shorter means fresher live streams.
const READ_WAIT: Duration = Duration::from_millis(200);
/// A loop turn this much longer than [`READ_WAIT`] counts as time the process was frozen.
const FROZEN_GAP: Duration = Duration::from_secs(1);
/// Time allowed to connect and for the WebSocket handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the server is and who this agent is.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// The server's address, `http://HOST:PORT` (as in `NONSTOP_SERVER`); `ws://` works too.
    /// Several replicas' addresses, comma-separated, make the link move to the next one when
    /// its server goes away (see [`servers`]).
    pub server: String,
    /// The agent token (or the admin token).
    pub token: Option<String>,
    /// This agent, as sent in every hello.
    pub info: AgentInfo,
}

impl LinkConfig {
    /// A config for `server`.
    pub fn new(server: impl Into<String>, token: Option<String>, info: AgentInfo) -> LinkConfig {
        LinkConfig {
            server: server.into(),
            token,
            info,
        }
    }
}

/// The link to the server. Dropping it stops the thread.
pub struct Link {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    rules: Mutex<Option<Vec<Rule>>>,
    outbox: Mutex<Outbox>,
    connected: AtomicBool,
    /// Why the last connection ended or could not start (cleared when one is up).
    problem: Mutex<Option<String>>,
    stop: AtomicBool,
}

#[derive(Default)]
struct Outbox {
    responses: VecDeque<Response>,
    /// Dropped since the last `responses` message went out.
    dropped: u64,
    /// The latest status of each rule not yet sent.
    statuses: Vec<RuleStatus>,
    /// The newest value of every metric series of the rules the agent holds: at most
    /// `MAX_SERIES_PER_RULE` per rule, replaced in place, dropped with their rule.
    series: BTreeMap<SeriesKey, MetricSeries>,
    /// Series whose newest value has not gone out yet.
    pending: BTreeSet<SeriesKey>,
}

/// A metric series' identity: its rule and its tag values.
type SeriesKey = (String, BTreeMap<String, String>);

fn series_key(s: &MetricSeries) -> SeriesKey {
    (s.rule.clone(), s.tags.clone())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the link (or the host) down with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Link {
    /// Starts the link thread. It never fails: problems are logged to stderr and retried.
    /// An `https://` server must have a certificate from a public root; see
    /// [`Link::start_trusting`] for others.
    pub fn start(config: LinkConfig) -> Link {
        Link::spawn(config, None)
    }

    /// [`Link::start`] for an `https://` server whose certificate chains to one in the PEM
    /// file `ca_cert` (e.g. the server's self-signed certificate) instead of a public root.
    pub fn start_trusting(config: LinkConfig, ca_cert: PathBuf) -> Link {
        Link::spawn(config, Some(ca_cert))
    }

    fn spawn(config: LinkConfig, ca_cert: Option<PathBuf>) -> Link {
        let shared = Arc::new(Shared {
            rules: Mutex::new(None),
            outbox: Mutex::new(Outbox::default()),
            connected: AtomicBool::new(false),
            problem: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("nonstop-link".into())
            .spawn(move || {
                let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    Runner::new(config, ca_cert, &s).run()
                }));
                s.connected.store(false, Ordering::Relaxed);
                if run.is_err() {
                    eprintln!(
                        "nonstop: the link to the server failed; responses are no longer sent"
                    );
                }
            });
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("nonstop: cannot start the link thread ({e}); responses are not sent");
                None
            }
        };
        Link { shared, thread }
    }

    /// The rule set the server sent since the last call, if any. After a reconnect the
    /// server sends the set again, so this returns it again.
    pub fn latest_rules(&self) -> Option<Vec<Rule>> {
        lock(&self.shared.rules).take()
    }

    /// Queues responses; never blocks on the network. When the buffer holds
    /// [`RESPONSE_BUFFER`] responses the oldest are dropped and counted.
    pub fn send_responses(&self, responses: Vec<Response>) {
        let mut out = lock(&self.shared.outbox);
        for r in responses {
            if out.responses.len() >= RESPONSE_BUFFER {
                out.responses.pop_front();
                out.dropped += 1;
            }
            out.responses.push_back(r);
        }
    }

    /// Queues rule statuses; a newer status of a rule replaces an unsent older one.
    pub fn send_status(&self, statuses: Vec<RuleStatus>) {
        let mut out = lock(&self.shared.outbox);
        for s in statuses {
            match out.statuses.iter_mut().find(|o| o.rule == s.rule) {
                Some(o) => *o = s,
                None => out.statuses.push(s),
            }
        }
    }

    /// Queues the newest values of metric series; an unsent older value of a series is
    /// replaced, not queued behind (values are cumulative). Never blocks on the network.
    pub fn send_metrics(&self, series: Vec<MetricSeries>) {
        let mut out = lock(&self.shared.outbox);
        for s in series {
            let key = series_key(&s);
            out.pending.insert(key.clone());
            out.series.insert(key, s);
        }
    }

    /// Drops every series of the rules `rules` (removed from the agent): they are neither
    /// sent nor re-sent after a reconnect.
    pub fn forget_metrics(&self, rules: &[String]) {
        if rules.is_empty() {
            return;
        }
        let mut out = lock(&self.shared.outbox);
        out.series.retain(|(rule, _), _| !rules.contains(rule));
        out.pending.retain(|(rule, _)| !rules.contains(rule));
    }

    /// Whether the link holds a connection to the server now.
    pub fn connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// Why the last attempt to connect failed or the last connection ended, as logged;
    /// `None` while connected and before the first attempt ends.
    pub fn problem(&self) -> Option<String> {
        lock(&self.shared.problem).clone()
    }

    /// Stops the thread and waits for it (at most about one read wait, or a connect attempt).
    /// Waits, at most `timeout`, until what is queued has gone out (used at exit). Returns
    /// at once when not connected: nothing would send it.
    pub fn flush(&self, timeout: Duration) {
        let until = Instant::now() + timeout;
        while self.connected() && Instant::now() < until {
            {
                let out = lock(&self.shared.outbox);
                if out.responses.is_empty() && out.statuses.is_empty() && out.pending.is_empty() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the link thread and waits for it.
    pub fn stop(mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// Why a connection ended or could not start.
enum Failure {
    /// Asked to stop.
    Stopped,
    /// Anything else; the text is for a person.
    Other(String),
}

impl From<String> for Failure {
    fn from(s: String) -> Failure {
        Failure::Other(s)
    }
}

/// The state of the link thread.
struct Runner<'a> {
    config: LinkConfig,
    /// The addresses of `config.server` ([`servers`]), and the one in use.
    servers: Vec<String>,
    current: usize,
    /// Whether the last session got as far as its hello.
    reached: bool,
    /// The CA to trust for TLS instead of the public roots.
    ca_cert: Option<PathBuf>,
    shared: &'a Shared,
    /// The last problem logged, so each is logged once until the state changes.
    logged: Option<String>,
    rng: u64,
    /// TLS settings, made on first use.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl<'a> Runner<'a> {
    fn new(config: LinkConfig, ca_cert: Option<PathBuf>, shared: &'a Shared) -> Runner<'a> {
        let servers = servers(&config.server);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            ^ u64::from(std::process::id()).rotate_left(32);
        Runner {
            config,
            servers,
            current: 0,
            reached: false,
            ca_cert,
            shared,
            logged: None,
            rng: seed | 1,
            tls: None,
        }
    }

    fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }

    /// Logs `problem` unless it is the one logged last.
    fn log_once(&mut self, problem: String) {
        if self.logged.as_deref() != Some(problem.as_str()) {
            eprintln!("nonstop: {problem}");
            self.logged = Some(problem);
        }
    }

    /// The address connected to now.
    fn server(&self) -> String {
        self.servers[self.current % self.servers.len()].clone()
    }

    fn run(&mut self) {
        let mut backoff = BACKOFF_MIN;
        // Servers tried in a row without a connection that lived.
        let mut failed = 0usize;
        while !self.stopping() {
            let started = Instant::now();
            self.reached = false;
            match self.session() {
                Err(Failure::Stopped) => return,
                Err(Failure::Other(why)) => {
                    self.shared.connected.store(false, Ordering::Relaxed);
                    *lock(&self.shared.problem) = Some(why.clone());
                    self.log_once(why);
                }
                Ok(()) => {}
            }
            // A connection that lived a while resets the backoff.
            if started.elapsed() > BACKOFF_MAX {
                backoff = BACKOFF_MIN;
            }
            if self.reached {
                failed = 0;
            }
            // With replicas, the next one is tried at once; the backoff applies once every
            // one of them failed in a row.
            failed += 1;
            self.current = (self.current + 1) % self.servers.len();
            let wait = if failed.is_multiple_of(self.servers.len()) {
                let wait = self.jitter(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                wait
            } else {
                self.jitter(BACKOFF_MIN)
            };
            let until = Instant::now() + wait;
            while Instant::now() < until {
                if self.stopping() {
                    return;
                }
                std::thread::sleep(READ_WAIT.min(until.saturating_duration_since(Instant::now())));
            }
        }
    }

    /// Between half of `d` and all of it, so agents that lost the same server spread out.
    fn jitter(&mut self, d: Duration) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = d / 2;
        half + half.mul_f64((self.rng % 1000) as f64 / 1000.0)
    }

    fn connect(&mut self) -> Result<WebSocket<Transport>, Failure> {
        let server = self.server();
        let server = &server;
        let Target {
            url,
            host_port,
            host,
            tls,
        } = target(server)?;
        let addrs: Vec<_> = host_port
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve the nonstop server {server}: {e}; retrying"))?
            .collect();
        let mut last = None;
        let mut stream = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let stream = stream.ok_or_else(|| {
            let why = last
                .map(|e| e.to_string())
                .unwrap_or_else(|| "no address".into());
            format!("cannot reach the nonstop server at {server} ({why}); retrying")
        })?;
        let io = |e: std::io::Error| Failure::Other(format!("connection to {server}: {e}"));
        stream.set_nodelay(true).map_err(io)?;
        stream.set_read_timeout(Some(CONNECT_TIMEOUT)).map_err(io)?;
        stream
            .set_write_timeout(Some(CONNECT_TIMEOUT))
            .map_err(io)?;
        let stream = if tls {
            let config = match &self.tls {
                Some(c) => c.clone(),
                None => {
                    let c = tls_config(self.ca_cert.as_deref())?;
                    self.tls = Some(c.clone());
                    c
                }
            };
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| format!("server address {server}: {e}"))?;
            let conn = rustls::ClientConnection::new(config, name)
                .map_err(|e| format!("TLS to {server}: {e}"))?;
            Transport::Tls(Box::new(rustls::StreamOwned::new(conn, stream)))
        } else {
            Transport::Plain(stream)
        };
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| format!("server address {server}: {e}"))?;
        if let Some(t) = &self.config.token
            && let Ok(v) = format!("Bearer {t}").parse()
        {
            request.headers_mut().insert("Authorization", v);
        }
        let (ws, _) = tungstenite::client::client(request, stream).map_err(|e| match e {
            tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))
                if r.status() == 401 || r.status() == 403 =>
            {
                Failure::Other(format!(
                    "the nonstop server at {server} refused the token: set NONSTOP_TOKEN to the contents of agent.token in the server's data folder"
                ))
            }
            e => Failure::Other(format!("cannot open a WebSocket to {server}: {e}; retrying")),
        })?;
        ws.get_ref()
            .tcp()
            .set_read_timeout(Some(READ_WAIT))
            .map_err(io)?;
        Ok(ws)
    }

    /// One connection: hello, then ship queued messages and apply what the server sends.
    fn session(&mut self) -> Result<(), Failure> {
        let mut ws = self.connect()?;
        let server = self.server();
        send(
            &mut ws,
            &AgentMessage::Hello {
                agent: self.config.info.clone(),
            },
        )?;
        self.shared.connected.store(true, Ordering::Relaxed);
        self.reached = true;
        *lock(&self.shared.problem) = None;
        {
            // A new connection may reach a server (or replica) that has none of the series.
            let mut out = lock(&self.shared.outbox);
            let all: Vec<SeriesKey> = out.series.keys().cloned().collect();
            out.pending.extend(all);
        }
        if self.logged.take().is_some() {
            eprintln!("nonstop: connected to the nonstop server at {server}");
        }
        let mut last_ping = Instant::now();
        let mut last_heard = Instant::now();
        let mut last_turn = Instant::now();
        loop {
            // A turn of this loop lasts about one read wait; one that lasted far longer means
            // the process was frozen (SIGSTOP, a debugger, `docker pause`): the server's
            // silence meanwhile says nothing about the connection, so ping it now instead.
            let gap = last_turn.elapsed();
            last_turn = Instant::now();
            if gap > READ_WAIT + FROZEN_GAP {
                last_heard += gap;
                last_ping = Instant::now().checked_sub(PING_EVERY).unwrap_or(last_ping);
            }
            if self.stopping() {
                let _ = ws.close(None);
                let _ = ws.flush();
                return Err(Failure::Stopped);
            }
            self.ship(&mut ws)?;
            if last_ping.elapsed() >= PING_EVERY {
                send(&mut ws, &AgentMessage::Ping)?;
                last_ping = Instant::now();
            }
            if last_heard.elapsed() >= DEAD_AFTER {
                return Err(format!(
                    "the nonstop server at {server} stopped answering; reconnecting"
                )
                .into());
            }
            match ws.read() {
                Ok(Message::Text(t)) => {
                    last_heard = Instant::now();
                    match serde_json::from_str::<ServerMessage>(&t) {
                        Ok(ServerMessage::Rules { rules }) => {
                            *lock(&self.shared.rules) = Some(rules)
                        }
                        Ok(ServerMessage::Pong) => {}
                        Ok(ServerMessage::Error { message }) => {
                            self.log_once(format!("the nonstop server says: {message}"))
                        }
                        // A newer server may send messages this agent does not know.
                        Err(_) => {}
                    }
                }
                Ok(Message::Close(frame)) => {
                    let why = frame
                        .map(|f| format!("{} {}", u16::from(f.code), f.reason))
                        .unwrap_or_default();
                    return Err(format!(
                        "the nonstop server at {server} closed the connection ({why}); reconnecting"
                    )
                    .into());
                }
                Ok(_) => last_heard = Instant::now(),
                // `Interrupted`: the read was cut short by SIGSTOP/SIGCONT; nothing is lost.
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    return Err(format!(
                        "lost the connection to the nonstop server at {server} ({e}); reconnecting"
                    )
                    .into());
                }
            }
        }
    }

    /// Sends queued statuses, metric series and responses. Responses that fail to go out
    /// are counted as dropped; series that fail stay pending.
    fn ship(&mut self, ws: &mut WebSocket<Transport>) -> Result<(), Failure> {
        let (statuses, batch, dropped, series) = {
            let mut out = lock(&self.shared.outbox);
            let statuses = std::mem::take(&mut out.statuses);
            let n = out.responses.len().min(BATCH);
            let batch: Vec<Response> = out.responses.drain(..n).collect();
            let dropped = if batch.is_empty() && out.dropped == 0 {
                0
            } else {
                std::mem::take(&mut out.dropped)
            };
            let keys: Vec<SeriesKey> = out.pending.iter().take(METRICS_BATCH).cloned().collect();
            let mut series = Vec::with_capacity(keys.len());
            for key in keys {
                out.pending.remove(&key);
                if let Some(s) = out.series.get(&key) {
                    series.push(s.clone());
                }
            }
            (statuses, batch, dropped, series)
        };
        if !statuses.is_empty() {
            send(ws, &AgentMessage::Status { statuses })?;
        }
        if !series.is_empty() {
            let keys: Vec<SeriesKey> = series.iter().map(series_key).collect();
            if let Err(e) = send(ws, &AgentMessage::Metrics { series }) {
                // Still the newest values unless newer ones came meanwhile: send them later.
                let mut out = lock(&self.shared.outbox);
                for key in keys {
                    if out.series.contains_key(&key) {
                        out.pending.insert(key);
                    }
                }
                return Err(e);
            }
        }
        if !batch.is_empty() || dropped > 0 {
            let n = batch.len() as u64;
            if let Err(e) = send(
                ws,
                &AgentMessage::Responses {
                    responses: batch,
                    dropped,
                },
            ) {
                lock(&self.shared.outbox).dropped += n + dropped;
                return Err(e);
            }
        }
        Ok(())
    }
}

/// The addresses in a `NONSTOP_SERVER` value: one URL, or several comma-separated (replicas
/// of one server). Empty items are skipped; an empty list stays one empty address, which the
/// link reports as such.
pub fn servers(list: &str) -> Vec<String> {
    let all: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if all.is_empty() {
        vec![list.trim().to_string()]
    } else {
        all
    }
}

/// Where a server address leads.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    /// The WebSocket URL.
    url: String,
    /// `HOST:PORT` to connect to.
    host_port: String,
    /// The host name (or IP address) the certificate must name, for TLS.
    host: String,
    /// Whether to speak TLS.
    tls: bool,
}

/// The target of a server address such as `http://127.0.0.1:7070` or `https://nonstop.corp`.
fn target(server: &str) -> Result<Target, String> {
    let s = server.trim_end_matches('/');
    let (scheme, rest) = s
        .split_once("://")
        .ok_or_else(|| format!("server address {s:?} needs a scheme: http://HOST:PORT"))?;
    let (ws_scheme, port, tls) = match scheme {
        "http" | "ws" => ("ws", 80, false),
        "https" | "wss" => ("wss", 443, true),
        _ => {
            return Err(format!(
                "server address {s:?}: use http://HOST:PORT or https://HOST:PORT"
            ));
        }
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']');
    let (host_port, host) = if has_port {
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
        (authority.to_string(), host)
    } else {
        (format!("{authority}:{port}"), authority)
    };
    if host.is_empty() {
        return Err(format!("server address {s:?} has no host"));
    }
    Ok(Target {
        url: format!("{ws_scheme}://{authority}/agent/v1/ws"),
        host_port,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        tls,
    })
}

/// Where the HTTP link connects for a server address.
pub(crate) struct HttpTarget {
    /// `HOST:PORT` to connect to (and the `Host` header).
    pub(crate) host_port: String,
    /// The host name the certificate must name.
    pub(crate) host: String,
    /// Whether to speak TLS.
    pub(crate) tls: bool,
}

/// [`target`] for the HTTP link.
pub(crate) fn http_target(server: &str) -> Result<HttpTarget, String> {
    let t = target(server)?;
    Ok(HttpTarget {
        host_port: t.host_port,
        host: t.host,
        tls: t.tls,
    })
}

/// TLS client settings: the certificates of `ca_cert`, or the public roots.
pub(crate) fn tls_config(
    ca_cert: Option<&std::path::Path>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_cert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("cannot read the CA certificate {}: {e}", path.display()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("{} holds no usable certificate", path.display()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The byte stream under the WebSocket (and the HTTP link).
pub(crate) enum Transport {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Transport {
    fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(s) => &s.sock,
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
            Transport::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Transport::Plain(s) => s.flush(),
            Transport::Tls(s) => s.flush(),
        }
    }
}

fn send(ws: &mut WebSocket<Transport>, msg: &AgentMessage) -> Result<(), Failure> {
    let text = serde_json::to_string(msg).map_err(|e| format!("cannot encode a message: {e}"))?;
    let mut result = ws.send(Message::text(text));
    // The frame is queued in the WebSocket; an interrupted write is finished by flushing.
    for _ in 0..100 {
        match &result {
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::WouldBlock) =>
            {
                result = ws.flush();
            }
            _ => break,
        }
    }
    result.map_err(|e| {
        Failure::Other(format!(
            "lost the connection to the nonstop server ({e}); reconnecting"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_list_names_each_replica_once_in_order() {
        assert_eq!(servers("http://a:1"), ["http://a:1"]);
        assert_eq!(
            servers(" https://a, https://b ,,"),
            ["https://a", "https://b"]
        );
        assert_eq!(servers(""), [""]);
    }

    #[test]
    fn server_addresses_become_websocket_targets() {
        let t =
            |s: &str| target(s).map(|t| format!("{} {} {} {}", t.url, t.host_port, t.host, t.tls));
        assert_eq!(
            t("http://127.0.0.1:7070").unwrap(),
            "ws://127.0.0.1:7070/agent/v1/ws 127.0.0.1:7070 127.0.0.1 false"
        );
        assert_eq!(
            t("http://nonstop.internal/").unwrap(),
            "ws://nonstop.internal/agent/v1/ws nonstop.internal:80 nonstop.internal false"
        );
        assert_eq!(
            t("https://nonstop.corp").unwrap(),
            "wss://nonstop.corp/agent/v1/ws nonstop.corp:443 nonstop.corp true"
        );
        assert_eq!(
            t("ws://[::1]:9").unwrap(),
            "ws://[::1]:9/agent/v1/ws [::1]:9 ::1 false"
        );
        assert_eq!(
            t("http://[::1]").unwrap(),
            "ws://[::1]/agent/v1/ws [::1]:80 ::1 false"
        );
        assert!(t("127.0.0.1:7070").unwrap_err().contains("scheme"));
        assert!(t("http://:7070").unwrap_err().contains("no host"));
    }
}
