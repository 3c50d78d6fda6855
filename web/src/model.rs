//! The model editor's data: layers as rows of text fields, turned into DAIG JSON for the server and back, and
//! the server's 422 answer sorted by the layer each problem concerns. Pure logic, tested natively.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

/// A field a layer type takes, in the order the editor shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    pub name: &'static str,
    pub label: &'static str,
    pub kind: FieldKind,
    /// Whether the server needs it (optional fields left empty are omitted).
    pub required: bool,
    /// What it means, for the field's hint.
    pub hint: &'static str,
}

/// How a field is edited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// A number, or a pair such as `3,3` for sizes.
    Number,
    /// One of the listed words.
    Choice(&'static [&'static str]),
}

pub const ACTIVATIONS: &[&str] = &["linear", "relu", "sigmoid", "tanh", "softmax"];
pub const PADDINGS: &[&str] = &["valid", "same"];
pub const LOSSES: &[&str] = &["cross_entropy", "mean_squared_error", "binary_cross_entropy"];
/// The layer types of DAIG JSON.
pub const LAYER_TYPES: &[&str] = &["dense", "conv2d", "max_pool2d", "avg_pool2d", "flatten", "dropout", "activation"];

const fn f(name: &'static str, label: &'static str, kind: FieldKind, required: bool, hint: &'static str) -> FieldSpec {
    FieldSpec { name, label, kind, required, hint }
}

const ACT: FieldKind = FieldKind::Choice(ACTIVATIONS);

/// The fields of layer type `kind`.
pub fn fields_of(kind: &str) -> &'static [FieldSpec] {
    const DENSE: &[FieldSpec] = &[
        f("units", "Units", FieldKind::Number, true, "outputs of the layer"),
        f("activation", "Activation", ACT, false, "applied to the outputs"),
    ];
    const CONV: &[FieldSpec] = &[
        f("filters", "Filters", FieldKind::Number, true, "output channels"),
        f("kernel_size", "Kernel size", FieldKind::Number, true, "e.g. 3 or 3,3"),
        f("strides", "Strides", FieldKind::Number, false, "default 1"),
        f("padding", "Padding", FieldKind::Choice(PADDINGS), false, "same keeps the size"),
        f("activation", "Activation", ACT, false, "applied to the outputs"),
    ];
    const POOL: &[FieldSpec] = &[
        f("pool_size", "Pool size", FieldKind::Number, true, "e.g. 2 or 2,2"),
        f("strides", "Strides", FieldKind::Number, false, "default: the pool size"),
    ];
    const DROPOUT: &[FieldSpec] =
        &[f("rate", "Rate", FieldKind::Number, true, "fraction dropped while training, 0 to 1")];
    const ACTIVATION: &[FieldSpec] = &[f("activation", "Activation", ACT, true, "the function")];
    match kind {
        "dense" => DENSE,
        "conv2d" => CONV,
        "max_pool2d" | "avg_pool2d" => POOL,
        "dropout" => DROPOUT,
        "activation" => ACTIVATION,
        _ => &[],
    }
}

/// One layer in the editor: its type and each field's text as typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRow {
    pub kind: String,
    pub values: BTreeMap<String, String>,
}

impl LayerRow {
    pub fn new(kind: &str) -> LayerRow {
        let mut values = BTreeMap::new();
        for spec in fields_of(kind) {
            let default = match (spec.name, kind) {
                ("units", _) => "10",
                ("filters", _) => "8",
                ("kernel_size", _) => "3",
                ("pool_size", _) => "2",
                ("rate", _) => "0.5",
                ("activation", "activation") => "relu",
                _ => "",
            };
            values.insert(spec.name.to_owned(), default.to_owned());
        }
        LayerRow { kind: kind.to_owned(), values }
    }

    pub fn value(&self, name: &str) -> &str {
        self.values.get(name).map_or("", String::as_str)
    }
}

/// The editor's whole model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelDraft {
    /// The shape of one sample as typed, e.g. `784` or `28,28,1`.
    pub input_shape: String,
    pub loss: String,
    pub layers: Vec<LayerRow>,
}

