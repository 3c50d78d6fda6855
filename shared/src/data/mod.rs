//! Datasets: readers for the files a requestor uploads, the checks against the model, normalisation, and
//! the shards the server stores and providers train on.
//!
//! # Data flow
//!
//! ```text
//! upload (.npy / .npz / CSV / IDX)
//!   -> reader: ArrayInfo (dtype, shape, byte order) + a SampleSource (fixed-size samples, random access)
//!      or, for inputs that cannot seek (deflated .npz entries, CSV), a spool into a plain file first
//!   -> check(features, labels, DataRequirements) and Labels::from_array (label range, one pass)
//!   -> shard_dataset: seeded shuffle, train/validation split, shards emitted one at a time
//!   -> ShardView::decode on the provider, sample_f32 with the project's Normalization
//! ```
//!
//! # Input formats
//!
//! - **`.npy`** ([`npy`]): the magic `\x93NUMPY`, a major and minor version byte, the header length
//!   (`u16` little-endian for version 1.0, `u32` for 2.0 and 3.0), then a Python dict literal such as
//!   `{'descr': '<f4', 'fortran_order': False, 'shape': (60000, 28, 28), }` padded with spaces and a newline,
//!   then the raw elements in C order. The dict is read by a small parser that knows only strings, `True`,
//!   `False`, integers and tuples: nothing is evaluated. Supported dtypes are `u1 i1 u2 i2 i4 i8 f4 f8` with byte
//!   order `<`, `>` or `|` (the last only for one-byte types).
//! - **`.npz`** ([`npz`]): a zip archive of `.npy` files, entries stored (`np.savez`) or deflated
//!   (`np.savez_compressed`). Stored entries are read in place; deflated ones are spooled first.
//! - **CSV** ([`csv`]): one sample per row, numeric features, one label column chosen by name or index, header row
//!   optional. Features become `f32`; labels `i64` when every label is an integer, else `f64`.
//! - **IDX** ([`idx`]), the MNIST format: two zero bytes, a dtype code (`0x08` u8, `0x09` i8, `0x0B` i16,
//!   `0x0C` i32, `0x0D` f32, `0x0E` f64), the number of dimensions, each dimension as a big-endian `u32`, then
//!   big-endian elements.
//!
//! Pickles are refused everywhere: an object array (`dtype('O')`) or a file that starts with a pickle opcode is an
//! error, because loading a pickle lets the upload run code on the server.
//!
//! # Limits
//!
//! No reader allocates what a header declares before checking it: products of dimensions use checked
//! arithmetic, declared sizes are compared with the real length of a seekable input or with [`Limits`], and data
//! read from a stream grows its buffer only as bytes actually arrive.
//!
//! Nothing is inflated or spooled before it is checked: a `.npz` archive's central directory is checked against
//! [`Limits::max_array_bytes`] when it is opened, each entry's `.npy` header is read from the decompressing
//! stream and checked (against the limits, and by the caller against the model, see [`check_features`] and
//! [`check_labels`]) before its body is, and an entry never yields more bytes than its header declares. A CSV
//! record is refused once it passes [`Limits::max_record_bytes`], before it is held whole, and the features
//! spooled from a CSV stop at [`Limits::max_array_bytes`].
//!
//! # Shards
//!
//! The shard layout is described byte by byte in [`shard`].

pub mod check;
pub mod csv;
pub mod idx;
pub mod normalize;
pub mod npy;
pub mod npz;
pub mod shard;
mod source;

use std::fmt;
use std::io::{self, Read};

pub use check::{DataRequirements, LabelRef, LabelRequirement, Labels, check, check_features, check_labels};
pub use normalize::{Normalization, RunningStats, to_f32};
pub use shard::{
    ShardHeader, ShardLabel, ShardLabels, ShardPlan, ShardRole, ShardSummary, ShardView, ShardWriter, permutation,
    shard_dataset, shard_dataset_into, split,
};
pub use source::{SampleSource, read_array, spool_to_raw};

