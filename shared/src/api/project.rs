//! Projects: their states and the moves between them, who may contribute (access and sites), the request
//! and response bodies of `/api/projects`, and the changes ([`ProjectDelta`]) that the live-update stream sends
//! after its first full view.

use serde::{Deserialize, Deserializer, Serialize};

pub use super::settings::{Access, Aggregation, TrainingSettings};
use super::training::{LiveProvider, MetricPoint};

/// Longest project name, in characters.
pub const NAME_MAX_CHARS: usize = 100;

/// Where a project is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ProjectState {
    /// Being set up: settings fixed, dataset not yet committed or not yet started.
    Draft,
    /// Handing out work to providers.
    Running,
    /// Stopped by the requestor; resumable.
    Paused,
    /// Stopped for good by the requestor.
    Cancelled,
    /// Trained; the model can be downloaded.
    Finished,
}

impl ProjectState {
    /// The name stored in the database and sent in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Cancelled => "cancelled",
            Self::Finished => "finished",
        }
    }

    /// The state named `text` (as [`Self::as_str`] gives it), if any.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "draft" => Self::Draft,
            "running" => Self::Running,
            "paused" => Self::Paused,
            "cancelled" => Self::Cancelled,
            "finished" => Self::Finished,
            _ => return None,
        })
    }
}

/// A move requested through `POST /api/projects/{id}/{action}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Pause,
    Resume,
    Cancel,
}

impl Action {
    /// The route's last segment and the verb in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Cancel => "cancel",
        }
    }

    /// The state `action` leads to from `from`, or the 409 message saying why it cannot be taken.
    pub fn apply(self, from: ProjectState, has_dataset: bool) -> Result<ProjectState, String> {
        use ProjectState::{Cancelled, Draft, Paused, Running};
        match (self, from) {
            (Self::Start, Draft) if has_dataset => Ok(Running),
            (Self::Start, Draft) => {
                Err("the project has no dataset yet: upload its features and labels before starting it".into())
            }
            (Self::Pause, Running) | (Self::Cancel, Running | Paused) => {
                Ok(if self == Self::Pause { Paused } else { Cancelled })
            }
            (Self::Resume, Paused) => Ok(Running),
            _ => {
                let allowed = match self {
                    Self::Start => "draft",
                    Self::Pause => "running",
                    Self::Resume => "paused",
                    Self::Cancel => "running or paused",
                };
                Err(format!(
                    "cannot {} a project that is {}; only a {allowed} project can be",
                    self.name(),
                    from.as_str()
                ))
            }
        }
    }
}

/// The most sites a project lists.
pub const MAX_SITES: usize = 64;

/// An origin as browsers send it in `Origin` (`scheme://host[:port]`), canonical: lowercase, without the scheme's
/// default port.
///
/// # Errors
/// What is wrong with it, for a field error.
pub fn parse_origin(origin: &str) -> Result<String, String> {
    let bad = |why: &str| Err(format!("{origin:?} is not a site origin like https://blog.example.org: {why}"));
    if origin.len() > 255 {
        return bad("longer than 255 characters");
    }
    let lower = origin.trim_end_matches('/').to_ascii_lowercase();
    let Some((scheme, rest)) = lower.split_once("://") else { return bad("no scheme") };
    let default_port = match scheme {
        "http" => "80",
        "https" => "443",
        _ => return bad("the scheme must be http or https"),
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) || rest.chars().any(|c| c.is_whitespace()) {
        return bad("it must be a scheme and a host (and a port), without a path");
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || rest.starts_with('[') => {
            if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().is_err() {
                return bad("the port is not a number from 0 to 65535");
            }
            (host, Some(port))
        }
        _ => (rest, None),
    };
    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b)) {
        return bad("the host has characters a host name cannot have");
    }
    Ok(match port {
        Some(port) if port != default_port => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// A project to create: a name, a model (DAIG JSON in `model`, or Keras `model.to_json()` in `keras_model` with a
/// `loss`) and training settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    /// 1 to 100 characters, no control characters.
    pub name: String,
    /// The model in DAIG JSON (`input_shape`, `layers`, `loss`).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub model: Option<serde_json::Value>,
    /// A Keras `Sequential` model as `model.to_json()` gives it; needs `loss`.
    pub keras_model: Option<String>,
    /// The loss for `keras_model`: `cross_entropy`, `mean_squared_error` or `binary_cross_entropy` (Keras names
    /// such as `sparse_categorical_crossentropy` are accepted too).
    pub loss: Option<String>,
    /// Training settings; every field has a default.
    #[serde(default)]
    pub settings: TrainingSettings,
}

/// The model's size and cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelSummary {
    /// Trainable parameters.
    pub params: u64,
    /// Forward-pass FLOPs per sample.
    pub flops_per_sample: u64,
    pub input_shape: Vec<usize>,
    pub loss: String,
    pub layers: usize,
}

