//! Directory watches (inotify through `notify`), for `WatchDir` streams and polled watchers.

use super::entry::EntryReader;
use envd_proto::filesystem::{EventType, FilesystemEvent};
use notify::{
    EventKind, RecommendedWatcher, RecursiveMode, Watcher,
    event::{ModifyKind, RenameMode},
};
use std::{
    collections::{HashMap, VecDeque},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

/// Events a polled watcher holds between `GetWatcherEvents` calls; older ones are dropped.
const POLLED_EVENTS_CAP: usize = 16 * 1024;

/// How a watch was asked for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WatchOptions {
    pub(crate) recursive: bool,
    pub(crate) include_entry: bool,
    pub(crate) allow_network_mounts: bool,
}

/// Why a watch could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WatchError {
    #[error("path '{0}' does not exist")]
    NotFound(PathBuf),
    #[error("path '{0}' is not a directory")]
    NotADirectory(PathBuf),
    #[error("path '{0}' is on a network mount; pass allow_network_mounts to watch it")]
    NetworkMount(PathBuf),
    #[error("cannot watch '{path}': {source}")]
    Notify {
        path: PathBuf,
        source: notify::Error,
    },
}

impl From<WatchError> for connect::Error {
    fn from(err: WatchError) -> Self {
        let code = match err {
            WatchError::NotFound(_) => connect::Code::NotFound,
            WatchError::NotADirectory(_) | WatchError::NetworkMount(_) => {
                connect::Code::InvalidArgument
            }
            WatchError::Notify { .. } => connect::Code::Internal,
        };
        connect::Error::new(code, err.to_string())
    }
}

/// Starts watching `root`; each event goes to `sink` (called on notify's thread). The watch
/// lasts as long as the returned watcher.
pub(crate) fn watch(
    root: &Path,
    options: WatchOptions,
    sink: impl Fn(FilesystemEvent) + Send + 'static,
) -> Result<RecommendedWatcher, WatchError> {
    let metadata = std::fs::metadata(root).map_err(|_| WatchError::NotFound(root.to_owned()))?;
    if !metadata.is_dir() {
        return Err(WatchError::NotADirectory(root.to_owned()));
    }
    if !options.allow_network_mounts && is_network_mount(root) {
        return Err(WatchError::NetworkMount(root.to_owned()));
    }
    let watched = root.to_owned();
    let notify_error = |source| WatchError::Notify {
        path: root.to_owned(),
        source,
    };
    let mut watcher = notify::recommended_watcher(move |result: notify::Result<notify::Event>| {
        let Ok(event) = result else { return };
        let Some(kind) = event_type(&event.kind) else {
            return;
        };
        for path in &event.paths {
            let Ok(relative) = path.strip_prefix(&watched) else {
                continue;
            };
            if relative.as_os_str().is_empty() {
                continue;
            }
            let entry = options
                .include_entry
                .then(|| EntryReader::default().read(path).ok())
                .flatten();
            sink(FilesystemEvent {
                name: relative.to_string_lossy().into_owned(),
                r#type: kind as i32,
                entry,
            });
        }
    })
    .map_err(notify_error)?;
    let mode = if options.recursive {
        RecursiveMode::Recursive
    } else {
        RecursiveMode::NonRecursive
    };
    watcher.watch(root, mode).map_err(notify_error)?;
    Ok(watcher)
}

/// fsnotify's vocabulary, which E2B's envd reports: a file moved in is a create, one moved
/// out is a rename.
fn event_type(kind: &EventKind) -> Option<EventType> {
    match kind {
        EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
            Some(EventType::Create)
        }
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => None,
        EventKind::Modify(ModifyKind::Name(_)) => Some(EventType::Rename),
        EventKind::Modify(ModifyKind::Metadata(_)) => Some(EventType::Chmod),
        EventKind::Modify(_) => Some(EventType::Write),
        EventKind::Remove(_) => Some(EventType::Remove),
        EventKind::Access(_) | EventKind::Any | EventKind::Other => None,
    }
}

