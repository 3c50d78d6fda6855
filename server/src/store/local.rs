//! `LocalStore`: objects as files under a root directory.
//!
//! Key `a/b/c` is the file `ROOT/a/b/c`. Because keys are validated (no `..`, no leading `/`, no `\`, no
//! segment starting with `.`), a key's path is always under the root. Symbolic links are not created by the
//! store; listing skips them, but a link placed inside the root by hand is followed by reads.
//!
//! A write goes to `.tmp-*` in the object's directory, is fsynced and renamed over the key, then the directory
//! is fsynced: readers see the old object or the new one, never part of one. A failed or cancelled write
//! removes its temporary file; one left by a crash is never listed (keys cannot start with `.`).
//!
//! As in a file system (and unlike S3), a key cannot be both an object and a prefix of other objects:
//! storing `a/b` and `a/b/c` fails with [`StoreError::Io`].

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::fs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{ObjectMeta, ObjectSource, ObjectStore, ObjectStream, StoreError, normalize_prefix, validate_key};

/// Bytes read from an upload's source per write to the temporary file.
const COPY_BUFFER_BYTES: usize = 1 << 20;

/// Tells temporary files of one process apart.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Objects stored as files under a root directory.
#[derive(Clone, Debug)]
pub struct LocalStore {
    /// The directory holding the objects.
    root: PathBuf,
}

impl LocalStore {
    /// Opens the store at `root`, creating the directory if needed.
    ///
    /// # Errors
    /// [`StoreError::Io`] if the directory cannot be created.
    pub async fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        fs::create_dir_all(&root)
            .await
            .map_err(|e| StoreError::io(format!("cannot create the object directory {}", root.display()), e))?;
        Ok(Self { root })
    }

    /// The directory holding the objects.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        validate_key(key)?;
        Ok(self.root.join(key.split('/').collect::<PathBuf>()))
    }

    /// The directory for a normalised prefix (`""` or `a/b/`).
    fn dir_of(&self, prefix: &str) -> PathBuf {
        self.root.join(prefix.split('/').filter(|s| !s.is_empty()).collect::<PathBuf>())
    }

    /// Removes empty directories from `dir` up to, not including, the root.
    async fn prune_empty_dirs(&self, mut dir: &Path) {
        while dir != self.root && dir.starts_with(&self.root) {
            // Fails when the directory is not empty (or is already gone), which ends the walk.
            if fs::remove_dir(dir).await.is_err() {
                break;
            }
            match dir.parent() {
                Some(parent) => dir = parent,
                None => break,
            }
        }
    }

    async fn write_atomically(&self, key: &str, source: ObjectSource<'_>) -> Result<ObjectMeta, StoreError> {
        let path = self.path_of(key)?;
        let dir = path.parent().expect("an object path is under the root").to_owned();
        let temp_path =
            dir.join(format!(".tmp-{}-{}", std::process::id(), TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)));
        let write_error = |e| StoreError::io(format!("cannot write object {key:?} in {}", dir.display()), e);
        // A concurrent delete may prune the directory between its creation and the file's; retry once.
        let mut file = None;
        for _ in 0..2 {
            fs::create_dir_all(&dir).await.map_err(write_error)?;
            match fs::OpenOptions::new().write(true).create_new(true).open(&temp_path).await {
                Ok(f) => {
                    file = Some(f);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(write_error(e)),
            }
        }
        let Some(mut file) = file else {
            return Err(write_error(io::Error::new(io::ErrorKind::NotFound, "the directory keeps disappearing")));
        };
        let guard = TempFile(Some(temp_path.clone()));

        let mut buffer = vec![0; COPY_BUFFER_BYTES];
        let mut size_bytes = 0u64;
        loop {
            let n = source
                .read(&mut buffer)
                .await
                .map_err(|e| StoreError::io(format!("reading the data for object {key:?} failed"), e))?;
            if n == 0 {
                break;
            }
            file.write_all(&buffer[..n]).await.map_err(write_error)?;
            size_bytes += n as u64;
        }
        file.flush().await.map_err(write_error)?;
        file.sync_all().await.map_err(write_error)?;
        drop(file);
        fs::rename(&temp_path, &path).await.map_err(write_error)?;
        guard.disarm();
        // Makes the rename durable. Some file systems cannot sync a directory; the object is in place anyway.
        if let Ok(dir_handle) = fs::File::open(&dir).await {
            let _ = dir_handle.sync_all().await;
        }
        Ok(ObjectMeta { key: key.to_owned(), size_bytes })
    }

    /// Opens the object's file, or `NotFound` if there is no file (a directory is a prefix, not an object).
    async fn open_object(&self, key: &str) -> Result<(fs::File, u64), StoreError> {
        let path = self.path_of(key)?;
        let file = fs::File::open(&path).await.map_err(|e| self.read_error(key, e))?;
        let metadata = file.metadata().await.map_err(|e| self.read_error(key, e))?;
        if !metadata.is_file() {
            return Err(StoreError::NotFound(key.to_owned()));
        }
        Ok((file, metadata.len()))
    }

    fn read_error(&self, key: &str, e: io::Error) -> StoreError {
        // NotADirectory: a segment of the key is a file, so nothing can be under it.
        if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) {
            StoreError::NotFound(key.to_owned())
        } else {
            StoreError::io(format!("cannot read object {key:?} under {}", self.root.display()), e)
        }
    }
}