/// A committed dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DatasetSummary {
    /// The features' upload format: `npy`, `npz`, `idx` or `csv`.
    pub format: String,
    /// The features' element type, e.g. `u1` or `f4`.
    pub feature_dtype: String,
    /// The shape of one sample.
    pub sample_shape: Vec<usize>,
    pub train_samples: i64,
    pub validation_samples: i64,
    pub train_shards: i64,
    pub validation_shards: i64,
}

/// The epoch a person is shown, counted from 1 wherever DAIG shows one (dashboard, CLI, contribute page):
/// the epoch in progress (`epoch` counts those completed), the last once all `epochs` are done, and 0 before
/// training has started.
pub fn epoch_shown(epoch: i64, epochs: u32, started: bool) -> i64 {
    if started { epoch.saturating_add(1).clamp(1, i64::from(epochs).max(1)) } else { 0 }
}

/// A project in a list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProjectSummary {
    pub id: i64,
    pub name: String,
    pub state: ProjectState,
    pub epoch: i64,
    /// Completed epochs over the configured ones, from 0 to 1.
    pub progress: f64,
    pub created_at_unix: i64,
}

/// The caller's projects, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProjectList {
    pub projects: Vec<ProjectSummary>,
}

/// A project in full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProjectView {
    pub id: i64,
    pub name: String,
    pub state: ProjectState,
    pub epoch: i64,
    /// The parameter version: updates applied so far.
    pub version: i64,
    /// Completed epochs over the configured ones, from 0 to 1.
    pub progress: f64,
    pub settings: TrainingSettings,
    /// The key to embed for `site_key` access; `null` for public projects.
    pub site_key: Option<String>,
    pub model: ModelSummary,
    /// The committed dataset, `null` until one is.
    pub dataset: Option<DatasetSummary>,
    /// Validation loss and accuracy (and the training loss) over versions, oldest first.
    pub metrics: Vec<MetricPoint>,
    /// Providers training the project now.
    pub providers: Vec<LiveProvider>,
    pub created_at_unix: i64,
    pub updated_at_unix: i64,
}

impl ProjectView {
    /// Applies the changes of a [`ProjectDelta`]: the fields it carries replace these, and its metric points go
    /// into the history in version order, each replacing a point of the same version if there is one.
    pub fn apply(&mut self, delta: ProjectDelta) {
        let ProjectDelta {
            name,
            state,
            epoch,
            version,
            progress,
            settings,
            site_key,
            model,
            dataset,
            providers,
            updated_at_unix,
            metrics,
        } = delta;
        replace(&mut self.name, name);
        replace(&mut self.state, state);
        replace(&mut self.epoch, epoch);
        replace(&mut self.version, version);
        replace(&mut self.progress, progress);
        replace(&mut self.settings, settings);
        replace(&mut self.site_key, site_key);
        replace(&mut self.model, model);
        replace(&mut self.dataset, dataset);
        replace(&mut self.providers, providers);
        replace(&mut self.updated_at_unix, updated_at_unix);
        for point in metrics {
            match self.metrics.binary_search_by_key(&point.version, |p| p.version) {
                Ok(at) => self.metrics[at] = point,
                Err(at) => self.metrics.insert(at, point),
            }
        }
    }
}

fn replace<T>(field: &mut T, new: Option<T>) {
    if let Some(new) = new {
        *field = new;
    }
}

/// What changed in a project since the previous event of its live-update stream (`event: delta` of
/// `GET /api/projects/{id}/events`): each field of [`ProjectView`] that changed, with its new value, and absent
/// when it did not (`id`, `created_at_unix` never change), and the metric points recorded since, never the
/// history sent before. [`ProjectView::apply`] brings a view up to date with it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProjectDelta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ProjectState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<TrainingSettings>,
    /// The new site key when it changed; `null` when the project no longer has one.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub site_key: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSummary>,
    /// The new dataset when it changed; `null` when the project no longer has one.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<DatasetSummary>))]
    pub dataset: Option<Option<DatasetSummary>>,
    /// The providers training the project now, all of them, when any changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub providers: Option<Vec<LiveProvider>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at_unix: Option<i64>,
    /// The metric points recorded since the previous event, oldest first; absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricPoint>,
}

impl ProjectDelta {
    /// The fields that differ from `old` to `new`, with the values of `new`; the metrics are left to the caller,
    /// who knows which points `old`'s receiver already has.
    pub fn between(old: &ProjectView, new: &ProjectView) -> Self {
        fn changed<T: PartialEq + Clone>(old: &T, new: &T) -> Option<T> {
            (old != new).then(|| new.clone())
        }
        Self {
            name: changed(&old.name, &new.name),
            state: changed(&old.state, &new.state),
            epoch: changed(&old.epoch, &new.epoch),
            version: changed(&old.version, &new.version),
            progress: changed(&old.progress, &new.progress),
            settings: changed(&old.settings, &new.settings),
            site_key: changed(&old.site_key, &new.site_key),
            model: changed(&old.model, &new.model),
            dataset: changed(&old.dataset, &new.dataset),
            providers: changed(&old.providers, &new.providers),
            updated_at_unix: changed(&old.updated_at_unix, &new.updated_at_unix),
            metrics: Vec::new(),
        }
    }

    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Reads a field that is present as `Some`, its value `null` included: with `default`, an absent field stays
/// `None`, so that `Option<Option<T>>` tells "unchanged" (absent) from "now `null`".
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

/// A project's new list of sites.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SetSites {
    /// Origins like `https://blog.example.org` (at most 64); replaces the list.
    pub sites: Vec<String>,
}

