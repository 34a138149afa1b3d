//! The agent's HTTP link (`NONSTOP_LINK=http`), for processes that are frozen between
//! requests or live briefly (AWS Lambda, `docker pause`, a debugger attach).
//!
//! One named thread (`nonstop-link`) speaks plain HTTP/1.1 over one kept-alive connection:
//! - the first request is `POST /agent/v1/responses` with a hello, which registers the agent
//!   and answers with its rule set and an `ETag`;
//! - rules are then polled with `GET /agent/v1/poll?agent=ID` and `If-None-Match` (a `304`
//!   costs no body) every [`POLL_EVERY`], or at once when [`HttpLink::refresh`] asks;
//! - statuses, metric series and responses go out in one `POST` batch (whose answer carries
//!   the rules too), at once when [`HttpLink::flush`] asks, else within [`SEND_EVERY`].
//!
//! Every call has a deadline ([`REQUEST_TIMEOUT`]), measured in slices of [`SLICE`]: a slice
//! that took far longer than it should means the process was frozen (SIGSTOP, the Lambda
//! freezer), and the deadline moves by the frozen time instead of failing the call.
//! Interrupted system calls (`EINTR` after SIGCONT) are retried. Responses that could not be
//! sent stay queued (bounded, oldest dropped and counted) and go out when the server is back.

use crate::connection::{Transport, http_target, tls_config};
use nonstop_model::wire::ServerMessage;
use nonstop_model::{AgentInfo, AgentMessage, MetricSeries, Response, Rule, RuleStatus};
use std::collections::{BTreeMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often rules are polled when nobody asks sooner.
pub const POLL_EVERY: Duration = Duration::from_secs(1);
/// How long captured responses may wait before they are sent without a flush.
pub const SEND_EVERY: Duration = Duration::from_millis(200);
/// Deadline of one HTTP request (connect, send, answer), not counting frozen time.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Socket wait per slice; a slice that lasts much longer than this was frozen.
const SLICE: Duration = Duration::from_millis(100);
/// A slice that took this much more than [`SLICE`] counts as frozen time.
const FREEZE_GAP: Duration = Duration::from_millis(400);
/// Responses held while the server is away; past this the oldest are dropped (and counted).
pub const RESPONSE_BUFFER: usize = 1000;
/// Responses per POST.
const BATCH: usize = 200;
/// First and last retry delays after a failed request (doubling in between). Short: a
/// frozen process only retries while it runs, and the server should see it soon after.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Largest answer accepted (a rule set).
const MAX_BODY: usize = 8 << 20;

/// The HTTP link. Dropping it stops its thread.
pub struct HttpLink {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct State {
    rules: Option<Vec<Rule>>,
    responses: VecDeque<Response>,
    dropped: u64,
    statuses: Vec<RuleStatus>,
    series: BTreeMap<(String, BTreeMap<String, String>), MetricSeries>,
    /// Asked generations of flushes and polls, and those done.
    flush_asked: u64,
    flush_done: u64,
    poll_asked: u64,
    poll_done: u64,
    /// Exchanges that brought the server's current rule set (a `200` or a `304`).
    fetched: u64,
    /// Whether the last request reached the server.
    connected: bool,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the link thread (work queued) and waiters (work done).
    changed: Condvar,
    /// Called when new rules arrived or a poll finished, to wake the agent thread.
    on_rules: Box<dyn Fn() + Send + Sync>,
    stop: AtomicBool,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl HttpLink {
    /// Starts the link thread; `on_rules` runs (on that thread) after every poll. Never
    /// fails: problems are logged on stderr and retried.
    pub fn start(
        server: String,
        token: Option<String>,
        info: AgentInfo,
        ca_cert: Option<PathBuf>,
        on_rules: Box<dyn Fn() + Send + Sync>,
    ) -> HttpLink {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            on_rules,
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("nonstop-link".into())
            .spawn(move || {
                let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    let servers = crate::connection::servers(&server);
                    Runner {
                        server: servers[0].clone(),
                        servers,
                        token,
                        info,
                        ca_cert,
                        shared: &s,
                        conn: None,
                        logged: None,
                        registered: false,
                        etag: None,
                        tls: None,
                    }
                    .run()
                }));
                if run.is_err() {
                    eprintln!(
                        "nonstop: the link to the server failed; responses are no longer sent"
                    );
                }
                let mut st = lock(&s.state);
                st.stop = true;
                st.connected = false;
                drop(st);
                s.changed.notify_all();
            });
        if let Err(e) = spawned {
            eprintln!("nonstop: cannot start the link thread ({e}); responses are not sent");
            lock(&shared.state).stop = true;
        }
        HttpLink { shared }
    }

    /// The rule set received since the last call, if any.
    pub fn latest_rules(&self) -> Option<Vec<Rule>> {
        lock(&self.shared.state).rules.take()
    }

    /// Queues responses; never blocks on the network.
    pub fn send_responses(&self, responses: Vec<Response>) {
        crate::drive::not_quiet();
        let mut st = lock(&self.shared.state);
        for r in responses {
            if st.responses.len() >= RESPONSE_BUFFER {
                st.responses.pop_front();
                st.dropped += 1;
            }
            st.responses.push_back(r);
        }
    }

    /// Queues statuses; a newer status of a rule replaces an unsent older one.
    pub fn send_status(&self, statuses: Vec<RuleStatus>) {
        crate::drive::not_quiet();
        let mut st = lock(&self.shared.state);
        for s in statuses {
            match st.statuses.iter_mut().find(|o| o.rule == s.rule) {
                Some(o) => *o = s,
                None => st.statuses.push(s),
            }
        }
    }

    /// Queues the newest values of metric series (cumulative, so older unsent ones are replaced).
    pub fn send_metrics(&self, series: Vec<MetricSeries>) {
        crate::drive::not_quiet();
        let mut st = lock(&self.shared.state);
        for s in series {
            st.series.insert((s.rule.clone(), s.tags.clone()), s);
        }
    }

    /// Drops unsent series of removed rules.
    pub fn forget_metrics(&self, rules: &[String]) {
        lock(&self.shared.state)
            .series
            .retain(|(rule, _), _| !rules.contains(rule));
    }

    /// Whether nothing is queued and the last request reached the server.
    pub fn idle(&self) -> bool {
        let st = lock(&self.shared.state);
        st.connected
            && st.responses.is_empty()
            && st.statuses.is_empty()
            && st.series.is_empty()
            && st.dropped == 0
    }

    /// Whether the last request reached the server.
    pub fn connected(&self) -> bool {
        lock(&self.shared.state).connected
    }

    /// Sends what is queued now and waits, at most `timeout`, for the server to take it.
    /// Returns whether it did (false when the server is away: what is queued stays queued).
    pub fn flush(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        let mut st = lock(&self.shared.state);
        st.flush_asked += 1;
        let asked = st.flush_asked;
        self.shared.changed.notify_all();
        while st.flush_done < asked && !st.stop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = match self.shared.changed.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        st.flush_done >= asked && st.connected
    }

    /// Asks for a poll of the rules now; returns the generation that
    /// [`HttpLink::polled`] reaches once it is done.
    pub fn refresh(&self) -> u64 {
        let mut st = lock(&self.shared.state);
        st.poll_asked += 1;
        self.shared.changed.notify_all();
        st.poll_asked
    }

    /// The generation of the last finished poll (see [`HttpLink::refresh`]).
    pub fn polled(&self) -> u64 {
        lock(&self.shared.state).poll_done
    }

    /// How many exchanges brought the server's current rule set (a changed set or a
    /// `304`); it grows with every successful poll or batch, asked for or not.
    pub fn fetched(&self) -> u64 {
        lock(&self.shared.state).fetched
    }
}

