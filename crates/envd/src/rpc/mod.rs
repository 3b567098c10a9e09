//! Connect RPC over axum: turns `async fn(envd, call, request) -> Result<response>` into routes.
//!
//! - [`unary`]: `application/json` or `application/proto` in and out; errors are non-200 with a
//!   `{"code","message"}` body.
//! - [`server_stream`]: one enveloped request, then the handler pushes messages into a
//!   [`StreamSink`]; the response is `200` with the exact streaming content type, one envelope
//!   per message, flushed as produced, and an end-of-stream envelope carrying any error.
//! - [`client_stream`]: envelopes in (read as they arrive), one message and end-of-stream out.
//!
//! Invariant: every decode failure becomes a Connect error; nothing here panics on input.

pub(crate) mod filesystem;
pub(crate) mod process;

use crate::{auth, state::Envd, users::User};
use axum::{
    body::Body,
    extract::{Request, State},
    response::{IntoResponse, Response},
    routing::{MethodRouter, post},
};
use bytes::Bytes;
use connect::{Code, Codec, Error, Kind, Message, envelope};
use http::{HeaderMap, HeaderValue, StatusCode, header::CONTENT_TYPE};
use http_body_util::BodyExt;
use std::{convert::Infallible, future::Future, marker::PhantomData, sync::Arc, time::Duration};
use tokio::sync::mpsc;

/// Keepalive interval when the client sends no `Keepalive-Ping-Interval` (E2B's envd default).
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(90);
/// Response frames buffered before a slow client back-pressures the handler.
const STREAM_BUFFER: usize = 16;

/// Request metadata handlers may need.
pub(crate) struct Call {
    headers: HeaderMap,
}

impl Call {
    /// The run-as user: `Authorization: Basic` if given, else the default user. An unknown user
    /// is `unauthenticated`, like E2B's envd.
    pub(crate) fn user(&self, envd: &Envd) -> Result<User, Error> {
        let requested = auth::basic_auth_user(&self.headers)
            .map_err(|e| Error::new(Code::Unauthenticated, e))?;
        envd.user(requested.as_deref())
            .map_err(|e| Error::new(Code::Unauthenticated, e.to_string()))
    }

    /// `Connect-Timeout-Ms`, if any.
    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.headers
            .get("connect-timeout-ms")
            .and_then(|v| v.to_str().ok())
            .and_then(connect::parse_timeout_ms)
    }

    /// How long a stream may stay silent before a keepalive message is sent.
    pub(crate) fn keepalive(&self) -> Duration {
        self.headers
            .get("keepalive-ping-interval")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|secs| *secs > 0)
            .map_or(DEFAULT_KEEPALIVE, Duration::from_secs)
    }
}

/// Sends messages of a server stream. Cloning shares the stream.
pub(crate) struct StreamSink<M> {
    frames: mpsc::Sender<Bytes>,
    codec: Codec,
    _message: PhantomData<fn(M)>,
}

impl<M> Clone for StreamSink<M> {
    fn clone(&self) -> Self {
        StreamSink {
            frames: self.frames.clone(),
            codec: self.codec,
            _message: PhantomData,
        }
    }
}

/// The client has gone away.
#[derive(Debug)]
pub(crate) struct Disconnected;

impl<M: Message> StreamSink<M> {
    pub(crate) async fn send(&self, message: &M) -> Result<(), Disconnected> {
        let frame = envelope::encode(&self.codec.encode(message));
        self.frames.send(frame).await.map_err(|_| Disconnected)
    }

    /// Resolves when the client has gone away.
    pub(crate) async fn disconnected(&self) {
        self.frames.closed().await;
    }
}

/// A unary RPC route.
pub(crate) fn unary<Req, Resp, F, Fut>(handler: F) -> MethodRouter<Arc<Envd>>
where
    Req: Message,
    Resp: Message,
    F: Fn(Arc<Envd>, Call, Req) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, Error>> + Send + 'static,
{
    post(move |State(envd): State<Arc<Envd>>, request: Request| {
        let handler = handler.clone();
        async move {
            let (parts, body) = request.into_parts();
            let codec = match negotiate(&parts.headers, Kind::Unary) {
                Ok(codec) => codec,
                Err(refusal) => return refusal.into_response(),
            };
            let result = async {
                let bytes = read_unary_body(body).await?;
                let message = codec.decode::<Req>(&bytes)?;
                let call = Call {
                    headers: parts.headers,
                };
                match call.timeout() {
                    Some(limit) => tokio::time::timeout(limit, handler(envd, call, message))
                        .await
                        .unwrap_or_else(|_| {
                            Err(Error::new(Code::DeadlineExceeded, "deadline exceeded"))
                        }),
                    None => handler(envd, call, message).await,
                }
            }
            .await;
            match result {
                Ok(message) => (
                    [(CONTENT_TYPE, codec.content_type(Kind::Unary))],
                    codec.encode(&message),
                )
                    .into_response(),
                Err(error) => unary_error(&error),
            }
        }
    })
}

