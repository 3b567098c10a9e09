//! [`Storage`]: the operations Kiln performs on object storage.

use crate::{
    Manifest, ObjectEntry, StorageConfig, StorageError, UploadSession, cache::ChunkCache,
    manifest::MANIFEST,
};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt, path::Path as Key};
use sha2::{Digest, Sha256};
use std::{
    collections::HashMap,
    fmt,
    ops::Range,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Cache chunk size. Fixed: chunk files on disk are named by index, so a change would
/// misread a cache written before it.
pub const CHUNK_SIZE: u64 = 4 << 20;

/// Tuning. The defaults suit S3, GCS, Azure and OCI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageOptions {
    /// Chunk cache directory.
    pub cache_dir: PathBuf,
    /// Bound on the bytes of chunk files in the cache.
    pub cache_bytes: u64,
    /// Multipart part size; files up to this size are uploaded with one PUT. At least 10 MiB,
    /// OCI's minimum part size (S3's is 5 MiB).
    pub part_size: u64,
    /// Parts uploaded, ranges downloaded and chunks fetched at once per operation. Memory use of
    /// one transfer is about `concurrency * part_size` (upload) or `* download_block` (download).
    pub concurrency: usize,
    /// Size of each ranged GET of a download.
    pub download_block: u64,
}

impl Default for StorageOptions {
    fn default() -> Self {
        Self {
            cache_dir: PathBuf::from("cache/chunks"),
            cache_bytes: 10 << 30,
            part_size: 10 << 20,
            concurrency: 4,
            download_block: 8 << 20,
        }
    }
}

/// Object storage for template builds and snapshots. Cheap to clone; clones share the store,
/// the chunk cache and its single-flight state.
#[derive(Clone)]
pub struct Storage {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) described: String,
    pub(crate) options: StorageOptions,
    pub(crate) cache: ChunkCache,
    /// The bucket directory of the `Local` provider ([`crate::linked`]).
    pub(crate) local_root: Option<PathBuf>,
    /// Size and ETag of objects read through the cache, so a ranged read costs no HEAD.
    /// Committed objects never change; the ETag keys the cache in case one does anyway.
    infos: Mutex<HashMap<String, ObjectInfo>>,
}

#[derive(Clone, Debug)]
pub(crate) struct ObjectInfo {
    pub(crate) size: u64,
    pub(crate) etag: String,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage")
            .field("storage", &self.inner.described)
            .finish_non_exhaustive()
    }
}

impl Storage {
    /// The configured provider, with the configured cache.
    pub fn from_config(config: &StorageConfig) -> Result<Self, StorageError> {
        let store = config.provider.build()?;
        let mut storage = Self::new(store, config.provider.describe(), config.options())?;
        if let crate::Provider::Local { root } = &config.provider
            && let Some(inner) = Arc::get_mut(&mut storage.inner)
        {
            inner.local_root = Some(root.clone());
        }
        Ok(storage)
    }

