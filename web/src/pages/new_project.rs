//! `/projects/new`: name, model (the layer editor, or a Keras JSON file), training settings and dataset.
//!
//! The model is validated as the user types, with the server's own code (`daig_shared::model::resolve_value`):
//! each layer shows its output shape and parameters (`#layer-{i}-summary`) or its problems (`#layer-{i}-errors`),
//! and `#model-summary` the whole model's. The server validates again; its 422 answer lists every problem with
//! the layer it concerns, shown the same way, model-wide ones above the layers, settings beside their field.

use std::cell::RefCell;

use serde_json::Value;
use wasm_bindgen::JsCast;
use web_sys::{Element, HtmlElement};

use super::{alert_box, page, show_message};
use crate::app;
use crate::dom::{self, El, el, field, input, select};
use daig_shared::api::project::{CreateProject, ProjectView};
use daig_shared::api::settings::{Access, SETTINGS as SETTING_INFO, TrainingSettings};
use daig_shared::model::{LayerKind, Loss};
use daig_shared::train::Method;

use crate::model::{self, LayerRow, ModelDraft};

thread_local! {
    /// The model being edited.
    static DRAFT: RefCell<ModelDraft> = RefCell::new(ModelDraft::mnist_mlp());
}

/// A training setting in the form: id suffix (the field after `settings.`), label, whether advanced. Its
/// default, range and explanation come from `daig_shared::api::settings::SETTINGS`, the table the server
/// validates with.
struct Setting {
    key: &'static str,
    label: &'static str,
    advanced: bool,
}

const fn setting(key: &'static str, label: &'static str, advanced: bool) -> Setting {
    Setting { key, label, advanced }
}

/// The settings typed as numbers. `learning_rate` is the server optimiser's (`optimizer.learning_rate`);
/// the others are in `FORM_ELSEWHERE`.
const SETTINGS: &[Setting] = &[
    setting("epochs", "Epochs", false),
    setting("target_accuracy", "Target accuracy", false),
    setting("batch_size", "Batch size", false),
    setting("learning_rate", "Learning rate", false),
    setting("k", "Contributions per update (K)", true),
    setting("max_staleness", "Max staleness", true),
    setting("local_steps", "Local steps", true),
    setting("local_learning_rate", "Local learning rate", true),
    setting("validation_fraction", "Validation fraction", true),
    setting("seed", "Seed", true),
    setting("max_providers", "Max providers", true),
    setting("checkpoint_every", "Checkpoint every", true),
    setting("samples_per_shard", "Samples per shard", true),
    setting("norm_bound_factor", "Norm bound factor", true),
];

/// Settings of the shared table that the form sets with controls of their own (the optimiser's method and
/// learning rate, aggregation, access, sites) or leaves at their defaults (normalisation).
#[cfg(test)]
const FORM_ELSEWHERE: &[&str] = &["optimizer", "access", "sites", "aggregation", "normalization"];

/// A setting's default as the form shows it: empty for `null`.
fn default_text(key: &str) -> String {
    if key == "learning_rate" {
        return TrainingSettings::default().optimizer.learning_rate.to_string();
    }
    match SETTING_INFO.iter().find(|info| info.name == key) {
        Some(info) if info.default != "null" => info.default.to_owned(),
        _ => String::new(),
    }
}

/// A setting's explanation with its range.
fn hint(key: &str) -> String {
    let Some(info) = SETTING_INFO.iter().find(|info| info.name == key) else {
        return "Step size of the server's optimiser.".to_owned();
    };
    let mut hint = info.explanation.to_owned();
    match (info.min, info.max) {
        (Some(min), Some(max)) => hint.push_str(&format!(" From {min} to {max}.")),
        (Some(min), None) => hint.push_str(&format!(" At least {min}.")),
        _ => {}
    }
    if info.default == "null" {
        hint.push_str(" Empty: none.");
    }
    hint
}

