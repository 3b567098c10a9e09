//! Template builds in object storage: what a node that never built a template restores from.
//!
//! A build is stored under `templates/<template>/<build>/` as one write session (so it is
//! there whole or not at all): `rootfs.tar.zst` (the root filesystem, owners, modes, links and
//! device nodes kept), `checkpoint.img` (the template snapshot) and `template.json`.
//! [`fetch_rootfs`] brings a build's root filesystem back into a local directory.

use crate::{Template, TemplateError, io};
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
    let archive = dir.join(ROOTFS_ARCHIVE);
    storage
        .download_file(&build_prefix(template, build), ROOTFS_ARCHIVE, &archive)
        .await
        .map_err(storage_error("fetching the template build"))?;
    let partial = dir.join("rootfs.partial");
    let _ = std::fs::remove_dir_all(&partial);
    let (from, to) = (archive.clone(), partial.clone());
    let unpacked = tokio::task::spawn_blocking(move || unpack(&from, &to))
        .await
        .map_err(|e| TemplateError::Step {
            step: "fetch",
            detail: format!("unpacking the root filesystem: {e}"),
        })
        .and_then(|result| result);
    let _ = std::fs::remove_file(&archive);
    unpacked?;
    std::fs::rename(&partial, &rootfs)
        .map_err(io(format!("moving {} into place", rootfs.display())))?;
    Ok(rootfs)
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

fn unpack(archive: &Path, into: &Path) -> Result<(), TemplateError> {
    let file =
        std::fs::File::open(archive).map_err(io(format!("opening {}", archive.display())))?;
    let decoder = zstd::Decoder::new(file).map_err(io("starting zstd"))?;
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
        unpack(&archive, &out).unwrap();
        let secret = std::fs::metadata(out.join("etc/secret")).unwrap();
        assert_eq!(secret.mode() & 0o7777, 0o640);
        assert_eq!((secret.uid(), secret.gid()), (1000, 27));
        assert_eq!(
            std::fs::read_link(out.join("etc/sub/link")).unwrap(),
            std::path::Path::new("../etc/secret")
        );
    }
}
