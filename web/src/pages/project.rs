//! `/projects/{id}`: a project's state, progress with an estimate of the time left, loss and accuracy charts,
//! its providers, throughput and credits, the lifecycle buttons, downloads and the embed snippet. After the
//! first `GET`, updates arrive over server-sent events (`/api/projects/{id}/events`) and redraw the live parts:
//! each stream starts with the whole project (`project`), then sends what changed (`delta`: changed fields and the
//! new metric points), which the page applies to the view it holds.

use std::cell::RefCell;
use std::rc::Rc;

use daig_shared::api::project::{Action, DatasetSummary, ProjectDelta, ProjectState, ProjectView, SetSites};
use daig_shared::api::training::{CheckpointList, LiveProvider, MetricPoint, ProjectCredits, ShutOutView, Standing};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{Element, EventSource, MessageEvent};

use super::projects::state_badge;
use super::{alert_box, page, progress_bar, show_error};
use crate::api::FieldProblems;
use crate::app;
use crate::chart::{self, Series};
use crate::dom::{self, El, el, raw_html};
use crate::format;

/// What the page last drew, to redraw only what changed.
#[derive(Default)]
struct Seen {
    /// `None` before the first view.
    state: Option<ProjectState>,
    version: i64,
    /// `performance.now()` of the last credits and checkpoints fetch.
    side_fetch_ms: f64,
}

thread_local! {
    static SEEN: RefCell<Seen> = RefCell::new(Seen::default());
}

fn now_ms() -> f64 {
    web_sys::window().and_then(|w| w.performance()).map_or(0.0, |p| p.now())
}

pub fn render(main: &Element, id: i64) {
    SEEN.with(|s| *s.borrow_mut() = Seen::default());
    let generation = app::generation();
    page(
        main,
        &format!("Project {id}"),
        el("div").id("project").attr("aria-busy", "true").child(alert_box("project-alert")).text("Loading…"),
    );
    wasm_bindgen_futures::spawn_local(async move {
        let result = crate::api::get_json::<ProjectView>(&format!("/api/projects/{id}")).await;
        if !app::is_current(generation) {
            return;
        }
        match result {
            Ok(view) => {
                build(&view);
                update(&view);
                if !is_terminal(&view) {
                    subscribe(id, generation);
                }
            }
            Err(e) => {
                dom::replace("project", alert_box("project-alert"));
                show_error("project-alert", &e);
                if e.status == 404 {
                    dom::document().set_title("Project not found · DAIG");
                    dom::set_text("page-title", "Project not found");
                }
            }
        }
    });
}

fn is_terminal(view: &ProjectView) -> bool {
    matches!(view.state, ProjectState::Finished | ProjectState::Cancelled)
}

/// How long a reopening stream may take before the page says it is reconnecting.
const RECONNECT_GRACE_MS: i32 = 3000;

/// Opens the live updates for project `id`.
fn subscribe(id: i64, generation: u64) {
    let Ok(source) = EventSource::new(&format!("/api/projects/{id}/events")) else { return };
    // The project as the stream has told it: replaced by each `project` event (the first of every connection),
    // brought up to date by each `delta`; a delta before any project (none is sent) is ignored.
    let view: Rc<RefCell<Option<ProjectView>>> = Rc::default();
    let shown = move |view: &ProjectView| {
        dom::set_text("live", "Live");
        update(view);
        if is_terminal(view) {
            app::close_events();
        }
    };
    let current = Rc::clone(&view);
    let on_project = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
        if !app::is_current(generation) {
            return;
        }
        let Some(text) = event.data().as_string() else { return };
        let Ok(new) = serde_json::from_str::<ProjectView>(&text) else { return };
        shown(&new);
        *current.borrow_mut() = Some(new);
    });
    let _ = source.add_event_listener_with_callback("project", on_project.as_ref().unchecked_ref());
    on_project.forget();
    let on_delta = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
        if !app::is_current(generation) {
            return;
        }
        let Some(text) = event.data().as_string() else { return };
        let Ok(delta) = serde_json::from_str::<ProjectDelta>(&text) else { return };
        let mut view = view.borrow_mut();
        let Some(view) = view.as_mut() else { return };
        view.apply(delta);
        shown(view);
    });
    let _ = source.add_event_listener_with_callback("delta", on_delta.as_ref().unchecked_ref());
    on_delta.forget();
    let watched = source.clone();
    let on_error = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| {
        if !app::is_current(generation) {
            return;
        }
        // CLOSED means the browser gave up (the server refused); CONNECTING means it retries by itself.
        if watched.ready_state() == EventSource::CLOSED {
            dom::set_text("live", "Live updates stopped; reload the page to retry");
            return;
        }
        // The server ends a quiet stream on purpose (an idle draft's every few seconds) and the browser reopens
        // it within about a second: only a stream still not open after a while is shown as reconnecting.
        let later = watched.clone();
        let check = Closure::once_into_js(move || {
            if app::is_current(generation) && later.ready_state() != EventSource::OPEN {
                dom::set_text("live", "Reconnecting…");
            }
        });
        if let Some(window) = web_sys::window() {
            let _ =
                window.set_timeout_with_callback_and_timeout_and_arguments_0(check.unchecked_ref(), RECONNECT_GRACE_MS);
        }
    });
    let _ = source.add_event_listener_with_callback("error", on_error.as_ref().unchecked_ref());
    on_error.forget();
    app::hold_events(source);
}

