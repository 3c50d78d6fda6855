//! The dataset upload: features and labels files (`.npy`, `.npz`, IDX, or one CSV holding both), each sent with
//! a progress bar. Used by the new-project form and by a draft project's page.

use daig_shared::api::datasets::{DatasetStatus, DatasetSummary};

use crate::api::Refusal;
use crate::dom::{self, El, el, field, input};
use crate::format;

/// The upload fields. `required`: whether the files are asked for (the new-project form lets them be added
/// later on the project's page).
pub fn form() -> El {
    el("fieldset")
        .id("dataset")
        .child(el("legend").text("Dataset"))
        .child(el("p").class("hint").text(
            "Features and labels as NumPy .npy or .npz files or IDX files (MNIST's format), or one CSV file whose \
             last column holds the labels. The server checks them against the model and cuts them into shards. \
             Training samples are sent to the visitors' browsers that train on them (only the validation split \
             stays on the server): do not upload data that must stay private.",
        ))
        .child(field(
            "Format",
            dom::select(
                "ds-format",
                &[("npy", "NumPy .npy"), ("npz", "NumPy .npz"), ("idx", "IDX"), ("csv", "CSV (features and labels)")],
                "npy",
            ),
            None,
        ))
        .child(field("Features file", input("ds-features", "file"), Some("One row per sample")))
        .child(field("Labels file", input("ds-labels", "file"), Some("Class indices or targets; not for CSV")))
        .child(el("div").id("ds-progress"))
        .child(el("div").id("ds-alert").class("alert").attr("role", "alert"))
}

/// Whether files were chosen (the features at least).
pub fn chosen() -> bool {
    dom::file("ds-features").is_some()
}

/// Uploads the chosen files to project `id`. Returns the committed dataset summary.
///
/// # Errors
/// A message to show (also put in the form's alert).
pub async fn upload(id: i64) -> Result<DatasetSummary, String> {
    dom::clear("ds-alert");
    let format = dom::value("ds-format");
    let features = dom::file("ds-features").ok_or_else(|| fail("Choose the features file"))?;
    let labels = dom::file("ds-labels");
    if format != "csv" && labels.is_none() {
        dom::field_error("ds-labels", "Choose the labels file");
        return Err(fail("Choose the labels file"));
    }
    let mut parts = vec![("features", features)];
    if format != "csv"
        && let Some(labels) = labels
    {
        parts.push(("labels", labels));
    }
    let mut last: Option<DatasetStatus> = None;
    for (part, file) in parts {
        let bar_id = format!("ds-{part}-bar");
        let text_id = format!("ds-{part}-text");
        let size = file.size();
        let row = el("div")
            .class("upload-row")
            .child(el("label").attr("for", &bar_id).text(&format!("Uploading {} ({})", part, format::bytes(size))))
            .child(el("progress").id(&bar_id).attr("max", "1").attr("value", "0"))
            .child(el("span").id(&text_id).attr("aria-live", "off").text("0%"));
        if let Some(target) = dom::by_id("ds-progress") {
            let _ = target.append_child(&row.0);
        }
        let path = format!("/api/projects/{id}/dataset/{part}?format={format}");
        let (bar, text) = (bar_id.clone(), text_id.clone());
        let result = crate::api::upload::<DatasetStatus>(&path, &file, move |sent, total| {
            let fraction = if total > 0.0 { sent / total } else { 0.0 };
            if let Some(b) = dom::by_id(&bar) {
                let _ = b.set_attribute("value", &format!("{fraction:.4}"));
            }
            dom::set_text(&text, &format!("{:.0}%", fraction * 100.0));
        })
        .await;
        match result {
            Ok(status) => {
                if let Some(b) = dom::by_id(&bar_id) {
                    let _ = b.set_attribute("value", "1");
                }
                dom::set_text(&text_id, "done");
                last = Some(status);
            }
            Err(e) => {
                dom::set_text(&text_id, "failed");
                let message = match e.details_as::<Refusal>() {
                    Some(refusal) if e.code == "invalid_dataset" => {
                        let verb = if part == "dataset" { "was" } else { "were" };
                        format!("The {part} {verb} refused: {}", refusal.reason)
                    }
                    _ => e.describe(),
                };
                return Err(fail(&message));
            }
        }
    }
    last.and_then(|status| status.dataset)
        .ok_or_else(|| fail("The files were stored but no dataset was committed; upload both parts"))
}

fn fail(message: &str) -> String {
    dom::replace("ds-alert", el("p").text(message));
    message.to_owned()
}
