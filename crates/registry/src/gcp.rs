//! Google Artifact Registry: host `<region>-docker.pkg.dev`, images under
//! `<project>/<repository>/`, Basic `oauth2accesstoken:<access token>`.
//!
//! The access token is either given (`GCP_ACCESS_TOKEN`, used as is) or obtained from a service
//! account key (`GOOGLE_APPLICATION_CREDENTIALS`): a JWT signed RS256 with the key, claims
//! `iss` = the account's email, `scope` = cloud-platform, `aud` = the key's `token_uri`, one
//! hour long, exchanged at `token_uri` (grant type `jwt-bearer`) for an access token, cached
//! until shortly before it expires.

use crate::{
    Credentials, RegistryError, RemoteRegistry,
    auth::{AuthSource, StaticAuth, TokenCache},
    error::chain,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use std::{
    fmt,
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const USERNAME: &str = "oauth2accesstoken";
/// Google's maximum assertion lifetime.
const ASSERTION_LIFETIME: u64 = 3600;

/// Artifact Registry provider settings (`GCP_REGION`, `GCP_PROJECT_ID`,
/// `GCP_DOCKER_REPOSITORY_NAME`, and a token source).
#[derive(Clone, Debug)]
pub struct GcpSettings {
    pub region: String,
    pub project_id: String,
    pub repository: String,
    pub token_source: GcpTokenSource,
    /// The registry host; default `<region>-docker.pkg.dev`.
    pub registry_host: Option<String>,
}

impl GcpSettings {
    pub fn host(&self) -> String {
        self.registry_host
            .clone()
            .unwrap_or_else(|| format!("{}-docker.pkg.dev", self.region))
    }
}

/// Where Artifact Registry access tokens come from. `Debug` hides the secrets.
#[derive(Clone)]
pub enum GcpTokenSource {
    /// A service account key (the JSON file `GOOGLE_APPLICATION_CREDENTIALS` names).
    ServiceAccount(ServiceAccountKey),
    /// A ready access token (`GCP_ACCESS_TOKEN`), e.g. from `gcloud auth print-access-token`.
    AccessToken(String),
}

impl fmt::Debug for GcpTokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GcpTokenSource::ServiceAccount(key) => {
                f.debug_tuple("ServiceAccount").field(key).finish()
            }
            GcpTokenSource::AccessToken(_) => f.write_str("AccessToken(<redacted>)"),
        }
    }
}

/// A parsed service account key file.
#[derive(Clone)]
pub struct ServiceAccountKey {
    pub client_email: String,
    pub private_key_id: Option<String>,
    pub token_uri: String,
    key: EncodingKey,
}

impl fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("private_key_id", &self.private_key_id)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

impl ServiceAccountKey {
    /// Parses a service account key file (`"type": "service_account"`). Errors never quote
    /// the key.
    pub fn from_json(json: &str) -> Result<ServiceAccountKey, String> {
        #[derive(Deserialize)]
        struct File {
            #[serde(rename = "type")]
            kind: Option<String>,
            client_email: Option<String>,
            private_key: Option<String>,
            private_key_id: Option<String>,
            token_uri: Option<String>,
        }
        let file: File = serde_json::from_str(json)
            .map_err(|e| format!("not a service account key file: {e}"))?;
        if let Some(kind) = file.kind.as_deref()
            && kind != "service_account"
        {
            return Err(format!(
                "has type {kind:?}; only \"service_account\" keys are supported"
            ));
        }
        let missing = |field: &str| format!("has no {field:?}");
        let client_email = file.client_email.ok_or_else(|| missing("client_email"))?;
        let private_key = file.private_key.ok_or_else(|| missing("private_key"))?;
        let token_uri = file
            .token_uri
            .unwrap_or_else(|| "https://oauth2.googleapis.com/token".to_string());
        install_crypto_provider();
        let key = EncodingKey::from_rsa_pem(private_key.as_bytes())
            .map_err(|e| format!("has a private_key that is not an RSA PEM key ({e})"))?;
        Ok(ServiceAccountKey {
            client_email,
            private_key_id: file.private_key_id,
            token_uri,
            key,
        })
    }
}

/// jsonwebtoken picks its crypto backend from crate features and panics if it cannot decide
/// (should another crate ever enable its second backend); naming ours first avoids that.
fn install_crypto_provider() {
    // Err means a provider is already installed, which is fine.
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
}

/// The claims of the token-exchange assertion.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Claims {
    pub(crate) iss: String,
    pub(crate) scope: String,
    pub(crate) aud: String,
    pub(crate) iat: u64,
    pub(crate) exp: u64,
}

/// The signed JWT (`header.claims.signature`) exchanged for an access token.
pub(crate) fn assertion(key: &ServiceAccountKey, now: u64) -> Result<String, String> {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = key.private_key_id.clone();
    let claims = Claims {
        iss: key.client_email.clone(),
        scope: SCOPE.to_string(),
        aud: key.token_uri.clone(),
        iat: now,
        exp: now + ASSERTION_LIFETIME,
    };
    install_crypto_provider();
    jsonwebtoken::encode(&header, &claims, &key.key).map_err(|e| e.to_string())
}

impl RemoteRegistry {
    /// The Artifact Registry repository of `settings`.
    pub fn gcp(settings: GcpSettings, cache_dir: &Path) -> RemoteRegistry {
        let host = settings.host();
        let prefix = format!("{}/{}", settings.project_id, settings.repository);
        let auth: Arc<dyn AuthSource> = match settings.token_source {
            GcpTokenSource::AccessToken(token) => Arc::new(StaticAuth(Credentials::Basic {
                username: USERNAME.to_string(),
                password: token,
            })),
            GcpTokenSource::ServiceAccount(key) => Arc::new(GcpAuth {
                location: format!("registry {host}"),
                key,
                http: reqwest::Client::new(),
                cache: TokenCache::new(),
            }),
        };
        RemoteRegistry::with_auth(&host, Some(&prefix), auth, cache_dir)
    }
}

