//! Which registry the lifecycle commands work on: the configured provider
//! (`ARTIFACTS_REGISTRY_PROVIDER` and its settings, as for pulls) or an explicit registry URL,
//! and the secret files their passwords may come from.

use super::{ArtifactsCatalog, Catalog, DistributionCatalog, OracleSigner};
use crate::{ConfigErrors, config};
use std::{path::Path, sync::Arc};

/// The registry a lifecycle command works on.
pub struct RegistryTarget {
    pub catalog: Box<dyn Catalog>,
    /// The provider it came from (`Registry`, `OCI_OCIR`, …) and how it is reached, for
    /// `kiln registry check`; never holds a secret.
    pub summary: Vec<(String, String)>,
}

impl RegistryTarget {
    /// The configured provider. Every missing or invalid setting is reported at once; the local
    /// store is refused (it has no registry to manage).
    ///
    /// `lookup` gives the variables ([`crate::Images::from_env`] lists them); passwords may also
    /// come from files named by `ARTIFACTS_REGISTRY_PASSWORD_FILE` / `OCIR_PASSWORD_FILE`.
    pub fn from_lookup(
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<RegistryTarget, ConfigErrors> {
        let provider = lookup("ARTIFACTS_REGISTRY_PROVIDER")
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "Local".to_string());
        // Nothing is pulled or cached: the paths are never used.
        let unused = Path::new("/nonexistent");
        let parsed = config::parse(unused, unused, lookup)?;
        let Some(auth) = parsed.provider_auth else {
            return Err(ConfigErrors(vec![format!(
                "ARTIFACTS_REGISTRY_PROVIDER={provider} has no registry to manage: set it to Registry, OCI_OCIR, AWS_ECR or GCP_ARTIFACTS, or pass --registry"
            )]));
        };
        let mut summary = vec![
            ("provider".to_string(), provider.clone()),
            ("registry".to_string(), auth.host.clone()),
            (
                "protocol".to_string(),
                if auth.plain_http { "http" } else { "https" }.to_string(),
            ),
        ];
        if let Some(prefix) = &auth.prefix {
            summary.push(("repository prefix".to_string(), prefix.clone()));
        }
        if provider.eq_ignore_ascii_case("OCI_OCIR")
            && let Some(artifacts) = artifacts_catalog(lookup, &mut summary)?
        {
            return Ok(RegistryTarget {
                catalog: Box::new(artifacts),
                summary,
            });
        }
        summary.push(("api".to_string(), "distribution API".to_string()));
        let catalog = DistributionCatalog::with_auth(
            &auth.host,
            auth.prefix.as_deref(),
            auth.auth,
            auth.plain_http,
        );
        Ok(RegistryTarget {
            catalog: Box::new(catalog),
            summary,
        })
    }

