//! `kiln up`: one process serving the REST API, the sandbox proxy and the orchestrator.

use crate::config::{UpArgs, UpConfig};
use anyhow::Context;
use orchestrator::{
    Orchestrator,
    runtime::gvisor::{GvisorRuntime, Runsc},
};
use std::{
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::Path,
    sync::Arc,
    time::Duration,
};
use template::TemplateStore;
use tokio::{net::TcpListener, signal::unix::SignalKind};

/// File with the default team's API key, readable by root only.
const API_KEY_FILE: &str = "secrets/api-key";
/// Keys the sandboxes' envd access tokens; stable across restarts so paused sandboxes keep theirs.
const TOKEN_SEED_FILE: &str = "secrets/sandbox-token-seed";

pub(crate) async fn run(args: UpArgs) -> anyhow::Result<()> {
    let mut config = args.validate()?;
    let home = config.args.home.clone();
    std::fs::create_dir_all(home.join("secrets"))
        .with_context(|| format!("creating {}", home.display()))?;
    std::fs::set_permissions(home.join("secrets"), std::fs::Permissions::from_mode(0o700))
        .context("securing secrets/")?;
    let env_file = home.join("env");
    let _ = std::fs::remove_file(&env_file);

    let store = api::store::Store::open(&home.join("kiln.db"))
        .await
        .context("opening the metadata database")?;
    if let Some(credentials) = store
        .ensure_default_team(config.args.max_sandboxes)
        .await
        .context("creating the default team")?
    {
        write_secret(&home.join(API_KEY_FILE), &credentials.api_key)?;
        write_secret(
            &home.join("secrets/access-token"),
            &credentials.access_token,
        )?;
        tracing::info!("created the default team and its API key");
    }
    let api_key = std::fs::read_to_string(home.join(API_KEY_FILE))
        .context("reading the API key")?
        .trim()
        .to_owned();

    let storage = storage::Storage::from_config(&config.storage)
        .context("opening the template and snapshot storage")?;
    tracing::info!(storage = %storage.describe(), "storage ready");
    let token_seed = token_seed(&home.join(TOKEN_SEED_FILE))?;
    let orchestrator = Arc::new(orchestrator(&config, &token_seed)?);
    let removed = orchestrator
        .reconcile()
        .await
        .context("cleaning up after the previous run")?;
    if removed > 0 {
        tracing::warn!(removed, "removed sandboxes left over from a previous run");
    }
    orchestrator::runtime::network::remove_leftovers().await;
    template::build::remove_leftovers(&home.join("cache/build"));
    let templates =
        TemplateStore::open(&home.join("templates")).context("opening the template store")?;
    ensure_base(&templates, &orchestrator, &config).await?;
    let interrupted = store
        .fail_interrupted_builds()
        .await
        .context("failing builds interrupted by the previous run")?;
    if interrupted > 0 {
        tracing::warn!(
            interrupted,
            "failed template builds interrupted by the previous run"
        );
    }
    let builder = Arc::new(template::build::Builder {
        store: templates.clone(),
        runtime: orchestrator.runtime().clone(),
        images: config.images.clone(),
        envd: config.envd.clone(),
        files: home.join("cache/files"),
        work: home.join("cache/build"),
        storage: storage.clone(),
    });
    let builds = api::builds::Builds::new(store.clone(), builder, home.join("logs/builds"))
        .context("preparing template builds")?;
    let mut upload_key = [0u8; 32];
    rand::fill(&mut upload_key);

    let api_listener = TcpListener::bind(config.args.api_addr)
        .await
        .with_context(|| format!("binding the API on {}", config.args.api_addr))?;
    let proxy_listener = TcpListener::bind(config.args.proxy_addr)
        .await
        .with_context(|| format!("binding the proxy on {}", config.args.proxy_addr))?;
    let lifecycle = api::lifecycle::Lifecycle::new(
        store.clone(),
        orchestrator.clone(),
        templates.clone(),
        storage.clone(),
        &home.join("cache"),
    );
    // Archives of a publish a stop interrupted are of no use (their session never committed).
    let publish_scratch = home.join("cache/build/publish");
    let _ = std::fs::remove_dir_all(&publish_scratch);
    let publishing = tokio::spawn(publish_missing(
        templates.clone(),
        storage.clone(),
        publish_scratch,
    ));
    let api = api::router(api::AppState {
        store,
        orchestrator: orchestrator.clone(),
        templates,
        builds,
        lifecycle: lifecycle.clone(),
        upload_key: Arc::from(upload_key.as_slice()),
    });
    let proxy = proxy::router(
        orchestrator.clone(),
        Arc::new(ProxyResume(lifecycle.clone())),
    );

    let registry_prune = config.registry_prune.take().map(|prune| prune.spawn());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    // Expiry: stops between rounds at shutdown, never in the middle of a pause or kill.
    let reaper = {
        let lifecycle = lifecycle.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => lifecycle.expire().await,
                    _ = stop.changed() => break,
                }
            }
        })
    };
    let api_server = tokio::spawn(
        axum::serve(api_listener, api)
            .with_graceful_shutdown(stopped(stop_rx.clone()))
            .into_future(),
    );
    let proxy_server = tokio::spawn(
        axum::serve(proxy_listener, proxy)
            .with_graceful_shutdown(stopped(stop_rx))
            .into_future(),
    );

    let exports = format!(
        "export E2B_API_KEY={api_key}\nexport E2B_API_URL=http://{}\nexport E2B_SANDBOX_URL=http://{}\n",
        config.args.api_addr, config.args.proxy_addr
    );
    write_secret(&env_file, &exports)?;
    println!(
        "Kiln is up. Point the E2B SDKs at it with:\n\n{exports}\n(also in {})",
        env_file.display()
    );

    wait_for_shutdown_signal().await?;
    tracing::info!("shutting down: killing sandboxes");
    let _ = std::fs::remove_file(&env_file);
    let _ = stop_tx.send(true);
    let _ = reaper.await;
    if let Some(prune) = registry_prune {
        prune.abort();
    }
    publishing.abort();
    orchestrator.kill_all().await;
    for server in [api_server, proxy_server] {
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// The proxy's way to resume paused sandboxes.
struct ProxyResume(api::lifecycle::Lifecycle);

#[async_trait::async_trait]
impl proxy::AutoResume for ProxyResume {
    async fn resume(&self, sandbox_id: &str) -> Option<Result<Arc<orchestrator::Sandbox>, String>> {
        self.0
            .auto_resume(sandbox_id)
            .await
            .map(|result| result.map_err(|error| error.message))
    }
}

/// Stores every local template build that storage does not have yet (the base template, and
/// builds from before storage was configured), so other nodes and resumes can fetch them.
async fn publish_missing(
    templates: TemplateStore,
    storage: storage::Storage,
    scratch: std::path::PathBuf,
) {
    let Ok(list) = templates.list() else { return };
    for template in list {
        match template::publish::is_published(&storage, &template).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(template = %template.id, %error, "checking whether a template is stored");
                continue;
            }
        }
        let dir = templates.dir().join(&template.id);
        match template::publish::publish(&storage, &dir, &template, &scratch).await {
            Ok(()) => {
                tracing::info!(template = %template.id, build = %template.build_id, "template build stored")
            }
            Err(error) => {
                tracing::warn!(template = %template.id, %error, "storing a template build")
            }
        }
    }
}

