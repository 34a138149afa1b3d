//! `nonstop tail`: responses as they arrive.

use crate::client::{Client, ServerArgs};
use anyhow::{Result, anyhow};
use nonstop_model::Response;
use std::io::Write;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Stream responses as they arrive.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Only this rule's responses.
    #[arg(long)]
    pub rule: Option<String>,
    /// Print each response as one line of JSON (exactly the Response JSON).
    #[arg(long)]
    pub json: bool,
    /// Exit (status 0) after this many responses.
    #[arg(long)]
    pub count: Option<u64>,
    /// Exit when this time is up (status 1 if fewer than --count arrived): 30s, 5m.
    #[arg(long, value_parser = crate::client::parse_duration)]
    pub timeout: Option<Duration>,
}

/// Streams until `--count` responses, `--timeout`, or the stream ends.
pub fn run(args: Args) -> Result<ExitCode> {
    let client = Client::new(&args.server)?;
    let path = match &args.rule {
        Some(r) => format!("/api/v1/responses/stream?rule={r}"),
        None => "/api/v1/responses/stream".to_string(),
    };
    if args.count == Some(0) {
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = args.timeout.map(|t| Instant::now() + t);
    // The stream blocks in reads; a reader thread lets the deadline win over a quiet stream.
    let (tx, rx) = mpsc::channel();
    let events = client.events(&path)?;
    std::thread::Builder::new()
        .name("nonstop-tail".into())
        .spawn(move || {
            for e in events {
                if tx.send(e).is_err() {
                    return;
                }
            }
        })?;
    let mut seen = 0u64;
    let mut out = std::io::stdout().lock();
    loop {
        let next = match deadline {
            Some(d) => match rx.recv_timeout(d.saturating_duration_since(Instant::now())) {
                Ok(e) => Some(e),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Ok(if args.count.is_some() {
                        ExitCode::FAILURE
                    } else {
                        ExitCode::SUCCESS
                    });
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => None,
            },
            None => rx.recv().ok(),
        };
        let Some(data) = next else {
            return Err(anyhow!("the server closed the live stream (stopped?)"));
        };
        let data = data?;
        let line = if args.json { data } else { human(&data) };
        if let Err(e) = writeln!(out, "{line}").and_then(|_| out.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(ExitCode::SUCCESS);
            }
            return Err(e.into());
        }
        seen += 1;
        if args.count.is_some_and(|n| seen >= n) {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// One line a person reads: time, service/agent, rule, place, message and locals.
fn human(data: &str) -> String {
    let Ok(r) = serde_json::from_str::<Response>(data) else {
        return data.to_string();
    };
    let mut line = format!(
        "{} {}/{} {} {}:{}",
        r.time, r.service, r.agent, r.rule, r.location.file, r.location.line
    );
    if let Some(m) = &r.message {
        line.push_str(&format!(" {m}"));
    }
    for (name, v) in &r.locals.0 {
        let v = serde_json::to_value(v).unwrap_or_default();
        let shown = v
            .get("value")
            .map(|x| x.to_string())
            .unwrap_or_else(|| "?".into());
        line.push_str(&format!(" {name}={shown}"));
    }
    line
}
