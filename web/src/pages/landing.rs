//! `/` for a visitor who is not signed in: what DAIG is, and the three ways in (contribute a GPU, embed the
//! provider on a site, train a model).

use web_sys::Element;

use crate::dom::el;

pub fn render(main: &Element) {
    let card = |heading: &str, text: &str, href: &str, link: &str, internal: bool| {
        let mut anchor = el("a").attr("href", href).class("button").text(link);
        if internal {
            anchor = anchor.attr("data-link", "");
        }
        el("li").class("card").child(el("h2").text(heading)).child(el("p").text(text)).child(anchor)
    };
    let content = el("div")
        .id("landing")
        .child(el("p").class("lead").text(
            "DAIG trains deep-learning models on the GPUs of people who open a web page. A requestor describes a \
             model and uploads a dataset; visitors lend their browser's GPU (WebGPU, or the CPU as a fallback) with \
             one click; the server hands out the work, checks what comes back and keeps the trained model.",
        ))
        .child(
            el("ul")
                .class("cards")
                .child(card(
                    "Contribute your GPU",
                    "Pick a project that needs providers and let this tab train it. Nothing runs before you click, \
                     and it stops when you close the tab.",
                    "/contribute",
                    "Contribute",
                    false,
                ))
                .child(card(
                    "Embed it on your site",
                    "Add one script tag so that your visitors can contribute to your project, credited to your site.",
                    "/sites",
                    "For site owners",
                    false,
                ))
                .child(card(
                    "Train a model",
                    "Create a project from a model (or a Keras export) and a dataset, watch it train live and \
                     download the weights.",
                    "/signup",
                    "Sign up",
                    true,
                )),
        )
        .child(
            el("p")
                .child(el("span").text("Already have an account? "))
                .child(el("a").attr("href", "/login").attr("data-link", "").text("Log in")),
        );
    super::page(main, "Train models on your visitors' GPUs", content);
}
