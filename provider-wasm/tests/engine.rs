//! The provider's engine: the GPU when it passes its self-check, the CPU reference trainer otherwise; both
//! train alike, and GPU training on real MNIST digits reaches the reference's accuracy.
#![cfg(not(target_arch = "wasm32"))]

use std::path::PathBuf;

use daig_provider::engine::{AdapterPolicy, Backend, Engine, EngineError};
use daig_provider::gpu::Gpu;
use daig_provider::gpu::GpuError;
use daig_provider::gpu::trainer::DropoutSeed;
use daig_shared::data::{Limits as DataLimits, Normalization, npy, to_f32};
use daig_shared::model::{Limits, Model};
use daig_shared::params::init_params;
use daig_shared::train::{Batch, DropoutKey, Labels, LocalConfig, Trainer};
use ndarray::ArrayView2;

const SMALL: &str = r#"{"input_shape": [4, 4, 1], "layers": [
    {"type": "conv2d", "filters": 2, "kernel_size": 3, "activation": "tanh"}, {"type": "flatten"},
    {"type": "dropout", "rate": 0.5}, {"type": "dense", "units": 3}], "loss": "cross_entropy"}"#;

fn model(json: &str) -> Model {
    Model::from_json(json, &Limits::default()).unwrap()
}

fn small_data() -> (Vec<f32>, Vec<f32>) {
    let x: Vec<f32> = (0..10 * 16).map(|i| ((i * 13 % 17) as f32 / 8.0) - 1.0).collect();
    let y: Vec<f32> = (0..10).map(|i| (i % 3) as f32).collect();
    (x, y)
}

/// The engine on whatever adapter is present, software ones included (lavapipe in CI).
fn any_adapter(m: Model, max_batch: usize) -> Engine {
    pollster::block_on(Engine::from_gpu(pollster::block_on(Gpu::new()), m, max_batch, AdapterPolicy::Any))
}

#[test]
fn the_gpu_is_used_when_it_passes_its_self_check() {
    let engine = any_adapter(model(SMALL), 8);
    match engine.backend() {
        Backend::Gpu(adapter) => assert!(!adapter.name.is_empty()),
        Backend::Cpu { reason } => panic!("expected the GPU (lavapipe in CI), fell back to the CPU: {reason}"),
    }
}

#[test]
fn by_default_a_software_adapter_leaves_training_to_the_cpu() {
    let gpu = pollster::block_on(Gpu::new()).unwrap();
    let software = gpu.adapter.software;
    let name = gpu.adapter.name.clone();
    let engine = pollster::block_on(Engine::from_gpu(Ok(gpu), model(SMALL), 8, AdapterPolicy::HardwareOnly));
    match engine.backend() {
        Backend::Cpu { reason } if software => {
            assert_eq!(reason, &format!("{name} is a software adapter, slower than training on the CPU"));
        }
        Backend::Gpu(_) if !software => {}
        other => panic!("adapter {name} (software: {software}) gave {other:?}"),
    }
}

