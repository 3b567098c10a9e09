//! Registry lifecycle: what is stored in a registry, and deleting what a retention policy does
//! not keep.
//!
//! - [`Catalog`]: the seam each provider implements: list repositories, list the images of one
//!   (tags, sizes, creation time), delete an image. [`DistributionCatalog`] speaks the
//!   distribution API to any registry; [`ArtifactsCatalog`] speaks OCI's Artifacts API for OCIR.
//! - [`policy`]: the retention rules and the pure engine ([`policy::decide`]).
//! - [`plan`] lists and decides without changing anything; [`apply`] deletes what a plan says.
//!
//! Invariants:
//! - An image is a manifest digest within one repository; every tag pointing at it is listed on
//!   it, and the decision is per digest, so a manifest any kept tag points to is never deleted.
//! - [`plan`] never writes; only [`apply`] deletes, and only images whose decision is
//!   [`Action::Delete`]. Deleting an image that is already gone succeeds, so applying the same
//!   plan twice, or planning again after applying, deletes nothing more.
//! - [`StoredImage::bytes`] is the config plus the layers as the manifest records them (summed
//!   over the platform manifests of an index); the quota counts every distinct blob once per
//!   run, manifests included, which is what a distribution registry keeps on disk for them.

mod artifacts;
mod distribution;
pub mod policy;
mod target;

pub use artifacts::{ArtifactsCatalog, OciRequestSigner, OracleSigner};
pub use distribution::DistributionCatalog;
pub use policy::{Action, Decision, Pattern, Policy, Quota, QuotaReport, Rule};
pub use target::{RegistryTarget, read_secret_file};

use crate::RegistryError;
use std::collections::{BTreeMap, HashSet};
use time::OffsetDateTime;

/// One image (manifest) in one repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredImage {
    pub repository: String,
    /// `sha256:<hex>` of the manifest (an index's own digest for a multi-platform image).
    pub digest: String,
    /// Every tag pointing at this manifest, sorted; empty for an untagged image.
    pub tags: Vec<String>,
    /// The image config's `created`; for an index, the newest of its platforms'.
    pub created: Option<OffsetDateTime>,
    /// Config plus layer sizes as the manifest(s) record them.
    pub bytes: u64,
    /// Every blob the registry stores for this image: manifest(s), config(s), layers.
    pub blobs: Vec<Blob>,
    /// Manifests an index references (empty for an image manifest).
    pub children: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
}

/// Why a lifecycle operation failed. Messages name the registry, never credentials.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Registry(#[from] RegistryError),

    /// The registry answered a delete with 405 / `UNSUPPORTED`: deletes are switched off.
    #[error(
        "{location} refuses to delete manifests ({detail}): deletes are disabled or unsupported there (for a distribution registry set storage.delete.enabled: true, or REGISTRY_STORAGE_DELETE_ENABLED=true; Docker Hub never allows it); nothing more was deleted"
    )]
    DeleteRefused { location: String, detail: String },

    /// The registry cannot list its repositories (`/v2/_catalog` missing or forbidden).
    #[error("{location} does not list its repositories ({detail}); name them with --repo")]
    CatalogUnsupported { location: String, detail: String },
}

/// A registry whose contents can be listed and deleted.
///
/// # Contract
/// - [`Catalog::images`] returns each manifest digest of the repository at most once, with all
///   its tags; manifests only reachable through an index are listed as that index's
///   [`StoredImage::children`], not as images of their own.
/// - [`Catalog::delete`] removes the manifest and with it every tag pointing at it; a manifest
///   that is already gone is not an error.
#[async_trait::async_trait]
pub trait Catalog: Send + Sync {
    /// Where, for messages: "registry 127.0.0.1:5000".
    fn describe(&self) -> String;

    /// Every repository (under the provider's prefix, if it has one).
    async fn repositories(&self) -> Result<Vec<String>, LifecycleError>;

    async fn images(&self, repository: &str) -> Result<Vec<StoredImage>, LifecycleError>;

    async fn delete(&self, repository: &str, digest: &str) -> Result<(), LifecycleError>;
}

