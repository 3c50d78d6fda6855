//! How far an honest contribution computed by the GPU engine (on the adapter present: lavapipe in CI) is from the
//! server's recomputation on the CPU reference trainer: the spread that the server's check tolerance
//! ([`daig_shared::train::verify::Tolerance::DEFAULT`]) must cover. Real MNIST leases (the digits of
//! `../shared/data/mnist-8k`), from freshly initialised and from partly trained parameters, with one and several
//! local steps; every lease run through [`daig_shared::train::lease::recompute`] exactly as the server runs it.
//!
//! `cargo run --release -p daig-provider --example check_spread [-- --data DIR] [--leases N] [--quick]`
//!
//! Prints a Markdown table: per model and lease shape, the largest relative L2 distance, the smallest cosine and
//! the largest relative loss difference over the leases, the margin to the default tolerance, and the parameter
//! tensor whose own delta differs most (relative L2): a wrong gradient of a small tensor, such as a convolution
//! kernel, hides in the distance of the whole delta, which the largest tensor dominates.

use std::path::PathBuf;

use daig_provider::gpu::Gpu;
use daig_provider::gpu::trainer::{DropoutSeed, GpuTrainer};
use daig_shared::data::{Limits as DataLimits, npy};
use daig_shared::model::{Limits, Model};
use daig_shared::params::init_params;
use daig_shared::train::Trainer;
use daig_shared::train::lease::{self, LeaseInputs, LeaseWork};
use daig_shared::train::verify::{Comparison, Tolerance};

const MLP: &str = r#"{"input_shape": [784], "layers": [
    {"type": "dense", "units": 128, "activation": "relu"}, {"type": "dense", "units": 10}], "loss": "cross_entropy"}"#;
const MLP_DROPOUT: &str = r#"{"input_shape": [784], "layers": [
    {"type": "dense", "units": 128, "activation": "relu"}, {"type": "dropout", "rate": 0.2},
    {"type": "dense", "units": 10}], "loss": "cross_entropy"}"#;
const CONVNET: &str = r#"{"input_shape": [28, 28, 1], "layers": [
    {"type": "conv2d", "filters": 8, "kernel_size": 3, "activation": "relu"}, {"type": "max_pool2d", "pool_size": 2},
    {"type": "flatten"}, {"type": "dense", "units": 10}], "loss": "cross_entropy"}"#;

const CONV_RELU: &str = r#"{"input_shape": [28, 28, 1], "layers": [
    {"type": "conv2d", "filters": 8, "kernel_size": 3, "activation": "relu"},
    {"type": "flatten"}, {"type": "dense", "units": 10}], "loss": "cross_entropy"}"#;
const CONV_POOL: &str = r#"{"input_shape": [28, 28, 1], "layers": [
    {"type": "conv2d", "filters": 8, "kernel_size": 3}, {"type": "max_pool2d", "pool_size": 2},
    {"type": "flatten"}, {"type": "dense", "units": 10}], "loss": "cross_entropy"}"#;
const CONV_LINEAR: &str = r#"{"input_shape": [28, 28, 1], "layers": [
    {"type": "conv2d", "filters": 8, "kernel_size": 3},
    {"type": "flatten"}, {"type": "dense", "units": 10}], "loss": "cross_entropy"}"#;

struct Mnist {
    features: Vec<f32>,
    labels: Vec<f32>,
}

fn load(dir: &std::path::Path) -> Mnist {
    let limits = DataLimits::default();
    let read = |name: &str| {
        let file = std::fs::File::open(dir.join(name)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(name).display()));
        npy::read(std::io::BufReader::new(file), &limits).expect("a valid .npy")
    };
    let images = read("images.npy");
    let labels = read("labels.npy");
    Mnist {
        features: images.data.iter().map(|&b| f32::from(b) / 255.0).collect(),
        labels: labels.data.iter().map(|&b| f32::from(b)).collect(),
    }
}

/// The samples `start..start + n` (wrapping), shuffled by a stride so that a lease holds several classes.
fn lease_inputs(data: &Mnist, start: usize, n: usize) -> LeaseInputs {
    let total = data.labels.len();
    let mut features = Vec::with_capacity(n * 784);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let s = (start + i * 997) % total;
        features.extend_from_slice(&data.features[s * 784..(s + 1) * 784]);
        labels.push(data.labels[s]);
    }
    LeaseInputs { features, labels, samples: n }
}

