//! NumPy `.npz`: a zip archive whose entries are `.npy` files named after the arrays (`x.npy`, `y.npy`).
//!
//! `np.savez` stores entries uncompressed, so their samples sit at fixed offsets in the archive and
//! [`NpzArchive::into_sample_source`] reads them in place. `np.savez_compressed` deflates them; those are streamed
//! through [`NpzArchive::spool`] into a seekable file first.

use std::io::{Read, Seek, Write};

use zip::CompressionMethod;
use zip::result::ZipError;

use super::source::End;
use super::{ArrayInfo, DataError, Limits, RawArray, SampleSource};

const FORMAT: &str = ".npz";

/// Names tried, in order, for the features when the caller names none.
pub const FEATURE_NAMES: [&str; 5] = ["x", "x_train", "features", "images", "data"];
/// Names tried, in order, for the labels when the caller names none.
pub const LABEL_NAMES: [&str; 5] = ["y", "y_train", "labels", "targets", "target"];

/// One array of an archive, as its `.npy` header describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpzEntry {
    /// The array's name, without `.npy`.
    pub name: String,
    /// What the array is.
    pub info: ArrayInfo,
    /// Whether the entry is stored uncompressed, so that it can be read in place.
    pub stored: bool,
}

/// An open `.npz` archive.
pub struct NpzArchive<R> {
    zip: zip::ZipArchive<R>,
    limits: Limits,
}

impl<R: Read + Seek> std::fmt::Debug for NpzArchive<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NpzArchive").field("entries", &self.zip.len()).finish_non_exhaustive()
    }
}

impl<R: Read + Seek> NpzArchive<R> {
    /// Opens the archive and reads its directory.
    ///
    /// # Errors
    ///
    /// [`DataError::Pickle`] when the file is a pickle, [`DataError::Malformed`] when it is not a zip archive.
    pub fn new(mut reader: R, limits: &Limits) -> Result<Self, DataError> {
        let mut first = [0u8; 1];
        if reader.read(&mut first)? == 1 && first[0] == super::npy::PICKLE_PROTO {
            return Err(DataError::Pickle("the file starts with the pickle opcode 0x80, not a zip header".into()));
        }
        reader.rewind()?;
        let mut zip = zip::ZipArchive::new(reader).map_err(zip_error)?;
        // The directory's sizes are what the zip reader bounds each entry's output by: none may be over the
        // limits, so that no entry is inflated past them whatever its data says.
        let max_entry = max_entry_bytes(limits);
        for i in 0..zip.len() {
            let entry = zip.by_index_raw(i).map_err(zip_error)?;
            if entry.size() > max_entry {
                return Err(DataError::TooLarge {
                    what: format!(
                        "the entry '{}' as the archive's directory declares it",
                        shown(&entry.name().map(|n| n.into_owned()).unwrap_or_default())
                    ),
                    bytes: entry.size(),
                    limit: max_entry,
                });
            }
        }
        Ok(NpzArchive { zip, limits: limits.clone() })
    }