impl ModelDraft {
    /// The MNIST MLP: 784 inputs, 128 ReLU units, 10 classes.
    pub fn mnist_mlp() -> ModelDraft {
        let mut hidden = LayerRow::new("dense");
        hidden.values.insert("units".into(), "128".into());
        hidden.values.insert("activation".into(), "relu".into());
        let mut out = LayerRow::new("dense");
        out.values.insert("units".into(), "10".into());
        ModelDraft { input_shape: "784".into(), loss: "cross_entropy".into(), layers: vec![hidden, out] }
    }

    /// The model as DAIG JSON; text that is not a number is sent as typed, for the server to name.
    pub fn to_json(&self) -> Value {
        let layers: Vec<Value> = self
            .layers
            .iter()
            .map(|row| {
                let mut layer = Map::new();
                layer.insert("type".into(), Value::String(row.kind.clone()));
                for spec in fields_of(&row.kind) {
                    let text = row.value(spec.name).trim();
                    if text.is_empty() && !spec.required {
                        continue;
                    }
                    let value = match spec.kind {
                        FieldKind::Number => parse_number_or_pair(text),
                        FieldKind::Choice(_) => Value::String(text.to_owned()),
                    };
                    layer.insert(spec.name.into(), value);
                }
                Value::Object(layer)
            })
            .collect();
        json!({
            "input_shape": parse_shape(&self.input_shape),
            "layers": layers,
            "loss": self.loss,
        })
    }

    /// Reads DAIG JSON back into rows.
    ///
    /// # Errors
    /// A message when `value` is not a DAIG JSON model the editor can show.
    pub fn from_json(value: &Value) -> Result<ModelDraft, String> {
        let shape = value["input_shape"].as_array().ok_or("the model needs an input_shape array")?;
        let input_shape = shape.iter().map(Value::to_string).collect::<Vec<_>>().join(",");
        let loss = value["loss"].as_str().unwrap_or("cross_entropy").to_owned();
        let mut layers = Vec::new();
        for (i, layer) in value["layers"].as_array().ok_or("the model needs a layers array")?.iter().enumerate() {
            let kind = layer["type"].as_str().ok_or(format!("layer {i} has no type"))?;
            if !LAYER_TYPES.contains(&kind) {
                return Err(format!("layer {i}: unknown type {kind:?}"));
            }
            let mut row = LayerRow::new(kind);
            for spec in fields_of(kind) {
                let text = match &layer[spec.name] {
                    Value::Null => String::new(),
                    Value::String(s) => s.clone(),
                    Value::Array(items) => items.iter().map(Value::to_string).collect::<Vec<_>>().join(","),
                    other => other.to_string(),
                };
                row.values.insert(spec.name.to_owned(), text);
            }
            layers.push(row);
        }
        Ok(ModelDraft { input_shape, loss, layers })
    }
}

/// `784` -> `[784]`, `28,28,1` -> `[28, 28, 1]`; parts that are not integers are sent as text.
pub fn parse_shape(text: &str) -> Value {
    let text = text.trim().trim_start_matches('[').trim_end_matches(']');
    Value::Array(text.split(',').map(|p| p.trim()).filter(|p| !p.is_empty()).map(parse_scalar).collect())
}

/// `3` -> `3`, `0.5` -> `0.5`, `3,3` or `[3, 3]` -> `[3, 3]`; anything else as text.
pub fn parse_number_or_pair(text: &str) -> Value {
    let inner = text.trim().trim_start_matches('[').trim_end_matches(']');
    if inner.contains(',') {
        Value::Array(inner.split(',').map(|p| parse_scalar(p.trim())).collect())
    } else {
        parse_scalar(inner.trim())
    }
}

fn parse_scalar(text: &str) -> Value {
    if let Ok(n) = text.parse::<u64>() {
        json!(n)
    } else if let Ok(n) = text.parse::<i64>() {
        json!(n)
    } else if let Ok(x) = text.parse::<f64>()
        && x.is_finite()
    {
        json!(x)
    } else {
        Value::String(text.to_owned())
    }
}