/// The page's fixed structure, filled by [`update`].
fn build(view: &ProjectView) {
    let id = view.id;
    let name = view.name.as_str();
    dom::document().set_title(&format!("{name} · DAIG"));
    dom::set_text("page-title", name);
    let stat = |label: &str, id: &str| el("div").child(el("dt").text(label)).child(el("dd").id(id));
    let status = el("section")
        .attr("aria-labelledby", "status-h")
        .child(el("h2").id("status-h").class("visually-hidden").text("Status"))
        .child(
            el("div")
                .class("row status-row")
                .child(el("span").id("state"))
                .child(el("span").id("live").class("live").attr("aria-live", "off"))
                .child(el("div").id("actions").class("row")),
        )
        .child(
            el("dl")
                .class("stats")
                .child(stat("Epoch", "epoch"))
                .child(stat("Version", "version"))
                .child(stat("Throughput", "throughput"))
                .child(stat("Credits spent", "credits")),
        )
        .child(
            el("div")
                .class("progress-row")
                .child(progress_bar("progress", "Training progress", 0.0))
                .child(el("span").id("progress-text")),
        )
        .child(el("p").id("summary").class("summary"));
    let charts =
        el("section").attr("aria-labelledby", "charts-h").child(el("h2").id("charts-h").text("Learning")).child(
            el("div")
                .class("charts")
                .child(
                    el("figure")
                        .child(el("figcaption").text("Loss"))
                        .child(el("div").id("loss-chart"))
                        .child(legend(&[("s1", "training"), ("s2", "validation")])),
                )
                .child(
                    el("figure")
                        .child(el("figcaption").text("Validation accuracy"))
                        .child(el("div").id("accuracy-chart"))
                        .child(legend(&[("s3", "validation accuracy")])),
                ),
        );
    let providers = el("section")
        .attr("aria-labelledby", "providers-h")
        .child(el("h2").id("providers-h").text("Providers working on it"))
        .child(el("div").id("providers"))
        .child(el("div").id("shut-out"));
    let model = &view.model;
    let about = el("section")
        .attr("aria-labelledby", "about-h")
        .child(el("h2").id("about-h").text("Model and data"))
        .child(
            el("dl")
                .class("stats")
                .child(el("div").child(el("dt").text("Parameters")).child(el("dd").text(&format::count(model.params))))
                .child(el("div").child(el("dt").text("Layers")).child(el("dd").text(&model.layers.to_string())))
                .child(el("div").child(el("dt").text("Input shape")).child(el("dd").text(&shape(&model.input_shape))))
                .child(el("div").child(el("dt").text("Loss")).child(el("dd").text(&model.loss)))
                .child(el("div").child(el("dt").text("Dataset")).child(el("dd").id("dataset-summary"))),
        )
        .child(el("div").id("draft-dataset"));
    let downloads = el("section")
        .attr("aria-labelledby", "downloads-h")
        .child(el("h2").id("downloads-h").text("Downloads"))
        .child(el("div").id("downloads"))
        .child(el("div").id("checkpoints"));
    let embed = embed_section(view);
    let content = el("div")
        .id("project")
        .attr("data-project-id", &id.to_string())
        .child(alert_box("project-alert"))
        .child(status)
        .child(charts)
        .child(providers)
        .child(about)
        .child(downloads)
        .child_opt(embed)
        .child(
            el("p").child(
                el("button")
                    .attr("type", "button")
                    .class("danger link-like")
                    .id("delete-project")
                    .text("Delete project")
                    .on("click", move |_| {
                        let confirmed = web_sys::window()
                            .and_then(|w| {
                                w.confirm_with_message("Delete this project, its dataset, checkpoints and model?").ok()
                            })
                            .unwrap_or(false);
                        if confirmed {
                            wasm_bindgen_futures::spawn_local(async move {
                                match crate::api::delete(&format!("/api/projects/{id}")).await {
                                    Ok(_) => {
                                        app::announce("Project deleted");
                                        app::navigate("/");
                                    }
                                    Err(e) => show_error("project-alert", &e),
                                }
                            });
                        }
                    }),
            ),
        );
    dom::replace(
        "main",
        el("div").class("page").child(el("h1").id("page-title").attr("tabindex", "-1").text(name)).child(content),
    );
    if app::navigated() {
        dom::focus("page-title");
    }
}

