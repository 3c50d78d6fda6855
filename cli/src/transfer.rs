//! `daig upload` and `daig download`: files streamed to and from the server with byte progress bars, never held
//! whole in memory.

use std::path::{Path, PathBuf};

use futures_util::StreamExt as _;
use reqwest::Method;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

use super::Context;
use super::client::Client;
use super::error::CliError;
use super::output;
use super::wire::{DatasetStatus, Project};

/// Bytes read from a file per chunk of an upload.
const UPLOAD_CHUNK_BYTES: usize = 256 * 1024;

/// `daig upload`.
#[derive(Debug, clap::Args)]
pub struct UploadArgs {
    /// The project's id.
    pub id: i64,
    /// The features (inputs): .npy, .npz, IDX, or a CSV with a header row and the label in the last column.
    #[arg(long, value_name = "FILE")]
    pub features: PathBuf,
    /// The labels; not needed for a CSV, nor for an .npz archive holding both arrays.
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// The files' format [default: from each file's name].
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Another query parameter for the upload route, e.g. a reader option the server accepts; repeatable.
    #[arg(long = "option", value_name = "KEY=VALUE", value_parser = parse_option)]
    pub options: Vec<(String, String)>,
}

/// A dataset file format, as the upload route names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Npy,
    Npz,
    Idx,
    Csv,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Self::Npy => "npy",
            Self::Npz => "npz",
            Self::Idx => "idx",
            Self::Csv => "csv",
        }
    }

    /// The format a file's name suggests: `.npy`, `.npz`, `.csv`, and IDX names (`.idx`, `.idx3`,
    /// `train-images-idx3-ubyte`).
    pub fn guess(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        let extension = name.rsplit_once('.').map(|(_, e)| e);
        match extension {
            Some("npy") => Some(Self::Npy),
            Some("npz") => Some(Self::Npz),
            Some("csv") => Some(Self::Csv),
            _ if name.contains("idx") => Some(Self::Idx),
            _ => None,
        }
    }
}

/// `daig download`.
#[derive(Debug, clap::Args)]
pub struct DownloadArgs {
    /// The project's id.
    pub id: i64,
    /// The directory to write into, created if missing [default: project-ID].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Download a checkpoint's parameters (a version number, or `latest`) instead of the final model; the
    /// project's checkpoints are listed by `GET /api/projects/ID/checkpoints`.
    #[arg(long, value_name = "VERSION|latest")]
    pub checkpoint: Option<String>,
}

/// Uploads the features and labels and shows the committed dataset.
///
/// # Errors
/// Unusable files or formats (before anything is sent), and the server's refusals with its reason.
pub async fn upload(ctx: &Context, args: UploadArgs) -> Result<(), CliError> {
    let format_of = |path: &Path| {
        args.format.or_else(|| Format::guess(path)).ok_or_else(|| {
            CliError::Usage(format!(
                "cannot tell the format of {} from its name; pass --format npy, npz, idx or csv",
                path.display()
            ))
        })
    };
    let features_format = format_of(&args.features)?;
    let labels = match (&args.labels, features_format) {
        (Some(path), _) => Some((path.clone(), format_of(path)?)),
        (None, Format::Csv) => None,
        // One archive may hold both arrays; the server picks each part's array by its usual names.
        (None, Format::Npz) => Some((args.features.clone(), Format::Npz)),
        (None, _) => {
            return Err(CliError::Usage(
                "--labels FILE is needed: only a CSV file or an .npz archive holds features and labels together".into(),
            ));
        }
    };
    if features_format == Format::Csv && labels.is_some() {
        return Err(CliError::Usage(
            "a CSV file holds the labels in its last column: give it as --features only".into(),
        ));
    }
    if labels.as_ref().is_some_and(|(_, f)| *f == Format::Csv) {
        return Err(CliError::Usage("CSV labels are read from the features file: give it as --features only".into()));
    }
    let mut parts = vec![("features", args.features.clone(), features_format)];
    parts.extend(labels.map(|(path, format)| ("labels", path, format)));
    // Every file is checked before the first byte is sent.
    for (_, path, _) in &parts {
        let meta =
            std::fs::metadata(path).map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
        if !meta.is_file() {
            return Err(CliError::Usage(format!("{} is not a file", path.display())));
        }
    }

    let client = ctx.client()?;
    // Asked first, so that a project that is not there (or is another user's) is said so, rather than the
    // server's early answer cutting the body off mid-stream ("broken pipe").
    let (_, project): (Value, Project) = client.get(&format!("/api/projects/{}", args.id)).await?;
    if project.state != "draft" {
        return Err(CliError::Usage(format!(
            "project {} is {}: its dataset can change only while it is a draft",
            args.id, project.state
        )));
    }
    let mut status = DatasetStatus::default();
    let mut value = Value::Null;
    for (part, path, format) in &parts {
        (value, status) = upload_part(ctx, &client, args.id, part, path, *format, &args.options).await?;
    }
    if status.dataset.is_none() {
        let request = client.request_unbounded(Method::POST, &format!("/api/projects/{}/dataset/commit", args.id));
        (value, status) = client.json(request).await?;
    }
    if ctx.json {
        output::print_json(&value);
        return Ok(());
    }
    match &status.dataset {
        Some(dataset) => {
            say!("Dataset of project {} committed: {}.", args.id, output::dataset(dataset));
            say!("Next: daig start {}", args.id);
        }
        // The commit answers with the dataset; a server that does not is still reported honestly.
        None => say!("Uploaded {}; the dataset is not committed yet.", status.uploaded.join(" and ")),
    }
    Ok(())
}

