//! Datasets: `PUT /api/projects/{id}/dataset/{features,labels}?format=npy|npz|idx|csv` streams one part to a file under
//! `<data_dir>/uploads/<id>/` (never into memory, up to `max_upload_bytes`); once both parts are there (or on
//! `POST /api/projects/{id}/dataset/commit`) they are checked against the model and cut into shards stored under
//! `projects/<id>/shards/`, and the dataset is registered.
//!
//! All or nothing: an interrupted or oversized upload leaves no file behind; a dataset that fails validation is
//! answered 422, its uploads are removed and any shard already written is deleted, so that nothing is registered
//! and a new upload starts clean. Shards and the dataset row are registered in one transaction, after every shard
//! is stored.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, header};
use bytes::Bytes;
use daig_shared::data::npz::{self, NpzArchive};
use daig_shared::data::{
    self, DataError, DataRequirements, Labels, RawArray, SampleSource, ShardHeader, ShardPlan, ShardRole, check,
    shard_dataset,
};
use http_body_util::BodyExt as _;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;
use utoipa::ToSchema;

use super::projects::{DatasetSummary, ProjectRow, ProjectState, load_owned};
use crate::auth::{CurrentUser, secret};
use crate::db::now_unix;
use crate::error::{AppError, ErrorBody};
use crate::extract::{Json, Path};
use crate::state::AppState;
use crate::store::ObjectStore;

/// The two parts of a dataset.
const PARTS: [&str; 2] = ["features", "labels"];

/// An upload format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Npy,
    Idx,
    /// CSV with a header row, the label in the last column: one file holds both parts, uploaded as `features`.
    Csv,
    /// A `.npz` archive: the part's array is its only one, or the first of the shared reader's usual names
    /// (`x`, `features`, `images`, ... for features; `y`, `labels`, ... for labels), so one archive holding both
    /// can be uploaded as both parts.
    Npz,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Self::Npy => "npy",
            Self::Idx => "idx",
            Self::Npz => "npz",
            Self::Csv => "csv",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name {
            "npy" => Some(Self::Npy),
            "idx" => Some(Self::Idx),
            "npz" => Some(Self::Npz),
            "csv" => Some(Self::Csv),
            _ => None,
        }
    }
}

/// Where a project's dataset stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct DatasetStatus {
    /// The parts uploaded and waiting for the commit (`features`, `labels`), sorted.
    pub uploaded: Vec<String>,
    /// The committed dataset, once both parts were validated and sharded.
    pub dataset: Option<DatasetSummary>,
}

