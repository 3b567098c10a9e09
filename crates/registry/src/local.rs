//! [`LocalStore`]: images kept on this machine in an OCI image layout (`<kiln_home>/images`:
//! `oci-layout`, `index.json`, `blobs/sha256/…`), for hosts without a registry. [`import`] fills
//! it from an image layout or a `docker save` archive.
//!
//! Each image is an `index.json` entry whose `org.opencontainers.image.ref.name` annotation is
//! its full name, `name:tag` (Docker Hub's `docker.io/library/` left out). Entries written by
//! other tools are read too: a bare-tag `ref.name` falls back to containerd's
//! `io.containerd.image.name`.
//!
//! Invariants:
//! - The store's blobs are verified on the way in (it is a [`BlobCache`]), so a pull only
//!   re-checks what it copies into the cache.
//! - `index.json` is replaced atomically (temp file + rename) while holding an exclusive
//!   `flock` on the store directory, so concurrent imports and copies do not lose entries and
//!   readers never see a partial file; readers take no lock.
//! - An entry is added only after every blob it needs is in the store.

use crate::{
    Credentials, Image, Layer, Registry, RegistryError,
    cache::{BlobCache, BlobError, sha256_digest},
    oci::{
        self, CONTAINERD_NAME, ConfigFile, Descriptor, ImageIndex, ImageManifest, Manifest,
        ManifestError, REF_NAME,
    },
    reference::{ImageName, local_name, validate_digest},
};
use serde::Deserialize;
use std::{
    collections::{BTreeMap, HashSet},
    fs,
    io::{self, BufReader, Read, Seek, Write},
    path::{Component, Path, PathBuf},
};

/// Manifests and indexes larger than this are not manifests.
const MAX_MANIFEST: u64 = 8 * 1024 * 1024;
const MAX_CONFIG: u64 = 16 * 1024 * 1024;
/// How deep indexes may nest (an index of indexes is already unusual).
const MAX_DEPTH: usize = 2;

/// An OCI image layout directory used as an image provider.
#[derive(Clone, Debug)]
pub struct LocalStore {
    root: PathBuf,
    store: BlobCache,
    cache: BlobCache,
}

