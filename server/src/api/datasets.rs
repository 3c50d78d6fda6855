//! Datasets: `PUT /api/projects/{id}/dataset/{features,labels}?format=npy|npz|idx|csv&...` streams one part to a
//! file under `<data_dir>/uploads/<id>/` (never into memory, up to `max_upload_bytes`); once both parts are there
//! (or on `POST /api/projects/{id}/dataset/commit`) they are checked against the model and cut into shards stored
//! under `projects/<id>/shards/gen-<N>/`, and the dataset is registered. `DELETE /api/projects/{id}/dataset`
//! removes the dataset and any pending upload.
//!
//! An uploaded part is its data file and a manifest, `<part>.json`, naming the file, its format and the options
//! it was uploaded with (CSV label column, delimiter and header row; the `.npz` array). The manifest is replaced
//! atomically (written beside, then renamed), so a part and its options always match, and a new upload of a part
//! replaces both.
//!
//! All or nothing: an interrupted or oversized upload leaves no file behind; a dataset that fails validation is
//! answered 422, its uploads are removed and any shard already written is deleted, so that nothing is registered
//! and a new upload starts clean. Shards and the dataset row are registered in one transaction, after every shard
//! is stored.
//!
//! Replacing: while the project is a draft, a new commit replaces the committed dataset. Its shards go under a
//! fresh generation prefix, the old rows are swapped for the new ones in one transaction, and only then are the
//! old shard objects deleted; a commit that fails leaves the old dataset as it was. Once the project has been
//! started, uploads, commits and deletes are answered 409.
//!
//! Bounded: a `.npz` part's directory and array header are checked against the limits and the model at upload,
//! and a commit checks every header against the model and the account's storage quota
//! (`max_dataset_bytes_per_account`) before it inflates, spools or shards anything (see [`ingest`] for the memory
//! it holds). An upload past the quota is refused on its `Content-Length`, or stopped once its body passes it.
//!
//! One change at a time: the last step of an upload (placing the manifest), a commit and a delete each hold the
//! project's ingest mark ([`AppState::begin_ingest`]); a second change of the same project meanwhile is a 409.

use std::collections::HashSet;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use daig_shared::data::csv::{CsvOptions, LabelColumn};
use daig_shared::data::npz::{self, NpzArchive};
use daig_shared::data::{
    self, ArrayInfo, DataError, DataRequirements, Labels, RawArray, SampleSource, ShardHeader, ShardPlan, ShardRole,
    check, shard_dataset_into,
};
use daig_shared::wire::ShardHash;
use http_body_util::BodyExt as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

pub use daig_shared::api::datasets::{DatasetStatus, DatasetSummary};

use crate::auth::{CurrentUser, secret};
use crate::db::{self, now_unix};
use crate::error::{AppError, ErrorBody, FieldError};
use crate::extract::{Json, Path};
use crate::project::{ProjectRow, ProjectState, keys, load_dataset, load_owned};
use crate::state::{AppState, IngestGuard};
use crate::store::ObjectStore;

/// Bytes gathered from the request body before each write of an upload to its file: fewer, larger writes.
const UPLOAD_WRITE_BYTES: usize = 1 << 20;

/// Shards being stored at once while the next ones are built. Each store write ends with an fsync; overlapping
/// them lets the file system batch its journal commits (and S3 take several requests at once).
const SHARD_PUTS_IN_FLIGHT: usize = 4;

/// The most bytes of built shards (files beside the uploads) that wait to be stored or are being stored, in KiB:
/// a commit's builder waits while this much is queued (or one shard, where a shard is larger), so that it cannot
/// run ahead of a slow store by more.
const SHARD_KIB_IN_FLIGHT: u32 = 256 * 1024;

/// A part of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Features,
    Labels,
}

impl Part {
    const ALL: [Part; 2] = [Part::Features, Part::Labels];

    fn name(self) -> &'static str {
        match self {
            Self::Features => "features",
            Self::Labels => "labels",
        }
    }
}

/// Which CSV column holds the labels, as stored in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum CsvLabel {
    Last,
    Name(String),
    Index(usize),
}

/// A part's format and the options it was uploaded with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "snake_case")]
enum PartFormat {
    Npy,
    Idx,
    /// A `.npz` archive: `array` names the part's array; without it the archive's only array, or the first of
    /// the shared reader's usual names (`x`, `features`, `images`, ... for features; `y`, `labels`, ... for
    /// labels), so that one archive holding both can be uploaded as both parts.
    Npz {
        array: Option<String>,
    },
    /// CSV: one file holds both parts, uploaded as `features`.
    Csv {
        label: CsvLabel,
        delimiter: u8,
        header: bool,
    },
}

impl PartFormat {
    fn name(&self) -> &'static str {
        match self {
            Self::Npy => "npy",
            Self::Idx => "idx",
            Self::Npz { .. } => "npz",
            Self::Csv { .. } => "csv",
        }
    }

    fn csv_options(&self) -> Option<CsvOptions> {
        match self {
            Self::Csv { label, delimiter, header } => Some(CsvOptions {
                has_header: *header,
                label: match label {
                    CsvLabel::Last => LabelColumn::Last,
                    CsvLabel::Name(name) => LabelColumn::Name(name.clone()),
                    CsvLabel::Index(i) => LabelColumn::Index(*i),
                },
                delimiter: *delimiter,
            }),
            _ => None,
        }
    }
}

/// The query options of an upload, every one of them.
const OPTIONS: &str = "format, array (npz), label_column, label_index, delimiter, header (csv)";

