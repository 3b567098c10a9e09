//! Sandboxes: create, list, inspect, extend, kill, pause, resume/connect, metrics, and Kiln's
//! exec.

use crate::{
    AppState,
    error::ApiError,
    extract::{ApiJson, AuthTeam},
    wire::{ExecBody, NewSandbox, SandboxCreated, SandboxInfo, TimeoutBody},
};
use axum::{
    Json, Router,
    extract::{Path, RawQuery, State},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use http::{HeaderValue, StatusCode};
use orchestrator::{Sandbox, envd::ExecRequest};
use std::{collections::BTreeMap, sync::Arc, time::Duration};
use time::OffsetDateTime;

/// E2B's default sandbox lifetime when `timeout` is omitted.
const DEFAULT_TIMEOUT_SECS: i64 = 300;
/// The longest lifetime one request may ask for (E2B Pro's 24 h).
const MAX_TIMEOUT_SECS: i64 = 24 * 3600;
const DEFAULT_PAGE: usize = 100;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/sandboxes", post(create).get(list_v1))
        .route("/v2/sandboxes", post(create).get(list_v2))
        .route("/sandboxes/{id}", get(detail).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/refreshes", post(refresh))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/resume", post(resume))
        .route("/sandboxes/{id}/metrics", get(metrics))
        .route("/sandboxes/{id}/exec", post(exec))
}

fn seconds(value: i64, field: &str) -> Result<Duration, ApiError> {
    if value <= 0 {
        return Err(ApiError::bad_request(format!(
            "'{field}' must be a positive number of seconds"
        )));
    }
    Ok(Duration::from_secs(value.min(MAX_TIMEOUT_SECS) as u64))
}

/// The team's sandbox, or 404 (another team's sandbox is as unknown as a missing one).
fn owned(state: &AppState, team: &AuthTeam, id: &str) -> Result<Arc<Sandbox>, ApiError> {
    state
        .orchestrator
        .get(id)
        .filter(|sandbox| sandbox.team_id == team.0.id)
        .ok_or_else(|| ApiError::sandbox_not_found(id))
}

async fn create(
    State(state): State<AppState>,
    team: AuthTeam,
    ApiJson(body): ApiJson<NewSandbox>,
) -> Result<Response, ApiError> {
    let timeout = seconds(body.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS), "timeout")?;
    // `name:tag`: a template's tags all name its current build, the only one kept on a node.
    let name = body.template_id.split(':').next().unwrap_or_default();
    let template = state
        .templates
        .find(name)?
        .filter(|t| t.team_id.is_none() || t.team_id.as_deref() == Some(team.0.id.as_str()))
        .ok_or_else(|| ApiError::not_found(format!("template '{}' not found", body.template_id)))?;
    let lifecycle = body.lifecycle();
    let new = orchestrator::NewSandbox {
        team_id: team.0.id.clone(),
        template: state.templates.image(&template),
        timeout,
        metadata: body.metadata,
        env_vars: body.env_vars,
        secure: body.secure.unwrap_or(true),
        allow_internet_access: body.allow_internet_access,
        team_limit: team.0.max_sandboxes,
        lifecycle,
    };
    let sandbox = state.orchestrator.create(new).await?;
    Ok((
        StatusCode::CREATED,
        Json(SandboxCreated::from(sandbox.as_ref())),
    )
        .into_response())
}

async fn list_v1(State(state): State<AppState>, team: AuthTeam) -> Json<Vec<SandboxInfo>> {
    let sandboxes = state.orchestrator.list();
    Json(
        sandboxes
            .iter()
            .filter(|s| s.team_id == team.0.id)
            .map(|s| SandboxInfo::listed(s))
            .collect(),
    )
}

