//! A small element builder over web-sys, so that pages read as trees: `el("p").class("hint").text("…")`.
//!
//! Event handlers are `Closure`s handed to the browser and forgotten: they live as long as the page, and a page
//! makes a handful per navigation, which is cheaper than tracking them.

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{Document, Element, Event, HtmlElement, HtmlInputElement, HtmlSelectElement, HtmlTextAreaElement};

/// The page's document.
///
/// # Panics
/// Outside a browser window.
pub fn document() -> Document {
    web_sys::window().and_then(|w| w.document()).expect("a browser document")
}

/// The element with `id`, if present.
pub fn by_id(id: &str) -> Option<Element> {
    document().get_element_by_id(id)
}

/// An element under construction.
pub struct El(pub Element);

/// A new element named `tag`.
///
/// # Panics
/// When the browser refuses to create it (an invalid tag name).
pub fn el(tag: &str) -> El {
    El(document().create_element(tag).expect("a valid tag"))
}

/// A new SVG-free element holding `html` (only for markup this crate generates from numbers and escaped text).
pub fn raw_html(tag: &str, html: &str) -> El {
    let e = el(tag);
    e.0.set_inner_html(html);
    e
}

impl El {
    pub fn attr(self, name: &str, value: &str) -> Self {
        let _ = self.0.set_attribute(name, value);
        self
    }

    /// Sets the attribute only when `on`, for boolean attributes such as `disabled` or `required`.
    pub fn flag(self, name: &str, on: bool) -> Self {
        if on { self.attr(name, "") } else { self }
    }

    pub fn id(self, id: &str) -> Self {
        self.attr("id", id)
    }

    pub fn class(self, class: &str) -> Self {
        self.attr("class", class)
    }

    /// Appends a text node (never parsed as markup).
    pub fn text(self, text: &str) -> Self {
        let _ = self.0.append_with_str_1(text);
        self
    }

    pub fn child(self, child: El) -> Self {
        let _ = self.0.append_child(&child.0);
        self
    }

    pub fn child_opt(self, child: Option<El>) -> Self {
        match child {
            Some(child) => self.child(child),
            None => self,
        }
    }

    pub fn children(self, children: impl IntoIterator<Item = El>) -> Self {
        for child in children {
            let _ = self.0.append_child(&child.0);
        }
        self
    }

    /// Calls `handler` on every `event`.
    pub fn on(self, event: &str, handler: impl FnMut(Event) + 'static) -> Self {
        listen(&self.0, event, handler);
        self
    }

    /// The element, as an `HtmlElement`.
    pub fn html(&self) -> HtmlElement {
        self.0.clone().unchecked_into()
    }
}

/// Adds a listener that lives as long as the page.
pub fn listen(target: &web_sys::EventTarget, event: &str, handler: impl FnMut(Event) + 'static) {
    let closure = Closure::<dyn FnMut(Event)>::new(handler);
    let _ = target.add_event_listener_with_callback(event, closure.as_ref().unchecked_ref());
    closure.forget();
}

/// Replaces the children of the element `id` with `content`; nothing when it is gone (the page changed).
pub fn replace(id: &str, content: El) {
    if let Some(target) = by_id(id) {
        target.replace_children_with_node_1(&content.0);
    }
}

/// Empties the element `id`.
pub fn clear(id: &str) {
    if let Some(target) = by_id(id) {
        target.replace_children_with_node_0();
    }
}

/// Sets the text of the element `id`.
pub fn set_text(id: &str, text: &str) {
    if let Some(target) = by_id(id) {
        target.set_text_content(Some(text));
    }
}

/// The value of the input, select or textarea `id` (empty when missing).
pub fn value(id: &str) -> String {
    let Some(e) = by_id(id) else { return String::new() };
    if let Some(input) = e.dyn_ref::<HtmlInputElement>() {
        input.value()
    } else if let Some(select) = e.dyn_ref::<HtmlSelectElement>() {
        select.value()
    } else if let Some(area) = e.dyn_ref::<HtmlTextAreaElement>() {
        area.value()
    } else {
        String::new()
    }
}

