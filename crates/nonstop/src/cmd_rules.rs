//! `nonstop rules`: add, list, show, disable, enable and remove rules; list the templates.

use crate::client::{Client, ServerArgs, outln};
use anyhow::{Result, bail};
use nonstop_model::{Action, Metric, MetricKind, Rule};
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::ExitCode;

/// Add, list, show and remove rules.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: RulesCommand,
}

/// The `rules` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum RulesCommand {
    /// Add a rule; prints its id.
    Add(Box<AddArgs>),
    /// List rules with their state.
    List(ListArgs),
    /// Show a rule and its status on each agent, errors included.
    Show(ShowArgs),
    /// Remove a rule; agents disarm it.
    Rm(RmArgs),
    /// Disable a rule: agents disarm it; its hits, statuses and responses are kept.
    Disable(RmArgs),
    /// Enable a disabled rule: agents arm it again; hits go on counting toward its max.
    Enable(RmArgs),
    /// List the rule templates (`rules add AT --template NAME`).
    Templates(TemplatesArgs),
}

/// `rules templates`.
#[derive(Debug, clap::Args)]
pub struct TemplatesArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Print the server's JSON.
    #[arg(long)]
    pub json: bool,
}

/// `rules add`.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Where: FILE:LINE (src/cart.rs:42) or a function (cart::add).
    pub at: String,
    /// Only agents of this service.
    #[arg(long)]
    pub service: Option<String>,
    /// Only agents that report this program version (NONSTOP_VERSION), exactly.
    #[arg(long, value_name = "V")]
    pub version: Option<String>,
    /// Only agents with these labels: env=prod,region=eu (or repeat the flag).
    #[arg(
        long = "label",
        visible_alias = "labels",
        value_name = "K=V,…",
        value_delimiter = ','
    )]
    pub labels: Vec<String>,
    /// Capture locals and the stack (the default action).
    #[arg(long, group = "action")]
    pub snapshot: bool,
    /// Log a message: "paid {order.total} for {user.id}".
    #[arg(long, value_name = "TEMPLATE", group = "action")]
    pub log: Option<String>,
    /// Record a metric: NAME counts hits, NAME=EXPR measures EXPR.
    #[arg(long, value_name = "NAME[=EXPR]", group = "action")]
    pub metric: Option<String>,
    /// The metric kind when an EXPR is given (default gauge; histogram with --template measure).
    #[arg(long, value_enum)]
    pub kind: Option<KindArg>,
    /// A metric tag: K=EXPR, its value at each hit (repeat for more), e.g. --tag sku=item.sku.
    #[arg(long = "tag", value_name = "K=EXPR")]
    pub tags: Vec<String>,
    /// Make the rule from a named template (see `nonstop rules templates`); its parameters
    /// come from --log (message), --metric NAME[=EXPR] (name, value), --kind and --param.
    #[arg(long, value_name = "NAME")]
    pub template: Option<String>,
    /// A template parameter, e.g. --param args=order,user (repeat for more).
    #[arg(long = "param", value_name = "K=V", requires = "template")]
    pub params: Vec<String>,
    /// A snapshot's watch expression, shown with its value at each hit (repeat for more),
    /// e.g. --watch "order.total - discount" --watch "len(cart.items)".
    #[arg(long = "watch", value_name = "EXPR")]
    pub watch: Vec<String>,
    /// Only hits where this condition holds.
    #[arg(long, value_name = "EXPR")]
    pub when: Option<String>,
    /// Stop after this many hits over all agents.
    #[arg(long)]
    pub max_hits: Option<u64>,
    /// Remove the rule after this long: 30m, 1h, 24h.
    #[arg(long, value_name = "DUR")]
    pub expires: Option<String>,
    /// Most hits per agent: 1/s, 100/m.
    #[arg(long)]
    pub rate: Option<String>,
    /// A capture limit: depth, string, collection, fields or frames (repeat for more),
    /// e.g. --limit string=4096; the server refuses values above its maximums.
    #[arg(long = "limit", value_name = "K=N")]
    pub limits: Vec<String>,
    /// Targets for the responses (ui always).
    #[arg(long, value_name = "TARGET", num_args = 1..)]
    pub to: Vec<String>,
}

