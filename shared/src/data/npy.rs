//! NumPy `.npy`: the header (versions 1.0, 2.0 and 3.0), read with a small parser that evaluates nothing, and a
//! writer ([`write_header`], and whole files with [`write`] and [`to_vec`]) for the plain files that spooling
//! produces, and that tests and benchmarks upload.
//!
//! Layout: `\x93NUMPY`, major version byte, minor version byte, header length (`u16` LE in 1.0, `u32` LE in 2.0
//! and 3.0), the header (a Python dict literal, Latin-1 in 1.0 and 2.0, UTF-8 in 3.0, padded with spaces and
//! ending in `\n`), then the elements in C order.

use std::io::{Read, Write};

use super::{ArrayInfo, ByteOrder, DataError, Dtype, Limits, RawArray, ShapeDisplay, read_exact_or_truncated};

/// The six bytes every `.npy` file starts with.
pub const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// The first byte of a pickle of protocol 2 or later (the `PROTO` opcode).
pub(crate) const PICKLE_PROTO: u8 = 0x80;

const FORMAT: &str = ".npy";

/// A parsed `.npy` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpyHeader {
    /// The array the file holds.
    pub info: ArrayInfo,
    /// The format version, `(1, 0)`, `(2, 0)` or `(3, 0)`.
    pub version: (u8, u8),
    /// Where the elements start: magic, version, length field and header together.
    pub data_offset: u64,
}

/// Reads and checks a `.npy` header, leaving `r` at the first element.
///
/// # Errors
///
/// [`DataError::Pickle`] for a pickle or an object array, [`DataError::Malformed`] for a bad magic or header
/// dict, [`DataError::Unsupported`] for another version, dtype or Fortran order, [`DataError::TooLarge`] for a
/// header or array over `limits`, [`DataError::Truncated`] when the input ends inside the header.
pub fn read_header(r: &mut impl Read, limits: &Limits) -> Result<NpyHeader, DataError> {
    let mut prefix = [0u8; 8];
    read_exact_or_truncated(r, &mut prefix[..1], "the .npy magic")?;
    if prefix[0] == PICKLE_PROTO {
        return Err(DataError::Pickle("the file starts with the pickle opcode 0x80, not the .npy magic".into()));
    }
    read_exact_or_truncated(r, &mut prefix[1..], "the .npy magic and version").map_err(|e| match e {
        DataError::Truncated { what, expected, actual } => {
            DataError::Truncated { what, expected: expected + 1, actual: actual + 1 }
        }
        other => other,
    })?;
    if &prefix[..6] != MAGIC {
        return Err(malformed("it does not start with the .npy magic \\x93NUMPY"));
    }
    let version = (prefix[6], prefix[7]);
    let header_len = match version.0 {
        1 => {
            let mut len = [0u8; 2];
            read_exact_or_truncated(r, &mut len, "the .npy header length")?;
            u64::from(u16::from_le_bytes(len))
        }
        2 | 3 => {
            let mut len = [0u8; 4];
            read_exact_or_truncated(r, &mut len, "the .npy header length")?;
            u64::from(u32::from_le_bytes(len))
        }
        major => {
            return Err(DataError::Unsupported {
                format: FORMAT,
                reason: format!("format version {major}.{}; versions 1.0, 2.0 and 3.0 are read", version.1),
            });
        }
    };
    if header_len > limits.max_header_bytes as u64 {
        return Err(DataError::TooLarge {
            what: "the .npy header".into(),
            bytes: header_len,
            limit: limits.max_header_bytes as u64,
        });
    }
    // Bounded by `max_header_bytes` just above.
    let mut header = vec![0u8; header_len as usize];
    read_exact_or_truncated(r, &mut header, "the .npy header")?;
    let text: String = if version.0 == 3 {
        String::from_utf8(header).map_err(|_| malformed("the version 3.0 header is not UTF-8"))?
    } else {
        // Latin-1: every byte is the code point of the same value.
        header.iter().map(|&b| char::from(b)).collect()
    };
    let info = parse_header_dict(&text)?;
    info.validate(FORMAT, limits)?;
    let data_offset = 8 + if version.0 == 1 { 2 } else { 4 } + header_len;
    Ok(NpyHeader { info, version, data_offset })
}

