//! The `envd` binary: flags, logging, then [`envd::serve`].

use clap::Parser;
use std::{net::IpAddr, net::SocketAddr, path::PathBuf, process::ExitCode};

#[derive(Parser)]
#[command(name = "envd", version = envd_proto::host::ENVD_VERSION, about = "Kiln's in-sandbox agent (E2B envd protocol)")]
struct Args {
    /// TCP port (E2B's envd port).
    #[arg(long, default_value_t = envd_proto::host::ENVD_PORT)]
    port: u16,
    /// Address to bind the TCP port on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Do not listen on TCP (serve the host socket only).
    #[arg(long)]
    no_tcp: bool,
    /// Unix socket of the host channel.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Serve `sudo` inside the sandbox (needs root).
    #[arg(long)]
    sudo: bool,
    /// Log at debug level.
    #[arg(long)]
    verbose: bool,
}

fn main() -> ExitCode {
    // The sandbox's `sudo` is this binary under another name.
    if envd::sudo::client::invoked_as_sudo() {
        return envd::sudo::client::main();
    }
    let args = Args::parse();
    envd::split_if_pid1();
    let filter = if args.verbose { "debug" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ENVD_LOG")
                .unwrap_or_else(|_| filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = envd::Config {
        listen: (!args.no_tcp).then_some(SocketAddr::new(args.host, args.port)),
        socket: args.socket,
        sudo: args.sudo,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("envd: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(envd::serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("envd: {error}");
            ExitCode::FAILURE
        }
    }
}
