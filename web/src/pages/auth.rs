//! Log-in and sign-up.

use daig_shared::api::accounts::{LogIn, SessionView, SignUp, UserView};
use web_sys::Element;

use super::{alert_box, link, page, show_error};
use crate::api::{ApiError, Conflict, FieldProblems};
use crate::app;
use crate::dom::{self, el, field, input};

fn after_login() {
    let next = app::query_param("next").filter(|n| n.starts_with('/') && !n.starts_with("//"));
    app::navigate(next.as_deref().unwrap_or("/"));
}

/// `/login`: username or e-mail and password.
pub fn render_login(main: &Element) {
    let form = el("form")
        .id("login-form")
        .attr("novalidate", "")
        .child(alert_box("login-alert"))
        .child(field(
            "Username or e-mail",
            input("login", "text").attr("autocomplete", "username").flag("required", true),
            None,
        ))
        .child(field(
            "Password",
            input("password", "password").attr("autocomplete", "current-password").flag("required", true),
            None,
        ))
        .child(el("button").attr("type", "submit").class("primary").text("Log in"))
        .on("submit", |event| {
            event.prevent_default();
            wasm_bindgen_futures::spawn_local(log_in());
        });
    let content =
        el("div").class("narrow").child(form).child(el("p").text("No account yet? ").child(link("/signup", "Sign up")));
    page(main, "Log in", content);
}

async fn log_in() {
    dom::clear_field_errors("login-form");
    dom::clear("login-alert");
    let body = LogIn { login: dom::value("login"), password: dom::value("password") };
    match crate::api::post_json::<_, SessionView>("/api/session", &body).await {
        Ok(session) => {
            app::set_user(Some(session.user));
            app::announce("Logged in");
            after_login();
        }
        Err(e) => show_error("login-alert", &e),
    }
}

/// `/signup`: username, e-mail and password; logs in on success.
pub fn render_signup(main: &Element) {
    let form = el("form")
        .id("signup-form")
        .attr("novalidate", "")
        .child(alert_box("signup-alert"))
        .child(field(
            "Username",
            input("username", "text").attr("autocomplete", "username").flag("required", true),
            Some("Letters, digits, '-' and '_'"),
        ))
        .child(field("E-mail", input("email", "email").attr("autocomplete", "email").flag("required", true), None))
        .child(field(
            "Password",
            input("password", "password")
                .attr("autocomplete", "new-password")
                .attr("minlength", "8")
                .flag("required", true),
            Some("At least 8 characters"),
        ))
        .child(el("button").attr("type", "submit").class("primary").text("Sign up"))
        .on("submit", |event| {
            event.prevent_default();
            wasm_bindgen_futures::spawn_local(sign_up());
        });
    let content =
        el("div").class("narrow").child(form).child(el("p").text("Have an account? ").child(link("/login", "Log in")));
    page(main, "Sign up", content);
}

async fn sign_up() {
    dom::clear_field_errors("signup-form");
    dom::clear("signup-alert");
    let username = dom::value("username");
    let password = dom::value("password");
    let body = SignUp { username: username.clone(), email: dom::value("email"), password: password.clone() };
    if let Err(e) = crate::api::post_json::<_, UserView>("/api/users", &body).await {
        show_field_errors(&e);
        show_error("signup-alert", &e);
        return;
    }
    match crate::api::post_json::<_, SessionView>("/api/session", &LogIn { login: username, password }).await {
        Ok(session) => {
            app::set_user(Some(session.user));
            app::announce("Account created; logged in");
            app::navigate("/");
        }
        Err(e) => show_error("signup-alert", &e),
    }
}

/// Puts each `details.fields` entry (and a conflict's `details.field`) beside its input.
fn show_field_errors(e: &ApiError) {
    for f in e.details_as::<FieldProblems>().unwrap_or_default().fields {
        dom::field_error(&f.field, &f.message);
    }
    if let Some(conflict) = e.details_as::<Conflict>() {
        dom::field_error(&conflict.field, &e.message);
    }
}