/// Reads a whole `.npy` array into memory (for labels and other small arrays), checking the size against
/// `limits.max_in_memory_bytes` before reading, and that the input ends right after the data.
///
/// # Errors
///
/// As [`read_header`], plus [`DataError::TooLarge`] over the in-memory limit, [`DataError::Truncated`] and
/// [`DataError::TrailingBytes`].
pub fn read(mut r: impl Read, limits: &Limits) -> Result<RawArray, DataError> {
    let header = read_header(&mut r, limits)?;
    super::read_array(header.info, r, limits)
}

/// Parses the header dict, e.g. `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.
///
/// # Errors
///
/// As [`read_header`] for the dict's content.
pub fn parse_header_dict(text: &str) -> Result<ArrayInfo, DataError> {
    let mut p = Parser { s: text.as_bytes(), pos: 0 };
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    p.skip_ws();
    p.expect(b'{')?;
    loop {
        p.skip_ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        p.skip_ws();
        p.expect(b':')?;
        p.skip_ws();
        let slot_taken = match key.as_str() {
            "descr" => descr.replace(p.descr()?).is_some(),
            "fortran_order" => fortran.replace(p.boolean()?).is_some(),
            "shape" => shape.replace(p.shape()?).is_some(),
            other => {
                return Err(malformed(&format!("unexpected key '{other}' in the header")));
            }
        };
        if slot_taken {
            return Err(malformed(&format!("the header has the key '{key}' twice")));
        }
        p.skip_ws();
        if !p.eat(b',') {
            p.skip_ws();
            p.expect(b'}')?;
            break;
        }
    }
    p.skip_ws();
    if p.pos != p.s.len() {
        return Err(malformed("the header has text after its closing '}'"));
    }
    let (dtype, byte_order) = descr.ok_or_else(|| malformed("the header has no 'descr'"))?;
    let shape = shape.ok_or_else(|| malformed("the header has no 'shape'"))?;
    if fortran.ok_or_else(|| malformed("the header has no 'fortran_order'"))? {
        return Err(DataError::Unsupported {
            format: FORMAT,
            reason: "the array is in Fortran order; save it in C order, e.g. np.save(path, np.ascontiguousarray(x))"
                .into(),
        });
    }
    Ok(ArrayInfo { dtype, shape, byte_order })
}

/// Parses a dtype string such as `<f4`, `>i2` or `|u1`.
///
/// # Errors
///
/// [`DataError::Pickle`] for object dtypes, [`DataError::Unsupported`] for any other dtype DAIG does not read.
pub fn parse_descr(descr: &str) -> Result<(Dtype, ByteOrder), DataError> {
    let (order, code) = match descr.as_bytes().first() {
        Some(b'<' | b'>' | b'|' | b'=') => descr.split_at(1),
        _ => ("", descr),
    };
    if code.starts_with('O') {
        return Err(DataError::Pickle(format!("the array has dtype '{descr}' (Python objects)")));
    }
    let dtype = match code {
        "u1" | "B" => Dtype::U8,
        "i1" | "b" => Dtype::I8,
        "u2" => Dtype::U16,
        "i2" => Dtype::I16,
        "i4" => Dtype::I32,
        "i8" => Dtype::I64,
        "f4" => Dtype::F32,
        "f8" => Dtype::F64,
        _ => {
            return Err(DataError::Unsupported {
                format: FORMAT,
                reason: format!(
                    "dtype '{descr}' is not read; use one of uint8, int8, uint16, int16, int32, int64, float32, float64"
                ),
            });
        }
    };
    let byte_order = match (order, dtype.size()) {
        // One-byte elements have no byte order: recorded as little-endian however the header spells it.
        (_, 1) => ByteOrder::Little,
        ("<", _) => ByteOrder::Little,
        (">", _) => ByteOrder::Big,
        _ => {
            return Err(DataError::Unsupported {
                format: FORMAT,
                reason: format!("dtype '{descr}' does not say its byte order; use '<' or '>'"),
            });
        }
    };
    Ok((dtype, byte_order))
}