/// `GET /v2/sandboxes?state=&metadata=&limit=&nextToken=`; the next page's token is in
/// `X-Next-Token`.
async fn list_v2(
    State(state): State<AppState>,
    team: AuthTeam,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(query.as_deref().unwrap_or(""))?;
    let wants = |st: &str| {
        query
            .states
            .as_ref()
            .is_none_or(|states| states.iter().any(|s| s == st))
    };
    let mut matching: Vec<SandboxInfo> = Vec::new();
    if wants("running") {
        matching.extend(
            state
                .orchestrator
                .list()
                .iter()
                .filter(|s| s.team_id == team.0.id)
                .map(|s| SandboxInfo::listed(s)),
        );
    }
    if wants("paused") {
        matching.extend(
            state
                .lifecycle
                .pausing_of(&team.0.id)
                .iter()
                .map(SandboxInfo::paused),
        );
        matching.extend(
            state
                .store
                .list_paused(&team.0.id)
                .await?
                .iter()
                .map(|p| SandboxInfo::paused(&p.sandbox)),
        );
    }
    matching.retain(|s| {
        query
            .metadata
            .iter()
            .all(|(k, v)| s.metadata.get(k) == Some(v))
    });
    let total = matching.len();
    let page: Vec<SandboxInfo> = matching
        .into_iter()
        .skip(query.offset)
        .take(query.limit)
        .collect();
    let mut response = Json(page).into_response();
    let next = query.offset + query.limit;
    if next < total
        && let Ok(value) = HeaderValue::from_str(&next.to_string())
    {
        response.headers_mut().insert("x-next-token", value);
    }
    Ok(response)
}

struct ListQuery {
    states: Option<Vec<String>>,
    metadata: BTreeMap<String, String>,
    limit: usize,
    offset: usize,
}

impl ListQuery {
    /// The SDK encodes `metadata` three times over: the parameter holds a query string whose
    /// keys and values are themselves percent-encoded.
    fn parse(raw: &str) -> Result<ListQuery, ApiError> {
        let mut query = ListQuery {
            states: None,
            metadata: BTreeMap::new(),
            limit: DEFAULT_PAGE,
            offset: 0,
        };
        for (key, value) in url::form_urlencoded::parse(raw.as_bytes()) {
            match key.as_ref() {
                "state" => {
                    query.states = Some(value.split(',').map(|s| s.trim().to_owned()).collect())
                }
                "metadata" => {
                    for (k, v) in url::form_urlencoded::parse(value.as_bytes()) {
                        let decode = |s: &str| {
                            percent_encoding::percent_decode_str(s)
                                .decode_utf8_lossy()
                                .into_owned()
                        };
                        query.metadata.insert(decode(&k), decode(&v));
                    }
                }
                "limit" => {
                    query.limit =
                        value
                            .parse::<usize>()
                            .ok()
                            .filter(|l| *l > 0)
                            .ok_or_else(|| {
                                ApiError::bad_request("'limit' must be a positive integer")
                            })?
                }
                "nextToken" => {
                    query.offset = value
                        .parse()
                        .map_err(|_| ApiError::bad_request("invalid 'nextToken'"))?
                }
                _ => {}
            }
        }
        Ok(query)
    }
}

async fn detail(
    State(state): State<AppState>,
    team: AuthTeam,
    Path(id): Path<String>,
) -> Result<Json<SandboxInfo>, ApiError> {
    if let Ok(sandbox) = owned(&state, &team, &id) {
        return Ok(Json(SandboxInfo::detail(&sandbox)));
    }
    if let Some(paused) = state
        .lifecycle
        .pausing(&id)
        .filter(|p| p.team_id == team.0.id)
    {
        return Ok(Json(SandboxInfo::paused_detail(&paused)));
    }
    match state.store.paused(&id).await? {
        Some(paused) if paused.sandbox.team_id == team.0.id => {
            Ok(Json(SandboxInfo::paused_detail(&paused.sandbox)))
        }
        _ => Err(ApiError::sandbox_not_found(&id)),
    }
}

/// Kills a running sandbox, or deletes a paused one and its snapshot.
async fn kill(
    State(state): State<AppState>,
    team: AuthTeam,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if owned(&state, &team, &id).is_ok() && state.orchestrator.kill(&id).await? {
        return Ok(StatusCode::NO_CONTENT);
    }
    if state.lifecycle.delete_paused(&id, &team.0.id).await? {
        return Ok(StatusCode::NO_CONTENT);
    }
    Err(ApiError::sandbox_not_found(&id))
}

/// `POST /sandboxes/{id}/pause`: 204, or 409 when the sandbox is not running.
async fn pause(
    State(state): State<AppState>,
    team: AuthTeam,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.orchestrator.get(&id).is_some() {
        owned(&state, &team, &id)?;
    }
    state.lifecycle.pause(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Resumes the team's paused sandbox `id` for `timeout` seconds (default 300): 201.
async fn resume_paused(
    state: &AppState,
    team: &AuthTeam,
    id: &str,
    timeout: Option<i64>,
) -> Result<Response, ApiError> {
    let timeout = seconds(timeout.unwrap_or(DEFAULT_TIMEOUT_SECS), "timeout")?;
    let sandbox = state
        .lifecycle
        .resume(id, Some(&team.0.id), timeout)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(SandboxCreated::from(sandbox.as_ref())),
    )
        .into_response())
}

