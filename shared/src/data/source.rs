//! Random access to fixed-size samples in a seekable input, and the helpers that read a small array whole or
//! spool a streamed one into a seekable file.

use std::io::{self, Read, Seek, SeekFrom, Write};

use super::{ArrayInfo, ByteOrder, DataError, Limits, RawArray, ShapeDisplay, read_exact_or_truncated, swap_bytes};

/// Samples at known offsets in a `Read + Seek` input: a `.npy` or IDX file, a stored `.npz` entry, or a raw
/// file written by [`spool_to_raw`]. Only the sample asked for is read, so the input may be larger than memory.
#[derive(Debug)]
pub struct SampleSource<R> {
    reader: R,
    info: ArrayInfo,
    /// Where sample 0 starts in `reader`.
    data_offset: u64,
    sample_bytes: usize,
}

impl<R: Read + Seek> SampleSource<R> {
    /// Opens a `.npy` file, checking that its length is exactly what the header declares.
    ///
    /// # Errors
    ///
    /// As [`super::npy::read_header`], plus [`DataError::Truncated`] or [`DataError::TrailingBytes`] when the
    /// file's length does not match the header.
    pub fn npy(mut reader: R, limits: &Limits) -> Result<Self, DataError> {
        reader.seek(SeekFrom::Start(0))?;
        let header = super::npy::read_header(&mut reader, limits)?;
        Self::new(reader, header.info, header.data_offset, End::Exact, ".npy data")
    }

    /// Opens an IDX file, checking that its length is exactly what the header declares.
    ///
    /// # Errors
    ///
    /// As [`super::idx::read_header`], plus [`DataError::Truncated`] or [`DataError::TrailingBytes`].
    pub fn idx(mut reader: R, limits: &Limits) -> Result<Self, DataError> {
        reader.seek(SeekFrom::Start(0))?;
        let header = super::idx::read_header(&mut reader, limits)?;
        Self::new(reader, header.info, header.data_offset, End::Exact, "IDX data")
    }

    /// Opens raw samples described by `info` at `data_offset`, e.g. the output of [`spool_to_raw`]. The input
    /// may continue after the data (as a zip archive does after a stored entry).
    ///
    /// # Errors
    ///
    /// [`DataError::TooLarge`] or [`DataError::Malformed`] when `info` breaks `limits`, [`DataError::Truncated`]
    /// when the input is shorter than the data.
    pub fn raw(reader: R, info: ArrayInfo, data_offset: u64, limits: &Limits) -> Result<Self, DataError> {
        info.validate("raw sample", limits)?;
        Self::new(reader, info, data_offset, End::AtLeast, "the raw samples")
    }

    pub(crate) fn new(
        mut reader: R,
        info: ArrayInfo,
        data_offset: u64,
        end: End,
        what: &str,
    ) -> Result<Self, DataError> {
        let sample_bytes = info.sample_bytes()?;
        let expected_end = data_offset
            .checked_add(info.byte_len()?)
            .ok_or_else(|| DataError::ShapeOverflow(ShapeDisplay(&info.shape).to_string()))?;
        let actual_end = reader.seek(SeekFrom::End(0))?;
        if actual_end < expected_end {
            return Err(DataError::Truncated {
                what: format!("{what} ({} of shape {})", info.dtype, ShapeDisplay(&info.shape)),
                expected: expected_end - data_offset,
                actual: actual_end.saturating_sub(data_offset),
            });
        }
        if end == End::Exact && actual_end > expected_end {
            return Err(DataError::TrailingBytes {
                what: format!("{what} ({} of shape {})", info.dtype, ShapeDisplay(&info.shape)),
                extra: actual_end - expected_end,
            });
        }
        Ok(SampleSource { reader, info, data_offset, sample_bytes })
    }

    /// What the samples are.
    pub fn info(&self) -> &ArrayInfo {
        &self.info
    }

    /// Bytes per sample.
    pub fn sample_bytes(&self) -> usize {
        self.sample_bytes
    }

