//! `nonstop rules`: add, list, show, disable, enable and remove rules; list the templates.

use crate::client::{Client, ServerArgs, outln};
use anyhow::{Result, bail};
use nonstop_model::views::{RuleView, TemplateView};
use nonstop_model::{Action, Metric, MetricKind, Rule};
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
    /// A target for the responses (repeat for more; see `nonstop targets list`); the IDE
    /// (`ui`) always gets them.
    #[arg(long, value_name = "TARGET")]
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
    let view: RuleView = Client::new(&a.server)?
        .post(
            &format!("/api/v1/rules/{}/{verb}", path_id(&a.id)?),
            &serde_json::json!({}),
        )
        .map_err(|e| e.context(format!("the server did not {verb} the rule")))?;
    eprintln!("nonstop: {verb}d rule {} ({} hits so far)", a.id, view.hits);
    Ok(ExitCode::SUCCESS)
}

fn templates(a: TemplatesArgs) -> Result<ExitCode> {
    let client = Client::new(&a.server)?;
    if a.json {
        outln!("{}", client.get_text("/api/v1/templates")?);
        return Ok(ExitCode::SUCCESS);
    }
    let list: Vec<TemplateView> = client.get("/api/v1/templates")?;
    for (i, t) in list.iter().enumerate() {
        if i > 0 {
            outln!();
        }
        outln!("{:<9} {}: {}", t.name, t.title, t.description);
        for p in &t.params {
            let need = match &p.default {
                _ if p.required => "required".to_string(),
                Some(d) => format!("default {d}"),
                None => "optional".to_string(),
            };
            outln!("          --param {}=…  {} ({need})", p.name, p.description);
        }
        outln!("          e.g. {}", t.example);
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
    let view: RuleView = Client::new(&a.server)?
        .post("/api/v1/rules", &rule)
        .map_err(|e| e.context("the server refused the rule"))?;
    outln!("{}", view.rule.id);
    Ok(ExitCode::SUCCESS)
}

/// An optional field as a cell: `-` when it is not set.
fn cell<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// The rule's state, `disabled` added when it is: "active, disabled".
fn state(view: &RuleView) -> String {
    let state = view.state.as_str();
    if view.enabled {
        state.to_string()
    } else {
        format!("{state}, disabled")
    }
}

/// "2 armed, 1 error" from a rule view's `agents`.
fn summary(view: &RuleView) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &view.agents {
        *counts.entry(a.status.as_str()).or_default() += 1;
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
    let rules: Vec<RuleView> = client.get("/api/v1/rules")?;
    let mut rows = vec![
        ["RULE", "STATE", "ACTION", "AT", "SERVICE", "HITS", "AGENTS"]
            .map(String::from)
            .to_vec(),
    ];
    for r in &rules {
        rows.push(vec![
            r.rule.id.clone(),
            state(r),
            r.rule.action.as_str().into(),
            r.rule.at.clone(),
            cell(r.rule.service.as_deref()),
            r.hits.to_string(),
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
    let view: RuleView = client.get(&path)?;
    let rule = &view.rule;
    outln!("rule     {}", rule.id);
    outln!("state    {} ({} hits)", state(&view), view.hits);
    outln!("at       {}", rule.at);
    outln!("action   {}", rule.action.as_str());
    for (label, v) in [
        ("template", rule.template.as_deref()),
        ("metric", rule.metric.as_ref().map(|m| m.name.as_str())),
        ("when", rule.when.as_deref()),
        ("service", rule.service.as_deref()),
        ("version", rule.version.as_deref()),
    ] {
        if let Some(v) = v {
            outln!("{label:<8} {v}");
        }
    }
    outln!(
        "limits   max hits {}, rate {}, expires after {} (at {})",
        cell(rule.max_hits),
        cell(rule.rate.as_deref()),
        cell(rule.expires.as_deref()),
        cell(view.expires_at.as_deref())
    );
    for d in &view.deliveries {
        outln!(
            "to       {}: {} sent, {} pending, {} failed, {} dropped",
            d.target,
            d.sent,
            d.pending,
            d.failed,
            d.dropped
        );
    }
    if view.agents.is_empty() {
        outln!("agents   none has reported on this rule yet");
        return Ok(ExitCode::SUCCESS);
    }
    outln!();
    // The fast path's column only when an agent runs with it (the default; not with `NONSTOP_FAST_PATH=0`).
    let fast = view.agents.iter().any(|s| s.fast_path.is_some());
    let mut header = vec!["AGENT", "STATUS", "PROBES", "HITS", "DROPPED"];
    if fast {
        header.push("FAST PATH");
    }
    header.push("MESSAGE");
    let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
    for s in &view.agents {
        let mut row = vec![
            s.agent.clone(),
            s.status.as_str().into(),
            s.probes.to_string(),
            s.hits.to_string(),
            s.dropped.to_string(),
        ];
        if fast {
            row.push(cell(
                s.fast_path
                    .as_deref()
                    .map(|f| f.strip_prefix("fast path: ").unwrap_or(f)),
            ));
        }
        row.push(cell(s.message.as_deref()));
        rows.push(row);
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