fn setting_field(s: &Setting) -> El {
    let id = format!("s-{}", s.key);
    let input = input(&id, "text").attr("inputmode", "decimal").attr("value", &default_text(s.key));
    field(s.label, input, Some(&hint(s.key)))
}

pub fn render(main: &Element) {
    DRAFT.with(|d| *d.borrow_mut() = ModelDraft::mnist_mlp());
    let basic = SETTINGS.iter().filter(|s| !s.advanced).map(setting_field);
    let advanced = SETTINGS.iter().filter(|s| s.advanced).map(setting_field);
    let settings = el("fieldset")
        .id("settings")
        .child(el("legend").text("Training"))
        .child(el("div").class("grid").children(basic).child(field(
            "Optimiser",
            select("s-method", &[("adam", "Adam"), ("sgd", "SGD with momentum 0.9")], "adam"),
            Some("Adam suits most models."),
        )))
        .child(
            el("details").child(el("summary").text("Advanced settings")).child(
                el("div")
                    .class("grid")
                    .children(advanced)
                    .child(field(
                        "Aggregation",
                        select(
                            "s-aggregation",
                            &[
                                ("mean", "Mean"),
                                ("trimmed_mean", "Trimmed mean"),
                                ("median", "Median"),
                                ("centered_clip", "Centered clipping"),
                            ],
                            "mean",
                        ),
                        Some(&hint("aggregation")),
                    ))
                    .child(field(
                        "Who may contribute",
                        select(
                            "s-access",
                            &[("public", "Anyone (public)"), ("site_key", "Only sites with the site key")],
                            "public",
                        ),
                        Some("With a site key, only visitors of sites that embed it train this project."),
                    ))
                    .child(field(
                        "Sites allowed to embed",
                        el("textarea")
                            .id("s-sites")
                            .attr("name", "s-sites")
                            .attr("rows", "2")
                            .attr("spellcheck", "false"),
                        Some("For a site key: the origins of the sites, like https://blog.example.org, one per line."),
                    )),
            ),
        );
    let form = el("form")
        .id("project-form")
        .attr("novalidate", "")
        .child(alert_box("project-alert"))
        .child(field("Project name", input("project-name", "text").flag("required", true), None))
        .child(model_section())
        .child(settings)
        .child(super::dataset::form())
        .child(el("button").attr("type", "submit").id("create-project").class("primary").text("Create project"))
        .on("submit", |event| {
            event.prevent_default();
            wasm_bindgen_futures::spawn_local(submit());
        });
    page(main, "New project", form);
    render_layers();
}

/// Validates the draft as it stands in the inputs and shows each layer's shape and problems.
fn validate_live() {
    sync_from_inputs();
    let (resolution, count) = DRAFT.with(|d| {
        let d = d.borrow();
        (d.resolve(), d.layers.len())
    });
    for i in 0..count {
        dom::set_text(&format!("layer-{i}-summary"), &model::layer_summary(&resolution, i).unwrap_or_default());
        dom::clear(&format!("layer-{i}-errors"));
        let mut invalid = false;
        for error in resolution.errors_at(i) {
            push_item(&format!("layer-{i}-errors"), &model::layer_message(error));
            invalid = true;
        }
        if let Some(item) = dom::by_id(&format!("layer-{i}")) {
            let classes = item.class_list();
            let _ = if invalid { classes.add_1("invalid") } else { classes.remove_1("invalid") };
        }
    }
    dom::clear("model-errors");
    for error in resolution.model_errors() {
        match error.field.as_deref() {
            Some(field) if !field.is_empty() => push_item("model-errors", &format!("{field}: {}", error.message)),
            _ => push_item("model-errors", &error.message),
        }
    }
    dom::set_text("model-summary", &model::model_summary(&resolution));
}

