//! `nonstop`: the command line. Thin glue: clap definitions and one module per subcommand.
#![forbid(unsafe_code)]

mod cmd_run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// nonstop: breakpoints that don't stop.
#[derive(Debug, Parser)]
#[command(name = "nonstop", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run any native program with the nonstop agent preloaded.
    Run(cmd_run::RunArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("nonstop: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => cmd_run::run(args),
    }
}
