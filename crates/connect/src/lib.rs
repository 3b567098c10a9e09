//! The wire format of the [Connect protocol](https://connectrpc.com/docs/protocol), as envd and the
//! E2B SDKs use it over HTTP/1.1: no transport, no routing, no I/O.
//!
//! - [`Code`] and [`Error`]: Connect error codes, their HTTP statuses and the JSON error body.
//! - [`Codec`] and [`Kind`]: what a `Content-Type` asks for (`application/json`,
//!   `application/proto`, `application/connect+json`, `application/connect+proto`).
//! - [`envelope`]: the 5-byte framing of streaming bodies, with a decoder that caps frame size.
//!
//! Invariant: nothing here panics on bytes from the network; every malformed input is an
//! [`Error`] with a code a client can act on.

mod code;
mod codec;
pub mod envelope;
mod error;

pub use code::Code;
pub use codec::{Codec, Kind, Message};
pub use error::Error;

/// The largest message envd accepts or emits in one frame or unary body. Bigger payloads are
/// refused with `resource_exhausted`: the SDKs stream output and files in far smaller pieces, so
/// only a broken or hostile client reaches it.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Parses a `Connect-Timeout-Ms` header value: at most 10 ASCII digits (the protocol's limit).
/// `None` for anything else, including zero, which the SDKs send to mean "no timeout".
pub fn parse_timeout_ms(value: &str) -> Option<std::time::Duration> {
    if value.is_empty() || value.len() > 10 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match value.parse::<u64>() {
        Ok(0) | Err(_) => None,
        Ok(ms) => Some(std::time::Duration::from_millis(ms)),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_timeout_ms;
    use std::time::Duration;

    #[test]
    fn timeout_header() {
        assert_eq!(parse_timeout_ms("60000"), Some(Duration::from_secs(60)));
        assert_eq!(parse_timeout_ms("0"), None);
        assert_eq!(parse_timeout_ms(""), None);
        assert_eq!(parse_timeout_ms("-5"), None);
        assert_eq!(parse_timeout_ms("12345678901"), None);
        assert_eq!(parse_timeout_ms("1e3"), None);
    }
}
