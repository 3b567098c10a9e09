//! The host side of the host channel: HTTP/1.1 to envd over its Unix socket.

use bytes::Bytes;
use connect::{Codec, envelope};
use envd_proto::{
    host::QUIESCE_PATH,
    process::{ProcessConfig, StartRequest, StartResponse, process_event},
};
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};
use tokio::net::UnixStream;

/// Why a call to envd failed.
#[derive(Debug, thiserror::Error)]
pub enum EnvdError {
    #[error("cannot reach envd: {0}")]
    Connect(std::io::Error),
    #[error("HTTP to envd failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("envd answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("{0}")]
    Rpc(#[from] connect::Error),
    #[error("envd did not answer within {0:?}")]
    Timeout(Duration),
}

/// Settings pushed to envd after a sandbox is restored (E2B's `/init`).
#[derive(Serialize, Default, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct InitRequest {
    pub env_vars: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    pub default_user: String,
    pub default_workdir: String,
    pub timestamp: String,
}

/// A finished command.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecResult {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    pub status: String,
}

/// A command to run to completion.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    pub command: String,
    pub args: Vec<String>,
    pub envs: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub user: Option<String>,
    pub timeout: Duration,
}

/// A client of one sandbox's envd. Cheap to create; every call opens its own connection.
#[derive(Clone, Debug)]
pub struct EnvdClient {
    socket: PathBuf,
    access_token: Option<String>,
}

impl EnvdClient {
    pub fn new(socket: &Path) -> Self {
        EnvdClient {
            socket: socket.to_owned(),
            access_token: None,
        }
    }

