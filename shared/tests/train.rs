//! Tests of the reference trainer: finite-difference gradient checks of every layer and loss in f64,
//! forward passes against naive loops, losses, dropout, the trainer API, the optimisers, and training
//! quality on MNIST.

use daig_shared::model::{Limits, Loss, Model};
use daig_shared::params::init_params;
use daig_shared::train::dropout::{dropout_bits, dropout_keep};
use daig_shared::train::optim::{OptimError, StepReport};
use daig_shared::train::{
    Batch, DropoutKey, Labels, LocalConfig, Method, Mode, Network, Optimizer, OptimizerConfig, OptimizerState,
    Schedule, TrainError, Trainer,
};
use ndarray::{Array2, ArrayView2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn model(json: &str) -> Model {
    Model::from_json(json, &Limits::default()).unwrap_or_else(|e| panic!("invalid test model: {e}"))
}

fn uniform(rng: &mut ChaCha8Rng, n: usize, scale: f64) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// Labels of the right kind for a model's loss.
enum OwnedLabels {
    Classes(Vec<u32>),
    Values(Array2<f32>),
}

impl OwnedLabels {
    fn random(model: &Model, n: usize, rng: &mut ChaCha8Rng) -> OwnedLabels {
        let k = model.output_shape().elements().unwrap();
        match model.spec.loss {
            Loss::CrossEntropy => OwnedLabels::Classes((0..n).map(|_| rng.random_range(0..k as u32)).collect()),
            Loss::MeanSquaredError => {
                OwnedLabels::Values(Array2::from_shape_fn((n, k), |_| rng.random_range(-1.0..1.0)))
            }
            Loss::BinaryCrossEntropy => {
                OwnedLabels::Values(Array2::from_shape_fn((n, k), |_| rng.random_range(0.0..1.0)))
            }
        }
    }
    fn view(&self) -> Labels<'_> {
        match self {
            OwnedLabels::Classes(c) => Labels::Classes(c),
            OwnedLabels::Values(v) => Labels::Values(v.view()),
        }
    }
}

/// The largest relative error between analytic and numeric gradients, `|a - n| / max(|a| + |n|, 1e-4)`:
/// relative for ordinary gradients, and in effect an absolute test at 1e-10 for gradients near zero,
/// where the finite difference itself is only about that accurate.
fn max_rel_error(analytic: &[f64], numeric: &[f64]) -> (f64, usize) {
    analytic
        .iter()
        .zip(numeric)
        .map(|(a, n)| (a - n).abs() / (a.abs() + n.abs()).max(1e-4))
        .enumerate()
        .fold((0.0, 0), |(m, at), (i, e)| if e > m { (e, i) } else { (m, at) })
}

/// Checks the analytic gradients of `json`'s loss with respect to every parameter and every input
/// against central finite differences in f64, for a batch of `n` random samples.
fn grad_check(json: &str, n: usize, mode: Mode, seed: u64) {
    let model = model(json);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut net = Network::<f64>::new(&model);
    let mut params: Vec<f64> = init_params(&model, seed).into_iter().map(f64::from).collect();
    // Non-zero biases and a little noise, so that every term of every gradient is exercised.
    for (p, r) in params.iter_mut().zip(uniform(&mut rng, model.param_count(), 0.1)) {
        *p += r;
    }
    let width = net.input_elements();
    let mut x = Array2::from_shape_vec((n, width), uniform(&mut rng, n * width, 1.0)).unwrap();
    let labels = OwnedLabels::random(&model, n, &mut rng);

    let mut grad = vec![0.0; params.len()];
    let mut input_grad = vec![0.0; n * width];
    let batch = Batch { x: x.view(), y: labels.view() };
    net.gradient_with_input(&params, &batch, mode, &mut grad, &mut input_grad).unwrap();

    let h = 1e-5;
    let loss_at = |net: &mut Network<f64>, params: &[f64], x: ArrayView2<'_, f64>| {
        net.loss(params, &Batch { x, y: labels.view() }, mode).unwrap().loss
    };
    let mut numeric = vec![0.0; params.len()];
    for i in 0..params.len() {
        let p = params[i];
        params[i] = p + h;
        let up = loss_at(&mut net, &params, x.view());
        params[i] = p - h;
        let down = loss_at(&mut net, &params, x.view());
        params[i] = p;
        numeric[i] = (up - down) / (2.0 * h);
    }
    let (err, at) = max_rel_error(&grad, &numeric);
    assert!(err < 1e-6, "{json}: parameter {at}: analytic {} numeric {} (rel error {err:e})", grad[at], numeric[at]);

    let mut numeric = vec![0.0; n * width];
    for (i, slot) in numeric.iter_mut().enumerate() {
        let v = x.as_slice().unwrap()[i];
        x.as_slice_mut().unwrap()[i] = v + h;
        let up = loss_at(&mut net, &params, x.view());
        x.as_slice_mut().unwrap()[i] = v - h;
        let down = loss_at(&mut net, &params, x.view());
        x.as_slice_mut().unwrap()[i] = v;
        *slot = (up - down) / (2.0 * h);
    }
    let (err, at) = max_rel_error(&input_grad, &numeric);
    assert!(err < 1e-6, "{json}: input {at}: analytic {} numeric {} (rel error {err:e})", input_grad[at], numeric[at]);
    assert!(input_grad.iter().any(|&g| g != 0.0), "{json}: the input gradient is all zero");
}

