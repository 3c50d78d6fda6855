//! Projects: their states and the moves between them, who may contribute (access and sites), and the request
//! and response bodies of `/api/projects`.

use serde::{Deserialize, Serialize};

pub use super::settings::{Access, Aggregation, TrainingSettings};

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
#[derive(Debug, Clone, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    pub metrics: Vec<super::training::MetricPoint>,
    /// Providers training the project now.
    pub providers: Vec<super::training::LiveProvider>,
    pub created_at_unix: i64,
    pub updated_at_unix: i64,
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
}