/// Streams one file to `PUT /api/projects/{id}/dataset/{part}` with a progress bar.
async fn upload_part(
    ctx: &Context,
    client: &Client,
    id: i64,
    part: &str,
    path: &Path,
    format: Format,
    options: &[(String, String)],
) -> Result<(Value, DatasetStatus), CliError> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| CliError::Usage(format!("cannot open {}: {e}", path.display())))?;
    let len = file.metadata().await.map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?.len();
    let bar = output::byte_bar(len, part, ctx.quiet());
    let counter = bar.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(file, UPLOAD_CHUNK_BYTES).map(move |chunk| {
        if let Ok(bytes) = &chunk {
            counter.inc(bytes.len() as u64);
            if counter.position() == len {
                output::waiting(&counter, "sent, being checked");
            }
        }
        chunk
    });
    let mut query = vec![("format".to_owned(), format.name().to_owned())];
    query.extend(options.iter().cloned());
    let request = client
        .request_unbounded(Method::PUT, &format!("/api/projects/{id}/dataset/{part}"))
        .query(&query)
        .header(CONTENT_TYPE, "application/octet-stream")
        // Declared so that the server can refuse a file over its limit before it is sent.
        .header(CONTENT_LENGTH, len)
        .body(reqwest::Body::wrap_stream(stream));
    match client.json::<DatasetStatus>(request).await {
        Ok(answer) => {
            bar.finish_with_message(if answer.1.dataset.is_some() { "checked and sharded" } else { "stored" });
            Ok(answer)
        }
        Err(e) => {
            bar.abandon_with_message("failed");
            Err(e)
        }
    }
}

