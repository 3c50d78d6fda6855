//! Import of a Keras `model.to_json()` config of a `Sequential` model into a [`ModelSpec`].
//!
//! Both the Keras 2 (`tf.keras`) and the Keras 3 layouts are read. Supported layers: `InputLayer` (or an
//! `input_shape`/`batch_input_shape` on the first layer, or the model's `build_input_shape`), `Dense`,
//! `Conv2D`, `MaxPooling2D`, `AveragePooling2D`, `Flatten`, `Dropout` and `Activation`, channels-last.
//! Any other layer, and any option that changes what a layer computes (dilation, groups, regularisers,
//! constraints, `use_bias: false`, channels-first, ...), is an error that names it. Initialisers are
//! ignored: DAIG initialises parameters itself (see [`crate::params::init_params`]).
//!
//! `to_json()` does not contain the loss (it belongs to `compile`), so the caller passes it.

use serde_json::{Map, Value};

use super::spec::{Activation, Layer, Loss, ModelSpec, Padding, Size2};
use super::{SpecError, SpecErrors};

/// Reads a Keras `Sequential` model's JSON config.
///
/// # Errors
/// Every unsupported layer or option, each naming the layer's index (counting the model's layers as DAIG
/// does, without the `InputLayer`) and class.
pub fn from_keras_json(json: &str, loss: Loss) -> Result<ModelSpec, SpecErrors> {
    let root: Value = serde_json::from_str(json)
        .map_err(|e| one(SpecError::model("", format!("the Keras model is not valid JSON: {e}"))))?;
    let class = root.get("class_name").and_then(Value::as_str).unwrap_or("");
    if class != "Sequential" {
        return Err(one(SpecError::model(
            "class_name",
            format!("only Keras Sequential models can be imported, not `{class}`"),
        )));
    }
    let config = root.get("config").cloned().unwrap_or(Value::Null);
    let Some(keras_layers) = config.get("layers").and_then(Value::as_array) else {
        return Err(one(SpecError::model("layers", "the Keras config has no `layers` list")));
    };

    let mut errors = Vec::new();
    let mut input_shape = config.get("build_input_shape").and_then(batch_shape);
    let mut layers = Vec::new();
    for (k, item) in keras_layers.iter().enumerate() {
        let class = item.get("class_name").and_then(Value::as_str).unwrap_or("?").to_owned();
        let empty = Map::new();
        let cfg = item.get("config").and_then(Value::as_object).unwrap_or(&empty);
        let index = layers.len();
        let mut reader = Options { cfg, index, class: &class, errors: &mut errors, used: Vec::new() };
        if class == "InputLayer" {
            if k != 0 {
                reader.fail(None, "an InputLayer is only supported as the first layer".into());
            }
            for key in ["batch_input_shape", "batch_shape"] {
                if let Some(shape) = reader.take(key).as_ref().and_then(batch_shape) {
                    input_shape = Some(shape);
                }
            }
            if let Some(s) = reader.take("input_shape").and_then(|v| dims(&v)) {
                input_shape = Some(s);
            }
            reader.expect_absent_or("sparse", &[Value::Bool(false)]);
            reader.expect_absent_or("ragged", &[Value::Bool(false)]);
            reader.take("optional");
            reader.finish();
            continue;
        }
        // Any layer may carry the model's input shape (`Dense(..., input_shape=(784,))`).
        if let Some(shape) = reader.take("batch_input_shape").as_ref().and_then(batch_shape) {
            input_shape.get_or_insert(shape);
        }
        if let Some(shape) = reader.take("input_shape").and_then(|v| dims(&v)) {
            input_shape.get_or_insert(shape);
        }
        if let Some(layer) = reader.layer() {
            layers.push(layer);
        } else {
            // Keep DAIG's layer numbering in step with the Keras layers even past an error.
            layers.push(Layer::Flatten);
        }
    }
    let Some(input_shape) = input_shape else {
        errors.push(SpecError::model(
            "input_shape",
            "the Keras model does not say its input shape: give it an InputLayer or an input_shape",
        ));
        return Err(SpecErrors(errors));
    };
    if errors.is_empty() { Ok(ModelSpec { input_shape, layers, loss }) } else { Err(SpecErrors(errors)) }
}

fn one(e: SpecError) -> SpecErrors {
    SpecErrors(vec![e])
}

/// `[null, 28, 28, 1]` to `[28, 28, 1]`.
fn batch_shape(v: &Value) -> Option<Vec<usize>> {
    let items = v.as_array()?;
    dims(&Value::Array(items.get(1..)?.to_vec()))
}

fn dims(v: &Value) -> Option<Vec<usize>> {
    v.as_array()?.iter().map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok())).collect()
}

/// Reads the options of one Keras layer, recording which were understood, so that the rest can be named
/// as unsupported.
struct Options<'a> {
    cfg: &'a Map<String, Value>,
    index: usize,
    class: &'a str,
    errors: &'a mut Vec<SpecError>,
    used: Vec<&'static str>,
}

/// Options that never change what a layer computes.
const IGNORED: &[&str] = &["name", "dtype", "kernel_initializer", "bias_initializer", "seed", "build_config"];

