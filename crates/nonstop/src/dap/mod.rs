//! `nonstop dap`: a Debug Adapter Protocol server on stdio that never pauses the program.
//!
//! An editor "attaches" to a service on a nonstop server (launch or attach arguments
//! `server`, `token`, `service`, optional `labels`, `version` and `sourceMap`). Its
//! breakpoints become rules at FILE:LINE:
//!
//! | DAP | rule |
//! | --- | --- |
//! | breakpoint with `logMessage` | `log` rule, the message as its template (`{expr}` is the same syntax) |
//! | plain breakpoint, mode `snapshot` (default) | `snapshot` rule |
//! | plain breakpoint, mode `count` | `metric` rule counting hits |
//! | `condition` | `when` |
//! | `hitCondition` (a number) | `max_hits` |
//!
//! Each breakpoint's `verified`/`reason`/`message` follow the rule's status on the agents
//! (polled from the rule views, sent as `breakpoint` events). Responses arrive as
//! `output` events from the live stream; a snapshot's values are reachable through
//! `variablesReference`, and `threads`/`stackTrace`/`scopes`/`variables` answer from the
//! latest snapshot of each thread. Nothing ever stops: `pause`, `next` and friends are
//! refused. `disconnect` (or the editor closing the stream) removes the session's rules.

mod variables;
mod wire;

use crate::client::{Client, ServerArgs};
use anyhow::{Context as _, Result};
use nonstop_model::{Action, Metric, MetricKind, Response, Rule};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use variables::Variables;
pub(crate) use variables::summary;
use wire::Writer;

/// Arguments of `nonstop dap` (everything else comes in the launch configuration).
#[derive(Debug, clap::Args)]
pub struct Args {}

/// How often breakpoint statuses and counts are read from the server.
const POLL: Duration = Duration::from_millis(400);
/// Most threads (agent × thread) whose latest snapshot is kept for `threads`.
const MAX_THREADS: usize = 64;

/// Runs the adapter on stdin/stdout until the editor disconnects.
pub fn run(_args: Args) -> Result<ExitCode> {
    let writer = Writer::new(Box::new(std::io::stdout()));
    let mut input = std::io::BufReader::new(std::io::stdin());
    let adapter = Adapter::new(writer);
    while let Some(msg) = wire::read_message(&mut input)? {
        if msg["type"] != "request" {
            continue;
        }
        if !adapter.handle(&msg)? {
            break;
        }
    }
    adapter.end();
    Ok(ExitCode::SUCCESS)
}

/// Local path prefixes ↔ the paths the program's debug info uses.
#[derive(Debug, Clone, Default)]
struct SourceMap(Vec<(String, String)>);

