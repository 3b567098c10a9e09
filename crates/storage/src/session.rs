//! [`UploadSession`]: writes a set of objects under one prefix, visible all at once or not at
//! all.
//!
//! Objects go up first; [`UploadSession::commit`] writes `<prefix>/manifest.json` last.
//! Readers treat a prefix without a manifest as absent, so a reader never sees a half-written
//! session. A session that fails, is [aborted](UploadSession::abort) or is dropped without
//! commit aborts its multipart uploads and deletes what it wrote (best effort: objects left
//! by a crashed process stay invisible until [`crate::Storage::delete_prefix`]).
//!
//! One writer per prefix: two sessions on the same prefix at once are not detected.

use crate::{
    Manifest, ObjectEntry, Storage, StorageError, lock, manifest::MANIFEST, storage::object_key,
};
use bytes::Bytes;
use futures::{StreamExt, stream::FuturesUnordered};
use object_store::{MultipartUpload, ObjectStoreExt, PutPayload, path::Path as Key};
use sha2::{Digest, Sha256};
use std::{collections::BTreeMap, path::Path, sync::Mutex};
use tokio::io::AsyncReadExt;

/// A write session; see the module docs. Uploads may run concurrently (`&self`).
#[derive(Debug)]
pub struct UploadSession {
    storage: Storage,
    prefix: Key,
    objects: Mutex<BTreeMap<String, ObjectEntry>>,
    /// Every key a PUT was started for, so cleanup finds them without a LIST.
    written: Mutex<Vec<Key>>,
    finished: bool,
}

impl UploadSession {
    pub(crate) fn new(storage: Storage, prefix: Key) -> Self {
        Self {
            storage,
            prefix,
            objects: Mutex::new(BTreeMap::new()),
            written: Mutex::new(Vec::new()),
            finished: false,
        }
    }

    /// The session's prefix.
    pub fn prefix(&self) -> &str {
        self.prefix.as_ref()
    }

    /// Uploads the file at `local` as `name`. Files larger than the part size go up as a
    /// multipart upload, `concurrency` parts at a time; the sha256 is computed from the bytes
    /// read, so it describes exactly what was sent.
    pub async fn upload_file(&self, name: &str, local: &Path) -> Result<ObjectEntry, StorageError> {
        let location = self.start(name)?;
        if let Some(entry) = self.upload_linked(&location, local).await? {
            self.record(name, &entry)?;
            return Ok(entry);
        }
        let io = |source| StorageError::Io {
            context: format!("reading {}", local.display()),
            source,
        };
        let mut file = tokio::fs::File::open(local).await.map_err(io)?;
        let len = file.metadata().await.map_err(io)?.len();
        let part_size = self.storage.inner.options.part_size;
        let entry = if len <= part_size {
            let mut buffer = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
            file.read_to_end(&mut buffer).await.map_err(io)?;
            self.put(&location, buffer.into()).await?
        } else {
            let upload = self
                .storage
                .inner
                .store
                .put_multipart(&location)
                .await
                .map_err(|e| self.storage.backend("uploading", &location, e))?;
            let mut upload = AbortOnDrop(Some(upload));
            let entry = self
                .send_parts(&location, &mut file, &mut upload, local)
                .await;
            match entry {
                Ok(entry) => entry,
                Err(e) => {
                    upload.abort().await;
                    return Err(e);
                }
            }
        };
        self.record(name, &entry)?;
        tracing::debug!(key = %location, size = entry.size, "uploaded");
        Ok(entry)
    }

    /// The `Local` fast path of [`UploadSession::upload_file`]: digest, then link. `None` when
    /// it does not apply.
    async fn upload_linked(
        &self,
        location: &Key,
        local: &Path,
    ) -> Result<Option<ObjectEntry>, StorageError> {
        let Some(target) = self.storage.local_file(location) else {
            return Ok(None);
        };
        let from = local.to_owned();
        tokio::task::spawn_blocking(move || {
            let entry = crate::linked::digest_file(&from).map_err(|source| StorageError::Io {
                context: format!("reading {}", from.display()),
                source,
            })?;
            Ok(crate::linked::link(&from, &target)?.then_some(entry))
        })
        .await
        .map_err(|e| StorageError::Io {
            context: format!("uploading {location}"),
            source: std::io::Error::other(e),
        })?
    }

    async fn send_parts(
        &self,
        location: &Key,
        file: &mut tokio::fs::File,
        upload: &mut AbortOnDrop,
        local: &Path,
    ) -> Result<ObjectEntry, StorageError> {
        let options = &self.storage.inner.options;
        let backend = |e| self.storage.backend("uploading", location, e);
        let Some(multipart) = upload.0.as_mut() else {
            return Err(StorageError::Io {
                context: format!("uploading {location}"),
                source: std::io::Error::other("multipart upload already finished"),
            });
        };
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut in_flight = FuturesUnordered::new();
        loop {
            let mut part = Vec::new();
            (&mut *file)
                .take(options.part_size)
                .read_to_end(&mut part)
                .await
                .map_err(|source| StorageError::Io {
                    context: format!("reading {}", local.display()),
                    source,
                })?;
            if part.is_empty() {
                break;
            }
            hasher.update(&part);
            size += part.len() as u64;
            in_flight.push(multipart.put_part(PutPayload::from(part)));
            while in_flight.len() >= options.concurrency.max(1) {
                if let Some(result) = in_flight.next().await {
                    result.map_err(backend)?;
                }
            }
        }
        while let Some(result) = in_flight.next().await {
            result.map_err(backend)?;
        }
        multipart.complete().await.map_err(backend)?;
        upload.0 = None;
        Ok(ObjectEntry {
            size,
            sha256: hex::encode(hasher.finalize()),
        })
    }

