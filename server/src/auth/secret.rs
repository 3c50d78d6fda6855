//! Random secrets (API tokens, session and CSRF tokens) and their SHA-256 digests, the only form stored.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::TryRngCore as _;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};

use crate::error::AppError;

/// What every API token starts with, so that it is recognisable (and findable by secret scanners).
pub const TOKEN_PREFIX: &str = "daig_";

/// 32 random bytes from the OS as unpadded base64url (43 characters).
///
/// # Errors
/// [`AppError::Internal`] if the OS random source fails.
pub fn random_secret() -> Result<String, AppError> {
    let mut bytes = [0u8; 32];
    OsRng.try_fill_bytes(&mut bytes).map_err(|e| AppError::Internal(anyhow::anyhow!("OS random source: {e}")))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// A new API token: `daig_` and 32 random bytes in base64url.
///
/// # Errors
/// [`AppError::Internal`] if the OS random source fails.
pub fn new_api_token() -> Result<String, AppError> {
    Ok(format!("{TOKEN_PREFIX}{}", random_secret()?))
}

/// SHA-256 of a secret string. A digest compare leaks nothing useful about the secret: finding an input that
/// matches a stored digest is as hard as guessing the 256-bit secret.
pub fn digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}
