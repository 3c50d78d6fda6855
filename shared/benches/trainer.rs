//! Throughput of the reference trainer on the MNIST MLP 784-128(relu)-10 with softmax cross-entropy, in
//! samples per second of training (forward, backward and plain SGD update) at batch 64, through
//! `Trainer::train_local` as a provider runs it; compared with the same training in NumPy
//! (`bench/numpy_mlp.py`) when `python3` with NumPy is available.
//!
//! NumPy runs with `OPENBLAS_CORETYPE` and `OPENBLAS_L2_SIZE` removed from its environment: where they
//! are set they can force a slower OpenBLAS kernel. It runs twice: with `OPENBLAS_NUM_THREADS=1` (the
//! fair comparison, as this trainer is single-threaded) and with OpenBLAS's default threads.
//!
//! Run with `cargo bench -p daig-shared --bench trainer`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use daig_shared::model::{Limits, Model};
use daig_shared::params::init_params;
use daig_shared::train::{Batch, DropoutKey, Labels, LocalConfig, Trainer};
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const MLP: &str = r#"{"input_shape": [784], "layers": [
    {"type": "dense", "units": 128, "activation": "relu"},
    {"type": "dense", "units": 10, "activation": "softmax"}], "loss": "cross_entropy"}"#;

const SAMPLES: usize = 7000;
const BATCH: usize = 64;

fn rust_samples_per_sec(duration: Duration) -> f64 {
    let model = Model::from_json(MLP, &Limits::default()).expect("valid model");
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let x = Array2::from_shape_fn((SAMPLES, 784), |_| rng.random_range(0.0f32..1.0));
    let y: Vec<u32> = (0..SAMPLES).map(|_| rng.random_range(0..10)).collect();
    let mut order: Vec<u32> = (0..SAMPLES as u32).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let data = Batch { x: x.view(), y: Labels::Classes(&y) };
    let mut trainer = Trainer::new(&model);
    trainer.load_params(&init_params(&model, 0)).expect("params fit");
    let config = |local_steps| LocalConfig {
        batch_size: BATCH,
        local_steps,
        learning_rate: 0.01,
        dropout: DropoutKey::default(),
    };
    trainer.train_local(&data, &order, &config(50)).expect("warm-up");
    // Calls of 500 steps: one parameter copy and delta per call, as a provider's contribution.
    let (mut steps, start) = (0, Instant::now());
    while start.elapsed() < duration {
        trainer.train_local(&data, &order, &config(500)).expect("training");
        steps += 500;
    }
    (steps * BATCH) as f64 / start.elapsed().as_secs_f64()
}

fn numpy_samples_per_sec(script: &Path, threads: Option<&str>) -> Option<f64> {
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg("3").env_remove("OPENBLAS_CORETYPE").env_remove("OPENBLAS_L2_SIZE");
    if let Some(t) = threads {
        cmd.env("OPENBLAS_NUM_THREADS", t).env("OMP_NUM_THREADS", t);
    }
    let out = cmd.output().ok().filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|l| l.strip_prefix("numpy samples/s: ")).and_then(|v| v.trim().parse().ok())
}

fn main() {
    let rust = rust_samples_per_sec(Duration::from_secs(3));
    println!("reference trainer, MLP 784-128-10, batch {BATCH}: {rust:.0} samples/s (1 thread)");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/numpy_mlp.py");
    match numpy_samples_per_sec(&script, Some("1")) {
        Some(numpy) => {
            println!("numpy, same training (OPENBLAS_NUM_THREADS=1): {numpy:.0} samples/s");
            println!("ratio rust/numpy (1 thread each): {:.2}", rust / numpy);
            if let Some(threaded) = numpy_samples_per_sec(&script, None) {
                println!(
                    "numpy, OpenBLAS default threads: {threaded:.0} samples/s (rust/numpy {:.2})",
                    rust / threaded
                );
            }
        }
        None => println!("numpy comparison skipped: `python3 {}` with numpy did not run", script.display()),
    }
}
