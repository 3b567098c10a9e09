//! Extractors: JSON bodies whose rejections are `ApiError`s, and the authenticated team.

use crate::{AppState, error::ApiError, store::Team};
use axum::{
    extract::{FromRequest, FromRequestParts, Request, rejection::JsonRejection},
    http::request::Parts,
};
use http::StatusCode;
use serde::de::DeserializeOwned;

/// `Json<T>` whose rejection is a 400 `ApiError` (not axum's plain text). An empty body
/// reads as `{}`, since the SDKs send some POSTs without one.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        let bytes = axum::body::to_bytes(body, 1024 * 1024)
            .await
            .map_err(|e| ApiError::bad_request(format!("cannot read body: {e}")))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return serde_json::from_str("{}")
                .map(ApiJson)
                .map_err(|e| ApiError::bad_request(format!("a JSON body is required: {e}")));
        }
        let request = Request::from_parts(parts, axum::body::Body::from(bytes));
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(ApiError::bad_request(rejection_message(&rejection))),
        }
    }
}

fn rejection_message(rejection: &JsonRejection) -> String {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => {
            "expected a JSON body (Content-Type: application/json)".into()
        }
        other => other.body_text(),
    }
}

/// The team a request acts for: `X-API-Key: e2b_…` or `Authorization: Bearer sk_e2b_…`.
pub struct AuthTeam(pub Team);

impl FromRequestParts<AppState> for AuthTeam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let unauthorized =
            || ApiError::new(StatusCode::UNAUTHORIZED, "Invalid API key or access token");
        let headers = &parts.headers;
        let (kind, secret) = if let Some(key) = headers.get("x-api-key") {
            ("api_key", key.to_str().map_err(|_| unauthorized())?)
        } else if let Some(bearer) = headers.get(http::header::AUTHORIZATION) {
            let value = bearer.to_str().map_err(|_| unauthorized())?;
            (
                "access_token",
                value
                    .strip_prefix("Bearer ")
                    .ok_or_else(unauthorized)?
                    .trim(),
            )
        } else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing X-API-Key header or Authorization bearer token",
            ));
        };
        let team = state
            .store
            .team_for(kind, secret)
            .await?
            .ok_or_else(unauthorized)?;
        Ok(AuthTeam(team))
    }
}
