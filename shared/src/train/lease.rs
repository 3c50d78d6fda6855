//! The computation a lease fixes, written once for every side that runs it: providers train it, and the
//! server recomputes it to check a contribution.
//!
//! A lease names the parameter version, the samples (shard and index, in order), the local steps and the
//! learning rate; the dropout masks are seeded with the lease id from step 0 and the minibatches are taken from
//! the samples in order ([`Trainer::train_local`]). [`gather`] turns the samples into the normalised features
//! and labels every engine trains on, and [`recompute`] runs the reference trainer over them, so that a
//! contribution can be compared with what its lease asked for ([`super::verify`]).

use std::borrow::Borrow;

use ndarray::ArrayView2;

use super::{Batch, DropoutKey, Labels, LocalConfig, LocalResult, TrainError, Trainer};
use crate::data::{Normalization, ShardLabels, ShardView};
use crate::model::{Loss, Model};
use crate::wire::{Normalisation, ShardHash, ShardSamples};

/// A lease's samples, gathered in lease order and normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseInputs {
    /// `[samples, input elements]`, normalised.
    pub features: Vec<f32>,
    /// `[samples, 1]` class indices (as `f32`) for cross-entropy, `[samples, outputs]` targets otherwise: the
    /// layout the GPU engine loads.
    pub labels: Vec<f32>,
    pub samples: usize,
}

/// Gathers the samples `selection` names, in order, into normalised features and labels; `shard` looks up a
/// shard's bytes by hash.
///
/// # Errors
/// A shard that `shard` does not have, that is not a valid shard file, whose samples or labels do not fit the
/// model, or that lacks an index.
pub fn gather<B: Borrow<[u8]>>(
    model: &Model,
    normalisation: &Normalisation,
    selection: &[ShardSamples],
    mut shard: impl FnMut(ShardHash) -> Option<B>,
) -> Result<LeaseInputs, String> {
    let inputs = model.input_shape().elements().unwrap_or(0);
    let outputs = model.output_shape().elements().unwrap_or(0);
    let loss = model.spec.loss;
    let samples: usize = selection.iter().map(|s| s.indices.len()).sum();
    let width = if loss == Loss::CrossEntropy { 1 } else { outputs };
    let mut features = vec![0.0f32; samples * inputs];
    let mut labels = Vec::with_capacity(samples * width);
    let mut rows = features.chunks_exact_mut(inputs.max(1));
    for part in selection {
        let hash = part.shard;
        let bytes = shard(hash).ok_or_else(|| format!("shard {hash} is not held"))?;
        let view = ShardView::decode(bytes.borrow()).map_err(|e| format!("shard {hash} is not a valid shard: {e}"))?;
        if view.sample_elements() != inputs {
            return Err(format!(
                "shard {hash} has samples of {} values but the model takes {inputs}",
                view.sample_elements()
            ));
        }
        check_labels(hash, &view.header().labels, loss, outputs)?;
        for &index in &part.indices {
            let row = rows.next().expect("one row per index");
            view.sample_f32(index as usize, &Normalization::None, row).map_err(|e| format!("shard {hash}: {e}"))?;
            normalise(normalisation, row);
            let label = view.label(index as usize).map_err(|e| format!("shard {hash}: {e}"))?;
            match label.class() {
                Some(class) => labels.push(class as f32),
                None => labels.extend(label.values()),
            }
        }
    }
    Ok(LeaseInputs { features, labels, samples })
}

/// What a lease asks to be computed, besides its samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeaseWork {
    /// Samples per local step (the project's batch size).
    pub batch_size: usize,
    pub local_steps: usize,
    pub learning_rate: f32,
    /// The lease id: the dropout seed, used from step 0.
    pub seed: u64,
}

/// Runs `work` on `inputs` from `params` with the reference trainer: the delta and mean loss an honest provider
/// reports for the lease, up to float rounding.
///
/// # Errors
/// Inputs or parameters that do not fit the model.
pub fn recompute(
    trainer: &mut Trainer,
    model: &Model,
    inputs: &LeaseInputs,
    params: &[f32],
    work: &LeaseWork,
) -> Result<LocalResult, TrainError> {
    trainer.load_params(params)?;
    let in_elems = model.input_shape().elements().unwrap_or(1).max(1);
    let x = ArrayView2::from_shape((inputs.samples, in_elems), &inputs.features)
        .map_err(|_| TrainError::InputWidth { expected: in_elems, found: inputs.features.len() % in_elems })?;
    let classes: Vec<u32>;
    let y = if model.spec.loss == Loss::CrossEntropy {
        classes = inputs.labels.iter().map(|&c| c as u32).collect();
        Labels::Classes(&classes)
    } else {
        let outputs = inputs.labels.len() / inputs.samples.max(1);
        Labels::Values(
            ArrayView2::from_shape((inputs.samples, outputs), &inputs.labels)
                .map_err(|_| TrainError::LabelCount { samples: inputs.samples, labels: inputs.labels.len() })?,
        )
    };
    let indices: Vec<u32> = (0..inputs.samples as u32).collect();
    let config = LocalConfig {
        batch_size: work.batch_size,
        local_steps: work.local_steps,
        learning_rate: work.learning_rate,
        dropout: DropoutKey { seed: work.seed, step: 0 },
    };
    trainer.train_local(&Batch { x, y }, &indices, &config)
}

/// Whether a shard's labels suit the model's loss: class indices below the output count for cross-entropy,
/// targets of the output's size otherwise (or classes 0 and 1 for a binary cross-entropy with one output).
fn check_labels(shard: ShardHash, labels: &ShardLabels, loss: Loss, outputs: usize) -> Result<(), String> {
    let fits = match (loss, labels) {
        (Loss::CrossEntropy, ShardLabels::Classes { count }) => *count as usize <= outputs,
        (Loss::BinaryCrossEntropy, ShardLabels::Classes { count }) => outputs == 1 && *count <= 2,
        (Loss::MeanSquaredError | Loss::BinaryCrossEntropy, ShardLabels::Values { shape }) => {
            shape.iter().product::<usize>() == outputs
        }
        _ => false,
    };
    if fits {
        Ok(())
    } else {
        Err(format!(
            "shard {shard} has labels {labels:?}, which do not suit a {} loss with {outputs} outputs",
            loss.name()
        ))
    }
}

/// Applies the project's normalisation to one sample, `x' = (x - offset) * scale`.
pub fn normalise(normalisation: &Normalisation, row: &mut [f32]) {
    match normalisation {
        Normalisation::None => {}
        Normalisation::Global { offset, scale } => {
            for x in row {
                *x = (*x - offset) * scale;
            }
        }
        Normalisation::PerFeature { offset, scale } => {
            for ((x, o), s) in row.iter_mut().zip(offset).zip(scale) {
                *x = (*x - o) * s;
            }
        }
    }
}