impl LocalStore {
    /// The store at `root` (usually `<kiln_home>/images`); pulled layers go to `cache_dir`.
    pub fn new(root: &Path, cache_dir: &Path) -> LocalStore {
        LocalStore {
            root: root.to_path_buf(),
            store: BlobCache::new(root),
            cache: BlobCache::new(cache_dir),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn location(&self) -> String {
        store_location(&self.root)
    }

    fn pull_blocking(&self, name: &str) -> Result<Image, RegistryError> {
        let wanted = local_name(name)?;
        let shown = wanted.to_string();
        let location = self.location();
        let index = read_index(&self.root)?;
        let descriptor = match &wanted.digest {
            Some(digest) => self.by_digest(&index, digest),
            None => index
                .manifests
                .iter()
                .rev()
                .find(|entry| entry_name(entry).as_deref() == Some(shown.as_str()))
                .cloned(),
        }
        .ok_or_else(|| RegistryError::NotFound {
            location: location.clone(),
            image: shown.clone(),
        })?;

        let (manifest, manifest_digest) = self.image_manifest(&descriptor, &shown)?;
        if let Some((what, media_type)) = manifest.unsupported_part() {
            return Err(RegistryError::UnsupportedMediaType {
                location,
                image: shown,
                what,
                media_type,
            });
        }
        let config = self
            .store
            .read_verified(&manifest.config.digest, MAX_CONFIG)
            .map_err(|e| self.blob_error(e, &shown, "config"))?;
        let config: ConfigFile =
            serde_json::from_slice(&config).map_err(|e| RegistryError::Failed {
                location: location.clone(),
                image: shown.clone(),
                message: format!("malformed config: {e}"),
            })?;
        if let Some(platform) = config.foreign_platform() {
            return Err(RegistryError::UnsupportedPlatform {
                location,
                image: shown,
                available: platform,
            });
        }
        let mut layers = Vec::with_capacity(manifest.layers.len());
        for (i, desc) in manifest.layers.iter().enumerate() {
            let what = format!("layer {i} ({})", desc.digest);
            let source =
                self.store
                    .get(&desc.digest, desc.size)
                    .ok_or_else(|| RegistryError::Failed {
                        location: location.clone(),
                        image: shown.clone(),
                        message: format!("{what} is missing from the store"),
                    })?;
            let (_, _, path) = self
                .cache
                .insert_file(Some((&desc.digest, desc.size)), &source)
                .map_err(|e| self.blob_error(e, &shown, &what))?;
            layers.push(Layer {
                digest: desc.digest.clone(),
                media_type: desc.media_type.clone(),
                size: desc.size,
                path,
            });
        }
        tracing::info!(image = %shown, digest = %manifest_digest, store = %self.root.display(), "pulled image from the local store");
        Ok(Image {
            reference: shown,
            manifest_digest,
            config: config.into_image_config(),
            layers,
        })
    }

    /// An index entry with `digest`, else the blob itself if the store has it.
    fn by_digest(&self, index: &ImageIndex, digest: &str) -> Option<Descriptor> {
        if let Some(entry) = index.manifests.iter().find(|e| e.digest == digest) {
            return Some(entry.clone());
        }
        let path = self.store.path(digest)?;
        let size = fs::metadata(path).ok()?.len();
        Some(Descriptor::new("", digest.to_string(), size))
    }

    /// The linux/amd64 image manifest `descriptor` names (itself, or through an index).
    fn image_manifest(
        &self,
        descriptor: &Descriptor,
        shown: &str,
    ) -> Result<(ImageManifest, String), RegistryError> {
        let mut descriptor = descriptor.clone();
        for _ in 0..=MAX_DEPTH {
            let bytes = self
                .store
                .read_verified(&descriptor.digest, MAX_MANIFEST)
                .map_err(|e| self.blob_error(e, shown, "manifest"))?;
            match oci::parse_manifest(&bytes) {
                Ok(Manifest::Image(manifest)) => return Ok((*manifest, descriptor.digest)),
                Ok(Manifest::Index(index)) => {
                    descriptor = index.linux_amd64().cloned().map_err(|available| {
                        RegistryError::UnsupportedPlatform {
                            location: self.location(),
                            image: shown.to_string(),
                            available,
                        }
                    })?;
                }
                Err(ManifestError::Unsupported(media_type)) => {
                    return Err(RegistryError::UnsupportedMediaType {
                        location: self.location(),
                        image: shown.to_string(),
                        what: "manifest".into(),
                        media_type,
                    });
                }
                Err(ManifestError::Malformed(reason)) => {
                    return Err(RegistryError::Failed {
                        location: self.location(),
                        image: shown.to_string(),
                        message: format!("malformed manifest: {reason}"),
                    });
                }
            }
        }
        Err(RegistryError::Failed {
            location: self.location(),
            image: shown.to_string(),
            message: "indexes nest too deep".into(),
        })
    }

    fn blob_error(&self, err: BlobError, image: &str, what: &str) -> RegistryError {
        match err {
            BlobError::Io { path, source } if source.kind() == io::ErrorKind::NotFound => {
                RegistryError::Failed {
                    location: self.location(),
                    image: image.to_string(),
                    message: format!("{what} is missing from the store ({})", path.display()),
                }
            }
            other => other.into_registry(&self.location(), image, what),
        }
    }

    fn copy_blocking(&self, from: &str, to: &str) -> Result<(), RegistryError> {
        let from_name = local_name(from)?;
        let to_name = local_name(to)?;
        if to_name.digest.is_some() {
            return Err(RegistryError::InvalidReference {
                reference: to.to_string(),
                reason: "a copy needs a tag to copy to, not a digest".into(),
            });
        }
        let from_display = from_name.to_string();
        ensure_layout(&self.root)?;
        let _lock = lock_store(&self.root)?;
        let index = read_index(&self.root)?;
        let source = match &from_name.digest {
            Some(digest) => self.by_digest(&index, digest),
            None => index
                .manifests
                .iter()
                .rev()
                .find(|e| entry_name(e).as_deref() == Some(from_display.as_str()))
                .cloned(),
        }
        .ok_or_else(|| RegistryError::NotFound {
            location: self.location(),
            image: from_display.clone(),
        })?;
        add_entries(&self.root, index, vec![(to_name, source)])?;
        tracing::info!(from = %from_display, to = %to, store = %self.root.display(), "named image in the local store");
        Ok(())
    }
}

#[async_trait::async_trait]
impl Registry for LocalStore {
    fn describe(&self) -> String {
        self.location()
    }

    async fn pull(&self, name: &str, _credentials: &Credentials) -> Result<Image, RegistryError> {
        let this = self.clone();
        let name = name.to_string();
        // Hashing and copying layers is blocking file work.
        tokio::task::spawn_blocking(move || this.pull_blocking(&name))
            .await
            .map_err(|e| join_error(&self.location(), e))?
    }

    async fn copy(&self, from: &str, to: &str) -> Result<(), RegistryError> {
        let this = self.clone();
        let (from, to) = (from.to_string(), to.to_string());
        tokio::task::spawn_blocking(move || this.copy_blocking(&from, &to))
            .await
            .map_err(|e| join_error(&self.location(), e))?
    }
}

fn join_error(location: &str, e: tokio::task::JoinError) -> RegistryError {
    RegistryError::Store {
        location: location.to_string(),
        message: format!("the store task failed: {e}"),
    }
}

fn store_location(root: &Path) -> String {
    format!("local image store {}", root.display())
}

fn store_error(root: &Path, message: String) -> RegistryError {
    RegistryError::Store {
        location: store_location(root),
        message,
    }
}

/// The local-store name of an `index.json` entry: `ref.name` when it is a full name, else
/// containerd's name (`docker save` puts only the tag in `ref.name`).
fn entry_name(entry: &Descriptor) -> Option<String> {
    let ref_name = entry.annotation(REF_NAME);
    let full = ref_name.filter(|n| n.contains(':') || n.contains('/'));
    full.or(entry.annotation(CONTAINERD_NAME))
        .or(ref_name)
        .and_then(|n| local_name(n).ok())
        .map(|n| n.to_string())
}

/// Creates the layout's skeleton if missing.
fn ensure_layout(root: &Path) -> Result<(), RegistryError> {
    let blobs = root.join("blobs").join("sha256");
    fs::create_dir_all(&blobs)
        .map_err(|e| store_error(root, format!("cannot create {}: {e}", blobs.display())))?;
    let layout = root.join("oci-layout");
    if !layout.exists() {
        write_atomic(root, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    }
    if !root.join("index.json").exists() {
        let empty = serde_json::to_vec_pretty(&ImageIndex::empty())
            .map_err(|e| store_error(root, e.to_string()))?;
        write_atomic(root, "index.json", &empty)?;
    }
    Ok(())
}

fn write_atomic(root: &Path, name: &str, bytes: &[u8]) -> Result<(), RegistryError> {
    let fail = |e: io::Error| store_error(root, format!("cannot write {name}: {e}"));
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".{name}-"))
        .tempfile_in(root)
        .map_err(fail)?;
    temp.write_all(bytes).map_err(fail)?;
    temp.as_file().sync_all().map_err(fail)?;
    temp.persist(root.join(name)).map_err(|e| fail(e.error))?;
    Ok(())
}

/// An exclusive lock on the store, held until the file is dropped.
fn lock_store(root: &Path) -> Result<fs::File, RegistryError> {
    let dir = fs::File::open(root).map_err(|e| store_error(root, format!("cannot open: {e}")))?;
    dir.lock()
        .map_err(|e| store_error(root, format!("cannot lock: {e}")))?;
    Ok(dir)
}

/// The store's `index.json`; a store that does not exist yet is empty.
fn read_index(root: &Path) -> Result<ImageIndex, RegistryError> {
    let path = root.join("index.json");
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| store_error(root, format!("malformed index.json: {e}"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(ImageIndex::empty()),
        Err(e) => Err(store_error(root, format!("cannot read index.json: {e}"))),
    }
}

/// Adds `(name, descriptor)` entries to `index` (replacing entries of the same names) and
/// writes it. The caller holds the store lock and read `index` under it.
fn add_entries(
    root: &Path,
    mut index: ImageIndex,
    entries: Vec<(ImageName, Descriptor)>,
) -> Result<(), RegistryError> {
    let names: HashSet<String> = entries.iter().map(|(n, _)| n.to_string()).collect();
    index
        .manifests
        .retain(|e| entry_name(e).is_none_or(|n| !names.contains(&n)));
    for (name, mut descriptor) in entries {
        // The old names would contradict the new one.
        descriptor.annotations = Some(BTreeMap::from([(REF_NAME.to_string(), name.to_string())]));
        index.manifests.push(descriptor);
    }
    let bytes = serde_json::to_vec_pretty(&index).map_err(|e| store_error(root, e.to_string()))?;
    write_atomic(root, "index.json", &bytes)
}

/// Imports the images of an OCI image layout directory, or of a tar (optionally gzipped) of
/// one or of a `docker save` archive, into the local store at `store` (created if missing).
/// Returns the names imported.
///
/// `name` names the image when the source holds exactly one; without it, names come from the
/// source (`ref.name`/`io.containerd.image.name` annotations, `RepoTags`). Every blob is
/// verified against its digest on the way in; an index keeps only the platforms whose blobs
/// are present, and must have linux/amd64.
pub fn import(
    layout_or_tar: &Path,
    store: &Path,
    name: Option<&str>,
) -> Result<Vec<String>, RegistryError> {
    let source_location = format!("image import from {}", layout_or_tar.display());
    let source_error = |message: String| RegistryError::Store {
        location: source_location.clone(),
        message,
    };
    let name = name.map(local_name).transpose()?;
    if name.as_ref().is_some_and(|n| n.digest.is_some()) {
        return Err(source_error(
            "the name to import as needs a tag, not a digest".into(),
        ));
    }
    let meta = fs::metadata(layout_or_tar).map_err(|e| source_error(e.to_string()))?;
    ensure_layout(store)?;
    // A tar is unpacked inside the store so its blobs can be linked, not copied, into place.
    let staging;
    let source = if meta.is_dir() {
        layout_or_tar.to_path_buf()
    } else {
        staging = tempfile::Builder::new()
            .prefix(".import-")
            .tempdir_in(store)
            .map_err(|e| store_error(store, format!("cannot create a staging directory: {e}")))?;
        unpack(layout_or_tar, staging.path())
            .map_err(|e| source_error(format!("cannot unpack: {e}")))?;
        staging.path().to_path_buf()
    };
    let importer = Importer {
        source: &source,
        store: BlobCache::new(store),
        source_error: &source_error,
    };
    let entries = if source.join("index.json").is_file() {
        importer.oci_layout(name.as_ref())?
    } else if source.join("manifest.json").is_file() {
        importer.docker_save(name.as_ref())?
    } else {
        return Err(source_error(
            "neither an OCI image layout (no index.json) nor a docker save archive (no manifest.json)".into(),
        ));
    };
    let names: Vec<String> = entries.iter().map(|(n, _)| n.to_string()).collect();
    let _lock = lock_store(store)?;
    let index = read_index(store)?;
    add_entries(store, index, entries)?;
    tracing::info!(source = %layout_or_tar.display(), store = %store.display(), ?names, "imported images");
    Ok(names)
}

/// Unpacks a tar, gzipped or not, into `dest`. `tar` refuses entries that climb out of `dest`.
fn unpack(tar: &Path, dest: &Path) -> io::Result<()> {
    let mut file = fs::File::open(tar)?;
    let mut magic = [0u8; 2];
    let n = file.read(&mut magic)?;
    file.rewind()?;
    let reader: Box<dyn Read> = if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(BufReader::new(file)))
    } else {
        Box::new(BufReader::new(file))
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(false);
    archive.set_overwrite(true);
    archive.unpack(dest)
}

struct Importer<'a> {
    source: &'a Path,
    store: BlobCache,
    source_error: &'a dyn Fn(String) -> RegistryError,
}