fn model_section() -> El {
    let source = el("div")
        .class("radio-row")
        .attr("role", "radiogroup")
        .attr("aria-label", "Model source")
        .child(radio("model-source-editor", "model-source", "Build it here", true))
        .child(radio("model-source-keras", "model-source", "Upload a Keras model (JSON)", false));
    let editor = el("div")
        .id("model-editor")
        .child(
            el("div")
                .class("grid")
                .child(field(
                    "Input shape",
                    input("input-shape", "text").attr("value", "784"),
                    Some("One sample's shape: 784 for flat MNIST, 28,28,1 for images."),
                ))
                .child(field(
                    "Loss",
                    select("model-loss", &loss_options(), Loss::CrossEntropy.name()),
                    Some("cross_entropy for classes, mean_squared_error for values, binary_cross_entropy for 0 to 1."),
                )),
        )
        .on("input", |_| validate_live())
        .on("change", |_| validate_live())
        .child(el("ul").id("model-errors").class("errors").attr("aria-live", "polite"))
        .child(el("ol").id("layers").class("layers").attr("aria-label", "Layers"))
        .child(el("p").id("model-summary").class("model-summary").attr("aria-live", "polite"))
        .child(
            el("div")
                .class("row")
                .child(el("label").attr("for", "add-layer-type").text("Add a layer of type"))
                .child(select("add-layer-type", &layer_type_options(), LayerKind::Dense.name()))
                .child(el("button").attr("type", "button").id("add-layer").text("Add layer").on("click", |_| {
                    let Some(kind) = LayerKind::from_name(&dom::value("add-layer-type")) else { return };
                    sync_from_inputs();
                    DRAFT.with(|d| d.borrow_mut().layers.push(LayerRow::new(kind)));
                    render_layers();
                    let n = DRAFT.with(|d| d.borrow().layers.len());
                    dom::focus(&format!("layer-{}-type", n - 1));
                    app::announce(&format!("Layer {} added", n - 1));
                })),
        )
        .child(
            el("details")
                .id("json-details")
                .child(el("summary").text("Edit as DAIG JSON"))
                .child(el("label").attr("for", "model-json").text("The model in DAIG JSON"))
                .child(el("textarea").id("model-json").attr("rows", "10").attr("spellcheck", "false"))
                .child(el("p").id("model-json-error").class("error").attr("role", "alert"))
                .child(el("button").attr("type", "button").id("apply-json").text("Use this JSON").on("click", |_| {
                    let text = dom::value("model-json");
                    let parsed = serde_json::from_str::<Value>(&text)
                        .map_err(|e| format!("Not JSON: {e}"))
                        .and_then(|v| ModelDraft::from_json(&v));
                    match parsed {
                        Ok(draft) => {
                            dom::set_text("model-json-error", "");
                            dom::set_value("input-shape", &draft.input_shape);
                            dom::set_value("model-loss", &draft.loss);
                            DRAFT.with(|d| *d.borrow_mut() = draft);
                            render_layers();
                            app::announce("Model loaded from JSON");
                        }
                        Err(e) => dom::set_text("model-json-error", &e),
                    }
                }))
                .on("toggle", |_| {
                    sync_from_inputs();
                    let json = DRAFT.with(|d| d.borrow().to_json());
                    dom::set_value("model-json", &serde_json::to_string_pretty(&json).unwrap_or_default());
                }),
        );
    let keras = el("div")
        .id("keras-editor")
        .attr("hidden", "")
        .child(field(
            "Keras model file",
            input("keras-file", "file").attr("accept", ".json,application/json"),
            Some("The output of model.to_json() for a Sequential model."),
        ))
        .child(field("Loss", select("keras-loss", &loss_options(), Loss::CrossEntropy.name()), None))
        .child(el("ul").id("keras-errors").class("errors").attr("aria-live", "polite"));
    el("fieldset").id("model").child(el("legend").text("Model")).child(source).child(editor).child(keras)
}

fn loss_options() -> Vec<(&'static str, &'static str)> {
    Loss::ALL.iter().map(|l| (l.name(), l.name())).collect()
}

fn layer_type_options() -> Vec<(&'static str, &'static str)> {
    LayerKind::ALL.iter().map(|k| (k.name(), k.name())).collect()
}

