//! Template builds in object storage: what a node that never built a template restores from.
//!
//! A build is stored under `templates/<template>/<build>/` as one write session (so it is
//! there whole or not at all): `rootfs.tar.zst` (the root filesystem, owners, modes, links and
//! device nodes kept), `checkpoint.img` (the template snapshot) and `template.json`.
//! [`fetch_rootfs`] brings a build's root filesystem back into a local directory, reading the
//! archive through the storage's chunk cache and checking it against the manifest.

use crate::{Template, TemplateError, io};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use storage::Storage;

const ROOTFS_ARCHIVE: &str = "rootfs.tar.zst";
const SNAPSHOT_IMAGE: &str = "checkpoint.img";
const METADATA: &str = "template.json";
/// zstd's fast end: a build is published once and read rarely, so speed beats ratio.
const ZSTD_LEVEL: i32 = 3;

/// Where build `build` of template `template` lives in storage.
pub fn build_prefix(template: &str, build: &str) -> String {
    format!("templates/{template}/{build}")
}

/// Whether the build is in storage (complete).
pub async fn is_published(storage: &Storage, template: &Template) -> Result<bool, TemplateError> {
    storage
        .manifest(&build_prefix(&template.id, &template.build_id))
        .await
        .map(|manifest| manifest.is_some())
        .map_err(storage_error("reading the template's manifest"))
}

/// Stores the build in `dir` (with `rootfs/` and `snapshot/`) as `template`'s build.
/// `scratch` holds the archive while it uploads.
pub async fn publish(
    storage: &Storage,
    dir: &Path,
    template: &Template,
    scratch: &Path,
) -> Result<(), TemplateError> {
    std::fs::create_dir_all(scratch).map_err(io(format!("creating {}", scratch.display())))?;
    let archive = scratch.join(format!("{}-{}", template.build_id, ROOTFS_ARCHIVE));
    let rootfs = dir.join("rootfs");
    let written = archive.clone();
    tokio::task::spawn_blocking(move || pack(&rootfs, &written))
        .await
        .map_err(|e| TemplateError::Step {
            step: "publish",
            detail: format!("archiving the root filesystem: {e}"),
        })??;
    let result = async {
        let metadata = serde_json::to_vec_pretty(template)
            .map_err(|e| TemplateError::Corrupt(template.id.clone(), e.to_string()))?;
        let context = "storing the template build";
        let session = storage
            .session(&build_prefix(&template.id, &template.build_id))
            .await
            .map_err(storage_error(context))?;
        session
            .upload_file(ROOTFS_ARCHIVE, &archive)
            .await
            .map_err(storage_error(context))?;
        session
            .upload_file(SNAPSHOT_IMAGE, &dir.join("snapshot").join(SNAPSHOT_IMAGE))
            .await
            .map_err(storage_error(context))?;
        session
            .put_bytes(METADATA, metadata)
            .await
            .map_err(storage_error(context))?;
        session.commit().await.map_err(storage_error(context))?;
        Ok(())
    }
    .await;
    let _ = std::fs::remove_file(&archive);
    result
}

/// The root filesystem of build `build` of `template`, fetched from storage into `dir` unless
/// it is there already; returns `dir/rootfs`.
pub async fn fetch_rootfs(
    storage: &Storage,
    template: &str,
    build: &str,
    dir: &Path,
) -> Result<PathBuf, TemplateError> {
    let rootfs = dir.join("rootfs");
    if rootfs.exists() {
        return Ok(rootfs);
    }
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let prefix = build_prefix(template, build);
    let entry = storage
        .entry(&prefix, ROOTFS_ARCHIVE)
        .await
        .map_err(storage_error("fetching the template build"))?;
    let reader = CachedReader {
        storage: storage.clone(),
        key: format!("{prefix}/{ROOTFS_ARCHIVE}"),
        size: entry.size,
        offset: 0,
        buffer: bytes::Bytes::new(),
        hasher: Sha256::new(),
        runtime: tokio::runtime::Handle::current(),
    };
    let partial = dir.join("rootfs.partial");
    let _ = std::fs::remove_dir_all(&partial);
    let to = partial.clone();
    let unpacked = tokio::task::spawn_blocking(move || unpack_checked(reader, &to, &entry))
        .await
        .map_err(|e| TemplateError::Step {
            step: "fetch",
            detail: format!("unpacking the root filesystem: {e}"),
        })
        .and_then(|result| result);
    if let Err(error) = unpacked {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(error);
    }
    std::fs::rename(&partial, &rootfs)
        .map_err(io(format!("moving {} into place", rootfs.display())))?;
    Ok(rootfs)
}

/// A stored object read front to back through the storage's chunk cache (so concurrent
/// fetches of one build share their chunks and a later fetch finds them cached), hashing what
/// it reads. Blocking: it drives the async reads on `runtime` from a blocking thread.
struct CachedReader {
    storage: Storage,
    key: String,
    size: u64,
    offset: u64,
    buffer: bytes::Bytes,
    hasher: Sha256,
    runtime: tokio::runtime::Handle,
}

impl std::io::Read for CachedReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.buffer.is_empty() {
            if self.offset == self.size {
                return Ok(0);
            }
            let end = (self.offset + storage::CHUNK_SIZE).min(self.size);
            self.buffer = self
                .runtime
                .block_on(self.storage.read_range(&self.key, self.offset..end))
                .map_err(std::io::Error::other)?;
            self.hasher.update(&self.buffer);
            self.offset = end;
        }
        let n = out.len().min(self.buffer.len());
        out[..n].copy_from_slice(&self.buffer[..n]);
        self.buffer = self.buffer.slice(n..);
        Ok(n)
    }
}

