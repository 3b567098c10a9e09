//! [`RegistryError`]: every variant names the location (`registry <host>` or
//! `local image store <dir>`, as [`crate::Registry::describe`] says it) and, where there is one,
//! the image.
//! Messages never contain credentials.

use std::{io, path::PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    /// The manifest (tag or digest) does not exist. Only this variant triggers the fallback
    /// base image.
    #[error("image {image:?} not found in {location}")]
    NotFound { location: String, image: String },

    #[error("{location} requires credentials for {repository:?} ({status})")]
    CredentialsRequired {
        location: String,
        repository: String,
        status: u16,
    },

    #[error("{location} refused the credentials for {repository:?} ({status})")]
    CredentialsRefused {
        location: String,
        repository: String,
        status: u16,
    },

    #[error("cannot reach {location}: {reason}")]
    Unreachable { location: String, reason: String },

    /// Getting credentials for the registry failed (ECR `GetAuthorizationToken`, a Google
    /// OAuth token exchange).
    #[error("cannot get credentials for {location}: {reason}")]
    CredentialsUnavailable { location: String, reason: String },

    #[error(
        "digest mismatch for {what} of image {image:?} from {location}: expected {expected}, got {actual}"
    )]
    DigestMismatch {
        location: String,
        image: String,
        what: String,
        expected: String,
        actual: String,
    },

    #[error("image {image:?} in {location} has unsupported media type {media_type:?} ({what})")]
    UnsupportedMediaType {
        location: String,
        image: String,
        what: String,
        media_type: String,
    },

    #[error("image {image:?} in {location} has no linux/amd64 variant (it has: {available})")]
    UnsupportedPlatform {
        location: String,
        image: String,
        available: String,
    },

    /// The registry answered something this client cannot use (a blob that is gone, a
    /// malformed manifest, a server error).
    #[error("{location} failed for image {image:?}: {message}")]
    Failed {
        location: String,
        image: String,
        message: String,
    },

    #[error("blob cache {}: {source}", path.display())]
    Cache { path: PathBuf, source: io::Error },

    /// The local image store (or an import source) is unreadable or inconsistent.
    #[error("{location}: {message}")]
    Store { location: String, message: String },

    /// The requested image was missing and the fallback base image could not be put in its place.
    #[error(
        "image {requested:?} not found in {location}, and the fallback base image {fallback:?} could not be used: {cause}"
    )]
    Fallback {
        location: String,
        requested: String,
        fallback: String,
        cause: Box<RegistryError>,
    },
}

impl RegistryError {
    /// The image (manifest) does not exist where it was looked for.
    pub fn is_not_found(&self) -> bool {
        matches!(self, RegistryError::NotFound { .. })
    }

    pub(crate) fn cache(path: impl Into<PathBuf>, source: io::Error) -> Self {
        RegistryError::Cache {
            path: path.into(),
            source,
        }
    }
}

/// `err` and its sources, `: `-separated: reqwest's top-level messages ("error sending
/// request") hide the useful part ("Connection refused") in the chain.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
