//! IDX, the format of the original MNIST files (`train-images-idx3-ubyte` and friends).
//!
//! Layout: two zero bytes, a dtype code (`0x08` u8, `0x09` i8, `0x0B` i16, `0x0C` i32, `0x0D` f32, `0x0E` f64),
//! the number of dimensions `n`, then `n` dimensions as big-endian `u32`, then the elements, big-endian, in C order.

use std::io::{Read, Write};

use super::{ArrayInfo, ByteOrder, DataError, Dtype, Limits, RawArray, read_exact_or_truncated};

const FORMAT: &str = "IDX";

/// A parsed IDX header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxHeader {
    /// The array the file holds (always big-endian).
    pub info: ArrayInfo,
    /// Where the elements start: `4 + 4 * ndim`.
    pub data_offset: u64,
}

/// The IDX code of a dtype; `None` for `uint16` and `int64`, which IDX cannot hold.
pub fn dtype_code(dtype: Dtype) -> Option<u8> {
    Some(match dtype {
        Dtype::U8 => 0x08,
        Dtype::I8 => 0x09,
        Dtype::I16 => 0x0B,
        Dtype::I32 => 0x0C,
        Dtype::F32 => 0x0D,
        Dtype::F64 => 0x0E,
        Dtype::U16 | Dtype::I64 => return None,
    })
}

/// Reads and checks an IDX header, leaving `r` at the first element.
///
/// # Errors
///
/// [`DataError::Pickle`] for a pickle, [`DataError::Malformed`] for a bad magic or no dimensions,
/// [`DataError::Unsupported`] for an unknown dtype code, [`DataError::TooLarge`] over `limits`,
/// [`DataError::Truncated`] when the input ends inside the header.
pub fn read_header(r: &mut impl Read, limits: &Limits) -> Result<IdxHeader, DataError> {
    let mut magic = [0u8; 4];
    read_exact_or_truncated(r, &mut magic[..1], "the IDX magic")?;
    if magic[0] == super::npy::PICKLE_PROTO {
        return Err(DataError::Pickle("the file starts with the pickle opcode 0x80, not the IDX magic".into()));
    }
    read_exact_or_truncated(r, &mut magic[1..], "the IDX magic")?;
    if magic[..2] != [0, 0] {
        return Err(DataError::Malformed {
            format: FORMAT,
            reason: format!(
                "it starts with {:02x} {:02x}, not the two zero bytes of the IDX magic",
                magic[0], magic[1]
            ),
        });
    }
    let dtype = match magic[2] {
        0x08 => Dtype::U8,
        0x09 => Dtype::I8,
        0x0B => Dtype::I16,
        0x0C => Dtype::I32,
        0x0D => Dtype::F32,
        0x0E => Dtype::F64,
        code => {
            return Err(DataError::Unsupported {
                format: FORMAT,
                reason: format!("dtype code 0x{code:02X}; IDX codes are 0x08, 0x09, 0x0B, 0x0C, 0x0D and 0x0E"),
            });
        }
    };
    let ndim = usize::from(magic[3]);
    if ndim == 0 || ndim > limits.max_ndim {
        return Err(DataError::Malformed {
            format: FORMAT,
            reason: format!("it declares {ndim} dimensions; between 1 and {} are accepted", limits.max_ndim),
        });
    }
    let mut shape = Vec::with_capacity(ndim);
    for _ in 0..ndim {
        let mut dim = [0u8; 4];
        read_exact_or_truncated(r, &mut dim, "the IDX dimensions")?;
        // A u32 always fits in usize on the 32- and 64-bit targets DAIG builds for.
        shape.push(u32::from_be_bytes(dim) as usize);
    }
    let info = ArrayInfo { dtype, shape, byte_order: ByteOrder::Big };
    info.validate(FORMAT, limits)?;
    Ok(IdxHeader { info, data_offset: 4 + 4 * ndim as u64 })
}

/// Reads a whole IDX array into memory (labels), checking its size against `limits.max_in_memory_bytes` first.
///
/// # Errors
///
/// As [`read_header`] and [`super::read_array`].
pub fn read(mut r: impl Read, limits: &Limits) -> Result<RawArray, DataError> {
    let header = read_header(&mut r, limits)?;
    super::read_array(header.info, r, limits)
}

/// Writes an IDX header for `info` (the caller then writes big-endian elements). Used by tests and tools.
///
/// # Errors
///
/// [`DataError::Unsupported`] for a dtype or shape IDX cannot hold, [`DataError::Io`] when `w` fails.
pub fn write_header(w: &mut impl Write, info: &ArrayInfo) -> Result<(), DataError> {
    let code = dtype_code(info.dtype).ok_or_else(|| DataError::Unsupported {
        format: FORMAT,
        reason: format!("IDX has no code for {}", info.dtype),
    })?;
    let ndim = u8::try_from(info.shape.len())
        .map_err(|_| DataError::Unsupported { format: FORMAT, reason: "more than 255 dimensions".into() })?;
    w.write_all(&[0, 0, code, ndim])?;
    for &d in &info.shape {
        let d = u32::try_from(d)
            .map_err(|_| DataError::Unsupported { format: FORMAT, reason: format!("dimension {d} exceeds u32") })?;
        w.write_all(&d.to_be_bytes())?;
    }
    Ok(())
}