    /// Any object store. `described` names it in messages (`AWSBucket 'kiln'`); it must not
    /// hold secrets. Opens (and bounds) the chunk cache.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        described: impl Into<String>,
        options: StorageOptions,
    ) -> Result<Self, StorageError> {
        let cache = ChunkCache::open(&options.cache_dir, options.cache_bytes)?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                described: described.into(),
                options,
                cache,
                local_root: None,
                infos: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Provider and bucket, for messages and logs. No secrets.
    pub fn describe(&self) -> &str {
        &self.inner.described
    }

    /// The underlying object store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner.store
    }

    /// Starts writing a set of objects under `prefix`; see [`UploadSession`]. Fails with
    /// [`StorageError::AlreadyExists`] if a session already committed there.
    pub async fn session(&self, prefix: &str) -> Result<UploadSession, StorageError> {
        let prefix_key = key(prefix)?;
        if self.manifest(prefix).await?.is_some() {
            return Err(StorageError::AlreadyExists {
                storage: self.inner.described.clone(),
                prefix: prefix_key.to_string(),
            });
        }
        Ok(UploadSession::new(self.clone(), prefix_key))
    }

    /// The manifest of the session committed under `prefix`; `None` if there is none (never
    /// written, uncommitted, or deleted).
    pub async fn manifest(&self, prefix: &str) -> Result<Option<Manifest>, StorageError> {
        let location = key(prefix)?.clone().join(MANIFEST);
        let bytes = match self.inner.store.get(&location).await {
            Ok(result) => result.bytes().await,
            Err(e) => Err(e),
        };
        let bytes = match bytes {
            Ok(bytes) => bytes,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.backend("reading", &location, e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StorageError::Corrupt {
                storage: self.inner.described.clone(),
                key: location.to_string(),
                expected: "a session manifest".into(),
                actual: format!("unreadable JSON ({e})"),
            })
    }

    /// The manifest entry of `name` under `prefix`; [`StorageError::NotFound`] if the prefix
    /// has no manifest or the manifest no such name.
    pub async fn entry(&self, prefix: &str, name: &str) -> Result<ObjectEntry, StorageError> {
        let location = object_key(prefix, name)?;
        self.manifest(prefix)
            .await?
            .and_then(|manifest| manifest.objects.get(name).cloned())
            .ok_or_else(|| self.not_found(&location))
    }

    /// Downloads `prefix/name` to `dest`: parallel ranged GETs into a temporary file next to
    /// `dest`, verified against the manifest's sha256, then renamed over `dest`. On any error
    /// `dest` is untouched and the temporary file removed.
    pub async fn download_file(
        &self,
        prefix: &str,
        name: &str,
        dest: &Path,
    ) -> Result<ObjectEntry, StorageError> {
        let entry = self.entry(prefix, name).await?;
        let location = object_key(prefix, name)?;
        if let Some(linked) = self.download_linked(&location, &entry, dest).await? {
            return Ok(linked);
        }
        let dir = match dest.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let io = |context: String| move |source| StorageError::Io { context, source };
        let temp = tempfile::Builder::new()
            .prefix(".download-")
            .tempfile_in(dir)
            .map_err(io(format!(
                "creating a temporary file in {}",
                dir.display()
            )))?;
        let mut file = tokio::fs::File::from_std(
            temp.as_file()
                .try_clone()
                .map_err(io(format!("opening {}", temp.path().display())))?,
        );
        self.copy_verified(&location, &entry, &mut file).await?;
        file.sync_all()
            .await
            .map_err(io(format!("writing {}", temp.path().display())))?;
        drop(file);
        temp.persist(dest)
            .map_err(|e| e.error)
            .map_err(io(format!("renaming the download to {}", dest.display())))?;
        Ok(entry)
    }

    /// The file of object `location` when the provider is `Local` ([`crate::linked`]).
    pub(crate) fn local_file(&self, location: &Key) -> Option<PathBuf> {
        let root = self.inner.local_root.as_deref()?;
        crate::linked::local_path(root, location)
    }

    /// The `Local` fast path of [`Storage::download_file`]: link, then check the digest.
    /// `None` when it does not apply.
    async fn download_linked(
        &self,
        location: &Key,
        entry: &ObjectEntry,
        dest: &Path,
    ) -> Result<Option<ObjectEntry>, StorageError> {
        let Some(source) = self.local_file(location) else {
            return Ok(None);
        };
        let (from, to, expected) = (source, dest.to_owned(), entry.clone());
        let checked = tokio::task::spawn_blocking(move || {
            if !crate::linked::link(&from, &to)? {
                return Ok(None);
            }
            let actual = crate::linked::digest_file(&to).map_err(|source| StorageError::Io {
                context: format!("reading {}", to.display()),
                source,
            })?;
            if actual != expected {
                let _ = std::fs::remove_file(&to);
                return Ok(Some(Err(actual)));
            }
            Ok(Some(Ok(actual)))
        })
        .await
        .map_err(|e| StorageError::Io {
            context: format!("downloading {location}"),
            source: std::io::Error::other(e),
        })??;
        match checked {
            None => Ok(None),
            Some(Ok(entry)) => Ok(Some(entry)),
            Some(Err(actual)) => Err(self.corrupt(location, entry, &actual)),
        }
    }

    /// Streams `prefix/name` into `writer`, verifying it against the manifest. The bytes reach
    /// `writer` before the check ends: on [`StorageError::Corrupt`] the caller must discard what
    /// it received.
    pub async fn download_to_writer(
        &self,
        prefix: &str,
        name: &str,
        writer: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<ObjectEntry, StorageError> {
        let entry = self.entry(prefix, name).await?;
        self.copy_verified(&object_key(prefix, name)?, &entry, writer)
            .await?;
        Ok(entry)
    }

    /// A small object (manifests, headers, metadata) in memory, verified.
    pub async fn get_bytes(&self, prefix: &str, name: &str) -> Result<Bytes, StorageError> {
        let entry = self.entry(prefix, name).await?;
        let mut buffer = Vec::with_capacity(usize::try_from(entry.size).unwrap_or(0));
        self.copy_verified(&object_key(prefix, name)?, &entry, &mut buffer)
            .await?;
        Ok(buffer.into())
    }

    /// Fetches the object in `download_block` ranges, `concurrency` at a time but written in
    /// order, hashing as it goes; then compares size and sha256 with `entry`.
    async fn copy_verified(
        &self,
        location: &Key,
        entry: &ObjectEntry,
        writer: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<(), StorageError> {
        let block = self.inner.options.download_block.max(1);
        let ranges =
            (0..entry.size.div_ceil(block)).map(|i| i * block..((i + 1) * block).min(entry.size));
        let mut blocks = futures::stream::iter(ranges)
            .map(|range| {
                let store = self.inner.store.clone();
                let location = location.clone();
                async move { store.get_range(&location, range).await }
            })
            .buffered(self.inner.options.concurrency.max(1));
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(bytes) = blocks.next().await {
            let bytes = bytes.map_err(|e| self.backend("downloading", location, e))?;
            hasher.update(&bytes);
            size += bytes.len() as u64;
            writer
                .write_all(&bytes)
                .await
                .map_err(|source| StorageError::Io {
                    context: format!("writing the download of {location}"),
                    source,
                })?;
        }
        writer.flush().await.map_err(|source| StorageError::Io {
            context: format!("writing the download of {location}"),
            source,
        })?;
        let actual = ObjectEntry {
            size,
            sha256: hex::encode(hasher.finalize()),
        };
        if actual != *entry {
            return Err(self.corrupt(location, entry, &actual));
        }
        Ok(())
    }

    /// Bytes `range` of the object at `key`, through the local chunk cache: the 4 MiB chunks
    /// covering the range are fetched once (concurrent readers of a chunk share one fetch) and
    /// kept on disk, least recently used first out. A range past the end is
    /// [`StorageError::InvalidRange`].
    ///
    /// Ranged reads are not checked against the manifest digest (which covers whole objects);
    /// each chunk's length is checked.
    pub async fn read_range(
        &self,
        key_str: &str,
        range: Range<u64>,
    ) -> Result<Bytes, StorageError> {
        let location = key(key_str)?;
        let info = self.info(&location).await?;
        if range.start > range.end || range.end > info.size {
            return Err(StorageError::InvalidRange {
                storage: self.inner.described.clone(),
                key: location.to_string(),
                start: range.start,
                end: range.end,
                size: info.size,
            });
        }
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let first = range.start / CHUNK_SIZE;
        let last = (range.end - 1) / CHUNK_SIZE;
        let pieces: Vec<Bytes> = futures::stream::iter(first..=last)
            .map(|index| {
                let chunk_start = index * CHUNK_SIZE;
                let within = range.start.max(chunk_start) - chunk_start
                    ..range.end.min(chunk_start + CHUNK_SIZE) - chunk_start;
                self.inner.cache.read(self, &location, &info, index, within)
            })
            .buffered(self.inner.options.concurrency.max(1))
            .try_collect()
            .await?;
        Ok(match <[Bytes; 1]>::try_from(pieces) {
            Ok([one]) => one,
            Err(pieces) => pieces.concat().into(),
        })
    }

    /// Size of the object at `key` (cached after the first call).
    pub async fn size(&self, key_str: &str) -> Result<u64, StorageError> {
        Ok(self.info(&key(key_str)?).await?.size)
    }

    /// Whether an object exists at `key` (any object, committed or not).
    pub async fn exists(&self, key_str: &str) -> Result<bool, StorageError> {
        let location = key(key_str)?;
        match self.inner.store.head(&location).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.backend("looking up", &location, e)),
        }
    }

    /// Deletes every object under `prefix` and returns how many there were. The manifest goes
    /// first, so the prefix reads as absent from the first deletion on.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize, StorageError> {
        let prefix_key = key(prefix)?;
        let manifest = prefix_key.clone().join(MANIFEST);
        let mut keys: Vec<Key> = self
            .inner
            .store
            .list(Some(&prefix_key))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| self.backend("listing", &prefix_key, e))?;
        // Counted from the listing: S3 answers a DELETE of a missing key with success.
        let count = keys.len();
        if let Some(at) = keys.iter().position(|k| *k == manifest) {
            keys.swap_remove(at);
            match self.inner.store.delete(&manifest).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.backend("deleting", &manifest, e)),
            }
        }
        let mut deleted = self
            .inner
            .store
            .delete_stream(futures::stream::iter(keys.into_iter().map(Ok)).boxed());
        while let Some(result) = deleted.next().await {
            match result {
                // Deleted meanwhile (a concurrent cleanup): the goal is reached.
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.backend("deleting", &prefix_key, e)),
            }
        }
        self.inner
            .infos
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| !Key::from(k.as_str()).prefix_matches(&prefix_key));
        tracing::debug!(storage = %self.inner.described, prefix = %prefix_key, count, "deleted prefix");
        Ok(count)
    }

    async fn info(&self, location: &Key) -> Result<ObjectInfo, StorageError> {
        let memo = |infos: &Mutex<HashMap<String, ObjectInfo>>| {
            infos
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(location.as_ref())
                .cloned()
        };
        if let Some(info) = memo(&self.inner.infos) {
            return Ok(info);
        }
        let meta = self
            .inner
            .store
            .head(location)
            .await
            .map_err(|e| self.backend("looking up", location, e))?;
        let info = ObjectInfo {
            size: meta.size,
            etag: meta.e_tag.unwrap_or_default(),
        };
        self.inner
            .infos
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(location.to_string(), info.clone());
        Ok(info)
    }

    pub(crate) fn backend(
        &self,
        operation: &'static str,
        location: &Key,
        source: object_store::Error,
    ) -> StorageError {
        match source {
            object_store::Error::NotFound { .. } => self.not_found(location),
            source => StorageError::Backend {
                storage: self.inner.described.clone(),
                operation,
                key: location.to_string(),
                source: Box::new(source),
            },
        }
    }

    fn not_found(&self, location: &Key) -> StorageError {
        StorageError::NotFound {
            storage: self.inner.described.clone(),
            key: location.to_string(),
        }
    }

    pub(crate) fn corrupt(
        &self,
        location: &Key,
        expected: &ObjectEntry,
        actual: &ObjectEntry,
    ) -> StorageError {
        let describe = |e: &ObjectEntry| format!("{} bytes with sha256 {}", e.size, e.sha256);
        StorageError::Corrupt {
            storage: self.inner.described.clone(),
            key: location.to_string(),
            expected: describe(expected),
            actual: describe(actual),
        }
    }
}

/// A key or prefix: `/`-separated segments, none empty, `.` or `..`.
pub(crate) fn key(value: &str) -> Result<Key, StorageError> {
    let invalid = |reason: String| StorageError::InvalidName {
        name: value.to_string(),
        reason,
    };
    if value.is_empty() {
        return Err(invalid("empty".into()));
    }
    let parsed = Key::parse(value).map_err(|e| invalid(e.to_string()))?;
    // `Key::parse` accepts `a/` and `/a` by normalising; keep names exactly as given.
    if parsed.as_ref() != value {
        return Err(invalid("leading, trailing or doubled '/'".into()));
    }
    Ok(parsed)
}

/// The key of `name` in a session under `prefix`. `manifest.json` is reserved.
pub(crate) fn object_key(prefix: &str, name: &str) -> Result<Key, StorageError> {
    if name == MANIFEST {
        return Err(StorageError::InvalidName {
            name: name.to_string(),
            reason: "reserved for the session manifest".into(),
        });
    }
    let prefix = key(prefix)?;
    Ok(key(name)?
        .parts()
        .fold(prefix, |path, part| path.join(part.as_ref())))
}