/// The `descr` NumPy writes for `dtype` in `byte_order`.
pub fn descr(dtype: Dtype, byte_order: ByteOrder) -> String {
    let code = match dtype {
        Dtype::U8 => return "|u1".into(),
        Dtype::I8 => return "|i1".into(),
        Dtype::U16 => "u2",
        Dtype::I16 => "i2",
        Dtype::I32 => "i4",
        Dtype::I64 => "i8",
        Dtype::F32 => "f4",
        Dtype::F64 => "f8",
    };
    let order = if byte_order == ByteOrder::Big { '>' } else { '<' };
    format!("{order}{code}")
}

/// Writes a `.npy` header for `info` (version 1.0 when it fits, else 2.0), padded so the data starts at a
/// multiple of 64 bytes as NumPy does. Returns the number of bytes written, which is the data offset.
///
/// # Errors
///
/// [`DataError::Io`] when `w` fails.
pub fn write_header(w: &mut impl Write, info: &ArrayInfo) -> Result<u64, DataError> {
    let dims: Vec<String> = info.shape.iter().map(ToString::to_string).collect();
    // NumPy writes `(5,)` for one axis and `(2, 3)` for more.
    let shape = match dims.as_slice() {
        [one] => format!("({one},)"),
        _ => format!("({})", dims.join(", ")),
    };
    let mut dict =
        format!("{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}", descr(info.dtype, info.byte_order));
    let (version, len_field) = if dict.len() + 1 + 64 <= usize::from(u16::MAX) { (1u8, 2usize) } else { (2, 4) };
    let unpadded = MAGIC.len() + 2 + len_field + dict.len() + 1;
    let padding = (64 - unpadded % 64) % 64;
    dict.extend(std::iter::repeat_n(' ', padding));
    dict.push('\n');
    w.write_all(MAGIC)?;
    w.write_all(&[version, 0])?;
    if version == 1 {
        // Fits: checked when choosing the version.
        w.write_all(&(dict.len() as u16).to_le_bytes())?;
    } else {
        let len = u32::try_from(dict.len()).map_err(|_| malformed("the header would not fit in 4 GiB"))?;
        w.write_all(&len.to_le_bytes())?;
    }
    w.write_all(dict.as_bytes())?;
    Ok((MAGIC.len() + 2 + len_field + dict.len()) as u64)
}

/// An element type [`write`] writes: the numeric types of [`Dtype`], written little-endian.
pub trait Element: Copy {
    /// The dtype NumPy reads it as.
    const DTYPE: Dtype;
    /// Appends the little-endian bytes of `values` to `out`.
    fn extend_le(values: &[Self], out: &mut Vec<u8>);
}