const TRAIN: Mode = Mode::Train(DropoutKey { seed: 7, step: 3 });

#[test]
fn dense_gradients_for_every_activation_and_loss() {
    for activation in ["linear", "relu", "sigmoid", "tanh"] {
        for (last, loss) in [
            ("softmax", "cross_entropy"),
            ("linear", "cross_entropy"),
            ("linear", "mean_squared_error"),
            ("tanh", "mean_squared_error"),
            ("softmax", "mean_squared_error"),
            ("sigmoid", "binary_cross_entropy"),
            ("linear", "binary_cross_entropy"),
        ] {
            let json = format!(
                r#"{{"input_shape": [5], "layers": [
                    {{"type": "dense", "units": 7, "activation": "{activation}"}},
                    {{"type": "dense", "units": 3, "activation": "{last}"}}], "loss": "{loss}"}}"#
            );
            for n in [1, 3] {
                grad_check(&json, n, Mode::Eval, n as u64);
            }
        }
    }
}

#[test]
fn activation_layer_gradients() {
    for activation in ["relu", "sigmoid", "tanh", "softmax", "linear"] {
        let json = format!(
            r#"{{"input_shape": [6], "layers": [
                {{"type": "dense", "units": 4}},
                {{"type": "activation", "activation": "{activation}"}},
                {{"type": "dense", "units": 2}}], "loss": "mean_squared_error"}}"#
        );
        grad_check(&json, 3, Mode::Eval, 11);
    }
    // A separate softmax layer at the end is fused into cross-entropy.
    let json = r#"{"input_shape": [6], "layers": [{"type": "dense", "units": 4},
        {"type": "activation", "activation": "softmax"}], "loss": "cross_entropy"}"#;
    assert!(model(json).output_activation_fused);
    grad_check(json, 3, Mode::Eval, 12);
}

#[test]
fn conv2d_gradients_valid_and_same_with_strides() {
    for (kernel, strides, padding, shape) in [
        ("3", "1", "valid", "[6, 5, 2]"),
        ("3", "2", "same", "[7, 6, 3]"),
        ("[2, 3]", "[2, 1]", "same", "[5, 7, 2]"),
        ("[3, 2]", "[1, 3]", "valid", "[7, 8, 1]"),
        ("4", "2", "same", "[6, 6, 2]"),
    ] {
        for activation in ["relu", "tanh", "linear"] {
            let json = format!(
                r#"{{"input_shape": {shape}, "layers": [
                    {{"type": "conv2d", "filters": 3, "kernel_size": {kernel}, "strides": {strides},
                      "padding": "{padding}", "activation": "{activation}"}},
                    {{"type": "flatten"}},
                    {{"type": "dense", "units": 3, "activation": "softmax"}}], "loss": "cross_entropy"}}"#
            );
            for n in [1, 3] {
                grad_check(&json, n, Mode::Eval, 20 + n as u64);
            }
        }
    }
}

#[test]
fn pooling_gradients_with_strides_unlike_pool_size() {
    for pool in ["max_pool2d", "avg_pool2d"] {
        for (size, strides, shape) in
            [("2", "2", "[6, 6, 2]"), ("3", "2", "[7, 8, 3]"), ("[2, 3]", "[1, 2]", "[5, 7, 2]")]
        {
            let json = format!(
                r#"{{"input_shape": {shape}, "layers": [
                    {{"type": "conv2d", "filters": 2, "kernel_size": 2, "padding": "same", "activation": "sigmoid"}},
                    {{"type": "{pool}", "pool_size": {size}, "strides": {strides}}},
                    {{"type": "flatten"}},
                    {{"type": "dense", "units": 1}}], "loss": "binary_cross_entropy"}}"#
            );
            for n in [1, 3] {
                grad_check(&json, n, Mode::Eval, 30 + n as u64);
            }
        }
    }
}

#[test]
fn dropout_gradients_in_training_mode() {
    let json = r#"{"input_shape": [4, 4, 2], "layers": [
        {"type": "dropout", "rate": 0.3},
        {"type": "conv2d", "filters": 3, "kernel_size": 3, "activation": "relu"},
        {"type": "flatten"},
        {"type": "dropout", "rate": 0.5},
        {"type": "dense", "units": 3}], "loss": "cross_entropy"}"#;
    for n in [1, 3] {
        grad_check(json, n, TRAIN, 40 + n as u64);
        grad_check(json, n, Mode::Eval, 40 + n as u64);
    }
}