/// Reads the upload options of `part` from the query, reporting every problem at once.
fn parse_options(part: Part, pairs: &[(String, String)]) -> Result<PartFormat, AppError> {
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    let mut get = |name: &'static str| -> Option<&str> {
        let mut values = pairs.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let first = values.next();
        if values.next().is_some() && seen.insert(name) {
            problems.push(FieldError { field: name, message: "is given more than once".into() });
        }
        first
    };
    let format = get("format");
    let array = get("array");
    let label_column = get("label_column");
    let label_index = get("label_index");
    let delimiter = get("delimiter");
    let header = get("header");
    for (key, _) in pairs {
        if !["format", "array", "label_column", "label_index", "delimiter", "header"].contains(&key.as_str()) {
            let shown: String = key.chars().take(40).collect();
            problems.push(FieldError {
                field: "query",
                message: format!("unknown option {shown:?}; the accepted ones are {OPTIONS}"),
            });
        }
    }
    let format = match format.unwrap_or("npy") {
        name @ ("npy" | "idx" | "npz" | "csv") => name,
        other => {
            let shown: String = other.chars().take(40).collect();
            problems.push(FieldError { field: "format", message: format!("{shown:?} is not npy, npz, idx or csv") });
            ""
        }
    };
    let only_for = |problems: &mut Vec<FieldError>, field: &'static str, value: Option<&str>, wanted: &str| {
        if value.is_some() && format != wanted && !format.is_empty() {
            problems.push(FieldError { field, message: format!("applies to format={wanted} only, not {format}") });
        }
    };
    only_for(&mut problems, "array", array, "npz");
    for (field, value) in
        [("label_column", label_column), ("label_index", label_index), ("delimiter", delimiter), ("header", header)]
    {
        only_for(&mut problems, field, value, "csv");
    }
    if array == Some("") {
        problems.push(FieldError { field: "array", message: "must name an array of the archive".into() });
    }
    let delimiter = match delimiter {
        None | Some("," | "comma") => b',',
        Some(";" | "semicolon") => b';',
        Some("\t" | "tab") => b'\t',
        Some("|" | "pipe") => b'|',
        Some(other) => {
            let shown: String = other.chars().take(20).collect();
            problems.push(FieldError {
                field: "delimiter",
                message: format!(
                    "{shown:?} is not a delimiter: use , ; | or a tab (URL-encoded %2C %3B %7C %09), or comma, \
                     semicolon, pipe, tab"
                ),
            });
            b','
        }
    };
    let header = match header {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => {
            let shown: String = other.chars().take(20).collect();
            problems.push(FieldError { field: "header", message: format!("{shown:?} is not true or false") });
            true
        }
    };
    let label = match (label_column, label_index) {
        (None, None) => CsvLabel::Last,
        (Some(_), Some(_)) => {
            problems.push(FieldError {
                field: "label_index",
                message: "give label_column or label_index, not both".into(),
            });
            CsvLabel::Last
        }
        (Some(""), None) => {
            problems.push(FieldError { field: "label_column", message: "must name a column of the header row".into() });
            CsvLabel::Last
        }
        (Some(name), None) => {
            if !header {
                problems.push(FieldError {
                    field: "label_column",
                    message: "names a column of the header row, but header=false says there is none; use \
                              label_index"
                        .into(),
                });
            }
            CsvLabel::Name(name.to_owned())
        }
        (None, Some(index)) => match index.parse::<usize>() {
            Ok(i) => CsvLabel::Index(i),
            Err(_) => {
                let shown: String = index.chars().take(20).collect();
                problems.push(FieldError {
                    field: "label_index",
                    message: format!("{shown:?} is not a column index (0 for the first column)"),
                });
                CsvLabel::Last
            }
        },
    };
    if format == "csv" && part == Part::Labels && problems.is_empty() {
        return Err(AppError::BadRequest(
            "a CSV file holds the labels beside the features: upload it once, as features".into(),
        ));
    }
    if !problems.is_empty() {
        return Err(AppError::InvalidQuery(problems));
    }
    Ok(match format {
        "idx" => PartFormat::Idx,
        "npz" => PartFormat::Npz { array: array.map(str::to_owned) },
        "csv" => PartFormat::Csv { label, delimiter, header },
        _ => PartFormat::Npy,
    })
}

/// What `<part>.json` in the uploads directory says about an uploaded part.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    /// The data file's name, in the same directory.
    file: String,
    format: PartFormat,
}

/// An uploaded part waiting for the commit.
#[derive(Debug, Clone)]
struct Pending {
    part: Part,
    format: PartFormat,
    /// The data file.
    path: PathBuf,
}

