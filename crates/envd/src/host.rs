//! The host channel: envd's Unix socket in a directory the host bind-mounts into the sandbox.
//!
//! gVisor cannot checkpoint a sandbox holding a bound host socket, so the socket has two states:
//! - **listening**: connections are served; `CONNECT 127.0.0.1:<port>` relays a connection to a
//!   server inside the sandbox.
//! - **quiesced**: after `POST /_kiln/quiesce` (over the socket), the listener, its socket file
//!   and every connection over it (relays included) are closed, then the request is answered and
//!   its own connection closed. envd then polls for the host's resume file
//!   ([`RESUME_FILE`] beside the socket, created by the host after `runsc restore`), removes it
//!   and listens again.
//!
//! Invariant: when the host reads the quiesce answer to EOF, envd holds no host socket fd.

use crate::server::{self, ConnInfo};
use axum::{Router, body::Body, response::Response};
use envd_proto::host::{QUIESCE_PATH, RESUME_FILE};
use http::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use std::{
    io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};
use tokio::{
    net::{TcpStream, UnixListener},
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

/// How often a quiesced envd looks for the resume file: the delay it adds to a restore.
const RESUME_POLL: std::time::Duration = std::time::Duration::from_millis(2);

enum Command {
    Quiesce {
        keep: u64,
        done: oneshot::Sender<()>,
    },
}

/// The socket listener and the tasks serving it.
pub(crate) struct HostSocket {
    path: PathBuf,
    commands: mpsc::Sender<Command>,
    receiver: Mutex<Option<mpsc::Receiver<Command>>>,
    /// Connection and relay tasks by connection id; aborted on quiesce.
    tasks: Mutex<Vec<(u64, JoinHandle<()>)>>,
}

impl HostSocket {
    pub(crate) fn new(path: PathBuf) -> Arc<HostSocket> {
        let (commands, receiver) = mpsc::channel(4);
        Arc::new(HostSocket {
            path,
            commands,
            receiver: Mutex::new(Some(receiver)),
            tasks: Mutex::default(),
        })
    }

    /// Binds the socket now, so start-up fails loudly on a bad path, then serves it forever.
    pub(crate) fn start(self: &Arc<Self>, app: Router) -> io::Result<JoinHandle<()>> {
        let listener = bind(&self.path)?;
        let resume_file = self.path.with_file_name(RESUME_FILE);
        let mut commands = self
            .receiver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| io::Error::other("host socket already started"))?;
        let this = self.clone();
        Ok(tokio::spawn(async move {
            let mut listener = Some(listener);
            let mut next_id = 0_u64;
            loop {
                let Some(active) = listener.take() else {
                    // Quiesced: wait for the host's resume file, then listen again.
                    tokio::select! {
                        () = tokio::time::sleep(RESUME_POLL) => {
                            if std::fs::remove_file(&resume_file).is_err() {
                                continue;
                            }
                        }
                        command = commands.recv() => match command {
                            Some(Command::Quiesce { done, .. }) => { let _ = done.send(()); continue; }
                            None => return,
                        },
                    }
                    match bind(&this.path) {
                        Ok(bound) => {
                            tracing::info!(path = %this.path.display(), "host socket listening again");
                            listener = Some(bound);
                        }
                        Err(error) => {
                            tracing::error!(%error, path = %this.path.display(), "cannot listen on host socket")
                        }
                    }
                    continue;
                };
                tokio::select! {
                    accepted = active.accept() => {
                        listener = Some(active);
                        match accepted {
                            Ok((stream, _)) => {
                                next_id += 1;
                                let info = ConnInfo::over_host_socket(next_id, this.clone());
                                let task = tokio::spawn(server::serve_connection(stream, app.clone(), info));
                                this.track(next_id, task);
                            }
                            Err(error) => tracing::warn!(%error, "accepting on host socket"),
                        }
                    }
                    command = commands.recv() => match command {
                        Some(Command::Quiesce { keep, done }) => {
                            drop(active);
                            let _ = std::fs::remove_file(&this.path);
                            this.close_connections(keep).await;
                            tracing::info!("host socket quiesced");
                            let _ = done.send(());
                        }
                        None => return,
                    },
                }
            }
        }))
    }

    /// Registers a task serving connection `conn`, so a quiesce can close it.
    pub(crate) fn track(&self, conn: u64, task: JoinHandle<()>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|(_, task)| !task.is_finished());
        tasks.push((conn, task));
    }

    /// Aborts every task but those of connection `keep`, and waits until they are gone (their
    /// sockets closed).
    async fn close_connections(&self, keep: u64) {
        let closing: Vec<_> = {
            let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
            let (kept, closing) = std::mem::take(&mut *tasks)
                .into_iter()
                .partition(|(conn, _)| *conn == keep);
            *tasks = kept;
            closing
        };
        for (_, task) in &closing {
            task.abort();
        }
        for (_, task) in closing {
            let _ = task.await;
        }
    }

    async fn quiesce(&self, keep: u64) -> bool {
        let (done, acknowledged) = oneshot::channel();
        self.commands
            .send(Command::Quiesce { keep, done })
            .await
            .is_ok()
            && acknowledged.await.is_ok()
    }
}

