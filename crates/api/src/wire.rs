//! E2B's REST types, field for field (`spec/openapi.yml`); conversions from domain types are here
//! and nowhere else.

use crate::store::{BuildRecord, TemplateRecord};
use orchestrator::{PausedSandbox, Sandbox};
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
    /// `false` asks for filesystem-only pauses; Kiln always keeps memory too (a superset).
    pub auto_pause_memory: Option<bool>,
    pub auto_resume: Option<AutoResume>,
    #[serde(rename = "allow_internet_access")]
    pub allow_internet_access: Option<bool>,
}

/// `{"enabled": bool}`.
#[derive(Deserialize, Debug, Default)]
pub struct AutoResume {
    #[serde(default)]
    pub enabled: bool,
}

impl NewSandbox {
    pub fn lifecycle(&self) -> orchestrator::Lifecycle {
        orchestrator::Lifecycle {
            auto_pause: self.auto_pause.unwrap_or(false),
            auto_resume: self.auto_resume.as_ref().is_some_and(|a| a.enabled),
        }
    }
}

/// `SandboxDetail.lifecycle`: the SDK needs both fields when the object is present.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleInfo {
    pub on_timeout: &'static str,
    pub auto_resume: bool,
}

impl From<orchestrator::Lifecycle> for LifecycleInfo {
    fn from(lifecycle: orchestrator::Lifecycle) -> Self {
        LifecycleInfo {
            on_timeout: if lifecycle.auto_pause {
                "pause"
            } else {
                "kill"
            },
            auto_resume: lifecycle.auto_resume,
        }
    }
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<LifecycleInfo>,
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
            lifecycle: None,
        }
    }

    pub fn detail(sandbox: &Sandbox) -> Self {
        SandboxInfo {
            envd_access_token: sandbox.access_token.clone(),
            allow_internet_access: Some(sandbox.allow_internet_access.unwrap_or(true)),
            lifecycle: Some(sandbox.lifecycle.into()),
            ..Self::listed(sandbox)
        }
    }

    /// A paused sandbox: it ended when it was paused.
    pub fn paused(sandbox: &PausedSandbox) -> Self {
        SandboxInfo {
            template_id: sandbox.template_id.clone(),
            alias: sandbox.alias.clone(),
            sandbox_id: sandbox.id.clone(),
            client_id: "paused".into(),
            started_at: sandbox.started_at,
            end_at: sandbox.paused_at,
            cpu_count: sandbox.cpu_count,
            memory_mb: sandbox.memory_mb,
            disk_size_mb: sandbox.disk_mb,
            metadata: sandbox.metadata.clone(),
            state: "paused",
            envd_version: sandbox.envd_version.clone(),
            volume_mounts: Vec::new(),
            envd_access_token: None,
            allow_internet_access: None,
            lifecycle: None,
        }
    }

    pub fn paused_detail(sandbox: &PausedSandbox) -> Self {
        SandboxInfo {
            allow_internet_access: Some(sandbox.allow_internet_access.unwrap_or(true)),
            lifecycle: Some(sandbox.lifecycle.into()),
            ..Self::paused(sandbox)
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
    pub last_spawned_at: Option<String>,
    pub envd_version: String,
    pub build_status: &'static str,
    pub spawn_count: u64,
    pub build_count: u64,
}

impl TemplateInfo {
    /// A template with a finished build; `status` is its newest build's.
    pub fn built(t: &template::Template, status: &'static str, build_count: u64) -> Self {
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
            last_spawned_at: None,
            envd_version: t.envd_version.clone(),
            build_status: status,
            spawn_count: 0,
            build_count,
        }
    }

    /// A template whose first build has not finished.
    pub fn pending(record: &TemplateRecord, build: &BuildRecord) -> Self {
        TemplateInfo {
            template_id: record.id.clone(),
            build_id: build.id.clone(),
            cpu_count: record.cpu_count,
            memory_mb: record.memory_mb,
            disk_size_mb: 1024,
            public: record.public,
            aliases: vec![record.name.clone()],
            names: vec![record.name.clone()],
            created_at: record.created_at,
            updated_at: record.updated_at,
            created_by: None,
            last_spawned_at: None,
            envd_version: envd_proto::host::ENVD_VERSION.to_owned(),
            build_status: build.status.as_str(),
            spawn_count: 0,
            build_count: 1,
        }
    }
}