impl Drop for HttpLink {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        lock(&self.shared.state).stop = true;
        self.shared.changed.notify_all();
    }
}

/// One HTTP answer.
struct Answer {
    status: u16,
    etag: Option<String>,
    body: Vec<u8>,
}

struct Runner<'a> {
    /// The address in use, one of `servers`.
    server: String,
    /// Every address of `NONSTOP_SERVER` (replicas), tried in turn when one is away.
    servers: Vec<String>,
    token: Option<String>,
    info: AgentInfo,
    ca_cert: Option<PathBuf>,
    shared: &'a Shared,
    conn: Option<Transport>,
    logged: Option<String>,
    /// Whether the server knows this agent (a hello went through).
    registered: bool,
    etag: Option<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Runner<'_> {
    fn run(&mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut retry_at: Option<Instant> = None;
        let mut last_poll: Option<Instant> = None;
        let mut oldest_unsent: Option<Instant> = None;
        loop {
            // Wait for something to do.
            let (flush, poll_gen, send) = {
                let mut st = lock(&self.shared.state);
                loop {
                    if st.stop || self.shared.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let now = Instant::now();
                    let queued = !st.responses.is_empty()
                        || !st.statuses.is_empty()
                        || !st.series.is_empty()
                        || st.dropped > 0;
                    if queued && oldest_unsent.is_none() {
                        oldest_unsent = Some(now);
                    }
                    let backing_off = retry_at.is_some_and(|t| now < t);
                    let flush = st.flush_asked > st.flush_done;
                    if flush && !queued && self.registered {
                        // Nothing to send: the flush is done without a round trip.
                        st.flush_done = st.flush_asked;
                        self.shared.changed.notify_all();
                    }
                    let flush = st.flush_asked > st.flush_done;
                    if flush && backing_off {
                        // The server is away: answer the flush at once, keep the data.
                        st.flush_done = st.flush_asked;
                        self.shared.changed.notify_all();
                    }
                    let poll = st.poll_asked > st.poll_done;
                    if poll && backing_off {
                        st.poll_done = st.poll_asked;
                        self.shared.changed.notify_all();
                    }
                    if !backing_off {
                        let send_due = queued
                            && (flush || oldest_unsent.is_some_and(|t| now - t >= SEND_EVERY));
                        let poll_due = poll
                            || !self.registered
                            || last_poll.is_none_or(|t| now - t >= POLL_EVERY);
                        if send_due || poll_due || flush {
                            break (st.flush_asked, st.poll_asked, send_due || !self.registered);
                        }
                    }
                    let mut wake = last_poll.map_or(now, |t| t + POLL_EVERY);
                    if let Some(t) = oldest_unsent {
                        wake = wake.min(t + SEND_EVERY);
                    }
                    if let Some(t) = retry_at {
                        wake = wake.max(t);
                    }
                    let wait = wake
                        .saturating_duration_since(now)
                        .max(Duration::from_millis(1));
                    st = match self.shared.changed.wait_timeout(st, wait) {
                        Ok((g, _)) => g,
                        Err(p) => p.into_inner().0,
                    };
                }
            };
            let result = if send {
                oldest_unsent = None;
                self.post_batch()
            } else {
                self.poll()
            };
            let ok = match result {
                Ok(()) => {
                    if self.logged.take().is_some() {
                        eprintln!("nonstop: reached the nonstop server at {}", self.server);
                    }
                    backoff = BACKOFF_MIN;
                    retry_at = None;
                    last_poll = Some(Instant::now());
                    true
                }
                Err(why) => {
                    self.conn = None;
                    if self.servers.len() > 1 {
                        // The next replica, which has the same rules (a fresh hello there).
                        let at = self
                            .servers
                            .iter()
                            .position(|s| *s == self.server)
                            .unwrap_or(0);
                        self.server = self.servers[(at + 1) % self.servers.len()].clone();
                        self.registered = false;
                        self.etag = None;
                    }
                    if self.logged.as_deref() != Some(why.as_str()) {
                        eprintln!("nonstop: {why}");
                        self.logged = Some(why);
                    }
                    retry_at = Some(Instant::now() + backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    false
                }
            };
            {
                let mut st = lock(&self.shared.state);
                st.connected = ok;
                // A flush is done when what was queued at its asking went out (or could not).
                let nothing_left = st.responses.is_empty() && st.statuses.is_empty();
                if !ok || nothing_left {
                    st.flush_done = st.flush_done.max(flush);
                }
                st.poll_done = st.poll_done.max(poll_gen);
            }
            self.shared.changed.notify_all();
            (self.shared.on_rules)();
        }
    }

    /// Takes what is queued and posts it (with a hello when the server does not know us);
    /// on failure puts it back.
    fn post_batch(&mut self) -> Result<(), String> {
        let (statuses, responses, dropped, series) = {
            let mut st = lock(&self.shared.state);
            let n = st.responses.len().min(BATCH);
            let responses: Vec<Response> = st.responses.drain(..n).collect();
            (
                std::mem::take(&mut st.statuses),
                responses,
                std::mem::take(&mut st.dropped),
                std::mem::take(&mut st.series),
            )
        };
        let mut messages = Vec::new();
        if !self.registered {
            messages.push(AgentMessage::Hello {
                agent: self.info.clone(),
            });
        }
        if !statuses.is_empty() {
            messages.push(AgentMessage::Status {
                statuses: statuses.clone(),
            });
        }
        if !series.is_empty() {
            messages.push(AgentMessage::Metrics {
                series: series.values().cloned().collect(),
            });
        }
        if !responses.is_empty() || dropped > 0 {
            messages.push(AgentMessage::Responses {
                responses: responses.clone(),
                dropped,
            });
        }
        let body = serde_json::to_vec(&messages).map_err(|e| format!("cannot encode: {e}"))?;
        let path = format!("/agent/v1/responses?agent={}", encode(&self.info.id));
        let result = self
            .request("POST", &path, Some(&body))
            .and_then(|a| self.take_rules(a));
        match result {
            Ok(()) => {
                self.registered = true;
                Ok(())
            }
            Err(e) => {
                // Back in the queue, in order, to go out when the server is back.
                let mut st = lock(&self.shared.state);
                for r in responses.into_iter().rev() {
                    st.responses.push_front(r);
                }
                while st.responses.len() > RESPONSE_BUFFER {
                    st.responses.pop_front();
                    st.dropped += 1;
                }
                st.dropped += dropped;
                for s in statuses {
                    if !st.statuses.iter().any(|o| o.rule == s.rule) {
                        st.statuses.push(s);
                    }
                }
                for (k, v) in series {
                    st.series.entry(k).or_insert(v);
                }
                Err(e)
            }
        }
    }

    fn poll(&mut self) -> Result<(), String> {
        let path = format!("/agent/v1/poll?agent={}", encode(&self.info.id));
        let answer = self.request("GET", &path, None)?;
        if answer.status == 404 {
            // The server forgot us (restarted on a new data folder): hello again.
            self.registered = false;
            self.etag = None;
            return self.post_batch();
        }
        self.take_rules(answer)
    }

    fn take_rules(&mut self, a: Answer) -> Result<(), String> {
        match a.status {
            304 => {
                lock(&self.shared.state).fetched += 1;
                Ok(())
            }
            200 => {
                let rules = match serde_json::from_slice::<ServerMessage>(&a.body) {
                    Ok(ServerMessage::Rules { rules }) => rules,
                    Ok(_) | Err(_) => {
                        return Err(format!(
                            "the nonstop server at {} sent rules this agent cannot read; is it a newer version?",
                            self.server
                        ));
                    }
                };
                self.etag = a.etag;
                let mut st = lock(&self.shared.state);
                st.rules = Some(rules);
                st.fetched += 1;
                Ok(())
            }
            401 | 403 => Err(format!(
                "the nonstop server at {} refused the token: set NONSTOP_TOKEN to the contents of agent.token in the server's data folder",
                self.server
            )),
            s => Err(format!(
                "the nonstop server at {} answered {s}: {}",
                self.server,
                String::from_utf8_lossy(&a.body[..a.body.len().min(300)])
            )),
        }
    }

    /// One request on the kept-alive connection; a stale connection is replaced once.
    fn request(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Answer, String> {
        let reused = self.conn.is_some();
        match self.request_once(method, path, body) {
            Ok(a) => Ok(a),
            Err(_) if reused => {
                self.conn = None;
                self.request_once(method, path, body)
            }
            Err(e) => Err(e),
        }
    }

    fn request_once(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Answer, String> {
        let mut deadline = Deadline::new(REQUEST_TIMEOUT);
        let target = http_target(&self.server)?;
        if self.conn.is_none() {
            self.conn = Some(self.connect(&target)?);
        }
        let server = self.server.clone();
        let lost = |e: std::io::Error| {
            format!("cannot reach the nonstop server at {server} ({e}); retrying")
        };
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: keep-alive\r\nAccept: application/json\r\n",
            target.host_port
        );
        if let Some(t) = &self.token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if method == "GET"
            && let Some(tag) = &self.etag
        {
            head.push_str(&format!("If-None-Match: {tag}\r\n"));
        }
        if let Some(b) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body.unwrap_or(&[]));
        let Some(conn) = self.conn.as_mut() else {
            return Err("no connection".into());
        };
        write_all(conn, &out, &mut deadline).map_err(lost)?;
        let answer = read_answer(conn, &mut deadline).map_err(lost)?;
        if !answer.1 {
            self.conn = None;
        }
        Ok(answer.0)
    }

    fn connect(&mut self, target: &crate::connection::HttpTarget) -> Result<Transport, String> {
        let server = &self.server;
        let addrs: Vec<_> = target
            .host_port
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve the nonstop server {server}: {e}; retrying"))?
            .collect();
        let mut last = None;
        let mut stream = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, REQUEST_TIMEOUT) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let stream = stream.ok_or_else(|| {
            let why = last.map_or_else(|| "no address".into(), |e| e.to_string());
            format!("cannot reach the nonstop server at {server} ({why}); retrying")
        })?;
        let io = |e: std::io::Error| format!("connection to {server}: {e}");
        stream.set_nodelay(true).map_err(io)?;
        stream.set_read_timeout(Some(SLICE)).map_err(io)?;
        stream.set_write_timeout(Some(SLICE)).map_err(io)?;
        if !target.tls {
            return Ok(Transport::Plain(stream));
        }
        let config = match &self.tls {
            Some(c) => c.clone(),
            None => {
                let c = tls_config(self.ca_cert.as_deref())?;
                self.tls = Some(c.clone());
                c
            }
        };
        let name = rustls::pki_types::ServerName::try_from(target.host.clone())
            .map_err(|e| format!("server address {server}: {e}"))?;
        let conn = rustls::ClientConnection::new(config, name)
            .map_err(|e| format!("TLS to {server}: {e}"))?;
        Ok(Transport::Tls(Box::new(rustls::StreamOwned::new(
            conn, stream,
        ))))
    }
}