struct GcpAuth {
    location: String,
    key: ServiceAccountKey,
    http: reqwest::Client,
    cache: TokenCache,
}

#[async_trait::async_trait]
impl AuthSource for GcpAuth {
    async fn credentials(&self) -> Result<Credentials, RegistryError> {
        self.cache.get_or_fetch(|| self.fetch()).await
    }
}

impl GcpAuth {
    async fn fetch(&self) -> Result<(Credentials, SystemTime), RegistryError> {
        let fail = |reason: String| RegistryError::CredentialsUnavailable {
            location: self.location.clone(),
            reason,
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let assertion = assertion(&self.key, now)
            .map_err(|e| fail(format!("cannot sign the token request: {e}")))?;
        let uri = &self.key.token_uri;
        let response = self
            .http
            .post(uri)
            .timeout(Duration::from_secs(30))
            .form(&[
                ("grant_type", GRANT_TYPE),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| fail(format!("token endpoint {uri}: {}", chain(&e))))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| fail(format!("token endpoint {uri}: {}", chain(&e))))?;
        #[derive(Deserialize)]
        struct TokenResponse {
            access_token: Option<String>,
            expires_in: Option<u64>,
            error: Option<String>,
            error_description: Option<String>,
        }
        let parsed: Option<TokenResponse> = serde_json::from_str(&text).ok();
        match parsed {
            Some(TokenResponse {
                access_token: Some(token),
                expires_in,
                ..
            }) if status.is_success() => {
                tracing::debug!(registry = %self.location, account = %self.key.client_email, "got a Google access token");
                let expires = SystemTime::now() + Duration::from_secs(expires_in.unwrap_or(3600));
                Ok((
                    Credentials::Basic {
                        username: USERNAME.to_string(),
                        password: token,
                    },
                    expires,
                ))
            }
            Some(TokenResponse {
                error,
                error_description,
                ..
            }) => Err(fail(format!(
                "token endpoint {uri} refused service account {} (HTTP {}): {} {}",
                self.key.client_email,
                status.as_u16(),
                error.unwrap_or_default(),
                error_description.unwrap_or_default()
            ))),
            None => Err(fail(format!(
                "token endpoint {uri} answered HTTP {} with no token",
                status.as_u16()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    pub(crate) const KEY: &str = include_str!("../testdata/test-rsa-key.pem");
    const PUBLIC: &str = include_str!("../testdata/test-rsa-pub.pem");

    fn key_json(token_uri: &str) -> String {
        serde_json::json!({
            "type": "service_account",
            "project_id": "p",
            "private_key_id": "kid-1",
            "private_key": KEY,
            "client_email": "kiln@p.iam.gserviceaccount.com",
            "token_uri": token_uri,
        })
        .to_string()
    }

    #[test]
    fn signs_an_rs256_assertion_with_the_right_claims() {
        let key =
            ServiceAccountKey::from_json(&key_json("https://oauth2.googleapis.com/token")).unwrap();
        let jwt = assertion(&key, 1_700_000_000).unwrap();

        let header = jsonwebtoken::decode_header(&jwt).unwrap();
        assert_eq!(header.alg, Algorithm::RS256);
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        assert_eq!(header.kid.as_deref(), Some("kid-1"));

        let mut validation = Validation::new(Algorithm::RS256);
        validation.validate_exp = false;
        validation.set_audience(&["https://oauth2.googleapis.com/token"]);
        let decoded = jsonwebtoken::decode::<Claims>(
            &jwt,
            &DecodingKey::from_rsa_pem(PUBLIC.as_bytes()).unwrap(),
            &validation,
        )
        .unwrap();
        assert_eq!(
            decoded.claims,
            Claims {
                iss: "kiln@p.iam.gserviceaccount.com".into(),
                scope: "https://www.googleapis.com/auth/cloud-platform".into(),
                aud: "https://oauth2.googleapis.com/token".into(),
                iat: 1_700_000_000,
                exp: 1_700_003_600,
            }
        );
    }

    #[test]
    fn rejects_bad_key_files_without_quoting_them() {
        let err = ServiceAccountKey::from_json(r#"{"type":"authorized_user"}"#).unwrap_err();
        assert!(err.contains("service_account"), "{err}");
        let err = ServiceAccountKey::from_json(
            r#"{"type":"service_account","client_email":"a@b","private_key":"SECRETSTUFF"}"#,
        )
        .unwrap_err();
        assert!(!err.contains("SECRETSTUFF"), "{err}");
        let debug = format!(
            "{:?}",
            GcpTokenSource::ServiceAccount(
                ServiceAccountKey::from_json(&key_json("http://x")).unwrap()
            )
        );
        assert!(!debug.contains("PRIVATE"), "{debug}");
        assert_eq!(
            format!("{:?}", GcpTokenSource::AccessToken("ya29.x".into())),
            "AccessToken(<redacted>)"
        );
    }

    #[test]
    fn registry_host_and_prefix() {
        let settings = GcpSettings {
            region: "europe-west4".into(),
            project_id: "proj".into(),
            repository: "kiln".into(),
            token_source: GcpTokenSource::AccessToken("t".into()),
            registry_host: None,
        };
        assert_eq!(settings.host(), "europe-west4-docker.pkg.dev");
        let dir = tempfile::tempdir().unwrap();
        let r = RemoteRegistry::gcp(settings, dir.path());
        assert_eq!(r.prefix(), Some("proj/kiln"));
    }
}
