//! `nonstop serve`: the server, with its data folder and tokens.

use anyhow::{Context, Result};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Run the nonstop server (agent hub, API, live stream).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Data folder (SQLite file and tokens); default $NONSTOP_DATA, $XDG_DATA_HOME/nonstop or ~/.local/share/nonstop.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Where the state lives: sqlite:PATH, or postgres://USER@HOST[:PORT]/DB for several
    /// replicas sharing one database (default: SQLite in the data folder).
    #[arg(long, value_name = "URL", value_parser = nonstop_server::StoreLocation::parse)]
    pub store: Option<nonstop_server::StoreLocation>,
    /// Accept requests without a token (loopback addresses only).
    #[arg(long)]
    pub no_auth: bool,
    /// Serve HTTPS with this certificate chain (PEM).
    #[arg(long, requires = "tls_key", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// Responses kept per rule (the newest).
    #[arg(long, default_value_t = 10_000)]
    pub keep_responses: u64,
    /// How long responses are kept, e.g. 7d, 24h.
    #[arg(long, default_value = "7d", value_parser = nonstop_model::parse_duration)]
    pub keep_for: std::time::Duration,
    /// Where the web IDE reads a service's code: SERVICE=/path/to/folder or
    /// SERVICE=URL[#branch] (a Git repository, cloned under DATA/sources); repeatable.
    #[arg(long = "source", value_name = "SERVICE=PATH_OR_URL", value_parser = nonstop_server::sources::SourceSpec::parse_arg)]
    pub sources: Vec<(String, nonstop_server::sources::SourceSpec)>,
    /// The largest capture limits a rule may ask for, e.g.
    /// depth=5,string=4096,collection=1000,fields=100,frames=64; a rule above one is refused,
    /// a default above one is lowered to it. Unnamed limits: depth 16, string 1048576,
    /// collection 100000, fields 1000, frames 1000.
    #[arg(long, value_name = "NAME=N,…", value_parser = nonstop_server::validate::parse_max_limits)]
    pub max_limits: Option<nonstop_model::CaptureLimits>,
    /// How long a response waits in a target's outbox before it is dropped (and counted),
    /// e.g. 7d, 24h.
    #[arg(long, default_value = "7d", value_parser = nonstop_model::parse_duration)]
    pub outbox_max_age: std::time::Duration,
    /// Most responses waiting per target; past it the oldest are dropped (and counted).
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub outbox_max_size: u64,
    /// Longest wait between two tries of a target that fails, e.g. 5m, 30s.
    #[arg(long, default_value = "5m", value_parser = nonstop_model::parse_duration)]
    pub target_retry_max: std::time::Duration,
    /// How long one request to a target may take before it is retried, e.g. 30s
    /// (default: each kind's own, 15-30 s).
    #[arg(long, value_parser = nonstop_model::parse_duration)]
    pub target_timeout: Option<std::time::Duration>,
}

/// Runs the server until Ctrl-C or SIGTERM.
pub fn run(args: Args) -> Result<ExitCode> {
    init_logging();
    let data = args.data.unwrap_or_else(nonstop_server::default_data_dir);
    let mut config = nonstop_server::Config::new(args.listen, data);
    config.auth = !args.no_auth;
    config.sources = args.sources;
    if let Some(store) = args.store {
        config.store = store;
    }
    let store = config.store.clone();
    if let Some(max) = args.max_limits {
        config.max_limits = max;
    }
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        config.tls = Some(nonstop_server::tls::TlsFiles { cert, key });
    }
    config.retention = nonstop_server::store::Retention {
        per_rule: args.keep_responses,
        max_age_ms: i64::try_from(args.keep_for.as_millis()).unwrap_or(i64::MAX),
    };
    let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    config.outbox.limits.max_age_ms = ms(args.outbox_max_age);
    config.outbox.limits.max_pending = args.outbox_max_size;
    config.outbox.limits.keep_finished_ms = ms(args.keep_for);
    config.outbox.backoff_max = args.target_retry_max;
    config.outbox.backoff_base = config.outbox.backoff_base.min(args.target_retry_max);
    config.outbox.timeout = args.target_timeout;
    let runtime = nonstop_server::runtime().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let server = nonstop_server::serve(config).await?;
        // The banner is for a person; a closed stdout must not stop the server.
        let url = server.url();
        let data = server.data_dir().display().to_string();
        let mut banner = match server.tokens() {
            Some(t) => format!("nonstop: serving on {url}/?token={}\n", t.admin),
            None => format!("nonstop: serving on {url}/ (no tokens)\n"),
        };
        let store = store.describe(server.data_dir());
        banner.push_str(&format!("nonstop: state in {store}\n"));
        if server.tokens().is_some() {
            banner.push_str(&format!(
                "nonstop: tokens in {data}/admin.token (everything) and {data}/agent.token (agents)\n"
            ));
        }
        let mut out = std::io::stdout();
        let _ = out.write_all(banner.as_bytes()).and_then(|_| out.flush());
        wait_for_stop().await;
        eprintln!("nonstop: stopping");
        server.shutdown().await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_stop() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Logs go to stderr; `NONSTOP_LOG=debug|info|warn|error` picks the level (default info).
fn init_logging() {
    let level = match std::env::var("NONSTOP_LOG").as_deref() {
        Ok("trace") => tracing::Level::TRACE,
        Ok("debug") => tracing::Level::DEBUG,
        Ok("warn") => tracing::Level::WARN,
        Ok("error") => tracing::Level::ERROR,
        _ => tracing::Level::INFO,
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