/// The HTTP client of a catalog: bounded connect and request times, Kiln's user agent.
fn http_client(timeout: std::time::Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(timeout)
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

/// A repository prefix without surrounding slashes; `None` when empty.
fn normalize_prefix(prefix: Option<&str>) -> Option<String> {
    prefix
        .map(|p| p.trim_matches('/').to_string())
        .filter(|p| !p.is_empty())
}

/// [`RegistryError::Failed`] at `location` about `what`.
fn failed(location: String, what: &str, message: String) -> LifecycleError {
    RegistryError::Failed {
        location,
        image: what.to_string(),
        message,
    }
    .into()
}

/// Which repositories to look at: all (empty) or those matching one of the patterns (a plain
/// name is a pattern matching itself).
pub async fn select_repositories(
    catalog: &dyn Catalog,
    wanted: &[Pattern],
) -> Result<Vec<String>, LifecycleError> {
    let literal = |p: &Pattern| !p.as_str().contains(['*', '?', '[', '{']);
    if !wanted.is_empty() && wanted.iter().all(literal) {
        // No listing needed, so this works on registries without a catalog too.
        let mut names: Vec<String> = wanted.iter().map(|p| p.as_str().to_string()).collect();
        names.sort();
        names.dedup();
        return Ok(names);
    }
    let mut names = catalog.repositories().await?;
    names.retain(|name| wanted.is_empty() || wanted.iter().any(|p| p.matches(name)));
    names.sort();
    Ok(names)
}

/// Per repository: how many images, tagged and untagged, and their bytes (distinct blobs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepositorySummary {
    pub repository: String,
    pub images: usize,
    pub tagged: usize,
    pub untagged: usize,
    pub bytes: u64,
}

pub async fn summarize(
    catalog: &dyn Catalog,
    repositories: &[String],
) -> Result<Vec<RepositorySummary>, LifecycleError> {
    let mut out = Vec::new();
    for repository in repositories {
        let images = catalog.images(repository).await?;
        let tagged = images.iter().filter(|i| !i.tags.is_empty()).count();
        let report = QuotaReport::new(images.iter().map(|i| (i, Action::Keep)), Quota::default());
        out.push(RepositorySummary {
            repository: repository.clone(),
            images: images.len(),
            tagged,
            untagged: images.len() - tagged,
            bytes: report.used_bytes,
        });
    }
    Ok(out)
}

/// The decisions for every image of the selected repositories, and the quota report.
#[derive(Clone, Debug)]
pub struct Plan {
    pub location: String,
    /// In repository order, then newest first.
    pub images: Vec<(StoredImage, Decision)>,
    pub quota: QuotaReport,
}

impl Plan {
    pub fn deletions(&self) -> impl Iterator<Item = &StoredImage> {
        self.images
            .iter()
            .filter(|(_, d)| d.action == Action::Delete)
            .map(|(i, _)| i)
    }
}

/// Lists the repositories' images and decides on each; changes nothing.
pub async fn plan(
    catalog: &dyn Catalog,
    repositories: &[String],
    policy: &Policy,
    now: OffsetDateTime,
) -> Result<Plan, LifecycleError> {
    let mut images = Vec::new();
    for repository in repositories {
        let mut found = catalog.images(repository).await?;
        found.sort_by(|a, b| {
            b.created
                .cmp(&a.created)
                .then_with(|| a.digest.cmp(&b.digest))
        });
        let decisions = policy::decide(&found, policy.rule_for(repository), now);
        images.extend(found.into_iter().zip(decisions));
    }
    let quota = QuotaReport::new(images.iter().map(|(i, d)| (i, d.action)), policy.quota);
    Ok(Plan {
        location: catalog.describe(),
        images,
        quota,
    })
}

/// Deletes what `plan` says to delete and returns how many manifests were deleted.
///
/// An index's platform manifests that are not images of their own (untagged, so invisible to
/// the distribution API) are deleted after the index, unless a kept image of the repository is
/// or references them. The first refused delete stops the run ([`LifecycleError::DeleteRefused`]):
/// every further one would be refused too.
pub async fn apply(catalog: &dyn Catalog, plan: &Plan) -> Result<usize, LifecycleError> {
    let mut by_repository: BTreeMap<&str, Vec<&(StoredImage, Decision)>> = BTreeMap::new();
    for entry in &plan.images {
        by_repository
            .entry(entry.0.repository.as_str())
            .or_default()
            .push(entry);
    }
    let mut deleted = 0;
    for (repository, entries) in by_repository {
        let mut protected: HashSet<&str> = HashSet::new();
        let mut listed: HashSet<&str> = HashSet::new();
        for (image, decision) in &entries {
            listed.insert(&image.digest);
            if decision.action == Action::Keep {
                protected.insert(&image.digest);
                protected.extend(image.children.iter().map(String::as_str));
            }
        }
        for (image, decision) in entries {
            if decision.action != Action::Delete {
                continue;
            }
            catalog.delete(repository, &image.digest).await?;
            tracing::info!(location = %plan.location, %repository, digest = %image.digest, tags = ?image.tags, reason = %decision.reason, "deleted image");
            deleted += 1;
            for child in &image.children {
                if !protected.contains(child.as_str()) && !listed.contains(child.as_str()) {
                    catalog.delete(repository, child).await?;
                    tracing::debug!(%repository, digest = %child, "deleted platform manifest of a deleted index");
                }
            }
        }
    }
    Ok(deleted)
}
