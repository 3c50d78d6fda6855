//! The HTTP API, one module per area, assembled into an [`OpenApiRouter`] so that the OpenAPI document
//! (`GET /api/openapi.json`) is generated from the same handlers that serve the routes.

pub mod datasets;
pub mod events;
pub mod health;
pub mod projects;
pub mod public;
pub mod session;
pub mod tokens;
pub mod training;
pub mod users;

use std::sync::Arc;

use axum::Extension;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ErrorBody, ErrorDetail, FieldError};
use crate::state::AppState;

/// The document's fixed parts; the paths come from the routers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "DAIG management server",
        description = "Accounts, API tokens, sessions, projects and datasets of the DAIG management server. Every error is answered \
                       as `{\"error\": {\"code\", \"message\", \"details\"?}}` (schema `ErrorBody`)."
    ),
    // `ProjectDelta` is the data of the live-update stream's `delta` events, which no JSON response names.
    components(schemas(ErrorBody, ErrorDetail, FieldError, daig_shared::api::project::ProjectDelta)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "health", description = "Liveness, metrics and this document"),
        (name = "accounts", description = "Sign-up and the current user"),
        (name = "session", description = "Dashboard log-in with a cookie"),
        (name = "tokens", description = "API tokens for the CLI and scripts"),
        (name = "projects", description = "Projects: model, settings, lifecycle and the trained model"),
        (name = "datasets", description = "Uploading a project's dataset, which is validated and sharded"),
        (name = "training", description = "What training produces: metrics, checkpoints and the credit ledger"),
        (name = "public", description = "What visitors see before they contribute, without an account (CORS per project)"),
    )
)]
pub struct ApiDoc;

/// Declares the two ways to authenticate: `bearer` (an API token) and `session` (the dashboard cookie).
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("daig_<base64url>").build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::auth::cookie::SESSION,
                "The dashboard session; writes also need `X-CSRF-Token` equal to the `daig_csrf` cookie",
            ))),
        );
    }
}

/// Every API route with its documentation.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::health))
        .routes(routes!(crate::telemetry::render_metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(users::sign_up))
        .routes(routes!(users::me))
        .routes(routes!(session::log_in, session::log_out))
        .routes(routes!(tokens::create_token, tokens::list_tokens))
        .routes(routes!(tokens::revoke_token))
        .routes(routes!(projects::create_project, projects::list_projects))
        .routes(routes!(projects::get_project, projects::delete_project))
        .routes(routes!(projects::set_sites))
        .routes(routes!(projects::start_project))
        .routes(routes!(projects::pause_project))
        .routes(routes!(projects::resume_project))
        .routes(routes!(projects::cancel_project))
        .routes(routes!(projects::download_model))
        .routes(routes!(projects::model_spec))
        .routes(routes!(events::project_events))
        .routes(routes!(datasets::upload_part))
        .routes(routes!(datasets::commit_dataset))
        .routes(routes!(datasets::delete_dataset))
        .routes(routes!(training::project_metrics))
        .routes(routes!(training::list_checkpoints))
        .routes(routes!(training::download_checkpoint))
        .routes(routes!(training::project_credits))
        .routes(routes!(training::provider_credits))
        .routes(routes!(public::list_public_projects))
        .routes(routes!(public::get_public_project))
}

/// The OpenAPI document, rendered once when the app is built.
#[derive(Debug, Clone)]
pub struct OpenApiJson(pub Arc<str>);

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "health", responses(
    (status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json"),
))]
pub async fn openapi_json(Extension(OpenApiJson(json)): Extension<OpenApiJson>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], json.to_string())
}