/// `TemplateBuildRequestV3` (POST /v3/templates).
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct TemplateBuildRequestV3 {
    pub name: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub alias: Option<String>,
    pub cpu_count: Option<i64>,
    #[serde(rename = "memoryMB")]
    pub memory_mb: Option<i64>,
}

/// `TemplateRequestResponseV3` (202).
#[derive(Serialize, Debug)]
pub struct TemplateRequested {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "buildID")]
    pub build_id: String,
    pub public: bool,
    pub names: Vec<String>,
    pub tags: Vec<String>,
    pub aliases: Vec<String>,
}

/// `TemplateBuildRequest` (v1: POST /templates with a Dockerfile).
#[derive(Deserialize, Serialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct TemplateBuildRequestV1 {
    pub dockerfile: String,
    pub alias: Option<String>,
    pub start_cmd: Option<String>,
    pub ready_cmd: Option<String>,
    pub cpu_count: Option<i64>,
    #[serde(rename = "memoryMB")]
    pub memory_mb: Option<i64>,
}

/// `TemplateBuildFileUpload` (201).
#[derive(Serialize, Debug)]
pub struct FileUpload {
    pub present: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// `BuildLogEntry`.
#[derive(Serialize, Debug)]
pub struct BuildLogEntry {
    #[serde(with = "time::serde::rfc3339")]
    pub timestamp: OffsetDateTime,
    pub message: String,
    pub level: template::build::LogLevel,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

impl From<crate::builds::LogEntry> for BuildLogEntry {
    fn from(entry: crate::builds::LogEntry) -> Self {
        BuildLogEntry {
            timestamp: entry.timestamp,
            message: entry.message,
            level: entry.level,
            step: entry.step,
        }
    }
}

/// `BuildStatusReason`.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct BuildStatusReason {
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    pub log_entries: Vec<BuildLogEntry>,
}

/// `TemplateBuildInfo` (GET …/builds/{buildID}/status).
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct TemplateBuildInfo {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "buildID")]
    pub build_id: String,
    pub status: &'static str,
    pub logs: Vec<String>,
    pub log_entries: Vec<BuildLogEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<BuildStatusReason>,
}

/// `TemplateBuild` (in `TemplateWithBuilds`).
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct TemplateBuild {
    #[serde(rename = "buildID")]
    pub build_id: String,
    pub status: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub finished_at: Option<OffsetDateTime>,
    pub cpu_count: u32,
    #[serde(rename = "memoryMB")]
    pub memory_mb: u64,
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u64,
    pub envd_version: String,
}

impl From<&BuildRecord> for TemplateBuild {
    fn from(build: &BuildRecord) -> Self {
        TemplateBuild {
            build_id: build.id.clone(),
            status: build.status.as_str(),
            created_at: build.created_at,
            updated_at: build.updated_at,
            finished_at: build.finished_at,
            cpu_count: build.cpu_count,
            memory_mb: build.memory_mb,
            disk_size_mb: 1024,
            envd_version: envd_proto::host::ENVD_VERSION.to_owned(),
        }
    }
}

/// `TemplateWithBuilds` (GET /templates/{id}).
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct TemplateWithBuilds {
    #[serde(flatten)]
    pub template: TemplateInfo,
    pub builds: Vec<TemplateBuild>,
}

/// `TemplateTag`.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct TemplateTag {
    pub tag: String,
    #[serde(rename = "buildID")]
    pub build_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// `AssignTemplateTagsRequest`.
#[derive(Deserialize, Debug)]
pub struct AssignTags {
    pub target: String,
    pub tags: Vec<String>,
}

/// `AssignedTemplateTags` (201).
#[derive(Serialize, Debug)]
pub struct AssignedTags {
    pub tags: Vec<String>,
    #[serde(rename = "buildID")]
    pub build_id: String,
}

/// `DeleteTemplateTagsRequest`.
#[derive(Deserialize, Debug)]
pub struct DeleteTags {
    pub name: String,
    pub tags: Vec<String>,
}
