//! The project domain: the rules shared with clients (states and moves, access and sites, training settings with
//! their defaults and ranges, from `daig_shared::api`), the stored project ([`ProjectRow`]) read as those types,
//! loading a caller's project and its dataset, and the object-key layout ([`keys`]).
//!
//! The API handlers and the training code both build on this module; neither imports the other's rules.

pub mod keys;

use daig_shared::api::project::DatasetSummary;
use daig_shared::model::{self, Model};

pub use crate::db::projects::ProjectRow;
pub use daig_shared::api::FieldError;
pub use daig_shared::api::project::{Action, MAX_SITES, NAME_MAX_CHARS, ProjectState, parse_origin};
pub use daig_shared::api::settings::{Access, Aggregation, SETTINGS, SettingInfo, TrainingSettings};

use crate::auth::{CurrentUser, Owned};
use crate::db;
use crate::error::AppError;
use crate::state::AppState;

/// A stored project that no longer reads: a state, settings or model the database should not hold.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct CorruptProject(pub anyhow::Error);

impl From<CorruptProject> for AppError {
    fn from(e: CorruptProject) -> AppError {
        AppError::Internal(e.0)
    }
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
    /// [`CorruptProject`] for a state the database should not hold.
    pub fn state(&self) -> Result<ProjectState, CorruptProject> {
        ProjectState::parse(&self.state)
            .ok_or_else(|| CorruptProject(anyhow::anyhow!("unknown project state {:?} in the database", self.state)))
    }

    /// The stored settings.
    ///
    /// # Errors
    /// [`CorruptProject`] if they no longer parse.
    pub fn settings(&self) -> Result<TrainingSettings, CorruptProject> {
        serde_json::from_str(&self.settings_json)
            .map_err(|e| CorruptProject(anyhow::Error::new(e).context("stored project settings")))
    }

    /// The stored model, validated again.
    ///
    /// # Errors
    /// [`CorruptProject`] if it no longer validates.
    pub fn model(&self) -> Result<Model, CorruptProject> {
        Model::from_json(&self.model_json, &model::Limits::default())
            .map_err(|e| CorruptProject(anyhow::anyhow!("stored model does not validate: {e}")))
    }

    /// Completed epochs over the configured ones, from 0 to 1.
    ///
    /// # Errors
    /// [`CorruptProject`] if the settings no longer parse.
    pub fn progress(&self) -> Result<f64, CorruptProject> {
        let epochs = f64::from(self.settings()?.epochs.max(1));
        Ok((self.epoch as f64 / epochs).clamp(0.0, 1.0))
    }
}

/// The caller's project `id`: 404 when it is missing or someone else's.
///
/// # Errors
/// [`AppError::NotFound`], or a database error.
pub async fn load_owned(state: &AppState, user: &CurrentUser, id: i64) -> Result<ProjectRow, AppError> {
    let row = db::projects::get(state.db(), id).await?;
    user.owned(row, "project")
}

/// The committed dataset of project `id`, if it has one.
///
/// # Errors
/// A database error, or [`AppError::Internal`] for a stored sample shape that does not parse.
pub async fn load_dataset(state: &AppState, id: i64) -> Result<Option<DatasetSummary>, AppError> {
    let Some(stored) = db::datasets::get(state.db(), id).await? else {
        return Ok(None);
    };
    let mut dataset = DatasetSummary {
        format: stored.format,
        feature_dtype: stored.feature_dtype,
        sample_shape: serde_json::from_str(&stored.sample_shape)
            .map_err(|e| AppError::Internal(anyhow::Error::new(e).context("stored sample shape")))?,
        train_samples: stored.train_samples,
        validation_samples: stored.validation_samples,
        train_shards: 0,
        validation_shards: 0,
    };
    for (role, count) in db::datasets::shard_counts(state.db(), id).await? {
        match role.as_str() {
            "train" => dataset.train_shards = count,
            _ => dataset.validation_shards = count,
        }
    }
    Ok(Some(dataset))
}
