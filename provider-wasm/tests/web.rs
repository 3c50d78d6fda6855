//! The engine in a real browser: headless Chromium runs these tests in a Web Worker (where the provider
//! runs) through wasm-bindgen-test. `cargo xtask test` runs them twice: with WebGPU (SwiftShader, behind
//! `--enable-unsafe-webgpu`), where the GPU engine must pass its self-check and match the reference
//! trainer, and without WebGPU, where the engine must fall back to the CPU and still train like the
//! reference. `DAIG_EXPECT_WEBGPU` (read at build time) says which run this is.
#![cfg(target_arch = "wasm32")]

use daig_provider::engine::{AdapterPolicy, Backend, Engine, self_check};
use daig_provider::gpu::Gpu;
use daig_provider::gpu::trainer::{DropoutSeed, GpuTrainer};
use daig_shared::model::{Limits, Model};
use daig_shared::params::init_params;
use daig_shared::train::{Batch, DropoutKey, Labels, LocalConfig, Trainer};
use ndarray::ArrayView2;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_dedicated_worker);

fn expect_webgpu() -> bool {
    option_env!("DAIG_EXPECT_WEBGPU") == Some("1")
}

const MODELS: &[&str] = &[
    r#"{"input_shape": [12], "layers": [{"type": "dense", "units": 8, "activation": "relu"}, {"type": "dropout", "rate": 0.25},
        {"type": "dense", "units": 5, "activation": "softmax"}], "loss": "cross_entropy"}"#,
    r#"{"input_shape": [7, 6, 2], "layers": [
        {"type": "conv2d", "filters": 3, "kernel_size": 3, "strides": 2, "padding": "same", "activation": "tanh"},
        {"type": "max_pool2d", "pool_size": 2, "strides": 1}, {"type": "avg_pool2d", "pool_size": [1, 2]},
        {"type": "flatten"}, {"type": "dense", "units": 2}, {"type": "activation", "activation": "sigmoid"}],
        "loss": "binary_cross_entropy"}"#,
];

/// Data for `model`: features in [-1, 1] and labels (classes or targets in [0, 1]).
fn data(model: &Model, samples: usize) -> (Vec<f32>, Vec<u32>, Vec<f32>) {
    let in_elems = model.input_shape().elements().unwrap();
    let outputs = model.output_shape().elements().unwrap();
    let x = (0..samples * in_elems).map(|i| ((i * 29 % 31) as f32 / 15.0) - 1.0).collect();
    if model.spec.loss == daig_shared::model::Loss::CrossEntropy {
        let classes: Vec<u32> = (0..samples).map(|i| (i % outputs) as u32).collect();
        let y = classes.iter().map(|&c| c as f32).collect();
        (x, classes, y)
    } else {
        (x, Vec::new(), (0..samples * outputs).map(|i| (i % 3) as f32 / 2.0).collect())
    }
}

fn reference_delta(model: &Model, params: &[f32], x: &[f32], classes: &[u32], y: &[f32], indices: &[u32]) -> Vec<f32> {
    let mut trainer = Trainer::new(model);
    trainer.load_params(params).unwrap();
    let samples = x.len() / model.input_shape().elements().unwrap();
    let outputs = model.output_shape().elements().unwrap();
    let labels = if classes.is_empty() {
        Labels::Values(ArrayView2::from_shape((samples, outputs), y).unwrap())
    } else {
        Labels::Classes(classes)
    };
    let batch = Batch { x: ArrayView2::from_shape((samples, x.len() / samples), x).unwrap(), y: labels };
    let config =
        LocalConfig { batch_size: 3, local_steps: 2, learning_rate: 0.1, dropout: DropoutKey { seed: 5, step: 9 } };
    trainer.train_local(&batch, indices, &config).unwrap().delta
}

fn assert_close(got: &[f32], want: &[f32]) {
    let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() / scale <= 1e-4, "parameter {i}: {g} vs {w}");
    }
}

