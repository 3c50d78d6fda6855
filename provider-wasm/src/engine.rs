//! The trainer a provider runs: the GPU engine where an adapter is present and passes a start-up
//! self-check, the CPU reference trainer of `daig-shared` otherwise. Both answer the same calls with the
//! same results (within float tolerance): load parameters, load a shard, train `local_steps` minibatches
//! over given sample indices and return the parameter delta, the mean loss and the sample count.

use daig_shared::model::{Limits, Loss, Model};
use daig_shared::params::init_params;
use daig_shared::train::{Batch, DropoutKey, Labels, LocalConfig, TrainError, Trainer};
use ndarray::ArrayView2;

use crate::gpu::trainer::{DropoutSeed, GpuTrainer, StepResult, invalid_class};
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

/// The shard minibatches are drawn from, kept on the host too: the CPU trainer reads it, and it lets the
/// CPU take over from a GPU that fails mid-session.
#[derive(Default)]
struct HostShard {
    features: Vec<f32>,
    /// Class indices for cross-entropy.
    classes: Vec<u32>,
    /// Targets `[samples, outputs]` otherwise.
    values: Vec<f32>,
    samples: usize,
}

enum Inner {
    Gpu(Box<GpuTrainer>),
    Cpu(Box<Trainer>),
}

/// A provider's trainer for one model.
pub struct Engine {
    inner: Inner,
    backend: Backend,
    model: Model,
    /// The parameters as the engine holds them (loaded, plus every delta since).
    params: Vec<f32>,
    shard: HostShard,
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
                return Engine::cpu(model, gpu.adapter.slower_than_the_cpu());
            }
            Ok(gpu) => self_check(gpu).await,
            Err(e) => Err(e),
        };
        let trainer = match gpu {
            Ok(gpu) => open_trainer(gpu, &model, max_batch).await,
            Err(e) => Err(e),
        };
        match trainer {
            Ok(trainer) => Engine {
                backend: Backend::Gpu(trainer.gpu().adapter.clone()),
                inner: Inner::Gpu(Box::new(trainer)),
                params: vec![0.0; model.params.total],
                shard: HostShard::default(),
                model,
            },
            Err(e) => Engine::cpu(model, e.to_string()),
        }
    }

    /// The CPU reference trainer, with the reason it was chosen.
    pub fn cpu(model: Model, reason: String) -> Engine {
        Engine {
            inner: Inner::Cpu(Box::new(Trainer::new(&model))),
            backend: Backend::Cpu { reason },
            params: vec![0.0; model.params.total],
            shard: HostShard::default(),
            model,
        }
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The GPU context, while the engine trains on the GPU (for diagnostics).
    pub fn gpu(&self) -> Option<&Gpu> {
        match &self.inner {
            Inner::Gpu(t) => Some(t.gpu()),
            Inner::Cpu(_) => None,
        }
    }

    /// The GPU context back from an engine that trains on the GPU, to build the engine of another model
    /// on it without opening the device again.
    pub fn into_gpu(self) -> Option<Gpu> {
        match self.inner {
            Inner::Gpu(t) => Some(t.into_gpu()),
            Inner::Cpu(_) => None,
        }
    }

    /// Replaces the parameters (a flat buffer in the model's layout).
    ///
    /// # Errors
    /// A buffer whose length is not the model's parameter count.
    pub fn load_params(&mut self, params: &[f32]) -> Result<(), EngineError> {
        if params.len() != self.model.params.total {
            return Err(TrainError::ParamCount { expected: self.model.params.total, found: params.len() }.into());
        }
        self.params.copy_from_slice(params);
        let loaded = match &mut self.inner {
            Inner::Gpu(t) => t.load_params(params).map_err(EngineError::from),
            Inner::Cpu(t) => t.load_params(params).map_err(EngineError::from),
        };
        self.on_gpu_error(loaded)
    }

    /// Loads the samples minibatches are drawn from: `features` is `[n, input elements]` (normalised),
    /// `labels` is `[n, 1]` class indices for cross-entropy or `[n, output elements]` targets otherwise.
    ///
    /// # Errors
    /// Lengths that do not fit the model, or class labels that are not whole numbers in range.
    pub fn load_shard(&mut self, features: &[f32], labels: &[f32]) -> Result<(), EngineError> {
        let in_elems = self.model.input_shape().elements().unwrap_or(1).max(1);
        let outputs = self.model.output_shape().elements().unwrap_or(1);
        let samples = features.len() / in_elems;
        let classes = self.model.spec.loss == Loss::CrossEntropy;
        let width = if classes { 1 } else { outputs };
        if samples * in_elems != features.len() {
            return Err(TrainError::InputWidth { expected: in_elems, found: features.len() % in_elems }.into());
        }
        if labels.len() != samples * width {
            return Err(EngineError::Labels(format!(
                "{} label values for {samples} samples of {width} each",
                labels.len()
            )));
        }
        if classes && let Some(bad) = invalid_class(labels, outputs) {
            return Err(EngineError::Labels(format!("class {bad} is not one of the model's {outputs} classes")));
        }
        self.shard = HostShard {
            features: features.to_vec(),
            classes: if classes { labels.iter().map(|&v| v as u32).collect() } else { Vec::new() },
            values: if classes { Vec::new() } else { labels.to_vec() },
            samples,
        };
        let loaded = match &mut self.inner {
            Inner::Gpu(t) => t.load_shard(features, labels).map_err(EngineError::from),
            Inner::Cpu(_) => Ok(()),
        };
        self.on_gpu_error(loaded)
    }

    /// Runs `local_steps` plain SGD steps at `lr` over minibatches of `indices` (the reference trainer's
    /// `train_local` rules) and returns the delta, the mean loss and the sample count. If the GPU fails
    /// (device lost, out of memory, a launch the device refuses), the CPU takes over from the parameters
    /// the call started from, and the backend says why.
    ///
    /// # Errors
    /// Bad indices or sizes.
    pub async fn train(
        &mut self,
        indices: &[u32],
        batch_size: usize,
        local_steps: usize,
        lr: f32,
        dropout: DropoutSeed,
    ) -> Result<StepResult, EngineError> {
        self.check_indices(indices)?;
        if let Inner::Gpu(t) = &mut self.inner {
            match t.train(indices, batch_size, local_steps, lr, dropout).await {
                Ok(result) => {
                    self.apply(&result.delta);
                    return Ok(result);
                }
                Err(e) => self.fall_back(&e),
            }
        }
        let Inner::Cpu(trainer) = &mut self.inner else { unreachable!("fell back to the CPU above") };
        let config = LocalConfig {
            batch_size,
            local_steps,
            learning_rate: lr,
            dropout: DropoutKey { seed: dropout.seed, step: dropout.first_step },
        };
        let r = trainer.train_local(&self.shard.batch(&self.model), indices, &config)?;
        let result = StepResult { delta: r.delta, mean_loss: r.mean_loss as f32, accuracy: None, samples: r.samples };
        self.apply(&result.delta);
        Ok(result)
    }

    /// The mean loss and accuracy over `indices`, without dropout.
    ///
    /// # Errors
    /// Bad indices.
    pub async fn evaluate(&mut self, indices: &[u32]) -> Result<(f32, f32), EngineError> {
        self.check_indices(indices)?;
        if let Inner::Gpu(t) = &mut self.inner {
            match t.evaluate(indices).await {
                Ok(r) => return Ok(r),
                Err(e) => self.fall_back(&e),
            }
        }
        let Inner::Cpu(trainer) = &mut self.inner else { unreachable!("fell back to the CPU above") };
        let all = self.shard.batch(&self.model);
        let rows: Vec<usize> = indices.iter().map(|&i| i as usize).collect();
        let x = all.x.select(ndarray::Axis(0), &rows);
        let classes: Vec<u32> = if self.shard.classes.is_empty() {
            Vec::new()
        } else {
            rows.iter().map(|&i| self.shard.classes[i]).collect()
        };
        let values = match all.y {
            Labels::Values(v) => Some(v.select(ndarray::Axis(0), &rows)),
            Labels::Classes(_) => None,
        };
        let y = match &values {
            Some(v) => Labels::Values(v.view()),
            None => Labels::Classes(&classes),
        };
        let e = trainer.evaluate(&self.params, &Batch { x: x.view(), y })?;
        Ok((e.loss as f32, e.accuracy.unwrap_or(0.0) as f32))
    }

    /// No indices, or one outside the shard, is an error on every backend.
    fn check_indices(&self, indices: &[u32]) -> Result<(), EngineError> {
        if indices.is_empty() {
            return Err(TrainError::EmptyBatch.into());
        }
        let samples = self.shard.samples;
        match indices.iter().find(|&&i| i as usize >= samples) {
            Some(&index) => Err(TrainError::SampleIndex { index, samples }.into()),
            None => Ok(()),
        }
    }

    fn apply(&mut self, delta: &[f32]) {
        for (p, d) in self.params.iter_mut().zip(delta) {
            *p += d;
        }
    }

    /// A GPU error during loading switches to the CPU, which then loads from the host copies.
    fn on_gpu_error(&mut self, outcome: Result<(), EngineError>) -> Result<(), EngineError> {
        match outcome {
            Err(EngineError::Gpu(e)) => {
                self.fall_back(&e);
                Ok(())
            }
            other => other,
        }
    }

    /// Replaces a failed GPU trainer with the CPU reference trainer holding the engine's parameters.
    fn fall_back(&mut self, error: &GpuError) {
        let mut trainer = Trainer::new(&self.model);
        trainer.load_params(&self.params).expect("the engine's parameters fit its model");
        self.inner = Inner::Cpu(Box::new(trainer));
        self.backend = Backend::Cpu { reason: format!("the GPU failed: {error}") };
    }
}