    /// Reads samples `first..first + out.len() / sample_bytes` into `out`, converted to little-endian.
    ///
    /// # Errors
    ///
    /// [`DataError::Option`] when the range is outside the array or `out` is not a whole number of samples,
    /// [`DataError::Io`] or [`DataError::Truncated`] when the input fails or shrank since it was opened.
    pub fn read_samples_le(&mut self, first: usize, out: &mut [u8]) -> Result<(), DataError> {
        let count = out.len().checked_div(self.sample_bytes).unwrap_or(0);
        if count * self.sample_bytes != out.len() || first.checked_add(count).is_none_or(|end| end > self.info.len()) {
            return Err(DataError::Option(format!(
                "samples {first}..{first}+{count} (buffer {} bytes) are outside the {} samples of {} bytes",
                out.len(),
                self.info.len(),
                self.sample_bytes
            )));
        }
        // In range, so within the byte length checked when opening.
        let offset = self.data_offset + first as u64 * self.sample_bytes as u64;
        self.reader.seek(SeekFrom::Start(offset))?;
        read_exact_or_truncated(&mut self.reader, out, "a sample")?;
        if self.info.byte_order == ByteOrder::Big {
            swap_bytes(out, self.info.dtype.size());
        }
        Ok(())
    }

    /// Gives back the reader.
    pub fn into_inner(self) -> R {
        self.reader
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The input ends right after the data.
    Exact,
    /// The input may go on after the data.
    AtLeast,
}

/// Reads the data of an array described by `info` from `r` (positioned at the first element) into memory,
/// for labels and other small arrays. The size is checked against `limits.max_in_memory_bytes` first, the buffer
/// grows only as bytes arrive, and the input must end right after the data.
///
/// # Errors
///
/// [`DataError::TooLarge`] over the limit, [`DataError::Truncated`] when the input is short,
/// [`DataError::TrailingBytes`] when it goes on, [`DataError::Io`] when it fails.
pub fn read_array(info: ArrayInfo, r: impl Read, limits: &Limits) -> Result<RawArray, DataError> {
    info.validate("array", limits)?;
    let expected = info.byte_len()?;
    if expected > limits.max_in_memory_bytes {
        return Err(DataError::TooLarge {
            what: format!("a {} array of shape {} read into memory", info.dtype, ShapeDisplay(&info.shape)),
            bytes: expected,
            limit: limits.max_in_memory_bytes,
        });
    }
    let mut data = Vec::new();
    let mut r = r.take(expected + 1);
    r.read_to_end(&mut data)?;
    let what = || format!("the {} array of shape {}", info.dtype, ShapeDisplay(&info.shape));
    if (data.len() as u64) < expected {
        return Err(DataError::Truncated { what: what(), expected, actual: data.len() as u64 });
    }
    if data.len() as u64 > expected {
        let extra = 1 + io::copy(&mut r.into_inner(), &mut io::sink())?;
        return Err(DataError::TrailingBytes { what: what(), extra });
    }
    Ok(RawArray { info, data })
}

/// Copies the data of an array described by `info` from a streaming reader (a deflated `.npz` entry, say) to
/// `out` as raw little-endian samples, in chunks, so that [`SampleSource::raw`] can then read it at random.
/// Returns the array as it is in `out` (little-endian).
///
/// # Errors
///
/// [`DataError::TooLarge`] or [`DataError::Malformed`] when `info` breaks `limits`, [`DataError::Truncated`] when
/// the input ends early, [`DataError::TrailingBytes`] when it goes on, [`DataError::Io`] when either side fails.
pub fn spool_to_raw(
    info: &ArrayInfo,
    mut r: impl Read,
    mut out: impl Write,
    limits: &Limits,
) -> Result<ArrayInfo, DataError> {
    info.validate("array", limits)?;
    let expected = info.byte_len()?;
    let size = info.dtype.size();
    // A multiple of every element size, so that byte swapping never straddles chunks.
    let mut buf = vec![0u8; 64 * 1024];
    let mut copied = 0u64;
    while copied < expected {
        let want = (expected - copied).min(buf.len() as u64) as usize;
        let chunk = &mut buf[..want];
        read_exact_or_truncated(&mut r, chunk, "spooling").map_err(|e| match e {
            DataError::Truncated { actual, .. } => DataError::Truncated {
                what: format!("the {} array of shape {}", info.dtype, ShapeDisplay(&info.shape)),
                expected,
                actual: copied + actual,
            },
            other => other,
        })?;
        if info.byte_order == ByteOrder::Big {
            swap_bytes(chunk, size);
        }
        out.write_all(chunk)?;
        copied += want as u64;
    }
    let extra = io::copy(&mut r, &mut io::sink())?;
    if extra > 0 {
        return Err(DataError::TrailingBytes {
            what: format!("the {} array of shape {}", info.dtype, ShapeDisplay(&info.shape)),
            extra,
        });
    }
    out.flush()?;
    Ok(ArrayInfo { byte_order: ByteOrder::Little, ..info.clone() })
}
