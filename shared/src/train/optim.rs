//! The optimisers the server applies to averaged contributions: SGD (with momentum or Nesterov momentum)
//! and Adam, with learning-rate schedules, weight decay and clipping by global norm.
//!
//! An [`Optimizer`] is its [`OptimizerConfig`] and its [`OptimizerState`] (the step count and the moment
//! buffers); both are serde types, so the server checkpoints them and a restored optimiser continues
//! bit for bit. Each step, in this order:
//!
//! 1. The gradient's global L2 norm is computed (in f64). A non-finite norm is refused and nothing
//!    changes. With `clip_norm = Some(c)` and a norm above `c`, the gradient is scaled by `c / norm`.
//! 2. The learning rate is [`OptimizerConfig::lr_at`] the current step (the first step is step 0).
//! 3. SGD, with L2-coupled weight decay as in PyTorch's `SGD`: `g = g + wd * p`;
//!    `buf = momentum * buf + g` (the buffer starts at zero); the direction is `g + momentum * buf` with
//!    Nesterov, else `buf`; `p = p - lr * direction`. With momentum 0 this is plain `p = p - lr * g`.
//! 4. Adam, with decoupled weight decay as in AdamW: with `t = step + 1`, `m = b1 m + (1 - b1) g`,
//!    `v = b2 v + (1 - b2) g^2`, `p = p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) - lr * wd * p`
//!    (the decay term uses `p` before this step's update).
//!
//! All arithmetic is in f32 except the norm and the bias corrections (f64, then rounded to f32).

use serde::{Deserialize, Serialize};

/// How an optimiser is configured: the method, the base learning rate, its schedule, weight decay and
/// gradient clipping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    pub method: Method,
    /// The base learning rate the schedule scales.
    pub learning_rate: f32,
    #[serde(default)]
    pub schedule: Schedule,
    /// L2-coupled for SGD, decoupled for Adam (see the module docs); 0 for none.
    #[serde(default)]
    pub weight_decay: f32,
    /// The largest global L2 norm a gradient keeps; larger ones are scaled down to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_norm: Option<f32>,
}

/// The update rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Method {
    Sgd {
        /// 0 for plain SGD.
        #[serde(default)]
        momentum: f32,
        #[serde(default)]
        nesterov: bool,
    },
    Adam {
        #[serde(default = "default_beta1")]
        beta1: f32,
        #[serde(default = "default_beta2")]
        beta2: f32,
        /// Added to the root of the second moment; PyTorch's default 1e-8.
        #[serde(default = "default_epsilon")]
        epsilon: f32,
    },
}

fn default_beta1() -> f32 {
    0.9
}
fn default_beta2() -> f32 {
    0.999
}
fn default_epsilon() -> f32 {
    1e-8
}

impl Method {
    /// Adam with the usual defaults: betas 0.9 and 0.999, epsilon 1e-8.
    pub fn adam() -> Method {
        Method::Adam { beta1: default_beta1(), beta2: default_beta2(), epsilon: default_epsilon() }
    }
}

/// How the learning rate changes with the step number.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    #[default]
    Constant,
    /// `lr * gamma^(step / every)` (integer division).
    StepDecay { every: u64, gamma: f32 },
    /// Linear warm-up from `lr / warmup_steps` to `lr` over the first `warmup_steps` steps
    /// (`lr * (step + 1) / warmup_steps`), then a cosine from `lr` down to `min_lr` at `total_steps`, and
    /// `min_lr` after that.
    Cosine { warmup_steps: u64, total_steps: u64, min_lr: f32 },
}

