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
        let zip = zip::ZipArchive::new(reader).map_err(zip_error)?;
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
        super::read_array(header.info, file, &limits).map_err(|e| in_entry(e, name))
    }

    /// Streams the array `name`, stored or deflated, to `out` as raw little-endian samples (see
    /// [`super::spool_to_raw`]) and returns what `out` then holds.
    ///
    /// # Errors
    ///
    /// As [`NpzArchive::entry`] and [`super::spool_to_raw`]; a corrupt deflate stream is [`DataError::Io`].
    pub fn spool(&mut self, name: &str, out: impl Write) -> Result<ArrayInfo, DataError> {
        let limits = self.limits.clone();
        let names = self.names();
        let mut file = self.open(name, &names)?;
        let size = file.size();
        let header = super::npy::read_header(&mut file, &limits).map_err(|e| in_entry(e, name))?;
        check_entry_size(name, &header.info, header.data_offset, size)?;
        super::spool_to_raw(&header.info, file, out, &limits).map_err(|e| in_entry(e, name))
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

fn in_entry(e: DataError, name: &str) -> DataError {
    match e {
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
