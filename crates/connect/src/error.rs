//! A Connect error and its JSON body.

use crate::Code;
use serde::{Deserialize, Serialize};

/// An RPC failure: a code and a human-readable message, as sent to clients.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Error {
    /// What kind of failure; clients branch on it.
    pub code: Code,
    /// What happened, for people.
    pub message: String,
}

#[derive(Serialize, Deserialize)]
struct WireError {
    code: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    message: String,
}

#[derive(Serialize, Deserialize, Default)]
struct EndStream {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<WireError>,
}

impl Error {
    /// An error with the given code and message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }

    /// The JSON body of a unary error response: `{"code":"not_found","message":"…"}`.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.wire()).unwrap_or_default()
    }

    /// Parses a unary error body. Bodies without a valid string `code` fall back to the code the
    /// HTTP status implies, and the raw text becomes the message.
    pub fn from_response(status: u16, body: &[u8]) -> Self {
        match serde_json::from_slice::<WireError>(body) {
            Ok(wire) => match Code::parse(&wire.code) {
                Some(code) => Error::new(code, wire.message),
                None => Error::new(Code::from_http_status(status), wire.message),
            },
            Err(_) => Error::new(
                Code::from_http_status(status),
                String::from_utf8_lossy(body).into_owned(),
            ),
        }
    }

    fn wire(&self) -> WireError {
        WireError {
            code: self.code.as_str().to_owned(),
            message: self.message.clone(),
        }
    }
}

/// The payload of a stream's end-of-stream frame: `{}` on success, `{"error":{…}}` on failure.
pub(crate) fn end_stream_payload(error: Option<&Error>) -> Vec<u8> {
    let end = EndStream {
        error: error.map(Error::wire),
    };
    serde_json::to_vec(&end).unwrap_or_else(|_| b"{}".to_vec())
}

/// Reads an end-of-stream payload; `Ok(())` means the stream succeeded.
pub(crate) fn parse_end_stream(payload: &[u8]) -> Result<(), Error> {
    let end: EndStream = serde_json::from_slice(payload)
        .map_err(|e| Error::internal(format!("malformed end-of-stream message: {e}")))?;
    match end.error {
        None => Ok(()),
        Some(wire) => Err(Error::new(
            Code::parse(&wire.code).unwrap_or(Code::Unknown),
            wire.message,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::{Error, end_stream_payload, parse_end_stream};
    use crate::Code;

    #[test]
    fn json_body() {
        let err = Error::not_found("process with pid 9 not found");
        assert_eq!(
            String::from_utf8(err.to_json()).unwrap(),
            r#"{"code":"not_found","message":"process with pid 9 not found"}"#
        );
        assert_eq!(Error::from_response(404, &err.to_json()), err);
    }

    #[test]
    fn non_connect_bodies_use_the_status() {
        assert_eq!(
            Error::from_response(502, b"bad gateway").code,
            Code::Unavailable
        );
        assert_eq!(
            Error::from_response(401, br#"{"code":401,"message":"x"}"#).code,
            Code::Unauthenticated
        );
    }

    #[test]
    fn end_stream() {
        assert_eq!(end_stream_payload(None), b"{}");
        let err = Error::new(Code::DeadlineExceeded, "timed out");
        let payload = end_stream_payload(Some(&err));
        assert_eq!(
            String::from_utf8(payload.clone()).unwrap(),
            r#"{"error":{"code":"deadline_exceeded","message":"timed out"}}"#
        );
        assert_eq!(parse_end_stream(&payload), Err(err));
        assert_eq!(parse_end_stream(b"{}"), Ok(()));
        assert!(parse_end_stream(b"{").is_err());
    }
}
