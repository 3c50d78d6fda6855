//! The GPU trainer: a model's forward pass, loss, backward pass and SGD update as WGSL kernels, with
//! parameters, the shard and every intermediate tensor resident on the GPU.
//!
//! A training call uploads only the minibatches' sample indices and a small per-step uniform, runs
//! `local_steps` steps (gather, forward, loss, backward, update) without reading anything back, then reads
//! back the parameter delta and two numbers (summed loss and correct count). The launches of one step
//! are prepared once per batch size (a [`Plan`]: pipelines, bind groups and uniforms) and reused.

use std::collections::HashMap;

use daig_shared::model::{Activation, Layer, Loss, Model};

use super::context::{Dispatch, Gpu, GpuError, linear_workgroups};
use super::kernels::{self, op, window_op};
use super::matmul::{FusedActivation, Matmul, MatmulTiles};

/// Prepared plans kept at once (training and evaluation at the usual batch sizes, and a few others).
const MAX_PLANS: usize = 6;

/// What a training call returns: the change of the parameters and the loss before each update.
#[derive(Debug, Clone, PartialEq)]
pub struct StepResult {
    /// New parameters minus the parameters the call started from (for one step: `-lr * gradient`).
    pub delta: Vec<f32>,
    /// The mean loss over the samples, each measured before the update of its minibatch.
    pub mean_loss: f32,
    /// The share of predictions that were right during training, where the engine measures it (the GPU
    /// does; the CPU reference trainer does not) and the loss has an accuracy.
    pub accuracy: Option<f32>,
    pub samples: usize,
}

/// The seed and first step of the dropout masks of a training call; step `k` of the call uses
/// `first_step + k`, as in the reference trainer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DropoutSeed {
    pub seed: u64,
    pub first_step: u64,
}

/// Buffers of one layer beyond its output.
struct LayerBuffers {
    /// The layer's output `[batch, output elements]` (aliases its input for flatten and passthroughs).
    out: wgpu::Buffer,
    /// The gradient of the loss with respect to `out`.
    d_out: wgpu::Buffer,
    /// Pre-activation values, where the activation is not fused into the matmul (softmax).
    pre: Option<wgpu::Buffer>,
    /// The gradient with respect to the matmul's output (before the activation).
    d_pre: Option<wgpu::Buffer>,
    /// im2col columns and their gradient, for conv2d.
    cols: Option<(wgpu::Buffer, wgpu::Buffer)>,
    /// Positions of the maxima, for max pooling.
    argmax: Option<wgpu::Buffer>,
}

/// The prepared launches of one step at one batch size.
struct Plan {
    gather: Vec<Dispatch>,
    forward: Vec<Dispatch>,
    loss: Vec<Dispatch>,
    backward: Vec<Dispatch>,
    update: Vec<Dispatch>,
}

/// The data the trainer samples minibatches from: features `[n, input elements]` (normalised f32) and
/// labels `[n, label width]` (class indices as f32 for cross-entropy, targets otherwise).
struct Shard {
    features: wgpu::Buffer,
    labels: wgpu::Buffer,
    samples: usize,
}

/// The GPU trainer of one model.
pub struct GpuTrainer {
    gpu: Gpu,
    model: Model,
    max_batch: usize,
    tiles: MatmulTiles,
    /// One buffer per parameter tensor (layout order), with its gradient and the values a call started from.
    params: Vec<wgpu::Buffer>,
    grads: Vec<wgpu::Buffer>,
    start: Vec<wgpu::Buffer>,
    input: wgpu::Buffer,
    labels: wgpu::Buffer,
    layers: Vec<LayerBuffers>,
    indices: wgpu::Buffer,
    /// `[summed loss, correct count]`, accumulated over a call's steps.
    totals: wgpu::Buffer,
    stats: wgpu::Buffer,
    step: wgpu::Buffer,
    dummy: wgpu::Buffer,
    shard: Option<Shard>,
    plans: HashMap<(usize, bool), Plan>,
}

