//! Checks shared by the dataset targets: what a reader that says OK must have returned.
//!
//! Each target uses part of it.

#![allow(dead_code)]

use std::io::{Read, Seek};

use daig_shared::data::{ArrayInfo, ByteOrder, Limits, RawArray, SampleSource};

/// The limits the server reads uploads with.
pub fn limits() -> Limits {
    Limits::default()
}

/// A reader's array is consistent with its declared shape: at least one axis, within the limits, and exactly
/// `byte_len` bytes of data.
pub fn check_raw(array: &RawArray, limits: &Limits) {
    check_info(&array.info, limits);
    assert_eq!(array.data.len() as u64, array.info.byte_len().expect("a valid shape has a byte length"));
}

/// An `ArrayInfo` a reader returned passes the checks readers promise to make.
pub fn check_info(info: &ArrayInfo, limits: &Limits) {
    assert!(!info.shape.is_empty(), "a reader returned a scalar shape");
    info.validate("fuzz", limits).expect("a reader returned a shape it should have refused");
}

/// `data` (elements in `info.byte_order`) converted to little-endian.
pub fn to_le(info: &ArrayInfo, data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    let size = info.dtype.size();
    if info.byte_order == ByteOrder::Big && size > 1 {
        for element in out.chunks_exact_mut(size) {
            element.reverse();
        }
    }
    out
}

/// Reads a few samples (the first, the last, and past the end) from `source`, checks each read's length, and
/// compares with `expected_le` (the whole array, little-endian) when the caller has it. Returns the samples read.
pub fn check_source<R: Read + Seek>(source: &mut SampleSource<R>, expected_le: Option<&[u8]>) {
    let info = source.info().clone();
    let sample_bytes = source.sample_bytes();
    assert_eq!(sample_bytes as u64, info.sample_bytes().expect("a valid shape has a sample size") as u64);
    let n = info.len();
    if n == 0 || sample_bytes == 0 {
        return;
    }
    // With at least one sample, the input held `n * sample_bytes` bytes, so this buffer is no larger than it.
    let mut out = vec![0u8; sample_bytes];
    for i in [0, n / 2, n - 1] {
        source.read_samples_le(i, &mut out).expect("a sample inside the array reads");
        if let Some(expected) = expected_le {
            assert_eq!(&out[..], &expected[i * sample_bytes..(i + 1) * sample_bytes], "sample {i} differs");
        }
    }
    assert!(source.read_samples_le(n, &mut out).is_err(), "a sample past the end read");
}
