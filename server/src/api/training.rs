//! What training produces, per project: `GET /api/projects/{id}/metrics` (the history),
//! `GET /api/projects/{id}/checkpoints` and `/checkpoints/{version}` (kept checkpoints as safetensors), and
//! `GET /api/projects/{id}/credits` (the ledger: samples and contributions per provider and per site). And per
//! provider, without an account (providers are anonymous): `GET /api/providers/{id}/credits`.

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::projects::load_owned;
use crate::auth::CurrentUser;
use crate::error::{AppError, ErrorBody};
use crate::extract::{Json, Path};
use crate::state::AppState;
use crate::store::StoreError;
use crate::training::{MetricPoint, metrics_history};

/// A project's metrics history.
#[derive(Debug, Serialize, ToSchema)]
pub struct MetricsView {
    pub project: i64,
    pub metrics: Vec<MetricPoint>,
}

/// The metrics history: validation loss and accuracy and training loss over versions, oldest first.
#[utoipa::path(get, path = "/api/projects/{id}/metrics", tag = "training", security(("bearer" = []), ("session" = [])),
    params(("id" = i64, Path, description = "The project's id")),
    responses(
        (status = 200, description = "The history", body = MetricsView),
        (status = 401, description = "No valid credentials", body = ErrorBody),
        (status = 404, description = "No project with this id belongs to the caller", body = ErrorBody),
    )
)]
pub async fn project_metrics(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<MetricsView>, AppError> {
    let row = load_owned(&state, &user, id).await?;
    Ok(Json(MetricsView { project: row.id, metrics: metrics_history(&state, row.id).await? }))
}

/// A stored checkpoint.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct CheckpointView {
    pub version: i64,
    pub epoch: i64,
    pub size_bytes: i64,
    pub created_at_unix: i64,
}

/// The checkpoints kept.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckpointList {
    pub checkpoints: Vec<CheckpointView>,
}

/// The project's checkpoints, newest first (the last few are kept).
#[utoipa::path(get, path = "/api/projects/{id}/checkpoints", tag = "training",
    security(("bearer" = []), ("session" = [])),
    params(("id" = i64, Path, description = "The project's id")),
    responses(
        (status = 200, description = "The checkpoints", body = CheckpointList),
        (status = 401, description = "No valid credentials", body = ErrorBody),
        (status = 404, description = "No project with this id belongs to the caller", body = ErrorBody),
    )
)]
pub async fn list_checkpoints(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<CheckpointList>, AppError> {
    let row = load_owned(&state, &user, id).await?;
    let checkpoints = sqlx::query_as::<_, CheckpointView>(
        "SELECT version, epoch, size_bytes, created_at AS created_at_unix FROM checkpoints WHERE project_id = ?
         ORDER BY version DESC",
    )
    .bind(row.id)
    .fetch_all(state.db())
    .await?;
    Ok(Json(CheckpointList { checkpoints }))
}

/// Downloads a checkpoint's parameters as safetensors.
#[utoipa::path(get, path = "/api/projects/{id}/checkpoints/{version}", tag = "training",
    security(("bearer" = []), ("session" = [])),
    params(("id" = i64, Path, description = "The project's id"), ("version" = i64, Path, description = "The version")),
    responses(
        (status = 200, description = "The parameters at that version", content_type = "application/octet-stream"),
        (status = 401, description = "No valid credentials", body = ErrorBody),
        (status = 404, description = "No such project or checkpoint", body = ErrorBody),
    )
)]
pub async fn download_checkpoint(
    State(state): State<AppState>,
    user: CurrentUser,
    Path((id, version)): Path<(i64, i64)>,
) -> Result<Response, AppError> {
    let row = load_owned(&state, &user, id).await?;
    let key: Option<String> =
        sqlx::query_scalar("SELECT params_key FROM checkpoints WHERE project_id = ? AND version = ?")
            .bind(row.id)
            .bind(version)
            .fetch_optional(state.db())
            .await?;
    let Some(key) = key else {
        return Err(AppError::Missing(format!("the project has no checkpoint of version {version}")));
    };
    let stream = match state.store().get_stream(&key).await {
        Ok(stream) => stream,
        Err(StoreError::NotFound(_)) => {
            return Err(AppError::Missing(format!("the checkpoint of version {version} is no longer stored")));
        }
        Err(e) => return Err(e.into()),
    };
    let disposition = format!("attachment; filename=\"project-{}-v{version}.safetensors\"", row.id);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, stream.size_bytes.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(stream.reader)),
    )
        .into_response())
}

