//! Templates: listing, details, deletion, aliases and tags. Building is in [`super::builds`].

use super::builds::{owned_template, parse_name};
use crate::{
    AppState,
    error::ApiError,
    extract::{ApiJson, AuthTeam},
    store::{BuildStatus, TemplateRecord},
    wire::{
        AssignTags, AssignedTags, DeleteTags, TemplateBuild, TemplateInfo, TemplateTag,
        TemplateWithBuilds,
    },
};
use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/templates", get(list))
        .route("/v2/templates", get(list))
        .route("/templates/{id}", get(details).delete(delete))
        .route("/templates/aliases/{alias}", get(alias))
        .route("/templates/tags", post(assign_tags).delete(delete_tags))
        .route("/templates/{id}/tags", get(tags))
}

/// A team's template as listed: its current build if it has one, else its newest build's state.
async fn info(state: &AppState, record: &TemplateRecord) -> Result<Option<TemplateInfo>, ApiError> {
    let builds = state.store.builds(&record.id).await?;
    let newest = builds.first();
    let status = newest.map_or("waiting", |b| b.status.as_str());
    let count = builds
        .iter()
        .filter(|b| b.status == BuildStatus::Ready)
        .count() as u64;
    Ok(match state.templates.find(&record.id)? {
        Some(template) => Some(TemplateInfo::built(&template, status, count)),
        None => newest.map(|build| TemplateInfo::pending(record, build)),
    })
}

/// `GET /templates`, `GET /v2/templates`: the public templates and the team's own.
async fn list(
    State(state): State<AppState>,
    team: AuthTeam,
) -> Result<Json<Vec<TemplateInfo>>, ApiError> {
    let mut listed: Vec<TemplateInfo> = state
        .templates
        .list()?
        .iter()
        .filter(|t| t.team_id.is_none())
        .map(|t| TemplateInfo::built(t, "ready", 1))
        .collect();
    for record in state.store.team_templates(&team.0.id).await? {
        listed.extend(info(&state, &record).await?);
    }
    Ok(Json(listed))
}

/// `GET /templates/{id}`: the template and its builds, newest first.
async fn details(
    State(state): State<AppState>,
    team: AuthTeam,
    Path(id): Path<String>,
) -> Result<Json<TemplateWithBuilds>, ApiError> {
    let record = owned_template(&state, &team, &id).await?;
    let template = info(&state, &record)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("template '{id}' has no build")))?;
    let builds = state.store.builds(&record.id).await?;
    Ok(Json(TemplateWithBuilds {
        template,
        builds: builds.iter().map(TemplateBuild::from).collect(),
    }))
}

/// `DELETE /templates/{id}` → 204; refused while sandboxes of it run.
async fn delete(
    State(state): State<AppState>,
    team: AuthTeam,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let record = owned_template(&state, &team, &id).await?;
    if state
        .orchestrator
        .list()
        .iter()
        .any(|s| s.template_id == record.id)
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("template '{id}' has running sandboxes; kill them first"),
        ));
    }
    if state.store.paused_of_template(&record.id).await? > 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("template '{id}' has paused sandboxes; delete them first"),
        ));
    }
    state.templates.remove(&record.id)?;
    state.store.delete_template(&record.id).await?;
    if let Err(error) = state
        .lifecycle
        .storage()
        .delete_prefix(&format!("templates/{}", record.id))
        .await
    {
        tracing::warn!(template = %record.id, %error, "removing the template's stored builds");
    }
    tracing::info!(template = %record.id, "template deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /templates/aliases/{alias}`: 200 for the team's own, 403 for another team's, else 404.
async fn alias(
    State(state): State<AppState>,
    team: AuthTeam,
    Path(alias): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (name, _) = parse_name(&alias)?;
    if name == template::base::BASE_ID {
        return Ok(Json(
            serde_json::json!({"templateID": name, "public": true}),
        ));
    }
    match state.store.template_by_name(&name).await? {
        Some(record) if record.team_id == team.0.id => Ok(Json(
            serde_json::json!({"templateID": record.id, "public": record.public}),
        )),
        Some(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("the alias '{name}' belongs to another team"),
        )),
        None => Err(ApiError::not_found(format!(
            "template alias '{name}' not found"
        ))),
    }
}

/// `POST /templates/tags` → 201: tags for the build that `target` (`name:tag`) names.
async fn assign_tags(
    State(state): State<AppState>,
    team: AuthTeam,
    ApiJson(body): ApiJson<AssignTags>,
) -> Result<Response, ApiError> {
    let (name, tag) = parse_name(&body.target)?;
    let record = owned_template(&state, &team, &name).await?;
    let tag = tag.unwrap_or_else(|| "default".into());
    let build_id = state
        .store
        .tags(&record.id)
        .await?
        .into_iter()
        .find(|(t, _, _)| *t == tag)
        .map(|(_, build, _)| build)
        .ok_or_else(|| {
            ApiError::not_found(format!("tag '{tag}' of template '{name}' not found"))
        })?;
    for tag in &body.tags {
        parse_name(&format!("x:{tag}"))?;
    }
    state
        .store
        .assign_tags(&record.id, &build_id, &body.tags)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(AssignedTags {
            tags: body.tags,
            build_id,
        }),
    )
        .into_response())
}

/// `DELETE /templates/tags` → 204.
async fn delete_tags(
    State(state): State<AppState>,
    team: AuthTeam,
    ApiJson(body): ApiJson<DeleteTags>,
) -> Result<Response, ApiError> {
    let (name, _) = parse_name(&body.name)?;
    let record = owned_template(&state, &team, &name).await?;
    state.store.remove_tags(&record.id, &body.tags).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /templates/{id}/tags`.
async fn tags(
    State(state): State<AppState>,
    team: AuthTeam,
    Path(id): Path<String>,
) -> Result<Json<Vec<TemplateTag>>, ApiError> {
    let record = owned_template(&state, &team, &id).await?;
    Ok(Json(
        state
            .store
            .tags(&record.id)
            .await?
            .into_iter()
            .map(|(tag, build_id, created_at)| TemplateTag {
                tag,
                build_id,
                created_at,
            })
            .collect(),
    ))
}
