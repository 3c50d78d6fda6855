//! The trainer a provider runs: the GPU engine where an adapter is present and passes a start-up
//! self-check, the CPU reference trainer of `daig-shared` otherwise. Both answer the same calls with the
//! same results (within float tolerance): load parameters, load a shard, train `local_steps` minibatches
//! over given sample indices and return the parameter delta, the mean loss and the sample count.

use daig_shared::model::{Limits, Loss, Model};
use daig_shared::params::init_params;
use daig_shared::train::{Batch, DropoutKey, Labels, LocalConfig, TrainError, Trainer};
use ndarray::ArrayView2;

use crate::gpu::trainer::{DropoutSeed, GpuTrainer, StepResult};
use crate::gpu::{AdapterSummary, Gpu, GpuError};

/// Which engine trains, and why the CPU one when it is the CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Gpu(AdapterSummary),
    /// The reference trainer on the CPU, with the reason the GPU is not used.
    Cpu {
        reason: String,
    },
}

/// Which adapters the engine may train on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdapterPolicy {
    /// Hardware adapters only: a software adapter (lavapipe, SwiftShader, WARP) emulates the GPU on the
    /// CPU about a hundred times slower than the reference trainer (BENCHMARKS.md), so the CPU trains.
    #[default]
    HardwareOnly,
    /// Any adapter that passes the self-check, software ones included (for tests on machines without a
    /// GPU).
    Any,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error("the shard's labels do not fit the model: {0}")]
    Labels(String),
}

/// The reference trainer with the shard it samples from.
struct CpuEngine {
    trainer: Trainer,
    shard: CpuShard,
}

#[derive(Default)]
struct CpuShard {
    features: Vec<f32>,
    classes: Vec<u32>,
    values: Vec<f32>,
}

enum Inner {
    Gpu(Box<GpuTrainer>),
    Cpu(Box<CpuEngine>),
}

/// A provider's trainer for one model.
pub struct Engine {
    inner: Inner,
    backend: Backend,
    model: Model,
}

impl Engine {
    /// The GPU engine if a hardware adapter opens and passes [`self_check`], else the CPU reference
    /// trainer.
    pub async fn new(model: Model, max_batch: usize) -> Engine {
        Engine::from_gpu(Gpu::new().await, model, max_batch, AdapterPolicy::default()).await
    }

    /// Like [`Engine::new`], from the outcome of opening a GPU (or from a GPU the caller already has),
    /// with a policy on software adapters.
    pub async fn from_gpu(gpu: Result<Gpu, GpuError>, model: Model, max_batch: usize, policy: AdapterPolicy) -> Engine {
        let gpu = match gpu {
            Ok(gpu) if gpu.adapter.software && policy == AdapterPolicy::HardwareOnly => {
                return Engine::cpu(
                    model,
                    format!("{} is a software adapter, slower than training on the CPU", gpu.adapter.name),
                );
            }
            Ok(gpu) => self_check(gpu).await,
            Err(e) => Err(e),
        };
        match gpu.and_then(|gpu| GpuTrainer::new(gpu, model.clone(), max_batch)) {
            Ok(trainer) => Engine {
                backend: Backend::Gpu(trainer.gpu().adapter.clone()),
                inner: Inner::Gpu(Box::new(trainer)),
                model,
            },
            Err(e) => Engine::cpu(model, e.to_string()),
        }
    }

