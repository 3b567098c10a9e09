//! [`InstancePrincipal`]: credentials of the OCI compute instance Kiln runs on.
//!
//! 1. The instance metadata service (IMDS v2, every request with `Authorization: Bearer Oracle`)
//!    gives the region (`instance/regionInfo`) and the instance's identity: a leaf certificate,
//!    its private key and an intermediate certificate (`identity/*.pem`). They rotate, so they
//!    are fetched again on every refresh.
//! 2. A fresh RSA-2048 session key pair is generated locally.
//! 3. `POST <auth>/v1/x509` (the identity federation service), signed with the leaf key under key
//!    id `<tenancy>/fed-x509-sha256/<sha256 of the leaf>`, exchanges certificate, intermediate
//!    and session public key for a session token (a JWT).
//! 4. Requests are signed with the session key under key id `ST$<token>`.
//!
//! The token is renewed [`InstancePrincipalOptions::refresh_before`] its `exp` claim, or after
//! [`Credentials::invalidate`]. Concurrent callers wait for one refresh (the state is behind one
//! async mutex). Both endpoints are configurable so tests can serve them on loopback.

use crate::{
    AuthError, Credentials, PrivateKey, Signer,
    key::colon_hex,
    signer::{FEDERATION, set_body_headers},
};
use base64::Engine as _;
use http::{HeaderMap, Method};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;
use url::Url;

