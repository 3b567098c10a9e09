//! E2B's REST types, field for field (`spec/openapi.yml`); conversions from domain types are here
//! and nowhere else.

use orchestrator::Sandbox;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// `NewSandbox` (POST /sandboxes, /v2/sandboxes).
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct NewSandbox {
    #[serde(rename = "templateID")]
    pub template_id: String,
    pub timeout: Option<i64>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub env_vars: BTreeMap<String, String>,
    pub secure: Option<bool>,
    pub auto_pause: Option<bool>,
    #[serde(rename = "allow_internet_access")]
    pub allow_internet_access: Option<bool>,
}

/// `Sandbox` (create and connect responses).
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct SandboxCreated {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "clientID")]
    pub client_id: String,
    pub envd_version: String,
    pub alias: Option<String>,
    pub envd_access_token: Option<String>,
    pub traffic_access_token: Option<String>,
    pub domain: Option<String>,
}

impl From<&Sandbox> for SandboxCreated {
    fn from(sandbox: &Sandbox) -> Self {
        SandboxCreated {
            template_id: sandbox.template_id.clone(),
            sandbox_id: sandbox.id.clone(),
            client_id: sandbox.client_id.clone(),
            envd_version: sandbox.envd_version.clone(),
            alias: sandbox.alias.clone(),
            envd_access_token: sandbox.access_token.clone(),
            traffic_access_token: None,
            domain: None,
        }
    }
}

/// `ListedSandbox` and, with `envdAccessToken`/`allowInternetAccess`, `SandboxDetail`.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct SandboxInfo {
    #[serde(rename = "templateID")]
    pub template_id: String,
    pub alias: Option<String>,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "clientID")]
    pub client_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub end_at: OffsetDateTime,
    pub cpu_count: u32,
    #[serde(rename = "memoryMB")]
    pub memory_mb: u64,
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u64,
    pub metadata: BTreeMap<String, String>,
    pub state: &'static str,
    pub envd_version: String,
    pub volume_mounts: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envd_access_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_internet_access: Option<bool>,
}

impl SandboxInfo {
    pub fn listed(sandbox: &Sandbox) -> Self {
        SandboxInfo {
            template_id: sandbox.template_id.clone(),
            alias: sandbox.alias.clone(),
            sandbox_id: sandbox.id.clone(),
            client_id: sandbox.client_id.clone(),
            started_at: sandbox.started_at,
            end_at: sandbox.end_at(),
            cpu_count: sandbox.cpu_count,
            memory_mb: sandbox.memory_mb,
            disk_size_mb: sandbox.disk_mb,
            metadata: sandbox.metadata.clone(),
            state: "running",
            envd_version: sandbox.envd_version.clone(),
            volume_mounts: Vec::new(),
            envd_access_token: None,
            allow_internet_access: None,
        }
    }

    pub fn detail(sandbox: &Sandbox) -> Self {
        SandboxInfo {
            envd_access_token: sandbox.access_token.clone(),
            allow_internet_access: Some(sandbox.allow_internet_access.unwrap_or(true)),
            ..Self::listed(sandbox)
        }
    }
}

/// `{"timeout": <seconds>}` (timeout, connect) and `{"duration": <seconds>}` (refreshes).
#[derive(Deserialize, Debug, Default)]
pub struct TimeoutBody {
    pub timeout: Option<i64>,
    pub duration: Option<i64>,
}

/// Kiln's `POST /sandboxes/{id}/exec`.
#[derive(Deserialize, Debug)]
pub struct ExecBody {
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub envs: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub user: Option<String>,
    /// Seconds; 60 when absent.
    pub timeout: Option<i64>,
}

/// `Template` in template lists.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct TemplateInfo {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "buildID")]
    pub build_id: String,
    pub cpu_count: u32,
    #[serde(rename = "memoryMB")]
    pub memory_mb: u64,
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u64,
    pub public: bool,
    pub aliases: Vec<String>,
    pub names: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    pub created_by: Option<String>,
    pub envd_version: String,
    pub build_status: &'static str,
    pub spawn_count: u64,
    pub build_count: u64,
}

impl From<&template::Template> for TemplateInfo {
    fn from(t: &template::Template) -> Self {
        TemplateInfo {
            template_id: t.id.clone(),
            build_id: t.build_id.clone(),
            cpu_count: t.cpu_count,
            memory_mb: t.memory_mb,
            disk_size_mb: t.disk_size_mb,
            public: t.public,
            aliases: t.aliases.clone(),
            names: t.aliases.clone(),
            created_at: t.created_at,
            updated_at: t.created_at,
            created_by: None,
            envd_version: t.envd_version.clone(),
            build_status: "ready",
            spawn_count: 0,
            build_count: 1,
        }
    }
}
