//! Template builds: an image or a template, plus steps, into a template sandboxes restore from.
//!
//! Phases, as E2B's template manager names them in build logs and failure reasons:
//! - `base`: the image pulled and unpacked (or another template's root filesystem copied);
//! - the guest layer: envd, `sudo` through envd, the default user `user`;
//! - steps `1`…`n`: each a layer on an overlay of the ones below. `RUN` runs in a build sandbox
//!   under gVisor that writes to the layer; `COPY`, `WORKDIR`, `USER` edit it from the host
//!   (paths resolved inside the root filesystem, nothing from the image runs on the host);
//! - `finalize`: the layers flattened into the template's root filesystem, booted sealed, the
//!   start command started and the ready command awaited, then checkpointed.
//!
//! Every layer is cached under a key hashing everything that produced it, so an unchanged
//! rebuild runs nothing; `force` (or a step's `force`) rebuilds from that step on. A build works
//! in `<template>.building` and replaces the template only when complete: a failed build leaves
//! the previous one serving.

pub mod dockerfile;
mod rootfs;
mod stack;
pub mod steps;

use crate::{Template, TemplateStore, guest, layers};
use orchestrator::{
    envd::{EnvdClient, ExecRequest, InitRequest},
    runtime::{BootMode, Limits, NetworkNamespace, Runtime, network::BuildNetwork, socket_path},
};
use serde::{Deserialize, Serialize};
use stack::{LayerCache, Overlay, key};
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};
use steps::{BuildRequest, Instruction, RegistryCredentials};
use time::OffsetDateTime;

pub use steps::{Step, StepError};

/// Name of the first phase in logs and failure reasons (E2B's `BASE_STEP_NAME`).
pub const BASE_STEP: &str = "base";
/// Name of the last phase (E2B's `FINALIZE_STEP_NAME`).
pub const FINALIZE_STEP: &str = "finalize";
/// The default user of a built template, as in E2B.
const DEFAULT_USER: &str = "user";
/// Bump when what the guest layer installs changes.
const GUEST_RECIPE: &str = "guest/2";
/// Longest a `RUN` step may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long the ready command may keep failing, and how often it is tried.
const READY_TIMEOUT: Duration = Duration::from_secs(600);
const READY_INTERVAL: Duration = Duration::from_secs(1);
/// Without a ready command, a start command gets this long to come up (E2B's default).
const DEFAULT_READY_WAIT: Duration = Duration::from_secs(20);

/// The state a build carries from step to step, recorded with every layer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct State {
    user: String,
    workdir: String,
    env: BTreeMap<String, String>,
    /// `ARG`s: visible to later steps, not to sandboxes.
    args: BTreeMap<String, String>,
}

/// A build to run.
#[derive(Clone, Debug)]
pub struct BuildJob {
    pub template_id: String,
    pub build_id: String,
    pub aliases: Vec<String>,
    pub team_id: Option<String>,
    pub cpu_count: u32,
    pub memory_mb: u64,
    pub request: BuildRequest,
}

/// Log levels of build log entries (E2B's `LogLevel`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// Receives a build's log as it happens.
pub trait BuildLog: Send + Sync {
    fn entry(&self, level: LogLevel, step: Option<&str>, message: &str);
}

/// Why a build failed: the phase (`base`, a 1-based step number, `finalize`) and what happened.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct BuildError {
    pub step: Option<String>,
    pub message: String,
}

impl BuildError {
    /// A failure in phase `step`; a numbered step is named in the message too, since the SDK
    /// shows only the message.
    fn at(step: &str, message: impl std::fmt::Display) -> Self {
        let message = message.to_string();
        let numbered = step.parse::<usize>().is_ok() && !message.starts_with("step ");
        BuildError {
            step: Some(step.to_owned()),
            message: if numbered {
                format!("step {step}: {message}")
            } else {
                message
            },
        }
    }
}