    /// The registry at `url` (`[http[s]://]host[:port][/prefix]`), with the credentials of
    /// the `Registry` provider (`ARTIFACTS_REGISTRY_USERNAME`, `ARTIFACTS_REGISTRY_PASSWORD` or
    /// `ARTIFACTS_REGISTRY_PASSWORD_FILE`) from `lookup`.
    pub fn from_url(
        url: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<RegistryTarget, ConfigErrors> {
        let overridden = |key: &str| match key {
            "ARTIFACTS_REGISTRY_PROVIDER" => Some("Registry".to_string()),
            "ARTIFACTS_REGISTRY_URL" => Some(url.to_string()),
            _ => lookup(key),
        };
        RegistryTarget::from_lookup(&overridden)
    }
}

/// OCIR through the Artifacts API when `OCI_COMPARTMENT_ID` is set (`None` otherwise: the
/// distribution API is used). Signing credentials: `OCI_AUTH=instance_principal`, else the API
/// key of `~/.oci/config` (`OCI_CONFIG_FILE`, `OCI_PROFILE`). The endpoint is
/// `https://artifacts.<OCI_REGION>.oci.oraclecloud.com`, or `OCI_ARTIFACTS_ENDPOINT`.
fn artifacts_catalog(
    lookup: &dyn Fn(&str) -> Option<String>,
    summary: &mut Vec<(String, String)>,
) -> Result<Option<ArtifactsCatalog>, ConfigErrors> {
    let get = |key: &str| {
        lookup(key)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let Some(compartment) = get("OCI_COMPARTMENT_ID") else {
        summary.push((
            "artifacts api".to_string(),
            "off (set OCI_COMPARTMENT_ID to list untagged images through it)".to_string(),
        ));
        return Ok(None);
    };
    let mut errors = Vec::new();
    // Both were validated by the provider settings already.
    let region = get("OCI_REGION").unwrap_or_default().to_ascii_lowercase();
    let namespace = get("OCI_NAMESPACE").unwrap_or_default();
    let endpoint = match get("OCI_ARTIFACTS_ENDPOINT") {
        Some(endpoint) => endpoint,
        None if region.contains('-') => format!("https://artifacts.{region}.oci.oraclecloud.com"),
        None => {
            errors.push(format!(
                "OCI_REGION={region:?} is a region key; the Artifacts API needs the region identifier (like us-ashburn-1), or set OCI_ARTIFACTS_ENDPOINT"
            ));
            String::new()
        }
    };
    let auth = get("OCI_AUTH").unwrap_or_else(|| "api_key".to_string());
    let credentials: Option<Arc<dyn oracle_auth::Credentials>> =
        match auth.to_ascii_lowercase().as_str() {
            "api_key" => oracle_auth::ApiKeyCredentials::from_env(lookup)
                .map(|c| Arc::new(c) as Arc<dyn oracle_auth::Credentials>)
                .map_err(|e| errors.push(format!("OCI API key for the Artifacts API: {e}")))
                .ok(),
            "instance_principal" => oracle_auth::InstancePrincipal::new(Default::default())
                .map(|c| Arc::new(c) as Arc<dyn oracle_auth::Credentials>)
                .map_err(|e| errors.push(format!("OCI instance principal: {e}")))
                .ok(),
            other => {
                errors.push(format!(
                    "OCI_AUTH={other:?} is invalid: expected api_key or instance_principal"
                ));
                None
            }
        };
    let (Some(credentials), true) = (credentials, errors.is_empty()) else {
        return Err(ConfigErrors(errors));
    };
    summary.push(("artifacts api".to_string(), endpoint.clone()));
    summary.push(("compartment".to_string(), compartment.clone()));
    summary.push(("signing".to_string(), credentials.describe()));
    let prefix = get("OCI_CONTAINER_REPOSITORY_NAME");
    Ok(Some(ArtifactsCatalog::new(
        &endpoint,
        &compartment,
        &namespace,
        prefix.as_deref(),
        Arc::new(OracleSigner(credentials)),
    )))
}

/// Reads a password or token from `path`, refusing a file that group or others may read (the
/// same rule as for OCI key files, `oracle_auth::read_secret_file`): a secret readable by others
/// is no longer a secret. Surrounding whitespace (the trailing newline of `echo tok > file`) is
/// removed. Messages name the file, never its content.
pub fn read_secret_file(path: &Path) -> Result<String, String> {
    let secret = oracle_auth::read_secret_file(path).map_err(|e| e.to_string())?;
    let secret = secret.trim();
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(secret.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secret_files_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "TOKEN-VALUE-123\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secret_file(&path).unwrap_err();
        assert!(
            err.contains("readable by group or others (mode 0644)"),
            "{err}"
        );
        assert!(!err.contains("TOKEN-VALUE-123"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret_file(&path).unwrap(), "TOKEN-VALUE-123");
        std::fs::write(&path, "\n").unwrap();
        assert!(read_secret_file(&path).unwrap_err().contains("empty"));
    }

    #[test]
    fn reports_every_problem_and_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "OCIR-SECRET-XYZ").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let file = path.display().to_string();
        let lookup = |k: &str| match k {
            "ARTIFACTS_REGISTRY_PROVIDER" => Some("OCI_OCIR".to_string()),
            "OCIR_PASSWORD_FILE" => Some(file.clone()),
            _ => None,
        };
        let Err(errors) = RegistryTarget::from_lookup(&lookup) else {
            panic!("accepted")
        };
        let text = errors.to_string();
        for key in [
            "OCI_REGION",
            "OCI_NAMESPACE",
            "OCI_CONTAINER_REPOSITORY_NAME",
            "OCIR_USERNAME",
            "OCIR_PASSWORD_FILE",
        ] {
            assert!(text.contains(key), "{text}");
        }
        assert_eq!(errors.0.len(), 5, "{text}");
        assert!(!text.contains("OCIR-SECRET-XYZ"), "{text}");

        let Err(errors) = RegistryTarget::from_lookup(&|_| None) else {
            panic!("accepted")
        };
        assert!(errors.to_string().contains("no registry to manage"));
        let target = RegistryTarget::from_url("127.0.0.1:5000/team", &|_| None)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(target.catalog.describe(), "registry 127.0.0.1:5000");
    }
}
