//! What envd remembers between requests.

use crate::{fs::watch::Watchers, http::CpuSampler, process::ProcessTable, users::User};
use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
};
use time::OffsetDateTime;

/// The user processes run as when `/init` named none: envd's historical default.
pub(crate) const FALLBACK_USER: &str = "root";

/// Settings pushed by the host through `POST /init`.
#[derive(Debug, Default)]
pub(crate) struct Defaults {
    /// Sandbox-wide environment, applied to every process before its own envs.
    pub(crate) env_vars: BTreeMap<String, String>,
    /// Once set, every request but the documented exceptions must carry it.
    pub(crate) access_token: Option<String>,
    pub(crate) default_user: Option<String>,
    pub(crate) default_workdir: Option<PathBuf>,
    /// The `timestamp` of the last applied `/init`; older or equal ones are not re-applied.
    pub(crate) last_init: Option<OffsetDateTime>,
}

/// The agent: shared by every connection and request.
pub struct Envd {
    defaults: RwLock<Defaults>,
    pub(crate) processes: ProcessTable,
    pub(crate) watchers: Watchers,
    pub(crate) cpu: CpuSampler,
}

impl Envd {
    pub(crate) fn new() -> Arc<Envd> {
        Arc::new(Envd {
            defaults: RwLock::default(),
            processes: ProcessTable::default(),
            watchers: Watchers::default(),
            cpu: CpuSampler::default(),
        })
    }

    pub(crate) fn defaults(&self) -> RwLockReadGuard<'_, Defaults> {
        // A poisoned lock only means a writer panicked mid-update of plain data; keep serving.
        self.defaults.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn defaults_mut(&self) -> RwLockWriteGuard<'_, Defaults> {
        self.defaults.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The user a request runs as: the one it names, else `/init`'s default user, else root.
    pub(crate) fn user(&self, requested: Option<&str>) -> Result<User, crate::users::UnknownUser> {
        match requested.filter(|name| !name.is_empty()) {
            Some(name) => User::lookup(name),
            None => {
                let default = self.defaults().default_user.clone();
                User::lookup(default.as_deref().unwrap_or(FALLBACK_USER))
            }
        }
    }
}
