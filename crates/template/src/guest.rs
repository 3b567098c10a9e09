//! What Kiln adds to every template's root filesystem: envd as init, the host channel's mount
//! point, and `sudo` served by envd.
//!
//! Only file operations, every path resolved inside the root filesystem
//! ([`resolve_in_root`]): nothing from an (untrusted) image runs on the host, and no symlink in
//! it can redirect a write outside it.

use crate::{TemplateError, io, layers::resolve_in_root};
use sha2::{Digest, Sha256};
use std::{
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

const ENVD: &str = "usr/bin/envd";
const SUDO: &str = "usr/bin/sudo";
/// Where an image's own sudo goes: it cannot work in gVisor (`no_new_privs` defeats setuid),
/// but stays installed, as `dpkg-divert --local --rename` would leave it.
const DIVERTED_SUDO: &str = "usr/bin/sudo.distrib";
const DPKG_DIVERSIONS: &str = "var/lib/dpkg/diversions";

/// Installs `envd` (static) into `rootfs` and makes `/usr/bin/sudo` run through it. Returns the
/// SHA-256 of the envd installed, which says whether a template's snapshot is current.
pub fn install(rootfs: &Path, envd: &Path) -> Result<String, TemplateError> {
    for dir in ["usr", "usr/bin", "run", "run/kiln"] {
        let dir = inside(rootfs, dir, true)?;
        if !dir.is_dir() {
            std::fs::create_dir(&dir).map_err(io(format!("creating {}", dir.display())))?;
        }
    }
    let target = inside(rootfs, ENVD, false)?;
    let _ = std::fs::remove_file(&target);
    std::fs::copy(envd, &target)
        .map_err(io(format!("copying {} into the rootfs", envd.display())))?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
        .map_err(io("chmod envd"))?;
    install_sudo(rootfs)?;
    envd_digest(envd)
}

/// `path` inside `rootfs`, resolved as a chroot would.
fn inside(rootfs: &Path, path: &str, follow_last: bool) -> Result<PathBuf, TemplateError> {
    resolve_in_root(rootfs, Path::new(path), follow_last).map_err(|e| TemplateError::Step {
        step: "installing envd",
        detail: e.to_string(),
    })
}

/// The SHA-256 (hex) of an envd binary.
pub fn envd_digest(envd: &Path) -> Result<String, TemplateError> {
    let bytes = std::fs::read(envd).map_err(io(format!("reading {}", envd.display())))?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// `/usr/bin/sudo` → `envd`; an image's own sudo is diverted the way dpkg records it, so a
/// reinstalled sudo package does not replace the link.
fn install_sudo(rootfs: &Path) -> Result<(), TemplateError> {
    let sudo = inside(rootfs, SUDO, false)?;
    match std::fs::symlink_metadata(&sudo) {
        Ok(meta) if meta.file_type().is_symlink() => {
            std::fs::remove_file(&sudo).map_err(io("replacing the sudo link"))?;
        }
        Ok(_) => {
            std::fs::rename(&sudo, inside(rootfs, DIVERTED_SUDO, false)?)
                .map_err(io("moving the image's sudo aside"))?;
            record_diversion(rootfs)?;
        }
        Err(_) => {}
    }
    std::os::unix::fs::symlink("envd", &sudo).map_err(io("linking /usr/bin/sudo to envd"))
}

fn record_diversion(rootfs: &Path) -> Result<(), TemplateError> {
    let diversions = inside(rootfs, DPKG_DIVERSIONS, false)?;
    if !diversions.parent().is_some_and(Path::exists) {
        return Ok(());
    }
    let entry = format!("/{SUDO}\n/{DIVERTED_SUDO}\n:\n");
    let existing = std::fs::read_to_string(&diversions).unwrap_or_default();
    if existing.contains(&entry) {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&diversions)
        .and_then(|mut file| file.write_all(entry.as_bytes()))
        .map_err(io("recording the sudo diversion"))
}

#[cfg(test)]
mod tests {
    use super::install;

    #[test]
    fn installs_envd_and_diverts_sudo_once() {
        let root = tempfile::tempdir().unwrap();
        let rootfs = root.path();
        std::fs::create_dir_all(rootfs.join("usr/bin")).unwrap();
        std::fs::create_dir_all(rootfs.join("var/lib/dpkg")).unwrap();
        std::fs::write(rootfs.join("usr/bin/sudo"), b"real sudo").unwrap();
        let envd = root.path().join("envd-binary");
        std::fs::write(&envd, b"envd").unwrap();

        let digest = install(rootfs, &envd).unwrap();
        assert_eq!(digest.len(), 64);
        assert_eq!(std::fs::read(rootfs.join("usr/bin/envd")).unwrap(), b"envd");
        assert_eq!(
            std::fs::read_link(rootfs.join("usr/bin/sudo")).unwrap(),
            std::path::Path::new("envd")
        );
        assert_eq!(
            std::fs::read(rootfs.join("usr/bin/sudo.distrib")).unwrap(),
            b"real sudo"
        );
        assert!(rootfs.join("run/kiln").is_dir());

        // Installing again (a new envd) keeps the diverted sudo and records it once.
        install(rootfs, &envd).unwrap();
        let diversions = std::fs::read_to_string(rootfs.join("var/lib/dpkg/diversions")).unwrap();
        assert_eq!(diversions, "/usr/bin/sudo\n/usr/bin/sudo.distrib\n:\n");
        assert_eq!(
            std::fs::read(rootfs.join("usr/bin/sudo.distrib")).unwrap(),
            b"real sudo"
        );
    }
}
