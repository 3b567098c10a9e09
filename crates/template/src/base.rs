//! The `base` template: Debian bookworm from `debootstrap`, the user `user` with passwordless
//! sudo, and a static envd as the sandbox's init.

use crate::{Template, TemplateError, TemplateStore, io};
use orchestrator::runtime::{Limits, Runtime};
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Stdio,
};
use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt, BufReader};

pub const BASE_ID: &str = "base";
/// Packages on top of debootstrap's minbase.
pub const PACKAGES: &[&str] = &[
    "python3",
    "python3-pip",
    "curl",
    "git",
    "sudo",
    "procps",
    "ca-certificates",
];
const SUITE: &str = "bookworm";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// How to build the base template.
pub struct BaseBuild<'a> {
    /// The static envd binary to install as `/usr/bin/envd`.
    pub envd: &'a Path,
    /// A Debian mirror; the host's first APT source when `None`.
    pub mirror: Option<String>,
    /// Receives progress lines.
    pub progress: &'a (dyn Fn(&str) + Send + Sync),
}

/// Builds `base` and snapshots it; replaces an existing `base` only on success.
pub async fn build(
    store: &TemplateStore,
    runtime: &dyn Runtime,
    options: BaseBuild<'_>,
) -> Result<Template, TemplateError> {
    let building = store.dir().join(format!("{BASE_ID}.building"));
    if building.exists() {
        std::fs::remove_dir_all(&building)
            .map_err(io(format!("removing stale {}", building.display())))?;
    }
    std::fs::create_dir_all(&building).map_err(io(format!("creating {}", building.display())))?;
    let result = build_in(&building, runtime, &options).await;
    match result {
        Ok(template) => {
            store.commit(&building, &template)?;
            (options.progress)("base template ready");
            Ok(template)
        }
        Err(error) => {
            let _ = std::fs::remove_dir_all(&building);
            Err(error)
        }
    }
}

async fn build_in(
    building: &Path,
    runtime: &dyn Runtime,
    options: &BaseBuild<'_>,
) -> Result<Template, TemplateError> {
    let progress = options.progress;
    let rootfs = building.join("rootfs");
    let mirror = options.mirror.clone().unwrap_or_else(host_mirror);
    progress(&format!(
        "debootstrap {SUITE} from {mirror} (with {})",
        PACKAGES.join(", ")
    ));
    let include = format!("--include={}", PACKAGES.join(","));
    let rootfs_arg = rootfs.to_string_lossy().into_owned();
    run_streaming(
        "debootstrap",
        "debootstrap",
        &["--variant=minbase", &include, SUITE, &rootfs_arg, &mirror],
        progress,
    )
    .await?;

    progress("adding the user 'user' (passwordless sudo)");
    run_streaming(
        "useradd",
        "chroot",
        &[
            &rootfs_arg,
            "useradd",
            "--create-home",
            "--shell",
            "/bin/bash",
            "user",
        ],
        progress,
    )
    .await?;
    let sudoers = rootfs.join("etc/sudoers.d/user");
    std::fs::write(&sudoers, "user ALL=(ALL:ALL) NOPASSWD: ALL\n")
        .map_err(io("writing sudoers"))?;
    std::fs::set_permissions(&sudoers, std::fs::Permissions::from_mode(0o440))
        .map_err(io("chmod sudoers"))?;

    progress("installing envd as the sandbox's init");
    install_envd(&rootfs, options.envd)?;

    progress("booting the template and taking its snapshot");
    let limits = Limits {
        cpu_count: 2,
        memory_mb: 1024,
    };
    let container = format!("template-{BASE_ID}-{}", orchestrator::random_id(6));
    runtime
        .snapshot(
            &container,
            &rootfs,
            &building.join("work"),
            &building.join("snapshot"),
            limits,
        )
        .await?;
    let _ = std::fs::remove_dir_all(building.join("work"));

    Ok(Template {
        id: BASE_ID.to_owned(),
        aliases: vec![BASE_ID.to_owned()],
        build_id: orchestrator::random_id(12),
        cpu_count: limits.cpu_count,
        memory_mb: limits.memory_mb,
        disk_size_mb: 1024,
        envd_version: envd_proto::host::ENVD_VERSION.to_owned(),
        default_user: "user".to_owned(),
        default_workdir: "/home/user".to_owned(),
        public: true,
        created_at: OffsetDateTime::now_utc(),
    })
}

/// Copies envd to `/usr/bin/envd` and creates the host channel's mount point.
pub fn install_envd(rootfs: &Path, envd: &Path) -> Result<(), TemplateError> {
    let target = rootfs.join("usr/bin/envd");
    std::fs::copy(envd, &target)
        .map_err(io(format!("copying {} into the rootfs", envd.display())))?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
        .map_err(io("chmod envd"))?;
    std::fs::create_dir_all(rootfs.join("run/kiln")).map_err(io("creating /run/kiln"))?;
    Ok(())
}

/// Runs a build step, passing each output line to `progress`; a failure carries the last lines.
async fn run_streaming(
    step: &'static str,
    program: &str,
    args: &[&str],
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<(), TemplateError> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| TemplateError::Step {
            step,
            detail: format!("cannot run {program}: {e}"),
        })?;
    let stdout = child.stdout.take().map(|s| BufReader::new(s).lines());
    let stderr = child.stderr.take().map(|s| BufReader::new(s).lines());
    let mut tail: Vec<String> = Vec::new();
    if let (Some(mut stdout), Some(mut stderr)) = (stdout, stderr) {
        let (mut out_done, mut err_done) = (false, false);
        while !(out_done && err_done) {
            let line = tokio::select! {
                line = stdout.next_line(), if !out_done => line.ok().flatten().or_else(|| { out_done = true; None }),
                line = stderr.next_line(), if !err_done => line.ok().flatten().or_else(|| { err_done = true; None }),
            };
            if let Some(line) = line {
                progress(&format!("{step}: {line}"));
                tail.push(line);
                if tail.len() > 5 {
                    tail.remove(0);
                }
            }
        }
    }
    let status = child.wait().await.map_err(|e| TemplateError::Step {
        step,
        detail: e.to_string(),
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(TemplateError::Step {
            step,
            detail: format!("{status}; last output: {}", tail.join(" | ")),
        })
    }
}

/// The first `URIs:`/`deb` mirror of the host's APT sources, else Debian's CDN.
fn host_mirror() -> String {
    let sources = [
        PathBuf::from("/etc/apt/sources.list.d/debian.sources"),
        PathBuf::from("/etc/apt/sources.list"),
    ];
    for path in sources {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for line in text.lines().map(str::trim) {
            let uri = line.strip_prefix("URIs:").map(str::trim).or_else(|| {
                line.strip_prefix("deb ")
                    .and_then(|rest| rest.split_whitespace().find(|w| w.starts_with("http")))
            });
            if let Some(uri) = uri.and_then(|u| u.split_whitespace().next())
                && uri.starts_with("http")
                && !uri.contains("security")
            {
                return uri.to_owned();
            }
        }
    }
    DEFAULT_MIRROR.to_owned()
}
