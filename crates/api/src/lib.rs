//! E2B's REST API, served by Kiln.
//!
//! [`router`] builds the axum `Router` from an [`AppState`]: the metadata [`store::Store`]
//! (teams, hashed keys), the [`orchestrator::Orchestrator`] and the [`template::TemplateStore`].
//! Every error is an [`error::ApiError`] with E2B's `{code, message}` body; wire types live in
//! [`wire`], converted from domain types there and nowhere else.
//!
//! Architecture invariant: handlers validate and convert; the orchestrator acts. Nothing here
//! runs runsc or speaks to envd except through `orchestrator`.

pub mod builds;
pub mod error;
pub mod extract;
pub mod lifecycle;
pub mod routes;
pub mod store;
pub mod wire;

use axum::{Json, Router, routing::get};
use std::sync::Arc;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: store::Store,
    pub orchestrator: Arc<orchestrator::Orchestrator>,
    pub templates: template::TemplateStore,
    pub builds: builds::Builds,
    /// Pause, resume and timeouts of sandboxes.
    pub lifecycle: lifecycle::Lifecycle,
    /// Signs build-context upload links (random per start: links live an hour).
    pub upload_key: Arc<[u8]>,
}

/// Every API route. Unknown routes answer 404 with E2B's error body.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .merge(routes::sandboxes::routes())
        .merge(routes::templates::routes())
        .merge(routes::builds::routes())
        .fallback(|| async { error::ApiError::not_found("no such route") })
        .with_state(state)
}
