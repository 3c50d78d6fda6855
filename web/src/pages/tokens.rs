//! `/tokens`: the user's API tokens for the CLI and scripts: create (shown once), list, revoke.

use daig_shared::api::accounts::{CreateToken, CreatedToken, TokenList, TokenView};
use web_sys::Element;

use super::{alert_box, page, show_error};
use crate::api::FieldProblems;
use crate::app;
use crate::dom::{self, El, el, field, input};
use crate::format;

pub fn render(main: &Element) {
    let form = el("form")
        .id("token-form")
        .attr("novalidate", "")
        .child(el("h2").text("New token"))
        .child(field(
            "Name",
            input("token-name", "text").flag("required", true),
            Some("What it is for, e.g. laptop CLI"),
        ))
        .child(field(
            "Lifetime in days",
            input("token-days", "number").attr("min", "1").attr("step", "1"),
            Some("Empty: the longest the server allows"),
        ))
        .child(el("button").attr("type", "submit").class("primary").text("Create token"))
        .on("submit", |event| {
            event.prevent_default();
            wasm_bindgen_futures::spawn_local(create());
        });
    let content = el("div")
        .child(el("p").text(
            "Tokens let the daig CLI and scripts act as you: send one as Authorization: Bearer <token>. \
             A token is shown once, when it is created.",
        ))
        .child(alert_box("tokens-alert"))
        .child(form)
        .child(el("div").id("new-token"))
        .child(el("h2").text("Live tokens"))
        .child(el("div").id("token-list").attr("aria-busy", "true").text("Loading…"));
    page(main, "API tokens", content);
    let generation = app::generation();
    wasm_bindgen_futures::spawn_local(async move { load(generation).await });
}

async fn load(generation: u64) {
    let result = crate::api::get_json::<TokenList>("/api/tokens").await;
    if !app::is_current(generation) {
        return;
    }
    match result {
        Ok(list) => dom::replace("token-list", table(&list.tokens)),
        Err(e) => show_error("tokens-alert", &e),
    }
    if let Some(list) = dom::by_id("token-list") {
        let _ = list.remove_attribute("aria-busy");
    }
}

fn table(tokens: &[TokenView]) -> El {
    if tokens.is_empty() {
        return el("p").text("No live tokens.");
    }
    let head = el("tr").children(
        ["Name", "Starts with", "Created", "Expires", "Last used", ""]
            .iter()
            .map(|h| el("th").attr("scope", "col").text(h)),
    );
    let rows = tokens.iter().map(|t| {
        let id = t.id;
        let name = t.name.clone();
        let last_used = t.last_used_at_unix.map_or_else(|| "never".to_owned(), format::date);
        el("tr")
            .child(el("th").attr("scope", "row").text(&name))
            .child(el("td").child(el("code").text(&t.prefix)))
            .child(el("td").text(&format::date(t.created_at_unix)))
            .child(el("td").text(&format::date(t.expires_at_unix)))
            .child(el("td").text(&last_used))
            .child(
                el("td").child(
                    el("button")
                        .attr("type", "button")
                        .class("danger")
                        .attr("aria-label", &format!("Revoke token {name}"))
                        .text("Revoke")
                        .on("click", move |_| {
                            let name = name.clone();
                            wasm_bindgen_futures::spawn_local(async move {
                                match crate::api::delete(&format!("/api/tokens/{id}")).await {
                                    Ok(_) => {
                                        app::announce(&format!("Token {name} revoked"));
                                        load(app::generation()).await;
                                    }
                                    Err(e) => show_error("tokens-alert", &e),
                                }
                            });
                        }),
                ),
            )
    });
    el("div").class("table-wrap").child(
        el("table")
            .child(el("caption").class("visually-hidden").text("Live API tokens"))
            .child(el("thead").child(head))
            .child(el("tbody").children(rows)),
    )
}

async fn create() {
    dom::clear_field_errors("token-form");
    dom::clear("tokens-alert");
    let mut body = CreateToken { name: dom::value("token-name"), expires_in_secs: None };
    let days = dom::value("token-days");
    if !days.trim().is_empty() {
        match days.trim().parse::<u64>() {
            Ok(d) if d > 0 => body.expires_in_secs = Some(d * 86_400),
            _ => {
                dom::field_error("token-days", "must be a whole number of days, at least 1");
                return;
            }
        }
    }
    match crate::api::post_json::<_, CreatedToken>("/api/tokens", &body).await {
        Ok(created) => {
            dom::replace(
                "new-token",
                el("div")
                    .class("notice")
                    .attr("role", "status")
                    .child(
                        el("p").text(&format!("Token {} created. Copy it now: it is not shown again.", created.name)),
                    )
                    .child(el("label").attr("for", "created-token").text("Token"))
                    .child(input("created-token", "text").attr("readonly", "").attr("value", &created.token)),
            );
            dom::set_value("token-name", "");
            dom::set_value("token-days", "");
            load(app::generation()).await;
        }
        Err(e) => {
            for f in e.details_as::<FieldProblems>().unwrap_or_default().fields {
                let id = if f.field == "expires_in_secs" { "token-days" } else { "token-name" };
                dom::field_error(id, &f.message);
            }
            show_error("tokens-alert", &e);
        }
    }
}