macro_rules! element {
    ($($t:ty => $dtype:ident),* $(,)?) => {$(
        impl Element for $t {
            const DTYPE: Dtype = Dtype::$dtype;
            fn extend_le(values: &[Self], out: &mut Vec<u8>) {
                out.reserve(std::mem::size_of_val(values));
                for v in values {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
    )*};
}

element!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, i32 => I32, i64 => I64, f32 => F32, f64 => F64);

/// Writes a whole `.npy` file of `data` (C order, little-endian) with `shape`, as `np.save` would. Returns the
/// number of bytes written.
///
/// # Errors
///
/// [`DataError::Malformed`] when `shape` does not hold exactly `data.len()` elements, [`DataError::Io`] when
/// `w` fails.
pub fn write<T: Element>(w: &mut impl Write, shape: &[usize], data: &[T]) -> Result<u64, DataError> {
    let info = ArrayInfo { dtype: T::DTYPE, shape: shape.to_vec(), byte_order: ByteOrder::Little };
    check_len(&info, data.len())?;
    let mut bytes = Vec::new();
    T::extend_le(data, &mut bytes);
    let offset = write_header(w, &info)?;
    w.write_all(&bytes)?;
    Ok(offset + bytes.len() as u64)
}

/// [`write`] into memory: the bytes of a `.npy` file of `data` with `shape`.
///
/// # Errors
///
/// [`DataError::Malformed`] when `shape` does not hold exactly `data.len()` elements.
pub fn to_vec<T: Element>(shape: &[usize], data: &[T]) -> Result<Vec<u8>, DataError> {
    let mut out = Vec::new();
    write(&mut out, shape, data)?;
    Ok(out)
}

/// Writes a whole `.npy` file of raw elements already in `info`'s dtype and byte order (e.g. big-endian), as
/// [`RawArray`] holds them. Returns the number of bytes written.
///
/// # Errors
///
/// [`DataError::Malformed`] when `data` is not `info.byte_len()` bytes long, [`DataError::Io`] when `w` fails.
pub fn write_raw(w: &mut impl Write, info: &ArrayInfo, data: &[u8]) -> Result<u64, DataError> {
    check_len(info, data.len() / info.dtype.size())?;
    if !data.len().is_multiple_of(info.dtype.size()) {
        return Err(malformed(&format!("{} bytes are not a whole number of {} elements", data.len(), info.dtype)));
    }
    let offset = write_header(w, info)?;
    w.write_all(data)?;
    Ok(offset + data.len() as u64)
}

/// Whether `info.shape` holds exactly `elements` elements.
fn check_len(info: &ArrayInfo, elements: usize) -> Result<(), DataError> {
    let expected = info
        .shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| DataError::ShapeOverflow(ShapeDisplay(&info.shape).to_string()))?;
    if expected != elements {
        return Err(malformed(&format!(
            "the shape {} holds {expected} elements, not the {elements} given",
            ShapeDisplay(&info.shape)
        )));
    }
    Ok(())
}

fn malformed(reason: &str) -> DataError {
    DataError::Malformed { format: FORMAT, reason: reason.to_owned() }
}

/// A cursor over the header dict. It reads only the few literal forms NumPy writes.
struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), DataError> {
        if self.eat(c) {
            return Ok(());
        }
        let found = match self.peek() {
            Some(f) => format!("'{}'", char::from(f).escape_default()),
            None => "the end".to_owned(),
        };
        Err(malformed(&format!("expected '{}' at byte {} of the header dict, found {found}", char::from(c), self.pos)))
    }

    fn string(&mut self) -> Result<String, DataError> {
        let quote = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => {
                return Err(malformed(&format!("expected a quoted string at byte {} of the header dict", self.pos)));
            }
        };
        self.pos += 1;
        let start = self.pos;
        loop {
            match self.peek() {
                None => return Err(malformed("a string in the header dict is not closed")),
                Some(b'\\') => return Err(malformed("escapes in header strings are not read")),
                Some(c) if c == quote => break,
                Some(_) => self.pos += 1,
            }
        }
        let text = String::from_utf8_lossy(&self.s[start..self.pos]).into_owned();
        self.pos += 1;
        Ok(text)
    }

    fn descr(&mut self) -> Result<(Dtype, ByteOrder), DataError> {
        if self.peek() == Some(b'[') {
            return Err(DataError::Unsupported {
                format: FORMAT,
                reason: "the array has a structured dtype (a list of fields); save one plain numeric array per name"
                    .into(),
            });
        }
        parse_descr(&self.string()?)
    }

    fn boolean(&mut self) -> Result<bool, DataError> {
        for (word, value) in [(&b"True"[..], true), (&b"False"[..], false)] {
            if self.s[self.pos..].starts_with(word) {
                self.pos += word.len();
                return Ok(value);
            }
        }
        Err(malformed("'fortran_order' is not True or False"))
    }

    fn shape(&mut self) -> Result<Vec<usize>, DataError> {
        self.expect(b'(')?;
        let mut shape = Vec::new();
        loop {
            self.skip_ws();
            if self.eat(b')') {
                return Ok(shape);
            }
            shape.push(self.dim()?);
            self.skip_ws();
            if !self.eat(b',') {
                self.skip_ws();
                self.expect(b')')?;
                return Ok(shape);
            }
        }
    }

    fn dim(&mut self) -> Result<usize, DataError> {
        let start = self.pos;
        let mut value: u64 = 0;
        while let Some(c @ b'0'..=b'9') = self.peek() {
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(c - b'0')))
                .ok_or_else(|| malformed("a dimension in 'shape' does not fit in 64 bits"))?;
            self.pos += 1;
        }
        if self.pos == start {
            return Err(malformed(&format!(
                "expected a non-negative integer in 'shape' at byte {} of the header dict",
                self.pos
            )));
        }
        // Python 2 wrote long integers with an `L` suffix.
        self.eat(b'L');
        usize::try_from(value).map_err(|_| malformed("a dimension in 'shape' does not fit in this platform's usize"))
    }
}
