//! `nonstop`: breakpoints that don't stop. The binary is thin glue: clap definitions
//! and calls into the library crates, one module per subcommand.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod cmd_run;
mod cmd_where;

/// Breakpoints that don't stop: a live debugger for native Rust and C programs.
#[derive(Parser)]
#[command(name = "nonstop", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what a location resolves to: addresses, function and inline chain, variables
    /// in scope with types and availability.
    Where(cmd_where::Args),
    /// Run any native program with the nonstop agent preloaded.
    Run(cmd_run::RunArgs),
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Where(args) => cmd_where::run(&args),
        Command::Run(args) => cmd_run::run(args),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(err) => {
            let broken_pipe = err.chain().any(|e| {
                e.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            });
            if broken_pipe {
                return ExitCode::SUCCESS;
            }
            eprintln!("nonstop: {err:#}");
            ExitCode::FAILURE
        }
    }
}
