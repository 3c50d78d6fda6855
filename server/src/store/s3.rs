//! `S3Store`: objects in an S3 bucket, on AWS or any S3-compatible server, through `aws-sdk-s3`.
//!
//! Key `k` is stored as `PREFIX/k` when the configuration sets a prefix. Streamed uploads are read one part
//! ([`S3_PART_BYTES`]) at a time: a source that ends within the first part becomes one `PutObject`; a longer
//! one becomes a multipart upload, which S3 only turns into an object when it is completed, and which is
//! aborted when the source or a request fails (or, in the background, when the upload is cancelled).
//!
//! The HTTP client is hyper with rustls and ring, built here, instead of the SDK's default TLS stack.

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, ProvideCredentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketLocationConstraint, CompletedMultipartUpload, CompletedPart, CreateBucketConfiguration, Delete,
    ObjectIdentifier,
};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use bytes::Bytes;
use tokio::io::AsyncReadExt;

use super::{
    ObjectMeta, ObjectSource, ObjectStore, ObjectStream, S3Config, StoreError, normalize_prefix, validate_key,
};

/// The size of each part of a multipart upload, and the size above which a streamed upload uses one. S3
/// requires parts (except the last) of at least 5 MiB and allows 10,000 parts: objects up to about 78 GiB.
pub const S3_PART_BYTES: usize = 8 << 20;

/// The most parts S3 accepts in one multipart upload.
const MAX_PARTS: i32 = 10_000;

/// The most keys one `DeleteObjects` request may name.
const DELETE_BATCH: usize = 1000;

/// Objects in an S3 bucket.
#[derive(Clone, Debug)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// `""` or a normalised prefix ending in `/`, put before every key.
    prefix: String,
}