impl GpuTrainer {
    /// Allocates every buffer for minibatches of up to `max_batch` samples.
    ///
    /// # Errors
    /// When a buffer is larger than the device allows.
    pub fn new(gpu: Gpu, model: Model, max_batch: usize) -> Result<GpuTrainer, GpuError> {
        let max_batch = max_batch.max(1);
        let largest = model.layers.iter().map(|l| l.output.elements().unwrap_or(usize::MAX)).max().unwrap_or(0);
        let cols = model
            .layers
            .iter()
            .filter_map(|l| l.window.map(|w| w.out_h * w.out_w * w.kernel.h * w.kernel.w * w.in_c))
            .max()
            .unwrap_or(0);
        let per_sample = largest.max(cols).max(model.input_shape().elements().unwrap_or(usize::MAX));
        if per_sample.checked_mul(max_batch).and_then(|n| n.checked_mul(4)).is_none() {
            return Err(GpuError::TooLarge("a batch", u64::MAX, gpu.limits.max_buffer_size));
        }
        let tiles = MatmulTiles::for_gpu(&gpu);
        let mut params = Vec::new();
        let mut grads = Vec::new();
        let mut start = Vec::new();
        for t in &model.params.tensors {
            params.push(gpu.buffer("param", t.len)?);
            grads.push(gpu.buffer("grad", t.len)?);
            start.push(gpu.buffer("start", t.len)?);
        }
        let in_elems = model.input_shape().elements().unwrap_or(0);
        let input = gpu.buffer("input", max_batch * in_elems)?;
        let label_width = label_width(&model);
        let labels = gpu.buffer("labels", max_batch * label_width)?;
        let mut layers: Vec<LayerBuffers> = Vec::new();
        let fused_last = model.output_activation_fused;
        for (i, info) in model.layers.iter().enumerate() {
            let n = max_batch * info.output.elements().unwrap_or(0);
            let prev_out = layers.last().map_or(&input, |l| &l.out).clone();
            let prev_d = layers.last().map(|l| l.d_out.clone());
            let last = i + 1 == model.layers.len();
            let passthrough = matches!(info.layer, Layer::Flatten)
                || (last && fused_last && matches!(info.layer, Layer::Activation { .. }));
            let (out, d_out) = if passthrough {
                (prev_out, prev_d.unwrap_or(gpu.buffer("d_input", n)?))
            } else {
                (gpu.buffer("out", n)?, gpu.buffer("d_out", n)?)
            };
            let act = info.layer.activation();
            let matmul_layer = matches!(info.layer, Layer::Dense { .. } | Layer::Conv2d { .. });
            let softmax_after = matmul_layer && act == Some(Activation::Softmax) && !(last && fused_last);
            let pre = if softmax_after { Some(gpu.buffer("pre", n)?) } else { None };
            let d_pre = if matmul_layer && act.is_some_and(|a| a != Activation::Linear) {
                Some(gpu.buffer("d_pre", n)?)
            } else {
                None
            };
            let cols = match info.window {
                Some(w) if matches!(info.layer, Layer::Conv2d { .. }) => {
                    let len = max_batch * w.out_h * w.out_w * w.kernel.h * w.kernel.w * w.in_c;
                    Some((gpu.buffer("cols", len)?, gpu.buffer("d_cols", len)?))
                }
                _ => None,
            };
            let argmax =
                if matches!(info.layer, Layer::MaxPool2d { .. }) { Some(gpu.u32_buffer("argmax", n)?) } else { None };
            layers.push(LayerBuffers { out, d_out, pre, d_pre, cols, argmax });
        }
        Ok(GpuTrainer {
            indices: gpu.u32_buffer("indices", max_batch)?,
            totals: gpu.buffer("totals", 2)?,
            stats: gpu.buffer("stats", 2 * max_batch)?,
            step: gpu.uniform(&[0; 8]),
            dummy: gpu.buffer("dummy", 1)?,
            input,
            labels,
            layers,
            params,
            grads,
            start,
            tiles,
            max_batch,
            shard: None,
            plans: HashMap::new(),
            model,
            gpu,
        })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Gives the GPU context back, for another model.
    pub fn into_gpu(self) -> Gpu {
        self.gpu
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Uploads parameters (a flat buffer in the model's layout).
    ///
    /// # Errors
    /// When `params` does not have the model's parameter count.
    pub fn load_params(&mut self, params: &[f32]) -> Result<(), GpuError> {
        if params.len() != self.model.params.total {
            return Err(GpuError::Validation(format!(
                "{} parameters given, the model has {}",
                params.len(),
                self.model.params.total
            )));
        }
        for (t, buf) in self.model.params.tensors.iter().zip(&self.params) {
            self.gpu.write(buf, &params[t.range()]);
        }
        Ok(())
    }

    /// Reads the parameters back.
    ///
    /// # Errors
    /// When reading back fails.
    pub async fn read_params(&self) -> Result<Vec<f32>, GpuError> {
        self.read_tensors(&self.params).await
    }

    /// Uploads the samples minibatches are drawn from: `features` is `[n, input elements]`, `labels` is
    /// `[n, label width]` (one class index per sample for cross-entropy, the targets otherwise).
    ///
    /// # Errors
    /// Lengths that do not agree with the model, class labels out of range, or a shard larger than the
    /// device allows.
    pub fn load_shard(&mut self, features: &[f32], labels: &[f32]) -> Result<(), GpuError> {
        let in_elems = self.model.input_shape().elements().unwrap_or(1);
        let samples = features.len() / in_elems;
        let bad = |m: String| Err(GpuError::Validation(m));
        if samples * in_elems != features.len() {
            return bad(format!("{} feature values are not whole samples of {in_elems}", features.len()));
        }
        if labels.len() != samples * label_width(&self.model) {
            return bad(format!("{} label values do not match {samples} samples", labels.len()));
        }
        let classes = self.model.output_shape().elements().unwrap_or(0);
        if self.model.spec.loss == Loss::CrossEntropy
            && let Some(c) = invalid_class(labels, classes)
        {
            // The loss kernel reads the logit of the label: an out-of-range class must never reach it.
            return bad(format!("class {c} is not one of the model's {classes} classes"));
        }
        let features_buf = self.gpu.buffer_from("shard features", features)?;
        let labels_buf = self.gpu.buffer_from("shard labels", labels)?;
        self.shard = Some(Shard { features: features_buf, labels: labels_buf, samples });
        self.plans.clear();
        Ok(())
    }

    /// Runs `local_steps` plain SGD steps at learning rate `lr` and returns the parameter delta, the
    /// mean loss and the sample count, exactly as the reference trainer's `train_local`: minibatch `s`
    /// holds `indices[(s * b + j) % len]` for `j < b = min(batch_size, len)`.
    ///
    /// # Errors
    /// GPU errors; no indices or steps; an index outside the shard; a batch size above the trainer's
    /// maximum.
    pub async fn train(
        &mut self,
        indices: &[u32],
        batch_size: usize,
        local_steps: usize,
        lr: f32,
        dropout: DropoutSeed,
    ) -> Result<StepResult, GpuError> {
        if indices.is_empty() || local_steps == 0 {
            return Err(GpuError::Validation("a training call needs sample indices and at least one step".into()));
        }
        let b = batch_size.min(indices.len());
        self.check_indices(indices, b)?;
        let mut encoder = self.gpu.device.create_command_encoder(&Default::default());
        for (src, dst) in self.params.iter().zip(&self.start) {
            encoder.copy_buffer_to_buffer(src, 0, dst, 0, src.size());
        }
        encoder.clear_buffer(&self.totals, 0, None);
        self.gpu.queue.submit([encoder.finish()]);
        let outcome = self.run_steps(indices, b, local_steps, lr, dropout).await;
        if let Err(e) = outcome {
            // Leave the parameters as the call found them, so that a failed call changes nothing.
            let mut encoder = self.gpu.device.create_command_encoder(&Default::default());
            for (start, params) in self.start.iter().zip(&self.params) {
                encoder.copy_buffer_to_buffer(start, 0, params, 0, start.size());
            }
            self.gpu.queue.submit([encoder.finish()]);
            return Err(e);
        }
        outcome
    }

    /// The steps of [`GpuTrainer::train`] after its checks, then the delta and totals read back.
    async fn run_steps(
        &mut self,
        indices: &[u32],
        b: usize,
        local_steps: usize,
        lr: f32,
        dropout: DropoutSeed,
    ) -> Result<StepResult, GpuError> {
        let mut chunk = Vec::with_capacity(b);
        for k in 0..local_steps {
            chunk.clear();
            chunk.extend((0..b).map(|j| indices[(k * b + j) % indices.len()]));
            let chunk = &chunk[..];
            let step = dropout.first_step.wrapping_add(k as u64);
            let seed = dropout.seed;
            let words = [step as u32, (step >> 32) as u32, seed as u32, (seed >> 32) as u32, lr.to_bits(), 0, 0, 0];
            self.gpu.write_words(&self.step, &words);
            self.gpu.write_words(&self.indices, chunk);
            self.ensure_plan(chunk.len(), true)?;
            let plan = &self.plans[&(chunk.len(), true)];
            let all: Vec<&Dispatch> = plan
                .gather
                .iter()
                .chain(&plan.forward)
                .chain(&plan.loss)
                .chain(&plan.backward)
                .chain(&plan.update)
                .collect();
            let gpu = &self.gpu;
            gpu.checked(|| {
                gpu.run(&all);
                Ok(())
            })
            .await?;
        }
        // delta = params - start, into the gradient buffers (free now).
        let mut deltas = Vec::new();
        for (i, t) in self.model.params.tensors.iter().enumerate() {
            let p = self.gpu.uniform(&elementwise_params(t.len as u32, 0, 0, 0.0));
            deltas.push(self.gpu.dispatch(
                &kernels::ELEMENTWISE,
                &[],
                &[("OP", op::DIFFERENCE)],
                &[&p, &self.step, &self.params[i], &self.start[i], &self.grads[i]],
                linear_workgroups(t.len),
            ));
        }
        self.gpu.run(&deltas.iter().collect::<Vec<_>>());
        let delta = self.read_tensors(&self.grads).await?;
        let totals = self.gpu.read(&self.totals, 2).await?;
        let samples = b * local_steps;
        Ok(StepResult {
            delta,
            mean_loss: totals[0] / samples as f32,
            accuracy: (judged_per_sample(&self.model) > 0)
                .then(|| totals[1] / (samples * judged_per_sample(&self.model)) as f32),
            samples,
        })
    }

    /// The mean loss and accuracy over the given samples, without dropout and without changing anything.
    ///
    /// # Errors
    /// GPU errors; an index outside the shard.
    pub async fn evaluate(&mut self, indices: &[u32]) -> Result<(f32, f32), GpuError> {
        let batch = self.max_batch;
        self.check_indices(indices, batch)?;
        let mut encoder = self.gpu.device.create_command_encoder(&Default::default());
        encoder.clear_buffer(&self.totals, 0, None);
        self.gpu.queue.submit([encoder.finish()]);
        for chunk in indices.chunks(batch) {
            self.gpu.write_words(&self.indices, chunk);
            self.ensure_plan(chunk.len(), false)?;
            let plan = &self.plans[&(chunk.len(), false)];
            let all: Vec<&Dispatch> = plan.gather.iter().chain(&plan.forward).chain(&plan.loss).collect();
            self.gpu.run(&all);
        }
        let totals = self.gpu.read(&self.totals, 2).await?;
        let n = indices.len().max(1);
        Ok((totals[0] / n as f32, totals[1] / (n * judged_per_sample(&self.model)).max(1) as f32))
    }

    fn check_indices(&self, indices: &[u32], batch_size: usize) -> Result<(), GpuError> {
        let samples = self.shard.as_ref().map_or(0, |s| s.samples);
        if batch_size == 0 || batch_size > self.max_batch {
            return Err(GpuError::Validation(format!(
                "batch size {batch_size} is outside 1..={} that this trainer was made for",
                self.max_batch
            )));
        }
        if let Some(bad) = indices.iter().find(|&&i| i as usize >= samples) {
            return Err(GpuError::Validation(format!("sample index {bad} is outside the shard of {samples} samples")));
        }
        Ok(())
    }

    async fn read_tensors(&self, buffers: &[wgpu::Buffer]) -> Result<Vec<f32>, GpuError> {
        let total = self.model.params.total;
        let all = self.gpu.buffer("readback", total)?;
        let mut encoder = self.gpu.device.create_command_encoder(&Default::default());
        for (t, buf) in self.model.params.tensors.iter().zip(buffers) {
            encoder.copy_buffer_to_buffer(buf, 0, &all, (t.offset * 4) as u64, (t.len * 4) as u64);
        }
        self.gpu.queue.submit([encoder.finish()]);
        self.gpu.read(&all, total).await
    }

    fn ensure_plan(&mut self, batch: usize, training: bool) -> Result<(), GpuError> {
        if !self.plans.contains_key(&(batch, training)) {
            // Plans hold their own uniforms and split-K buffers: keep a few, not one per batch size ever seen.
            if self.plans.len() >= MAX_PLANS {
                self.plans.clear();
            }
            let plan = self.build_plan(batch, training)?;
            self.plans.insert((batch, training), plan);
        }
        Ok(())
    }

    fn build_plan(&self, batch: usize, training: bool) -> Result<Plan, GpuError> {
        let gpu = &self.gpu;
        let shard = self.shard.as_ref().ok_or_else(|| GpuError::Validation("no shard is loaded".into()))?;
        let model = &self.model;
        let b = batch as u32;
        let in_elems = model.input_shape().elements().unwrap_or(0);
        let lw = label_width(model);
        let tensor_of = |layer: usize| {
            let i = model.params.tensors.iter().position(|t| t.layer == layer).expect("layer has parameters");
            (i, i + 1)
        };

        let gather = vec![
            gather(gpu, b, in_elems as u32, &self.indices, &shard.features, &self.input),
            gather(gpu, b, lw as u32, &self.indices, &shard.labels, &self.labels),
        ];

        let mut forward = Vec::new();
        let mut backward = Vec::new();
        let n_layers = model.layers.len();
        for (i, info) in model.layers.iter().enumerate() {
            let lb = &self.layers[i];
            let input = if i == 0 { &self.input } else { &self.layers[i - 1].out };
            let d_input = if i == 0 { None } else { Some(&self.layers[i - 1].d_out) };
            let out_n = b * info.output.elements().unwrap_or(0) as u32;
            let last = i + 1 == n_layers;
            let fused_here = last && model.output_activation_fused;
            let mut back = Vec::new();
            match &info.layer {
                Layer::Dense { .. } | Layer::Conv2d { .. } => {
                    let (ki, bi) = tensor_of(i);
                    let act = if fused_here { Activation::Linear } else { info.layer.activation().unwrap_or_default() };
                    let (x, rows, k) = match (&info.layer, info.window, &lb.cols) {
                        (Layer::Conv2d { .. }, Some(w), Some((cols, _))) => {
                            let geo = gpu.uniform(&window_geometry(b, &w));
                            let cols_n = b as usize * w.out_h * w.out_w * w.kernel.h * w.kernel.w * w.in_c;
                            forward.push(gpu.dispatch(
                                &kernels::WINDOW,
                                &[],
                                &[("OP", window_op::IM2COL)],
                                &[&geo, input, cols, &self.dummy],
                                linear_workgroups(cols_n),
                            ));
                            (cols, b as usize * w.out_h * w.out_w, w.kernel.h * w.kernel.w * w.in_c)
                        }
                        _ => (input, b as usize, info.input.0[0]),
                    };
                    let units = model.params.tensors[bi].len;
                    let fused = match act {
                        Activation::Relu => FusedActivation::Relu,
                        Activation::Sigmoid => FusedActivation::Sigmoid,
                        Activation::Tanh => FusedActivation::Tanh,
                        Activation::Linear | Activation::Softmax => FusedActivation::Linear,
                    };
                    let mm = Matmul { activation: fused, ..Matmul::new(rows, units, k) }.auto_split(gpu, self.tiles);
                    let target = lb.pre.as_ref().unwrap_or(&lb.out);
                    forward.extend(mm.prepare(gpu, self.tiles, x, &self.params[ki], Some(&self.params[bi]), target)?);
                    if act == Activation::Softmax {
                        forward.push(softmax(gpu, 0, b, units as u32, target, &self.dummy, &lb.out));
                    }
                    // Backward: dz = d_out through the activation; then dW, db and the input gradient.
                    let dz = match (act, &lb.d_pre) {
                        (Activation::Softmax, Some(d_pre)) => {
                            back.push(softmax(gpu, 1, b, units as u32, &lb.d_out, &lb.out, d_pre));
                            d_pre
                        }
                        (Activation::Linear, _) | (_, None) => &lb.d_out,
                        (a, Some(d_pre)) => {
                            back.push(elementwise(
                                gpu,
                                op::ACTIVATE_BACKWARD,
                                (rows * units) as u32,
                                a,
                                &self.step,
                                &lb.d_out,
                                &lb.out,
                                d_pre,
                            ));
                            d_pre
                        }
                    };
                    let dw = Matmul { trans_a: true, ..Matmul::new(k, units, rows) }.auto_split(gpu, self.tiles);
                    back.extend(dw.prepare(gpu, self.tiles, x, dz, None, &self.grads[ki])?);
                    back.push(reduce(gpu, rows as u32, units as u32, false, dz, &self.grads[bi]));
                    match (&lb.cols, info.window, d_input) {
                        (Some((_, d_cols)), Some(w), Some(d_input)) => {
                            let dx =
                                Matmul { trans_b: true, ..Matmul::new(rows, k, units) }.auto_split(gpu, self.tiles);
                            back.extend(dx.prepare(gpu, self.tiles, dz, &self.params[ki], None, d_cols)?);
                            let geo = gpu.uniform(&window_geometry(b, &w));
                            back.push(gpu.dispatch(
                                &kernels::WINDOW,
                                &[],
                                &[("OP", window_op::COL2IM)],
                                &[&geo, d_cols, d_input, &self.dummy],
                                linear_workgroups(b as usize * w.in_h * w.in_w * w.in_c),
                            ));
                        }
                        (None, _, Some(d_input)) => {
                            let dx =
                                Matmul { trans_b: true, ..Matmul::new(rows, k, units) }.auto_split(gpu, self.tiles);
                            back.extend(dx.prepare(gpu, self.tiles, dz, &self.params[ki], None, d_input)?);
                        }
                        _ => {}
                    }
                }
                Layer::MaxPool2d { .. } | Layer::AvgPool2d { .. } => {
                    let w = info.window.expect("pooling has a window");
                    let max = matches!(info.layer, Layer::MaxPool2d { .. });
                    let geo = gpu.uniform(&window_geometry(b, &w));
                    let arg = lb.argmax.as_ref().unwrap_or(&self.dummy);
                    let (fwd_op, bwd_op) = if max {
                        (window_op::MAX_POOL, window_op::MAX_POOL_BACKWARD)
                    } else {
                        (window_op::AVG_POOL, window_op::AVG_POOL_BACKWARD)
                    };
                    forward.push(gpu.dispatch(
                        &kernels::WINDOW,
                        &[],
                        &[("OP", fwd_op)],
                        &[&geo, input, &lb.out, arg],
                        linear_workgroups(out_n as usize),
                    ));
                    if let Some(d_input) = d_input {
                        let in_n = b as usize * w.in_h * w.in_w * w.in_c;
                        back.push(gpu.dispatch(
                            &kernels::WINDOW,
                            &[],
                            &[("OP", bwd_op)],
                            &[&geo, &lb.d_out, d_input, arg],
                            linear_workgroups(in_n),
                        ));
                    }
                }
                Layer::Flatten => {}
                Layer::Dropout { rate } => {
                    let rate = if training { *rate } else { 0.0 };
                    let p = gpu.uniform(&elementwise_params(out_n, 0, i as u32, rate));
                    forward.push(gpu.dispatch(
                        &kernels::ELEMENTWISE,
                        &[],
                        &[("OP", op::DROPOUT)],
                        &[&p, &self.step, input, input, &lb.out],
                        linear_workgroups(out_n as usize),
                    ));
                    if let Some(d_input) = d_input {
                        back.push(gpu.dispatch(
                            &kernels::ELEMENTWISE,
                            &[],
                            &[("OP", op::DROPOUT)],
                            &[&p, &self.step, &lb.d_out, &lb.d_out, d_input],
                            linear_workgroups(out_n as usize),
                        ));
                    }
                }
                Layer::Activation { activation } => {
                    if !fused_here {
                        let cols = info.output.elements().unwrap_or(0) as u32;
                        if *activation == Activation::Softmax {
                            forward.push(softmax(gpu, 0, b, cols, input, &self.dummy, &lb.out));
                            if let Some(d_input) = d_input {
                                back.push(softmax(gpu, 1, b, cols, &lb.d_out, &lb.out, d_input));
                            }
                        } else {
                            forward.push(elementwise(
                                gpu,
                                op::ACTIVATE,
                                out_n,
                                *activation,
                                &self.step,
                                input,
                                input,
                                &lb.out,
                            ));
                            if let Some(d_input) = d_input {
                                back.push(elementwise(
                                    gpu,
                                    op::ACTIVATE_BACKWARD,
                                    out_n,
                                    *activation,
                                    &self.step,
                                    &lb.d_out,
                                    &lb.out,
                                    d_input,
                                ));
                            }
                        }
                    }
                }
            }
            backward.push(back);
        }
        let backward: Vec<Dispatch> = backward.into_iter().rev().flatten().collect();

        let last = self.layers.last().expect("a model has layers");
        let outputs = model.output_shape().elements().unwrap_or(0) as u32;
        let loss_kind = match model.spec.loss {
            Loss::CrossEntropy => 0,
            Loss::MeanSquaredError => 1,
            Loss::BinaryCrossEntropy => 2,
        };
        let lp = gpu.uniform(&[b, outputs, 0, 0]);
        let loss = vec![
            gpu.dispatch(
                &kernels::LOSS,
                &[],
                &[("LOSS", loss_kind)],
                &[&lp, &last.out, &self.labels, &last.d_out, &self.stats],
                linear_workgroups(batch),
            ),
            reduce(gpu, b, 2, true, &self.stats, &self.totals),
        ];

        let mut update = Vec::new();
        if training {
            for (i, t) in model.params.tensors.iter().enumerate() {
                let p = gpu.uniform(&elementwise_params(t.len as u32, 0, 0, 0.0));
                update.push(gpu.dispatch(
                    &kernels::ELEMENTWISE,
                    &[],
                    &[("OP", op::SGD)],
                    &[&p, &self.step, &self.grads[i], &self.grads[i], &self.params[i]],
                    linear_workgroups(t.len),
                ));
            }
        }
        Ok(Plan { gather, forward, loss, backward, update })
    }
}

/// The first label that is not a class index below `classes` (a whole number in range), if any.
pub fn invalid_class(labels: &[f32], classes: usize) -> Option<f32> {
    labels.iter().copied().find(|&c| !(c >= 0.0 && c.fract() == 0.0 && (c as usize) < classes))
}

/// Values per sample in the labels buffer: 1 (the class) for cross-entropy, the output size otherwise.
fn label_width(model: &Model) -> usize {
    match model.spec.loss {
        Loss::CrossEntropy => 1,
        _ => model.output_shape().elements().unwrap_or(0),
    }
}

/// Predictions judged for accuracy per sample: 1 for cross-entropy, every output for binary
/// cross-entropy, none for mean squared error.
fn judged_per_sample(model: &Model) -> usize {
    match model.spec.loss {
        Loss::CrossEntropy => 1,
        Loss::BinaryCrossEntropy => model.output_shape().elements().unwrap_or(0),
        Loss::MeanSquaredError => 0,
    }
}

fn activation_code(a: Activation) -> u32 {
    match a {
        Activation::Relu => 1,
        Activation::Sigmoid => 2,
        Activation::Tanh => 3,
        Activation::Linear | Activation::Softmax => 0,
    }
}

fn elementwise_params(n: u32, act: u32, layer: u32, rate: f32) -> [u32; 8] {
    let scale = if rate > 0.0 { 1.0 / (1.0 - rate) } else { 1.0f32 };
    [n, act, layer, rate.to_bits(), scale.to_bits(), 0, 0, 0]
}

#[allow(clippy::too_many_arguments)]
fn elementwise(
    gpu: &Gpu,
    op: u32,
    n: u32,
    act: Activation,
    step: &wgpu::Buffer,
    x: &wgpu::Buffer,
    y: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Dispatch {
    let p = gpu.uniform(&elementwise_params(n, activation_code(act), 0, 0.0));
    gpu.dispatch(&kernels::ELEMENTWISE, &[], &[("OP", op)], &[&p, step, x, y, out], linear_workgroups(n as usize))
}

fn softmax(
    gpu: &Gpu,
    op: u32,
    rows: u32,
    cols: u32,
    x: &wgpu::Buffer,
    y: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Dispatch {
    let p = gpu.uniform(&[rows, cols, 0, 0]);
    gpu.dispatch(&kernels::SOFTMAX, &[], &[("OP", op)], &[&p, x, y, out], linear_workgroups(rows as usize))
}

fn reduce(gpu: &Gpu, rows: u32, cols: u32, accumulate: bool, x: &wgpu::Buffer, out: &wgpu::Buffer) -> Dispatch {
    let p = gpu.uniform(&[rows, cols, 0, 0]);
    let groups = [cols.min(65_535), cols.div_ceil(65_535), 1];
    gpu.dispatch(&kernels::REDUCE, &[], &[("ACCUM", u32::from(accumulate))], &[&p, x, out], groups)
}

fn gather(
    gpu: &Gpu,
    rows: u32,
    width: u32,
    indices: &wgpu::Buffer,
    src: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Dispatch {
    let p = gpu.uniform(&[rows, width, 0, 0]);
    gpu.dispatch(&kernels::GATHER, &[], &[], &[&p, indices, src, out], linear_workgroups((rows * width) as usize))
}

fn window_geometry(batch: u32, w: &daig_shared::model::Window2d) -> [u32; 12] {
    [
        batch,
        w.in_h as u32,
        w.in_w as u32,
        w.in_c as u32,
        w.out_h as u32,
        w.out_w as u32,
        w.kernel.h as u32,
        w.kernel.w as u32,
        w.strides.h as u32,
        w.strides.w as u32,
        w.pad_top as u32,
        w.pad_left as u32,
    ]
}
