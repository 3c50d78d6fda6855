//! [`Network`]: the forward and backward passes of a validated [`Model`], batched, over a flat parameter
//! buffer.

use std::ops::Range;

use ndarray::{ArrayView2, ArrayViewMut2};

use super::matmul::mat_mul;

use super::dropout::{dropout_keep, dropout_scale};
use super::loss::{check_labels, loss_and_grad, sigmoid};
use super::{Batch, BatchStats, DropoutKey, Labels, Mode, Real, TrainError};
use crate::model::{Activation, Layer, Loss, Model, Window2d};

/// Where a forward pass takes its samples from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Input<'a, A> {
    /// All rows of the view.
    Rows(ArrayView2<'a, A>),
    /// The rows `indices` of the view (checked by the caller), gathered straight into the input buffer.
    Picked(ArrayView2<'a, A>, &'a [u32]),
}

/// One layer, resolved for computation.
#[derive(Debug, Clone)]
enum Op {
    Dense {
        inputs: usize,
        units: usize,
        activation: Activation,
        kernel: Range<usize>,
        bias: Range<usize>,
    },
    Conv {
        win: Window2d,
        activation: Activation,
        kernel: Range<usize>,
        bias: Range<usize>,
    },
    MaxPool {
        win: Window2d,
    },
    AvgPool {
        win: Window2d,
    },
    /// Flatten only renames the shape: the data is copied as is.
    Flatten,
    Dropout {
        rate: f32,
        layer: u32,
    },
    Activation {
        activation: Activation,
    },
}

/// A model's forward and backward passes over the float type `A`.
///
/// A network owns no parameters: every call takes the flat buffer laid out as the model's
/// [`ParamLayout`](crate::params::ParamLayout). It owns the activations of the last forward pass and
/// the scratch buffers of the backward pass, sized for the largest batch seen and reused, so that steps
/// of the same batch size do not allocate.
#[derive(Debug, Clone)]
pub struct Network<A> {
    ops: Vec<Op>,
    /// Elements per sample of each layer's input (`sizes[i]`) and output (`sizes[i + 1]`).
    sizes: Vec<usize>,
    loss: Loss,
    /// Whether the last layer's activation is left to the loss (see [`Model::output_activation_fused`]).
    output_fused: bool,
    n_params: usize,
    /// The batch size of the last forward pass.
    batch: usize,
    /// `acts[0]` is the input, `acts[i + 1]` the output of layer `i`, each `[batch, sizes[i]]`.
    acts: Vec<Vec<A>>,
    /// The gradient of the loss with respect to `acts[i]`.
    grads: Vec<Vec<A>>,
    /// The im2col matrix of each conv2d layer's input, kept from the forward pass for the backward pass.
    cols: Vec<Vec<A>>,
    /// The gradient with respect to `cols`, for conv2d layers.
    dcols: Vec<Vec<A>>,
    /// For each max-pooling output element, the index within its sample of the input element it took.
    argmax: Vec<Vec<u32>>,
    /// The dropout masks of the last forward pass: `None` when it evaluated.
    dropout: Option<DropoutKey>,
}

impl<A: Real> Network<A> {
    /// The computation of `model`.
    pub fn new(model: &Model) -> Network<A> {
        let mut ops = Vec::with_capacity(model.layers.len());
        let mut sizes = vec![model.input_shape().elements().expect("a validated model's input fits usize")];
        for info in &model.layers {
            let params = || {
                let (k, b) = model.params.layer(info.index).expect("layers with weights have a kernel and bias");
                (k.range(), b.range())
            };
            let win = || info.window.expect("windowed layers have a window");
            let op = match &info.layer {
                Layer::Dense { units, activation } => {
                    let (kernel, bias) = params();
                    Op::Dense { inputs: info.input.0[0], units: *units, activation: *activation, kernel, bias }
                }
                Layer::Conv2d { activation, .. } => {
                    let (kernel, bias) = params();
                    Op::Conv { win: win(), activation: *activation, kernel, bias }
                }
                Layer::MaxPool2d { .. } => Op::MaxPool { win: win() },
                Layer::AvgPool2d { .. } => Op::AvgPool { win: win() },
                Layer::Flatten => Op::Flatten,
                Layer::Dropout { rate } => Op::Dropout { rate: *rate, layer: info.index as u32 },
                Layer::Activation { activation } => Op::Activation { activation: *activation },
            };
            ops.push(op);
            sizes.push(info.output.elements().expect("a validated model's shapes fit usize"));
        }
        let layers = ops.len();
        Network {
            ops,
            sizes,
            loss: model.spec.loss,
            output_fused: model.output_activation_fused,
            n_params: model.params.total,
            batch: 0,
            acts: vec![Vec::new(); layers + 1],
            grads: vec![Vec::new(); layers + 1],
            cols: vec![Vec::new(); layers],
            dcols: vec![Vec::new(); layers],
            argmax: vec![Vec::new(); layers],
            dropout: None,
        }
    }

