//! [`Images`]: the template builder's entry point. Decides where a reference is pulled from
//! and applies the fallback base image.
//!
//! - `host[:port]/repo[:tag|@digest]` is pulled from that registry directly, with (in order)
//!   the caller's credentials, the host's entry in the docker `config.json`, the configured
//!   provider's credentials when it is the provider's own host, or none.
//! - A short name (`python:3.10-slim`, `myteam/app:2`) goes through the configured provider.
//!   When the provider does not have it, the fallback base image (same provider) is copied
//!   under the requested name and that is pulled: the template builds, from the base image,
//!   and the name exists from then on. Only a missing *manifest* triggers this, never a
//!   refused login or an unreachable registry, and never a digest reference (a digest cannot be
//!   given to other content).

use crate::{
    ConfigErrors, Credentials, DEFAULT_FALLBACK_BASE_IMAGE, EcrSettings, GcpSettings,
    GcpTokenSource, Image, Registry, RegistryError, RemoteRegistry, ServiceAccountKey,
    auth::{StaticAuth, from_docker_config},
    config::{self, ProviderAuth},
    reference::{ImageName, split_host},
};
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

/// Cloud credentials for one pull (E2B's `fromImageRegistry` of type `aws` or `gcp`): the
/// registry's own token exchange runs with them. `Debug` hides the secrets.
#[derive(Clone)]
pub enum CloudCredentials {
    Ecr {
        access_key_id: String,
        secret_access_key: String,
        region: String,
    },
    Gcp {
        service_account_json: String,
    },
}

impl std::fmt::Debug for CloudCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloudCredentials::Ecr { region, .. } => write!(f, "Ecr {{ region: {region:?} }}"),
            CloudCredentials::Gcp { .. } => f.write_str("Gcp { .. }"),
        }
    }
}

/// Settings of [`Images`] beyond the provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImagesOptions {
    /// Copied under a requested short name the provider lacks (`OCIR_FALLBACK_BASE_IMAGE`).
    pub fallback_base_image: String,
    /// `host[:port]`s spoken to over plain HTTP besides loopback (`KILN_INSECURE_REGISTRIES`).
    pub insecure_registries: Vec<String>,
    /// The docker `config.json` credentials for direct pulls come from.
    pub docker_config: PathBuf,
}

impl Default for ImagesOptions {
    fn default() -> Self {
        ImagesOptions {
            fallback_base_image: DEFAULT_FALLBACK_BASE_IMAGE.to_string(),
            insecure_registries: Vec::new(),
            docker_config: crate::auth::docker_config_path(None),
        }
    }
}

/// Resolves image references to pulled images (see the module docs).
pub struct Images {
    provider: Box<dyn Registry>,
    provider_auth: Option<ProviderAuth>,
    options: ImagesOptions,
    cache_dir: PathBuf,
}

impl Images {
    /// Images from `provider`, with blobs of direct pulls cached in `cache_dir` (use the
    /// provider's cache directory).
    pub fn new(provider: Box<dyn Registry>, cache_dir: &Path, options: ImagesOptions) -> Images {
        Images {
            provider,
            provider_auth: None,
            options,
            cache_dir: cache_dir.to_path_buf(),
        }
    }

    /// Reads the settings from the environment; the local store lives in `<kiln_home>/images`,
    /// blobs in `cache_dir`. Every missing or invalid setting is reported at once.
    ///
    /// | variable | meaning |
    /// |---|---|
    /// | `ARTIFACTS_REGISTRY_PROVIDER` | `Local` (default), `Registry`, `OCI_OCIR`, `AWS_ECR`, `GCP_ARTIFACTS` |
    /// | `OCIR_FALLBACK_BASE_IMAGE` | image used for a missing short name (default `python:3.10-slim`) |
    /// | `KILN_INSECURE_REGISTRIES` | comma-separated `host[:port]`s spoken to over plain HTTP (loopback always is) |
    /// | `DOCKER_CONFIG` | directory of the docker `config.json` for direct pulls (default `/root/.docker`) |
    /// | `ARTIFACTS_REGISTRY_URL`, `ARTIFACTS_REGISTRY_USERNAME`, `ARTIFACTS_REGISTRY_PASSWORD` or `ARTIFACTS_REGISTRY_PASSWORD_FILE` | `Registry` |
    /// | `OCI_REGION`, `OCI_NAMESPACE`, `OCI_CONTAINER_REPOSITORY_NAME`, `OCIR_USERNAME`, `OCIR_PASSWORD` or `OCIR_PASSWORD_FILE` | `OCI_OCIR` |
    ///
    /// A `…_FILE` names a file only its owner may read (mode 0600); one readable by group or
    /// others is refused.
    /// | `AWS_REGION`, `AWS_ACCOUNT_ID`, `AWS_DOCKER_REPOSITORY_NAME`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` | `AWS_ECR` |
    /// | `GCP_REGION`, `GCP_PROJECT_ID`, `GCP_DOCKER_REPOSITORY_NAME`, `GOOGLE_APPLICATION_CREDENTIALS` or `GCP_ACCESS_TOKEN` (wins when both are set) | `GCP_ARTIFACTS` |
    pub fn from_env(kiln_home: &Path, cache_dir: &Path) -> Result<Images, ConfigErrors> {
        Images::from_lookup(kiln_home, cache_dir, |key| std::env::var(key).ok())
    }