impl SourceMap {
    /// From `{"LOCAL_PREFIX": "REMOTE_PREFIX"}`; a remote prefix of `""` makes paths
    /// relative, which match the debug info's path by suffix.
    fn from_json(v: &Value) -> std::result::Result<SourceMap, String> {
        match v {
            Value::Null => Ok(SourceMap::default()),
            Value::Object(m) => m
                .iter()
                .map(|(k, v)| match v.as_str() {
                    Some(r) => Ok((k.clone(), r.to_string())),
                    None => Err(format!("sourceMap[{k:?}] must be a path prefix (a string)")),
                })
                .collect::<std::result::Result<_, _>>()
                .map(SourceMap),
            _ => Err(r#"sourceMap must be an object: {"/local/checkout/": ""}"#.into()),
        }
    }

    fn to_remote(&self, local: &str) -> String {
        for (l, r) in &self.0 {
            if let Some(rest) = local.strip_prefix(l.as_str()) {
                return format!("{r}{rest}");
            }
        }
        local.to_string()
    }

    fn to_local(&self, remote: &str) -> String {
        for (l, r) in &self.0 {
            if r.is_empty() {
                if !remote.starts_with('/') {
                    return format!("{l}{remote}");
                }
            } else if let Some(rest) = remote.strip_prefix(r.as_str()) {
                return format!("{l}{rest}");
            }
        }
        remote.to_string()
    }
}

/// What a breakpoint asks for; a change of any part makes a new rule.
#[derive(Debug, Clone, PartialEq)]
struct Spec {
    line: u32,
    kind: Kind,
    when: Option<String>,
    max_hits: std::result::Result<Option<u64>, String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Log(String),
    Snapshot,
    Count,
}

/// What the editor is told about a breakpoint.
#[derive(Debug, Clone, PartialEq)]
struct Shown {
    verified: bool,
    reason: Option<&'static str>,
    message: Option<String>,
}

struct Breakpoint {
    id: i64,
    source: Value,
    spec: Spec,
    rule: Option<String>,
    shown: Shown,
    /// A count breakpoint's hits as last reported.
    count: Option<u64>,
}

impl Breakpoint {
    fn json(&self) -> Value {
        let mut b = json!({
            "id": self.id,
            "verified": self.shown.verified,
            "line": self.spec.line,
            "source": self.source,
        });
        if let Some(r) = self.shown.reason {
            b["reason"] = json!(r);
        }
        if let Some(m) = &self.shown.message {
            b["message"] = json!(m);
        }
        b
    }
}

struct Target {
    client: Arc<Client>,
    service: String,
    labels: BTreeMap<String, String>,
    version: Option<String>,
    map: SourceMap,
}

/// The latest snapshot of one thread of one agent.
struct Snapshot {
    thread_id: i64,
    key: (String, String),
    response: Arc<Response>,
}

#[derive(Default)]
struct Session {
    target: Option<Arc<Target>>,
    /// Breakpoints by local source path.
    breakpoints: BTreeMap<String, Vec<Breakpoint>>,
    next_breakpoint: i64,
    snapshots: Vec<Snapshot>,
    next_thread: i64,
    variables: Variables,
}

impl Session {
    fn by_rule(&mut self, rule: &str) -> Option<&mut Breakpoint> {
        self.breakpoints
            .values_mut()
            .flatten()
            .find(|b| b.rule.as_deref() == Some(rule))
    }