/// A project's 422 answer sorted for the form.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProblemsByPlace {
    /// Per layer index: the messages (`field: message`).
    pub layers: BTreeMap<usize, Vec<String>>,
    /// Model problems outside a layer, keyed by field (`input_shape`, `loss`, `layers`, or empty).
    pub model: Vec<(String, String)>,
    /// Request field problems (`name`, `settings.epochs`, `loss`, `model`).
    pub fields: Vec<(String, String)>,
}

/// Sorts `details` of a `validation_failed` answer: `{"model": [SpecError], "fields": [FieldError]}`.
pub fn sort_problems(details: &Value) -> ProblemsByPlace {
    let mut out = ProblemsByPlace::default();
    for e in details["model"].as_array().into_iter().flatten() {
        let message = e["message"].as_str().unwrap_or_default().to_owned();
        let field = e["field"].as_str().unwrap_or_default().to_owned();
        match e["layer"].as_u64().and_then(|l| usize::try_from(l).ok()) {
            Some(layer) => {
                // Messages often start with their field already ("units must be at least 1").
                let text = if field.is_empty() || message.starts_with(&field) {
                    message
                } else {
                    format!("{field}: {message}")
                };
                out.layers.entry(layer).or_default().push(text);
            }
            None => out.model.push((field, message)),
        }
    }
    for e in details["fields"].as_array().into_iter().flatten() {
        out.fields.push((
            e["field"].as_str().unwrap_or_default().to_owned(),
            e["message"].as_str().unwrap_or_default().to_owned(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mnist_mlp_is_the_json_the_server_expects() {
        let json = ModelDraft::mnist_mlp().to_json();
        // The output layer's activation is left empty, so it is omitted (the server's default, linear).
        let expected = json!({"input_shape": [784], "loss": "cross_entropy", "layers": [
            {"type": "dense", "units": 128, "activation": "relu"}, {"type": "dense", "units": 10}]});
        assert_eq!(json, expected);
    }

    #[test]
    fn rows_round_trip_through_json() {
        let model = json!({"input_shape": [28, 28, 1], "loss": "cross_entropy", "layers": [
            {"type": "conv2d", "filters": 8, "kernel_size": [3, 3], "padding": "same", "activation": "relu"},
            {"type": "max_pool2d", "pool_size": 2}, {"type": "flatten"}, {"type": "dropout", "rate": 0.25},
            {"type": "dense", "units": 10}]});
        let draft = ModelDraft::from_json(&model).unwrap();
        assert_eq!(draft.input_shape, "28,28,1");
        assert_eq!(draft.layers[0].value("kernel_size"), "3,3");
        assert_eq!(draft.to_json(), model);
    }

    #[test]
    fn text_that_is_not_a_number_goes_to_the_server_as_typed() {
        assert_eq!(parse_number_or_pair("ten"), json!("ten"));
        assert_eq!(parse_number_or_pair("[2, 3]"), json!([2, 3]));
        assert_eq!(parse_shape(" 28, 28 ,1"), json!([28, 28, 1]));
    }

    #[test]
    fn problems_are_sorted_by_layer() {
        let details = json!({
            "model": [
                {"layer": 1, "layer_type": "dense", "field": "units", "message": "must be at least 1"},
                {"layer": 1, "layer_type": "dense", "field": "units", "message": "units must be even"},
                {"layer": null, "layer_type": null, "field": "loss", "message": "unknown loss"},
                {"layer": 1, "layer_type": "dense", "field": null, "message": "second"}],
            "fields": [{"field": "settings.epochs", "message": "must be in 1..=10000, not 0"}]});
        let p = sort_problems(&details);
        assert_eq!(
            p.layers[&1],
            vec!["units: must be at least 1".to_owned(), "units must be even".to_owned(), "second".to_owned()]
        );
        assert_eq!(p.model, vec![("loss".to_owned(), "unknown loss".to_owned())]);
        assert_eq!(p.fields[0].0, "settings.epochs");
    }
}
