//! Model spec parsing and validation, Keras import, parameter layout, initialisation and safetensors.

use std::collections::BTreeMap;

use daig_shared::model::keras::from_keras_json;
use daig_shared::model::{
    Activation, FieldKind, Layer, LayerKind, Limits, Loss, Model, ModelSpec, Padding, Shape, Size2, resolve,
    resolve_value,
};
use daig_shared::params::{self, SafetensorsError, TensorRole};
use expect_test::expect;

const MLP: &str = r#"{
  "input_shape": [784],
  "layers": [
    {"type": "dense", "units": 128, "activation": "relu"},
    {"type": "dense", "units": 10}
  ],
  "loss": "cross_entropy"
}"#;

fn model(json: &str) -> Model {
    Model::from_json(json, &Limits::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn errors(json: &str) -> String {
    match Model::from_json(json, &Limits::default()) {
        Ok(_) => panic!("expected errors for {json}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn mnist_mlp_shapes_params_and_flops() {
    let m = model(MLP);
    assert_eq!(m.param_count(), 784 * 128 + 128 + 128 * 10 + 10);
    assert_eq!(m.output_shape().0, vec![10]);
    assert_eq!(m.flops_forward, 2 * 784 * 128 + 128 + 2 * 128 * 10);
    assert_eq!(m.flops_train(), 3 * m.flops_forward);
    assert!(!m.output_activation_fused);
    let names: Vec<_> = m.params.tensors.iter().map(|t| (t.name.as_str(), t.offset, t.shape.clone())).collect();
    assert_eq!(
        names,
        vec![
            ("0.dense.kernel", 0, vec![784, 128]),
            ("0.dense.bias", 100_352, vec![128]),
            ("1.dense.kernel", 100_480, vec![128, 10]),
            ("1.dense.bias", 101_760, vec![10]),
        ]
    );
}

#[test]
fn conv_shapes_follow_keras_for_valid_and_same_padding() {
    let m = model(
        r#"{"input_shape": [28, 28, 1], "layers": [
            {"type": "conv2d", "filters": 8, "kernel_size": 3, "strides": 2, "padding": "same", "activation": "relu"},
            {"type": "conv2d", "filters": 4, "kernel_size": [3, 5]},
            {"type": "max_pool2d", "pool_size": 2},
            {"type": "avg_pool2d", "pool_size": 3, "strides": 1},
            {"type": "flatten"},
            {"type": "dropout", "rate": 0.25},
            {"type": "dense", "units": 10, "activation": "softmax"}
        ], "loss": "cross_entropy"}"#,
    );
    let shapes: Vec<String> = m.layers.iter().map(|l| l.output.to_string()).collect();
    assert_eq!(shapes, ["14x14x8", "12x10x4", "6x5x4", "4x3x4", "48", "48", "10"]);
    let w = m.layers[0].window.unwrap();
    // TensorFlow puts the odd padding row at the bottom: 28 in, stride 2, kernel 3 -> 1 row in all, 0 on top.
    assert_eq!((w.pad_top, w.pad_left, w.out_h), (0, 0, 14));
    let w = m.layers[3].window.unwrap();
    assert_eq!((w.kernel, w.strides), (Size2::new(3, 3), Size2::new(1, 1)));
    assert_eq!(m.param_count(), (9 * 8 + 8) + (15 * 8 * 4 + 4) + (48 * 10 + 10));
    assert_eq!(m.layers[0].flops, 2 * 9 * 14 * 14 * 8 + 14 * 14 * 8);
    assert!(m.output_activation_fused);
    assert_eq!(m.params.tensors[2].shape, vec![3, 5, 8, 4]);
}

#[test]
fn same_padding_with_even_kernel_splits_like_tensorflow() {
    let m = model(
        r#"{"input_shape": [5, 5, 2], "layers": [
            {"type": "conv2d", "filters": 1, "kernel_size": 4, "padding": "same"}, {"type": "flatten"}
        ], "loss": "mean_squared_error"}"#,
    );
    let w = m.layers[0].window.unwrap();
    // Output 5, padding 3 in all: 1 before, 2 after.
    assert_eq!((w.out_h, w.out_w, w.pad_top, w.pad_left), (5, 5, 1, 1));
}

