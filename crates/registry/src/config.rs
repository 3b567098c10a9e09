//! Provider configuration from environment variables, validated up front: [`ConfigErrors`]
//! lists every missing or invalid setting at once, so one restart fixes them all.
//!
//! The variables are listed on [`crate::Images::from_env`].
//!
//! Messages name variables, never their secret values.

use crate::{
    Credentials, EcrSettings, GcpSettings, GcpTokenSource, LocalStore, Registry, RemoteRegistry,
    auth::{AuthSource, docker_config_path},
    gcp::ServiceAccountKey,
    reference::{ImageName, host_without_port, is_loopback, split_host},
};
use settings::Env;
use std::{path::Path, sync::Arc};

pub use settings::ConfigErrors;

pub const DEFAULT_FALLBACK_BASE_IMAGE: &str = "python:3.10-slim";

const PROVIDERS: &str = "Local, Registry, OCI_OCIR, AWS_ECR, GCP_ARTIFACTS";

/// The provider's host and credentials, so a full reference to that same host pulls with them.
pub(crate) struct ProviderAuth {
    pub(crate) host: String,
    pub(crate) auth: Arc<dyn AuthSource>,
    pub(crate) plain_http: bool,
    /// Images live under this repository prefix (OCIR's `<namespace>/<repository>`).
    pub(crate) prefix: Option<String>,
}

pub(crate) struct Parsed {
    pub(crate) provider: Box<dyn Registry>,
    pub(crate) provider_auth: Option<ProviderAuth>,
    pub(crate) options: crate::ImagesOptions,
}

/// The registry providers' secrets: a variable or a 0600 file.
trait RegistryEnv {
    fn secret(&mut self, key: &str, file_key: &str) -> Option<String>;
    fn require_secret(&mut self, key: &str, file_key: &str, what: &str) -> String;
}

impl RegistryEnv for Env<'_> {
    /// A secret from variable `key`, or from the file named by `file_key` (which must not be
    /// readable by group or others). Errors name the variables and the file, never the secret.
    fn secret(&mut self, key: &str, file_key: &str) -> Option<String> {
        if let Some(value) = self.get(key) {
            return Some(value);
        }
        let path = self.get(file_key)?;
        match crate::lifecycle::read_secret_file(Path::new(&path)) {
            Ok(secret) => Some(secret),
            Err(reason) => {
                self.errors.push(format!("{file_key}: {reason}"));
                // Reported; not "missing" as well.
                Some(String::new())
            }
        }
    }

    /// [`Env::secret`] the provider needs; records an error when neither variable is set.
    fn require_secret(&mut self, key: &str, file_key: &str, what: &str) -> String {
        match self.secret(key, file_key) {
            Some(value) => value,
            None => {
                let message = format!(
                    "{key} or {file_key} is required for {} ({what})",
                    self.required_for()
                );
                self.errors.push(message);
                String::new()
            }
        }
    }
}

