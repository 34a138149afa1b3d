//! `nonstop targets`: add, list, show, test and remove the targets responses are delivered
//! to (OTLP, Sentry, Datadog, Honeycomb, Slack, webhooks, files).

use crate::client::{Client, ServerArgs, outln};
use anyhow::{Result, bail};
use nonstop_model::views::{TargetTestView, TargetView};
use nonstop_sinks::{TargetKind, TargetSpec};
use std::collections::BTreeMap;
use std::process::ExitCode;

/// Add, list, show, test and remove targets.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: TargetsCommand,
}

/// The `targets` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum TargetsCommand {
    /// Add a target (or replace one of the same name); rules route to it with `--to NAME`.
    Add(Box<AddArgs>),
    /// List the targets with their delivery counts.
    List(ListArgs),
    /// Show a target: settings (secrets cut to their last 4 characters), status, deliveries.
    Show(ShowArgs),
    /// Send one test event to a target and print what the receiver answered.
    Test(NameArgs),
    /// Remove a target and what still waits in its outbox.
    Rm(NameArgs),
}

/// `targets add`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("kind").required(true).multiple(false)))]
pub struct AddArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Its name, as rules' `--to` give it.
    pub name: String,
    /// OTLP logs (and metrics): the collector's base URL, e.g. http://collector:4318.
    #[arg(long, value_name = "URL", group = "kind")]
    pub otlp: Option<String>,
    /// With --otlp: gRPC (e.g. http://collector:4317) instead of HTTP/protobuf.
    #[arg(long, requires = "otlp")]
    pub grpc: bool,
    /// Sentry: the project's DSN.
    #[arg(long, value_name = "DSN", group = "kind")]
    pub sentry: Option<String>,
    /// Datadog: the API key.
    #[arg(long, value_name = "API_KEY", group = "kind")]
    pub datadog: Option<String>,
    /// With --datadog: the site, e.g. datadoghq.eu.
    #[arg(long, requires = "datadog")]
    pub site: Option<String>,
    /// Honeycomb: the ingest key.
    #[arg(long, value_name = "KEY", group = "kind", requires = "dataset")]
    pub honeycomb: Option<String>,
    /// With --honeycomb: the dataset.
    #[arg(long, value_name = "NAME", requires = "honeycomb")]
    pub dataset: Option<String>,
    /// Slack: the incoming webhook's URL.
    #[arg(long, value_name = "WEBHOOK_URL", group = "kind")]
    pub slack: Option<String>,
    /// A webhook: JSON POSTs (signed as Standard Webhooks with --secret).
    #[arg(long, value_name = "URL", group = "kind")]
    pub webhook: Option<String>,
    /// With --webhook: the signing secret, whsec_ followed by base64.
    #[arg(long, value_name = "whsec_…", requires = "webhook")]
    pub secret: Option<String>,
    /// A file of JSON lines on the server, rotated by size.
    #[arg(long, value_name = "PATH", group = "kind")]
    pub file: Option<String>,
    /// With --file: the size it rotates at, e.g. 100MB, 512KiB.
    #[arg(long, value_name = "SIZE", requires = "file", value_parser = parse_size)]
    pub max_size: Option<u64>,
    /// An extra header (OTLP, webhook): K=V (repeat for more).
    #[arg(long = "header", value_name = "K=V")]
    pub headers: Vec<String>,
    /// Overrides the vendor's endpoint (Datadog, Honeycomb): tests, proxies, EU sites.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
}

/// `targets list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Print the server's JSON.
    #[arg(long)]
    pub json: bool,
}

/// `targets show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The target.
    pub name: String,
    /// Print the server's JSON.
    #[arg(long)]
    pub json: bool,
}

/// `targets test` and `targets rm`.
#[derive(Debug, clap::Args)]
pub struct NameArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The target.
    pub name: String,
}

/// Reads `100MB`, `512KiB`, `1G`, `4096` as bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size: write e.g. 100MB, 512KiB or 1048576"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        u => {
            return Err(format!(
                "unknown size unit {u:?} in {s:?}: use B, KB, MB, GB, KiB, MiB or GiB"
            ));
        }
    };
    Ok((n * mult) as u64)
}

fn headers(list: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for h in list {
        match h.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                out.insert(k.trim().to_string(), v.to_string());
            }
            _ => bail!("--header {h:?} is not K=V: write e.g. --header Authorization=Bearer…"),
        }
    }
    Ok(out)
}

