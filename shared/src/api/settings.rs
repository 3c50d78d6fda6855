//! How a project is trained: [`TrainingSettings`] with their defaults and ranges, checked by
//! [`TrainingSettings::problems`], and described field by field in [`SETTINGS`] for clients.

use serde::{Deserialize, Serialize};

use super::FieldError;
use super::project::{MAX_SITES, parse_origin};
use crate::data::Normalization;
use crate::train::{Method, OptimizerConfig, Schedule};

/// How contributions are combined into one update. Whatever the rule, each contribution's norm is first bounded
/// relative to the recent ones ([`TrainingSettings::norm_bound_factor`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// The mean of the `k` contributions, weighted by samples and staleness.
    #[default]
    Mean,
    /// Per coordinate, the mean of the values left once the 20% lowest and 20% highest are dropped (at least
    /// one of each from 3 contributions on); unweighted.
    TrimmedMean,
    /// Per coordinate, the median of the contributions; unweighted.
    Median,
    /// Centered clipping (Karimireddy et al. 2021) from the coordinate-wise median: each contribution's pull
    /// is clipped to the median distance; unweighted.
    CenteredClip,
}

/// Who may contribute to a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Any visitor of the contribute page.
    #[default]
    Public,
    /// Only visitors of sites that embed the project's site key.
    SiteKey,
}

/// How a project is trained. Every field is optional in a request and has the default shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct TrainingSettings {
    /// Samples per local step on a provider (1..=4096) [32].
    pub batch_size: u32,
    /// Contributions averaged into one update (1..=1024) [4].
    pub k: u32,
    /// Local steps a provider takes before it sends a contribution (1..=1000) [1].
    pub local_steps: u32,
    /// How many versions behind a contribution may be and still count (0..=100) [2].
    pub max_staleness: u32,
    /// Passes over the training set (1..=10000) [10].
    pub epochs: u32,
    /// The server's optimiser (shared `OptimizerConfig`) [Adam, learning rate 0.001].
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub optimizer: OptimizerConfig,
    /// How contributions are combined: mean, trimmed_mean, median or centered_clip [mean].
    pub aggregation: Aggregation,
    /// A contribution whose norm (per local step) exceeds this many times the median of the last 64 is scaled
    /// down to that bound, whatever the aggregation (at least 1) [3; null: no bound].
    pub norm_bound_factor: Option<f64>,
    /// Fraction of samples held out for validation (0 to 0.5) [0.1].
    pub validation_fraction: f64,
    /// Seed of the shuffle, the split and the initial parameters [0].
    pub seed: u64,
    /// Providers training at once (1..=100000) [64].
    pub max_providers: u32,
    /// Samples per dataset shard (1..=65536) [1024].
    pub samples_per_shard: u32,
    /// Who may contribute [public].
    pub access: Access,
    /// The learning rate of the providers' local SGD steps [1]. With one local step and 1, a contribution is
    /// minus the gradient and the server optimiser's learning rate governs; with several local steps, set it
    /// (e.g. 0.05) and use server SGD at learning rate 1 for model averaging. (0 to 100]
    pub local_learning_rate: f32,
    /// How features become model inputs [null: integer features scaled from their type's range to 0..1, float
    /// features as they are]; e.g. `{"kind": "standardize", "mean": 0.13, "std": 0.31}` or `{"kind": "scale", "min": 0, "max": 255}`.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub normalization: Option<Normalization>,
    /// Updates between two checkpoints (1..=100000) [50]; projects are also checkpointed at every epoch's end
    /// and when paused.
    pub checkpoint_every: u32,
    /// Stop early once the validation accuracy reaches this (0 to 1) [null: train every epoch].
    pub target_accuracy: Option<f64>,
    /// The origins of the sites that may embed a `site_key` project, like `https://blog.example.org` (scheme,
    /// host and port only; at most 64) [none]. Browsers on other origins are refused at the provider socket and
    /// by CORS; providers outside a browser send no origin and need only the site key. Public projects take
    /// every origin.
    pub sites: Vec<String>,
}

impl Default for TrainingSettings {
    fn default() -> Self {
        Self {
            batch_size: 32,
            k: 4,
            local_steps: 1,
            max_staleness: 2,
            epochs: 10,
            optimizer: OptimizerConfig {
                method: Method::adam(),
                learning_rate: 0.001,
                schedule: Schedule::Constant,
                weight_decay: 0.0,
                clip_norm: None,
            },
            aggregation: Aggregation::Mean,
            norm_bound_factor: Some(3.0),
            validation_fraction: 0.1,
            seed: 0,
            max_providers: 64,
            samples_per_shard: 1024,
            access: Access::Public,
            local_learning_rate: 1.0,
            normalization: None,
            checkpoint_every: 50,
            target_accuracy: None,
            sites: Vec::new(),
        }
    }
}

