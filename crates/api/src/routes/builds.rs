//! Building templates: E2B's v3 flow (`POST /v3/templates`, file uploads, `POST
//! /v2/templates/{id}/builds/{buildID}`, status polling) and the v1 Dockerfile flow.

use crate::{
    AppState,
    error::ApiError,
    extract::{ApiJson, AuthTeam},
    store::{BuildRecord, BuildStatus, TemplateRecord},
    wire::{
        BuildLogEntry, BuildStatusReason, FileUpload, TemplateBuildInfo, TemplateBuildRequestV1,
        TemplateBuildRequestV3, TemplateInfo, TemplateRequested,
    },
};
use axum::{
    Json, Router,
    body::Body,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use futures::StreamExt;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use std::io::Write;
use template::build::{BuildJob, LogLevel, dockerfile, steps::BuildRequest};
use time::OffsetDateTime;

/// Default resources of a built template, as E2B's.
const DEFAULT_CPU: i64 = 2;
const DEFAULT_MEMORY_MB: i64 = 1024;
/// How long an upload link is valid.
const UPLOAD_LINK_SECS: i64 = 3600;
/// The largest build-context archive accepted.
const MAX_UPLOAD_BYTES: u64 = 10 * 1024 * 1024 * 1024;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v3/templates", post(request_v3))
        .route("/templates", post(request_v1))
        .route("/templates/{id}", post(rebuild_v1))
        .route("/templates/{id}/files/{hash}", get(file_link))
        .route("/templates/{id}/files/{hash}/upload", put(upload))
        .route("/v2/templates/{id}/builds/{build}", post(start_v2))
        .route("/templates/{id}/builds/{build}", post(start_v1))
        .route("/templates/{id}/builds/{build}/status", get(status))
        .route("/templates/{id}/builds/{build}/logs", get(logs))
}

/// A build id: a UUID, as E2B's SDKs parse it.
fn new_build_id() -> String {
    let hex = orchestrator::random_hex(32);
    format!(
        "{}-{}-4{}-a{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

/// `name[:tag]` lower-cased and checked as E2B does (`^[a-z0-9-_]+$`, tags `^[a-z0-9-_.]+$`).
pub(crate) fn parse_name(name: &str) -> Result<(String, Option<String>), ApiError> {
    let name = name.trim().to_ascii_lowercase();
    let (alias, tag) = match name.split_once(':') {
        Some((alias, tag)) => (alias.to_owned(), Some(tag.to_owned())),
        None => (name.clone(), None),
    };
    let valid = |text: &str, extra: &[u8]| {
        !text.is_empty()
            && text.len() <= 128
            && text.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || b == b'-'
                    || b == b'_'
                    || extra.contains(&b)
            })
    };
    if !valid(&alias, &[]) {
        return Err(ApiError::bad_request(format!(
            "invalid template name '{alias}': use lower-case letters, digits, '-' and '_'"
        )));
    }
    if let Some(tag) = &tag
        && !valid(tag, b".")
    {
        return Err(ApiError::bad_request(format!("invalid tag '{tag}'")));
    }
    Ok((alias, tag))
}

fn resources(cpu: Option<i64>, memory: Option<i64>) -> Result<(u32, u64), ApiError> {
    let cpu = cpu.unwrap_or(DEFAULT_CPU);
    let memory = memory.unwrap_or(DEFAULT_MEMORY_MB);
    if !(1..=8).contains(&cpu) || (cpu != 1 && cpu % 2 != 0) {
        return Err(ApiError::bad_request(format!(
            "cpuCount must be 1 or an even number up to 8, got {cpu}"
        )));
    }
    if !(128..=8192).contains(&memory) || memory % 2 != 0 {
        return Err(ApiError::bad_request(format!(
            "memoryMB must be an even number from 128 to 8192, got {memory}"
        )));
    }
    Ok((cpu as u32, memory as u64))
}

/// The team's template `name`, created if new; another team's name is refused.
async fn claim(
    state: &AppState,
    team: &AuthTeam,
    alias: &str,
    cpu: u32,
    memory: u64,
) -> Result<String, ApiError> {
    if alias == template::base::BASE_ID {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the name 'base' is reserved",
        ));
    }
    let id = match state.store.template_by_name(alias).await? {
        Some(existing) if existing.team_id != team.0.id => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("the template name '{alias}' is taken by another team"),
            ));
        }
        Some(existing) => existing.id,
        None => orchestrator::random_id(20),
    };
    state
        .store
        .upsert_template(&id, &team.0.id, alias, cpu, memory)
        .await?;
    Ok(id)
}