impl S3Store {
    /// Connects to the service `config` names, checks that credentials are available and that the bucket
    /// exists, creating it if `config.create_bucket` is set.
    ///
    /// # Errors
    /// [`StoreError::Config`] if the settings are invalid, no credentials are found, or the bucket is missing
    /// and may not be created; [`StoreError::Backend`] if the service cannot be reached or refuses.
    pub async fn open(config: &S3Config) -> Result<Self, StoreError> {
        config.validate()?;
        let http_client =
            aws_smithy_http_client::Builder::new().tls_provider(tls::Provider::Rustls(CryptoMode::Ring)).build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http_client)
            .region(Region::new(config.region.clone()));
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            loader = loader.credentials_provider(Credentials::new(id, secret, None, None, "daig-store-config"));
        }
        let sdk_config = loader.load().await;

        // Fails early, with a message saying what to set, rather than on the first request.
        let no_credentials = |detail: String| {
            StoreError::Config(format!(
                "no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile), or \
                 store.access_key_id and store.secret_access_key ({detail})"
            ))
        };
        let provider = sdk_config.credentials_provider().ok_or_else(|| no_credentials("no provider".into()))?;
        provider.provide_credentials().await.map_err(|e| no_credentials(DisplayErrorContext(&e).to_string()))?;

        let s3_config = aws_sdk_s3::config::Builder::from(&sdk_config)
            .force_path_style(config.path_style)
            // Checksums only where an operation requires them: S3-compatible servers differ in their support of
            // the newer flexible checksums, and TLS already protects the data in transit.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        let prefix = match &config.prefix {
            Some(prefix) => normalize_prefix(prefix)?,
            None => String::new(),
        };
        let store = Self { client: Client::from_conf(s3_config), bucket: config.bucket.clone(), prefix };
        store.ensure_bucket(config).await?;
        Ok(store)
    }

    async fn ensure_bucket(&self, config: &S3Config) -> Result<(), StoreError> {
        let bucket = &self.bucket;
        let err = match self.client.head_bucket().bucket(bucket).send().await {
            Ok(_) => return Ok(()),
            Err(err) => err,
        };
        let missing = err.as_service_error().is_some_and(|e| e.is_not_found()) || status(&err) == Some(404);
        if !missing {
            return Err(backend(&format!("checking bucket {bucket:?}"), &err));
        }
        if !config.create_bucket {
            return Err(StoreError::Config(format!(
                "bucket {bucket:?} does not exist; create it, or set store.create_bucket = true"
            )));
        }
        let mut request = self.client.create_bucket().bucket(bucket);
        // us-east-1 is the default location and must not be named.
        if config.region != "us-east-1" {
            request = request.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(config.region.as_str()))
                    .build(),
            );
        }
        match request.send().await {
            Ok(_) => Ok(()),
            // Created by someone else in the meantime.
            Err(err) if err.as_service_error().is_some_and(|e| e.is_bucket_already_owned_by_you()) => Ok(()),
            Err(err) => Err(backend(&format!("creating bucket {bucket:?}"), &err)),
        }
    }

    fn full_key(&self, key: &str) -> Result<String, StoreError> {
        validate_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    /// Every object under the store's prefix followed by the normalised `prefix`, sorted by key.
    async fn list_full(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let full_prefix = format!("{}{prefix}", self.prefix);
        let mut pages = self.client.list_objects_v2().bucket(&self.bucket).prefix(&full_prefix).into_paginator().send();
        let mut objects = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| backend(&format!("listing {full_prefix:?}"), &e))?;
            for object in page.contents() {
                let Some(key) = object.key().and_then(|k| k.strip_prefix(&self.prefix)) else { continue };
                let size_bytes = u64::try_from(object.size().unwrap_or(0)).unwrap_or(0);
                objects.push(ObjectMeta { key: key.to_owned(), size_bytes });
            }
        }
        objects.sort();
        Ok(objects)
    }

    async fn put_multipart(
        &self,
        key: &str,
        full_key: &str,
        first_part: Vec<u8>,
        source: ObjectSource<'_>,
    ) -> Result<ObjectMeta, StoreError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(full_key)
            .send()
            .await
            .map_err(|e| backend(&format!("starting the upload of {key:?}"), &e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| StoreError::Backend(format!("starting the upload of {key:?}: no upload id returned")))?;
        let mut guard = AbortOnDrop {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: full_key.to_owned(),
            upload_id: Some(upload_id.to_owned()),
        };
        let result = self.upload_parts(key, full_key, upload_id, first_part, source).await;
        match result {
            Ok(meta) => {
                guard.upload_id = None;
                Ok(meta)
            }
            Err(error) => {
                guard.upload_id = None;
                // Best effort: a failed abort leaves only invisible parts, which a bucket lifecycle rule removes.
                let _ = abort(&self.client, &self.bucket, full_key, upload_id).await;
                Err(error)
            }
        }
    }

    async fn upload_parts(
        &self,
        key: &str,
        full_key: &str,
        upload_id: &str,
        first_part: Vec<u8>,
        source: ObjectSource<'_>,
    ) -> Result<ObjectMeta, StoreError> {
        let mut completed = Vec::new();
        let mut size_bytes = 0u64;
        let mut part = first_part;
        let mut part_number = 1;
        loop {
            if part.is_empty() {
                break;
            }
            if part_number > MAX_PARTS {
                return Err(StoreError::Backend(format!(
                    "object {key:?} is too large for S3: more than {MAX_PARTS} parts of {S3_PART_BYTES} bytes"
                )));
            }
            size_bytes += part.len() as u64;
            let full = part.len() == S3_PART_BYTES;
            let uploaded = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(full_key)
                .upload_id(upload_id)
                .part_number(part_number)
                .content_length(part.len() as i64)
                .body(ByteStream::from(part))
                .send()
                .await
                .map_err(|e| backend(&format!("uploading part {part_number} of {key:?}"), &e))?;
            completed.push(
                CompletedPart::builder()
                    .part_number(part_number)
                    .set_e_tag(uploaded.e_tag().map(str::to_owned))
                    .build(),
            );
            if !full {
                break;
            }
            part_number += 1;
            part = read_part(key, source).await?;
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(full_key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(completed)).build())
            .send()
            .await
            .map_err(|e| backend(&format!("completing the upload of {key:?}"), &e))?;
        Ok(ObjectMeta { key: key.to_owned(), size_bytes })
    }

    async fn get_object(&self, key: &str) -> Result<aws_sdk_s3::operation::get_object::GetObjectOutput, StoreError> {
        let full_key = self.full_key(key)?;
        self.client.get_object().bucket(&self.bucket).key(&full_key).send().await.map_err(|err| {
            if err.as_service_error().is_some_and(|e| e.is_no_such_key()) || status(&err) == Some(404) {
                StoreError::NotFound(key.to_owned())
            } else {
                backend(&format!("reading {key:?}"), &err)
            }
        })
    }
}

/// Aborts a multipart upload in the background if the upload's future is dropped before it finishes.
struct AbortOnDrop {
    client: Client,
    bucket: String,
    key: String,
    upload_id: Option<String>,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(upload_id) = self.upload_id.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let (client, bucket, key) = (self.client.clone(), self.bucket.clone(), self.key.clone());
            runtime.spawn(async move {
                let _ = abort(&client, &bucket, &key, &upload_id).await;
            });
        }
    }
}

async fn abort(client: &Client, bucket: &str, key: &str, upload_id: &str) -> Result<(), StoreError> {
    client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| backend(&format!("aborting the upload of {key:?}"), &e))
}

/// Reads up to one part from `source`; shorter only at the end of the source.
async fn read_part(key: &str, source: ObjectSource<'_>) -> Result<Vec<u8>, StoreError> {
    let mut part = Vec::with_capacity(S3_PART_BYTES);
    source
        .take(S3_PART_BYTES as u64)
        .read_to_end(&mut part)
        .await
        .map_err(|e| StoreError::io(format!("reading the data for object {key:?} failed"), e))?;
    Ok(part)
}

