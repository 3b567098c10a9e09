//! The blob cache: `<cache_dir>/blobs/sha256/<hex>`, the same layout as an OCI image layout's
//! `blobs/`, so the local image store is a `BlobCache` too.
//!
//! Invariant: a file at `blobs/sha256/<hex>` holds bytes whose sha256 is `<hex>`. Every write
//! goes to a `.tmp-*` file in the same directory, is hashed as it is written, and is renamed
//! into place only when the digest (and the size, when known) match; a failed or interrupted
//! write leaves at most a `.tmp-*` file. Concurrent writers of one blob are harmless: both
//! renames put identical bytes in place.

use crate::{RegistryError, reference::validate_digest};
use sha2::{Digest as _, Sha256};
use std::{
    fs,
    io::{self, Read, Write},
    path::{Path, PathBuf},
    pin::Pin,
    task::{Context, Poll},
};
use tempfile::{Builder, TempPath};
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};

/// Files in `blobs/sha256/` whose names start with this are unfinished writes.
const TEMP_PREFIX: &str = ".tmp-";

/// Content-addressed blob files, verified on the way in.
#[derive(Clone, Debug)]
pub struct BlobCache {
    root: PathBuf,
}

/// Why a blob could not be stored.
#[derive(Debug)]
pub(crate) enum BlobError {
    Io { path: PathBuf, source: io::Error },
    Digest { expected: String, actual: String },
    Size { expected: u64, actual: u64 },
}