/// Unpacks the archive into `into`, then checks the whole object against its manifest entry.
fn unpack_checked(
    mut reader: CachedReader,
    into: &Path,
    expected: &storage::ObjectEntry,
) -> Result<(), TemplateError> {
    let unpacked = unpack(&mut reader, into);
    // The archive may end before the object does (tar's trailing blocks), or the unpacking may
    // have stopped at damage: hash the rest too, so damage is reported as what it is.
    std::io::copy(&mut reader, &mut std::io::sink()).map_err(io("reading the archive"))?;
    let actual = hex_digest(reader.hasher.finalize().as_slice());
    if reader.offset != expected.size || actual != expected.sha256 {
        return Err(TemplateError::Corrupt(
            reader.key.clone(),
            format!(
                "expected {} bytes with sha256 {}, got {} bytes with sha256 {actual}",
                expected.size, expected.sha256, reader.offset
            ),
        ));
    }
    unpacked
}

fn hex_digest(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn pack(rootfs: &Path, archive: &Path) -> Result<(), TemplateError> {
    let file =
        std::fs::File::create(archive).map_err(io(format!("creating {}", archive.display())))?;
    let encoder = zstd::Encoder::new(file, ZSTD_LEVEL).map_err(io("starting zstd"))?;
    let mut builder = tar::Builder::new(encoder);
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Complete);
    builder
        .append_dir_all(".", rootfs)
        .map_err(io(format!("archiving {}", rootfs.display())))?;
    let encoder = builder.into_inner().map_err(io("finishing the archive"))?;
    encoder.finish().map_err(io("finishing zstd"))?;
    Ok(())
}

fn unpack(archive: impl std::io::Read, into: &Path) -> Result<(), TemplateError> {
    let decoder = zstd::Decoder::new(archive).map_err(io("starting zstd"))?;
    let mut tar = tar::Archive::new(decoder);
    tar.set_preserve_permissions(true);
    tar.set_preserve_ownerships(true);
    tar.set_preserve_mtime(true);
    tar.set_unpack_xattrs(false);
    std::fs::create_dir_all(into).map_err(io(format!("creating {}", into.display())))?;
    tar.unpack(into)
        .map_err(io(format!("unpacking into {}", into.display())))
}

fn storage_error(context: &'static str) -> impl FnOnce(storage::StorageError) -> TemplateError {
    move |error| TemplateError::Step {
        step: "storage",
        detail: format!("{context}: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::{pack, unpack};
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    #[test]
    fn archive_keeps_modes_links_and_owners() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc/sub")).unwrap();
        std::fs::write(root.join("etc/secret"), b"x").unwrap();
        std::fs::set_permissions(
            root.join("etc/secret"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        std::os::unix::fs::chown(root.join("etc/secret"), Some(1000), Some(27)).unwrap();
        symlink("../etc/secret", root.join("etc/sub/link")).unwrap();
        let archive = dir.path().join("a.tar.zst");
        pack(&root, &archive).unwrap();
        let out = dir.path().join("out");
        unpack(std::fs::File::open(&archive).unwrap(), &out).unwrap();
        let secret = std::fs::metadata(out.join("etc/secret")).unwrap();
        assert_eq!(secret.mode() & 0o7777, 0o640);
        assert_eq!((secret.uid(), secret.gid()), (1000, 27));
        assert_eq!(
            std::fs::read_link(out.join("etc/sub/link")).unwrap(),
            std::path::Path::new("../etc/secret")
        );
    }
}

#[cfg(test)]
mod round_trip {
    use super::{build_prefix, fetch_rootfs, publish};
    use crate::Template;
    use storage::{Storage, StorageConfig};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_published_build_comes_back_verified() {
        let dir = tempfile::tempdir().unwrap();
        let config = StorageConfig::from_env(dir.path(), |key| {
            (key == "STORAGE_PROVIDER").then(|| "Local".to_string())
        })
        .unwrap();
        let storage = Storage::from_config(&config).unwrap();
        let build = dir.path().join("build");
        std::fs::create_dir_all(build.join("rootfs/etc")).unwrap();
        std::fs::create_dir_all(build.join("snapshot")).unwrap();
        // Incompressible, several cache chunks long.
        let big: Vec<u8> = (0..(9u64 << 20))
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        std::fs::write(build.join("rootfs/etc/big"), &big).unwrap();
        std::fs::write(build.join("snapshot/checkpoint.img"), b"image").unwrap();
        let template = Template::for_test("t1", "b1");
        publish(&storage, &build, &template, &dir.path().join("scratch"))
            .await
            .unwrap();
        assert!(super::is_published(&storage, &template).await.unwrap());

        let fetched = fetch_rootfs(&storage, "t1", "b1", &dir.path().join("fetched"))
            .await
            .unwrap();
        assert_eq!(std::fs::read(fetched.join("etc/big")).unwrap(), big);

        // A stored archive replaced behind the manifest's back is refused, and nothing is
        // left in place.
        let stored = dir
            .path()
            .join("storage/templates")
            .join(build_prefix("t1", "b1"))
            .join("rootfs.tar.zst");
        let mut bytes = std::fs::read(&stored).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::remove_file(&stored).unwrap();
        std::fs::write(&stored, &bytes).unwrap();
        let other = StorageConfig::from_env(&dir.path().join("other-home"), |key| match key {
            "STORAGE_PROVIDER" => Some("Local".to_string()),
            "LOCAL_TEMPLATE_STORAGE_BASE_PATH" => {
                Some(dir.path().join("storage").display().to_string())
            }
            _ => None,
        })
        .unwrap();
        let fresh = Storage::from_config(&other).unwrap();
        let error = fetch_rootfs(&fresh, "t1", "b1", &dir.path().join("again"))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("sha256"), "{error}");
        assert!(!dir.path().join("again/rootfs").exists());
    }
}