fn status<E, R: HasStatus>(err: &SdkError<E, R>) -> Option<u16> {
    err.raw_response().map(HasStatus::status_code)
}

/// The HTTP status of a raw response, whatever its type.
trait HasStatus {
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

fn backend<E, R>(what: &str, err: &SdkError<E, R>) -> StoreError
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
{
    let detail = match err.as_service_error() {
        Some(service) => {
            format!("{}: {}", service.code().unwrap_or("unknown error"), service.message().unwrap_or("no message"))
        }
        None => DisplayErrorContext(err).to_string(),
    };
    StoreError::Backend(format!("S3 {what} failed: {detail}"))
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, data: Bytes) -> Result<ObjectMeta, StoreError> {
        let full_key = self.full_key(key)?;
        let size_bytes = data.len() as u64;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&full_key)
            .content_length(data.len() as i64)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| backend(&format!("storing {key:?}"), &e))?;
        Ok(ObjectMeta { key: key.to_owned(), size_bytes })
    }

    async fn put_stream(&self, key: &str, source: ObjectSource<'_>) -> Result<ObjectMeta, StoreError> {
        let full_key = self.full_key(key)?;
        let first_part = read_part(key, source).await?;
        if first_part.len() < S3_PART_BYTES {
            return self.put(key, Bytes::from(first_part)).await;
        }
        self.put_multipart(key, &full_key, first_part, source).await
    }

    async fn get(&self, key: &str, max_bytes: u64) -> Result<Bytes, StoreError> {
        let object = self.get_object(key).await?;
        let size_bytes = u64::try_from(object.content_length().unwrap_or(0)).unwrap_or(0);
        if size_bytes > max_bytes {
            // Dropping the body closes the connection without reading it.
            return Err(StoreError::TooLarge { key: key.to_owned(), size_bytes, max_bytes });
        }
        let mut data = Vec::with_capacity(usize::try_from(size_bytes).unwrap_or(0));
        object
            .body
            .into_async_read()
            .take(max_bytes.saturating_add(1))
            .read_to_end(&mut data)
            .await
            .map_err(|e| StoreError::Backend(format!("S3 reading {key:?} failed: {e}")))?;
        if data.len() as u64 > max_bytes {
            return Err(StoreError::TooLarge { key: key.to_owned(), size_bytes: data.len() as u64, max_bytes });
        }
        Ok(Bytes::from(data))
    }

    async fn get_stream(&self, key: &str) -> Result<ObjectStream, StoreError> {
        let object = self.get_object(key).await?;
        let size_bytes = u64::try_from(object.content_length().unwrap_or(0)).unwrap_or(0);
        Ok(ObjectStream { size_bytes, reader: Box::new(object.body.into_async_read()) })
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        let full_key = self.full_key(key)?;
        match self.client.head_object().bucket(&self.bucket).key(&full_key).send().await {
            Ok(head) => Ok(ObjectMeta {
                key: key.to_owned(),
                size_bytes: u64::try_from(head.content_length().unwrap_or(0)).unwrap_or(0),
            }),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) || status(&err) == Some(404) => {
                Err(StoreError::NotFound(key.to_owned()))
            }
            Err(err) => Err(backend(&format!("reading the size of {key:?}"), &err)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let full_key = self.full_key(key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&full_key)
            .send()
            .await
            .map_err(|e| backend(&format!("deleting {key:?}"), &e))?;
        Ok(())
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        let prefix = normalize_prefix(prefix)?;
        if prefix.is_empty() {
            return Err(StoreError::invalid_key("", "deleting every object (an empty prefix) is refused"));
        }
        let objects = self.list_full(&prefix).await?;
        let mut deleted = 0u64;
        for batch in objects.chunks(DELETE_BATCH) {
            let identifiers = batch
                .iter()
                .map(|o| ObjectIdentifier::builder().key(format!("{}{}", self.prefix, o.key)).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StoreError::Backend(format!("S3 deleting under {prefix:?} failed: {e}")))?;
            let delete = Delete::builder()
                .set_objects(Some(identifiers))
                .quiet(true)
                .build()
                .map_err(|e| StoreError::Backend(format!("S3 deleting under {prefix:?} failed: {e}")))?;
            let output = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| backend(&format!("deleting under {prefix:?}"), &e))?;
            if let Some(first) = output.errors().first() {
                return Err(StoreError::Backend(format!(
                    "S3 deleting under {prefix:?} failed for {} of {} objects, first {:?}: {} {}",
                    output.errors().len(),
                    batch.len(),
                    first.key().unwrap_or("?"),
                    first.code().unwrap_or("unknown error"),
                    first.message().unwrap_or("")
                )));
            }
            deleted += batch.len() as u64;
        }
        Ok(deleted)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let prefix = normalize_prefix(prefix)?;
        self.list_full(&prefix).await
    }
}
