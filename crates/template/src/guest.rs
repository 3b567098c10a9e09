//! What Kiln adds to every template's root filesystem: envd as init, the host channel's mount
//! point, and `sudo` served by envd.
//!
//! Only file operations: nothing from the root filesystem runs on the host.

use crate::{TemplateError, io};
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
    let target = rootfs.join(ENVD);
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    }
    std::fs::copy(envd, &target)
        .map_err(io(format!("copying {} into the rootfs", envd.display())))?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
        .map_err(io("chmod envd"))?;
    std::fs::create_dir_all(rootfs.join("run/kiln")).map_err(io("creating /run/kiln"))?;
    install_sudo(rootfs)?;
    envd_digest(envd)
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
    let sudo = rootfs.join(SUDO);
    match std::fs::symlink_metadata(&sudo) {
        Ok(meta) if meta.file_type().is_symlink() => {
            std::fs::remove_file(&sudo).map_err(io("replacing the sudo link"))?;
        }
        Ok(_) => {
            std::fs::rename(&sudo, rootfs.join(DIVERTED_SUDO))
                .map_err(io("moving the image's sudo aside"))?;
            record_diversion(rootfs)?;
        }
        Err(_) => {}
    }
    std::os::unix::fs::symlink("envd", &sudo).map_err(io("linking /usr/bin/sudo to envd"))
}

fn record_diversion(rootfs: &Path) -> Result<(), TemplateError> {
    let diversions: PathBuf = rootfs.join(DPKG_DIVERSIONS);
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
