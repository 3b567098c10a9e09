//! Where template base images come from.
//!
//! Kiln builds sandbox templates from OCI images. This crate pulls an image from wherever it lives
//! into a local blob cache and hands the template builder an [`Image`]: the parts of the image
//! config a sandbox needs and the layers, bottom first, as files. Unpacking the layers is the
//! builder's job.
//!
//! - [`Images`]: what the builder calls. A reference with a registry host
//!   (`127.0.0.1:5000/team/app:1`) is pulled from that registry directly; a short name
//!   (`python:3.10-slim`) goes through the configured provider, with a fallback base image.
//! - [`Registry`]: the seam every provider implements: [`RemoteRegistry`] (any distribution-spec
//!   registry, also OCIR, ECR and Artifact Registry with their credentials) and [`LocalStore`]
//!   (an OCI image-layout directory, filled by [`import`]).
//! - [`BlobCache`], the verified blob cache: `<cache_dir>/blobs/sha256/<hex>`.
//! - [`lifecycle`]: what a registry holds, and retention policies that delete what is not kept
//!   (`kiln registry repos|prune|check`).
//!
//! Invariants:
//! - A file in the blob cache has exactly the bytes its digest names: blobs are written to a
//!   temporary file, their sha256 checked, then renamed into place. So a cached blob is never
//!   downloaded again, and a half-written one is never seen.
//! - Layers are streamed to disk; no layer is ever held in memory whole.
//! - Secrets (passwords, tokens, keys) never reach logs or error messages; the `Debug` output of
//!   [`Credentials`] and of the provider settings is redacted.
//! - Every error names where the image was looked for ([`Registry::describe`]) and the image.
//! - Only linux/amd64 images are pulled: an index is resolved to its linux/amd64 manifest.

mod auth;
mod cache;
mod config;
mod ecr;
mod error;
mod gcp;
mod images;
pub mod lifecycle;
mod local;
mod oci;
mod reference;
mod remote;

pub use cache::BlobCache;
pub use config::{ConfigErrors, DEFAULT_FALLBACK_BASE_IMAGE};
pub use ecr::EcrSettings;
pub use error::RegistryError;
pub use gcp::{GcpSettings, GcpTokenSource, ServiceAccountKey};
pub use images::{CloudCredentials, Images, ImagesOptions};
pub use local::{LocalStore, import};
pub use remote::RemoteRegistry;

use std::{fmt, path::PathBuf};

/// A pulled image: its manifest digest, the parts of its config a sandbox needs, and its layers
/// (bottom first) as verified files in the local blob cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// Where the image was pulled from: `host/repository:tag` (or `@digest`) for a registry,
    /// `name:tag` for the local store.
    pub reference: String,
    /// Digest of the linux/amd64 image manifest (not of an index that pointed to it).
    pub manifest_digest: String,
    pub config: ImageConfig,
    pub layers: Vec<Layer>,
}

/// The parts of an image's config (`config` in the OCI image config) a sandbox needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `KEY=value` entries, as in the image.
    pub env: Vec<String>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

/// One layer of an image, already in the blob cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// `sha256:<hex>` of the layer as stored (compressed, if it is).
    pub digest: String,
    /// Tells the unpacker the compression: `…tar`, `…tar+gzip`, `…tar+zstd`.
    pub media_type: String,
    pub size: u64,
    pub path: PathBuf,
}

/// Credentials for one pull (E2B's `fromImageRegistry`, or a docker config.json entry).
///
/// `Debug` never shows a password or token.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Credentials {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// A registry bearer token, sent as is (no token exchange).
    Bearer(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

/// A place images come from. Chosen by configuration (see [`Images::from_env`]).
#[async_trait::async_trait]
pub trait Registry: Send + Sync {
    /// Human-readable location for messages, e.g. "registry 127.0.0.1:5000" or "local image
    /// store /var/lib/kiln/images".
    fn describe(&self) -> String;

    /// Pulls `name` (`repo[:tag|@digest]`, relative to this registry/provider) into the cache.
    ///
    /// [`Credentials::Anonymous`] means "this provider's own credentials" (the configured ones,
    /// if any); other credentials replace them for this pull. The local store ignores them.
    async fn pull(&self, name: &str, credentials: &Credentials) -> Result<Image, RegistryError>;

    /// Makes `from` (already in this registry) also available as `to` (copies manifest + blobs,
    /// or adds a tag). For an index, only the linux/amd64 image is copied.
    async fn copy(&self, from: &str, to: &str) -> Result<(), RegistryError>;
}
