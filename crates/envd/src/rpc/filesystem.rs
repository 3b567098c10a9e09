//! `filesystem.Filesystem`: stat, list, make, move, remove and watch, as the run-as user sees
//! paths (relative ones are in their home).

use super::{Call, StreamSink, server_stream, unary};
use crate::{
    fs::{
        entry::EntryReader,
        io_error,
        watch::{self, WatchOptions},
    },
    paths,
    state::Envd,
    users::User,
};
use axum::Router;
use connect::{Code, Error};
use envd_proto::filesystem::{
    CreateWatcherRequest, CreateWatcherResponse, EntryInfo, GetWatcherEventsRequest,
    GetWatcherEventsResponse, ListDirRequest, ListDirResponse, MakeDirRequest, MakeDirResponse,
    MoveRequest, MoveResponse, RemoveRequest, RemoveResponse, RemoveWatcherRequest,
    RemoveWatcherResponse, StatRequest, StatResponse, WatchDirRequest, WatchDirResponse,
    paths as rpc, watch_dir_response,
};
use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
};
use tokio::{sync::mpsc, task::spawn_blocking, time::Instant};

pub(crate) fn routes() -> Router<Arc<Envd>> {
    Router::new()
        .route(rpc::STAT, unary(stat))
        .route(rpc::MAKE_DIR, unary(make_dir))
        .route(rpc::MOVE, unary(move_entry))
        .route(rpc::LIST_DIR, unary(list_dir))
        .route(rpc::REMOVE, unary(remove))
        .route(rpc::WATCH_DIR, server_stream(watch_dir))
        .route(rpc::CREATE_WATCHER, unary(create_watcher))
        .route(rpc::GET_WATCHER_EVENTS, unary(get_watcher_events))
        .route(rpc::REMOVE_WATCHER, unary(remove_watcher))
}

/// Resolves a client path for the call's user.
fn resolve(envd: &Envd, call: &Call, path: &str) -> Result<(User, PathBuf), Error> {
    let user = call.user(envd)?;
    let resolved = paths::resolve(path, &user.home);
    Ok((user, resolved))
}

/// Runs blocking filesystem work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    spawn_blocking(work)
        .await
        .map_err(|e| Error::internal(format!("filesystem task failed: {e}")))?
}

async fn stat(envd: Arc<Envd>, call: Call, request: StatRequest) -> Result<StatResponse, Error> {
    let (_, path) = resolve(&envd, &call, &request.path)?;
    blocking(move || {
        let entry = EntryReader::default()
            .read(&path)
            .map_err(|e| io_error(&e, &path))?;
        Ok(StatResponse { entry: Some(entry) })
    })
    .await
}

async fn make_dir(
    envd: Arc<Envd>,
    call: Call,
    request: MakeDirRequest,
) -> Result<MakeDirResponse, Error> {
    let (user, path) = resolve(&envd, &call, &request.path)?;
    blocking(move || {
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {
                return Err(Error::new(
                    Code::AlreadyExists,
                    format!("directory '{}' already exists", path.display()),
                ));
            }
            Ok(_) => {
                return Err(Error::invalid_argument(format!(
                    "path '{}' exists and is not a directory",
                    path.display()
                )));
            }
            Err(_) => {}
        }
        create_dirs_owned(&path, &user).map_err(|e| io_error(&e, &path))?;
        let entry = EntryReader::default()
            .read(&path)
            .map_err(|e| io_error(&e, &path))?;
        Ok(MakeDirResponse { entry: Some(entry) })
    })
    .await
}

/// `mkdir -p` that gives every directory it creates to `user`.
pub(crate) fn create_dirs_owned(path: &Path, user: &User) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut current = path;
    while !current.exists() {
        missing.push(current.to_owned());
        match current.parent() {
            Some(parent) => current = parent,
            None => break,
        }
    }
    std::fs::create_dir_all(path)?;
    for dir in missing {
        user.take_ownership(&dir);
    }
    Ok(())
}

async fn move_entry(
    envd: Arc<Envd>,
    call: Call,
    request: MoveRequest,
) -> Result<MoveResponse, Error> {
    let (user, source) = resolve(&envd, &call, &request.source)?;
    let destination = paths::resolve(&request.destination, &user.home);
    blocking(move || {
        std::fs::symlink_metadata(&source).map_err(|e| io_error(&e, &source))?;
        if let Some(parent) = destination.parent() {
            create_dirs_owned(parent, &user).map_err(|e| io_error(&e, parent))?;
        }
        std::fs::rename(&source, &destination).map_err(|e| io_error(&e, &destination))?;
        let entry = EntryReader::default()
            .read(&destination)
            .map_err(|e| io_error(&e, &destination))?;
        Ok(MoveResponse { entry: Some(entry) })
    })
    .await
}