/// Metric kinds for `--kind`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum KindArg {
    /// Last value.
    Gauge,
    /// Distribution.
    Histogram,
}

/// `rules list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Print the server's JSON.
    #[arg(long)]
    pub json: bool,
}

/// `rules show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The rule's id.
    pub id: String,
    /// Print the server's JSON.
    #[arg(long)]
    pub json: bool,
}

/// `rules rm`.
#[derive(Debug, clap::Args)]
pub struct RmArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The rule's id.
    pub id: String,
}

/// Runs a `rules` subcommand.
pub fn run(args: Args) -> Result<ExitCode> {
    match args.command {
        RulesCommand::Add(a) => add(*a),
        RulesCommand::List(a) => list(a),
        RulesCommand::Show(a) => show(a),
        RulesCommand::Disable(a) => switch(a, false),
        RulesCommand::Enable(a) => switch(a, true),
        RulesCommand::Templates(a) => templates(a),
        RulesCommand::Rm(a) => {
            Client::new(&a.server)?.delete(&format!("/api/v1/rules/{}", path_id(&a.id)?))?;
            eprintln!("nonstop: removed rule {}", a.id);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `id` if it can be a rule id (and so goes into a URL as it is).
pub(crate) fn path_id(id: &str) -> Result<&str> {
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        bail!("{id:?} is not a rule id: see `nonstop rules list`");
    }
    Ok(id)
}

fn switch(a: RmArgs, enabled: bool) -> Result<ExitCode> {
    let verb = if enabled { "enable" } else { "disable" };
    let view: Value = Client::new(&a.server)?
        .post(
            &format!("/api/v1/rules/{}/{verb}", path_id(&a.id)?),
            &serde_json::json!({}),
        )
        .map_err(|e| e.context(format!("the server did not {verb} the rule")))?;
    eprintln!(
        "nonstop: {verb}d rule {} ({} hits so far)",
        a.id,
        text(&view, "/hits")
    );
    Ok(ExitCode::SUCCESS)
}

fn templates(a: TemplatesArgs) -> Result<ExitCode> {
    let client = Client::new(&a.server)?;
    if a.json {
        outln!("{}", client.get_text("/api/v1/templates")?);
        return Ok(ExitCode::SUCCESS);
    }
    let list: Vec<Value> = client.get("/api/v1/templates")?;
    for (i, t) in list.iter().enumerate() {
        if i > 0 {
            outln!();
        }
        outln!(
            "{:<9} {}: {}",
            text(t, "/name"),
            text(t, "/title"),
            text(t, "/description")
        );
        for p in t
            .get("params")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let need = match p.get("default").and_then(Value::as_str) {
                _ if p["required"] == true => "required".to_string(),
                Some(d) => format!("default {d}"),
                None => "optional".to_string(),
            };
            outln!(
                "          --param {}=…  {} ({need})",
                text(p, "/name"),
                text(p, "/description")
            );
        }
        outln!("          e.g. {}", text(t, "/example"));
    }
    Ok(ExitCode::SUCCESS)
}

/// A K=V flag's parts, or an error that shows the form.
fn key_value<'a>(flag: &str, kv: &'a str, example: &str) -> Result<(&'a str, &'a str)> {
    match kv.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim(), v)),
        _ => bail!("{flag} {kv:?}: write K=V, e.g. {flag} {example}"),
    }
}