    pub fn param_count(&self) -> usize {
        self.n_params
    }

    /// Elements of one input sample.
    pub fn input_elements(&self) -> usize {
        self.sizes[0]
    }

    /// Elements of one output sample.
    pub fn output_elements(&self) -> usize {
        self.sizes[self.ops.len()]
    }

    /// The model's predictions for `x` (`[samples, input elements]`): its output with the last layer's
    /// activation applied (probabilities for a softmax or sigmoid output), `[samples, output elements]`.
    /// Dropout is the identity.
    ///
    /// # Errors
    /// A parameter buffer of the wrong length, or samples of the wrong width or none.
    pub fn predict(&mut self, params: &[A], x: ArrayView2<'_, A>) -> Result<ArrayView2<'_, A>, TrainError> {
        self.forward(params, Input::Rows(x), Mode::Eval)?;
        let k = self.output_elements();
        let last = self.ops.len();
        if self.output_fused {
            let activation = self.ops[last - 1].activation().expect("a fused output layer has an activation");
            activate(activation, &mut self.acts[last], k);
        }
        Ok(self.output())
    }

    /// The mean loss and the accuracy of `batch`, without gradients.
    ///
    /// # Errors
    /// A parameter buffer of the wrong length, samples of the wrong width or none, or labels that do not
    /// fit the model's loss and output.
    pub fn loss(&mut self, params: &[A], batch: &Batch<'_, A>, mode: Mode) -> Result<BatchStats, TrainError> {
        check_labels(self.loss, self.output_elements(), batch.x.nrows(), &batch.y)?;
        self.forward(params, Input::Rows(batch.x), mode)?;
        let last = self.ops.len();
        Ok(loss_and_grad(self.loss, &self.acts[last], self.output_elements(), &batch.y, None))
    }

    /// The mean loss of `batch` and its gradient with respect to the parameters, written into `grad`
    /// (overwritten, laid out as the parameters).
    ///
    /// # Errors
    /// As [`Network::loss`], and a gradient buffer of the wrong length.
    pub fn gradient(
        &mut self,
        params: &[A],
        batch: &Batch<'_, A>,
        mode: Mode,
        grad: &mut [A],
    ) -> Result<BatchStats, TrainError> {
        self.gradients(params, Input::Rows(batch.x), &batch.y, mode, grad, false)
    }

    /// Like [`Network::gradient`], also writing the gradient with respect to the inputs into `input_grad`
    /// (`[samples, input elements]` row-major).
    ///
    /// # Errors
    /// As [`Network::gradient`], and an input gradient buffer of the wrong length.
    pub fn gradient_with_input(
        &mut self,
        params: &[A],
        batch: &Batch<'_, A>,
        mode: Mode,
        grad: &mut [A],
        input_grad: &mut [A],
    ) -> Result<BatchStats, TrainError> {
        let expected = batch.x.len();
        if input_grad.len() != expected {
            return Err(TrainError::InputGradientLength { expected, found: input_grad.len() });
        }
        let stats = self.gradients(params, Input::Rows(batch.x), &batch.y, mode, grad, true)?;
        input_grad.copy_from_slice(&self.grads[0]);
        Ok(stats)
    }

    /// The loss and gradients of the samples `x` labelled `y`; the input gradient is left in `grads[0]`
    /// when `input_grad`.
    pub(crate) fn gradients(
        &mut self,
        params: &[A],
        x: Input<'_, A>,
        y: &Labels<'_>,
        mode: Mode,
        grad: &mut [A],
        input_grad: bool,
    ) -> Result<BatchStats, TrainError> {
        if grad.len() != self.n_params {
            return Err(TrainError::GradientLength { expected: self.n_params, found: grad.len() });
        }
        let samples = match x {
            Input::Rows(x) => x.nrows(),
            Input::Picked(_, indices) => indices.len(),
        };
        check_labels(self.loss, self.output_elements(), samples, y)?;
        self.forward(params, x, mode)?;
        let last = self.ops.len();
        let k = self.output_elements();
        let stats = loss_and_grad(self.loss, &self.acts[last], k, y, Some(&mut self.grads[last]));
        self.backward(params, grad, input_grad);
        Ok(stats)
    }

    /// The output of the last forward pass, `[batch, output elements]`.
    fn output(&self) -> ArrayView2<'_, A> {
        let last = self.ops.len();
        ArrayView2::from_shape((self.batch, self.sizes[last]), &self.acts[last][..]).expect("sized by forward")
    }

