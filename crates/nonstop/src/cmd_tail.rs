//! `nonstop tail`: responses as they arrive.

use crate::client::{Client, Events, ServerArgs};
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
    #[arg(long, value_parser = nonstop_model::parse_duration)]
    pub timeout: Option<Duration>,
}

/// Streams until `--count` responses or `--timeout`; without either, for as long as it is
/// left running (reconnecting when the server restarts).
pub fn run(args: Args) -> Result<ExitCode> {
    let client = Client::new(&args.server)?;
    let path = match &args.rule {
        Some(r) => format!(
            "/api/v1/responses/stream?rule={}",
            crate::cmd_rules::path_id(r)?
        ),
        None => "/api/v1/responses/stream".to_string(),
    };
    if args.count == Some(0) {
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = args.timeout.map(|t| Instant::now() + t);
    // The stream blocks in reads; a reader thread lets the deadline win over a quiet stream.
    // It also reconnects when the stream ends (the server restarted), resuming after the
    // last event so nothing is missed or repeated.
    let first = client.events(&path, None)?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("nonstop-tail".into())
        .spawn(move || follow(&client, &path, first, &tx))?;
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
            return Err(anyhow!("the live stream stopped"));
        };
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

/// Sends each event's data to `tx` until the receiver goes; reconnects when the stream ends.
fn follow(client: &Client, path: &str, first: Events, tx: &mpsc::Sender<String>) {
    let mut events = first;
    let mut last: Option<String> = None;
    loop {
        let mut why = "the server closed it".to_string();
        for e in events.by_ref() {
            match e {
                Ok(e) if e.event.as_deref() == Some("missed") => {
                    eprintln!("nonstop: {}", missed(&e.data))
                }
                // Other named events are for other clients.
                Ok(e) if e.event.is_some() => {}
                Ok(e) => {
                    if e.id.is_some() {
                        last.clone_from(&e.id);
                    }
                    if tx.send(e.data).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    why = format!("{e:#}");
                    break;
                }
            }
        }
        eprintln!("nonstop: the live stream ended ({why}); reconnecting");
        let mut wait = Duration::from_millis(500);
        events = loop {
            std::thread::sleep(wait);
            match client.events(path, last.as_deref()) {
                Ok(ev) => {
                    eprintln!("nonstop: reconnected to the live stream");
                    break ev;
                }
                Err(_) => wait = (wait * 2).min(Duration::from_secs(10)),
            }
        };
    }
}

/// What a `missed` event says: the responses the store pruned before this stream read them.
fn missed(data: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
    match (v["count"].as_i64(), v["after"].as_i64(), v["next"].as_i64()) {
        (Some(n), Some(a), Some(b)) => format!(
            "{n} responses (ids {} to {}) were removed from the store (retention, or a deleted rule) before this stream read them",
            a + 1,
            b - 1
        ),
        _ => format!("responses were removed from the store before this stream read them: {data}"),
    }
}

/// One line a person reads: time, service/agent, rule, place, message, watch values (in
/// parentheses) and locals.
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
    for (expr, v) in &r.watch.0 {
        let shown = match (&v.error, v.redacted) {
            (Some(e), _) => format!("<{e}>"),
            (None, true) => "<redacted>".into(),
            (None, false) => serde_json::to_value(v)
                .ok()
                .and_then(|j| j.get("value").map(|x| x.to_string()))
                .unwrap_or_else(|| "?".into()),
        };
        line.push_str(&format!(" ({expr})={shown}"));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missed_event_names_how_many_and_which_ids() {
        assert_eq!(
            missed(r#"{"after":40,"next":151,"count":110}"#),
            "110 responses (ids 41 to 150) were removed from the store (retention, or a deleted rule) before this stream read them"
        );
        assert!(missed("oops").ends_with(": oops"));
    }

    #[test]
    fn the_human_line_shows_watch_values_before_the_locals() {
        let json = r#"{"rule":"r-1","agent":"a","service":"shop","time":"T","thread":"main",
            "location":{"file":"src/cart.rs","line":22,"function":"f"},"message":null,"frames":[],
            "locals":{"total":{"type":"u64","value":42}},
            "watch":{"total * 2":{"type":"i64","value":84},
                     "self.api_token":{"type":"String","value":null,"redacted":true},
                     "total / 0":{"type":"?","value":null,"error":"division by zero in `total / 0`"}}}"#;
        assert_eq!(
            human(json),
            "T shop/a r-1 src/cart.rs:22 (total * 2)=84 (self.api_token)=<redacted> \
             (total / 0)=<division by zero in `total / 0`> total=42"
        );
    }
}