/// A request's deadline that does not count time the process spent frozen.
struct Deadline {
    until: Instant,
    last: Instant,
}

impl Deadline {
    fn new(d: Duration) -> Deadline {
        let now = Instant::now();
        Deadline {
            until: now + d,
            last: now,
        }
    }

    /// After a socket wait: whether time is up. A wait far longer than a slice was a
    /// freeze, which moves the deadline instead.
    fn expired(&mut self) -> bool {
        let now = Instant::now();
        let took = now - self.last;
        if took > SLICE + FREEZE_GAP {
            self.until += took - SLICE;
        }
        self.last = now;
        now >= self.until
    }

    fn tick(&mut self) {
        self.last = Instant::now();
    }
}

fn retryable(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Interrupted | ErrorKind::WouldBlock | ErrorKind::TimedOut
    )
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(ErrorKind::TimedOut, "no answer in time")
}

fn write_all(conn: &mut Transport, mut buf: &[u8], deadline: &mut Deadline) -> std::io::Result<()> {
    deadline.tick();
    while !buf.is_empty() {
        match conn.write(buf) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if retryable(&e) => {
                if deadline.expired() {
                    return Err(timed_out());
                }
            }
            Err(e) => return Err(e),
        }
    }
    loop {
        match conn.flush() {
            Ok(()) => return Ok(()),
            Err(e) if retryable(&e) => {
                if deadline.expired() {
                    return Err(timed_out());
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads one answer; also returns whether the connection can be reused.
fn read_answer(conn: &mut Transport, deadline: &mut Deadline) -> std::io::Result<(Answer, bool)> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    deadline.tick();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err(std::io::Error::other("answer headers too long"));
        }
        read_some(conn, &mut buf, &mut chunk, deadline)?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))?;
    let mut length = None;
    let mut etag = None;
    let mut keep = true;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = v.parse::<usize>().ok(),
            "etag" => etag = Some(v.to_owned()),
            "connection" if v.eq_ignore_ascii_case("close") => keep = false,
            "transfer-encoding" if v.to_ascii_lowercase().contains("chunked") => {
                return Err(std::io::Error::other("chunked answers are not supported"));
            }
            _ => {}
        }
    }
    let length = match (status, length) {
        (204 | 304, _) => 0,
        (_, Some(n)) => n,
        (_, None) => {
            keep = false;
            usize::MAX
        }
    };
    if length != usize::MAX && length > MAX_BODY {
        return Err(std::io::Error::other("answer too large"));
    }
    let mut body = buf.split_off(head_end);
    while body.len() < length {
        match read_some(conn, &mut body, &mut chunk, deadline) {
            Ok(()) => {}
            Err(e) if length == usize::MAX && e.kind() == ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        if body.len() > MAX_BODY {
            return Err(std::io::Error::other("answer too large"));
        }
    }
    body.truncate(length.min(body.len()));
    Ok((Answer { status, etag, body }, keep))
}

fn read_some(
    conn: &mut Transport,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
    deadline: &mut Deadline,
) -> std::io::Result<()> {
    loop {
        match conn.read(chunk) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                deadline.tick();
                return Ok(());
            }
            Err(e) if retryable(&e) => {
                if deadline.expired() {
                    return Err(timed_out());
                }
            }
            Err(e) => return Err(e),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freeze_moves_the_deadline_instead_of_failing() {
        let mut d = Deadline::new(Duration::from_millis(300));
        // As if the process had been stopped for two seconds during one wait.
        d.last -= Duration::from_secs(2);
        d.until -= Duration::from_secs(2);
        assert!(!d.expired(), "frozen time must not count");
        let mut d = Deadline::new(Duration::from_millis(0));
        assert!(d.expired());
    }

    #[test]
    fn agent_ids_are_encoded_in_queries() {
        assert_eq!(encode("host-12-ab/c d"), "host-12-ab%2Fc%20d");
    }
}
