//! [`RemoteRegistry`]: any OCI distribution-spec registry, through `oci-client`.
//!
//! oci-client does the HTTP: `Accept` headers, the `WWW-Authenticate` dance (Basic, or a Bearer
//! token fetched from the challenge's realm), plain HTTP for the hosts given in
//! `ClientProtocol::HttpsExcept`, digest checks of manifests and blobs. This module decides what
//! to fetch (an index is resolved to linux/amd64 here, so the error can list the platforms it
//! has), writes blobs into the [`BlobCache`], and turns oci-client's errors into
//! [`RegistryError`]s that name the registry and the image.
//!
//! A new oci-client `Client` is made for every pull or copy: its auth store keeps the first
//! credentials it sees for a host forever, and one pull's credentials must not leak into the
//! next one's.

use crate::{
    Credentials, Image, Layer, Registry, RegistryError,
    auth::{AuthSource, StaticAuth},
    cache::{BlobCache, sha256_digest},
    error::chain,
    oci::{self, ConfigFile, Descriptor, ImageManifest, Manifest, ManifestError},
    reference::{ImageName, is_loopback},
};
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt, TryStreamExt, stream};
use oci_client::{
    Client, Reference,
    client::{ClientConfig, ClientProtocol},
    errors::{DigestError, OciDistributionError, OciErrorCode},
    secrets::RegistryAuth,
};
use std::{fmt, path::Path, path::PathBuf, sync::Arc, time::Duration};

/// Layers fetched at once per pull.
const PARALLEL_BLOBS: usize = 3;
/// Pushed blob chunks are this big (oci-client's own chunk size), not the network's few KiB.
const PUSH_CHUNK: usize = 4 * 1024 * 1024;
/// An image config larger than this is not a config.
const MAX_CONFIG: u64 = 16 * 1024 * 1024;

/// A distribution-spec registry at `host`, with images under an optional `prefix`
/// (`name:tag` is pulled as `host/prefix/name:tag`).
pub struct RemoteRegistry {
    host: String,
    prefix: Option<String>,
    auth: Arc<dyn AuthSource>,
    plain_http: bool,
    blob_mounts: bool,
    cache: BlobCache,
}

impl fmt::Debug for RemoteRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteRegistry")
            .field("host", &self.host)
            .field("prefix", &self.prefix)
            .field("plain_http", &self.plain_http)
            .finish_non_exhaustive()
    }
}

/// What a request was for: decides whether a 404 means "no such image".
#[derive(Clone, Copy)]
enum Op<'a> {
    Manifest,
    PlatformManifest,
    Blob(&'a str),
    Push(&'a str),
}

impl fmt::Display for Op<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Manifest => f.write_str("manifest"),
            Op::PlatformManifest => f.write_str("linux/amd64 manifest"),
            Op::Blob(what) => write!(f, "{what}"),
            Op::Push(what) => write!(f, "pushing {what}"),
        }
    }
}

/// The image a request is about, for errors.
struct Ctx {
    image: String,
    repository: String,
    anonymous: bool,
}

impl RemoteRegistry {
    /// A registry reached with `credentials` unless a pull brings its own. Plain HTTP for
    /// loopback hosts; see [`RemoteRegistry::plain_http`].
    pub fn new(
        host: &str,
        prefix: Option<&str>,
        credentials: Credentials,
        cache_dir: &Path,
    ) -> RemoteRegistry {
        RemoteRegistry::with_auth(host, prefix, Arc::new(StaticAuth(credentials)), cache_dir)
    }

    pub(crate) fn with_auth(
        host: &str,
        prefix: Option<&str>,
        auth: Arc<dyn AuthSource>,
        cache_dir: &Path,
    ) -> RemoteRegistry {
        RemoteRegistry {
            host: host.to_string(),
            prefix: prefix
                .map(|p| p.trim_matches('/').to_string())
                .filter(|p| !p.is_empty()),
            auth,
            plain_http: is_loopback(host),
            blob_mounts: true,
            cache: BlobCache::new(cache_dir),
        }
    }

    /// Speak plain HTTP (`true`) or HTTPS to this registry.
    pub fn plain_http(mut self, plain: bool) -> RemoteRegistry {
        self.plain_http = plain;
        self
    }