    fn rules(&self) -> Vec<String> {
        self.breakpoints
            .values()
            .flatten()
            .filter_map(|b| b.rule.clone())
            .collect()
    }
}

struct Adapter {
    writer: Writer,
    session: Arc<Mutex<Session>>,
    closed: Arc<AtomicBool>,
}

fn lock(s: &Mutex<Session>) -> MutexGuard<'_, Session> {
    // A panic elsewhere leaves the data as it was; keep serving the editor.
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl Adapter {
    fn new(writer: Writer) -> Adapter {
        Adapter {
            writer,
            session: Arc::default(),
            closed: Arc::default(),
        }
    }

    /// Answers one request; `false` when the session is over.
    fn handle(&self, req: &Value) -> Result<bool> {
        let args = &req["arguments"];
        let w = &self.writer;
        match req["command"].as_str().unwrap_or("") {
            "initialize" => w.respond(req, capabilities())?,
            "launch" | "attach" => match self.attach(args) {
                Ok(note) => {
                    w.respond(req, json!({}))?;
                    self.console(&note)?;
                    w.event("initialized", json!({}))?;
                }
                Err(e) => w.fail(req, &format!("{e:#}"))?,
            },
            "setBreakpoints" => {
                let body = self.set_breakpoints(args);
                w.respond(req, json!({ "breakpoints": body }))?;
            }
            "setExceptionBreakpoints" => w.respond(req, json!({ "breakpoints": [] }))?,
            "configurationDone" => w.respond(req, json!({}))?,
            "threads" => w.respond(req, json!({ "threads": self.threads() }))?,
            "stackTrace" => match self.stack_trace(args) {
                Some(body) => w.respond(req, body)?,
                None => w.fail(req, "no snapshot of that thread: set a breakpoint on a line it runs")?,
            },
            "scopes" => w.respond(req, json!({ "scopes": self.scopes(args) }))?,
            "variables" => {
                let r = args["variablesReference"].as_i64().unwrap_or(0);
                match lock(&self.session).variables.expand(r) {
                    Some(vars) => w.respond(req, json!({ "variables": vars }))?,
                    None => w.fail(
                        req,
                        "these values belong to an older snapshot and are gone: expand a newer one",
                    )?,
                }
            }
            "continue" => w.respond(req, json!({ "allThreadsContinued": true }))?,
            "pause" | "next" | "stepIn" | "stepOut" | "stepBack" | "reverseContinue" | "goto"
            | "restartFrame" => w.fail(
                req,
                "nonstop never pauses the program: its breakpoints take snapshots and log lines while it runs",
            )?,
            "evaluate" => w.fail(
                req,
                "nonstop evaluates expressions inside the program: put them in a logpoint as {expr}",
            )?,
            "disconnect" | "terminate" => {
                self.remove_all();
                w.respond(req, json!({}))?;
                if req["command"] == "terminate" {
                    w.event("terminated", json!({}))?;
                }
                return Ok(false);
            }
            other => w.fail(req, &format!("nonstop dap does not support {other:?}"))?,
        }
        Ok(true)
    }

    fn console(&self, text: &str) -> Result<()> {
        self.writer.event(
            "output",
            json!({"category": "console", "output": format!("{text}\n")}),
        )
    }

    /// Connects to the server named in the launch arguments; says what it found.
    fn attach(&self, args: &Value) -> Result<String> {
        let text = |k: &str| args[k].as_str().map(str::to_string);
        let service = text("service")
            .filter(|s| !s.trim().is_empty())
            .context("the launch configuration needs \"service\": the service whose agents get the breakpoints")?;
        let server = text("server")
            .or_else(|| std::env::var("NONSTOP_SERVER").ok())
            .unwrap_or_else(|| "http://127.0.0.1:7070".into());
        let token = text("token").or_else(|| std::env::var("NONSTOP_TOKEN").ok());
        let labels = match &args["labels"] {
            Value::Null => BTreeMap::new(),
            Value::Object(m) => m
                .iter()
                .map(|(k, v)| match v.as_str() {
                    Some(v) => Ok((k.clone(), v.to_string())),
                    None => anyhow::bail!("labels.{k} must be a string"),
                })
                .collect::<Result<_>>()?,
            _ => anyhow::bail!(r#"labels must be an object: {{"env": "prod"}}"#),
        };
        let map = SourceMap::from_json(&args["sourceMap"]).map_err(anyhow::Error::msg)?;
        let client = Client::new(&ServerArgs {
            server: server.clone(),
            token,
            ca_cert: text("caCert").map(Into::into),
        })?;
        let agents: Vec<Value> = client.get("/api/v1/agents")?;
        let connected = agents
            .iter()
            .filter(|a| a["service"] == service.as_str() && a["connected"] == true)
            .count();
        let target = Arc::new(Target {
            client: Arc::new(client),
            service: service.clone(),
            labels,
            version: text("version"),
            map,
        });
        let stashed: Vec<(String, Value, Vec<Spec>)> = {
            let mut s = lock(&self.session);
            s.target = Some(target.clone());
            s.breakpoints
                .iter()
                .map(|(p, bs)| {
                    let source = bs.first().map(|b| b.source.clone()).unwrap_or_default();
                    (
                        p.clone(),
                        source,
                        bs.iter().map(|b| b.spec.clone()).collect(),
                    )
                })
                .collect()
        };
        // Breakpoints set before attaching get their rules now.
        for (path, source, specs) in stashed {
            for b in self.sync(&path, &source, specs) {
                self.writer
                    .event("breakpoint", json!({"reason": "changed", "breakpoint": b}))?;
            }
        }
        self.start_threads(target);
        Ok(format!(
            "nonstop: breakpoints go to service {service} on {server} ({connected} agent{} connected); the program never stops",
            if connected == 1 { "" } else { "s" }
        ))
    }

    fn set_breakpoints(&self, args: &Value) -> Vec<Value> {
        let source = args["source"].clone();
        let path = source["path"]
            .as_str()
            .or_else(|| source["name"].as_str())
            .unwrap_or("")
            .to_string();
        let specs: Vec<Spec> = args["breakpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .map(spec_of)
            .collect();
        self.sync(&path, &source, specs)
    }

    /// Makes the rules of `path` be `specs`: unchanged breakpoints keep their rule,
    /// others get a new one, and rules no breakpoint asks for any more are removed.
    fn sync(&self, path: &str, source: &Value, specs: Vec<Spec>) -> Vec<Value> {
        let mut s = lock(&self.session);
        let mut old = s.breakpoints.remove(path).unwrap_or_default();
        let target = s.target.clone();
        let mut new = Vec::new();
        for spec in specs {
            if let Some(i) = old.iter().position(|b| b.spec == spec) {
                new.push(old.remove(i));
                continue;
            }
            s.next_breakpoint += 1;
            let mut b = Breakpoint {
                id: s.next_breakpoint,
                source: source.clone(),
                spec,
                rule: None,
                shown: Shown {
                    verified: false,
                    reason: Some("pending"),
                    message: Some("waiting for the debug session to attach".into()),
                },
                count: None,
            };
            if let Some(t) = &target {
                create_rule(t, path, &mut b);
            }
            new.push(b);
        }
        if let Some(t) = &target {
            for b in &old {
                if let Some(r) = &b.rule {
                    // A rule already gone (expired, removed elsewhere) is what we want.
                    let _ = t.client.delete(&format!("/api/v1/rules/{r}"));
                }
            }
        }
        let out = new.iter().map(Breakpoint::json).collect();
        if !new.is_empty() {
            s.breakpoints.insert(path.to_string(), new);
        }
        out
    }

    fn remove_all(&self) {
        let s = lock(&self.session);
        if let Some(t) = &s.target {
            for r in s.rules() {
                let _ = t.client.delete(&format!("/api/v1/rules/{r}"));
            }
        }
    }

    /// Ends the session: rules removed (also when the editor just closed the stream).
    fn end(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.remove_all();
        lock(&self.session).breakpoints.clear();
    }

    fn threads(&self) -> Vec<Value> {
        let s = lock(&self.session);
        s.snapshots
            .iter()
            .map(|snap| {
                let r = &snap.response;
                json!({
                    "id": snap.thread_id,
                    "name": format!(
                        "{} {} (agent {}): snapshot at {}:{}, {}",
                        r.service, r.thread, r.agent, r.location.file, r.location.line, r.time
                    ),
                })
            })
            .collect()
    }

    fn stack_trace(&self, args: &Value) -> Option<Value> {
        let thread = args["threadId"].as_i64()?;
        let s = lock(&self.session);
        let snap = s.snapshots.iter().find(|x| x.thread_id == thread)?;
        let map = s.target.as_ref().map(|t| t.map.clone()).unwrap_or_default();
        let frames: Vec<Value> = snap
            .response
            .frames
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let mut frame = json!({
                    "id": thread * 10_000 + i as i64,
                    "name": f.function,
                    "line": f.line.unwrap_or(0),
                    "column": 1,
                });
                if let Some(file) = &f.file {
                    let local = map.to_local(file);
                    let name = local.rsplit('/').next().unwrap_or(&local).to_string();
                    frame["source"] = json!({"name": name, "path": local});
                }
                if i > 0 {
                    frame["presentationHint"] = json!("subtle");
                }
                frame
            })
            .collect();
        let total = frames.len();
        let start = args["startFrame"].as_u64().unwrap_or(0) as usize;
        let levels = match args["levels"].as_u64().unwrap_or(0) as usize {
            0 => total,
            n => n,
        };
        let frames: Vec<Value> = frames.into_iter().skip(start).take(levels).collect();
        Some(json!({ "stackFrames": frames, "totalFrames": total }))
    }

    fn scopes(&self, args: &Value) -> Vec<Value> {
        let frame = args["frameId"].as_i64().unwrap_or(-1);
        let (thread, index) = (frame / 10_000, frame % 10_000);
        let mut s = lock(&self.session);
        let Some(snap) = s.snapshots.iter().find(|x| x.thread_id == thread) else {
            return Vec::new();
        };
        // Values are captured in the innermost frame only.
        if index != 0 {
            return Vec::new();
        }
        let r = snap.response.clone();
        let mut scopes = vec![json!({
            "name": "Locals",
            "presentationHint": "locals",
            "variablesReference": s.variables.add(r.locals.0.clone()),
            "namedVariables": r.locals.0.len(),
            "expensive": false,
        })];
        if !r.watch.is_empty() {
            scopes.push(json!({
                "name": "Watch",
                "variablesReference": s.variables.add(r.watch.0.clone()),
                "namedVariables": r.watch.0.len(),
                "expensive": false,
            }));
        }
        scopes
    }

    fn start_threads(&self, target: Arc<Target>) {
        let (session, writer, closed) = (
            self.session.clone(),
            self.writer.clone(),
            self.closed.clone(),
        );
        let t = target.clone();
        std::thread::Builder::new()
            .name("dap-status".into())
            .spawn(move || {
                while !closed.load(Ordering::Relaxed) {
                    if poll_statuses(&t, &session, &writer).is_err() {
                        return;
                    }
                    std::thread::sleep(POLL);
                }
            })
            .ok();
        let (session, writer, closed) = (
            self.session.clone(),
            self.writer.clone(),
            self.closed.clone(),
        );
        std::thread::Builder::new()
            .name("dap-responses".into())
            .spawn(move || follow_responses(&target, &session, &writer, &closed))
            .ok();
    }
}

fn capabilities() -> Value {
    json!({
        "supportsConfigurationDoneRequest": true,
        "supportsConditionalBreakpoints": true,
        "supportsHitConditionalBreakpoints": true,
        "supportsLogPoints": true,
        "supportsTerminateRequest": true,
        "breakpointModes": [
            {
                "mode": "snapshot",
                "label": "Snapshot",
                "description": "Capture the locals and the stack each time the line runs, without stopping",
                "appliesTo": ["source"],
            },
            {
                "mode": "count",
                "label": "Count",
                "description": "Count how often the line runs (a metric), without stopping",
                "appliesTo": ["source"],
            },
        ],
    })
}

/// A DAP `SourceBreakpoint` as a [`Spec`].
fn spec_of(b: &Value) -> Spec {
    let nonempty = |k: &str| {
        b[k].as_str()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let kind = match (nonempty("logMessage"), b["mode"].as_str()) {
        (Some(m), _) => Kind::Log(m),
        (None, Some("count")) => Kind::Count,
        _ => Kind::Snapshot,
    };
    let max_hits = match nonempty("hitCondition") {
        None => Ok(None),
        Some(h) => {
            let digits = h.trim_start_matches(['<', '=', ' ']);
            match digits.parse::<u64>() {
                Ok(n) if n > 0 => Ok(Some(n)),
                _ => Err(format!(
                    "hit count {h:?}: give the most hits as a whole number above 0, e.g. 10"
                )),
            }
        }
    };
    Spec {
        line: b["line"].as_u64().unwrap_or(0) as u32,
        kind,
        when: nonempty("condition"),
        max_hits,
    }
}

/// Asks the server for `b`'s rule; a refusal makes the breakpoint `failed` with the reason.
fn create_rule(t: &Target, path: &str, b: &mut Breakpoint) {
    let failed = |m: String| Shown {
        verified: false,
        reason: Some("failed"),
        message: Some(m),
    };
    let max_hits = match &b.spec.max_hits {
        Ok(n) => *n,
        Err(e) => {
            b.shown = failed(e.clone());
            return;
        }
    };
    let remote = t.map.to_remote(path);
    let (action, template, metric) = match &b.spec.kind {
        Kind::Log(m) => (Action::Log, Some(m.clone()), None),
        Kind::Snapshot => (Action::Snapshot, None, None),
        Kind::Count => (
            Action::Metric,
            None,
            Some(count_metric(&remote, b.spec.line)),
        ),
    };
    let rule = Rule {
        id: String::new(),
        at: format!("{remote}:{}", b.spec.line),
        action,
        template,
        metric,
        watch: Vec::new(),
        when: b.spec.when.clone(),
        service: Some(t.service.clone()),
        version: t.version.clone(),
        labels: t.labels.clone(),
        max_hits,
        expires: None,
        rate: None,
        limits: Default::default(),
        to: Vec::new(),
    };
    match t.client.post::<_, Value>("/api/v1/rules", &rule) {
        Ok(view) => {
            b.rule = view
                .pointer("/rule/id")
                .and_then(Value::as_str)
                .map(str::to_string);
            b.shown = shown_of(&view, &t.service);
        }
        Err(e) => b.shown = failed(format!("the server refused the rule: {e:#}")),
    }
}

/// `hits_cart_rs_42` for `src/cart.rs:42`.
fn count_metric(file: &str, line: u32) -> Metric {
    let base = file.rsplit('/').next().unwrap_or(file);
    let clean: String = base
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    Metric {
        kind: MetricKind::Count,
        name: format!("hits_{clean}_{line}"),
        value: None,
        tags: BTreeMap::new(),
    }
}

/// What a rule view says about the breakpoint: verified once an agent armed it,
/// `failed` with the agent's message when every agent that answered refused it.
fn shown_of(view: &Value, service: &str) -> Shown {
    let hits = view["hits"].as_u64().unwrap_or(0);
    match view["state"].as_str() {
        Some("expired") => {
            return Shown {
                verified: false,
                reason: Some("failed"),
                message: Some(format!(
                    "the rule expired after {hits} hits: set the breakpoint again to renew it"
                )),
            };
        }
        Some("done") => {
            return Shown {
                verified: true,
                reason: None,
                message: Some(format!(
                    "reached its max hits ({hits}); the probe is removed"
                )),
            };
        }
        _ => {}
    }
    if view["enabled"] == false {
        return Shown {
            verified: false,
            reason: Some("pending"),
            message: Some("the rule is disabled on the server".into()),
        };
    }
    let agents = view["agents"].as_array().cloned().unwrap_or_default();
    let with = |status: &'static str| agents.iter().filter(move |a| a["status"] == status);
    let armed = ["armed", "rate-limited", "done"]
        .iter()
        .map(|s| with(s).count())
        .sum::<usize>();
    let errors: Vec<&Value> = with("error").collect();
    if armed > 0 {
        let mut message = format!(
            "armed in {armed} agent{} of {service}, {hits} hits",
            if armed == 1 { "" } else { "s" }
        );
        if let Some(e) = errors.first() {
            message.push_str(&format!(
                "; {} refused it: {}",
                errors.len(),
                e["message"].as_str().unwrap_or("error")
            ));
        }
        if let Some(r) = with("rate-limited").next() {
            message.push_str(&format!(
                "; rate-limited: {}",
                r["message"].as_str().unwrap_or("hits are being dropped")
            ));
        }
        return Shown {
            verified: true,
            reason: None,
            message: Some(message),
        };
    }
    if let Some(e) = errors.first() {
        return Shown {
            verified: false,
            reason: Some("failed"),
            message: Some(
                e["message"]
                    .as_str()
                    .unwrap_or("the agent could not arm the rule")
                    .to_string(),
            ),
        };
    }
    Shown {
        verified: false,
        reason: Some("pending"),
        message: Some(format!("waiting for an agent of {service} to arm it")),
    }
}

/// One round of reading rule views (and counts): a `breakpoint` event for each change.
fn poll_statuses(t: &Target, session: &Mutex<Session>, w: &Writer) -> Result<()> {
    let rules = lock(session).rules();
    for rule in rules {
        let Ok(view) = t.client.get::<Value>(&format!("/api/v1/rules/{rule}")) else {
            continue;
        };
        let shown = shown_of(&view, &t.service);
        let count_rule = view.pointer("/rule/action") == Some(&json!("metric"));
        let count = if count_rule {
            t.client
                .get::<Vec<Value>>(&format!("/api/v1/metrics?rule={rule}"))
                .ok()
                .map(|series| series.iter().filter_map(|s| s["count"].as_u64()).sum())
        } else {
            None
        };
        let mut s = lock(session);
        let Some(b) = s.by_rule(&rule) else { continue };
        if b.shown != shown {
            b.shown = shown;
            w.event(
                "breakpoint",
                json!({"reason": "changed", "breakpoint": b.json()}),
            )?;
        }
        if let Some(n) = count
            && b.count != Some(n)
        {
            b.count = Some(n);
            let text = format!(
                "{}:{} ran {n} times\n",
                b.source["name"].as_str().unwrap_or(""),
                b.spec.line
            );
            w.event(
                "output",
                json!({"category": "console", "output": text, "source": b.source, "line": b.spec.line}),
            )?;
        }
    }
    Ok(())
}

/// Forwards the session's responses from the live stream as `output` events, reconnecting
/// where it left off when the stream breaks.
fn follow_responses(t: &Target, session: &Mutex<Session>, w: &Writer, closed: &AtomicBool) {
    let mut last: Option<String> = None;
    while !closed.load(Ordering::Relaxed) {
        if let Ok(events) = t.client.events("/api/v1/responses/stream", last.as_deref()) {
            for event in events {
                let Ok(event) = event else { break };
                if event.id.is_some() {
                    last = event.id.clone();
                }
                let Ok(r) = serde_json::from_str::<Response>(&event.data) else {
                    continue;
                };
                if on_response(session, w, r).is_err() {
                    return;
                }
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn on_response(session: &Mutex<Session>, w: &Writer, r: Response) -> Result<()> {
    let mut s = lock(session);
    let Some(b) = s.by_rule(&r.rule) else {
        return Ok(());
    };
    let (source, line, kind) = (b.source.clone(), b.spec.line, b.spec.kind.clone());
    let mut body = json!({"category": "console", "source": source, "line": line});
    match kind {
        Kind::Log(_) => {
            body["output"] = json!(format!("{}\n", r.message.as_deref().unwrap_or("")));
        }
        Kind::Snapshot | Kind::Count => {
            let vars: Vec<String> = r
                .watch
                .0
                .iter()
                .map(|(e, v)| format!("({e}) = {}", summary(v)))
                .chain(
                    r.locals
                        .0
                        .iter()
                        .map(|(n, v)| format!("{n} = {}", summary(v))),
                )
                .collect();
            body["output"] = json!(format!(
                "snapshot in {} ({}:{}, thread {}): {}\n",
                r.location.function,
                r.location.file,
                r.location.line,
                r.thread,
                vars.join(", ")
            ));
            let mut all = r.watch.0.clone();
            all.extend(r.locals.0.iter().cloned());
            body["variablesReference"] = json!(s.variables.add(all));
            remember(&mut s, r);
        }
    }
    drop(s);
    w.event("output", body)
}

/// Keeps `r` as its thread's latest snapshot.
fn remember(s: &mut Session, r: Response) {
    let key = (r.agent.clone(), r.thread.clone());
    let r = Arc::new(r);
    if let Some(i) = s.snapshots.iter().position(|x| x.key == key) {
        let mut snap = s.snapshots.remove(i);
        snap.response = r;
        s.snapshots.push(snap);
        return;
    }
    if s.snapshots.len() >= MAX_THREADS {
        s.snapshots.remove(0);
    }
    s.next_thread += 1;
    let thread_id = s.next_thread;
    s.snapshots.push(Snapshot {
        thread_id,
        key,
        response: r,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_map_turns_local_paths_into_the_programs_and_back() {
        let m = SourceMap::from_json(&json!({"/home/me/shop/": ""})).unwrap();
        assert_eq!(m.to_remote("/home/me/shop/src/cart.rs"), "src/cart.rs");
        assert_eq!(m.to_local("src/cart.rs"), "/home/me/shop/src/cart.rs");
        assert_eq!(
            m.to_local("/rustc/abc/library/core/src/ops.rs"),
            "/rustc/abc/library/core/src/ops.rs"
        );
        let m = SourceMap::from_json(&json!({"/home/me/shop/": "/build/shop/"})).unwrap();
        assert_eq!(
            m.to_remote("/home/me/shop/src/cart.rs"),
            "/build/shop/src/cart.rs"
        );
        assert_eq!(
            m.to_local("/build/shop/src/cart.rs"),
            "/home/me/shop/src/cart.rs"
        );
        assert!(SourceMap::from_json(&json!(["x"])).is_err());
    }

    #[test]
    fn breakpoint_fields_become_the_rules_parts() {
        let s = spec_of(
            &json!({"line": 7, "logMessage": "n={n}", "condition": "n > 2", "hitCondition": "5"}),
        );
        assert_eq!(
            s,
            Spec {
                line: 7,
                kind: Kind::Log("n={n}".into()),
                when: Some("n > 2".into()),
                max_hits: Ok(Some(5))
            }
        );
        assert_eq!(
            spec_of(&json!({"line": 7, "mode": "count"})).kind,
            Kind::Count
        );
        assert_eq!(spec_of(&json!({"line": 7})).kind, Kind::Snapshot);
        assert!(
            spec_of(&json!({"line": 7, "hitCondition": "% 2"}))
                .max_hits
                .is_err()
        );
    }

    #[test]
    fn a_rule_refused_by_every_agent_is_a_failed_breakpoint_with_the_agents_message() {
        let view = json!({"state": "active", "enabled": true, "hits": 0, "agents": [
            {"status": "error", "message": "no code at a.rs:3; nearest lines with code: 2, 5"}]});
        assert_eq!(
            shown_of(&view, "shop"),
            Shown {
                verified: false,
                reason: Some("failed"),
                message: Some("no code at a.rs:3; nearest lines with code: 2, 5".into())
            }
        );
        let view = json!({"state": "active", "enabled": true, "hits": 0, "agents": []});
        assert_eq!(shown_of(&view, "shop").reason, Some("pending"));
        let view =
            json!({"state": "active", "enabled": true, "hits": 4, "agents": [{"status": "armed"}]});
        assert_eq!(
            shown_of(&view, "shop").message.as_deref(),
            Some("armed in 1 agent of shop, 4 hits")
        );
    }
}