    /// [`Images::from_env`] with variables from `lookup` instead of the process environment.
    pub fn from_lookup(
        kiln_home: &Path,
        cache_dir: &Path,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Images, ConfigErrors> {
        let parsed = config::parse(kiln_home, cache_dir, &lookup)?;
        Ok(Images {
            provider: parsed.provider,
            provider_auth: parsed.provider_auth,
            options: parsed.options,
            cache_dir: cache_dir.to_path_buf(),
        })
    }

    pub fn provider(&self) -> &dyn Registry {
        self.provider.as_ref()
    }

    pub fn options(&self) -> &ImagesOptions {
        &self.options
    }

    /// Pulls `reference` into the blob cache; see the module docs for where from.
    pub async fn resolve_and_pull(
        &self,
        reference: &str,
        credentials: Option<Credentials>,
    ) -> Result<Image, RegistryError> {
        let reference = reference.trim();
        match split_host(reference) {
            Some((host, rest)) => self.pull_direct(host, rest, credentials).await,
            None => {
                self.pull_from_provider(reference, credentials.unwrap_or_default())
                    .await
            }
        }
    }

    /// Pulls `reference` (which must name its registry: `<account>.dkr.ecr.<region>.amazonaws.com/…`
    /// or `<region>-docker.pkg.dev/…`) with cloud credentials: an ECR authorization token or a
    /// Google access token is obtained with them first.
    pub async fn resolve_and_pull_cloud(
        &self,
        reference: &str,
        credentials: CloudCredentials,
    ) -> Result<Image, RegistryError> {
        let reference = reference.trim();
        let invalid = |message: String| RegistryError::Store {
            location: format!("image {reference:?}"),
            message,
        };
        let (host, name) = split_host(reference).ok_or_else(|| {
            invalid("cloud registry credentials need the registry host in the image name".into())
        })?;
        let registry = match credentials {
            CloudCredentials::Ecr {
                access_key_id,
                secret_access_key,
                region,
            } => RemoteRegistry::ecr(
                EcrSettings {
                    region,
                    account_id: host.split('.').next().unwrap_or_default().to_owned(),
                    repository: String::new(),
                    access_key_id,
                    secret_access_key,
                    session_token: None,
                    api_endpoint: None,
                    registry_host: Some(host.to_owned()),
                },
                &self.cache_dir,
            ),
            CloudCredentials::Gcp {
                service_account_json,
            } => {
                let key = ServiceAccountKey::from_json(&service_account_json).map_err(invalid)?;
                RemoteRegistry::gcp(
                    GcpSettings {
                        region: host.trim_end_matches("-docker.pkg.dev").to_owned(),
                        project_id: String::new(),
                        repository: String::new(),
                        token_source: GcpTokenSource::ServiceAccount(key),
                        registry_host: Some(host.to_owned()),
                    },
                    &self.cache_dir,
                )
            }
        };
        registry.pull(name, &Credentials::Anonymous).await
    }

    async fn pull_direct(
        &self,
        host: &str,
        name: &str,
        credentials: Option<Credentials>,
    ) -> Result<Image, RegistryError> {
        let own = self.provider_auth.as_ref().filter(|p| p.host == host);
        let registry = match own {
            Some(own) => RemoteRegistry::with_auth(host, None, own.auth.clone(), &self.cache_dir)
                .plain_http(own.plain_http),
            None => RemoteRegistry::with_auth(
                host,
                None,
                Arc::new(StaticAuth(Credentials::Anonymous)),
                &self.cache_dir,
            )
            .plain_http(config::plain_http(&self.options.insecure_registries, host)),
        };
        let credentials = match credentials {
            Some(credentials) => credentials,
            // Anonymous falls back to the registry's own (the provider's, for its host).
            None => from_docker_config(&self.options.docker_config, host)
                .await
                .unwrap_or_default(),
        };
        registry.pull(name, &credentials).await
    }

    async fn pull_from_provider(
        &self,
        name: &str,
        credentials: Credentials,
    ) -> Result<Image, RegistryError> {
        let err = match self.provider.pull(name, &credentials).await {
            Err(err) if err.is_not_found() && self.may_fall_back(name) => err,
            other => return other,
        };
        let fallback = &self.options.fallback_base_image;
        tracing::warn!(
            image = %name,
            %fallback,
            provider = %self.provider.describe(),
            error = %err,
            "image not found; using the fallback base image under its name"
        );
        let fail = |cause: RegistryError| RegistryError::Fallback {
            location: self.provider.describe(),
            requested: name.to_string(),
            fallback: fallback.clone(),
            cause: Box::new(cause),
        };
        self.provider.copy(fallback, name).await.map_err(fail)?;
        self.provider.pull(name, &credentials).await
    }

    /// A tag reference that is not the fallback itself.
    fn may_fall_back(&self, name: &str) -> bool {
        let normalize = |n: &str| ImageName::parse(n).ok().map(|n| n.without_library());
        match (
            normalize(name),
            normalize(&self.options.fallback_base_image),
        ) {
            (Some(requested), Some(fallback)) => {
                requested.digest.is_none() && requested != fallback
            }
            _ => false,
        }
    }
}
