//! `StoreConfig`: which object store the server uses, as written in its TOML configuration.
//!
//! ```toml
//! [store]
//! kind = "local"
//! root = "./daig-data/objects"
//! ```
//!
//! ```toml
//! [store]
//! kind = "s3"
//! endpoint = "http://127.0.0.1:9000"   # omit for AWS
//! region = "us-east-1"
//! bucket = "daig"
//! path_style = true                   # most S3-compatible servers need it
//! create_bucket = true
//! prefix = "prod"                     # optional: every key is stored under prod/
//! ```
//!
//! S3 credentials come from the usual AWS sources (`AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, or a
//! profile, web identity, ECS or EC2 instance credentials) unless both `access_key_id` and
//! `secret_access_key` are set here.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{StoreError, normalize_prefix};

/// The local store's root when the configuration names none.
pub const DEFAULT_LOCAL_ROOT: &str = "./daig-data/objects";

/// Which object store to use, and its settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoreConfig {
    /// Files under a directory on this machine.
    Local {
        /// The directory holding the objects, created if missing.
        #[serde(default = "default_root")]
        root: PathBuf,
    },
    /// An S3 bucket, on AWS or an S3-compatible server.
    S3(S3Config),
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self::Local { root: default_root() }
    }
}

fn default_root() -> PathBuf {
    PathBuf::from(DEFAULT_LOCAL_ROOT)
}

fn default_region() -> String {
    "us-east-1".to_owned()
}

/// Settings of the S3 store.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The service's URL, such as `http://127.0.0.1:9000`; `None` for AWS itself.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The region requests are signed for (S3-compatible servers usually accept any).
    #[serde(default = "default_region")]
    pub region: String,
    /// The bucket holding the objects.
    pub bucket: String,
    /// Address the bucket in the path (`endpoint/bucket/key`) instead of the host name, as most
    /// S3-compatible servers require.
    #[serde(default)]
    pub path_style: bool,
    /// Create the bucket at start-up if it does not exist, instead of refusing to start.
    #[serde(default)]
    pub create_bucket: bool,
    /// A key prefix inside the bucket (whole segments), so that several deployments can share a bucket.
    #[serde(default)]
    pub prefix: Option<String>,
    /// An access key given here instead of through the environment; needs `secret_access_key` too.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// The secret for `access_key_id`. Never printed by `Debug`.
    #[serde(default)]
    pub secret_access_key: Option<String>,
}

impl S3Config {
    /// Settings for `bucket` in the default region, virtual-hosted style, no prefix, credentials from the
    /// environment.
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            endpoint: None,
            region: default_region(),
            bucket: bucket.into(),
            path_style: false,
            create_bucket: false,
            prefix: None,
            access_key_id: None,
            secret_access_key: None,
        }
    }
}

// Written by hand so that the secret never reaches a log.
impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("path_style", &self.path_style)
            .field("create_bucket", &self.create_bucket)
            .field("prefix", &self.prefix)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl StoreConfig {
    /// Checks the settings without touching the file system or the network.
    ///
    /// # Errors
    /// [`StoreError::Config`] naming the setting that is wrong.
    pub fn validate(&self) -> Result<(), StoreError> {
        match self {
            Self::Local { root } => {
                if root.as_os_str().is_empty() {
                    return Err(StoreError::Config("store.root is empty; name the directory for objects".into()));
                }
                Ok(())
            }
            Self::S3(s3) => s3.validate(),
        }
    }
}

impl S3Config {
    /// Checks the settings without touching the network.
    ///
    /// # Errors
    /// [`StoreError::Config`] naming the setting that is wrong.
    pub fn validate(&self) -> Result<(), StoreError> {
        let bucket = &self.bucket;
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
            && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !bucket_ok {
            return Err(StoreError::Config(format!(
                "store.bucket {bucket:?} is not a valid bucket name: 3 to 63 lowercase letters, digits, '-' or \
                 '.', starting and ending with a letter or digit"
            )));
        }
        if self.region.trim().is_empty() {
            return Err(StoreError::Config("store.region is empty; S3-compatible servers accept us-east-1".into()));
        }
        if let Some(endpoint) = &self.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(StoreError::Config(format!(
                "store.endpoint {endpoint:?} must be a URL starting with http:// or https://"
            )));
        }
        if let Some(prefix) = &self.prefix {
            if prefix.is_empty() {
                return Err(StoreError::Config("store.prefix is empty; leave it out for no prefix".into()));
            }
            normalize_prefix(prefix).map_err(|e| StoreError::Config(format!("store.prefix: {e}")))?;
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return Err(StoreError::Config(
                "store.access_key_id and store.secret_access_key must be set together (or both left out to use \
                 AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
                    .into(),
            ));
        }
        Ok(())
    }
}
