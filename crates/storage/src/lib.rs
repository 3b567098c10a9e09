//! Where Kiln keeps template builds and paused-sandbox snapshots: object storage.
//!
//! # Tour
//!
//! - [`StorageConfig::from_env`] reads `STORAGE_PROVIDER` and friends (table in the `config`
//!   module docs), checks all of them at once ([`ConfigErrors`]) and yields a [`Provider`]:
//!   `Local` (a directory), `AWSBucket` (S3 or any S3-compatible server), `OCIBucket`,
//!   `GCPBucket`, `AzureBucket`. Each is an [`object_store::ObjectStore`]. `OCIBucket` has two
//!   ways in:
//!   - `OCI_AUTH=api_key|instance_principal`: OCI Object Storage's **native API** through
//!     [`OciObjectStorage`], the one provider Kiln implements itself (object_store has none
//!     for OCI), every request signed by `oracle-auth` (an API key from `~/.oci/config`, or the
//!     instance's identity, which the S3 API cannot use);
//!   - `OCI_S3_ACCESS_KEY_ID`/`OCI_S3_SECRET_ACCESS_KEY`: the **S3 Compatibility API** with a
//!     Customer Secret Key, through object_store's S3 client.
//!
//!   Setting both is a configuration error.
//! - [`Storage`] wraps that store (`Arc<dyn ObjectStore>`) with what Kiln needs:
//!   - write sessions: [`Storage::session`] → [`UploadSession`] (`upload_file`, `put_bytes`,
//!     `commit` → [`Manifest`]);
//!   - verified reads of committed objects: [`Storage::download_file`],
//!     [`Storage::download_to_writer`], [`Storage::get_bytes`];
//!   - ranged reads through a local chunk cache: [`Storage::read_range`], plus
//!     [`Storage::size`], [`Storage::exists`];
//!   - [`Storage::delete_prefix`] and [`Storage::describe`].
//! - [`StorageError`]: what failed, naming the storage (`AWSBucket 'kiln' at …`) and the key.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use storage::{Storage, StorageConfig};
//! let config = StorageConfig::from_env("/var/lib/kiln".as_ref(), |k| std::env::var(k).ok())?;
//! let storage = Storage::from_config(&config)?;
//! let session = storage.session("templates/base/builds/b1").await?;
//! session.upload_file("rootfs.ext4", "/tmp/rootfs.ext4".as_ref()).await?;
//! session.put_bytes("metadata.json", b"{}".to_vec()).await?;
//! session.commit().await?;
//! storage
//!     .download_file("templates/base/builds/b1", "rootfs.ext4", "/tmp/copy.ext4".as_ref())
//!     .await?;
//! let header = storage.read_range("templates/base/builds/b1/rootfs.ext4", 0..4096).await?;
//! # Ok(()) }
//! ```
//!
//! # Key layout
//!
//! A session under prefix `p` writes `p/<name>` for each object, then `p/manifest.json`
//! (`{"version":1,"objects":{"<name>":{"size":…,"sha256":"<hex>"}}}`). Kiln chooses the
//! prefixes (for example `templates/<template>/builds/<build>` and
//! `snapshots/<sandbox>/<pause>`); this crate does not interpret them or what it stores. For
//! `Local`, keys are paths below `<LOCAL_TEMPLATE_STORAGE_BASE_PATH>/<TEMPLATE_BUCKET_NAME>`.
//!
//! # Invariants
//!
//! - **Visibility:** a prefix exists for readers exactly when its manifest does. The manifest is
//!   written last on commit and deleted first by [`Storage::delete_prefix`], so readers see a
//!   session whole or not at all. An uncommitted session aborts its multipart uploads and
//!   deletes its objects. A committed prefix is never written again
//!   ([`StorageError::AlreadyExists`]).
//! - **Verification:** every whole-object read (`download_file`, `download_to_writer`,
//!   `get_bytes`) is checked against the manifest's size and sha256; a mismatch is
//!   [`StorageError::Corrupt`], and `download_file` then leaves the destination untouched (it
//!   writes a temporary file and renames it only after the check).
//! - **Cache bound:** the chunk cache's files total at most `STORAGE_CACHE_BYTES` after every
//!   insertion (least recently used chunks go first); concurrent readers of a chunk share one
//!   fetch; chunk files are written atomically and kept across restarts.
//! - **OCI native API:** every request is signed afresh (on a 401 the credentials are
//!   invalidated and the request retried once); object and part bodies always go with
//!   `Content-Length`, never chunked; names are percent-encoded per segment, `/` kept, and the
//!   encoded path is what is signed.
//! - **OCI S3 compatibility:** requests are path-style, bodies are plain (`Content-Length`, never
//!   `aws-chunked`/`STREAMING-*` payload hashes) and carry no CRC32 checksum headers; the
//!   tests check the requests on the wire.
//! - Secrets never appear in messages, logs or `Debug` output.
//!
//! # Not yet
//!
//! The OCI native provider has not run against the real service, only against the stand-in
//! below. It does not retry failed requests (except once after a 401), copies by download and
//! re-upload, and supports no object tags.
//!
//! # Tests and benchmark
//!
//! `tests/it` runs one contract suite against a local directory, a real S3 server on loopback
//! (s3s-fs) and a loopback **stand-in** for OCI's native API (`tests/it/oci_standin.rs`), and
//! checks OCI's S3-compatibility constraints on the recorded requests. The stand-in is not
//! Oracle's service: it implements the documented endpoints and semantics (206 ranges,
//! multipart commit with etags, `nextStartWith` paging, `if-none-match: *` → 412) and refuses
//! any request whose Oracle signature does not verify; its verifier is checked against
//! Oracle's published signing vectors.
//! `cargo run --release -p storage --example chunk_cache_bench` compares chunk-cache reads with
//! a plain full read on both backends.

mod cache;
mod config;
mod error;
mod linked;
mod manifest;
mod oci;
mod session;
mod storage;

pub use config::{ConfigErrors, OciAuth, Provider, Secret, StorageConfig};
pub use error::StorageError;
pub use manifest::{MANIFEST, Manifest, ObjectEntry};
pub use oci::OciObjectStorage;
pub use session::UploadSession;
pub use storage::{CHUNK_SIZE, Storage, StorageOptions};

/// Locks a mutex whose data holds no invariant a panic could break half-way (maps updated
/// in single statements), so a poisoned lock is still usable.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