/// Runs builds on this node.
pub struct Builder {
    pub store: TemplateStore,
    pub runtime: Arc<dyn Runtime>,
    pub images: Arc<registry::Images>,
    /// The static envd installed into every template.
    pub envd: PathBuf,
    /// Build context archives by files hash (`<hash>.tar`), as uploaded.
    pub files: PathBuf,
    /// Layer cache and scratch space.
    pub work: PathBuf,
    /// Where finished builds are stored ([`crate::publish`]).
    pub storage: storage::Storage,
}

/// Removes what builds interrupted by a crash left under `work`: their overlay mounts, scratch
/// directories and half-made layers. Call before any build starts.
pub fn remove_leftovers(work: &Path) {
    let prefix = work.to_string_lossy().into_owned();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut leftovers: Vec<&str> = mounts
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .filter(|target| target.starts_with(&prefix))
        .collect();
    // Deepest first, so nested mounts come off before their parents.
    leftovers.sort_by_key(|target| std::cmp::Reverse(target.len()));
    for target in leftovers {
        if let Err(error) = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(%error, target, "unmounting a leftover build mount");
        }
    }
    let _ = std::fs::remove_dir_all(work.join("scratch"));
    if let Ok(entries) = std::fs::read_dir(work.join("layers")) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".partial") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Where uploaded build-context archives live.
pub fn context_archive(files: &Path, hash: &str) -> Option<PathBuf> {
    steps::is_hash(hash).then(|| files.join(format!("{}.tar", hash.to_ascii_lowercase())))
}

struct Run<'a> {
    builder: &'a Builder,
    job: &'a BuildJob,
    log: &'a dyn BuildLog,
    cache: LayerCache,
    scratch: PathBuf,
    /// Keys of the layers so far, bottom first.
    layers: Vec<String>,
    state: State,
    /// The build's network, made for its first `RUN`.
    network: Option<BuildNetwork>,
}

impl Builder {
    /// Builds `job` into its template, replacing the template's current build on success.
    pub async fn build(&self, job: &BuildJob, log: &dyn BuildLog) -> Result<Template, BuildError> {
        let started = Instant::now();
        let scratch = self.work.join("scratch").join(&job.build_id);
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).map_err(|e| {
            BuildError::at(BASE_STEP, format!("creating {}: {e}", scratch.display()))
        })?;
        let cache = LayerCache::open(&self.work.join("layers"))
            .map_err(|e| BuildError::at(BASE_STEP, format!("opening the layer cache: {e}")))?;
        let mut run = Run {
            builder: self,
            job,
            log,
            cache,
            scratch: scratch.clone(),
            layers: Vec::new(),
            state: State::default(),
            network: None,
        };
        let result = run.all().await;
        if let Some(network) = run.network.take() {
            network.remove().await;
        }
        let _ = std::fs::remove_dir_all(&scratch);
        if let Ok(template) = &result {
            log.entry(
                LogLevel::Info,
                Some(FINALIZE_STEP),
                &format!(
                    "build {} of template {} ready in {:.1} s",
                    template.build_id,
                    template.id,
                    started.elapsed().as_secs_f64()
                ),
            );
        }
        result
    }
}

