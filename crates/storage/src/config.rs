//! Storage configuration from environment variables, validated up front: [`ConfigErrors`]
//! lists every missing or invalid setting at once, so one restart fixes them all.
//!
//! | variable | meaning |
//! |---|---|
//! | `STORAGE_PROVIDER` | `Local` (default), `AWSBucket`, `OCIBucket`, `GCPBucket`, `AzureBucket` |
//! | `TEMPLATE_BUCKET_NAME` | bucket (Azure: container); required for cloud providers. Local: subdirectory, default `templates` |
//! | `LOCAL_TEMPLATE_STORAGE_BASE_PATH` | Local: base directory, default `<kiln_home>/storage` |
//! | `AWS_REGION`, `AWS_ENDPOINT_URL` | AWSBucket: region (required) and optional endpoint (`http://` only for loopback) |
//! | `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY[_FILE]`, `AWS_SESSION_TOKEN` | AWSBucket credentials (key id and secret required) |
//! | `S3_USE_PATH_STYLE` | AWSBucket: `true`/`false`, default `true` with an endpoint, else `false` |
//! | `OCI_NAMESPACE`, `OCI_REGION` | OCIBucket: Object Storage namespace and region identifier |
//! | `OCI_S3_ACCESS_KEY_ID`, `OCI_S3_SECRET_ACCESS_KEY[_FILE]` | OCIBucket via the S3 Compatibility API (a Customer Secret Key) |
//! | `OCI_AUTH` | OCIBucket via the native API: `api_key` (a profile of `~/.oci/config`) or `instance_principal`; excludes `OCI_S3_*` |
//! | `OCI_CONFIG_FILE`, `OCI_PROFILE` | `OCI_AUTH=api_key`: config file (default `$HOME/.oci/config`) and profile (default `DEFAULT`) |
//! | `OCI_OBJECT_STORAGE_ENDPOINT` | OCIBucket: endpoint override (`http://` only for loopback); default `https://objectstorage.<region>.oraclecloud.com` (native) or `https://<namespace>.compat.objectstorage.<region>.oraclecloud.com` (S3) |
//! | `GOOGLE_APPLICATION_CREDENTIALS` | GCPBucket: service account or ADC file; default: gcloud ADC or the metadata server |
//! | `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY[_FILE]` | AzureBucket |
//! | `STORAGE_CACHE_DIR`, `STORAGE_CACHE_BYTES` | chunk cache directory (default `<kiln_home>/cache/chunks`) and bound (default 10 GiB; `512MiB`, `10GiB` accepted) |
//!
//! With `OCI_AUTH=api_key` the profile and its key file are read at configuration time, so a
//! missing profile or a key file readable by others is reported with the other problems.
//!
//! A secret comes from `X` or from the file named by `X_FILE` (not both). The file must be
//! readable only by its owner (mode `0600` or stricter).
//!
//! Messages name variables and files, never secret values; the `Debug` output of
//! [`StorageConfig`] redacts them too.

use crate::{OciObjectStorage, StorageOptions};
use object_store::{
    ObjectStore, aws::AmazonS3Builder, azure::MicrosoftAzureBuilder,
    gcp::GoogleCloudStorageBuilder, local::LocalFileSystem,
};
use settings::Env;
use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};
use url::Url;

pub use settings::ConfigErrors;

const PROVIDERS: &str = "Local, AWSBucket, OCIBucket, GCPBucket, AzureBucket";
const GIB: u64 = 1 << 30;

/// A secret setting. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where objects live, with what credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Provider {
    /// A directory; `root` = base path / bucket name.
    Local { root: PathBuf },
    /// Any S3 API: AWS itself, or an S3-compatible server at `endpoint`.
    Aws {
        bucket: String,
        region: String,
        endpoint: Option<Url>,
        access_key_id: String,
        secret_access_key: Secret,
        session_token: Option<Secret>,
        path_style: bool,
    },
    /// OCI Object Storage through its native API, requests signed by `oracle-auth`.
    OciNative {
        bucket: String,
        namespace: String,
        region: String,
        endpoint: Url,
        auth: OciAuth,
    },
    /// OCI Object Storage through its S3 Compatibility API (Customer Secret Keys). Always
    /// path-style, with the OCI region as SigV4 region.
    OciS3 {
        bucket: String,
        namespace: String,
        region: String,
        endpoint: Url,
        access_key_id: String,
        secret_access_key: Secret,
    },
    Gcp {
        bucket: String,
        credentials: Option<PathBuf>,
    },
    Azure {
        container: String,
        account: String,
        key: Secret,
    },
}