#[test]
fn convnet_gradients_end_to_end() {
    let json = r#"{"input_shape": [9, 9, 1], "layers": [
        {"type": "conv2d", "filters": 4, "kernel_size": 3, "strides": 2, "padding": "same", "activation": "relu"},
        {"type": "max_pool2d", "pool_size": 2, "strides": 1},
        {"type": "conv2d", "filters": 3, "kernel_size": 2, "activation": "tanh"},
        {"type": "avg_pool2d", "pool_size": 2},
        {"type": "flatten"},
        {"type": "dropout", "rate": 0.25},
        {"type": "dense", "units": 5, "activation": "relu"},
        {"type": "dense", "units": 4, "activation": "softmax"}], "loss": "cross_entropy"}"#;
    grad_check(json, 3, TRAIN, 50);
}

/// A conv2d geometry: input, kernel, strides and padding.
#[derive(Debug, Clone, Copy)]
struct ConvCase {
    h: usize,
    w: usize,
    c: usize,
    kh: usize,
    kw: usize,
    f: usize,
    sh: usize,
    sw: usize,
    same: bool,
}

/// A direct convolution with TensorFlow's padding rule, as a reference for the im2col path.
fn naive_conv(x: &[f64], k: &[f64], g: ConvCase) -> (Vec<f64>, usize, usize) {
    let ConvCase { h, w, c, kh, kw, f, sh, sw, same } = g;
    let (oh, ow, pt, pl) = if same {
        let (oh, ow) = (h.div_ceil(sh), w.div_ceil(sw));
        let ph = ((oh - 1) * sh + kh).saturating_sub(h);
        let pw = ((ow - 1) * sw + kw).saturating_sub(w);
        (oh, ow, ph / 2, pw / 2)
    } else {
        ((h - kh) / sh + 1, (w - kw) / sw + 1, 0, 0)
    };
    let mut y = vec![0.0; oh * ow * f];
    for oy in 0..oh {
        for ox in 0..ow {
            for o in 0..f {
                let mut s = 0.0;
                for ky in 0..kh {
                    for kx in 0..kw {
                        let iy = (oy * sh + ky) as isize - pt as isize;
                        let ix = (ox * sw + kx) as isize - pl as isize;
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            continue;
                        }
                        for ci in 0..c {
                            s += x[(iy as usize * w + ix as usize) * c + ci] * k[((ky * kw + kx) * c + ci) * f + o];
                        }
                    }
                }
                y[(oy * ow + ox) * f + o] = s;
            }
        }
    }
    (y, oh, ow)
}

#[test]
fn conv2d_forward_matches_naive_convolution() {
    let mut rng = ChaCha8Rng::seed_from_u64(60);
    let cases = [
        ConvCase { h: 7, w: 6, c: 3, kh: 3, kw: 3, f: 4, sh: 2, sw: 2, same: true },
        ConvCase { h: 5, w: 8, c: 2, kh: 2, kw: 3, f: 3, sh: 1, sw: 2, same: true },
        ConvCase { h: 8, w: 7, c: 1, kh: 3, kw: 2, f: 2, sh: 3, sw: 1, same: false },
        ConvCase { h: 6, w: 6, c: 2, kh: 4, kw: 4, f: 2, sh: 2, sw: 2, same: true },
    ];
    for g in cases {
        let ConvCase { h, w, c, kh, kw, f, sh, sw, same } = g;
        let json = format!(
            r#"{{"input_shape": [{h}, {w}, {c}], "layers": [{{"type": "conv2d", "filters": {f},
                "kernel_size": [{kh}, {kw}], "strides": [{sh}, {sw}], "padding": "{}"}}],
                "loss": "mean_squared_error"}}"#,
            if same { "same" } else { "valid" }
        );
        let model = model(&json);
        let mut net = Network::<f64>::new(&model);
        let params = uniform(&mut rng, model.param_count(), 1.0);
        let x = Array2::from_shape_vec((2, h * w * c), uniform(&mut rng, 2 * h * w * c, 1.0)).unwrap();
        let y = net.predict(&params, x.view()).unwrap().to_owned();
        let (kernel, bias) = params.split_at(kh * kw * c * f);
        for b in 0..2 {
            let (want, oh, ow) = naive_conv(x.row(b).as_slice().unwrap(), kernel, g);
            assert_eq!(model.output_shape().0, vec![oh, ow, f]);
            for (i, (&got, want)) in y.row(b).iter().zip(want).enumerate() {
                let want = want + bias[i % f];
                assert!((got - want).abs() < 1e-12, "{g:?}: sample {b} element {i}: {got} != {want}");
            }
        }
    }
}

