//! [`Trainer`]: the `f32` API a provider runs and the GPU engine mirrors.

use ndarray::{Array2, ArrayView2, s};

use super::network::Input;
use super::{Batch, BatchStats, DropoutKey, Evaluation, Labels, Mode, Network, TrainError};
use crate::model::Model;

/// How a provider trains one contribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalConfig {
    /// Samples per minibatch (fewer only when the index list is shorter).
    pub batch_size: usize,
    /// The number of minibatches (plain SGD steps) to run.
    pub local_steps: usize,
    pub learning_rate: f32,
    /// The dropout seed and the global step number of the first local step; local step `s` uses step
    /// `dropout.step + s`.
    pub dropout: DropoutKey,
}

/// What a provider sends back for one contribution.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalResult {
    /// The new parameters minus the old ones.
    pub delta: Vec<f32>,
    /// The mean over all samples of the loss each minibatch had before its update.
    pub mean_loss: f64,
    /// The number of samples trained on, counted once per use: `local_steps * min(batch_size, indices)`.
    pub samples: usize,
}

/// The trainer a provider runs: parameters, a [`Network<f32>`] and the buffers minibatches are gathered
/// into.
///
/// Minibatches are taken from the index list in order, wrapping around: minibatch `s` holds
/// `indices[(s * b + j) % len]` for `j < b`, with `b = min(batch_size, len)`. Dropout masks are drawn as
/// [`dropout_keep`](super::dropout_keep) defines with the element index within the minibatch.
#[derive(Debug, Clone)]
pub struct Trainer {
    net: Network<f32>,
    params: Vec<f32>,
    grad: Vec<f32>,
    /// The gathered labels of one minibatch, reused across steps.
    classes: Vec<u32>,
    values: Vec<f32>,
}

/// How many samples [`Trainer::evaluate`] and [`Trainer::predict`] run at once.
const EVAL_CHUNK: usize = 256;

impl Trainer {
    /// A trainer for `model` with all parameters zero; load real ones with [`Trainer::load_params`].
    pub fn new(model: &Model) -> Trainer {
        let net = Network::new(model);
        let n = net.param_count();
        Trainer { net, params: vec![0.0; n], grad: vec![0.0; n], classes: Vec::new(), values: Vec::new() }
    }

    /// Replaces the parameters.
    ///
    /// # Errors
    /// A buffer whose length is not the model's parameter count.
    pub fn load_params(&mut self, params: &[f32]) -> Result<(), TrainError> {
        if params.len() != self.params.len() {
            return Err(TrainError::ParamCount { expected: self.params.len(), found: params.len() });
        }
        self.params.copy_from_slice(params);
        Ok(())
    }

    pub fn params(&self) -> &[f32] {
        &self.params
    }

    pub fn network(&mut self) -> &mut Network<f32> {
        &mut self.net
    }

    /// Runs `config.local_steps` plain SGD steps (`p = p - lr * gradient`) on minibatches of `indices`
    /// into `data`, updating the loaded parameters, and returns the delta, the mean loss and the sample
    /// count. For one step the delta is `-lr` times [`Trainer::gradient`].
    ///
    /// # Errors
    /// No indices, a zero batch size or step count, an index out of range, or data that does not fit the
    /// model; the parameters are unchanged when the first minibatch fails.
    pub fn train_local(
        &mut self,
        data: &Batch<'_, f32>,
        indices: &[u32],
        config: &LocalConfig,
    ) -> Result<LocalResult, TrainError> {
        if config.batch_size == 0 {
            return Err(TrainError::Zero { field: "batch_size" });
        }
        if config.local_steps == 0 {
            return Err(TrainError::Zero { field: "local_steps" });
        }
        if indices.is_empty() {
            return Err(TrainError::EmptyBatch);
        }
        check_indices(indices, data.x.nrows())?;
        let before = self.params.clone();
        let b = config.batch_size.min(indices.len());
        let mut picked = Vec::with_capacity(b);
        let mut loss_sum = 0.0;
        for step in 0..config.local_steps {
            picked.clear();
            picked.extend((0..b).map(|j| indices[(step * b + j) % indices.len()]));
            let key = DropoutKey { seed: config.dropout.seed, step: config.dropout.step.wrapping_add(step as u64) };
            let stats = self.gradient_at(data, &picked, Mode::Train(key))?;
            loss_sum += stats.loss * stats.samples as f64;
            for (p, &g) in self.params.iter_mut().zip(&self.grad) {
                *p -= config.learning_rate * g;
            }
        }
        let samples = b * config.local_steps;
        let delta = self.params.iter().zip(&before).map(|(new, old)| new - old).collect();
        Ok(LocalResult { delta, mean_loss: loss_sum / samples as f64, samples })
    }