fn radio(id: &str, name: &str, label: &str, checked: bool) -> El {
    let id_owned = id.to_owned();
    el("label")
        .attr("for", id)
        .child(input(id, "radio").attr("name", name).attr("value", id).flag("checked", checked).on(
            "change",
            move |_| {
                let keras = id_owned == "model-source-keras";
                for (panel, hidden) in [("model-editor", keras), ("keras-editor", !keras)] {
                    if let Some(p) = dom::by_id(panel).and_then(|p| p.dyn_into::<HtmlElement>().ok()) {
                        p.set_hidden(hidden);
                    }
                }
            },
        ))
        .text(&format!(" {label}"))
}

/// Reads every layer input back into the draft.
fn sync_from_inputs() {
    DRAFT.with(|d| {
        let mut d = d.borrow_mut();
        d.input_shape = dom::value("input-shape");
        d.loss = dom::value("model-loss");
        for (i, row) in d.layers.iter_mut().enumerate() {
            for spec in row.kind.fields() {
                let id = format!("layer-{i}-{}", spec.name);
                if dom::by_id(&id).is_some() {
                    row.values.insert(spec.name.to_owned(), dom::value(&id));
                }
            }
        }
    });
}

/// Draws the layer list from the draft.
fn render_layers() {
    let layers = DRAFT.with(|d| d.borrow().layers.clone());
    let count = layers.len();
    let items = layers.iter().enumerate().map(|(i, row)| layer_item(i, row, count));
    let list = el("ol").id("layers").class("layers").attr("aria-label", "Layers").children(items);
    if let Some(old) = dom::by_id("layers") {
        let _ = old.replace_with_with_node_1(&list.0);
    }
    validate_live();
}

fn layer_item(i: usize, row: &LayerRow, count: usize) -> El {
    let type_id = format!("layer-{i}-type");
    let fields = row.kind.fields().iter().map(|spec| {
        let id = format!("layer-{i}-{}", spec.name);
        let value = row.value(spec.name);
        let control = match spec.kind.choices() {
            None => input(&id, "text").attr("value", value).attr("inputmode", "decimal"),
            Some(options) => {
                let mut opts: Vec<(&str, &str)> = Vec::new();
                if !spec.required {
                    opts.push(("", "default"));
                }
                opts.extend(options.iter().map(|o| (*o, *o)));
                select(&id, &opts, value)
            }
        };
        field(spec.label, control, Some(spec.hint))
    });
    let button = |label: &str, aria: String, enabled: bool, action: fn(&mut Vec<LayerRow>, usize)| {
        el("button").attr("type", "button").attr("aria-label", &aria).flag("disabled", !enabled).text(label).on(
            "click",
            move |_| {
                sync_from_inputs();
                DRAFT.with(|d| action(&mut d.borrow_mut().layers, i));
                render_layers();
                app::announce("Layers changed");
            },
        )
    };
    el("li").id(&format!("layer-{i}")).class("layer").attr("aria-describedby", &format!("layer-{i}-errors")).child(
        el("fieldset")
            .child(el("legend").text(&format!("Layer {i}: {}", row.kind)))
            .child(el("p").class("hint").text(row.kind.description()))
            .child(
                el("div")
                    .class("grid")
                    .child(field(
                        "Type",
                        select(&type_id, &layer_type_options(), row.kind.name()).on("change", move |_| {
                            sync_from_inputs();
                            let Some(kind) = LayerKind::from_name(&dom::value(&format!("layer-{i}-type"))) else {
                                return;
                            };
                            DRAFT.with(|d| {
                                if let Some(row) = d.borrow_mut().layers.get_mut(i) {
                                    *row = LayerRow::new(kind);
                                }
                            });
                            render_layers();
                            dom::focus(&format!("layer-{i}-type"));
                        }),
                        None,
                    ))
                    .children(fields),
            )
            .child(el("p").id(&format!("layer-{i}-summary")).class("layer-summary"))
            .child(el("ul").id(&format!("layer-{i}-errors")).class("errors layer-errors"))
            .child(
                el("div")
                    .class("row")
                    .child(button("↑", format!("Move layer {i} up"), i > 0, |l, i| l.swap(i - 1, i)))
                    .child(button("↓", format!("Move layer {i} down"), i + 1 < count, |l, i| l.swap(i, i + 1)))
                    .child(button("Remove", format!("Remove layer {i}"), true, |l, i| {
                        l.remove(i);
                    })),
            ),
    )
}