/// Uploads one part of the dataset, streamed; commits the dataset when both parts are present. While the project
/// is a draft this also replaces a committed dataset, which stays in force until the new one is committed.
#[utoipa::path(put, path = "/api/projects/{id}/dataset/{part}", tag = "datasets",
    security(("bearer" = []), ("session" = [])),
    params(
        ("id" = i64, Path, description = "The project's id"),
        ("part" = String, Path, description = "`features` or `labels`"),
        ("format" = Option<String>, Query, description = "`npy` (the default), `npz`, `idx` or `csv` (features \
         only: one file holds both parts)"),
        ("array" = Option<String>, Query, description = "`npz` only: the archive's array for this part; by default \
         its only array, or the first of `x`, `x_train`, `features`, `images`, `data` (features) or `y`, \
         `y_train`, `labels`, `targets`, `target` (labels)"),
        ("label_column" = Option<String>, Query, description = "`csv` only: the name, in the header row, of the \
         label column; by default the last column holds the labels"),
        ("label_index" = Option<u32>, Query, description = "`csv` only: the label column by position, 0 for the \
         first; not with `label_column`"),
        ("delimiter" = Option<String>, Query, description = "`csv` only: `,` (the default), `;`, `|` or a tab \
         (URL-encoded `%2C`, `%3B`, `%7C`, `%09`), or the words `comma`, `semicolon`, `pipe`, `tab`"),
        ("header" = Option<bool>, Query, description = "`csv` only: whether the first row names the columns \
         (`true`, the default) or is a sample (`false`)"),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
                 description = "The file, up to the server's `max_upload_bytes`"),
    responses(
        (status = 200, description = "Stored; `dataset` is the new one once both parts are committed",
         body = DatasetStatus),
        (status = 400, description = "Unknown part, CSV labels, or the upload was interrupted", body = ErrorBody),
        (status = 401, description = "No valid credentials", body = ErrorBody),
        (status = 403, description = "Session cookie without a matching X-CSRF-Token", body = ErrorBody),
        (status = 404, description = "No project with this id belongs to the caller", body = ErrorBody),
        (status = 408, description = "The body sent nothing for `upload_idle_timeout_ms` (`upload_stalled`); \
                                      nothing of it is kept", body = ErrorBody),
        (status = 409, description = "The project has been started, or its dataset is being changed by another \
                                      request", body = ErrorBody),
        (status = 413, description = "Larger than `max_upload_bytes` (`payload_too_large`), or than what the \
                                      account's `max_dataset_bytes_per_account` leaves (`storage_quota`), said by \
                                      `Content-Length` or found while it streams; nothing of it is kept",
         body = ErrorBody),
        (status = 429, description = "The account already sends `max_uploads_per_account` uploads \
                                      (`too_many_uploads`)", body = ErrorBody),
        (status = 503, description = "The server already receives `max_uploads` uploads (`overloaded`)",
         body = ErrorBody),
        (status = 422, description = "Invalid query options (`invalid_query`, each option named in \
                                      `details.fields`), or the dataset does not fit the model or a file is \
                                      invalid (`invalid_dataset`; pickles are refused)", body = ErrorBody),
    )
)]
pub async fn upload_part(
    State(state): State<AppState>,
    user: CurrentUser,
    Path((id, part)): Path<(i64, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<DatasetStatus>, AppError> {
    let Some(part) = Part::ALL.into_iter().find(|p| p.name() == part) else {
        return Err(AppError::BadRequest(format!("unknown dataset part {part:?}: use features or labels")));
    };
    let pairs = Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map_err(|e| AppError::BadRequest(format!("the query string cannot be read: {e}")))?
        .0;
    let format = parse_options(part, &pairs)?;
    let project = load_owned(&state, &user, id).await?;
    check_draft(&project)?;
    // Uploads take no permit of the global concurrency limit: they are bounded here, per account and in all.
    let _slots = state.upload_slot(user.id)?;
    let limit = DatasetBudget::of(&state, &project).await?;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(declared) = declared {
        limit.check(declared)?;
    }
    let model = project.model()?;
    let requirements = model.data_requirements();
    let limits = data_limits(state.settings(), &requirements);
    let dir = uploads_dir(&state, project.id);
    tokio::fs::create_dir_all(&dir).await.map_err(internal("creating the uploads directory"))?;
    let file = format!("{}-{}.{}", part.name(), secret::random_secret()?, format.name());
    let path = dir.join(&file);
    // The file is only part of the dataset once a manifest names it: until then, any failure removes it, and so
    // does a client that goes away (the handler is dropped mid-way).
    let mut unplaced = RemoveOnDrop(Some(path.clone()));
    let idle = Duration::from_millis(state.settings().upload_idle_timeout_ms);
    let placed = async {
        // A CSV line longer than a record of the model's columns may be is refused while it arrives: a record
        // holds at least one whole line, so the commit would refuse it anyway, after the whole file was spooled.
        let max_line = matches!(format, PartFormat::Csv { .. }).then_some(limits.max_record_bytes);
        receive(body, &path, &limit, idle, max_line).await?;
        if let PartFormat::Npz { array } = &format {
            check_npz(&path, part, array.clone(), requirements, limits).await?;
        }
        let Some(guard) = state.begin_ingest(project.id) else {
            return Err(busy());
        };
        // The project may have been started, or its uploads deleted, while the body streamed in.
        let project = load_owned(&state, &user, id).await?;
        check_draft(&project)?;
        if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Err(AppError::Conflict {
                message: "the project's dataset was deleted while this upload ran; upload it again".into(),
                field: "dataset",
            });
        }
        let others = pending(&dir).await?;
        let features_csv =
            others.iter().any(|p| p.part == Part::Features && matches!(p.format, PartFormat::Csv { .. }));
        if part == Part::Labels && features_csv {
            return Err(AppError::Conflict {
                message: "the uploaded features are a CSV file, which holds the labels; upload the features in \
                          another format first, or commit"
                    .into(),
                field: "dataset",
            });
        }
        let replaced = others.iter().find(|p| p.part == part).cloned();
        write_manifest(&dir, part, &Manifest { file: file.clone(), format: format.clone() }).await?;
        if let Some(replaced) = replaced {
            remove_file_quietly(&replaced.path).await;
        }
        if matches!(format, PartFormat::Csv { .. }) {
            // The CSV file holds the labels: labels uploaded before it would never be used.
            if let Some(labels) = others.iter().find(|p| p.part == Part::Labels) {
                remove_pending(&dir, labels).await;
            }
        }
        Ok((guard, project))
    }
    .await;
    let (guard, project) = match placed {
        Ok(placed) => {
            unplaced.0 = None;
            placed
        }
        Err(e) => {
            remove_file_quietly(&path).await;
            unplaced.0 = None;
            return Err(e);
        }
    };
    let uploads = pending(&dir).await?;
    if complete(&uploads) {
        let dataset = commit(&state, &guard, &project, &uploads).await?;
        return Ok(Json(DatasetStatus { uploaded: Vec::new(), dataset: Some(dataset) }));
    }
    drop(guard);
    Ok(Json(DatasetStatus {
        uploaded: uploads.iter().map(|p| p.part.name().to_owned()).collect(),
        dataset: load_dataset(&state, project.id).await?,
    }))
}

/// Validates and shards the uploaded parts now (an upload of the second part does this itself).
#[utoipa::path(post, path = "/api/projects/{id}/dataset/commit", tag = "datasets",
    security(("bearer" = []), ("session" = [])),
    params(("id" = i64, Path, description = "The project's id")),
    responses(
        (status = 200, description = "Committed, replacing the dataset committed before if any",
         body = DatasetStatus),
        (status = 401, description = "No valid credentials", body = ErrorBody),
        (status = 403, description = "Session cookie without a matching X-CSRF-Token", body = ErrorBody),
        (status = 404, description = "No project with this id belongs to the caller", body = ErrorBody),
        (status = 409, description = "A part is missing, the project has been started, or its dataset is being \
                                      changed by another request", body = ErrorBody),
        (status = 413, description = "The shards would take the account past `max_dataset_bytes_per_account` \
                                      (`storage_quota`); the uploads are removed", body = ErrorBody),
        (status = 422, description = "The dataset does not fit the model, or a file is invalid", body = ErrorBody),
    )
)]
pub async fn commit_dataset(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<DatasetStatus>, AppError> {
    let project = load_owned(&state, &user, id).await?;
    let Some(guard) = state.begin_ingest(project.id) else {
        return Err(busy());
    };
    check_draft(&project)?;
    let uploads = pending(&uploads_dir(&state, project.id)).await?;
    if !complete(&uploads) {
        let missing: Vec<&str> =
            Part::ALL.into_iter().filter(|p| !uploads.iter().any(|u| u.part == *p)).map(Part::name).collect();
        return Err(AppError::Conflict {
            message: format!("upload the {} first", missing.join(" and ")),
            field: "dataset",
        });
    }
    let dataset = commit(&state, &guard, &project, &uploads).await?;
    Ok(Json(DatasetStatus { uploaded: Vec::new(), dataset: Some(dataset) }))
}

/// Removes the project's dataset: its rows, its shards and any part uploaded and not yet committed.
#[utoipa::path(delete, path = "/api/projects/{id}/dataset", tag = "datasets",
    security(("bearer" = []), ("session" = [])),
    params(("id" = i64, Path, description = "The project's id")),
    responses(
        (status = 204, description = "Removed, or there was nothing to remove"),
        (status = 401, description = "No valid credentials", body = ErrorBody),
        (status = 403, description = "Session cookie without a matching X-CSRF-Token", body = ErrorBody),
        (status = 404, description = "No project with this id belongs to the caller", body = ErrorBody),
        (status = 409, description = "The project has been started, or its dataset is being changed by another \
                                      request", body = ErrorBody),
    )
)]
pub async fn delete_dataset(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<StatusCode, AppError> {
    let project = load_owned(&state, &user, id).await?;
    let Some(_guard) = state.begin_ingest(project.id) else {
        return Err(busy());
    };
    check_draft(&project)?;
    let mut tx = state.db().begin().await?;
    // A write first, so that the state read is the one the deletion is made in: a start cannot slip between.
    lock_draft(&mut tx, project.id).await?;
    db::datasets::delete(&mut tx, project.id).await?;
    tx.commit().await?;
    state.store().delete_prefix(&keys::shards_prefix(project.id)).await?;
    match tokio::fs::remove_dir_all(uploads_dir(&state, project.id)).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(AppError::Internal(anyhow::Error::new(e).context("removing uploads"))),
    }
    Ok(StatusCode::NO_CONTENT)
}

