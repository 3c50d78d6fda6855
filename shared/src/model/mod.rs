//! The model a requestor describes, and its validation into a [`Model`].
//!
//! A [`ModelSpec`] is what a requestor writes (DAIG JSON, see [`spec`]) or imports from Keras (see
//! [`keras`]). [`Model::new`] checks it against [`Limits`] and computes, for every layer, its input and
//! output shapes, its parameters and its FLOPs per sample, and for the whole model the parameter layout
//! ([`ParamLayout`]) every trainer and the wire protocol share.
//!
//! Validation never panics and reports every problem it can find at once, each as a [`SpecError`] that
//! names the layer and the field: "layer 3 (conv2d): kernel_size 7 is larger than its 5x5 input".

mod device;
pub mod keras;
pub mod spec;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use self::device::DeviceNeed;
pub use self::spec::{Activation, FieldKind, Layer, LayerField, LayerKind, Loss, ModelSpec, Padding, Shape, Size2};
use crate::data::{DataRequirements, LabelRequirement};
use crate::params::ParamLayout;

/// Upper bounds that keep a model within what a server and a visitor's browser can handle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_layers: usize,
    /// Elements of one input sample.
    pub max_input_elements: usize,
    /// Elements of any one layer's output, per sample.
    pub max_activation_elements: usize,
    pub max_params: usize,
    /// Forward-pass FLOPs per sample.
    pub max_flops_per_sample: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_layers: 128,
            max_input_elements: 4 << 20,
            max_activation_elements: 8 << 20,
            max_params: 64 << 20,
            max_flops_per_sample: 50_000_000_000,
        }
    }
}

/// One problem with a model spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecError {
    /// The index of the layer the problem is in, if it is in one.
    pub layer: Option<usize>,
    /// The layer's type as written (`conv2d`, or Keras's `Conv2D`), when known.
    pub layer_type: Option<String>,
    /// The field the problem is in (`kernel_size`, `input_shape`, `loss`), when there is one.
    pub field: Option<String>,
    /// What is wrong, in words a person can act on.
    pub message: String,
}

impl SpecError {
    pub(crate) fn model(field: &str, message: impl Into<String>) -> SpecError {
        SpecError { layer: None, layer_type: None, field: Some(field.to_owned()), message: message.into() }
    }
    pub(crate) fn layer(index: usize, layer_type: &str, field: Option<&str>, message: impl Into<String>) -> SpecError {
        SpecError {
            layer: Some(index),
            layer_type: Some(layer_type.to_owned()),
            field: field.map(str::to_owned),
            message: message.into(),
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.layer, &self.layer_type) {
            (Some(i), Some(t)) => write!(f, "layer {i} ({t}): {}", self.message),
            (Some(i), None) => write!(f, "layer {i}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

/// Every problem found in a model spec, in the order of the layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

/// The sliding-window geometry of a conv2d or pooling layer, resolved from the spec and the input shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window2d {
    pub in_h: usize,
    pub in_w: usize,
    pub in_c: usize,
    pub out_h: usize,
    pub out_w: usize,
    /// Output channels: filters for conv2d, `in_c` for pooling.
    pub out_c: usize,
    pub kernel: Size2,
    pub strides: Size2,
    /// Zero rows above the input (`same` padding); the rest of the padding is below.
    pub pad_top: usize,
    /// Zero columns left of the input (`same` padding); the rest of the padding is on the right.
    pub pad_left: usize,
}

/// A validated layer with its resolved shapes and costs.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerInfo {
    pub index: usize,
    pub layer: Layer,
    pub input: Shape,
    pub output: Shape,
    /// For conv2d and pooling layers.
    pub window: Option<Window2d>,
    pub param_count: usize,
    /// Forward-pass FLOPs per sample (a multiply-add counts two).
    pub flops: u64,
}

/// A validated model: the spec, every layer's shapes, the parameter layout and the costs.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub spec: ModelSpec,
    pub layers: Vec<LayerInfo>,
    pub params: ParamLayout,
    /// Forward-pass FLOPs per sample.
    pub flops_forward: u64,
    /// Whether the last layer's activation (softmax or sigmoid) is computed by the loss, fused, so that
    /// trainers work on logits while training and apply it only to produce predictions.
    pub output_activation_fused: bool,
}

impl Model {
    /// Validates `spec` against `limits`.
    ///
    /// # Errors
    /// Every problem found, each naming its layer and field.
    pub fn new(spec: ModelSpec, limits: &Limits) -> Result<Model, SpecErrors> {
        resolve(&spec, limits).into_model(spec)
    }