/// Removes a temporary file when dropped, unless disarmed: on errors and on cancellation of the write.
struct TempFile(Option<PathBuf>);

impl TempFile {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            // Synchronous, because Drop cannot await; removing one file is quick.
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The objects under `dir` (recursively), with keys starting with `prefix`; skips temporary files, links and
/// names that are not valid keys (files put there by hand).
fn walk(dir: &Path, prefix: &str, out: &mut Vec<ObjectMeta>) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else { continue };
        let key = format!("{prefix}{name}");
        if validate_key(&key).is_err() {
            continue;
        }
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            walk(&entry.path(), &format!("{key}/"), out)?;
        } else if file_type.is_file() {
            out.push(ObjectMeta { key, size_bytes: entry.metadata()?.len() });
        }
    }
    Ok(())
}

async fn walk_blocking(dir: PathBuf, prefix: String) -> io::Result<Vec<ObjectMeta>> {
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        walk(&dir, &prefix, &mut out)?;
        out.sort();
        Ok(out)
    })
    .await
    .map_err(io::Error::other)?
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn put(&self, key: &str, data: Bytes) -> Result<ObjectMeta, StoreError> {
        self.write_atomically(key, &mut &data[..]).await
    }

    async fn put_stream(&self, key: &str, source: ObjectSource<'_>) -> Result<ObjectMeta, StoreError> {
        self.write_atomically(key, source).await
    }

    async fn get(&self, key: &str, max_bytes: u64) -> Result<Bytes, StoreError> {
        let (file, size_bytes) = self.open_object(key).await?;
        if size_bytes > max_bytes {
            return Err(StoreError::TooLarge { key: key.to_owned(), size_bytes, max_bytes });
        }
        // The file cannot change under an open handle (writes rename a new file in), but its length is read
        // again through `take` so that the limit holds whatever happens.
        let mut data = Vec::with_capacity(usize::try_from(size_bytes).unwrap_or(0));
        file.take(max_bytes.saturating_add(1)).read_to_end(&mut data).await.map_err(|e| self.read_error(key, e))?;
        if data.len() as u64 > max_bytes {
            return Err(StoreError::TooLarge { key: key.to_owned(), size_bytes: data.len() as u64, max_bytes });
        }
        Ok(Bytes::from(data))
    }

    async fn get_stream(&self, key: &str) -> Result<ObjectStream, StoreError> {
        let (file, size_bytes) = self.open_object(key).await?;
        Ok(ObjectStream { size_bytes, reader: Box::new(file) })
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        let path = self.path_of(key)?;
        let metadata = fs::symlink_metadata(&path).await.map_err(|e| self.read_error(key, e))?;
        if !metadata.is_file() {
            return Err(StoreError::NotFound(key.to_owned()));
        }
        Ok(ObjectMeta { key: key.to_owned(), size_bytes: metadata.len() })
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        match fs::symlink_metadata(&path).await {
            Ok(metadata) if metadata.is_file() => {}
            // A directory is a prefix, not an object: nothing to delete under this key.
            Ok(_) => return Ok(()),
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => return Ok(()),
            Err(e) => return Err(StoreError::io(format!("cannot delete object {key:?}"), e)),
        }
        match fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io(format!("cannot delete object {key:?}"), e)),
        }
        if let Some(dir) = path.parent() {
            self.prune_empty_dirs(dir).await;
        }
        Ok(())
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        let prefix = normalize_prefix(prefix)?;
        if prefix.is_empty() {
            return Err(StoreError::invalid_key("", "deleting every object (an empty prefix) is refused"));
        }
        let dir = self.dir_of(&prefix);
        let delete_error = |e| StoreError::io(format!("cannot delete the objects under {prefix:?}"), e);
        let objects = walk_blocking(dir.clone(), prefix.clone()).await.map_err(delete_error)?;
        match fs::symlink_metadata(&dir).await {
            Ok(metadata) if metadata.is_dir() => fs::remove_dir_all(&dir).await.map_err(delete_error)?,
            _ => return Ok(0),
        }
        if let Some(parent) = dir.parent() {
            self.prune_empty_dirs(parent).await;
        }
        Ok(objects.len() as u64)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let prefix = normalize_prefix(prefix)?;
        walk_blocking(self.dir_of(&prefix), prefix.clone())
            .await
            .map_err(|e| StoreError::io(format!("cannot list the objects under {prefix:?}"), e))
    }
}