fn legend(items: &[(&str, &str)]) -> El {
    el("ul").class("legend").attr("aria-hidden", "true").children(
        items.iter().map(|(class, label)| el("li").child(el("span").class(&format!("swatch {class}"))).text(label)),
    )
}

/// The snippet a site owner pastes to let visitors train this project (the embed script's `data-project` and
/// `data-site-key`, as `/sites` documents them).
pub fn embed_snippet(origin: &str, project: i64, site_key: &str) -> String {
    format!(r#"<script src="{origin}/embed.js" data-project="{project}" data-site-key="{site_key}" async></script>"#)
}

/// Origins typed one per line (or separated by spaces or commas).
pub fn parse_sites(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || c == ',').filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// A shape as JSON writes it: `[28,28,1]`.
pub fn shape(dims: &[usize]) -> String {
    format!("[{}]", dims.iter().map(usize::to_string).collect::<Vec<_>>().join(","))
}

fn embed_section(view: &ProjectView) -> Option<El> {
    let site_key = view.site_key.as_deref()?;
    let id = view.id;
    let origin = web_sys::window().and_then(|w| w.location().origin().ok()).unwrap_or_default();
    let snippet = embed_snippet(&origin, id, site_key);
    let sites = &view.settings.sites;
    let editor = el("form")
        .id("sites-form")
        .attr("novalidate", "")
        .child(dom::field(
            "Sites allowed to embed it",
            el("textarea")
                .id("sites")
                .attr("name", "sites")
                .attr("rows", "3")
                .attr("spellcheck", "false")
                .text(&sites.join("\n")),
            Some("Origins like https://blog.example.org, one per line. Browsers on other sites are refused."),
        ))
        .child(el("button").attr("type", "submit").text("Save sites"))
        .on("submit", move |event| {
            event.prevent_default();
            wasm_bindgen_futures::spawn_local(async move {
                dom::clear_field_errors("sites-form");
                let body = SetSites { sites: parse_sites(&dom::value("sites")) };
                match crate::api::put_json::<_, ProjectView>(&format!("/api/projects/{id}/sites"), &body).await {
                    Ok(_) => app::announce("Sites saved"),
                    Err(e) => {
                        let first = e.details_as::<FieldProblems>().and_then(|p| p.fields.into_iter().next());
                        let message = first.map_or_else(|| e.describe(), |f| f.message);
                        dom::field_error("sites", &message);
                    }
                }
            });
        });
    Some(
        el("section")
            .attr("aria-labelledby", "embed-h")
            .child(el("h2").id("embed-h").text("Embed on your site"))
            .child(el("p").text(
                "Only visitors of the sites listed below that embed this key train the project. Paste this into their pages \
                 (more on the ",
            ).child(el("a").attr("href", "/sites").text("site owners' page")).text("):"))
            .child(el("label").attr("for", "embed-snippet").text("Embed snippet"))
            .child(el("textarea").id("embed-snippet").attr("readonly", "").attr("rows", "3").text(&snippet))
            .child(el("p").child(el("span").text("Site key: ")).child(el("code").id("site-key").text(site_key)))
            .child(editor),
    )
}

/// Redraws the live parts from a project view.
fn update(view: &ProjectView) {
    let id = view.id;
    let state = view.state;
    let version = view.version;
    let epochs = f64::from(view.settings.epochs);
    let progress = view.progress;
    if let Some(p) = dom::by_id("project") {
        let _ = p.remove_attribute("aria-busy");
        let _ = p.set_attribute("data-state", state.as_str());
        let _ = p.set_attribute("data-version", &version.to_string());
    }
    let shown = daig_shared::api::project::epoch_shown(view.epoch, view.settings.epochs, state != ProjectState::Draft);
    dom::set_text("epoch", &format!("{shown} of {epochs}"));
    dom::set_text("version", &version.to_string());
    if let Some(bar) = dom::by_id("progress") {
        let _ = bar.set_attribute("value", &format!("{:.4}", progress.clamp(0.0, 1.0)));
        bar.set_text_content(Some(&format!("{:.0}%", progress * 100.0)));
    }
    let metrics = view.metrics.as_slice();
    let train_samples = view.dataset.as_ref().map_or(0.0, |d| d.train_samples as f64);
    let eta = match state {
        ProjectState::Running if view.providers.is_empty() => " · waiting for providers".to_owned(),
        ProjectState::Running => format::eta_secs(metrics, train_samples, epochs).map_or_else(
            || " · estimating time left…".to_owned(),
            |s| format!(" · about {} left", format::duration(s)),
        ),
        ProjectState::Finished => " · done".to_owned(),
        _ => String::new(),
    };
    dom::set_text("progress-text", &format!("{:.0}%{eta}", progress * 100.0));
    let summary = if state == ProjectState::Finished { format::finished_summary(&view.metrics) } else { None };
    dom::set_text("summary", summary.as_deref().unwrap_or(""));

    // Charts.
    let series = |value: fn(&MetricPoint) -> Option<f64>, name: &str, class: &'static str| Series {
        name: name.into(),
        class,
        points: metrics.iter().filter_map(|m| Some((m.version as f64, value(m)?))).collect(),
    };
    let loss = chart::line_chart(
        "Loss",
        "version (updates applied)",
        &[series(|m| m.train_loss, "training", "s1"), series(|m| m.val_loss, "validation", "s2")],
        None,
    );
    let accuracy = chart::line_chart(
        "Validation accuracy",
        "version (updates applied)",
        &[series(|m| m.val_accuracy, "accuracy", "s3")],
        Some((0.0, 1.0)),
    );
    dom::replace("loss-chart", raw_html("div", &loss));
    dom::replace("accuracy-chart", raw_html("div", &accuracy));

    // Providers and throughput.
    let providers = view.providers.as_slice();
    let throughput: f64 = providers.iter().map(|p| p.samples_per_sec).sum();
    dom::set_text(
        "throughput",
        &if providers.is_empty() {
            "no providers".to_owned()
        } else {
            format!("{} samples/s", format::count(throughput.round() as u64))
        },
    );
    dom::replace("providers", providers_table(providers, view));
    dom::replace("dataset-summary", dataset_summary(view.dataset.as_ref()));

    let (state_changed, version_changed, fetch_side) = SEEN.with(|s| {
        let mut s = s.borrow_mut();
        let state_changed = s.state != Some(state);
        let version_changed = s.version != version;
        let due = now_ms() - s.side_fetch_ms > 2000.0 || s.side_fetch_ms == 0.0;
        let fetch_side = state_changed || (version_changed && due);
        s.state = Some(state);
        s.version = version;
        if fetch_side {
            s.side_fetch_ms = now_ms().max(1.0);
        }
        (state_changed, version_changed, fetch_side)
    });
    if state_changed {
        dom::replace("state", state_badge(state));
        dom::replace("actions", actions(id, state));
        dom::replace("downloads", downloads(id, state));
        dom::replace("draft-dataset", draft_dataset(id, state, view.dataset.is_none()));
        if is_terminal(view) {
            dom::set_text("live", "");
        }
        app::announce(&format!("Project is {}", state.as_str()));
    }
    let _ = version_changed;
    // After the downloads are rebuilt: the CSV is the history as it stands now.
    if let Some(link) = dom::by_id("download-metrics") {
        let csv = String::from(js_sys::encode_uri_component(&format::metrics_csv(&view.metrics)));
        let _ = link.set_attribute("href", &format!("data:text/csv;charset=utf-8,{csv}"));
    }
    if fetch_side {
        let generation = app::generation();
        wasm_bindgen_futures::spawn_local(async move { side_data(id, generation).await });
    }
}