    /// Stores `bytes` as `name` with one PUT.
    pub async fn put_bytes(
        &self,
        name: &str,
        bytes: impl Into<Bytes>,
    ) -> Result<ObjectEntry, StorageError> {
        let location = self.start(name)?;
        let entry = self.put(&location, bytes.into()).await?;
        self.record(name, &entry)?;
        Ok(entry)
    }

    async fn put(&self, location: &Key, bytes: Bytes) -> Result<ObjectEntry, StorageError> {
        let entry = ObjectEntry {
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
        };
        self.storage
            .inner
            .store
            .put(location, bytes.into())
            .await
            .map_err(|e| self.storage.backend("uploading", location, e))?;
        Ok(entry)
    }

    /// Writes the manifest, making every object of the session visible at once.
    pub async fn commit(mut self) -> Result<Manifest, StorageError> {
        let manifest = Manifest {
            version: 1,
            objects: std::mem::take(&mut *lock(&self.objects)),
        };
        let location = self.prefix.clone().join(MANIFEST);
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| StorageError::Io {
            context: format!("encoding {location}"),
            source: e.into(),
        })?;
        // On failure `self` drops unfinished and cleans up.
        self.storage
            .inner
            .store
            .put(&location, json.into())
            .await
            .map_err(|e| self.storage.backend("committing", &location, e))?;
        self.finished = true;
        tracing::info!(storage = %self.storage.describe(), prefix = %self.prefix, objects = manifest.objects.len(), "committed");
        Ok(manifest)
    }

    /// Deletes what the session wrote and waits for it.
    pub async fn abort(mut self) -> Result<(), StorageError> {
        self.finished = true;
        let written = std::mem::take(&mut *lock(&self.written));
        cleanup(self.storage.clone(), self.prefix.clone(), written).await
    }

    /// Validates `name`, reserves it, and notes its key for cleanup.
    fn start(&self, name: &str) -> Result<Key, StorageError> {
        let location = object_key(self.prefix.as_ref(), name)?;
        if lock(&self.objects).contains_key(name) {
            return Err(StorageError::InvalidName {
                name: name.to_string(),
                reason: "already written in this session".into(),
            });
        }
        lock(&self.written).push(location.clone());
        Ok(location)
    }

    fn record(&self, name: &str, entry: &ObjectEntry) -> Result<(), StorageError> {
        match lock(&self.objects).insert(name.to_string(), entry.clone()) {
            // Two concurrent uploads of one name both passed `start`.
            Some(_) => Err(StorageError::InvalidName {
                name: name.to_string(),
                reason: "written twice concurrently in this session".into(),
            }),
            None => Ok(()),
        }
    }
}

impl Drop for UploadSession {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let written = std::mem::take(&mut *lock(&self.written));
        if written.is_empty() {
            return;
        }
        let (storage, prefix) = (self.storage.clone(), self.prefix.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                tracing::warn!(prefix = %prefix, "write session dropped without commit; deleting what it wrote");
                runtime.spawn(async move {
                    if let Err(e) = cleanup(storage, prefix, written).await {
                        tracing::warn!("cleaning up an uncommitted session: {e}");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(prefix = %prefix, "write session dropped without commit outside a runtime; its objects stay, invisible, until delete_prefix");
            }
        }
    }
}

/// Deletes the session's objects, then anything else under the prefix (parts of a PUT that was
/// cut off are not listed in `written` on every store).
async fn cleanup(storage: Storage, prefix: Key, written: Vec<Key>) -> Result<(), StorageError> {
    for location in &written {
        match storage.inner.store.delete(location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => tracing::warn!("deleting {location}: {e}"),
        }
    }
    storage.delete_prefix(prefix.as_ref()).await.map(|_| ())
}

/// A multipart upload that is aborted when dropped unfinished (a cancelled `upload_file`), so
/// its parts do not linger in the bucket.
struct AbortOnDrop(Option<Box<dyn MultipartUpload>>);

impl AbortOnDrop {
    async fn abort(&mut self) {
        if let Some(mut upload) = self.0.take()
            && let Err(e) = upload.abort().await
        {
            tracing::warn!("aborting a multipart upload: {e}");
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(mut upload) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                if let Err(e) = upload.abort().await {
                    tracing::warn!("aborting a cancelled multipart upload: {e}");
                }
            });
        }
    }
}
