//! DAIG's requestor dashboard: Rust compiled to wasm with trunk and served by the server at `/`.
//!
//! - [`app`]: the shell (skip link, navigation, the live region), the client-side router and the session.
//! - [`pages`]: one module per page: log-in and sign-up, projects, the new-project form with the model editor,
//!   a project's live page, API tokens.
//! - [`api`]: fetch and upload against the server's API with the session cookie and the CSRF header, reading
//!   answers as `daig_shared::api`'s types.
//! - [`model`], [`chart`], [`format`]: pure logic (the model editor's rows and the server's errors by layer,
//!   SVG charts, estimates and formats), tested natively with `cargo test -p daig-web`.
//! - [`dom`]: the element builder.
//!
//! The contribute page, the embed script and the site-owner pages are separate static files (`web/static`),
//! copied beside this build into `web/dist`.

pub mod api;
pub mod app;
pub mod chart;
pub mod dom;
pub mod format;
pub mod model;
pub mod pages;

/// The dashboard's entry point, called by `main` in the browser.
pub fn start() {
    app::start();
}
