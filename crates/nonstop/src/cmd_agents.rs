//! `nonstop agents`: the agents the server knows.

use crate::client::{Client, ServerArgs, outln};
use anyhow::Result;
use nonstop_model::views::AgentView;
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
    let agents: Vec<AgentView> = client.get("/api/v1/agents")?;
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
        let info = &a.info;
        rows.push(vec![
            info.id.clone(),
            info.service.clone(),
            info.host.clone(),
            info.pid.to_string(),
            info.version.clone().unwrap_or_else(|| "-".into()),
            if a.connected { "connected" } else { "gone" }.into(),
            a.last_seen.clone(),
        ]);
    }
    crate::cmd_rules::print_table(&rows);
    Ok(ExitCode::SUCCESS)
}