/// Downloads the model, its spec and the metrics history into a directory.
///
/// # Errors
/// 404 for no such project or no trained model yet (nothing is written then), and I/O errors.
pub async fn download(ctx: &Context, args: DownloadArgs) -> Result<(), CliError> {
    let client = ctx.client()?;
    let base = format!("/api/projects/{}", args.id);
    let (project_json, project): (Value, Project) = client.get(&base).await?;
    let (path, file_name) = match args.checkpoint.as_deref() {
        None => (format!("{base}/model"), "model.safetensors".to_owned()),
        Some(which) => {
            let version = if which == "latest" {
                let (list, _): (Value, Value) = client.get(&format!("{base}/checkpoints")).await?;
                list["checkpoints"][0]["version"]
                    .as_i64()
                    .ok_or_else(|| CliError::Usage(format!("project {} has no checkpoint yet", args.id)))?
            } else {
                which.parse::<i64>().map_err(|_| {
                    CliError::Usage(format!("--checkpoint takes a version number or `latest`, not {which:?}"))
                })?
            };
            (format!("{base}/checkpoints/{version}"), format!("checkpoint-v{version}.safetensors"))
        }
    };
    let response = client.send(client.request_unbounded(Method::GET, &path)).await?;
    let dir = args.out.unwrap_or_else(|| PathBuf::from(format!("project-{}", args.id)));
    tokio::fs::create_dir_all(&dir).await.map_err(io_error("cannot create", &dir))?;

    let model_path = dir.join(&file_name);
    let expected = response.content_length();
    let bar = output::byte_bar(expected.unwrap_or(0), "model", ctx.quiet());
    let temp = dir.join(format!(".{file_name}.{}.partial", std::process::id()));
    let written = save_stream(&client, response, &temp, &bar).await;
    let size_bytes = match written.and_then(|n| check_length(n, expected)) {
        Ok(n) => n,
        Err(e) => {
            bar.abandon_with_message("failed");
            // A broken download must not be mistaken for a model.
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(e);
        }
    };
    tokio::fs::rename(&temp, &model_path).await.map_err(io_error("cannot write", &model_path))?;
    bar.finish_with_message("done");

    let spec = client.send(client.request(Method::GET, &format!("{base}/model/spec"))).await?;
    let spec = spec.bytes().await.map_err(|e| client.transport_error(&e))?;
    write_file(&dir.join("model.json"), &spec).await?;
    let metrics = project_json.get("metrics").cloned().unwrap_or_else(|| json!([]));
    let metrics_text = serde_json::to_vec_pretty(&metrics)
        .map_err(|e| CliError::Other(anyhow::Error::new(e).context("serialising the metrics")))?;
    write_file(&dir.join("metrics.json"), &metrics_text).await?;

    if ctx.json {
        output::print_json(&json!({
            "project": args.id,
            "dir": dir.display().to_string(),
            "model_bytes": size_bytes,
            "files": [file_name, "model.json", "metrics.json"],
        }));
    } else {
        say!("Downloaded project {} \"{}\" ({}) into {}:", project.id, project.name, project.state, dir.display());
        say!("  {file_name}  {}", output::bytes(size_bytes));
        say!("  model.json         the model spec");
        say!("  metrics.json       {} metrics entries", project.metrics.len());
    }
    Ok(())
}

/// Writes a response body to `path` as it arrives, fsynced; returns the bytes written.
async fn save_stream(
    client: &Client,
    response: reqwest::Response,
    path: &Path,
    bar: &indicatif::ProgressBar,
) -> Result<u64, CliError> {
    let mut file = tokio::fs::File::create(path).await.map_err(io_error("cannot create", path))?;
    let mut stream = response.bytes_stream();
    let mut written = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| client.transport_error(&e))?;
        file.write_all(&chunk).await.map_err(io_error("cannot write", path))?;
        written += chunk.len() as u64;
        bar.inc(chunk.len() as u64);
    }
    file.sync_all().await.map_err(io_error("cannot write", path))?;
    Ok(written)
}

fn check_length(written: u64, expected: Option<u64>) -> Result<u64, CliError> {
    match expected {
        Some(expected) if expected != written => Err(CliError::Other(anyhow::anyhow!(
            "the download broke off after {written} of {expected} bytes; run it again"
        ))),
        _ => Ok(written),
    }
}

/// Writes a small file through a temporary one, so that an interrupted write leaves the old file or none.
async fn write_file(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let temp = path.with_file_name(format!(
        ".{}.{}.partial",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let result = async {
        tokio::fs::write(&temp, bytes).await?;
        tokio::fs::rename(&temp, path).await
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&temp).await;
    }
    result.map_err(io_error("cannot write", path))
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CliError {
    let path = path.display().to_string();
    move |e| CliError::Other(anyhow::anyhow!("{what} {path}: {e}"))
}

fn parse_option(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_guessed_from_file_names() {
        let guess = |name: &str| Format::guess(Path::new(name));
        assert_eq!(guess("data/images.npy"), Some(Format::Npy));
        assert_eq!(guess("MNIST.NPZ"), Some(Format::Npz));
        assert_eq!(guess("iris.csv"), Some(Format::Csv));
        assert_eq!(guess("train-images-idx3-ubyte"), Some(Format::Idx));
        assert_eq!(guess("labels.idx1"), Some(Format::Idx));
        assert_eq!(guess("images.bin"), None);
        assert_eq!(guess("noextension"), None);
    }

    #[test]
    fn options_are_key_value_pairs() {
        assert_eq!(parse_option("label_column=y"), Ok(("label_column".into(), "y".into())));
        assert_eq!(parse_option("delimiter=;=x"), Ok(("delimiter".into(), ";=x".into())));
        assert!(parse_option("=x").is_err());
        assert!(parse_option("novalue").is_err());
    }

    #[test]
    fn a_short_download_is_an_error() {
        assert_eq!(check_length(10, Some(10)).unwrap(), 10);
        assert_eq!(check_length(10, None).unwrap(), 10);
        assert!(check_length(9, Some(10)).is_err());
    }
}
