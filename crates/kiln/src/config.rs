//! `kiln up`'s settings (flags or environment) and the host prerequisites, each checked and
//! every problem reported at once.

use clap::Args;
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

#[derive(Args, Clone, Debug)]
pub(crate) struct UpArgs {
    /// Where Kiln keeps its state (database, templates, sandboxes).
    #[arg(long, env = "KILN_HOME", default_value = "/var/lib/kiln")]
    pub(crate) home: PathBuf,
    /// Address of the E2B REST API.
    #[arg(long, env = "KILN_API_ADDR", default_value = "127.0.0.1:3000")]
    pub(crate) api_addr: SocketAddr,
    /// Address of the sandbox proxy.
    #[arg(long, env = "KILN_PROXY_ADDR", default_value = "127.0.0.1:3002")]
    pub(crate) proxy_addr: SocketAddr,
    /// The static envd binary installed into templates.
    #[arg(long, env = "KILN_ENVD")]
    pub(crate) envd: Option<PathBuf>,
    /// The runsc binary.
    #[arg(long, env = "KILN_RUNSC", default_value = "runsc")]
    pub(crate) runsc: PathBuf,
    /// Concurrent sandboxes a team may run.
    #[arg(long, env = "KILN_MAX_SANDBOXES", default_value_t = 20)]
    pub(crate) max_sandboxes: u32,
    /// Debian mirror for the base template (default: the host's APT source).
    #[arg(long, env = "KILN_DEBIAN_MIRROR")]
    pub(crate) debian_mirror: Option<String>,
    /// Prune the registry of the configured provider this often (`6h`, `1d`); off by default.
    #[arg(long, env = "KILN_REGISTRY_PRUNE_INTERVAL")]
    pub(crate) registry_prune_interval: Option<String>,
    /// The retention policy (TOML, as `kiln registry prune --policy`) of the scheduled prune;
    /// default: keep 10 tagged images per repository, delete untagged ones after 14 days.
    #[arg(long, env = "KILN_REGISTRY_PRUNE_POLICY")]
    pub(crate) registry_prune_policy: Option<PathBuf>,
}

/// Settings and prerequisites, validated.
pub(crate) struct UpConfig {
    pub(crate) args: UpArgs,
    pub(crate) envd: PathBuf,
    pub(crate) runsc: PathBuf,
    /// Where template images come from (`ARTIFACTS_REGISTRY_PROVIDER` and its settings).
    pub(crate) images: std::sync::Arc<registry::Images>,
    /// The scheduled registry prune, when configured.
    pub(crate) registry_prune: Option<crate::cli::registry::ScheduledPrune>,
    /// Where template builds and snapshots are stored (`STORAGE_PROVIDER` and its settings).
    pub(crate) storage: storage::StorageConfig,
}

impl UpArgs {
    /// Checks everything `kiln up` needs from the host, returning every problem in one error.
    pub(crate) fn validate(self) -> anyhow::Result<UpConfig> {
        let mut problems = Vec::new();
        if !nix::unistd::geteuid().is_root() {
            problems.push("kiln up must run as root (runsc, mounts, cgroups)".to_owned());
        }
        let runsc = find_program(&self.runsc);
        if runsc.is_none() {
            problems.push(format!(
                "runsc not found ('{}'): apt-get install runsc",
                self.runsc.display()
            ));
        }
        if find_program(Path::new("debootstrap")).is_none() {
            problems.push("debootstrap not found: apt-get install debootstrap".to_owned());
        }
        let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
        if !filesystems.contains("overlay") {
            problems.push("the kernel has no overlayfs (modprobe overlay)".to_owned());
        }
        if !Path::new("/sys/fs/cgroup").is_dir() {
            problems.push("cgroups are not mounted at /sys/fs/cgroup".to_owned());
        }
        let envd = self.envd.clone().or_else(default_envd);
        match &envd {
            Some(path) if path.is_file() => {}
            Some(path) => problems.push(format!(
                "envd binary not found at {} (make build)",
                path.display()
            )),
            None => problems.push(
                "no static envd binary: pass --envd or set KILN_ENVD (make build)".to_owned(),
            ),
        }
        if self.max_sandboxes == 0 {
            problems.push("--max-sandboxes must be at least 1".to_owned());
        }
        if self.api_addr == self.proxy_addr {
            problems.push("--api-addr and --proxy-addr must differ".to_owned());
        }
        let images = registry::Images::from_env(&self.home, &self.home.join("cache/images"))
            .map_err(|errors| {
                problems.extend(errors.to_string().lines().map(str::to_owned));
            })
            .ok()
            .map(std::sync::Arc::new);
        let registry_prune = crate::cli::registry::ScheduledPrune::from_settings(
            self.registry_prune_interval.as_deref(),
            self.registry_prune_policy.as_deref(),
            &mut problems,
        );
        let storage = storage::StorageConfig::from_env(&self.home, |key| std::env::var(key).ok())
            .map_err(|errors| {
                problems.extend(errors.to_string().lines().map(str::to_owned));
            })
            .ok();
        if !problems.is_empty() {
            anyhow::bail!(
                "cannot start, {} problem(s):\n  - {}",
                problems.len(),
                problems.join("\n  - ")
            );
        }
        match (envd, runsc, images, storage) {
            (Some(envd), Some(runsc), Some(images), Some(storage)) => Ok(UpConfig {
                args: self,
                envd,
                runsc,
                images,
                registry_prune,
                storage,
            }),
            _ => anyhow::bail!(
                "cannot start: envd, runsc, the registry or the storage settings are missing"
            ),
        }
    }
}

/// The static envd next to this binary's build: `target/static/…/envd`, else `envd` beside it.
fn default_envd() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let candidates = [
        dir.join("../static/x86_64-unknown-linux-gnu/release/envd"),
        dir.join("envd-static"),
        dir.join("envd"),
    ];
    candidates.into_iter().find(|p| p.is_file())
}

fn find_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_owned());
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}
