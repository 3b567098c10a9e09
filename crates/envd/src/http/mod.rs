//! envd's plain HTTP endpoints: `/health`, `/envs`, `/metrics`, `/init` and `/files`.

mod files;
mod info;
mod init;

pub(crate) use info::CpuSampler;

use crate::state::Envd;
use axum::{
    Json, Router,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use http::StatusCode;
use serde::Serialize;
use std::sync::Arc;

pub(crate) fn routes() -> Router<Arc<Envd>> {
    Router::new()
        .route("/health", get(info::health))
        .route("/envs", get(info::envs))
        .route("/metrics", get(info::metrics))
        .route("/init", post(init::init))
        .route("/files", get(files::download).post(files::upload))
}

/// An HTTP error with E2B's body: `{"code": <status>, "message": "…"}`.
#[derive(Debug)]
pub(crate) struct HttpError {
    status: StatusCode,
    message: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: u16,
    message: &'a str,
}

impl HttpError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        HttpError {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.status.as_u16(),
            message: &self.message,
        };
        (self.status, Json(body)).into_response()
    }
}