    /// The activation layer `i` applies in the training forward pass: the output layer's softmax or
    /// sigmoid is left to the loss when fused.
    fn effective_activation(&self, i: usize) -> impl Fn(Activation) -> Activation + use<A> {
        let fused = self.output_fused && i + 1 == self.ops.len();
        move |activation| if fused { Activation::Linear } else { activation }
    }

    fn resize(&mut self, n: usize) {
        self.batch = n;
        for (i, op) in self.ops.iter().enumerate() {
            match op {
                Op::Conv { win, .. } => {
                    let len = n * win.out_h * win.out_w * win.kernel.h * win.kernel.w * win.in_c;
                    self.cols[i].resize(len, A::zero());
                    self.dcols[i].resize(len, A::zero());
                }
                Op::MaxPool { .. } => self.argmax[i].resize(n * self.sizes[i + 1], 0),
                _ => {}
            }
        }
        for (i, &size) in self.sizes.iter().enumerate() {
            self.acts[i].resize(n * size, A::zero());
            self.grads[i].resize(n * size, A::zero());
        }
    }

    /// Runs the training forward pass (logits when the output activation is fused) into `acts`.
    fn forward(&mut self, params: &[A], input: Input<'_, A>, mode: Mode) -> Result<(), TrainError> {
        let (x, n) = match input {
            Input::Rows(x) => (x, x.nrows()),
            Input::Picked(x, indices) => (x, indices.len()),
        };
        if params.len() != self.n_params {
            return Err(TrainError::ParamCount { expected: self.n_params, found: params.len() });
        }
        if x.ncols() != self.sizes[0] {
            return Err(TrainError::InputWidth { expected: self.sizes[0], found: x.ncols() });
        }
        if n == 0 {
            return Err(TrainError::EmptyBatch);
        }
        self.resize(n);
        let rows = self.acts[0].chunks_exact_mut(self.sizes[0]);
        match input {
            Input::Rows(x) => rows.zip(x.rows()).for_each(|(dst, src)| copy_row(dst, src)),
            Input::Picked(x, indices) => rows.zip(indices).for_each(|(dst, &i)| copy_row(dst, x.row(i as usize))),
        }
        self.dropout = match mode {
            Mode::Eval => None,
            Mode::Train(key) => Some(key),
        };
        for i in 0..self.ops.len() {
            let effective = self.effective_activation(i);
            let (lo, hi) = self.acts.split_at_mut(i + 1);
            let (x, y) = (&lo[i][..], &mut hi[0][..]);
            let (in_size, out_size) = (self.sizes[i], self.sizes[i + 1]);
            match &self.ops[i] {
                Op::Dense { inputs, units, activation, kernel, bias } => {
                    let w = ArrayView2::from_shape((*inputs, *units), &params[kernel.clone()]).expect("layout");
                    let xv = ArrayView2::from_shape((n, *inputs), x).expect("sized");
                    let mut yv = ArrayViewMut2::from_shape((n, *units), &mut *y).expect("sized");
                    mat_mul(&xv, &w, &mut yv);
                    bias_activation(y, &params[bias.clone()], effective(*activation));
                }
                Op::Conv { win, activation, kernel, bias } => {
                    let taps = win.kernel.h * win.kernel.w * win.in_c;
                    let rows = n * win.out_h * win.out_w;
                    let cols = &mut self.cols[i];
                    im2col(win, x, n, cols);
                    let cv = ArrayView2::from_shape((rows, taps), &cols[..]).expect("sized");
                    let w = ArrayView2::from_shape((taps, win.out_c), &params[kernel.clone()]).expect("layout");
                    let mut yv = ArrayViewMut2::from_shape((rows, win.out_c), &mut *y).expect("sized");
                    mat_mul(&cv, &w, &mut yv);
                    bias_activation(y, &params[bias.clone()], effective(*activation));
                }
                Op::MaxPool { win } => max_pool(win, x, in_size, y, out_size, &mut self.argmax[i]),
                Op::AvgPool { win } => avg_pool(win, x, in_size, y, out_size),
                Op::Flatten => y.copy_from_slice(x),
                Op::Dropout { rate, layer } => match self.dropout {
                    Some(key) if *rate > 0.0 => {
                        let scale = A::from_f32(dropout_scale(*rate));
                        for (e, (y, &x)) in y.iter_mut().zip(x).enumerate() {
                            let keep = dropout_keep(key.seed, key.step, *layer, e as u32, *rate);
                            *y = if keep { x * scale } else { A::zero() };
                        }
                    }
                    _ => y.copy_from_slice(x),
                },
                Op::Activation { activation } => {
                    y.copy_from_slice(x);
                    activate(effective(*activation), y, out_size);
                }
            }
        }
        Ok(())
    }

