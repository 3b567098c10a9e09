//! Pausing a sandbox to a checkpoint image and resuming it.
//!
//! A pause quiesces envd, checkpoints the sandbox (`runsc checkpoint`: every process's memory
//! and, because sealed sandboxes keep their writes in memory, its filesystem changes) into an
//! image directory the caller chose, and removes the container. The returned
//! [`PausedSandbox`] plus that image and the template build's root filesystem are all a
//! resume needs: it restores the image as a sandbox with the same id, envd access token
//! (derived from the id), metadata and lifecycle.
//!
//! Invariants:
//! - A sandbox is paused, resumed or killed by one operation at a time; the others get
//!   [`SandboxError::Busy`].
//! - A pause that cannot succeed for a reason known up front (not enough disk for the image)
//!   is refused before the sandbox is touched. runsc cannot checkpoint and keep running, so
//!   storing the image elsewhere is the caller's, and so is resuming it if that fails.

use crate::{Lifecycle, Orchestrator, Sandbox, SandboxError, runtime::Limits};
use serde::{Deserialize, Serialize};
use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use time::OffsetDateTime;
use tokio::task::JoinHandle;

/// What a paused sandbox was; stored with its image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PausedSandbox {
    pub id: String,
    pub team_id: String,
    pub template_id: String,
    /// The template build whose root filesystem the image was taken on.
    pub build_id: String,
    pub alias: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub cpu_count: u32,
    pub memory_mb: u64,
    pub disk_mb: u64,
    pub envd_version: String,
    /// Whether envd checks an access token (E2B's `secure`).
    pub secure: bool,
    pub allow_internet_access: Option<bool>,
    pub lifecycle: Lifecycle,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub paused_at: OffsetDateTime,
}

/// Room kept free beside a checkpoint image (runsc writes the image compressed, so the
/// sandbox's memory size bounds it from above).
const DISK_MARGIN_BYTES: u64 = 64 << 20;

impl Orchestrator {
    /// Pauses sandbox `id` into the directory `image` (created if missing). On success the
    /// sandbox no longer runs and [`PausedSandbox`] describes it.
    pub async fn pause(&self, id: &str, image: &Path) -> Result<PausedSandbox, SandboxError> {
        let _transition = self.transition(id, "being paused")?;
        let sandbox = self
            .get(id)
            .ok_or_else(|| SandboxError::NotFound(id.to_owned()))?;
        std::fs::create_dir_all(image).map_err(|source| SandboxError::Io {
            context: format!("creating {}", image.display()),
            source,
        })?;
        let needed = (sandbox.memory_mb << 20) + DISK_MARGIN_BYTES;
        let free = free_bytes(image)?;
        if free < needed {
            return Err(SandboxError::Refused(format!(
                "not enough disk space to pause sandbox '{id}': {} MiB free, {} MiB needed",
                free >> 20,
                needed >> 20
            )));
        }
        let started = Instant::now();
        self.runtime
            .checkpoint(id, &sandbox.dir, image, sandbox.access_token.as_deref())
            .await
            .map_err(SandboxError::Checkpoint)?;
        let checkpointed = started.elapsed();
        // The container is stopped; its runtime state and files are of no further use. Removing
        // them takes runsc a second or two, so it happens in the background; a resume of this
        // id, and shutdown, wait for it.
        self.lock().remove(id);
        let runtime = self.runtime.clone();
        let (retired_id, dir) = (id.to_owned(), sandbox.dir.clone());
        let retiring = tokio::spawn(async move {
            if let Err(error) = runtime.destroy(&retired_id).await {
                tracing::warn!(sandbox = %retired_id, %error, "removing a paused sandbox's container");
            }
            let _ = std::fs::remove_dir_all(&dir);
        });
        self.retiring_map().insert(id.to_owned(), retiring);
        tracing::info!(
            sandbox = %id,
            checkpoint_ms = checkpointed.as_millis(),
            elapsed_ms = started.elapsed().as_millis(),
            "sandbox paused"
        );
        Ok(PausedSandbox {
            id: sandbox.id.clone(),
            team_id: sandbox.team_id.clone(),
            template_id: sandbox.template_id.clone(),
            build_id: sandbox.build_id.clone(),
            alias: sandbox.alias.clone(),
            metadata: sandbox.metadata.clone(),
            cpu_count: sandbox.cpu_count,
            memory_mb: sandbox.memory_mb,
            disk_mb: sandbox.disk_mb,
            envd_version: sandbox.envd_version.clone(),
            secure: sandbox.access_token.is_some(),
            allow_internet_access: sandbox.allow_internet_access,
            lifecycle: sandbox.lifecycle,
            started_at: sandbox.started_at,
            paused_at: OffsetDateTime::now_utc(),
        })
    }

