//! Projects: `POST /api/projects` creates one from a model and training settings, `GET /api/projects` lists the
//! caller's, `GET`/`DELETE /api/projects/{id}` show and remove one, `POST /api/projects/{id}/{start,pause,resume,
//! cancel}` move it through its states, and `GET /api/projects/{id}/model` and `/model/spec` download the trained
//! model and its spec.
//!
//! States: `draft` (being set up; the dataset is uploaded here) -> `running` (needs a committed dataset) <->
//! `paused`; `running` or `paused` -> `cancelled`. `finished` is reached by training (its epochs done or its target accuracy met). Any other
//! move is answered 409 saying what is allowed.

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use daig_shared::model::{self, Loss, Model, ModelSpec, SpecError};

pub use daig_shared::api::project::{
    CreateProject, DatasetSummary, ModelSummary, ProjectList, ProjectSummary, ProjectView, SetSites,
};

use crate::auth::{CurrentUser, secret};
use crate::db::{self, now_unix};
use crate::error::{AppError, ErrorBody, FieldError};
use crate::extract::{Json, Path};
use crate::project::{Access, Action, NAME_MAX_CHARS, ProjectRow, ProjectState, keys, load_dataset, load_owned};
use crate::state::AppState;
use crate::store::StoreError;

/// Validates the model part of a request, pushing model errors to `model_errors` and field errors to `fields`.
fn parse_model(
    body: &CreateProject,
    limits: &model::Limits,
    model_errors: &mut Vec<SpecError>,
    fields: &mut Vec<FieldError>,
) -> Option<Model> {
    let spec: Result<ModelSpec, _> = match (&body.model, &body.keras_model) {
        (Some(value), None) => {
            if body.loss.is_some() {
                fields.push(FieldError {
                    field: "loss",
                    message: "goes with keras_model only; a DAIG JSON model names its loss inside".into(),
                });
            }
            ModelSpec::from_value(value.clone())
        }
        (None, Some(json)) => {
            let Some(loss_name) = &body.loss else {
                fields.push(FieldError {
                    field: "loss",
                    message: "is required with keras_model: cross_entropy, mean_squared_error or binary_cross_entropy"
                        .into(),
                });
                return None;
            };
            let Ok(loss) = serde_json::from_value::<Loss>(serde_json::Value::String(loss_name.clone())) else {
                fields.push(FieldError {
                    field: "loss",
                    message: format!(
                        "{loss_name:?} is not a loss: use cross_entropy, mean_squared_error or binary_cross_entropy"
                    ),
                });
                return None;
            };
            model::keras::from_keras_json(json, loss)
        }
        (Some(_), Some(_)) => {
            fields.push(FieldError { field: "model", message: "give either model or keras_model, not both".into() });
            return None;
        }
        (None, None) => {
            fields.push(FieldError {
                field: "model",
                message: "a model is required: model (DAIG JSON) or keras_model with loss".into(),
            });
            return None;
        }
    };
    match spec.and_then(|spec| Model::new(spec, limits)) {
        Ok(model) => Some(model),
        Err(errors) => {
            model_errors.extend(errors.0);
            None
        }
    }
}