impl Run<'_> {
    fn info(&self, step: &str, message: &str) {
        self.log.entry(LogLevel::Info, Some(step), message);
    }

    async fn all(&mut self) -> Result<Template, BuildError> {
        let request = &self.job.request;
        let mut forced = request.force;
        self.base(forced).await?;
        self.guest(forced).await?;
        for (index, step) in request.steps.iter().enumerate() {
            let number = (index + 1).to_string();
            let instruction = step
                .instruction(index + 1)
                .map_err(|e| BuildError::at(&number, e))?;
            forced |= step.force;
            let identity = serde_json::json!({"type": step.kind, "args": step.args, "filesHash": step.files_hash});
            let layer_key = key(&[self.top(), "step", &identity.to_string()]);
            let summary = format!(
                "[{number}/{}] {} {}",
                request.steps.len(),
                step.kind.to_ascii_uppercase(),
                step.args.join(" ")
            );
            if self.reuse(forced, &layer_key) {
                self.info(&number, &format!("CACHED {summary}"));
                continue;
            }
            self.info(&number, &summary);
            self.cache.remove(&layer_key);
            self.step(&number, &layer_key, instruction).await?;
        }
        self.finalize(forced).await
    }

    fn top(&self) -> &str {
        self.layers.last().map_or("", String::as_str)
    }

    /// Takes the cached layer `layer_key` (and its state) unless the build is forced.
    fn reuse(&mut self, forced: bool, layer_key: &str) -> bool {
        match self.cache.get(layer_key).filter(|_| !forced) {
            Some(state) => {
                self.push(layer_key.to_owned(), state);
                true
            }
            None => false,
        }
    }

    fn push(&mut self, layer_key: String, state: State) {
        self.layers.push(layer_key);
        self.state = state;
    }

    fn lowers(&self) -> Vec<PathBuf> {
        self.layers.iter().map(|k| self.cache.root(k)).collect()
    }

    /// `base`: the image's layers (or a template's root filesystem) as the bottom layer.
    async fn base(&mut self, forced: bool) -> Result<(), BuildError> {
        let request = &self.job.request;
        let fail = |message: String| BuildError::at(BASE_STEP, message);
        match (&request.from_image, &request.from_template) {
            (Some(image), None) => {
                self.info(BASE_STEP, &format!("FROM {image}"));
                let images = &self.builder.images;
                let pulled = match &request.from_image_registry {
                    None => images.resolve_and_pull(image, None).await,
                    Some(RegistryCredentials::Registry { username, password }) => {
                        let basic = registry::Credentials::Basic {
                            username: username.clone(),
                            password: password.clone(),
                        };
                        images.resolve_and_pull(image, Some(basic)).await
                    }
                    Some(RegistryCredentials::Aws {
                        access_key_id,
                        secret_access_key,
                        region,
                    }) => {
                        let ecr = registry::CloudCredentials::Ecr {
                            access_key_id: access_key_id.clone(),
                            secret_access_key: secret_access_key.clone(),
                            region: region.clone(),
                        };
                        images.resolve_and_pull_cloud(image, ecr).await
                    }
                    Some(RegistryCredentials::Gcp {
                        service_account_json,
                    }) => {
                        let gcp = registry::CloudCredentials::Gcp {
                            service_account_json: service_account_json.clone(),
                        };
                        images.resolve_and_pull_cloud(image, gcp).await
                    }
                }
                .map_err(|e| fail(e.to_string()))?;
                let layer_key = key(&["image", &pulled.manifest_digest]);
                let state = State {
                    user: DEFAULT_USER.into(),
                    workdir: format!("/home/{DEFAULT_USER}"),
                    env: pulled
                        .config
                        .env
                        .iter()
                        .filter_map(|pair| pair.split_once('='))
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect(),
                    args: BTreeMap::new(),
                };
                if self.reuse(forced, &layer_key) {
                    self.info(
                        BASE_STEP,
                        &format!("CACHED image {}", pulled.manifest_digest),
                    );
                    return Ok(());
                }
                let partial = self
                    .cache
                    .begin(&layer_key)
                    .map_err(|e| fail(e.to_string()))?;
                let root = partial.join("root");
                let blobs: Vec<PathBuf> = pulled.layers.iter().map(|l| l.path.clone()).collect();
                self.info(
                    BASE_STEP,
                    &format!(
                        "unpacking {} layers of {}",
                        blobs.len(),
                        pulled.manifest_digest
                    ),
                );
                tokio::task::spawn_blocking(move || {
                    blobs
                        .iter()
                        .try_for_each(|blob| layers::apply_layer(blob, &root).map(drop))
                })
                .await
                .map_err(|e| fail(e.to_string()))?
                .map_err(|e| fail(format!("unpacking {image}: {e}")))?;
                self.cache
                    .finish(&layer_key, &partial, &state)
                    .map_err(|e| fail(e.to_string()))?;
                self.push(layer_key, state);
            }
            (None, Some(name)) => {
                let template = self
                    .builder
                    .store
                    .find(name)
                    .map_err(|e| fail(e.to_string()))?
                    .filter(|t| t.team_id.is_none() || t.team_id == self.job.team_id)
                    .ok_or_else(|| fail(format!("template '{name}' not found")))?;
                self.info(
                    BASE_STEP,
                    &format!("FROM TEMPLATE {name} (build {})", template.build_id),
                );
                let layer_key = key(&["template", &template.id, &template.build_id]);
                let state = State {
                    user: template.default_user.clone(),
                    workdir: template.default_workdir.clone(),
                    env: template.env_vars.clone(),
                    args: BTreeMap::new(),
                };
                if self.reuse(forced, &layer_key) {
                    return Ok(());
                }
                let partial = self
                    .cache
                    .begin(&layer_key)
                    .map_err(|e| fail(e.to_string()))?;
                let source = self.builder.store.image(&template).rootfs;
                copy_tree(&source, &partial.join("root"))
                    .await
                    .map_err(|e| fail(format!("copying template '{name}': {e}")))?;
                self.cache
                    .finish(&layer_key, &partial, &state)
                    .map_err(|e| fail(e.to_string()))?;
                self.push(layer_key, state);
            }
            (Some(_), Some(_)) => {
                return Err(fail("give fromImage or fromTemplate, not both".into()));
            }
            (None, None) => return Err(fail("fromImage or fromTemplate is required".into())),
        }
        Ok(())
    }

    /// What every Kiln template needs: envd, sudo through envd, the default user.
    async fn guest(&mut self, forced: bool) -> Result<(), BuildError> {
        let fail = |message: String| BuildError::at(BASE_STEP, message);
        let envd = &self.builder.envd;
        let digest = guest::envd_digest(envd).map_err(|e| fail(e.to_string()))?;
        let layer_key = key(&[self.top(), GUEST_RECIPE, &digest]);
        if self.reuse(forced, &layer_key) {
            return Ok(());
        }
        self.info(BASE_STEP, "installing envd and the default user");
        let partial = self
            .cache
            .begin(&layer_key)
            .map_err(|e| fail(e.to_string()))?;
        let state = self.state.clone();
        {
            let merged = self.mount_writable(&partial).map_err(&fail)?;
            guest::install(merged.path(), envd).map_err(|e| fail(e.to_string()))?;
            rootfs::ensure_user(merged.path(), &state.user, true)
                .map_err(|e| fail(e.to_string()))?;
            rootfs::make_dirs(merged.path(), Path::new(&state.workdir), None)
                .map_err(|e| fail(e.to_string()))?;
        }
        self.cache
            .finish(&layer_key, &partial, &state)
            .map_err(|e| fail(e.to_string()))?;
        self.push(layer_key, state);
        Ok(())
    }

    fn mount_writable(&self, partial: &Path) -> Result<Overlay, String> {
        Overlay::mount(
            &self.lowers(),
            Some((&partial.join("root"), &partial.join("work"))),
            &partial.join("merged"),
        )
        .map_err(|e| format!("mounting the build layers: {e}"))
    }

    async fn step(
        &mut self,
        number: &str,
        layer_key: &str,
        instruction: Instruction,
    ) -> Result<(), BuildError> {
        let fail = |message: String| BuildError::at(number, message);
        let partial = self
            .cache
            .begin(layer_key)
            .map_err(|e| fail(e.to_string()))?;
        let mut state = self.state.clone();
        {
            let merged = self.mount_writable(&partial).map_err(&fail)?;
            let root = merged.path();
            match instruction {
                Instruction::Run { command, user } => {
                    let user = user.unwrap_or_else(|| state.user.clone());
                    self.run_command(number, root, &command, &user, &state)
                        .await?;
                }
                Instruction::Copy {
                    src,
                    dest,
                    owner,
                    mode,
                    files_hash,
                } => {
                    let owner = owner.unwrap_or_else(|| state.user.clone());
                    let owner = rootfs::owner(root, &owner).map_err(|e| fail(e.to_string()))?;
                    let dest = absolute(&state.workdir, &dest, dest.ends_with('/'));
                    let copied = self
                        .copy(number, root, &src, &dest, owner, mode, &files_hash)
                        .await?;
                    self.info(number, &format!("copied {copied} files to {dest}"));
                }
                Instruction::Env(pairs) => state.env.extend(pairs),
                Instruction::Arg(pairs) => {
                    for (name, value) in pairs {
                        if !value.is_empty() || !state.args.contains_key(&name) {
                            state.args.insert(name, value);
                        }
                    }
                }
                Instruction::Workdir(dir) => {
                    let dir = absolute(&state.workdir, &dir, false);
                    let owner = rootfs::owner(root, &state.user).ok();
                    rootfs::make_dirs(root, Path::new(&dir), owner)
                        .map_err(|e| fail(e.to_string()))?;
                    state.workdir = dir;
                }
                Instruction::User(user) => {
                    let name = user.split(':').next().unwrap_or(&user).to_owned();
                    rootfs::ensure_user(root, &name, true).map_err(|e| fail(e.to_string()))?;
                    state.user = name;
                }
            }
        }
        self.cache
            .finish(layer_key, &partial, &state)
            .map_err(|e| fail(e.to_string()))?;
        self.push(layer_key.to_owned(), state);
        Ok(())
    }

    /// The build's network (namespace with NAT), created on first use; `None` (and a warning in
    /// the log) when the host cannot provide one.
    async fn network(&mut self, number: &str) -> Option<NetworkNamespace> {
        if self.network.is_none() {
            let id = self.job.build_id.chars().take(8).collect::<String>();
            match BuildNetwork::create(&id, &self.scratch.join("network")).await {
                Ok(network) => self.network = Some(network),
                Err(error) => {
                    self.log.entry(
                        LogLevel::Warn,
                        Some(number),
                        &format!("no network for build steps: {error}"),
                    );
                    return None;
                }
            }
        }
        self.network.as_ref().map(BuildNetwork::namespace)
    }

    /// `RUN`: a build sandbox on the layer stack (with the build's network), the command in a
    /// shell as `user`.
    async fn run_command(
        &mut self,
        number: &str,
        root: &Path,
        command: &str,
        user: &str,
        state: &State,
    ) -> Result<(), BuildError> {
        let fail = |message: String| BuildError::at(number, message);
        let network = self.network(number).await;
        let id = format!(
            "build-{}-{number}",
            &self.job.build_id[..8.min(self.job.build_id.len())]
        );
        let dir = self.scratch.join(format!("sandbox-{number}"));
        let runtime = self.builder.runtime.clone();
        let limits = self.limits();
        runtime
            .boot(&id, root, &dir, limits, BootMode::Build { network })
            .await
            .map_err(|e| fail(format!("starting the build sandbox: {e}")))?;
        let shell = if rootfs::inside(root, Path::new("/bin/bash")).is_ok_and(|p| p.exists()) {
            "/bin/bash"
        } else {
            "/bin/sh"
        };
        let mut envs = state.args.clone();
        envs.extend(state.env.clone());
        let exec = ExecRequest {
            command: shell.into(),
            args: vec!["-c".into(), command.into()],
            envs,
            cwd: Some(state.workdir.clone()),
            user: Some(user.to_owned()),
            timeout: RUN_TIMEOUT,
        };
        let result = EnvdClient::new(&socket_path(&dir)).exec(&exec).await;
        let _ = runtime.destroy(&id).await;
        let result = result.map_err(|e| fail(format!("running the command: {e}")))?;
        for line in result.stdout.lines().chain(result.stderr.lines()) {
            self.info(number, line);
        }
        if result.exit_code != 0 {
            let last = result
                .stderr
                .lines()
                .chain(result.stdout.lines())
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            return Err(fail(format!(
                "RUN {command}: exited with code {} as user {user}{}",
                result.exit_code,
                if last.is_empty() {
                    String::new()
                } else {
                    format!(": {last}")
                }
            )));
        }
        Ok(())
    }

    /// `COPY`: the uploaded archive extracted (refused if any entry leaves it), then copied in.
    #[allow(clippy::too_many_arguments)]
    async fn copy(
        &self,
        number: &str,
        root: &Path,
        src: &str,
        dest: &str,
        owner: (u32, u32),
        mode: Option<u32>,
        files_hash: &str,
    ) -> Result<u64, BuildError> {
        let fail = |message: String| BuildError::at(number, message);
        let archive = context_archive(&self.builder.files, files_hash)
            .filter(|p| p.exists())
            .ok_or_else(|| {
                fail(format!(
                    "the files of COPY {src} (hash {files_hash}) were not uploaded"
                ))
            })?;
        let staging = self.scratch.join(format!("context-{number}"));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(|e| fail(e.to_string()))?;
        let extract_to = staging.clone();
        tokio::task::spawn_blocking(move || layers::extract_archive(&archive, &extract_to))
            .await
            .map_err(|e| fail(e.to_string()))?
            .map_err(|e| fail(format!("the uploaded files of COPY {src} are refused: {e}")))?;
        let sources = matching(&staging, src);
        if sources.is_empty() {
            return Err(fail(format!(
                "COPY {src}: no such file in the uploaded files"
            )));
        }
        // Several sources (a glob) always go into a directory.
        let dest = if sources.len() > 1 && !dest.ends_with('/') {
            format!("{dest}/")
        } else {
            dest.to_owned()
        };
        let mut copied = 0;
        for source in sources {
            copied += rootfs::copy_in(root, &source, &dest, owner, mode)
                .map_err(|e| fail(e.to_string()))?;
        }
        Ok(copied)
    }

    fn limits(&self) -> Limits {
        Limits {
            cpu_count: self.job.cpu_count,
            memory_mb: self.job.memory_mb,
        }
    }

    /// `finalize`: flatten, boot sealed, start and await the service, checkpoint, commit.
    async fn finalize(&mut self, forced: bool) -> Result<Template, BuildError> {
        let fail = |message: String| BuildError::at(FINALIZE_STEP, message);
        let job = self.job;
        let request = &job.request;
        let build_key = key(&[
            self.top(),
            request.start_cmd.as_deref().unwrap_or(""),
            request.ready_cmd.as_deref().unwrap_or(""),
            &job.cpu_count.to_string(),
            &job.memory_mb.to_string(),
        ]);
        let template = Template {
            id: job.template_id.clone(),
            aliases: job.aliases.clone(),
            build_id: job.build_id.clone(),
            cpu_count: job.cpu_count,
            memory_mb: job.memory_mb,
            disk_size_mb: 1024,
            envd_version: envd_proto::host::ENVD_VERSION.to_owned(),
            default_user: self.state.user.clone(),
            default_workdir: self.state.workdir.clone(),
            public: false,
            created_at: OffsetDateTime::now_utc(),
            recipe: None,
            envd_sha256: guest::envd_digest(&self.builder.envd).ok(),
            team_id: job.team_id.clone(),
            env_vars: self.state.env.clone(),
            build_key: Some(build_key.clone()),
            start_cmd: request.start_cmd.clone(),
            ready_cmd: request.ready_cmd.clone(),
        };
        let store = &self.builder.store;
        let current = store
            .find(&job.template_id)
            .map_err(|e| fail(e.to_string()))?;
        if !forced
            && let Some(current) = current.filter(|t| {
                t.id == job.template_id && t.build_key.as_deref() == Some(build_key.as_str())
            })
        {
            self.info(
                FINALIZE_STEP,
                &format!("CACHED nothing changed since build {}", current.build_id),
            );
            let template = Template {
                created_at: current.created_at,
                ..template
            };
            store.update(&template).map_err(|e| fail(e.to_string()))?;
            return Ok(template);
        }

        let building = store.dir().join(format!("{}.building", job.template_id));
        let _ = std::fs::remove_dir_all(&building);
        std::fs::create_dir_all(&building).map_err(|e| fail(e.to_string()))?;
        let result = async {
            self.snapshot(&building, &template).await?;
            self.info(FINALIZE_STEP, "storing the build");
            let scratch = self.builder.work.join("publish");
            crate::publish::publish(&self.builder.storage, &building, &template, &scratch)
                .await
                .map_err(|e| fail(e.to_string()))
        }
        .await;
        match result {
            Ok(()) => {
                store
                    .commit(&building, &template)
                    .map_err(|e| fail(e.to_string()))?;
                Ok(template)
            }
            Err(error) => {
                let _ = std::fs::remove_dir_all(&building);
                Err(error)
            }
        }
    }

    async fn snapshot(&self, building: &Path, template: &Template) -> Result<(), BuildError> {
        let fail = |message: String| BuildError::at(FINALIZE_STEP, message);
        self.info(FINALIZE_STEP, "flattening the layers");
        let rootfs = building.join("rootfs");
        let lowers = self.lowers();
        if lowers.len() == 1 {
            copy_tree(&lowers[0], &rootfs).await.map_err(&fail)?;
        } else {
            let view = self.scratch.join("final");
            std::fs::create_dir_all(&view).map_err(|e| fail(e.to_string()))?;
            let merged = Overlay::mount(&lowers, None, &view).map_err(|e| fail(e.to_string()))?;
            copy_tree(merged.path(), &rootfs).await.map_err(&fail)?;
        }

        let id = format!("template-{}-{}", template.id, orchestrator::random_id(6));
        let dir = self.scratch.join("final-sandbox");
        let runtime = &self.builder.runtime;
        runtime
            .boot(&id, &rootfs, &dir, self.limits(), BootMode::Sealed)
            .await
            .map_err(|e| fail(format!("booting the template: {e}")))?;
        let result = async {
            let envd = EnvdClient::new(&socket_path(&dir));
            envd.init(&InitRequest {
                env_vars: template.env_vars.clone(),
                access_token: None,
                default_user: template.default_user.clone(),
                default_workdir: template.default_workdir.clone(),
                timestamp: OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
            })
            .await
            .map_err(|e| fail(format!("initializing envd: {e}")))?;
            self.start_service(&envd, template).await?;
            self.info(FINALIZE_STEP, "taking the template snapshot");
            runtime
                .checkpoint(&id, &dir, &building.join("snapshot"), None)
                .await
                .map_err(|e| fail(format!("checkpointing the template: {e}")))
        }
        .await;
        let _ = runtime.destroy(&id).await;
        result
    }

    /// Starts `startCmd` in the background and waits until `readyCmd` succeeds.
    async fn start_service(
        &self,
        envd: &EnvdClient,
        template: &Template,
    ) -> Result<(), BuildError> {
        let fail = |message: String| BuildError::at(FINALIZE_STEP, message);
        let shell_exec = |command: &str, timeout: Duration| ExecRequest {
            command: "/bin/sh".into(),
            args: vec!["-c".into(), command.into()],
            envs: template.env_vars.clone(),
            cwd: Some(template.default_workdir.clone()),
            user: Some(template.default_user.clone()),
            timeout,
        };
        if let Some(start) = &template.start_cmd {
            self.info(FINALIZE_STEP, &format!("starting: {start}"));
            envd.spawn(&shell_exec(start, Duration::ZERO))
                .await
                .map_err(|e| fail(format!("starting the start command: {e}")))?;
        }
        let Some(ready) = &template.ready_cmd else {
            if template.start_cmd.is_some() {
                self.info(
                    FINALIZE_STEP,
                    &format!(
                        "no ready command: waiting {} s",
                        DEFAULT_READY_WAIT.as_secs()
                    ),
                );
                tokio::time::sleep(DEFAULT_READY_WAIT).await;
            }
            return Ok(());
        };
        self.info(FINALIZE_STEP, &format!("waiting for: {ready}"));
        let started = Instant::now();
        loop {
            let result = envd.exec(&shell_exec(ready, Duration::from_secs(30))).await;
            match result {
                Ok(result) if result.exit_code == 0 => return Ok(()),
                Ok(result) if started.elapsed() > READY_TIMEOUT => {
                    return Err(fail(format!(
                        "the ready command '{ready}' did not succeed within {} s (last exit code {})",
                        READY_TIMEOUT.as_secs(),
                        result.exit_code
                    )));
                }
                Err(error) if started.elapsed() > READY_TIMEOUT => {
                    return Err(fail(format!("the ready command '{ready}' failed: {error}")));
                }
                _ => tokio::time::sleep(READY_INTERVAL).await,
            }
        }
    }
}

