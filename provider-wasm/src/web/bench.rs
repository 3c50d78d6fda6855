//! The engine's training speed in a browser, for the benchmark beside TensorFlow.js (`bench/browser/`): the same
//! calls a provider makes for a lease, timed in the page.

use daig_shared::model::{Limits, Model};
use daig_shared::params::init_params;
use wasm_bindgen::prelude::*;

use crate::engine::{AdapterPolicy, Backend, Engine};
use crate::gpu::Gpu;
use crate::gpu::trainer::DropoutSeed;

/// Trains `model_json` on `features` `[n, inputs]` and class `labels` `[n]` for `rounds` calls of `steps` SGD steps
/// at `batch` samples each (a lease of `steps * batch` samples per call, one delta read back per call), after one
/// call of warm-up, on WebGPU (`gpu`, software adapters included) or the CPU. Returns
/// `[samples per second, backend description]`.
///
/// # Errors
/// A model, data or adapter that cannot train, as a message.
#[wasm_bindgen]
pub async fn benchmark_engine(
    model_json: String,
    features: Vec<f32>,
    labels: Vec<f32>,
    batch: usize,
    steps: usize,
    rounds: usize,
    gpu: bool,
) -> Result<js_sys::Array, JsValue> {
    let err = |e: &dyn std::fmt::Display| JsValue::from_str(&e.to_string());
    let model = Model::from_json(&model_json, &Limits::default()).map_err(|e| err(&e))?;
    let mut engine = if gpu {
        let opened = Gpu::new().await;
        let engine = Engine::from_gpu(opened, model.clone(), batch, AdapterPolicy::Any).await;
        if let Backend::Cpu { reason } = engine.backend() {
            return Err(JsValue::from_str(&format!("no WebGPU engine: {reason}")));
        }
        engine
    } else {
        Engine::cpu(model.clone(), "benchmark".into())
    };
    engine.load_params(&init_params(&model, 1)).map_err(|e| err(&e))?;
    engine.load_shard(&features, &labels).map_err(|e| err(&e))?;
    let n = labels.len();
    let per_call = (steps * batch).min(n);
    let mut start = 0usize;
    let call = |offset: usize| -> Vec<u32> { (0..per_call).map(|i| ((offset + i) % n) as u32).collect() };
    let indices = call(start);
    engine.train(&indices, batch, steps, 0.01, DropoutSeed { seed: 1, first_step: 0 }).await.map_err(|e| err(&e))?;
    let began = js_sys::Date::now();
    let mut samples = 0usize;
    for round in 0..rounds {
        start += per_call;
        let indices = call(start);
        let dropout = DropoutSeed { seed: 1, first_step: (round * steps) as u64 };
        samples += engine.train(&indices, batch, steps, 0.01, dropout).await.map_err(|e| err(&e))?.samples;
    }
    let seconds = (js_sys::Date::now() - began) / 1000.0;
    let backend = match engine.backend() {
        Backend::Gpu(a) => format!("WebGPU: {}", super::trainer::describe(a)),
        Backend::Cpu { .. } => "CPU reference trainer".to_owned(),
    };
    let out = js_sys::Array::new();
    out.push(&JsValue::from_f64(samples as f64 / seconds));
    out.push(&JsValue::from_str(&backend));
    Ok(out)
}
