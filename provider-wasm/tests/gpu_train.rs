//! The GPU trainer against the CPU reference trainer of `daig-shared`: whole training steps of every layer
//! type and loss, and a few hundred steps of MNIST training. Runs on whatever adapter is present
//! (lavapipe in CI), so shapes stay small.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::{gpu, random};

use daig_provider::gpu::Gpu;
use daig_provider::gpu::trainer::{DropoutSeed, GpuTrainer};
use daig_shared::model::{Limits, Loss, Model};
use daig_shared::params::init_params;
use daig_shared::train::{Batch, DropoutKey, Labels, LocalConfig, Trainer};
use ndarray::ArrayView2;

/// Labels for `n` samples: classes for cross-entropy, targets in [0, 1] otherwise.
fn labels(model: &Model, n: usize) -> (Vec<u32>, Vec<f32>) {
    let outputs = model.output_shape().elements().unwrap();
    match model.spec.loss {
        Loss::CrossEntropy => {
            let classes: Vec<u32> = (0..n).map(|i| (i * 7 % outputs) as u32).collect();
            let as_f32 = classes.iter().map(|&c| c as f32).collect();
            (classes, as_f32)
        }
        _ => {
            let t: Vec<f32> = random(n * outputs, 99).into_iter().map(|v| (v + 1.0) / 2.0).collect();
            (Vec::new(), t)
        }
    }
}

fn max_relative_error(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    got.iter().zip(want).map(|(g, w)| (g - w).abs() / scale).fold(0.0, f32::max)
}

/// Trains `json` for `steps` local steps on the GPU and on the reference, from the same parameters and
/// minibatches, and compares the deltas and losses.
fn compare(gpu: Gpu, json: &str, batch: usize, steps: usize, samples: usize) -> Gpu {
    let model = Model::from_json(json, &Limits::default()).unwrap();
    let in_elems = model.input_shape().elements().unwrap();
    let outputs = model.output_shape().elements().unwrap();
    let x = random(samples * in_elems, 5);
    let (classes, y) = labels(&model, samples);
    let params = init_params(&model, 42);
    let indices: Vec<u32> = (0..samples as u32).rev().collect();
    let lr = 0.05;
    let dropout = DropoutKey { seed: 1234, step: 7 };

    let mut reference = Trainer::new(&model);
    reference.load_params(&params).unwrap();
    let xs = ArrayView2::from_shape((samples, in_elems), &x).unwrap();
    let labels = if model.spec.loss == Loss::CrossEntropy {
        Labels::Classes(&classes)
    } else {
        Labels::Values(ArrayView2::from_shape((samples, outputs), &y).unwrap())
    };
    let config = LocalConfig { batch_size: batch, local_steps: steps, learning_rate: lr, dropout };
    let want = reference.train_local(&Batch { x: xs, y: labels }, &indices, &config).unwrap();

    gpu.reset_allocation_counts();
    let need = model.device_need(batch as u32, samples as u32);
    let mut trainer = GpuTrainer::new(gpu, model, batch).unwrap();
    trainer.load_params(&params).unwrap();
    trainer.load_shard(&x, &y).unwrap();
    let got = pollster::block_on(trainer.train(
        &indices,
        batch,
        steps,
        lr,
        DropoutSeed { seed: dropout.seed, first_step: dropout.step },
    ))
    .unwrap();
    // What the server holds a device's stated capacity against bounds what the engine allocated for a lease
    // (every buffer ever created, so more than it held at once), and not by a wide margin.
    let (allocated, largest) = (trainer.gpu().allocated_bytes(), trainer.gpu().largest_allocation());
    assert!(allocated <= need.total_bytes, "{json}\nbatch {batch}: allocated {allocated} bytes, {need:?}");
    assert!(
        need.total_bytes <= allocated + allocated / 4,
        "{json}\nbatch {batch}: allocated {allocated} bytes, {need:?}"
    );
    assert_eq!(largest, need.largest_buffer_bytes, "{json}\nbatch {batch}");
    assert_eq!(got.samples, want.samples);
    let err = max_relative_error(&got.delta, &want.delta);
    assert!(err <= 1e-4, "{json}\nbatch {batch}, {steps} steps: delta differs by {err:e}");
    let loss_err = ((f64::from(got.mean_loss) - want.mean_loss) / want.mean_loss.abs().max(1e-3)).abs();
    assert!(loss_err <= 1e-4, "{json}: loss {} vs {}", got.mean_loss, want.mean_loss);
    // Parameters on the GPU moved by the delta.
    let now = pollster::block_on(trainer.read_params()).unwrap();
    let moved: Vec<f32> = params.iter().zip(&want.delta).map(|(p, d)| p + d).collect();
    assert!(max_relative_error(&now, &moved) <= 1e-4);
    trainer.into_gpu()
}