/// `path` made absolute against `workdir` (as Docker resolves `WORKDIR` and `COPY` targets),
/// keeping a trailing `/` when `keep_slash`.
fn absolute(workdir: &str, path: &str, keep_slash: bool) -> String {
    let joined = if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        Path::new(if workdir.is_empty() { "/" } else { workdir }).join(path)
    };
    let mut text = joined.to_string_lossy().into_owned();
    if keep_slash && !text.ends_with('/') {
        text.push('/');
    }
    text
}

/// The extracted context entries a `COPY` source names: a path, or a pattern with `*`/`?`
/// matched component by component.
fn matching(staging: &Path, src: &str) -> Vec<PathBuf> {
    let src = src.trim_start_matches("./").trim_end_matches('/');
    if src.is_empty() || src == "." {
        return vec![staging.to_owned()];
    }
    if !src.contains(['*', '?']) {
        let path = staging.join(src);
        return if std::fs::symlink_metadata(&path).is_ok() {
            vec![path]
        } else {
            Vec::new()
        };
    }
    let mut current = vec![staging.to_owned()];
    for pattern in src.split('/').filter(|p| !p.is_empty()) {
        let mut next = Vec::new();
        for dir in &current {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut names: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
            names.sort();
            for name in names {
                if wildcard(pattern, &name.to_string_lossy()) {
                    next.push(dir.join(name));
                }
            }
        }
        current = next;
    }
    current
}