/// How requests to OCI's native API are signed (`OCI_AUTH`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OciAuth {
    /// A user's API key (or a CLI session token) from a profile of an OCI config file; `home`
    /// expands `~/` in the paths inside it.
    ApiKey {
        config: oracle_auth::OciConfig,
        home: Option<PathBuf>,
    },
    /// The compute instance's identity, from the instance metadata service.
    InstancePrincipal,
}

impl OciAuth {
    /// The signing credentials. An API key is read here (again after configuration), so a
    /// rotated key file is picked up on restart.
    fn credentials(&self) -> Result<Arc<dyn oracle_auth::Credentials>, oracle_auth::AuthError> {
        Ok(match self {
            OciAuth::ApiKey { config, home } => {
                let profile = config.load(home.as_deref())?;
                Arc::new(oracle_auth::ApiKeyCredentials::from_profile(
                    config, &profile,
                )?)
            }
            OciAuth::InstancePrincipal => Arc::new(oracle_auth::InstancePrincipal::new(
                oracle_auth::InstancePrincipalOptions::default(),
            )?),
        })
    }

    fn describe(&self) -> String {
        match self {
            OciAuth::ApiKey { config, .. } => format!(
                "API key of profile [{}] in {}",
                config.profile,
                config.path.display()
            ),
            OciAuth::InstancePrincipal => "instance principal".to_string(),
        }
    }
}

impl Provider {
    /// The `STORAGE_PROVIDER` name.
    pub fn name(&self) -> &'static str {
        match self {
            Provider::Local { .. } => "Local",
            Provider::Aws { .. } => "AWSBucket",
            Provider::OciNative { .. } | Provider::OciS3 { .. } => "OCIBucket",
            Provider::Gcp { .. } => "GCPBucket",
            Provider::Azure { .. } => "AzureBucket",
        }
    }

    /// Provider and bucket (and endpoint when not the provider's default), for messages:
    /// `AWSBucket 'kiln' at http://127.0.0.1:9000`. No secrets.
    pub fn describe(&self) -> String {
        let name = self.name();
        match self {
            Provider::Local { root } => format!("{name} '{}'", root.display()),
            Provider::Aws {
                bucket, endpoint, ..
            } => match endpoint {
                Some(endpoint) => format!("{name} '{bucket}' at {endpoint}"),
                None => format!("{name} '{bucket}'"),
            },
            Provider::OciNative {
                bucket,
                endpoint,
                auth,
                ..
            } => format!(
                "{name} '{bucket}' at {endpoint} (native API, {})",
                auth.describe()
            ),
            Provider::OciS3 {
                bucket, endpoint, ..
            } => format!("{name} '{bucket}' at {endpoint}"),
            Provider::Gcp { bucket, .. } => format!("{name} '{bucket}'"),
            Provider::Azure {
                container, account, ..
            } => format!("{name} '{container}' in account {account}"),
        }
    }

    /// The object store for this provider. Builds clients only; nothing is contacted.
    pub fn build(&self) -> Result<Arc<dyn ObjectStore>, crate::StorageError> {
        let failed = |e: object_store::Error| crate::StorageError::Backend {
            storage: self.describe(),
            operation: "configuring",
            key: String::new(),
            source: Box::new(e),
        };
        Ok(match self {
            Provider::Local { root } => {
                std::fs::create_dir_all(root).map_err(|source| crate::StorageError::Io {
                    context: format!("creating {}", root.display()),
                    source,
                })?;
                Arc::new(LocalFileSystem::new_with_prefix(root).map_err(failed)?)
            }
            Provider::Aws {
                bucket,
                region,
                endpoint,
                access_key_id,
                secret_access_key,
                session_token,
                path_style,
            } => {
                let mut builder = s3_builder(
                    bucket,
                    region,
                    endpoint.as_ref(),
                    access_key_id,
                    secret_access_key,
                )
                .with_virtual_hosted_style_request(!path_style);
                if let Some(token) = session_token {
                    builder = builder.with_token(token.expose());
                }
                Arc::new(builder.build().map_err(failed)?)
            }
            Provider::OciNative {
                bucket,
                namespace,
                endpoint,
                auth,
                ..
            } => {
                let credentials = auth.credentials().map_err(|e| {
                    failed(object_store::Error::Generic {
                        store: "OCIBucket",
                        source: Box::new(e),
                    })
                })?;
                Arc::new(
                    OciObjectStorage::new(endpoint, namespace, bucket, credentials)
                        .map_err(failed)?,
                )
            }
            Provider::OciS3 {
                bucket,
                region,
                endpoint,
                access_key_id,
                secret_access_key,
                ..
            } => Arc::new(
                // OCI answers virtual-hosted requests only on its separate `vhcompat` host,
                // and only for buckets made through S3: always path-style.
                s3_builder(
                    bucket,
                    region,
                    Some(endpoint),
                    access_key_id,
                    secret_access_key,
                )
                .with_virtual_hosted_style_request(false)
                // OCI's DeleteObjects accepts Content-MD5 (what object_store sends); keep
                // bulk delete.
                .build()
                .map_err(failed)?,
            ),
            Provider::Gcp {
                bucket,
                credentials,
            } => {
                let mut builder = GoogleCloudStorageBuilder::new().with_bucket_name(bucket);
                if let Some(path) = credentials {
                    builder = builder.with_application_credentials(path.display().to_string());
                }
                Arc::new(builder.build().map_err(failed)?)
            }
            Provider::Azure {
                container,
                account,
                key,
            } => Arc::new(
                MicrosoftAzureBuilder::new()
                    .with_account(account)
                    .with_container_name(container)
                    .with_access_key(key.expose())
                    .build()
                    .map_err(failed)?,
            ),
        })
    }
}