#[test]
fn pooling_forward_matches_naive_pooling() {
    let mut rng = ChaCha8Rng::seed_from_u64(61);
    let (h, w, c, ph, pw, sh, sw) = (7, 8, 2, 3, 2, 2, 3);
    for pool in ["max_pool2d", "avg_pool2d"] {
        let json = format!(
            r#"{{"input_shape": [{h}, {w}, {c}], "layers": [{{"type": "{pool}", "pool_size": [{ph}, {pw}],
                "strides": [{sh}, {sw}]}}, {{"type": "flatten"}}], "loss": "mean_squared_error"}}"#
        );
        let model = model(&json);
        let mut net = Network::<f64>::new(&model);
        let x = Array2::from_shape_vec((1, h * w * c), uniform(&mut rng, h * w * c, 1.0)).unwrap();
        let y = net.predict(&[], x.view()).unwrap().to_owned();
        let (oh, ow) = ((h - ph) / sh + 1, (w - pw) / sw + 1);
        assert_eq!(y.ncols(), oh * ow * c);
        for oy in 0..oh {
            for ox in 0..ow {
                for ch in 0..c {
                    let window: Vec<f64> = (0..ph)
                        .flat_map(|ky| (0..pw).map(move |kx| ((oy * sh + ky) * w + ox * sw + kx) * c + ch))
                        .map(|i| x[[0, i]])
                        .collect();
                    let want = if pool == "max_pool2d" {
                        window.iter().copied().fold(f64::NEG_INFINITY, f64::max)
                    } else {
                        window.iter().sum::<f64>() / window.len() as f64
                    };
                    let got = y[[0, (oy * ow + ox) * c + ch]];
                    assert!((got - want).abs() < 1e-12, "{pool} at {oy},{ox},{ch}: {got} != {want}");
                }
            }
        }
    }
}

#[test]
fn losses_have_their_documented_values() {
    // Cross-entropy on zero logits is ln(classes); prediction is the softmax.
    let ce = model(
        r#"{"input_shape": [2], "layers": [{"type": "dense", "units": 4, "activation": "softmax"}],
        "loss": "cross_entropy"}"#,
    );
    let mut net = Network::<f64>::new(&ce);
    let params = vec![0.0; ce.param_count()];
    let x = Array2::from_elem((2, 2), 1.0);
    let stats = net.loss(&params, &Batch { x: x.view(), y: Labels::Classes(&[1, 3]) }, Mode::Eval).unwrap();
    assert!((stats.loss - 4f64.ln()).abs() < 1e-12);
    let p = net.predict(&params, x.view()).unwrap();
    assert!(p.iter().all(|&v| (v - 0.25).abs() < 1e-12));

    // Mean squared error is the mean over all outputs of all samples.
    let mse = model(r#"{"input_shape": [1], "layers": [{"type": "dense", "units": 2}], "loss": "mse"}"#);
    let mut net = Network::<f64>::new(&mse);
    // Kernel [1, 2] = [1, 2] and zero bias: the outputs are (x, 2x).
    let params = [1.0, 2.0, 0.0, 0.0];
    let x = Array2::from_shape_vec((2, 1), vec![1.0, 3.0]).unwrap();
    let t = Array2::from_shape_vec((2, 2), vec![0.0f32, 0.0, 1.0, 1.0]).unwrap();
    let stats = net.loss(&params, &Batch { x: x.view(), y: Labels::Values(t.view()) }, Mode::Eval).unwrap();
    assert!((stats.loss - (1.0 + 4.0 + 4.0 + 25.0) / 4.0).abs() < 1e-12);
    assert_eq!(stats.accuracy(), None);

    // Binary cross-entropy stays finite for huge logits and matches the plain formula for small ones.
    let bce = model(
        r#"{"input_shape": [1], "layers": [{"type": "dense", "units": 1, "activation": "sigmoid"}],
        "loss": "binary_cross_entropy"}"#,
    );
    let mut net = Network::<f32>::new(&bce);
    let x = Array2::from_shape_vec((2, 1), vec![1.0f32, -1.0]).unwrap();
    let stats = net.loss(&[1000.0, 0.0], &Batch { x: x.view(), y: Labels::Classes(&[0, 1]) }, Mode::Eval).unwrap();
    assert!((stats.loss - 1000.0).abs() < 1e-3, "{}", stats.loss);
    assert_eq!(stats.accuracy(), Some(0.0));
    let stats = net.loss(&[0.5, 0.0], &Batch { x: x.view(), y: Labels::Classes(&[1, 0]) }, Mode::Eval).unwrap();
    let s = 1.0 / (1.0 + (-0.5f64).exp());
    assert!((stats.loss - -s.ln()).abs() < 1e-6, "{}", stats.loss);
    assert_eq!(stats.accuracy(), Some(1.0));
    let probs = net.predict(&[0.5, 0.0], x.view()).unwrap();
    assert!((f64::from(probs[[0, 0]]) - s).abs() < 1e-6);
}

fn refused(net: &mut Network<f32>, batch: Batch<'_, f32>, params: &[f32], grad: &mut [f32]) -> TrainError {
    net.gradient(params, &batch, Mode::Eval, grad).map(|_| ()).unwrap_err()
}