impl OptimizerConfig {
    /// The learning rate of step `step` (the first step is 0).
    pub fn lr_at(&self, step: u64) -> f32 {
        let lr = f64::from(self.learning_rate);
        let rate = match self.schedule {
            Schedule::Constant => lr,
            Schedule::StepDecay { every, gamma } => {
                let times = step / every.max(1);
                lr * f64::from(gamma).powi(times.min(i32::MAX as u64) as i32)
            }
            Schedule::Cosine { warmup_steps, total_steps, min_lr } => {
                if step < warmup_steps {
                    lr * (step + 1) as f64 / warmup_steps as f64
                } else {
                    let span = total_steps.saturating_sub(warmup_steps).max(1);
                    let progress = ((step - warmup_steps) as f64 / span as f64).min(1.0);
                    let min_lr = f64::from(min_lr);
                    min_lr + (lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
                }
            }
        };
        rate as f32
    }

    /// Checks that every number is in its range.
    ///
    /// # Errors
    /// The first field out of range.
    pub fn validate(&self) -> Result<(), OptimError> {
        let bad = |field: &'static str, message: &str| Err(OptimError::Config { field, message: message.to_owned() });
        if !(self.learning_rate.is_finite() && self.learning_rate >= 0.0) {
            return bad("learning_rate", "must be a finite number of at least 0");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight_decay", "must be a finite number of at least 0");
        }
        if self.clip_norm.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
            return bad("clip_norm", "must be a finite number above 0");
        }
        match self.method {
            Method::Sgd { momentum, .. } if !(0.0..1.0).contains(&momentum) => {
                return bad("momentum", "must be at least 0 and below 1");
            }
            Method::Adam { beta1, beta2, epsilon } => {
                if !(0.0..1.0).contains(&beta1) {
                    return bad("beta1", "must be at least 0 and below 1");
                }
                if !(0.0..1.0).contains(&beta2) {
                    return bad("beta2", "must be at least 0 and below 1");
                }
                if !(epsilon.is_finite() && epsilon > 0.0) {
                    return bad("epsilon", "must be a finite number above 0");
                }
            }
            Method::Sgd { .. } => {}
        }
        match self.schedule {
            Schedule::StepDecay { every: 0, .. } => bad("every", "must be at least 1"),
            Schedule::StepDecay { gamma, .. } if !(gamma.is_finite() && gamma > 0.0) => {
                bad("gamma", "must be a finite number above 0")
            }
            Schedule::Cosine { min_lr, .. } if !(min_lr.is_finite() && min_lr >= 0.0) => {
                bad("min_lr", "must be a finite number of at least 0")
            }
            Schedule::Cosine { warmup_steps, total_steps, .. } if total_steps < warmup_steps => {
                bad("total_steps", "must be at least warmup_steps")
            }
            _ => Ok(()),
        }
    }
}

/// What an optimiser remembers between steps; the server checkpoints it with the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimizerState {
    /// Steps taken so far; the next step is `step`.
    pub step: u64,
    /// SGD's momentum buffer or Adam's first moment; empty for SGD without momentum.
    pub first_moment: Vec<f32>,
    /// Adam's second moment; empty for SGD.
    pub second_moment: Vec<f32>,
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// The learning rate used.
    pub lr: f32,
    /// The gradient's global L2 norm before clipping.
    pub grad_norm: f64,
    pub clipped: bool,
}

/// Why an optimiser could not be made or could not step.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OptimError {
    #[error("optimizer {field} {message}")]
    Config { field: &'static str, message: String },
    #[error("the buffer has {found} values, but the optimizer is for {expected} parameters")]
    Length { expected: usize, found: usize },
    #[error("the state's moment buffers do not fit the optimizer's method and {expected} parameters")]
    State { expected: usize },
    #[error("the gradient is not finite (its norm is {0})")]
    NonFinite(f64),
}

/// An optimiser over a flat `f32` parameter buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct Optimizer {
    config: OptimizerConfig,
    state: OptimizerState,
    n_params: usize,
}

impl Optimizer {
    /// A fresh optimiser (step 0, zero moments) for `n_params` parameters.
    ///
    /// # Errors
    /// A config with a number out of range.
    pub fn new(config: OptimizerConfig, n_params: usize) -> Result<Optimizer, OptimError> {
        config.validate()?;
        let (first, second) = moment_lengths(&config.method, n_params);
        let state = OptimizerState { step: 0, first_moment: vec![0.0; first], second_moment: vec![0.0; second] };
        Ok(Optimizer { config, state, n_params })
    }