fn dataset_summary(dataset: Option<&DatasetSummary>) -> El {
    let Some(dataset) = dataset else {
        return el("span").text("none yet");
    };
    el("span").text(&format!(
        "{} training and {} validation samples of shape {} ({})",
        format::count(u64::try_from(dataset.train_samples).unwrap_or(0)),
        format::count(u64::try_from(dataset.validation_samples).unwrap_or(0)),
        shape(&dataset.sample_shape),
        dataset.format,
    ))
}

/// What a running project with no provider needs: where to send people, ready to copy.
fn waiting_for_providers(view: &ProjectView) -> El {
    let id = view.id;
    let origin = web_sys::window().and_then(|w| w.location().origin().ok()).unwrap_or_default();
    let link = format!("{origin}/contribute?project={id}");
    let mut waiting = el("div").id("waiting").class("waiting").child(
        el("p")
            .child(el("strong").text("Waiting for providers."))
            .child(el("span").text(" Training goes on as soon as one connects.")),
    );
    waiting = if view.site_key.is_some() {
        waiting.child(el("p").text(
            "Its site key lets only its sites' visitors train it: embed the snippet under \"Embed on your site\" in \
             one of them.",
        ))
    } else {
        let copied = link.clone();
        waiting.child(el("p").text("Open this link in a browser with a GPU (this one works too), or share it:")).child(
            el("div")
                .class("row")
                .child(
                    el("input")
                        .id("contribute-link")
                        .attr("readonly", "")
                        .attr("aria-label", "Contribute link")
                        .attr("value", &link),
                )
                .child(el("a").attr("href", &link).attr("target", "_blank").text("Open"))
                .child(el("button").id("copy-contribute-link").attr("type", "button").text("Copy").on(
                    "click",
                    move |_| {
                        if let Some(window) = web_sys::window() {
                            let _ = window.navigator().clipboard().write_text(&copied);
                            dom::set_text("copy-contribute-link", "Copied");
                        }
                    },
                )),
        )
    };
    waiting.child(
        el("p")
            .child(el("span").text("Or run a native provider: "))
            .child(el("code").text(&format!("daig-provider --server {origin} --project {id}"))),
    )
}

