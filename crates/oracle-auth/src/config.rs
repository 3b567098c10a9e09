//! API-key credentials from the OCI SDK/CLI configuration file (`~/.oci/config`).
//!
//! The file is INI: `[DEFAULT]` and other profiles with `user`, `fingerprint`, `key_file`,
//! `tenancy`, `region`, `pass_phrase` (or `passphrase`) and `security_token_file`. As in the
//! Python SDK, a profile inherits the keys of `[DEFAULT]` it does not set. Keys are
//! case-insensitive; values are trimmed.
//!
//! Which file and profile: `OCI_CONFIG_FILE` (else `$HOME/.oci/config`) and `OCI_PROFILE`
//! (else `DEFAULT`). `key_file` and `security_token_file` may start with `~/`; a relative path
//! is taken relative to the config file's directory (so a config can ship next to its key).

use crate::{AuthError, Credentials, PrivateKey, Signer, read_secret_file};
use ini::Ini;
use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
};

/// Where the configuration comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OciConfig {
    pub path: PathBuf,
    pub profile: String,
}

/// One resolved profile. `Debug` leaves out the pass phrase.
#[derive(Clone, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    /// User OCID; absent for a session-token profile.
    pub user: Option<String>,
    pub tenancy: String,
    pub fingerprint: Option<String>,
    pub key_file: PathBuf,
    pub region: Option<String>,
    pub security_token_file: Option<PathBuf>,
    pass_phrase: Option<String>,
}

impl fmt::Debug for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Profile")
            .field("name", &self.name)
            .field("user", &self.user)
            .field("tenancy", &self.tenancy)
            .field("fingerprint", &self.fingerprint)
            .field("key_file", &self.key_file)
            .field("region", &self.region)
            .field("security_token_file", &self.security_token_file)
            .field(
                "pass_phrase",
                &self.pass_phrase.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl OciConfig {
    /// `OCI_CONFIG_FILE` or `$HOME/.oci/config`, profile `OCI_PROFILE` or `DEFAULT`.
    pub fn from_env(lookup: &dyn Fn(&str) -> Option<String>) -> Self {
        let get = |key: &str| lookup(key).filter(|v| !v.trim().is_empty());
        let path = get("OCI_CONFIG_FILE")
            .map(|p| expand_home(&p, lookup))
            .unwrap_or_else(|| expand_home("~/.oci/config", lookup));
        let profile = get("OCI_PROFILE").unwrap_or_else(|| "DEFAULT".to_string());
        Self { path, profile }
    }

    /// Reads the file and resolves the profile. `home` expands `~/` in paths inside it.
    pub fn load(&self, home: Option<&Path>) -> Result<Profile, AuthError> {
        let error = |message: String| AuthError::Config {
            path: self.path.clone(),
            message,
        };
        let text = std::fs::read_to_string(&self.path).map_err(|source| AuthError::Io {
            context: format!("reading OCI config file {}", self.path.display()),
            source,
        })?;
        let ini = Ini::load_from_str_noescape(&text).map_err(|e| error(e.to_string()))?;
        let section = |name: &str| -> HashMap<String, String> {
            ini.iter()
                .filter(|(section, _)| *section == Some(name))
                .flat_map(|(_, props)| props.iter())
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect()
        };
        if !ini.sections().any(|s| s == Some(self.profile.as_str())) {
            return Err(error(format!("no profile [{}]", self.profile)));
        }
        let mut values = section("DEFAULT");
        values.extend(section(&self.profile));
        let take = |key: &str| values.get(key).filter(|v| !v.is_empty()).cloned();
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let resolve = |p: String| {
            let p = match home {
                Some(home) if p == "~" || p.starts_with("~/") => {
                    home.join(p.trim_start_matches('~').trim_start_matches('/'))
                }
                _ => PathBuf::from(p),
            };
            dir.join(p)
        };
        let security_token_file = take("security_token_file").map(resolve);
        let mut missing = Vec::new();
        let mut require = |key: &str| {
            take(key).or_else(|| {
                missing.push(key.to_string());
                None
            })
        };
        let tenancy = require("tenancy");
        let key_file = require("key_file");
        // A session-token profile signs with `ST$<token>` and needs no user or fingerprint.
        let (user, fingerprint) = if security_token_file.is_some() {
            (take("user"), take("fingerprint"))
        } else {
            (require("user"), require("fingerprint"))
        };
        match (tenancy, key_file) {
            (Some(tenancy), Some(key_file)) if missing.is_empty() => Ok(Profile {
                name: self.profile.clone(),
                user,
                tenancy,
                fingerprint,
                key_file: resolve(key_file),
                region: take("region"),
                security_token_file,
                pass_phrase: take("pass_phrase").or_else(|| take("passphrase")),
            }),
            _ => Err(error(format!(
                "profile [{}] lacks {}",
                self.profile,
                missing.join(", ")
            ))),
        }
    }
}

/// A user's API key (or a CLI session token) from the config file. The key is read once, at
/// construction.
#[derive(Clone, Debug)]
pub struct ApiKeyCredentials {
    signer: Signer,
    region: Option<String>,
    described: String,
}

impl ApiKeyCredentials {
    /// Loads the profile named by the environment (see the module docs).
    pub fn from_env(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, AuthError> {
        let config = OciConfig::from_env(lookup);
        let home = lookup("HOME").map(PathBuf::from);
        let profile = config.load(home.as_deref())?;
        Self::from_profile(&config, &profile)
    }

    /// Reads the profile's key file (refused when group or others can read it) and, for a
    /// session-token profile, its token.
    pub fn from_profile(config: &OciConfig, profile: &Profile) -> Result<Self, AuthError> {
        let pem = read_secret_file(&profile.key_file)?;
        let key = PrivateKey::from_pem(&pem, profile.pass_phrase.as_deref()).map_err(|e| {
            AuthError::Config {
                path: config.path.clone(),
                message: format!(
                    "profile [{}]: key_file {}: {e}",
                    profile.name,
                    profile.key_file.display()
                ),
            }
        })?;
        let key_id = match (
            &profile.security_token_file,
            &profile.user,
            &profile.fingerprint,
        ) {
            (Some(token_file), _, _) => {
                let token = read_secret_file(token_file)?;
                format!("ST${}", token.trim())
            }
            (None, Some(user), Some(fingerprint)) => {
                format!("{}/{user}/{fingerprint}", profile.tenancy)
            }
            // `load` requires user and fingerprint when there is no token file.
            (None, _, _) => {
                return Err(AuthError::Config {
                    path: config.path.clone(),
                    message: format!("profile [{}] lacks user or fingerprint", profile.name),
                });
            }
        };
        Ok(Self {
            signer: Signer::new(key_id, key),
            region: profile.region.clone(),
            described: format!(
                "API key of profile [{}] in {}",
                profile.name,
                config.path.display()
            ),
        })
    }

    /// The profile's `region`, if set.
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }
}

#[async_trait::async_trait]
impl Credentials for ApiKeyCredentials {
    async fn signer(&self) -> Result<Signer, AuthError> {
        Ok(self.signer.clone())
    }

    fn describe(&self) -> String {
        self.described.clone()
    }
}

fn expand_home(path: &str, lookup: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    match (path.strip_prefix("~/"), lookup("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest),
        _ => PathBuf::from(path),
    }
}

#[cfg(test)]
mod tests;