    /// The CPU reference trainer, with the reason it was chosen.
    pub fn cpu(model: Model, reason: String) -> Engine {
        let trainer = Trainer::new(&model);
        Engine {
            inner: Inner::Cpu(Box::new(CpuEngine { trainer, shard: CpuShard::default() })),
            backend: Backend::Cpu { reason },
            model,
        }
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Replaces the parameters (a flat buffer in the model's layout).
    ///
    /// # Errors
    /// A buffer whose length is not the model's parameter count.
    pub fn load_params(&mut self, params: &[f32]) -> Result<(), EngineError> {
        if params.len() != self.model.params.total {
            return Err(TrainError::ParamCount { expected: self.model.params.total, found: params.len() }.into());
        }
        match &mut self.inner {
            Inner::Gpu(t) => t.load_params(params),
            Inner::Cpu(c) => c.trainer.load_params(params)?,
        }
        Ok(())
    }

    /// Loads the samples minibatches are drawn from: `features` is `[n, input elements]` (normalised),
    /// `labels` is `[n, 1]` class indices for cross-entropy or `[n, output elements]` targets otherwise.
    ///
    /// # Errors
    /// Lengths that do not fit the model, class labels that are not whole numbers in range, or a shard
    /// larger than the GPU allows.
    pub fn load_shard(&mut self, features: &[f32], labels: &[f32]) -> Result<(), EngineError> {
        let in_elems = self.model.input_shape().elements().unwrap_or(1).max(1);
        let outputs = self.model.output_shape().elements().unwrap_or(1);
        let samples = features.len() / in_elems;
        let width = if self.model.spec.loss == Loss::CrossEntropy { 1 } else { outputs };
        if samples * in_elems != features.len() {
            return Err(TrainError::InputWidth { expected: in_elems, found: features.len() % in_elems }.into());
        }
        if labels.len() != samples * width {
            return Err(EngineError::Labels(format!(
                "{} label values for {samples} samples of {width} each",
                labels.len()
            )));
        }
        if width == 1
            && self.model.spec.loss == Loss::CrossEntropy
            && let Some(bad) = labels.iter().find(|&&c| c < 0.0 || c.fract() != 0.0 || c as usize >= outputs)
        {
            return Err(EngineError::Labels(format!("class {bad} is not one of the model's {outputs} classes")));
        }
        match &mut self.inner {
            Inner::Gpu(t) => t.load_shard(features, labels)?,
            Inner::Cpu(c) => {
                c.shard.features = features.to_vec();
                if self.model.spec.loss == Loss::CrossEntropy {
                    c.shard.classes = labels.iter().map(|&v| v as u32).collect();
                    c.shard.values.clear();
                } else {
                    c.shard.values = labels.to_vec();
                    c.shard.classes.clear();
                }
            }
        }
        Ok(())
    }

    /// Runs `local_steps` plain SGD steps at `lr` over minibatches of `indices` (the reference trainer's
    /// `train_local` rules) and returns the delta, the mean loss and the sample count.
    ///
    /// # Errors
    /// Bad indices or sizes; GPU errors (device lost, out of memory, validation).
    pub async fn train(
        &mut self,
        indices: &[u32],
        batch_size: usize,
        local_steps: usize,
        lr: f32,
        dropout: DropoutSeed,
    ) -> Result<StepResult, EngineError> {
        match &mut self.inner {
            Inner::Gpu(t) => Ok(t.train(indices, batch_size, local_steps, lr, dropout).await?),
            Inner::Cpu(c) => {
                let model = &self.model;
                let config = LocalConfig {
                    batch_size,
                    local_steps,
                    learning_rate: lr,
                    dropout: DropoutKey { seed: dropout.seed, step: dropout.first_step },
                };
                let batch = c.shard.batch(model)?;
                let r = c.trainer.train_local(&batch, indices, &config)?;
                Ok(StepResult { delta: r.delta, mean_loss: r.mean_loss as f32, accuracy: None, samples: r.samples })
            }
        }
    }

    /// The mean loss and accuracy over `indices`, without dropout.
    ///
    /// # Errors
    /// Bad indices; GPU errors.
    pub async fn evaluate(&mut self, indices: &[u32]) -> Result<(f32, f32), EngineError> {
        match &mut self.inner {
            Inner::Gpu(t) => Ok(t.evaluate(indices).await?),
            Inner::Cpu(c) => {
                let model = &self.model;
                let params = c.trainer.params().to_vec();
                let all = c.shard.batch(model)?;
                let in_elems = all.x.ncols();
                let x: Vec<f32> = indices.iter().flat_map(|&i| all.x.row(i as usize).to_vec()).collect::<Vec<_>>();
                let xs = ArrayView2::from_shape((indices.len(), in_elems), &x).expect("whole rows");
                let (classes, values): (Vec<u32>, Vec<f32>) = match all.y {
                    Labels::Classes(cl) => (indices.iter().map(|&i| cl[i as usize]).collect(), Vec::new()),
                    Labels::Values(v) => {
                        (Vec::new(), indices.iter().flat_map(|&i| v.row(i as usize).to_vec()).collect())
                    }
                };
                let outputs = values.len() / indices.len().max(1);
                let y = if model.spec.loss == Loss::CrossEntropy {
                    Labels::Classes(&classes)
                } else {
                    Labels::Values(ArrayView2::from_shape((indices.len(), outputs), &values).expect("whole rows"))
                };
                let e = c.trainer.evaluate(&params, &Batch { x: xs, y })?;
                Ok((e.loss as f32, e.accuracy.unwrap_or(0.0) as f32))
            }
        }
    }
}

impl CpuShard {
    fn batch(&self, model: &Model) -> Result<Batch<'_, f32>, EngineError> {
        let in_elems = model.input_shape().elements().unwrap_or(1).max(1);
        let samples = self.features.len() / in_elems;
        let x = ArrayView2::from_shape((samples, in_elems), &self.features).expect("whole rows");
        let y = if model.spec.loss == Loss::CrossEntropy {
            Labels::Classes(&self.classes)
        } else {
            let outputs = model.output_shape().elements().unwrap_or(1);
            Labels::Values(
                ArrayView2::from_shape((samples, outputs), &self.values)
                    .map_err(|e| EngineError::Labels(e.to_string()))?,
            )
        };
        Ok(Batch { x, y })
    }
}

/// The self-check's model: a convolution, pooling, dropout and a dense layer, small enough to run in a
/// moment on a software adapter.
const SELF_CHECK_MODEL: &str = r#"{"input_shape": [6, 5, 2], "layers": [
    {"type": "conv2d", "filters": 3, "kernel_size": 3, "padding": "same", "activation": "relu"},
    {"type": "max_pool2d", "pool_size": 2}, {"type": "flatten"}, {"type": "dropout", "rate": 0.25},
    {"type": "dense", "units": 4, "activation": "softmax"}], "loss": "cross_entropy"}"#;