fn is_slug(value: &str) -> bool {
    !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// A repository path usable as a prefix (`a/b`).
fn is_repository(value: &str) -> bool {
    ImageName::parse(&format!("{value}/x")).is_ok()
}

pub(crate) fn parse(
    kiln_home: &Path,
    cache_dir: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Parsed, ConfigErrors> {
    let mut env = Env::new(lookup, "ARTIFACTS_REGISTRY_PROVIDER");

    let fallback = env
        .get("OCIR_FALLBACK_BASE_IMAGE")
        .unwrap_or_else(|| DEFAULT_FALLBACK_BASE_IMAGE.to_string());
    if split_host(&fallback).is_some() {
        env.errors.push(format!(
            "OCIR_FALLBACK_BASE_IMAGE={fallback:?} is invalid: it is resolved through the provider, so it must be a name without a registry host (like python:3.10-slim)"
        ));
    } else if let Err(e) = ImageName::parse(&fallback) {
        env.errors
            .push(format!("OCIR_FALLBACK_BASE_IMAGE is invalid: {e}"));
    }
    let insecure: Vec<String> = env
        .get("KILN_INSECURE_REGISTRIES")
        .unwrap_or_default()
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .collect();
    let options = crate::ImagesOptions {
        fallback_base_image: fallback,
        docker_config: docker_config_path(env.get("DOCKER_CONFIG").as_deref()),
        insecure_registries: insecure,
    };
    let plain = |host: &str| plain_http(&options.insecure_registries, host);

    let provider_name = env
        .get("ARTIFACTS_REGISTRY_PROVIDER")
        .unwrap_or_else(|| "Local".to_string());
    env.provider = provider_name.clone();
    let remote = |registry: RemoteRegistry, plain_http: bool| {
        let provider_auth = ProviderAuth {
            host: registry.host().to_string(),
            auth: registry.auth_source(),
            plain_http,
            prefix: registry.prefix().map(str::to_string),
        };
        (
            Box::new(registry.plain_http(plain_http)) as Box<dyn Registry>,
            Some(provider_auth),
        )
    };

    let built: Option<(Box<dyn Registry>, Option<ProviderAuth>)> = match provider_name
        .to_ascii_uppercase()
        .as_str()
    {
        "LOCAL" => Some((
            Box::new(LocalStore::new(&kiln_home.join("images"), cache_dir)),
            None,
        )),
        "REGISTRY" => {
            let url = env.require(
                "ARTIFACTS_REGISTRY_URL",
                "host[:port][/prefix] of the registry",
            );
            let username = env.get("ARTIFACTS_REGISTRY_USERNAME");
            let password = env.secret(
                "ARTIFACTS_REGISTRY_PASSWORD",
                "ARTIFACTS_REGISTRY_PASSWORD_FILE",
            );
            let credentials = match (username, password) {
                (Some(username), Some(password)) => Credentials::Basic { username, password },
                (None, None) => Credentials::Anonymous,
                (Some(_), None) => {
                    env.errors.push(
                        "ARTIFACTS_REGISTRY_USERNAME is set but ARTIFACTS_REGISTRY_PASSWORD is not"
                            .into(),
                    );
                    Credentials::Anonymous
                }
                (None, Some(_)) => {
                    env.errors.push(
                        "ARTIFACTS_REGISTRY_PASSWORD is set but ARTIFACTS_REGISTRY_USERNAME is not"
                            .into(),
                    );
                    Credentials::Anonymous
                }
            };
            match parse_registry_url(&url) {
                _ if url.is_empty() => None,
                Ok((scheme_plain, host, prefix)) => {
                    let registry =
                        RemoteRegistry::new(&host, prefix.as_deref(), credentials, cache_dir);
                    // An explicit scheme wins over the loopback/insecure rule.
                    Some(remote(
                        registry,
                        scheme_plain.unwrap_or_else(|| plain(&host)),
                    ))
                }
                Err(reason) => {
                    env.errors.push(format!(
                        "ARTIFACTS_REGISTRY_URL={url:?} is invalid: {reason}"
                    ));
                    None
                }
            }
        }
        "OCI_OCIR" => {
            let region = env
                .require(
                    "OCI_REGION",
                    "region identifier like us-ashburn-1, or key like iad",
                )
                .to_ascii_lowercase();
            let namespace = env.require("OCI_NAMESPACE", "the tenancy's Object Storage namespace");
            let repository = env.require(
                "OCI_CONTAINER_REPOSITORY_NAME",
                "repository prefix images live under",
            );
            let username = env.require("OCIR_USERNAME", "<namespace>/<user>");
            let password = env.require_secret(
                "OCIR_PASSWORD",
                "OCIR_PASSWORD_FILE",
                "an auth token of that user",
            );
            env.check(
                "OCI_REGION",
                &region,
                is_slug(&region),
                "a region like us-ashburn-1 or a key like iad",
            );
            env.check(
                "OCI_NAMESPACE",
                &namespace,
                is_slug(&namespace) && !namespace.contains('-'),
                "lower-case letters and digits",
            );
            env.check(
                "OCI_CONTAINER_REPOSITORY_NAME",
                &repository,
                is_repository(&repository),
                "a repository name (lower-case, / separated)",
            );
            env.check(
                "OCIR_USERNAME",
                &username,
                namespace.is_empty() || username.starts_with(&format!("{namespace}/")),
                "<OCI_NAMESPACE>/<user> (or <OCI_NAMESPACE>/<identity domain>/<user>)",
            );
            let host = format!("{region}.ocir.io");
            let credentials = Credentials::Basic { username, password };
            let prefix = format!("{namespace}/{repository}");
            let registry = RemoteRegistry::new(&host, Some(&prefix), credentials, cache_dir);
            Some(remote(registry, plain(&host)))
        }
        "AWS_ECR" => {
            let settings = EcrSettings {
                region: env.require("AWS_REGION", "like us-east-1"),
                account_id: env.require("AWS_ACCOUNT_ID", "the 12-digit account of the registry"),
                repository: env.require(
                    "AWS_DOCKER_REPOSITORY_NAME",
                    "repository prefix images live under",
                ),
                access_key_id: env.require(
                    "AWS_ACCESS_KEY_ID",
                    "an access key allowed ecr:GetAuthorizationToken",
                ),
                secret_access_key: env.require("AWS_SECRET_ACCESS_KEY", "that key's secret"),
                session_token: env.get("AWS_SESSION_TOKEN"),
                api_endpoint: None,
                registry_host: None,
            };
            let ok = is_slug(&settings.region);
            env.check(
                "AWS_REGION",
                &settings.region,
                ok,
                "a region like us-east-1",
            );
            let ok = settings.account_id.len() == 12
                && settings.account_id.chars().all(|c| c.is_ascii_digit());
            env.check("AWS_ACCOUNT_ID", &settings.account_id, ok, "12 digits");
            let ok = is_repository(&settings.repository);
            env.check(
                "AWS_DOCKER_REPOSITORY_NAME",
                &settings.repository,
                ok,
                "a repository name (lower-case, / separated)",
            );
            let registry = RemoteRegistry::ecr(settings, cache_dir);
            let plain_http = plain(registry.host());
            Some(remote(registry, plain_http))
        }
        "GCP_ARTIFACTS" => {
            let region = env.require("GCP_REGION", "like us-central1");
            let project_id = env.require("GCP_PROJECT_ID", "the project of the repository");
            let repository = env.require(
                "GCP_DOCKER_REPOSITORY_NAME",
                "an Artifact Registry docker repository",
            );
            env.check(
                "GCP_REGION",
                &region,
                is_slug(&region),
                "a region like us-central1",
            );
            env.check(
                "GCP_PROJECT_ID",
                &project_id,
                is_slug(&project_id),
                "a project id",
            );
            env.check(
                "GCP_DOCKER_REPOSITORY_NAME",
                &repository,
                is_slug(&repository),
                "lower-case letters, digits and -",
            );
            let token_source = match (
                env.get("GCP_ACCESS_TOKEN"),
                env.get("GOOGLE_APPLICATION_CREDENTIALS"),
            ) {
                (Some(token), _) => Some(GcpTokenSource::AccessToken(token)),
                (None, Some(path)) => match std::fs::read_to_string(&path) {
                    Ok(json) => match ServiceAccountKey::from_json(&json) {
                        Ok(key) => Some(GcpTokenSource::ServiceAccount(key)),
                        Err(reason) => {
                            env.errors
                                .push(format!("GOOGLE_APPLICATION_CREDENTIALS={path:?} {reason}"));
                            None
                        }
                    },
                    Err(e) => {
                        env.errors.push(format!(
                            "GOOGLE_APPLICATION_CREDENTIALS={path:?} cannot be read: {e}"
                        ));
                        None
                    }
                },
                (None, None) => {
                    env.errors.push(
                            "GOOGLE_APPLICATION_CREDENTIALS (a service account key file) or GCP_ACCESS_TOKEN is required for ARTIFACTS_REGISTRY_PROVIDER=GCP_ARTIFACTS".into(),
                        );
                    None
                }
            };
            token_source.map(|token_source| {
                let registry = RemoteRegistry::gcp(
                    GcpSettings {
                        region,
                        project_id,
                        repository,
                        token_source,
                        registry_host: None,
                    },
                    cache_dir,
                );
                let plain_http = plain(registry.host());
                remote(registry, plain_http)
            })
        }
        _ => {
            env.errors.push(format!(
                    "ARTIFACTS_REGISTRY_PROVIDER={provider_name:?} is invalid: expected one of {PROVIDERS}"
                ));
            None
        }
    };

    match built {
        Some((provider, provider_auth)) if env.errors.is_empty() => Ok(Parsed {
            provider,
            provider_auth,
            options,
        }),
        _ => Err(ConfigErrors(env.errors)),
    }
}

/// Whether to speak plain HTTP to `host`: loopback, or listed (with or without its port).
pub(crate) fn plain_http(insecure: &[String], host: &str) -> bool {
    is_loopback(host)
        || insecure
            .iter()
            .any(|h| h == host || h == host_without_port(host))
}

/// `[http[s]://]host[:port][/prefix]` → (explicit plain HTTP?, host, prefix).
fn parse_registry_url(url: &str) -> Result<(Option<bool>, String, Option<String>), String> {
    let (scheme_plain, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (Some(true), rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (Some(false), rest)
    } else if url.contains("://") {
        return Err("only http:// and https:// are supported".into());
    } else {
        (None, url)
    };
    let rest = rest.trim_end_matches('/');
    let (host, prefix) = match rest.split_once('/') {
        Some((host, prefix)) => (host, Some(prefix)),
        None => (rest, None),
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        && host
            .rsplit_once(':')
            .is_none_or(|(_, port)| host.ends_with(']') || port.parse::<u16>().is_ok());
    if !host_ok {
        return Err(format!("{host:?} is not host[:port]"));
    }
    if let Some(prefix) = prefix
        && !is_repository(prefix)
    {
        return Err(format!(
            "prefix {prefix:?} is not a repository path (lower-case, / separated)"
        ));
    }
    Ok((scheme_plain, host.to_string(), prefix.map(str::to_string)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse_with(vars: &[(&str, &str)]) -> Result<Parsed, ConfigErrors> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let dir = Path::new("/nonexistent");
        parse(dir, dir, &move |k| map.get(k).cloned())
    }

    #[test]
    fn ocir_lists_every_missing_setting() {
        let Err(errors) = parse_with(&[
            ("ARTIFACTS_REGISTRY_PROVIDER", "OCI_OCIR"),
            ("OCI_REGION", "iad"),
        ]) else {
            panic!("accepted")
        };
        let text = errors.to_string();
        for key in [
            "OCI_NAMESPACE",
            "OCI_CONTAINER_REPOSITORY_NAME",
            "OCIR_USERNAME",
            "OCIR_PASSWORD",
        ] {
            assert!(text.contains(key), "{text}");
        }
        assert_eq!(errors.0.len(), 4, "{text}");
        assert_eq!(text.lines().count(), 4);
    }

    #[test]
    fn ocir_builds_host_and_prefix() {
        let parsed = parse_with(&[
            ("ARTIFACTS_REGISTRY_PROVIDER", "OCI_OCIR"),
            ("OCI_REGION", "us-ashburn-1"),
            ("OCI_NAMESPACE", "axaxnpcrorw5"),
            ("OCI_CONTAINER_REPOSITORY_NAME", "kiln/templates"),
            (
                "OCIR_USERNAME",
                "axaxnpcrorw5/oracleidentitycloudservice/me@example.com",
            ),
            ("OCIR_PASSWORD", "tok3n"),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.provider.describe(), "registry us-ashburn-1.ocir.io");
        assert_eq!(parsed.provider_auth.unwrap().host, "us-ashburn-1.ocir.io");

        let Err(errors) = parse_with(&[
            ("ARTIFACTS_REGISTRY_PROVIDER", "OCI_OCIR"),
            ("OCI_REGION", "iad"),
            ("OCI_NAMESPACE", "ns"),
            ("OCI_CONTAINER_REPOSITORY_NAME", "Repo"),
            ("OCIR_USERNAME", "someone"),
            ("OCIR_PASSWORD", "SECRET-TOKEN"),
        ]) else {
            panic!("accepted")
        };
        let text = errors.to_string();
        assert!(
            text.contains("OCI_CONTAINER_REPOSITORY_NAME") && text.contains("OCIR_USERNAME"),
            "{text}"
        );
        assert!(!text.contains("SECRET-TOKEN"), "{text}");
    }

    #[test]
    fn other_providers_validate_too() {
        let Err(errors) = parse_with(&[
            ("ARTIFACTS_REGISTRY_PROVIDER", "AWS_ECR"),
            ("AWS_ACCOUNT_ID", "12"),
        ]) else {
            panic!("accepted")
        };
        assert_eq!(errors.0.len(), 5, "{errors}");
        let Err(errors) = parse_with(&[("ARTIFACTS_REGISTRY_PROVIDER", "GCP_ARTIFACTS")]) else {
            panic!("accepted")
        };
        assert_eq!(errors.0.len(), 4, "{errors}");
        let Err(errors) = parse_with(&[
            ("ARTIFACTS_REGISTRY_PROVIDER", "S3"),
            ("OCIR_FALLBACK_BASE_IMAGE", "ghcr.io/x/y"),
        ]) else {
            panic!("accepted")
        };
        assert_eq!(errors.0.len(), 2, "{errors}");
        let Err(errors) = parse_with(&[
            ("ARTIFACTS_REGISTRY_PROVIDER", "Registry"),
            ("ARTIFACTS_REGISTRY_USERNAME", "u"),
        ]) else {
            panic!("accepted")
        };
        assert_eq!(errors.0.len(), 2, "{errors}");
        assert!(parse_with(&[]).is_ok());
        let ecr = parse_with(&[
            ("ARTIFACTS_REGISTRY_PROVIDER", "AWS_ECR"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCOUNT_ID", "123456789012"),
            ("AWS_DOCKER_REPOSITORY_NAME", "kiln"),
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            ecr.provider.describe(),
            "registry 123456789012.dkr.ecr.us-east-1.amazonaws.com"
        );
    }

    #[test]
    fn registry_urls() {
        assert_eq!(
            parse_registry_url("127.0.0.1:5000/team").unwrap(),
            (None, "127.0.0.1:5000".into(), Some("team".into()))
        );
        assert_eq!(
            parse_registry_url("http://reg.lan:5000").unwrap(),
            (Some(true), "reg.lan:5000".into(), None)
        );
        assert!(parse_registry_url("reg:port").is_err());
        assert!(parse_registry_url("ftp://reg").is_err());
        assert!(parse_registry_url("reg/Bad").is_err());
        assert!(plain_http(&["reg.lan".into()], "reg.lan:5000"));
        assert!(!plain_http(&["reg.lan:5001".into()], "reg.lan:5000"));
    }
}