/// The target `a` describes.
pub fn spec(a: &AddArgs) -> Result<TargetSpec> {
    let hdrs = headers(&a.headers)?;
    let takes_headers = a.otlp.is_some() || a.webhook.is_some();
    if !hdrs.is_empty() && !takes_headers {
        bail!("--header applies to --otlp and --webhook targets");
    }
    if a.url.is_some() && a.datadog.is_none() && a.honeycomb.is_none() {
        bail!(
            "--url applies to --datadog and --honeycomb targets (give the others their URL directly)"
        );
    }
    let kind = if let Some(url) = &a.otlp {
        TargetKind::Otlp {
            url: url.clone(),
            grpc: a.grpc,
            headers: hdrs,
        }
    } else if let Some(dsn) = &a.sentry {
        TargetKind::Sentry { dsn: dsn.clone() }
    } else if let Some(key) = &a.datadog {
        TargetKind::Datadog {
            api_key: key.clone(),
            site: a.site.clone().unwrap_or_else(|| "datadoghq.com".into()),
            url: a.url.clone(),
        }
    } else if let Some(key) = &a.honeycomb {
        TargetKind::Honeycomb {
            key: key.clone(),
            dataset: a.dataset.clone().unwrap_or_default(),
            url: a.url.clone(),
        }
    } else if let Some(url) = &a.slack {
        TargetKind::Slack {
            webhook: url.clone(),
        }
    } else if let Some(url) = &a.webhook {
        TargetKind::Webhook {
            url: url.clone(),
            secret: a.secret.clone(),
            headers: hdrs,
        }
    } else if let Some(path) = &a.file {
        // The server writes the file: a relative path is made absolute here, where it was meant.
        let p = std::path::Path::new(path);
        let path = if p.is_relative() {
            std::env::current_dir()
                .map(|d| d.join(p).display().to_string())
                .unwrap_or_else(|_| path.clone())
        } else {
            path.clone()
        };
        TargetKind::File {
            path,
            max_size: a
                .max_size
                .unwrap_or(nonstop_sinks::spec::DEFAULT_FILE_MAX_SIZE),
        }
    } else {
        bail!(
            "give the kind of target: --otlp, --sentry, --datadog, --honeycomb, --slack, --webhook or --file"
        );
    };
    let spec = TargetSpec {
        name: a.name.clone(),
        kind,
    };
    spec.check()?;
    Ok(spec)
}

/// Runs a `targets` subcommand.
pub fn run(args: Args) -> Result<ExitCode> {
    match args.command {
        TargetsCommand::Add(a) => {
            let spec = spec(&a)?;
            let client = Client::new(&a.server)?;
            let v: TargetView = client.post("/api/v1/targets", &spec)?;
            outln!("{} ({})", v.name, v.kind);
            Ok(ExitCode::SUCCESS)
        }
        TargetsCommand::List(a) => {
            let client = Client::new(&a.server)?;
            if a.json {
                outln!("{}", client.get_text("/api/v1/targets")?);
                return Ok(ExitCode::SUCCESS);
            }
            let targets: Vec<TargetView> = client.get("/api/v1/targets")?;
            let mut rows = vec![
                [
                    "TARGET", "KIND", "STATUS", "PENDING", "SENT", "FAILED", "DROPPED",
                ]
                .map(String::from)
                .to_vec(),
            ];
            for t in &targets {
                rows.push(vec![
                    t.name.clone(),
                    t.kind.clone(),
                    t.status.clone(),
                    t.pending.to_string(),
                    t.sent.to_string(),
                    t.failed.to_string(),
                    t.dropped.to_string(),
                ]);
            }
            crate::cmd_rules::print_table(&rows);
            Ok(ExitCode::SUCCESS)
        }
        TargetsCommand::Show(a) => {
            let client = Client::new(&a.server)?;
            let path = format!("/api/v1/targets/{}", a.name);
            if a.json {
                outln!("{}", client.get_text(&path)?);
                return Ok(ExitCode::SUCCESS);
            }
            let t: TargetView = client.get(&path)?;
            outln!("target   {} ({})", t.name, t.kind);
            outln!("status   {}", t.status);
            if let Some(obj) = t.spec.as_object() {
                for (k, v) in obj {
                    if k == "name" || k == "kind" {
                        continue;
                    }
                    let v = match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    outln!("{k:<8} {v}");
                }
            }
            outln!(
                "delivery {} pending, {} sent, {} failed, {} dropped",
                t.pending,
                t.sent,
                t.failed,
                t.dropped
            );
            outln!(
                "oldest   {}",
                t.oldest_pending.as_deref().unwrap_or("- (nothing pending)")
            );
            outln!("error    {}", t.last_error.as_deref().unwrap_or("-"));
            Ok(ExitCode::SUCCESS)
        }
        TargetsCommand::Test(a) => {
            let client = Client::new(&a.server)?;
            let v: TargetTestView = client.post(
                &format!("/api/v1/targets/{}/test", a.name),
                &serde_json::json!({}),
            )?;
            outln!("{}: {} ({})", v.target, v.outcome, v.message);
            Ok(if v.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        TargetsCommand::Rm(a) => {
            let client = Client::new(&a.server)?;
            client.delete(&format!("/api/v1/targets/{}", a.name))?;
            outln!("removed {}", a.name);
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_read_with_units() {
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert_eq!(parse_size("512KiB"), Ok(524_288));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("3 parsecs").is_err());
    }
}