fn busy() -> AppError {
    AppError::Conflict {
        message: "the project's dataset is being changed by another request; retry when it is done".into(),
        field: "dataset",
    }
}

fn started(state: &str) -> AppError {
    AppError::Conflict {
        message: format!(
            "the dataset can only be changed while the project is a draft; this one is {state}, so its dataset \
             stays as it is (create a new project to train on other data)"
        ),
        field: "dataset",
    }
}

/// 409 unless the project is a draft.
fn check_draft(project: &ProjectRow) -> Result<(), AppError> {
    if project.state()? != ProjectState::Draft {
        return Err(started(&project.state));
    }
    Ok(())
}

/// Within `tx`, takes SQLite's write lock with a write that succeeds only while the project is a draft: 409 if it
/// is not. The project's state is then fixed until `tx` ends (`start` changes it with a write too).
async fn lock_draft(tx: &mut sqlx::SqliteConnection, id: i64) -> Result<(), AppError> {
    match db::projects::lock_draft(tx, id, now_unix()).await? {
        None => Ok(()),
        Some(state) => Err(state.map_or(AppError::NotFound("project"), |s| started(&s))),
    }
}

fn uploads_dir(state: &AppState, id: i64) -> PathBuf {
    keys::uploads_dir(state.settings(), id)
}

/// Removes what a server that stopped mid-way (killed, or its machine lost) left in the uploads directory:
/// every file that no manifest names (an upload in progress, a spool, a shard being built, a manifest being
/// written), and the directories of projects that no longer exist or keep nothing. Run at start, before any
/// request is served; pending parts, named by their manifests, are kept. Returns the files removed.
pub async fn sweep_uploads(state: &AppState) -> usize {
    let root = state.settings().uploads_dir();
    let Ok(mut projects) = tokio::fs::read_dir(&root).await else { return 0 };
    let mut removed = 0;
    while let Ok(Some(entry)) = projects.next_entry().await {
        let dir = entry.path();
        if !entry.file_type().await.is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let exists = match entry.file_name().to_str().and_then(|n| n.parse::<i64>().ok()) {
            Some(id) => db::projects::get(state.db(), id).await.map_or(true, |row| row.is_some()),
            None => false,
        };
        // Of a project that exists, a manifest that cannot be read keeps everything: nothing is removed on a guess.
        let parts = if exists { pending(&dir).await } else { Ok(Vec::new()) };
        let keep: HashSet<PathBuf> = match parts {
            Ok(parts) => parts.iter().flat_map(|p| [p.path.clone(), manifest_path(&dir, p.part)]).collect(),
            Err(e) => {
                tracing::warn!("keeping {} as it is: {e}", dir.display());
                continue;
            }
        };
        let Ok(mut files) = tokio::fs::read_dir(&dir).await else { continue };
        while let Ok(Some(file)) = files.next_entry().await {
            if !keep.contains(&file.path()) && file.file_type().await.is_ok_and(|t| t.is_file()) {
                remove_file_quietly(&file.path()).await;
                removed += 1;
            }
        }
        // Only if empty.
        let _ = tokio::fs::remove_dir(&dir).await;
    }
    if removed > 0 {
        tracing::info!(removed, "removed files left in the uploads directory by an earlier run");
    }
    removed
}

/// An upload's file, removed when dropped unless taken out: a handler dropped mid-upload (its client went away)
/// leaves nothing behind.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// What a dataset may take: an upload at most `max_upload_bytes`, and uploads and shards at most what the
/// account's storage quota leaves.
struct DatasetBudget {
    max_upload_bytes: u64,
    quota_bytes: u64,
    /// The committed shards of the account's other projects (this project's dataset is being replaced).
    used_bytes: u64,
}

impl DatasetBudget {
    async fn of(state: &AppState, project: &ProjectRow) -> Result<Self, AppError> {
        Ok(DatasetBudget {
            max_upload_bytes: state.settings().max_upload_bytes,
            quota_bytes: state.settings().max_dataset_bytes_per_account,
            used_bytes: db::datasets::stored_bytes_of_user_except(state.db(), project.user_id, project.id).await?,
        })
    }

    /// The error for an upload of `bytes`, if it is one: 413 `payload_too_large` past `max_upload_bytes`, else 413
    /// `storage_quota` past the quota.
    fn check(&self, bytes: u64) -> Result<(), AppError> {
        if bytes > self.max_upload_bytes {
            return Err(AppError::PayloadTooLarge);
        }
        if bytes > self.room() {
            return Err(self.exceeded());
        }
        Ok(())
    }

    fn exceeded(&self) -> AppError {
        AppError::StorageQuota { limit_bytes: self.quota_bytes, used_bytes: self.used_bytes }
    }

    /// What may still be stored: the quota less what the account's other projects use.
    fn room(&self) -> u64 {
        self.quota_bytes.saturating_sub(self.used_bytes)
    }
}

/// The reading limits for a dataset of a model that needs `requirements`: no array (inflated, spooled or stored as
/// shards) larger than `max_upload_bytes`, whatever its compression, and no CSV record longer than a row of the
/// model's columns may be ([`data::csv::record_bytes_for`]).
fn data_limits(settings: &crate::config::Settings, requirements: &DataRequirements) -> data::Limits {
    let features = requirements.sample_shape.iter().product::<usize>();
    data::Limits {
        max_array_bytes: settings.max_upload_bytes,
        max_record_bytes: data::csv::record_bytes_for(features),
        ..data::Limits::default()
    }
}

