//! The `nonstop` command line: thin glue over the library crates.
#![forbid(unsafe_code)]

mod client;
mod cmd_agents;
mod cmd_rules;
mod cmd_serve;
mod cmd_tail;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Breakpoints that don't stop.
#[derive(Debug, Parser)]
#[command(name = "nonstop", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: agent hub, API and live stream.
    Serve(cmd_serve::Args),
    /// Add, list, show and remove rules.
    Rules(cmd_rules::Args),
    /// Stream responses as they arrive.
    Tail(cmd_tail::Args),
    /// List the agents the server knows.
    Agents(cmd_agents::Args),
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nonstop: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(a) => cmd_serve::run(a),
        Command::Rules(a) => cmd_rules::run(a),
        Command::Tail(a) => cmd_tail::run(a),
        Command::Agents(a) => cmd_agents::run(a),
    }
}