/// The token seed in `path` (0600), made on first start.
fn token_seed(path: &Path) -> anyhow::Result<Vec<u8>> {
    if let Ok(seed) = std::fs::read(path)
        && seed.len() >= 32
    {
        return Ok(seed);
    }
    let mut seed = [0u8; 32];
    rand::fill(&mut seed);
    let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    write_secret(path, &hex)?;
    Ok(hex.into_bytes())
}

fn orchestrator(config: &UpConfig, token_seed: &[u8]) -> anyhow::Result<Orchestrator> {
    let home = &config.args.home;
    let runsc = Runsc {
        binary: config.runsc.clone(),
        root: home.join("runsc"),
        log_dir: home.join("logs"),
    };
    let runtime = GvisorRuntime::new(runsc).context("preparing the gVisor runtime")?;
    Ok(Orchestrator::new(
        Arc::new(runtime),
        home.join("sandboxes"),
        token_seed,
    ))
}

async fn ensure_base(
    templates: &TemplateStore,
    orchestrator: &Orchestrator,
    config: &UpConfig,
) -> anyhow::Result<()> {
    let progress = |line: &str| tracing::info!(target: "kiln::template", "{line}");
    let options = template::base::BaseBuild {
        envd: &config.envd,
        mirror: config.args.debian_mirror.clone(),
        progress: &progress,
    };
    template::base::ensure(templates, orchestrator.runtime().as_ref(), options)
        .await
        .context("preparing the base template")?;
    Ok(())
}

/// Writes a file readable by root only (mode 0600 from creation, never wider).
fn write_secret(path: &Path, contents: &str) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

async fn wait_for_shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())
        .context("installing SIGTERM handler")?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())
        .context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