impl Importer<'_> {
    fn error(&self, message: String) -> RegistryError {
        (self.source_error)(message)
    }

    /// `rel` inside the source, refusing paths (or symlinks) that lead out of it.
    fn resolve(&self, rel: &str) -> Result<PathBuf, RegistryError> {
        let relative = Path::new(rel);
        if relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(self.error(format!("path {rel:?} leaves the image directory")));
        }
        let root = self
            .source
            .canonicalize()
            .map_err(|e| self.error(e.to_string()))?;
        let path = root
            .join(relative)
            .canonicalize()
            .map_err(|e| self.error(format!("{rel}: {e}")))?;
        if !path.starts_with(&root) {
            return Err(self.error(format!("path {rel:?} leads out of the image directory")));
        }
        Ok(path)
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf, RegistryError> {
        validate_digest(digest).map_err(|e| self.error(e))?;
        self.resolve(&format!("blobs/{}", digest.replacen(':', "/", 1)))
    }

    fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    /// Copies (or links) the blob `desc` into the store, verified.
    fn take(&self, desc: &Descriptor, what: &str) -> Result<(), RegistryError> {
        let path = self.blob_path(&desc.digest)?;
        self.store
            .insert_file(Some((&desc.digest, desc.size)), &path)
            .map_err(|e| self.error(format!("{what} {}: {}", desc.digest, blob_message(e))))?;
        Ok(())
    }

    fn oci_layout(
        &self,
        name: Option<&ImageName>,
    ) -> Result<Vec<(ImageName, Descriptor)>, RegistryError> {
        let bytes = fs::read(self.resolve("index.json")?)
            .map_err(|e| self.error(format!("index.json: {e}")))?;
        let index: ImageIndex = serde_json::from_slice(&bytes)
            .map_err(|e| self.error(format!("malformed index.json: {e}")))?;
        if name.is_some() && index.manifests.len() != 1 {
            return Err(self.error(format!(
                "holds {} images; import it without a name to keep theirs",
                index.manifests.len()
            )));
        }
        let mut entries = Vec::new();
        for entry in &index.manifests {
            let entry_name = match name {
                Some(name) => name.clone(),
                None => entry_name(entry)
                    .and_then(|n| local_name(&n).ok())
                    .ok_or_else(|| {
                        self.error(format!(
                            "image {} has no name (no {REF_NAME} annotation); give one",
                            entry.digest
                        ))
                    })?,
            };
            self.take_tree(entry, &entry_name.to_string(), 0)?;
            let mut descriptor = entry.clone();
            if descriptor.media_type.is_empty() {
                // The store's index says what each entry is.
                let bytes = self
                    .store
                    .read_verified(&entry.digest, MAX_MANIFEST)
                    .map_err(|e| self.error(blob_message(e)))?;
                descriptor.media_type = match oci::parse_manifest(&bytes) {
                    Ok(Manifest::Index(_)) => oci::OCI_INDEX.into(),
                    _ => oci::OCI_MANIFEST.into(),
                };
            }
            entries.push((entry_name, descriptor));
        }
        Ok(entries)
    }

    /// Takes a manifest and everything it references; for an index, the platforms present
    /// (linux/amd64 among them).
    fn take_tree(&self, desc: &Descriptor, image: &str, depth: usize) -> Result<(), RegistryError> {
        if depth > MAX_DEPTH {
            return Err(self.error(format!("image {image}: indexes nest too deep")));
        }
        self.take(desc, "manifest")?;
        let bytes = self
            .store
            .read_verified(&desc.digest, MAX_MANIFEST)
            .map_err(|e| self.error(blob_message(e)))?;
        match oci::parse_manifest(&bytes) {
            Ok(Manifest::Image(manifest)) => {
                if let Some((what, media_type)) = manifest.unsupported_part() {
                    return Err(self.error(format!(
                        "image {image}: {what} has unsupported media type {media_type:?}"
                    )));
                }
                self.take(&manifest.config, "config")?;
                for (i, layer) in manifest.layers.iter().enumerate() {
                    self.take(layer, &format!("layer {i}"))?;
                }
                Ok(())
            }
            Ok(Manifest::Index(index)) => {
                let amd64 = index.linux_amd64().map_err(|available| {
                    self.error(format!(
                        "image {image} has no linux/amd64 variant (it has: {available})"
                    ))
                })?;
                if !self.has_blob(&amd64.digest) {
                    return Err(self.error(format!(
                        "image {image}: the linux/amd64 manifest {} is not in the archive",
                        amd64.digest
                    )));
                }
                // `docker save` of a multi-platform image holds only the platforms pulled.
                for child in index.manifests.iter().filter(|c| self.has_blob(&c.digest)) {
                    self.take_tree(child, image, depth + 1)?;
                }
                Ok(())
            }
            Err(ManifestError::Unsupported(media_type)) => Err(self.error(format!(
                "image {image}: unsupported manifest media type {media_type:?}"
            ))),
            Err(ManifestError::Malformed(reason)) => {
                Err(self.error(format!("image {image}: malformed manifest: {reason}")))
            }
        }
    }

    /// A classic `docker save` archive: `manifest.json` lists each image's config file,
    /// layer tars and `RepoTags`; an OCI manifest is written for each.
    fn docker_save(
        &self,
        name: Option<&ImageName>,
    ) -> Result<Vec<(ImageName, Descriptor)>, RegistryError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct SaveEntry {
            config: String,
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
            #[serde(default)]
            layers: Vec<String>,
        }
        let bytes = fs::read(self.resolve("manifest.json")?)
            .map_err(|e| self.error(format!("manifest.json: {e}")))?;
        let saved: Vec<SaveEntry> = serde_json::from_slice(&bytes)
            .map_err(|e| self.error(format!("malformed manifest.json: {e}")))?;
        if name.is_some() && saved.len() != 1 {
            return Err(self.error(format!(
                "holds {} images; import it without a name to keep theirs",
                saved.len()
            )));
        }
        let mut entries = Vec::new();
        for entry in saved {
            let names: Vec<ImageName> = match name {
                Some(name) => vec![name.clone()],
                None => entry
                    .repo_tags
                    .unwrap_or_default()
                    .iter()
                    .map(|t| local_name(t))
                    .collect::<Result<_, _>>()?,
            };
            if names.is_empty() {
                return Err(self.error(format!(
                    "image {} has no RepoTags; give a name",
                    entry.config
                )));
            }
            let insert = |rel: &str| -> Result<(String, u64), RegistryError> {
                let path = self.resolve(rel)?;
                let (digest, size, _) = self
                    .store
                    .insert_file(None, &path)
                    .map_err(|e| self.error(format!("{rel}: {}", blob_message(e))))?;
                Ok((digest, size))
            };
            let (config_digest, config_size) = insert(&entry.config)?;
            let mut layers = Vec::new();
            for rel in &entry.layers {
                let media_type = layer_media_type(&self.resolve(rel)?)
                    .map_err(|e| self.error(format!("{rel}: {e}")))?;
                let (digest, size) = insert(rel)?;
                layers.push(Descriptor::new(media_type, digest, size));
            }
            let manifest = ImageManifest {
                schema_version: 2,
                media_type: Some(oci::OCI_MANIFEST.to_string()),
                config: Descriptor::new(oci::OCI_CONFIG, config_digest, config_size),
                layers,
            };
            let bytes = serde_json::to_vec(&manifest).map_err(|e| self.error(e.to_string()))?;
            let digest = sha256_digest(&bytes);
            self.store
                .insert_bytes(&digest, &bytes)
                .map_err(|e| self.error(blob_message(e)))?;
            for name in names {
                entries.push((
                    name,
                    Descriptor::new(oci::OCI_MANIFEST, digest.clone(), bytes.len() as u64),
                ));
            }
        }
        Ok(entries)
    }
}

