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
    /// Templates: list, build, delete.
    #[command(subcommand)]
    Template(cli::TemplateCommand),
    /// Images in the local image store (`ARTIFACTS_REGISTRY_PROVIDER=Local`).
    #[command(subcommand)]
    Image(ImageCommand),
    /// The image registry: repositories, retention (prune), settings check.
    #[command(subcommand)]
    Registry(cli::registry::RegistryCommand),
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Import an OCI image layout (a directory, or a tar of one, or a `docker save` tar) into
    /// `$KILN_HOME/images`, so a machine without internet access can build from it.
    Import {
        path: std::path::PathBuf,
        /// The name to give it (`name:tag`); default: the names recorded in the image.
        #[arg(long)]
        name: Option<String>,
    },
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
            Command::Registry(command) => cli::registry::run(command).await,
            Command::Image(ImageCommand::Import { path, name }) => {
                let home = std::path::PathBuf::from(
                    std::env::var("KILN_HOME").unwrap_or_else(|_| "/var/lib/kiln".into()),
                );
                registry::import(&path, &home.join("images"), name.as_deref())
                    .map(|names| {
                        for name in names {
                            println!("imported {name}");
                        }
                    })
                    .map_err(anyhow::Error::from)
            }
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
