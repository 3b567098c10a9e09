//! Amazon ECR: registry `<account>.dkr.ecr.<region>.amazonaws.com`, Basic `AWS:<password>` where
//! the password comes from the ECR API's `GetAuthorizationToken` (valid 12 hours; cached until
//! five minutes before `expiresAt`).
//!
//! The API request is signed with SigV4 by `aws-sigv4` (the AWS SDK's own signer); the signing
//! is checked against AWS's published test vectors below.

use crate::{
    Credentials, RegistryError, RemoteRegistry,
    auth::{AuthSource, TokenCache, decode_basic},
    error::chain,
};
use aws_sigv4::{
    http_request::{SignableBody, SignableRequest, SigningSettings, sign},
    sign::v4,
};
use aws_smithy_runtime_api::client::identity::Identity;
use std::{
    fmt,
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

const TARGET: &str = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken";
const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// ECR provider settings (`AWS_REGION`, `AWS_ACCOUNT_ID`, `AWS_DOCKER_REPOSITORY_NAME`,
/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`). `Debug` hides the secrets.
#[derive(Clone)]
pub struct EcrSettings {
    pub region: String,
    pub account_id: String,
    /// Images live under this repository prefix: `name:tag` is `<repository>/name:tag`.
    pub repository: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// The ECR API; default `https://api.ecr.<region>.amazonaws.com/` (set for VPC endpoints).
    pub api_endpoint: Option<String>,
    /// The registry host; default `<account>.dkr.ecr.<region>.amazonaws.com`.
    pub registry_host: Option<String>,
}

impl fmt::Debug for EcrSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EcrSettings")
            .field("region", &self.region)
            .field("account_id", &self.account_id)
            .field("repository", &self.repository)
            .field("access_key_id", &self.access_key_id)
            .field("api_endpoint", &self.api_endpoint)
            .field("registry_host", &self.registry_host)
            .finish_non_exhaustive()
    }
}

impl EcrSettings {
    pub fn host(&self) -> String {
        self.registry_host
            .clone()
            .unwrap_or_else(|| format!("{}.dkr.ecr.{}.amazonaws.com", self.account_id, self.region))
    }

    pub fn endpoint(&self) -> String {
        self.api_endpoint
            .clone()
            .unwrap_or_else(|| format!("https://api.ecr.{}.amazonaws.com/", self.region))
    }
}

impl RemoteRegistry {
    /// The ECR registry of `settings`, authenticating with ECR authorization tokens.
    pub fn ecr(settings: EcrSettings, cache_dir: &Path) -> RemoteRegistry {
        let host = settings.host();
        let repository = settings.repository.clone();
        let auth = EcrAuth {
            location: format!("registry {host}"),
            settings,
            http: reqwest::Client::new(),
            cache: TokenCache::new(),
        };
        RemoteRegistry::with_auth(&host, Some(&repository), Arc::new(auth), cache_dir)
    }
}

struct EcrAuth {
    settings: EcrSettings,
    location: String,
    http: reqwest::Client,
    cache: TokenCache,
}

#[async_trait::async_trait]
impl AuthSource for EcrAuth {
    async fn credentials(&self) -> Result<Credentials, RegistryError> {
        self.cache.get_or_fetch(|| self.fetch()).await
    }
}

impl EcrAuth {
    async fn fetch(&self) -> Result<(Credentials, SystemTime), RegistryError> {
        let fail = |reason: String| RegistryError::CredentialsUnavailable {
            location: self.location.clone(),
            reason,
        };
        let endpoint = self.settings.endpoint();
        let body = b"{}";
        let headers = [("content-type", CONTENT_TYPE), ("x-amz-target", TARGET)];
        let keys = AwsKeys {
            access_key_id: &self.settings.access_key_id,
            secret_access_key: &self.settings.secret_access_key,
            session_token: self.settings.session_token.as_deref(),
        };
        let signed = sign_request(
            "POST",
            &endpoint,
            &headers,
            body,
            &keys,
            &self.settings.region,
            "ecr",
            SystemTime::now(),
        )
        .map_err(|e| {
            fail(format!(
                "cannot sign the GetAuthorizationToken request: {e}"
            ))
        })?;
        let mut request = self
            .http
            .post(&endpoint)
            .timeout(Duration::from_secs(30))
            .body(&body[..]);
        for (name, value) in headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .chain(signed)
        {
            request = request.header(name, value);
        }
        let response = request
            .send()
            .await
            .map_err(|e| fail(format!("ECR API {endpoint}: {}", chain(&e))))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| fail(format!("ECR API {endpoint}: {}", chain(&e))))?;
        if !status.is_success() {
            return Err(fail(format!(
                "ECR GetAuthorizationToken failed (HTTP {}): {}",
                status.as_u16(),
                api_error_message(&text)
            )));
        }
        let (credentials, expires) = parse_token_response(&text)
            .map_err(|e| fail(format!("ECR GetAuthorizationToken: {e}")))?;
        tracing::debug!(registry = %self.location, "got an ECR authorization token");
        Ok((credentials, expires))
    }
}

/// `{"__type": "...", "message": "..."}`, as AWS JSON APIs report errors; never the raw body
/// if it is not that (it could be anything).
fn api_error_message(body: &str) -> String {
    #[derive(serde::Deserialize)]
    struct ApiError {
        #[serde(rename = "__type")]
        kind: Option<String>,
        #[serde(alias = "Message")]
        message: Option<String>,
    }
    match serde_json::from_str::<ApiError>(body) {
        Ok(e) => format!(
            "{}: {}",
            e.kind.unwrap_or_else(|| "error".into()),
            e.message.unwrap_or_default()
        ),
        Err(_) => "unreadable error response".into(),
    }
}