    /// Whether [`Registry::copy`] may ask the registry to mount blobs across repositories
    /// (default); without, it streams every blob the target lacks through this host.
    pub fn blob_mounts(mut self, allowed: bool) -> RemoteRegistry {
        self.blob_mounts = allowed;
        self
    }

    pub(crate) fn auth_source(&self) -> Arc<dyn AuthSource> {
        self.auth.clone()
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn prefix(&self) -> Option<&str> {
        self.prefix.as_deref()
    }

    fn location(&self) -> String {
        format!("registry {}", self.host)
    }

    /// The oci-client reference and its display form (`host/repo:tag`) for a relative name.
    fn reference(&self, name: &ImageName) -> (Reference, String) {
        let mut name = name.under(self.prefix.as_deref());
        // Docker Hub's official images live under library/.
        if matches!(self.host.as_str(), "docker.io" | "index.docker.io")
            && !name.repository.contains('/')
        {
            name.repository = format!("library/{}", name.repository);
        }
        let shown = format!("{}/{name}", self.host);
        let reference = match (&name.digest, &name.tag) {
            (Some(digest), _) => {
                Reference::with_digest(self.host.clone(), name.repository, digest.clone())
            }
            (None, tag) => Reference::with_tag(
                self.host.clone(),
                name.repository,
                tag.clone().unwrap_or_else(|| "latest".to_string()),
            ),
        };
        (reference, shown)
    }

    fn client(&self, image: &str) -> Result<Client, RegistryError> {
        let protocol = if self.plain_http {
            ClientProtocol::HttpsExcept(vec![self.host.clone()])
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            protocol,
            // Indexes are resolved by this module, to report the platforms an image has.
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(120)),
            user_agent: concat!("kiln/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        Client::try_from(config).map_err(|e| RegistryError::Failed {
            location: self.location(),
            image: image.to_string(),
            message: format!("cannot make an HTTP client: {}", chain(&e)),
        })
    }

    fn map_error(&self, err: OciDistributionError, ctx: &Ctx, op: Op<'_>) -> RegistryError {
        use OciDistributionError as E;
        let location = self.location();
        let by_status = |status: u16, detail: String| match status {
            401 if ctx.anonymous => RegistryError::CredentialsRequired {
                location: location.clone(),
                repository: ctx.repository.clone(),
                status,
            },
            401 | 403 => RegistryError::CredentialsRefused {
                location: location.clone(),
                repository: ctx.repository.clone(),
                status,
            },
            404 if matches!(op, Op::Manifest) => RegistryError::NotFound {
                location: location.clone(),
                image: ctx.image.clone(),
            },
            _ => RegistryError::Failed {
                location: location.clone(),
                image: ctx.image.clone(),
                message: format!("{op}: HTTP {status}: {}", truncate(&detail)),
            },
        };
        match err {
            E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => {
                by_status(401, String::new())
            }
            E::RegistryError { envelope, .. } => {
                let detail = envelope.to_string();
                match envelope.errors.first().map(|e| &e.code) {
                    Some(
                        OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound,
                    ) => by_status(404, detail),
                    Some(OciErrorCode::Unauthorized) => by_status(401, detail),
                    Some(OciErrorCode::Denied) => by_status(403, detail),
                    _ => RegistryError::Failed {
                        location,
                        image: ctx.image.clone(),
                        message: format!("{op}: {}", truncate(&detail)),
                    },
                }
            }
            E::ServerError { code, message, .. } => by_status(code, message),
            E::RequestError(e) if e.is_connect() || e.is_timeout() || e.is_request() => {
                let mut reason = chain(&e);
                // The usual cause: HTTPS spoken to a registry that serves plain HTTP.
                let lower = reason.to_ascii_lowercase();
                if !self.plain_http && (lower.contains("tls") || lower.contains("corrupt message"))
                {
                    reason.push_str(" (spoken to over HTTPS; if it serves plain HTTP, add it to KILN_INSECURE_REGISTRIES)");
                }
                RegistryError::Unreachable { location, reason }
            }
            E::DigestError(DigestError::VerificationError { expected, actual }) => {
                RegistryError::DigestMismatch {
                    location,
                    image: ctx.image.clone(),
                    what: op.to_string(),
                    expected,
                    actual,
                }
            }
            E::UnsupportedMediaTypeError(media_type) => RegistryError::UnsupportedMediaType {
                location,
                image: ctx.image.clone(),
                what: op.to_string(),
                media_type,
            },
            other => RegistryError::Failed {
                location,
                image: ctx.image.clone(),
                message: format!("{op}: {}", chain(&other)),
            },
        }
    }