/// Creates a project in the `draft` state.
#[utoipa::path(post, path = "/api/projects", tag = "projects", request_body = CreateProject,
    security(("bearer" = []), ("session" = [])),
    responses(
        (status = 201, description = "Created", body = ProjectView),
        (status = 401, description = "No valid credentials", body = ErrorBody),
        (status = 403, description = "Session cookie without a matching X-CSRF-Token", body = ErrorBody),
        (status = 409, description = "The account has `max_projects_per_account` projects (`project_quota`)",
         body = ErrorBody),
        (status = 422, description = "Every problem of the model (`details.model`, with layer and field) and of \
                                      the fields (`details.fields`)", body = ErrorBody),
    )
)]
pub async fn create_project(
    State(state): State<AppState>,
    user: CurrentUser,
    Json(mut body): Json<CreateProject>,
) -> Result<(StatusCode, Json<ProjectView>), AppError> {
    let mut fields = Vec::new();
    let name_chars = body.name.chars().count();
    if name_chars == 0 || name_chars > NAME_MAX_CHARS || body.name.chars().any(char::is_control) {
        fields.push(FieldError {
            field: "name",
            message: format!("must be 1 to {NAME_MAX_CHARS} characters, none of them control"),
        });
    }
    let mut model_errors = Vec::new();
    let model = parse_model(&body, &state.settings().model_limits(), &mut model_errors, &mut fields);
    fields.extend(body.settings.problems());
    let Some(model) = model.filter(|_| fields.is_empty() && model_errors.is_empty()) else {
        return Err(AppError::InvalidProject { model: model_errors, fields });
    };
    body.settings.sites = body.settings.canonical_sites();
    let site_key = match body.settings.access {
        Access::Public => None,
        Access::SiteKey => Some(format!("site_{}", secret::random_secret()?)),
    };
    let settings_json = serde_json::to_string(&body.settings)
        .map_err(|e| AppError::Internal(anyhow::Error::new(e).context("serialising settings")))?;
    let model_json = model.spec.to_json();
    let new = db::projects::NewProject {
        user_id: user.id,
        name: &body.name,
        model_json: &model_json,
        settings_json: &settings_json,
        site_key: site_key.as_deref(),
        param_count: i64::try_from(model.param_count()).unwrap_or(i64::MAX),
        flops_per_sample: i64::try_from(model.flops_forward).unwrap_or(i64::MAX),
        now: now_unix(),
    };
    let max_projects = state.settings().max_projects_per_account;
    let Some(id) = db::projects::insert(state.db(), &new, max_projects).await? else {
        return Err(AppError::ProjectQuota { max: max_projects });
    };
    let row = load_owned(&state, &user, id).await?;
    Ok((StatusCode::CREATED, Json(view(&state, &row).await?)))
}

/// The project as the API shows it: the stored row with the live status of a running coordinator.
pub(crate) async fn view(state: &AppState, row: &ProjectRow) -> Result<ProjectView, AppError> {
    let mut view = view_without_metrics(state, row).await?;
    view.metrics = db::training::metrics_history(state.db(), row.id).await?;
    Ok(view)
}

/// [`view`] with an empty metrics history, for a caller that reads the history's new points itself.
pub(crate) async fn view_without_metrics(state: &AppState, row: &ProjectRow) -> Result<ProjectView, AppError> {
    let model = row.model()?;
    let dataset = load_dataset(state, row.id).await?;
    let live = state.training().get(row.id).map(|h| h.status.borrow().clone()).filter(|s| s.running);
    let (epoch, version, progress) = match &live {
        Some(live) => (
            i64::try_from(live.epoch).unwrap_or(i64::MAX),
            i64::try_from(live.version).unwrap_or(i64::MAX),
            live.progress,
        ),
        None if row.state()? == ProjectState::Finished => (row.epoch, row.version, 1.0),
        None => (row.epoch, row.version, row.progress()?),
    };
    Ok(ProjectView {
        id: row.id,
        name: row.name.clone(),
        state: row.state()?,
        epoch,
        version,
        progress,
        settings: row.settings()?,
        site_key: row.site_key.clone(),
        model: ModelSummary {
            params: u64::try_from(row.param_count).unwrap_or(0),
            flops_per_sample: u64::try_from(row.flops_per_sample).unwrap_or(0),
            input_shape: model.spec.input_shape.clone(),
            loss: model.spec.loss.name().to_owned(),
            layers: model.spec.layers.len(),
        },
        dataset,
        metrics: Vec::new(),
        providers: live.map(|l| l.providers).unwrap_or_default(),
        created_at_unix: row.created_at,
        updated_at_unix: row.updated_at,
    })
}

