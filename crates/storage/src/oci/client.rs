//! Signed requests to the Object Storage native API and the mapping of its answers.
//!
//! Invariants:
//! - Every attempt is signed afresh (new `date`, a signer fetched from the credentials), and
//!   the URL that is signed is the URL sent: names are percent-encoded once, here, and never
//!   re-encoded by the signer or the HTTP client.
//! - Bodies are always sent whole with `Content-Length` (Object Storage refuses chunked
//!   bodies); JSON bodies are signed with their headers, object and part bodies are not (as the
//!   Oracle SDKs do for PutObject and UploadPart, so large bodies need no pre-hashing).
//! - A 401 is answered by [`Credentials::invalidate`] and one retry, because session tokens
//!   (instance principals) can expire between signing and arrival.
//! - Errors carry Oracle's `code`, `message` and `opc-request-id`, never a header we sent.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use oracle_auth::{AuthError, Credentials, Payload};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use std::sync::Arc;
use url::Url;

/// The name `object_store` errors carry for this store.
pub(super) const STORE: &str = "OCIBucket";

/// Bytes of an object name kept as they are: RFC 3986 unreserved characters. Everything else
/// (reserved characters, spaces, non-ASCII) is percent-encoded; `/` separates segments and
/// stays unescaped, as Object Storage expects.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Why a request to Object Storage failed, before it is mapped to an `object_store` error.
#[derive(Debug, thiserror::Error)]
pub(super) enum Error {
    #[error("cannot sign the request with the {credentials}: {source}")]
    Credentials {
        credentials: String,
        source: AuthError,
    },

    #[error("{operation}: {source}")]
    Request {
        operation: &'static str,
        source: reqwest::Error,
    },

    /// An error answer. `hint` says what to check for statuses with a likely local cause.
    #[error(
        "{operation}: Object Storage answered {status} {code}: {message}{hint} (opc-request-id: {request_id})"
    )]
    Service {
        operation: &'static str,
        status: StatusCode,
        code: String,
        message: String,
        request_id: String,
        hint: String,
    },
}

impl Error {
    pub(super) fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Service { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The `object_store` error for an operation on `path`: 404 is `NotFound`, 412 is
    /// `Precondition` (callers turn it into `AlreadyExists` for create-only writes), 304 is
    /// `NotModified`, anything else `Generic`.
    pub(super) fn into_store(self, path: &str) -> object_store::Error {
        let path = path.to_string();
        match self.status() {
            Some(StatusCode::NOT_FOUND) => object_store::Error::NotFound {
                path,
                source: Box::new(self),
            },
            Some(StatusCode::PRECONDITION_FAILED) => object_store::Error::Precondition {
                path,
                source: Box::new(self),
            },
            Some(StatusCode::NOT_MODIFIED) => object_store::Error::NotModified {
                path,
                source: Box::new(self),
            },
            _ => object_store::Error::Generic {
                store: STORE,
                source: Box::new(self),
            },
        }
    }
}

/// What the body of a request is, which decides what is signed.
pub(super) enum Body {
    Empty,
    /// Object or part bytes: sent with `Content-Length`, not signed.
    Data(Bytes),
    /// A JSON document: signed with `content-length`, `content-type` and `x-content-sha256`.
    Json(Vec<u8>),
}

/// The HTTP side of one bucket: endpoint, credentials and URL building.
#[derive(Debug)]
pub(super) struct Client {
    pub(super) http: reqwest::Client,
    pub(super) credentials: Arc<dyn Credentials>,
    /// `<endpoint>/n/<namespace>/b/<bucket>/`, always ending in `/`.
    pub(super) bucket_url: Url,
}

impl Client {
    /// `…/o/<name>` (`kind` = `o`) or `…/u/<name>` (`u`), the name percent-encoded per
    /// segment; an empty name gives the collection (`…/o`, `…/u`).
    pub(super) fn url(&self, kind: &str, name: &str) -> Url {
        let mut url = self.bucket_url.clone();
        let mut path = format!("{}{kind}", url.path());
        if !name.is_empty() {
            path.push('/');
            path.push_str(&encode_name(name));
        }
        // `set_path` keeps existing `%XX` escapes as they are, so nothing is encoded twice.
        url.set_path(&path);
        url
    }

