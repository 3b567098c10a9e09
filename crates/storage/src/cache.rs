//! The local chunk cache behind [`crate::Storage::read_range`].
//!
//! - Objects are read in fixed [`CHUNK_SIZE`] chunks; a chunk is one file
//!   `<dir>/<object id>-<index>`, where the object id hashes key, size and ETag (so a
//!   replaced object never hits stale chunks).
//! - Bounded: after each insertion the least recently used chunks are deleted until the files
//!   total at most the bound (the newest chunk always stays, even if alone it exceeds it).
//! - Single-flight: readers of a missing chunk queue on one per-chunk lock; the first fetches,
//!   the others then find the file.
//! - A chunk file is written to a temporary name and renamed, so a file with a chunk name is
//!   always complete.
//! - Survives restarts: at open, chunk files are adopted (oldest modification time = least
//!   recently used), temporary files of an interrupted write are deleted, and the bound is
//!   enforced.

use crate::{CHUNK_SIZE, Storage, StorageError, lock, storage::ObjectInfo};
use bytes::Bytes;
use object_store::{ObjectStoreExt, path::Path as Key};
use sha2::{Digest, Sha256};
use std::{
    collections::{BTreeMap, HashMap},
    ops::Range,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

const PARTIAL_PREFIX: &str = ".partial-";

pub(crate) struct ChunkCache {
    dir: PathBuf,
    capacity: u64,
    state: Mutex<Lru>,
    /// One lock per chunk being fetched; removed when the fetch ends.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

#[derive(Default)]
struct Lru {
    /// Chunk file name → (size, last use tick).
    entries: HashMap<String, (u64, u64)>,
    /// Last use tick → chunk file name; the first is the least recently used.
    order: BTreeMap<u64, String>,
    total: u64,
    tick: u64,
}

impl Lru {
    fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Marks `name` used now; false if it is not cached.
    fn touch(&mut self, name: &str) -> bool {
        self.tick += 1;
        let tick = self.tick;
        match self.entries.get_mut(name) {
            Some((_, last)) => {
                self.order.remove(last);
                *last = tick;
                self.order.insert(tick, name.to_string());
                true
            }
            None => false,
        }
    }

    fn insert(&mut self, name: String, size: u64) {
        self.remove(&name);
        self.tick += 1;
        self.order.insert(self.tick, name.clone());
        self.entries.insert(name, (size, self.tick));
        self.total += size;
    }

    fn remove(&mut self, name: &str) -> bool {
        match self.entries.remove(name) {
            Some((size, tick)) => {
                self.order.remove(&tick);
                self.total -= size;
                true
            }
            None => false,
        }
    }

    /// Removes least recently used entries until `total <= capacity`, keeping the newest one.
    fn evict(&mut self, capacity: u64) -> Vec<String> {
        let mut evicted = Vec::new();
        while self.total > capacity && self.order.len() > 1 {
            if let Some((_, name)) = self.order.pop_first() {
                if let Some((size, _)) = self.entries.remove(&name) {
                    self.total -= size;
                }
                evicted.push(name);
            }
        }
        evicted
    }
}

impl ChunkCache {
    /// Opens (creating) the cache directory and adopts the chunks already there.
    pub(crate) fn open(dir: &Path, capacity: u64) -> Result<Self, StorageError> {
        let io = |context: String| move |source| StorageError::Io { context, source };
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(format!("reading {}", dir.display())))? {
            let entry = entry.map_err(io(format!("reading {}", dir.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.metadata() else { continue };
            if name.starts_with(PARTIAL_PREFIX) || !meta.is_file() {
                // Left by a write that was interrupted.
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            found.push((used, name, meta.len()));
        }
        found.sort();
        let mut lru = Lru::default();
        for (_, name, size) in found {
            lru.insert(name, size);
        }
        for name in lru.evict(capacity) {
            let _ = std::fs::remove_file(dir.join(name));
        }
        tracing::debug!(dir = %dir.display(), chunks = lru.entries.len(), bytes = lru.total, "opened chunk cache");
        Ok(Self {
            dir: dir.to_path_buf(),
            capacity,
            state: Mutex::new(lru),
            fetching: Mutex::new(HashMap::new()),
        })
    }

    /// Bytes `within` (relative to the chunk start) of chunk `index` of `location`.
    pub(crate) async fn read(
        &self,
        storage: &Storage,
        location: &Key,
        info: &ObjectInfo,
        index: u64,
        within: Range<u64>,
    ) -> Result<Bytes, StorageError> {
        let name = chunk_name(location, info, index);
        if let Some(bytes) = self.read_cached(&name, &within).await? {
            return Ok(bytes);
        }
        self.read_ahead(storage, location, info, index);
        let flight = lock(&self.fetching)
            .entry(name.clone())
            .or_default()
            .clone();
        let _fetching = flight.lock().await;
        // Fetched by the reader we waited for?
        let result = match self.read_cached(&name, &within).await? {
            Some(bytes) => Ok(bytes),
            None => self
                .fetch(storage, location, info, index, &name)
                .await
                .map(|chunk| chunk.slice(within.start as usize..within.end as usize)),
        };
        lock(&self.fetching).remove(&name);
        result
    }

    /// After a miss on chunk `index`, fetches the next few chunks in the background: reads
    /// through the cache are mostly sequential (a file being fetched or scanned), and a cold
    /// reader then finds them cached or in flight instead of waiting for one round trip each.
    /// Each goes through [`ChunkCache::read`], so it joins or starts the chunk's single fetch.
    fn read_ahead(&self, storage: &Storage, location: &Key, info: &ObjectInfo, index: u64) {
        let chunks = info.size.div_ceil(CHUNK_SIZE);
        // Never so far ahead that the prefetched chunks evict the one being read.
        let room = (self.capacity / CHUNK_SIZE).saturating_sub(2);
        let ahead = (storage.inner.options.concurrency as u64).min(room);
        for next in (index + 1..chunks).take(ahead as usize) {
            let name = chunk_name(location, info, next);
            if lock(&self.state).contains(&name) || lock(&self.fetching).contains_key(&name) {
                continue;
            }
            let (storage, location, info) = (storage.clone(), location.clone(), info.clone());
            tokio::spawn(async move {
                let cache = &storage.inner.cache;
                if let Err(error) = cache.read(&storage, &location, &info, next, 0..0).await {
                    tracing::debug!(%error, "reading ahead");
                }
            });
        }
    }

    /// Reads from the chunk file if it is cached. `None` if not, or if it was evicted between
    /// the lookup and the read.
    async fn read_cached(
        &self,
        name: &str,
        within: &Range<u64>,
    ) -> Result<Option<Bytes>, StorageError> {
        if !lock(&self.state).touch(name) {
            return Ok(None);
        }
        let path = self.dir.join(name);
        let within = within.clone();
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let file = std::fs::File::open(&path)?;
            let mut buffer = vec![0; (within.end - within.start) as usize];
            file.read_exact_at(&mut buffer, within.start)?;
            Ok(buffer)
        })
        .await
        .map_err(|e| StorageError::Io {
            context: format!("reading cached chunk {name}"),
            source: std::io::Error::other(e),
        })?;
        match read {
            Ok(buffer) => Ok(Some(buffer.into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                lock(&self.state).remove(name);
                Ok(None)
            }
            Err(source) => Err(StorageError::Io {
                context: format!("reading cached chunk {}", self.dir.join(name).display()),
                source,
            }),
        }
    }

    /// Fetches the whole chunk, stores it, evicts down to the bound.
    async fn fetch(
        &self,
        storage: &Storage,
        location: &Key,
        info: &ObjectInfo,
        index: u64,
        name: &str,
    ) -> Result<Bytes, StorageError> {
        let start = index * CHUNK_SIZE;
        let end = (start + CHUNK_SIZE).min(info.size);
        let chunk = storage
            .inner
            .store
            .get_range(location, start..end)
            .await
            .map_err(|e| storage.backend("reading", location, e))?;
        if chunk.len() as u64 != end - start {
            return Err(StorageError::Corrupt {
                storage: storage.describe().to_string(),
                key: location.to_string(),
                expected: format!("{} bytes at offset {start}", end - start),
                actual: format!("{} bytes", chunk.len()),
            });
        }
        let (dir, final_path, data) = (self.dir.clone(), self.dir.join(name), chunk.clone());
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut temp = tempfile::Builder::new()
                .prefix(PARTIAL_PREFIX)
                .tempfile_in(&dir)?;
            std::io::Write::write_all(&mut temp, &data)?;
            temp.persist(&final_path).map_err(|e| e.error)?;
            Ok(())
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        match written {
            Ok(()) => {
                let evicted = {
                    let mut state = lock(&self.state);
                    state.insert(name.to_string(), chunk.len() as u64);
                    state.evict(self.capacity)
                };
                for evicted in evicted {
                    let _ = std::fs::remove_file(self.dir.join(evicted));
                }
            }
            // A full or read-only cache disk slows reads down but does not fail them.
            Err(e) => tracing::warn!(dir = %self.dir.display(), "caching a chunk: {e}"),
        }
        Ok(chunk)
    }
}

fn chunk_name(location: &Key, info: &ObjectInfo, index: u64) -> String {
    let mut hasher = Sha256::new();
    for part in [location.as_ref(), &info.size.to_string(), &info.etag] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    format!("{}-{index}", &hex::encode(hasher.finalize())[..32])
}
