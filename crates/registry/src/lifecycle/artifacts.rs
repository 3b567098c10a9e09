//! [`ArtifactsCatalog`]: OCIR through OCI's Artifacts API (`/20160918/container/…`), which,
//! unlike the distribution API, lists untagged images and deletes an image with all its tags.
//!
//! Requests are signed by an [`OciRequestSigner`] (Oracle's request signing, API key or
//! instance principal), kept behind a trait so this module does not depend on how the key is
//! obtained.
//!
//! What it reports differs from the distribution API in two ways, both from the API itself:
//! an image's creation time is when it was pushed (`timeCreated`; the Artifacts API does not
//! expose the image config), and its bytes are the layer sizes OCIR records
//! (`layers[].sizeInBytes`), its blobs those layers plus the manifest.

use super::{Blob, Catalog, LifecycleError, StoredImage};
use crate::{RegistryError, error::chain};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use std::{collections::HashMap, fmt, sync::Arc, time::Duration};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio::sync::Mutex;

/// The Artifacts API version path.
const API: &str = "/20160918";
/// Page size of list calls (the API's maximum is 100).
const PAGE: &str = "100";

/// Signs a request to an Oracle Cloud API: adds the `date`, `host` and `authorization` headers
/// of Oracle's request signing. Implementations must not log the key or the signature.
#[async_trait::async_trait]
pub trait OciRequestSigner: Send + Sync {
    async fn sign(&self, request: &mut reqwest::Request) -> Result<(), String>;

    /// OCI answered 401: drop cached session tokens so the next signature uses fresh ones.
    async fn invalidate(&self) {}
}

/// [`OciRequestSigner`] over `oracle-auth` credentials: an API key from `~/.oci/config` or the
/// instance principal.
pub struct OracleSigner(pub Arc<dyn oracle_auth::Credentials>);

#[async_trait::async_trait]
impl OciRequestSigner for OracleSigner {
    async fn sign(&self, request: &mut reqwest::Request) -> Result<(), String> {
        let signer = self.0.signer().await.map_err(|e| e.to_string())?;
        let method = request.method().clone();
        let url = request.url().clone();
        signer
            .sign(
                &method,
                &url,
                request.headers_mut(),
                oracle_auth::Payload::Unsigned,
            )
            .map_err(|e| e.to_string())
    }

    async fn invalidate(&self) {
        self.0.invalidate().await;
    }
}

/// OCIR images of one compartment, through the Artifacts API.
pub struct ArtifactsCatalog {
    /// `https://artifacts.<region>.oci.oraclecloud.com`
    endpoint: String,
    compartment_id: String,
    /// Repository names are shown as `<namespace>/<name>`, as `docker pull` paths have them.
    namespace: String,
    /// Only repositories under this prefix (`OCI_CONTAINER_REPOSITORY_NAME`) are listed.
    prefix: Option<String>,
    signer: Arc<dyn OciRequestSigner>,
    http: reqwest::Client,
    /// Image OCIDs by (repository, digest), filled while listing: deletes are by OCID.
    ids: Mutex<HashMap<(String, String), String>>,
}

impl fmt::Debug for ArtifactsCatalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArtifactsCatalog")
            .field("endpoint", &self.endpoint)
            .field("compartment_id", &self.compartment_id)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Page<T> {
    items: Vec<T>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RepositorySummary {
    display_name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImageSummary {
    id: String,
    lifecycle_state: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerImage {
    digest: String,
    time_created: Option<String>,
    #[serde(default)]
    layers: Vec<ImageLayer>,
    manifest_size_in_bytes: Option<u64>,
    #[serde(default)]
    versions: Vec<Version>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImageLayer {
    digest: String,
    size_in_bytes: u64,
}

#[derive(Deserialize)]
struct Version {
    version: String,
}

impl ArtifactsCatalog {
    /// `endpoint` is `https://artifacts.<region>.oci.oraclecloud.com` (a test server's URL in
    /// tests).
    pub fn new(
        endpoint: &str,
        compartment_id: &str,
        namespace: &str,
        prefix: Option<&str>,
        signer: Arc<dyn OciRequestSigner>,
    ) -> ArtifactsCatalog {
        let http = super::http_client(Duration::from_secs(60));
        ArtifactsCatalog {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            compartment_id: compartment_id.to_string(),
            namespace: namespace.to_string(),
            prefix: super::normalize_prefix(prefix),
            signer,
            http,
            ids: Mutex::new(HashMap::new()),
        }
    }

    fn location(&self) -> String {
        format!("OCI Artifacts API {}", self.endpoint)
    }

    fn failed(&self, what: &str, message: String) -> LifecycleError {
        super::failed(self.location(), what, message)
    }

    /// Sends a signed request; 401/403 become credential errors.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        what: &str,
    ) -> Result<reqwest::Response, LifecycleError> {
        let mut response = self.send_signed(&method, path, query, what).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            // A session token may have expired early: once more with a fresh one.
            self.signer.invalidate().await;
            response = self.send_signed(&method, path, query, what).await?;
        }
        match response.status().as_u16() {
            status @ (401 | 403) => Err(RegistryError::CredentialsRefused {
                location: self.location(),
                repository: what.to_string(),
                status,
            }
            .into()),
            _ => Ok(response),
        }
    }

    async fn send_signed(
        &self,
        method: &Method,
        path: &str,
        query: &[(&str, &str)],
        what: &str,
    ) -> Result<reqwest::Response, LifecycleError> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{API}{path}", self.endpoint))
            .query(query)
            .build()
            .map_err(|e| self.failed(what, chain(&e)))?;
        self.signer.sign(&mut request).await.map_err(|reason| {
            RegistryError::CredentialsUnavailable {
                location: self.location(),
                reason,
            }
        })?;
        self.http.execute(request).await.map_err(|e| {
            LifecycleError::from(RegistryError::Unreachable {
                location: self.location(),
                reason: chain(&e),
            })
        })
    }

    /// Every item of a paged list (`opc-next-page` → `page`).
    async fn list<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
        what: &str,
    ) -> Result<Vec<T>, LifecycleError> {
        let mut items = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let mut q: Vec<(&str, &str)> = query.to_vec();
            q.push(("compartmentId", &self.compartment_id));
            q.push(("limit", PAGE));
            if let Some(page) = &page {
                q.push(("page", page));
            }
            let response = self.send(Method::GET, path, &q, what).await?;
            let status = response.status();
            let next = response
                .headers()
                .get("opc-next-page")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            if !status.is_success() {
                let body = response.text().await.unwrap_or_default();
                return Err(self.failed(what, format!("HTTP {status}: {}", body.trim())));
            }
            let body: Page<T> = response
                .json()
                .await
                .map_err(|e| self.failed(what, format!("malformed list: {e}")))?;
            items.extend(body.items);
            match next {
                Some(next) if !next.is_empty() => page = Some(next),
                _ => return Ok(items),
            }
        }
    }

    /// `<namespace>/<name>` → `<name>` (the Artifacts API's repository name).
    fn display_name<'a>(&self, repository: &'a str) -> &'a str {
        repository
            .strip_prefix(&self.namespace)
            .and_then(|r| r.strip_prefix('/'))
            .unwrap_or(repository)
    }
}

