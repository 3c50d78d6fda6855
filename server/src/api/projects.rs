//! Projects: `POST /api/projects` creates one from a model and training settings, `GET /api/projects` lists the
//! caller's, `GET`/`DELETE /api/projects/{id}` show and remove one, `POST /api/projects/{id}/{start,pause,resume,
//! cancel}` move it through its states, and `GET /api/projects/{id}/model` and `/model/spec` download the trained
//! model and its spec.
//!
//! States: `draft` (being set up; the dataset is uploaded here) -> `running` (needs a committed dataset) <->
//! `paused`; `running` or `paused` -> `cancelled`. `finished` is reached by training (a later issue). Any other
//! move is answered 409 saying what is allowed.

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use daig_shared::data::Normalization;
use daig_shared::model::{self, Loss, Model, ModelSpec, SpecError};
use daig_shared::train::{Method, OptimizerConfig, Schedule};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{CurrentUser, Owned, secret};
use crate::db::now_unix;
use crate::error::{AppError, ErrorBody, FieldError};
use crate::extract::{Json, Path};
use crate::state::AppState;
use crate::store::StoreError;

/// Longest project name, in characters.
pub const NAME_MAX_CHARS: usize = 100;

/// Where a project is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProjectState {
    /// Being set up: settings fixed, dataset not yet committed or not yet started.
    Draft,
    /// Handing out work to providers.
    Running,
    /// Stopped by the requestor; resumable.
    Paused,
    /// Stopped for good by the requestor.
    Cancelled,
    /// Trained; the model can be downloaded.
    Finished,
}

impl ProjectState {
    /// The name stored in the database and sent in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Cancelled => "cancelled",
            Self::Finished => "finished",
        }
    }

    fn parse(text: &str) -> Result<Self, AppError> {
        Ok(match text {
            "draft" => Self::Draft,
            "running" => Self::Running,
            "paused" => Self::Paused,
            "cancelled" => Self::Cancelled,
            "finished" => Self::Finished,
            other => {
                return Err(AppError::Internal(anyhow::anyhow!("unknown project state {other:?} in the database")));
            }
        })
    }
}

/// A move requested through `POST /api/projects/{id}/{action}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Pause,
    Resume,
    Cancel,
}

impl Action {
    /// The route's last segment and the verb in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Cancel => "cancel",
        }
    }

    /// The state `action` leads to from `from`, or the 409 message saying why it cannot be taken.
    pub fn apply(self, from: ProjectState, has_dataset: bool) -> Result<ProjectState, String> {
        use ProjectState::{Cancelled, Draft, Paused, Running};
        match (self, from) {
            (Self::Start, Draft) if has_dataset => Ok(Running),
            (Self::Start, Draft) => {
                Err("the project has no dataset yet: upload its features and labels before starting it".into())
            }
            (Self::Pause, Running) | (Self::Cancel, Running | Paused) => {
                Ok(if self == Self::Pause { Paused } else { Cancelled })
            }
            (Self::Resume, Paused) => Ok(Running),
            _ => {
                let allowed = match self {
                    Self::Start => "draft",
                    Self::Pause => "running",
                    Self::Resume => "paused",
                    Self::Cancel => "running or paused",
                };
                Err(format!(
                    "cannot {} a project that is {}; only a {allowed} project can be",
                    self.name(),
                    from.as_str()
                ))
            }
        }
    }
}

/// How contributions are combined into one update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// The mean of the `k` contributions.
    #[default]
    Mean,
}

/// Who may contribute to a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Any visitor of the contribute page.
    #[default]
    Public,
    /// Only visitors of sites that embed the project's site key.
    SiteKey,
}