    /// The image manifest of `reference`, resolving an index to linux/amd64. Returns the
    /// manifest, its bytes as served, and its digest.
    async fn image_manifest(
        &self,
        client: &Client,
        reference: &Reference,
        auth: &RegistryAuth,
        ctx: &Ctx,
    ) -> Result<(ImageManifest, Bytes, String), RegistryError> {
        let (raw, _) = client
            .pull_manifest_raw(reference, auth, oci::MANIFEST_TYPES)
            .await
            .map_err(|e| self.map_error(e, ctx, Op::Manifest))?;
        let digest = sha256_digest(&raw);
        match self.parse(&raw, ctx, "manifest")? {
            Manifest::Image(manifest) => Ok((*manifest, raw, digest)),
            Manifest::Index(index) => {
                let entry = index.linux_amd64().map_err(|available| {
                    RegistryError::UnsupportedPlatform {
                        location: self.location(),
                        image: ctx.image.clone(),
                        available,
                    }
                })?;
                tracing::debug!(image = %ctx.image, index = %digest, manifest = %entry.digest, "resolved index to linux/amd64");
                let child = reference.clone_with_digest(entry.digest.clone());
                // oci-client checks the bytes against the digest in the reference.
                let (raw, _) = client
                    .pull_manifest_raw(&child, auth, oci::MANIFEST_TYPES)
                    .await
                    .map_err(|e| self.map_error(e, ctx, Op::PlatformManifest))?;
                match self.parse(&raw, ctx, "linux/amd64 manifest")? {
                    Manifest::Image(manifest) => Ok((*manifest, raw, entry.digest.clone())),
                    Manifest::Index(_) => Err(RegistryError::Failed {
                        location: self.location(),
                        image: ctx.image.clone(),
                        message: "the index's linux/amd64 entry is another index".into(),
                    }),
                }
            }
        }
    }

    fn parse(&self, raw: &[u8], ctx: &Ctx, what: &str) -> Result<Manifest, RegistryError> {
        oci::parse_manifest(raw).map_err(|e| match e {
            ManifestError::Unsupported(media_type) => RegistryError::UnsupportedMediaType {
                location: self.location(),
                image: ctx.image.clone(),
                what: what.to_string(),
                media_type,
            },
            ManifestError::Malformed(reason) => RegistryError::Failed {
                location: self.location(),
                image: ctx.image.clone(),
                message: format!("malformed {what}: {reason}"),
            },
        })
    }

    /// The blob `desc` as a cached file: from the cache, or streamed from the registry.
    async fn fetch_blob(
        &self,
        client: &Client,
        reference: &Reference,
        desc: &Descriptor,
        ctx: &Ctx,
        what: &str,
    ) -> Result<PathBuf, RegistryError> {
        if let Some(path) = self.cache.get(&desc.digest, desc.size) {
            tracing::debug!(digest = %desc.digest, "blob already cached");
            return Ok(path);
        }
        let location = self.location();
        let blob_err = |e: crate::cache::BlobError| e.into_registry(&location, &ctx.image, what);
        let mut pending = self
            .cache
            .writer(&desc.digest, desc.size)
            .await
            .map_err(blob_err)?;
        client
            .pull_blob(reference, desc.digest.as_str(), &mut pending)
            .await
            .map_err(|e| self.map_error(e, ctx, Op::Blob(what)))?;
        let path = pending.commit().await.map_err(blob_err)?;
        tracing::debug!(digest = %desc.digest, size = desc.size, "blob downloaded");
        Ok(path)
    }

    async fn fetch_layer(
        &self,
        client: &Client,
        reference: &Reference,
        desc: &Descriptor,
        ctx: &Ctx,
        index: usize,
    ) -> Result<Layer, RegistryError> {
        let what = format!("layer {index} ({})", desc.digest);
        let path = self.fetch_blob(client, reference, desc, ctx, &what).await?;
        Ok(Layer {
            digest: desc.digest.clone(),
            media_type: desc.media_type.clone(),
            size: desc.size,
            path,
        })
    }

    async fn credentials_for(
        &self,
        credentials: &Credentials,
    ) -> Result<Credentials, RegistryError> {
        match credentials {
            Credentials::Anonymous => self.auth.credentials().await,
            given => Ok(given.clone()),
        }
    }