/// `POST /sandboxes/{id}/resume` (deprecated in E2B, kept for old SDKs): 201, 409 if running.
async fn resume(
    State(state): State<AppState>,
    team: AuthTeam,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<TimeoutBody>,
) -> Result<Response, ApiError> {
    if owned(&state, &team, &id).is_ok() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("sandbox '{id}' is already running"),
        ));
    }
    resume_paused(&state, &team, &id, body.timeout).await
}

async fn set_timeout(
    State(state): State<AppState>,
    team: AuthTeam,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<TimeoutBody>,
) -> Result<StatusCode, ApiError> {
    owned(&state, &team, &id)?;
    let timeout = seconds(
        body.timeout
            .ok_or_else(|| ApiError::bad_request("'timeout' is required"))?,
        "timeout",
    )?;
    state.orchestrator.set_timeout(&id, timeout)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn refresh(
    State(state): State<AppState>,
    team: AuthTeam,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<TimeoutBody>,
) -> Result<StatusCode, ApiError> {
    owned(&state, &team, &id)?;
    let requested = seconds(body.duration.unwrap_or(DEFAULT_TIMEOUT_SECS), "duration")?;
    state.orchestrator.extend_timeout(&id, requested)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Connect: 200 and the details of a running sandbox (its timeout only ever extended), or 201
/// after resuming a paused one.
async fn connect(
    State(state): State<AppState>,
    team: AuthTeam,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<TimeoutBody>,
) -> Result<Response, ApiError> {
    if let Ok(sandbox) = owned(&state, &team, &id) {
        if let Some(timeout) = body.timeout {
            state
                .orchestrator
                .extend_timeout(&id, seconds(timeout, "timeout")?)?;
        }
        return Ok(Json(SandboxCreated::from(sandbox.as_ref())).into_response());
    }
    resume_paused(&state, &team, &id, body.timeout).await
}

async fn metrics(
    State(state): State<AppState>,
    team: AuthTeam,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let sandbox = owned(&state, &team, &id)?;
    let raw = sandbox
        .envd()
        .metrics()
        .await
        .map_err(|e| ApiError::internal(format!("reading metrics: {e}")))?;
    let now = OffsetDateTime::now_utc();
    let number = |key: &str| raw.get(key).cloned().unwrap_or(serde_json::Value::from(0));
    Ok(Json(serde_json::json!([{
        "timestamp": now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "timestampUnix": now.unix_timestamp(),
        "cpuCount": number("cpu_count"),
        "cpuUsedPct": number("cpu_used_pct"),
        "memUsed": number("mem_used"),
        "memTotal": number("mem_total"),
        "memCache": number("mem_cache"),
        "diskUsed": number("disk_used"),
        "diskTotal": number("disk_total"),
    }])))
}

/// Kiln's convenience endpoint: run a command to completion and return its output.
async fn exec(
    State(state): State<AppState>,
    team: AuthTeam,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ExecBody>,
) -> Result<Json<orchestrator::envd::ExecResult>, ApiError> {
    let sandbox = owned(&state, &team, &id)?;
    if body.command.is_empty() {
        return Err(ApiError::bad_request("'command' must not be empty"));
    }
    let request = ExecRequest {
        command: body.command,
        args: body.args,
        envs: body.envs,
        cwd: body.cwd,
        user: body.user,
        timeout: seconds(body.timeout.unwrap_or(60), "timeout")?,
    };
    let result = sandbox
        .envd()
        .exec(&request)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("exec failed: {e}")))?;
    Ok(Json(result))
}

#[cfg(test)]
mod tests {
    use super::ListQuery;

    #[test]
    fn metadata_query_is_decoded_three_times() {
        let raw = "metadata=user%3Dalice%252520bob%26k%3Dv%252F1&state=running%2Cpaused&limit=10&nextToken=20";
        let query = ListQuery::parse(raw).unwrap();
        assert_eq!(
            query.metadata.get("user").map(String::as_str),
            Some("alice bob")
        );
        assert_eq!(query.metadata.get("k").map(String::as_str), Some("v/1"));
        assert_eq!(query.states, Some(vec!["running".into(), "paused".into()]));
        assert_eq!((query.limit, query.offset), (10, 20));
        assert!(ListQuery::parse("limit=0").is_err());
        assert!(ListQuery::parse("nextToken=x").is_err());
    }
}