#[test]
fn validation_reports_every_problem_with_layer_and_field() {
    let got = errors(
        r#"{"input_shape": [12, 12, 3], "layers": [
            {"type": "conv2d", "filters": 0, "kernel_size": 3},
            {"type": "dropout", "rate": 1.5},
            {"type": "max_pool2d", "pool_size": 2, "strides": 0},
            {"type": "dense", "units": 0},
            {"type": "activation", "activation": "relu"}
        ], "loss": "cross_entropy"}"#,
    );
    expect![[r#"
        layer 0 (conv2d): filters must be at least 1
        layer 1 (dropout): rate 1.5 must be at least 0 and below 1
        layer 2 (max_pool2d): strides 0 must be at least 1
        layer 3 (dense): units must be at least 1"#]]
    .assert_eq(&got);

    let got = errors(
        r#"{"input_shape": [5, 5, 1], "layers": [
            {"type": "dense", "units": 3},
            {"type": "flatten"},
            {"type": "conv2d", "filters": 2, "kernel_size": 7}
        ], "loss": "cross_entropy"}"#,
    );
    expect![[r#"layer 0 (dense): its input has shape 5x5x1; dense needs a 1-D input: add a flatten layer before it"#]]
        .assert_eq(&got);

    let got = errors(
        r#"{"input_shape": [5, 5, 1], "layers": [
            {"type": "conv2d", "filters": 2, "kernel_size": 3},
            {"type": "avg_pool2d", "pool_size": 2, "strides": 1},
            {"type": "conv2d", "filters": 2, "kernel_size": 7},
            {"type": "dense", "units": 0}
        ], "loss": "cross_entropy"}"#,
    );
    expect![[r#"
        layer 2 (conv2d): kernel_size 7 is larger than its 2x2 input
        layer 3 (dense): units must be at least 1"#]]
    .assert_eq(&got);
}

#[test]
fn the_issue_example_message() {
    let got = errors(
        r#"{"input_shape": [7, 7, 1], "layers": [
            {"type": "conv2d", "filters": 4, "kernel_size": 3},
            {"type": "activation", "activation": "relu"},
            {"type": "dropout", "rate": 0.2},
            {"type": "conv2d", "filters": 4, "kernel_size": 7}
        ], "loss": "mean_squared_error"}"#,
    );
    expect![[r#"layer 3 (conv2d): kernel_size 7 is larger than its 5x5 input"#]].assert_eq(&got);
}

#[test]
fn parse_errors_name_each_bad_layer_and_field() {
    let got = errors(
        r#"{"input_shape": [4, 0], "layers": [
            {"type": "dense", "unit": 3},
            {"type": "lstm", "units": 3},
            {"type": "conv2d", "filters": -2, "kernel_size": 3},
            {"type": "dense", "units": 2, "activation": "gelu"}
        ], "loss": "hinge", "optimizer": "sgd"}"#,
    );
    expect![[r#"
        unknown field `optimizer` (expected input_shape, layers, loss)
        loss "hinge" is not supported (expected cross_entropy, mean_squared_error or binary_cross_entropy)
        layer 0 (dense): unknown field `unit`, expected `units` or `activation`
        layer 1 (lstm): unknown variant `lstm`, expected one of `dense`, `conv2d`, `max_pool2d`, `avg_pool2d`, `flatten`, `dropout`, `activation`
        layer 2 (conv2d): invalid value: integer `-2`, expected usize
        layer 3 (dense): unknown variant `gelu`, expected one of `linear`, `relu`, `sigmoid`, `tanh`, `softmax`"#]]
    .assert_eq(&got);
    expect![[r#"the model is not valid JSON: EOF while parsing an object at line 1 column 1"#]].assert_eq(&errors("{"));
    expect![[r#"
        input_shape is missing
        layers is missing"#]]
    .assert_eq(&errors(r#"{"loss": "mse"}"#));
}

#[test]
fn loss_and_output_must_agree() {
    expect![[r#"cross_entropy needs one score per class (a 1-D output of at least 2 units), but the model's output is 6x6x2"#]]
        .assert_eq(&errors(
            r#"{"input_shape": [8, 8, 1], "layers": [{"type": "conv2d", "filters": 2, "kernel_size": 3}], "loss": "cross_entropy"}"#,
        ));
    expect![[r#"cross_entropy works on logits: the last layer's activation must be softmax or linear, not relu"#]]
        .assert_eq(&errors(
            r#"{"input_shape": [4], "layers": [{"type": "dense", "units": 3, "activation": "relu"}], "loss": "cross_entropy"}"#,
        ));
    expect![[r#"binary_cross_entropy works on logits: the last layer's activation must be sigmoid or linear, not softmax"#]]
        .assert_eq(&errors(
            r#"{"input_shape": [4], "layers": [{"type": "dense", "units": 3, "activation": "softmax"}], "loss": "binary_cross_entropy"}"#,
        ));
    let bce = model(
        r#"{"input_shape": [4], "layers": [{"type": "dense", "units": 1, "activation": "sigmoid"}], "loss": "binary_crossentropy"}"#,
    );
    assert!(bce.output_activation_fused);
    assert!(Loss::BinaryCrossEntropy.has_accuracy() && !Loss::MeanSquaredError.has_accuracy());
    expect![[r#"layer 0 (conv2d): softmax needs a 1-D output, not 2x2x1: use it after flatten and dense"#]].assert_eq(&errors(
        r#"{"input_shape": [4, 4, 1], "layers": [{"type": "conv2d", "filters": 1, "kernel_size": 3, "activation": "softmax"}], "loss": "mse"}"#,
    ));
}

#[test]
fn absurd_sizes_are_refused_against_limits() {
    let huge = r#"{"input_shape": [100000, 100000, 3], "layers": [{"type": "flatten"}], "loss": "mse"}"#;
    expect![[r#"input_shape 100000x100000x3 has more than the limit of 4194304 elements"#]].assert_eq(&errors(huge));
    let wide = r#"{"input_shape": [4096], "layers": [
        {"type": "dense", "units": 1000000000}, {"type": "dense", "units": 4}], "loss": "mse"}"#;
    expect![[r#"
        layer 0 (dense): its output 1000000000 has more than the limit of 8388608 elements per sample
        the model has 4097000000000 parameters, more than the limit of 67108864
        the model needs 8192000000000 FLOPs per sample, more than the limit of 50000000000"#]]
    .assert_eq(&errors(wide));
    let overflow = format!(
        r#"{{"input_shape": [{m}, {m}, {m}], "layers": [{{"type": "flatten"}}], "loss": "mse"}}"#,
        m = usize::MAX
    );
    assert!(errors(&overflow).contains("more than the limit"));
    let tight = Limits { max_params: 1000, max_layers: 1, ..Limits::default() };
    let e = Model::from_json(MLP, &tight).unwrap_err().to_string();
    expect![[r#"the model has 2 layers, more than the limit of 1"#]].assert_eq(&e);
}

#[test]
fn validation_never_panics_on_mutated_specs() {
    // A small deterministic mutator over valid specs: every mutated text must give Ok or Err, never panic.
    let seeds = [
        MLP.to_owned(),
        std::fs::read_to_string(manifest_dir().join("tests/fixtures/keras/mnist_convnet_tf_keras2.json")).unwrap(),
    ];
    let numbers = ["0", "1", "-1", "1e308", "18446744073709551615", "3.5", "null", "[]", "\"x\"", "[0,0]"];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..3000 {
        let seed = &seeds[(next() % 2) as usize];
        let mut text = seed.clone().into_bytes();
        for _ in 0..1 + next() % 3 {
            if text.is_empty() {
                break;
            }
            let at = (next() as usize) % text.len();
            match next() % 3 {
                0 => {
                    // Replace a digit run with another literal.
                    if text[at].is_ascii_digit() {
                        let end = (at..text.len()).find(|&i| !text[i].is_ascii_digit()).unwrap_or(text.len());
                        let lit = numbers[(next() as usize) % numbers.len()];
                        text.splice(at..end, lit.bytes());
                    }
                }
                1 => text.truncate(at),
                _ => {
                    text.remove(at);
                }
            }
        }
        let text = String::from_utf8_lossy(&text);
        let validated = Model::from_json(&text, &Limits::default());
        // The editor's layer-by-layer resolution agrees with the server's validation.
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) {
            let resolution = resolve_value(value, &Limits::default());
            assert_eq!(resolution.is_valid(), validated.is_ok(), "{text}");
            if let Err(e) = &validated
                && ModelSpec::from_json(&text).is_ok()
            {
                assert_eq!(resolution.errors, e.0, "{text}");
            }
        }
        let _ = from_keras_json(&text, Loss::CrossEntropy).map(|s| Model::new(s, &Limits::default()));
    }
}

#[test]
fn spec_json_round_trips() {
    let m = model(
        r#"{"input_shape": [8, 8, 2], "layers": [
            {"type": "conv2d", "filters": 3, "kernel_size": [2, 3], "strides": [1, 2], "padding": "same"},
            {"type": "avg_pool2d", "pool_size": 2},
            {"type": "flatten"}, {"type": "activation", "activation": "tanh"}], "loss": "mse"}"#,
    );
    let again = ModelSpec::from_json(&m.spec.to_json()).unwrap();
    assert_eq!(again, m.spec);
}

fn keras_fixture(name: &str) -> String {
    std::fs::read_to_string(manifest_dir().join("tests/fixtures/keras").join(name)).unwrap()
}

#[test]
fn keras_mnist_convnet_imports_from_tf_keras_2_and_keras_3() {
    let expected = ModelSpec {
        input_shape: vec![28, 28, 1],
        layers: vec![
            Layer::Conv2d {
                filters: 32,
                kernel_size: Size2::new(3, 3),
                strides: Size2::one(),
                padding: Padding::Valid,
                activation: Activation::Relu,
            },
            Layer::MaxPool2d { pool_size: Size2::new(2, 2), strides: Some(Size2::new(2, 2)) },
            Layer::Conv2d {
                filters: 64,
                kernel_size: Size2::new(3, 3),
                strides: Size2::one(),
                padding: Padding::Valid,
                activation: Activation::Relu,
            },
            Layer::MaxPool2d { pool_size: Size2::new(2, 2), strides: Some(Size2::new(2, 2)) },
            Layer::Flatten,
            Layer::Dropout { rate: 0.5 },
            Layer::Dense { units: 10, activation: Activation::Softmax },
        ],
        loss: Loss::CrossEntropy,
    };
    for file in ["mnist_convnet_tf_keras2.json", "mnist_convnet_keras3.json"] {
        let spec = from_keras_json(&keras_fixture(file), Loss::CrossEntropy).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(spec, expected, "{file}");
        let m = Model::new(spec, &Limits::default()).unwrap();
        // Keras's model.summary() for this network: 34,826 trainable parameters.
        assert_eq!(m.param_count(), 34_826);
        assert_eq!(m.output_shape().0, vec![10]);
    }
}

#[test]
fn keras_unsupported_layers_and_options_are_named() {
    let src = keras_fixture("mnist_convnet_tf_keras2.json")
        .replace(
            r#""dilation_rate": [1, 1], "groups": 1, "activation": "relu""#,
            r#""dilation_rate": [2, 2], "groups": 1, "activation": "relu""#,
        )
        .replace(r#""class_name": "Flatten""#, r#""class_name": "BatchNormalization""#)
        .replace(
            r#""units": 10, "activation": "softmax", "use_bias": true"#,
            r#""units": 10, "activation": "gelu", "use_bias": false"#,
        );
    let e = from_keras_json(&src, Loss::CrossEntropy).unwrap_err().to_string();
    expect![[r#"
        layer 0 (Conv2D): option `dilation_rate` = [2,2] is not supported
        layer 2 (Conv2D): option `dilation_rate` = [2,2] is not supported
        layer 4 (BatchNormalization): Keras layer `BatchNormalization` is not supported (supported: InputLayer, Dense, Conv2D, MaxPooling2D, AveragePooling2D, Flatten, Dropout, Activation)
        layer 6 (Dense): option `use_bias` = false is not supported
        layer 6 (Dense): activation "gelu" is not supported (use relu, sigmoid, tanh, softmax or linear)"#]]
    .assert_eq(&e);

    let e = from_keras_json(r#"{"class_name": "Functional", "config": {}}"#, Loss::CrossEntropy).unwrap_err();
    expect![[r#"only Keras Sequential models can be imported, not `Functional`"#]].assert_eq(&e.to_string());
    let no_input = r#"{"class_name": "Sequential", "config": {"layers": [{"class_name": "Dense", "config": {"units": 3, "kernel_regularizer": {"class_name": "L2"}}}]}}"#;
    expect![[r#"
        layer 0 (Dense): option `kernel_regularizer` = {"class_name":"L2"} is not supported
        the Keras model does not say its input shape: give it an InputLayer or an input_shape"#]]
    .assert_eq(&from_keras_json(no_input, Loss::MeanSquaredError).unwrap_err().to_string());
    let input_on_dense = r#"{"class_name": "Sequential", "config": {"layers": [
        {"class_name": "Dense", "config": {"units": 8, "activation": "relu", "batch_input_shape": [null, 4], "future_option": 1}}]}}"#;
    expect![[r#"layer 0 (Dense): option `future_option` = 1 is not supported"#]]
        .assert_eq(&from_keras_json(input_on_dense, Loss::MeanSquaredError).unwrap_err().to_string());
    let ok = input_on_dense.replace(r#", "future_option": 1"#, "");
    assert_eq!(from_keras_json(&ok, Loss::MeanSquaredError).unwrap().input_shape, vec![4]);
}

#[test]
fn init_is_seeded_glorot_or_he_with_zero_biases() {
    let m = model(
        r#"{"input_shape": [784], "layers": [
            {"type": "dense", "units": 128, "activation": "relu"},
            {"type": "dense", "units": 64}, {"type": "dropout", "rate": 0.1}, {"type": "activation", "activation": "relu"},
            {"type": "dense", "units": 10}], "loss": "cross_entropy"}"#,
    );
    let a = params::init_params(&m, 7);
    assert_eq!(a, params::init_params(&m, 7));
    assert_ne!(a, params::init_params(&m, 8));
    let max_abs = |name: &str| {
        let t = m.params.get(name).unwrap();
        a[t.range()].iter().fold(0.0f32, |acc, v| acc.max(v.abs()))
    };
    let he0 = (6.0f32 / 784.0).sqrt();
    let he1 = (6.0f32 / 128.0).sqrt();
    let glorot2 = (6.0f32 / (64.0 + 10.0)).sqrt();
    // Bounded by the limit, and close to it (128 x 784 draws).
    assert!(max_abs("0.dense.kernel") <= he0 && max_abs("0.dense.kernel") > 0.99 * he0);
    assert!(max_abs("1.dense.kernel") <= he1 && max_abs("1.dense.kernel") > 0.95 * he1);
    assert!(max_abs("4.dense.kernel") <= glorot2 && max_abs("4.dense.kernel") > 0.9 * glorot2);
    for t in m.params.tensors.iter().filter(|t| t.role == TensorRole::Bias) {
        assert!(a[t.range()].iter().all(|&v| v == 0.0), "{}", t.name);
    }
    // A tensor's values do not depend on the tensors before it.
    let other = model(
        r#"{"input_shape": [784], "layers": [
            {"type": "dense", "units": 128, "activation": "relu"},
            {"type": "dense", "units": 64}, {"type": "dropout", "rate": 0.1}, {"type": "activation", "activation": "relu"},
            {"type": "dense", "units": 10}], "loss": "cross_entropy"}"#,
    );
    assert_eq!(params::init_params(&other, 7)[..100], a[..100]);
}

fn safetensors_file(m: &Model, data: &[f32]) -> Vec<u8> {
    let mut meta = BTreeMap::new();
    meta.insert("daig.model".to_owned(), m.spec.to_json());
    params::to_safetensors(&m.params, data, meta).unwrap()
}

#[test]
fn safetensors_round_trip_and_header_layout() {
    let m = model(MLP);
    let data = params::init_params(&m, 3);
    let file = safetensors_file(&m, &data);
    assert_eq!(params::from_safetensors(&m.params, &file).unwrap(), data);
    assert_eq!(ModelSpec::from_json(&params::safetensors_metadata(&file).unwrap()["daig.model"]).unwrap(), m.spec);

    // The layout the format defines: u64 LE header length, JSON header, then the tensors' bytes.
    let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&file[8..8 + n]).unwrap();
    let t = &header["0.dense.bias"];
    assert_eq!(t["dtype"], "F32");
    assert_eq!(t["shape"], serde_json::json!([128]));
    let [start, end] =
        [t["data_offsets"][0].as_u64().unwrap() as usize, t["data_offsets"][1].as_u64().unwrap() as usize];
    assert_eq!(end - start, 128 * 4);
    let k = &header["0.dense.kernel"];
    let ks = k["data_offsets"][0].as_u64().unwrap() as usize;
    let first = f32::from_le_bytes(file[8 + n + ks..8 + n + ks + 4].try_into().unwrap());
    assert_eq!(first, data[0]);
    assert_eq!(file.len(), 8 + n + 4 * m.param_count());
}

#[test]
fn safetensors_import_checks_names_shapes_and_dtypes() {
    let m = model(MLP);
    let data = params::init_params(&m, 3);
    let file = safetensors_file(&m, &data);
    let other = model(&MLP.replace("128", "64"));
    assert!(matches!(params::from_safetensors(&other.params, &file), Err(SafetensorsError::Shape { .. })));
    let bigger = model(&MLP.replace(
        r#"{"type": "dense", "units": 10}"#,
        r#"{"type": "dense", "units": 10}, {"type": "dense", "units": 2}"#,
    ));
    expect![[r#"tensor `2.dense.kernel` is missing from the file"#]]
        .assert_eq(&params::from_safetensors(&bigger.params, &file).unwrap_err().to_string());
    let e = params::from_safetensors(&m.params, &file[..file.len() - 1]).unwrap_err();
    assert!(matches!(e, SafetensorsError::Format(_)), "{e}");
    assert!(params::from_safetensors(&m.params, b"\xff\xff\xff\xff\xff\xff\xff\x7f{}").is_err());
    assert!(matches!(
        params::to_safetensors(&m.params, &data[1..], BTreeMap::new()),
        Err(SafetensorsError::Length { .. })
    ));
}

/// A file written by DAIG loads in Python's `safetensors` with identical values. Runs wherever Python has
/// numpy and safetensors; under CI (`CI` set) their absence is a failure, since `.ci/run` installs them.
#[test]
fn safetensors_file_loads_in_python_with_identical_values() {
    let probe = std::process::Command::new("python3").args(["-c", "import numpy, safetensors"]).output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        assert!(std::env::var_os("CI").is_none(), "CI must have python3 with numpy and safetensors: {probe:?}");
        eprintln!("skipping: python3 with numpy and safetensors is not available");
        return;
    }
    let m = model(
        r#"{"input_shape": [6, 6, 2], "layers": [{"type": "conv2d", "filters": 3, "kernel_size": 3, "activation": "relu"},
            {"type": "flatten"}, {"type": "dense", "units": 4}], "loss": "cross_entropy"}"#,
    );
    let data = params::init_params(&m, 11);
    let dir = std::env::temp_dir().join(format!("daig-st-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    std::fs::write(&path, safetensors_file(&m, &data)).unwrap();
    let script = r#"
import sys, json
from safetensors.numpy import load_file
from safetensors import safe_open
tensors = load_file(sys.argv[1])
with safe_open(sys.argv[1], framework="numpy") as f:
    meta = f.metadata()
out = {k: {"dtype": str(v.dtype), "shape": list(v.shape), "hex": v.astype("<f4").tobytes().hex()} for k, v in tensors.items()}
print(json.dumps({"tensors": out, "has_model": "daig.model" in meta}))
"#;
    let out = std::process::Command::new("python3").args(["-c", script]).arg(&path).output().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["has_model"], true);
    assert_eq!(got["tensors"].as_object().unwrap().len(), m.params.tensors.len());
    for t in &m.params.tensors {
        let py = &got["tensors"][&t.name];
        assert_eq!(py["dtype"], "float32");
        assert_eq!(py["shape"], serde_json::json!(t.shape));
        let hex: String = data[t.range()].iter().flat_map(|v| v.to_le_bytes()).map(|b| format!("{b:02x}")).collect();
        assert_eq!(py["hex"].as_str().unwrap(), hex, "{}", t.name);
    }
}

#[test]
fn data_requirements_follow_the_model() {
    use daig_shared::data::{ArrayInfo, ByteOrder, DataRequirements, Dtype, LabelRequirement, check};
    let m = model(MLP);
    assert_eq!(
        m.data_requirements(),
        DataRequirements { sample_shape: vec![784], labels: LabelRequirement::Classes { count: 10 } }
    );
    // MNIST as shipped: (8000, 28, 28) u8 images and (8000,) u8 labels fit the flat MLP input.
    let images = ArrayInfo { dtype: Dtype::U8, shape: vec![8000, 28, 28], byte_order: ByteOrder::Little };
    let labels = ArrayInfo { dtype: Dtype::U8, shape: vec![8000], byte_order: ByteOrder::Little };
    check(&images, &labels, &m.data_requirements()).unwrap();
    let small = ArrayInfo { shape: vec![8000, 14, 14], ..images.clone() };
    assert!(check(&small, &labels, &m.data_requirements()).is_err());
    let bce =
        model(r#"{"input_shape": [4], "layers": [{"type": "dense", "units": 3}], "loss": "binary_cross_entropy"}"#);
    assert_eq!(bce.data_requirements().labels, LabelRequirement::Values { shape: vec![3] });
}

#[test]
fn sizes_that_overflow_are_errors_not_panics() {
    for json in [
        r#"{"input_shape": [8], "layers": [{"type": "dense", "units": 4611686018427387904}], "loss": "mean_squared_error"}"#,
        r#"{"input_shape": [8, 8, 3], "layers": [{"type": "conv2d", "filters": 4611686018427387904, "kernel_size": 3}], "loss": "mean_squared_error"}"#,
        r#"{"input_shape": [8, 8, 3], "layers": [{"type": "conv2d", "filters": 2, "kernel_size": 4611686018427387904, "padding": "same"}], "loss": "mean_squared_error"}"#,
        r#"{"input_shape": [8, 8, 3], "layers": [{"type": "avg_pool2d", "pool_size": [4611686018427387904, 1]}], "loss": "mean_squared_error"}"#,
    ] {
        let e = errors(json);
        assert!(e.starts_with("layer 0 ("), "{json}: {e}");
    }
}

#[test]
fn a_fused_softmax_must_be_the_last_layer() {
    let e = errors(
        r#"{"input_shape": [4], "layers": [{"type": "dense", "units": 3, "activation": "softmax"},
            {"type": "dropout", "rate": 0.5}], "loss": "cross_entropy"}"#,
    );
    expect![[r#"layer 0 (dense): cross_entropy computes this softmax itself: it must be the last layer, with nothing after it"#]]
        .assert_eq(&e);
    // With mean squared error the softmax is an ordinary layer.
    model(
        r#"{"input_shape": [4], "layers": [{"type": "dense", "units": 3, "activation": "softmax"},
            {"type": "dropout", "rate": 0.5}], "loss": "mean_squared_error"}"#,
    );
}

#[test]
fn the_vocabulary_lists_every_variant_by_its_json_name() {
    for kind in LayerKind::ALL {
        assert_eq!(LayerKind::from_name(kind.name()), Some(kind));
        // A layer of the kind with its required fields parses, and knows its kind.
        let mut layer = serde_json::json!({"type": kind.name()});
        for field in kind.fields().iter().filter(|f| f.required) {
            layer[field.name] = match field.kind {
                FieldKind::Count | FieldKind::Size2 => serde_json::json!(2),
                FieldKind::Rate => serde_json::json!(0.5),
                FieldKind::Activation | FieldKind::Padding => serde_json::json!(field.kind.choices().unwrap()[0]),
            };
        }
        let parsed: Layer = serde_json::from_value(layer).unwrap();
        assert_eq!(parsed.layer_kind(), kind);
        assert_eq!(parsed.kind(), kind.name());
        // Every field the vocabulary lists is one the layer reads (a wrong value in it is refused as such).
        for field in kind.fields() {
            let mut layer = serde_json::to_value(&parsed).unwrap();
            layer[field.name] = serde_json::json!("not a value");
            let message = serde_json::from_value::<Layer>(layer).map(drop).unwrap_err().to_string();
            assert!(!message.contains("unknown field"), "{kind}.{}: {message}", field.name);
        }
    }
    for a in Activation::ALL {
        assert_eq!(serde_json::to_value(a).unwrap(), a.name());
    }
    for p in Padding::ALL {
        assert_eq!(serde_json::to_value(p).unwrap(), p.name());
    }
    for l in Loss::ALL {
        assert_eq!(serde_json::to_value(l).unwrap(), l.name());
        assert_eq!(serde_json::from_value::<Loss>(l.name().into()).unwrap(), l);
    }
}

#[test]
fn resolution_gives_each_layer_its_shape_and_params_up_to_the_first_broken_one() {
    let value = serde_json::json!({"input_shape": [28, 28, 1], "loss": "cross_entropy", "layers": [
        {"type": "conv2d", "filters": 8, "kernel_size": 3, "activation": "relu"},
        {"type": "max_pool2d", "pool_size": 2},
        {"type": "dense", "units": "ten"},
        {"type": "dense", "units": 10}]});
    let r = resolve_value(value, &Limits::default());
    assert!(!r.is_valid());
    assert_eq!(r.layers.len(), 4);
    let conv = r.layers[0].as_ref().unwrap();
    assert_eq!((conv.output.clone(), conv.param_count), (Shape(vec![26, 26, 8]), 3 * 3 * 8 + 8));
    assert_eq!(r.layers[1].as_ref().unwrap().output, Shape(vec![13, 13, 8]));
    assert!(r.layers[2].is_none() && r.layers[3].is_none());
    assert_eq!(r.errors_at(2).count(), 1);
    assert_eq!(r.errors_at(3).count(), 0);
    assert_eq!(r.param_count(), 80);
    assert_eq!(r.output_shape(), None);

    // Shape errors land at their layer too, with the layers before it resolved.
    let value = serde_json::json!({"input_shape": [28, 28, 1], "loss": "cross_entropy", "layers": [
        {"type": "max_pool2d", "pool_size": 2}, {"type": "dense", "units": 10}]});
    let r = resolve_value(value, &Limits::default());
    assert!(r.layers[0].is_some() && r.layers[1].is_none());
    expect![[r#"its input has shape 14x14x1; dense needs a 1-D input: add a flatten layer before it"#]]
        .assert_eq(&r.errors_at(1).next().unwrap().message);

    // A valid model resolves completely, to what `Model::new` builds.
    let spec = ModelSpec::from_json(MLP).unwrap();
    let r = resolve(&spec, &Limits::default());
    assert!(r.is_valid());
    assert_eq!(r.output_shape(), Some(&Shape(vec![10])));
    assert_eq!(r.param_count(), 784 * 128 + 128 + 128 * 10 + 10);
    assert_eq!(r.into_model(spec.clone()).unwrap(), Model::new(spec, &Limits::default()).unwrap());
}

/// This crate's directory in the checkout the test runs in: read when it runs (cargo sets it for tests), not
/// compiled in, since with a shared target directory a test binary built in one clone may run in another.
fn manifest_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"))
}