    /// Parses DAIG JSON and validates it.
    ///
    /// # Errors
    /// Syntax errors, every layer that does not parse, and every problem [`Model::new`] finds.
    pub fn from_json(json: &str, limits: &Limits) -> Result<Model, SpecErrors> {
        Model::new(ModelSpec::from_json(json)?, limits)
    }

    pub fn input_shape(&self) -> Shape {
        Shape(self.spec.input_shape.clone())
    }

    pub fn output_shape(&self) -> &Shape {
        &self.layers.last().expect("a model has at least one layer").output
    }

    pub fn param_count(&self) -> usize {
        self.params.total
    }

    /// What a dataset must provide to train this model: samples of the input shape, and class labels
    /// for cross-entropy or float targets of the output's shape otherwise.
    pub fn data_requirements(&self) -> DataRequirements {
        let output = self.output_shape();
        let labels = match self.spec.loss {
            Loss::CrossEntropy => LabelRequirement::Classes { count: output.elements().unwrap_or(0) },
            Loss::MeanSquaredError | Loss::BinaryCrossEntropy => LabelRequirement::Values { shape: output.0.clone() },
        };
        DataRequirements { sample_shape: self.spec.input_shape.clone(), labels }
    }

    /// FLOPs per sample of one training step (forward and backward), about three forward passes.
    pub fn flops_train(&self) -> u64 {
        self.flops_forward.saturating_mul(3)
    }
}

impl ModelSpec {
    /// Parses DAIG JSON, reporting every layer that does not parse rather than only the first.
    ///
    /// # Errors
    /// A JSON syntax error, or every field and layer that does not parse.
    pub fn from_json(json: &str) -> Result<ModelSpec, SpecErrors> {
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| SpecErrors(vec![SpecError::model("", format!("the model is not valid JSON: {e}"))]))?;
        ModelSpec::from_value(value)
    }

    /// Like [`ModelSpec::from_json`], from a parsed JSON value.
    ///
    /// # Errors
    /// Every field and layer that does not parse.
    pub fn from_value(value: serde_json::Value) -> Result<ModelSpec, SpecErrors> {
        let parts = Parts::parse(value);
        match (parts.input_shape, parts.layers, parts.loss) {
            (Some(input_shape), Some(layers), Some(loss)) if parts.errors.is_empty() => {
                Ok(ModelSpec { input_shape, layers: layers.into_iter().flatten().collect(), loss })
            }
            _ => Err(SpecErrors(parts.errors)),
        }
    }

    /// The spec as pretty DAIG JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a model spec always serialises")
    }
}

/// What validation finds in a model, layer by layer, valid or not: the shapes and costs of every layer it could
/// compute and every problem, each at its layer. An editor shows it as the user types; [`Model::new`] (which the
/// server validates with) is [`resolve`] followed by [`Resolution::into_model`].
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    /// One entry per layer of the spec (or of the JSON's `layers` list): its shapes and costs, or `None` where
    /// they cannot be computed (the layer, or one before it, has a problem).
    pub layers: Vec<Option<LayerInfo>>,
    /// Every problem, in the order of the layers; model-wide problems have no `layer`.
    pub errors: Vec<SpecError>,
    /// Whether shape inference reached the end of the model.
    complete: bool,
}

