//! The gVisor runtime: one `runsc` sandbox per Kiln sandbox, restored from a checkpoint.
//!
//! Layout of a sandbox's `dir`: `bundle/config.json` (the OCI spec), `channel/` (mounted at
//! `/run/kiln`; envd's socket appears there). Logs are in the runtime's log directory.

mod runsc;
mod spec;

pub use runsc::Runsc;

use super::{BootMode, Limits, Runtime, RuntimeError, channel_dir, socket_path};
use crate::envd::EnvdClient;
use async_trait::async_trait;
use std::{
    ffi::OsStr,
    path::Path,
    time::{Duration, Instant},
};

/// How long a freshly booted template may take until envd answers.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a restored sandbox may take until envd answers.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(20);

pub struct GvisorRuntime {
    runsc: Runsc,
}

impl GvisorRuntime {
    pub fn new(runsc: Runsc) -> Result<Self, RuntimeError> {
        for dir in [&runsc.root, &runsc.log_dir] {
            std::fs::create_dir_all(dir).map_err(|source| RuntimeError::Io {
                context: format!("creating {}", dir.display()),
                source,
            })?;
        }
        Ok(GvisorRuntime { runsc })
    }

    fn write_bundle(
        &self,
        id: &str,
        rootfs: &Path,
        dir: &Path,
        limits: Limits,
        mode: &BootMode,
    ) -> Result<std::path::PathBuf, RuntimeError> {
        let bundle = dir.join("bundle");
        let channel = channel_dir(dir);
        let io = |context: String| move |source| RuntimeError::Io { context, source };
        std::fs::create_dir_all(&bundle).map_err(io(format!("creating {}", bundle.display())))?;
        std::fs::create_dir_all(&channel).map_err(io(format!("creating {}", channel.display())))?;
        let spec = spec::sandbox_spec(id, rootfs, &channel, limits, mode);
        let config = bundle.join("config.json");
        std::fs::write(&config, spec.to_string())
            .map_err(io(format!("writing {}", config.display())))?;
        Ok(bundle)
    }
}

