//! Codecs: what a `Content-Type` asks for, and encoding messages with it.

use crate::Error;
use serde::{Serialize, de::DeserializeOwned};

/// A message both codecs can carry: prost for `proto`, pbjson's serde impls for `json`.
pub trait Message:
    prost::Message + Default + Serialize + DeserializeOwned + Send + 'static
{
}

impl<T> Message for T where
    T: prost::Message + Default + Serialize + DeserializeOwned + Send + 'static
{
}

/// How messages are serialized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// ProtoJSON.
    Json,
    /// Binary protobuf.
    Proto,
}

/// Whether a body is one bare message (unary) or a sequence of envelopes (streaming).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Unary,
    Streaming,
}

impl Codec {
    /// Reads a request `Content-Type`. Parameters (`; charset=utf-8`) are ignored and the media
    /// type is compared case-insensitively; anything unknown is `None` (answer 415).
    pub fn from_content_type(content_type: &str) -> Option<(Codec, Kind)> {
        let media = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            "application/json" => Some((Codec::Json, Kind::Unary)),
            "application/proto" => Some((Codec::Proto, Kind::Unary)),
            "application/connect+json" => Some((Codec::Json, Kind::Streaming)),
            "application/connect+proto" => Some((Codec::Proto, Kind::Streaming)),
            _ => None,
        }
    }

    /// The response `Content-Type`, exactly: the Python SDK rejects any parameter on streaming
    /// responses, so none is ever added.
    pub fn content_type(self, kind: Kind) -> &'static str {
        match (self, kind) {
            (Codec::Json, Kind::Unary) => "application/json",
            (Codec::Proto, Kind::Unary) => "application/proto",
            (Codec::Json, Kind::Streaming) => "application/connect+json",
            (Codec::Proto, Kind::Streaming) => "application/connect+proto",
        }
    }

    /// Serializes a message. JSON output omits default values, as connect-go does.
    pub fn encode<M: Message>(self, message: &M) -> Vec<u8> {
        match self {
            Codec::Json => serde_json::to_vec(message).unwrap_or_else(|_| b"{}".to_vec()),
            Codec::Proto => message.encode_to_vec(),
        }
    }

    /// Deserializes a message; malformed input is `invalid_argument`.
    pub fn decode<M: Message>(self, bytes: &[u8]) -> Result<M, Error> {
        match self {
            // An empty JSON body is an empty message, as for binary protobuf.
            Codec::Json if bytes.iter().all(u8::is_ascii_whitespace) => Ok(M::default()),
            Codec::Json => serde_json::from_slice(bytes)
                .map_err(|e| Error::invalid_argument(format!("cannot decode JSON message: {e}"))),
            Codec::Proto => M::decode(bytes).map_err(|e| {
                Error::invalid_argument(format!("cannot decode protobuf message: {e}"))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Codec, Kind};

    #[test]
    fn content_types() {
        assert_eq!(
            Codec::from_content_type("application/json"),
            Some((Codec::Json, Kind::Unary))
        );
        assert_eq!(
            Codec::from_content_type("Application/JSON; charset=utf-8"),
            Some((Codec::Json, Kind::Unary))
        );
        assert_eq!(
            Codec::from_content_type("application/connect+proto"),
            Some((Codec::Proto, Kind::Streaming))
        );
        assert_eq!(Codec::from_content_type("text/plain"), None);
        assert_eq!(
            Codec::Json.content_type(Kind::Streaming),
            "application/connect+json"
        );
    }
}