fn providers_table(providers: &[LiveProvider], view: &ProjectView) -> El {
    let state = view.state;
    if providers.is_empty() {
        if state == ProjectState::Running {
            return waiting_for_providers(view);
        }
        return el("p").text("No providers: the project is not running.");
    }
    let head = el("tr").children(
        ["Provider", "Backend", "Samples/s", "Contributions", "Checks", "Standing", "Site"]
            .iter()
            .map(|h| el("th").attr("scope", "col").text(h)),
    );
    let rows = providers.iter().map(|p| {
        let (backend, adapter) = (p.backend.as_str(), p.adapter.as_str());
        el("tr")
            .child(el("th").attr("scope", "row").text(&format!("#{}", p.id)))
            .child(el("td").text(&if adapter.is_empty() {
                backend.to_owned()
            } else {
                format!("{backend} ({adapter})")
            }))
            .child(el("td").text(&format!("{:.0}", p.samples_per_sec)))
            .child(el("td").text(&p.contributions_applied.to_string()))
            .child(el("td").text(&format!("{} verified, {} unchecked, {} held", p.verified, p.unchecked, p.held)))
            .child(el("td").text(match p.standing {
                Standing::New => "new: every contribution is checked",
                Standing::Trusted => "trusted: a sample is checked",
            }))
            .child(el("td").text(p.site_key.as_deref().unwrap_or("—")))
    });
    el("div").class("table-wrap").child(
        el("table")
            .id("providers-table")
            .child(el("caption").class("visually-hidden").text("Providers working on the project"))
            .child(el("thead").child(head))
            .child(el("tbody").children(rows)),
    )
}

