//! The dashboard's pages. Each `render` builds its page into `<main>`, then fills it from the API; answers that
//! arrive after the user has moved on are dropped (see [`crate::app::is_current`]).

pub mod auth;
pub mod dataset;
pub mod landing;
pub mod new_project;
pub mod project;
pub mod projects;
pub mod tokens;

use web_sys::Element;

use crate::api::ApiError;
use crate::dom::{self, El, el};

/// Puts a page with heading `title` into `main`, names the document after it and, after a navigation inside the
/// dashboard, moves focus to the heading so that screen readers announce the new page (on the first page, focus
/// stays at the top, where the skip link is the first stop).
pub fn page(main: &Element, title: &str, content: El) {
    dom::document().set_title(&format!("{title} · DAIG"));
    let heading = el("h1").id("page-title").attr("tabindex", "-1").text(title);
    let wrapper = el("div").class("page").child(heading).child(content);
    main.replace_children_with_node_1(&wrapper.0);
    if crate::app::navigated() {
        dom::focus("page-title");
    }
}

/// The page for unknown paths.
pub fn not_found(main: &Element) {
    page(
        main,
        "Page not found",
        el("p")
            .text("There is no such page. ")
            .child(el("a").attr("href", "/").attr("data-link", "").text("Your projects")),
    );
}

/// An empty alert box with `id`, filled by [`show_error`]; focusable, so that a failed submit can move focus
/// (and the view) to it.
pub fn alert_box(id: &str) -> El {
    el("div").id(id).class("alert").attr("role", "alert").attr("tabindex", "-1")
}

/// Shows `error` in the alert box `id`.
pub fn show_error(id: &str, error: &ApiError) {
    dom::replace(id, el("p").text(&error.describe()));
}

/// Shows `message` in the alert box `id`.
pub fn show_message(id: &str, message: &str) {
    dom::replace(id, el("p").text(message));
}

/// A link inside the dashboard.
pub fn link(href: &str, text: &str) -> El {
    el("a").attr("href", href).attr("data-link", "").text(text)
}

/// A `<progress>` bar labelled `label`, `value` from 0 to 1.
pub fn progress_bar(id: &str, label: &str, value: f64) -> El {
    el("progress")
        .id(id)
        .attr("max", "1")
        .attr("value", &format!("{:.4}", value.clamp(0.0, 1.0)))
        .attr("aria-label", label)
        .text(&format!("{:.0}%", value * 100.0))
}
