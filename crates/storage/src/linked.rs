//! The `Local` provider's fast path: when the bucket is a directory on the same filesystem as
//! the file being stored or fetched, a hard link replaces the copy. The bytes are still read
//! once, to compute (upload) or check (download) their sha256, so the manifest means the same
//! as with any other provider. Nothing in Kiln writes a stored or downloaded file in place, so
//! sharing an inode between the two names is safe.

use crate::{StorageError, manifest::ObjectEntry};
use object_store::path::Path as Key;
use sha2::{Digest, Sha256};
use std::{
    io::Read,
    path::{Path, PathBuf},
};

/// Where `key` lives under the `Local` bucket `root`, for keys that `LocalFileSystem` stores
/// under their own name (no characters it would percent-encode).
pub(crate) fn local_path(root: &Path, key: &Key) -> Option<PathBuf> {
    let plain = key
        .as_ref()
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-'));
    plain.then(|| root.join(key.as_ref()))
}

/// Size and sha256 of the file at `path`.
pub(crate) fn digest_file(path: &Path) -> std::io::Result<ObjectEntry> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        size += read as u64;
    }
    Ok(ObjectEntry {
        size,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// Links `from` as `to` (replacing `to`); `Ok(false)` if they are on different filesystems or
/// the filesystem has no hard links, so the caller copies instead.
pub(crate) fn link(from: &Path, to: &Path) -> Result<bool, StorageError> {
    let io = |context: String| move |source| StorageError::Io { context, source };
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    }
    match std::fs::remove_file(to) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io(format!("replacing {}", to.display()))(e));
        }
        _ => {}
    }
    match std::fs::hard_link(from, to) {
        Ok(()) => Ok(true),
        Err(e)
            if e.kind() == std::io::ErrorKind::CrossesDevices
                || e.kind() == std::io::ErrorKind::Unsupported
                || e.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            Ok(false)
        }
        Err(e) => Err(io(format!(
            "linking {} to {}",
            from.display(),
            to.display()
        ))(e)),
    }
}
