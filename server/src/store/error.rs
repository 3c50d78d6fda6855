//! The one error type of the object store, shared by every backend.

use std::io;

/// What went wrong in an object-store operation.
///
/// Messages name the key or the setting involved, so that a person reading a log can act on them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No object is stored under the key.
    #[error("no object is stored under key {0:?}")]
    NotFound(String),
    /// The key (or prefix) is not allowed; keys may come from user input, so this is a client error.
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey {
        /// The key as given.
        key: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// The object is larger than the caller accepts; nothing was read.
    #[error("object {key:?} is {size_bytes} bytes, more than the limit of {max_bytes} bytes")]
    TooLarge {
        /// The object's key.
        key: String,
        /// The object's size as stored.
        size_bytes: u64,
        /// The limit the caller gave.
        max_bytes: u64,
    },
    /// A local file operation failed, or the data source of an upload failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the key or path.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The S3 service (or the connection to it) returned an error.
    #[error("object store backend error: {0}")]
    Backend(String),
    /// The store's configuration is invalid or does not match what exists (a missing bucket, say).
    #[error("invalid object store configuration: {0}")]
    Config(String),
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }

    pub(crate) fn invalid_key(key: &str, reason: impl Into<String>) -> Self {
        Self::InvalidKey { key: key.to_owned(), reason: reason.into() }
    }
}