impl TrainingSettings {
    /// Every value out of range, as field errors.
    pub fn problems(&self) -> Vec<FieldError> {
        let mut problems = Vec::new();
        for info in SETTINGS {
            let (Some(value), Some(lo), Some(hi)) = (self.integer(info.name), info.min, info.max) else { continue };
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let (lo, hi) = (lo as u64, hi as u64);
            if !(lo..=hi).contains(&value) {
                problems.push(FieldError {
                    field: info.field,
                    message: format!("must be between {lo} and {hi}, not {value}"),
                });
            }
        }
        if !(0.0..=0.5).contains(&self.validation_fraction) {
            problems.push(FieldError {
                field: "settings.validation_fraction",
                message: format!("must be a number from 0 to 0.5, not {}", self.validation_fraction),
            });
        }
        if !(self.local_learning_rate > 0.0 && self.local_learning_rate <= 100.0) {
            problems.push(FieldError {
                field: "settings.local_learning_rate",
                message: format!("must be above 0 and at most 100, not {}", self.local_learning_rate),
            });
        }
        if let Some(factor) = self.norm_bound_factor
            && !(factor.is_finite() && factor >= 1.0)
        {
            problems.push(FieldError {
                field: "settings.norm_bound_factor",
                message: format!("must be a number of at least 1, or null, not {factor}"),
            });
        }
        if let Some(target) = self.target_accuracy
            && !(0.0..=1.0).contains(&target)
        {
            problems.push(FieldError {
                field: "settings.target_accuracy",
                message: format!("must be a number from 0 to 1, not {target}"),
            });
        }
        if let Some(n) = &self.normalization
            && let Err(e) = n.affine(crate::data::Dtype::F32).or_else(|e| match n {
                Normalization::Scale { min: None, .. } | Normalization::Scale { max: None, .. } => Ok((0.0, 1.0)),
                _ => Err(e),
            })
        {
            problems.push(FieldError { field: "settings.normalization", message: e.to_string() });
        }
        if let Err(e) = self.optimizer.validate() {
            problems.push(FieldError { field: "settings.optimizer", message: e.to_string() });
        }
        if self.sites.len() > MAX_SITES {
            problems.push(FieldError {
                field: "settings.sites",
                message: format!("at most {MAX_SITES} sites, not {}", self.sites.len()),
            });
        }
        for site in self.sites.iter().take(MAX_SITES) {
            if let Err(e) = parse_origin(site) {
                problems.push(FieldError { field: "settings.sites", message: e });
            }
        }
        problems
    }

    /// The value of integer setting `name`, if it is one.
    fn integer(&self, name: &str) -> Option<u64> {
        Some(match name {
            "batch_size" => self.batch_size.into(),
            "k" => self.k.into(),
            "local_steps" => self.local_steps.into(),
            "max_staleness" => self.max_staleness.into(),
            "epochs" => self.epochs.into(),
            "max_providers" => self.max_providers.into(),
            "samples_per_shard" => self.samples_per_shard.into(),
            "checkpoint_every" => self.checkpoint_every.into(),
            _ => return None,
        })
    }

    /// The sites as origins in canonical form (lowercase, default ports dropped), after [`Self::problems`] passed.
    pub fn canonical_sites(&self) -> Vec<String> {
        self.sites.iter().filter_map(|s| parse_origin(s).ok()).collect()
    }
}

/// One training setting as clients show it: its name, default, range and what it does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SettingInfo {
    /// The field's name in [`TrainingSettings`].
    pub name: &'static str,
    /// The field as request errors name it (`settings.<name>`).
    pub field: &'static str,
    /// The default, as JSON.
    pub default: &'static str,
    /// The smallest value allowed, for numbers.
    pub min: Option<f64>,
    /// The largest value allowed, for numbers.
    pub max: Option<f64>,
    /// What the setting does.
    pub explanation: &'static str,
}

macro_rules! setting {
    ($name:literal, $default:literal, $min:expr, $max:expr, $explanation:literal) => {
        SettingInfo {
            name: $name,
            field: concat!("settings.", $name),
            default: $default,
            min: $min,
            max: $max,
            explanation: $explanation,
        }
    };
}