/// The element types DAIG reads. Everything else, object arrays included, is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    U8,
    I8,
    U16,
    I16,
    I32,
    I64,
    F32,
    F64,
}

impl Dtype {
    /// Every supported dtype, in the order of their shard codes.
    pub const ALL: [Dtype; 8] =
        [Dtype::U8, Dtype::I8, Dtype::U16, Dtype::I16, Dtype::I32, Dtype::I64, Dtype::F32, Dtype::F64];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::U8 | Dtype::I8 => 1,
            Dtype::U16 | Dtype::I16 => 2,
            Dtype::I32 | Dtype::F32 => 4,
            Dtype::I64 | Dtype::F64 => 8,
        }
    }

    /// Whether the elements are integers (class labels must be).
    pub fn is_integer(self) -> bool {
        !matches!(self, Dtype::F32 | Dtype::F64)
    }

    /// The NumPy name, used in messages (`uint8`, `float32`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::U8 => "uint8",
            Dtype::I8 => "int8",
            Dtype::U16 => "uint16",
            Dtype::I16 => "int16",
            Dtype::I32 => "int32",
            Dtype::I64 => "int64",
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
        }
    }

    /// The one-byte code stored in a shard header (1 to 8, in the order of [`Dtype::ALL`]).
    pub fn code(self) -> u8 {
        match self {
            Dtype::U8 => 1,
            Dtype::I8 => 2,
            Dtype::U16 => 3,
            Dtype::I16 => 4,
            Dtype::I32 => 5,
            Dtype::I64 => 6,
            Dtype::F32 => 7,
            Dtype::F64 => 8,
        }
    }

    /// The dtype for a shard code, if it is one.
    pub fn from_code(code: u8) -> Option<Dtype> {
        Dtype::ALL.get(usize::from(code).checked_sub(1)?).copied()
    }

    /// Reads element `i` of `raw` (little-endian) as `f64`, which holds every supported value except `i64`
    /// beyond 2^53 exactly. Returns `None` when `raw` is too short.
    pub(crate) fn read_f64_le(self, raw: &[u8], i: usize) -> Option<f64> {
        let size = self.size();
        let b = raw.get(i.checked_mul(size)?..i.checked_mul(size)?.checked_add(size)?)?;
        Some(match self {
            Dtype::U8 => f64::from(b[0]),
            Dtype::I8 => f64::from(b[0] as i8),
            Dtype::U16 => f64::from(u16::from_le_bytes([b[0], b[1]])),
            Dtype::I16 => f64::from(i16::from_le_bytes([b[0], b[1]])),
            Dtype::I32 => f64::from(i32::from_le_bytes(b.try_into().ok()?)),
            Dtype::I64 => i64::from_le_bytes(b.try_into().ok()?) as f64,
            Dtype::F32 => f64::from(f32::from_le_bytes(b.try_into().ok()?)),
            Dtype::F64 => f64::from_le_bytes(b.try_into().ok()?),
        })
    }

    /// Reads integer element `i` of `raw` (little-endian) as `i64`; `None` for float dtypes or short input.
    pub(crate) fn read_i64_le(self, raw: &[u8], i: usize) -> Option<i64> {
        let size = self.size();
        let b = raw.get(i.checked_mul(size)?..i.checked_mul(size)?.checked_add(size)?)?;
        Some(match self {
            Dtype::U8 => i64::from(b[0]),
            Dtype::I8 => i64::from(b[0] as i8),
            Dtype::U16 => i64::from(u16::from_le_bytes([b[0], b[1]])),
            Dtype::I16 => i64::from(i16::from_le_bytes([b[0], b[1]])),
            Dtype::I32 => i64::from(i32::from_le_bytes(b.try_into().ok()?)),
            Dtype::I64 => i64::from_le_bytes(b.try_into().ok()?),
            Dtype::F32 | Dtype::F64 => return None,
        })
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The byte order of multi-byte elements in the input. One-byte dtypes (NumPy's `|`) are recorded as `Little`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ByteOrder {
    Little,
    Big,
}

/// What an input array is: its element type, shape and byte order. Samples are along the first axis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArrayInfo {
    /// The element type.
    pub dtype: Dtype,
    /// The shape in C order; `shape[0]` is the number of samples. Readers never return an empty shape.
    pub shape: Vec<usize>,
    /// The byte order of the elements in the input (shards are always little-endian).
    pub byte_order: ByteOrder,
}