    /// Back-propagates `grads[last]` (set by the loss) through the layers, writing the parameter gradient
    /// into `grad`, and the input gradient into `grads[0]` when `input_grad`.
    fn backward(&mut self, params: &[A], grad: &mut [A], input_grad: bool) {
        let n = self.batch;
        for i in (0..self.ops.len()).rev() {
            let need_dx = i > 0 || input_grad;
            let effective = self.effective_activation(i);
            let (glo, ghi) = self.grads.split_at_mut(i + 1);
            let (dx, dy) = (&mut glo[i][..], &mut ghi[0][..]);
            let (x, y) = (&self.acts[i][..], &self.acts[i + 1][..]);
            let out_size = self.sizes[i + 1];
            match &self.ops[i] {
                Op::Dense { inputs, units, activation, kernel, bias } => {
                    activation_backward_bias(effective(*activation), y, dy, &mut grad[bias.clone()]);
                    let dyv = ArrayView2::from_shape((n, *units), &*dy).expect("sized");
                    let xv = ArrayView2::from_shape((n, *inputs), x).expect("sized");
                    let mut dw =
                        ArrayViewMut2::from_shape((*inputs, *units), &mut grad[kernel.clone()]).expect("layout");
                    mat_mul(&xv.t(), &dyv, &mut dw);
                    if need_dx {
                        let w = ArrayView2::from_shape((*inputs, *units), &params[kernel.clone()]).expect("layout");
                        let mut dxv = ArrayViewMut2::from_shape((n, *inputs), dx).expect("sized");
                        mat_mul(&dyv, &w.t(), &mut dxv);
                    }
                }
                Op::Conv { win, activation, kernel, bias } => {
                    activation_backward_bias(effective(*activation), y, dy, &mut grad[bias.clone()]);
                    let taps = win.kernel.h * win.kernel.w * win.in_c;
                    let rows = n * win.out_h * win.out_w;
                    let dyv = ArrayView2::from_shape((rows, win.out_c), &*dy).expect("sized");
                    let cv = ArrayView2::from_shape((rows, taps), &self.cols[i][..]).expect("sized");
                    let mut dw =
                        ArrayViewMut2::from_shape((taps, win.out_c), &mut grad[kernel.clone()]).expect("layout");
                    mat_mul(&cv.t(), &dyv, &mut dw);
                    if need_dx {
                        let w = ArrayView2::from_shape((taps, win.out_c), &params[kernel.clone()]).expect("layout");
                        let dcols = &mut self.dcols[i];
                        let mut dcv = ArrayViewMut2::from_shape((rows, taps), &mut dcols[..]).expect("sized");
                        mat_mul(&dyv, &w.t(), &mut dcv);
                        col2im(win, dcols, n, dx);
                    }
                }
                Op::MaxPool { .. } if need_dx => {
                    dx.fill(A::zero());
                    let in_size = self.sizes[i];
                    for (b, (dy, idx)) in
                        dy.chunks_exact(out_size).zip(self.argmax[i].chunks_exact(out_size)).enumerate()
                    {
                        let dx = &mut dx[b * in_size..(b + 1) * in_size];
                        for (&g, &j) in dy.iter().zip(idx) {
                            dx[j as usize] = dx[j as usize] + g;
                        }
                    }
                }
                Op::AvgPool { win } if need_dx => avg_pool_backward(win, dy, out_size, dx, self.sizes[i]),
                Op::Flatten if need_dx => dx.copy_from_slice(dy),
                Op::Dropout { rate, layer } if need_dx => match self.dropout {
                    Some(key) if *rate > 0.0 => {
                        let scale = A::from_f32(dropout_scale(*rate));
                        for (e, (dx, &dy)) in dx.iter_mut().zip(&*dy).enumerate() {
                            let keep = dropout_keep(key.seed, key.step, *layer, e as u32, *rate);
                            *dx = if keep { dy * scale } else { A::zero() };
                        }
                    }
                    _ => dx.copy_from_slice(dy),
                },
                Op::Activation { activation } if need_dx => {
                    activation_backward(effective(*activation), y, dy, out_size);
                    dx.copy_from_slice(dy);
                }
                _ => {}
            }
        }
    }
}

