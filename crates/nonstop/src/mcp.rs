//! `nonstop mcp`: a Model Context Protocol server on stdio (newline-delimited JSON-RPC 2.0)
//! whose tools let a coding assistant look at services and agents, set bounded probes,
//! and read what they caught, over the server's REST API.
//!
//! Every rule a tool adds carries a max hits and an expiry, the defaults below when the
//! assistant gives none, never more than the server accepts. `--read-only` keeps the
//! looking tools and refuses the ones that add or remove rules.

use crate::client::{Client, ServerArgs};
use anyhow::{Result, bail};
use nonstop_model::{Action, Metric, MetricKind, Response, Rule};
use nonstop_server::validate::{MAX_EXPIRES, MAX_HITS};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Arguments of `nonstop mcp`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Look only: refuse the tools that add or remove rules.
    #[arg(long)]
    pub read_only: bool,
}

/// Protocol revisions this server speaks through `initialize`, newest first.
const PROTOCOL_VERSIONS: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];
/// Max hits of a snapshot an assistant adds without saying.
const DEFAULT_SNAPSHOT_HITS: u64 = 5;
/// Max hits of a log or metric rule an assistant adds without saying.
const DEFAULT_HITS: u64 = 100;
/// Expiry of a rule an assistant adds without saying.
const DEFAULT_EXPIRES: &str = "15m";
/// Responses `get_responses` returns without a `limit`, and at most.
const DEFAULT_RESPONSES: u64 = 10;
const MAX_RESPONSES: u64 = 100;
/// Longest line accepted from the client.
const MAX_LINE: usize = 16 << 20;

/// Serves MCP on stdin/stdout until the client closes stdin.
pub fn run(args: Args) -> Result<ExitCode> {
    let server = Server {
        client: Client::new(&args.server)?,
        read_only: args.read_only,
    };
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut out = std::io::stdout();
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(ExitCode::SUCCESS);
        }
        if line.len() > MAX_LINE {
            bail!("a message of {} bytes is over the limit", line.len());
        }
        if line.trim().is_empty() {
            continue;
        }
        if let Some(answer) = server.message(line.trim()) {
            serde_json::to_writer(&mut out, &answer)?;
            out.write_all(b"\n")?;
            out.flush()?;
        }
    }
}

struct Server {
    client: Client,
    read_only: bool,
}

/// A tool's failure: told to the assistant as a result with `isError`, not a protocol error.
struct ToolError(String);

impl<E: Into<anyhow::Error>> From<E> for ToolError {
    fn from(e: E) -> ToolError {
        ToolError(format!("{:#}", e.into()))
    }
}