/// Sets setting `key` (a key of [`SETTINGS`]) from its text, which is not empty.
///
/// # Errors
/// What the field must hold, when the text is not a number of the setting's kind.
fn set_setting(settings: &mut TrainingSettings, key: &str, text: &str) -> Result<(), String> {
    fn whole<T: std::str::FromStr>(key: &str, text: &str) -> Result<T, String> {
        text.parse().map_err(|_| must_be(key, "a whole number"))
    }
    fn real<T: std::str::FromStr + Into<f64> + Copy>(key: &str, text: &str) -> Result<T, String> {
        text.parse::<T>().ok().filter(|x| (*x).into().is_finite()).ok_or_else(|| must_be(key, "a number"))
    }
    match key {
        "epochs" => settings.epochs = whole(key, text)?,
        "target_accuracy" => settings.target_accuracy = Some(real(key, text)?),
        "batch_size" => settings.batch_size = whole(key, text)?,
        "learning_rate" => settings.optimizer.learning_rate = real(key, text)?,
        "k" => settings.k = whole(key, text)?,
        "max_staleness" => settings.max_staleness = whole(key, text)?,
        "local_steps" => settings.local_steps = whole(key, text)?,
        "local_learning_rate" => settings.local_learning_rate = real(key, text)?,
        "validation_fraction" => settings.validation_fraction = real(key, text)?,
        "seed" => settings.seed = whole(key, text)?,
        "max_providers" => settings.max_providers = whole(key, text)?,
        "checkpoint_every" => settings.checkpoint_every = whole(key, text)?,
        "samples_per_shard" => settings.samples_per_shard = whole(key, text)?,
        "norm_bound_factor" => settings.norm_bound_factor = Some(real(key, text)?),
        _ => return Err(format!("{key} is not a setting the form knows")),
    }
    Ok(())
}

/// `must be a whole number from 1 to 4096`, with the range of the shared table.
fn must_be(key: &str, kind: &str) -> String {
    match SETTING_INFO.iter().find(|info| info.name == key).map(|info| (info.min, info.max)) {
        Some((Some(min), Some(max))) => format!("must be {kind} from {min} to {max}"),
        Some((Some(min), None)) => format!("must be {kind}, at least {min}"),
        _ => format!("must be {kind}"),
    }
}

/// The request body from the form (the Keras file's text is added by [`submit`]), or `None` after showing
/// beside their fields the settings that are not numbers of their kind. Empty settings keep their defaults.
fn body() -> Option<CreateProject> {
    let mut settings = TrainingSettings::default();
    let mut valid = true;
    for s in SETTINGS {
        let text = dom::value(&format!("s-{}", s.key));
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        if let Err(message) = set_setting(&mut settings, s.key, text) {
            setting_error(&format!("s-{}", s.key), &message);
            valid = false;
        }
    }
    settings.optimizer.method =
        if dom::value("s-method") == "sgd" { Method::Sgd { momentum: 0.9, nesterov: false } } else { Method::adam() };
    settings.aggregation = serde_json::from_value(Value::String(dom::value("s-aggregation"))).unwrap_or_default();
    settings.access = if dom::value("s-access") == "site_key" { Access::SiteKey } else { Access::Public };
    settings.sites = super::project::parse_sites(&dom::value("s-sites"));
    if !valid {
        return None;
    }
    let keras = dom::checked("model-source-keras");
    let model = (!keras).then(|| {
        sync_from_inputs();
        DRAFT.with(|d| d.borrow().to_json())
    });
    Some(CreateProject {
        name: dom::value("project-name"),
        model,
        keras_model: None,
        loss: keras.then(|| dom::value("keras-loss")),
        settings,
    })
}