fn copy_row<A: Real>(dst: &mut [A], src: ndarray::ArrayView1<'_, A>) {
    match src.as_slice() {
        Some(s) => dst.copy_from_slice(s),
        None => dst.iter_mut().zip(src).for_each(|(d, &s)| *d = s),
    }
}

impl Op {
    fn activation(&self) -> Option<Activation> {
        match self {
            Op::Dense { activation, .. } | Op::Conv { activation, .. } | Op::Activation { activation } => {
                Some(*activation)
            }
            _ => None,
        }
    }
}

/// Adds `bias` to every row of `y` (rows of `bias.len()` elements) and applies an element-wise
/// `activation` in the same pass; softmax is applied per row afterwards.
fn bias_activation<A: Real>(y: &mut [A], bias: &[A], activation: Activation) {
    let rows = y.chunks_exact_mut(bias.len());
    match activation {
        Activation::Relu => rows.for_each(|r| r.iter_mut().zip(bias).for_each(|(v, &b)| *v = (*v + b).max(A::zero()))),
        Activation::Sigmoid => rows.for_each(|r| r.iter_mut().zip(bias).for_each(|(v, &b)| *v = sigmoid(*v + b))),
        Activation::Tanh => rows.for_each(|r| r.iter_mut().zip(bias).for_each(|(v, &b)| *v = (*v + b).tanh())),
        Activation::Linear | Activation::Softmax => {
            rows.for_each(|r| r.iter_mut().zip(bias).for_each(|(v, &b)| *v = *v + b));
            if activation == Activation::Softmax {
                softmax_rows(y, bias.len());
            }
        }
    }
}

/// Applies `activation` in place; softmax over each row of `row` elements (one sample).
fn activate<A: Real>(activation: Activation, y: &mut [A], row: usize) {
    match activation {
        Activation::Linear => {}
        Activation::Relu => y.iter_mut().for_each(|v| *v = v.max(A::zero())),
        Activation::Sigmoid => y.iter_mut().for_each(|v| *v = sigmoid(*v)),
        Activation::Tanh => y.iter_mut().for_each(|v| *v = v.tanh()),
        Activation::Softmax => softmax_rows(y, row),
    }
}

fn softmax_rows<A: Real>(y: &mut [A], row: usize) {
    for r in y.chunks_exact_mut(row) {
        let max = r.iter().fold(A::neg_infinity(), |m, &v| m.max(v));
        let mut sum = A::zero();
        for v in r.iter_mut() {
            *v = (*v - max).exp();
            sum = sum + *v;
        }
        r.iter_mut().for_each(|v| *v = *v / sum);
    }
}