impl BlobError {
    /// The error in terms of the image being pulled.
    pub(crate) fn into_registry(self, location: &str, image: &str, what: &str) -> RegistryError {
        match self {
            BlobError::Io { path, source } => RegistryError::Cache { path, source },
            BlobError::Digest { expected, actual } => RegistryError::DigestMismatch {
                location: location.to_string(),
                image: image.to_string(),
                what: what.to_string(),
                expected,
                actual,
            },
            BlobError::Size { expected, actual } => RegistryError::Failed {
                location: location.to_string(),
                image: image.to_string(),
                message: format!("{what} is {actual} bytes, but its descriptor says {expected}"),
            },
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl BlobCache {
    /// A cache rooted at `cache_dir`; directories are created on first write.
    pub fn new(cache_dir: &Path) -> BlobCache {
        BlobCache {
            root: cache_dir.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    /// Where the blob `digest` (`sha256:<hex>`) lives, present or not; `None` for a digest that
    /// is not sha256 (such a name must never become a path).
    pub fn path(&self, digest: &str) -> Option<PathBuf> {
        validate_digest(digest).ok()?;
        let hex = digest.strip_prefix("sha256:")?;
        Some(self.dir().join(hex))
    }

    /// The cached blob, when present with the expected size. A size mismatch means something
    /// outside this crate changed the file: it is then fetched again and replaced.
    pub fn get(&self, digest: &str, size: u64) -> Option<PathBuf> {
        let path = self.path(digest)?;
        let meta = fs::metadata(&path).ok()?;
        (meta.is_file() && meta.len() == size).then_some(path)
    }

    fn ensure_dir(&self) -> Result<PathBuf, BlobError> {
        let dir = self.dir();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(dir)
    }

    fn final_path(&self, digest: &str) -> Result<PathBuf, BlobError> {
        self.path(digest).ok_or_else(|| BlobError::Digest {
            expected: digest.to_string(),
            actual: "a digest that is not sha256".to_string(),
        })
    }

    /// A writer for the blob `digest` of `size` bytes; [`PendingBlob::commit`] verifies and
    /// publishes it. Writing more than `size` bytes fails: a registry cannot fill the disk.
    pub(crate) async fn writer(&self, digest: &str, size: u64) -> Result<PendingBlob, BlobError> {
        let final_path = self.final_path(digest)?;
        let dir = self.ensure_dir()?;
        let temp = Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(&dir)
            .map_err(io_err(&dir))?;
        let (file, temp) = temp.into_parts();
        Ok(PendingBlob {
            file: BufWriter::with_capacity(256 * 1024, tokio::fs::File::from_std(file)),
            hasher: Sha256::new(),
            written: 0,
            size,
            temp,
            final_path,
            digest: digest.to_string(),
        })
    }

    /// Stores `bytes` (a manifest or config) as blob `digest`.
    pub(crate) fn insert_bytes(&self, digest: &str, bytes: &[u8]) -> Result<PathBuf, BlobError> {
        let size = bytes.len() as u64;
        if let Some(path) = self.get(digest, size) {
            return Ok(path);
        }
        let (actual, _, path) = self.insert_reader(Some((digest, size)), bytes)?;
        debug_assert_eq!(actual, digest);
        Ok(path)
    }

    /// Stores the file `src` as a blob: by hard link when it is on the same filesystem (the
    /// local store and the cache usually are), else by copy. `expected` is the digest and size
    /// it must have; without it, the blob is stored under whatever digest it has. Returns
    /// (digest, size, path).
    pub(crate) fn insert_file(
        &self,
        expected: Option<(&str, u64)>,
        src: &Path,
    ) -> Result<(String, u64, PathBuf), BlobError> {
        if let Some((digest, size)) = expected
            && let Some(path) = self.get(digest, size)
        {
            return Ok((digest.to_string(), size, path));
        }
        if let Some((digest, _)) = expected {
            self.final_path(digest)?;
        }
        let dir = self.ensure_dir()?;
        let linked = Builder::new()
            .prefix(TEMP_PREFIX)
            .make_in(&dir, |temp| fs::hard_link(src, temp));
        match linked {
            Ok(linked) => {
                let temp = linked.into_temp_path();
                let mut file = fs::File::open(&temp).map_err(io_err(&temp))?;
                let (actual, size) = hash_into(&mut file, &mut io::sink()).map_err(io_err(src))?;
                self.publish(temp, expected, actual, size)
            }
            // Another filesystem, or links not allowed: copy.
            Err(_) => {
                let file = fs::File::open(src).map_err(io_err(src))?;
                self.insert_reader(expected, file)
            }
        }
    }

    /// Stores what `reader` yields as a blob; see [`BlobCache::insert_file`].
    pub(crate) fn insert_reader(
        &self,
        expected: Option<(&str, u64)>,
        mut reader: impl Read,
    ) -> Result<(String, u64, PathBuf), BlobError> {
        let dir = self.ensure_dir()?;
        let mut temp = Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(&dir)
            .map_err(io_err(&dir))?;
        let temp_path = temp.path().to_path_buf();
        let (actual, size) =
            hash_into(&mut reader, temp.as_file_mut()).map_err(io_err(&temp_path))?;
        temp.as_file().sync_all().map_err(io_err(&temp_path))?;
        self.publish(temp.into_temp_path(), expected, actual, size)
    }

    fn publish(
        &self,
        temp: TempPath,
        expected: Option<(&str, u64)>,
        actual: String,
        size: u64,
    ) -> Result<(String, u64, PathBuf), BlobError> {
        if let Some((digest, expected_size)) = expected {
            if digest != actual {
                return Err(BlobError::Digest {
                    expected: digest.to_string(),
                    actual,
                });
            }
            if expected_size != size {
                return Err(BlobError::Size {
                    expected: expected_size,
                    actual: size,
                });
            }
        }
        let path = self.final_path(&actual)?;
        temp.persist(&path).map_err(|e| BlobError::Io {
            path: path.clone(),
            source: e.error,
        })?;
        Ok((actual, size, path))
    }

    /// Reads a small blob (manifest, config) and checks it against its digest; `max` guards
    /// against a descriptor that claims gigabytes.
    pub(crate) fn read_verified(&self, digest: &str, max: u64) -> Result<Vec<u8>, BlobError> {
        let path = self.final_path(digest)?;
        let file = fs::File::open(&path).map_err(io_err(&path))?;
        let mut bytes = Vec::new();
        file.take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err(&path))?;
        if bytes.len() as u64 > max {
            return Err(BlobError::Io {
                path,
                source: io::Error::other(format!("larger than {max} bytes")),
            });
        }
        let actual = sha256_digest(&bytes);
        if actual != digest {
            return Err(BlobError::Digest {
                expected: digest.to_string(),
                actual,
            });
        }
        Ok(bytes)
    }
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// Copies `reader` to `writer`, returning the sha256 digest and length of what passed.
fn hash_into(reader: &mut impl Read, writer: &mut impl Write) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        writer.write_all(&buf[..n])?;
        size += n as u64;
    }
    Ok((format!("sha256:{:x}", hasher.finalize()), size))
}

/// A blob being written: hashes exactly the bytes that reach the file.
pub(crate) struct PendingBlob {
    file: BufWriter<tokio::fs::File>,
    hasher: Sha256,
    written: u64,
    size: u64,
    temp: TempPath,
    final_path: PathBuf,
    digest: String,
}

impl PendingBlob {
    /// Flushes, verifies digest and size, and renames the blob into place.
    pub(crate) async fn commit(mut self) -> Result<PathBuf, BlobError> {
        let size = self.size;
        let temp_path = self.temp.to_path_buf();
        self.file.flush().await.map_err(io_err(&temp_path))?;
        let actual = format!("sha256:{:x}", self.hasher.finalize_reset());
        if actual != self.digest {
            return Err(BlobError::Digest {
                expected: self.digest,
                actual,
            });
        }
        if self.written != size {
            return Err(BlobError::Size {
                expected: size,
                actual: self.written,
            });
        }
        // Durable before visible: a crash must not leave a short file under a verified name.
        self.file
            .get_mut()
            .sync_all()
            .await
            .map_err(io_err(&temp_path))?;
        let final_path = self.final_path.clone();
        self.temp.persist(&final_path).map_err(|e| BlobError::Io {
            path: final_path.clone(),
            source: e.error,
        })?;
        Ok(final_path)
    }
}

impl AsyncWrite for PendingBlob {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.written + buf.len() as u64 > this.size {
            return Poll::Ready(Err(io::Error::other(format!(
                "the blob is larger than its descriptor's {} bytes",
                this.size
            ))));
        }
        let poll = Pin::new(&mut this.file).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &poll {
            this.hasher.update(&buf[..*n]);
            this.written += *n as u64;
        }
        poll
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().file).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().file).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn verifies_before_publishing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::new(dir.path());
        let good = sha256_digest(b"hello");

        let mut w = cache.writer(&good, 5).await.unwrap();
        w.write_all(b"hello").await.unwrap();
        let path = w.commit().await.unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"hello");
        assert_eq!(cache.get(&good, 5), Some(path.clone()));
        assert_eq!(cache.get(&good, 6), None);

