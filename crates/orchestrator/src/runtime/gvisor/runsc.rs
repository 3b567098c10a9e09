//! Invoking `runsc` with Kiln's flags.

use super::super::{BootMode, RuntimeError};
use std::{
    path::{Path, PathBuf},
    process::Stdio,
};
use tokio::process::Command;

/// The runsc binary and the flags every call shares: Kiln's own state root, the ptrace platform
/// (no KVM needed) and host Unix sockets that the sandbox may create (envd's listener). The rest
/// depends on the [`BootMode`]: sealed sandboxes have no network (the host channel is the only
/// way in) and their root filesystem overlaid in sandbox memory, so one template rootfs backs
/// every sandbox unmodified; build sandboxes write to their root filesystem and use the host
/// network stack of the namespace in their spec.
#[derive(Clone, Debug)]
pub struct Runsc {
    pub binary: PathBuf,
    pub root: PathBuf,
    pub log_dir: PathBuf,
}

impl Runsc {
    fn command(&self, mode: &BootMode) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .arg("--root")
            .arg(&self.root)
            .args(["--platform=ptrace", "--host-uds=create"]);
        match mode {
            BootMode::Sealed => command.args(["--network=none", "--overlay2=root:memory"]),
            BootMode::Build { network: Some(_) } => {
                command.args(["--network=host", "--overlay2=none"])
            }
            BootMode::Build { network: None } => {
                command.args(["--network=none", "--overlay2=none"])
            }
        };
        command.stdin(Stdio::null()).kill_on_drop(true);
        command
    }

    /// Runs `runsc <subcommand> <args>` for container `id` (sealed); output goes to its log, and
    /// the log's last error line into the returned error.
    pub(super) async fn run(
        &self,
        subcommand: &'static str,
        id: &str,
        args: &[&std::ffi::OsStr],
    ) -> Result<(), RuntimeError> {
        self.run_as(&BootMode::Sealed, subcommand, id, args).await
    }

    /// [`Runsc::run`] with the flags of `mode`.
    pub(super) async fn run_as(
        &self,
        mode: &BootMode,
        subcommand: &'static str,
        id: &str,
        args: &[&std::ffi::OsStr],
    ) -> Result<(), RuntimeError> {
        let log_path = self.log_dir.join(format!("{id}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| RuntimeError::Io {
                context: format!("opening {}", log_path.display()),
                source,
            })?;
        let err_log = log.try_clone().map_err(|source| RuntimeError::Io {
            context: "cloning log handle".into(),
            source,
        })?;
        let status = self
            .command(mode)
            .arg(subcommand)
            .args(args)
            .stdout(log)
            .stderr(err_log)
            .status()
            .await
            .map_err(|source| RuntimeError::Io {
                context: format!("running {}", self.binary.display()),
                source,
            })?;
        if status.success() {
            return Ok(());
        }
        Err(RuntimeError::Command {
            operation: subcommand,
            id: id.to_owned(),
            detail: failure_detail(&log_path),
        })
    }

    /// Ids of every container under the state root.
    pub(super) async fn list(&self) -> Result<Vec<String>, RuntimeError> {
        let output = self
            .command(&BootMode::Sealed)
            .args(["list", "--quiet"])
            .output()
            .await
            .map_err(|source| RuntimeError::Io {
                context: "runsc list".into(),
                source,
            })?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    pub(super) fn root(&self) -> &Path {
        &self.root
    }
}

/// The last meaningful line of a runsc log (its error), without Go stack traces.
fn failure_detail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .rev()
        .map(str::trim)
        .find(|line| {
            !line.is_empty()
                && !line.starts_with("gvisor.dev/")
                && !line.starts_with("created by")
                && !line.starts_with("goroutine")
                && !line.contains(".go:")
        })
        .map_or_else(
            || format!("see {}", log.display()),
            |line| line.chars().take(500).collect(),
        )
}