/// Relative agreement the self-check requires between the GPU and the reference (f32 kernels agree to
/// ~1e-6 here; a broken implementation is off by far more).
const SELF_CHECK_TOLERANCE: f32 = 1e-3;

/// Runs two training steps of a small fixed model on `gpu` and on the CPU reference trainer and compares
/// the deltas: some WebGPU implementations return wrong answers, and a provider must not send them.
///
/// # Errors
/// [`GpuError::SelfCheck`] with the discrepancy, or the GPU error that interrupted the check.
pub async fn self_check(gpu: Gpu) -> Result<Gpu, GpuError> {
    let model = Model::from_json(SELF_CHECK_MODEL, &Limits::default()).expect("the self-check model is valid");
    let samples = 5;
    let in_elems = model.input_shape().elements().expect("small");
    let x: Vec<f32> = (0..samples * in_elems).map(|i| ((i * 37 % 23) as f32 / 11.0) - 1.0).collect();
    let classes: Vec<u32> = (0..samples as u32).map(|i| i % 4).collect();
    let labels: Vec<f32> = classes.iter().map(|&c| c as f32).collect();
    let params = init_params(&model, 7);
    let indices: Vec<u32> = vec![4, 1, 3, 0, 2];
    let dropout = DropoutKey { seed: 99, step: 3 };

    let mut reference = Trainer::new(&model);
    reference.load_params(&params).expect("sizes agree");
    let batch = Batch {
        x: ArrayView2::from_shape((samples, in_elems), &x).expect("sizes agree"),
        y: Labels::Classes(&classes),
    };
    let config = LocalConfig { batch_size: 3, local_steps: 2, learning_rate: 0.1, dropout };
    let want = reference.train_local(&batch, &indices, &config).expect("the reference trains");

    let mut trainer = GpuTrainer::new(gpu, model, 3)?;
    trainer.load_params(&params);
    trainer.load_shard(&x, &labels)?;
    let got = trainer.train(&indices, 3, 2, 0.1, DropoutSeed { seed: dropout.seed, first_step: dropout.step }).await?;
    agreement(&got.delta, &want.delta, SELF_CHECK_TOLERANCE).map_err(GpuError::SelfCheck)?;
    Ok(trainer.into_gpu())
}

/// Whether `got` equals `want` within `tolerance` relative to the largest magnitude in `want`.
fn agreement(got: &[f32], want: &[f32], tolerance: f32) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{} values instead of {}", got.len(), want.len()));
    }
    let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs() / scale;
        if !(err <= tolerance) {
            return Err(format!("parameter {i} moved by {g} where the reference moved by {w}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::agreement;

    #[test]
    fn agreement_catches_wrong_and_non_finite_answers() {
        let want = [0.5, -0.25, 0.0, 1.0];
        assert!(agreement(&[0.5, -0.25, 0.0, 1.0], &want, 1e-3).is_ok());
        assert!(agreement(&[0.5, -0.25, 0.0005, 1.0], &want, 1e-3).is_ok());
        assert_eq!(
            agreement(&[0.5, -0.25, 0.1, 1.0], &want, 1e-3),
            Err("parameter 2 moved by 0.1 where the reference moved by 0".to_owned())
        );
        assert!(agreement(&[0.5, f32::NAN, 0.0, 1.0], &want, 1e-3).is_err());
        assert!(agreement(&[0.5], &want, 1e-3).is_err());
    }
}