#[test]
fn bad_inputs_are_refused_with_their_reason() {
    let m = model(r#"{"input_shape": [3], "layers": [{"type": "dense", "units": 2}], "loss": "cross_entropy"}"#);
    let mut net = Network::<f32>::new(&m);
    let params = vec![0.0; m.param_count()];
    let x = Array2::<f32>::zeros((2, 3));
    let mut grad = vec![0.0; m.param_count()];
    let mut run = |x, y, params: &[f32], grad: &mut [f32]| refused(&mut net, Batch { x, y }, params, grad);
    let wide = Array2::<f32>::zeros((2, 4));
    let classes = Labels::Classes(&[0, 1]);
    assert_eq!(run(wide.view(), classes, &params, &mut grad), TrainError::InputWidth { expected: 3, found: 4 });
    assert_eq!(
        run(x.view(), Labels::Classes(&[0]), &params, &mut grad),
        TrainError::LabelCount { samples: 2, labels: 1 }
    );
    assert_eq!(
        run(x.view(), Labels::Classes(&[0, 2]), &params, &mut grad),
        TrainError::ClassOutOfRange { sample: 1, class: 2, classes: 2 }
    );
    let t = Array2::<f32>::zeros((2, 2));
    assert_eq!(
        run(x.view(), Labels::Values(t.view()), &params, &mut grad).to_string(),
        "cross_entropy needs integer class labels"
    );
    assert_eq!(run(x.view(), classes, &params[1..], &mut grad), TrainError::ParamCount { expected: 8, found: 7 });
    assert_eq!(run(x.view(), classes, &params, &mut grad[1..]), TrainError::GradientLength { expected: 8, found: 7 });
    let empty = Array2::<f32>::zeros((0, 3));
    assert_eq!(run(empty.view(), Labels::Classes(&[]), &params, &mut grad), TrainError::EmptyBatch);

    let mut trainer = Trainer::new(&m);
    let data = Batch { x: x.view(), y: classes };
    let config = LocalConfig { batch_size: 2, local_steps: 1, learning_rate: 0.1, dropout: DropoutKey::default() };
    assert_eq!(
        trainer.train_local(&data, &[0, 2], &config).unwrap_err(),
        TrainError::SampleIndex { index: 2, samples: 2 }
    );
    assert_eq!(
        trainer.train_local(&data, &[0], &LocalConfig { batch_size: 0, ..config }).unwrap_err().to_string(),
        "batch_size must be at least 1"
    );
    assert_eq!(trainer.load_params(&[0.0; 3]).unwrap_err(), TrainError::ParamCount { expected: 8, found: 3 });
    let mse = model(r#"{"input_shape": [3], "layers": [{"type": "dense", "units": 2}], "loss": "mse"}"#);
    let t = Array2::<f32>::zeros((2, 3));
    let err = Network::<f32>::new(&mse)
        .loss(&params, &Batch { x: x.view(), y: Labels::Values(t.view()) }, Mode::Eval)
        .unwrap_err();
    assert_eq!(err.to_string(), "the targets have 3 values per sample, but the model's output has 2 elements");
}

/// Hash values the WGSL engine must reproduce bit for bit.
const REFERENCE_BITS: [u32; 3] = [1_282_570_995, 2_682_195_795, 3_683_661_697];

#[test]
fn dropout_mask_is_a_fixed_pure_function() {
    assert_eq!(
        [dropout_bits(0, 0, 0, 0), dropout_bits(42, 7, 3, 12345), dropout_bits(u64::MAX, 1 << 40, 9, u32::MAX)],
        REFERENCE_BITS
    );
    let kept = (0..100_000).filter(|&e| dropout_keep(42, 7, 3, e, 0.3)).count();
    assert!((69_000..71_000).contains(&kept), "kept {kept} of 100000 at rate 0.3");
    assert!((0..1000).all(|e| dropout_keep(1, 2, 3, e, 0.0)));
    let differ = (0..1000).filter(|&e| dropout_keep(42, 7, 3, e, 0.5) != dropout_keep(42, 8, 3, e, 0.5)).count();
    assert!(differ > 400, "masks of different steps must differ");

    // The network applies exactly this mask, scaled by 1 / (1 - rate), in training only.
    let m = model(
        r#"{"input_shape": [50], "layers": [{"type": "dropout", "rate": 0.4}, {"type": "flatten"}],
        "loss": "mse"}"#,
    );
    let mut net = Network::<f32>::new(&m);
    let x = Array2::from_elem((3, 50), 2.0f32);
    let t = Array2::<f32>::zeros((3, 50));
    let key = DropoutKey { seed: 5, step: 9 };
    let mut input_grad = vec![0.0; 150];
    let batch = Batch { x: x.view(), y: Labels::Values(t.view()) };
    net.gradient_with_input(&[], &batch, Mode::Train(key), &mut [], &mut input_grad).unwrap();
    for (e, &g) in input_grad.iter().enumerate() {
        // The derivative of mean((x * s * keep)^2) over 150 elements is 2 * x * s^2 * keep / 150.
        let keep = dropout_keep(5, 9, 0, e as u32, 0.4);
        let want = if keep { 2.0 * 2.0 / 0.36 / 150.0 } else { 0.0 };
        assert!((g - want).abs() < 1e-5, "element {e}: {g} != {want}");
    }
    assert_eq!(net.predict(&[], x.view()).unwrap(), x);
}

#[test]
fn one_local_step_moves_by_minus_lr_times_the_gradient() {
    let m = model(
        r#"{"input_shape": [4, 4, 1], "layers": [
        {"type": "conv2d", "filters": 2, "kernel_size": 3, "activation": "relu"},
        {"type": "flatten"}, {"type": "dropout", "rate": 0.2},
        {"type": "dense", "units": 3, "activation": "softmax"}], "loss": "cross_entropy"}"#,
    );
    let mut rng = ChaCha8Rng::seed_from_u64(70);
    let x = Array2::from_shape_fn((10, 16), |_| rng.random_range(0.0f32..1.0));
    let y: Vec<u32> = (0..10).map(|i| i % 3).collect();
    let data = Batch { x: x.view(), y: Labels::Classes(&y) };
    let params = init_params(&m, 1);
    let mut trainer = Trainer::new(&m);
    trainer.load_params(&params).unwrap();
    let key = DropoutKey { seed: 3, step: 100 };
    let (grad, stats) = trainer.gradient(&data, &[4, 1, 7], key).unwrap();
    let grad = grad.to_vec();
    let config = LocalConfig { batch_size: 3, local_steps: 1, learning_rate: 0.5, dropout: key };
    let result = trainer.train_local(&data, &[4, 1, 7, 9], &config).unwrap();
    assert_eq!(result.samples, 3);
    assert_eq!(result.mean_loss, stats.loss);
    for ((d, g), p) in result.delta.iter().zip(&grad).zip(&params) {
        assert_eq!(*d, (p - 0.5 * g) - p);
    }
    assert!(grad.iter().any(|&g| g != 0.0));

    // Several steps wrap around the index list and count every use of a sample.
    trainer.load_params(&params).unwrap();
    let config = LocalConfig { batch_size: 2, local_steps: 4, ..config };
    let result = trainer.train_local(&data, &[0, 1, 2, 3, 4], &config).unwrap();
    assert_eq!(result.samples, 8);
    let moved: Vec<f32> = params.iter().zip(&result.delta).map(|(p, d)| p + d).collect();
    assert!(trainer.params().iter().zip(&moved).all(|(a, b)| (a - b).abs() < 1e-6));

    // Evaluation and prediction agree with each other.
    let eval = trainer.evaluate(&params, &data).unwrap();
    let probs = trainer.predict(&params, x.view()).unwrap();
    let nll: f64 = probs.rows().into_iter().zip(&y).map(|(p, &c)| -f64::from(p[c as usize]).ln()).sum();
    assert!((eval.loss - nll / 10.0).abs() < 1e-5, "{} != {}", eval.loss, nll / 10.0);
    assert_eq!(eval.samples, 10);
}

