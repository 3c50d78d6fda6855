//! `/tokens`: the user's API tokens for the CLI and scripts: create (shown once), list, revoke.

use serde_json::{Value, json};
use web_sys::Element;

use super::{alert_box, page, show_error};
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
    let result = crate::api::get("/api/tokens").await;
    if !app::is_current(generation) {
        return;
    }
    match result {
        Ok(list) => dom::replace("token-list", table(list["tokens"].as_array().map_or(&[][..], Vec::as_slice))),
        Err(e) => show_error("tokens-alert", &e),
    }
    if let Some(list) = dom::by_id("token-list") {
        let _ = list.remove_attribute("aria-busy");
    }
}

fn table(tokens: &[Value]) -> El {
    if tokens.is_empty() {
        return el("p").text("No live tokens.");
    }
    let head = el("tr").children(
        ["Name", "Starts with", "Created", "Expires", "Last used", ""]
            .iter()
            .map(|h| el("th").attr("scope", "col").text(h)),
    );
    let rows = tokens.iter().map(|t| {
        let id = t["id"].as_i64().unwrap_or(0);
        let name = t["name"].as_str().unwrap_or("").to_owned();
        let last_used = t["last_used_at_unix"].as_i64().map_or_else(|| "never".to_owned(), format::date);
        el("tr")
            .child(el("th").attr("scope", "row").text(&name))
            .child(el("td").child(el("code").text(t["prefix"].as_str().unwrap_or(""))))
            .child(el("td").text(&format::date(t["created_at_unix"].as_i64().unwrap_or(0))))
            .child(el("td").text(&format::date(t["expires_at_unix"].as_i64().unwrap_or(0))))
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
    let mut body = json!({"name": dom::value("token-name")});
    let days = dom::value("token-days");
    if !days.trim().is_empty() {
        match days.trim().parse::<u64>() {
            Ok(d) if d > 0 => body["expires_in_secs"] = json!(d * 86_400),
            _ => {
                dom::field_error("token-days", "must be a whole number of days, at least 1");
                return;
            }
        }
    }
    match crate::api::post("/api/tokens", &body).await {
        Ok(created) => {
            let token = created["token"].as_str().unwrap_or("").to_owned();
            dom::replace(
                "new-token",
                el("div")
                    .class("notice")
                    .attr("role", "status")
                    .child(el("p").text(&format!(
                        "Token {} created. Copy it now: it is not shown again.",
                        created["name"].as_str().unwrap_or("")
                    )))
                    .child(el("label").attr("for", "created-token").text("Token"))
                    .child(input("created-token", "text").attr("readonly", "").attr("value", &token)),
            );
            dom::set_value("token-name", "");
            dom::set_value("token-days", "");
            load(app::generation()).await;
        }
        Err(e) => {
            for f in e.details["fields"].as_array().into_iter().flatten() {
                let id = match f["field"].as_str() {
                    Some("expires_in_secs") => "token-days",
                    _ => "token-name",
                };
                dom::field_error(id, f["message"].as_str().unwrap_or(""));
            }
            show_error("tokens-alert", &e);
        }
    }
}