/// Credit of one provider or site.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct CreditLine {
    pub provider_id: i64,
    pub site_key: Option<String>,
    pub backend: Option<String>,
    pub contributions: i64,
    pub samples: i64,
}

/// Credit of a site, over its providers.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct SiteCredit {
    pub site_key: Option<String>,
    pub contributions: i64,
    pub samples: i64,
}

/// A project's ledger: every applied contribution credits its provider and site with its samples.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectCredits {
    pub project: i64,
    pub contributions: i64,
    pub samples: i64,
    pub providers: Vec<CreditLine>,
    pub sites: Vec<SiteCredit>,
}

/// The project's credit ledger. Refused and stale work earns nothing.
#[utoipa::path(get, path = "/api/projects/{id}/credits", tag = "training", security(("bearer" = []), ("session" = [])),
    params(("id" = i64, Path, description = "The project's id")),
    responses(
        (status = 200, description = "The ledger", body = ProjectCredits),
        (status = 401, description = "No valid credentials", body = ErrorBody),
        (status = 404, description = "No project with this id belongs to the caller", body = ErrorBody),
    )
)]
pub async fn project_credits(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<ProjectCredits>, AppError> {
    let row = load_owned(&state, &user, id).await?;
    let providers = sqlx::query_as::<_, CreditLine>(
        "SELECT c.provider_id, c.site_key, p.backend, COUNT(*) AS contributions, SUM(c.samples) AS samples
         FROM contributions c LEFT JOIN providers p ON p.id = c.provider_id
         WHERE c.project_id = ? GROUP BY c.provider_id ORDER BY samples DESC",
    )
    .bind(row.id)
    .fetch_all(state.db())
    .await?;
    let sites = sqlx::query_as::<_, SiteCredit>(
        "SELECT site_key, COUNT(*) AS contributions, SUM(samples) AS samples FROM contributions
         WHERE project_id = ? GROUP BY site_key ORDER BY samples DESC",
    )
    .bind(row.id)
    .fetch_all(state.db())
    .await?;
    let contributions = providers.iter().map(|p| p.contributions).sum();
    let samples = providers.iter().map(|p| p.samples).sum();
    Ok(Json(ProjectCredits { project: row.id, contributions, samples, providers, sites }))
}

/// A provider's credit in one project.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct ProviderProjectCredit {
    pub project_id: i64,
    pub contributions: i64,
    pub samples: i64,
}

/// A provider's ledger.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderCredits {
    pub provider: i64,
    pub contributions: i64,
    pub samples: i64,
    pub projects: Vec<ProviderProjectCredit>,
}

/// A provider's credit per project, by the id its `Welcome` gave it. Public: providers have no account, and
/// the figures name no one.
#[utoipa::path(get, path = "/api/providers/{id}/credits", tag = "training",
    params(("id" = i64, Path, description = "The provider's id")),
    responses(
        (status = 200, description = "The ledger", body = ProviderCredits),
        (status = 404, description = "No such provider", body = ErrorBody),
    )
)]
pub async fn provider_credits(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<ProviderCredits>, AppError> {
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM providers WHERE id = ?)")
        .bind(id)
        .fetch_one(state.db())
        .await?;
    if !exists {
        return Err(AppError::NotFound("provider"));
    }
    let projects = sqlx::query_as::<_, ProviderProjectCredit>(
        "SELECT project_id, COUNT(*) AS contributions, SUM(samples) AS samples FROM contributions
         WHERE provider_id = ? GROUP BY project_id ORDER BY project_id",
    )
    .bind(id)
    .fetch_all(state.db())
    .await?;
    let contributions = projects.iter().map(|p| p.contributions).sum();
    let samples = projects.iter().map(|p| p.samples).sum();
    Ok(Json(ProviderCredits { provider: id, contributions, samples, projects }))
}