/// Lists the caller's projects with their state and progress.
#[utoipa::path(get, path = "/api/projects", tag = "projects", security(("bearer" = []), ("session" = [])),
    responses(
        (status = 200, description = "The caller's projects, oldest first", body = ProjectList),
        (status = 401, description = "No valid credentials", body = ErrorBody),
    )
)]
pub async fn list_projects(State(state): State<AppState>, user: CurrentUser) -> Result<Json<ProjectList>, AppError> {
    let rows = db::projects::list_of_user(state.db(), user.id).await?;
    let mut projects = Vec::with_capacity(rows.len());
    for row in rows {
        projects.push(ProjectSummary {
            id: row.id,
            name: row.name.clone(),
            state: row.state()?,
            epoch: row.epoch,
            progress: row.progress()?,
            created_at_unix: row.created_at,
        });
    }
    Ok(Json(ProjectList { projects }))
}

/// Shows one project: state, progress, settings, model summary, dataset, metrics and providers.
#[utoipa::path(get, path = "/api/projects/{id}", tag = "projects", security(("bearer" = []), ("session" = [])),
    params(("id" = i64, Path, description = "The project's id")),
    responses(
        (status = 200, description = "The project", body = ProjectView),
        (status = 401, description = "No valid credentials", body = ErrorBody),
        (status = 404, description = "No project with this id belongs to the caller", body = ErrorBody),
    )
)]
pub async fn get_project(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<ProjectView>, AppError> {
    let row = load_owned(&state, &user, id).await?;
    Ok(Json(view(&state, &row).await?))
}

/// Replaces the sites that may embed the project (its `settings.sites`), in any state; a running project takes the
/// new list at once: browsers on a removed site are refused from their next connection.
#[utoipa::path(put, path = "/api/projects/{id}/sites", tag = "projects",
    security(("bearer" = []), ("session" = [])),
    params(("id" = i64, Path, description = "The project's id")),
    request_body = SetSites,
    responses(
        (status = 200, description = "The project with its new sites", body = ProjectView),
        (status = 401, description = "No valid credentials", body = ErrorBody),
        (status = 403, description = "Session cookie without a matching X-CSRF-Token", body = ErrorBody),
        (status = 404, description = "No project with this id belongs to the caller", body = ErrorBody),
        (status = 422, description = "A site that is not an origin, or too many", body = ErrorBody),
    )
)]
pub async fn set_sites(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
    Json(body): Json<SetSites>,
) -> Result<Json<ProjectView>, AppError> {
    let row = load_owned(&state, &user, id).await?;
    let mut settings = row.settings()?;
    settings.sites = body.sites;
    let problems: Vec<FieldError> = settings.problems().into_iter().filter(|p| p.field == "settings.sites").collect();
    if !problems.is_empty() {
        return Err(AppError::Validation(problems));
    }
    settings.sites = settings.canonical_sites();
    let settings_json = serde_json::to_string(&settings)
        .map_err(|e| AppError::Internal(anyhow::Error::new(e).context("serialising settings")))?;
    db::projects::set_settings(state.db(), id, &settings_json, now_unix()).await?;
    state.training().set_sites(id, settings.sites.clone());
    let row = load_owned(&state, &user, id).await?;
    Ok(Json(view(&state, &row).await?))
}