/// How a project is trained. Every field is optional in a request and has the default shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingSettings {
    /// Samples per local step on a provider (1..=4096) [32].
    pub batch_size: u32,
    /// Contributions averaged into one update (1..=1024) [4].
    pub k: u32,
    /// Local steps a provider takes before it sends a contribution (1..=1000) [1].
    pub local_steps: u32,
    /// How many versions behind a contribution may be and still count (0..=100) [2].
    pub max_staleness: u32,
    /// Passes over the training set (1..=10000) [10].
    pub epochs: u32,
    /// The server's optimiser (shared `OptimizerConfig`) [Adam, learning rate 0.001].
    #[schema(value_type = Object)]
    pub optimizer: OptimizerConfig,
    /// How contributions are combined [mean].
    pub aggregation: Aggregation,
    /// Fraction of samples held out for validation (0 to 0.5) [0.1].
    pub validation_fraction: f64,
    /// Seed of the shuffle, the split and the initial parameters [0].
    pub seed: u64,
    /// Providers training at once (1..=100000) [64].
    pub max_providers: u32,
    /// Samples per dataset shard (1..=65536) [1024].
    pub samples_per_shard: u32,
    /// Who may contribute [public].
    pub access: Access,
    /// The learning rate of the providers' local SGD steps [1]. With one local step and 1, a contribution is
    /// minus the gradient and the server optimiser's learning rate governs; with several local steps, set it
    /// (e.g. 0.05) and use server SGD at learning rate 1 for model averaging. (0 to 100]
    pub local_learning_rate: f32,
    /// How features become model inputs [null: integer features scaled from their type's range to 0..1, float
    /// features as they are]; e.g. `{"kind": "standardize", "mean": 0.13, "std": 0.31}` or `{"kind": "scale", "min": 0, "max": 255}`.
    #[schema(value_type = Option<Object>)]
    pub normalization: Option<Normalization>,
    /// Updates between two checkpoints (1..=100000) [50]; projects are also checkpointed at every epoch's end
    /// and when paused.
    pub checkpoint_every: u32,
    /// Stop early once the validation accuracy reaches this (0 to 1) [null: train every epoch].
    pub target_accuracy: Option<f64>,
    /// The origins of the sites that may embed a `site_key` project, like `https://blog.example.org` (scheme,
    /// host and port only; at most 64) [none]. Browsers on other origins are refused at the provider socket and
    /// by CORS; providers outside a browser send no origin and need only the site key. Public projects take
    /// every origin.
    pub sites: Vec<String>,
}

impl Default for TrainingSettings {
    fn default() -> Self {
        Self {
            batch_size: 32,
            k: 4,
            local_steps: 1,
            max_staleness: 2,
            epochs: 10,
            optimizer: OptimizerConfig {
                method: Method::adam(),
                learning_rate: 0.001,
                schedule: Schedule::Constant,
                weight_decay: 0.0,
                clip_norm: None,
            },
            aggregation: Aggregation::Mean,
            validation_fraction: 0.1,
            seed: 0,
            max_providers: 64,
            samples_per_shard: 1024,
            access: Access::Public,
            local_learning_rate: 1.0,
            normalization: None,
            checkpoint_every: 50,
            target_accuracy: None,
            sites: Vec::new(),
        }
    }
}