/// Credentials and expiry from `authorizationData[0]`.
fn parse_token_response(body: &str) -> Result<(Credentials, SystemTime), String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Response {
        authorization_data: Vec<AuthorizationData>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct AuthorizationData {
        authorization_token: String,
        /// Seconds since the epoch, possibly fractional.
        expires_at: Option<f64>,
    }
    let response: Response =
        serde_json::from_str(body).map_err(|e| format!("unexpected response: {e}"))?;
    let data = response
        .authorization_data
        .into_iter()
        .next()
        .ok_or("the response has no authorizationData")?;
    let credentials = decode_basic(&data.authorization_token)
        .ok_or("the authorization token is not base64 user:password")?;
    let expires = match data.expires_at {
        Some(secs) if secs.is_finite() && secs > 0.0 => UNIX_EPOCH + Duration::from_secs_f64(secs),
        // ECR tokens last 12 hours; assume less.
        _ => SystemTime::now() + Duration::from_secs(6 * 3600),
    };
    Ok((credentials, expires))
}

pub(crate) struct AwsKeys<'a> {
    pub(crate) access_key_id: &'a str,
    pub(crate) secret_access_key: &'a str,
    pub(crate) session_token: Option<&'a str>,
}

/// SigV4-signs a request; returns the headers to add (`x-amz-date`, `authorization`, and
/// `x-amz-security-token` with a session token). The host is signed from `url`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sign_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    keys: &AwsKeys<'_>,
    region: &str,
    service: &str,
    time: SystemTime,
) -> Result<Vec<(String, String)>, String> {
    let identity: Identity = aws_credential_types::Credentials::new(
        keys.access_key_id,
        keys.secret_access_key,
        keys.session_token.map(str::to_string),
        None,
        "kiln",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let request = SignableRequest::new(
        method,
        url,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    let (headers, _params) = instructions.into_parts();
    Ok(headers
        .into_iter()
        .map(|h| (h.name().to_string(), h.value().to_string()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS SigV4 test suite (`aws-sig-v4-test-suite`), cases get-vanilla and post-vanilla:
    /// AKIDEXAMPLE, us-east-1, service "service", 2015-08-30T12:36:00Z.
    #[test]
    fn signs_like_the_published_test_vectors() {
        let keys = AwsKeys {
            access_key_id: "AKIDEXAMPLE",
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            session_token: None,
        };
        let time = UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        for (method, signature) in [
            (
                "GET",
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
            (
                "POST",
                "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
            ),
        ] {
            let headers = sign_request(
                method,
                "https://example.amazonaws.com/",
                &[],
                b"",
                &keys,
                "us-east-1",
                "service",
                time,
            )
            .unwrap();
            let get = |name: &str| {
                headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.as_str())
            };
            assert_eq!(get("x-amz-date"), Some("20150830T123600Z"));
            assert_eq!(
                get("authorization").unwrap(),
                format!(
                    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
                     SignedHeaders=host;x-amz-date, Signature={signature}"
                )
            );
        }
    }

    #[test]
    fn signs_the_ecr_headers_and_session_token() {
        let keys = AwsKeys {
            access_key_id: "AKID",
            secret_access_key: "secret",
            session_token: Some("session"),
        };
        let headers = sign_request(
            "POST",
            "https://api.ecr.eu-west-1.amazonaws.com/",
            &[("content-type", CONTENT_TYPE), ("x-amz-target", TARGET)],
            b"{}",
            &keys,
            "eu-west-1",
            "ecr",
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        )
        .unwrap();
        let auth = &headers
            .iter()
            .find(|(n, _)| n == "authorization")
            .unwrap()
            .1;
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKID/20231114/eu-west-1/ecr/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target, Signature="), "{auth}");
        assert!(
            headers
                .iter()
                .any(|(n, v)| n == "x-amz-security-token" && v == "session")
        );
    }

    #[test]
    fn parses_the_token_response() {
        let body = r#"{"authorizationData":[{"authorizationToken":"QVdTOnMzY3JldA==","expiresAt":1.7E9,"proxyEndpoint":"https://1.dkr.ecr.x.amazonaws.com"}]}"#;
        let (credentials, expires) = parse_token_response(body).unwrap();
        assert_eq!(
            credentials,
            Credentials::Basic {
                username: "AWS".into(),
                password: "s3cret".into()
            }
        );
        assert_eq!(expires, UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        assert!(parse_token_response(r#"{"authorizationData":[]}"#).is_err());
        assert_eq!(
            api_error_message(r#"{"__type":"UnrecognizedClientException","message":"bad token"}"#),
            "UnrecognizedClientException: bad token"
        );
    }

    #[test]
    fn hosts_and_endpoints() {
        let s = EcrSettings {
            region: "eu-west-1".into(),
            account_id: "123456789012".into(),
            repository: "kiln".into(),
            access_key_id: "AKID".into(),
            secret_access_key: "hidden-secret".into(),
            session_token: Some("hidden-token".into()),
            api_endpoint: None,
            registry_host: None,
        };
        assert_eq!(s.host(), "123456789012.dkr.ecr.eu-west-1.amazonaws.com");
        assert_eq!(s.endpoint(), "https://api.ecr.eu-west-1.amazonaws.com/");
        let debug = format!("{s:?}");
        assert!(!debug.contains("hidden"), "{debug}");
    }
}
