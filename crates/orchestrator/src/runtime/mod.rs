//! The seam between Kiln and what isolates a sandbox.
//!
//! # Contract
//! - A sandbox's only channel to the host is envd's Unix socket at [`socket_path`]`(dir)`,
//!   in a directory the runtime exposes inside the sandbox at `/run/kiln`.
//! - [`Runtime::snapshot`] boots a root filesystem with envd as init, waits for envd, quiesces
//!   its socket and captures memory and filesystem; the running instance is gone afterwards.
//! - [`Runtime::restore`] starts a new sandbox from such an image and returns once envd
//!   answers on the sandbox's socket. One image serves any number of sandboxes.
//! - [`Runtime::destroy`] is idempotent and leaves no process behind.
//! - Sandbox ids are unique among running sandboxes; the runtime owns every container in its
//!   state directory, so [`Runtime::list`] shows exactly what Kiln started.

pub mod gvisor;

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
    #[error("envd in '{id}' did not answer within {seconds} s")]
    EnvdTimeout { id: String, seconds: u64 },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

/// What isolates sandboxes: gVisor today, a microVM later.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Boots `rootfs` as sandbox `id` (working files in `dir`), then checkpoints it to `image`.
    async fn snapshot(
        &self,
        id: &str,
        rootfs: &Path,
        dir: &Path,
        image: &Path,
        limits: Limits,
    ) -> Result<(), RuntimeError>;

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