impl ArrayInfo {
    /// The number of samples, `shape[0]` (0 for a shape with no axes).
    pub fn len(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }

    /// Whether the array holds no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shape of one sample, `shape[1..]` (empty for a 1-d array: each sample is a scalar).
    pub fn sample_shape(&self) -> &[usize] {
        self.shape.get(1..).unwrap_or(&[])
    }

    /// Elements in one sample.
    ///
    /// # Errors
    ///
    /// [`DataError::ShapeOverflow`] when the product overflows `usize`.
    pub fn sample_elements(&self) -> Result<usize, DataError> {
        checked_product(self.sample_shape()).ok_or_else(|| too_large_shape(&self.shape))
    }

    /// Bytes in one sample.
    ///
    /// # Errors
    ///
    /// [`DataError::ShapeOverflow`] when the size overflows `usize`.
    pub fn sample_bytes(&self) -> Result<usize, DataError> {
        self.sample_elements()?.checked_mul(self.dtype.size()).ok_or_else(|| too_large_shape(&self.shape))
    }

    /// Bytes of the whole array.
    ///
    /// # Errors
    ///
    /// [`DataError::ShapeOverflow`] when the size overflows `u64`.
    pub fn byte_len(&self) -> Result<u64, DataError> {
        self.shape
            .iter()
            .try_fold(self.dtype.size() as u64, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(|| too_large_shape(&self.shape))
    }

    /// Checks the shape against `limits`: at least one axis, at most `limits.max_ndim`, and a total size within
    /// `limits.max_array_bytes`. Readers call this before using the shape for anything.
    ///
    /// # Errors
    ///
    /// [`DataError::Malformed`] for a shape with no axes or too many, [`DataError::TooLarge`] for a size over the
    /// limit, [`DataError::ShapeOverflow`] when it overflows.
    pub fn validate(&self, format: &'static str, limits: &Limits) -> Result<(), DataError> {
        if self.shape.is_empty() {
            return Err(DataError::Malformed {
                format,
                reason: "the array is a scalar (shape ()); a dataset needs the samples along a first axis".into(),
            });
        }
        if self.shape.len() > limits.max_ndim {
            return Err(DataError::Malformed {
                format,
                reason: format!(
                    "the array has {} dimensions; at most {} are accepted",
                    self.shape.len(),
                    limits.max_ndim
                ),
            });
        }
        let bytes = self.byte_len()?;
        if bytes > limits.max_array_bytes {
            return Err(DataError::TooLarge {
                what: format!("a {} array of shape {}", self.dtype, ShapeDisplay(&self.shape)),
                bytes,
                limit: limits.max_array_bytes,
            });
        }
        self.sample_bytes()?;
        Ok(())
    }
}

/// Limits applied while reading untrusted input. The defaults suit a server that takes uploads of a few GB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The longest `.npy` header dict accepted (NumPy itself refuses more than 10000 bytes by default).
    pub max_header_bytes: usize,
    /// The most dimensions an array may have.
    pub max_ndim: usize,
    /// The largest array (in bytes) any reader accepts, checked before anything is read.
    pub max_array_bytes: u64,
    /// The largest array read whole into memory (labels, CSV label columns).
    pub max_in_memory_bytes: u64,
    /// The longest CSV record (the header row included), in bytes: a longer one is refused before more than this
    /// and the reader's buffer ([`csv::READ_BUFFER_BYTES`]) of it have been read, so that memory never holds
    /// more of a record. A server derives it from the model's feature count ([`csv::record_bytes_for`]).
    pub max_record_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 64 * 1024,
            max_ndim: 32,
            max_array_bytes: 64 << 30,
            max_in_memory_bytes: 512 << 20,
            max_record_bytes: 1 << 20,
        }
    }
}