fn rpc_error(id: &Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

impl Server {
    /// The answer to one JSON-RPC message; `None` for notifications and responses.
    fn message(&self, text: &str) -> Option<Value> {
        let Ok(msg) = serde_json::from_str::<Value>(text) else {
            return Some(rpc_error(&Value::Null, -32700, "not JSON"));
        };
        if !msg.is_object() {
            return Some(rpc_error(
                &Value::Null,
                -32600,
                "a message is one JSON-RPC object",
            ));
        }
        let id = msg.get("id")?.clone();
        let Some(method) = msg["method"].as_str() else {
            return None; // a response to something we never asked
        };
        let params = &msg["params"];
        let result = match method {
            "initialize" => Ok(initialize(params)),
            "ping" => Ok(json!({})),
            "tools/list" => Ok(json!({"tools": tools(self.read_only)})),
            "tools/call" => self.call(params),
            "resources/list" => Ok(json!({"resources": resources()})),
            "resources/read" => self.read_resource(params),
            other => Err((-32601, format!("no method {other:?}"))),
        };
        Some(match result {
            Ok(r) => json!({"jsonrpc": "2.0", "id": id, "result": r}),
            Err((code, m)) => rpc_error(&id, code, &m),
        })
    }

    fn call(&self, params: &Value) -> std::result::Result<Value, (i64, String)> {
        let name = params["name"].as_str().unwrap_or("");
        let empty = json!({});
        let args = if params["arguments"].is_object() {
            &params["arguments"]
        } else {
            &empty
        };
        let result = match name {
            "list_services" => self.list_services(),
            "list_agents" => self.list_agents(args),
            "where" => where_tool(args),
            "get_rule" => self.get_rule(args),
            "get_responses" => self.get_responses(args),
            "get_metrics" => self.get_metrics(args),
            "add_snapshot" | "add_log" | "add_metric" | "remove_rule" if self.read_only => {
                Err(ToolError(format!(
                    "{name} is refused: this nonstop mcp runs with --read-only, so it may look but not add or remove rules; ask the user to start it without --read-only"
                )))
            }
            "add_snapshot" => self.add(args, Action::Snapshot),
            "add_log" => self.add(args, Action::Log),
            "add_metric" => self.add(args, Action::Metric),
            "remove_rule" => self.remove_rule(args),
            other => return Err((-32602, format!("no tool {other:?}: see tools/list"))),
        };
        Ok(match result {
            Ok((text, structured)) => json!({
                "content": [{"type": "text", "text": text}],
                "structuredContent": structured,
                "isError": false,
            }),
            Err(ToolError(m)) => json!({
                "content": [{"type": "text", "text": m}],
                "isError": true,
            }),
        })
    }

    fn list_services(&self) -> std::result::Result<(String, Value), ToolError> {
        let services: Vec<Value> = self.client.get("/api/v1/services")?;
        let lines: Vec<String> = services
            .iter()
            .map(|s| {
                format!(
                    "{}: {} of {} agents connected{}",
                    str_of(&s["service"]),
                    s["connected"],
                    s["agents"],
                    s["commit"]
                        .as_str()
                        .map(|c| format!(", commit {c}"))
                        .unwrap_or_default()
                )
            })
            .collect();
        Ok((
            or_none(lines, "no services yet"),
            json!({"services": services}),
        ))
    }

    fn list_agents(&self, args: &Value) -> std::result::Result<(String, Value), ToolError> {
        let service = opt_str(args, "service")?;
        let mut agents: Vec<Value> = self.client.get("/api/v1/agents")?;
        if let Some(s) = &service {
            agents.retain(|a| a["service"] == s.as_str());
        }
        let lines: Vec<String> = agents
            .iter()
            .map(|a| {
                format!(
                    "{} {} pid {} on {} ({})",
                    str_of(&a["id"]),
                    str_of(&a["service"]),
                    a["pid"],
                    str_of(&a["host"]),
                    if a["connected"] == true {
                        "connected"
                    } else {
                        "gone"
                    }
                )
            })
            .collect();
        Ok((or_none(lines, "no agents"), json!({"agents": agents})))
    }

    fn rule_text(view: &Value) -> String {
        let mut text = format!(
            "rule {} at {}: {} ({} hits, max {}, expires {})",
            str_of(&view["rule"]["id"]),
            str_of(&view["rule"]["at"]),
            str_of(&view["state"]),
            view["hits"],
            view["rule"]["max_hits"],
            str_of(&view["expires_at"]),
        );
        for a in view["agents"].as_array().into_iter().flatten() {
            text.push_str(&format!(
                "\n  agent {}: {}",
                str_of(&a["agent"]),
                str_of(&a["status"])
            ));
            if let Some(m) = a["message"].as_str() {
                text.push_str(&format!(" — {m}"));
            }
        }
        if view["agents"].as_array().is_none_or(Vec::is_empty) {
            text.push_str("\n  no agent of the service has reported on it yet");
        }
        text
    }

    fn get_rule(&self, args: &Value) -> std::result::Result<(String, Value), ToolError> {
        let id = rule_id(args)?;
        let view: Value = self.client.get(&format!("/api/v1/rules/{id}"))?;
        Ok((Self::rule_text(&view), view))
    }

    fn get_responses(&self, args: &Value) -> std::result::Result<(String, Value), ToolError> {
        let id = rule_id(args)?;
        let limit = match args.get("limit") {
            None | Some(Value::Null) => DEFAULT_RESPONSES,
            Some(v) => match v.as_u64() {
                Some(n) if (1..=MAX_RESPONSES).contains(&n) => n,
                _ => {
                    return Err(ToolError(format!(
                        "limit must be a whole number from 1 to {MAX_RESPONSES}"
                    )));
                }
            },
        };
        let text = self
            .client
            .get_text(&format!("/api/v1/responses?rule={id}&limit={limit}"))?;
        // Typed for the text, so the variables keep the program's order.
        let typed: Vec<Response> = serde_json::from_str(&text)?;
        let raw: Vec<Value> = serde_json::from_str(&text)?;
        let lines: Vec<String> = typed.iter().map(response_line).collect();
        Ok((
            or_none(lines, &format!("no responses for rule {id} yet")),
            json!({"responses": raw}),
        ))
    }

    fn get_metrics(&self, args: &Value) -> std::result::Result<(String, Value), ToolError> {
        let path = match opt_str(args, "rule")? {
            Some(r) => format!("/api/v1/metrics?rule={}", checked(&r)?),
            None => "/api/v1/metrics".into(),
        };
        let series: Vec<Value> = self.client.get(&path)?;
        let lines: Vec<String> = series
            .iter()
            .map(|s| {
                let mut l = format!(
                    "{} {} {} ({}): count {}",
                    str_of(&s["service"]),
                    str_of(&s["name"]),
                    str_of(&s["kind"]),
                    str_of(&s["rule"]),
                    s["count"]
                );
                if s["kind"] != "count" {
                    l.push_str(&format!(", sum {}, last {}", s["sum"], s["last"]));
                }
                if let Some(tags) = s["tags"].as_object() {
                    let t: Vec<String> = tags
                        .iter()
                        .map(|(k, v)| format!("{k}={}", str_of(v)))
                        .collect();
                    l.push_str(&format!(" [{}]", t.join(", ")));
                }
                l
            })
            .collect();
        Ok((
            or_none(lines, "no metric series yet"),
            json!({"series": series}),
        ))
    }

    fn add(&self, args: &Value, action: Action) -> std::result::Result<(String, Value), ToolError> {
        let rule = rule_of(args, action).map_err(ToolError)?;
        let view: Value = self
            .client
            .post("/api/v1/rules", &rule)
            .map_err(|e| ToolError(format!("the server refused the rule: {e:#}")))?;
        let id = str_of(&view["rule"]["id"]);
        // Give the agents a moment to arm it, so the answer says whether it worked.
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut view = view;
        while Instant::now() < deadline {
            let settled = view["agents"]
                .as_array()
                .is_some_and(|a| !a.is_empty() && a.iter().all(|s| s["status"] != "pending"));
            if settled {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
            match self.client.get::<Value>(&format!("/api/v1/rules/{id}")) {
                Ok(v) => view = v,
                Err(_) => break,
            }
        }
        Ok((Self::rule_text(&view), view))
    }

    fn remove_rule(&self, args: &Value) -> std::result::Result<(String, Value), ToolError> {
        let id = rule_id(args)?;
        self.client.delete(&format!("/api/v1/rules/{id}"))?;
        Ok((
            format!("removed rule {id}: agents disarm it and restore the program's bytes"),
            json!({"removed": id}),
        ))
    }

    fn read_resource(&self, params: &Value) -> std::result::Result<Value, (i64, String)> {
        let uri = params["uri"].as_str().unwrap_or("");
        let path = match uri {
            "nonstop://services" => "/api/v1/services",
            "nonstop://agents" => "/api/v1/agents",
            "nonstop://rules" => "/api/v1/rules",
            _ => return Err((-32002, format!("no resource {uri:?}: see resources/list"))),
        };
        let text = self
            .client
            .get_text(path)
            .map_err(|e| (-32603, format!("{e:#}")))?;
        Ok(json!({"contents": [{"uri": uri, "mimeType": "application/json", "text": text}]}))
    }
}

fn initialize(params: &Value) -> Value {
    let asked = params["protocolVersion"].as_str().unwrap_or("");
    let version = PROTOCOL_VERSIONS
        .iter()
        .find(|v| **v == asked)
        .unwrap_or(&PROTOCOL_VERSIONS[0]);
    json!({
        "protocolVersion": version,
        "capabilities": {"tools": {"listChanged": false}, "resources": {"listChanged": false}},
        "serverInfo": {"name": "nonstop", "version": env!("CARGO_PKG_VERSION")},
        "instructions": "nonstop sets probes in running programs without stopping them. \
            Find a service (list_services), check a location (where), add a bounded probe \
            (add_snapshot, add_log, add_metric), read what it caught (get_responses, get_metrics), \
            and remove it when done (remove_rule).",
    })
}

fn resources() -> Value {
    json!([
        {"uri": "nonstop://services", "name": "services", "mimeType": "application/json",
         "description": "The services the server knows, with their agent counts"},
        {"uri": "nonstop://agents", "name": "agents", "mimeType": "application/json",
         "description": "The agents (running processes) the server knows"},
        {"uri": "nonstop://rules", "name": "rules", "mimeType": "application/json",
         "description": "Every rule with its state and its status on each agent"},
    ])
}

/// The JSON schema of the properties every `add_*` tool shares.
fn rule_properties(extra: Value) -> Value {
    let mut p = json!({
        "at": {"type": "string", "description": "Where: FILE:LINE (src/cart.rs:42) or a function (cart::Cart::add)"},
        "service": {"type": "string", "description": "The service whose agents get the rule"},
        "when": {"type": "string", "description": "A condition over the variables in scope, e.g. `order.total > 100`"},
        "max_hits": {"type": "integer", "minimum": 1, "maximum": MAX_HITS,
                     "description": "Stop after this many hits over all agents"},
        "expires": {"type": "string", "description": format!(
            "Remove the rule after this long, e.g. 30s, 15m, 2h (default {DEFAULT_EXPIRES}, at most {}d)",
            MAX_EXPIRES.as_secs() / 86_400)},
        "labels": {"type": "object", "additionalProperties": {"type": "string"},
                   "description": "Only agents with these labels"},
        "version": {"type": "string", "description": "Only agents that report this program version"},
    });
    if let (Some(p), Some(extra)) = (p.as_object_mut(), extra.as_object()) {
        p.extend(extra.clone());
    }
    p
}

fn schema(properties: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

fn tools(read_only: bool) -> Vec<Value> {
    let refused = if read_only {
        " (refused: this server runs with --read-only)"
    } else {
        ""
    };
    let look = json!({"readOnlyHint": true, "openWorldHint": false});
    let add = json!({"readOnlyHint": false, "destructiveHint": false, "openWorldHint": false});
    let rule = json!({"rule": {"type": "string", "description": "The rule's id"}});
    vec![
        json!({"name": "list_services", "description": "List the services and how many of their agents are connected",
               "inputSchema": schema(json!({}), &[]), "annotations": look}),
        json!({"name": "list_agents", "description": "List the agents (running processes), optionally of one service",
               "inputSchema": schema(json!({"service": {"type": "string", "description": "Only this service's agents"}}), &[]),
               "annotations": look}),
        json!({"name": "where",
               "description": "What a location resolves to in a binary with debug info: its addresses, function and inline chain, and the variables in scope with their types and availability",
               "inputSchema": schema(json!({
                   "binary": {"type": "string", "description": "Path of the executable or shared object"},
                   "location": {"type": "string", "description": "FILE:LINE or a function name"}}), &["binary", "location"]),
               "annotations": look}),
        json!({"name": "get_rule", "description": "A rule's state and its status on each agent, errors included",
               "inputSchema": schema(rule.clone(), &["rule"]), "annotations": look}),
        json!({"name": "get_responses",
               "description": format!("The newest responses of a rule as stored (secrets already redacted by the agent), at most {MAX_RESPONSES}"),
               "inputSchema": schema(json!({
                   "rule": {"type": "string", "description": "The rule's id"},
                   "limit": {"type": "integer", "minimum": 1, "maximum": MAX_RESPONSES,
                             "description": format!("How many, newest first (default {DEFAULT_RESPONSES})")}}), &["rule"]),
               "annotations": look}),
        json!({"name": "get_metrics", "description": "The series of metric rules per service: counts, sums, last values",
               "inputSchema": schema(json!({"rule": {"type": "string", "description": "Only this rule's series"}}), &[]),
               "annotations": look}),
        json!({"name": "add_snapshot",
               "description": format!("Capture the locals and stack at a location the next times it runs, without stopping the program (default max_hits {DEFAULT_SNAPSHOT_HITS}){refused}"),
               "inputSchema": schema(rule_properties(json!({
                   "watch": {"type": "array", "items": {"type": "string"}, "maxItems": nonstop_model::rule::MAX_WATCH,
                             "description": "Expressions to evaluate at each hit, e.g. `len(cart.items)`"}})), &["at", "service"]),
               "annotations": add}),
        json!({"name": "add_log",
               "description": format!("Log a message at a location each time it runs, without stopping the program (default max_hits {DEFAULT_HITS}){refused}"),
               "inputSchema": schema(rule_properties(json!({
                   "template": {"type": "string", "description": "The message, with expressions in braces: `paid {order.total} for {user.id}`"}})),
                   &["at", "service", "template"]),
               "annotations": add}),
        json!({"name": "add_metric",
               "description": format!("Count hits at a location, or measure an expression there, without stopping the program (default max_hits {DEFAULT_HITS}){refused}"),
               "inputSchema": schema(rule_properties(json!({
                   "name": {"type": "string", "description": "The metric's name, e.g. checkout_total"},
                   "kind": {"type": "string", "enum": ["count", "gauge", "histogram"],
                            "description": "count (default without value), gauge (default with value) or histogram"},
                   "value": {"type": "string", "description": "The expression measured (gauge, histogram)"},
                   "tags": {"type": "object", "additionalProperties": {"type": "string"},
                            "description": "Tag name → expression"}})), &["at", "service", "name"]),
               "annotations": add}),
        json!({"name": "remove_rule",
               "description": format!("Remove a rule: agents disarm it and the program's original bytes are back{refused}"),
               "inputSchema": schema(rule, &["rule"]),
               "annotations": {"readOnlyHint": false, "destructiveHint": true, "idempotentHint": true, "openWorldHint": false}}),
    ]
}

fn where_tool(args: &Value) -> std::result::Result<(String, Value), ToolError> {
    let binary = req_str(args, "binary")?;
    let location = req_str(args, "location")?;
    let (json, text) = crate::cmd_where::resolve(std::path::Path::new(&binary), &location)?;
    Ok((text, json))
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn or_none(lines: Vec<String>, none: &str) -> String {
    if lines.is_empty() {
        none.to_string()
    } else {
        lines.join("\n")
    }
}

fn opt_str(args: &Value, key: &str) -> std::result::Result<Option<String>, ToolError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ToolError(format!("{key} must be a string"))),
    }
}

fn req_str(args: &Value, key: &str) -> std::result::Result<String, ToolError> {
    opt_str(args, key)?
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| ToolError(format!("{key} is required")))
}