impl Options<'_> {
    fn fail(&mut self, field: Option<&str>, message: String) {
        self.errors.push(SpecError::layer(self.index, self.class, field, message));
    }

    fn take(&mut self, key: &'static str) -> Option<Value> {
        self.used.push(key);
        self.cfg.get(key).cloned().filter(|v| !v.is_null())
    }

    fn usize(&mut self, key: &'static str) -> Option<usize> {
        let v = self.take(key);
        match v.as_ref().and_then(Value::as_u64).and_then(|n| usize::try_from(n).ok()) {
            Some(n) => Some(n),
            None => {
                let shown = v.map_or_else(|| "missing".to_owned(), |v| v.to_string());
                self.fail(Some(key), format!("`{key}` must be a positive integer, found {shown}"));
                None
            }
        }
    }

    fn size2(&mut self, key: &'static str) -> Option<Option<Size2>> {
        match self.take(key) {
            None => Some(None),
            Some(v) => match serde_json::from_value::<Size2>(v.clone()) {
                Ok(s) => Some(Some(s)),
                Err(_) => {
                    self.fail(Some(key), format!("`{key}` must be an integer or a pair, found {v}"));
                    None
                }
            },
        }
    }

    /// An option that DAIG supports only at the given values (or absent or null).
    fn expect_absent_or(&mut self, key: &'static str, allowed: &[Value]) {
        if let Some(v) = self.take(key)
            && !allowed.contains(&v)
        {
            self.fail(Some(key), format!("option `{key}` = {v} is not supported"));
        }
    }

    fn activation(&mut self) -> Option<Activation> {
        let v = self.take("activation").unwrap_or(Value::String("linear".into()));
        // Keras 3 may write an activation as a serialised object; only the plain name is supported.
        let name = v.as_str().unwrap_or("");
        match serde_json::from_value::<Activation>(Value::String(name.to_owned())) {
            Ok(a) => Some(a),
            Err(_) => {
                self.fail(
                    Some("activation"),
                    format!("activation {v} is not supported (use relu, sigmoid, tanh, softmax or linear)"),
                );
                None
            }
        }
    }

    fn common(&mut self) {
        self.expect_absent_or("trainable", &[Value::Bool(true)]);
        self.expect_absent_or("data_format", &["channels_last".into()]);
    }

    fn weighted(&mut self) {
        self.common();
        self.expect_absent_or("use_bias", &[Value::Bool(true)]);
        for key in
            ["kernel_regularizer", "bias_regularizer", "activity_regularizer", "kernel_constraint", "bias_constraint"]
        {
            self.expect_absent_or(key, &[]);
        }
        self.expect_absent_or("lora_rank", &[]);
        self.expect_absent_or("lora_alpha", &[]);
        self.expect_absent_or("quantization_config", &[]);
    }

    fn pooling(&mut self) -> Option<(Size2, Option<Size2>)> {
        self.common();
        self.expect_absent_or("padding", &["valid".into()]);
        let pool = self.size2("pool_size")?.unwrap_or(Size2::new(2, 2));
        let strides = self.size2("strides")?;
        Some((pool, strides))
    }

    fn layer(mut self) -> Option<Layer> {
        let layer = match self.class {
            "Dense" => {
                self.weighted();
                let units = self.usize("units");
                let activation = self.activation();
                Layer::Dense { units: units?, activation: activation? }
            }
            "Conv2D" => {
                self.weighted();
                self.expect_absent_or("dilation_rate", &[1.into(), serde_json::json!([1, 1])]);
                self.expect_absent_or("groups", &[1.into()]);
                let filters = self.usize("filters");
                let kernel_size = self.size2("kernel_size").and_then(|k| {
                    k.or_else(|| {
                        self.fail(Some("kernel_size"), "`kernel_size` is missing".into());
                        None
                    })
                });
                let strides = self.size2("strides");
                let padding = match self.take("padding").as_ref().and_then(Value::as_str).unwrap_or("valid") {
                    "valid" => Some(Padding::Valid),
                    "same" => Some(Padding::Same),
                    other => {
                        self.fail(Some("padding"), format!("padding `{other}` is not supported (use valid or same)"));
                        None
                    }
                };
                let activation = self.activation();
                Layer::Conv2d {
                    filters: filters?,
                    kernel_size: kernel_size?,
                    strides: strides?.unwrap_or(Size2::one()),
                    padding: padding?,
                    activation: activation?,
                }
            }
            "MaxPooling2D" => {
                let (pool_size, strides) = self.pooling()?;
                Layer::MaxPool2d { pool_size, strides }
            }
            "AveragePooling2D" => {
                let (pool_size, strides) = self.pooling()?;
                Layer::AvgPool2d { pool_size, strides }
            }
            "Flatten" => {
                self.common();
                Layer::Flatten
            }
            "Dropout" => {
                self.common();
                self.expect_absent_or("noise_shape", &[]);
                let rate = self.take("rate").and_then(|v| v.as_f64());
                let Some(rate) = rate else {
                    self.fail(Some("rate"), "`rate` must be a number".into());
                    return None;
                };
                Layer::Dropout { rate: rate as f32 }
            }
            "Activation" => {
                self.common();
                Layer::Activation { activation: self.activation()? }
            }
            other => {
                let other = other.to_owned();
                self.fail(
                    None,
                    format!(
                        "Keras layer `{other}` is not supported (supported: InputLayer, Dense, Conv2D, \
                         MaxPooling2D, AveragePooling2D, Flatten, Dropout, Activation)"
                    ),
                );
                return None;
            }
        };
        let ok = self.finish();
        ok.then_some(layer)
    }

    /// Reports every option that was not read; returns whether the layer had no error.
    fn finish(&mut self) -> bool {
        let before = self.errors.len();
        let mut unknown: Vec<&String> =
            self.cfg.keys().filter(|k| !self.used.contains(&k.as_str()) && !IGNORED.contains(&k.as_str())).collect();
        unknown.sort();
        for key in unknown {
            let v = &self.cfg[key];
            self.errors.push(SpecError::layer(
                self.index,
                self.class,
                Some(key),
                format!("option `{key}` = {v} is not supported"),
            ));
        }
        self.errors.len() == before && !self.errors.iter().any(|e| e.layer == Some(self.index))
    }
}