/// Where the metadata and identity services are, and when to renew.
#[derive(Clone, Debug)]
pub struct InstancePrincipalOptions {
    /// IMDS v2 base, `http://169.254.169.254/opc/v2/`.
    pub metadata_url: Url,
    /// Identity service base; `None` derives `https://auth.<region>.<realm domain>/` from the
    /// metadata service's `regionInfo`.
    pub auth_url: Option<Url>,
    /// Renew the token this long before it expires (the Go SDK's 5 minutes).
    pub refresh_before: Duration,
    /// First delay between retries of a failed metadata or federation call (doubled each time,
    /// 3 attempts; 4xx answers are not retried).
    pub retry_delay: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl Default for InstancePrincipalOptions {
    fn default() -> Self {
        Self {
            // A constant, valid URL.
            #[allow(clippy::unwrap_used)]
            metadata_url: Url::parse("http://169.254.169.254/opc/v2/").unwrap(),
            auth_url: None,
            refresh_before: Duration::from_secs(300),
            retry_delay: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Credentials of this compute instance. See the module docs.
#[derive(Debug)]
pub struct InstancePrincipal {
    options: InstancePrincipalOptions,
    client: reqwest::Client,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    region: Option<RegionInfo>,
    tenancy: Option<String>,
    session: Option<Session>,
}

#[derive(Debug)]
struct Session {
    signer: Signer,
    expires: SystemTime,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegionInfo {
    region_identifier: String,
    realm_domain_component: String,
}

impl InstancePrincipal {
    pub fn new(mut options: InstancePrincipalOptions) -> Result<Self, AuthError> {
        // `Url::join` replaces the last segment of a base without a trailing slash.
        for url in std::iter::once(&mut options.metadata_url).chain(options.auth_url.as_mut()) {
            if !url.path().ends_with('/') {
                url.set_path(&format!("{}/", url.path()));
            }
        }
        let client = reqwest::Client::builder()
            .timeout(options.timeout)
            .build()
            .map_err(|e| AuthError::InstancePrincipal(format!("HTTP client: {e}")))?;
        Ok(Self {
            options,
            client,
            state: Mutex::new(State::default()),
        })
    }

    /// The instance's region identifier (`us-ashburn-1`), from the metadata service.
    pub async fn region(&self) -> Result<String, AuthError> {
        let mut state = self.state.lock().await;
        Ok(self.region_info(&mut state).await?.region_identifier)
    }

    async fn region_info(&self, state: &mut State) -> Result<RegionInfo, AuthError> {
        if let Some(info) = &state.region {
            return Ok(info.clone());
        }
        let text = self.metadata("instance/regionInfo").await?;
        let info: RegionInfo = serde_json::from_str(&text).map_err(|e| {
            AuthError::InstancePrincipal(format!("metadata instance/regionInfo: {e}"))
        })?;
        state.region = Some(info.clone());
        Ok(info)
    }

    async fn metadata(&self, path: &str) -> Result<String, AuthError> {
        let url = self
            .options
            .metadata_url
            .join(path)
            .map_err(|e| AuthError::InstancePrincipal(format!("metadata URL: {e}")))?;
        self.with_retries(&format!("metadata {path}"), || {
            self.client
                .get(url.clone())
                .header(http::header::AUTHORIZATION, "Bearer Oracle")
        })
        .await
    }

    /// Sends the request built by `request` up to 3 times; returns the body of a 2xx answer.
    async fn with_retries(
        &self,
        what: &str,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<String, AuthError> {
        let mut delay = self.options.retry_delay;
        let mut attempt = 1;
        loop {
            let failure = match request().send().await {
                Ok(response) if response.status().is_success() => {
                    return response.text().await.map_err(|e| {
                        AuthError::InstancePrincipal(format!("{what}: reading the answer: {e}"))
                    });
                }
                Ok(response) => {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    let failure = format!("{what}: HTTP {status}: {}", snippet(&body));
                    if status.is_client_error() {
                        return Err(AuthError::InstancePrincipal(failure));
                    }
                    failure
                }
                Err(e) => format!("{what}: {e}"),
            };
            if attempt == 3 {
                return Err(AuthError::InstancePrincipal(failure));
            }
            tracing::warn!(attempt, "{failure}; retrying");
            tokio::time::sleep(delay).await;
            delay *= 2;
            attempt += 1;
        }
    }

    async fn refresh(&self, state: &mut State) -> Result<Session, AuthError> {
        let region = self.region_info(state).await?;
        let leaf_pem = self.metadata("identity/cert.pem").await?;
        let leaf_key = PrivateKey::from_pem(&self.metadata("identity/key.pem").await?, None)?;
        let intermediate_pem = self.metadata("identity/intermediate.pem").await?;
        let leaf = Leaf::parse(&leaf_pem)?;
        let intermediate = der_of(&intermediate_pem, "intermediate certificate")?;
        // The tenancy of an instance cannot change; a different one means a confused source.
        if let Some(previous) = &state.tenancy
            && previous != &leaf.tenancy
        {
            return Err(AuthError::InstancePrincipal(format!(
                "the instance certificate's tenancy changed from {previous} to {}",
                leaf.tenancy
            )));
        }

        let session_key = tokio::task::spawn_blocking(PrivateKey::generate)
            .await
            .map_err(|e| AuthError::Key(format!("key generation task: {e}")))??;
        let b64 = base64::engine::general_purpose::STANDARD;
        let body = serde_json::json!({
            "certificate": b64.encode(&leaf.der),
            "publicKey": b64.encode(session_key.public_key_der()?),
            "intermediateCertificates": [b64.encode(&intermediate)],
            "fingerprintAlgorithm": "SHA256",
        })
        .to_string();
        let auth_url = match &self.options.auth_url {
            Some(url) => url.clone(),
            None => Url::parse(&format!(
                "https://auth.{}.{}/",
                region.region_identifier, region.realm_domain_component
            ))
            .map_err(|e| AuthError::InstancePrincipal(format!("identity service URL: {e}")))?,
        };
        let url = auth_url
            .join("v1/x509")
            .map_err(|e| AuthError::InstancePrincipal(format!("identity service URL: {e}")))?;
        let leaf_signer = Signer::new(
            format!(
                "{}/fed-x509-sha256/{}",
                leaf.tenancy,
                colon_hex(&Sha256::digest(&leaf.der))
            ),
            leaf_key,
        );
        let answer = self
            .with_retries("identity federation", || {
                // Signed per attempt: the date must be fresh.
                let mut headers = HeaderMap::new();
                set_body_headers(&mut headers, body.as_bytes());
                match leaf_signer.sign_headers(&Method::POST, &url, &mut headers, &FEDERATION) {
                    Ok(()) => self
                        .client
                        .post(url.clone())
                        .headers(headers)
                        .body(body.clone()),
                    // Unreachable for these fixed headers; the request goes out unsigned and
                    // the identity service refuses it with a clear 401.
                    Err(e) => {
                        tracing::error!("signing the federation request: {e}");
                        self.client.post(url.clone()).body(body.clone())
                    }
                }
            })
            .await?;
        #[derive(Deserialize)]
        struct TokenAnswer {
            token: String,
        }
        let token: TokenAnswer = serde_json::from_str(&answer).map_err(|e| {
            AuthError::InstancePrincipal(format!("identity federation answer: {e}"))
        })?;
        let expires = jwt_expiry(&token.token)?;
        state.tenancy = Some(leaf.tenancy);
        tracing::info!(
            expires_in_s = expires
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .as_secs(),
            "obtained an OCI instance-principal session token"
        );
        Ok(Session {
            signer: Signer::new(format!("ST${}", token.token), session_key),
            expires,
        })
    }
}

#[async_trait::async_trait]
impl Credentials for InstancePrincipal {
    async fn signer(&self) -> Result<Signer, AuthError> {
        let mut state = self.state.lock().await;
        let renew_at = SystemTime::now() + self.options.refresh_before;
        if let Some(session) = &state.session
            && session.expires > renew_at
        {
            return Ok(session.signer.clone());
        }
        let session = self.refresh(&mut state).await?;
        let signer = session.signer.clone();
        state.session = Some(session);
        Ok(signer)
    }

    async fn invalidate(&self) {
        self.state.lock().await.session = None;
    }

    fn describe(&self) -> String {
        "instance principal".to_string()
    }
}

/// The leaf certificate: its DER and the tenancy OCID from the subject's `opc-tenant:` value.
struct Leaf {
    der: Vec<u8>,
    tenancy: String,
}

impl Leaf {
    fn parse(pem: &str) -> Result<Self, AuthError> {
        use x509_cert::der::Decode as _;
        let der = der_of(pem, "instance certificate")?;
        let cert = x509_cert::Certificate::from_der(&der).map_err(|e| {
            AuthError::InstancePrincipal(format!("instance certificate is not X.509: {e}"))
        })?;
        // RFC 4514 form, e.g. `OU=opc-tenant:ocid1.tenancy.oc1..x,OU=…,CN=…`.
        let subject = cert.tbs_certificate.subject.to_string();
        let tenancy = subject
            .split([',', '+'])
            .find_map(|part| {
                let value = part.split_once('=')?.1;
                value
                    .strip_prefix("opc-tenant:")
                    .or_else(|| value.strip_prefix("opc-identity:"))
            })
            .ok_or_else(|| {
                AuthError::InstancePrincipal(format!(
                    "instance certificate subject {subject:?} names no opc-tenant"
                ))
            })?
            .to_string();
        Ok(Self { der, tenancy })
    }
}

fn der_of(pem: &str, what: &str) -> Result<Vec<u8>, AuthError> {
    pem::parse(pem)
        .map(|block| block.into_contents())
        .map_err(|e| AuthError::InstancePrincipal(format!("{what} is not PEM: {e}")))
}

/// The `exp` claim of a JWT (the signature is the identity service's business, not ours).
fn jwt_expiry(token: &str) -> Result<SystemTime, AuthError> {
    #[derive(Deserialize)]
    struct Claims {
        exp: u64,
    }
    let invalid = |why: &str| AuthError::InstancePrincipal(format!("session token: {why}"));
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| invalid("not a JWT"))?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| invalid("payload is not base64url"))?;
    let claims: Claims =
        serde_json::from_slice(&json).map_err(|_| invalid("payload has no numeric exp"))?;
    Ok(UNIX_EPOCH + Duration::from_secs(claims.exp))
}

/// The start of an error body, for messages.
fn snippet(body: &str) -> &str {
    let end = body.char_indices().nth(200).map_or(body.len(), |(i, _)| i);
    &body[..end]
}