fn sgd(momentum: f32, nesterov: bool) -> OptimizerConfig {
    OptimizerConfig {
        method: Method::Sgd { momentum, nesterov },
        learning_rate: 0.1,
        schedule: Schedule::Constant,
        weight_decay: 0.0,
        clip_norm: None,
    }
}

#[test]
fn sgd_momentum_nesterov_and_weight_decay_follow_their_formulas() {
    let mut p = [1.0f32, -2.0];
    let mut opt = Optimizer::new(sgd(0.0, false), 2).unwrap();
    opt.step(&mut p, &[0.5, 1.0]).unwrap();
    assert_eq!(p, [1.0 - 0.1 * 0.5, -2.0 - 0.1]);

    // Momentum 0.9: the buffer is g, then 0.9 g + g.
    let mut p = [0.0f32];
    let mut opt = Optimizer::new(sgd(0.9, false), 1).unwrap();
    opt.step(&mut p, &[1.0]).unwrap();
    opt.step(&mut p, &[1.0]).unwrap();
    assert!((p[0] - -(0.1 + 0.1 * 1.9)).abs() < 1e-7, "{}", p[0]);
    // Nesterov: the direction is g + 0.9 buf.
    let mut p = [0.0f32];
    let mut opt = Optimizer::new(sgd(0.9, true), 1).unwrap();
    opt.step(&mut p, &[1.0]).unwrap();
    assert!((p[0] - -(0.1 * 1.9)).abs() < 1e-7, "{}", p[0]);
    // L2-coupled weight decay for SGD.
    let mut p = [2.0f32];
    let mut opt = Optimizer::new(OptimizerConfig { weight_decay: 0.5, ..sgd(0.0, false) }, 1).unwrap();
    opt.step(&mut p, &[0.0]).unwrap();
    assert!((p[0] - (2.0 - 0.1 * 0.5 * 2.0)).abs() < 1e-7, "{}", p[0]);
}

#[test]
fn adam_is_bias_corrected_with_decoupled_weight_decay() {
    let config = OptimizerConfig {
        method: Method::adam(),
        learning_rate: 0.01,
        schedule: Schedule::Constant,
        weight_decay: 0.1,
        clip_norm: None,
    };
    let mut p = [1.0f32, 1.0];
    let mut opt = Optimizer::new(config, 2).unwrap();
    // First step: m_hat = g and v_hat = g^2, so the step is lr * sign(g) whatever |g|, plus lr * wd * p.
    opt.step(&mut p, &[3.0, -0.001]).unwrap();
    assert!((p[0] - (1.0 - 0.01 - 0.001)).abs() < 1e-6, "{}", p[0]);
    assert!((p[1] - (1.0 + 0.01 * 0.001 / (0.001 + 1e-8) - 0.001)).abs() < 1e-6, "{}", p[1]);
    assert_eq!(opt.steps(), 1);
}