/// Uploads one part of the dataset, streamed; commits the dataset when both parts are present.
#[utoipa::path(put, path = "/api/projects/{id}/dataset/{part}", tag = "datasets",
    security(("bearer" = []), ("session" = [])),
    params(
        ("id" = i64, Path, description = "The project's id"),
        ("part" = String, Path, description = "`features` or `labels`"),
        ("format" = Option<String>, Query, description = "`npy` (the default), `npz`, `idx` or `csv` (features \
         only: a header row and the label in the last column, so the file is both parts)"),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
                 description = "The file, up to the server's `max_upload_bytes`"),
    responses(
        (status = 200, description = "Stored; `dataset` is set once both parts are committed", body = DatasetStatus),
        (status = 400, description = "Unknown part or format, or the upload was interrupted", body = ErrorBody),
        (status = 401, description = "No valid credentials", body = ErrorBody),
        (status = 403, description = "Session cookie without a matching X-CSRF-Token", body = ErrorBody),
        (status = 404, description = "No project with this id belongs to the caller", body = ErrorBody),
        (status = 409, description = "The project is not a draft, already has a dataset, or is being committed",
         body = ErrorBody),
        (status = 413, description = "Larger than `max_upload_bytes`", body = ErrorBody),
        (status = 422, description = "The dataset does not fit the model, or a file is invalid (pickles are \
                                      refused)", body = ErrorBody),
    )
)]
pub async fn upload_part(
    State(state): State<AppState>,
    user: CurrentUser,
    Path((id, part)): Path<(i64, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<DatasetStatus>, AppError> {
    let Some(part) = PARTS.into_iter().find(|p| *p == part) else {
        return Err(AppError::BadRequest(format!("unknown dataset part {part:?}: use features or labels")));
    };
    let format = parse_format(query.as_deref())?;
    if format == Format::Csv && part == "labels" {
        return Err(AppError::BadRequest(
            "a CSV file holds the labels beside the features: upload it once, as features".into(),
        ));
    }
    let project = load_owned(&state, &user, id).await?;
    check_open(&state, &project).await?;
    let limit = state.settings().max_upload_bytes;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(AppError::PayloadTooLarge);
    }
    let dir = uploads_dir(&state, project.id);
    tokio::fs::create_dir_all(&dir).await.map_err(internal("creating the uploads directory"))?;
    let partial = dir.join(format!("{part}.{}.partial", secret::random_secret()?));
    if let Err(e) = receive(body, &partial, limit).await {
        remove_file_quietly(&partial).await;
        return Err(e);
    }
    // One file per part: a new upload replaces the previous one, in whatever format it was.
    for other in Format::all() {
        remove_file_quietly(&dir.join(format!("{part}.{}", other.name()))).await;
    }
    tokio::fs::rename(&partial, dir.join(format!("{part}.{}", format.name())))
        .await
        .map_err(internal("moving the upload into place"))?;
    let uploads = uploaded(&dir).await;
    if complete(&uploads) {
        let dataset = commit(&state, &project, &uploads).await?;
        return Ok(Json(DatasetStatus { uploaded: Vec::new(), dataset: Some(dataset) }));
    }
    Ok(Json(DatasetStatus { uploaded: uploads.iter().map(|(p, ..)| (*p).to_owned()).collect(), dataset: None }))
}

/// Validates and shards the uploaded parts now (an upload of the second part does this itself).
#[utoipa::path(post, path = "/api/projects/{id}/dataset/commit", tag = "datasets",
    security(("bearer" = []), ("session" = [])),
    params(("id" = i64, Path, description = "The project's id")),
    responses(
        (status = 200, description = "Committed", body = DatasetStatus),
        (status = 401, description = "No valid credentials", body = ErrorBody),
        (status = 403, description = "Session cookie without a matching X-CSRF-Token", body = ErrorBody),
        (status = 404, description = "No project with this id belongs to the caller", body = ErrorBody),
        (status = 409, description = "A part is missing, the project is not a draft or already has a dataset",
         body = ErrorBody),
        (status = 422, description = "The dataset does not fit the model, or a file is invalid", body = ErrorBody),
    )
)]
pub async fn commit_dataset(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<DatasetStatus>, AppError> {
    let project = load_owned(&state, &user, id).await?;
    check_open(&state, &project).await?;
    let uploads = uploaded(&uploads_dir(&state, project.id)).await;
    if !complete(&uploads) {
        let missing: Vec<&str> = PARTS.into_iter().filter(|p| !uploads.iter().any(|(u, ..)| u == p)).collect();
        return Err(AppError::Conflict {
            message: format!("upload the {} first", missing.join(" and ")),
            field: "dataset",
        });
    }
    let dataset = commit(&state, &project, &uploads).await?;
    Ok(Json(DatasetStatus { uploaded: Vec::new(), dataset: Some(dataset) }))
}

impl Format {
    fn all() -> [Self; 4] {
        [Self::Npy, Self::Idx, Self::Npz, Self::Csv]
    }
}

fn parse_format(query: Option<&str>) -> Result<Format, AppError> {
    let mut format = Format::Npy;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("format", value)) => {
                format = Format::parse(value).ok_or_else(|| {
                    AppError::BadRequest(format!("unknown format {value:?}: use npy, npz, idx or csv"))
                })?;
            }
            _ => return Err(AppError::BadRequest(format!("unknown query parameter {pair:?}: only format is read"))),
        }
    }
    Ok(format)
}

/// 409 unless the project is a draft without a dataset.
async fn check_open(state: &AppState, project: &ProjectRow) -> Result<(), AppError> {
    if project.state()? != ProjectState::Draft {
        return Err(AppError::Conflict {
            message: format!("the dataset can only be uploaded to a draft project; this one is {}", project.state),
            field: "dataset",
        });
    }
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM datasets WHERE project_id = ?)")
        .bind(project.id)
        .fetch_one(state.db())
        .await?;
    if exists {
        return Err(AppError::Conflict {
            message: "the project already has a dataset; create a new project to train on other data".into(),
            field: "dataset",
        });
    }
    Ok(())
}