    /// Sends `X-Access-Token` on every call.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.access_token = token;
        self
    }

    /// Sends `request` on a new connection; the response body streams.
    async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, EnvdError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(EnvdError::Connect)?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(sender.send_request(request).await?)
    }

    async fn call(&self, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), EnvdError> {
        let response = self.send(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Request<Full<Bytes>> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "envd")
            .header(header::CONTENT_TYPE, content_type);
        if let Some(token) = &self.access_token {
            builder = builder.header("x-access-token", token);
        }
        builder
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    }

    /// True when envd answers `/health` with 204.
    pub async fn health(&self) -> bool {
        let request = self.request(Method::GET, "/health", "text/plain", Vec::new());
        matches!(
            tokio::time::timeout(Duration::from_secs(2), self.call(request)).await,
            Ok(Ok((StatusCode::NO_CONTENT, _)))
        )
    }

    /// `GET /metrics`, as raw JSON.
    pub async fn metrics(&self) -> Result<serde_json::Value, EnvdError> {
        let (status, body) = self
            .call(self.request(Method::GET, "/metrics", "text/plain", Vec::new()))
            .await?;
        expect(status, StatusCode::OK, &body)?;
        serde_json::from_slice(&body).map_err(|e| EnvdError::Status {
            status,
            body: e.to_string(),
        })
    }

    pub async fn init(&self, init: &InitRequest) -> Result<(), EnvdError> {
        let body = serde_json::to_vec(init).unwrap_or_default();
        let (status, body) = self
            .call(self.request(Method::POST, "/init", "application/json", body))
            .await?;
        expect(status, StatusCode::NO_CONTENT, &body)
    }

    /// Closes envd's socket listener and connections; returns once envd holds none.
    pub async fn quiesce(&self) -> Result<(), EnvdError> {
        let (status, body) = self
            .call(self.request(Method::POST, QUIESCE_PATH, "application/json", Vec::new()))
            .await?;
        expect(status, StatusCode::OK, &body)
    }

    /// Runs a command to completion through `process.Process/Start`.
    pub async fn exec(&self, exec: &ExecRequest) -> Result<ExecResult, EnvdError> {
        let request = self.start_request(exec, Some(exec.timeout));
        let limit = exec.timeout + Duration::from_secs(5);
        let (status, body) = tokio::time::timeout(limit, self.call(request))
            .await
            .map_err(|_| EnvdError::Timeout(limit))??;
        expect(status, StatusCode::OK, &body)?;
        collect_exec(&body)
    }

    /// Starts a command and returns its pid once envd reports it started; the command keeps
    /// running after this returns (envd's processes outlive their clients).
    pub async fn spawn(&self, exec: &ExecRequest) -> Result<u32, EnvdError> {
        let response = self.send(self.start_request(exec, None)).await?;
        let status = response.status();
        let mut body = response.into_body();
        if status != StatusCode::OK {
            let text = body.collect().await?.to_bytes();
            return Err(EnvdError::Status {
                status,
                body: String::from_utf8_lossy(&text).chars().take(500).collect(),
            });
        }
        let mut decoder = envelope::Decoder::default();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            decoder.push(&data);
            while let Some(frame) = decoder.next_frame()? {
                if frame.is_end_stream() {
                    frame.end_stream_result()?;
                    continue;
                }
                let response: StartResponse = Codec::Json.decode(&frame.payload)?;
                if let Some(process_event::Event::Start(start)) =
                    response.event.and_then(|e| e.event)
                {
                    return Ok(start.pid);
                }
            }
        }
        Err(EnvdError::Status {
            status,
            body: "the stream ended before the process started".into(),
        })
    }

    /// A `process.Process/Start` request; `deadline` becomes `Connect-Timeout-Ms`, after which
    /// envd kills the process.
    fn start_request(
        &self,
        exec: &ExecRequest,
        deadline: Option<Duration>,
    ) -> Request<Full<Bytes>> {
        let start = StartRequest {
            process: Some(ProcessConfig {
                cmd: exec.command.clone(),
                args: exec.args.clone(),
                envs: exec.envs.clone().into_iter().collect(),
                cwd: exec.cwd.clone(),
            }),
            stdin: Some(false),
            ..Default::default()
        };
        let mut request = self.request(
            Method::POST,
            envd_proto::process::paths::START,
            Codec::Json.content_type(connect::Kind::Streaming),
            envelope::encode(&Codec::Json.encode(&start)).to_vec(),
        );
        let headers = request.headers_mut();
        if let Some(deadline) = deadline {
            headers.insert(
                "connect-timeout-ms",
                header::HeaderValue::from(deadline.as_millis() as u64),
            );
        }
        if let Some(user) = &exec.user {
            use base64::Engine;
            let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{user}:"));
            if let Ok(value) = header::HeaderValue::from_str(&format!("Basic {credentials}")) {
                headers.insert(header::AUTHORIZATION, value);
            }
        }
        request
    }
}

fn expect(status: StatusCode, wanted: StatusCode, body: &Bytes) -> Result<(), EnvdError> {
    if status == wanted {
        Ok(())
    } else {
        Err(EnvdError::Status {
            status,
            body: String::from_utf8_lossy(body).chars().take(500).collect(),
        })
    }
}

fn collect_exec(body: &[u8]) -> Result<ExecResult, EnvdError> {
    let mut decoder = envelope::Decoder::default();
    decoder.push(body);
    let mut result = ExecResult {
        exit_code: -1,
        stdout: String::new(),
        stderr: String::new(),
        status: String::new(),
    };
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    while let Some(frame) = decoder.next_frame()? {
        if frame.is_end_stream() {
            frame.end_stream_result()?;
            continue;
        }
        let response: StartResponse = Codec::Json.decode(&frame.payload)?;
        match response.event.and_then(|e| e.event) {
            Some(process_event::Event::Data(data)) => match data.output {
                Some(process_event::data_event::Output::Stdout(bytes)) => stdout.extend(bytes),
                Some(process_event::data_event::Output::Stderr(bytes)) => stderr.extend(bytes),
                _ => {}
            },
            Some(process_event::Event::End(end)) => {
                result.exit_code = end.exit_code;
                result.status = end.status;
            }
            _ => {}
        }
    }
    result.stdout = String::from_utf8_lossy(&stdout).into_owned();
    result.stderr = String::from_utf8_lossy(&stderr).into_owned();
    Ok(result)
}