/// Shell-style `*` and `?` matching of one path component.
fn wildcard(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// `cp -a` of a directory's contents (reflinks where the file system has them).
async fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| format!("creating {}: {e}", to.display()))?;
    let output = tokio::process::Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("running cp: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "copying {} to {}: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::{absolute, matching, wildcard};

    #[test]
    fn paths_resolve_against_the_workdir() {
        assert_eq!(absolute("/app", "x", false), "/app/x");
        assert_eq!(absolute("/app", "/etc/y", false), "/etc/y");
        assert_eq!(absolute("/app", "d", true), "/app/d/");
        assert_eq!(absolute("", "d", false), "/d");
    }

    #[test]
    fn copy_sources_match_paths_and_patterns() {
        assert!(wildcard("*.py", "main.py") && wildcard("a?c", "abc") && wildcard("*", "x"));
        assert!(!wildcard("*.py", "main.pyc") && !wildcard("a?c", "ac"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("src")).unwrap();
        for name in ["src/a.py", "src/b.py", "src/c.txt", "top.txt"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        assert_eq!(matching(dir.path(), "src/*.py").len(), 2);
        assert_eq!(
            matching(dir.path(), "./top.txt"),
            vec![dir.path().join("top.txt")]
        );
        assert!(matching(dir.path(), "missing").is_empty());
        assert_eq!(matching(dir.path(), "."), vec![dir.path().to_owned()]);
    }
}
