//! envd: the agent inside every Kiln sandbox.
//!
//! It speaks E2B's envd protocol, so the unmodified E2B SDKs drive it:
//! - Connect RPC services `process.Process` ([`rpc::process`]) and `filesystem.Filesystem`
//!   ([`rpc::filesystem`]), JSON or binary protobuf, unary and streaming;
//! - plain HTTP: `/health`, `/envs`, `/metrics`, `/init`, `/files` ([`http`]).
//!
//! It listens on TCP (`--port`, E2B's 49983) and/or on a Unix socket (`--socket`), the *host
//! channel* through which Kiln reaches a sandbox that has no network. On that socket only it also
//! serves the quiesce handshake and `CONNECT` relays to servers inside the sandbox ([`host`]).
//!
//! As a sandbox's init it also serves `sudo` to the sandbox's users ([`sudo`]).
//!
//! Architecture invariant: envd knows nothing about the host. It never calls out; the host
//! calls in, and everything it needs from the host arrives through `/init`.

mod auth;
mod fs;
mod host;
mod http;
mod init;
mod paths;
mod process;
mod rpc;
mod server;
mod state;
pub mod sudo;
mod users;

pub use init::split_if_pid1;
pub use state::Envd;

use axum::{Router, middleware};
use std::{net::SocketAddr, path::PathBuf, sync::Arc};
use tokio::net::TcpListener;

/// Where envd listens. At least one of the two must be set.
#[derive(Clone, Debug)]
pub struct Config {
    /// TCP address for E2B's envd port.
    pub listen: Option<SocketAddr>,
    /// Unix socket path of the host channel.
    pub socket: Option<PathBuf>,
    /// Serve `sudo` on [`sudo::SOCKET`] (envd must run as root).
    pub sudo: bool,
}

/// Why envd could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("nothing to listen on: give a TCP port or a socket path")]
    NoListener,
    #[error("cannot listen on {addr}: {source}")]
    Tcp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Binds every configured listener, then serves until the process is stopped.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    if config.listen.is_none() && config.socket.is_none() {
        return Err(ServeError::NoListener);
    }
    let host_socket = config.socket.clone().map(host::HostSocket::new);
    let envd = Envd::new();
    let app = router(envd);

    // Without sudo a sandbox still works; envd does not give up on it.
    if config.sudo
        && let Err(error) = sudo::server::start(std::path::Path::new(sudo::SOCKET))
    {
        tracing::error!(%error, socket = sudo::SOCKET, "cannot serve sudo");
    }
    let mut tasks = Vec::new();
    if let (Some(socket), Some(path)) = (&host_socket, &config.socket) {
        let task = socket
            .start(app.clone())
            .map_err(|source| ServeError::Socket {
                path: path.clone(),
                source,
            })?;
        tracing::info!(path = %path.display(), "listening on host socket");
        tasks.push(task);
    }
    if let Some(addr) = config.listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Tcp { addr, source })?;
        tracing::info!(%addr, "listening on TCP");
        tasks.push(tokio::spawn(server::serve_tcp(listener, app)));
    }
    for task in tasks {
        let _ = task.await;
    }
    Ok(())
}

/// Every route envd serves, access-token check included.
fn router(envd: Arc<Envd>) -> Router {
    Router::new()
        .merge(http::routes())
        .merge(rpc::process::routes())
        .merge(rpc::filesystem::routes())
        .merge(host::routes())
        .layer(middleware::from_fn_with_state(
            envd.clone(),
            auth::require_access_token,
        ))
        .layer(tower_http::cors::CorsLayer::very_permissive())
        .with_state(envd)
}