    /// The names of the arrays, without `.npy`, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .zip
            .file_names()
            .filter_map(|n| n.ok())
            .map(|n| n.strip_suffix(".npy").unwrap_or(&n).to_owned())
            .collect();
        names.sort();
        names
    }

    /// The first of `candidates` that the archive holds, e.g. `find(&FEATURE_NAMES)`.
    ///
    /// # Errors
    ///
    /// [`DataError::Missing`] naming the candidates and what the archive has instead.
    pub fn find(&self, candidates: &[&str]) -> Result<String, DataError> {
        let names = self.names();
        candidates.iter().find(|c| names.iter().any(|n| n == *c)).map(|c| (*c).to_owned()).ok_or_else(|| {
            DataError::Missing(format!(
                "the .npz has no array named {}; it has {}",
                candidates.iter().map(|c| format!("'{c}'")).collect::<Vec<_>>().join(" or "),
                names.iter().map(|c| format!("'{c}'")).collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// Reads the `.npy` header of the array `name` (without `.npy`).
    ///
    /// # Errors
    ///
    /// [`DataError::Missing`] when there is no such array, [`DataError::Unsupported`] for encrypted entries or
    /// unknown compression, otherwise as [`super::npy::read_header`], plus a check of the entry's size.
    pub fn entry(&mut self, name: &str) -> Result<NpzEntry, DataError> {
        let limits = self.limits.clone();
        let names = self.names();
        let mut file = self.open(name, &names)?;
        let stored = file.compression() == CompressionMethod::Stored;
        let size = file.size();
        let header = super::npy::read_header(&mut file, &limits).map_err(|e| in_entry(e, name))?;
        check_entry_size(name, &header.info, header.data_offset, size)?;
        Ok(NpzEntry { name: name.to_owned(), info: header.info, stored })
    }

    /// Reads the array `name` whole into memory (labels), under `limits.max_in_memory_bytes`.
    ///
    /// # Errors
    ///
    /// As [`NpzArchive::entry`] and [`super::read_array`].
    pub fn read_array(&mut self, name: &str) -> Result<RawArray, DataError> {
        let limits = self.limits.clone();
        let names = self.names();
        let mut file = self.open(name, &names)?;
        let size = file.size();
        let header = super::npy::read_header(&mut file, &limits).map_err(|e| in_entry(e, name))?;
        check_entry_size(name, &header.info, header.data_offset, size)?;
        let mut body = Declared::new(file, header.info.byte_len()?);
        let array = super::read_array(header.info, &mut body, &limits).map_err(|e| in_entry(e, name))?;
        body.check(name)?;
        Ok(array)
    }

    /// Streams the array `name`, stored or deflated, to `out` as raw little-endian samples (see
    /// [`super::spool_to_raw`]) and returns what `out` then holds. The header is read and checked first, and the
    /// body yields at most the bytes the header declares: an entry that inflates past them is refused. Check the
    /// header against the model ([`NpzArchive::entry`], [`super::check_features`]) before calling this.
    ///
    /// # Errors
    ///
    /// As [`NpzArchive::entry`] and [`super::spool_to_raw`]; a corrupt deflate stream, or one that inflates past
    /// its declared size, is [`DataError::Malformed`].
    pub fn spool(&mut self, name: &str, out: impl Write) -> Result<ArrayInfo, DataError> {
        let limits = self.limits.clone();
        let names = self.names();
        let mut file = self.open(name, &names)?;
        let size = file.size();
        let header = super::npy::read_header(&mut file, &limits).map_err(|e| in_entry(e, name))?;
        check_entry_size(name, &header.info, header.data_offset, size)?;
        let mut body = Declared::new(file, header.info.byte_len()?);
        let info = super::spool_to_raw(&header.info, &mut body, out, &limits).map_err(|e| in_entry(e, name))?;
        body.check(name)?;
        Ok(info)
    }

    /// Turns a stored entry into a [`SampleSource`] that reads the archive in place.
    ///
    /// # Errors
    ///
    /// [`DataError::Unsupported`] for a compressed entry (spool it with [`NpzArchive::spool`] instead), otherwise
    /// as [`NpzArchive::entry`].
    pub fn into_sample_source(mut self, name: &str) -> Result<SampleSource<R>, DataError> {
        let limits = self.limits.clone();
        let names = self.names();
        let mut file = self.open(name, &names)?;
        if file.compression() != CompressionMethod::Stored {
            return Err(DataError::Unsupported {
                format: FORMAT,
                reason: format!("the array '{name}' is compressed, so it cannot be read in place; spool it first"),
            });
        }
        let size = file.size();
        let start =
            file.data_start().ok_or_else(|| malformed(&format!("the entry '{name}.npy' has no data offset")))?;
        let header = super::npy::read_header(&mut file, &limits).map_err(|e| in_entry(e, name))?;
        check_entry_size(name, &header.info, header.data_offset, size)?;
        drop(file);
        let offset = start
            .checked_add(header.data_offset)
            .ok_or_else(|| malformed(&format!("the entry '{name}.npy' starts past 2^64")))?;
        SampleSource::new(self.zip.into_inner(), header.info, offset, End::AtLeast, &format!("the array '{name}'"))
    }

    fn open(&mut self, name: &str, names: &[String]) -> Result<zip::read::ZipFile<'_, R>, DataError> {
        let file = match self.zip.by_name(&format!("{name}.npy")) {
            Err(ZipError::FileNotFound) => {
                return Err(DataError::Missing(format!(
                    "the .npz has no array named '{name}'; it has {}",
                    names.iter().map(|c| format!("'{c}'")).collect::<Vec<_>>().join(", ")
                )));
            }
            other => other.map_err(zip_error)?,
        };
        if file.encrypted() {
            return Err(DataError::Unsupported {
                format: FORMAT,
                reason: format!("the entry '{name}.npy' is encrypted"),
            });
        }
        if !matches!(file.compression(), CompressionMethod::Stored | CompressionMethod::Deflated) {
            return Err(DataError::Unsupported {
                format: FORMAT,
                reason: format!(
                    "the entry '{name}.npy' uses {}; use np.savez or np.savez_compressed",
                    file.compression()
                ),
            });
        }
        Ok(file)
    }
}

fn check_entry_size(name: &str, info: &ArrayInfo, data_offset: u64, size: u64) -> Result<(), DataError> {
    let expected = info.byte_len()?.saturating_add(data_offset);
    let what = format!("the array '{name}' ({} of shape {})", info.dtype, super::ShapeDisplay(&info.shape));
    if size < expected {
        return Err(DataError::Truncated {
            what,
            expected: expected - data_offset,
            actual: size.saturating_sub(data_offset),
        });
    }
    if size > expected {
        return Err(DataError::TrailingBytes { what, extra: size - expected });
    }
    Ok(())
}

/// The most bytes an entry may declare: a `.npy` preamble (magic, version, header length), the longest header and
/// the largest array.
fn max_entry_bytes(limits: &Limits) -> u64 {
    limits.max_array_bytes.saturating_add(limits.max_header_bytes as u64).saturating_add(12)
}

/// An entry's name as messages show it: at most 60 characters.
fn shown(name: &str) -> String {
    name.chars().take(60).collect()
}

/// An entry's body, cut at the bytes its header declares. The zip reader already refuses output past the size
/// in the archive's directory, which must equal the header's ([`check_entry_size`]); this holds the bound
/// whatever the zip reader does, and tells an entry that goes on apart from one that ends.
struct Declared<R> {
    inner: R,
    /// Bytes the header still declares.
    left: u64,
    /// Whether the entry yielded a byte past the declared ones.
    overflowed: bool,
}

impl<R: Read> Declared<R> {
    fn new(inner: R, declared: u64) -> Self {
        Declared { inner, left: declared, overflowed: false }
    }

    /// Refuses an entry that went past its declared size.
    fn check(&self, name: &str) -> Result<(), DataError> {
        if self.overflowed {
            return Err(malformed(&format!(
                "the entry '{name}.npy' inflates past the size its header declares; is it corrupt or crafted?"
            )));
        }
        Ok(())
    }
}

impl<R: Read> Read for Declared<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            // One byte to tell an entry that ends here from one that goes on; never more.
            if !self.overflowed {
                let mut probe = [0u8; 1];
                self.overflowed = self.inner.read(&mut probe)? > 0;
            }
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

fn in_entry(e: DataError, name: &str) -> DataError {
    match e {
        // What the zip reader says of a corrupt deflate stream, a wrong checksum or output past the directory's
        // size: the upload's fault, not the server's.
        DataError::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            malformed(&format!("the entry '{name}.npy' is corrupt: {e}"))
        }
        DataError::Malformed { reason, .. } => malformed(&format!("the entry '{name}.npy': {reason}")),
        DataError::Unsupported { reason, .. } => {
            DataError::Unsupported { format: FORMAT, reason: format!("the entry '{name}.npy': {reason}") }
        }
        DataError::Pickle(reason) => DataError::Pickle(format!("the entry '{name}.npy': {reason}")),
        other => other,
    }
}

fn zip_error(e: ZipError) -> DataError {
    match e {
        ZipError::Io(e) => DataError::Io(e),
        other => malformed(&format!("the zip archive is unreadable: {other}")),
    }
}

fn malformed(reason: &str) -> DataError {
    DataError::Malformed { format: FORMAT, reason: reason.to_owned() }
}