        let other = sha256_digest(b"other");
        let mut w = cache.writer(&other, 8).await.unwrap();
        w.write_all(b"tampered").await.unwrap();
        assert!(matches!(w.commit().await, Err(BlobError::Digest { .. })));
        let mut w = cache.writer(&other, 2).await.unwrap();
        assert!(w.write_all(b"too long").await.is_err());
        drop(w);
        assert!(cache.path(&other).is_some_and(|p| !p.exists()));
        // Nothing but the good blob is left behind.
        let names: Vec<_> = fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .collect();
        assert_eq!(names.len(), 1);

        assert_eq!(cache.path("sha256:../../etc"), None);
    }

    #[test]
    fn inserts_files_by_link_or_copy() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::write(&src, b"layer").unwrap();
        let cache = BlobCache::new(&dir.path().join("cache"));
        let (digest, size, path) = cache.insert_file(None, &src).unwrap();
        assert_eq!(
            (digest.as_str(), size),
            (sha256_digest(b"layer").as_str(), 5)
        );
        assert_eq!(fs::read(path).unwrap(), b"layer");
        assert!(matches!(
            cache.insert_file(Some((&sha256_digest(b"x"), 5)), &src),
            Err(BlobError::Digest { .. })
        ));
        assert_eq!(cache.read_verified(&digest, 10).unwrap(), b"layer");
    }
}
