//! The shell around every page, the client-side router and the logged-in user.
//!
//! Routes: `/` (projects), `/login`, `/signup`, `/tokens`, `/projects/new`, `/projects/{id}`. The server answers
//! every one of them with `index.html`; links inside the dashboard change the history without reloading.

use std::cell::{Cell, RefCell};

use daig_shared::api::accounts::{Me, UserView};
use wasm_bindgen::JsCast;
use web_sys::{Element, EventSource, HtmlAnchorElement, MouseEvent};

use crate::dom::{self, el};
use crate::{api, pages};

/// A page of the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Projects,
    Login,
    Signup,
    Tokens,
    NewProject,
    Project(i64),
    NotFound,
}

impl Route {
    /// The route of a URL path.
    pub fn parse(path: &str) -> Route {
        let path = path.trim_end_matches('/');
        match path {
            "" => Route::Projects,
            "/login" => Route::Login,
            "/signup" => Route::Signup,
            "/tokens" => Route::Tokens,
            "/projects/new" => Route::NewProject,
            _ => match path.strip_prefix("/projects/").map(str::parse::<i64>) {
                Some(Ok(id)) if id > 0 => Route::Project(id),
                _ => Route::NotFound,
            },
        }
    }

    /// Whether the page needs a logged-in user.
    pub fn needs_login(self) -> bool {
        !matches!(self, Route::Login | Route::Signup | Route::NotFound)
    }
}

thread_local! {
    /// The logged-in user (`UserView`), `None` when logged out.
    static USER: RefCell<Option<UserView>> = const { RefCell::new(None) };
    /// Bumped on every navigation, so that answers for a page that is gone are dropped.
    static GENERATION: Cell<u64> = const { Cell::new(0) };
    /// Whether the user has moved from page to page (focus then moves to the new page's heading).
    static NAVIGATED: Cell<bool> = const { Cell::new(false) };
    /// The project page's live updates, closed when the page changes.
    static EVENTS: RefCell<Option<EventSource>> = const { RefCell::new(None) };
}

/// The logged-in user.
pub fn user() -> Option<UserView> {
    USER.with(|u| u.borrow().clone())
}

pub fn set_user(user: Option<UserView>) {
    USER.with(|u| *u.borrow_mut() = user);
    render_nav();
}

/// The current page's generation.
pub fn generation() -> u64 {
    GENERATION.with(Cell::get)
}

/// Whether the page of `generation` is still shown.
pub fn is_current(generation: u64) -> bool {
    self::generation() == generation
}

/// Keeps `source` open while the current page is shown.
pub fn hold_events(source: EventSource) {
    EVENTS.with(|e| {
        if let Some(old) = e.borrow_mut().replace(source) {
            old.close();
        }
    });
}

/// Closes the page's live updates.
pub fn close_events() {
    EVENTS.with(|e| {
        if let Some(old) = e.borrow_mut().take() {
            old.close();
        }
    });
}

/// Builds the shell and shows the page of the current URL.
pub fn start() {
    let document = dom::document();
    let Some(body) = document.body() else { return };
    let shell = el("div")
        .id("app")
        .child(el("a").class("skip-link").attr("href", "#main").text("Skip to content"))
        .child(
            el("header").class("top").child(
                el("nav")
                    .attr("aria-label", "Main")
                    .child(el("a").class("brand").attr("href", "/").attr("data-link", "").text("DAIG"))
                    .child(el("ul").id("nav-links")),
            ),
        )
        .child(el("main").id("main").attr("tabindex", "-1"))
        .child(el("div").id("announce").class("visually-hidden").attr("role", "status").attr("aria-live", "polite"));
    body.replace_children_with_node_1(&shell.0);

    // Links inside the dashboard navigate without a reload.
    dom::listen(&document, "click", |event| {
        let Some(mouse) = event.dyn_ref::<MouseEvent>() else { return };
        if mouse.button() != 0 || mouse.ctrl_key() || mouse.meta_key() || mouse.shift_key() || mouse.alt_key() {
            return;
        }
        let Some(anchor) = event
            .target()
            .and_then(|t| t.dyn_into::<Element>().ok())
            .and_then(|t| t.closest("a[data-link]").ok().flatten())
            .and_then(|a| a.dyn_into::<HtmlAnchorElement>().ok())
        else {
            return;
        };
        let href = anchor.get_attribute("href").unwrap_or_default();
        if href.starts_with('/') {
            event.prevent_default();
            navigate(&href);
        }
    });
    if let Some(window) = web_sys::window() {
        dom::listen(&window, "popstate", |_| {
            NAVIGATED.with(|n| n.set(true));
            render_current();
        });
    }
    wasm_bindgen_futures::spawn_local(async {
        match api::get_json::<Me>("/api/me").await {
            Ok(me) => USER.with(|u| *u.borrow_mut() = Some(me.user)),
            Err(_) => USER.with(|u| *u.borrow_mut() = None),
        }
        render_current();
    });
}

