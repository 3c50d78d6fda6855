//! `f32` tensors as raw little-endian bytes, the form parameters and deltas take on the wire.
//!
//! Payloads are always little-endian. On little-endian hosts (x86, ARM, wasm32) encoding borrows the
//! values' own bytes and decoding is one copy; on big-endian hosts both convert each value.

use std::borrow::Cow;

/// A byte payload that cannot be read as `f32` values.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The length is not a whole number of `f32` values.
    #[error("f32 payload is {len} bytes, which is not a multiple of 4; the sender must send whole f32 values")]
    NotF32 {
        /// The payload's length in bytes.
        len: usize,
    },
}

/// The little-endian bytes of `values`: borrowed on little-endian hosts, converted on big-endian ones.
pub fn f32s_to_le_bytes(values: &[f32]) -> Cow<'_, [u8]> {
    #[cfg(target_endian = "little")]
    {
        Cow::Borrowed(bytemuck::cast_slice(values))
    }
    #[cfg(target_endian = "big")]
    {
        Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
}

/// Reads little-endian `f32` values from `bytes`, which need not be 4-byte aligned.
///
/// # Errors
///
/// [`PayloadError::NotF32`] when the length is not a multiple of 4.
pub fn f32s_from_le_bytes(bytes: &[u8]) -> Result<Vec<f32>, PayloadError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(PayloadError::NotF32 { len: bytes.len() });
    }
    #[cfg(target_endian = "little")]
    {
        // A decoded payload sits at any offset in its frame, so it cannot be cast in place.
        Ok(bytemuck::pod_collect_to_vec(bytes))
    }
    #[cfg(target_endian = "big")]
    {
        Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }
}