fn is_network_mount(path: &Path) -> bool {
    const NETWORK_FS_MAGICS: &[i64] = &[
        0x6969,      // NFS
        0x517b,      // SMB
        0xff53_4d42, // CIFS
        0xfe53_4d42, // SMB2
        0x00c3_6400, // Ceph
        0x5346_414f, // AFS
    ];
    nix::sys::statfs::statfs(path)
        .map(|stats| NETWORK_FS_MAGICS.contains(&stats.filesystem_type().0))
        .unwrap_or(false)
}

/// Polled watchers (`CreateWatcher` / `GetWatcherEvents` / `RemoveWatcher`), by id.
#[derive(Default)]
pub(crate) struct Watchers {
    watchers: Mutex<HashMap<String, PolledWatcher>>,
}

struct PolledWatcher {
    _watcher: RecommendedWatcher,
    events: Arc<Mutex<VecDeque<FilesystemEvent>>>,
}

impl Watchers {
    pub(crate) fn create(&self, root: &Path, options: WatchOptions) -> Result<String, WatchError> {
        let events: Arc<Mutex<VecDeque<FilesystemEvent>>> = Arc::default();
        let buffer = events.clone();
        let watcher = watch(root, options, move |event| {
            let mut buffer = buffer.lock().unwrap_or_else(|e| e.into_inner());
            if buffer.len() == POLLED_EVENTS_CAP {
                buffer.pop_front();
            }
            buffer.push_back(event);
        })?;
        let id = format!("w-{:016x}", rand_u64());
        self.lock().insert(
            id.clone(),
            PolledWatcher {
                _watcher: watcher,
                events,
            },
        );
        Ok(id)
    }

    /// Events since the last call; `None` for an unknown id.
    pub(crate) fn drain(&self, id: &str) -> Option<Vec<FilesystemEvent>> {
        let watchers = self.lock();
        let watcher = watchers.get(id)?;
        let mut events = watcher.events.lock().unwrap_or_else(|e| e.into_inner());
        Some(events.drain(..).collect())
    }

    pub(crate) fn remove(&self, id: &str) -> bool {
        self.lock().remove(id).is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PolledWatcher>> {
        self.watchers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A random id from the OS's hasher seed: unique enough for watcher ids, no extra crate.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::event_type;
    use envd_proto::filesystem::EventType;
    use notify::{
        EventKind,
        event::{CreateKind, DataChange, MetadataKind, ModifyKind, RemoveKind, RenameMode},
    };

    #[test]
    fn event_kinds() {
        let table = [
            (EventKind::Create(CreateKind::File), Some(EventType::Create)),
            (
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                Some(EventType::Write),
            ),
            (
                EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
                Some(EventType::Chmod),
            ),
            (
                EventKind::Modify(ModifyKind::Name(RenameMode::From)),
                Some(EventType::Rename),
            ),
            (
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                Some(EventType::Create),
            ),
            (EventKind::Modify(ModifyKind::Name(RenameMode::Both)), None),
            (EventKind::Remove(RemoveKind::File), Some(EventType::Remove)),
        ];
        for (kind, expected) in table {
            assert_eq!(event_type(&kind), expected, "{kind:?}");
        }
    }
}

#[cfg(test)]
mod live_tests {
    use super::{WatchOptions, watch};
    use std::time::Duration;

    #[tokio::test]
    async fn stream_watch_sees_a_create() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let options = WatchOptions {
            recursive: false,
            include_entry: true,
            allow_network_mounts: false,
        };
        let _watcher = watch(dir.path(), options, move |event| {
            let _ = tx.send(event);
        })
        .unwrap();
        std::fs::write(dir.path().join("a"), "x").unwrap();
        let event = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(event.name, "a");
        assert!(event.entry.is_some());
    }
}