    /// Copies one blob between repositories of this registry: nothing if it is there, a
    /// cross-repository mount if the registry allows it, else streamed through this host.
    async fn copy_blob(
        &self,
        client: &Client,
        from: &Reference,
        to: &Reference,
        desc: &Descriptor,
        ctx: &Ctx,
        what: &str,
    ) -> Result<(), RegistryError> {
        if client.blob_exists(to, &desc.digest).await.unwrap_or(false) {
            return Ok(());
        }
        if self.blob_mounts {
            match client.mount_blob(to, from, &desc.digest).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::debug!(digest = %desc.digest, error = %e, "blob mount refused; copying the bytes")
                }
            }
        }
        let source = client
            .pull_blob_stream(from, desc.digest.as_str())
            .await
            .map_err(|e| self.map_error(e, ctx, Op::Blob(what)))?;
        client
            .push_blob_stream(
                to,
                rechunk(source, PUSH_CHUNK),
                &desc.digest,
                Some(desc.size),
            )
            .await
            .map_err(|e| self.map_error(e, ctx, Op::Push(what)))?;
        Ok(())
    }
}

fn to_registry_auth(credentials: &Credentials) -> RegistryAuth {
    match credentials {
        Credentials::Anonymous => RegistryAuth::Anonymous,
        Credentials::Basic { username, password } => {
            RegistryAuth::Basic(username.clone(), password.clone())
        }
        Credentials::Bearer(token) => RegistryAuth::Bearer(token.clone()),
    }
}

/// Registry error bodies can be whole HTML pages.
pub(crate) fn truncate(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// Regroups a byte stream into `size`-byte chunks (the last may be shorter): oci-client sends
/// one PATCH per item, and network reads are a few KiB.
fn rechunk(
    source: impl Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    size: usize,
) -> impl Stream<Item = Result<Bytes, OciDistributionError>> + Send + 'static {
    stream::unfold(
        (source.boxed(), BytesMut::new(), false),
        move |(mut source, mut buf, done)| async move {
            if done {
                return None;
            }
            loop {
                match source.next().await {
                    Some(Ok(bytes)) => {
                        buf.extend_from_slice(&bytes);
                        if buf.len() >= size {
                            let chunk = buf.split_to(size).freeze();
                            return Some((Ok(chunk), (source, buf, false)));
                        }
                    }
                    Some(Err(e)) => return Some((Err(e.into()), (source, buf, true))),
                    None if buf.is_empty() => return None,
                    None => return Some((Ok(buf.split().freeze()), (source, buf, true))),
                }
            }
        },
    )
}

#[async_trait::async_trait]
impl Registry for RemoteRegistry {
    fn describe(&self) -> String {
        self.location()
    }

    async fn pull(&self, name: &str, credentials: &Credentials) -> Result<Image, RegistryError> {
        let parsed = ImageName::parse(name)?;
        let (reference, shown) = self.reference(&parsed);
        let credentials = self.credentials_for(credentials).await?;
        let ctx = Ctx {
            image: shown.clone(),
            repository: reference.repository().to_string(),
            anonymous: credentials == Credentials::Anonymous,
        };
        let auth = to_registry_auth(&credentials);
        let client = self.client(&shown)?;
        tracing::info!(image = %shown, "pulling image");

        let (manifest, _, manifest_digest) = self
            .image_manifest(&client, &reference, &auth, &ctx)
            .await?;
        if let Some((what, media_type)) = manifest.unsupported_part() {
            return Err(RegistryError::UnsupportedMediaType {
                location: self.location(),
                image: shown,
                what,
                media_type,
            });
        }
        if manifest.config.size > MAX_CONFIG {
            return Err(RegistryError::Failed {
                location: self.location(),
                image: shown,
                message: format!("the config claims {} bytes", manifest.config.size),
            });
        }
        let config_path = self
            .fetch_blob(&client, &reference, &manifest.config, &ctx, "config")
            .await?;
        let config = tokio::fs::read(&config_path)
            .await
            .map_err(|e| RegistryError::cache(&config_path, e))?;
        let config: ConfigFile =
            serde_json::from_slice(&config).map_err(|e| RegistryError::Failed {
                location: self.location(),
                image: shown.clone(),
                message: format!("malformed config: {e}"),
            })?;
        if let Some(platform) = config.foreign_platform() {
            return Err(RegistryError::UnsupportedPlatform {
                location: self.location(),
                image: shown,
                available: platform,
            });
        }

        let fetches: Vec<_> = manifest
            .layers
            .iter()
            .enumerate()
            .map(|(i, desc)| self.fetch_layer(&client, &reference, desc, &ctx, i))
            .collect();
        let layers: Vec<Layer> = stream::iter(fetches)
            .buffered(PARALLEL_BLOBS)
            .try_collect()
            .await?;
        tracing::info!(image = %shown, digest = %manifest_digest, layers = layers.len(), "pulled image");
        Ok(Image {
            reference: shown,
            manifest_digest,
            config: config.into_image_config(),
            layers,
        })
    }