impl Resolution {
    /// Whether the model is valid.
    pub fn is_valid(&self) -> bool {
        self.errors.is_empty() && self.complete
    }

    /// The problems of layer `index`.
    pub fn errors_at(&self, index: usize) -> impl Iterator<Item = &SpecError> {
        self.errors.iter().filter(move |e| e.layer == Some(index))
    }

    /// The problems outside any layer (`input_shape`, `loss`, `layers`, limits).
    pub fn model_errors(&self) -> impl Iterator<Item = &SpecError> {
        self.errors.iter().filter(|e| e.layer.is_none())
    }

    /// The parameters of the layers computed so far.
    pub fn param_count(&self) -> usize {
        self.layers.iter().flatten().map(|l| l.param_count).fold(0, usize::saturating_add)
    }

    /// The forward-pass FLOPs per sample of the layers computed so far.
    pub fn flops(&self) -> u64 {
        self.layers.iter().flatten().map(|l| l.flops).fold(0, u64::saturating_add)
    }

    /// The model's output shape, when every layer was computed.
    pub fn output_shape(&self) -> Option<&Shape> {
        if !self.complete {
            return None;
        }
        self.layers.last().and_then(Option::as_ref).map(|l| &l.output)
    }

    /// The validated model for `spec`, which must be the spec this was resolved from.
    ///
    /// # Errors
    /// Every problem found.
    pub fn into_model(self, spec: ModelSpec) -> Result<Model, SpecErrors> {
        if !self.errors.is_empty() {
            return Err(SpecErrors(self.errors));
        }
        let layers: Vec<LayerInfo> = self.layers.into_iter().flatten().collect();
        if !self.complete || layers.len() != spec.layers.len() {
            return Err(SpecErrors(vec![SpecError::model("layers", "the model's shapes could not be computed")]));
        }
        let params = ParamLayout::new(&layers);
        let flops_forward = layers.iter().map(|l| l.flops).sum();
        let output_activation_fused = matches!(
            (spec.loss, spec.layers.last().and_then(Layer::activation)),
            (Loss::CrossEntropy, Some(Activation::Softmax)) | (Loss::BinaryCrossEntropy, Some(Activation::Sigmoid))
        );
        Ok(Model { spec, layers, params, flops_forward, output_activation_fused })
    }
}

/// Validates `spec` against `limits`, layer by layer; see [`Resolution`].
pub fn resolve(spec: &ModelSpec, limits: &Limits) -> Resolution {
    let layers: Vec<Option<&Layer>> = spec.layers.iter().map(Some).collect();
    analyze(Some(&spec.input_shape), Some(&layers), Some(spec.loss), limits, Vec::new())
}

/// Parses and validates DAIG JSON as far as it can: a layer that does not parse is reported at its index, and the
/// layers before it still get their shapes. What an editor calls as the user types.
pub fn resolve_value(value: serde_json::Value, limits: &Limits) -> Resolution {
    let parts = Parts::parse(value);
    let layers: Option<Vec<Option<&Layer>>> = parts.layers.as_ref().map(|ls| ls.iter().map(Option::as_ref).collect());
    analyze(parts.input_shape.as_deref(), layers.as_deref(), parts.loss, limits, parts.errors)
}

/// The fields of a DAIG JSON model, each parsed on its own: `None` where it is missing or does not parse, with
/// the problem in `errors`.
struct Parts {
    input_shape: Option<Vec<usize>>,
    /// One entry per element of `layers`.
    layers: Option<Vec<Option<Layer>>>,
    loss: Option<Loss>,
    errors: Vec<SpecError>,
}