/// `POST /v3/templates` → 202: a template (new or the team's existing one) and a waiting build.
async fn request_v3(
    State(state): State<AppState>,
    team: AuthTeam,
    ApiJson(body): ApiJson<TemplateBuildRequestV3>,
) -> Result<Response, ApiError> {
    let name = body
        .name
        .or(body.alias)
        .ok_or_else(|| ApiError::bad_request("'name' is required"))?;
    let (alias, tag) = parse_name(&name)?;
    let mut tags = body.tags;
    tags.extend(tag);
    for tag in &tags {
        parse_name(&format!("x:{tag}"))?;
    }
    let (cpu, memory) = resources(body.cpu_count, body.memory_mb)?;
    let template_id = claim(&state, &team, &alias, cpu, memory).await?;
    let build_id = new_build_id();
    state
        .store
        .create_build(&build_id, &template_id, cpu, memory, &tags, None)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(TemplateRequested {
            template_id,
            build_id,
            public: false,
            names: vec![alias.clone()],
            tags,
            aliases: vec![alias],
        }),
    )
        .into_response())
}

/// `POST /templates` (v1) → 202: the Dockerfile is checked now, built when the build starts.
async fn request_v1(
    State(state): State<AppState>,
    team: AuthTeam,
    ApiJson(body): ApiJson<TemplateBuildRequestV1>,
) -> Result<Response, ApiError> {
    let alias = body
        .alias
        .clone()
        .unwrap_or_else(|| orchestrator::random_id(12));
    let (alias, _) = parse_name(&alias)?;
    let (cpu, memory) = resources(body.cpu_count, body.memory_mb)?;
    let template_id = claim(&state, &team, &alias, cpu, memory).await?;
    new_v1_build(&state, &template_id, cpu, memory, &body).await
}

/// `POST /templates/{id}` (v1 rebuild) → 202: a new build of the team's template.
async fn rebuild_v1(
    State(state): State<AppState>,
    team: AuthTeam,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<TemplateBuildRequestV1>,
) -> Result<Response, ApiError> {
    let record = owned_template(&state, &team, &id).await?;
    let (cpu, memory) = resources(
        body.cpu_count.or(Some(i64::from(record.cpu_count))),
        body.memory_mb.or(i64::try_from(record.memory_mb).ok()),
    )?;
    state
        .store
        .upsert_template(&record.id, &team.0.id, &record.name, cpu, memory)
        .await?;
    new_v1_build(&state, &record.id, cpu, memory, &body).await
}

async fn new_v1_build(
    state: &AppState,
    template_id: &str,
    cpu: u32,
    memory: u64,
    body: &TemplateBuildRequestV1,
) -> Result<Response, ApiError> {
    dockerfile::parse(&body.dockerfile).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let build_id = new_build_id();
    let saved = serde_json::to_string(body).map_err(|e| ApiError::internal(e.to_string()))?;
    state
        .store
        .create_build(&build_id, template_id, cpu, memory, &[], Some(&saved))
        .await?;
    let record = owned_record(state, template_id).await?;
    let build = state
        .store
        .build(template_id, &build_id)
        .await?
        .ok_or_else(|| ApiError::internal("the new build vanished"))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(TemplateInfo::pending(&record, &build)),
    )
        .into_response())
}

async fn owned_record(state: &AppState, template_id: &str) -> Result<TemplateRecord, ApiError> {
    state
        .store
        .template(template_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("template '{template_id}' not found")))
}

/// The team's template by id or name, or 404.
pub(crate) async fn owned_template(
    state: &AppState,
    team: &AuthTeam,
    id: &str,
) -> Result<TemplateRecord, ApiError> {
    state
        .store
        .template(id)
        .await?
        .filter(|t| t.team_id == team.0.id)
        .ok_or_else(|| ApiError::not_found(format!("template '{id}' not found")))
}

async fn owned_build(
    state: &AppState,
    team: &AuthTeam,
    id: &str,
    build: &str,
) -> Result<(TemplateRecord, BuildRecord), ApiError> {
    let record = owned_template(state, team, id).await?;
    let build = state.store.build(&record.id, build).await?.ok_or_else(|| {
        ApiError::not_found(format!("build '{build}' of template '{id}' not found"))
    })?;
    Ok((record, build))
}

