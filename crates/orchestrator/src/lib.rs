//! The orchestrator runs sandboxes on this node.
//!
//! - [`Orchestrator`]: creates sandboxes by restoring a template's snapshot through a
//!   [`runtime::Runtime`], pushes their settings to envd, expires and kills them, and on start
//!   removes whatever a crash left behind.
//! - [`runtime`]: the seam to what isolates a sandbox ([`runtime::gvisor`] today).
//! - [`envd`]: the host side of the host channel (HTTP over envd's Unix socket).
//! - [`pause`]: pausing a sandbox to a checkpoint image ([`PausedSandbox`] says what it was)
//!   and resuming it with the same id, token and processes. Storing the image is the caller's.
//!
//! Architecture invariant: only this crate runs `runsc`, and it knows nothing about HTTP APIs,
//! teams' keys or the database: callers pass in everything a sandbox needs.

pub mod envd;
pub mod pause;
pub mod runtime;

pub use pause::PausedSandbox;

use envd::{EnvdClient, EnvdError, InitRequest};
use hmac::{Hmac, Mac};
use rand::Rng;
use runtime::{Limits, Runtime, RuntimeError};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};
use time::OffsetDateTime;

/// Length of a sandbox id: lower-case letters and digits, as E2B's `^[a-z0-9]+$`.
const SANDBOX_ID_LEN: usize = 20;
const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A template's snapshot and what sandboxes of it get.
#[derive(Clone, Debug)]
pub struct TemplateImage {
    pub id: String,
    /// The build the root filesystem and image belong to (a paused sandbox needs that build).
    pub build_id: String,
    pub alias: Option<String>,
    pub rootfs: PathBuf,
    pub image: PathBuf,
    pub cpu_count: u32,
    pub memory_mb: u64,
    pub disk_mb: u64,
    pub envd_version: String,
    pub default_user: String,
    pub default_workdir: String,
    /// Environment of every sandbox of the template; a sandbox's own `envVars` override it.
    pub env_vars: BTreeMap<String, String>,
}

/// A request for a sandbox.
#[derive(Clone, Debug)]
pub struct NewSandbox {
    pub team_id: String,
    pub template: TemplateImage,
    pub timeout: Duration,
    pub metadata: BTreeMap<String, String>,
    pub env_vars: BTreeMap<String, String>,
    /// Issue an envd access token (E2B's `secure`).
    pub secure: bool,
    pub allow_internet_access: Option<bool>,
    /// The most sandboxes the team may have at once.
    pub team_limit: u32,
    pub lifecycle: Lifecycle,
}

/// What happens when a sandbox times out, and to a paused one on traffic (E2B's `autoPause`,
/// `autoResume`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    /// Pause instead of kill on timeout.
    pub auto_pause: bool,
    /// Resume a paused sandbox on the first request the proxy gets for it.
    pub auto_resume: bool,
}

/// A running sandbox.
#[derive(Debug)]
pub struct Sandbox {
    pub id: String,
    /// The node that runs it (E2B's `clientID`).
    pub client_id: String,
    pub team_id: String,
    pub template_id: String,
    pub build_id: String,
    pub alias: Option<String>,
    pub started_at: OffsetDateTime,
    end_at: Mutex<OffsetDateTime>,
    pub metadata: BTreeMap<String, String>,
    pub cpu_count: u32,
    pub memory_mb: u64,
    pub disk_mb: u64,
    pub envd_version: String,
    pub access_token: Option<String>,
    pub allow_internet_access: Option<bool>,
    pub lifecycle: Lifecycle,
    /// The template root filesystem it runs on.
    rootfs: PathBuf,
    dir: PathBuf,
}

