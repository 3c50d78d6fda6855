//! Datasets as the API shows them.

use serde::{Deserialize, Serialize};

pub use super::project::DatasetSummary;

/// Where a project's dataset stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DatasetStatus {
    /// The parts uploaded and waiting for the commit (`features`, `labels`), in that order.
    pub uploaded: Vec<String>,
    /// The committed dataset, if any: the new one once a commit succeeds, else the one still in force.
    pub dataset: Option<DatasetSummary>,
}
