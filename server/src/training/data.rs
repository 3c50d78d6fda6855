//! What the coordinator loads of a project's dataset: the train shards' hashes and keys (providers fetch the
//! bytes), and the validation split decoded to `f32` for the reference trainer.

use std::collections::HashMap;

use daig_shared::data::shard::ShardLabel;
use daig_shared::data::{Dtype, Normalization, ShardView};
use daig_shared::model::Model;
use daig_shared::train::{Batch, Evaluation, Labels, Trainer};
use daig_shared::wire::{Normalisation, ShardHash};
use ndarray::{Array2, ArrayView2};

use super::error::TrainingError;
use super::plan::TrainShard;
use crate::db;
use crate::state::AppState;

/// Where a shard's bytes are.
#[derive(Debug, Clone)]
pub struct ShardObject {
    pub key: String,
    pub size_bytes: u64,
}

/// The dataset as training needs it.
pub struct ProjectData {
    pub train: Vec<TrainShard>,
    /// The train shards by hash: what a provider may request while a lease names it (validation shards are
    /// never sent).
    pub objects: HashMap<ShardHash, ShardObject>,
    /// The project's normalisation as the wire states it: `x' = (x - offset) * scale`.
    pub wire_normalisation: Normalisation,
    pub validation: Option<Validation>,
}

/// The validation split, ready for [`Trainer::evaluate`].
pub struct Validation {
    pub x: Array2<f32>,
    pub labels: ValidationLabels,
}

pub enum ValidationLabels {
    Classes(Vec<u32>),
    Values(Array2<f32>),
}

impl Validation {
    /// Evaluates `params` with `trainer` on the whole split.
    pub fn evaluate(&self, trainer: &mut Trainer, params: &[f32]) -> Result<Evaluation, String> {
        let y = match &self.labels {
            ValidationLabels::Classes(c) => Labels::Classes(c),
            ValidationLabels::Values(v) => Labels::Values(v.view()),
        };
        trainer.evaluate(params, &Batch { x: self.x.view(), y }).map_err(|e| e.to_string())
    }
}

fn internal(context: &str, e: impl std::fmt::Display) -> TrainingError {
    TrainingError::other(context, e)
}

/// Loads the shard list of project `id` and decodes its validation shards.
///
/// # Errors
/// A missing or corrupt shard, or a database error.
pub async fn load(
    state: &AppState,
    id: i64,
    model: &Model,
    normalization: Option<&Normalization>,
) -> Result<ProjectData, TrainingError> {
    let rows = db::datasets::shards(state.db(), id).await?;
    let dtype_name = db::datasets::feature_dtype(state.db(), id).await?.ok_or(TrainingError::NoDataset)?;
    let mut train = Vec::new();
    let mut objects = HashMap::new();
    let mut validation_keys = Vec::new();
    let dtype = dtype_from_name(&dtype_name);
    let normalization = resolve(normalization, dtype);
    for db::datasets::ShardRow {
        role,
        number,
        object_key: key,
        sha256: sha,
        sample_count: samples,
        size_bytes: size,
    } in rows
    {
        let hash: ShardHash = sha.parse().map_err(|e| internal(&format!("stored shard hash {sha:?}"), e))?;
        if role == "train" {
            objects.insert(hash, ShardObject { key: key.clone(), size_bytes: u64::try_from(size).unwrap_or(0) });
            train.push(TrainShard {
                number: u32::try_from(number).unwrap_or(u32::MAX),
                hash,
                samples: u32::try_from(samples).unwrap_or(0),
            });
        } else {
            validation_keys.push((key, u64::try_from(size).unwrap_or(0)));
        }
    }
    if train.is_empty() {
        return Err(internal("dataset", "no train shards are registered"));
    }
    let mut features: Vec<f32> = Vec::new();
    let mut classes = Vec::new();
    let mut values: Vec<f32> = Vec::new();
    let mut value_width = 0;
    let width = model.spec.input_shape.iter().product::<usize>();
    let mut rows_read = 0usize;
    for (key, size) in &validation_keys {
        let bytes = state.store().get(key, *size).await?;
        let view = ShardView::decode(&bytes).map_err(|e| internal("validation shard", e))?;
        if view.sample_elements() != width || view.header().feature_dtype != dtype {
            return Err(internal("validation shard", "its samples do not fit the model's input or the dataset's type"));
        }
        let start = features.len();
        features.resize(start + view.len() * width, 0.0);
        for i in 0..view.len() {
            view.sample_f32(i, &normalization, &mut features[start + i * width..start + (i + 1) * width])
                .map_err(|e| internal("validation shard", e))?;
            match view.label(i).map_err(|e| internal("validation shard", e))? {
                ShardLabel::Class(c) => classes.push(c),
                label @ ShardLabel::Values(_) => {
                    let v = label.values();
                    value_width = v.len();
                    values.extend(v);
                }
            }
        }
        rows_read += view.len();
    }
    let (sub, div) = normalization.affine(dtype).map_err(|e| internal("normalisation", e))?;
    let wire_normalisation = Normalisation::Global { offset: sub, scale: 1.0 / div };
    let validation = (rows_read > 0)
        .then(|| -> Result<Validation, TrainingError> {
            let x = Array2::from_shape_vec((rows_read, width), features).map_err(|e| internal("validation", e))?;
            let labels = if classes.len() == rows_read {
                ValidationLabels::Classes(classes)
            } else {
                ValidationLabels::Values(
                    ArrayView2::from_shape((rows_read, value_width), &values)
                        .map_err(|e| internal("validation", e))?
                        .to_owned(),
                )
            };
            Ok(Validation { x, labels })
        })
        .transpose()?;
    Ok(ProjectData { train, objects, wire_normalisation, validation })
}

/// The normalisation a project trains with: its setting, else integer features scaled from their dtype's range
/// to 0..1 and floats as they are.
pub fn resolve(setting: Option<&Normalization>, dtype: Dtype) -> Normalization {
    match setting {
        Some(n) => *n,
        None if dtype.is_integer() => Normalization::Scale { min: None, max: None },
        None => Normalization::None,
    }
}

fn dtype_from_name(name: &str) -> Dtype {
    Dtype::ALL.into_iter().find(|d| d.name() == name).unwrap_or(Dtype::F32)
}
