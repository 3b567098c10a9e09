//! Templates: what a sandbox is restored from.
//!
//! A template lives in `<templates>/<id>/`: `template.json` ([`Template`]), `rootfs/` (its root
//! filesystem, never modified by sandboxes) and `snapshot/` (the runtime's checkpoint of it
//! booted, envd quiesced). [`TemplateStore`] finds them; [`base`] builds the `base` template;
//! [`build`] builds templates from requests; [`publish`] stores builds in object storage and
//! fetches them back.
//!
//! Invariant: a template directory is complete or absent. Builds happen in a `*.building`
//! directory renamed into place at the end, so a failed build leaves the previous one serving.

pub mod base;
pub mod build;
pub mod guest;
pub mod layers;
pub mod publish;

use orchestrator::TemplateImage;
use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};
use time::OffsetDateTime;

/// A built template.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Template {
    pub id: String,
    pub aliases: Vec<String>,
    pub build_id: String,
    pub cpu_count: u32,
    pub memory_mb: u64,
    pub disk_size_mb: u64,
    pub envd_version: String,
    pub default_user: String,
    pub default_workdir: String,
    pub public: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// How the root filesystem was made (for `base`, [`base::RECIPE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<String>,
    /// The envd in the root filesystem and snapshot ([`guest::envd_digest`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envd_sha256: Option<String>,
    /// The team that owns the template; `None` for the built-in `base`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    /// Environment every sandbox of the template starts with (the build's `ENV`s).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env_vars: BTreeMap<String, String>,
    /// The content key of the build (its layers, start and ready commands, resources): an
    /// unchanged rebuild reuses the template as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_cmd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_cmd: Option<String>,
}

#[cfg(test)]
impl Template {
    /// A template with plain values, for tests.
    pub(crate) fn for_test(id: &str, build_id: &str) -> Template {
        Template {
            id: id.into(),
            aliases: vec![],
            build_id: build_id.into(),
            cpu_count: 1,
            memory_mb: 256,
            disk_size_mb: 1024,
            envd_version: "0.6.4".into(),
            default_user: "user".into(),
            default_workdir: "/home/user".into(),
            public: false,
            created_at: OffsetDateTime::UNIX_EPOCH,
            recipe: None,
            envd_sha256: None,
            team_id: None,
            env_vars: Default::default(),
            build_key: None,
            start_cmd: None,
            ready_cmd: None,
        }
    }
}

