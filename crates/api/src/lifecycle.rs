//! Sandbox lifecycle across the orchestrator, object storage and the database: pause, resume,
//! delete a paused sandbox, and what happens at timeout.
//!
//! A pause checkpoints the sandbox into the local snapshot cache, stores the image and its
//! [`PausedSandbox`] record in object storage as one write session
//! (`snapshots/<sandbox>/<snapshot>/`), then records the sandbox as paused in the database.
//! A resume uses the cached image when it is there and intact, else fetches it back from
//! storage (verified), and restores it on the template build it was taken on — fetched from
//! storage as well if this node no longer has that build.
//!
//! Invariants:
//! - A pause that cannot be stored leaves the sandbox running: the image is restored at once
//!   and the caller gets the storage error.
//! - The database row is written only after the snapshot is stored whole, and removed only
//!   after the sandbox runs again (or is deleted), so a crash at any point loses nothing.
//! - Concurrent resumes of one sandbox (say, the proxy's auto-resume and an SDK `connect`)
//!   share one restore.

use crate::{
    error::ApiError,
    store::{PausedRecord, Store},
};
use futures::{FutureExt, future::Shared};
use http::StatusCode;
use orchestrator::{Orchestrator, PausedSandbox, Sandbox};
use std::{
    collections::HashMap,
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};
use storage::Storage;
use template::TemplateStore;

/// The checkpoint image's file name inside a snapshot.
const IMAGE_FILE: &str = "checkpoint.img";
/// The [`PausedSandbox`] record inside a snapshot.
const RECORD_FILE: &str = "sandbox.json";
/// How long an auto-resumed sandbox lives at least (E2B's `minimum-autoresume-timeout`).
pub const AUTO_RESUME_TIMEOUT: Duration = Duration::from_secs(300);
/// A sandbox whose auto-pause failed is retried after this long.
const PAUSE_RETRY: Duration = Duration::from_secs(60);

type ResumeFuture =
    Shared<Pin<Box<dyn Future<Output = Result<Arc<Sandbox>, Arc<ApiError>>> + Send>>>;

/// Pauses and resumes sandboxes; see the module docs.
#[derive(Clone)]
pub struct Lifecycle {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    orchestrator: Arc<Orchestrator>,
    templates: TemplateStore,
    storage: Storage,
    /// `<sandbox>/<snapshot>/checkpoint.img` of recent pauses.
    snapshot_cache: PathBuf,
    /// Template builds fetched from storage for resumes (`<build>/rootfs`).
    build_cache: PathBuf,
    resumes: Mutex<HashMap<String, ResumeFuture>>,
    /// Sandboxes checkpointed whose snapshot is being stored: no longer running, not yet
    /// recorded as paused.
    pausing: Mutex<HashMap<String, PausedSandbox>>,
}

impl Lifecycle {
    pub fn new(
        store: Store,
        orchestrator: Arc<Orchestrator>,
        templates: TemplateStore,
        storage: Storage,
        cache: &Path,
    ) -> Self {
        Lifecycle {
            inner: Arc::new(Inner {
                store,
                orchestrator,
                templates,
                storage,
                snapshot_cache: cache.join("snapshots"),
                build_cache: cache.join("builds"),
                resumes: Mutex::default(),
                pausing: Mutex::default(),
            }),
        }
    }

    pub fn storage(&self) -> &Storage {
        &self.inner.storage
    }

    /// A sandbox whose pause is being stored (reported as paused meanwhile).
    pub fn pausing(&self, id: &str) -> Option<PausedSandbox> {
        self.pausing_map().get(id).cloned()
    }

    /// Every sandbox of `team` whose pause is being stored.
    pub fn pausing_of(&self, team: &str) -> Vec<PausedSandbox> {
        self.pausing_map()
            .values()
            .filter(|p| p.team_id == team)
            .cloned()
            .collect()
    }