    async fn copy(&self, from: &str, to: &str) -> Result<(), RegistryError> {
        let from_name = ImageName::parse(from)?;
        let to_name = ImageName::parse(to)?;
        if to_name.digest.is_some() {
            return Err(RegistryError::InvalidReference {
                reference: to.to_string(),
                reason: "a copy needs a tag to copy to, not a digest".into(),
            });
        }
        let (from_ref, from_display) = self.reference(&from_name);
        let (to_ref, to_display) = self.reference(&to_name);
        let credentials = self.auth.credentials().await?;
        let auth = to_registry_auth(&credentials);
        let anonymous = credentials == Credentials::Anonymous;
        let client = self.client(&from_display)?;
        let from_ctx = Ctx {
            image: from_display.clone(),
            repository: from_ref.repository().to_string(),
            anonymous,
        };
        let to_ctx = Ctx {
            image: to_display.clone(),
            repository: to_ref.repository().to_string(),
            anonymous,
        };
        let (manifest, raw, digest) = self
            .image_manifest(&client, &from_ref, &auth, &from_ctx)
            .await?;
        // Pushes use the credentials stored for the host (oci-client asks for a push-scoped
        // token itself when the registry wants one).
        client.store_auth_if_needed(&self.host, &auth).await;
        for (i, desc) in std::iter::once(&manifest.config)
            .chain(&manifest.layers)
            .enumerate()
        {
            let what = if i == 0 {
                "config".to_string()
            } else {
                format!("layer {} ({})", i - 1, desc.digest)
            };
            self.copy_blob(&client, &from_ref, &to_ref, desc, &to_ctx, &what)
                .await?;
        }
        let content_type = http::HeaderValue::from_str(manifest.content_type()).map_err(|_| {
            RegistryError::UnsupportedMediaType {
                location: self.location(),
                image: from_display.clone(),
                what: "manifest".into(),
                media_type: manifest.content_type().to_string(),
            }
        })?;
        client
            .push_manifest_raw(&to_ref, raw, content_type)
            .await
            .map_err(|e| self.map_error(e, &to_ctx, Op::Push("manifest")))?;
        tracing::info!(from = %from_display, to = %to_display, %digest, "copied image");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rechunks_to_fixed_sizes() {
        let parts: Vec<std::io::Result<Bytes>> =
            (0..10).map(|_| Ok(Bytes::from_static(b"abc"))).collect();
        let chunks: Vec<Bytes> = rechunk(stream::iter(parts), 8).try_collect().await.unwrap();
        let sizes: Vec<usize> = chunks.iter().map(Bytes::len).collect();
        assert_eq!(sizes, [8, 8, 8, 6]);
    }

    #[test]
    fn references_under_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let r = RemoteRegistry::new(
            "iad.ocir.io",
            Some("/ns/repo/"),
            Credentials::Anonymous,
            dir.path(),
        );
        let (reference, shown) = r.reference(&ImageName::parse("python:3.10-slim").unwrap());
        assert_eq!(shown, "iad.ocir.io/ns/repo/python:3.10-slim");
        assert_eq!(reference.repository(), "ns/repo/python");
        assert!(!r.plain_http);
        let hub = RemoteRegistry::new("docker.io", None, Credentials::Anonymous, dir.path());
        assert_eq!(
            hub.reference(&ImageName::parse("busybox").unwrap()).1,
            "docker.io/library/busybox:latest"
        );
        assert!(
            RemoteRegistry::new("127.0.0.1:5000", None, Credentials::Anonymous, dir.path())
                .plain_http
        );
    }
}
