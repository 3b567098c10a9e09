//! `POST /init`: the host pushes sandbox-wide settings after a sandbox is restored.

use super::HttpError;
use crate::{auth, state::Envd, users::User};
use axum::{body::Bytes, extract::State, response::IntoResponse};
use envd_proto::host::{ENVD_VERSION, ENVD_VERSION_HEADER};
use http::{HeaderMap, StatusCode, header::CACHE_CONTROL};
use serde::Deserialize;
use std::{collections::BTreeMap, path::PathBuf, sync::Arc};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// The request body; unknown fields (volume mounts, hyperloop, CA bundle…) are ignored.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct InitRequest {
    env_vars: Option<BTreeMap<String, String>>,
    access_token: Option<String>,
    timestamp: Option<String>,
    default_user: Option<String>,
    default_workdir: Option<String>,
}

/// Applies an init request. Once a token is set, only a request carrying it may change
/// anything. A request whose `timestamp` is not newer than the last applied one is acknowledged
/// without being applied, so a delayed retry cannot roll settings back.
pub(super) async fn init(
    State(envd): State<Arc<Envd>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, HttpError> {
    if !auth::token_ok(&envd, &headers) {
        return Err(auth::unauthorized());
    }
    let request: InitRequest = if body.iter().all(u8::is_ascii_whitespace) {
        InitRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| HttpError::bad_request(format!("invalid init request: {e}")))?
    };
    let timestamp = request
        .timestamp
        .as_deref()
        .map(|ts| OffsetDateTime::parse(ts, &Rfc3339))
        .transpose()
        .map_err(|e| HttpError::bad_request(format!("invalid timestamp: {e}")))?;
    if let Some(user) = request.default_user.as_deref().filter(|u| !u.is_empty()) {
        User::lookup(user).map_err(|e| HttpError::bad_request(e.to_string()))?;
    }

    let mut defaults = envd.defaults_mut();
    let stale = matches!((timestamp, defaults.last_init), (Some(new), Some(last)) if new <= last);
    if !stale {
        if let Some(env_vars) = request.env_vars {
            defaults.env_vars.extend(env_vars);
        }
        if let Some(token) = request.access_token {
            defaults.access_token = (!token.is_empty()).then_some(token);
        }
        if let Some(user) = request.default_user.filter(|u| !u.is_empty()) {
            defaults.default_user = Some(user);
        }
        if let Some(workdir) = request.default_workdir.filter(|w| !w.is_empty()) {
            defaults.default_workdir = Some(PathBuf::from(workdir));
        }
        if timestamp.is_some() {
            defaults.last_init = timestamp;
        }
    }
    Ok((
        StatusCode::NO_CONTENT,
        [
            (CACHE_CONTROL.as_str(), "no-store"),
            (ENVD_VERSION_HEADER, ENVD_VERSION),
        ],
    ))
}