/// An S3 client that never sends `aws-chunked` bodies (object_store has no such mode) and no
/// additional checksums (none is configured), so OCI's S3 layer accepts its requests.
fn s3_builder(
    bucket: &str,
    region: &str,
    endpoint: Option<&Url>,
    access_key_id: &str,
    secret: &Secret,
) -> AmazonS3Builder {
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_region(region)
        .with_access_key_id(access_key_id)
        .with_secret_access_key(secret.expose());
    if let Some(endpoint) = endpoint {
        // Validation allows http:// only for loopback endpoints.
        builder = builder
            .with_endpoint(endpoint.as_str().trim_end_matches('/'))
            .with_allow_http(endpoint.scheme() == "http");
    }
    builder
}

/// Everything [`crate::Storage`] needs: the provider and the chunk cache settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageConfig {
    pub provider: Provider,
    pub cache_dir: PathBuf,
    pub cache_bytes: u64,
}

impl StorageConfig {
    /// Reads the variables in the module docs through `lookup` (use
    /// `|k| std::env::var(k).ok()`); relative defaults are under `kiln_home`.
    pub fn from_env(
        kiln_home: &Path,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigErrors> {
        let mut env = Env::new(&lookup, "STORAGE_PROVIDER");
        let cache_dir = env
            .get("STORAGE_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| kiln_home.join("cache/chunks"));
        let cache_bytes = match env.get("STORAGE_CACHE_BYTES") {
            None => 10 * GIB,
            Some(value) => match parse_bytes(&value) {
                Some(bytes) if bytes >= crate::CHUNK_SIZE => bytes,
                _ => {
                    env.errors.push(format!(
                        "STORAGE_CACHE_BYTES={value:?} is invalid: expected a size of at least 4MiB, like 10GiB or 536870912"
                    ));
                    0
                }
            },
        };
        env.provider = env
            .get("STORAGE_PROVIDER")
            .unwrap_or_else(|| "Local".to_string());
        let provider = match env.provider.to_ascii_lowercase().as_str() {
            "local" => {
                let base = env
                    .get("LOCAL_TEMPLATE_STORAGE_BASE_PATH")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| kiln_home.join("storage"));
                let bucket = env
                    .get("TEMPLATE_BUCKET_NAME")
                    .unwrap_or_else(|| "templates".to_string());
                env.check(
                    "TEMPLATE_BUCKET_NAME",
                    &bucket,
                    is_bucket(&bucket),
                    "a bucket name (letters, digits, '.', '-', '_')",
                );
                Some(Provider::Local {
                    root: base.join(bucket),
                })
            }
            "awsbucket" => {
                let bucket = env.bucket();
                let region = env.require("AWS_REGION", "like us-east-1");
                let endpoint = env.endpoint("AWS_ENDPOINT_URL");
                let access_key_id = env.require("AWS_ACCESS_KEY_ID", "an access key id");
                let secret_access_key = env.secret("AWS_SECRET_ACCESS_KEY", true);
                let session_token = env.secret("AWS_SESSION_TOKEN", false);
                let path_style = env.flag("S3_USE_PATH_STYLE", endpoint.is_some());
                Some(Provider::Aws {
                    bucket,
                    region,
                    endpoint,
                    access_key_id,
                    secret_access_key: secret_access_key.unwrap_or(Secret(String::new())),
                    session_token,
                    path_style,
                })
            }
            "ocibucket" => {
                let bucket = env.bucket();
                let namespace =
                    env.require("OCI_NAMESPACE", "the tenancy's Object Storage namespace");
                let region = env.require("OCI_REGION", "a region identifier like us-ashburn-1");
                env.check(
                    "OCI_NAMESPACE",
                    &namespace,
                    namespace.chars().all(|c| c.is_ascii_alphanumeric()),
                    "letters and digits",
                );
                env.check(
                    "OCI_REGION",
                    &region,
                    region.split('-').count() >= 3
                        && region
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                    "a region identifier like us-ashburn-1 (not a key like iad)",
                );
                let endpoint = env.endpoint("OCI_OBJECT_STORAGE_ENDPOINT");
                if let Some(auth) = env.get("OCI_AUTH") {
                    let auth = env.oci_auth(&auth);
                    let endpoint = endpoint.or_else(|| {
                        Url::parse(&format!("https://objectstorage.{region}.oraclecloud.com")).ok()
                    });
                    auth.zip(endpoint)
                        .map(|(auth, endpoint)| Provider::OciNative {
                            bucket,
                            namespace,
                            region,
                            endpoint,
                            auth,
                        })
                } else {
                    let access_key_id = env.require(
                        "OCI_S3_ACCESS_KEY_ID",
                        "the access key of a Customer Secret Key",
                    );
                    let secret_access_key = env.secret("OCI_S3_SECRET_ACCESS_KEY", true);
                    let endpoint = endpoint.or_else(|| {
                        Url::parse(&format!(
                            "https://{namespace}.compat.objectstorage.{region}.oraclecloud.com"
                        ))
                        .ok()
                    });
                    endpoint.map(|endpoint| Provider::OciS3 {
                        bucket,
                        namespace,
                        region,
                        endpoint,
                        access_key_id,
                        secret_access_key: secret_access_key.unwrap_or(Secret(String::new())),
                    })
                }
            }
            "gcpbucket" => {
                let bucket = env.bucket();
                let credentials = env.get("GOOGLE_APPLICATION_CREDENTIALS").map(PathBuf::from);
                if let Some(path) = &credentials
                    && !path.is_file()
                {
                    env.errors.push(format!(
                        "GOOGLE_APPLICATION_CREDENTIALS={} is not a readable file",
                        path.display()
                    ));
                }
                Some(Provider::Gcp {
                    bucket,
                    credentials,
                })
            }
            "azurebucket" => {
                let container = env.bucket();
                let account = env.require("AZURE_STORAGE_ACCOUNT_NAME", "the storage account");
                let key = env.secret("AZURE_STORAGE_ACCOUNT_KEY", true);
                Some(Provider::Azure {
                    container,
                    account,
                    key: key.unwrap_or(Secret(String::new())),
                })
            }
            _ => {
                env.errors.push(format!(
                    "STORAGE_PROVIDER={:?} is invalid: expected one of {PROVIDERS}",
                    env.provider
                ));
                None
            }
        };
        match provider {
            Some(provider) if env.errors.is_empty() => Ok(Self {
                provider,
                cache_dir,
                cache_bytes,
            }),
            _ => Err(ConfigErrors(env.errors)),
        }
    }

    /// The [`StorageOptions`] for this configuration (defaults for everything but the cache).
    pub fn options(&self) -> StorageOptions {
        StorageOptions {
            cache_dir: self.cache_dir.clone(),
            cache_bytes: self.cache_bytes,
            ..StorageOptions::default()
        }
    }
}

/// The storage providers' own checks.
trait StorageEnv {
    fn bucket(&mut self) -> String;
    fn endpoint(&mut self, key: &str) -> Option<Url>;
    fn oci_auth(&mut self, value: &str) -> Option<OciAuth>;
    fn flag(&mut self, key: &str, default: bool) -> bool;
    fn secret(&mut self, key: &str, required: bool) -> Option<Secret>;
}

impl StorageEnv for Env<'_> {
    fn bucket(&mut self) -> String {
        let bucket = self.require("TEMPLATE_BUCKET_NAME", "the bucket templates are kept in");
        self.check(
            "TEMPLATE_BUCKET_NAME",
            &bucket,
            is_bucket(&bucket),
            "a bucket name (letters, digits, '.', '-', '_')",
        );
        bucket
    }

