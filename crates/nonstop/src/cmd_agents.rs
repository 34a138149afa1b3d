//! `nonstop agents`: the agents the server knows.

use crate::client::{Client, ServerArgs, outln};
use anyhow::Result;
use serde_json::Value;
use std::process::ExitCode;

/// List agents (connected first by last contact).
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Print the server's JSON.
    #[arg(long)]
    pub json: bool,
}

/// Prints the agents as a table or JSON.
pub fn run(args: Args) -> Result<ExitCode> {
    let client = Client::new(&args.server)?;
    if args.json {
        outln!("{}", client.get_text("/api/v1/agents")?);
        return Ok(ExitCode::SUCCESS);
    }
    let agents: Vec<Value> = client.get("/api/v1/agents")?;
    let s = |v: &Value, k: &str| match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    };
    let mut rows = vec![
        [
            "AGENT",
            "SERVICE",
            "HOST",
            "PID",
            "VERSION",
            "STATE",
            "LAST SEEN",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for a in &agents {
        let state = if a.get("connected").and_then(Value::as_bool) == Some(true) {
            "connected"
        } else {
            "gone"
        };
        rows.push(vec![
            s(a, "id"),
            s(a, "service"),
            s(a, "host"),
            s(a, "pid"),
            s(a, "version"),
            state.into(),
            s(a, "last_seen"),
        ]);
    }
    crate::cmd_rules::print_table(&rows);
    Ok(ExitCode::SUCCESS)
}