/// A server-streaming RPC route. The handler's error, if any, ends the stream.
pub(crate) fn server_stream<Req, Resp, F, Fut>(handler: F) -> MethodRouter<Arc<Envd>>
where
    Req: Message,
    Resp: Message,
    F: Fn(Arc<Envd>, Call, Req, StreamSink<Resp>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Error>> + Send + 'static,
{
    post(move |State(envd): State<Arc<Envd>>, request: Request| {
        let handler = handler.clone();
        async move {
            let (parts, body) = request.into_parts();
            let codec = match negotiate(&parts.headers, Kind::Streaming) {
                Ok(codec) => codec,
                Err(refusal) => return refusal.into_response(),
            };
            // Like connect-go, read the request before answering: the SDKs stream the request
            // body concurrently with reading the response, and answering first races them.
            let message = match read_single_message::<Req>(body, codec).await {
                Ok(message) => message,
                Err(error) => {
                    return streaming_response(
                        codec,
                        Body::from(envelope::encode_end_stream(Some(&error))),
                    );
                }
            };
            let (frames, rx) = mpsc::channel(STREAM_BUFFER);
            let sink = StreamSink::<Resp> {
                frames: frames.clone(),
                codec,
                _message: PhantomData,
            };
            let call = Call {
                headers: parts.headers,
            };
            tokio::spawn(async move {
                let result = handler(envd, call, message, sink).await;
                let _ = frames
                    .send(envelope::encode_end_stream(result.err().as_ref()))
                    .await;
            });
            stream_response(codec, rx)
        }
    })
}

/// A client-streaming RPC route: the handler reads requests from a [`FrameReader`].
pub(crate) fn client_stream<Req, Resp, F, Fut>(handler: F) -> MethodRouter<Arc<Envd>>
where
    Req: Message,
    Resp: Message,
    F: Fn(Arc<Envd>, Call, FrameReader<Req>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, Error>> + Send + 'static,
{
    post(move |State(envd): State<Arc<Envd>>, request: Request| {
        let handler = handler.clone();
        async move {
            let (parts, body) = request.into_parts();
            let codec = match negotiate(&parts.headers, Kind::Streaming) {
                Ok(codec) => codec,
                Err(refusal) => return refusal.into_response(),
            };
            let call = Call {
                headers: parts.headers,
            };
            let mut out = Vec::new();
            let end = match handler(envd, call, FrameReader::new(body, codec)).await {
                Ok(message) => {
                    out.extend_from_slice(&envelope::encode(&codec.encode(&message)));
                    envelope::encode_end_stream(None)
                }
                Err(error) => envelope::encode_end_stream(Some(&error)),
            };
            out.extend_from_slice(&end);
            streaming_response(codec, Body::from(out))
        }
    })
}

/// How long a server-streaming request may take to end its body after its one message.
const REQUEST_END_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the one request message of a server stream, and the body to its end (the SDKs send
/// the terminating chunk right after the message).
async fn read_single_message<M: Message>(body: Body, codec: Codec) -> Result<M, Error> {
    let mut requests = FrameReader::<M>::new(body, codec);
    let message = match requests.next().await {
        Some(message) => message?,
        None => return Err(Error::invalid_argument("stream request has no message")),
    };
    match tokio::time::timeout(REQUEST_END_TIMEOUT, requests.next()).await {
        Ok(None) => Ok(message),
        Ok(Some(Err(error))) => Err(error),
        Ok(Some(Ok(_))) => Err(Error::invalid_argument(
            "a server-streaming request carries exactly one message",
        )),
        Err(_) => Err(Error::new(
            Code::DeadlineExceeded,
            "the request body did not end after its message",
        )),
    }
}

/// Reads enveloped request messages as their bytes arrive.
pub(crate) struct FrameReader<M> {
    body: Body,
    decoder: envelope::Decoder,
    codec: Codec,
    done: bool,
    _message: PhantomData<fn() -> M>,
}

impl<M: Message> FrameReader<M> {
    fn new(body: Body, codec: Codec) -> Self {
        FrameReader {
            body,
            decoder: envelope::Decoder::default(),
            codec,
            done: false,
            _message: PhantomData,
        }
    }

    /// The next message; `None` at a clean end of the body (or after an end-of-stream frame).
    pub(crate) async fn next(&mut self) -> Option<Result<M, Error>> {
        loop {
            if self.done {
                return None;
            }
            match self.decoder.next_frame() {
                Err(error) => {
                    self.done = true;
                    return Some(Err(error));
                }
                Ok(Some(frame)) if frame.is_end_stream() => {
                    self.done = true;
                    return None;
                }
                Ok(Some(frame)) => return Some(self.codec.decode(&frame.payload)),
                Ok(None) => {}
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.decoder.push(data);
                    }
                }
                Some(Err(error)) => {
                    self.done = true;
                    return Some(Err(Error::new(
                        Code::Canceled,
                        format!("reading request: {error}"),
                    )));
                }
                None => {
                    self.done = true;
                    return self.decoder.finish().err().map(Err);
                }
            }
        }
    }
}

/// Why a request was refused before any handler ran.
enum Refusal {
    /// Unknown content type, or a unary type on a streaming route (or the reverse).
    MediaType(Kind),
    /// A compressed request: only identity is supported.
    Compressed(Kind, Codec),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::MediaType(expected) => {
                let accepted = match expected {
                    Kind::Unary => "application/json, application/proto",
                    Kind::Streaming => "application/connect+json, application/connect+proto",
                };
                (
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    [("accept-post", accepted)],
                )
                    .into_response()
            }
            Refusal::Compressed(kind, codec) => {
                let error = Error::new(
                    Code::Unimplemented,
                    "request compression is not supported; use identity",
                );
                match kind {
                    Kind::Unary => unary_error(&error),
                    Kind::Streaming => streaming_response(
                        codec,
                        Body::from(envelope::encode_end_stream(Some(&error))),
                    ),
                }
            }
        }
    }
}