/// The providers shut out of the project: who, from where, when and why (nothing when none was).
fn shut_out_table(shut_out: &[ShutOutView]) -> El {
    if shut_out.is_empty() {
        return el("div");
    }
    let head = el("tr").children(
        ["Provider", "Backend", "Address", "When", "Why"].iter().map(|h| el("th").attr("scope", "col").text(h)),
    );
    let rows = shut_out.iter().map(|s| {
        el("tr")
            .child(el("th").attr("scope", "row").text(&format!("#{}", s.provider_id)))
            .child(el("td").text(&format!("{} ({})", s.backend, s.adapter)))
            .child(el("td").text(s.address.as_deref().unwrap_or("—")))
            .child(el("td").text(&format::date(s.at_unix)))
            .child(el("td").text(&s.reason))
    });
    el("div")
        .child(el("h3").text("Shut out"))
        .child(el("p").text(
            "A check by recomputation found work of these providers that was not what its lease asked for: that \
             work was not applied, their credit was withdrawn, and they are refused from now on.",
        ))
        .child(
            el("div").class("table-wrap").child(
                el("table")
                    .id("shut-out-table")
                    .child(el("caption").class("visually-hidden").text("Providers shut out of the project"))
                    .child(el("thead").child(head))
                    .child(el("tbody").children(rows)),
            ),
        )
}

/// A lifecycle action's button: its label and class.
fn action_button(action: Action) -> (&'static str, &'static str) {
    match action {
        Action::Start => ("Start training", "primary"),
        Action::Pause => ("Pause", ""),
        Action::Resume => ("Resume", "primary"),
        Action::Cancel => ("Cancel", "danger"),
    }
}

/// The moves a project in `state` allows, by the shared state machine (a missing dataset is the server's to report
/// when Start is pressed).
fn allowed_actions(state: ProjectState) -> impl Iterator<Item = Action> {
    [Action::Start, Action::Pause, Action::Resume, Action::Cancel]
        .into_iter()
        .filter(move |action| action.apply(state, true).is_ok())
}

/// The buttons of the moves the project's state allows.
fn actions(id: i64, state: ProjectState) -> El {
    let button = |action: Action| {
        let (label, class) = action_button(action);
        let name = action.name();
        el("button").attr("type", "button").id(&format!("action-{name}")).class(class).text(label).on(
            "click",
            move |_| {
                if action == Action::Cancel {
                    let confirmed = web_sys::window()
                        .and_then(|w| {
                            w.confirm_with_message("Cancel training for good? A cancelled project cannot be resumed.")
                                .ok()
                        })
                        .unwrap_or(false);
                    if !confirmed {
                        return;
                    }
                }
                wasm_bindgen_futures::spawn_local(async move {
                    dom::clear("project-alert");
                    match crate::api::post_empty::<ProjectView>(&format!("/api/projects/{id}/{name}")).await {
                        Ok(view) => {
                            update(&view);
                            if !is_terminal(&view) && action != Action::Pause {
                                subscribe(id, app::generation());
                            }
                        }
                        Err(e) => show_error("project-alert", &e),
                    }
                });
            },
        )
    };
    el("div").id("actions").class("row").children(allowed_actions(state).map(button))
}

fn downloads(id: i64, state: ProjectState) -> El {
    let list = el("ul").class("downloads");
    let model = if state == ProjectState::Finished {
        el("li").child(
            el("a")
                .id("download-model")
                .class("button primary")
                .attr("href", &format!("/api/projects/{id}/model"))
                .attr("download", &format!("project-{id}.safetensors"))
                .text("Download the trained model (safetensors)"),
        )
    } else {
        el("li").text("The trained model can be downloaded once training finishes.")
    };
    list.child(model)
        .child(
            el("li").child(
                el("a")
                    .id("download-spec")
                    .attr("href", &format!("/api/projects/{id}/model/spec"))
                    .attr("download", &format!("project-{id}-model.json"))
                    .text("Model spec (DAIG JSON)"),
            ),
        )
        .child(
            el("li").child(
                el("a")
                    .id("download-metrics")
                    .attr("href", "data:text/csv;charset=utf-8,")
                    .attr("download", &format!("project-{id}-metrics.csv"))
                    .text("Metrics (CSV)"),
            ),
        )
}

