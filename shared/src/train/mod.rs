//! The CPU reference trainer: forward and backward passes of every layer and loss DAIG supports, the
//! optimisers the server applies to averaged contributions, and the trainer API a provider runs.
//!
//! Every other engine (the WGSL GPU engine, the server's validation) is checked against this module, so
//! it favours plain, documented arithmetic over cleverness; it is still fast enough to train MNIST models
//! in seconds (matrix products go through the `gemm` crate into reused buffers).
//!
//! - [`Network`] is the model's computation, generic over the float type ([`Real`]: `f32` for training,
//!   `f64` for gradient checks). It takes the flat parameter buffer laid out as
//!   [`ParamLayout`](crate::params::ParamLayout) on every call and keeps only scratch buffers of its own.
//! - [`Trainer`] is the `f32` API a provider mirrors: local SGD steps over sample indices returning the
//!   parameter delta, the plain gradient, evaluation and prediction.
//! - [`optim`] holds SGD and Adam with schedules, weight decay and clipping, serialisable for checkpoints.
//! - [`dropout`] defines dropout's keep-mask as a pure integer hash the GPU can reproduce.
//! - [`lease`] is the computation a lease fixes (its samples gathered, then local steps), shared by providers
//!   and by the server that recomputes it; [`verify`] compares a contribution with that recomputation.
//!
//! # Data conventions
//! A batch is a [`Batch`]: `x` is `[samples, input elements]`, each row one sample flattened channels-last
//! (`h, w, c` row-major), already normalised; `y` is [`Labels`]. Activations follow the same layout.
//!
//! # Losses
//! With `n` samples and `k` outputs per sample, the loss of a batch is the mean over samples, and
//! gradients are gradients of that mean:
//! - `cross_entropy`: `mean_i [logsumexp(z_i) - z_i[y_i]]` on logits `z` (integer labels). The softmax is
//!   part of the loss: when [`Model::output_activation_fused`](crate::model::Model) the last layer's
//!   softmax is skipped while computing the loss and applied only by `predict`. Accuracy: argmax (the first
//!   maximum on ties) equals the label.
//! - `mean_squared_error`: `sum_{i,j} (out_ij - t_ij)^2 / (n * k)`, the mean over all output elements of
//!   all samples (the same as Keras's per-sample mean over the last axis, then the batch mean). No
//!   accuracy.
//! - `binary_cross_entropy`: `sum_{i,j} [max(z,0) - z*t + ln(1 + exp(-|z|))] / (n * k)` on logits, the
//!   sigmoid fused like softmax above. Accuracy over all `n * k` outputs: `(z > 0) == (t >= 0.5)`.

pub mod dropout;
pub mod lease;
mod loss;
mod matmul;
mod network;
pub mod optim;
mod trainer;
pub mod verify;

use std::fmt::Debug;

use ndarray::{ArrayView2, LinalgScalar, ScalarOperand};

pub use self::dropout::{DropoutKey, dropout_keep};
pub use self::matmul::mat_mul;
pub use self::network::Network;
pub use self::optim::{Method, Optimizer, OptimizerConfig, OptimizerState, Schedule};
pub use self::trainer::{LocalConfig, LocalResult, Trainer};

/// The float types the trainer computes in: `f32` for training, `f64` for gradient checks.
pub trait Real: LinalgScalar + num_traits::Float + ScalarOperand + Debug + Default + Send + Sync {
    fn from_f32(v: f32) -> Self;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
}

impl Real for f32 {
    fn from_f32(v: f32) -> f32 {
        v
    }
    fn from_f64(v: f64) -> f32 {
        v as f32
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

impl Real for f64 {
    fn from_f32(v: f32) -> f64 {
        f64::from(v)
    }
    fn from_f64(v: f64) -> f64 {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
}

/// Samples and their labels: one minibatch, or a whole dataset that [`Trainer`] picks minibatches from.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a, A> {
    /// `[samples, input elements]`: one normalised sample per row, flattened channels-last.
    pub x: ArrayView2<'a, A>,
    pub y: Labels<'a>,
}

/// The labels of a batch, one per sample (row of [`Batch::x`]).
#[derive(Debug, Clone, Copy)]
pub enum Labels<'a> {
    /// Integer classes, for `cross_entropy` (a class below the number of outputs), or for
    /// `binary_cross_entropy` on a model with one output (0 or 1).
    Classes(&'a [u32]),
    /// Float targets `[samples, output elements]`, for `mean_squared_error` and `binary_cross_entropy`
    /// (in `[0, 1]`).
    Values(ArrayView2<'a, f32>),
}

impl Labels<'_> {
    /// The number of samples labelled.
    pub fn len(&self) -> usize {
        match self {
            Labels::Classes(c) => c.len(),
            Labels::Values(v) => v.nrows(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a pass trains (dropout active, with the masks of the given key) or evaluates (dropout is the
/// identity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Eval,
    Train(DropoutKey),
}

/// The loss and metric of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BatchStats {
    /// The mean loss over the batch (see the module docs for each loss's definition).
    pub loss: f64,
    pub samples: usize,
    /// Predictions that were right, out of `judged`.
    pub correct: usize,
    /// Predictions judged for accuracy: `samples` for cross-entropy, `samples * outputs` for binary
    /// cross-entropy, 0 for mean squared error.
    pub judged: usize,
}

impl BatchStats {
    /// `correct / judged`, or `None` when the loss has no accuracy.
    pub fn accuracy(&self) -> Option<f64> {
        (self.judged > 0).then(|| self.correct as f64 / self.judged as f64)
    }
}

/// The result of evaluating a model on a dataset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// The mean loss over all samples.
    pub loss: f64,
    /// Accuracy in `[0, 1]`, for the losses that have one.
    pub accuracy: Option<f64>,
    pub samples: usize,
}

/// Why the trainer refused its inputs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrainError {
    #[error("the parameter buffer has {found} values, but the model has {expected} parameters")]
    ParamCount { expected: usize, found: usize },
    #[error("the gradient buffer has {found} values, but the model has {expected} parameters")]
    GradientLength { expected: usize, found: usize },
    #[error("the samples have {found} features each, but the model's input has {expected} elements")]
    InputWidth { expected: usize, found: usize },
    #[error("the batch has no samples")]
    EmptyBatch,
    #[error("the batch has {samples} samples but {labels} labels")]
    LabelCount { samples: usize, labels: usize },
    #[error("{loss} needs {expected}")]
    LabelKind { loss: &'static str, expected: &'static str },
    #[error("sample {sample} has class {class}, but the model has {classes} classes")]
    ClassOutOfRange { sample: usize, class: u32, classes: usize },
    #[error("the targets have {found} values per sample, but the model's output has {expected} elements")]
    TargetWidth { expected: usize, found: usize },
    #[error("sample index {index} is out of range for a dataset of {samples} samples")]
    SampleIndex { index: u32, samples: usize },
    #[error("the input gradient buffer has {found} values, but the batch has {expected} input elements")]
    InputGradientLength { expected: usize, found: usize },
    #[error("{field} must be at least 1")]
    Zero { field: &'static str },
}