    /// An optional endpoint URL: `https://`, or `http://` to a loopback address.
    fn endpoint(&mut self, key: &str) -> Option<Url> {
        let value = self.get(key)?;
        let invalid = |reason: &str| format!("{key}={value:?} is invalid: {reason}");
        match Url::parse(&value) {
            Ok(url) if url.scheme() == "https" => Some(url),
            Ok(url) if url.scheme() == "http" && is_loopback(&url) => Some(url),
            Ok(url) if url.scheme() == "http" => {
                self.errors.push(invalid(
                    "plain http:// is allowed only for a loopback address; use https://",
                ));
                None
            }
            Ok(_) => {
                self.errors.push(invalid("expected an http(s):// URL"));
                None
            }
            Err(e) => {
                self.errors.push(invalid(&e.to_string()));
                None
            }
        }
    }

    /// `OCI_AUTH`: which credentials sign native API requests. The S3 settings must be unset
    /// (two ways to authenticate are a mistake to report, not to resolve by precedence). An API
    /// key profile is loaded now so its problems are listed with the others.
    fn oci_auth(&mut self, value: &str) -> Option<OciAuth> {
        let s3: Vec<&str> = [
            "OCI_S3_ACCESS_KEY_ID",
            "OCI_S3_SECRET_ACCESS_KEY",
            "OCI_S3_SECRET_ACCESS_KEY_FILE",
        ]
        .into_iter()
        .filter(|key| self.get(key).is_some())
        .collect();
        if !s3.is_empty() {
            self.errors.push(format!(
                "OCI_AUTH and {} are both set: OCI_AUTH selects the native Object Storage API, OCI_S3_* the S3 Compatibility API; set one",
                s3.join(", ")
            ));
        }
        match value.to_ascii_lowercase().as_str() {
            "api_key" => {
                let config = oracle_auth::OciConfig::from_env(self.lookup());
                let home = self.get("HOME").map(PathBuf::from);
                let auth = OciAuth::ApiKey { config, home };
                if let Err(e) = auth.credentials() {
                    self.errors.push(format!("OCI_AUTH=api_key: {e}"));
                }
                Some(auth)
            }
            "instance_principal" => Some(OciAuth::InstancePrincipal),
            _ => {
                self.errors.push(format!(
                    "OCI_AUTH={value:?} is invalid: expected api_key or instance_principal"
                ));
                None
            }
        }
    }

