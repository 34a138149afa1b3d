//! `nonstop rules`: add, list, show and remove rules.

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
    /// Only agents with this label (k=v; repeat for more).
    #[arg(long = "label", value_name = "K=V")]
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
    /// The metric kind when an EXPR is given.
    #[arg(long, value_enum, default_value = "gauge", requires = "metric")]
    pub kind: KindArg,
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

fn rule_from(a: &AddArgs) -> Result<Rule> {
    let mut labels = BTreeMap::new();
    for l in &a.labels {
        let Some((k, v)) = l.split_once('=') else {
            bail!("--label {l:?}: write K=V, e.g. --label region=eu");
        };
        labels.insert(k.to_string(), v.to_string());
    }
    let (action, template, metric) = if let Some(t) = &a.log {
        (Action::Log, Some(t.clone()), None)
    } else if let Some(m) = &a.metric {
        let metric = match m.split_once('=') {
            Some((name, expr)) => Metric {
                kind: match a.kind {
                    KindArg::Gauge => MetricKind::Gauge,
                    KindArg::Histogram => MetricKind::Histogram,
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
        version: None,
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
            text(r, "/state"),
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
    outln!(
        "state    {} ({} hits)",
        text(&view, "/state"),
        text(&view, "/hits")
    );
    outln!("at       {}", text(&view, "/rule/at"));
    outln!("action   {}", text(&view, "/rule/action"));
    for (label, p) in [
        ("template", "/rule/template"),
        ("metric", "/rule/metric/name"),
        ("when", "/rule/when"),
        ("service", "/rule/service"),
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