fn bind(path: &Path) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixListener::bind(path)
}

/// `POST /_kiln/quiesce`, served only on the host socket.
pub(crate) async fn quiesce(info: ConnInfo) -> Response {
    let Some((conn, socket)) = info.host_socket() else {
        return plain(StatusCode::NOT_FOUND, "not found");
    };
    if !socket.quiesce(conn).await {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "host socket is shutting down",
        );
    }
    let mut response = plain(StatusCode::OK, "{\"state\":\"quiesced\"}");
    response
        .headers_mut()
        .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// `CONNECT 127.0.0.1:<port>` on the host socket: a tunnel to a server inside the sandbox.
/// A closed port is a `502` before any tunnel is set up.
pub(crate) async fn relay<B: Send + 'static>(request: Request<B>, info: ConnInfo) -> Response {
    let Some((conn, socket)) = info.host_socket() else {
        return plain(
            StatusCode::FORBIDDEN,
            "relays are only available on the host socket",
        );
    };
    let Some(port) = relay_target(&request) else {
        return plain(
            StatusCode::BAD_REQUEST,
            "CONNECT target must be 127.0.0.1:<port> or localhost:<port>",
        );
    };
    let upstream = match TcpStream::connect(("127.0.0.1", port)).await {
        Ok(stream) => stream,
        Err(_) => match TcpStream::connect(("::1", port)).await {
            Ok(stream) => stream,
            Err(_) => {
                let body = format!(
                    "{{\"code\":502,\"message\":\"port {port} is not open in the sandbox\"}}"
                );
                let mut response = plain(StatusCode::BAD_GATEWAY, &body);
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                return response;
            }
        },
    };
    let task = tokio::spawn(async move {
        let mut upstream = upstream;
        if let Ok(upgraded) = hyper::upgrade::on(request).await {
            let mut client = TokioIo::new(upgraded);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
    });
    socket.track(conn, task);
    Response::new(Body::empty())
}

fn relay_target<B>(request: &Request<B>) -> Option<u16> {
    let authority = request.uri().authority()?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if !matches!(host, "127.0.0.1" | "localhost" | "::1") {
        return None;
    }
    authority.port_u16().filter(|port| *port != 0)
}

fn plain(status: StatusCode, body: &str) -> Response {
    let mut response = Response::new(Body::from(body.to_owned()));
    *response.status_mut() = status;
    response
}

/// The route table entry for [`QUIESCE_PATH`].
pub(crate) fn routes() -> Router<Arc<crate::state::Envd>> {
    Router::new().route(
        QUIESCE_PATH,
        axum::routing::post(|axum::Extension(info): axum::Extension<ConnInfo>| quiesce(info)),
    )
}

#[cfg(test)]
mod tests {
    use super::relay_target;

    #[test]
    fn relay_targets() {
        let target = |uri: &str| relay_target(&http::Request::connect(uri).body(()).unwrap());
        assert_eq!(target("127.0.0.1:8080"), Some(8080));
        assert_eq!(target("localhost:3000"), Some(3000));
        assert_eq!(target("[::1]:22"), Some(22));
        assert_eq!(target("10.0.0.1:80"), None);
        assert_eq!(target("example.com:443"), None);
        assert_eq!(target("127.0.0.1:0"), None);
    }
}
