//! [`StorageError`]: every variant names the storage (`AWSBucket 'kiln' at …`, as
//! [`crate::Storage::describe`] says it) and the object or prefix. Messages never contain
//! credentials.

use std::io;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The object does not exist, or its prefix has no manifest (an uncommitted or deleted
    /// session counts as absent).
    #[error("{storage}: {key} not found")]
    NotFound { storage: String, key: String },

    /// The bytes read do not match the manifest: the object was changed or damaged after its
    /// session committed.
    #[error("{storage}: {key} is corrupt: expected {expected}, got {actual}")]
    Corrupt {
        storage: String,
        key: String,
        expected: String,
        actual: String,
    },

    /// A committed session already exists under the prefix; committed prefixes are immutable.
    #[error("{storage}: {prefix} already exists")]
    AlreadyExists { storage: String, prefix: String },

    /// A name or prefix that cannot be an object key.
    #[error("invalid object name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },

    /// A ranged read outside the object.
    #[error("{storage}: bytes {start}..{end} of {key} are beyond its end ({size} bytes)")]
    InvalidRange {
        storage: String,
        key: String,
        start: u64,
        end: u64,
        size: u64,
    },

    /// The object store failed (network, credentials, server error).
    #[error("{operation} {key} in {storage}: {source}")]
    Backend {
        storage: String,
        operation: &'static str,
        key: String,
        #[source]
        source: Box<object_store::Error>,
    },

    /// Local file I/O (the file to upload, the download target, the chunk cache).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}
