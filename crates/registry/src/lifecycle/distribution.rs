//! [`DistributionCatalog`]: the lifecycle operations over the OCI distribution API, which any
//! registry speaks: `GET /v2/_catalog`, `GET /v2/<name>/tags/list`, manifests and config blobs
//! by `GET`, `DELETE /v2/<name>/manifests/<digest>`.
//!
//! Written with reqwest rather than oci-client: oci-client has no delete, and a delete needs a
//! token for the `delete` action, which oci-client's token handling never asks for. The
//! credentials come from the same [`AuthSource`] the pulls use (fixed, ECR, Google); this module
//! does the `WWW-Authenticate` exchange: Basic, or a Bearer token from the challenge's realm for
//! the scope of the request (cached per scope for the life of the catalog).
//!
//! The distribution API lists tags only, so an untagged manifest is invisible here (except as a
//! platform of a tagged index); the registry's own `garbage-collect --delete-untagged` is the
//! tool for those. Providers with an image API ([`super::ArtifactsCatalog`]) list them.

use super::{Blob, Catalog, LifecycleError, StoredImage};
use crate::{
    Credentials, RegistryError,
    auth::AuthSource,
    cache::sha256_digest,
    error::chain,
    oci::{self, Manifest},
    remote::truncate,
};
use base64::Engine as _;
use futures::{StreamExt, TryStreamExt, stream};
use reqwest::{Method, Response, StatusCode, header};
use std::{collections::BTreeMap, collections::HashMap, fmt, sync::Arc, time::Duration};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio::sync::Mutex;

/// A manifest larger than this is not a manifest.
const MAX_MANIFEST: u64 = 4 * 1024 * 1024;
/// An image config larger than this is not read (its creation time is then unknown).
const MAX_CONFIG: u64 = 16 * 1024 * 1024;
/// Page size asked for when listing repositories and tags.
const PAGE: usize = 1000;
/// Manifests read at once while listing a repository.
const PARALLEL: usize = 4;

/// The lifecycle view of a distribution registry at `host`; with a `prefix`, only repositories
/// under it are listed.
pub struct DistributionCatalog {
    host: String,
    base: String,
    prefix: Option<String>,
    auth: Arc<dyn AuthSource>,
    http: reqwest::Client,
    /// How to authorize requests once the registry has said so: per scope, the header to send.
    authorization: Mutex<HashMap<String, String>>,
    /// Creation times of configs already read (configs are shared between tags and repositories).
    created: Mutex<HashMap<String, Option<OffsetDateTime>>>,
}

impl fmt::Debug for DistributionCatalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DistributionCatalog")
            .field("host", &self.host)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, PartialEq, Eq)]
struct Challenge {
    scheme: String,
    params: BTreeMap<String, String>,
}

impl DistributionCatalog {
    /// A catalog of the registry at `host` (`host[:port]`), spoken to over plain HTTP when
    /// `plain_http`.
    pub fn new(
        host: &str,
        prefix: Option<&str>,
        credentials: Credentials,
        plain_http: bool,
    ) -> DistributionCatalog {
        DistributionCatalog::with_auth(
            host,
            prefix,
            Arc::new(crate::auth::StaticAuth(credentials)),
            plain_http,
        )
    }

    pub(crate) fn with_auth(
        host: &str,
        prefix: Option<&str>,
        auth: Arc<dyn AuthSource>,
        plain_http: bool,
    ) -> DistributionCatalog {
        let scheme = if plain_http { "http" } else { "https" };
        let http = super::http_client(Duration::from_secs(120));
        DistributionCatalog {
            host: host.to_string(),
            base: format!("{scheme}://{host}"),
            prefix: super::normalize_prefix(prefix),
            auth,
            http,
            authorization: Mutex::new(HashMap::new()),
            created: Mutex::new(HashMap::new()),
        }
    }

    fn location(&self) -> String {
        format!("registry {}", self.host)
    }

    fn failed(&self, image: &str, message: String) -> LifecycleError {
        super::failed(self.location(), image, message)
    }