#[test]
fn schedules_and_clipping() {
    let at = |schedule| OptimizerConfig { schedule, ..sgd(0.0, false) };
    let step = at(Schedule::StepDecay { every: 10, gamma: 0.5 });
    assert_eq!([step.lr_at(0), step.lr_at(9), step.lr_at(10), step.lr_at(25)], [0.1, 0.1, 0.05, 0.025]);
    let cosine = at(Schedule::Cosine { warmup_steps: 4, total_steps: 14, min_lr: 0.01 });
    let lrs: Vec<f32> = [0, 1, 3, 4, 9, 14, 100].iter().map(|&s| cosine.lr_at(s)).collect();
    let want = [0.025, 0.05, 0.1, 0.1, 0.055, 0.01, 0.01];
    assert!(lrs.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-7), "{lrs:?}");
    assert_eq!(at(Schedule::Constant).lr_at(1_000_000), 0.1);

    let mut p = [0.0f32, 0.0];
    let mut opt = Optimizer::new(OptimizerConfig { clip_norm: Some(1.0), ..sgd(0.0, false) }, 2).unwrap();
    let report = opt.step(&mut p, &[3.0, 4.0]).unwrap();
    assert_eq!(report, StepReport { lr: 0.1, grad_norm: 5.0, clipped: true });
    assert!((p[0] + 0.06).abs() < 1e-7 && (p[1] + 0.08).abs() < 1e-7, "{p:?}");
    assert!(matches!(opt.step(&mut p, &[f32::NAN, 0.0]), Err(OptimError::NonFinite(_))));
    assert_eq!(opt.steps(), 1);
    assert_eq!(opt.step(&mut p, &[1.0]).unwrap_err(), OptimError::Length { expected: 2, found: 1 });
    let bad = OptimizerConfig { method: Method::Sgd { momentum: 1.0, nesterov: false }, ..sgd(0.0, false) };
    assert_eq!(Optimizer::new(bad, 2).unwrap_err().to_string(), "optimizer momentum must be at least 0 and below 1");
}

#[test]
fn optimizer_checkpoint_continues_bit_identically() {
    let m = model(
        r#"{"input_shape": [6], "layers": [{"type": "dense", "units": 5, "activation": "tanh"},
        {"type": "dense", "units": 3}], "loss": "cross_entropy"}"#,
    );
    let mut rng = ChaCha8Rng::seed_from_u64(80);
    let x = Array2::from_shape_fn((32, 6), |_| rng.random_range(-1.0f32..1.0));
    let y: Vec<u32> = (0..32).map(|_| rng.random_range(0..3)).collect();
    let mut net = Network::<f32>::new(&m);
    for method in [Method::adam(), Method::Sgd { momentum: 0.9, nesterov: true }] {
        let config = OptimizerConfig {
            method,
            learning_rate: 0.05,
            schedule: Schedule::Cosine { warmup_steps: 3, total_steps: 20, min_lr: 0.001 },
            weight_decay: 0.01,
            clip_norm: Some(0.5),
        };
        let mut grad = vec![0.0; m.param_count()];
        let mut train = |opt: &mut Optimizer, params: &mut Vec<f32>, steps: std::ops::Range<usize>| {
            for s in steps {
                let rows = (s * 8) % 32..(s * 8) % 32 + 8;
                let batch = Batch { x: x.slice(ndarray::s![rows.clone(), ..]), y: Labels::Classes(&y[rows]) };
                net.gradient(params, &batch, Mode::Eval, &mut grad).unwrap();
                opt.step(params, &grad).unwrap();
            }
        };
        let mut straight = init_params(&m, 2);
        let mut opt = Optimizer::new(config.clone(), straight.len()).unwrap();
        train(&mut opt, &mut straight, 0..12);

        let mut resumed = init_params(&m, 2);
        let mut opt = Optimizer::new(config.clone(), resumed.len()).unwrap();
        train(&mut opt, &mut resumed, 0..5);
        let saved = serde_json::to_string(&(opt.config(), opt.state())).unwrap();
        let (config, state): (OptimizerConfig, OptimizerState) = serde_json::from_str(&saved).unwrap();
        let mut opt = Optimizer::restore(config, state, resumed.len()).unwrap();
        train(&mut opt, &mut resumed, 5..12);
        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&straight), bits(&resumed));
        assert_ne!(bits(&straight), bits(&init_params(&m, 2)));
        assert_eq!(opt.steps(), 12);
    }
    let state = OptimizerState { step: 0, first_moment: vec![], second_moment: vec![] };
    assert_eq!(Optimizer::restore(sgd(0.9, false), state, 3).unwrap_err(), OptimError::State { expected: 3 });
}

// ---- Training quality on MNIST ----