/// The rule a template makes, its parameters taken from --log, --metric, --kind, --param.
fn rule_from_template(a: &AddArgs, name: &str) -> Result<Rule> {
    if a.snapshot && name != "snapshot" {
        bail!("--snapshot and --template {name} ask for two actions: drop one");
    }
    let mut params = nonstop_model::templates::Params::new();
    if let Some(message) = &a.log {
        params.insert("message".into(), message.clone());
    }
    if let Some(m) = &a.metric {
        match m.split_once('=') {
            Some((n, v)) => {
                params.insert("name".into(), n.to_string());
                params.insert("value".into(), v.to_string());
            }
            None => {
                params.insert("name".into(), m.clone());
            }
        }
    }
    if let Some(k) = a.kind {
        let kind = match k {
            KindArg::Gauge => "gauge",
            KindArg::Histogram => "histogram",
        };
        params.insert("kind".into(), kind.into());
    }
    for p in &a.params {
        let (k, v) = key_value("--param", p, "args=order,user")?;
        params.insert(k.to_string(), v.to_string());
    }
    nonstop_model::templates::expand(name, &a.at, &params).map_err(|e| {
        anyhow::anyhow!(
            "{e} (see `nonstop rules templates`; --log, --metric and --kind fill parameters too)"
        )
    })
}

fn rule_from(a: &AddArgs) -> Result<Rule> {
    let mut rule = plain_rule_from(a)?;
    if !a.watch.is_empty() {
        if rule.action != Action::Snapshot {
            bail!(
                "--watch applies to snapshots: put the expressions in the --log message as {{EXPR}} instead"
            );
        }
        rule.watch = a.watch.clone();
    }
    if !a.tags.is_empty() {
        let Some(metric) = rule.metric.as_mut() else {
            bail!("--tag applies to metric rules: add --metric NAME[=EXPR], or drop --tag");
        };
        for t in &a.tags {
            let (k, v) = key_value("--tag", t, "sku=item.sku")?;
            metric.tags.insert(k.to_string(), v.to_string());
        }
    }
    for l in &a.limits {
        let (k, v) = key_value("--limit", l, "string=4096")?;
        let n: u32 = v
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("--limit {l:?}: {v:?} is not a whole number"))?;
        let slot = match k {
            "depth" => &mut rule.limits.depth,
            "string" => &mut rule.limits.string,
            "collection" => &mut rule.limits.collection,
            "fields" => &mut rule.limits.fields,
            "frames" => &mut rule.limits.frames,
            _ => {
                bail!("--limit {k}: no such limit; use depth, string, collection, fields or frames")
            }
        };
        *slot = Some(n);
    }
    Ok(rule)
}

fn plain_rule_from(a: &AddArgs) -> Result<Rule> {
    let mut labels = BTreeMap::new();
    for l in &a.labels {
        let (k, v) = key_value("--label", l, "region=eu")?;
        labels.insert(k.to_string(), v.to_string());
    }
    if let Some(name) = &a.template {
        let mut rule = rule_from_template(a, name)?;
        rule.when = a.when.clone();
        rule.service = a.service.clone();
        rule.version = a.version.clone();
        rule.labels = labels;
        rule.max_hits = a.max_hits;
        rule.expires = a.expires.clone();
        rule.rate = a.rate.clone();
        rule.to = a.to.clone();
        return Ok(rule);
    }
    if a.kind.is_some() && a.metric.as_deref().is_none_or(|m| !m.contains('=')) {
        bail!("--kind applies to --metric NAME=EXPR: add the expression, or drop --kind");
    }
    let (action, template, metric) = if let Some(t) = &a.log {
        (Action::Log, Some(t.clone()), None)
    } else if let Some(m) = &a.metric {
        let metric = match m.split_once('=') {
            Some((name, expr)) => Metric {
                kind: match a.kind {
                    Some(KindArg::Histogram) => MetricKind::Histogram,
                    Some(KindArg::Gauge) | None => MetricKind::Gauge,
                },
                name: name.to_string(),
                value: Some(expr.to_string()),
                tags: BTreeMap::new(),
            },
            None => Metric {
                kind: MetricKind::Count,
                name: m.clone(),
                value: None,
                tags: BTreeMap::new(),
            },
        };
        (Action::Metric, None, Some(metric))
    } else {
        (Action::Snapshot, None, None)
    };
    Ok(Rule {
        id: String::new(),
        at: a.at.clone(),
        action,
        template,
        metric,
        watch: Vec::new(),
        when: a.when.clone(),
        service: a.service.clone(),
        version: a.version.clone(),
        labels,
        max_hits: a.max_hits,
        expires: a.expires.clone(),
        rate: a.rate.clone(),
        limits: Default::default(),
        to: a.to.clone(),
    })
}

