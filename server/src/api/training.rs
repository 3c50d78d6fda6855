//! What training produces, per project: `GET /api/projects/{id}/metrics` (the history),
//! `GET /api/projects/{id}/checkpoints` and `/checkpoints/{version}` (kept checkpoints as safetensors), and
//! `GET /api/projects/{id}/credits` (the ledger: samples and contributions per provider and per site). And per
//! provider, without an account (providers are anonymous): `GET /api/providers/{id}/credits`.

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
pub use daig_shared::api::training::{
    CheckpointList, CheckpointView, CreditLine, MetricsView, ProjectCredits, ProviderCredits, ProviderProjectCredit,
    ShutOutView, SiteCredit, Standing,
};

use crate::auth::CurrentUser;
use crate::db;
use crate::error::{AppError, ErrorBody};
use crate::extract::{Json, Path};
use crate::project::load_owned;
use crate::state::AppState;
use crate::store::StoreError;

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
    Ok(Json(MetricsView { project: row.id, metrics: db::training::metrics_history(state.db(), row.id).await? }))
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
    let checkpoints = db::training::list_checkpoints(state.db(), row.id).await?;
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
    let key = db::training::checkpoint_keys(state.db(), row.id, version).await?.map(|(params, _)| params);
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

/// The project's credit ledger, and the providers shut out of it. Refused and stale work earns nothing, and a
/// provider shut out for failing a check loses the credit it had.
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
    let providers = db::training::provider_credits_of_project(state.db(), row.id).await?;
    let sites = db::training::site_credits_of_project(state.db(), row.id).await?;
    let shut_out = db::trust::shut_out_of_project(state.db(), row.id).await?;
    let contributions = providers.iter().map(|p| p.contributions).sum();
    let samples = providers.iter().map(|p| p.samples).sum();
    Ok(Json(ProjectCredits { project: row.id, contributions, samples, providers, sites, shut_out }))
}

/// A provider's credit per project, by the id a `Welcome` gave it: with a persistent key, the credit of all its
/// connections. Public: providers have no account, and the figures name no one.
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
    if !db::training::provider_exists(state.db(), id).await? {
        return Err(AppError::NotFound("provider"));
    }
    let projects = db::training::project_credits_of_provider(state.db(), id).await?;
    let contributions = projects.iter().map(|p| p.contributions).sum();
    let samples = projects.iter().map(|p| p.samples).sum();
    Ok(Json(ProviderCredits { provider: id, contributions, samples, projects }))
}