/// Deletes a project, its dataset and every object stored under `projects/{id}/`.
#[utoipa::path(delete, path = "/api/projects/{id}", tag = "projects",
    security(("bearer" = []), ("session" = [])),
    params(("id" = i64, Path, description = "The project's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid credentials", body = ErrorBody),
        (status = 403, description = "Session cookie without a matching X-CSRF-Token", body = ErrorBody),
        (status = 404, description = "No project with this id belongs to the caller", body = ErrorBody),
    )
)]
pub async fn delete_project(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<StatusCode, AppError> {
    let row = load_owned(&state, &user, id).await?;
    state.training().stop(row.id, crate::training::coordinator::Command::Cancel).await;
    // Not while its dataset is being committed, which would store shards after the objects are deleted.
    let Some(_ingesting) = state.begin_ingest(row.id) else {
        return Err(AppError::Conflict {
            message: "the project's dataset is being changed by another request; retry when it is done".into(),
            field: "dataset",
        });
    };
    // The row goes first, so that a failure while deleting objects leaves no project pointing at missing ones.
    db::projects::delete(state.db(), row.id).await?;
    state.store().delete_prefix(&keys::prefix(row.id)).await?;
    let uploads = keys::uploads_dir(state.settings(), row.id);
    match tokio::fs::remove_dir_all(&uploads).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(AppError::Internal(anyhow::Error::new(e).context("removing uploads"))),
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Refuses to run a project whose model or memory is over this server's model budget (settings that may have
/// changed since the project was created).
async fn check_budget(state: &AppState, row: &ProjectRow) -> Result<(), AppError> {
    let settings = state.settings();
    let model = row.model()?;
    let params = model.param_count();
    let flops = model.flops_train() / 3;
    let validation = db::datasets::validation_samples(state.db(), row.id).await?;
    let sample = model.input_shape().elements().unwrap_or(usize::MAX) as u64;
    let batch = u64::from(row.settings()?.batch_size);
    let first_lease = model.flops_train().saturating_mul(batch);
    let memory =
        (params as u64).saturating_mul(20).saturating_add(validation.saturating_mul(sample + 1).saturating_mul(4));
    let over = if params > settings.max_project_params {
        Some(format!(
            "its model has {params} parameters; this server trains at most {} (max_project_params)",
            settings.max_project_params
        ))
    } else if flops > settings.max_project_flops_per_sample {
        Some(format!(
            "its model takes {flops} operations per sample; this server trains at most {} (max_project_flops_per_sample)",
            settings.max_project_flops_per_sample
        ))
    } else if first_lease > settings.max_first_lease_flops {
        Some(format!(
            "one batch of {batch} samples takes {first_lease} operations to train, more than a visitor's device is \
             asked for in its first lease, {} (max_first_lease_flops): use smaller batches",
            settings.max_first_lease_flops
        ))
    } else if memory > settings.max_project_memory_bytes {
        Some(format!(
            "training it would take about {memory} bytes of server memory (20 per parameter and the validation split); \
             this server gives a project at most {} (max_project_memory_bytes)",
            settings.max_project_memory_bytes
        ))
    } else {
        None
    };
    match over {
        Some(message) => Err(AppError::ModelBudget { message }),
        None => Ok(()),
    }
}

async fn transition(state: &AppState, user: &CurrentUser, id: i64, action: Action) -> Result<ProjectView, AppError> {
    let row = load_owned(state, user, id).await?;
    let from = row.state()?;
    let has_dataset = db::datasets::exists(state.db(), row.id).await?;
    let to = action.apply(from, has_dataset).map_err(|message| AppError::Conflict { message, field: "state" })?;
    // Conditional on the state read, so that two moves at once cannot both succeed from the same state, and on the
    // dataset for a start, so that a dataset deleted meanwhile is not started without.
    let max_running = state.settings().max_running_projects_per_account;
    let quota = (to == ProjectState::Running).then_some(max_running);
    if to == ProjectState::Running {
        check_budget(state, &row).await?;
    }
    let moved = db::projects::move_state(
        state.db(),
        row.id,
        from.as_str(),
        to.as_str(),
        action == Action::Start,
        quota,
        now_unix(),
    )
    .await?;
    if !moved {
        if quota.is_some()
            && db::projects::count_running_of_user(state.db(), row.user_id).await?
                >= i64::try_from(max_running).unwrap_or(i64::MAX)
        {
            return Err(AppError::RunningQuota { max: max_running });
        }
        return Err(AppError::Conflict {
            message: "the project's state changed while this request ran; read it again and retry".into(),
            field: "state",
        });
    }
    let row = load_owned(state, user, id).await?;
    match action {
        Action::Start | Action::Resume => {
            if let Err(e) = crate::training::start(state, &row).await {
                // Training cannot run: the project stays where it was.
                db::projects::move_state(state.db(), row.id, to.as_str(), from.as_str(), false, None, now_unix())
                    .await?;
                return Err(e.into());
            }
        }
        Action::Pause => state.training().stop(row.id, crate::training::coordinator::Command::Pause).await,
        Action::Cancel => state.training().stop(row.id, crate::training::coordinator::Command::Cancel).await,
    }
    let row = load_owned(state, user, id).await?;
    view(state, &row).await
}

macro_rules! lifecycle_route {
    ($name:ident, $action:expr, $path:literal, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "projects", security(("bearer" = []), ("session" = [])),
            params(("id" = i64, Path, description = "The project's id")),
            responses(
                (status = 200, description = "The project in its new state", body = ProjectView),
                (status = 401, description = "No valid credentials", body = ErrorBody),
                (status = 403, description = "Session cookie without a matching X-CSRF-Token", body = ErrorBody),
                (status = 404, description = "No project with this id belongs to the caller", body = ErrorBody),
                (status = 409, description = "Not allowed from the project's state, or a start or resume past \
                                              `max_running_projects_per_account` (`running_quota`) or of a \
                                              project over the model budget: `max_project_params`, \
                                              `max_project_flops_per_sample`, `max_project_memory_bytes`, `max_first_lease_flops` \
                                              (`model_budget`)",
                 body = ErrorBody),
            )
        )]
        pub async fn $name(
            State(state): State<AppState>,
            user: CurrentUser,
            Path(id): Path<i64>,
        ) -> Result<Json<ProjectView>, AppError> {
            Ok(Json(transition(&state, &user, id, $action).await?))
        }
    };
}