impl TrainingSettings {
    /// Every value out of range, as field errors.
    pub fn problems(&self) -> Vec<FieldError> {
        let mut problems = Vec::new();
        let mut range = |field: &'static str, value: u64, lo: u64, hi: u64| {
            if !(lo..=hi).contains(&value) {
                problems.push(FieldError { field, message: format!("must be in {lo}..={hi}, not {value}") });
            }
        };
        range("settings.batch_size", self.batch_size.into(), 1, 4096);
        range("settings.k", self.k.into(), 1, 1024);
        range("settings.local_steps", self.local_steps.into(), 1, 1000);
        range("settings.max_staleness", self.max_staleness.into(), 0, 100);
        range("settings.epochs", self.epochs.into(), 1, 10_000);
        range("settings.max_providers", self.max_providers.into(), 1, 100_000);
        range("settings.samples_per_shard", self.samples_per_shard.into(), 1, 65_536);
        range("settings.checkpoint_every", self.checkpoint_every.into(), 1, 100_000);
        if !(0.0..=0.5).contains(&self.validation_fraction) {
            problems.push(FieldError {
                field: "settings.validation_fraction",
                message: format!("must be a number from 0 to 0.5, not {}", self.validation_fraction),
            });
        }
        if !(self.local_learning_rate > 0.0 && self.local_learning_rate <= 100.0) {
            problems.push(FieldError {
                field: "settings.local_learning_rate",
                message: format!("must be above 0 and at most 100, not {}", self.local_learning_rate),
            });
        }
        if let Some(target) = self.target_accuracy
            && !(0.0..=1.0).contains(&target)
        {
            problems.push(FieldError {
                field: "settings.target_accuracy",
                message: format!("must be a number from 0 to 1, not {target}"),
            });
        }
        if let Some(n) = &self.normalization
            && let Err(e) = n.affine(daig_shared::data::Dtype::F32).or_else(|e| match n {
                Normalization::Scale { min: None, .. } | Normalization::Scale { max: None, .. } => Ok((0.0, 1.0)),
                _ => Err(e),
            })
        {
            problems.push(FieldError { field: "settings.normalization", message: e.to_string() });
        }
        if let Err(e) = self.optimizer.validate() {
            problems.push(FieldError { field: "settings.optimizer", message: e.to_string() });
        }
        if self.sites.len() > MAX_SITES {
            problems.push(FieldError {
                field: "settings.sites",
                message: format!("at most {MAX_SITES} sites, not {}", self.sites.len()),
            });
        }
        for site in self.sites.iter().take(MAX_SITES) {
            if let Err(e) = parse_origin(site) {
                problems.push(FieldError { field: "settings.sites", message: e });
            }
        }
        problems
    }

    /// The sites as origins in canonical form (lowercase, default ports dropped), after [`Self::problems`] passed.
    pub fn canonical_sites(&self) -> Vec<String> {
        self.sites.iter().filter_map(|s| parse_origin(s).ok()).collect()
    }
}

/// The most sites a project lists.
pub const MAX_SITES: usize = 64;

/// An origin as browsers send it in `Origin` (`scheme://host[:port]`), canonical: lowercase, without the scheme's
/// default port.
///
/// # Errors
/// What is wrong with it, for a field error.
pub fn parse_origin(origin: &str) -> Result<String, String> {
    let bad = |why: &str| Err(format!("{origin:?} is not a site origin like https://blog.example.org: {why}"));
    if origin.len() > 255 {
        return bad("longer than 255 characters");
    }
    let lower = origin.trim_end_matches('/').to_ascii_lowercase();
    let Some((scheme, rest)) = lower.split_once("://") else { return bad("no scheme") };
    let default_port = match scheme {
        "http" => "80",
        "https" => "443",
        _ => return bad("the scheme must be http or https"),
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) || rest.chars().any(|c| c.is_whitespace()) {
        return bad("it must be a scheme and a host (and a port), without a path");
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || rest.starts_with('[') => {
            if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().is_err() {
                return bad("the port is not a number from 0 to 65535");
            }
            (host, Some(port))
        }
        _ => (rest, None),
    };
    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b)) {
        return bad("the host has characters a host name cannot have");
    }
    Ok(match port {
        Some(port) if port != default_port => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// A project to create: a name, a model (DAIG JSON in `model`, or Keras `model.to_json()` in `keras_model` with a
/// `loss`) and training settings.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    /// 1 to 100 characters, no control characters.
    pub name: String,
    /// The model in DAIG JSON (`input_shape`, `layers`, `loss`).
    #[schema(value_type = Option<Object>)]
    pub model: Option<serde_json::Value>,
    /// A Keras `Sequential` model as `model.to_json()` gives it; needs `loss`.
    pub keras_model: Option<String>,
    /// The loss for `keras_model`: `cross_entropy`, `mean_squared_error` or `binary_cross_entropy` (Keras names
    /// such as `sparse_categorical_crossentropy` are accepted too).
    pub loss: Option<String>,
    /// Training settings; every field has a default.
    #[serde(default)]
    pub settings: TrainingSettings,
}

/// The model's size and cost.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelSummary {
    /// Trainable parameters.
    pub params: u64,
    /// Forward-pass FLOPs per sample.
    pub flops_per_sample: u64,
    pub input_shape: Vec<usize>,
    pub loss: String,
    pub layers: usize,
}

