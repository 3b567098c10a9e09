//! The seam between Kiln and what isolates a sandbox.
//!
//! # Contract
//! - A sandbox's only channel to the host is envd's Unix socket at [`socket_path`]`(dir)`,
//!   in a directory the runtime exposes inside the sandbox at `/run/kiln`.
//! - [`Runtime::boot`] starts a root filesystem with envd as init and returns once envd answers.
//!   In [`BootMode::Sealed`] the root filesystem is never written (writes stay in the sandbox's
//!   memory) and there is no network: only such a sandbox can be checkpointed. In
//!   [`BootMode::Build`] writes go to the root filesystem itself and the network is the given
//!   namespace's (template build steps).
//! - [`Runtime::checkpoint`] quiesces envd's socket and captures a sealed sandbox's memory and
//!   filesystem; the running instance is gone afterwards. [`Runtime::snapshot`] is both.
//! - [`Runtime::restore`] starts a new sandbox from such an image and returns once envd
//!   answers on the sandbox's socket. One image serves any number of sandboxes.
//! - [`Runtime::destroy`] is idempotent and leaves no process behind.
//! - Sandbox ids are unique among running sandboxes; the runtime owns every container in its
//!   state directory, so [`Runtime::list`] shows exactly what Kiln started.

pub mod gvisor;
pub mod network;

use async_trait::async_trait;
use std::path::{Path, PathBuf};

/// Resource limits of a sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub cpu_count: u32,
    pub memory_mb: u64,
}

/// Why a runtime operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    #[error("{operation} of '{id}' failed: {detail}")]
    Command {
        operation: &'static str,
        id: String,
        detail: String,
    },
    #[error("envd in '{id}' did not answer within {seconds} s{detail}")]
    EnvdTimeout {
        id: String,
        seconds: u64,
        /// What the host saw of the channel (empty, or starting with `; `).
        detail: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

/// How a booted sandbox treats its root filesystem and network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootMode {
    /// Root filesystem unmodified (writes kept in sandbox memory), no network; can be
    /// checkpointed.
    Sealed,
    /// A template build step: writes land in the root filesystem; `network` is a network
    /// namespace to use (none: no network). Cannot be checkpointed.
    Build { network: Option<NetworkNamespace> },
}

/// A network namespace a build sandbox joins ([`network::BuildNetwork`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkNamespace {
    /// `/run/netns/<name>`.
    pub path: PathBuf,
    /// Mounted at the sandbox's `/etc/resolv.conf`.
    pub resolv_conf: PathBuf,
}

/// What isolates sandboxes: gVisor today, a microVM later.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Boots `rootfs` as sandbox `id` (working files in `dir`); returns once envd answers.
    async fn boot(
        &self,
        id: &str,
        rootfs: &Path,
        dir: &Path,
        limits: Limits,
        mode: BootMode,
    ) -> Result<(), RuntimeError>;

    /// Checkpoints sealed sandbox `id` (files in `dir`) to `image`, quiescing its envd with
    /// `access_token`; it stops running. runsc cannot leave it running: if this fails the
    /// sandbox may be gone, so callers check what they can (disk space) beforehand.
    async fn checkpoint(
        &self,
        id: &str,
        dir: &Path,
        image: &Path,
        access_token: Option<&str>,
    ) -> Result<(), RuntimeError>;

    /// Boots `rootfs` sealed as sandbox `id`, checkpoints it to `image` and removes it.
    async fn snapshot(
        &self,
        id: &str,
        rootfs: &Path,
        dir: &Path,
        image: &Path,
        limits: Limits,
    ) -> Result<(), RuntimeError> {
        let result = async {
            self.boot(id, rootfs, dir, limits, BootMode::Sealed).await?;
            self.checkpoint(id, dir, image, None).await
        }
        .await;
        let _ = self.destroy(id).await;
        result
    }

    /// Starts sandbox `id` from `image` (taken of `rootfs`), with its files in `dir`.
    async fn restore(
        &self,
        id: &str,
        rootfs: &Path,
        image: &Path,
        dir: &Path,
        limits: Limits,
    ) -> Result<(), RuntimeError>;

    /// Stops sandbox `id` and everything it runs. Succeeds if it does not exist.
    async fn destroy(&self, id: &str) -> Result<(), RuntimeError>;

    /// Ids of every sandbox the runtime has, running or not.
    async fn list(&self) -> Result<Vec<String>, RuntimeError>;

    /// Removes everything a previous run of Kiln left (at start-up, before any sandbox starts):
    /// sandboxes, half-started ones and runtime commands still in flight. Returns the ids of the
    /// sandboxes it found.
    async fn reset(&self) -> Result<Vec<String>, RuntimeError>;
}

/// The directory of a sandbox that is shared with it (mounted at `/run/kiln`).
pub fn channel_dir(dir: &Path) -> PathBuf {
    dir.join("channel")
}

/// envd's socket on the host, for a sandbox whose files are in `dir`.
pub fn socket_path(dir: &Path) -> PathBuf {
    channel_dir(dir).join("envd.sock")
}

/// Where envd's socket is inside the sandbox.
pub const SANDBOX_SOCKET: &str = "/run/kiln/envd.sock";