/// Shows `message` beside the setting `id`, opening the advanced settings when it is among them.
fn setting_error(id: &str, message: &str) {
    dom::field_error(id, message);
    // Problems in the advanced settings must not hide in a closed section.
    if let Some(details) = dom::by_id(id).and_then(|e| e.closest("details").ok().flatten()) {
        let _ = details.set_attribute("open", "");
    }
}

/// Clears every problem shown.
fn clear_problems() {
    dom::clear_field_errors("project-form");
    dom::clear("project-alert");
    dom::clear("model-errors");
    dom::clear("keras-errors");
    if let Ok(list) = dom::document().query_selector_all(".layer-errors") {
        for i in 0..list.length() {
            if let Some(node) = list.item(i) {
                node.set_text_content(None);
            }
        }
    }
    if let Ok(list) = dom::document().query_selector_all(".layer.invalid") {
        for i in 0..list.length() {
            if let Some(e) = list.item(i).and_then(|n| n.dyn_into::<Element>().ok()) {
                let _ = e.class_list().remove_1("invalid");
            }
        }
    }
}

fn push_item(list_id: &str, text: &str) {
    if let Some(list) = dom::by_id(list_id) {
        let _ = list.append_child(&el("li").text(text).0);
    }
}

/// Shows a 422 answer's problems where they belong.
fn show_problems(problems: &model::ProjectProblems, keras: bool) {
    let problems = model::sort_problems(problems);
    for (layer, messages) in &problems.layers {
        if keras {
            for m in messages {
                push_item("keras-errors", &format!("Layer {layer}: {m}"));
            }
            continue;
        }
        let list_id = format!("layer-{layer}-errors");
        if dom::by_id(&list_id).is_none() {
            for m in messages {
                push_item("model-errors", &format!("Layer {layer}: {m}"));
            }
            continue;
        }
        if let Some(item) = dom::by_id(&format!("layer-{layer}")) {
            let _ = item.class_list().add_1("invalid");
        }
        for m in messages {
            push_item(&list_id, m);
        }
    }
    let model_list = if keras { "keras-errors" } else { "model-errors" };
    for (field, message) in &problems.model {
        match field.as_str() {
            "input_shape" if !keras => dom::field_error("input-shape", message),
            "loss" if !keras => dom::field_error("model-loss", message),
            "" => push_item(model_list, message),
            _ => push_item(model_list, &format!("{field}: {message}")),
        }
    }
    for (field, message) in &problems.fields {
        let id = match field.as_str() {
            "name" => "project-name".to_owned(),
            "loss" => if keras { "keras-loss" } else { "model-loss" }.to_owned(),
            "model" | "keras_model" => {
                push_item(model_list, message);
                continue;
            }
            "settings.optimizer" => "s-learning_rate".to_owned(),
            f => match f.strip_prefix("settings.") {
                Some(key) if dom::by_id(&format!("s-{key}")).is_some() => format!("s-{key}"),
                _ => {
                    push_item(model_list, &format!("{field}: {message}"));
                    continue;
                }
            },
        };
        if id.starts_with("s-") {
            setting_error(&id, message);
        } else {
            dom::field_error(&id, message);
        }
    }
}

