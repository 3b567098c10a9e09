//! The `base` template: Debian bookworm from `debootstrap`, the user `user` with passwordless
//! sudo, and a static envd as the sandbox's init.

use crate::{Template, TemplateError, TemplateStore, guest, io};
use orchestrator::runtime::{Limits, Runtime};
use std::{
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

/// What a `base` build consists of; a `base` built from another recipe is rebuilt. Bump it when
/// the packages or the preparation below change.
pub const RECIPE: &str = "bookworm-minbase/2";

/// How to build the base template.
pub struct BaseBuild<'a> {
    /// The static envd binary to install as `/usr/bin/envd`.
    pub envd: &'a Path,
    /// A Debian mirror; the host's first APT source when `None`.
    pub mirror: Option<String>,
    /// Receives progress lines.
    pub progress: &'a (dyn Fn(&str) + Send + Sync),
}

/// Makes `base` current: builds it when absent or from another recipe; when only envd changed,
/// installs the new envd into a copy of its root filesystem and snapshots that (seconds, no
/// download). Returns whether anything was (re)built.
pub async fn ensure(
    store: &TemplateStore,
    runtime: &dyn Runtime,
    options: BaseBuild<'_>,
) -> Result<bool, TemplateError> {
    let existing = store.find(BASE_ID)?;
    let recipe_current = existing
        .as_ref()
        .is_some_and(|t| t.recipe.as_deref() == Some(RECIPE));
    if !recipe_current {
        (options.progress)("building the base template (takes a few minutes)");
        build(store, runtime, options).await?;
        return Ok(true);
    }
    let digest = guest::envd_digest(options.envd)?;
    if existing.is_some_and(|t| t.envd_sha256.as_deref() == Some(digest.as_str())) {
        return Ok(false);
    }
    (options.progress)("envd changed: refreshing the base template");
    let current_rootfs = store.dir().join(BASE_ID).join("rootfs");
    in_building_dir(store, &options, async |building: &Path| {
        let rootfs = building.join("rootfs");
        run_streaming(
            "copy rootfs",
            "cp",
            &[
                "-a",
                "--reflink=auto",
                &path_arg(&current_rootfs),
                &path_arg(&rootfs),
            ],
            options.progress,
        )
        .await?;
        finish(building, runtime, &options).await
    })
    .await?;
    Ok(true)
}

/// Builds `base` from scratch and snapshots it; replaces an existing `base` only on success.
pub async fn build(
    store: &TemplateStore,
    runtime: &dyn Runtime,
    options: BaseBuild<'_>,
) -> Result<Template, TemplateError> {
    in_building_dir(store, &options, async |building: &Path| {
        bootstrap(&building.join("rootfs"), &options).await?;
        finish(building, runtime, &options).await
    })
    .await
}

/// Runs `steps` in a fresh `base.building` directory and commits its result.
async fn in_building_dir(
    store: &TemplateStore,
    options: &BaseBuild<'_>,
    steps: impl AsyncFnOnce(&Path) -> Result<Template, TemplateError>,
) -> Result<Template, TemplateError> {
    let building = store.dir().join(format!("{BASE_ID}.building"));
    if building.exists() {
        std::fs::remove_dir_all(&building)
            .map_err(io(format!("removing stale {}", building.display())))?;
    }
    std::fs::create_dir_all(&building).map_err(io(format!("creating {}", building.display())))?;
    match steps(&building).await {
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

/// debootstrap, the user `user` (group `sudo`: passwordless sudo through envd), and a login
/// profile that spares every `bash -l` (how the SDKs run commands) a fork of `id -u`.
async fn bootstrap(rootfs: &Path, options: &BaseBuild<'_>) -> Result<(), TemplateError> {
    let progress = options.progress;
    let mirror = options.mirror.clone().unwrap_or_else(host_mirror);
    progress(&format!(
        "debootstrap {SUITE} from {mirror} (with {})",
        PACKAGES.join(", ")
    ));
    let include = format!("--include={}", PACKAGES.join(","));
    let rootfs_arg = path_arg(rootfs);
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
            "--groups",
            "sudo",
            "user",
        ],
        progress,
    )
    .await?;
    let profile = rootfs.join("etc/profile");
    let text = std::fs::read_to_string(&profile).map_err(io("reading /etc/profile"))?;
    std::fs::write(
        &profile,
        text.replace("\"$(id -u)\"", "\"${EUID:-$(id -u)}\""),
    )
    .map_err(io("writing /etc/profile"))
}

/// Installs envd and snapshots the booted root filesystem in `building`.
async fn finish(
    building: &Path,
    runtime: &dyn Runtime,
    options: &BaseBuild<'_>,
) -> Result<Template, TemplateError> {
    (options.progress)("installing envd as the sandbox's init");
    let envd_sha256 = guest::install(&building.join("rootfs"), options.envd)?;

    (options.progress)("booting the template and taking its snapshot");
    let limits = Limits {
        cpu_count: 2,
        memory_mb: 1024,
    };
    let container = format!("template-{BASE_ID}-{}", orchestrator::random_id(6));
    runtime
        .snapshot(
            &container,
            &building.join("rootfs"),
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
        recipe: Some(RECIPE.to_owned()),
        envd_sha256: Some(envd_sha256),
        team_id: None,
        env_vars: Default::default(),
        build_key: None,
        start_cmd: None,
        ready_cmd: None,
    })
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
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
