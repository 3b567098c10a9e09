//! The sandbox proxy: SDK traffic in, to the right sandbox's host channel out.
//!
//! [`route::route`] picks the target from the `E2b-Sandbox-Id`/`E2b-Sandbox-Port` headers or a
//! `<port>-<id>.<domain>` host. Requests for envd's port go to envd over the sandbox's Unix
//! socket; any other port goes through a `CONNECT 127.0.0.1:<port>` tunnel that envd relays
//! inside the sandbox. Bodies stream both ways unbuffered.
//!
//! A request for a sandbox that is not running goes to [`AutoResume`] first: a paused sandbox
//! that asked for it (`autoResume`) is resumed and the request then forwarded.
//!
//! Architecture invariant: host-only envd paths (`/init`, `/_kiln/*`) are never forwarded.

pub mod route;

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    response::{IntoResponse, Response},
};
use envd_proto::host::{ENVD_PORT, is_internal_path};
use http::{StatusCode, header};
use hyper_util::rt::TokioIo;
use orchestrator::Orchestrator;
use orchestrator::Sandbox;
use std::sync::Arc;
use tokio::net::UnixStream;

/// Resumes paused sandboxes on traffic (the API's lifecycle implements it).
#[async_trait::async_trait]
pub trait AutoResume: Send + Sync {
    /// `None` when `sandbox_id` is not a paused sandbox that asked to be auto-resumed;
    /// otherwise the resumed sandbox or why resuming it failed.
    async fn resume(&self, sandbox_id: &str) -> Option<Result<Arc<Sandbox>, String>>;
}

#[derive(Clone)]
struct ProxyState {
    orchestrator: Arc<Orchestrator>,
    auto_resume: Arc<dyn AutoResume>,
}

/// The proxy's router: every request goes to [`forward`].
pub fn router(orchestrator: Arc<Orchestrator>, auto_resume: Arc<dyn AutoResume>) -> Router {
    Router::new().fallback(forward).with_state(ProxyState {
        orchestrator,
        auto_resume,
    })
}

fn sandbox_error(status: StatusCode, sandbox_id: &str, message: &str) -> Response {
    let body =
        serde_json::json!({"sandboxId": sandbox_id, "message": message, "code": status.as_u16()});
    (status, axum::Json(body)).into_response()
}

const NOT_FOUND: &str = "The sandbox was not found";
const PORT_CLOSED: &str = "The sandbox is running but port is not open";

async fn forward(State(state): State<ProxyState>, request: Request) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .unwrap_or("")
        .to_owned();
    let target = match route::route(&host, request.headers()) {
        Ok(target) => target,
        Err(error) => return (StatusCode::BAD_REQUEST, error.to_string()).into_response(),
    };
    let sandbox = match state.orchestrator.get(&target.sandbox_id) {
        Some(sandbox) => sandbox,
        None => match state.auto_resume.resume(&target.sandbox_id).await {
            Some(Ok(sandbox)) => sandbox,
            Some(Err(message)) => {
                return sandbox_error(
                    StatusCode::BAD_GATEWAY,
                    &target.sandbox_id,
                    &format!("The sandbox is paused and resuming it failed: {message}"),
                );
            }
            None => return sandbox_error(StatusCode::BAD_GATEWAY, &target.sandbox_id, NOT_FOUND),
        },
    };
    if target.port == ENVD_PORT && is_internal_path(request.uri().path()) {
        return sandbox_error(
            StatusCode::FORBIDDEN,
            &target.sandbox_id,
            "this envd path is internal",
        );
    }
    let stream = match UnixStream::connect(sandbox.socket()).await {
        Ok(stream) => stream,
        Err(_) => return sandbox_error(StatusCode::BAD_GATEWAY, &target.sandbox_id, NOT_FOUND),
    };
    let result = if target.port == ENVD_PORT {
        send(TokioIo::new(stream), request).await
    } else {
        match tunnel(stream, target.port).await {
            Ok(Some(tunnel)) => send(tunnel, request).await,
            Ok(None) => {
                return sandbox_error(StatusCode::BAD_GATEWAY, &target.sandbox_id, PORT_CLOSED);
            }
            Err(error) => Err(error),
        }
    };
    match result {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(sandbox = %target.sandbox_id, port = target.port, %error, "forwarding failed");
            sandbox_error(StatusCode::BAD_GATEWAY, &target.sandbox_id, PORT_CLOSED)
        }
    }
}

/// Sends one request over an established connection and streams the response back.
async fn send<IO>(io: IO, request: Request) -> Result<Response, hyper::Error>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    let response = sender.send_request(request).await?;
    Ok(response.map(Body::new))
}

/// Opens `CONNECT 127.0.0.1:<port>` through envd; `None` when the port is closed.
async fn tunnel(
    stream: UnixStream,
    port: u16,
) -> Result<Option<hyper::upgrade::Upgraded>, hyper::Error> {
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    let authority = format!("127.0.0.1:{port}");
    let connect = http::Request::connect(&authority)
        .header(header::HOST, &authority)
        .body(Body::empty())
        .unwrap_or_default();
    let response = sender.send_request(connect).await?;
    if response.status() != StatusCode::OK {
        return Ok(None);
    }
    hyper::upgrade::on(response).await.map(Some)
}