lifecycle_route!(
    start_project,
    Action::Start,
    "/api/projects/{id}/start",
    "Starts a draft project that has a dataset."
);
lifecycle_route!(pause_project, Action::Pause, "/api/projects/{id}/pause", "Pauses a running project.");
lifecycle_route!(resume_project, Action::Resume, "/api/projects/{id}/resume", "Resumes a paused project.");
lifecycle_route!(
    cancel_project,
    Action::Cancel,
    "/api/projects/{id}/cancel",
    "Cancels a running or paused project for good."
);

/// Downloads the trained model as safetensors, streamed from the object store.
#[utoipa::path(get, path = "/api/projects/{id}/model", tag = "projects", security(("bearer" = []), ("session" = [])),
    params(("id" = i64, Path, description = "The project's id")),
    responses(
        (status = 200, description = "The trained parameters", content_type = "application/octet-stream"),
        (status = 401, description = "No valid credentials", body = ErrorBody),
        (status = 404, description = "No such project, or no trained model yet", body = ErrorBody),
    )
)]
pub async fn download_model(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Response, AppError> {
    let row = load_owned(&state, &user, id).await?;
    let stream = match state.store().get_stream(&keys::model_key(row.id)).await {
        Ok(stream) => stream,
        Err(StoreError::NotFound(_)) => {
            return Err(AppError::Missing(format!(
                "the project has no trained model yet (it is {}); it can be downloaded once training finishes",
                row.state()?.as_str()
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(stream.reader));
    let disposition = format!("attachment; filename=\"project-{}.safetensors\"", row.id);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, stream.size_bytes.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

/// The project's model spec in DAIG JSON (a Keras import as converted).
#[utoipa::path(get, path = "/api/projects/{id}/model/spec", tag = "projects",
    security(("bearer" = []), ("session" = [])),
    params(("id" = i64, Path, description = "The project's id")),
    responses(
        (status = 200, description = "The model in DAIG JSON", content_type = "application/json"),
        (status = 401, description = "No valid credentials", body = ErrorBody),
        (status = 404, description = "No project with this id belongs to the caller", body = ErrorBody),
    )
)]
pub async fn model_spec(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Response, AppError> {
    let row = load_owned(&state, &user, id).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], row.model_json).into_response())
}