    /// Sends a body-less request for `path` (and query), authorized for `scope` as the
    /// registry demands. `what` names the object for errors.
    async fn send(
        &self,
        method: Method,
        path: &str,
        scope: &str,
        accept: &[&str],
        what: &str,
    ) -> Result<Response, LifecycleError> {
        let credentials = self.auth.credentials().await?;
        let known = self.authorization.lock().await.get(scope).cloned();
        let preset = match &credentials {
            // A registry bearer token is sent as is (no token exchange), as for pulls.
            Credentials::Bearer(token) => Some(format!("Bearer {token}")),
            _ => known,
        };
        let response = self
            .send_once(&method, path, accept, preset.as_deref(), what)
            .await?;
        if response.status() != StatusCode::UNAUTHORIZED
            || matches!(credentials, Credentials::Bearer(_))
        {
            return self.check_auth(response, &credentials, scope);
        }
        let challenge = response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge);
        let authorization = match challenge {
            Some(c) if c.scheme.eq_ignore_ascii_case("basic") => match &credentials {
                Credentials::Basic { username, password } => basic(username, password),
                _ => return self.check_auth(response, &credentials, scope),
            },
            Some(c) if c.scheme.eq_ignore_ascii_case("bearer") => {
                format!("Bearer {}", self.token(&c, scope, &credentials).await?)
            }
            _ => return self.check_auth(response, &credentials, scope),
        };
        self.authorization
            .lock()
            .await
            .insert(scope.to_string(), authorization.clone());
        let response = self
            .send_once(&method, path, accept, Some(&authorization), what)
            .await?;
        self.check_auth(response, &credentials, scope)
    }

    async fn send_once(
        &self,
        method: &Method,
        path: &str,
        accept: &[&str],
        authorization: Option<&str>,
        what: &str,
    ) -> Result<Response, LifecycleError> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if !accept.is_empty() {
            request = request.header(header::ACCEPT, accept.join(", "));
        }
        if let Some(authorization) = authorization {
            request = request.header(header::AUTHORIZATION, authorization);
        }
        request.send().await.map_err(|e| {
            if e.is_connect() || e.is_timeout() {
                RegistryError::Unreachable {
                    location: self.location(),
                    reason: chain(&e),
                }
                .into()
            } else {
                self.failed(what, chain(&e))
            }
        })
    }

    /// 401 and 403 become credential errors naming the repository (or the catalog).
    fn check_auth(
        &self,
        response: Response,
        credentials: &Credentials,
        scope: &str,
    ) -> Result<Response, LifecycleError> {
        let status = response.status().as_u16();
        let repository = scope
            .strip_prefix("repository:")
            .and_then(|s| s.rsplit_once(':'))
            .map_or_else(|| "the repository list".to_string(), |(r, _)| r.to_string());
        match status {
            401 if *credentials == Credentials::Anonymous => {
                Err(RegistryError::CredentialsRequired {
                    location: self.location(),
                    repository,
                    status,
                }
                .into())
            }
            401 | 403 => Err(RegistryError::CredentialsRefused {
                location: self.location(),
                repository,
                status,
            }
            .into()),
            _ => Ok(response),
        }
    }

    /// A bearer token for `scope` from the challenge's realm (Docker's token protocol), with
    /// the Basic credentials if there are any.
    async fn token(
        &self,
        challenge: &Challenge,
        scope: &str,
        credentials: &Credentials,
    ) -> Result<String, LifecycleError> {
        let unavailable = |reason: String| RegistryError::CredentialsUnavailable {
            location: self.location(),
            reason,
        };
        let realm = challenge
            .params
            .get("realm")
            .ok_or_else(|| unavailable("the Bearer challenge names no realm".into()))?;
        let mut query: Vec<(&str, &str)> = vec![("scope", scope)];
        if let Some(service) = challenge.params.get("service") {
            query.push(("service", service));
        }
        let mut request = self.http.get(realm).query(&query);
        if let Credentials::Basic { username, password } = credentials {
            request = request.header(header::AUTHORIZATION, basic(username, password));
        }
        let response = request
            .send()
            .await
            .map_err(|e| unavailable(format!("token request to {realm}: {}", chain(&e))))?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(RegistryError::CredentialsRefused {
                location: self.location(),
                repository: scope.to_string(),
                status: status.as_u16(),
            }
            .into());
        }
        if !status.is_success() {
            return Err(unavailable(format!("token request to {realm}: HTTP {status}")).into());
        }
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let token: Token = response
            .json()
            .await
            .map_err(|e| unavailable(format!("token response from {realm}: {e}")))?;
        token
            .token
            .or(token.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                unavailable(format!("the token response from {realm} has no token")).into()
            })
    }

    /// Every page of a paginated list (`Link: <next>; rel="next"`), each parsed by `items`.
    async fn list_pages(
        &self,
        first: String,
        scope: &str,
        what: &str,
        items: impl Fn(serde_json::Value) -> Vec<String>,
    ) -> Result<Result<Vec<String>, (StatusCode, String)>, LifecycleError> {
        let mut out = Vec::new();
        let mut next = Some(first);
        while let Some(path) = next.take() {
            let response = self.send(Method::GET, &path, scope, &[], what).await?;
            let status = response.status();
            if !status.is_success() {
                let body = response.text().await.unwrap_or_default();
                return Ok(Err((status, body)));
            }
            next = response
                .headers()
                .get(header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(next_link);
            let body: serde_json::Value = response
                .json()
                .await
                .map_err(|e| self.failed(what, format!("malformed list: {e}")))?;
            out.extend(items(body));
        }
        Ok(Ok(out))
    }

    async fn tags(&self, repository: &str) -> Result<Vec<String>, LifecycleError> {
        let scope = pull_scope(repository);
        let listed = self
            .list_pages(
                format!("/v2/{repository}/tags/list?n={PAGE}"),
                &scope,
                repository,
                |body| strings(&body["tags"]),
            )
            .await?;
        match listed {
            Ok(tags) => Ok(tags),
            // A repository that does not exist (yet, or any more) has no images.
            Err((StatusCode::NOT_FOUND, _)) => Ok(Vec::new()),
            Err((status, body)) => Err(self.failed(
                repository,
                format!("listing tags: HTTP {status}: {}", truncate(&body)),
            )),
        }
    }

    /// The manifest `reference` (tag or digest) of `repository`: bytes and digest; `None` when
    /// it is gone (a tag deleted while listing).
    async fn manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<(Vec<u8>, String)>, LifecycleError> {
        let image = format!("{}/{repository}:{reference}", self.host);
        let response = self
            .send(
                Method::GET,
                &format!("/v2/{repository}/manifests/{reference}"),
                &pull_scope(repository),
                oci::MANIFEST_TYPES,
                &image,
            )
            .await?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(self.failed(
                &image,
                format!("manifest: HTTP {status}: {}", truncate(&body)),
            ));
        }
        if response.content_length().is_some_and(|n| n > MAX_MANIFEST) {
            return Err(self.failed(&image, "the manifest is too large".into()));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.failed(&image, format!("manifest: {}", chain(&e))))?;
        let digest = sha256_digest(&bytes);
        if reference.starts_with("sha256:") && digest != reference {
            return Err(RegistryError::DigestMismatch {
                location: self.location(),
                image,
                what: "manifest".into(),
                expected: reference.to_string(),
                actual: digest,
            }
            .into());
        }
        Ok(Some((bytes.to_vec(), digest)))
    }

    /// The config's `created`, `None` when it has none, is unreadable or is not an image config.
    async fn created(
        &self,
        repository: &str,
        config: &oci::Descriptor,
    ) -> Result<Option<OffsetDateTime>, LifecycleError> {
        if let Some(known) = self.created.lock().await.get(&config.digest) {
            return Ok(*known);
        }
        let created = if config.size > MAX_CONFIG {
            None
        } else {
            let what = format!("{}/{repository}@{} (config)", self.host, config.digest);
            let response = self
                .send(
                    Method::GET,
                    &format!("/v2/{repository}/blobs/{}", config.digest),
                    &pull_scope(repository),
                    &[],
                    &what,
                )
                .await?;
            if response.status().is_success() {
                let bytes = response
                    .bytes()
                    .await
                    .map_err(|e| self.failed(&what, chain(&e)))?;
                parse_created(&bytes)
            } else {
                tracing::warn!(%what, status = %response.status(), "cannot read the image config; its creation time is unknown");
                None
            }
        };
        self.created
            .lock()
            .await
            .insert(config.digest.clone(), created);
        Ok(created)
    }

    /// Everything about one manifest: sizes, blobs, creation time, platform manifests.
    async fn inspect(
        &self,
        repository: &str,
        digest: &str,
        raw: &[u8],
        tags: Vec<String>,
    ) -> Result<StoredImage, LifecycleError> {
        let mut image = StoredImage {
            repository: repository.to_string(),
            digest: digest.to_string(),
            tags,
            created: None,
            bytes: 0,
            blobs: vec![Blob {
                digest: digest.to_string(),
                size: raw.len() as u64,
            }],
            children: Vec::new(),
        };
        let shown = format!("{}/{repository}@{digest}", self.host);
        let malformed = |reason: String| self.failed(&shown, format!("manifest: {reason}"));
        match oci::parse_manifest(raw) {
            Ok(Manifest::Image(manifest)) => {
                self.add_image_manifest(repository, &manifest, &mut image)
                    .await?;
            }
            Ok(Manifest::Index(index)) => {
                for entry in &index.manifests {
                    image.children.push(entry.digest.clone());
                    let Some((child_raw, child_digest)) =
                        self.manifest(repository, &entry.digest).await?
                    else {
                        continue;
                    };
                    image.blobs.push(Blob {
                        digest: child_digest,
                        size: child_raw.len() as u64,
                    });
                    // Nested indexes and artifacts only count their own manifest bytes.
                    if let Ok(Manifest::Image(manifest)) = oci::parse_manifest(&child_raw) {
                        self.add_image_manifest(repository, &manifest, &mut image)
                            .await?;
                    }
                }
            }
            Err(oci::ManifestError::Malformed(reason)) => return Err(malformed(reason)),
            Err(oci::ManifestError::Unsupported(media_type)) => {
                tracing::debug!(image = %shown, %media_type, "not an image manifest; counting its own bytes only");
            }
        }
        Ok(image)
    }

    async fn add_image_manifest(
        &self,
        repository: &str,
        manifest: &oci::ImageManifest,
        image: &mut StoredImage,
    ) -> Result<(), LifecycleError> {
        let created = self.created(repository, &manifest.config).await?;
        image.created = image.created.max(created);
        for desc in std::iter::once(&manifest.config).chain(&manifest.layers) {
            image.bytes += desc.size;
            image.blobs.push(Blob {
                digest: desc.digest.clone(),
                size: desc.size,
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Catalog for DistributionCatalog {
    fn describe(&self) -> String {
        self.location()
    }

    async fn repositories(&self) -> Result<Vec<String>, LifecycleError> {
        let listed = self
            .list_pages(
                format!("/v2/_catalog?n={PAGE}"),
                "registry:catalog:*",
                "the repository list",
                |body| strings(&body["repositories"]),
            )
            .await;
        let listed = match listed {
            Ok(listed) => listed,
            // Allowed in, but not to the catalog (403): registries that keep it to admins.
            // A 401 stays a credentials error: the login itself was refused.
            Err(LifecycleError::Registry(RegistryError::CredentialsRefused {
                status: 403,
                ..
            })) => Err((StatusCode::FORBIDDEN, String::new())),
            Err(e) => return Err(e),
        };
        let mut names = listed.map_err(|(status, body)| LifecycleError::CatalogUnsupported {
            location: self.location(),
            detail: format!("GET /v2/_catalog: HTTP {status} {}", truncate(&body))
                .trim_end()
                .to_string(),
        })?;
        if let Some(prefix) = &self.prefix {
            names.retain(|n| n.starts_with(&format!("{prefix}/")));
        }
        names.sort();
        Ok(names)
    }

    async fn images(&self, repository: &str) -> Result<Vec<StoredImage>, LifecycleError> {
        let tags = self.tags(repository).await?;
        let manifests: Vec<(String, Option<(Vec<u8>, String)>)> = stream::iter(tags)
            .map(|tag| async move {
                let manifest = self.manifest(repository, &tag).await?;
                Ok::<_, LifecycleError>((tag, manifest))
            })
            .buffered(PARALLEL)
            .try_collect()
            .await?;
        // One image per digest, with every tag pointing at it.
        let mut by_digest: BTreeMap<String, (Vec<u8>, Vec<String>)> = BTreeMap::new();
        for (tag, manifest) in manifests {
            if let Some((raw, digest)) = manifest {
                by_digest
                    .entry(digest)
                    .or_insert_with(|| (raw, Vec::new()))
                    .1
                    .push(tag);
            }
        }
        let mut images = Vec::with_capacity(by_digest.len());
        for (digest, (raw, mut tags)) in by_digest {
            tags.sort();
            images.push(self.inspect(repository, &digest, &raw, tags).await?);
        }
        // A manifest that is a platform of a listed index belongs to that index's image; it is
        // listed on its own only when it also has tags of its own.
        Ok(images)
    }

    async fn delete(&self, repository: &str, digest: &str) -> Result<(), LifecycleError> {
        let image = format!("{}/{repository}@{digest}", self.host);
        let response = self
            .send(
                Method::DELETE,
                &format!("/v2/{repository}/manifests/{digest}"),
                &format!("repository:{repository}:delete"),
                &[],
                &image,
            )
            .await?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        let code = error_code(&body);
        match status {
            s if s.is_success() => Ok(()),
            // Already gone: deleting twice is not an error.
            StatusCode::NOT_FOUND => Ok(()),
            StatusCode::METHOD_NOT_ALLOWED => Err(LifecycleError::DeleteRefused {
                location: self.location(),
                detail: format!(
                    "HTTP {status}{}",
                    code.map(|c| format!(" {c}")).unwrap_or_default()
                ),
            }),
            _ if code.as_deref() == Some("UNSUPPORTED") => Err(LifecycleError::DeleteRefused {
                location: self.location(),
                detail: format!("HTTP {status} UNSUPPORTED"),
            }),
            _ => Err(self.failed(
                &image,
                format!("delete: HTTP {status}: {}", truncate(&body)),
            )),
        }
    }
}

fn pull_scope(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

fn basic(username: &str, password: &str) -> String {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    format!("Basic {encoded}")
}

fn strings(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// The first error code of a distribution error body (`{"errors":[{"code":…}]}`).
fn error_code(body: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    value["errors"][0]["code"].as_str().map(str::to_string)
}

/// The image config's `created` (RFC 3339).
fn parse_created(config: &[u8]) -> Option<OffsetDateTime> {
    #[derive(serde::Deserialize)]
    struct Created {
        created: Option<String>,
    }
    let created: Created = serde_json::from_slice(config).ok()?;
    OffsetDateTime::parse(created.created?.as_str(), &Rfc3339).ok()
}

/// The path and query of a `Link: </v2/…?last=x&n=100>; rel="next"` header.
fn next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        if !params.contains("rel=\"next\"") && !params.contains("rel=next") {
            return None;
        }
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        // Registries send a path; some send an absolute URL on the same host.
        target.find("/v2/").map(|at| target[at..].to_string())
    })
}

/// Parses `Bearer realm="…",service="…",scope="a:b:pull,push"` (quoted values may hold commas).
fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    Some(Challenge {
        scheme: scheme.to_string(),
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="reg.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "Bearer");
        assert_eq!(c.params["realm"], "https://auth.example/token");
        assert_eq!(c.params["scope"], "repository:a/b:pull,push");
        let c = parse_challenge(r#"Basic realm="kiln-test""#).unwrap();
        assert_eq!(
            (c.scheme.as_str(), c.params["realm"].as_str()),
            ("Basic", "kiln-test")
        );
    }

    #[test]
    fn follows_links_and_reads_configs() {
        assert_eq!(
            next_link(r#"</v2/_catalog?last=b&n=2>; rel="next""#).as_deref(),
            Some("/v2/_catalog?last=b&n=2")
        );
        assert_eq!(
            next_link(r#"<https://r.example/v2/a/tags/list?last=x>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?last=x")
        );
        assert_eq!(next_link(r#"</v2/x>; rel="prev""#), None);
        let created = parse_created(br#"{"created":"2024-01-02T03:04:05.123456789Z"}"#).unwrap();
        assert_eq!(created.unix_timestamp(), 1_704_164_645);
        assert_eq!(parse_created(br#"{"architecture":"amd64"}"#), None);
        assert_eq!(
            error_code(r#"{"errors":[{"code":"UNSUPPORTED"}]}"#).as_deref(),
            Some("UNSUPPORTED")
        );
    }
}