#[test]
fn without_an_adapter_the_cpu_trains_exactly_like_the_reference_and_like_the_gpu() {
    let m = model(SMALL);
    let (x, y) = small_data();
    let params = init_params(&m, 5);
    let indices = [9, 3, 5, 1, 0, 7, 2];
    let seed = DropoutSeed { seed: 17, first_step: 40 };

    let mut cpu = pollster::block_on(Engine::from_gpu(
        Err(GpuError::NoAdapter("none in this test".into())),
        m.clone(),
        8,
        AdapterPolicy::Any,
    ));
    assert_eq!(cpu.backend(), &Backend::Cpu { reason: "no GPU adapter is available: none in this test".into() });
    cpu.load_params(&params).unwrap();
    cpu.load_shard(&x, &y).unwrap();
    let got = pollster::block_on(cpu.train(&indices, 4, 3, 0.2, seed)).unwrap();

    let mut reference = Trainer::new(&m);
    reference.load_params(&params).unwrap();
    let classes: Vec<u32> = y.iter().map(|&c| c as u32).collect();
    let batch = Batch { x: ArrayView2::from_shape((10, 16), &x).unwrap(), y: Labels::Classes(&classes) };
    let config = LocalConfig {
        batch_size: 4,
        local_steps: 3,
        learning_rate: 0.2,
        dropout: DropoutKey { seed: seed.seed, step: seed.first_step },
    };
    let want = reference.train_local(&batch, &indices, &config).unwrap();
    assert_eq!(got.delta, want.delta);
    assert_eq!(got.samples, 12);

    let mut gpu = any_adapter(m, 8);
    assert!(matches!(gpu.backend(), Backend::Gpu(_)));
    gpu.load_params(&params).unwrap();
    gpu.load_shard(&x, &y).unwrap();
    let on_gpu = pollster::block_on(gpu.train(&indices, 4, 3, 0.2, seed)).unwrap();
    let scale = want.delta.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    for (g, w) in on_gpu.delta.iter().zip(&want.delta) {
        assert!((g - w).abs() / scale < 1e-4, "{g} vs {w}");
    }
    assert!((f64::from(on_gpu.mean_loss) - want.mean_loss).abs() < 1e-4 * want.mean_loss.abs().max(1.0));
}

#[test]
fn bad_calls_are_errors_on_both_engines() {
    let m = model(SMALL);
    let (x, y) = small_data();
    for mut engine in
        [pollster::block_on(Engine::new(m.clone(), 4)), Engine::cpu(m.clone(), "chosen by the test".into())]
    {
        assert!(matches!(engine.load_params(&[0.0; 3]), Err(EngineError::Train(_))));
        assert!(matches!(engine.load_shard(&x, &y[..9]), Err(EngineError::Labels(_))));
        let mut wrong_class = y.clone();
        wrong_class[2] = 3.0;
        let e = engine.load_shard(&x, &wrong_class).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the shard's labels do not fit the model: class 3 is not one of the model's 3 classes"
        );
        engine.load_params(&init_params(&m, 1)).unwrap();
        engine.load_shard(&x, &y).unwrap();
        let out_of_range = pollster::block_on(engine.train(&[0, 10], 2, 1, 0.1, DropoutSeed::default()));
        assert!(out_of_range.unwrap_err().to_string().contains("10"), "{:?}", engine.backend());
        assert!(pollster::block_on(engine.train(&[], 2, 1, 0.1, DropoutSeed::default())).is_err());
        // Evaluation refuses the same, on both backends alike.
        let e = pollster::block_on(engine.evaluate(&[3, 10])).unwrap_err();
        assert_eq!(e.to_string(), "sample index 10 is out of range for a dataset of 10 samples");
        assert!(matches!(pollster::block_on(engine.evaluate(&[])), Err(EngineError::Train(_))));
    }
}

/// `shared/data/mnist-8k`, found from the workspace upwards (beside the clone in CI).
fn mnist_dir() -> PathBuf {
    manifest_dir()
        .ancestors()
        .map(|a| a.join("shared/data/mnist-8k"))
        .find(|d| d.join("images.npy").is_file())
        .expect("shared/data/mnist-8k/images.npy not found above the crate")
}

