//! [`TrainingError`]: why training a project could not start or had to stop, with its cause.

use crate::error::AppError;
use crate::project::CorruptProject;
use crate::store::StoreError;

/// Why a coordinator could not start or stopped. Its `Display` carries the whole cause, for the logs; the API
/// answers it through `From<TrainingError> for AppError` (a 409 for a project without a dataset, else a 500
/// whose cause stays in the logs).
#[derive(Debug, thiserror::Error)]
pub enum TrainingError {
    /// The project has no dataset to train on.
    #[error("the project has no dataset; upload one before training")]
    NoDataset,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("object store: {0}")]
    Store(#[from] StoreError),
    /// Anything else, with its context chain (a stored model that no longer validates, a corrupt shard or
    /// checkpoint, a failed evaluation task).
    #[error("{0:#}")]
    Other(anyhow::Error),
}

impl TrainingError {
    /// An error of `context` caused by `cause`.
    pub fn other(context: &str, cause: impl std::fmt::Display) -> TrainingError {
        TrainingError::Other(anyhow::anyhow!("{context}: {cause}"))
    }
}

impl From<CorruptProject> for TrainingError {
    fn from(e: CorruptProject) -> TrainingError {
        TrainingError::Other(e.0)
    }
}

impl From<TrainingError> for AppError {
    fn from(e: TrainingError) -> AppError {
        match e {
            TrainingError::NoDataset => {
                AppError::Conflict { message: TrainingError::NoDataset.to_string(), field: "dataset" }
            }
            other => AppError::Internal(anyhow::Error::new(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_reach_the_message() {
        let e = TrainingError::from(CorruptProject(anyhow::anyhow!("disk full").context("writing a checkpoint")));
        assert_eq!(e.to_string(), "writing a checkpoint: disk full");
        let e = TrainingError::other("reading trainer state", "unexpected end of input");
        assert_eq!(e.to_string(), "reading trainer state: unexpected end of input");
        assert!(matches!(AppError::from(TrainingError::NoDataset), AppError::Conflict { field: "dataset", .. }));
    }
}
