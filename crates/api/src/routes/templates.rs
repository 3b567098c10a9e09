//! Templates: listing (building arrives with the templates issue).

use crate::{AppState, error::ApiError, extract::AuthTeam, wire::TemplateInfo};
use axum::{Json, Router, extract::State, routing::get};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/templates", get(list))
        .route("/v2/templates", get(list))
}

async fn list(
    State(state): State<AppState>,
    _team: AuthTeam,
) -> Result<Json<Vec<TemplateInfo>>, ApiError> {
    Ok(Json(
        state
            .templates
            .list()?
            .iter()
            .map(TemplateInfo::from)
            .collect(),
    ))
}
