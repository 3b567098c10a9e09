//! [`Signer`]: OCI "Signature Version 1" (draft-cavage-http-signatures-08), RSA-SHA256.
//!
//! The signing string is `<name>: <value>` per signed header, joined by `\n`, in the order of
//! the `headers="…"` parameter. `(request-target)` is the lowercase method, a space, and the
//! path and query exactly as sent; `host` includes a non-default port.
//!
//! Invariant: the bytes signed are the bytes sent. The signer reads the request's [`Url`] as the
//! HTTP client will put it on the wire and never re-encodes it.

use crate::{
    AuthError,
    key::{PrivateKey, sha256_base64},
};
use base64::Engine as _;
use http::{HeaderMap, HeaderValue, Method, header};
use std::{fmt, sync::Arc, time::SystemTime};
use url::Url;

/// What of the request body is signed.
#[derive(Clone, Copy, Debug)]
pub enum Payload<'a> {
    /// Sign only `date (request-target) host`: requests without a body (GET, HEAD, DELETE) and
    /// Object Storage PutObject/UploadPart, whose bodies Oracle does not hash (so they can stream).
    /// `Content-Length` and `Content-Type` may still be sent, unsigned.
    Unsigned,
    /// A body that is signed too: `content-length`, `content-type` (default `application/json`)
    /// and `x-content-sha256` are set on the request (unless present) and signed.
    Signed(&'a [u8]),
}

/// Signs requests with one key under one key id. Cloning is cheap (the key is shared).
#[derive(Clone)]
pub struct Signer {
    key_id: Arc<str>,
    key: Arc<PrivateKey>,
}

/// Header names signed for every request.
const GENERIC: [&str; 3] = ["date", "(request-target)", "host"];
/// Header names added for a signed body.
const BODY: [&str; 3] = ["content-length", "content-type", "x-content-sha256"];
/// The identity federation call signs the body headers but not `host` (the SDKs' practice).
pub(crate) const FEDERATION: [&str; 5] = [
    "date",
    "(request-target)",
    "content-length",
    "content-type",
    "x-content-sha256",
];

impl Signer {
    /// `key_id` is `<tenancy>/<user>/<fingerprint>` for an API key, `ST$<token>` for a session
    /// token.
    pub fn new(key_id: impl Into<String>, key: PrivateKey) -> Self {
        Self {
            key_id: key_id.into().into(),
            key: Arc::new(key),
        }
    }

    /// The key id (may hold a session token: never log it).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Signs a request: sets `date` (unless `date` or `x-date` is present; `x-date` wins, as on
    /// Oracle's side), `host`, the body headers for [`Payload::Signed`], and `authorization`.
    pub fn sign(
        &self,
        method: &Method,
        url: &Url,
        headers: &mut HeaderMap,
        payload: Payload<'_>,
    ) -> Result<(), AuthError> {
        let names: Vec<&str> = match payload {
            Payload::Unsigned => GENERIC.to_vec(),
            Payload::Signed(body) => {
                set_body_headers(headers, body);
                GENERIC.iter().chain(BODY.iter()).copied().collect()
            }
        };
        self.sign_headers(method, url, headers, &names)
    }

    /// Signs exactly `names` (after setting `date` and `host` if absent).
    pub(crate) fn sign_headers(
        &self,
        method: &Method,
        url: &Url,
        headers: &mut HeaderMap,
        names: &[&str],
    ) -> Result<(), AuthError> {
        if !headers.contains_key(header::DATE) && !headers.contains_key("x-date") {
            let now = httpdate::fmt_http_date(SystemTime::now());
            headers.insert(header::DATE, header_value(&now)?);
        }
        if !headers.contains_key(header::HOST) {
            headers.insert(header::HOST, header_value(&host(url)?)?);
        }
        let names: Vec<&str> = names
            .iter()
            .map(|&n| {
                if n == "date" && headers.contains_key("x-date") {
                    "x-date"
                } else {
                    n
                }
            })
            .collect();
        let value = self.authorization(method, url, headers, &names)?;
        headers.insert(header::AUTHORIZATION, header_value(&value)?);
        Ok(())
    }

    /// The `Authorization` value for `names`, read from `headers` (lowercase names;
    /// `(request-target)` is computed from `method` and `url`). Parameter order is the Go SDK's.
    pub fn authorization(
        &self,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
        names: &[&str],
    ) -> Result<String, AuthError> {
        let signing_string = signing_string(method, url, headers, names)?;
        let signature = base64::engine::general_purpose::STANDARD
            .encode(self.key.sign(signing_string.as_bytes()));
        Ok(format!(
            r#"Signature version="1",headers="{}",keyId="{}",algorithm="rsa-sha256",signature="{signature}""#,
            names.join(" "),
            self.key_id,
        ))
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A session key id is a bearer token; only its kind is shown.
        let key_id = if self.key_id.starts_with("ST$") {
            "ST$<session token>"
        } else {
            &self.key_id
        };
        f.debug_struct("Signer")
            .field("key_id", &key_id)
            .field("key", &self.key)
            .finish()
    }
}

/// The string that is signed: one `name: value` line per name, no trailing newline.
pub fn signing_string(
    method: &Method,
    url: &Url,
    headers: &HeaderMap,
    names: &[&str],
) -> Result<String, AuthError> {
    let lines = names
        .iter()
        .map(|&name| {
            let value = match name {
                "(request-target)" => request_target(method, url),
                "host" if !headers.contains_key(header::HOST) => host(url)?,
                _ => {
                    let value = headers.get(name).ok_or_else(|| {
                        AuthError::Sign(format!("header {name:?} is to be signed but is not set"))
                    })?;
                    value
                        .to_str()
                        .map_err(|_| AuthError::Sign(format!("header {name:?} is not ASCII")))?
                        .to_string()
                }
            };
            Ok(format!("{name}: {value}"))
        })
        .collect::<Result<Vec<_>, AuthError>>()?;
    Ok(lines.join("\n"))
}

fn request_target(method: &Method, url: &Url) -> String {
    let method = method.as_str().to_ascii_lowercase();
    match url.query() {
        Some(query) => format!("{method} {}?{query}", url.path()),
        None => format!("{method} {}", url.path()),
    }
}

/// Host with the port when it is not the scheme's default (`Url` drops default ports).
fn host(url: &Url) -> Result<String, AuthError> {
    let host = url
        .host_str()
        .ok_or_else(|| AuthError::Sign(format!("URL {url} has no host")))?;
    Ok(match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    })
}

/// Sets `content-length`, `content-type` and `x-content-sha256` for `body` unless present.
/// `content-length` is set even for an empty body: Oracle requires it signed.
pub(crate) fn set_body_headers(headers: &mut HeaderMap, body: &[u8]) {
    headers
        .entry(header::CONTENT_LENGTH)
        .or_insert_with(|| HeaderValue::from(body.len()));
    headers
        .entry(header::CONTENT_TYPE)
        .or_insert_with(|| HeaderValue::from_static("application/json"));
    if !headers.contains_key("x-content-sha256") {
        // Base64 is always a valid header value.
        if let Ok(value) = HeaderValue::from_str(&sha256_base64(body)) {
            headers.insert("x-content-sha256", value);
        }
    }
}

fn header_value(value: &str) -> Result<HeaderValue, AuthError> {
    HeaderValue::from_str(value)
        .map_err(|_| AuthError::Sign(format!("{value:?} is not a valid header value")))
}

#[cfg(test)]
mod tests;