fn upload_signature(key: &[u8], template_id: &str, hash: &str, expires: i64) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(format!("{template_id}\n{hash}\n{expires}").as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `GET /templates/{id}/files/{hash}` → 201: `present`, or a signed link to upload the archive to.
async fn file_link(
    State(state): State<AppState>,
    team: AuthTeam,
    Path((id, hash)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let record = owned_template(&state, &team, &id).await?;
    let files = &state.builds.builder().files;
    let archive = template::build::context_archive(files, &hash)
        .ok_or_else(|| ApiError::bad_request(format!("invalid files hash '{hash}'")))?;
    let body = if archive.exists() {
        FileUpload {
            present: true,
            url: None,
        }
    } else {
        let expires = OffsetDateTime::now_utc().unix_timestamp() + UPLOAD_LINK_SECS;
        let host = headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1:3000");
        let signature = upload_signature(&state.upload_key, &record.id, &hash, expires);
        FileUpload {
            present: false,
            url: Some(format!(
                "http://{host}/templates/{}/files/{}/upload?expires={expires}&signature={signature}",
                record.id,
                hash.to_ascii_lowercase()
            )),
        }
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[derive(Deserialize)]
struct UploadQuery {
    expires: i64,
    signature: String,
}

/// `PUT` to an upload link: the build-context archive, checked (no entry may leave it) and kept
/// by its hash. Authorized by the link's signature, as the SDK sends no key with it.
async fn upload(
    State(state): State<AppState>,
    Path((id, hash)): Path<(String, String)>,
    Query(query): Query<UploadQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    let hash = hash.to_ascii_lowercase();
    let expected = upload_signature(&state.upload_key, &id, &hash, query.expires);
    let valid = !expected.is_empty()
        && subtle_equal(expected.as_bytes(), query.signature.as_bytes())
        && query.expires >= OffsetDateTime::now_utc().unix_timestamp();
    if !valid {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid or expired upload link",
        ));
    }
    let files = state.builds.builder().files.clone();
    let archive = template::build::context_archive(&files, &hash)
        .ok_or_else(|| ApiError::bad_request(format!("invalid files hash '{hash}'")))?;
    std::fs::create_dir_all(&files).map_err(|e| ApiError::internal(e.to_string()))?;
    let partial = files.join(format!("{hash}.{}.partial", orchestrator::random_id(8)));
    let result = receive(body, &partial).await;
    let checked = match result {
        Ok(()) => {
            let check_path = partial.clone();
            // A failed check (or task) must still remove the partial file below.
            tokio::task::spawn_blocking(move || template::layers::check_archive(&check_path))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))
                .and_then(|checked| {
                    checked
                        .map_err(|e| ApiError::bad_request(format!("the archive is refused: {e}")))
                })
        }
        Err(error) => Err(error),
    };
    if let Err(error) = checked {
        let _ = std::fs::remove_file(&partial);
        return Err(error);
    }
    std::fs::rename(&partial, &archive).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(StatusCode::OK.into_response())
}

async fn receive(body: Body, path: &std::path::Path) -> Result<(), ApiError> {
    let mut file = std::fs::File::create(path).map_err(|e| ApiError::internal(e.to_string()))?;
    let mut stream = body.into_data_stream();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the upload: {e}")))?;
        size += chunk.len() as u64;
        if size > MAX_UPLOAD_BYTES {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the archive is too large",
            ));
        }
        file.write_all(&chunk)
            .map_err(|e| ApiError::internal(e.to_string()))?;
    }
    Ok(())
}

