//! Serving connections: HTTP/1.1 with keep-alive, chunked bodies and upgrades (for relays).

use crate::host::{self, HostSocket};
use axum::{Router, body::Body, response::IntoResponse};
use http::Method;
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::TokioIo;
use std::{convert::Infallible, sync::Arc};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
};
use tower::ServiceExt;

/// Which listener a connection came from; handlers of host-only paths check it.
#[derive(Clone)]
pub(crate) struct ConnInfo {
    host_socket: Option<(u64, Arc<HostSocket>)>,
}

impl ConnInfo {
    pub(crate) fn tcp() -> Self {
        ConnInfo { host_socket: None }
    }

    pub(crate) fn over_host_socket(conn: u64, socket: Arc<HostSocket>) -> Self {
        ConnInfo {
            host_socket: Some((conn, socket)),
        }
    }

    /// The connection id and socket, when the connection came over the host socket.
    pub(crate) fn host_socket(&self) -> Option<(u64, Arc<HostSocket>)> {
        self.host_socket.clone()
    }
}

/// Accepts TCP connections forever.
pub(crate) async fn serve_tcp(listener: TcpListener, app: Router) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(stream, app.clone(), ConnInfo::tcp()));
            }
            Err(error) => {
                tracing::warn!(%error, "accepting TCP connection");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves one connection until the peer closes it: `CONNECT` goes to the relay, everything else
/// to the router.
pub(crate) async fn serve_connection<S>(stream: S, app: Router, info: ConnInfo)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
        let app = app.clone();
        let info = info.clone();
        async move {
            if request.method() == Method::CONNECT {
                return Ok::<_, Infallible>(host::relay(request, info).await);
            }
            request.extensions_mut().insert(info);
            Ok(app.oneshot(request.map(Body::new)).await.into_response())
        }
    });
    let connection = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(error) = connection.with_upgrades().await {
        tracing::debug!(%error, "connection ended with an error");
    }
}