    /// The gradient of the mean loss over the samples `indices` of `data` at the loaded parameters, in
    /// training mode with the dropout masks of `dropout`, and the batch's loss. The parameters do not
    /// change.
    ///
    /// # Errors
    /// No indices, an index out of range, or data that does not fit the model.
    pub fn gradient(
        &mut self,
        data: &Batch<'_, f32>,
        indices: &[u32],
        dropout: DropoutKey,
    ) -> Result<(&[f32], BatchStats), TrainError> {
        check_indices(indices, data.x.nrows())?;
        let stats = self.gradient_at(data, indices, Mode::Train(dropout))?;
        Ok((&self.grad, stats))
    }

    /// Gathers `indices` (checked) and writes their gradient into `self.grad`.
    fn gradient_at(&mut self, data: &Batch<'_, f32>, indices: &[u32], mode: Mode) -> Result<BatchStats, TrainError> {
        if indices.is_empty() {
            return Err(TrainError::EmptyBatch);
        }
        let labels = match data.y {
            Labels::Classes(c) => {
                self.classes.clear();
                // A short label list is reported by the network as a count mismatch.
                self.classes.extend(indices.iter().filter_map(|&i| c.get(i as usize)));
                Labels::Classes(&self.classes)
            }
            Labels::Values(v) => {
                self.values.clear();
                for &i in indices.iter().filter(|&&i| (i as usize) < v.nrows()) {
                    self.values.extend(v.row(i as usize).iter());
                }
                Labels::Values(
                    ArrayView2::from_shape((self.values.len() / v.ncols().max(1), v.ncols()), &self.values)
                        .expect("whole rows"),
                )
            }
        };
        self.net.gradients(&self.params, Input::Picked(data.x, indices), &labels, mode, &mut self.grad, false)
    }

    /// The mean loss and the accuracy of `params` on all of `data`, without dropout, in chunks of 256
    /// samples.
    ///
    /// # Errors
    /// An empty dataset, or parameters or data that do not fit the model.
    pub fn evaluate(&mut self, params: &[f32], data: &Batch<'_, f32>) -> Result<Evaluation, TrainError> {
        let n = data.x.nrows();
        if n == 0 {
            return Err(TrainError::EmptyBatch);
        }
        if data.y.len() != n {
            return Err(TrainError::LabelCount { samples: n, labels: data.y.len() });
        }
        let (mut loss, mut correct, mut judged) = (0.0, 0, 0);
        for start in (0..n).step_by(EVAL_CHUNK) {
            let end = (start + EVAL_CHUNK).min(n);
            let y = match data.y {
                Labels::Classes(c) => Labels::Classes(&c[start..end]),
                Labels::Values(v) => Labels::Values(v.slice_move(s![start..end, ..])),
            };
            let stats = self.net.loss(params, &Batch { x: data.x.slice(s![start..end, ..]), y }, Mode::Eval)?;
            loss += stats.loss * stats.samples as f64;
            correct += stats.correct;
            judged += stats.judged;
        }
        Ok(Evaluation {
            loss: loss / n as f64,
            accuracy: (judged > 0).then(|| correct as f64 / judged as f64),
            samples: n,
        })
    }

    /// The model's predictions for `x` (`[samples, input elements]`), with the output activation applied.
    ///
    /// # Errors
    /// No samples, or parameters or samples that do not fit the model.
    pub fn predict(&mut self, params: &[f32], x: ArrayView2<'_, f32>) -> Result<Array2<f32>, TrainError> {
        let n = x.nrows();
        if n == 0 {
            return Err(TrainError::EmptyBatch);
        }
        let mut out = Array2::zeros((n, self.net.output_elements()));
        for start in (0..n).step_by(EVAL_CHUNK) {
            let end = (start + EVAL_CHUNK).min(n);
            let y = self.net.predict(params, x.slice(s![start..end, ..]))?;
            out.slice_mut(s![start..end, ..]).assign(&y);
        }
        Ok(out)
    }
}

fn check_indices(indices: &[u32], samples: usize) -> Result<(), TrainError> {
    match indices.iter().find(|&&i| i as usize >= samples) {
        Some(&index) => Err(TrainError::SampleIndex { index, samples }),
        None => Ok(()),
    }
}