#[test]
fn gpu_training_on_mnist_reaches_the_reference_accuracy() {
    let dir = mnist_dir();
    let limits = DataLimits::default();
    let images = npy::read(std::fs::File::open(dir.join("images.npy")).unwrap(), &limits).unwrap();
    let labels = npy::read(std::fs::File::open(dir.join("labels.npy")).unwrap(), &limits).unwrap();
    let n = images.info.len();
    let mut x = vec![0f32; n * 784];
    to_f32(images.info.dtype, &images.data, &Normalization::Scale { min: None, max: None }, &mut x).unwrap();
    let y: Vec<f32> = labels.data.iter().map(|&b| f32::from(b)).collect();
    // The digits are sorted by class: a seeded shuffle (an LCG walk over a prime stride) mixes them.
    let order: Vec<u32> = (0..n as u64).map(|i| ((i * 7919 + 13) % n as u64) as u32).collect();
    let (train, test) = order.split_at(7000);

    let m = model(
        r#"{"input_shape": [784], "layers": [{"type": "dense", "units": 64, "activation": "relu"},
            {"type": "dense", "units": 10}], "loss": "cross_entropy"}"#,
    );
    let params = init_params(&m, 3);
    let mut accuracies = Vec::new();
    for mut engine in [any_adapter(m.clone(), 32), Engine::cpu(m.clone(), "reference".into())] {
        engine.load_params(&params).unwrap();
        engine.load_shard(&x, &y).unwrap();
        // 300 steps of batch 32 (about 1.4 epochs of the 7,000 training digits), 20 steps per call.
        for call in 0..15 {
            let start = call * 20 * 32 % train.len();
            let indices: Vec<u32> = (0..20 * 32).map(|j| train[(start + j) % train.len()]).collect();
            let r = pollster::block_on(engine.train(&indices, 32, 20, 0.1, DropoutSeed::default())).unwrap();
            // The engine keeps its parameters; the delta is what it would send.
            assert_eq!(r.samples, 640);
        }
        let (loss, accuracy) = pollster::block_on(engine.evaluate(test)).unwrap();
        assert!(loss.is_finite());
        accuracies.push(accuracy);
    }
    let (gpu, cpu) = (accuracies[0], accuracies[1]);
    eprintln!("held-out accuracy after 300 steps: GPU {gpu}, reference {cpu}");
    assert!(cpu >= 0.85, "the reference reached only {cpu}");
    assert!((gpu - cpu).abs() <= 0.01, "GPU accuracy {gpu} vs reference {cpu}");
}

#[test]
fn a_gpu_that_fails_mid_session_hands_over_to_the_cpu_without_losing_state() {
    let m = model(SMALL);
    let (x, y) = small_data();
    let params = init_params(&m, 8);
    let seed = DropoutSeed { seed: 3, first_step: 0 };
    let mut engine = any_adapter(m.clone(), 8);
    assert!(matches!(engine.backend(), Backend::Gpu(_)));
    engine.load_params(&params).unwrap();
    engine.load_shard(&x, &y).unwrap();
    let first = pollster::block_on(engine.train(&[0, 1, 2, 3], 4, 1, 0.1, seed)).unwrap();

    // The device goes away (as when a browser tab's GPU process crashes).
    engine.gpu().unwrap().device.destroy();
    let second = pollster::block_on(engine.train(&[4, 5, 6, 7], 4, 1, 0.1, seed)).unwrap();
    match engine.backend() {
        Backend::Cpu { reason } => assert!(reason.starts_with("the GPU failed: "), "{reason}"),
        other => panic!("still on {other:?}"),
    }
    // The CPU continued from the parameters after the first call.
    let after_first: Vec<f32> = params.iter().zip(&first.delta).map(|(p, d)| p + d).collect();
    let mut reference = Trainer::new(&m);
    reference.load_params(&after_first).unwrap();
    let classes: Vec<u32> = y.iter().map(|&c| c as u32).collect();
    let batch = Batch { x: ArrayView2::from_shape((10, 16), &x).unwrap(), y: Labels::Classes(&classes) };
    let config =
        LocalConfig { batch_size: 4, local_steps: 1, learning_rate: 0.1, dropout: DropoutKey { seed: 3, step: 0 } };
    let want = reference.train_local(&batch, &[4, 5, 6, 7], &config).unwrap();
    assert_eq!(second.delta, want.delta);
}

/// This crate's directory in the checkout the test runs in: read when it runs (cargo sets it for tests), not
/// compiled in, since with a shared target directory a test binary built in one clone may run in another.
fn manifest_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"))
}
