//! Build layers: cached by content key, stacked with overlayfs.
//!
//! A layer is `<cache>/<key>/` holding `root/` (its files; overlayfs upper-dir format, so a
//! deletion is a 0/0 character device) and `state.json` (the build state after it). The
//! bottom layer is a plain directory (the unpacked image or a copied template). A layer exists
//! only once complete: it is assembled in `<key>.partial` and renamed, so an interrupted build
//! leaves no half layer that a later build could reuse.

use super::State;
use nix::mount::{MntFlags, MsFlags};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The layers of every build on this node.
pub(crate) struct LayerCache {
    dir: PathBuf,
}

/// A layer key: the hash of everything that produced the layer.
pub(crate) fn key(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part.as_bytes());
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl LayerCache {
    pub(crate) fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(LayerCache {
            dir: dir.to_owned(),
        })
    }

    /// The files of layer `key`.
    pub(crate) fn root(&self, key: &str) -> PathBuf {
        self.dir.join(key).join("root")
    }

    /// The build state after layer `key`, if that layer is complete.
    pub(crate) fn get(&self, key: &str) -> Option<State> {
        let text = std::fs::read_to_string(self.dir.join(key).join("state.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// A fresh directory to assemble layer `key` in (`root/`, plus `work/` for overlayfs).
    pub(crate) fn begin(&self, key: &str) -> std::io::Result<PathBuf> {
        let partial = self.dir.join(format!("{key}.partial"));
        if partial.exists() {
            let _ = nix::mount::umount2(&partial.join("merged"), MntFlags::MNT_DETACH);
            std::fs::remove_dir_all(&partial)?;
        }
        for sub in ["root", "work", "merged"] {
            std::fs::create_dir_all(partial.join(sub))?;
        }
        Ok(partial)
    }

    /// Completes layer `key` from its partial directory, recording `state`.
    pub(crate) fn finish(&self, key: &str, partial: &Path, state: &State) -> std::io::Result<()> {
        let _ = std::fs::remove_dir_all(partial.join("work"));
        let _ = std::fs::remove_dir(partial.join("merged"));
        let json = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
        std::fs::write(partial.join("state.json"), json)?;
        let target = self.dir.join(key);
        if target.exists() {
            std::fs::remove_dir_all(&target)?;
        }
        std::fs::rename(partial, target)
    }

    /// Forgets layer `key` (a forced rebuild).
    pub(crate) fn remove(&self, key: &str) {
        let _ = std::fs::remove_dir_all(self.dir.join(key));
    }
}

/// An overlayfs mount, unmounted on drop.
pub(crate) struct Overlay {
    target: PathBuf,
}

impl Overlay {
    /// Mounts `lowers` (bottom first) at `target`, writable into `upper` (with `work`) if given.
    pub(crate) fn mount(
        lowers: &[PathBuf],
        upper: Option<(&Path, &Path)>,
        target: &Path,
    ) -> std::io::Result<Overlay> {
        let lowerdir = lowers
            .iter()
            .rev()
            .map(|p| p.to_string_lossy().replace(':', "\\:"))
            .collect::<Vec<_>>()
            .join(":");
        let mut options = format!("lowerdir={lowerdir}");
        match upper {
            Some((upper, work)) => {
                options.push_str(&format!(
                    ",upperdir={},workdir={}",
                    upper.display(),
                    work.display()
                ));
            }
            // A read-only overlay needs two lower layers; one is served as it is.
            None if lowers.len() < 2 => {
                return Err(std::io::Error::other(
                    "a read-only overlay needs two layers",
                ));
            }
            None => {}
        }
        // The kernel limits mount options to one page; too many layers do not fit.
        if options.len() >= 4000 {
            return Err(std::io::Error::other(format!(
                "too many layers to stack ({}): merge steps into fewer RUN commands",
                lowers.len()
            )));
        }
        nix::mount::mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::empty(),
            Some(options.as_str()),
        )
        .map_err(std::io::Error::from)?;
        Ok(Overlay {
            target: target.to_owned(),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.target
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        if let Err(error) = nix::mount::umount2(&self.target, MntFlags::MNT_DETACH) {
            tracing::warn!(%error, target = %self.target.display(), "unmounting a build overlay");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{LayerCache, Overlay, key};
    use crate::build::State;

    #[test]
    fn keys_separate_their_parts() {
        assert_ne!(key(&["ab", "c"]), key(&["a", "bc"]));
        assert_eq!(key(&["x"]).len(), 64);
    }

    #[test]
    fn layers_stack_and_deletions_hide_lower_files() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LayerCache::open(dir.path()).unwrap();
        let base = cache.begin("base").unwrap();
        std::fs::write(base.join("root/a"), "a").unwrap();
        std::fs::write(base.join("root/gone"), "x").unwrap();
        cache.finish("base", &base, &State::default()).unwrap();

        let step = cache.begin("step").unwrap();
        {
            let merged = Overlay::mount(
                &[cache.root("base")],
                Some((&step.join("root"), &step.join("work"))),
                &step.join("merged"),
            )
            .unwrap();
            std::fs::remove_file(merged.path().join("gone")).unwrap();
            std::fs::write(merged.path().join("b"), "b").unwrap();
        }
        cache.finish("step", &step, &State::default()).unwrap();
        assert!(cache.get("step").is_some());
        assert!(cache.get("missing").is_none());

        let view = dir.path().join("view");
        std::fs::create_dir(&view).unwrap();
        let merged =
            Overlay::mount(&[cache.root("base"), cache.root("step")], None, &view).unwrap();
        assert_eq!(
            std::fs::read_to_string(merged.path().join("a")).unwrap(),
            "a"
        );
        assert_eq!(
            std::fs::read_to_string(merged.path().join("b")).unwrap(),
            "b"
        );
        assert!(!merged.path().join("gone").exists());
        drop(merged);
        assert!(!view.join("a").exists(), "unmounted on drop");
    }
}