/// A project as visitors see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PublicProject {
    pub id: i64,
    pub name: String,
    pub state: ProjectState,
    /// `public` or `site_key`.
    pub access: Access,
    /// Trainable parameters of the model.
    pub params: u64,
    /// Layers of the model.
    pub layers: usize,
    pub epoch: i64,
    /// Of the whole training, 0 to 1.
    pub progress: f64,
    /// Providers training it now.
    pub providers: usize,
    /// Providers it takes at most.
    pub max_providers: u32,
    /// Whether it takes another provider now (running, below `max_providers`).
    pub needs_providers: bool,
}

/// The public projects that are running or paused, those needing providers first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PublicProjects {
    pub projects: Vec<PublicProject>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn epochs_are_shown_from_one_and_never_past_the_last() {
        use super::epoch_shown;
        assert_eq!(epoch_shown(0, 10, false), 0, "a draft has not started");
        assert_eq!(epoch_shown(0, 10, true), 1, "the first epoch, in progress");
        assert_eq!(epoch_shown(9, 10, true), 10);
        assert_eq!(epoch_shown(10, 10, true), 10, "all done: the last");
    }

    use super::*;

    #[test]
    fn the_state_machine_allows_only_its_moves() {
        use ProjectState::{Cancelled, Draft, Finished, Paused, Running};
        assert_eq!(Action::Start.apply(Draft, true), Ok(Running));
        assert!(Action::Start.apply(Draft, false).unwrap_err().contains("no dataset"));
        assert_eq!(Action::Pause.apply(Running, true), Ok(Paused));
        assert_eq!(Action::Resume.apply(Paused, true), Ok(Running));
        assert_eq!(Action::Cancel.apply(Running, true), Ok(Cancelled));
        assert_eq!(Action::Cancel.apply(Paused, true), Ok(Cancelled));
        assert_eq!(
            Action::Pause.apply(Finished, true),
            Err("cannot pause a project that is finished; only a running project can be".into())
        );
        for state in [Draft, Running, Paused, Cancelled, Finished] {
            assert_eq!(ProjectState::parse(state.as_str()), Some(state));
        }
    }

    fn point(version: i64, val_loss: f64) -> MetricPoint {
        MetricPoint {
            version,
            epoch: 0,
            samples: version * 2,
            train_loss: None,
            val_loss: Some(val_loss),
            val_accuracy: None,
            at_unix: 0,
        }
    }

    fn draft() -> ProjectView {
        ProjectView {
            id: 7,
            name: "digits".into(),
            state: ProjectState::Draft,
            epoch: 0,
            version: 0,
            progress: 0.0,
            settings: TrainingSettings::default(),
            site_key: Some("key".into()),
            model: ModelSummary {
                params: 10,
                flops_per_sample: 20,
                input_shape: vec![4],
                loss: "cross_entropy".into(),
                layers: 1,
            },
            dataset: None,
            metrics: vec![point(0, 2.0)],
            providers: Vec::new(),
            created_at_unix: 1,
            updated_at_unix: 1,
        }
    }

    #[test]
    fn a_delta_carries_only_the_changed_fields_and_brings_a_view_up_to_date() {
        let old = draft();
        let mut new = old.clone();
        new.state = ProjectState::Running;
        new.version = 3;
        new.site_key = None;
        new.metrics.push(point(3, 1.5));
        let mut delta = ProjectDelta::between(&old, &new);
        delta.metrics = vec![point(3, 1.5)];
        expect_test::expect![[r#"{"state":"running","version":3,"site_key":null,"metrics":[{"version":3,"epoch":0,"samples":6,"train_loss":null,"val_loss":1.5,"val_accuracy":null,"at_unix":0}]}"#]]
        .assert_eq(&serde_json::to_string(&delta).unwrap());
        let sent: ProjectDelta = serde_json::from_str(&serde_json::to_string(&delta).unwrap()).unwrap();
        assert_eq!(sent, delta, "`site_key: null` is read back as a change, absent fields as none");
        let mut view = old.clone();
        view.apply(sent);
        assert_eq!(view, new);
        assert!(ProjectDelta::between(&new, &new).is_empty());
        assert!(!delta.is_empty());
    }

    #[test]
    fn applied_points_keep_the_history_in_version_order_without_duplicates() {
        let mut view = draft();
        view.metrics = vec![point(2, 1.0), point(4, 0.8)];
        view.apply(ProjectDelta { metrics: vec![point(4, 0.7), point(3, 0.9), point(6, 0.5)], ..Default::default() });
        let history: Vec<(i64, Option<f64>)> = view.metrics.iter().map(|p| (p.version, p.val_loss)).collect();
        assert_eq!(history, [(2, Some(1.0)), (3, Some(0.9)), (4, Some(0.7)), (6, Some(0.5))]);
    }
}