/// Every training setting with its default, range and explanation. [`TrainingSettings::problems`] checks the
/// integer ranges listed here; `validation_fraction` is at least 0, `local_learning_rate` above 0 and
/// `norm_bound_factor` a number (or null).
pub const SETTINGS: &[SettingInfo] = &[
    setting!("batch_size", "32", Some(1.0), Some(4096.0), "Samples per local step on a provider."),
    setting!("k", "4", Some(1.0), Some(1024.0), "Contributions averaged into one update."),
    setting!(
        "local_steps",
        "1",
        Some(1.0),
        Some(1000.0),
        "Local steps a provider takes before it sends a contribution."
    ),
    setting!(
        "max_staleness",
        "2",
        Some(0.0),
        Some(100.0),
        "How many versions behind a contribution may be and still count."
    ),
    setting!("epochs", "10", Some(1.0), Some(10_000.0), "Passes over the training set."),
    setting!(
        "optimizer",
        r#"{"method":{"type":"adam"},"learning_rate":0.001}"#,
        None,
        None,
        "The server's optimiser: method, learning rate, schedule, weight decay and clipping."
    ),
    setting!(
        "aggregation",
        r#""mean""#,
        None,
        None,
        "How contributions are combined into one update: mean, or against hostile providers trimmed_mean, median \
         or centered_clip (these keep the k contributions in memory)."
    ),
    setting!(
        "norm_bound_factor",
        "3",
        Some(1.0),
        None,
        "A contribution whose norm exceeds this many times the recent median is scaled down to it; null: no bound."
    ),
    setting!("validation_fraction", "0.1", Some(0.0), Some(0.5), "Fraction of samples held out for validation."),
    setting!("seed", "0", Some(0.0), None, "Seed of the shuffle, the split and the initial parameters."),
    setting!("max_providers", "64", Some(1.0), Some(100_000.0), "Providers training at once."),
    setting!("samples_per_shard", "1024", Some(1.0), Some(65_536.0), "Samples per dataset shard."),
    setting!("access", r#""public""#, None, None, "Who may contribute: public, or site_key for the sites listed."),
    setting!(
        "local_learning_rate",
        "1",
        Some(0.0),
        Some(100.0),
        "The learning rate of the providers' local SGD steps (above 0); with one local step and 1, the server \
         optimiser's learning rate governs."
    ),
    setting!(
        "normalization",
        "null",
        None,
        None,
        "How features become model inputs; null scales integer features to 0..1."
    ),
    setting!(
        "checkpoint_every",
        "50",
        Some(1.0),
        Some(100_000.0),
        "Updates between two checkpoints; projects are also checkpointed at every epoch's end and when paused."
    ),
    setting!("target_accuracy", "null", Some(0.0), Some(1.0), "Stop early once the validation accuracy reaches this."),
    setting!("sites", "[]", None, None, "The origins of the sites that may embed a site_key project (at most 64)."),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_every_setting_with_its_default() {
        let defaults = serde_json::to_value(TrainingSettings::default()).unwrap();
        let fields = defaults.as_object().unwrap();
        assert_eq!(fields.len(), SETTINGS.len());
        for info in SETTINGS {
            let default = &fields[info.name];
            let listed: serde_json::Value = serde_json::from_str(info.default).unwrap();
            if info.name == "optimizer" {
                let parsed: OptimizerConfig = serde_json::from_value(listed).unwrap();
                assert_eq!(serde_json::to_value(parsed).unwrap(), *default);
            } else {
                assert_eq!(
                    listed.as_f64().map_or(listed.clone(), |v| v.into()),
                    default.as_f64().map_or(default.clone(), |v| v.into()),
                    "{}",
                    info.name
                );
            }
        }
    }

    #[test]
    fn defaults_validate_and_ranges_are_checked() {
        assert!(TrainingSettings::default().problems().is_empty());
        let settings = TrainingSettings { batch_size: 0, k: 2000, ..TrainingSettings::default() };
        let fields: Vec<_> = settings.problems().into_iter().map(|p| p.field).collect();
        assert_eq!(fields, ["settings.batch_size", "settings.k"]);
        for (factor, ok) in [(None, true), (Some(1.0), true), (Some(0.5), false), (Some(f64::INFINITY), false)] {
            let settings = TrainingSettings { norm_bound_factor: factor, ..TrainingSettings::default() };
            assert_eq!(settings.problems().is_empty(), ok, "{factor:?}");
        }
    }

    #[test]
    fn aggregation_rules_have_snake_case_names() {
        for (rule, name) in [
            (Aggregation::Mean, "mean"),
            (Aggregation::TrimmedMean, "trimmed_mean"),
            (Aggregation::Median, "median"),
            (Aggregation::CenteredClip, "centered_clip"),
        ] {
            assert_eq!(serde_json::to_value(rule).unwrap(), name);
            assert_eq!(serde_json::from_value::<Aggregation>(name.into()).unwrap(), rule);
        }
    }

    #[test]
    fn origins_are_canonical() {
        assert_eq!(parse_origin("HTTPS://Blog.Example.org:443/").unwrap(), "https://blog.example.org");
        assert!(parse_origin("ftp://x").is_err());
    }
}
