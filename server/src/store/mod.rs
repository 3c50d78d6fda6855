//! Object storage: dataset shards, uploads, checkpoints and trained models, stored under string keys.
//!
//! The server sees one trait, [`ObjectStore`], used as `Arc<dyn ObjectStore>` from its handlers, with two
//! implementations chosen by [`StoreConfig`] through [`open`]:
//!
//! - [`LocalStore`]: files under a root directory. Writes go to a temporary file in the target directory,
//!   are fsynced and renamed into place, so an interrupted upload never leaves a half-written object.
//! - [`S3Store`]: any S3-compatible service through `aws-sdk-s3`; streamed uploads of more than one part
//!   ([`S3_PART_BYTES`]) use a multipart upload, which is aborted when the upload fails.
//!
//! Keys are `/`-separated paths such as `projects/42/shards/train-0003.bin`, validated by every operation
//! (see [`validate_key`]). Prefixes, for listing and deleting, always cover whole segments (see
//! [`normalize_prefix`]). Both implementations pass the same conformance suite (`server/tests/store.rs`).

mod config;
mod error;
mod key;
mod local;
mod s3;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncRead;

pub use config::{DEFAULT_LOCAL_ROOT, S3Config, StoreConfig};
pub use error::StoreError;
pub use key::{MAX_KEY_BYTES, MAX_SEGMENT_BYTES, normalize_prefix, validate_key};
pub use local::LocalStore;
pub use s3::{S3_PART_BYTES, S3Store};

/// A source of bytes for a streamed upload.
pub type ObjectSource<'a> = &'a mut (dyn AsyncRead + Send + Unpin);

/// A stored object's key and size.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectMeta {
    /// The object's key, as given to [`ObjectStore::put`].
    pub key: String,
    /// Its size in bytes.
    pub size_bytes: u64,
}

/// An object opened for reading, for downloads that should not be held in memory.
pub struct ObjectStream {
    /// The object's size in bytes, for a `Content-Length` header.
    pub size_bytes: u64,
    /// The object's bytes.
    pub reader: Box<dyn AsyncRead + Send + Unpin>,
}

impl fmt::Debug for ObjectStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStream").field("size_bytes", &self.size_bytes).finish_non_exhaustive()
    }
}

/// Object storage as the server uses it. Every method validates its key or prefix first.
///
/// Writes replace any object under the same key and are all-or-nothing: a failed or cancelled put leaves
/// either the previous object or none, never a partial one.
#[async_trait]
pub trait ObjectStore: Send + Sync + fmt::Debug {
    /// Stores `data` under `key`, for small objects (checkpoints, model files) already in memory.
    ///
    /// # Errors
    /// [`StoreError::InvalidKey`], or [`StoreError::Io`] / [`StoreError::Backend`] if storing fails.
    async fn put(&self, key: &str, data: Bytes) -> Result<ObjectMeta, StoreError>;

    /// Stores everything `source` yields under `key`, without holding it all in memory (at most one
    /// [`S3_PART_BYTES`] part for S3, a small buffer for local files).
    ///
    /// # Errors
    /// [`StoreError::InvalidKey`]; [`StoreError::Io`] if `source` fails (then nothing is stored under `key`);
    /// [`StoreError::Io`] / [`StoreError::Backend`] if storing fails.
    async fn put_stream(&self, key: &str, source: ObjectSource<'_>) -> Result<ObjectMeta, StoreError>;

    /// Stores the contents of the local file at `path` under `key`, streamed.
    ///
    /// # Errors
    /// As [`ObjectStore::put_stream`], and [`StoreError::Io`] if the file cannot be opened.
    async fn put_file(&self, key: &str, path: &Path) -> Result<ObjectMeta, StoreError> {
        validate_key(key)?;
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| StoreError::io(format!("cannot open {} to store it as {key:?}", path.display()), e))?;
        self.put_stream(key, &mut file).await
    }

    /// Reads the whole object under `key`, refusing it before reading if it is larger than `max_bytes`.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::TooLarge`], [`StoreError::InvalidKey`], or
    /// [`StoreError::Io`] / [`StoreError::Backend`] if reading fails.
    async fn get(&self, key: &str, max_bytes: u64) -> Result<Bytes, StoreError>;

    /// Opens the object under `key` for streaming, for downloads.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::InvalidKey`], or [`StoreError::Io`] / [`StoreError::Backend`].
    /// Errors while reading come from the returned reader as `std::io::Error`.
    async fn get_stream(&self, key: &str) -> Result<ObjectStream, StoreError>;

    /// The key and size of the object under `key`.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::InvalidKey`], or [`StoreError::Io`] / [`StoreError::Backend`].
    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError>;

    /// Whether an object is stored under `key`.
    ///
    /// # Errors
    /// As [`ObjectStore::head`], except that a missing object is `Ok(false)`.
    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        match self.head(key).await {
            Ok(_) => Ok(true),
            Err(StoreError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes the object under `key`. Deleting a missing object is not an error (as in S3).
    ///
    /// # Errors
    /// [`StoreError::InvalidKey`], or [`StoreError::Io`] / [`StoreError::Backend`] if deleting fails.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// Deletes every object under `prefix` (whole segments: see [`normalize_prefix`]), for example all of a
    /// project's objects under `projects/42`, and returns how many were deleted.
    ///
    /// # Errors
    /// [`StoreError::InvalidKey`] if the prefix is invalid or empty (deleting everything is refused), or
    /// [`StoreError::Io`] / [`StoreError::Backend`] if deleting fails (some objects may then remain).
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError>;

    /// The objects under `prefix` (whole segments; `""` for all), sorted by key.
    ///
    /// # Errors
    /// [`StoreError::InvalidKey`] if the prefix is invalid, or [`StoreError::Io`] / [`StoreError::Backend`].
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError>;
}

/// Opens the store that `config` describes: creates the local root, or connects to S3, checks that
/// credentials are available and that the bucket exists (creating it if `create_bucket` is set).
///
/// # Errors
/// [`StoreError::Config`] if the configuration is invalid, no credentials are found or the bucket is missing;
/// [`StoreError::Io`] if the local root cannot be created; [`StoreError::Backend`] if S3 cannot be reached.
pub async fn open(config: &StoreConfig) -> Result<Arc<dyn ObjectStore>, StoreError> {
    config.validate()?;
    Ok(match config {
        StoreConfig::Local { root } => Arc::new(LocalStore::open(root).await?),
        StoreConfig::S3(s3) => Arc::new(S3Store::open(s3).await?),
    })
}
