//! `nonstop`: breakpoints that don't stop. The binary is thin glue: clap definitions
//! and calls into the library crates, one module per subcommand.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod client;
mod cmd_agents;
mod cmd_demo;
mod cmd_lambda;
mod cmd_metrics;
mod cmd_rules;
mod cmd_run;
mod cmd_serve;
mod cmd_tail;
mod cmd_targets;
mod cmd_where;
mod dap;
mod mcp;

/// Breakpoints that don't stop: a live debugger for native Rust and C programs.
#[derive(Parser)]
#[command(name = "nonstop", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: agent hub, API and live stream.
    Serve(cmd_serve::Args),
    /// Add, list, show and remove rules.
    Rules(cmd_rules::Args),
    /// Stream responses as they arrive.
    Tail(cmd_tail::Args),
    /// Add, list, show, test and remove targets: where rules' responses are delivered
    /// (OpenTelemetry, Sentry, Datadog, Honeycomb, Slack, webhooks, files).
    Targets(cmd_targets::Args),
    /// List the agents the server knows.
    Agents(cmd_agents::Args),
    /// Show the values of metric rules: counts, gauges and histograms per service and tags.
    Metrics(cmd_metrics::Args),
    /// Show what a location resolves to: addresses, function and inline chain, variables
    /// in scope with types and availability.
    Where(cmd_where::Args),
    /// Run any native program with the nonstop agent preloaded.
    Run(cmd_run::RunArgs),
    /// Start the server, a demo shop under the agent and traffic to it; prints where to look.
    Demo(cmd_demo::DemoArgs),
    /// A Debug Adapter Protocol server on stdio for editors: breakpoints become rules
    /// (logpoints, snapshots, counts) and the program never stops.
    Dap(dap::Args),
    /// A Model Context Protocol server on stdio: tools a coding assistant uses to set
    /// probes and read what they caught.
    Mcp(mcp::Args),
    /// The AWS Lambda extension (run by Lambda from /opt/extensions/nonstop): keeps the
    /// function's rules fresh and ships its responses while the environment is thawed.
    LambdaExtension(cmd_lambda::ExtensionArgs),
    /// AWS Lambda helpers: `nonstop lambda package --out layer.zip`.
    Lambda(cmd_lambda::LambdaArgs),
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = if started_as_lambda_extension() {
        Cli::parse_from(["nonstop", "lambda-extension"])
    } else {
        Cli::parse()
    };
    match cli.command {
        Command::Serve(a) => cmd_serve::run(a),
        Command::Rules(a) => cmd_rules::run(a),
        Command::Tail(a) => cmd_tail::run(a),
        Command::Targets(a) => cmd_targets::run(a),
        Command::Agents(a) => cmd_agents::run(a),
        Command::Metrics(a) => cmd_metrics::run(a),
        Command::Where(args) => cmd_where::run(&args),
        Command::Run(args) => cmd_run::run(args),
        Command::Demo(args) => cmd_demo::run(args),
        Command::Dap(args) => dap::run(args),
        Command::Mcp(args) => mcp::run(args),
        Command::LambdaExtension(args) => cmd_lambda::run_extension(args),
        Command::Lambda(args) => cmd_lambda::run_lambda(args),
    }
}

/// Lambda starts every file in `/opt/extensions` without arguments: the layer zip's
/// `extensions/nonstop` is this binary, so run as the extension there.
fn started_as_lambda_extension() -> bool {
    std::env::args_os().len() == 1
        && std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some()
        && std::env::current_exe().is_ok_and(|exe| {
            exe.parent()
                .and_then(|dir| dir.file_name())
                .is_some_and(|name| name == "extensions")
        })
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
