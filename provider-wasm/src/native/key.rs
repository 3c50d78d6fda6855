//! The native provider's persistent key: 32 random bytes as hex in a file of the user's config directory,
//! created on first use and readable by the user alone.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, bail};
use daig_shared::wire::ProviderKey;
use rand::TryRngCore as _;
use rand::rngs::OsRng;

/// The key in `path`, or a new one written there (with its directory) when the file does not exist.
///
/// # Errors
/// The file cannot be read or written, or holds something other than a key (it is never overwritten: a
/// damaged key file would silently cost the provider its standing).
pub fn load_or_create(path: &Path) -> anyhow::Result<ProviderKey> {
    match std::fs::read_to_string(path) {
        Ok(text) => match ProviderKey::from_hex(&text) {
            Some(key) => Ok(key),
            None => {
                bail!("{} does not hold a provider key (64 hex digits); move it away to start anew", path.display())
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path),
        Err(e) => Err(e).with_context(|| format!("cannot read the provider key {}", path.display())),
    }
}

fn create(path: &Path) -> anyhow::Result<ProviderKey> {
    let mut bytes = [0u8; 32];
    OsRng.try_fill_bytes(&mut bytes).context("the OS random source failed")?;
    let key = ProviderKey(bytes);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = match options.open(path) {
        Ok(file) => file,
        // Another provider of this user created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return load_or_create(path),
        Err(e) => return Err(e).with_context(|| format!("cannot create the provider key {}", path.display())),
    };
    writeln!(file, "{}", key.to_hex()).with_context(|| format!("cannot write the provider key {}", path.display()))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_created_once_and_read_back_unchanged() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("nested").join("provider.key");
        let first = load_or_create(&path).expect("a new key");
        assert_eq!(load_or_create(&path).expect("the same key"), first);
        let other = load_or_create(&dir.path().join("other.key")).expect("another key");
        assert_ne!(other, first, "each key is random");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).expect("metadata").permissions().mode();
            assert_eq!(mode & 0o077, 0, "the key file is the user's alone: {mode:o}");
        }
    }

    #[test]
    fn a_damaged_key_file_is_an_error_and_is_left_alone() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("provider.key");
        std::fs::write(&path, "not a key").expect("write");
        let error = load_or_create(&path).expect_err("a damaged key is refused");
        assert!(error.to_string().contains("does not hold a provider key"), "{error}");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "not a key");
    }
}