/// Sets the value of the input, select or textarea `id`.
pub fn set_value(id: &str, v: &str) {
    let Some(e) = by_id(id) else { return };
    if let Some(input) = e.dyn_ref::<HtmlInputElement>() {
        input.set_value(v);
    } else if let Some(select) = e.dyn_ref::<HtmlSelectElement>() {
        select.set_value(v);
    } else if let Some(area) = e.dyn_ref::<HtmlTextAreaElement>() {
        area.set_value(v);
    }
}

/// Whether the checkbox or radio `id` is checked.
pub fn checked(id: &str) -> bool {
    by_id(id).and_then(|e| e.dyn_into::<HtmlInputElement>().ok()).is_some_and(|i| i.checked())
}

/// The first file chosen in the file input `id`.
pub fn file(id: &str) -> Option<web_sys::File> {
    by_id(id).and_then(|e| e.dyn_into::<HtmlInputElement>().ok()).and_then(|i| i.files()).and_then(|f| f.get(0))
}

/// Moves keyboard focus to the element `id` (headings get `tabindex="-1"` for this).
pub fn focus(id: &str) {
    if let Some(e) = by_id(id).and_then(|e| e.dyn_into::<HtmlElement>().ok()) {
        let _ = e.focus();
    }
}

/// Escapes text for the markup this crate generates (SVG charts).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A labelled form field: `<div class="field"><label for=id>label</label>input<small id=id-hint>hint</small>
/// <p id=id-error role=alert></p></div>`; the input is described by its hint and error.
pub fn field(label: &str, input: El, hint: Option<&str>) -> El {
    let id = input.0.id();
    let describedby = format!("{id}-hint {id}-error");
    let input = input.attr("aria-describedby", &describedby);
    el("div")
        .class("field")
        .child(el("label").attr("for", &id).text(label))
        .child(input)
        .child_opt(hint.map(|h| el("small").id(&format!("{id}-hint")).class("hint").text(h)))
        .child(el("p").id(&format!("{id}-error")).class("error").attr("aria-live", "polite"))
}

/// An `<input>` with `id`, `name` and `type`.
pub fn input(id: &str, kind: &str) -> El {
    el("input").id(id).attr("name", id).attr("type", kind)
}

/// A `<select>` with `id` and `(value, label)` options, `selected` chosen.
pub fn select(id: &str, options: &[(&str, &str)], selected: &str) -> El {
    let mut s = el("select").id(id).attr("name", id);
    for (value, label) in options {
        s = s.child(el("option").attr("value", value).flag("selected", *value == selected).text(label));
    }
    s
}

/// Shows `message` in the error paragraph of field `id` and marks the field invalid.
pub fn field_error(id: &str, message: &str) {
    set_text(&format!("{id}-error"), message);
    if let Some(e) = by_id(id) {
        let _ = e.set_attribute("aria-invalid", "true");
    }
}

/// Clears every field error under the element `root`.
pub fn clear_field_errors(root: &str) {
    let Some(root) = by_id(root) else { return };
    if let Ok(list) = root.query_selector_all(".error") {
        for i in 0..list.length() {
            if let Some(node) = list.item(i) {
                node.set_text_content(None);
            }
        }
    }
    if let Ok(list) = root.query_selector_all("[aria-invalid]") {
        for i in 0..list.length() {
            if let Some(e) = list.item(i).and_then(|n| n.dyn_into::<Element>().ok()) {
                let _ = e.remove_attribute("aria-invalid");
            }
        }
    }
}

/// Reports a JS value as a string for error messages.
pub fn js_error(value: &JsValue) -> String {
    value.as_string().or_else(|| js_sys::JSON::stringify(value).ok().and_then(|s| s.as_string())).unwrap_or_default()
}