    /// Sends a request and returns the response if its status is a success; an error answer
    /// becomes [`Error::Service`]. Retries once after a 401.
    pub(super) async fn send(
        &self,
        operation: &'static str,
        method: Method,
        url: &Url,
        headers: HeaderMap,
        body: Body,
    ) -> Result<reqwest::Response, Error> {
        let mut retried = false;
        loop {
            let response = self
                .attempt(operation, &method, url, &headers, &body)
                .await?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && !retried {
                tracing::debug!(
                    operation,
                    "Object Storage answered 401; renewing credentials"
                );
                self.credentials.invalidate().await;
                retried = true;
                continue;
            }
            if status.is_success() {
                return Ok(response);
            }
            return Err(self.service_error(operation, response).await);
        }
    }

    async fn attempt(
        &self,
        operation: &'static str,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
        body: &Body,
    ) -> Result<reqwest::Response, Error> {
        let credentials = |source| Error::Credentials {
            credentials: self.credentials.describe(),
            source,
        };
        let signer = self.credentials.signer().await.map_err(credentials)?;
        let mut headers = headers.clone();
        let (payload, bytes) = match body {
            Body::Empty => (Payload::Unsigned, Bytes::new()),
            Body::Data(bytes) => {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                (Payload::Unsigned, bytes.clone())
            }
            Body::Json(json) => (Payload::Signed(json), Bytes::from(json.clone())),
        };
        signer
            .sign(method, url, &mut headers, payload)
            .map_err(credentials)?;
        let mut request = self
            .http
            .request(method.clone(), url.clone())
            .headers(headers);
        if !matches!(body, Body::Empty) {
            // A `Bytes` body has a known length: reqwest sends it with `Content-Length`,
            // never chunked.
            request = request.body(bytes);
        }
        request
            .send()
            .await
            .map_err(|source| Error::Request { operation, source })
    }

    async fn service_error(&self, operation: &'static str, response: reqwest::Response) -> Error {
        #[derive(serde::Deserialize, Default)]
        struct Answer {
            #[serde(default)]
            code: String,
            #[serde(default)]
            message: String,
        }
        let status = response.status();
        let request_id = response
            .headers()
            .get("opc-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string();
        // HEAD answers have no body; an unreadable body still leaves status and request id.
        let answer: Answer = response
            .bytes()
            .await
            .ok()
            .and_then(|body| serde_json::from_slice(&body).ok())
            .unwrap_or_default();
        let hint = match status {
            StatusCode::UNAUTHORIZED => format!(
                "; the signature was refused twice: check the key, fingerprint and OCIDs of the {} and the clock",
                self.credentials.describe()
            ),
            StatusCode::FORBIDDEN => format!(
                "; check the IAM policies granting the {} access to the bucket",
                self.credentials.describe()
            ),
            _ => String::new(),
        };
        Error::Service {
            operation,
            status,
            code: if answer.code.is_empty() {
                status.canonical_reason().unwrap_or("").to_string()
            } else {
                answer.code
            },
            message: answer.message,
            request_id,
            hint,
        }
    }
}

/// Percent-encodes an object name segment by segment, keeping `/`.
pub(super) fn encode_name(name: &str) -> String {
    name.split('/')
        .map(|segment| utf8_percent_encode(segment, SEGMENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// A response header as text, if present.
pub(super) fn header_str<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::encode_name;

    #[test]
    fn names_keep_slashes_and_encode_reserved_characters() {
        assert_eq!(encode_name("a/b-c_d.e~f"), "a/b-c_d.e~f");
        assert_eq!(
            encode_name("t 1/x+y:z@w?#%é"),
            "t%201/x%2By%3Az%40w%3F%23%25%C3%A9"
        );
    }
}
