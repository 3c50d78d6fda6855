//! Checks shared by the model targets: what a validated model promises.

use daig_shared::model::{Limits, Model, ModelSpec};

/// A validated model has a layer per spec layer, each taking the previous one's output, costs within
/// `limits`, a parameter layout without gaps or overlaps, and a spec that writes as DAIG JSON and reads back
/// to the same model.
pub fn check_model(model: &Model, limits: &Limits) {
    assert_eq!(model.layers.len(), model.spec.layers.len());
    assert!(!model.layers.is_empty() && model.layers.len() <= limits.max_layers);
    let mut input = model.input_shape();
    for (i, layer) in model.layers.iter().enumerate() {
        assert_eq!(layer.index, i);
        assert_eq!(layer.input, input, "layer {i} does not take the previous layer's output");
        let elements = layer.output.elements().expect("a validated output has a size");
        assert!(elements >= 1 && elements <= limits.max_activation_elements, "layer {i} outputs {elements}");
        input = layer.output.clone();
    }
    assert!(model.param_count() <= limits.max_params);
    assert!(model.flops_forward <= limits.max_flops_per_sample);
    let mut offset = 0;
    for tensor in &model.params.tensors {
        assert_eq!(tensor.offset, offset, "parameter tensor {} is not where the last one ended", tensor.name);
        assert_eq!(Some(tensor.len), tensor.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)));
        offset += tensor.len;
    }
    assert_eq!(offset, model.params.total);
    let _ = model.data_requirements();

    let json = serde_json::to_string(&model.spec).expect("a spec serialises");
    let spec = ModelSpec::from_json(&json).unwrap_or_else(|e| panic!("{json} does not read back: {e}"));
    assert_eq!(spec, model.spec, "{json} reads back as another spec");
    let again = Model::new(spec, limits).unwrap_or_else(|e| panic!("{json} does not validate again: {e}"));
    assert_eq!(&again, model);
}