impl Parts {
    fn parse(value: serde_json::Value) -> Parts {
        let serde_json::Value::Object(mut obj) = value else {
            let message = "the model must be a JSON object with input_shape, layers and loss";
            return Parts { input_shape: None, layers: None, loss: None, errors: vec![SpecError::model("", message)] };
        };
        let mut errors = Vec::new();
        let mut field = |name: &str| {
            let v = obj.remove(name);
            if v.is_none() {
                errors.push(SpecError::model(name, format!("{name} is missing")));
            }
            v
        };
        let input_shape = field("input_shape");
        let layers = field("layers");
        let loss = field("loss");
        let mut unknown: Vec<_> = obj.keys().cloned().collect();
        unknown.sort();
        for k in unknown {
            errors.push(SpecError::model(&k, format!("unknown field `{k}` (expected input_shape, layers, loss)")));
        }
        let input_shape = input_shape.and_then(|v| {
            serde_json::from_value::<Vec<usize>>(v)
                .map_err(|_| {
                    errors.push(SpecError::model(
                        "input_shape",
                        "input_shape must be a list of positive integers, e.g. [784] or [28, 28, 1]",
                    ))
                })
                .ok()
        });
        let loss = loss.and_then(|v| {
            serde_json::from_value::<Loss>(v.clone())
                .map_err(|_| {
                    let names: Vec<&str> = Loss::ALL.iter().map(|l| l.name()).collect();
                    errors.push(SpecError::model(
                        "loss",
                        format!("loss {v} is not supported (expected {})", or_list(&names)),
                    ))
                })
                .ok()
        });
        let layers = match layers {
            Some(serde_json::Value::Array(items)) => {
                let mut layers = Vec::with_capacity(items.len().min(1024));
                for (i, item) in items.into_iter().enumerate() {
                    let ty = item.get("type").and_then(|t| t.as_str()).unwrap_or("?").to_owned();
                    match serde_json::from_value::<Layer>(item) {
                        Ok(l) => layers.push(Some(l)),
                        Err(e) => {
                            errors.push(SpecError::layer(i, &ty, None, e.to_string()));
                            layers.push(None);
                        }
                    }
                }
                Some(layers)
            }
            Some(_) => {
                errors.push(SpecError::model("layers", "layers must be a list of layer objects"));
                None
            }
            None => None,
        };
        Parts { input_shape, layers, loss, errors }
    }
}