/// Turns `dy`, the gradient with respect to an activation's output `y`, into the gradient with respect to
/// its input, in place. Softmax uses its Jacobian-vector product per row: `y * (dy - sum(dy * y))`.
fn activation_backward<A: Real>(activation: Activation, y: &[A], dy: &mut [A], row: usize) {
    let pairs = dy.iter_mut().zip(y);
    match activation {
        Activation::Linear => {}
        Activation::Relu => pairs.for_each(|(g, &y)| {
            if y <= A::zero() {
                *g = A::zero();
            }
        }),
        Activation::Sigmoid => pairs.for_each(|(g, &y)| *g = *g * y * (A::one() - y)),
        Activation::Tanh => pairs.for_each(|(g, &y)| *g = *g * (A::one() - y * y)),
        Activation::Softmax => {
            for (g, y) in dy.chunks_exact_mut(row).zip(y.chunks_exact(row)) {
                let dot = g.iter().zip(y).fold(A::zero(), |s, (&g, &y)| s + g * y);
                g.iter_mut().zip(y).for_each(|(g, &y)| *g = y * (*g - dot));
            }
        }
    }
}

/// [`activation_backward`] for a layer with a bias, also summing the resulting rows of `dy` (rows of
/// `bias_grad.len()` elements: one per unit or filter) into `bias_grad`, in the same pass for the
/// element-wise activations.
fn activation_backward_bias<A: Real>(activation: Activation, y: &[A], dy: &mut [A], bias_grad: &mut [A]) {
    let units = bias_grad.len();
    bias_grad.fill(A::zero());
    if activation == Activation::Softmax {
        activation_backward(activation, y, dy, units);
    }
    for (g, y) in dy.chunks_exact_mut(units).zip(y.chunks_exact(units)) {
        let rows = bias_grad.iter_mut().zip(g).zip(y);
        match activation {
            Activation::Relu => rows.for_each(|((b, g), &y)| {
                *g = if y > A::zero() { *g } else { A::zero() };
                *b = *b + *g;
            }),
            Activation::Sigmoid => rows.for_each(|((b, g), &y)| {
                *g = *g * y * (A::one() - y);
                *b = *b + *g;
            }),
            Activation::Tanh => rows.for_each(|((b, g), &y)| {
                *g = *g * (A::one() - y * y);
                *b = *b + *g;
            }),
            Activation::Linear | Activation::Softmax => rows.for_each(|((b, g), _)| *b = *b + *g),
        }
    }
}

/// The input row and column a window tap reads, or `None` in the zero padding.
fn tap(out: usize, stride: usize, k: usize, pad: usize, size: usize) -> Option<usize> {
    (out * stride + k).checked_sub(pad).filter(|&i| i < size)
}

