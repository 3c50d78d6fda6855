//! The model editor's data: layers as rows of text fields, turned into DAIG JSON for the server and back,
//! validated as the user types with the server's own code ([`daig_shared::model::resolve_value`]), and the
//! server's 422 answer sorted by the layer each problem concerns. Pure logic, tested natively.
//!
//! The layer types, their fields, the activations, paddings and losses all come from `daig_shared::model`.

use std::collections::BTreeMap;

use daig_shared::model::{self as vocab, FieldKind, LayerKind, Limits, Loss, Resolution, SpecError};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::api::FieldProblem;

/// One layer in the editor: its type and each field's text as typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRow {
    pub kind: LayerKind,
    pub values: BTreeMap<String, String>,
}

impl LayerRow {
    /// A new layer of type `kind`, with the values the editor suggests.
    pub fn new(kind: LayerKind) -> LayerRow {
        // Exhaustive: a new layer type must get its suggested values here before the dashboard compiles.
        let suggested: &[(&str, &str)] = match kind {
            LayerKind::Dense => &[("units", "10")],
            LayerKind::Conv2d => &[("filters", "8"), ("kernel_size", "3")],
            LayerKind::MaxPool2d | LayerKind::AvgPool2d => &[("pool_size", "2")],
            LayerKind::Flatten => &[],
            LayerKind::Dropout => &[("rate", "0.5")],
            LayerKind::Activation => &[("activation", "relu")],
        };
        let mut values = BTreeMap::new();
        for field in kind.fields() {
            let value = suggested.iter().find(|(name, _)| *name == field.name).map_or("", |(_, v)| v);
            values.insert(field.name.to_owned(), value.to_owned());
        }
        LayerRow { kind, values }
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
        let mut hidden = LayerRow::new(LayerKind::Dense);
        hidden.values.insert("units".into(), "128".into());
        hidden.values.insert("activation".into(), "relu".into());
        let mut out = LayerRow::new(LayerKind::Dense);
        out.values.insert("units".into(), "10".into());
        ModelDraft { input_shape: "784".into(), loss: Loss::CrossEntropy.name().into(), layers: vec![hidden, out] }
    }

