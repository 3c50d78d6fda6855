//! Training as the API shows it: the providers at work on a project and its metrics history.

use serde::{Deserialize, Serialize};

/// A provider working on a project, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LiveProvider {
    pub id: u64,
    /// `WebGpu`, `Vulkan`, `Metal`, `Dx12`, `Gl` or `Cpu`.
    pub backend: String,
    pub adapter: String,
    /// Training speed as the server measured it from its contributions; 0 until its first.
    pub samples_per_sec: f64,
    pub contributions_applied: u64,
    /// The credited site: the project's site key, or the listed origin its browser came from.
    pub site_key: Option<String>,
    pub connected_at_unix: i64,
    /// Its checks by recomputation that passed, in this project (its standing counts earlier ones too).
    pub verified: u64,
    /// Its contributions applied without a check (the sample skipped them: it is in good standing).
    pub unchecked: u64,
    /// Its contributions held until their check passes.
    pub held: u64,
    pub standing: Standing,
}

/// Where a provider stands with the server's checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Standing {
    /// Too few checks passed yet: every contribution is held and checked before it is applied.
    New,
    /// Enough checks passed: a random sample of its contributions is checked, the rest applied at once.
    Trusted,
}

/// A provider shut out of a project: a check by recomputation of its work failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ShutOutView {
    pub provider_id: i64,
    pub backend: String,
    pub adapter: String,
    /// The client address it came from (banned for a while), when known.
    pub address: Option<String>,
    pub at_unix: i64,
    /// What the check found.
    pub reason: String,
}

/// One row of a project's metrics history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MetricPoint {
    pub version: i64,
    pub epoch: i64,
    /// Training samples applied up to this version.
    pub samples: i64,
    /// Mean training loss of the contributions since the previous row.
    pub train_loss: Option<f64>,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub at_unix: i64,
}

/// A project's metrics history.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MetricsView {
    pub project: i64,
    pub metrics: Vec<MetricPoint>,
}

/// A stored checkpoint.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CheckpointView {
    pub version: i64,
    pub epoch: i64,
    pub size_bytes: i64,
    pub created_at_unix: i64,
}

/// The checkpoints kept.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CheckpointList {
    pub checkpoints: Vec<CheckpointView>,
}

/// Credit of one provider or site.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreditLine {
    pub provider_id: i64,
    pub site_key: Option<String>,
    pub backend: Option<String>,
    pub contributions: i64,
    /// Of `contributions`, those whose check by recomputation passed before they were applied.
    pub verified: i64,
    pub samples: i64,
}

/// Credit of a site, over its providers.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SiteCredit {
    pub site_key: Option<String>,
    pub contributions: i64,
    pub samples: i64,
}

/// A project's ledger: every applied contribution credits its provider and site with its samples, unless its
/// provider was later shut out (its credit is withdrawn, everywhere).
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProjectCredits {
    pub project: i64,
    pub contributions: i64,
    pub samples: i64,
    pub providers: Vec<CreditLine>,
    pub sites: Vec<SiteCredit>,
    /// The providers shut out of the project and why, latest first.
    pub shut_out: Vec<ShutOutView>,
}

/// A provider's credit in one project.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProviderProjectCredit {
    pub project_id: i64,
    pub contributions: i64,
    pub samples: i64,
}

/// A provider's ledger.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProviderCredits {
    pub provider: i64,
    pub contributions: i64,
    pub samples: i64,
    pub projects: Vec<ProviderProjectCredit>,
}
