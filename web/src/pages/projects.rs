//! `/`: the user's projects with their state and progress.

use daig_shared::api::project::{ProjectList, ProjectState, ProjectSummary};
use web_sys::Element;

use super::{alert_box, link, page, progress_bar, show_error};
use crate::app;
use crate::dom::{self, El, el};
use crate::format;

pub fn render(main: &Element) {
    let content = el("div")
        .child(el("p").child(link("/projects/new", "New project").class("button primary")))
        .child(alert_box("projects-alert"))
        .child(el("div").id("project-list").attr("aria-busy", "true").text("Loading…"));
    page(main, "Projects", content);
    let generation = app::generation();
    wasm_bindgen_futures::spawn_local(async move {
        let result = crate::api::get_json::<ProjectList>("/api/projects").await;
        if !app::is_current(generation) {
            return;
        }
        match result {
            Ok(list) => dom::replace("project-list", table(&list.projects)),
            Err(e) => {
                dom::clear("project-list");
                show_error("projects-alert", &e);
            }
        }
        if let Some(list) = dom::by_id("project-list") {
            let _ = list.remove_attribute("aria-busy");
        }
    });
}

fn table(projects: &[ProjectSummary]) -> El {
    if projects.is_empty() {
        return el("p").text("No projects yet. Create one to train a model on volunteers' GPUs.");
    }
    let head = el("tr").children(
        ["Project", "State", "Epoch", "Progress", "Created"].iter().map(|h| el("th").attr("scope", "col").text(h)),
    );
    let rows = projects.iter().map(|p| {
        let (id, name, progress) = (p.id, p.name.as_str(), p.progress);
        el("tr")
            .child(el("th").attr("scope", "row").child(link(&format!("/projects/{id}"), name)))
            .child(el("td").child(state_badge(p.state)))
            .child(el("td").text(&p.epoch.to_string()))
            .child(
                el("td")
                    .child(progress_bar(&format!("progress-{id}"), &format!("Progress of {name}"), progress))
                    .child(el("span").class("pct").text(&format!(" {:.0}%", progress * 100.0))),
            )
            .child(el("td").text(&format::date(p.created_at_unix)))
    });
    el("div").class("table-wrap").child(
        el("table")
            .id("projects-table")
            .child(el("caption").class("visually-hidden").text("Your projects"))
            .child(el("thead").child(head))
            .child(el("tbody").children(rows)),
    )
}

/// A project's state as a coloured badge (the word is the content; colour only repeats it).
pub fn state_badge(state: ProjectState) -> El {
    let state = state.as_str();
    el("span").class(&format!("badge state-{state}")).text(state)
}
