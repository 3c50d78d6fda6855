//! What the contribute page and the embed widget show a visitor before they consent, without an account:
//! `GET /api/public/projects` (the public projects that take providers) and `GET /api/public/projects/{id}` (one
//! project; a `site_key` project only with its key).
//!
//! CORS: pages on other sites read these with `fetch`. A public project's answer carries
//! `Access-Control-Allow-Origin: *`; a `site_key` project's answers the origin of a site it lists (and this
//! server's own pages), and refuses any other origin with 403 and no CORS header, so a browser on another site
//! learns nothing about it.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

pub use daig_shared::api::project::{PublicProject, PublicProjects};

use crate::db;
use crate::error::{AppError, ErrorBody};
use crate::extract::{Json, Path};
use crate::project::{Access, ProjectRow, ProjectState};
use crate::state::AppState;
use crate::training::SocketOrigin;

/// Lists the public projects visitors can contribute to (running or paused), those that need providers first.
#[utoipa::path(get, path = "/api/public/projects", tag = "public",
    responses((status = 200, description = "The projects", body = PublicProjects))
)]
pub async fn list_public_projects(State(state): State<AppState>) -> Result<Response, AppError> {
    let rows = db::projects::list_public(state.db()).await?;
    let mut projects = Vec::with_capacity(rows.len());
    for row in &rows {
        projects.push(public_view(&state, row)?);
    }
    projects.sort_by_key(|p| (!p.needs_providers, p.providers));
    let mut response = Json(PublicProjects { projects }).into_response();
    response.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    Ok(response)
}

/// The key a `site_key` project's visitors present.
#[derive(Debug, Deserialize)]
pub struct SiteKeyQuery {
    pub site_key: Option<String>,
}

/// One project as visitors see it. A public project answers once it has started (a draft is 404, as a project
/// that does not exist); a `site_key` project answers only with its key, and to browsers only on the sites it
/// lists (CORS).
#[utoipa::path(get, path = "/api/public/projects/{id}", tag = "public",
    params(("id" = i64, Path, description = "The project's id"),
        ("site_key" = Option<String>, Query, description = "The project's site key (required for `site_key` projects)")),
    responses(
        (status = 200, description = "The project", body = PublicProject),
        (status = 403, description = "A browser on a site the project does not list", body = ErrorBody),
        (status = 404, description = "No such project, a public draft, or a `site_key` project asked without its key",
         body = ErrorBody),
    )
)]
pub async fn get_public_project(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(query): Query<SiteKeyQuery>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let row = db::projects::get(state.db(), id).await?.ok_or(AppError::NotFound("project"))?;
    let settings = row.settings()?;
    let allow_origin = match settings.access {
        // A draft is its owner's until it starts: nobody else learns of it, not even that its id exists.
        Access::Public if row.state()? == ProjectState::Draft => return Err(AppError::NotFound("project")),
        Access::Public => Some(HeaderValue::from_static("*")),
        Access::SiteKey => {
            if query.site_key.is_none() || query.site_key != row.site_key {
                return Err(AppError::NotFound("project"));
            }
            let origin = crate::training::connection::socket_origin(&headers);
            if !origin.admitted(Access::SiteKey, &settings.canonical_sites()) {
                let SocketOrigin::Site(site) = origin else { unreachable!("only sites are refused") };
                return Err(AppError::Forbidden(format!("project {id} does not list {site} among its sites")));
            }
            headers.get(header::ORIGIN).cloned()
        }
    };
    let mut response = Json(public_view(&state, &row)?).into_response();
    let headers = response.headers_mut();
    if let Some(allow_origin) = allow_origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
    }
    headers.insert(header::VARY, HeaderValue::from_static("origin"));
    Ok(response)
}

fn public_view(state: &AppState, row: &ProjectRow) -> Result<PublicProject, AppError> {
    let settings = row.settings()?;
    let project_state = row.state()?;
    let live = state.training().get(row.id).map(|h| h.status.borrow().clone()).filter(|s| s.running);
    let (epoch, progress, providers) = match &live {
        Some(live) => (i64::try_from(live.epoch).unwrap_or(i64::MAX), live.progress, live.providers.len()),
        None => (row.epoch, row.progress()?, 0),
    };
    let model = row.model()?;
    Ok(PublicProject {
        id: row.id,
        name: row.name.clone(),
        state: project_state,
        access: settings.access,
        params: u64::try_from(row.param_count).unwrap_or(0),
        layers: model.spec.layers.len(),
        epoch,
        progress,
        providers,
        max_providers: settings.max_providers,
        needs_providers: project_state == ProjectState::Running && providers < settings.max_providers as usize,
    })
}
