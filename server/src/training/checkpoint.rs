//! Checkpoints: the parameters as safetensors (a file users can load) and the trainer state (optimiser, version,
//! epoch cursor) as postcard, stored under `projects/<id>/checkpoints/<version>/`, and registered in the
//! `checkpoints` table only once both objects are stored, in the same transaction that records the project's
//! version. A crash between the two leaves unregistered objects that the next checkpoint of that version
//! overwrites.

use std::collections::BTreeMap;

use bytes::Bytes;
use daig_shared::model::Model;
use daig_shared::params::{from_safetensors, to_safetensors};
use daig_shared::train::OptimizerState;
use serde::{Deserialize, Serialize};

use super::error::TrainingError;
use super::plan::Unit;
use crate::db::{self, now_unix};
use crate::project::keys;
use crate::state::AppState;

/// Checkpoints kept per project; older ones are deleted.
pub const KEEP: usize = 3;

/// The trainer state besides the parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub version: u64,
    /// The epoch in progress (equal to the epoch count once training is done).
    pub epoch: u64,
    /// The batches of `epoch` already applied.
    pub applied: Vec<Unit>,
    /// Training samples applied since the start.
    pub samples_applied: u64,
    pub optimizer: OptimizerState,
}

fn internal(context: &str, e: impl std::fmt::Display) -> TrainingError {
    TrainingError::other(context, e)
}

/// Parameters as a safetensors file with the model spec and version in its metadata.
///
/// # Errors
/// Parameters that do not fit the model.
pub fn params_file(model: &Model, params: &[f32], version: u64) -> Result<Vec<u8>, TrainingError> {
    let metadata = BTreeMap::from([
        ("daig.model".to_owned(), model.spec.to_json()),
        ("daig.version".to_owned(), version.to_string()),
    ]);
    to_safetensors(&model.params, params, metadata).map_err(|e| internal("writing parameters", e))
}

/// Stores a checkpoint of `state` and records it, with the project's version and epoch, in one transaction;
/// then removes checkpoints beyond the newest [`KEEP`].
///
/// # Errors
/// A store or database failure; the previous checkpoint stays the one to resume from.
pub async fn save(
    state: &AppState,
    project: i64,
    model: &Model,
    params: &[f32],
    trainer: &TrainerState,
) -> Result<(), TrainingError> {
    let (params_key, state_key) = keys::checkpoint_keys(project, trainer.version);
    let file = params_file(model, params, trainer.version)?;
    let blob = postcard::to_allocvec(trainer).map_err(|e| internal("encoding trainer state", e))?;
    let size = (file.len() + blob.len()) as u64;
    state.store().put(&state_key, Bytes::from(blob)).await?;
    state.store().put(&params_key, Bytes::from(file)).await?;
    let mut tx = state.db().begin().await?;
    let checkpoint = db::training::NewCheckpoint {
        version: trainer.version,
        epoch: trainer.epoch,
        params_key: &params_key,
        state_key: &state_key,
        size_bytes: size,
    };
    db::training::record_checkpoint(&mut tx, project, &checkpoint, now_unix()).await?;
    tx.commit().await?;
    let old = db::training::checkpoints_beyond(state.db(), project, KEEP).await?;
    for (version, params_key, state_key) in old {
        db::training::delete_checkpoint(state.db(), project, version).await?;
        // Best effort: an object left behind is removed with the project.
        for key in [params_key, state_key] {
            if let Err(e) = state.store().delete(&key).await {
                tracing::warn!(project, key, "cannot delete an old checkpoint object: {e}");
            }
        }
    }
    Ok(())
}

/// The project's latest checkpoint, if it has one.
///
/// # Errors
/// A registered checkpoint that cannot be read or does not fit the model.
pub async fn load_latest(
    state: &AppState,
    project: i64,
    model: &Model,
) -> Result<Option<(Vec<f32>, TrainerState)>, TrainingError> {
    let version = db::training::checkpoint_version(state.db(), project).await?;
    let Some(version) = version else { return Ok(None) };
    let row = db::training::checkpoint_keys(state.db(), project, version).await?;
    let Some((params_key, state_key)) = row else {
        return Err(internal("checkpoint", format!("version {version} is recorded but not registered")));
    };
    let max = 64 + 16 * model.param_count() as u64 + (1 << 24);
    let blob = state.store().get(&state_key, max).await?;
    let trainer: TrainerState = postcard::from_bytes(&blob).map_err(|e| internal("reading trainer state", e))?;
    let file = state.store().get(&params_key, max).await?;
    let params = from_safetensors(&model.params, &file).map_err(|e| internal("reading checkpoint parameters", e))?;
    Ok(Some((params, trainer)))
}