fn subtle_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST /v2/templates/{id}/builds/{buildID}` → 202: the build starts in the background.
async fn start_v2(
    State(state): State<AppState>,
    team: AuthTeam,
    Path((id, build)): Path<(String, String)>,
    ApiJson(request): ApiJson<BuildRequest>,
) -> Result<Response, ApiError> {
    let (record, build) = owned_build(&state, &team, &id, &build).await?;
    start(&state, &team, record, build, request).await
}

/// `POST /templates/{id}/builds/{buildID}` (v1) → 202: builds the Dockerfile given earlier.
async fn start_v1(
    State(state): State<AppState>,
    team: AuthTeam,
    Path((id, build)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (record, build) = owned_build(&state, &team, &id, &build).await?;
    let saved: TemplateBuildRequestV1 = build
        .dockerfile
        .as_deref()
        .and_then(|text| serde_json::from_str(text).ok())
        .ok_or_else(|| {
            ApiError::bad_request("this build has no Dockerfile; use the v2 build endpoint")
        })?;
    let mut request =
        dockerfile::parse(&saved.dockerfile).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if saved.start_cmd.is_some() {
        request.start_cmd = saved.start_cmd;
    }
    request.ready_cmd = saved.ready_cmd;
    start(&state, &team, record, build, request).await
}

async fn start(
    state: &AppState,
    team: &AuthTeam,
    record: TemplateRecord,
    build: BuildRecord,
    request: BuildRequest,
) -> Result<Response, ApiError> {
    for (index, step) in request.steps.iter().enumerate() {
        step.instruction(index + 1)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    if request.from_image.is_none() == request.from_template.is_none() {
        return Err(ApiError::bad_request(
            "give exactly one of fromImage and fromTemplate",
        ));
    }
    let saved = serde_json::to_string(&request).map_err(|e| ApiError::internal(e.to_string()))?;
    if !state.store.start_build(&build.id, &saved).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("build '{}' was already started", build.id),
        ));
    }
    let job = BuildJob {
        template_id: record.id.clone(),
        build_id: build.id.clone(),
        aliases: vec![record.name.clone()],
        team_id: Some(team.0.id.clone()),
        cpu_count: build.cpu_count,
        memory_mb: build.memory_mb,
        request,
    };
    state.builds.spawn(job, build.tags.clone());
    Ok(StatusCode::ACCEPTED.into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatusQuery {
    logs_offset: Option<usize>,
    limit: Option<usize>,
    level: Option<LogLevel>,
}

/// `GET …/builds/{buildID}/status`: status, log entries from `logsOffset`, failure reason.
async fn status(
    State(state): State<AppState>,
    team: AuthTeam,
    Path((id, build)): Path<(String, String)>,
    Query(query): Query<StatusQuery>,
) -> Result<Json<TemplateBuildInfo>, ApiError> {
    let (record, build) = owned_build(&state, &team, &id, &build).await?;
    let limit = query.limit.unwrap_or(100).clamp(1, 100);
    let entries = state
        .builds
        .entries(&build, query.logs_offset.unwrap_or(0), limit, query.level);
    let logs = entries.iter().map(|e| format!("{}\n", e.message)).collect();
    let reason = match (&build.status, &build.reason) {
        (BuildStatus::Error, Some((message, step))) => Some(BuildStatusReason {
            message: message.clone(),
            step: step.clone(),
            log_entries: Vec::new(),
        }),
        _ => None,
    };
    Ok(Json(TemplateBuildInfo {
        template_id: record.id,
        build_id: build.id.clone(),
        status: build.status.as_str(),
        logs,
        log_entries: entries.into_iter().map(BuildLogEntry::from).collect(),
        reason,
    }))
}

#[derive(Deserialize)]
struct LogsQuery {
    cursor: Option<i64>,
    limit: Option<usize>,
    direction: Option<String>,
    level: Option<LogLevel>,
}

/// `GET …/builds/{buildID}/logs`: entries after `cursor` (ms), forward or backward.
async fn logs(
    State(state): State<AppState>,
    team: AuthTeam,
    Path((id, build)): Path<(String, String)>,
    Query(query): Query<LogsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (_, build) = owned_build(&state, &team, &id, &build).await?;
    let limit = query.limit.unwrap_or(100).clamp(1, 100);
    let mut entries = state.builds.entries(&build, 0, usize::MAX, query.level);
    let backward = query.direction.as_deref() == Some("backward");
    if let Some(cursor) = query.cursor {
        entries.retain(|e| {
            let at = (e.timestamp.unix_timestamp_nanos() / 1_000_000) as i64;
            if backward { at <= cursor } else { at >= cursor }
        });
    }
    if backward {
        entries.reverse();
    }
    entries.truncate(limit);
    let logs: Vec<BuildLogEntry> = entries.into_iter().map(BuildLogEntry::from).collect();
    Ok(Json(serde_json::json!({ "logs": logs })))
}

#[cfg(test)]
mod tests {
    use super::{new_build_id, parse_name, resources, upload_signature};

    #[test]
    fn names_tags_resources_and_ids() {
        assert_eq!(
            parse_name("My-App:V1.2").unwrap(),
            ("my-app".into(), Some("v1.2".into()))
        );
        assert!(
            parse_name("bad name").is_err()
                && parse_name("a/b").is_err()
                && parse_name("x:b/c").is_err()
        );
        assert!(resources(Some(3), None).is_err() && resources(None, Some(127)).is_err());
        assert_eq!(resources(None, None).unwrap(), (2, 1024));
        let id = new_build_id();
        assert_eq!(id.len(), 36);
        assert_eq!(
            id.split('-').map(str::len).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert_ne!(
            upload_signature(b"k", "t", "h", 1),
            upload_signature(b"k", "t", "h", 2)
        );
    }
}