#[async_trait::async_trait]
impl Catalog for ArtifactsCatalog {
    fn describe(&self) -> String {
        self.location()
    }

    async fn repositories(&self) -> Result<Vec<String>, LifecycleError> {
        let listed: Vec<RepositorySummary> = self
            .list("/container/repositories", &[], "the repository list")
            .await?;
        let mut names: Vec<String> = listed
            .into_iter()
            .map(|r| r.display_name)
            .filter(|name| {
                self.prefix
                    .as_ref()
                    .is_none_or(|p| name.starts_with(&format!("{p}/")))
            })
            .map(|name| format!("{}/{name}", self.namespace))
            .collect();
        names.sort();
        Ok(names)
    }

    async fn images(&self, repository: &str) -> Result<Vec<StoredImage>, LifecycleError> {
        let name = self.display_name(repository);
        let summaries: Vec<ImageSummary> = self
            .list("/container/images", &[("repositoryName", name)], repository)
            .await?;
        let mut images = Vec::new();
        for summary in summaries {
            if summary
                .lifecycle_state
                .as_deref()
                .is_some_and(|s| s != "AVAILABLE")
            {
                continue;
            }
            // Tags and layer sizes are only on the image itself.
            let what = format!("{repository} image {}", summary.id);
            let response = self
                .send(
                    Method::GET,
                    &format!("/container/images/{}", summary.id),
                    &[],
                    &what,
                )
                .await?;
            if response.status() == StatusCode::NOT_FOUND {
                continue;
            }
            if !response.status().is_success() {
                let status = response.status();
                return Err(self.failed(&what, format!("HTTP {status}")));
            }
            let image: ContainerImage = response
                .json()
                .await
                .map_err(|e| self.failed(&what, format!("malformed image: {e}")))?;
            let mut tags: Vec<String> = image.versions.into_iter().map(|v| v.version).collect();
            tags.sort();
            tags.dedup();
            let mut blobs = vec![Blob {
                digest: image.digest.clone(),
                size: image.manifest_size_in_bytes.unwrap_or(0),
            }];
            blobs.extend(image.layers.iter().map(|l| Blob {
                digest: l.digest.clone(),
                size: l.size_in_bytes,
            }));
            self.ids.lock().await.insert(
                (repository.to_string(), image.digest.clone()),
                summary.id.clone(),
            );
            images.push(StoredImage {
                repository: repository.to_string(),
                digest: image.digest,
                tags,
                created: image
                    .time_created
                    .and_then(|t| OffsetDateTime::parse(&t, &Rfc3339).ok()),
                bytes: image.layers.iter().map(|l| l.size_in_bytes).sum(),
                blobs,
                children: Vec::new(),
            });
        }
        Ok(images)
    }

    async fn delete(&self, repository: &str, digest: &str) -> Result<(), LifecycleError> {
        let known = self
            .ids
            .lock()
            .await
            .get(&(repository.to_string(), digest.to_string()))
            .cloned();
        let id = match known {
            Some(id) => id,
            None => {
                let found: Vec<ImageSummary> = self
                    .list(
                        "/container/images",
                        &[
                            ("repositoryName", self.display_name(repository)),
                            ("imageDigest", digest),
                        ],
                        repository,
                    )
                    .await?;
                match found.into_iter().next() {
                    Some(image) => image.id,
                    // Already gone.
                    None => return Ok(()),
                }
            }
        };
        let what = format!("{repository}@{digest}");
        let response = self
            .send(
                Method::DELETE,
                &format!("/container/images/{id}"),
                &[],
                &what,
            )
            .await?;
        match response.status() {
            s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(()),
            StatusCode::METHOD_NOT_ALLOWED => Err(LifecycleError::DeleteRefused {
                location: self.location(),
                detail: "HTTP 405".into(),
            }),
            status => {
                let body = response.text().await.unwrap_or_default();
                Err(self.failed(&what, format!("delete: HTTP {status}: {}", body.trim())))
            }
        }
    }
}