fn add(a: AddArgs) -> Result<ExitCode> {
    let rule = rule_from(&a)?;
    let view: Value = Client::new(&a.server)?
        .post("/api/v1/rules", &rule)
        .map_err(|e| e.context("the server refused the rule"))?;
    let id = view
        .pointer("/rule/id")
        .and_then(Value::as_str)
        .unwrap_or_default();
    outln!("{id}");
    Ok(ExitCode::SUCCESS)
}

fn text(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

/// The rule's state, `disabled` added when it is: "active, disabled".
fn state(view: &Value) -> String {
    let state = text(view, "/state");
    if view.get("enabled") == Some(&Value::Bool(false)) {
        format!("{state}, disabled")
    } else {
        state
    }
}

/// "2 armed, 1 error" from a rule view's `agents`.
fn summary(view: &Value) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for a in view
        .get("agents")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        *counts.entry(text(a, "/status")).or_default() += 1;
    }
    if counts.is_empty() {
        return "no agent yet".into();
    }
    counts
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn list(a: ListArgs) -> Result<ExitCode> {
    let client = Client::new(&a.server)?;
    if a.json {
        outln!("{}", client.get_text("/api/v1/rules")?);
        return Ok(ExitCode::SUCCESS);
    }
    let rules: Vec<Value> = client.get("/api/v1/rules")?;
    let mut rows = vec![
        ["RULE", "STATE", "ACTION", "AT", "SERVICE", "HITS", "AGENTS"]
            .map(String::from)
            .to_vec(),
    ];
    for r in &rules {
        rows.push(vec![
            text(r, "/rule/id"),
            state(r),
            text(r, "/rule/action"),
            text(r, "/rule/at"),
            text(r, "/rule/service"),
            text(r, "/hits"),
            summary(r),
        ]);
    }
    print_table(&rows);
    Ok(ExitCode::SUCCESS)
}

fn show(a: ShowArgs) -> Result<ExitCode> {
    let client = Client::new(&a.server)?;
    let path = format!("/api/v1/rules/{}", path_id(&a.id)?);
    if a.json {
        outln!("{}", client.get_text(&path)?);
        return Ok(ExitCode::SUCCESS);
    }
    let view: Value = client.get(&path)?;
    outln!("rule     {}", text(&view, "/rule/id"));
    outln!("state    {} ({} hits)", state(&view), text(&view, "/hits"));
    outln!("at       {}", text(&view, "/rule/at"));
    outln!("action   {}", text(&view, "/rule/action"));
    for (label, p) in [
        ("template", "/rule/template"),
        ("metric", "/rule/metric/name"),
        ("when", "/rule/when"),
        ("service", "/rule/service"),
        ("version", "/rule/version"),
    ] {
        if view.pointer(p).is_some() {
            outln!("{label:<8} {}", text(&view, p));
        }
    }
    outln!(
        "limits   max hits {}, rate {}, expires after {} (at {})",
        text(&view, "/rule/max_hits"),
        text(&view, "/rule/rate"),
        text(&view, "/rule/expires"),
        text(&view, "/expires_at")
    );
    let agents = view
        .get("agents")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if agents.is_empty() {
        outln!("agents   none has reported on this rule yet");
        return Ok(ExitCode::SUCCESS);
    }
    outln!();
    let mut rows = vec![
        ["AGENT", "STATUS", "PROBES", "HITS", "DROPPED", "MESSAGE"]
            .map(String::from)
            .to_vec(),
    ];
    for s in &agents {
        rows.push(vec![
            text(s, "/agent"),
            text(s, "/status"),
            text(s, "/probes"),
            text(s, "/hits"),
            text(s, "/dropped"),
            text(s, "/message"),
        ]);
    }
    print_table(&rows);
    Ok(ExitCode::SUCCESS)
}

/// Prints rows with columns padded to their widest cell (the last column unpadded).
pub fn print_table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        outln!("{}", line.trim_end());
    }
}