/// A committed dataset.
#[derive(Debug, Serialize, ToSchema)]
pub struct DatasetSummary {
    /// The features' upload format: `npy`, `npz`, `idx` or `csv`.
    pub format: String,
    /// The features' element type, e.g. `u1` or `f4`.
    pub feature_dtype: String,
    /// The shape of one sample.
    pub sample_shape: Vec<usize>,
    pub train_samples: i64,
    pub validation_samples: i64,
    pub train_shards: i64,
    pub validation_shards: i64,
}

/// A project in a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectSummary {
    pub id: i64,
    pub name: String,
    pub state: ProjectState,
    pub epoch: i64,
    /// Completed epochs over the configured ones, from 0 to 1.
    pub progress: f64,
    pub created_at_unix: i64,
}

/// The caller's projects, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectList {
    pub projects: Vec<ProjectSummary>,
}

/// A project in full.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectView {
    pub id: i64,
    pub name: String,
    pub state: ProjectState,
    pub epoch: i64,
    /// The parameter version: updates applied so far.
    pub version: i64,
    /// Completed epochs over the configured ones, from 0 to 1.
    pub progress: f64,
    pub settings: TrainingSettings,
    /// The key to embed for `site_key` access; `null` for public projects.
    pub site_key: Option<String>,
    pub model: ModelSummary,
    /// The committed dataset, `null` until one is.
    pub dataset: Option<DatasetSummary>,
    /// Validation loss and accuracy (and the training loss) over versions, oldest first.
    pub metrics: Vec<crate::training::MetricPoint>,
    /// Providers training the project now.
    pub providers: Vec<crate::training::LiveProvider>,
    pub created_at_unix: i64,
    pub updated_at_unix: i64,
}

/// A project as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProjectRow {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    pub state: String,
    pub model_json: String,
    pub settings_json: String,
    pub site_key: Option<String>,
    pub param_count: i64,
    pub flops_per_sample: i64,
    pub epoch: i64,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Owned for ProjectRow {
    fn owner_id(&self) -> i64 {
        self.user_id
    }
}

impl ProjectRow {
    /// The stored state.
    ///
    /// # Errors
    /// [`AppError::Internal`] for a state the database should not hold.
    pub fn state(&self) -> Result<ProjectState, AppError> {
        ProjectState::parse(&self.state)
    }

    /// The stored settings.
    ///
    /// # Errors
    /// [`AppError::Internal`] if they no longer parse.
    pub fn settings(&self) -> Result<TrainingSettings, AppError> {
        serde_json::from_str(&self.settings_json)
            .map_err(|e| AppError::Internal(anyhow::Error::new(e).context("stored project settings")))
    }

    /// The stored model, validated again.
    ///
    /// # Errors
    /// [`AppError::Internal`] if it no longer validates.
    pub fn model(&self) -> Result<Model, AppError> {
        Model::from_json(&self.model_json, &model::Limits::default())
            .map_err(|e| AppError::Internal(anyhow::anyhow!("stored model does not validate: {e}")))
    }

    pub fn progress(&self) -> Result<f64, AppError> {
        let epochs = f64::from(self.settings()?.epochs.max(1));
        Ok((self.epoch as f64 / epochs).clamp(0.0, 1.0))
    }
}

/// The caller's project `id`: 404 when it is missing or someone else's.
///
/// # Errors
/// [`AppError::NotFound`], or a database error.
pub async fn load_owned(state: &AppState, user: &CurrentUser, id: i64) -> Result<ProjectRow, AppError> {
    let row = sqlx::query_as::<_, ProjectRow>("SELECT * FROM projects WHERE id = ?")
        .bind(id)
        .fetch_optional(state.db())
        .await?;
    user.owned(row, "project")
}

/// The object-store prefix holding everything of project `id`.
pub fn prefix(id: i64) -> String {
    format!("projects/{id}")
}

/// The key of the trained model.
pub fn model_key(id: i64) -> String {
    format!("projects/{id}/model/model.safetensors")
}