/// Streams `body` to `path`, refusing it once it passes `limit`, sends nothing for `idle`, or (a CSV part) holds a
/// line longer than `max_line` bytes. The body's frames are gathered into [`UPLOAD_WRITE_BYTES`] before each
/// write, so that a large upload costs few writes.
async fn receive(
    mut body: Body,
    path: &FsPath,
    limit: &DatasetBudget,
    idle: Duration,
    max_line: Option<u64>,
) -> Result<(), AppError> {
    let file = tokio::fs::File::create(path).await.map_err(internal("creating the upload file"))?;
    let mut file = tokio::io::BufWriter::with_capacity(UPLOAD_WRITE_BYTES, file);
    let mut received = 0u64;
    let mut lines = LineBound { max: max_line, line: 1, len: 0 };
    loop {
        let Ok(frame) = tokio::time::timeout(idle, body.frame()).await else {
            metrics::counter!("http_requests_refused_total", "reason" => "upload_stalled").increment(1);
            return Err(AppError::UploadStalled { secs: idle.as_secs() });
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| AppError::BadRequest(format!("the upload was interrupted: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        received += data.len() as u64;
        limit.check(received)?;
        lines.check(&data)?;
        file.write_all(&data).await.map_err(internal("writing the upload"))?;
    }
    file.flush().await.map_err(internal("writing the upload"))?;
    file.get_ref().sync_all().await.map_err(internal("writing the upload"))?;
    Ok(())
}

/// The length of the line being received, against a bound.
struct LineBound {
    max: Option<u64>,
    /// The line's number, from 1.
    line: u64,
    /// Its bytes so far.
    len: u64,
}

impl LineBound {
    /// Counts `data`, the next bytes of the body.
    fn check(&mut self, data: &[u8]) -> Result<(), AppError> {
        let Some(max) = self.max else { return Ok(()) };
        for (i, segment) in data.split(|&b| b == b'\n').enumerate() {
            if i > 0 {
                self.line += 1;
                self.len = 0;
            }
            self.len += segment.len() as u64;
            if self.len > max {
                return Err(AppError::InvalidDataset {
                    part: "features",
                    reason: format!(
                        "CSV line {} is longer than {max} bytes, the most a row of the model's columns may take; \
                         the upload was stopped there",
                        self.line
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Checks that the `.npz` at `path` opens (its directory within `limits`) and holds the array for `part`, and
/// that the array's `.npy` header fits the model, reading no more of the entry than its header: 422 naming the
/// archive's arrays, or what does not fit, if not.
async fn check_npz(
    path: &FsPath,
    part: Part,
    array: Option<String>,
    requirements: DataRequirements,
    limits: data::Limits,
) -> Result<(), AppError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let refused = |e: DataError| AppError::InvalidDataset { part: part.name(), reason: e.to_string() };
        let file = std::fs::File::open(&path).map_err(internal("opening the upload"))?;
        let mut archive = NpzArchive::new(std::io::BufReader::new(file), &limits).map_err(refused)?;
        let name = match array {
            Some(name) if !archive.names().contains(&name) => {
                return Err(AppError::InvalidQuery(vec![FieldError {
                    field: "array",
                    message: format!(
                        "the archive has no array {name:?}; it has {}",
                        archive.names().iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
                    ),
                }]));
            }
            Some(name) => name,
            None => npz_array(&archive, part, None).map_err(refused)?,
        };
        let entry = archive.entry(&name).map_err(refused)?;
        match part {
            Part::Features => data::check_features(&entry.info, &requirements),
            Part::Labels => data::check_labels(&entry.info, &requirements),
        }
        .map_err(refused)
    })
    .await?
}

/// Whether `uploads` make a dataset: features and labels, or features in CSV (which hold the labels).
fn complete(uploads: &[Pending]) -> bool {
    match uploads {
        [Pending { part: Part::Features, format: PartFormat::Csv { .. }, .. }] => true,
        _ => uploads.len() == Part::ALL.len(),
    }
}

fn manifest_path(dir: &FsPath, part: Part) -> PathBuf {
    dir.join(format!("{}.json", part.name()))
}

/// The parts uploaded to `dir`, in [`Part::ALL`] order.
async fn pending(dir: &FsPath) -> Result<Vec<Pending>, AppError> {
    let mut found = Vec::new();
    for part in Part::ALL {
        let text = match tokio::fs::read(manifest_path(dir, part)).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(internal("reading an upload's manifest")(e)),
        };
        let manifest: Manifest = serde_json::from_slice(&text)
            .map_err(|e| AppError::Internal(anyhow::Error::new(e).context("parsing an upload's manifest")))?;
        // The name comes from this server, but a path must never leave the directory whatever the file says.
        if manifest.file.contains(['/', '\\']) || manifest.file.starts_with('.') {
            return Err(AppError::Internal(anyhow::anyhow!("an upload manifest names {:?}", manifest.file)));
        }
        found.push(Pending { part, format: manifest.format, path: dir.join(manifest.file) });
    }
    Ok(found)
}

/// Replaces `part`'s manifest atomically: written to a temporary file, synced and renamed over the old one.
async fn write_manifest(dir: &FsPath, part: Part, manifest: &Manifest) -> Result<(), AppError> {
    let json = serde_json::to_vec(manifest)
        .map_err(|e| AppError::Internal(anyhow::Error::new(e).context("serialising an upload's manifest")))?;
    let temp = dir.join(format!(".{}.json.tmp", part.name()));
    let mut file = tokio::fs::File::create(&temp).await.map_err(internal("writing an upload's manifest"))?;
    file.write_all(&json).await.map_err(internal("writing an upload's manifest"))?;
    file.sync_all().await.map_err(internal("writing an upload's manifest"))?;
    drop(file);
    tokio::fs::rename(&temp, manifest_path(dir, part)).await.map_err(internal("placing an upload's manifest"))
}

/// Removes a pending part: its manifest first, so that no manifest ever names a missing file.
async fn remove_pending(dir: &FsPath, pending: &Pending) {
    remove_file_quietly(&manifest_path(dir, pending.part)).await;
    remove_file_quietly(&pending.path).await;
}

async fn remove_file_quietly(path: &FsPath) {
    // A file that is already gone is what we want; any other failure leaves a stray file, logged.
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
    size_bytes: u64,
}

/// What ingestion produced.
struct Ingested {
    shards: Vec<ShardRecord>,
    feature_dtype: String,
    sample_shape: Vec<usize>,
    train_samples: usize,
    validation_samples: usize,
}

/// Why ingestion failed: the data (a 422, uploads removed), the account's storage quota (a 413, uploads removed)
/// or the server (a 500, uploads kept for a retry).
enum IngestError {
    Invalid { part: &'static str, reason: String },
    StorageQuota,
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

/// Deletes every object under the project's shards prefix except those under `keep` (a generation's prefix):
/// the shards of a replaced dataset, and any left by a commit that died half-way. Failures are logged: what is
/// left is unregistered and goes with the next commit or the project.
async fn sweep_shards(state: &AppState, project_id: i64, keep: impl Fn(&str) -> bool) {
    let objects = match state.store().list(&keys::shards_prefix(project_id)).await {
        Ok(objects) => objects,
        Err(e) => {
            tracing::warn!("cannot list the shards of project {project_id} to remove old ones: {e}");
            return;
        }
    };
    for object in objects.iter().filter(|o| !keep(&o.key)) {
        if let Err(e) = state.store().delete(&object.key).await {
            tracing::warn!("cannot delete the old shard {}: {e}", object.key);
        }
    }
}

async fn commit(
    state: &AppState,
    _ingesting: &IngestGuard,
    project: &ProjectRow,
    uploads: &[Pending],
) -> Result<DatasetSummary, AppError> {
    let model = project.model()?;
    let settings = project.settings()?;
    let plan = ShardPlan {
        seed: settings.seed,
        validation_fraction: settings.validation_fraction,
        samples_per_shard: settings.samples_per_shard as usize,
    };
    let (features, labels) = match uploads {
        [features @ Pending { part: Part::Features, .. }, labels @ Pending { part: Part::Labels, .. }] => {
            (features.clone(), Some(labels.clone()))
        }
        [features @ Pending { part: Part::Features, format: PartFormat::Csv { .. }, .. }] => (features.clone(), None),
        _ => return Err(AppError::Internal(anyhow::anyhow!("commit without both parts"))),
    };
    // A fresh generation, past any prefix in the store (a commit that died half-way may have left one), so that
    // the committed dataset's shards are never touched before the new ones are registered.
    let shards = keys::shards_prefix(project.id);
    let registered: HashSet<String> = db::datasets::shard_keys(state.db(), project.id).await?.into_iter().collect();
    let listed = state.store().list(&shards).await?;
    let generation = listed.iter().filter_map(|o| keys::generation_of(&o.key, &shards)).max().map_or(1, |g| g + 1);
    sweep_shards(state, project.id, |key| registered.contains(key)).await;
    let prefix = keys::shard_generation_prefix(project.id, generation);
    let requirements = model.data_requirements();
    let limits = data_limits(state.settings(), &requirements);
    let quota = DatasetBudget::of(state, project).await?;
    let room = quota.room();
    let ingest_prefix = prefix.clone();
    // Shards are built on the blocking pool and stored by an async task as they come, a few at a time and within
    // SHARD_KIB_IN_FLIGHT.
    let (shards_tx, shards_rx) = tokio::sync::mpsc::channel(SHARD_PUTS_IN_FLIGHT);
    let storing = tokio::spawn(store_shards(Arc::clone(state.store()), shards_rx));
    let sink = ShardSink {
        tx: shards_tx,
        budget: Arc::new(tokio::sync::Semaphore::new(SHARD_KIB_IN_FLIGHT as usize)),
        runtime: tokio::runtime::Handle::current(),
    };
    let built = tokio::task::spawn_blocking(move || {
        ingest(&sink, &ingest_prefix, features, labels, &requirements, &plan, &limits, room)
    })
    .await?;
    // Every put has ended once this returns, so that nothing is stored after a failed commit's clean-up.
    let stored = storing.await?;
    let result = match (built, stored) {
        (_, Err(e)) => Err(IngestError::Internal(e)),
        (built, Ok(())) => built,
    };
    let dir = uploads_dir(state, project.id);
    let ingested = match result {
        Ok(ingested) => ingested,
        Err(e) => {
            if let Err(cleanup) = state.store().delete_prefix(&prefix).await {
                tracing::warn!("cannot delete the shards of a failed commit: {cleanup}");
            }
            let refused = match e {
                IngestError::Invalid { part, reason } => AppError::InvalidDataset { part, reason },
                IngestError::StorageQuota => quota.exceeded(),
                IngestError::Internal(e) => return Err(AppError::Internal(e)),
            };
            // Refused data is not kept for a retry: a new upload starts clean.
            for upload in uploads {
                remove_pending(&dir, upload).await;
            }
            let _ = tokio::fs::remove_dir(&dir).await;
            return Err(refused);
        }
    };
    let format = uploads[0].format.name();
    if let Err(e) = register(state, project, &ingested, format, &quota).await {
        if let Err(cleanup) = state.store().delete_prefix(&prefix).await {
            tracing::warn!("cannot delete the shards of a failed commit: {cleanup}");
        }
        return Err(e);
    }
    // The new dataset is in force: the old shards are garbage now, and only now.
    let keep = format!("{prefix}/");
    sweep_shards(state, project.id, |key| key.starts_with(&keep)).await;
    for upload in uploads {
        remove_pending(&dir, upload).await;
    }
    // Only if empty: an upload may be streaming into it.
    let _ = tokio::fs::remove_dir(&dir).await;
    let train_shards = ingested.shards.iter().filter(|s| s.role == "train").count();
    Ok(DatasetSummary {
        format: format.to_owned(),
        feature_dtype: ingested.feature_dtype,
        sample_shape: ingested.sample_shape,
        train_samples: ingested.train_samples as i64,
        validation_samples: ingested.validation_samples as i64,
        train_shards: train_shards as i64,
        validation_shards: (ingested.shards.len() - train_shards) as i64,
    })
}

/// A shard built and not yet stored: its file (removed when dropped), with its share of [`SHARD_KIB_IN_FLIGHT`].
struct BuiltShard {
    key: String,
    file: tempfile::TempPath,
    held: tokio::sync::OwnedSemaphorePermit,
}

/// Where [`ingest`], on the blocking pool, sends the shards it builds.
struct ShardSink {
    tx: tokio::sync::mpsc::Sender<BuiltShard>,
    /// [`SHARD_KIB_IN_FLIGHT`] permits, one per KiB of built shards queued.
    budget: Arc<tokio::sync::Semaphore>,
    runtime: tokio::runtime::Handle,
}

impl ShardSink {
    /// Waits until the budget has room for a shard of `size` bytes (all of it, for a shard larger than the budget),
    /// then hands its file to the storing task.
    fn send(&self, key: String, file: tempfile::TempPath, size: u64) -> Result<(), IngestError> {
        let kib = u32::try_from(size.div_ceil(1024)).unwrap_or(u32::MAX).min(SHARD_KIB_IN_FLIGHT);
        let stopped = || IngestError::Internal(anyhow::anyhow!("the shards are no longer being stored"));
        let held = self.runtime.block_on(Arc::clone(&self.budget).acquire_many_owned(kib)).map_err(|_| stopped())?;
        // The storing task stops at a failed put, which the commit reports.
        self.tx.blocking_send(BuiltShard { key, file, held }).map_err(|_| stopped())
    }
}

/// Stores the shards that `shards` yields, up to [`SHARD_PUTS_IN_FLIGHT`] at once, until the sender is dropped
/// or a put fails; returns once every put has ended, with the first failure.
async fn store_shards(
    store: Arc<dyn ObjectStore>,
    mut shards: tokio::sync::mpsc::Receiver<BuiltShard>,
) -> Result<(), anyhow::Error> {
    let mut puts = tokio::task::JoinSet::new();
    let mut failure = None;
    let note = |failure: &mut Option<anyhow::Error>, result: Result<Result<(), anyhow::Error>, _>| {
        if let Err(e) = result.map_err(anyhow::Error::new).and_then(|r| r) {
            failure.get_or_insert(e);
        }
    };
    loop {
        while let Some(result) = puts.try_join_next() {
            note(&mut failure, result);
        }
        if puts.len() >= SHARD_PUTS_IN_FLIGHT
            && let Some(result) = puts.join_next().await
        {
            note(&mut failure, result);
            continue;
        }
        if failure.is_some() {
            break;
        }
        let Some(BuiltShard { key, file, held }) = shards.recv().await else { break };
        let store = Arc::clone(&store);
        puts.spawn(async move {
            // Streamed from its file: a shard is never held in memory whole.
            let stored = store.put_file(&key, &file).await;
            // The shard's file is gone once the put has ended: its share of the budget is free again.
            let removed = tokio::task::spawn_blocking(move || drop(file)).await;
            drop((held, removed));
            stored.map(drop).map_err(|e| anyhow::Error::new(e).context("storing a shard"))
        });
    }
    // Closing the channel stops the builder at its next shard.
    drop(shards);
    while let Some(result) = puts.join_next().await {
        note(&mut failure, result);
    }
    failure.map_or(Ok(()), Err)
}

/// Swaps the project's dataset and shard rows for the new ones in one transaction, while the project is a draft
/// and the account's other datasets leave room for the new shards under `quota` (counted in the transaction, so
/// that two commits of one account cannot both pass it).
async fn register(
    state: &AppState,
    project: &ProjectRow,
    ingested: &Ingested,
    format: &str,
    quota: &DatasetBudget,
) -> Result<(), AppError> {
    let project_id = project.id;
    let mut tx = state.db().begin().await?;
    lock_draft(&mut tx, project_id).await?;
    let used_bytes = db::datasets::stored_bytes_of_user_except(&mut *tx, project.user_id, project_id).await?;
    let new_bytes = ingested.shards.iter().map(|s| s.size_bytes).sum::<u64>();
    if used_bytes.saturating_add(new_bytes) > quota.quota_bytes {
        return Err(AppError::StorageQuota { limit_bytes: quota.quota_bytes, used_bytes });
    }
    let shape = serde_json::to_string(&ingested.sample_shape)
        .map_err(|e| AppError::Internal(anyhow::Error::new(e).context("serialising the sample shape")))?;
    db::datasets::delete(&mut tx, project_id).await?;
    let dataset = db::datasets::DatasetRow {
        format: format.to_owned(),
        feature_dtype: ingested.feature_dtype.clone(),
        sample_shape: shape,
        train_samples: ingested.train_samples as i64,
        validation_samples: ingested.validation_samples as i64,
    };
    db::datasets::insert(&mut tx, project_id, &dataset, now_unix()).await?;
    for shard in &ingested.shards {
        let row = db::datasets::ShardRow {
            role: shard.role.to_owned(),
            number: i64::from(shard.number),
            object_key: shard.key.clone(),
            sha256: shard.sha256.clone(),
            sample_count: shard.sample_count as i64,
            size_bytes: shard.size_bytes as i64,
        };
        db::datasets::insert_shard(&mut tx, project_id, &row).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The array of an archive to use for `part`: the one `chosen`, else its only array, else the first of the
/// usual names for the part.
fn npz_array<R: std::io::Read + std::io::Seek>(
    archive: &NpzArchive<R>,
    part: Part,
    chosen: Option<&str>,
) -> Result<String, DataError> {
    if let Some(name) = chosen {
        return Ok(name.to_owned());
    }
    match archive.names().as_slice() {
        [only] => Ok(only.clone()),
        _ => archive.find(match part {
            Part::Features => &npz::FEATURE_NAMES,
            Part::Labels => &npz::LABEL_NAMES,
        }),
    }
}

/// Reads the labels part whole, once `fits` has passed its header: labels that cannot fit are not read.
fn read_labels(
    labels: &Pending,
    limits: &data::Limits,
    fits: impl Fn(&ArrayInfo) -> Result<(), DataError>,
) -> Result<RawArray, IngestError> {
    let mut file = std::io::BufReader::new(open(&labels.path)?);
    match &labels.format {
        PartFormat::Npy => data::npy::read_header(&mut file, limits).and_then(|header| {
            fits(&header.info)?;
            data::read_array(header.info, file, limits)
        }),
        PartFormat::Idx => data::idx::read_header(&mut file, limits).and_then(|header| {
            fits(&header.info)?;
            data::read_array(header.info, file, limits)
        }),
        PartFormat::Npz { array } => NpzArchive::new(file, limits).and_then(|mut archive| {
            let name = npz_array(&archive, Part::Labels, array.as_deref())?;
            fits(&archive.entry(&name)?.info)?;
            archive.read_array(&name)
        }),
        PartFormat::Csv { .. } => {
            return Err(IngestError::Internal(anyhow::anyhow!("CSV labels without CSV features")));
        }
    }
    .map_err(invalid("labels"))
}

fn open(path: &FsPath) -> Result<std::fs::File, IngestError> {
    std::fs::File::open(path).map_err(|e| IngestError::Internal(anyhow::Error::new(e).context("opening an upload")))
}

/// A file of raw samples spooled from a CSV or a compressed `.npz` entry, removed when dropped.
struct Spool(PathBuf);

impl Spool {
    fn create(upload: &FsPath) -> Result<(Self, std::io::BufWriter<std::fs::File>), IngestError> {
        let path = upload.with_extension("raw");
        let file = std::fs::File::create(&path)
            .map_err(|e| IngestError::Internal(anyhow::Error::new(e).context("creating the spool file")))?;
        Ok((Self(path), std::io::BufWriter::with_capacity(UPLOAD_WRITE_BYTES, file)))
    }

    fn reopen(&self) -> Result<std::fs::File, IngestError> {
        open(&self.0)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        // Synchronous: this runs on the blocking pool.
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The SHA-256 of `file` read from its start, as lowercase hex (a shard's hash, [`ShardHash`]).
fn hash_from_start(file: &mut std::fs::File) -> std::io::Result<String> {
    use std::io::{Read as _, Seek as _};
    file.seek(std::io::SeekFrom::Start(0))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        match file.read(&mut buffer)? {
            0 => return Ok(ShardHash(hasher.finalize().into()).to_string()),
            n => hasher.update(&buffer[..n]),
        }
    }
}

/// Reads, checks and shards the two parts, sending each shard to `sink` (see [`store_shards`]) as it is made.
/// Runs on the blocking pool.
///
/// Nothing is inflated, spooled or sharded before the headers are checked: the features' header (a `.npz` entry's
/// read from its decompressing stream) against the model and against `room`, the bytes the account's storage quota
/// leaves, then the labels' header against the features and the model, and only then the bodies. The shards stop
/// at `room` bytes, checked before each shard is written. Each shard is written to a file beside the uploads a
/// sample at a time and stored from it (streamed); at most [`SHARD_KIB_IN_FLIGHT`] KiB of them wait (or one
/// shard, where a shard is larger). Memory: one sample and one shard's labels; a CSV record at most
/// `limits.max_record_bytes` plus the CSV reader's buffer; the labels under `limits.max_in_memory_bytes`.
#[expect(clippy::too_many_arguments, reason = "the commit's inputs, each used once")]
fn ingest(
    sink: &ShardSink,
    prefix: &str,
    features_part: Pending,
    labels_part: Option<Pending>,
    requirements: &DataRequirements,
    plan: &ShardPlan,
    limits: &data::Limits,
    room: u64,
) -> Result<Ingested, IngestError> {
    // Not buffered: the shuffle reads samples at random, and a buffer would be refilled (and mostly wasted) at
    // every sample. Headers are read in a few small reads; the CSV reader buffers by itself.
    let file = open(&features_part.path)?;
    // A mismatch with the model is the dataset's, as `check` reports it once both parts are read.
    let fits = |info: &ArrayInfo| -> Result<(), IngestError> {
        data::check_features(info, requirements)?;
        // The shards hold at least the features.
        if info.byte_len()? > room {
            return Err(IngestError::StorageQuota);
        }
        Ok(())
    };
    let mut csv_labels = None;
    let mut _spool = None;
    let mut features = match &features_part.format {
        format @ PartFormat::Csv { .. } => {
            let options = format.csv_options().unwrap_or_default();
            let (spool, mut out) = Spool::create(&features_part.path)?;
            let read = data::csv::read(file, &options, &mut out, limits)
                .and_then(|csv| std::io::Write::flush(&mut out).map(|()| csv).map_err(DataError::from))
                .map_err(invalid("features"))?;
            fits(&read.features)?;
            csv_labels = Some(read.labels);
            let source = SampleSource::raw(spool.reopen()?, read.features, 0, limits);
            _spool = Some(spool);
            source.map_err(invalid("features"))?
        }
        PartFormat::Npy => SampleSource::npy(file, limits).map_err(invalid("features"))?,
        PartFormat::Idx => SampleSource::idx(file, limits).map_err(invalid("features"))?,
        PartFormat::Npz { array } => {
            let mut archive = NpzArchive::new(file, limits).map_err(invalid("features"))?;
            let name = npz_array(&archive, Part::Features, array.as_deref()).map_err(invalid("features"))?;
            let entry = archive.entry(&name).map_err(invalid("features"))?;
            // Checked on the header alone: an entry that cannot fit is never inflated.
            fits(&entry.info)?;
            if entry.stored {
                // np.savez stores entries as they are: their samples are read in place.
                archive.into_sample_source(&name).map_err(invalid("features"))?
            } else {
                // A compressed entry cannot be read at random: spooled to raw samples first.
                let (spool, mut out) = Spool::create(&features_part.path)?;
                let info = archive
                    .spool(&name, &mut out)
                    .and_then(|info| std::io::Write::flush(&mut out).map(|()| info).map_err(DataError::from))
                    .map_err(invalid("features"))?;
                let source = SampleSource::raw(spool.reopen()?, info, 0, limits);
                _spool = Some(spool);
                source.map_err(invalid("features"))?
            }
        }
    };
    let features_info = features.info().clone();
    fits(&features_info)?;
    let labels: RawArray = match (csv_labels, &labels_part) {
        (Some(labels), _) => labels,
        (None, Some(part)) => read_labels(part, limits, |info| check(&features_info, info, requirements))?,
        (None, None) => return Err(IngestError::Internal(anyhow::anyhow!("no labels to ingest"))),
    };
    check(&features_info, &labels.info, requirements)?;
    let labels = Labels::from_array(&labels, &requirements.labels).map_err(invalid("labels"))?;
    let dir = features_part.path.parent().unwrap_or(FsPath::new("."));
    let mut shards = Vec::new();
    let mut stored_bytes = 0u64;
    let create = |_: ShardRole, header: &ShardHeader| {
        let size = header.shard_bytes()?;
        stored_bytes = stored_bytes.saturating_add(size);
        if stored_bytes > room {
            return Err(IngestError::StorageQuota);
        }
        // Removed when dropped, whichever way the commit ends.
        tempfile::Builder::new()
            .prefix(".shard-")
            .tempfile_in(dir)
            .map_err(|e| IngestError::Internal(anyhow::Error::new(e).context("creating a shard file")))
    };
    let finish = |role: ShardRole, header: &ShardHeader, mut file: tempfile::NamedTempFile| {
        let (role, number) = match role {
            ShardRole::Train(n) => ("train", n),
            ShardRole::Validation(n) => ("validation", n),
        };
        let key = keys::shard_key(prefix, role, number);
        let size_bytes = header.shard_bytes()?;
        let sha256 = hash_from_start(file.as_file_mut())
            .map_err(|e| IngestError::Internal(anyhow::Error::new(e).context("reading a shard file back")))?;
        sink.send(key.clone(), file.into_temp_path(), size_bytes)?;
        shards.push(ShardRecord { role, number, key, sha256, sample_count: header.sample_count, size_bytes });
        Ok::<_, IngestError>(())
    };
    let summary = shard_dataset_into(&mut features, &labels, plan, create, finish)?;
    Ok(Ingested {
        shards,
        feature_dtype: features_info.dtype.name().to_owned(),
        sample_shape: features_info.sample_shape().to_vec(),
        train_samples: summary.train_samples,
        validation_samples: summary.validation_samples,
    })
}
