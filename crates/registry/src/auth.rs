//! Where a registry's credentials come from: fixed ones, a cloud token exchange (ECR, Google),
//! or the docker `config.json` for direct pulls.
//!
//! Secrets stay in memory only; nothing here logs them.

use crate::{Credentials, RegistryError};
use base64::Engine as _;
use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};
use tokio::sync::Mutex;

/// Credentials a registry uses when the caller passes none.
#[async_trait::async_trait]
pub(crate) trait AuthSource: Send + Sync {
    async fn credentials(&self) -> Result<Credentials, RegistryError>;
}

/// The same credentials every time.
pub(crate) struct StaticAuth(pub(crate) Credentials);

#[async_trait::async_trait]
impl AuthSource for StaticAuth {
    async fn credentials(&self) -> Result<Credentials, RegistryError> {
        Ok(self.0.clone())
    }
}

/// Short-lived credentials, reused until shortly before they expire.
pub(crate) struct TokenCache {
    slot: Mutex<Option<(Credentials, SystemTime)>>,
}

/// Renew this long before expiry, so a token does not run out in the middle of a pull.
const RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);

impl TokenCache {
    pub(crate) fn new() -> TokenCache {
        TokenCache {
            slot: Mutex::new(None),
        }
    }

    /// The cached credentials, or fresh ones from `fetch` (credentials and expiry time).
    /// Holding the lock across `fetch` makes concurrent pulls share one token request.
    pub(crate) async fn get_or_fetch<F, Fut>(&self, fetch: F) -> Result<Credentials, RegistryError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(Credentials, SystemTime), RegistryError>>,
    {
        let mut slot = self.slot.lock().await;
        if let Some((credentials, expires)) = slot.as_ref()
            && SystemTime::now() + RENEW_BEFORE < *expires
        {
            return Ok(credentials.clone());
        }
        let (credentials, expires) = fetch().await?;
        *slot = Some((credentials.clone(), expires));
        Ok(credentials)
    }
}

/// The docker `config.json` a direct pull takes credentials from: `$DOCKER_CONFIG/config.json`,
/// else `/root/.docker/config.json` (Kiln runs as root).
pub(crate) fn docker_config_path(docker_config_dir: Option<&str>) -> PathBuf {
    match docker_config_dir {
        Some(dir) => Path::new(dir).join("config.json"),
        None => PathBuf::from("/root/.docker/config.json"),
    }
}

/// Credentials for `host` from a docker `config.json` (`auths.<host>.auth` = base64
/// `user:pass`, `identitytoken`, `credHelpers`/`credsStore` programs); `None` when the file or
/// the entry is missing. A broken file or helper is logged and treated as "no entry": the pull
/// then goes anonymous and, if the registry insists, fails naming the registry.
pub(crate) async fn from_docker_config(path: &Path, host: &str) -> Option<Credentials> {
    let path = path.to_path_buf();
    let host = host.to_string();
    // Blocking: reads a file and may run a docker-credential-* helper.
    let found = tokio::task::spawn_blocking(move || {
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read docker config");
                return None;
            }
        };
        use docker_credential::{CredentialRetrievalError as E, DockerCredential as C};
        match docker_credential::get_credential_from_reader(std::io::BufReader::new(file), &host) {
            Ok(C::UsernamePassword(username, password)) => {
                Some(Credentials::Basic { username, password })
            }
            // Docker's identity token, sent as a registry bearer token.
            Ok(C::IdentityToken(token)) => Some(Credentials::Bearer(token)),
            Err(E::NoCredentialConfigured) => None,
            Err(e) => {
                // The helper's stdout could hold a secret: log only the kind of failure.
                let kind = match e {
                    E::HelperFailure { helper, .. } => format!("credential helper {helper} failed"),
                    other => other.to_string(),
                };
                tracing::warn!(path = %path.display(), %host, error = %kind, "cannot use docker config credentials");
                None
            }
        }
    })
    .await;
    found.ok().flatten()
}

/// Decodes `base64(user:password)` (ECR's authorization token, docker's `auth`).
pub(crate) fn decode_basic(encoded: &str) -> Option<Credentials> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (username, password) = decoded.split_once(':')?;
    Some(Credentials::Basic {
        username: username.to_string(),
        password: password.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_docker_config_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths":{"127.0.0.1:5000":{"auth":"dXNlcjpwYTpzcw=="},"reg.example":{"identitytoken":"tok"}}}"#,
        )
        .unwrap();
        assert_eq!(
            from_docker_config(&path, "127.0.0.1:5000").await,
            Some(Credentials::Basic {
                username: "user".into(),
                password: "pa:ss".into()
            })
        );
        assert_eq!(
            from_docker_config(&path, "reg.example").await,
            Some(Credentials::Bearer("tok".into()))
        );
        assert_eq!(from_docker_config(&path, "other:1").await, None);
        assert_eq!(
            from_docker_config(&dir.path().join("none"), "x").await,
            None
        );
    }

    #[tokio::test]
    async fn token_cache_renews_near_expiry() {
        let cache = TokenCache::new();
        let fresh = || async {
            Ok((
                Credentials::Bearer("a".into()),
                SystemTime::now() + Duration::from_secs(3600),
            ))
        };
        cache.get_or_fetch(fresh).await.unwrap();
        // Cached: the second fetch is not called.
        let got = cache
            .get_or_fetch(|| async {
                Err(RegistryError::NotFound {
                    location: "x".into(),
                    image: "y".into(),
                })
            })
            .await
            .unwrap();
        assert_eq!(got, Credentials::Bearer("a".into()));

        let stale = TokenCache::new();
        stale
            .get_or_fetch(|| async {
                Ok((
                    Credentials::Bearer("old".into()),
                    SystemTime::now() + Duration::from_secs(60),
                ))
            })
            .await
            .unwrap();
        let got = stale.get_or_fetch(fresh).await.unwrap();
        assert_eq!(got, Credentials::Bearer("a".into()));
    }
}