/// The directory of the MNIST subset: 8,000 images of 28x28 uint8 and their labels, sorted by class.
fn mnist_dir() -> std::path::PathBuf {
    let start = manifest_dir();
    start
        .ancestors()
        .map(|d| d.join("shared/data/mnist-8k"))
        .find(|d| d.is_dir())
        .unwrap_or_else(|| panic!("no shared/data/mnist-8k above {}", start.display()))
}

/// Reads the raw bytes of a uint8 .npy file (format 1.0 or 2.0), checking the dtype and the shape.
fn read_npy_u8(path: &std::path::Path, shape: &str) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{}: not a .npy file", path.display());
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize, 12),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    assert!(
        header.contains("'descr': '|u1'") && header.contains(shape) && header.contains("'fortran_order': False"),
        "{}: unexpected header {header}",
        path.display()
    );
    bytes[start + header_len..].to_vec()
}

struct Mnist {
    train_x: Array2<f32>,
    train_y: Vec<u32>,
    test_x: Array2<f32>,
    test_y: Vec<u32>,
}

/// 7,000 training and 1,000 held-out samples after a seeded shuffle, pixels scaled to [0, 1].
fn mnist() -> Mnist {
    let dir = mnist_dir();
    let images = read_npy_u8(&dir.join("images.npy"), "(8000, 28, 28)");
    let labels = read_npy_u8(&dir.join("labels.npy"), "(8000,)");
    let mut order: Vec<usize> = (0..8000).collect();
    shuffle(&mut order, &mut ChaCha8Rng::seed_from_u64(2024));
    let pick = |idx: &[usize]| {
        let x = Array2::from_shape_fn((idx.len(), 784), |(i, j)| f32::from(images[idx[i] * 784 + j]) / 255.0);
        (x, idx.iter().map(|&i| u32::from(labels[i])).collect::<Vec<_>>())
    };
    let (train_x, train_y) = pick(&order[..7000]);
    let (test_x, test_y) = pick(&order[7000..]);
    Mnist { train_x, train_y, test_x, test_y }
}

fn shuffle<T>(v: &mut [T], rng: &mut ChaCha8Rng) {
    for i in (1..v.len()).rev() {
        v.swap(i, rng.random_range(0..=i));
    }
}

/// Trains `json` on MNIST with minibatches of 64 through [`Trainer::train_local`] (one call per epoch
/// over a fresh shuffle, plain SGD at `lr`) and returns the held-out accuracy.
fn train_mnist(json: &str, epochs: usize, lr: f32) -> f64 {
    let data = mnist();
    let m = model(json);
    let mut trainer = Trainer::new(&m);
    trainer.load_params(&init_params(&m, 1)).unwrap();
    let train = Batch { x: data.train_x.view(), y: Labels::Classes(&data.train_y) };
    let test = Batch { x: data.test_x.view(), y: Labels::Classes(&data.test_y) };
    let mut order: Vec<u32> = (0..7000).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut accuracy = 0.0;
    for epoch in 0..epochs {
        shuffle(&mut order, &mut rng);
        let config = LocalConfig {
            batch_size: 64,
            local_steps: 7000 / 64,
            learning_rate: lr,
            dropout: DropoutKey { seed: 1, step: (epoch * 1000) as u64 },
        };
        let result = trainer.train_local(&train, &order, &config).unwrap();
        let params = trainer.params().to_vec();
        let eval = trainer.evaluate(&params, &test).unwrap();
        accuracy = eval.accuracy.unwrap();
        eprintln!(
            "epoch {epoch}: train loss {:.4}, held-out loss {:.4}, accuracy {accuracy:.4}",
            result.mean_loss, eval.loss
        );
    }
    accuracy
}

#[test]
fn mnist_mlp_reaches_90_percent() {
    let json = r#"{"input_shape": [784], "layers": [
        {"type": "dense", "units": 128, "activation": "relu"},
        {"type": "dense", "units": 10, "activation": "softmax"}], "loss": "cross_entropy"}"#;
    let accuracy = train_mnist(json, 10, 0.1);
    assert!(accuracy >= 0.90, "held-out accuracy {accuracy}");
}

#[test]
fn mnist_convnet_reaches_95_percent() {
    let json = r#"{"input_shape": [28, 28, 1], "layers": [
        {"type": "conv2d", "filters": 8, "kernel_size": 3, "activation": "relu"},
        {"type": "max_pool2d", "pool_size": 2},
        {"type": "conv2d", "filters": 16, "kernel_size": 3, "activation": "relu"},
        {"type": "max_pool2d", "pool_size": 2},
        {"type": "flatten"},
        {"type": "dense", "units": 10, "activation": "softmax"}], "loss": "cross_entropy"}"#;
    let accuracy = train_mnist(json, 5, 0.1);
    assert!(accuracy >= 0.95, "held-out accuracy {accuracy}");
}

/// This crate's directory in the checkout the test runs in: read when it runs (cargo sets it for tests), not
/// compiled in, since with a shared target directory a test binary built in one clone may run in another.
fn manifest_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"))
}
