//! The `kiln` binary: parses arguments and dispatches; the work is in the library crates.

mod cli;
mod config;
mod up;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Self-hosted, E2B-compatible sandboxes"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start Kiln: REST API, sandbox proxy and orchestrator (builds the base template first).
    Up(config::UpArgs),
    /// Sandboxes: create, list, exec, kill.
    #[command(subcommand)]
    Sandbox(cli::SandboxCommand),
    /// Templates.
    #[command(subcommand)]
    Template(cli::TemplateCommand),
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kiln: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match args.command {
            Command::Up(up) => up::run(up).await,
            Command::Sandbox(command) => cli::sandbox(command).await,
            Command::Template(command) => cli::template(command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kiln: {error:#}");
            ExitCode::FAILURE
        }
    }
}