/// Checks `Content-Type` and compression.
fn negotiate(headers: &HeaderMap, expected: Kind) -> Result<Codec, Refusal> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let codec = match Codec::from_content_type(content_type) {
        Some((codec, kind)) if kind == expected => codec,
        _ => return Err(Refusal::MediaType(expected)),
    };
    let encoding_header = match expected {
        Kind::Unary => "content-encoding",
        Kind::Streaming => "connect-content-encoding",
    };
    match headers.get(encoding_header) {
        Some(encoding) if !encoding.as_bytes().eq_ignore_ascii_case(b"identity") => {
            Err(Refusal::Compressed(expected, codec))
        }
        _ => Ok(codec),
    }
}

async fn read_unary_body(body: Body) -> Result<Bytes, Error> {
    axum::body::to_bytes(body, connect::MAX_MESSAGE_BYTES)
        .await
        .map_err(|e| {
            let too_big = std::error::Error::source(&e)
                .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
            if too_big {
                Error::new(
                    Code::ResourceExhausted,
                    format!("request exceeds {} bytes", connect::MAX_MESSAGE_BYTES),
                )
            } else {
                Error::new(Code::Canceled, format!("reading request: {e}"))
            }
        })
}

/// A unary error: the code's HTTP status and `{"code","message"}`.
pub(crate) fn unary_error(error: &Error) -> Response {
    let status =
        StatusCode::from_u16(error.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(CONTENT_TYPE, "application/json")],
        error.to_json(),
    )
        .into_response()
}

fn stream_response(codec: Codec, mut frames: mpsc::Receiver<Bytes>) -> Response {
    let stream = futures::stream::poll_fn(move |cx| {
        frames
            .poll_recv(cx)
            .map(|frame| frame.map(Ok::<_, Infallible>))
    });
    streaming_response(codec, Body::from_stream(stream))
}

fn streaming_response(codec: Codec, body: Body) -> Response {
    let mut response = Response::new(body);
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(codec.content_type(Kind::Streaming)),
    );
    response
}