/// Writes the im2col matrix of `x` (`n` samples of `in_h x in_w x in_c`): one row per output position
/// `(sample, oy, ox)`, one column per kernel tap `(ky, kx, c)`, matching the HWIO kernel's row order.
fn im2col<A: Real>(win: &Window2d, x: &[A], n: usize, cols: &mut [A]) {
    let (kh, kw, c) = (win.kernel.h, win.kernel.w, win.in_c);
    let in_size = win.in_h * win.in_w * c;
    let mut rows = cols.chunks_exact_mut(kh * kw * c);
    for b in 0..n {
        let xb = &x[b * in_size..(b + 1) * in_size];
        for oy in 0..win.out_h {
            for ox in 0..win.out_w {
                let row = rows.next().expect("cols sized for n samples");
                for ky in 0..kh {
                    let iy = tap(oy, win.strides.h, ky, win.pad_top, win.in_h);
                    for kx in 0..kw {
                        let dst = &mut row[(ky * kw + kx) * c..(ky * kw + kx + 1) * c];
                        match (iy, tap(ox, win.strides.w, kx, win.pad_left, win.in_w)) {
                            (Some(iy), Some(ix)) => {
                                let at = (iy * win.in_w + ix) * c;
                                dst.copy_from_slice(&xb[at..at + c]);
                            }
                            _ => dst.fill(A::zero()),
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: sums each column-matrix gradient back onto the input element it came from.
fn col2im<A: Real>(win: &Window2d, dcols: &[A], n: usize, dx: &mut [A]) {
    dx.fill(A::zero());
    let (kh, kw, c) = (win.kernel.h, win.kernel.w, win.in_c);
    let in_size = win.in_h * win.in_w * c;
    let mut rows = dcols.chunks_exact(kh * kw * c);
    for b in 0..n {
        let dxb = &mut dx[b * in_size..(b + 1) * in_size];
        for oy in 0..win.out_h {
            for ox in 0..win.out_w {
                let row = rows.next().expect("dcols sized for n samples");
                for ky in 0..kh {
                    let Some(iy) = tap(oy, win.strides.h, ky, win.pad_top, win.in_h) else { continue };
                    for kx in 0..kw {
                        let Some(ix) = tap(ox, win.strides.w, kx, win.pad_left, win.in_w) else { continue };
                        let src = &row[(ky * kw + kx) * c..(ky * kw + kx + 1) * c];
                        let at = (iy * win.in_w + ix) * c;
                        dxb[at..at + c].iter_mut().zip(src).for_each(|(d, &s)| *d = *d + s);
                    }
                }
            }
        }
    }
}

/// Max pooling without padding, recording for each output the index within its sample of the input it
/// took (the first maximum on ties).
fn max_pool<A: Real>(win: &Window2d, x: &[A], in_size: usize, y: &mut [A], out_size: usize, argmax: &mut [u32]) {
    let c = win.in_c;
    for ((xb, yb), ab) in
        x.chunks_exact(in_size).zip(y.chunks_exact_mut(out_size)).zip(argmax.chunks_exact_mut(out_size))
    {
        for oy in 0..win.out_h {
            for ox in 0..win.out_w {
                let o = (oy * win.out_w + ox) * c;
                let first = (oy * win.strides.h * win.in_w + ox * win.strides.w) * c;
                yb[o..o + c].copy_from_slice(&xb[first..first + c]);
                for (a, j) in ab[o..o + c].iter_mut().zip(first..) {
                    *a = j as u32;
                }
                for ky in 0..win.kernel.h {
                    for kx in 0..win.kernel.w {
                        let at = ((oy * win.strides.h + ky) * win.in_w + ox * win.strides.w + kx) * c;
                        for ch in 0..c {
                            if xb[at + ch] > yb[o + ch] {
                                yb[o + ch] = xb[at + ch];
                                ab[o + ch] = (at + ch) as u32;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Average pooling without padding.
fn avg_pool<A: Real>(win: &Window2d, x: &[A], in_size: usize, y: &mut [A], out_size: usize) {
    let c = win.in_c;
    let inv = A::one() / A::from_f64((win.kernel.h * win.kernel.w) as f64);
    for (xb, yb) in x.chunks_exact(in_size).zip(y.chunks_exact_mut(out_size)) {
        for oy in 0..win.out_h {
            for ox in 0..win.out_w {
                let out = &mut yb[(oy * win.out_w + ox) * c..][..c];
                out.fill(A::zero());
                for ky in 0..win.kernel.h {
                    for kx in 0..win.kernel.w {
                        let at = ((oy * win.strides.h + ky) * win.in_w + ox * win.strides.w + kx) * c;
                        out.iter_mut().zip(&xb[at..at + c]).for_each(|(o, &v)| *o = *o + v);
                    }
                }
                out.iter_mut().for_each(|o| *o = *o * inv);
            }
        }
    }
}

fn avg_pool_backward<A: Real>(win: &Window2d, dy: &[A], out_size: usize, dx: &mut [A], in_size: usize) {
    dx.fill(A::zero());
    let c = win.in_c;
    let inv = A::one() / A::from_f64((win.kernel.h * win.kernel.w) as f64);
    for (dyb, dxb) in dy.chunks_exact(out_size).zip(dx.chunks_exact_mut(in_size)) {
        for oy in 0..win.out_h {
            for ox in 0..win.out_w {
                let g = &dyb[(oy * win.out_w + ox) * c..][..c];
                for ky in 0..win.kernel.h {
                    for kx in 0..win.kernel.w {
                        let at = ((oy * win.strides.h + ky) * win.in_w + ox * win.strides.w + kx) * c;
                        dxb[at..at + c].iter_mut().zip(g).for_each(|(d, &g)| *d = *d + g * inv);
                    }
                }
            }
        }
    }
}