fn uploads_dir(state: &AppState, id: i64) -> PathBuf {
    state.settings().uploads_dir().join(id.to_string())
}

/// Streams `body` to `path`, refusing it once it passes `limit` bytes.
async fn receive(mut body: Body, path: &FsPath, limit: u64) -> Result<(), AppError> {
    let mut file = tokio::fs::File::create(path).await.map_err(internal("creating the upload file"))?;
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| AppError::BadRequest(format!("the upload was interrupted: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        received += data.len() as u64;
        if received > limit {
            return Err(AppError::PayloadTooLarge);
        }
        file.write_all(&data).await.map_err(internal("writing the upload"))?;
    }
    file.sync_all().await.map_err(internal("writing the upload"))?;
    Ok(())
}

/// Whether `uploads` make a dataset: features and labels, or features in CSV (which hold the labels).
fn complete(uploads: &[(&'static str, Format, PathBuf)]) -> bool {
    match uploads {
        [("features", Format::Csv, _)] => true,
        _ => uploads.len() == PARTS.len(),
    }
}

/// The parts present in `dir`: part name, format and path, in [`PARTS`] order.
async fn uploaded(dir: &FsPath) -> Vec<(&'static str, Format, PathBuf)> {
    let mut found = Vec::new();
    for part in PARTS {
        for format in Format::all() {
            let path = dir.join(format!("{part}.{}", format.name()));
            if tokio::fs::try_exists(&path).await.unwrap_or(false) {
                found.push((part, format, path));
                break;
            }
        }
    }
    found
}

async fn remove_file_quietly(path: &FsPath) {
    // A file that is already gone is what we want; any other failure leaves a stray temp file, logged.
    if let Err(e) = tokio::fs::remove_file(path).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("cannot remove {}: {e}", path.display());
    }
}

fn internal(context: &'static str) -> impl Fn(std::io::Error) -> AppError {
    move |e| AppError::Internal(anyhow::Error::new(e).context(context))
}

/// One stored shard, to be registered.
struct ShardRecord {
    role: &'static str,
    number: u32,
    key: String,
    sha256: String,
    sample_count: usize,
    size_bytes: usize,
}

/// What ingestion produced.
struct Ingested {
    shards: Vec<ShardRecord>,
    feature_dtype: String,
    sample_shape: Vec<usize>,
    train_samples: usize,
    validation_samples: usize,
}

/// Why ingestion failed: the data (a 422, uploads removed) or the server (a 500, uploads kept for a retry).
enum IngestError {
    Invalid { part: &'static str, reason: String },
    Internal(anyhow::Error),
}

impl From<DataError> for IngestError {
    fn from(e: DataError) -> Self {
        invalid("dataset")(e)
    }
}

fn invalid(part: &'static str) -> impl Fn(DataError) -> IngestError {
    move |e| match e {
        DataError::Io(e) => IngestError::Internal(anyhow::Error::new(e).context("reading the upload")),
        other => IngestError::Invalid { part, reason: other.to_string() },
    }
}

async fn commit(
    state: &AppState,
    project: &ProjectRow,
    uploads: &[(&'static str, Format, PathBuf)],
) -> Result<DatasetSummary, AppError> {
    let Some(_guard) = state.begin_ingest(project.id) else {
        return Err(AppError::Conflict {
            message: "the project's dataset is being committed by another request".into(),
            field: "dataset",
        });
    };
    let model = project.model()?;
    let settings = project.settings()?;
    let plan = ShardPlan {
        seed: settings.seed,
        validation_fraction: settings.validation_fraction,
        samples_per_shard: settings.samples_per_shard as usize,
    };
    let (features, labels) = match uploads {
        [("features", ff, fp), ("labels", lf, lp)] => ((*ff, fp.clone()), Some((*lf, lp.clone()))),
        [("features", Format::Csv, fp)] => ((Format::Csv, fp.clone()), None),
        _ => return Err(AppError::Internal(anyhow::anyhow!("commit without both parts"))),
    };
    let shard_prefix = format!("{}/shards", super::projects::prefix(project.id));
    // Shards of an earlier attempt that died half-way would otherwise linger next to the new ones.
    state.store().delete_prefix(&shard_prefix).await?;
    let store = Arc::clone(state.store());
    let requirements = model.data_requirements();
    let handle = tokio::runtime::Handle::current();
    let prefix = shard_prefix.clone();
    let result = tokio::task::spawn_blocking(move || {
        ingest(&handle, store.as_ref(), &prefix, features, labels, &requirements, &plan)
    })
    .await?;
    let ingested = match result {
        Ok(ingested) => ingested,
        Err(e) => {
            if let Err(cleanup) = state.store().delete_prefix(&shard_prefix).await {
                tracing::warn!("cannot delete the shards of a failed commit: {cleanup}");
            }
            return Err(match e {
                IngestError::Invalid { part, reason } => {
                    let _ = tokio::fs::remove_dir_all(uploads_dir(state, project.id)).await;
                    AppError::InvalidDataset { part, reason }
                }
                IngestError::Internal(e) => AppError::Internal(e),
            });
        }
    };
    if let Err(e) = register(state, project.id, &ingested, uploads).await {
        if let Err(cleanup) = state.store().delete_prefix(&shard_prefix).await {
            tracing::warn!("cannot delete the shards of a failed commit: {cleanup}");
        }
        return Err(e);
    }
    let _ = tokio::fs::remove_dir_all(uploads_dir(state, project.id)).await;
    let train_shards = ingested.shards.iter().filter(|s| s.role == "train").count();
    Ok(DatasetSummary {
        format: uploads[0].1.name().to_owned(),
        feature_dtype: ingested.feature_dtype,
        sample_shape: ingested.sample_shape,
        train_samples: ingested.train_samples as i64,
        validation_samples: ingested.validation_samples as i64,
        train_shards: train_shards as i64,
        validation_shards: (ingested.shards.len() - train_shards) as i64,
    })
}

async fn register(
    state: &AppState,
    project_id: i64,
    ingested: &Ingested,
    uploads: &[(&'static str, Format, PathBuf)],
) -> Result<(), AppError> {
    let mut tx = state.db().begin().await?;
    let shape = serde_json::to_string(&ingested.sample_shape)
        .map_err(|e| AppError::Internal(anyhow::Error::new(e).context("serialising the sample shape")))?;
    sqlx::query(
        "INSERT INTO datasets (project_id, format, feature_dtype, sample_shape, train_samples, validation_samples,
                               created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(project_id)
    .bind(uploads[0].1.name())
    .bind(&ingested.feature_dtype)
    .bind(shape)
    .bind(ingested.train_samples as i64)
    .bind(ingested.validation_samples as i64)
    .bind(now_unix())
    .execute(&mut *tx)
    .await?;
    for shard in &ingested.shards {
        sqlx::query(
            "INSERT INTO shards (project_id, role, number, object_key, sha256, sample_count, size_bytes)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(project_id)
        .bind(shard.role)
        .bind(shard.number)
        .bind(&shard.key)
        .bind(&shard.sha256)
        .bind(shard.sample_count as i64)
        .bind(shard.size_bytes as i64)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Reads the labels part whole.
fn read_labels(
    (format, path): (Format, PathBuf),
    limits: &data::Limits,
    open: impl Fn(&FsPath) -> Result<std::fs::File, IngestError>,
) -> Result<RawArray, IngestError> {
    let file = std::io::BufReader::new(open(&path)?);
    match format {
        Format::Npy => data::npy::read(file, limits),
        Format::Idx => data::idx::read(file, limits),
        Format::Npz => NpzArchive::new(file, limits).and_then(|mut archive| {
            let name = npz_array(&archive, &npz::LABEL_NAMES)?;
            archive.read_array(&name)
        }),
        Format::Csv => return Err(IngestError::Internal(anyhow::anyhow!("CSV labels without CSV features"))),
    }
    .map_err(invalid("labels"))
}

/// The array of an archive to use for a part: its only array, or the first of `names` it holds.
fn npz_array<R: std::io::Read + std::io::Seek>(archive: &NpzArchive<R>, names: &[&str]) -> Result<String, DataError> {
    match archive.names().as_slice() {
        [only] => Ok(only.clone()),
        _ => archive.find(names),
    }
}

/// Reads, checks and shards the two parts, storing each shard as it is made. Runs on the blocking pool; the
/// store's async calls are driven with `handle`.
fn ingest(
    handle: &tokio::runtime::Handle,
    store: &dyn ObjectStore,
    prefix: &str,
    (features_format, features_path): (Format, PathBuf),
    labels_part: Option<(Format, PathBuf)>,
    requirements: &DataRequirements,
    plan: &ShardPlan,
) -> Result<Ingested, IngestError> {
    let limits = data::Limits::default();
    let open = |path: &FsPath| {
        std::fs::File::open(path).map_err(|e| IngestError::Internal(anyhow::Error::new(e).context("opening upload")))
    };
    let file = std::io::BufReader::new(open(&features_path)?);
    let mut csv_labels = None;
    let mut features = match features_format {
        Format::Csv => {
            let raw_path = features_path.with_extension("raw");
            let raw = std::fs::File::create(&raw_path)
                .map_err(|e| IngestError::Internal(anyhow::Error::new(e).context("creating the spool file")))?;
            let mut out = std::io::BufWriter::new(raw);
            let read = data::csv::read(file, &data::csv::CsvOptions::default(), &mut out, &limits)
                .and_then(|csv| std::io::Write::flush(&mut out).map(|()| csv).map_err(DataError::from))
                .map_err(invalid("features"))?;
            csv_labels = Some(read.labels);
            SampleSource::raw(std::io::BufReader::new(open(&raw_path)?), read.features, 0, &limits)
        }
        Format::Npy => SampleSource::npy(file, &limits),
        Format::Idx => SampleSource::idx(file, &limits),
        Format::Npz => {
            // Spooled to raw samples, since a compressed entry cannot be read at random.
            let raw_path = features_path.with_extension("raw");
            let raw = std::fs::File::create(&raw_path)
                .map_err(|e| IngestError::Internal(anyhow::Error::new(e).context("creating the spool file")))?;
            let info = NpzArchive::new(file, &limits)
                .and_then(|mut archive| {
                    let name = npz_array(&archive, &npz::FEATURE_NAMES)?;
                    let mut out = std::io::BufWriter::new(raw);
                    let info = archive.spool(&name, &mut out)?;
                    std::io::Write::flush(&mut out)?;
                    Ok(info)
                })
                .map_err(invalid("features"))?;
            SampleSource::raw(std::io::BufReader::new(open(&raw_path)?), info, 0, &limits)
        }
    }
    .map_err(invalid("features"))?;
    let labels: RawArray = match (csv_labels, labels_part) {
        (Some(labels), _) => labels,
        (None, Some(part)) => read_labels(part, &limits, open)?,
        (None, None) => return Err(IngestError::Internal(anyhow::anyhow!("no labels to ingest"))),
    };
    check(features.info(), &labels.info, requirements)?;
    let labels = Labels::from_array(&labels, &requirements.labels).map_err(invalid("labels"))?;
    let mut shards = Vec::new();
    let summary = shard_dataset(&mut features, &labels, plan, |role, bytes: Vec<u8>| {
        let (role, number) = match role {
            ShardRole::Train(n) => ("train", n),
            ShardRole::Validation(n) => ("validation", n),
        };
        let key = format!("{prefix}/{role}-{number:05}.bin");
        let (header, _) = ShardHeader::decode(&bytes)?;
        let sha256 = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        let size_bytes = bytes.len();
        handle
            .block_on(store.put(&key, Bytes::from(bytes)))
            .map_err(|e| IngestError::Internal(anyhow::Error::new(e).context("storing a shard")))?;
        shards.push(ShardRecord { role, number, key, sha256, sample_count: header.sample_count, size_bytes });
        Ok::<_, IngestError>(())
    })?;
    Ok(Ingested {
        shards,
        feature_dtype: features.info().dtype.name().to_owned(),
        sample_shape: features.info().sample_shape().to_vec(),
        train_samples: summary.train_samples,
        validation_samples: summary.validation_samples,
    })
}