fn checked(id: &str) -> std::result::Result<String, ToolError> {
    Ok(crate::cmd_rules::path_id(id)
        .map_err(|e| ToolError(e.to_string()))?
        .to_string())
}

fn rule_id(args: &Value) -> std::result::Result<String, ToolError> {
    checked(&req_str(args, "rule")?)
}

fn string_map(args: &Value, key: &str) -> std::result::Result<BTreeMap<String, String>, String> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v.as_str() {
                Some(s) => Ok((k.clone(), s.to_string())),
                None => Err(format!("{key}.{k} must be a string")),
            })
            .collect(),
        Some(_) => Err(format!("{key} must be an object of strings")),
    }
}

/// The rule an `add_*` tool asks for, bounded: max hits and expiry always set, never
/// above the server's limits.
fn rule_of(args: &Value, action: Action) -> std::result::Result<Rule, String> {
    let s = |k: &str| opt_str(args, k).map_err(|e| e.0);
    let need = |k: &str| {
        s(k)?
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| format!("{k} is required"))
    };
    let known: &[&str] = match action {
        Action::Snapshot => &["watch"],
        Action::Log => &["template"],
        Action::Metric => &["name", "kind", "value", "tags"],
    };
    if let Some(obj) = args.as_object() {
        let common = [
            "at", "service", "when", "max_hits", "expires", "labels", "version",
        ];
        if let Some(k) = obj
            .keys()
            .find(|k| !common.contains(&k.as_str()) && !known.contains(&k.as_str()))
        {
            return Err(format!(
                "unknown argument {k:?}: see the tool's input schema"
            ));
        }
    }
    let max_hits = match args.get("max_hits") {
        None | Some(Value::Null) => match action {
            Action::Snapshot => DEFAULT_SNAPSHOT_HITS,
            _ => DEFAULT_HITS,
        },
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_HITS).contains(&n) => n,
            _ => {
                return Err(format!(
                    "max_hits must be a whole number from 1 to {MAX_HITS}"
                ));
            }
        },
    };
    let expires = s("expires")?.unwrap_or_else(|| DEFAULT_EXPIRES.into());
    let d = nonstop_model::parse_duration(&expires)?;
    if d > MAX_EXPIRES || d.is_zero() {
        return Err(format!(
            "expires {expires:?}: give a duration above 0 and at most {}d, e.g. 15m",
            MAX_EXPIRES.as_secs() / 86_400
        ));
    }
    let (template, metric, watch) = match action {
        Action::Snapshot => {
            let watch = match args.get("watch") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|w| w.as_str().map(str::to_string).ok_or("watch holds strings"))
                    .collect::<std::result::Result<_, _>>()?,
                Some(_) => return Err("watch must be a list of expressions".into()),
            };
            (None, None, watch)
        }
        Action::Log => (Some(need("template")?), None, Vec::new()),
        Action::Metric => {
            let value = s("value")?;
            let kind = match (s("kind")?.as_deref(), &value) {
                (Some("count"), _) | (None, None) => MetricKind::Count,
                (Some("gauge"), _) | (None, Some(_)) => MetricKind::Gauge,
                (Some("histogram"), _) => MetricKind::Histogram,
                (Some(k), _) => return Err(format!("kind {k:?}: use count, gauge or histogram")),
            };
            if kind != MetricKind::Count && value.is_none() {
                return Err("a gauge or histogram needs value: the expression to measure".into());
            }
            let metric = Metric {
                kind,
                name: need("name")?,
                value,
                tags: string_map(args, "tags")?,
            };
            (None, Some(metric), Vec::new())
        }
    };
    Ok(Rule {
        id: String::new(),
        at: need("at")?,
        action,
        template,
        metric,
        watch,
        when: s("when")?,
        service: Some(need("service")?),
        version: s("version")?,
        labels: string_map(args, "labels")?,
        max_hits: Some(max_hits),
        expires: Some(expires),
        rate: None,
        limits: Default::default(),
        to: Vec::new(),
    })
}

/// One response in a line an assistant reads: time, agent, place, message, values.
fn response_line(r: &Response) -> String {
    let mut line = format!(
        "{} {} {}:{} in {}",
        r.time, r.agent, r.location.file, r.location.line, r.location.function
    );
    if let Some(m) = &r.message {
        line.push_str(&format!(": {m}"));
    }
    for (e, v) in &r.watch.0 {
        line.push_str(&format!(" ({e})={}", crate::dap::summary(v)));
    }
    for (n, v) in &r.locals.0 {
        line.push_str(&format!(" {n}={}", crate::dap::summary(v)));
    }
    line
}
