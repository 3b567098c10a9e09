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

    let orchestrator = Arc::new(orchestrator(&config)?);
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
    let api = api::router(api::AppState {
        store,
        orchestrator: orchestrator.clone(),
        templates,
        builds,
        upload_key: Arc::from(upload_key.as_slice()),
    });
    let proxy = proxy::router(orchestrator.clone());

    let reaper = {
        let orchestrator = orchestrator.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                orchestrator.kill_expired().await;
            }
        })
    };
    let registry_prune = config.registry_prune.take().map(|prune| prune.spawn());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
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
    reaper.abort();
    if let Some(prune) = registry_prune {
        prune.abort();
    }
    orchestrator.kill_all().await;
    for server in [api_server, proxy_server] {
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    }
    tracing::info!("stopped");
    Ok(())
}

fn orchestrator(config: &UpConfig) -> anyhow::Result<Orchestrator> {
    let home = &config.args.home;
    let runsc = Runsc {
        binary: config.runsc.clone(),
        root: home.join("runsc"),
        log_dir: home.join("logs"),
    };
    let runtime = GvisorRuntime::new(runsc).context("preparing the gVisor runtime")?;
    Ok(Orchestrator::new(Arc::new(runtime), home.join("sandboxes")))
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