/// Why templates could not be read or built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("template '{0}' is corrupt: {1}")]
    Corrupt(String, String),
    #[error("{step} failed: {detail}")]
    Step { step: &'static str, detail: String },
    #[error("snapshotting the template: {0}")]
    Snapshot(#[from] orchestrator::runtime::RuntimeError),
}

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TemplateError {
    let context = context.into();
    move |source| TemplateError::Io { context, source }
}

/// The templates on this node.
#[derive(Clone, Debug)]
pub struct TemplateStore {
    dir: PathBuf,
}

const METADATA: &str = "template.json";

impl TemplateStore {
    /// Opens the store, removing builds and deletions a crash interrupted (`*.building`,
    /// `*.deleting`, `*.old`).
    pub fn open(dir: &Path) -> Result<Self, TemplateError> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if [".building", ".deleting"].iter().any(|s| name.ends_with(s)) {
                let _ = std::fs::remove_dir_all(entry.path());
            } else if let Some(id) = name.strip_suffix(".old") {
                // A crash in the middle of `commit`: the previous build is still the template.
                if dir.join(id).exists() {
                    let _ = std::fs::remove_dir_all(entry.path());
                } else {
                    let _ = std::fs::rename(entry.path(), dir.join(id));
                }
            }
        }
        Ok(TemplateStore {
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every complete template, by id.
    pub fn list(&self) -> Result<Vec<Template>, TemplateError> {
        let mut templates = Vec::new();
        let entries =
            std::fs::read_dir(&self.dir).map_err(io(format!("reading {}", self.dir.display())))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.contains('.') || !entry.path().join(METADATA).exists() {
                continue;
            }
            templates.push(self.read(&name)?);
        }
        templates.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(templates)
    }

    /// A template by id or alias.
    pub fn find(&self, id_or_alias: &str) -> Result<Option<Template>, TemplateError> {
        Ok(self
            .list()?
            .into_iter()
            .find(|t| t.id == id_or_alias || t.aliases.iter().any(|a| a == id_or_alias)))
    }

    fn read(&self, id: &str) -> Result<Template, TemplateError> {
        let path = self.dir.join(id).join(METADATA);
        let text =
            std::fs::read_to_string(&path).map_err(io(format!("reading {}", path.display())))?;
        serde_json::from_str(&text)
            .map_err(|e| TemplateError::Corrupt(id.to_owned(), e.to_string()))
    }

    /// What the orchestrator needs to restore sandboxes of `template`.
    pub fn image(&self, template: &Template) -> TemplateImage {
        let dir = self.dir.join(&template.id);
        TemplateImage {
            id: template.id.clone(),
            build_id: template.build_id.clone(),
            alias: template.aliases.first().cloned(),
            rootfs: dir.join("rootfs"),
            image: dir.join("snapshot"),
            cpu_count: template.cpu_count,
            memory_mb: template.memory_mb,
            disk_mb: template.disk_size_mb,
            envd_version: template.envd_version.clone(),
            default_user: template.default_user.clone(),
            default_workdir: template.default_workdir.clone(),
            env_vars: template.env_vars.clone(),
        }
    }

    /// Removes template `id` and its files. False if there was none.
    pub fn remove(&self, id: &str) -> Result<bool, TemplateError> {
        let dir = self.dir.join(id);
        if id.is_empty() || id.contains('/') || id.starts_with('.') || !dir.exists() {
            return Ok(false);
        }
        let doomed = self.dir.join(format!("{id}.deleting"));
        std::fs::rename(&dir, &doomed).map_err(io(format!("moving {} aside", dir.display())))?;
        std::fs::remove_dir_all(&doomed).map_err(io(format!("removing {}", doomed.display())))?;
        Ok(true)
    }

    /// Rewrites the metadata of template `template.id` (its files unchanged).
    pub(crate) fn update(&self, template: &Template) -> Result<(), TemplateError> {
        let dir = self.dir.join(&template.id);
        let metadata = serde_json::to_string_pretty(template)
            .map_err(|e| TemplateError::Corrupt(template.id.clone(), e.to_string()))?;
        let temporary = dir.join(format!("{METADATA}.new"));
        std::fs::write(&temporary, metadata).map_err(io("writing template metadata"))?;
        std::fs::rename(&temporary, dir.join(METADATA)).map_err(io("replacing template metadata"))
    }

    /// Moves a finished build into place, replacing the template's previous build.
    pub(crate) fn commit(&self, building: &Path, template: &Template) -> Result<(), TemplateError> {
        let metadata = serde_json::to_string_pretty(template)
            .map_err(|e| TemplateError::Corrupt(template.id.clone(), e.to_string()))?;
        std::fs::write(building.join(METADATA), metadata)
            .map_err(io("writing template metadata"))?;
        let target = self.dir.join(&template.id);
        let old = self.dir.join(format!("{}.old", template.id));
        if target.exists() {
            std::fs::rename(&target, &old)
                .map_err(io(format!("moving {} aside", target.display())))?;
        }
        std::fs::rename(building, &target)
            .map_err(io(format!("moving {} into place", building.display())))?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io(format!("removing {}", old.display())))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Template, TemplateStore};

    #[test]
    fn commit_then_find_by_alias() {
        let dir = tempfile::tempdir().unwrap();
        let store = TemplateStore::open(dir.path()).unwrap();
        let template = Template {
            aliases: vec!["nice".into()],
            public: true,
            ..Template::for_test("t1", "b")
        };
        let building = dir.path().join("t1.building");
        std::fs::create_dir_all(&building).unwrap();
        assert!(
            store.list().unwrap().is_empty(),
            "a build in progress is not a template"
        );
        store.commit(&building, &template).unwrap();
        assert_eq!(store.find("nice").unwrap(), Some(template.clone()));
        assert_eq!(store.find("t1").unwrap().map(|t| t.id), Some("t1".into()));
        assert_eq!(store.find("other").unwrap(), None);
        assert!(store.image(&template).rootfs.ends_with("t1/rootfs"));
    }
}