#[test]
fn training_steps_match_reference_for_every_layer_and_loss() {
    let models = [
        // The MNIST MLP, and a small MNIST convnet.
        r#"{"input_shape": [784], "layers": [{"type": "dense", "units": 128, "activation": "relu"}, {"type": "dense", "units": 10}], "loss": "cross_entropy"}"#,
        r#"{"input_shape": [28, 28, 1], "layers": [{"type": "conv2d", "filters": 8, "kernel_size": 3, "activation": "relu"},
            {"type": "max_pool2d", "pool_size": 2}, {"type": "flatten"}, {"type": "dense", "units": 10}], "loss": "cross_entropy"}"#,
        // A narrow MLP.
        r#"{"input_shape": [20], "layers": [{"type": "dense", "units": 16, "activation": "relu"}, {"type": "dense", "units": 10}], "loss": "cross_entropy"}"#,
        // Softmax fused into the loss, sigmoid and tanh, dropout.
        r#"{"input_shape": [9], "layers": [{"type": "dense", "units": 7, "activation": "tanh"}, {"type": "dropout", "rate": 0.3},
            {"type": "dense", "units": 6, "activation": "sigmoid"}, {"type": "dense", "units": 4, "activation": "softmax"}], "loss": "cross_entropy"}"#,
        // A softmax that is not fused (MSE), activation layers on their own.
        r#"{"input_shape": [5], "layers": [{"type": "dense", "units": 6}, {"type": "activation", "activation": "relu"},
            {"type": "dense", "units": 3}, {"type": "activation", "activation": "softmax"}], "loss": "mean_squared_error"}"#,
        // Binary cross-entropy with a fused sigmoid on 3 outputs.
        r#"{"input_shape": [6], "layers": [{"type": "dense", "units": 5, "activation": "relu"}, {"type": "dense", "units": 3},
            {"type": "activation", "activation": "sigmoid"}], "loss": "binary_cross_entropy"}"#,
        // A convnet: same padding with stride 2, valid, max and average pooling with odd strides.
        r#"{"input_shape": [9, 8, 2], "layers": [
            {"type": "conv2d", "filters": 3, "kernel_size": 3, "strides": 2, "padding": "same", "activation": "relu"},
            {"type": "max_pool2d", "pool_size": 2, "strides": 1},
            {"type": "conv2d", "filters": 4, "kernel_size": [2, 1], "activation": "tanh"},
            {"type": "avg_pool2d", "pool_size": 2, "strides": 1},
            {"type": "flatten"}, {"type": "dropout", "rate": 0.2}, {"type": "dense", "units": 5}], "loss": "cross_entropy"}"#,
        // Even kernels with same padding, and MSE on a conv output.
        r#"{"input_shape": [6, 6, 1], "layers": [
            {"type": "conv2d", "filters": 2, "kernel_size": 4, "padding": "same", "activation": "sigmoid"},
            {"type": "avg_pool2d", "pool_size": 3}, {"type": "flatten"}], "loss": "mean_squared_error"}"#,
    ];
    let mut gpu = gpu();
    for json in models {
        // Batch size 1, a batch that is not a multiple of any tile, and several local steps.
        gpu = compare(gpu, json, 1, 1, 5);
        gpu = compare(gpu, json, 7, 1, 7);
        gpu = compare(gpu, json, 5, 3, 11);
    }
}

/// The relative L2 distance `|got - want| / |want|`.
fn relative_distance(got: &[f32], want: &[f32]) -> f64 {
    let diff: f64 = got.iter().zip(want).map(|(g, w)| (f64::from(*g) - f64::from(*w)).powi(2)).sum();
    let norm: f64 = want.iter().map(|w| f64::from(*w).powi(2)).sum();
    (diff / norm.max(1e-30)).sqrt()
}

/// Convolutions on MNIST-sized inputs (28x28) at a realistic batch: the kernel gradient is a product whose
/// inner dimension is batch x output positions (here 32 x 26 x 26 = 21632), far longer than the small
/// shapes above. Every parameter tensor must match the reference on its own, not only the delta as a whole
/// (whose norm the dense kernel dominates).
#[test]
fn conv_gradients_on_mnist_sized_inputs_match_reference() {
    let models = [
        // A linear convolution straight into the classifier.
        r#"{"input_shape": [28, 28, 1], "layers": [{"type": "conv2d", "filters": 8, "kernel_size": 3},
            {"type": "flatten"}, {"type": "dense", "units": 10}], "loss": "cross_entropy"}"#,
        // Same padding, relu, pooling and a second convolution (whose input gradient goes through col2im).
        r#"{"input_shape": [28, 28, 1], "layers": [
            {"type": "conv2d", "filters": 8, "kernel_size": 3, "padding": "same", "activation": "relu"},
            {"type": "max_pool2d", "pool_size": 2},
            {"type": "conv2d", "filters": 16, "kernel_size": 3, "activation": "relu"},
            {"type": "flatten"}, {"type": "dense", "units": 10}], "loss": "cross_entropy"}"#,
    ];
    let batch = 32;
    let mut gpu = gpu();
    for json in models {
        let model = Model::from_json(json, &Limits::default()).unwrap();
        let in_elems = model.input_shape().elements().unwrap();
        // Digit-like inputs: in [0, 1), about half of them background zeros.
        let x: Vec<f32> = random(batch * in_elems, 11).into_iter().map(|v| v.max(0.0)).collect();
        let (classes, y) = labels(&model, batch);
        let params = init_params(&model, 3);
        let indices: Vec<u32> = (0..batch as u32).collect();
        let lr = 0.1;
        let dropout = DropoutKey { seed: 5, step: 0 };

        let mut reference = Trainer::new(&model);
        reference.load_params(&params).unwrap();
        let xs = ArrayView2::from_shape((batch, in_elems), &x).unwrap();
        let config = LocalConfig { batch_size: batch, local_steps: 1, learning_rate: lr, dropout };
        let want = reference.train_local(&Batch { x: xs, y: Labels::Classes(&classes) }, &indices, &config).unwrap();

        let mut trainer = GpuTrainer::new(gpu, model.clone(), batch).unwrap();
        trainer.load_params(&params).unwrap();
        trainer.load_shard(&x, &y).unwrap();
        let seed = DropoutSeed { seed: dropout.seed, first_step: dropout.step };
        let got = pollster::block_on(trainer.train(&indices, batch, 1, lr, seed)).unwrap();
        for t in &model.params.tensors {
            let distance = relative_distance(&got.delta[t.range()], &want.delta[t.range()]);
            assert!(distance <= 1e-4, "{json}\n{}: the delta differs by {distance:e} (relative L2)", t.name);
        }
        gpu = trainer.into_gpu();
    }
}