impl Sandbox {
    /// When the sandbox expires.
    pub fn end_at(&self) -> OffsetDateTime {
        *self.end_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// envd's socket on the host.
    pub fn socket(&self) -> PathBuf {
        runtime::socket_path(&self.dir)
    }

    /// A client of this sandbox's envd, carrying its access token.
    pub fn envd(&self) -> EnvdClient {
        EnvdClient::new(&self.socket()).with_token(self.access_token.clone())
    }
}

/// Why a sandbox operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    #[error("the team has reached its limit of {limit} concurrent sandboxes")]
    LimitReached { limit: u32 },
    #[error("sandbox '{0}' not found")]
    NotFound(String),
    /// Another operation (pause, resume, kill) is under way.
    #[error("sandbox '{id}' is {state}")]
    Busy { id: String, state: &'static str },
    #[error("{0}")]
    Refused(String),
    #[error("checkpointing the sandbox: {0}")]
    Checkpoint(RuntimeError),
    #[error("starting the sandbox: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("initializing envd: {0}")]
    Envd(#[from] EnvdError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

/// The sandboxes of this node.
pub struct Orchestrator {
    runtime: Arc<dyn Runtime>,
    sandboxes_dir: PathBuf,
    node_id: String,
    sandboxes: Mutex<HashMap<String, Arc<Sandbox>>>,
    /// Creations in flight per team, counted against the team's limit.
    creating: Mutex<HashMap<String, u32>>,
    /// Sandboxes being paused, resumed or killed, and which of these.
    transitions: Mutex<HashMap<String, &'static str>>,
    /// Containers of paused sandboxes being removed ([`pause`]).
    retiring: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    /// Key of the envd access tokens: a sandbox's token is derived from its id, so a resumed
    /// sandbox gets its token back without it being stored anywhere.
    token_seed: Arc<[u8]>,
}

impl Orchestrator {
    /// `token_seed` keys the envd access tokens; keep it secret and stable across restarts,
    /// or paused sandboxes come back with tokens their SDK clients do not know.
    pub fn new(runtime: Arc<dyn Runtime>, sandboxes_dir: PathBuf, token_seed: &[u8]) -> Self {
        Orchestrator {
            runtime,
            sandboxes_dir,
            node_id: random_id(8),
            sandboxes: Mutex::default(),
            creating: Mutex::default(),
            transitions: Mutex::default(),
            retiring: Mutex::default(),
            token_seed: Arc::from(token_seed),
        }
    }

    /// The envd access token of sandbox `id` (E2B's `hex(HMAC-SHA256(seed, sandboxID))`).
    fn access_token(&self, id: &str) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.token_seed) else {
            unreachable!("HMAC takes keys of any length")
        };
        mac.update(id.as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Marks `id` as in `state` until the guard drops; fails if another operation holds it.
    fn transition(&self, id: &str, state: &'static str) -> Result<Transition<'_>, SandboxError> {
        let mut transitions = self.transitions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(current) = transitions.get(id) {
            return Err(SandboxError::Busy {
                id: id.to_owned(),
                state: current,
            });
        }
        transitions.insert(id.to_owned(), state);
        Ok(Transition {
            orchestrator: self,
            id: id.to_owned(),
        })
    }

    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    /// Removes everything a previous run left: every container in the runtime and every
    /// sandbox directory. Returns how many containers were destroyed.
    pub async fn reconcile(&self) -> Result<usize, SandboxError> {
        let leftovers = self.runtime.reset().await?;
        for id in &leftovers {
            tracing::warn!(sandbox = %id, "removed a sandbox left over from a previous run");
        }
        if self.sandboxes_dir.exists() {
            std::fs::remove_dir_all(&self.sandboxes_dir).map_err(|source| SandboxError::Io {
                context: format!("removing {}", self.sandboxes_dir.display()),
                source,
            })?;
        }
        std::fs::create_dir_all(&self.sandboxes_dir).map_err(|source| SandboxError::Io {
            context: format!("creating {}", self.sandboxes_dir.display()),
            source,
        })?;
        Ok(leftovers.len())
    }

    /// Restores a sandbox from its template's snapshot and initializes envd. Counts against the
    /// team's limit from the start, so concurrent creations cannot overshoot it.
    pub async fn create(&self, new: NewSandbox) -> Result<Arc<Sandbox>, SandboxError> {
        self.reserve(&new.team_id, new.team_limit)?;
        let started = std::time::Instant::now();
        let result = self.start(&new).await;
        self.release(&new.team_id);
        let sandbox = result?;
        self.lock().insert(sandbox.id.clone(), sandbox.clone());
        tracing::info!(
            sandbox = %sandbox.id,
            template = %sandbox.template_id,
            elapsed_ms = started.elapsed().as_millis(),
            "sandbox created"
        );
        Ok(sandbox)
    }

    async fn start(&self, new: &NewSandbox) -> Result<Arc<Sandbox>, SandboxError> {
        let id = random_id(SANDBOX_ID_LEN);
        let dir = self.sandboxes_dir.join(&id);
        std::fs::create_dir_all(&dir).map_err(|source| SandboxError::Io {
            context: format!("creating {}", dir.display()),
            source,
        })?;
        let template = &new.template;
        let limits = Limits {
            cpu_count: template.cpu_count,
            memory_mb: template.memory_mb,
        };
        let started = async {
            self.runtime
                .restore(&id, &template.rootfs, &template.image, &dir, limits)
                .await?;
            let access_token = new.secure.then(|| self.access_token(&id));
            let mut env_vars = template.env_vars.clone();
            env_vars.extend(new.env_vars.clone());
            let init = InitRequest {
                env_vars,
                access_token: access_token.clone(),
                default_user: template.default_user.clone(),
                default_workdir: template.default_workdir.clone(),
                timestamp: now_rfc3339(),
            };
            EnvdClient::new(&runtime::socket_path(&dir))
                .init(&init)
                .await?;
            Ok::<_, SandboxError>(access_token)
        }
        .await;
        let access_token = match started {
            Ok(token) => token,
            Err(error) => {
                let _ = self.runtime.destroy(&id).await;
                let _ = std::fs::remove_dir_all(&dir);
                return Err(error);
            }
        };
        let now = OffsetDateTime::now_utc();
        Ok(Arc::new(Sandbox {
            id,
            client_id: self.node_id.clone(),
            team_id: new.team_id.clone(),
            template_id: template.id.clone(),
            build_id: template.build_id.clone(),
            alias: template.alias.clone(),
            started_at: now,
            end_at: Mutex::new(now + new.timeout),
            metadata: new.metadata.clone(),
            cpu_count: template.cpu_count,
            memory_mb: template.memory_mb,
            disk_mb: template.disk_mb,
            envd_version: template.envd_version.clone(),
            access_token,
            allow_internet_access: new.allow_internet_access,
            lifecycle: new.lifecycle,
            rootfs: template.rootfs.clone(),
            dir,
        }))
    }

    fn reserve(&self, team: &str, limit: u32) -> Result<(), SandboxError> {
        let running = self.lock().values().filter(|s| s.team_id == team).count();
        let mut creating = self.creating.lock().unwrap_or_else(|e| e.into_inner());
        let in_flight = creating.entry(team.to_owned()).or_default();
        if running as u64 + u64::from(*in_flight) >= u64::from(limit) {
            return Err(SandboxError::LimitReached { limit });
        }
        *in_flight += 1;
        Ok(())
    }

    fn release(&self, team: &str) {
        let mut creating = self.creating.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(in_flight) = creating.get_mut(team) {
            *in_flight = in_flight.saturating_sub(1);
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Sandbox>> {
        self.lock().get(id).cloned()
    }

    /// Every running sandbox, oldest first.
    pub fn list(&self) -> Vec<Arc<Sandbox>> {
        let mut sandboxes: Vec<_> = self.lock().values().cloned().collect();
        sandboxes.sort_by_key(|s| (s.started_at, s.id.clone()));
        sandboxes
    }

    /// Moves a sandbox's expiry to `timeout` from now.
    pub fn set_timeout(&self, id: &str, timeout: Duration) -> Result<Arc<Sandbox>, SandboxError> {
        let sandbox = self
            .get(id)
            .ok_or_else(|| SandboxError::NotFound(id.to_owned()))?;
        *sandbox.end_at.lock().unwrap_or_else(|e| e.into_inner()) =
            OffsetDateTime::now_utc() + timeout;
        Ok(sandbox)
    }

    /// Makes a sandbox live at least `timeout` from now; never shortens it.
    pub fn extend_timeout(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<Arc<Sandbox>, SandboxError> {
        let sandbox = self
            .get(id)
            .ok_or_else(|| SandboxError::NotFound(id.to_owned()))?;
        let mut end_at = sandbox.end_at.lock().unwrap_or_else(|e| e.into_inner());
        *end_at = (*end_at).max(OffsetDateTime::now_utc() + timeout);
        drop(end_at);
        Ok(sandbox)
    }

    /// Kills a sandbox: its processes, its container and its files. `Ok(false)` if unknown.
    pub async fn kill(&self, id: &str) -> Result<bool, SandboxError> {
        let _transition = self.transition(id, "being killed")?;
        let Some(sandbox) = self.lock().remove(id) else {
            return Ok(false);
        };
        self.runtime.destroy(id).await?;
        std::fs::remove_dir_all(&sandbox.dir).map_err(|source| SandboxError::Io {
            context: format!("removing {}", sandbox.dir.display()),
            source,
        })?;
        tracing::info!(sandbox = %id, "sandbox killed");
        Ok(true)
    }

    /// Every sandbox whose time is up (the caller pauses or kills them per their lifecycle).
    pub fn expired(&self) -> Vec<Arc<Sandbox>> {
        let now = OffsetDateTime::now_utc();
        self.lock()
            .values()
            .filter(|s| s.end_at() <= now)
            .cloned()
            .collect()
    }

    /// Kills every sandbox and finishes removing paused ones' containers (shutdown).
    pub async fn kill_all(&self) {
        self.retire_all().await;
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        for id in ids {
            if let Err(error) = self.kill(&id).await {
                tracing::error!(sandbox = %id, %error, "killing a sandbox at shutdown");
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Sandbox>>> {
        self.sandboxes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An operation in progress on a sandbox ([`Orchestrator::transition`]).
struct Transition<'a> {
    orchestrator: &'a Orchestrator,
    id: String,
}

impl Drop for Transition<'_> {
    fn drop(&mut self) {
        self.orchestrator
            .transitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

/// A random id of lower-case letters and digits.
pub fn random_id(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(ID_ALPHABET[rng.random_range(0..ID_ALPHABET.len())]))
        .collect()
}

/// A random lower-case hex string (API keys, tokens).
pub fn random_hex(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
        .collect()
}

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::random_id;

    #[test]
    fn ids_match_e2b_format() {
        let id = random_id(20);
        assert_eq!(id.len(), 20);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
        assert_ne!(random_id(20), id);
    }
}