fn draft_dataset(id: i64, state: ProjectState, missing: bool) -> El {
    if state != ProjectState::Draft {
        return el("div").id("draft-dataset");
    }
    let title = if missing { "Upload the dataset" } else { "Replace the dataset" };
    el("div").id("draft-dataset").child(el("h3").text(title)).child(super::dataset::form()).child(
        el("button").attr("type", "button").id("upload-dataset").text("Upload").on("click", move |_| {
            wasm_bindgen_futures::spawn_local(async move {
                if super::dataset::upload(id).await.is_ok() {
                    app::announce("Dataset stored");
                    if let Ok(view) = crate::api::get_json::<ProjectView>(&format!("/api/projects/{id}")).await {
                        update(&view);
                    }
                }
            });
        }),
    )
}

/// Credits and checkpoints, fetched when the version moves (at most every 2 s) or the state changes.
async fn side_data(id: i64, generation: u64) {
    let (credits, checkpoints) = (
        crate::api::get_json::<ProjectCredits>(&format!("/api/projects/{id}/credits")).await,
        crate::api::get_json::<CheckpointList>(&format!("/api/projects/{id}/checkpoints")).await,
    );
    if !app::is_current(generation) {
        return;
    }
    if let Ok(c) = credits {
        dom::replace("shut-out", shut_out_table(&c.shut_out));
        let providers = c.providers.len();
        dom::set_text(
            "credits",
            &format!(
                "{} samples in {} contributions from {} provider{}",
                format::count(u64::try_from(c.samples).unwrap_or(0)),
                format::count(u64::try_from(c.contributions).unwrap_or(0)),
                providers,
                if providers == 1 { "" } else { "s" }
            ),
        );
    }
    if let Ok(c) = checkpoints {
        let list = c.checkpoints;
        let content = if list.is_empty() {
            el("p").text("No checkpoints yet.")
        } else {
            el("div").child(el("h3").text("Checkpoints")).child(el("ul").class("downloads").children(
                list.iter().rev().map(|cp| {
                    let version = cp.version;
                    el("li").child(
                        el("a")
                            .class("checkpoint")
                            .attr("href", &format!("/api/projects/{id}/checkpoints/{version}"))
                            .attr("download", &format!("project-{id}-v{version}.safetensors"))
                            .text(&format!(
                                "Version {version} (epoch {}, {})",
                                cp.epoch,
                                format::bytes(cp.size_bytes as f64)
                            )),
                    )
                }),
            ))
        };
        dom::replace("checkpoints", content);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_embed_snippet_names_the_script_and_key() {
        assert_eq!(
            super::embed_snippet("https://daig.example", 7, "site_abc"),
            r#"<script src="https://daig.example/embed.js" data-project="7" data-site-key="site_abc" async></script>"#
        );
    }

    #[test]
    fn shapes_read_as_json_writes_them() {
        assert_eq!(super::shape(&[784]), "[784]");
        assert_eq!(super::shape(&[28, 28, 1]), "[28,28,1]");
    }

    #[test]
    fn each_state_shows_the_buttons_of_its_moves() {
        use daig_shared::api::project::ProjectState;
        let allowed = |state| super::allowed_actions(state).map(|a| super::action_button(a).0).collect::<Vec<_>>();
        assert_eq!(allowed(ProjectState::Draft), ["Start training"]);
        assert_eq!(allowed(ProjectState::Running), ["Pause", "Cancel"]);
        assert_eq!(allowed(ProjectState::Paused), ["Resume", "Cancel"]);
        assert!(allowed(ProjectState::Finished).is_empty() && allowed(ProjectState::Cancelled).is_empty());
    }

    #[test]
    fn sites_are_read_one_per_line_or_separated() {
        assert_eq!(
            super::parse_sites(" https://a.example\nhttps://b.example, http://c.example:8080 "),
            ["https://a.example", "https://b.example", "http://c.example:8080"]
        );
    }
}