async fn list_dir(
    envd: Arc<Envd>,
    call: Call,
    request: ListDirRequest,
) -> Result<ListDirResponse, Error> {
    let (_, path) = resolve(&envd, &call, &request.path)?;
    let depth = request.depth.max(1);
    blocking(move || {
        let metadata = std::fs::metadata(&path).map_err(|e| io_error(&e, &path))?;
        if !metadata.is_dir() {
            return Err(Error::invalid_argument(format!(
                "path '{}' is not a directory",
                path.display()
            )));
        }
        let mut entries = Vec::new();
        list_into(&mut EntryReader::default(), &path, depth, &mut entries)
            .map_err(|e| io_error(&e, &path))?;
        Ok(ListDirResponse { entries })
    })
    .await
}

/// Appends the entries under `dir`, descending `depth - 1` more levels (never through symlinks).
fn list_into(
    reader: &mut EntryReader,
    dir: &Path,
    depth: u32,
    out: &mut Vec<EntryInfo>,
) -> io::Result<()> {
    let mut children: Vec<_> = std::fs::read_dir(dir)?.filter_map(Result::ok).collect();
    children.sort_by_key(|child| child.file_name());
    for child in children {
        let path = child.path();
        let Ok(metadata) = child.metadata() else {
            continue;
        };
        out.push(reader.describe(&path, &metadata));
        if depth > 1 && metadata.is_dir() {
            // An unreadable subdirectory is listed but not descended into.
            let _ = list_into(reader, &path, depth - 1, out);
        }
    }
    Ok(())
}

async fn remove(
    envd: Arc<Envd>,
    call: Call,
    request: RemoveRequest,
) -> Result<RemoveResponse, Error> {
    let (_, path) = resolve(&envd, &call, &request.path)?;
    blocking(move || {
        let result = match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&path),
            Ok(_) => std::fs::remove_file(&path),
            // Like Go's os.RemoveAll: removing what is not there succeeds.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        result.map_err(|e| io_error(&e, &path))?;
        Ok(RemoveResponse {})
    })
    .await
}

async fn watch_dir(
    envd: Arc<Envd>,
    call: Call,
    request: WatchDirRequest,
    sink: StreamSink<WatchDirResponse>,
) -> Result<(), Error> {
    let (_, path) = resolve(&envd, &call, &request.path)?;
    let options = WatchOptions {
        recursive: request.recursive,
        include_entry: request.include_entry,
        allow_network_mounts: request.allow_network_mounts,
    };
    let (tx, mut events) = mpsc::unbounded_channel();
    let _watcher = watch::watch(&path, options, move |event| {
        let _ = tx.send(event);
    })?;
    let send = |event| WatchDirResponse { event: Some(event) };
    if sink
        .send(&send(watch_dir_response::Event::Start(
            watch_dir_response::StartEvent {},
        )))
        .await
        .is_err()
    {
        return Ok(());
    }
    let keepalive = call.keepalive();
    let mut next_keepalive = Instant::now() + keepalive;
    loop {
        let event = tokio::select! {
            event = events.recv() => match event {
                Some(event) => watch_dir_response::Event::Filesystem(event),
                None => return Ok(()),
            },
            () = tokio::time::sleep_until(next_keepalive) => {
                watch_dir_response::Event::Keepalive(watch_dir_response::KeepAlive {})
            }
            () = sink.disconnected() => return Ok(()),
        };
        if sink.send(&send(event)).await.is_err() {
            return Ok(());
        }
        next_keepalive = Instant::now() + keepalive;
    }
}

async fn create_watcher(
    envd: Arc<Envd>,
    call: Call,
    request: CreateWatcherRequest,
) -> Result<CreateWatcherResponse, Error> {
    let (_, path) = resolve(&envd, &call, &request.path)?;
    let options = WatchOptions {
        recursive: request.recursive,
        include_entry: request.include_entry,
        allow_network_mounts: request.allow_network_mounts,
    };
    let watcher_id = envd.watchers.create(&path, options)?;
    Ok(CreateWatcherResponse { watcher_id })
}

async fn get_watcher_events(
    envd: Arc<Envd>,
    _: Call,
    request: GetWatcherEventsRequest,
) -> Result<GetWatcherEventsResponse, Error> {
    let events = envd
        .watchers
        .drain(&request.watcher_id)
        .ok_or_else(|| Error::not_found(format!("watcher '{}' not found", request.watcher_id)))?;
    Ok(GetWatcherEventsResponse { events })
}

async fn remove_watcher(
    envd: Arc<Envd>,
    _: Call,
    request: RemoveWatcherRequest,
) -> Result<RemoveWatcherResponse, Error> {
    if envd.watchers.remove(&request.watcher_id) {
        Ok(RemoveWatcherResponse {})
    } else {
        Err(Error::not_found(format!(
            "watcher '{}' not found",
            request.watcher_id
        )))
    }
}