impl HostShard {
    fn batch(&self, model: &Model) -> Batch<'_, f32> {
        let in_elems = model.input_shape().elements().unwrap_or(1).max(1);
        let x = ArrayView2::from_shape((self.samples, in_elems), &self.features).expect("checked when loaded");
        let y = if self.values.is_empty() && model.spec.loss == Loss::CrossEntropy {
            Labels::Classes(&self.classes)
        } else {
            let outputs = self.values.len() / self.samples.max(1);
            Labels::Values(ArrayView2::from_shape((self.samples, outputs), &self.values).expect("checked when loaded"))
        };
        Batch { x, y }
    }
}

/// Builds the GPU trainer and checks, with error scopes and a health check, that the device accepted
/// everything (out-of-memory errors arrive asynchronously on WebGPU), so that a GPU that cannot hold
/// the model is never chosen.
async fn open_trainer(gpu: Gpu, model: &Model, max_batch: usize) -> Result<GpuTrainer, GpuError> {
    let oom = gpu.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let trainer = GpuTrainer::new(gpu, model.clone(), max_batch);
    let (v, o) = (validation.pop().await, oom.pop().await);
    if let Some(e) = o.or(v) {
        return Err(e.into());
    }
    let trainer = trainer?;
    trainer.gpu().check_lost()?;
    Ok(trainer)
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
    trainer.load_params(&params)?;
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
        if err.is_nan() || err > tolerance {
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
