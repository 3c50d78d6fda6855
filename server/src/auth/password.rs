//! Passwords: argon2id hashes (the crate's default parameters, OWASP's minimum: 19 MiB, 2 passes) computed on
//! the blocking pool so that hashing does not stall the async workers.

use std::sync::LazyLock;

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};

use crate::error::AppError;

/// Hashes `password` into a PHC string.
///
/// # Errors
/// [`AppError::Internal`] if the hasher or the blocking task fails.
pub async fn hash(password: String) -> Result<String, AppError> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|hash| hash.to_string())
            .map_err(|e| AppError::Internal(anyhow::anyhow!("argon2 hash: {e}")))
    })
    .await?
}

/// Whether `password` matches the PHC string `hash`; with no hash (an unknown user) it checks against a dummy
/// hash and answers false, so that both cases take the same time.
///
/// # Errors
/// [`AppError::Internal`] if the blocking task fails.
pub async fn verify(password: String, hash: Option<String>) -> Result<bool, AppError> {
    static DUMMY: LazyLock<String> = LazyLock::new(|| {
        Argon2::default()
            .hash_password_with_salt(b"not a password of anyone", b"daig-dummy-salt!")
            .map(|h| h.to_string())
            .unwrap_or_default()
    });
    tokio::task::spawn_blocking(move || {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| DUMMY.clone());
        let matches = Argon2::default().verify_password(password.as_bytes(), hash.as_str()).is_ok();
        known && matches
    })
    .await
    .map_err(AppError::from)
}
