//! `GET /api/health`: whether the server and its database answer.

use axum::extract::State;

pub use daig_shared::api::Health;

use crate::error::{AppError, ErrorBody};
use crate::extract::Json;
use crate::state::AppState;

/// Answers 200 when the database answers a query.
#[utoipa::path(get, path = "/api/health", tag = "health", responses(
    (status = 200, description = "The server and its database answer", body = Health),
    (status = 500, description = "The database does not answer", body = ErrorBody),
))]
pub async fn health(State(state): State<AppState>) -> Result<Json<Health>, AppError> {
    crate::db::ping(state.db()).await?;
    Ok(Json(Health { status: "ok".into() }))
}