/// Validates the model part of a request, pushing model errors to `model_errors` and field errors to `fields`.
fn parse_model(body: &CreateProject, model_errors: &mut Vec<SpecError>, fields: &mut Vec<FieldError>) -> Option<Model> {
    let limits = model::Limits::default();
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
    match spec.and_then(|spec| Model::new(spec, &limits)) {
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
    let model = parse_model(&body, &mut model_errors, &mut fields);
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
    let now = now_unix();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO projects (user_id, name, state, model_json, settings_json, site_key, param_count,
                               flops_per_sample, created_at, updated_at)
         VALUES (?, ?, 'draft', ?, ?, ?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(user.id)
    .bind(&body.name)
    .bind(model.spec.to_json())
    .bind(settings_json)
    .bind(site_key)
    .bind(i64::try_from(model.param_count()).unwrap_or(i64::MAX))
    .bind(i64::try_from(model.flops_forward).unwrap_or(i64::MAX))
    .bind(now)
    .bind(now)
    .fetch_one(state.db())
    .await?;
    let row = load_owned(&state, &user, id).await?;
    Ok((StatusCode::CREATED, Json(view(&state, &row).await?)))
}

/// The project as the API shows it: the stored row with the live status of a running coordinator.
pub(crate) async fn view(state: &AppState, row: &ProjectRow) -> Result<ProjectView, AppError> {
    let model = row.model()?;
    let dataset = super::datasets::load_summary(state, row.id).await?;
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
        metrics: crate::training::metrics_history(state, row.id).await?,
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
    let rows = sqlx::query_as::<_, ProjectRow>("SELECT * FROM projects WHERE user_id = ? ORDER BY id")
        .bind(user.id)
        .fetch_all(state.db())
        .await?;
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

/// A project's new list of sites.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetSites {
    /// Origins like `https://blog.example.org` (at most 64); replaces the list.
    pub sites: Vec<String>,
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
    sqlx::query("UPDATE projects SET settings_json = ?, updated_at = ? WHERE id = ?")
        .bind(settings_json)
        .bind(now_unix())
        .bind(id)
        .execute(state.db())
        .await?;
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
    sqlx::query("DELETE FROM projects WHERE id = ?").bind(row.id).execute(state.db()).await?;
    state.store().delete_prefix(&prefix(row.id)).await?;
    let uploads = state.settings().uploads_dir().join(row.id.to_string());
    match tokio::fs::remove_dir_all(&uploads).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(AppError::Internal(anyhow::Error::new(e).context("removing uploads"))),
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn transition(state: &AppState, user: &CurrentUser, id: i64, action: Action) -> Result<ProjectView, AppError> {
    let row = load_owned(state, user, id).await?;
    let from = row.state()?;
    let has_dataset: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM datasets WHERE project_id = ?)")
        .bind(row.id)
        .fetch_one(state.db())
        .await?;
    let to = action.apply(from, has_dataset).map_err(|message| AppError::Conflict { message, field: "state" })?;
    // Conditional on the state read, so that two moves at once cannot both succeed from the same state, and on the
    // dataset for a start, so that a dataset deleted meanwhile is not started without.
    let done = sqlx::query(
        "UPDATE projects SET state = ?, updated_at = ? WHERE id = ? AND state = ?
         AND (? = 0 OR EXISTS (SELECT 1 FROM datasets WHERE project_id = projects.id))",
    )
    .bind(to.as_str())
    .bind(now_unix())
    .bind(row.id)
    .bind(from.as_str())
    .bind(action == Action::Start)
    .execute(state.db())
    .await?;
    if done.rows_affected() == 0 {
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
                sqlx::query("UPDATE projects SET state = ?, updated_at = ? WHERE id = ? AND state = ?")
                    .bind(from.as_str())
                    .bind(now_unix())
                    .bind(row.id)
                    .bind(to.as_str())
                    .execute(state.db())
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
                (status = 409, description = "Not allowed from the project's state", body = ErrorBody),
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
    let stream = match state.store().get_stream(&model_key(row.id)).await {
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