    /// Resumes `paused` from `image`, taken on the template build's root filesystem `rootfs`,
    /// to live `timeout` from now. Counts against the team's limit like a creation.
    pub async fn resume(
        &self,
        paused: &PausedSandbox,
        rootfs: &Path,
        image: &Path,
        timeout: Duration,
        team_limit: u32,
    ) -> Result<Arc<Sandbox>, SandboxError> {
        let id = paused.id.as_str();
        let _transition = self.transition(id, "being resumed")?;
        if self.get(id).is_some() {
            return Err(SandboxError::Busy {
                id: id.to_owned(),
                state: "already running",
            });
        }
        self.reserve(&paused.team_id, team_limit)?;
        let started = Instant::now();
        let result = self.restore_paused(paused, rootfs, image, timeout).await;
        self.release(&paused.team_id);
        let sandbox = result?;
        self.lock().insert(sandbox.id.clone(), sandbox.clone());
        tracing::info!(
            sandbox = %id,
            elapsed_ms = started.elapsed().as_millis(),
            "sandbox resumed"
        );
        Ok(sandbox)
    }

    async fn restore_paused(
        &self,
        paused: &PausedSandbox,
        rootfs: &Path,
        image: &Path,
        timeout: Duration,
    ) -> Result<Arc<Sandbox>, SandboxError> {
        let id = paused.id.as_str();
        self.retired(id).await;
        let dir = self.sandboxes_dir.join(id);
        // A leftover of a sandbox by this id that died would confuse the new socket.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|source| SandboxError::Io {
            context: format!("creating {}", dir.display()),
            source,
        })?;
        let limits = Limits {
            cpu_count: paused.cpu_count,
            memory_mb: paused.memory_mb,
        };
        if let Err(error) = self.runtime.restore(id, rootfs, image, &dir, limits).await {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(error.into());
        }
        let now = OffsetDateTime::now_utc();
        Ok(Arc::new(Sandbox {
            id: paused.id.clone(),
            client_id: self.node_id.clone(),
            team_id: paused.team_id.clone(),
            template_id: paused.template_id.clone(),
            build_id: paused.build_id.clone(),
            alias: paused.alias.clone(),
            started_at: now,
            end_at: Mutex::new(now + timeout),
            metadata: paused.metadata.clone(),
            cpu_count: paused.cpu_count,
            memory_mb: paused.memory_mb,
            disk_mb: paused.disk_mb,
            envd_version: paused.envd_version.clone(),
            access_token: paused.secure.then(|| self.access_token(id)),
            allow_internet_access: paused.allow_internet_access,
            lifecycle: paused.lifecycle,
            rootfs: rootfs.to_owned(),
            dir,
        }))
    }
}

impl Orchestrator {
    fn retiring_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, JoinHandle<()>>> {
        self.retiring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the container of paused sandbox `id` is removed.
    async fn retired(&self, id: &str) {
        let handle = self.retiring_map().remove(id);
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }

    /// Waits until every paused sandbox's container is removed (shutdown).
    pub async fn retire_all(&self) {
        let handles: Vec<_> = self.retiring_map().drain().map(|(_, h)| h).collect();
        for handle in handles {
            let _ = handle.await;
        }
    }
}

impl Sandbox {
    /// The template root filesystem the sandbox runs on (what a resume of it needs).
    pub fn rootfs(&self) -> &Path {
        &self.rootfs
    }
}

fn free_bytes(dir: &Path) -> Result<u64, SandboxError> {
    let stat = nix::sys::statvfs::statvfs(dir).map_err(|errno| SandboxError::Io {
        context: format!("checking free space in {}", dir.display()),
        source: errno.into(),
    })?;
    Ok(stat.blocks_available() * stat.fragment_size())
}