/// Polls envd's health on the sandbox socket until it answers or `limit` passes.
async fn wait_for_envd(id: &str, socket: &Path, limit: Duration) -> Result<(), RuntimeError> {
    let started = Instant::now();
    let client = EnvdClient::new(socket);
    while started.elapsed() < limit {
        if client.health().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Say what the channel looked like: whether envd took the resume file, whether its
    // socket exists (an answer that never comes is otherwise indistinguishable).
    let exists = |path: &Path| if path.exists() { "present" } else { "absent" };
    let resume = socket.with_file_name(envd_proto::host::RESUME_FILE);
    Err(RuntimeError::EnvdTimeout {
        id: id.to_owned(),
        seconds: limit.as_secs(),
        detail: format!(
            "; resume file {}, socket {}",
            exists(&resume),
            exists(socket)
        ),
    })
}

#[async_trait]
impl Runtime for GvisorRuntime {
    async fn boot(
        &self,
        id: &str,
        rootfs: &Path,
        dir: &Path,
        limits: Limits,
        mode: BootMode,
    ) -> Result<(), RuntimeError> {
        let bundle = self.write_bundle(id, rootfs, dir, limits, &mode)?;
        let result = async {
            self.runsc
                .run_as(
                    &mode,
                    "create",
                    id,
                    &[OsStr::new("--bundle"), bundle.as_os_str(), OsStr::new(id)],
                )
                .await?;
            self.runsc
                .run_as(&mode, "start", id, &[OsStr::new(id)])
                .await?;
            wait_for_envd(id, &socket_path(dir), BOOT_TIMEOUT).await
        }
        .await;
        if result.is_err() {
            let _ = self.destroy(id).await;
        }
        result
    }

    async fn checkpoint(
        &self,
        id: &str,
        dir: &Path,
        image: &Path,
        access_token: Option<&str>,
    ) -> Result<(), RuntimeError> {
        EnvdClient::new(&socket_path(dir))
            .with_token(access_token.map(str::to_owned))
            .quiesce()
            .await
            .map_err(|e| RuntimeError::Command {
                operation: "quiesce",
                id: id.to_owned(),
                detail: e.to_string(),
            })?;
        self.runsc
            .run(
                "checkpoint",
                id,
                &[
                    OsStr::new("--image-path"),
                    image.as_os_str(),
                    OsStr::new(id),
                ],
            )
            .await
    }

    async fn restore(
        &self,
        id: &str,
        rootfs: &Path,
        image: &Path,
        dir: &Path,
        limits: Limits,
    ) -> Result<(), RuntimeError> {
        let bundle = self.write_bundle(id, rootfs, dir, limits, &BootMode::Sealed)?;
        // envd quiesced its socket before the checkpoint; this file tells it to listen again.
        let resume = channel_dir(dir).join(envd_proto::host::RESUME_FILE);
        std::fs::write(&resume, b"").map_err(|source| RuntimeError::Io {
            context: format!("creating {}", resume.display()),
            source,
        })?;
        let started = Instant::now();
        let result = async {
            self.runsc
                .run(
                    "restore",
                    id,
                    &[
                        OsStr::new("--detach"),
                        OsStr::new("--image-path"),
                        image.as_os_str(),
                        OsStr::new("--bundle"),
                        bundle.as_os_str(),
                        OsStr::new(id),
                    ],
                )
                .await?;
            let restored = started.elapsed();
            wait_for_envd(id, &socket_path(dir), RESTORE_TIMEOUT).await?;
            tracing::debug!(
                sandbox = %id,
                restored_ms = restored.as_millis(),
                envd_ms = started.elapsed().as_millis(),
                "restored"
            );
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = self.destroy(id).await;
        }
        result
    }

    async fn destroy(&self, id: &str) -> Result<(), RuntimeError> {
        // `delete --force` on a container whose state is already gone can leave its sandbox and
        // gofer processes behind, so those are looked for and killed as well.
        let deleted = self
            .runsc
            .run("delete", id, &[OsStr::new("--force"), OsStr::new(id)])
            .await;
        kill_leftovers(self.runsc.root(), Some(id));
        remove_cgroups(id);
        match deleted {
            Ok(()) => Ok(()),
            Err(_) if !self.list().await?.iter().any(|c| c == id) => Ok(()),
            Err(error) => Err(error),
        }
    }

    async fn list(&self) -> Result<Vec<String>, RuntimeError> {
        self.runsc.list().await
    }

    async fn reset(&self) -> Result<Vec<String>, RuntimeError> {
        // A crash can leave `runsc create`/`restore` commands running that would start a
        // container after this cleanup: every runsc process of this state root goes first.
        kill_leftovers(self.runsc.root(), None);
        let found = self.runsc.list().await.unwrap_or_default();
        for id in &found {
            let _ = self.destroy(id).await;
        }
        kill_leftovers(self.runsc.root(), None);
        // Nothing of this root runs any more, so whatever state runsc kept is stale.
        let root = self.runsc.root();
        if let Ok(entries) = std::fs::read_dir(root) {
            for entry in entries.flatten() {
                let path = entry.path();
                let _ = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
            }
        }
        remove_all_cgroups();
        Ok(found)
    }
}

/// Removes every (empty) sandbox cgroup under `/kiln` of every controller.
fn remove_all_cgroups() {
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for controller in controllers.flatten() {
        let parent = controller.path().join("kiln");
        for child in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir(child.path());
        }
    }
}

/// Removes the sandbox's (empty) cgroups under every controller; runsc removes them on a clean
/// delete, not when its processes were killed.
fn remove_cgroups(id: &str) {
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let relative = spec::cgroup_path(id);
    for controller in controllers.flatten() {
        let _ = std::fs::remove_dir(controller.path().join(relative.trim_start_matches('/')));
    }
}

/// Kills the runsc processes (commands, `runsc-sandbox`, `runsc-gofer`) whose command line names
/// Kiln's state root and container `id` (by id, or by its bundle path); all of them when `id`
/// is `None`.
fn kill_leftovers(root: &Path, id: Option<&str>) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let root_flag = format!("--root={}", root.display());
    let in_bundle = id.map(|id| format!("/{id}/"));
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        let args: Vec<&str> = cmdline.split('\0').collect();
        // `runsc-sandbox`/`runsc-gofer` (argv[0]) or a runsc command (its path).
        let is_runsc = args
            .first()
            .and_then(|a| Path::new(a).file_name())
            .is_some_and(|name| name.to_string_lossy().starts_with("runsc"));
        // runsc passes `--root=<dir>` to its own processes; Kiln's commands pass `--root <dir>`.
        let root_text = root.to_string_lossy();
        let ours = args.contains(&root_flag.as_str())
            || args
                .windows(2)
                .any(|w| w[0] == "--root" && w[1] == root_text);
        let this_container = match (id, &in_bundle) {
            (Some(id), Some(in_bundle)) => args
                .iter()
                .any(|a| *a == id || a.contains(in_bundle.as_str())),
            _ => true,
        };
        if is_runsc && ours && this_container {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