/// Whether the user has navigated inside the dashboard since it loaded.
pub fn navigated() -> bool {
    NAVIGATED.with(Cell::get)
}

/// Goes to `path` (a dashboard route, possibly with a query) and shows it.
pub fn navigate(path: &str) {
    NAVIGATED.with(|n| n.set(true));
    if let Some(history) = web_sys::window().and_then(|w| w.history().ok()) {
        let _ = history.push_state_with_url(&wasm_bindgen::JsValue::NULL, "", Some(path));
    }
    render_current();
}

/// Replaces the current history entry with `path` and shows it.
pub fn redirect(path: &str) {
    if let Some(history) = web_sys::window().and_then(|w| w.history().ok()) {
        let _ = history.replace_state_with_url(&wasm_bindgen::JsValue::NULL, "", Some(path));
    }
    render_current();
}

/// The current URL's path and query.
fn location() -> (String, String) {
    let location = web_sys::window().map(|w| w.location());
    let path = location.as_ref().and_then(|l| l.pathname().ok()).unwrap_or_else(|| "/".into());
    let search = location.as_ref().and_then(|l| l.search().ok()).unwrap_or_default();
    (path, search)
}

/// A query parameter of the current URL.
pub fn query_param(name: &str) -> Option<String> {
    let (_, search) = location();
    let params = web_sys::UrlSearchParams::new_with_str(&search).ok()?;
    params.get(name)
}

/// Shows the page of the current URL.
pub fn render_current() {
    GENERATION.with(|g| g.set(g.get() + 1));
    close_events();
    render_nav();
    let (path, _) = location();
    let route = Route::parse(&path);
    let Some(main) = dom::by_id("main") else { return };
    // A visitor who is not signed in is told what DAIG is, rather than sent to a log-in form.
    if route == Route::Projects && user().is_none() {
        pages::landing::render(&main);
        return;
    }
    if route.needs_login() && user().is_none() {
        let next = js_sys::encode_uri_component(&path);
        redirect(&format!("/login?next={next}"));
        return;
    }
    if matches!(route, Route::Login | Route::Signup) && user().is_some() {
        redirect("/");
        return;
    }
    match route {
        Route::Projects => pages::projects::render(&main),
        Route::Login => pages::auth::render_login(&main),
        Route::Signup => pages::auth::render_signup(&main),
        Route::Tokens => pages::tokens::render(&main),
        Route::NewProject => pages::new_project::render(&main),
        Route::Project(id) => pages::project::render(&main, id),
        Route::NotFound => pages::not_found(&main),
    }
}

/// The navigation links for the user (or for a visitor).
fn render_nav() {
    let (path, _) = location();
    let link = |href: &str, text: &str| {
        let current = path == href;
        el("li").child(el("a").attr("href", href).attr("data-link", "").flag("aria-current", current).text(text))
    };
    let links = match user() {
        Some(user) => el("ul")
            .id("nav-links")
            .child(link("/", "Projects"))
            .child(link("/projects/new", "New project"))
            .child(link("/tokens", "API tokens"))
            .child(el("li").class("who").text(&user.username))
            .child(el("li").child(el("button").id("logout").attr("type", "button").text("Log out").on(
                "click",
                |_| {
                    wasm_bindgen_futures::spawn_local(async {
                        let _ = api::delete("/api/session").await;
                        set_user(None);
                        navigate("/login");
                        announce("Logged out");
                    });
                },
            ))),
        None => el("ul").id("nav-links").child(link("/login", "Log in")).child(link("/signup", "Sign up")),
    };
    if let Some(old) = dom::by_id("nav-links") {
        old.replace_with_with_node_1(&links.0).ok();
    }
}

/// Says `text` to screen readers through the polite live region.
pub fn announce(text: &str) {
    dom::set_text("announce", "");
    dom::set_text("announce", text);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_parsed() {
        assert_eq!(Route::parse("/"), Route::Projects);
        assert_eq!(Route::parse("/projects/12"), Route::Project(12));
        assert_eq!(Route::parse("/projects/new"), Route::NewProject);
        assert_eq!(Route::parse("/projects/x"), Route::NotFound);
        assert_eq!(Route::parse("/tokens/"), Route::Tokens);
        assert!(!Route::Login.needs_login() && Route::Project(1).needs_login());
    }
}
