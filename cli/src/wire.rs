//! The client's reading of the server's JSON answers.
//!
//! These are not the server's wire types (`daig_server::api`), which only serialise: the CLI reads answers leniently,
//! every field defaulted and every element of `metrics` and `providers` optional field by field, so that a CLI
//! keeps working against a server that adds, omits or is still filling in fields (training metrics and providers
//! arrive with the training loop). It never needs more than it prints.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// `GET /api/me`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Me {
    pub id: i64,
    pub username: String,
    pub email: String,
}

/// `POST /api/session`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Session {
    pub csrf_token: String,
    pub user: Me,
}

/// `POST /api/tokens`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct CreatedToken {
    pub id: i64,
    pub token: String,
    pub expires_at_unix: i64,
}

/// `GET /api/tokens`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TokenList {
    pub tokens: Vec<TokenView>,
}

/// One live token, without its secret.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TokenView {
    pub id: i64,
    pub prefix: String,
}

/// `GET /api/projects`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ProjectList {
    pub projects: Vec<ProjectSummary>,
}

/// A project in a list.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ProjectSummary {
    pub id: i64,
    pub name: String,
    pub state: String,
    pub epoch: i64,
    pub progress: f64,
    pub created_at_unix: i64,
}

/// `GET /api/projects/{id}` and the answers of create, start, pause, resume and cancel.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Project {
    pub id: i64,
    pub name: String,
    /// `draft`, `running`, `paused`, `cancelled`, `finished`; kept as text so that a new state prints as itself.
    pub state: String,
    pub epoch: i64,
    pub version: i64,
    /// From 0 to 1.
    pub progress: f64,
    /// The settings as sent; only a few are printed.
    pub settings: Value,
    pub site_key: Option<String>,
    pub model: ModelSummary,
    pub dataset: Option<Dataset>,
    /// Oldest first.
    #[serde(deserialize_with = "lenient_list")]
    pub metrics: Vec<Metric>,
    #[serde(deserialize_with = "lenient_list")]
    pub providers: Vec<Provider>,
    pub created_at_unix: i64,
    pub updated_at_unix: i64,
}

impl Project {
    /// The configured number of epochs, if the settings name it.
    pub fn epochs(&self) -> Option<u64> {
        self.settings.get("epochs").and_then(Value::as_u64)
    }

    /// Whether training is over: `finished` or `cancelled`.
    pub fn is_done(&self) -> bool {
        matches!(self.state.as_str(), "finished" | "cancelled")
    }
}

/// The model's size and cost.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ModelSummary {
    pub params: u64,
    pub flops_per_sample: u64,
    pub input_shape: Vec<u64>,
    pub loss: String,
    pub layers: u64,
}

/// A committed dataset.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Dataset {
    pub format: String,
    pub feature_dtype: String,
    pub sample_shape: Vec<u64>,
    pub train_samples: i64,
    pub validation_samples: i64,
    pub train_shards: i64,
    pub validation_shards: i64,
}

/// `PUT .../dataset/{part}` and `POST .../dataset/commit`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct DatasetStatus {
    pub uploaded: Vec<String>,
    pub dataset: Option<Dataset>,
}

/// One entry of a project's metrics history.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Metric {
    pub version: Option<i64>,
    pub epoch: Option<i64>,
    pub samples: Option<i64>,
    pub train_loss: Option<f64>,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub at_unix: Option<i64>,
}

/// A provider training the project now.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Provider {
    pub id: Option<i64>,
    pub backend: Option<String>,
    pub adapter: Option<String>,
    pub samples_per_sec: Option<f64>,
    pub contributions_applied: Option<i64>,
    pub site_key: Option<String>,
    pub connected_at_unix: Option<i64>,
}

/// A list whose elements are read one by one: an element of the wrong shape (or a field of the wrong type in it)
/// becomes the default element instead of failing the whole answer, so that counts stay right.
fn lenient_list<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned + Default,
{
    let values = Option::<Vec<Value>>::deserialize(deserializer)?.unwrap_or_default();
    Ok(values.into_iter().map(|v| serde_json::from_value(v).unwrap_or_default()).collect())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn metrics_and_providers_are_read_leniently() {
        let project: Project = serde_json::from_value(json!({
            "id": 3,
            "state": "running",
            "settings": {"epochs": 5},
            "metrics": [
                {"version": 7, "epoch": 1, "samples": 640, "train_loss": 0.5, "val_loss": null, "val_accuracy": 0.91,
                 "at_unix": 10, "new_field": true},
                {"epoch": "two"}
            ],
            "providers": [{"id": 1, "backend": "webgpu"}, 17],
            "extra": {}
        }))
        .unwrap();
        assert_eq!(project.epochs(), Some(5));
        assert_eq!(project.metrics.len(), 2);
        assert_eq!(project.metrics[0].val_accuracy, Some(0.91));
        assert_eq!(project.metrics[0].val_loss, None);
        assert_eq!(project.metrics[1], Metric::default());
        assert_eq!(project.providers.len(), 2);
        assert_eq!(project.providers[0].backend.as_deref(), Some("webgpu"));
        assert!(!project.is_done());

        let project: Project = serde_json::from_value(json!({"state": "cancelled", "metrics": null})).unwrap();
        assert!(project.metrics.is_empty() && project.is_done());
    }
}