    /// An optimiser restored from a checkpoint.
    ///
    /// # Errors
    /// A config out of range, or moment buffers that do not fit the method and `n_params`.
    pub fn restore(config: OptimizerConfig, state: OptimizerState, n_params: usize) -> Result<Optimizer, OptimError> {
        config.validate()?;
        let (first, second) = moment_lengths(&config.method, n_params);
        if state.first_moment.len() != first || state.second_moment.len() != second {
            return Err(OptimError::State { expected: n_params });
        }
        Ok(Optimizer { config, state, n_params })
    }

    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    pub fn state(&self) -> &OptimizerState {
        &self.state
    }

    /// The number of steps taken.
    pub fn steps(&self) -> u64 {
        self.state.step
    }

    /// The learning rate the next step will use.
    pub fn next_lr(&self) -> f32 {
        self.config.lr_at(self.state.step)
    }

    /// Applies one update to `params` from `grad` (see the module docs for the exact rule).
    ///
    /// # Errors
    /// Buffers of the wrong length, or a gradient that is not finite; then nothing changes.
    pub fn step(&mut self, params: &mut [f32], grad: &[f32]) -> Result<StepReport, OptimError> {
        for len in [params.len(), grad.len()] {
            if len != self.n_params {
                return Err(OptimError::Length { expected: self.n_params, found: len });
            }
        }
        let grad_norm = grad.iter().map(|&g| f64::from(g) * f64::from(g)).sum::<f64>().sqrt();
        if !grad_norm.is_finite() {
            return Err(OptimError::NonFinite(grad_norm));
        }
        let (clipped, scale) = match self.config.clip_norm {
            Some(c) if grad_norm > f64::from(c) => (true, (f64::from(c) / grad_norm) as f32),
            _ => (false, 1.0),
        };
        let lr = self.next_lr();
        let wd = self.config.weight_decay;
        let state = &mut self.state;
        match self.config.method {
            Method::Sgd { momentum, nesterov } => {
                if momentum == 0.0 {
                    for (p, &g) in params.iter_mut().zip(grad) {
                        let g = g * scale + wd * *p;
                        *p -= lr * g;
                    }
                } else {
                    for ((p, &g), buf) in params.iter_mut().zip(grad).zip(&mut state.first_moment) {
                        let g = g * scale + wd * *p;
                        *buf = momentum * *buf + g;
                        let direction = if nesterov { g + momentum * *buf } else { *buf };
                        *p -= lr * direction;
                    }
                }
            }
            Method::Adam { beta1, beta2, epsilon } => {
                let t = state.step.saturating_add(1).min(i32::MAX as u64) as i32;
                let correction1 = (1.0 - f64::from(beta1).powi(t)) as f32;
                let correction2 = (1.0 - f64::from(beta2).powi(t)) as f32;
                let moments = state.first_moment.iter_mut().zip(&mut state.second_moment);
                for ((p, &g), (m, v)) in params.iter_mut().zip(grad).zip(moments) {
                    let g = g * scale;
                    *m = beta1 * *m + (1.0 - beta1) * g;
                    *v = beta2 * *v + (1.0 - beta2) * g * g;
                    let update = (*m / correction1) / ((*v / correction2).sqrt() + epsilon);
                    *p = *p - lr * update - lr * wd * *p;
                }
            }
        }
        state.step += 1;
        Ok(StepReport { lr, grad_norm, clipped })
    }
}

/// The lengths of the first and second moment buffers of `method`.
fn moment_lengths(method: &Method, n_params: usize) -> (usize, usize) {
    match *method {
        Method::Sgd { momentum: 0.0, .. } => (0, 0),
        Method::Sgd { .. } => (n_params, 0),
        Method::Adam { .. } => (n_params, n_params),
    }
}
