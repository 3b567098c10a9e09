//! Template builds as background jobs: started by the API, run one at a time by
//! [`template::build::Builder`], their status in the [`Store`] and their log in a file per build.
//!
//! Invariants: a job always ends its build as `ready` or `error` (a panic or cancellation
//! included, through [`JobGuard`]); the log file of a build only grows, so a log offset stays
//! valid for the SDK's polling.

use crate::store::{BuildRecord, Store};
use serde::{Deserialize, Serialize};
use std::{
    io::{BufRead, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};
use template::build::{BuildJob, BuildLog, Builder, LogLevel};
use time::OffsetDateTime;
use tokio::sync::Semaphore;

/// Builds at once: each unpacks, copies and snapshots whole root filesystems.
const CONCURRENT_BUILDS: usize = 1;

/// One line of a build log.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogEntry {
    #[serde(with = "time::serde::rfc3339")]
    pub timestamp: OffsetDateTime,
    pub level: LogLevel,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

/// Starts build jobs and reads their logs.
#[derive(Clone)]
pub struct Builds {
    store: Store,
    builder: Arc<Builder>,
    logs: PathBuf,
    slots: Arc<Semaphore>,
}

impl Builds {
    pub fn new(store: Store, builder: Arc<Builder>, logs: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&logs)?;
        Ok(Builds {
            store,
            builder,
            logs,
            slots: Arc::new(Semaphore::new(CONCURRENT_BUILDS)),
        })
    }

    pub fn builder(&self) -> &Builder {
        &self.builder
    }

    fn log_path(&self, build_id: &str) -> PathBuf {
        self.logs.join(format!("{build_id}.jsonl"))
    }

    /// Runs `job` in the background; the build must already be marked `building`.
    pub fn spawn(&self, job: BuildJob, tags: Vec<String>) {
        let this = self.clone();
        tokio::spawn(async move {
            let guard = JobGuard {
                store: this.store.clone(),
                build_id: Some(job.build_id.clone()),
            };
            let log = FileLog::open(&this.log_path(&job.build_id));
            let _slot = this.slots.acquire().await;
            log.entry(
                LogLevel::Info,
                None,
                &format!(
                    "building template {} (build {})",
                    job.template_id, job.build_id
                ),
            );
            let result = this.builder.build(&job, &log).await;
            let finished = match &result {
                Ok(_) => {
                    let mut tags = tags;
                    tags.push("default".into());
                    if let Err(error) = this
                        .store
                        .assign_tags(&job.template_id, &job.build_id, &tags)
                        .await
                    {
                        tracing::error!(%error, build = %job.build_id, "tagging a build");
                    }
                    this.store.finish_build(&job.build_id, None).await
                }
                Err(error) => {
                    log.entry(LogLevel::Error, error.step.as_deref(), &error.message);
                    this.store
                        .finish_build(&job.build_id, Some((&error.message, error.step.as_deref())))
                        .await
                }
            };
            match finished {
                Ok(()) => guard.disarm(),
                Err(error) => {
                    tracing::error!(%error, build = %job.build_id, "recording a build's end")
                }
            }
            match result {
                Ok(template) => {
                    tracing::info!(template = %template.id, build = %template.build_id, "template built")
                }
                Err(error) => {
                    tracing::warn!(build = %job.build_id, %error, "template build failed")
                }
            }
        });
    }

    /// Entries of a build's log from `offset`, at most `limit`, at `level` or above.
    pub fn entries(
        &self,
        build: &BuildRecord,
        offset: usize,
        limit: usize,
        level: Option<LogLevel>,
    ) -> Vec<LogEntry> {
        let Ok(file) = std::fs::File::open(self.log_path(&build.id)) else {
            return Vec::new();
        };
        std::io::BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| serde_json::from_str::<LogEntry>(&line).ok())
            .filter(|entry| level.is_none_or(|level| rank(entry.level) >= rank(level)))
            .skip(offset)
            .take(limit)
            .collect()
    }
}

fn rank(level: LogLevel) -> u8 {
    match level {
        LogLevel::Debug => 0,
        LogLevel::Info => 1,
        LogLevel::Warn => 2,
        LogLevel::Error => 3,
    }
}

/// Fails the build if its job ends without recording an outcome (a panic, a shutdown).
struct JobGuard {
    store: Store,
    build_id: Option<String>,
}

impl JobGuard {
    fn disarm(mut self) {
        self.build_id = None;
    }
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        if let Some(build_id) = self.build_id.take() {
            let store = self.store.clone();
            tokio::spawn(async move {
                let _ = store
                    .finish_build(&build_id, Some(("the build stopped unexpectedly", None)))
                    .await;
            });
        }
    }
}

/// A build log appended to a JSON-lines file (and mirrored to tracing at debug level).
struct FileLog {
    file: Mutex<Option<std::fs::File>>,
}

impl FileLog {
    fn open(path: &Path) -> FileLog {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|error| tracing::error!(%error, path = %path.display(), "opening a build log"))
            .ok();
        FileLog {
            file: Mutex::new(file),
        }
    }
}

impl BuildLog for FileLog {
    fn entry(&self, level: LogLevel, step: Option<&str>, message: &str) {
        tracing::debug!(step, "{message}");
        let entry = LogEntry {
            timestamp: OffsetDateTime::now_utc(),
            level,
            message: message.to_owned(),
            step: step.map(str::to_owned),
        };
        let Ok(mut line) = serde_json::to_vec(&entry) else {
            return;
        };
        line.push(b'\n');
        if let Some(file) = self.file.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            let _ = file.write_all(&line);
        }
    }
}
