//! Object keys: validation, and prefixes normalised to whole path segments.
//!
//! A key is a `/`-separated path such as `projects/42/shards/train-0003.bin`. Keys may be derived from user
//! input, so every operation validates its key before touching storage: the rules below make it impossible
//! for a key to name anything outside the local store's root, and keep keys portable between backends.

use super::StoreError;

/// The longest key accepted, in bytes (S3 allows 1024; file systems allow paths of about 4096).
pub const MAX_KEY_BYTES: usize = 512;
/// The longest segment accepted, in bytes (most file systems limit a file name to 255 bytes).
pub const MAX_SEGMENT_BYTES: usize = 255;

/// Checks that `key` is a valid object key.
///
/// Rules: 1 to [`MAX_KEY_BYTES`] bytes; segments separated by `/`, none empty (so no leading, trailing or
/// doubled `/`) and none longer than [`MAX_SEGMENT_BYTES`]; only ASCII letters, digits, `-`, `_` and `.`; no
/// segment starting with `.` (which rules out `.` and `..`, and keeps the local store's temporary files,
/// whose names start with `.`, apart from objects).
///
/// # Errors
/// [`StoreError::InvalidKey`] naming the first rule broken.
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::invalid_key(key, "the key is empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(StoreError::invalid_key(key, format!("the key is longer than {MAX_KEY_BYTES} bytes")));
    }
    if let Some(c) = key.chars().find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))) {
        let what = match c {
            '\\' => "a backslash".to_owned(),
            c if c.is_control() => format!("the control character {c:?}"),
            c => format!("the character {c:?}"),
        };
        return Err(StoreError::invalid_key(
            key,
            format!("it contains {what}; only ASCII letters, digits, '-', '_', '.' and '/' are allowed"),
        ));
    }
    if key.starts_with('/') {
        return Err(StoreError::invalid_key(key, "it starts with '/'; keys are relative"));
    }
    for segment in key.split('/') {
        if segment.is_empty() {
            return Err(StoreError::invalid_key(key, "it has an empty segment ('//' or a trailing '/')"));
        }
        if segment == ".." || segment == "." {
            return Err(StoreError::invalid_key(key, format!("it has a {segment:?} segment")));
        }
        if segment.starts_with('.') {
            return Err(StoreError::invalid_key(key, format!("its segment {segment:?} starts with '.'")));
        }
        if segment.len() > MAX_SEGMENT_BYTES {
            return Err(StoreError::invalid_key(key, format!("a segment is longer than {MAX_SEGMENT_BYTES} bytes")));
        }
    }
    Ok(())
}

/// Normalises a listing or deletion prefix: `""` stays `""` (everything), and `a/b` or `a/b/` becomes `a/b/`.
///
/// A prefix always covers whole segments: `projects/4` covers `projects/4/x` but not `projects/42/x`, so that
/// deleting one project's objects cannot touch another's.
///
/// # Errors
/// [`StoreError::InvalidKey`] if the prefix without its trailing `/` is not a valid key.
pub fn normalize_prefix(prefix: &str) -> Result<String, StoreError> {
    if prefix.is_empty() {
        return Ok(String::new());
    }
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    validate_key(trimmed).map_err(|error| match error {
        StoreError::InvalidKey { reason, .. } => StoreError::invalid_key(prefix, reason),
        other => other,
    })?;
    Ok(format!("{trimmed}/"))
}
