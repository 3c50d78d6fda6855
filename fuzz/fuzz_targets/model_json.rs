//! Model specs in DAIG JSON: parsing, then validation against the default limits and against tight ones.

#![no_main]

use daig_shared::model::{Limits, Model, ModelSpec};
use libfuzzer_sys::fuzz_target;

#[path = "model_common.rs"]
mod model_common;

fuzz_target!(|data: &[u8]| {
    let Ok(json) = std::str::from_utf8(data) else { return };
    let Ok(spec) = ModelSpec::from_json(json) else { return };
    // Tight limits reach the "over the limit" paths with small inputs.
    let tight = Limits {
        max_layers: 4,
        max_input_elements: 4096,
        max_activation_elements: 4096,
        max_params: 10_000,
        max_flops_per_sample: 100_000,
    };
    for limits in [Limits::default(), tight] {
        match Model::new(spec.clone(), &limits) {
            Ok(model) => model_common::check_model(&model, &limits),
            Err(errors) => assert!(!errors.0.is_empty(), "a refused spec with no error"),
        }
    }
});
