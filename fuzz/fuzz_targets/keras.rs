//! Keras `model.to_json()` configs: import, with the loss picked by the first input byte, then validation.
//!
//! An imported spec must validate or say why; a valid one must survive DAIG JSON unchanged.

#![no_main]

use daig_shared::model::keras::from_keras_json;
use daig_shared::model::{Limits, Loss, Model};
use libfuzzer_sys::fuzz_target;

#[path = "model_common.rs"]
mod model_common;

fuzz_target!(|input: &[u8]| {
    let Some((&choice, data)) = input.split_first() else { return };
    let loss = [Loss::CrossEntropy, Loss::MeanSquaredError, Loss::BinaryCrossEntropy][usize::from(choice % 3)];
    let Ok(json) = std::str::from_utf8(data) else { return };
    match from_keras_json(json, loss) {
        Ok(spec) => {
            assert_eq!(spec.loss, loss);
            let limits = Limits::default();
            match Model::new(spec, &limits) {
                Ok(model) => model_common::check_model(&model, &limits),
                Err(errors) => assert!(!errors.0.is_empty(), "a refused spec with no error"),
            }
        }
        Err(errors) => assert!(!errors.0.is_empty(), "a refused Keras config with no error"),
    }
});
