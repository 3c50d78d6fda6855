//! The native provider's shard cache: one file per shard, `<hex SHA-256>.shard`, in a directory, under a
//! byte budget. A file's modification time is its last use (touched on every load); the least recently
//! used files go first when a new shard does not fit. The session checks every loaded shard against its
//! hash, so a damaged file costs a download, never a wrong result.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use daig_shared::wire::ShardHash;

const SUFFIX: &str = ".shard";

/// A directory of shards; every method is blocking (call it from `spawn_blocking`).
#[derive(Debug)]
pub struct DiskCache {
    dir: PathBuf,
    max_bytes: u64,
    /// Numbers temporary files, so that concurrent stores never share one.
    temp_counter: AtomicU64,
}

/// One shard file.
struct Entry {
    path: PathBuf,
    bytes: u64,
    used: SystemTime,
}

impl DiskCache {
    /// Opens (creating it if needed) the cache in `dir`, holding at most `max_bytes`.
    ///
    /// # Errors
    /// When the directory cannot be created.
    pub fn open(dir: impl Into<PathBuf>, max_bytes: u64) -> io::Result<DiskCache> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(DiskCache { dir, max_bytes, temp_counter: AtomicU64::new(0) })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The shards held, most recently used first.
    pub fn list(&self) -> Vec<ShardHash> {
        let mut entries = self.entries();
        entries.sort_by_key(|(_, e)| std::cmp::Reverse(e.used));
        entries.into_iter().map(|(hash, _)| hash).collect()
    }

    /// The shard's bytes, or `None` when it is not held; marks it used.
    ///
    /// # Errors
    /// When the file exists but cannot be read.
    pub fn load(&self, shard: ShardHash) -> io::Result<Option<Vec<u8>>> {
        let path = self.path(shard);
        match fs::read(&path) {
            Ok(bytes) => {
                // Only the eviction order depends on it.
                let _ = fs::File::options().append(true).open(&path).and_then(|f| f.set_modified(SystemTime::now()));
                Ok(Some(bytes))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stores a shard (atomically: a reader sees the whole file or none), then evicts the least recently
    /// used others until the cache fits its budget. A shard larger than the budget is not stored.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn store(&self, shard: ShardHash, bytes: &[u8]) -> io::Result<()> {
        if bytes.len() as u64 > self.max_bytes {
            return Ok(());
        }
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        let temp = self.dir.join(format!("{shard}.tmp-{}-{n}", std::process::id()));
        let written = fs::write(&temp, bytes).and_then(|()| fs::rename(&temp, self.path(shard)));
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written?;
        self.evict(shard);
        Ok(())
    }

    /// Deletes a shard (e.g. one whose bytes no longer match its name).
    pub fn remove(&self, shard: ShardHash) {
        let _ = fs::remove_file(self.path(shard));
    }

    fn path(&self, shard: ShardHash) -> PathBuf {
        self.dir.join(format!("{shard}{SUFFIX}"))
    }

    fn entries(&self) -> Vec<(ShardHash, Entry)> {
        let Ok(read) = fs::read_dir(&self.dir) else { return Vec::new() };
        read.filter_map(Result::ok)
            .filter_map(|item| {
                let name = item.file_name();
                let hash: ShardHash = name.to_str()?.strip_suffix(SUFFIX)?.parse().ok()?;
                let meta = item.metadata().ok().filter(fs::Metadata::is_file)?;
                let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                Some((hash, Entry { path: item.path(), bytes: meta.len(), used }))
            })
            .collect()
    }

    fn evict(&self, keep: ShardHash) {
        let mut entries = self.entries();
        let mut total: u64 = entries.iter().map(|(_, e)| e.bytes).sum();
        entries.sort_by_key(|(_, e)| e.used);
        for (hash, entry) in entries {
            if total <= self.max_bytes {
                break;
            }
            if hash != keep && fs::remove_file(&entry.path).is_ok() {
                total -= entry.bytes;
            }
        }
    }
}

/// A shard hash from 64 lowercase hex digits.
#[cfg(test)]
mod tests {
    use super::*;

    fn hash(n: u8) -> ShardHash {
        ShardHash([n; 32])
    }

    #[test]
    fn stores_loads_lists_and_evicts_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path().join("shards"), 25).unwrap();
        assert_eq!(cache.load(hash(1)).unwrap(), None);
        cache.store(hash(1), &[1; 10]).unwrap();
        cache.store(hash(2), &[2; 10]).unwrap();
        // Mark 1 as used after 2, so that 2 is the older one.
        let past = SystemTime::now() - std::time::Duration::from_secs(60);
        fs::File::options().append(true).open(cache.path(hash(2))).unwrap().set_modified(past).unwrap();
        assert_eq!(cache.load(hash(1)).unwrap(), Some(vec![1; 10]));
        assert_eq!(cache.list(), vec![hash(1), hash(2)]);

        cache.store(hash(3), &[3; 10]).unwrap();
        let mut held = cache.list();
        held.sort();
        assert_eq!(held, vec![hash(1), hash(3)], "the least recently used shard is evicted");

        cache.store(hash(4), &[4; 26]).unwrap();
        assert_eq!(cache.load(hash(4)).unwrap(), None, "a shard over the budget is not stored");
        cache.remove(hash(1));
        assert_eq!(cache.list(), vec![hash(3)]);
        fs::write(cache.dir().join("notes.txt"), b"not a shard").unwrap();
        assert_eq!(cache.list(), vec![hash(3)]);
    }

    #[test]
    fn file_names_are_the_hex_hash() {
        let h = ShardHash(std::array::from_fn(|i| i as u8 * 7));
        assert_eq!(h.to_string().parse::<ShardHash>().ok(), Some(h));
        assert_eq!("ab".parse::<ShardHash>().ok(), None);
        assert_eq!("G".repeat(64).parse::<ShardHash>().ok(), None);
    }
}
