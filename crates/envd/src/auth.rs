//! Access control: the `X-Access-Token`, the run-as user of RPCs, and signed `/files` URLs.
//!
//! Invariant: token and signature comparisons are constant-time, and no token value is ever
//! logged or echoed in an error.

use crate::{http::HttpError, state::Envd};
use axum::{
    extract::{Request, State},
    middleware::Next,
    response::Response,
};
use base64::{Engine, engine::general_purpose::STANDARD, engine::general_purpose::STANDARD_NO_PAD};
use http::{HeaderMap, Method, StatusCode};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

pub(crate) const ACCESS_TOKEN_HEADER: &str = "x-access-token";
const UNAUTHORIZED: &str =
    "unauthorized access, please provide a valid access token or method signing if supported";

/// Which operation a signed `/files` URL grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FileOperation {
    Read,
    Write,
}

impl FileOperation {
    fn as_str(self) -> &'static str {
        match self {
            FileOperation::Read => "read",
            FileOperation::Write => "write",
        }
    }
}

/// Middleware: once `/init` has set a token, requests must carry it. `/health`, `/files` (which
/// also accepts URL signatures, checked by its handler) and `/init` (which checks the token
/// itself) are exempt, as in E2B's envd.
pub(crate) async fn require_access_token(
    State(envd): State<Arc<Envd>>,
    request: Request,
    next: Next,
) -> Result<Response, HttpError> {
    let exempt = matches!(
        (request.method(), request.uri().path()),
        (&Method::GET, "/health")
            | (&Method::GET | &Method::POST, "/files")
            | (&Method::POST, "/init")
    );
    if !exempt && !token_ok(&envd, request.headers()) {
        return Err(unauthorized());
    }
    Ok(next.run(request).await)
}

pub(crate) fn unauthorized() -> HttpError {
    HttpError::new(StatusCode::UNAUTHORIZED, UNAUTHORIZED)
}

/// True when no token is set, or the request's `X-Access-Token` matches it.
pub(crate) fn token_ok(envd: &Envd, headers: &HeaderMap) -> bool {
    let defaults = envd.defaults();
    let Some(expected) = defaults.access_token.as_deref() else {
        return true;
    };
    headers
        .get(ACCESS_TOKEN_HEADER)
        .is_some_and(|given| bool::from(given.as_bytes().ct_eq(expected.as_bytes())))
}

/// The user named by `Authorization: Basic base64("<user>:")`, if the header is present.
/// A malformed header is an error rather than a silent fallback to the default user.
pub(crate) fn basic_auth_user(headers: &HeaderMap) -> Result<Option<String>, &'static str> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| "invalid authorization header")?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
        .ok_or("authorization header must use the Basic scheme")?;
    let decoded = STANDARD
        .decode(encoded.trim())
        .map_err(|_| "invalid base64 in authorization header")?;
    let decoded =
        String::from_utf8(decoded).map_err(|_| "invalid UTF-8 in authorization header")?;
    let user = decoded
        .split_once(':')
        .map_or(decoded.as_str(), |(user, _)| user);
    Ok(Some(user.to_owned()))
}

/// The signature of a `/files` URL: `v1_` + unpadded base64 of
/// `sha256("<path>:<op>:<user>:<token>[:<expiration>]")`.
pub(crate) fn file_signature(
    path: &str,
    operation: FileOperation,
    user: &str,
    token: &str,
    expiration: Option<i64>,
) -> String {
    let mut input = format!("{path}:{}:{user}:{token}", operation.as_str());
    if let Some(expiration) = expiration {
        input.push_str(&format!(":{expiration}"));
    }
    format!(
        "v1_{}",
        STANDARD_NO_PAD.encode(Sha256::digest(input.as_bytes()))
    )
}

/// Parameters of a `/files` request that take part in authorization.
pub(crate) struct FileAccess<'a> {
    pub(crate) path: &'a str,
    pub(crate) username: &'a str,
    pub(crate) signature: Option<&'a str>,
    pub(crate) expiration: Option<i64>,
}

