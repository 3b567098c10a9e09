//! `ApiError`: every failure the API answers, with E2B's body `{"code": <status>, "message": …}`.

use axum::{
    Json,
    response::{IntoResponse, Response},
};
use http::StatusCode;
use serde::Serialize;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
    pub fn sandbox_not_found(id: &str) -> Self {
        Self::not_found(format!("sandbox '{id}' not found"))
    }
}

#[derive(Serialize)]
struct Body<'a> {
    code: u16,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, message = %self.message, "request failed");
        }
        (
            self.status,
            Json(Body {
                code: self.status.as_u16(),
                message: &self.message,
            }),
        )
            .into_response()
    }
}

impl From<orchestrator::SandboxError> for ApiError {
    fn from(error: orchestrator::SandboxError) -> Self {
        use orchestrator::SandboxError;
        let status = match &error {
            SandboxError::LimitReached { .. } => StatusCode::TOO_MANY_REQUESTS,
            SandboxError::NotFound(_) => StatusCode::NOT_FOUND,
            SandboxError::Busy { .. } => StatusCode::CONFLICT,
            SandboxError::Refused(_) => StatusCode::INSUFFICIENT_STORAGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, error.to_string())
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(error: crate::store::StoreError) -> Self {
        ApiError::internal(error.to_string())
    }
}

impl From<template::TemplateError> for ApiError {
    fn from(error: template::TemplateError) -> Self {
        ApiError::internal(error.to_string())
    }
}