    fn pausing_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, PausedSandbox>> {
        self.inner.pausing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pauses running sandbox `id`. 409 when it is not running (paused, or mid-operation).
    pub async fn pause(&self, id: &str) -> Result<(), ApiError> {
        let inner = &self.inner;
        let Some(sandbox) = inner.orchestrator.get(id) else {
            if self.pausing(id).is_some() || inner.store.paused(id).await?.is_some() {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!("sandbox '{id}' is already paused"),
                ));
            }
            return Err(ApiError::sandbox_not_found(id));
        };
        let snapshot_id = orchestrator::random_id(12);
        let local = inner.snapshot_cache.join(id).join(&snapshot_id);
        let paused = inner
            .orchestrator
            .pause(id, &local.join("image"))
            .await
            .map_err(|error| {
                let _ = std::fs::remove_dir_all(&local);
                ApiError::from(error)
            })?;
        let stored = async {
            self.store_snapshot(&paused, &snapshot_id, &local).await?;
            inner.store.insert_paused(&paused, &snapshot_id).await?;
            Ok::<_, ApiError>(())
        }
        .await;
        if let Err(error) = stored {
            // Nothing is lost: the image is still here, so the sandbox comes straight back.
            let remaining = (sandbox.end_at() - time::OffsetDateTime::now_utc())
                .try_into()
                .unwrap_or(Duration::ZERO)
                .max(Duration::from_secs(60));
            let _ = inner
                .storage
                .delete_prefix(&snapshot_prefix(id, &snapshot_id))
                .await;
            let restored = inner
                .orchestrator
                .resume(
                    &paused,
                    sandbox.rootfs(),
                    &local.join("image"),
                    remaining,
                    u32::MAX,
                )
                .await;
            let _ = std::fs::remove_dir_all(&local);
            self.pausing_map().remove(id);
            return Err(match restored {
                Ok(_) => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "pausing sandbox '{id}' failed, it keeps running: {}",
                        error.message
                    ),
                ),
                Err(restore) => ApiError::internal(format!(
                    "pausing sandbox '{id}' failed ({}) and restoring it failed too: {restore}",
                    error.message
                )),
            });
        }
        self.pausing_map().remove(id);
        Ok(())
    }

    async fn store_snapshot(
        &self,
        paused: &PausedSandbox,
        snapshot_id: &str,
        local: &Path,
    ) -> Result<(), ApiError> {
        let record = serde_json::to_vec(paused)
            .map_err(|e| ApiError::internal(format!("encoding the sandbox record: {e}")))?;
        let storage = &self.inner.storage;
        let session = storage
            .session(&snapshot_prefix(&paused.id, snapshot_id))
            .await
            .map_err(storage_error("storing the snapshot"))?;
        session
            .upload_file(IMAGE_FILE, &local.join("image").join(IMAGE_FILE))
            .await
            .map_err(storage_error("storing the snapshot"))?;
        session
            .put_bytes(RECORD_FILE, record)
            .await
            .map_err(storage_error("storing the snapshot"))?;
        session
            .commit()
            .await
            .map_err(storage_error("storing the snapshot"))?;
        Ok(())
    }

    /// Resumes paused sandbox `id` for the proxy, if it asked to be (`autoResume`). `None`
    /// when there is no such paused sandbox or it did not ask.
    pub async fn auto_resume(&self, id: &str) -> Option<Result<Arc<Sandbox>, ApiError>> {
        let record = match self.inner.store.paused(id).await {
            Ok(record) => record?,
            Err(error) => return Some(Err(error.into())),
        };
        if !record.sandbox.lifecycle.auto_resume {
            return None;
        }
        tracing::info!(sandbox = %id, "auto-resuming on traffic");
        Some(self.resume_shared(record, AUTO_RESUME_TIMEOUT).await)
    }

    /// Resumes paused sandbox `id` (of `team`, when given) to live at least `timeout`; shares
    /// a resume already under way.
    pub async fn resume(
        &self,
        id: &str,
        team: Option<&str>,
        timeout: Duration,
    ) -> Result<Arc<Sandbox>, ApiError> {
        let record = self.inner.store.paused(id).await?;
        let record = record
            .filter(|r| team.is_none_or(|team| r.sandbox.team_id == team))
            .ok_or_else(|| ApiError::not_found(format!("paused sandbox '{id}' not found")))?;
        self.resume_shared(record, timeout).await
    }

    /// Resumes `record`'s sandbox, or joins a resume of it already under way.
    async fn resume_shared(
        &self,
        record: PausedRecord,
        timeout: Duration,
    ) -> Result<Arc<Sandbox>, ApiError> {
        let id = record.sandbox.id.clone();
        let resume = {
            let mut resumes = self.inner.resumes.lock().unwrap_or_else(|e| e.into_inner());
            resumes
                .entry(id.clone())
                .or_insert_with(|| {
                    let this = self.clone();
                    let future: Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(async move {
                        this.resume_now(record, timeout).await.map_err(Arc::new)
                    });
                    future.shared()
                })
                .clone()
        };
        let result = resume.await;
        self.inner
            .resumes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        result.map_err(|error| ApiError::new(error.status, error.message.clone()))
    }

    async fn resume_now(
        &self,
        record: PausedRecord,
        timeout: Duration,
    ) -> Result<Arc<Sandbox>, ApiError> {
        let inner = &self.inner;
        let paused = &record.sandbox;
        let rootfs = self.build_rootfs(paused).await?;
        let image = self.snapshot_image(paused, &record.snapshot_id).await?;
        let team_limit = inner
            .store
            .team(&paused.team_id)
            .await?
            .map_or(u32::MAX, |team| team.max_sandboxes);
        let sandbox = inner
            .orchestrator
            .resume(paused, &rootfs, &image, timeout, team_limit)
            .await
            .map_err(|error| match error {
                orchestrator::SandboxError::Runtime(error) => ApiError::internal(format!(
                    "resuming sandbox '{}' from snapshot '{}' failed: {error}",
                    paused.id, record.snapshot_id
                )),
                other => other.into(),
            })?;
        if let Err(error) = inner.store.delete_paused(&paused.id).await {
            tracing::error!(sandbox = %paused.id, %error, "forgetting a resumed sandbox's pause");
        }
        self.remove_snapshots(&paused.id).await;
        Ok(sandbox)
    }

    /// The checkpoint image of a snapshot: the local copy, else fetched from storage.
    async fn snapshot_image(
        &self,
        paused: &PausedSandbox,
        snapshot_id: &str,
    ) -> Result<PathBuf, ApiError> {
        let image = self
            .inner
            .snapshot_cache
            .join(&paused.id)
            .join(snapshot_id)
            .join("image");
        if image.join(IMAGE_FILE).exists() {
            return Ok(image);
        }
        std::fs::create_dir_all(&image)
            .map_err(|e| ApiError::internal(format!("creating {}: {e}", image.display())))?;
        let prefix = snapshot_prefix(&paused.id, snapshot_id);
        self.inner
            .storage
            .download_file(&prefix, IMAGE_FILE, &image.join(IMAGE_FILE))
            .await
            .map_err(storage_error(&format!(
                "fetching the snapshot of sandbox '{}'",
                paused.id
            )))?;
        Ok(image)
    }

    /// The root filesystem of the template build `paused` was taken on.
    async fn build_rootfs(&self, paused: &PausedSandbox) -> Result<PathBuf, ApiError> {
        let inner = &self.inner;
        if let Some(template) = inner.templates.find(&paused.template_id)?
            && template.build_id == paused.build_id
        {
            return Ok(inner.templates.image(&template).rootfs);
        }
        let dir = inner.build_cache.join(&paused.build_id);
        template::publish::fetch_rootfs(&inner.storage, &paused.template_id, &paused.build_id, &dir)
            .await
            .map_err(|e| {
                ApiError::internal(format!(
                    "fetching build '{}' of template '{}' for sandbox '{}': {e}",
                    paused.build_id, paused.template_id, paused.id
                ))
            })
    }

    /// Deletes paused sandbox `id` and its snapshot. False if it was not paused.
    pub async fn delete_paused(&self, id: &str, team: &str) -> Result<bool, ApiError> {
        let Some(record) = self.inner.store.paused(id).await? else {
            return Ok(false);
        };
        if record.sandbox.team_id != team {
            return Ok(false);
        }
        self.inner.store.delete_paused(id).await?;
        self.remove_snapshots(id).await;
        Ok(true)
    }

    /// Removes sandbox `id`'s snapshots from storage and the local cache (after a resume or a
    /// delete: the sandbox's state has moved on or is gone).
    async fn remove_snapshots(&self, id: &str) {
        let inner = &self.inner;
        let _ = std::fs::remove_dir_all(inner.snapshot_cache.join(id));
        if let Err(error) = inner
            .storage
            .delete_prefix(&format!("snapshots/{id}"))
            .await
        {
            tracing::warn!(sandbox = %id, %error, "removing a sandbox's snapshots");
        }
    }

    /// Pauses or kills every sandbox whose time is up, per its lifecycle.
    pub async fn expire(&self) {
        for sandbox in self.inner.orchestrator.expired() {
            let id = sandbox.id.clone();
            if sandbox.lifecycle.auto_pause {
                tracing::info!(sandbox = %id, "sandbox timed out: pausing it");
                if let Err(error) = self.pause(&id).await {
                    tracing::error!(sandbox = %id, message = %error.message, "auto-pause failed; retrying later");
                    let _ = self.inner.orchestrator.set_timeout(&id, PAUSE_RETRY);
                }
            } else {
                tracing::info!(sandbox = %id, "sandbox timed out");
                if let Err(error) = self.inner.orchestrator.kill(&id).await {
                    tracing::error!(sandbox = %id, %error, "killing an expired sandbox");
                }
            }
        }
    }
}

/// Where a snapshot lives in object storage.
fn snapshot_prefix(sandbox: &str, snapshot: &str) -> String {
    format!("snapshots/{sandbox}/{snapshot}")
}

/// Storage that cannot be reached is a 503 (retry later); a missing or corrupt object is a 500
/// that says which object and why.
fn storage_error(context: &str) -> impl FnOnce(storage::StorageError) -> ApiError + '_ {
    move |error| {
        let status = match error {
            storage::StorageError::Backend { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, format!("{context}: {error}"))
    }
}