/// Authorizes a `/files` request: no token set, a matching `X-Access-Token` (a present but wrong
/// header fails even with a valid signature), or a valid, unexpired URL signature.
pub(crate) fn authorize_file_access(
    envd: &Envd,
    headers: &HeaderMap,
    access: &FileAccess<'_>,
    operation: FileOperation,
    now_unix: i64,
) -> Result<(), HttpError> {
    let token = envd.defaults().access_token.clone();
    let Some(token) = token else { return Ok(()) };
    if headers.contains_key(ACCESS_TOKEN_HEADER) {
        return if token_ok(envd, headers) {
            Ok(())
        } else {
            Err(unauthorized())
        };
    }
    let Some(signature) = access.signature else {
        return Err(unauthorized());
    };
    if access
        .expiration
        .is_some_and(|expiration| expiration < now_unix)
    {
        return Err(HttpError::new(
            StatusCode::UNAUTHORIZED,
            "signature has expired",
        ));
    }
    let expected = file_signature(
        access.path,
        operation,
        access.username,
        &token,
        access.expiration,
    );
    if bool::from(expected.as_bytes().ct_eq(signature.as_bytes())) {
        Ok(())
    } else {
        Err(HttpError::new(
            StatusCode::UNAUTHORIZED,
            "invalid signature",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::{
        FileAccess, FileOperation, authorize_file_access, basic_auth_user, file_signature,
    };
    use crate::state::Envd;
    use http::{HeaderMap, HeaderValue};

    #[test]
    fn basic_auth() {
        let mut headers = HeaderMap::new();
        assert_eq!(basic_auth_user(&headers), Ok(None));
        headers.insert("authorization", HeaderValue::from_static("Basic cm9vdDo="));
        assert_eq!(basic_auth_user(&headers), Ok(Some("root".into())));
        headers.insert("authorization", HeaderValue::from_static("Basic dXNlcjo="));
        assert_eq!(basic_auth_user(&headers), Ok(Some("user".into())));
        headers.insert("authorization", HeaderValue::from_static("Bearer x"));
        assert!(basic_auth_user(&headers).is_err());
        headers.insert("authorization", HeaderValue::from_static("Basic !!!"));
        assert!(basic_auth_user(&headers).is_err());
    }

    #[test]
    fn signature_matches_the_sdk_formula() {
        // sha256("/tmp/a.txt:read:user:tok") computed independently with Python's hashlib.
        assert_eq!(
            file_signature("/tmp/a.txt", FileOperation::Read, "user", "tok", None),
            "v1_3wjaqcefdtC5n9s6kJckrbLTE09aVyoS7GvKfHVu6Ek"
        );
        assert_ne!(
            file_signature("/tmp/a.txt", FileOperation::Write, "user", "tok", None),
            file_signature("/tmp/a.txt", FileOperation::Read, "user", "tok", None)
        );
    }

    #[test]
    fn file_access_rules() {
        let envd = Envd::new();
        let allowed = |token_header: Option<&'static str>,
                       signature: Option<&str>,
                       expiration,
                       operation,
                       now| {
            let mut headers = HeaderMap::new();
            if let Some(token) = token_header {
                headers.insert("x-access-token", HeaderValue::from_static(token));
            }
            let access = FileAccess {
                path: "/a",
                username: "",
                signature,
                expiration,
            };
            authorize_file_access(&envd, &headers, &access, operation, now).is_ok()
        };
        use FileOperation::{Read, Write};

        // No token set: everything goes.
        assert!(allowed(None, None, None, Read, 0));

        envd.defaults_mut().access_token = Some("tok".into());
        let good = file_signature("/a", Read, "", "tok", Some(100));
        struct Case<'a> {
            token_header: Option<&'static str>,
            signature: Option<&'a str>,
            expiration: Option<i64>,
            operation: FileOperation,
            now: i64,
            allowed: bool,
            what: &'static str,
        }
        let case = |token_header, signature, expiration, operation, now, allowed, what| Case {
            token_header,
            signature,
            expiration,
            operation,
            now,
            allowed,
            what,
        };
        let table = [
            case(None, None, None, Read, 0, false, "no token, no signature"),
            case(
                None,
                Some(&good),
                Some(100),
                Read,
                50,
                true,
                "valid signature",
            ),
            case(None, Some(&good), Some(100), Read, 101, false, "expired"),
            case(
                None,
                Some(&good),
                Some(100),
                Write,
                50,
                false,
                "wrong operation",
            ),
            case(
                None,
                Some(&good),
                Some(200),
                Read,
                50,
                false,
                "tampered expiry",
            ),
            case(
                Some("tok"),
                None,
                None,
                Write,
                0,
                true,
                "matching token header",
            ),
            case(
                Some("nope"),
                Some(&good),
                Some(100),
                Read,
                50,
                false,
                "a wrong token beats a valid signature",
            ),
        ];
        for c in table {
            assert_eq!(
                allowed(
                    c.token_header,
                    c.signature,
                    c.expiration,
                    c.operation,
                    c.now
                ),
                c.allowed,
                "{}",
                c.what
            );
        }
    }
}