/// A layer tar's media type, from its first bytes (docker save does not record it).
fn layer_media_type(path: &Path) -> io::Result<&'static str> {
    let mut magic = [0u8; 4];
    let mut file = fs::File::open(path)?;
    let n = file.read(&mut magic)?;
    Ok(match &magic[..n] {
        [0x1f, 0x8b, ..] => oci::OCI_LAYER_GZIP,
        [0x28, 0xb5, 0x2f, 0xfd] => oci::OCI_LAYER_ZSTD,
        _ => oci::OCI_LAYER_TAR,
    })
}

fn blob_message(e: BlobError) -> String {
    match e {
        BlobError::Io { path, source } => format!("{}: {source}", path.display()),
        BlobError::Digest { expected, actual } => {
            format!("digest mismatch: expected {expected}, got {actual}")
        }
        BlobError::Size { expected, actual } => {
            format!("size mismatch: expected {expected} bytes, got {actual}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(annotations: &[(&str, &str)]) -> Descriptor {
        let mut d = Descriptor::new(oci::OCI_MANIFEST, "sha256:x".into(), 1);
        d.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        d
    }

    #[test]
    fn names_entries_like_the_tools_that_wrote_them() {
        assert_eq!(
            entry_name(&entry(&[(REF_NAME, "python:3.10-slim")])).as_deref(),
            Some("python:3.10-slim")
        );
        // docker save (25+): the tag in ref.name, the name in containerd's annotation.
        assert_eq!(
            entry_name(&entry(&[
                (REF_NAME, "latest"),
                (CONTAINERD_NAME, "docker.io/library/busybox:latest")
            ]))
            .as_deref(),
            Some("busybox:latest")
        );
        assert_eq!(
            entry_name(&entry(&[(REF_NAME, "busybox")])).as_deref(),
            Some("busybox:latest")
        );
        assert_eq!(entry_name(&entry(&[])), None);
    }

    #[test]
    fn refuses_paths_out_of_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let f = |m: String| RegistryError::Store {
            location: "x".into(),
            message: m,
        };
        let importer = Importer {
            source: dir.path(),
            store: BlobCache::new(dir.path()),
            source_error: &f,
        };
        assert!(importer.resolve("../etc/passwd").is_err());
        assert!(importer.resolve("/etc/passwd").is_err());
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("link")).unwrap();
        assert!(importer.resolve("link").is_err());
    }
}