async fn submit() {
    clear_problems();
    let keras = dom::checked("model-source-keras");
    let Some(mut body) = body() else {
        show_message("project-alert", "The project was not created: fix the problems shown below.");
        dom::focus("project-alert");
        return;
    };
    if keras {
        let Some(file) = dom::file("keras-file") else {
            dom::field_error("keras-file", "Choose the Keras JSON file");
            return;
        };
        match wasm_bindgen_futures::JsFuture::from(file.text()).await.ok().and_then(|t| t.as_string()) {
            Some(text) => body.keras_model = Some(text),
            None => {
                dom::field_error("keras-file", "The file cannot be read");
                return;
            }
        }
    }
    let generation = app::generation();
    set_busy(true);
    let result = crate::api::post_json::<_, ProjectView>("/api/projects", &body).await;
    if !app::is_current(generation) {
        return;
    }
    let project = match result {
        Ok(project) => project,
        Err(e) => {
            set_busy(false);
            if e.code == "validation_failed" {
                show_problems(&e.details_as().unwrap_or_default(), keras);
                show_message("project-alert", "The project was not created: fix the problems shown below.");
            } else {
                super::show_error("project-alert", &e);
            }
            // Focus (and the view) goes to the summary, not back to the top of the page.
            dom::focus("project-alert");
            return;
        }
    };
    let id = project.id;
    app::announce("Project created");
    if super::dataset::chosen() && super::dataset::upload(id).await.is_err() {
        set_busy(false);
        if app::is_current(generation) {
            dom::replace(
                "project-alert",
                el("p")
                    .text("The project was created, but its dataset was not stored (see below). ")
                    .child(super::link(&format!("/projects/{id}"), "Open the project to upload it again")),
            );
        }
        return;
    }
    if app::is_current(generation) {
        app::navigate(&format!("/projects/{id}"));
    }
}

fn set_busy(busy: bool) {
    if let Some(button) = dom::by_id("create-project") {
        if busy {
            let _ = button.set_attribute("disabled", "");
            button.set_text_content(Some("Creating…"));
        } else {
            let _ = button.remove_attribute("disabled");
            button.set_text_content(Some("Create project"));
        }
    }
}

#[cfg(test)]
mod settings_tests {
    use super::*;

    /// A setting added to the shared table fails here until the form shows it or says where it is set.
    #[test]
    fn the_form_covers_every_shared_setting_with_its_default() {
        for info in SETTING_INFO {
            let in_form = SETTINGS.iter().any(|s| s.key == info.name);
            let elsewhere = FORM_ELSEWHERE.contains(&info.name);
            assert!(in_form != elsewhere, "{} must be in exactly one of SETTINGS and FORM_ELSEWHERE", info.name);
            if in_form {
                let shown = default_text(info.name);
                let expected = if info.default == "null" { "" } else { info.default };
                assert_eq!(shown, expected, "{}", info.name);
                assert!(hint(info.name).starts_with(info.explanation), "{}", info.name);
            }
        }
        for s in SETTINGS {
            assert!(
                s.key == "learning_rate" || SETTING_INFO.iter().any(|info| info.name == s.key),
                "{} is not a setting the server knows",
                s.key
            );
        }
        assert_eq!(default_text("learning_rate"), "0.001");
    }

    /// Every setting of the form is read into its field of `TrainingSettings`: its default text gives the default.
    #[test]
    fn the_form_reads_each_setting_as_its_type() {
        for s in SETTINGS {
            let mut settings = TrainingSettings::default();
            let text = default_text(s.key);
            if text.is_empty() {
                continue;
            }
            set_setting(&mut settings, s.key, &text).unwrap();
            assert_eq!(settings, TrainingSettings::default(), "{}", s.key);
        }
        let mut settings = TrainingSettings::default();
        set_setting(&mut settings, "epochs", "4").unwrap();
        set_setting(&mut settings, "learning_rate", "0.003").unwrap();
        set_setting(&mut settings, "target_accuracy", "0.9").unwrap();
        assert_eq!(
            (settings.epochs, settings.optimizer.learning_rate, settings.target_accuracy),
            (4, 0.003, Some(0.9))
        );
        assert_eq!(
            set_setting(&mut settings, "batch_size", "-1").unwrap_err(),
            "must be a whole number from 1 to 4096"
        );
        assert_eq!(set_setting(&mut settings, "seed", "x").unwrap_err(), "must be a whole number, at least 0");
        assert!(set_setting(&mut settings, "validation_fraction", "NaN").is_err());
        assert!(set_setting(&mut settings, "aggregation", "1").is_err());
    }
}