/// An array held in memory: labels, or small feature arrays. `data` is in `info.byte_order`.
#[derive(Clone, Debug, PartialEq)]
pub struct RawArray {
    /// What the bytes are.
    pub info: ArrayInfo,
    /// The elements in C order and `info.byte_order`, exactly `info.byte_len()` bytes.
    pub data: Vec<u8>,
}

/// Everything that can go wrong with a dataset. Messages say what was found and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The underlying reader or writer failed.
    #[error("reading or writing the data failed: {0}")]
    Io(#[from] io::Error),
    /// The input is a pickle or an object array.
    #[error(
        "pickled/object arrays are refused: loading a pickle lets an upload run code ({0}); save plain numeric arrays, e.g. np.save(path, x.astype(np.float32))"
    )]
    Pickle(String),
    /// The input is not in the format it claims to be.
    #[error("not a valid {format} file: {reason}")]
    Malformed { format: &'static str, reason: String },
    /// The input is valid but uses something DAIG does not read.
    #[error("unsupported {format} data: {reason}")]
    Unsupported { format: &'static str, reason: String },
    /// The input ends before the data its header declares.
    #[error("the data is truncated: {what} needs {expected} bytes but the input has {actual}")]
    Truncated { what: String, expected: u64, actual: u64 },
    /// The input has bytes after the data its header declares.
    #[error("{what} is followed by {extra} unexpected bytes; is the dtype or shape in the header wrong?")]
    TrailingBytes { what: String, extra: u64 },
    /// A declared size is over a limit (or overflows).
    #[error("{what} is too large: {bytes} bytes, the limit is {limit}")]
    TooLarge { what: String, bytes: u64, limit: u64 },
    /// A shape whose size does not fit in 64 bits.
    #[error("the shape {0} is too large to address: its size overflows 64 bits")]
    ShapeOverflow(String),
    /// A CSV cell or row is wrong. `row` and `column` count from 1, as a spreadsheet shows them.
    #[error("CSV row {row}{at}: {reason}", at = column.as_ref().map(|c| format!(", column {c}")).unwrap_or_default())]
    Csv { row: u64, column: Option<String>, reason: String },
    /// A named array or column is missing.
    #[error("{0}")]
    Missing(String),
    /// The data does not fit the model.
    #[error("the data does not fit the model: {0}")]
    Mismatch(String),
    /// A label is out of range or of the wrong kind.
    #[error("label of sample {index}: {reason}")]
    Label { index: usize, reason: String },
    /// A shard blob is malformed.
    #[error("invalid shard: {0}")]
    Shard(String),
    /// An option (normalisation, split, shard size) is invalid.
    #[error("invalid option: {0}")]
    Option(String),
}

/// Formats a shape as `28x28x1` (and a scalar sample as `()`), the way error messages show shapes.
pub struct ShapeDisplay<'a>(pub &'a [usize]);

impl fmt::Display for ShapeDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("()");
        }
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("x")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

pub(crate) fn checked_product(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

fn too_large_shape(shape: &[usize]) -> DataError {
    DataError::ShapeOverflow(ShapeDisplay(shape).to_string())
}

/// Reads exactly `buf.len()` bytes, turning an early end into [`DataError::Truncated`] that names `what`.
pub(crate) fn read_exact_or_truncated(r: &mut impl Read, buf: &mut [u8], what: &str) -> Result<(), DataError> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(DataError::Truncated {
                    what: what.to_owned(),
                    expected: buf.len() as u64,
                    actual: filled as u64,
                });
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reverses each `size`-byte element in place (big-endian to little-endian or back).
pub(crate) fn swap_bytes(data: &mut [u8], size: usize) {
    if size > 1 {
        for chunk in data.chunks_exact_mut(size) {
            chunk.reverse();
        }
    }
}