    fn flag(&mut self, key: &str, default: bool) -> bool {
        match self.get(key).map(|v| v.to_ascii_lowercase()) {
            None => default,
            Some(v) if matches!(v.as_str(), "true" | "1" | "yes") => true,
            Some(v) if matches!(v.as_str(), "false" | "0" | "no") => false,
            Some(v) => {
                self.errors
                    .push(format!("{key}={v:?} is invalid: expected true or false"));
                default
            }
        }
    }

    /// A secret from `key` or the file named by `key_FILE`. The value is never echoed.
    fn secret(&mut self, key: &str, required: bool) -> Option<Secret> {
        let file_key = format!("{key}_FILE");
        match (self.get(key), self.get(&file_key)) {
            (Some(_), Some(_)) => {
                self.errors
                    .push(format!("{key} and {file_key} are both set; set one"));
                None
            }
            (Some(value), None) => Some(Secret(value)),
            (None, Some(path)) => match oracle_auth::read_secret_file(Path::new(&path)) {
                Ok(value) if !value.trim().is_empty() => Some(Secret(value.trim().to_string())),
                Ok(_) => {
                    self.errors.push(format!("{file_key}: {path} is empty"));
                    None
                }
                Err(e) => {
                    self.errors.push(format!("{file_key}: {e}"));
                    None
                }
            },
            (None, None) => {
                if required {
                    let message = format!(
                        "{key} or {file_key} is required for {}",
                        self.required_for()
                    );
                    self.errors.push(message);
                }
                None
            }
        }
    }
}

fn is_bucket(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        && !name.starts_with('.')
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(host)) => host == "localhost",
        None => false,
    }
}

/// `1234`, `512MiB`, `10GiB`, `1TiB` (also `K`/`M`/`G`/`T`, read as binary units).
fn parse_bytes(value: &str) -> Option<u64> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 = number.parse().ok()?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => return None,
    };
    number.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests;