/// `|got - want| / |want|` (L2).
fn relative_distance(got: &[f32], want: &[f32]) -> f64 {
    let diff: f64 = got.iter().zip(want).map(|(g, w)| (f64::from(*g) - f64::from(*w)).powi(2)).sum();
    let norm: f64 = want.iter().map(|w| f64::from(*w).powi(2)).sum();
    (diff / norm.max(1e-30)).sqrt()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let quick = args.iter().any(|a| a == "--quick");
    let dir = flag("--data").map_or_else(|| PathBuf::from("../shared/data/mnist-8k"), PathBuf::from);
    let leases: usize = flag("--leases").map_or(if quick { 3 } else { 8 }, |v| v.parse().expect("--leases N"));
    let data = load(&dir);
    let mut gpu = pollster::block_on(Gpu::new()).expect("a GPU adapter");
    println!("adapter: {}; {leases} leases per row; tolerance {:?}\n", gpu.adapter.name, Tolerance::DEFAULT);
    println!(
        "| model | params | batch | local steps | lr | max rel. distance | min cosine | max loss diff. | margin | worst tensor |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let models: &[(&str, &str)] = if quick {
        &[("mlp", MLP)]
    } else if args.iter().any(|a| a == "--probe") {
        &[("conv-relu", CONV_RELU), ("conv-pool", CONV_POOL), ("conv-linear", CONV_LINEAR)]
    } else {
        &[("mlp", MLP), ("mlp+dropout", MLP_DROPOUT), ("convnet", CONVNET)]
    };
    let shapes: &[(usize, usize, f32)] = &[(32, 1, 1.0), (64, 1, 1.0), (32, 4, 0.1), (64, 16, 0.05)];
    let mut worst: f64 = 0.0;
    for &(name, json) in models {
        let model = Model::from_json(json, &Limits::default()).expect("a valid model");
        let fresh = init_params(&model, 1);
        // Partly trained parameters: 100 reference steps of SGD.
        let mut reference = Trainer::new(&model);
        let warm = lease_inputs(&data, 0, 64 * 100);
        let trained = {
            let work = LeaseWork { batch_size: 64, local_steps: 100, learning_rate: 0.1, seed: 1 };
            let r = lease::recompute(&mut reference, &model, &warm, &fresh, &work).expect("trains");
            fresh.iter().zip(&r.delta).map(|(p, d)| p + d).collect::<Vec<f32>>()
        };
        for (state, params) in [("fresh", &fresh), ("trained", &trained)] {
            for &(batch, steps, lr) in shapes {
                let (mut distance, mut cosine, mut loss) = (0.0f64, 1.0f64, 0.0f64);
                let mut tensor = (0.0f64, "");
                for l in 0..leases {
                    let inputs = lease_inputs(&data, 1000 * l + 17, batch * steps);
                    let seed = 1_000_000 + l as u64;
                    let work = LeaseWork { batch_size: batch, local_steps: steps, learning_rate: lr, seed };
                    let want = lease::recompute(&mut reference, &model, &inputs, params, &work).expect("recomputes");
                    let mut engine = GpuTrainer::new(gpu, model.clone(), batch).expect("the GPU trainer");
                    engine.load_params(params).expect("params");
                    engine.load_shard(&inputs.features, &inputs.labels).expect("samples");
                    let indices: Vec<u32> = (0..inputs.samples as u32).collect();
                    let dropout = DropoutSeed { seed, first_step: 0 };
                    let got = pollster::block_on(engine.train(&indices, batch, steps, lr, dropout)).expect("trains");
                    gpu = engine.into_gpu();
                    let c = Comparison::new(&got.delta, f64::from(got.mean_loss), &want.delta, want.mean_loss);
                    distance = distance.max(c.relative_distance);
                    cosine = cosine.min(c.cosine);
                    loss = loss.max(c.loss_difference);
                    for t in &model.params.tensors {
                        let d = relative_distance(&got.delta[t.range()], &want.delta[t.range()]);
                        if d >= tensor.0 {
                            tensor = (d, &t.name);
                        }
                    }
                }
                let margin = (Tolerance::DEFAULT.max_relative_distance / distance.max(1e-12))
                    .min((1.0 - Tolerance::DEFAULT.min_cosine) / (1.0 - cosine).max(1e-15))
                    .min(Tolerance::DEFAULT.max_loss_difference / loss.max(1e-12));
                worst = worst.max(distance);
                println!(
                    "| {name} ({state}) | {} | {batch} | {steps} | {lr} | {distance:.2e} | {cosine:.8} | {loss:.2e} | {margin:.0}x | {} {:.2e} |",
                    model.param_count(),
                    tensor.1,
                    tensor.0
                );
            }
        }
    }
    println!("\nlargest relative distance: {worst:.2e}");
}