/// `a`, `a or b`, `a, b or c`.
fn or_list(words: &[&str]) -> String {
    match words {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// Walks the layers, computing shapes and costs and collecting every problem after those already in `errors`
/// (from parsing). A missing part (`None`: absent or unparsable, and reported) stops only what depends on it.
fn analyze(
    input_shape: Option<&[usize]>,
    layers: Option<&[Option<&Layer>]>,
    loss: Option<Loss>,
    limits: &Limits,
    mut errors: Vec<SpecError>,
) -> Resolution {
    let mut shape_ok = input_shape.is_some();
    let input = Shape(input_shape.unwrap_or_default().to_vec());
    if !shape_ok {
        // Missing or unparsable: reported already.
    } else if input.0.is_empty() || input.0.len() > 3 || input.0.contains(&0) {
        errors.push(SpecError::model(
            "input_shape",
            format!(
                "input_shape [{}] must have 1 to 3 positive dimensions: [features] or [height, width, channels]",
                join(&input.0)
            ),
        ));
        shape_ok = false;
    } else if input.elements().is_none_or(|n| n > limits.max_input_elements) {
        errors.push(SpecError::model(
            "input_shape",
            format!("input_shape {input} has more than the limit of {} elements", limits.max_input_elements),
        ));
        shape_ok = false;
    }
    let Some(layers) = layers else {
        return Resolution { layers: Vec::new(), errors, complete: false };
    };
    if layers.is_empty() {
        errors.push(SpecError::model("layers", "the model has no layers"));
    }
    if layers.len() > limits.max_layers {
        errors.push(SpecError::model(
            "layers",
            format!("the model has {} layers, more than the limit of {}", layers.len(), limits.max_layers),
        ));
        return Resolution { layers: vec![None; layers.len()], errors, complete: false };
    }

    let mut infos = Vec::with_capacity(layers.len());
    let mut current = shape_ok.then_some(input);
    for (index, layer) in layers.iter().enumerate() {
        // A layer that did not parse is reported already; the shapes stop there.
        let Some(layer) = layer else {
            current = None;
            infos.push(None);
            continue;
        };
        // Field checks that need no shape run for every layer, even after an earlier shape error.
        check_fields(index, layer, &mut errors);
        let Some(input) = current.take() else {
            infos.push(None);
            continue;
        };
        match layer_info(index, layer, input, &mut errors) {
            Some(info) => {
                if info.output.elements().is_none_or(|n| n > limits.max_activation_elements) {
                    errors.push(SpecError::layer(
                        index,
                        layer.kind(),
                        None,
                        format!(
                            "its output {} has more than the limit of {} elements per sample",
                            info.output, limits.max_activation_elements
                        ),
                    ));
                } else {
                    current = Some(info.output.clone());
                }
                infos.push(Some(info));
            }
            None => {
                current = None;
                infos.push(None);
            }
        }
    }

    let all_parsed: Option<Vec<&Layer>> = layers.iter().copied().collect();
    if let (Some(last), Some(all), Some(loss)) = (current.as_ref().filter(|_| !layers.is_empty()), all_parsed, loss) {
        check_loss(&all, loss, last, &mut errors);
    }
    let params: usize = infos.iter().flatten().map(|l| l.param_count).fold(0usize, usize::saturating_add);
    if params > limits.max_params {
        errors.push(SpecError::model(
            "layers",
            format!("the model has {params} parameters, more than the limit of {}", limits.max_params),
        ));
    }
    let flops: u64 = infos.iter().flatten().map(|l| l.flops).fold(0u64, u64::saturating_add);
    if flops > limits.max_flops_per_sample {
        errors.push(SpecError::model(
            "layers",
            format!("the model needs {flops} FLOPs per sample, more than the limit of {}", limits.max_flops_per_sample),
        ));
    }
    Resolution { layers: infos, errors, complete: current.is_some() }
}

fn check_fields(index: usize, layer: &Layer, errors: &mut Vec<SpecError>) {
    let kind = layer.kind();
    let mut err = |field: &str, message: String| errors.push(SpecError::layer(index, kind, Some(field), message));
    match layer {
        Layer::Dense { units, .. } if *units == 0 => err("units", "units must be at least 1".into()),
        Layer::Conv2d { filters, kernel_size, strides, .. } => {
            if *filters == 0 {
                err("filters", "filters must be at least 1".into());
            }
            if kernel_size.h == 0 || kernel_size.w == 0 {
                err("kernel_size", format!("kernel_size {kernel_size} must be at least 1"));
            }
            if strides.h == 0 || strides.w == 0 {
                err("strides", format!("strides {strides} must be at least 1"));
            }
        }
        Layer::MaxPool2d { pool_size, strides } | Layer::AvgPool2d { pool_size, strides } => {
            if pool_size.h == 0 || pool_size.w == 0 {
                err("pool_size", format!("pool_size {pool_size} must be at least 1"));
            }
            if let Some(s) = strides.filter(|s| s.h == 0 || s.w == 0) {
                err("strides", format!("strides {s} must be at least 1"));
            }
        }
        Layer::Dropout { rate } if !(0.0..1.0).contains(rate) => {
            err("rate", format!("rate {rate} must be at least 0 and below 1"));
        }
        _ => {}
    }
}

/// Computes one layer's output shape and costs, or reports why it cannot (sizes whose products overflow
/// included).
fn layer_info(index: usize, layer: &Layer, input: Shape, errors: &mut Vec<SpecError>) -> Option<LayerInfo> {
    let shown = input.to_string();
    let info = resolve_layer(index, layer, input, errors);
    if info.is_none() && !errors.iter().any(|e| e.layer == Some(index)) {
        errors.push(SpecError::layer(
            index,
            layer.kind(),
            None,
            format!("its sizes are too large to compute (its input is {shown})"),
        ));
    }
    info
}

fn resolve_layer(index: usize, layer: &Layer, input: Shape, errors: &mut Vec<SpecError>) -> Option<LayerInfo> {
    let kind = layer.kind();
    let before = errors.len();
    let mut err = |field: Option<&str>, message: String| errors.push(SpecError::layer(index, kind, field, message));
    let in_elems = input.elements()? as u64;
    let (output, window, param_count, flops) = match layer {
        Layer::Dense { units, activation } => {
            if input.0.len() != 1 {
                err(
                    None,
                    format!("its input has shape {input}; dense needs a 1-D input: add a flatten layer before it"),
                );
                return None;
            }
            let fan_in = input.0[0];
            let params = fan_in.checked_mul(*units)?.checked_add(*units)?;
            let flops = in_elems
                .saturating_mul(2)
                .saturating_mul(*units as u64)
                .saturating_add(activation_flops(*activation, *units as u64));
            (Shape(vec![*units]), None, params, flops)
        }
        Layer::Conv2d { filters, kernel_size, strides, padding, activation } => {
            let (h, w, c) = hwc(&input).or_else(|| {
                err(None, format!("its input has shape {input}; conv2d needs a height x width x channels input"));
                None
            })?;
            if *filters == 0 || kernel_size.h == 0 || kernel_size.w == 0 || strides.h == 0 || strides.w == 0 {
                return None; // Reported by check_fields.
            }
            let (out_h, pad_top) = window_dim(h, kernel_size.h, strides.h, *padding);
            let (out_w, pad_left) = window_dim(w, kernel_size.w, strides.w, *padding);
            if *padding == Padding::Valid && (kernel_size.h > h || kernel_size.w > w) {
                err(Some("kernel_size"), format!("kernel_size {kernel_size} is larger than its {h}x{w} input"));
                return None;
            }
            let win = Window2d {
                in_h: h,
                in_w: w,
                in_c: c,
                out_h,
                out_w,
                out_c: *filters,
                kernel: *kernel_size,
                strides: *strides,
                pad_top,
                pad_left,
            };
            let taps = kernel_size.h.checked_mul(kernel_size.w)?.checked_mul(c)?;
            let params = taps.checked_mul(*filters)?.checked_add(*filters)?;
            let out = Shape(vec![out_h, out_w, *filters]);
            let out_elems = out.elements()? as u64;
            let flops =
                (2 * taps as u64).saturating_mul(out_elems).saturating_add(activation_flops(*activation, out_elems));
            (out, Some(win), params, flops)
        }
        Layer::MaxPool2d { pool_size, strides } | Layer::AvgPool2d { pool_size, strides } => {
            let (h, w, c) = hwc(&input).or_else(|| {
                err(None, format!("its input has shape {input}; pooling needs a height x width x channels input"));
                None
            })?;
            let strides = strides.unwrap_or(*pool_size);
            if pool_size.h == 0 || pool_size.w == 0 || strides.h == 0 || strides.w == 0 {
                return None;
            }
            if pool_size.h > h || pool_size.w > w {
                err(Some("pool_size"), format!("pool_size {pool_size} is larger than its {h}x{w} input"));
                return None;
            }
            let (out_h, _) = window_dim(h, pool_size.h, strides.h, Padding::Valid);
            let (out_w, _) = window_dim(w, pool_size.w, strides.w, Padding::Valid);
            let win = Window2d {
                in_h: h,
                in_w: w,
                in_c: c,
                out_h,
                out_w,
                out_c: c,
                kernel: *pool_size,
                strides,
                pad_top: 0,
                pad_left: 0,
            };
            let out = Shape(vec![out_h, out_w, c]);
            let flops =
                (out.elements()? as u64).saturating_mul((pool_size.h as u64).saturating_mul(pool_size.w as u64));
            (out, Some(win), 0, flops)
        }
        Layer::Flatten => (Shape(vec![in_elems as usize]), None, 0, 0),
        Layer::Dropout { .. } => (input.clone(), None, 0, in_elems),
        Layer::Activation { activation } => {
            if *activation == Activation::Softmax && input.0.len() != 1 {
                err(
                    Some("activation"),
                    format!("softmax needs a 1-D input, not {input}: add a flatten layer before it"),
                );
                return None;
            }
            (input.clone(), None, 0, activation_flops(*activation, in_elems))
        }
    };
    if matches!(layer, Layer::Conv2d { activation: Activation::Softmax, .. }) {
        err(Some("activation"), format!("softmax needs a 1-D output, not {output}: use it after flatten and dense"));
    }
    if errors.len() > before {
        return None;
    }
    Some(LayerInfo { index, layer: layer.clone(), input, output, window, param_count, flops })
}

fn check_loss(layers: &[&Layer], loss: Loss, output: &Shape, errors: &mut Vec<SpecError>) {
    let last = layers.last().and_then(|l| l.activation());
    // A softmax or sigmoid that the loss would fuse must come last: after it, dropout would act on
    // probabilities and the loss would apply the function a second time.
    let fused = match loss {
        Loss::CrossEntropy => Some(Activation::Softmax),
        Loss::BinaryCrossEntropy => Some(Activation::Sigmoid),
        Loss::MeanSquaredError => None,
    };
    if let Some((i, layer)) =
        layers.iter().enumerate().rev().find(|(_, l)| !matches!(l, Layer::Dropout { .. } | Layer::Flatten))
        && i + 1 < layers.len()
        && layer.activation().is_some()
        && layer.activation() == fused
    {
        errors.push(SpecError::layer(
            i,
            layer.kind(),
            Some("activation"),
            format!(
                "{} computes this {} itself: it must be the last layer, with nothing after it",
                loss.name(),
                layer.activation().map_or("", Activation::name)
            ),
        ));
    }
    match loss {
        Loss::CrossEntropy => {
            if output.0.len() != 1 || output.0[0] < 2 {
                errors.push(SpecError::model(
                    "loss",
                    format!(
                        "cross_entropy needs one score per class (a 1-D output of at least 2 units), but the \
                         model's output is {output}"
                    ),
                ));
            }
            if let Some(a @ (Activation::Relu | Activation::Sigmoid | Activation::Tanh)) = last {
                errors.push(SpecError::model(
                    "loss",
                    format!(
                        "cross_entropy works on logits: the last layer's activation must be softmax or linear, not {}",
                        a.name()
                    ),
                ));
            }
        }
        Loss::BinaryCrossEntropy => {
            if let Some(a @ (Activation::Relu | Activation::Softmax | Activation::Tanh)) = last {
                errors.push(SpecError::model(
                    "loss",
                    format!(
                        "binary_cross_entropy works on logits: the last layer's activation must be sigmoid or \
                         linear, not {}",
                        a.name()
                    ),
                ));
            }
        }
        Loss::MeanSquaredError => {}
    }
}

fn hwc(shape: &Shape) -> Option<(usize, usize, usize)> {
    match shape.0[..] {
        [h, w, c] => Some((h, w, c)),
        _ => None,
    }
}

/// The output size and leading padding of a sliding window along one axis, as Keras/TensorFlow compute
/// them. For `valid` the caller has checked `kernel <= input`.
fn window_dim(input: usize, kernel: usize, stride: usize, padding: Padding) -> (usize, usize) {
    match padding {
        Padding::Valid => ((input.saturating_sub(kernel)) / stride + 1, 0),
        Padding::Same => {
            let out = input.div_ceil(stride);
            let total = (out - 1).saturating_mul(stride).saturating_add(kernel).saturating_sub(input);
            (out, total / 2)
        }
    }
}

fn activation_flops(a: Activation, elements: u64) -> u64 {
    match a {
        Activation::Linear => 0,
        Activation::Relu => elements,
        Activation::Sigmoid | Activation::Tanh | Activation::Softmax => elements.saturating_mul(4),
    }
}

fn join(dims: &[usize]) -> String {
    dims.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}