    /// The model as DAIG JSON; text that is not a number is sent as typed, for the server to name.
    pub fn to_json(&self) -> Value {
        let layers: Vec<Value> = self
            .layers
            .iter()
            .map(|row| {
                let mut layer = Map::new();
                layer.insert("type".into(), Value::String(row.kind.name().to_owned()));
                for spec in row.kind.fields() {
                    let text = row.value(spec.name).trim();
                    if text.is_empty() && !spec.required {
                        continue;
                    }
                    let value = match spec.kind {
                        FieldKind::Count | FieldKind::Size2 | FieldKind::Rate => parse_number_or_pair(text),
                        FieldKind::Activation | FieldKind::Padding => Value::String(text.to_owned()),
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
        let loss = value["loss"].as_str().unwrap_or(Loss::CrossEntropy.name()).to_owned();
        let mut layers = Vec::new();
        for (i, layer) in value["layers"].as_array().ok_or("the model needs a layers array")?.iter().enumerate() {
            let name = layer["type"].as_str().ok_or(format!("layer {i} has no type"))?;
            let kind = LayerKind::from_name(name).ok_or(format!("layer {i}: unknown type {name:?}"))?;
            let mut row = LayerRow::new(kind);
            for spec in kind.fields() {
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

    /// Validates the model as the server will, layer by layer (the server's limits are the defaults).
    pub fn resolve(&self) -> Resolution {
        vocab::resolve_value(self.to_json(), &Limits::default())
    }
}

/// What the editor shows under layer `index`: its output shape and parameters, when they could be computed and
/// the layer has no problem.
pub fn layer_summary(resolution: &Resolution, index: usize) -> Option<String> {
    if resolution.errors_at(index).next().is_some() {
        return None;
    }
    let info = resolution.layers.get(index)?.as_ref()?;
    Some(format!("→ {} · {} parameters", info.output, crate::format::count(info.param_count as u64)))
}

/// The line under the layers: the whole model's output and size, or how many problems stand in the way.
pub fn model_summary(resolution: &Resolution) -> String {
    let params = crate::format::count(resolution.param_count() as u64);
    match (resolution.is_valid(), resolution.output_shape()) {
        (true, Some(output)) => format!(
            "{} layers, output {output}, {params} parameters, {} FLOPs per sample",
            resolution.layers.len(),
            crate::format::count(resolution.flops()),
        ),
        _ => match resolution.errors.len() {
            0 => "The model is incomplete.".to_owned(),
            1 => "1 problem in the model.".to_owned(),
            n => format!("{n} problems in the model."),
        },
    }
}

/// A model problem as a line for its layer: `field: message`, unless the message starts with its field already.
pub fn layer_message(error: &SpecError) -> String {
    match error.field.as_deref() {
        Some(field) if !field.is_empty() && !error.message.starts_with(field) => format!("{field}: {}", error.message),
        _ => error.message.clone(),
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

/// The details of a project's `validation_failed` answer: the model's problems and the request fields'.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ProjectProblems {
    pub model: Vec<SpecError>,
    pub fields: Vec<FieldProblem>,
}

/// Sorts a project's problems by where the form shows them.
pub fn sort_problems(problems: &ProjectProblems) -> ProblemsByPlace {
    let mut out = ProblemsByPlace::default();
    for e in &problems.model {
        let message = e.message.clone();
        let field = e.field.clone().unwrap_or_default();
        match e.layer {
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
    for e in &problems.fields {
        out.fields.push((e.field.clone(), e.message.clone()));
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
    fn every_layer_type_gets_a_row_the_server_accepts() {
        for kind in LayerKind::ALL {
            let mut draft = ModelDraft::mnist_mlp();
            draft.input_shape = match kind {
                LayerKind::Conv2d | LayerKind::MaxPool2d | LayerKind::AvgPool2d => "8,8,1".into(),
                _ => "4".into(),
            };
            draft.layers =
                vec![LayerRow::new(kind), LayerRow::new(LayerKind::Flatten), LayerRow::new(LayerKind::Dense)];
            let resolution = draft.resolve();
            assert!(resolution.is_valid(), "{kind}: {:?}", resolution.errors);
        }
    }

    #[test]
    fn the_editor_validates_as_the_user_types() {
        let mut draft = ModelDraft::mnist_mlp();
        let r = draft.resolve();
        assert_eq!(layer_summary(&r, 0).unwrap(), "→ 128 · 100,480 parameters");
        assert_eq!(model_summary(&r), "2 layers, output 10, 101,770 parameters, 203,392 FLOPs per sample");
        draft.layers[1].values.insert("units".into(), "0".into());
        let r = draft.resolve();
        assert!(layer_summary(&r, 0).is_some() && layer_summary(&r, 1).is_none());
        let messages: Vec<String> = r.errors_at(1).map(layer_message).collect();
        assert_eq!(messages, ["units must be at least 1"]);
        // And the loss, which needs at least 2 outputs, says so at the model.
        assert_eq!(model_summary(&r), "2 problems in the model.");
        assert_eq!(r.model_errors().count(), 1);
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
            "fields": [{"field": "settings.epochs", "message": "must be between 1 and 10000, not 0"}]});
        let p = sort_problems(&serde_json::from_value(details).unwrap());
        assert_eq!(
            p.layers[&1],
            vec!["units: must be at least 1".to_owned(), "units must be even".to_owned(), "second".to_owned()]
        );
        assert_eq!(p.model, vec![("loss".to_owned(), "unknown loss".to_owned())]);
        assert_eq!(p.fields[0].0, "settings.epochs");
    }
}