#[wasm_bindgen_test]
async fn the_engine_in_a_browser_worker_trains_like_the_reference() {
    let gpu = Gpu::new().await;
    assert_eq!(gpu.is_ok(), expect_webgpu(), "WebGPU adapter: {:?}", gpu.as_ref().err());
    for json in MODELS {
        let model = Model::from_json(json, &Limits::default()).unwrap();
        let (x, classes, y) = data(&model, 6);
        let params = init_params(&model, 21);
        let indices = [5u32, 0, 3, 1, 4];
        let want = reference_delta(&model, &params, &x, &classes, &y, &indices);

        // SwiftShader is a software adapter: allow it, so that the GPU path runs in the browser.
        let mut engine = Engine::from_gpu(Gpu::new().await, model.clone(), 3, AdapterPolicy::Any).await;
        match (engine.backend(), expect_webgpu()) {
            (Backend::Gpu(adapter), true) => assert!(!adapter.name.is_empty() || adapter.backend == "BrowserWebGpu"),
            (Backend::Cpu { reason }, false) => assert!(reason.contains("no GPU adapter"), "{reason}"),
            (backend, expected) => panic!("backend {backend:?}, but WebGPU expected: {expected}"),
        }
        engine.load_params(&params).unwrap();
        engine.load_shard(&x, &y).unwrap();
        let got = engine.train(&indices, 3, 2, 0.1, DropoutSeed { seed: 5, first_step: 9 }).await.unwrap();
        assert_close(&got.delta, &want);
    }
}

#[wasm_bindgen_test]
async fn webgpu_passes_the_self_check_and_trains_on_the_gpu() {
    if !expect_webgpu() {
        // Without the flag Chromium offers no adapter: the engine's fallback path, tested above.
        assert!(Gpu::new().await.is_err());
        return;
    }
    let gpu = self_check(Gpu::new().await.unwrap()).await.expect("the browser's adapter passes the self-check");
    let model = Model::from_json(MODELS[1], &Limits::default()).unwrap();
    let (x, classes, y) = data(&model, 6);
    let params = init_params(&model, 2);
    let indices = [2u32, 4, 1];
    let want = reference_delta(&model, &params, &x, &classes, &y, &indices);
    let mut trainer = GpuTrainer::new(gpu, model, 3).unwrap();
    trainer.load_params(&params).unwrap();
    trainer.load_shard(&x, &y).unwrap();
    let got = trainer.train(&indices, 3, 2, 0.1, DropoutSeed { seed: 5, first_step: 9 }).await.unwrap();
    assert_close(&got.delta, &want);
    assert_close(
        &trainer.read_params().await.unwrap(),
        &params.iter().zip(&want).map(|(p, d)| p + d).collect::<Vec<_>>(),
    );
}

/// What a browser states in its `Hello`: the adapter's buffer limit and a quarter of the memory Chromium
/// reports (`navigator.deviceMemory`, also in workers); without WebGPU, what wasm32 can address. And the engine
/// here allocates no more for a lease than the need the server holds that statement against.
#[wasm_bindgen_test]
async fn the_browser_states_what_its_device_holds_and_the_engine_stays_within_its_need() {
    use daig_provider::web::{MEMORY_SHARE, WASM_MEMORY_BYTES, device_capacity};

    let navigator = js_sys::Reflect::get(&js_sys::global(), &"navigator".into()).unwrap();
    let gib = js_sys::Reflect::get(&navigator, &"deviceMemory".into())
        .unwrap()
        .as_f64()
        .expect("Chromium reports deviceMemory");
    let reported = (gib * f64::from(1u32 << 30)) as u64 / MEMORY_SHARE;
    assert!(reported > 0);
    let gpu = if expect_webgpu() { Some(self_check(Gpu::new().await.unwrap()).await.unwrap()) } else { None };
    let device = device_capacity(gpu.as_ref());
    let Some(gpu) = gpu else {
        assert_eq!(device.max_buffer_bytes, WASM_MEMORY_BYTES);
        assert_eq!(device.memory_bytes, reported.min(WASM_MEMORY_BYTES));
        return;
    };
    assert_eq!(device.memory_bytes, reported);
    assert_eq!(device.max_buffer_bytes, gpu.max_buffer_bytes());
    assert!(device.max_buffer_bytes >= 128 << 20, "WebGPU guarantees 128 MiB bindings: {device:?}");
    let mut gpu = gpu;
    for json in MODELS {
        let model = Model::from_json(json, &Limits::default()).unwrap();
        let (x, _, y) = data(&model, 6);
        let params = init_params(&model, 2);
        let need = model.device_need(3, 6);
        gpu.reset_allocation_counts();
        let mut trainer = GpuTrainer::new(gpu, model, 3).unwrap();
        trainer.load_params(&params).unwrap();
        trainer.load_shard(&x, &y).unwrap();
        trainer.train(&[2, 4, 1], 3, 2, 0.1, DropoutSeed { seed: 5, first_step: 9 }).await.unwrap();
        let allocated = trainer.gpu().allocated_bytes();
        assert!(allocated <= need.total_bytes, "{json}: allocated {allocated} bytes, {need:?}");
        assert_eq!(trainer.gpu().largest_allocation(), need.largest_buffer_bytes, "{json}");
        gpu = trainer.into_gpu();
    }
}
